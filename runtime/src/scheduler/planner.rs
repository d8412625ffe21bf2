//! What runs in the next step: vLLM V1's scheduling policy over the block
//! pool, without a model in sight (so it is tested on its own).
//!
//! Each step spends a budget of `max_num_batched_tokens`:
//! 1. running sequences first, oldest first: one token for a decode, or the
//!    next chunk of a prompt still being prefilled (chunked prefill: a long
//!    prompt takes what is left of the budget, and the rest next step);
//! 2. then waiting sequences, in order, while fewer than `max_num_seqs` run
//!    and blocks can be had — after a prefix-cache lookup, so only the
//!    uncached part of a prompt costs budget and blocks.
//!
//! Admission is by free blocks, not by request count. When a running
//! sequence needs a block and none is free, the newest running sequence is
//! preempted: its blocks are freed and it goes back to the front of the
//! waiting queue, to be recomputed (prompt plus what it generated) when
//! blocks free up — vLLM's recompute policy. Nothing fails for lack of
//! memory that a later step could serve; a sequence that would need more
//! blocks than the whole pool is reported as [`Plan::exhausted`].

use std::collections::{HashMap, VecDeque};

use crate::kv::{BlockHash, BlockId, BlockPool};

/// Frees a sequence's blocks, keeping its last partly filled (computed)
/// block findable for a prompt that continues it.
fn free_blocks(pool: &mut BlockPool, seq: &SeqState, bs: usize) {
    let full = seq.num_computed / bs;
    let tail = seq.num_computed % bs;
    if tail > 0
        && let Some(&block) = seq.blocks.get(full)
    {
        let parent = full.checked_sub(1).and_then(|b| seq.hashes.get(b).copied());
        if full == 0 || parent.is_some() {
            pool.register_partial(block, parent, &seq.tokens[full * bs..seq.num_computed]);
        }
    }
    pool.free(&seq.blocks);
}

/// A sequence's handle in the planner.
pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
}

/// Token and block state of one sequence.
#[derive(Debug, Clone)]
pub struct SeqState {
    /// Prompt, then every generated token.
    pub tokens: Vec<u32>,
    /// Leading tokens whose keys and values are in the pool.
    pub num_computed: usize,
    /// Physical blocks holding positions `0..blocks.len() · block_size`.
    pub blocks: Vec<BlockId>,
    /// Hashes of the full blocks of `tokens` computed so far.
    hashes: Vec<BlockHash>,
    /// Leading blocks already registered in the prefix cache.
    registered: usize,
    /// Not scheduled while set (its client cannot take more output yet).
    pub paused: bool,
    /// Times this sequence was preempted.
    pub preemptions: u32,
    /// Whether the sequence went through admission (prefix lookup) since it
    /// last entered the waiting queue.
    admitted: bool,
    /// Prompt tokens its first admission found in the prefix cache.
    cached: usize,
}

impl SeqState {
    fn new(tokens: Vec<u32>) -> Self {
        Self {
            tokens,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            registered: 0,
            paused: false,
            preemptions: 0,
            admitted: false,
            cached: 0,
        }
    }

    /// Prompt tokens served from the prefix cache when it was admitted
    /// (`usage.prompt_tokens_details.cached_tokens`).
    pub fn cached_prompt_tokens(&self) -> usize {
        self.cached
    }
}

/// One step's schedule.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sequences to run and how many of their next tokens, in batch order.
    pub scheduled: Vec<(SeqId, usize)>,
    /// Sequences preempted while planning (now waiting, blocks freed).
    pub preempted: Vec<SeqId>,
    /// Sequences that cannot grow any more even with the whole pool to
    /// themselves; the caller finishes them (`length`).
    pub exhausted: Vec<SeqId>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    pool: BlockPool,
    seqs: HashMap<SeqId, SeqState>,
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    preemptions: u64,
}

