//! The engine core: the planner, the KV pool and the engine, driven one
//! step at a time. No threads and no channels here (the engine loop adds
//! those), so the batching behaviour is tested directly: add requests, call
//! [`Core::step`] until they finish, compare the ids.

use std::collections::HashMap;

use tracing::warn;

use super::planner::{Plan, Planner, PlannerConfig, SeqId};
use crate::engine::grammar::Constraint;
use crate::{
    engine::{
        Engine, EngineError, FinishReason, GenerateRequest, Sampler, TokenLogprobs, sampling,
    },
    kv::{BlockPool, KvCache},
    models::Batch,
};

/// Sizes of the engine core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    pub planner: PlannerConfig,
    pub num_blocks: usize,
    pub prefix_caching: bool,
}

/// What one step did.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// New tokens, in batch order (at most one per sequence).
    pub tokens: Vec<(SeqId, u32)>,
    /// Log-probabilities of the new tokens of sequences that asked for them.
    pub logprobs: HashMap<SeqId, TokenLogprobs>,
    /// Sequences that ended this step (their blocks are free again). A
    /// `Stop` ends on an end-of-sequence id, which is not in `tokens`.
    pub finished: Vec<(SeqId, FinishReason)>,
    /// Sequences preempted this step (they will be recomputed).
    pub preempted: Vec<SeqId>,
    /// Tokens the step's forward pass processed.
    pub batch_tokens: usize,
    /// Sequences in the step's batch.
    pub batch_seqs: usize,
}

/// The step failed; the sequences of its batch were removed.
#[derive(Debug)]
pub struct StepFailed {
    pub error: EngineError,
    pub seqs: Vec<SeqId>,
}

#[derive(Debug)]
struct Request {
    sampler: Sampler,
    /// Maximum generated tokens (already capped by the context length).
    max_new_tokens: usize,
    ignore_eos: bool,
    /// `Some(n)`: report logprobs with the `n` most likely ids.
    logprobs: Option<usize>,
    constraint: Option<Box<Constraint>>,
    generated: usize,
}

#[derive(Debug)]
pub struct Core<'e> {
    engine: &'e Engine,
    kv: KvCache,
    planner: Planner,
    requests: HashMap<SeqId, Request>,
}

impl<'e> Core<'e> {
    /// Allocates the KV pool (`config.num_blocks` blocks) for `engine`.
    pub fn new(engine: &'e Engine, config: CoreConfig) -> Result<Self, crate::engine::LoadError> {
        let kv = engine.new_kv_cache(config.num_blocks, config.planner.block_size)?;
        Ok(Self::with_cache(engine, config, kv))
    }

