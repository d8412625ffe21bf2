//! The block pool: which physical KV blocks are free, who holds the others,
//! and which full blocks can be found again by their content.
//!
//! After vLLM V1's `BlockPool` and `FreeKVCacheBlockQueue`:
//! - every block has a reference count (sequences sharing a cached prefix
//!   hold the same block);
//! - free blocks (count 0) sit in one queue, least recently freed first;
//!   allocation takes from the front;
//! - a full block's [`BlockHash`] (its parent's hash and its token ids)
//!   stays registered after the block is freed, so a later prompt with the
//!   same prefix revives it (it leaves the free queue) until allocation
//!   reaches it and evicts the hash.
//!
//! Beyond vLLM, a freed sequence's last, partly filled block is kept too
//! (keyed by its parent's hash, with its token ids): a later prompt that
//! continues the same prefix — the next turn of a chat, or prompts sharing
//! a prefix that ends mid-block — takes the block over whole and computes
//! only what follows, as llama.cpp's token-granular slot cache would. Such
//! a block is taken exclusively (its later slots get overwritten), so only
//! a free one is ever reused.
//!
//! The queue is an intrusive doubly-linked list over block ids, so taking a
//! revived block out of the middle is O(1).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A physical block of the KV pool.
pub type BlockId = u32;

/// Identity of a full block's content: SHA-256 of the parent block's hash
/// (all zeros for the first block) and the block's token ids (little
/// endian). A cryptographic hash, because a collision would silently serve
/// another prompt's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash([u8; 32]);

impl BlockHash {
    pub fn of(parent: Option<&BlockHash>, tokens: &[u32]) -> Self {
        let mut h = Sha256::new();
        h.update(parent.map_or([0; 32], |p| p.0));
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        Self(h.finalize().into())
    }
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Meta {
    refs: u32,
    hash: Option<BlockHash>,
    /// Registered as a partial block under this parent key.
    partial: Option<Option<BlockHash>>,
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// Prefix-cache counters, in tokens (vLLM's `prefix_cache_queries` /
/// `prefix_cache_hits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub queries: u64,
    pub hits: u64,
}

#[derive(Debug)]
pub struct BlockPool {
    meta: Vec<Meta>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
    /// Free partial blocks by parent hash (`None`: the sequence's first
    /// block), with the token ids they hold.
    partial: HashMap<Option<BlockHash>, Vec<(BlockId, Vec<u32>)>>,
    caching: bool,
    stats: PrefixStats,
}

impl BlockPool {
    /// `num_blocks` free blocks; `caching` enables prefix caching.
    pub fn new(num_blocks: usize, caching: bool) -> Self {
        assert!(num_blocks < NONE as usize, "too many blocks");
        let mut pool = Self {
            meta: vec![
                Meta {
                    refs: 0,
                    hash: None,
                    partial: None,
                    prev: NONE,
                    next: NONE,
                    in_free_queue: false,
                };
                num_blocks
            ],
            head: NONE,
            tail: NONE,
            num_free: 0,
            cached: HashMap::new(),
            partial: HashMap::new(),
            caching,
            stats: PrefixStats::default(),
        };
        for b in 0..num_blocks as u32 {
            pool.push_back(b);
        }
        pool
    }

    pub fn num_blocks(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that an allocation could take (free, cached or not).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Share of blocks in use by sequences (vLLM's `kv_cache_usage_perc`,
    /// as a fraction).
    pub fn usage(&self) -> f64 {
        if self.meta.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.meta.len() as f64
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// Takes `n` blocks from the front of the free queue (evicting their
    /// cached hashes), or none at all if fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            self.forget_partial(b);
            let m = &mut self.meta[b as usize];
            m.refs = 1;
            if let Some(h) = m.hash.take()
                && self.cached.get(&h) == Some(&b)
            {
                self.cached.remove(&h);
            }
            out.push(b);
        }
        Some(out)
    }

    /// Drops one reference to each block. Blocks that reach zero join the
    /// back of the free queue in reverse order, so a sequence's last blocks
    /// (the least shareable) are evicted before its first.
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let m = &mut self.meta[b as usize];
            assert!(m.refs > 0, "block {b} freed twice");
            m.refs -= 1;
            if m.refs == 0 {
                if m.hash.is_none() && m.partial.is_none() {
                    // Nothing to revive: reuse it first.
                    self.push_front(b);
                } else {
                    self.push_back(b);
                }
            }
        }
    }

