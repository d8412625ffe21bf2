//! The engine loop thread: takes jobs from the queue into the engine core,
//! drops the ones whose client left, pauses the ones whose client is not
//! reading, runs one step, and turns each new token into text events,
//! timings and, at the end, the request's metrics and log line.
//!
//! A job's channel doubles as the cancellation signal: once the client's
//! [`super::Handle`] is gone the channel is closed, and the sequence is
//! removed (its blocks freed) before the next step.

use std::{
    collections::HashMap,
    mem,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::{Sender, error::TrySendError};
use tracing::{error, info};

use super::{
    Event, Finish, Inner, Queued,
    core::{Core, CoreConfig, StepOutput},
    planner::SeqId,
};
use crate::{
    engine::{Engine, EngineError, FinishReason, TokenLogprobs, Tokenizer, text::TextStream},
    kv::{KvCache, PrefixStats},
    metrics::FinishedReason,
};

/// Events a step may send one sequence: its token's text, the text held
/// back until the end, and `Finished`. A sequence is only scheduled when
/// its channel has room for all of them, so sending never blocks the loop.
const EVENTS_PER_STEP: usize = 3;

/// How long an idle-but-paused loop waits before looking at the paused
/// clients again.
const PAUSED_POLL: Duration = Duration::from_millis(2);

/// A job inside the engine.
struct Live {
    job_id: String,
    prompt_tokens: usize,
    events: Sender<Event>,
    text: TextStream,
    /// Ids generated but not yet sent (their text was held back).
    unreported: Vec<u32>,
    /// Their log-probabilities, when the request asked for them.
    unreported_logprobs: Vec<TokenLogprobs>,
    generated: usize,
    arrived: Instant,
    enqueued: Instant,
    started: Instant,
    first: Option<Instant>,
    last: Instant,
    cached_tokens: usize,
}

/// How a job ended, before mapping to the API and the metrics.
enum Outcome {
    Finished(Finish),
    Aborted,
    Failed(EngineError),
}

pub(super) fn run(inner: &Arc<Inner>, engine: &Arc<Engine>, kv: KvCache, config: CoreConfig) {
    let mut core = Core::with_cache(engine, config, kv);
    let mut live: HashMap<SeqId, Live> = HashMap::new();
    let mut next_id: SeqId = 0;
    let mut reported = Reported::default();
    let tokenizer = engine.tokenizer();
    let max_seqs = inner.config.max_num_seqs;
    let mut idle_paused = false;
    loop {
        // 1. Intake, or sleep until there is work.
        let taken: Vec<Queued> = {
            let mut state = inner.lock();
            loop {
                if state.closed {
                    return;
                }
                let room = max_seqs.saturating_sub(live.len());
                if room > 0 && !state.queue.is_empty() {
                    let n = room.min(state.queue.len());
                    let taken: Vec<Queued> = state.queue.drain(..n).collect();
                    state.in_engine += taken.len();
                    break taken;
                }
                if !live.is_empty() && !idle_paused {
                    break Vec::new();
                }
                if live.is_empty() {
                    state = inner.work.wait(state).unwrap_or_else(|e| e.into_inner());
                } else {
                    // Every running client is slow: look again shortly.
                    state = inner
                        .work
                        .wait_timeout(state, PAUSED_POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    idle_paused = false;
                }
            }
        };
        for q in taken {
            let id = next_id;
            next_id += 1;
            admit(inner, &mut core, &mut live, id, q);
        }

        // 2. Gone clients leave; slow ones wait.
        let gone: Vec<SeqId> = live
            .iter()
            .filter(|(_, l)| l.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            core.remove(id);
            end(inner, &mut live, id, Outcome::Aborted, tokenizer);
        }
        for (id, l) in &live {
            core.set_paused(*id, l.events.capacity() < EVENTS_PER_STEP);
        }

        // 3. One step.
        let step = std::panic::catch_unwind(AssertUnwindSafe(|| core.step()));
        match step {
            Ok(Ok(out)) => {
                idle_paused = out.batch_tokens == 0 && !live.is_empty();
                deliver(inner, &mut core, &mut live, out, tokenizer);
            }
            Ok(Err(failed)) => {
                error!(
                    "a step of {} sequences failed: {}",
                    failed.seqs.len(),
                    crate::errors::chain(&failed.error)
                );
                let message = crate::errors::chain(&failed.error);
                for id in failed.seqs {
                    let e = EngineError::Inference(candle_core::Error::Msg(message.clone()));
                    end(inner, &mut live, id, Outcome::Failed(e), tokenizer);
                }
            }
            Err(_) => {
                // A bug or a kernel assertion: fail what was in flight and
                // start over on a clean pool rather than take the server down.
                error!(
                    "the engine panicked; failing the {} requests in it",
                    live.len()
                );
                let ids: Vec<SeqId> = live.keys().copied().collect();
                for id in ids {
                    core.remove(id);
                    let e = EngineError::Inference(candle_core::Error::Msg(
                        "the engine panicked".into(),
                    ));
                    end(inner, &mut live, id, Outcome::Failed(e), tokenizer);
                }
                core.reset();
            }
        }
        publish(inner, &core, &live, &mut reported);
    }
}

fn admit(
    inner: &Inner,
    core: &mut Core<'_>,
    live: &mut HashMap<SeqId, Live>,
    id: SeqId,
    q: Queued,
) {
    let Queued {
        job,
        enqueued,
        events,
        ..
    } = q;
    let now = Instant::now();
    inner.metrics.observe_queue_time(now - enqueued);
    live.insert(
        id,
        Live {
            job_id: job.id,
            prompt_tokens: job.request.prompt.len(),
            events,
            text: TextStream::new(job.stop).keep_special_tokens(job.keep_special_tokens),
            unreported: Vec::new(),
            unreported_logprobs: Vec::new(),
            generated: 0,
            arrived: job.arrived,
            enqueued,
            started: now,
            first: None,
            last: now,
            cached_tokens: 0,
        },
    );
    if job.request.max_new_tokens == 0 {
        // No room to generate: answered without the engine.
        end(
            inner,
            live,
            id,
            Outcome::Finished(Finish::Length),
            core.engine().tokenizer(),
        );
        return;
    }
    core.add(id, job.request);
}

/// Turns a step's tokens and endings into events.
fn deliver(
    inner: &Inner,
    core: &mut Core<'_>,
    live: &mut HashMap<SeqId, Live>,
    out: StepOutput,
    tokenizer: &Tokenizer,
) {
    let now = Instant::now();
    let mut logprobs = out.logprobs;
    for (id, token) in out.tokens {
        let Some(l) = live.get_mut(&id) else { continue };
        match l.first {
            None => {
                inner.metrics.observe_time_to_first_token(now - l.arrived);
                l.first = Some(now);
                if let Some(s) = core.planner().get(id) {
                    l.cached_tokens = s.cached_prompt_tokens();
                }
            }
            Some(_) => inner.metrics.observe_time_per_output_token(now - l.last),
        }
        l.last = now;
        l.generated += 1;
        l.unreported.push(token);
        if let Some(lp) = logprobs.remove(&id) {
            l.unreported_logprobs.push(lp);
        }
        let delta = match l.text.push(tokenizer, token) {
            Ok(d) => d,
            Err(e) => {
                core.remove(id);
                end(inner, live, id, Outcome::Failed(e.into()), tokenizer);
                continue;
            }
        };
        if !delta.text.is_empty() || delta.stopped {
            let event = Event::Text {
                text: delta.text,
                tokens: mem::take(&mut l.unreported),
                logprobs: mem::take(&mut l.unreported_logprobs),
            };
            if !send(&l.events, event) {
                core.remove(id);
                end(inner, live, id, Outcome::Aborted, tokenizer);
                continue;
            }
        }
        if delta.stopped {
            core.remove(id);
            end(inner, live, id, Outcome::Finished(Finish::Stop), tokenizer);
        }
    }
    for (id, reason) in out.finished {
        let finish = match reason {
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length | FinishReason::Cancelled => Finish::Length,
        };
        end(inner, live, id, Outcome::Finished(finish), tokenizer);
    }
}

/// `try_send` that reports whether the client can still be reached. The
/// channel always has room (see [`EVENTS_PER_STEP`]).
fn send(events: &Sender<Event>, event: Event) -> bool {
    match events.try_send(event) {
        Ok(()) => true,
        Err(TrySendError::Closed(_)) => false,
        Err(TrySendError::Full(_)) => {
            error!("an event channel was full; dropping the request");
            false
        }
    }
}

/// Ends a job: last events, metrics, the log line, the slot back. A job
/// already ended (a stop string, then its `finished` entry) is ignored.
fn end(
    inner: &Inner,
    live: &mut HashMap<SeqId, Live>,
    id: SeqId,
    outcome: Outcome,
    tokenizer: &Tokenizer,
) {
    let Some(mut l) = live.remove(&id) else {
        return;
    };
    let (reason, label) = match outcome {
        Outcome::Finished(finish) => {
            if l.first.is_none() {
                // The first sampled id was end-of-sequence.
                let now = Instant::now();
                inner.metrics.observe_time_to_first_token(now - l.arrived);
                l.first = Some(now);
            }
            if deliver_end(&mut l, finish, tokenizer) {
                match finish {
                    Finish::Stop => (FinishedReason::Stop, finish.as_str()),
                    Finish::Length => (FinishedReason::Length, finish.as_str()),
                }
            } else {
                (FinishedReason::Abort, "abort")
            }
        }
        Outcome::Failed(e) => {
            let _ = send(&l.events, Event::Failed(e));
            (FinishedReason::Abort, "error")
        }
        Outcome::Aborted => (FinishedReason::Abort, "abort"),
    };
    let ended = Instant::now();
    inner
        .metrics
        .request_finished(l.prompt_tokens, l.generated, reason, ended - l.arrived);
    info!(
        "request {} finished: prompt_tokens={} generation_tokens={} cached_tokens={} queue={:.3}s ttft={} total={:.3}s finish={finish}",
        l.job_id,
        l.prompt_tokens,
        l.generated,
        l.cached_tokens,
        (l.started - l.enqueued).as_secs_f64(),
        l.first.map_or_else(
            || "-".to_owned(),
            |t| format!("{:.3}s", (t - l.arrived).as_secs_f64())
        ),
        (ended - l.arrived).as_secs_f64(),
        finish = label,
    );
    let mut state = inner.lock();
    state.in_engine -= 1;
    inner.publish(&state);
}

/// Sends the text held back and `Finished`; false if the client is gone
/// (or the text could not be decoded, reported as `Failed`).
fn deliver_end(l: &mut Live, finish: Finish, tokenizer: &Tokenizer) -> bool {
    let rest = if l.text.is_stopped() {
        String::new()
    } else {
        match l.text.finish(tokenizer) {
            Ok(d) => d.text,
            Err(e) => {
                let _ = send(&l.events, Event::Failed(e.into()));
                return false;
            }
        }
    };
    if !(rest.is_empty() && l.unreported.is_empty()) {
        let text = Event::Text {
            text: rest,
            tokens: mem::take(&mut l.unreported),
            logprobs: mem::take(&mut l.unreported_logprobs),
        };
        if !send(&l.events, text) {
            return false;
        }
    }
    send(
        &l.events,
        Event::Finished {
            reason: finish,
            completion_tokens: l.generated,
            cached_tokens: l.cached_tokens,
        },
    )
}

/// Counters already reported to the metrics (the pool keeps totals).
#[derive(Default)]
struct Reported {
    preemptions: u64,
    prefix: PrefixStats,
}

fn publish(inner: &Inner, core: &Core<'_>, live: &HashMap<SeqId, Live>, reported: &mut Reported) {
    let planner = core.planner();
    let metrics = &inner.metrics;
    metrics.set_kv_cache_usage(planner.pool().usage());
    let preemptions = planner.total_preemptions();
    metrics.add_preemptions(preemptions - reported.preemptions);
    reported.preemptions = preemptions;
    let stats = planner.pool().stats();
    metrics.add_prefix_cache(
        stats.queries - reported.prefix.queries,
        stats.hits - reported.prefix.hits,
    );
    reported.prefix = stats;
    let mut state = inner.lock();
    state.engine_waiting = planner.num_waiting().min(live.len());
    inner.publish(&state);
}