    /// An engine core over an already allocated pool.
    pub fn with_cache(engine: &'e Engine, config: CoreConfig, kv: KvCache) -> Self {
        let pool = BlockPool::new(config.num_blocks, config.prefix_caching);
        Self {
            engine,
            kv,
            planner: Planner::new(config.planner, pool),
            requests: HashMap::new(),
        }
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// Forgets every sequence and starts over on a clean block pool (the
    /// KV memory is kept). For recovery after a panic mid-step, when the
    /// bookkeeping may be half-updated.
    pub fn reset(&mut self) {
        let config = *self.planner.config();
        let pool = BlockPool::new(
            self.planner.pool().num_blocks(),
            self.planner.pool().caching(),
        );
        self.planner = Planner::new(config, pool);
        self.requests.clear();
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// Whether any sequence is running or waiting.
    pub fn has_work(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Queues a request. `max_new_tokens` must be at least 1 (a request
    /// with no room to generate is answered without the engine).
    pub fn add(&mut self, id: SeqId, request: GenerateRequest) {
        assert!(request.max_new_tokens > 0, "nothing to generate");
        self.requests.insert(
            id,
            Request {
                sampler: Sampler::new(request.sampling.clone(), &request.prompt),
                max_new_tokens: request.max_new_tokens,
                ignore_eos: request.ignore_eos,
                logprobs: request.logprobs,
                constraint: request.constraint,
                generated: 0,
            },
        );
        self.planner.add(id, request.prompt);
    }

    /// Drops a sequence wherever it is (client gone, stop string matched):
    /// its blocks are free at once.
    pub fn remove(&mut self, id: SeqId) {
        self.planner.remove(id);
        self.requests.remove(&id);
    }

    /// Holds a running sequence out of the batches (its client is not
    /// reading), or lets it back in.
    pub fn set_paused(&mut self, id: SeqId, paused: bool) {
        self.planner.set_paused(id, paused);
    }

    /// Plans, runs and samples one step.
    pub fn step(&mut self) -> Result<StepOutput, StepFailed> {
        let plan = self.planner.plan();
        let mut out = StepOutput {
            preempted: plan.preempted.clone(),
            ..StepOutput::default()
        };
        for &id in &plan.exhausted {
            self.planner.remove(id);
            self.requests.remove(&id);
            out.finished.push((id, FinishReason::Length));
        }
        if plan.is_empty() {
            return Ok(out);
        }
        let (batch, sampled) = self.batch(&plan);
        out.batch_tokens = batch.tokens.len();
        out.batch_seqs = plan.scheduled.len();
        let logits = match self.engine.step(&batch, &mut self.kv) {
            Ok(l) => l,
            Err(error) => {
                let seqs: Vec<SeqId> = plan.scheduled.iter().map(|(id, _)| *id).collect();
                for &id in &seqs {
                    self.remove(id);
                }
                return Err(StepFailed { error, seqs });
            }
        };
        self.planner.commit(&plan);
        let eos = self.engine.tokenizer().eos_ids();
        let max_model_len = self.engine.max_model_len();
        for (row, id) in sampled.into_iter().enumerate() {
            let Some(req) = self.requests.get_mut(&id) else {
                continue;
            };
            let row = logits.row(row);
            let token = match req.constraint.as_mut() {
                // Only constrained rows are copied and masked; the others sample in place.
                Some(c) => {
                    let mut masked = row.to_vec();
                    match c.mask_logits(&mut masked) {
                        Ok(()) => req.sampler.sample(&masked),
                        Err(e) => {
                            warn!("sequence {id}: the grammar allows no token ({e}); ending it");
                            self.remove(id);
                            out.finished.push((id, FinishReason::Stop));
                            continue;
                        }
                    }
                }
                None => req.sampler.sample(row),
            };
            if let Some(c) = req.constraint.as_mut()
                && let Err(e) = c.accept(token)
            {
                warn!("sequence {id}: the grammar refused its sampled token ({e}); ending it");
                self.remove(id);
                out.finished.push((id, FinishReason::Stop));
                continue;
            }
            if let Some(top) = req.logprobs {
                out.logprobs.insert(id, sampling::logprobs(row, token, top));
            }
            if !req.ignore_eos && eos.contains(&token) {
                self.remove(id);
                out.finished.push((id, FinishReason::Stop));
                continue;
            }
            req.sampler.accept(token);
            req.generated += 1;
            out.tokens.push((id, token));
            self.planner.append_token(id, token);
            let total = self.planner.get(id).map_or(0, |s| s.tokens.len());
            if req.generated >= req.max_new_tokens || total >= max_model_len {
                self.remove(id);
                out.finished.push((id, FinishReason::Length));
            }
        }
        Ok(out)
    }

    /// The packed batch of `plan`, and which sequence each logits row is.
    fn batch(&self, plan: &Plan) -> (Batch, Vec<SeqId>) {
        let mut batch = Batch::new(self.planner.config().block_size);
        let mut sampled = Vec::new();
        for &(id, n) in &plan.scheduled {
            let seq = self.planner.get(id).expect("scheduled sequence exists");
            let start = seq.num_computed;
            let sample = start + n == seq.tokens.len();
            batch.push(&seq.tokens[start..start + n], start, &seq.blocks, sample);
            if sample {
                sampled.push(id);
            }
        }
        (batch, sampled)
    }
}