    /// The longest run of `hashes` (a sequence's full blocks, in order)
    /// found in the cache; each found block gains a reference. Counts
    /// `query_tokens` queried and the hit tokens in the prefix statistics.
    pub fn lookup(
        &mut self,
        hashes: &[BlockHash],
        block_size: usize,
        query_tokens: usize,
    ) -> Vec<BlockId> {
        if !self.caching {
            return Vec::new();
        }
        let mut hit = Vec::new();
        for h in hashes {
            let Some(&b) = self.cached.get(h) else { break };
            if self.meta[b as usize].refs == 0 {
                self.unlink(b);
            }
            self.meta[b as usize].refs += 1;
            hit.push(b);
        }
        self.stats.queries += query_tokens as u64;
        self.stats.hits += (hit.len() * block_size) as u64;
        hit
    }

    /// Registers a block that just became full. If the same content is
    /// already cached in another block, the first one stays the cached copy.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) {
        if !self.caching {
            return;
        }
        let m = &mut self.meta[block as usize];
        if m.hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            m.hash = Some(hash);
        }
    }

    /// Keeps a block that is about to be freed as a partial block: it holds
    /// the keys and values of `tokens` (fewer than a block) after the
    /// prefix whose last full block hashes to `parent`. Call before
    /// [`BlockPool::free`].
    pub fn register_partial(&mut self, block: BlockId, parent: Option<BlockHash>, tokens: &[u32]) {
        if !self.caching || tokens.is_empty() || self.meta[block as usize].refs != 1 {
            return;
        }
        self.forget_partial(block);
        self.meta[block as usize].partial = Some(parent);
        self.partial
            .entry(parent)
            .or_default()
            .push((block, tokens.to_vec()));
    }

    /// The free partial block after `parent` that shares the longest run
    /// of leading tokens with `next` (at most `max` of them), taken over
    /// whole: it leaves the free queue and the cache. Counts the hit
    /// tokens in the prefix statistics.
    pub fn take_partial(
        &mut self,
        parent: Option<BlockHash>,
        next: &[u32],
        max: usize,
    ) -> Option<(BlockId, usize)> {
        if !self.caching {
            return None;
        }
        let entries = self.partial.get(&parent)?;
        let (block, len) = entries
            .iter()
            .map(|(b, t)| {
                (
                    *b,
                    t.iter()
                        .zip(next)
                        .take_while(|(a, b)| a == b)
                        .count()
                        .min(max),
                )
            })
            .max_by_key(|&(_, len)| len)?;
        if len == 0 {
            return None;
        }
        self.forget_partial(block);
        self.unlink(block);
        self.meta[block as usize].refs = 1;
        self.stats.hits += len as u64;
        Some((block, len))
    }

    fn forget_partial(&mut self, block: BlockId) {
        let Some(parent) = self.meta[block as usize].partial.take() else {
            return;
        };
        if let Some(list) = self.partial.get_mut(&parent) {
            list.retain(|(b, _)| *b != block);
            if list.is_empty() {
                self.partial.remove(&parent);
            }
        }
    }

    /// Whether `block` is held by a sequence (tests and invariants).
    pub fn refs(&self, block: BlockId) -> u32 {
        self.meta[block as usize].refs
    }

    /// Forgets every cached hash (blocks in use keep their contents).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        self.partial.clear();
        for m in &mut self.meta {
            m.hash = None;
            m.partial = None;
        }
    }

    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let m = &mut self.meta[b as usize];
            assert!(m.in_free_queue, "block {b} is not free");
            m.in_free_queue = false;
            (m.prev, m.next)
        };
        if prev == NONE {
            self.head = next;
        } else {
            self.meta[prev as usize].next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.meta[next as usize].prev = prev;
        }
        self.num_free -= 1;
    }

    fn push_back(&mut self, b: BlockId) {
        let tail = self.tail;
        let m = &mut self.meta[b as usize];
        m.prev = tail;
        m.next = NONE;
        m.in_free_queue = true;
        if tail == NONE {
            self.head = b;
        } else {
            self.meta[tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn push_front(&mut self, b: BlockId) {
        let head = self.head;
        let m = &mut self.meta[b as usize];
        m.prev = NONE;
        m.next = head;
        m.in_free_queue = true;
        if head == NONE {
            self.tail = b;
        } else {
            self.meta[head as usize].prev = b;
        }
        self.head = b;
        self.num_free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(tokens: &[u32], bs: usize) -> Vec<BlockHash> {
        let mut out: Vec<BlockHash> = Vec::new();
        for chunk in tokens.chunks_exact(bs) {
            let h = BlockHash::of(out.last(), chunk);
            out.push(h);
        }
        out
    }

    #[test]
    fn allocation_is_all_or_nothing_and_free_returns_blocks() {
        let mut pool = BlockPool::new(4, true);
        let a = pool.allocate(3).expect("3 of 4");
        assert_eq!(pool.num_free(), 1);
        assert!(pool.allocate(2).is_none(), "only 1 free");
        assert_eq!(pool.num_free(), 1, "a failed allocation takes nothing");
        pool.free(&a);
        assert_eq!(pool.num_free(), 4);
        assert_eq!(pool.usage(), 0.0);
    }

    #[test]
    fn cached_blocks_are_revived_until_evicted_in_lru_order() {
        let bs = 2;
        let mut pool = BlockPool::new(4, true);
        let tokens = [1, 2, 3, 4];
        let h = hashes(&tokens, bs);
        let a = pool.allocate(2).expect("blocks");
        pool.register(a[0], h[0]);
        pool.register(a[1], h[1]);
        pool.free(&a);
        assert_eq!(pool.num_free(), 4, "cached blocks still count as free");

        let hit = pool.lookup(&h, bs, 4);
        assert_eq!(hit, a, "both blocks revived");
        assert_eq!(pool.num_free(), 2);
        assert_eq!(
            pool.stats(),
            PrefixStats {
                queries: 4,
                hits: 4
            }
        );
        pool.free(&hit);

        // Two uncached blocks are taken first, then the oldest cached one:
        // the sequence's *last* block (freed first).
        let b = pool.allocate(3).expect("3 blocks");
        assert!(b.contains(&a[1]) && !b.contains(&a[0]), "{b:?} vs {a:?}");
        let hit = pool.lookup(&h, bs, 4);
        assert_eq!(
            hit,
            vec![a[0]],
            "the first block survived, the second was evicted"
        );
        // A different prefix never matches, even with the same tokens later.
        let other = hashes(&[9, 9, 3, 4], bs);
        assert!(pool.lookup(&other, bs, 4).is_empty());
    }

    #[test]
    fn a_freed_partial_block_is_taken_over_by_a_continuing_prompt() {
        let bs = 4;
        let mut pool = BlockPool::new(3, true);
        let h = hashes(&[1, 2, 3, 4], bs);
        let a = pool.allocate(2).expect("blocks");
        pool.register(a[0], h[0]);
        pool.register_partial(a[1], Some(h[0]), &[5, 6, 7]);
        pool.free(&a);
        assert_eq!(pool.num_free(), 3);
        // Another parent, or a first token that differs: no match.
        assert!(pool.take_partial(None, &[5, 6, 7], 3).is_none());
        assert!(pool.take_partial(Some(h[0]), &[9, 6], 3).is_none());
        // The longest common run, capped by `max`.
        let (b, len) = pool
            .take_partial(Some(h[0]), &[5, 6, 9, 9], 3)
            .expect("hit");
        assert_eq!((b, len), (a[1], 2));
        assert_eq!(pool.refs(b), 1);
        assert_eq!(pool.num_free(), 2);
        assert!(
            pool.take_partial(Some(h[0]), &[5, 6], 2).is_none(),
            "taken, so gone"
        );
        // An evicted partial block is forgotten too.
        pool.register_partial(b, Some(h[0]), &[5]);
        pool.free(&[b]);
        let _ = pool.allocate(3).expect("all three");
        assert!(pool.take_partial(Some(h[0]), &[5], 1).is_none());
    }

    #[test]
    fn shared_blocks_free_only_when_the_last_holder_frees() {
        let bs = 2;
        let mut pool = BlockPool::new(3, true);
        let h = hashes(&[5, 6], bs);
        let a = pool.allocate(1).expect("block");
        pool.register(a[0], h[0]);
        let hit = pool.lookup(&h, bs, 3);
        assert_eq!(pool.refs(a[0]), 2);
        pool.free(&a);
        assert_eq!(pool.refs(a[0]), 1);
        assert_eq!(pool.num_free(), 2);
        pool.free(&hit);
        assert_eq!(pool.num_free(), 3);
    }

    #[test]
    fn without_caching_nothing_is_found() {
        let mut pool = BlockPool::new(2, false);
        let h = hashes(&[1, 2], 2);
        let a = pool.allocate(1).expect("block");
        pool.register(a[0], h[0]);
        pool.free(&a);
        assert!(pool.lookup(&h, 2, 2).is_empty());
        assert_eq!(pool.stats(), PrefixStats::default());
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn double_free_is_a_bug() {
        let mut pool = BlockPool::new(1, true);
        let a = pool.allocate(1).expect("block");
        pool.free(&a);
        pool.free(&a);
    }
}
