//! The scheduler between the HTTP API and the engine: admission with a
//! bounded wait queue, and worker threads that drive the engine.
//!
//! After TGI's router: handlers [`Scheduler::submit`] a tokenized, validated
//! [`Job`]; it either gets a [`Handle`] (running, or waiting in the FIFO
//! queue) or, when `--max-concurrent-requests` are running and
//! `--max-queued-requests` are waiting, an immediate [`Overloaded`] (HTTP
//! 429): a bounded queue keeps latency and memory bounded instead of letting
//! an overload pile up unboundedly (vLLM #2901).
//!
//! Each of the `--max-concurrent-requests` workers is a plain OS thread
//! (generation is blocking CPU/GPU work, not async) running one sequence at
//! a time; batching across requests is a later step. Results flow back as
//! [`Event`]s over a channel. Dropping the [`Handle`] — the handler future
//! or the response stream going away with the client — is cancellation: a
//! waiting job leaves the queue at once, a running one stops at its next
//! token (`worker.rs`).

mod worker;

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::info;

/// Events a job may have in flight towards its client. Bounded, so a client that reads a
/// stream slowly holds its worker back (TCP backpressure reaches generation) instead of the
/// server buffering up to `max_tokens` chunks for it.
const EVENT_BUFFER: usize = 32;

use crate::{
    engine::{Engine, EngineError, GenerateRequest},
    metrics::{FinishedReason, Metrics},
};

/// One request for a worker: tokenized, validated, with its stop strings.
#[derive(Debug)]
pub struct Job {
    /// The response id (`cmpl-…`), for the per-request log line.
    pub id: String,
    pub engine: Arc<Engine>,
    pub request: GenerateRequest,
    /// Non-empty stop strings: text is cut before the first match.
    pub stop: Vec<String>,
    /// When the HTTP request arrived (TTFT and e2e latency start here).
    pub arrived: Instant,
}

/// What a worker reports about a job, in order: any number of `Text`, then
/// exactly one `Finished` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// Newly released text and the ids generated since the previous event
    /// (either may be empty: text can be held back, and the last ids of a
    /// stop string are reported with the text before it).
    Text {
        text: String,
        tokens: Vec<u32>,
    },
    Finished {
        reason: Finish,
        /// Generated ids, including any that completed a stop string.
        completion_tokens: usize,
    },
    Failed(EngineError),
}

/// Why a generation ended, as the API reports it (`finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence id or a stop string.
    Stop,
    /// `max_tokens` or the context length.
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

/// The queue is full: the request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "The server is overloaded: {running} requests are running and {waiting} waiting (the queue limit). Retry later."
)]
pub struct Overloaded {
    pub running: usize,
    pub waiting: usize,
}

impl Overloaded {
    /// What to put in `Retry-After`. A guess: a slot frees when a running
    /// generation ends, which is typically seconds away.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);
}

/// Owned by the API state; dropping it stops the workers once they are
/// idle.
#[derive(Debug)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    work: Condvar,
    max_running: usize,
    max_waiting: usize,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    running: usize,
    next_ticket: u64,
    closed: bool,
}

#[derive(Debug)]
struct Queued {
    ticket: u64,
    job: Job,
    enqueued: Instant,
    events: mpsc::Sender<Event>,
}

impl Scheduler {
    /// Starts `max_running` workers (at least one); up to `max_waiting`
    /// more jobs may wait for one of them.
    pub fn new(max_running: usize, max_waiting: usize, metrics: Arc<Metrics>) -> Self {
        let max_running = max_running.max(1);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            max_running,
            max_waiting,
            metrics,
        });
        inner.publish(&inner.lock());
        for i in 0..max_running {
            let inner = Arc::clone(&inner);
            // Spawning fails only when the OS is out of threads at startup;
            // fewer workers then still serve, just with less concurrency.
            let spawned = std::thread::Builder::new()
                .name(format!("engine-worker-{i}"))
                .spawn(move || worker::run(&inner));
            if let Err(e) = spawned {
                tracing::error!("cannot start engine worker {i}: {e}");
            }
        }
        Self { inner }
    }

    /// Whether no job is running or waiting. A job counts as running until its worker has
    /// recorded its metrics and logged it, which is after its client got the last event: the
    /// shutdown drain waits for this, so no request's log line is lost at exit.
    pub fn is_idle(&self) -> bool {
        let state = self.inner.lock();
        state.running == 0 && state.queue.is_empty()
    }

    /// Admits `job` (running at once, or waiting its turn), or refuses it
    /// when the queue is full.
    pub fn submit(&self, job: Job) -> Result<Handle, Overloaded> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let mut state = self.inner.lock();
        let waiting = state.queue.len();
        if state.running + waiting >= self.inner.max_running + self.inner.max_waiting {
            return Err(Overloaded {
                running: state.running,
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
    /// A worker that panicked mid-update leaves counters that are still
    /// consistent (every update is a single assignment), so poisoning is
    /// not a reason to take the whole server down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        self.metrics.set_running(state.running);
        self.metrics.set_waiting(state.queue.len());
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
    /// The next event; `None` only if the worker vanished (a panic), which
    /// callers report as an internal error.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let Some(at) = state.queue.iter().position(|q| q.ticket == self.ticket) else {
            // Running or done: the worker notices the closed channel.
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
