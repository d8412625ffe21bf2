//! A worker thread: takes jobs from the queue in order, runs each to
//! completion on the engine, and reports text, timings and the outcome.
//!
//! The job's channel doubles as the cancellation signal: once the client's
//! [`super::Handle`] is gone, the channel is closed and generation stops at
//! the next token, freeing the worker for the next job.

use std::{mem, ops::ControlFlow, panic::AssertUnwindSafe, sync::Arc, time::Instant};

use tracing::info;

use super::{Event, Finish, Inner, Queued};
use crate::{
    engine::{FinishReason, text::TextStream},
    metrics::FinishedReason,
};

pub(super) fn run(inner: &Arc<Inner>) {
    loop {
        let queued = {
            let mut state = inner.lock();
            loop {
                if state.closed {
                    return;
                }
                if let Some(q) = state.queue.pop_front() {
                    state.running += 1;
                    inner.publish(&state);
                    break q;
                }
                state = inner
                    .work
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let id = queued.job.id.clone();
        // A panic in the engine (a bug, or a candle kernel assertion) must
        // not take the slot with it: the client gets an error (its channel
        // closes), the worker lives on for the next job.
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| generate(inner, queued)));
        if run.is_err() {
            tracing::error!("request {id}: the engine panicked; the request failed");
        }
        let mut state = inner.lock();
        state.running -= 1;
        inner.publish(&state);
    }
}

/// How a run ended, before mapping to the API and the metrics.
enum Outcome {
    Finished(Finish),
    Aborted,
    Failed,
}

fn generate(inner: &Inner, q: Queued) {
    let metrics = &inner.metrics;
    let Queued {
        job,
        enqueued,
        events,
        ..
    } = q;
    let started = Instant::now();
    let queue_time = started - enqueued;
    metrics.observe_queue_time(queue_time);
    let tokenizer = job.engine.tokenizer();
    let mut text = TextStream::new(job.stop);
    let mut unreported = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last = started;
    let (mut gone, mut stopped) = (events.is_closed(), false);
    let mut failure = None;

    let result = if gone {
        Err(None)
    } else {
        job.engine
            .generate(&job.request, |token| {
                let now = Instant::now();
                match first {
                    None => {
                        metrics.observe_time_to_first_token(now - job.arrived);
                        first = Some(now);
                    }
                    Some(_) => metrics.observe_time_per_output_token(now - last),
                }
                last = now;
                unreported.push(token);
                let delta = match text.push(tokenizer, token) {
                    Ok(delta) => delta,
                    Err(e) => {
                        failure = Some(e.into());
                        return ControlFlow::Break(());
                    }
                };
                stopped = delta.stopped;
                if !delta.text.is_empty() || delta.stopped {
                    let event = Event::Text {
                        text: delta.text,
                        tokens: mem::take(&mut unreported),
                    };
                    gone = events.blocking_send(event).is_err();
                } else {
                    gone = events.is_closed();
                }
                if gone || stopped {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(Some)
    };

    let (outcome, generated) = match result {
        Err(None) => (Outcome::Aborted, 0),
        Err(Some(e)) => {
            let _ = events.blocking_send(Event::Failed(e));
            (Outcome::Failed, 0)
        }
        Ok(generation) => {
            let n = generation.tokens.len();
            let finish = match generation.finish_reason {
                FinishReason::Stop => Some(Finish::Stop),
                FinishReason::Length => Some(Finish::Length),
                FinishReason::Cancelled if stopped => Some(Finish::Stop),
                FinishReason::Cancelled => None,
            };
            match (failure, finish) {
                (Some(e), _) => {
                    let _ = events.blocking_send(Event::Failed(e));
                    (Outcome::Failed, n)
                }
                (None, Some(finish)) if !gone => {
                    if first.is_none() {
                        // The first sampled id was end-of-sequence.
                        let now = Instant::now();
                        metrics.observe_time_to_first_token(now - job.arrived);
                        first = Some(now);
                    }
                    let done = Event::Finished {
                        reason: finish,
                        completion_tokens: n,
                    };
                    match flush(&mut text, tokenizer, &mut unreported, &events, stopped) {
                        Ok(()) if events.blocking_send(done).is_ok() => {
                            (Outcome::Finished(finish), n)
                        }
                        Ok(()) | Err(None) => (Outcome::Aborted, n),
                        Err(Some(e)) => {
                            let _ = events.blocking_send(Event::Failed(e));
                            (Outcome::Failed, n)
                        }
                    }
                }
                (None, _) => (Outcome::Aborted, n),
            }
        }
    };

    let ended = Instant::now();
    let reason = match outcome {
        Outcome::Finished(Finish::Stop) => FinishedReason::Stop,
        Outcome::Finished(Finish::Length) => FinishedReason::Length,
        Outcome::Aborted | Outcome::Failed => FinishedReason::Abort,
    };
    let prompt_tokens = job.request.prompt.len();
    metrics.request_finished(prompt_tokens, generated, reason, ended - job.arrived);
    let finish = match outcome {
        Outcome::Finished(f) => f.as_str(),
        Outcome::Aborted => "abort",
        Outcome::Failed => "error",
    };
    info!(
        "request {} finished: prompt_tokens={prompt_tokens} generation_tokens={generated} queue={:.3}s ttft={} total={:.3}s finish={finish}",
        job.id,
        queue_time.as_secs_f64(),
        first.map_or_else(
            || "-".to_owned(),
            |t| format!("{:.3}s", (t - job.arrived).as_secs_f64())
        ),
        (ended - job.arrived).as_secs_f64(),
    );
}

/// Releases the held-back text and the ids not yet reported. `Err(None)`:
/// the client is gone.
fn flush(
    text: &mut TextStream,
    tokenizer: &crate::engine::Tokenizer,
    unreported: &mut Vec<u32>,
    events: &tokio::sync::mpsc::Sender<Event>,
    stopped: bool,
) -> Result<(), Option<crate::engine::EngineError>> {
    let rest = if stopped {
        String::new()
    } else {
        text.finish(tokenizer).map_err(|e| Some(e.into()))?.text
    };
    if rest.is_empty() && unreported.is_empty() {
        return Ok(());
    }
    events
        .blocking_send(Event::Text {
            text: rest,
            tokens: mem::take(unreported),
        })
        .map_err(|_| None)
}
