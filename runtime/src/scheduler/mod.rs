//! The scheduler between the HTTP API and the engine: admission with a
//! bounded wait queue, and the engine loop that owns the engine's KV pool
//! and runs continuous batches.
//!
//! After TGI's router and vLLM V1's engine core: handlers
//! [`Scheduler::submit`] a tokenized, validated [`Job`]; it either gets a
//! [`Handle`] or, when `--max-num-seqs` sequences are in the engine and
//! `--max-queued-requests` more are waiting, an immediate
//! [`SubmitError::Overloaded`] (HTTP 429): a bounded queue keeps latency and
//! memory bounded instead of letting an overload pile up (vLLM #2901). A
//! prompt that could never fit in the KV pool is refused at once
//! ([`SubmitError::NeverFits`], HTTP 400).
//!
//! One engine loop thread (`engine_loop.rs`) owns the [`core::Core`]:
//! planner, block pool, KV memory. Each iteration takes waiting jobs in,
//! drops cancelled ones, runs one step over a packed batch of every
//! running sequence and streams the new text back as [`Event`]s. Dropping
//! the [`Handle`] — the handler future or the response stream going away
//! with the client — is cancellation: a queued job leaves the queue at once,
//! one in the engine is dropped before the next step and its blocks freed.

pub mod core;
mod engine_loop;
pub mod planner;

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::info;

use crate::{
    engine::{Engine, EngineError, GenerateRequest, TokenLogprobs},
    kv::KvCache,
    metrics::{FinishedReason, Metrics},
};

pub use self::core::CoreConfig;

/// Events a job may have in flight towards its client. Bounded: a client
/// that reads a stream slowly is held out of the batches (its sequence is
/// paused, keeping its blocks) instead of the server buffering up to
/// `max_tokens` chunks for it, and without slowing anyone else.
const EVENT_BUFFER: usize = 32;

/// One request for the engine: tokenized, validated, with its stop strings.
#[derive(Debug)]
pub struct Job {
    /// The response id (`cmpl-…`), for the per-request log line.
    pub id: String,
    pub request: GenerateRequest,
    /// Non-empty stop strings: text is cut before the first match.
    pub stop: Vec<String>,
    /// Detokenize special tokens too (a tool-call marker can be one).
    pub keep_special_tokens: bool,
    /// When the HTTP request arrived (TTFT and e2e latency start here).
    pub arrived: Instant,
}

/// What the engine reports about a job, in order: any number of `Text`,
/// then exactly one `Finished` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// Newly released text and the ids generated since the previous event
    /// (either may be empty: text can be held back, and the last ids of a
    /// stop string are reported with the text before it).
    Text {
        text: String,
        tokens: Vec<u32>,
        /// One per id of `tokens` when the request asked for logprobs,
        /// else empty.
        logprobs: Vec<TokenLogprobs>,
    },
    Finished {
        reason: Finish,
        /// Generated ids, including any that completed a stop string.
        completion_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
    },
    Failed(EngineError),
}

/// Why a generation ended, as the API reports it (`finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence id or a stop string.
    Stop,
    /// `max_tokens`, the context length, or the KV pool's capacity.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "The server is overloaded: {running} requests are running and {waiting} waiting (the queue limit). Retry later."
    )]
    Overloaded { running: usize, waiting: usize },
    #[error(
        "The prompt has {tokens} tokens, but the KV cache holds {capacity} tokens in all ({blocks} blocks of {block_size}); it can never be served (raise --kv-cache-memory)"
    )]
    NeverFits {
        tokens: usize,
        capacity: usize,
        blocks: usize,
        block_size: usize,
    },
    #[error("the engine is not running")]
    NotStarted,
}

impl SubmitError {
    /// What to put in `Retry-After` for [`SubmitError::Overloaded`]. A
    /// guess: a place frees when a running generation ends, which is
    /// typically seconds away.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);
}

/// Limits of admission and batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_queued: usize,
}

/// Owned by the API state; dropping it stops the engine loop once the
/// current step is done.
#[derive(Debug)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    work: Condvar,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs not yet taken by the engine loop.
    queue: VecDeque<Queued>,
    /// Jobs the engine loop holds (running, or waiting for blocks there).
    in_engine: usize,
    /// Of those, the ones waiting for blocks or preempted.
    engine_waiting: usize,
    /// Tokens the KV pool holds in all; set when the loop starts.
    pool: Option<PoolSize>,
    next_ticket: u64,
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct PoolSize {
    blocks: usize,
    block_size: usize,
}