impl Planner {
    pub fn new(config: PlannerConfig, pool: BlockPool) -> Self {
        assert!(config.block_size > 0 && config.max_num_seqs > 0);
        assert!(config.max_num_batched_tokens > 0);
        Self {
            config,
            pool,
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            preemptions: 0,
        }
    }

    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Tokens the whole pool can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.num_blocks() * self.config.block_size
    }

    /// Queues a new sequence behind the waiting ones.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        assert!(!prompt.is_empty(), "empty prompt");
        let previous = self.seqs.insert(id, SeqState::new(prompt));
        assert!(previous.is_none(), "sequence {id} added twice");
        self.waiting.push_back(id);
    }

    pub fn get(&self, id: SeqId) -> Option<&SeqState> {
        self.seqs.get(&id)
    }

    pub fn set_paused(&mut self, id: SeqId, paused: bool) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.paused = paused;
        }
    }

    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    pub fn waiting(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().copied()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn total_preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Decides the next step (see the module doc).
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.config.max_num_batched_tokens;
        let bs = self.config.block_size;
        let total_blocks = self.pool.num_blocks();

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            if seq.paused {
                i += 1;
                continue;
            }
            let want = (seq.tokens.len() - seq.num_computed).min(budget);
            if want == 0 {
                i += 1;
                continue;
            }
            if (seq.num_computed + want).div_ceil(bs) > total_blocks {
                // Even alone it could never get these blocks.
                let id = self.running.remove(i);
                plan.exhausted.push(id);
                continue;
            }
            let mut scheduled = true;
            while !self.allocate(id, want) {
                let victim = self.running.pop().expect("the current sequence is running");
                self.preempt(victim);
                plan.preempted.push(victim);
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            plan.scheduled.push((id, want));
            budget -= want;
            i += 1;
        }

        if plan.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                if !self.seqs[&id].admitted {
                    self.admit_from_cache(id);
                }
                let seq = &self.seqs[&id];
                let want = (seq.tokens.len() - seq.num_computed).min(budget);
                if (seq.num_computed + want).div_ceil(bs) > total_blocks {
                    self.waiting.pop_front();
                    self.release(id);
                    plan.exhausted.push(id);
                    continue;
                }
                if !self.allocate(id, want) {
                    // Hold nothing while waiting: cached blocks it found go
                    // back (still cached), so waiting sequences can never
                    // pin the pool between them.
                    self.unadmit(id);
                    break;
                }
                self.waiting.pop_front();
                self.running.push(id);
                plan.scheduled.push((id, want));
                budget -= want;
            }
        }
        plan
    }

    /// After the step ran: the scheduled tokens are now cached; blocks they
    /// filled join the prefix cache.
    pub fn commit(&mut self, plan: &Plan) {
        let bs = self.config.block_size;
        for &(id, n) in &plan.scheduled {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.num_computed += n;
            let full = seq.num_computed / bs;
            while seq.hashes.len() < full {
                let b = seq.hashes.len();
                let h = BlockHash::of(seq.hashes.last(), &seq.tokens[b * bs..(b + 1) * bs]);
                seq.hashes.push(h);
            }
            while seq.registered < full {
                self.pool
                    .register(seq.blocks[seq.registered], seq.hashes[seq.registered]);
                seq.registered += 1;
            }
        }
    }

    /// A token generated for `id`, to be fed in its next step.
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    /// Removes a sequence (finished, cancelled or failed), wherever it is,
    /// and frees its blocks. Returns its state if it existed.
    pub fn remove(&mut self, id: SeqId) -> Option<SeqState> {
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.release(id)
    }

    fn release(&mut self, id: SeqId) -> Option<SeqState> {
        let seq = self.seqs.remove(&id)?;
        free_blocks(&mut self.pool, &seq, self.config.block_size);
        Some(seq)
    }

    /// Prefix-cache lookup for a sequence leaving the waiting queue: its
    /// leading full blocks that are cached become its first blocks. At
    /// least one token is always left to compute (its logits are needed).
    fn admit_from_cache(&mut self, id: SeqId) {
        let bs = self.config.block_size;
        let seq = self.seqs.get_mut(&id).expect("waiting sequence");
        seq.admitted = true;
        if !self.pool.caching() || seq.num_computed > 0 {
            return;
        }
        let lookable = (seq.tokens.len() - 1) / bs;
        while seq.hashes.len() < lookable {
            let b = seq.hashes.len();
            let h = BlockHash::of(seq.hashes.last(), &seq.tokens[b * bs..(b + 1) * bs]);
            seq.hashes.push(h);
        }
        let hit = self
            .pool
            .lookup(&seq.hashes[..lookable], bs, seq.tokens.len());
        seq.num_computed = hit.len() * bs;
        seq.registered = hit.len();
        seq.blocks = hit;
        // Then the partial block a finished sequence left after the same
        // full blocks, if it continues into this prompt.
        let parent = seq.blocks.len().checked_sub(1).map(|b| seq.hashes[b]);
        let rest = &seq.tokens[seq.num_computed..];
        if let Some((block, len)) =
            self.pool
                .take_partial(parent, rest, (rest.len() - 1).min(bs - 1))
        {
            seq.blocks.push(block);
            seq.num_computed += len;
        }
        if seq.preemptions == 0 {
            seq.cached = seq.num_computed;
        }
    }

    /// Undoes [`Planner::admit_from_cache`] for a sequence that stays waiting.
    fn unadmit(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("waiting sequence");
        free_blocks(&mut self.pool, seq, self.config.block_size);
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.registered = 0;
        seq.admitted = false;
    }

    /// Gives `id` the blocks for `n` more tokens; all or nothing.
    fn allocate(&mut self, id: SeqId, n: usize) -> bool {
        let bs = self.config.block_size;
        let seq = self.seqs.get_mut(&id).expect("scheduled sequence");
        let need = (seq.num_computed + n)
            .div_ceil(bs)
            .saturating_sub(seq.blocks.len());
        if need == 0 {
            return true;
        }
        match self.pool.allocate(need) {
            Some(blocks) => {
                seq.blocks.extend(blocks);
                true
            }
            None => false,
        }
    }

    /// Frees a running sequence's blocks and puts it first in line, to be
    /// recomputed from its tokens.
    fn preempt(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("running sequence");
        free_blocks(&mut self.pool, seq, self.config.block_size);
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.registered = 0;
        seq.admitted = false;
        seq.preemptions += 1;
        self.preemptions += 1;
        self.waiting.push_front(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(blocks: usize, max_seqs: usize, budget: usize, caching: bool) -> Planner {
        Planner::new(
            PlannerConfig {
                max_num_seqs: max_seqs,
                max_num_batched_tokens: budget,
                block_size: 4,
            },
            BlockPool::new(blocks, caching),
        )
    }

    /// Runs one step: plan, commit, and give every sequence whose chunk
    /// reached its end a new token (id 1000 + step).
    fn step(p: &mut Planner, token: u32) -> Plan {
        let plan = p.plan();
        p.commit(&plan);
        for &(id, _) in &plan.scheduled {
            let s = p.get(id).expect("scheduled");
            if s.num_computed == s.tokens.len() {
                p.append_token(id, token);
            }
        }
        plan
    }

    #[test]
    fn decodes_go_first_and_prompts_are_chunked_by_the_budget() {
        let mut p = planner(64, 8, 10, false);
        p.add(1, vec![1; 3]);
        let plan = step(&mut p, 100);
        assert_eq!(plan.scheduled, vec![(1, 3)]);
        p.add(2, vec![2; 25]);
        let plan = step(&mut p, 101);
        // One decode token, then 9 of the 25-token prompt.
        assert_eq!(plan.scheduled, vec![(1, 1), (2, 9)]);
        let plan = step(&mut p, 102);
        assert_eq!(plan.scheduled, vec![(1, 1), (2, 9)]);
        let plan = step(&mut p, 103);
        assert_eq!(plan.scheduled, vec![(1, 1), (2, 7)]);
        let s2 = p.get(2).expect("seq 2");
        assert_eq!(s2.tokens.len(), 26, "sampled once its prompt was done");
        let plan = step(&mut p, 104);
        assert_eq!(plan.scheduled, vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn admission_is_by_free_blocks_and_max_num_seqs() {
        // 4 blocks of 4 tokens: two 6-token prompts take 2 blocks each.
        let mut p = planner(4, 3, 100, false);
        for id in 1..=3 {
            p.add(id, vec![id as u32; 6]);
        }
        let plan = step(&mut p, 7);
        assert_eq!(plan.scheduled, vec![(1, 6), (2, 6)]);
        assert_eq!(p.num_waiting(), 1, "no blocks for the third");
        p.remove(1);
        let plan = step(&mut p, 8);
        assert_eq!(plan.scheduled, vec![(2, 1), (3, 6)]);
        assert_eq!(p.pool().num_free(), 0);
    }

    #[test]
    fn the_newest_sequence_is_preempted_and_recomputed_with_its_output() {
        // 3 blocks: two sequences of 4 tokens fill 2, then both grow.
        let mut p = planner(3, 4, 100, false);
        p.add(1, vec![1; 4]);
        p.add(2, vec![2; 4]);
        step(&mut p, 50); // both prefilled, 1 token each
        let plan = step(&mut p, 51); // each needs a 2nd block: only one left
        assert_eq!(plan.preempted, vec![2]);
        assert_eq!(plan.scheduled, vec![(1, 1)]);
        let s2 = p.get(2).expect("seq 2");
        assert_eq!(
            (s2.num_computed, s2.blocks.len(), s2.preemptions),
            (0, 0, 1)
        );
        assert_eq!(s2.tokens, [2, 2, 2, 2, 50], "keeps what it generated");
        assert_eq!(p.waiting().collect::<Vec<_>>(), vec![2]);
        // No admission in a step that preempted; seq 1 runs on.
        p.remove(1);
        let plan = step(&mut p, 52);
        assert_eq!(plan.scheduled, vec![(2, 5)], "recomputes prompt + output");
        assert_eq!(p.total_preemptions(), 1);
    }

    #[test]
    fn a_sequence_larger_than_the_pool_is_exhausted_not_looped() {
        let mut p = planner(2, 4, 100, false);
        p.add(1, vec![1; 8]);
        let plan = step(&mut p, 9);
        assert_eq!(plan.scheduled, vec![(1, 8)]);
        let plan = p.plan();
        assert_eq!(plan.exhausted, vec![1], "a 9th token needs a 3rd block");
        assert!(plan.scheduled.is_empty());
        p.remove(1);
        assert_eq!(p.pool().num_free(), 2);
    }

    #[test]
    fn shared_prefixes_hit_the_cache_and_count_in_the_stats() {
        let mut p = planner(16, 8, 100, true);
        let prefix: Vec<u32> = (0..10).collect();
        p.add(1, [prefix.clone(), vec![77, 78]].concat());
        step(&mut p, 1);
        p.remove(1);
        p.add(2, [prefix.clone(), vec![90]].concat());
        let plan = step(&mut p, 2);
        // 2 full blocks of the 11-token prompt were cached: 8 tokens.
        assert_eq!(plan.scheduled, vec![(2, 3)]);
        assert_eq!(p.get(2).map(|s| s.num_computed), Some(11));
        let stats = p.pool().stats();
        assert_eq!((stats.queries, stats.hits), (12 + 11, 8));
        // A prompt that is entirely cached still computes its last block.
        p.add(3, prefix[..8].to_vec());
        let plan = step(&mut p, 3);
        assert_eq!(plan.scheduled, vec![(2, 1), (3, 4)]);
    }

    #[test]
    fn waiting_sequences_hold_no_blocks_between_steps() {
        // 4 blocks of 4 tokens. A cached 8-token prefix (2 blocks) is
        // shared by two waiting 13-token prompts that need 4 blocks each:
        // the first runs, the second must not keep the cached blocks it
        // found while it waits.
        let mut p = planner(4, 4, 100, true);
        let prefix: Vec<u32> = (0..8).collect();
        p.add(1, [prefix.clone(), vec![50, 51]].concat());
        step(&mut p, 9);
        p.remove(1);
        p.add(2, [prefix.clone(), vec![60, 61, 62, 63, 64]].concat());
        p.add(3, [prefix.clone(), vec![70, 71, 72, 73, 74]].concat());
        let plan = step(&mut p, 10);
        assert_eq!(plan.scheduled, vec![(2, 5)], "2 cached blocks + 2 new");
        assert_eq!(p.pool().num_free(), 0);
        assert_eq!(
            p.pool().refs(p.get(2).expect("seq 2").blocks[0]),
            1,
            "seq 3 let go"
        );
        let waiting = p.get(3).expect("seq 3");
        assert!(
            waiting.blocks.is_empty() && waiting.num_computed == 0,
            "{waiting:?}"
        );
        p.remove(2);
        let plan = step(&mut p, 11);
        assert_eq!(plan.scheduled, vec![(3, 5)], "the prefix is still cached");
    }

    #[test]
    fn a_prompt_continuing_a_finished_sequence_takes_over_its_last_block() {
        let mut p = planner(8, 8, 100, true);
        // 6 tokens: one full block and 2 tokens (+ 1 sampled) in the next.
        p.add(1, vec![1, 2, 3, 4, 5, 6]);
        step(&mut p, 7); // computes 6, samples 7
        step(&mut p, 8); // computes 7, samples 8
        let last = p.get(1).expect("seq 1").blocks[1];
        p.remove(1);
        // The next turn: the whole conversation so far plus new tokens.
        p.add(2, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let plan = step(&mut p, 11);
        assert_eq!(
            plan.scheduled,
            vec![(2, 3)],
            "4 cached + 3 in the partial block"
        );
        let s2 = p.get(2).expect("seq 2");
        assert_eq!(s2.blocks[1], last);
        assert_eq!(s2.cached_prompt_tokens(), 7);
        assert_eq!(p.pool().stats().hits, 7);
        // Seq 2 filled that block: it is a full cached block now, and a
        // shorter prompt ending inside it recomputes its part (a full
        // block can be shared, so it is never taken over).
        p.remove(2);
        p.add(3, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(step(&mut p, 12).scheduled, vec![(3, 2)]);
        // Seq 2's own partial tail ([9, 10]) serves its continuation.
        p.remove(3);
        p.add(4, (1..=12).collect());
        assert_eq!(
            step(&mut p, 13).scheduled,
            vec![(4, 2)],
            "8 full + 2 partial cached"
        );
    }

    #[test]
    fn paused_sequences_keep_their_blocks_but_take_no_budget() {
        let mut p = planner(8, 4, 100, false);
        p.add(1, vec![1; 2]);
        p.add(2, vec![2; 2]);
        step(&mut p, 5);
        p.set_paused(1, true);
        let plan = step(&mut p, 6);
        assert_eq!(plan.scheduled, vec![(2, 1)]);
        assert_eq!(p.get(1).map(|s| s.blocks.len()), Some(1));
        p.set_paused(1, false);
        assert_eq!(step(&mut p, 7).scheduled, vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn every_block_is_free_after_any_mix_of_endings() {
        let mut p = planner(6, 4, 7, true);
        for id in 0..10u64 {
            p.add(id, (0..(3 + id as u32 * 2)).collect());
        }
        for round in 0..40u32 {
            let plan = step(&mut p, 500 + round);
            for id in plan.exhausted {
                p.remove(id);
            }
            // Finish or cancel a running sequence now and then.
            if round % 3 == 0
                && let Some(&id) = p.running().first()
            {
                p.remove(id);
            }
        }
        for id in 0..10 {
            p.remove(id);
        }
        assert_eq!(p.pool().num_free(), 6);
        assert_eq!(p.num_running() + p.num_waiting(), 0);
        assert!(
            p.total_preemptions() > 0,
            "the pool was tight enough to preempt"
        );
    }
}