#[derive(Debug)]
struct Queued {
    ticket: u64,
    job: Job,
    enqueued: Instant,
    events: mpsc::Sender<Event>,
}

impl Scheduler {
    /// Admission state only; the engine loop starts with [`Scheduler::start`]
    /// once the model is loaded.
    pub fn new(config: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        let config = SchedulerConfig {
            max_num_seqs: config.max_num_seqs.max(1),
            ..config
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            config,
            metrics,
        });
        inner.publish(&inner.lock());
        Self { inner }
    }

    /// Starts the engine loop over `kv` (allocated for `core.num_blocks`
    /// blocks).
    pub fn start(&self, engine: Arc<Engine>, kv: KvCache, core: CoreConfig) -> std::io::Result<()> {
        self.inner.lock().pool = Some(PoolSize {
            blocks: core.num_blocks,
            block_size: core.planner.block_size,
        });
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name("engine-loop".into())
            .spawn(move || engine_loop::run(&inner, &engine, kv, core))
            .map(drop)
    }

    /// Whether no job is running or waiting. A job counts until the engine
    /// loop has recorded its metrics and logged it, which is after its
    /// client got the last event: the shutdown drain waits for this, so no
    /// request's log line is lost at exit.
    pub fn is_idle(&self) -> bool {
        let state = self.inner.lock();
        state.in_engine == 0 && state.queue.is_empty()
    }

    /// Admits `job` (into the engine at once, or waiting its turn), or
    /// refuses it.
    pub fn submit(&self, job: Job) -> Result<Handle, SubmitError> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let mut state = self.inner.lock();
        let pool = state.pool.ok_or(SubmitError::NotStarted)?;
        let capacity = pool.blocks * pool.block_size;
        // The prompt plus the first generated token must fit.
        if job.request.prompt.len() + 1 > capacity {
            return Err(SubmitError::NeverFits {
                tokens: job.request.prompt.len(),
                capacity,
                blocks: pool.blocks,
                block_size: pool.block_size,
            });
        }
        let waiting = state.queue.len() + state.engine_waiting;
        if state.queue.len() + state.in_engine
            >= self.inner.config.max_num_seqs + self.inner.config.max_queued
        {
            return Err(SubmitError::Overloaded {
                running: state.in_engine - state.engine_waiting,
                waiting,
            });
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Queued {
            ticket,
            job,
            enqueued: Instant::now(),
            events,
        });
        self.inner.publish(&state);
        drop(state);
        self.inner.work.notify_one();
        Ok(Handle {
            events: rx,
            ticket,
            inner: Arc::clone(&self.inner),
        })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.work.notify_all();
    }
}

impl Inner {
    /// The loop's bookkeeping is a handful of assignments that leave the
    /// state consistent at every point, so poisoning is not a reason to
    /// take the whole server down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        self.metrics
            .set_running(state.in_engine - state.engine_waiting);
        self.metrics
            .set_waiting(state.queue.len() + state.engine_waiting);
    }
}

/// A submitted job's results. Dropping it cancels the job.
#[derive(Debug)]
pub struct Handle {
    events: mpsc::Receiver<Event>,
    ticket: u64,
    inner: Arc<Inner>,
}

impl Handle {
    /// The next event; `None` only if the engine loop vanished (a panic),
    /// which callers report as an internal error.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let Some(at) = state.queue.iter().position(|q| q.ticket == self.ticket) else {
            // In the engine or done: the loop notices the closed channel.
            return;
        };
        let removed = state.queue.remove(at);
        self.inner.publish(&state);
        drop(state);
        if let Some(q) = removed {
            let e2e = q.job.arrived.elapsed();
            self.inner.metrics.request_finished(
                q.job.request.prompt.len(),
                0,
                FinishedReason::Abort,
                e2e,
            );
            info!(
                "request {} finished: prompt_tokens={} generation_tokens=0 queue={:.3}s ttft=- total={:.3}s finish=abort (client left while queued)",
                q.job.id,
                q.job.request.prompt.len(),
                q.enqueued.elapsed().as_secs_f64(),
                e2e.as_secs_f64()
            );
        }
    }
}
