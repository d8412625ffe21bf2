//! Server-sent event responses for `"stream": true`, in OpenAI's framing:
//! one `data: <json>\n\n` per chunk and a final `data: [DONE]\n\n`.
//!
//! Chat streams open with a chunk whose delta carries only the role, then
//! content deltas, then an empty delta with `finish_reason`; completion
//! streams send text chunks and a last empty one with `finish_reason`. With
//! `stream_options.include_usage` every chunk has `"usage": null` and one
//! more chunk with empty `choices` carries the usage. vLLM's
//! `return_token_ids` adds `prompt_token_ids` to the first chunk and
//! `token_ids` to each. The HTTP status is already 200 when a chunk is
//! sent, so a failure mid-stream becomes an `{"error": …}` event followed by
//! `[DONE]`, as vLLM does.
//!
//! The frames are written by hand rather than with `axum::response::Sse`:
//! the exact bytes are the contract with OpenAI clients, and a hand-written
//! frame keeps them explicit (no `event:`/`id:` lines, no keep-alives).

use std::{convert::Infallible, mem};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use serde::Serialize;

use super::{
    completions::{to_api_error, worker_vanished},
    error::ApiError,
    openai::{
        ChatChunk, ChatChunkChoice, ChatDelta, CompletionChunk, CompletionChunkChoice, Usage,
    },
};
use crate::scheduler::{Event, Finish, Handle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// Everything a stream needs; the handle's drop (with the body) cancels.
pub struct Stream {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub handle: Handle,
    pub prompt: Vec<u32>,
    pub include_usage: bool,
    pub return_token_ids: bool,
    /// The request field the prompt came from, for error events.
    pub param: &'static str,
}

/// Where the stream is.
enum Phase {
    /// Chat's role chunk is next.
    Opening,
    Generating,
    /// The usage chunk is next (completion and cached prompt tokens).
    Usage(usize, usize),
    /// `[DONE]` is next.
    Done,
    Ended,
}

struct State {
    s: Stream,
    phase: Phase,
    /// `prompt_token_ids` until the first chunk took them.
    prompt_ids: Option<Vec<u32>>,
    /// Ids generated but not yet sent (their text was held back).
    pending: Vec<u32>,
}

pub fn respond(s: Stream) -> Response {
    let phase = match s.kind {
        Kind::Chat => Phase::Opening,
        Kind::Completion => Phase::Generating,
    };
    let state = State {
        prompt_ids: s.return_token_ids.then(|| s.prompt.clone()),
        s,
        phase,
        pending: Vec::new(),
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        let frame = state.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), state))
    });
    let mut response = Response::new(Body::from_stream(frames));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style proxies not to buffer the events.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn frame(data: &impl Serialize) -> String {
    // Our own chunk types always serialize.
    let json = serde_json::to_string(data).unwrap_or_else(|e| {
        serde_json::json!({"error": {"message": format!("serializing a chunk: {e}"),
            "type": "internal_server_error", "param": null, "code": null}})
        .to_string()
    });
    format!("data: {json}\n\n")
}

impl State {
    async fn next_frame(&mut self) -> Option<String> {
        match self.phase {
            Phase::Opening => {
                self.phase = Phase::Generating;
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                Some(self.chunk(String::new(), None, Some(delta)))
            }
            Phase::Generating => Some(self.generating().await),
            Phase::Usage(completion_tokens, cached_tokens) => {
                self.phase = Phase::Done;
                let usage = Some(Some(Usage::new(
                    self.s.prompt.len(),
                    completion_tokens,
                    cached_tokens,
                )));
                let s = &self.s;
                Some(match s.kind {
                    Kind::Chat => frame(&ChatChunk {
                        id: s.id.clone(),
                        object: "chat.completion.chunk",
                        created: s.created,
                        model: s.model.clone(),
                        choices: Vec::new(),
                        usage,
                        prompt_token_ids: None,
                    }),
                    Kind::Completion => frame(&CompletionChunk {
                        id: s.id.clone(),
                        object: "text_completion",
                        created: s.created,
                        model: s.model.clone(),
                        choices: Vec::new(),
                        usage,
                    }),
                })
            }
            Phase::Done => {
                self.phase = Phase::Ended;
                Some("data: [DONE]\n\n".to_owned())
            }
            Phase::Ended => None,
        }
    }

    /// The next content or final chunk, or an error event.
    async fn generating(&mut self) -> String {
        loop {
            match self.s.handle.next().await {
                Some(Event::Text { text, tokens }) => {
                    self.pending.extend(tokens);
                    if text.is_empty() {
                        continue;
                    }
                    let delta = ChatDelta {
                        role: None,
                        content: Some(text.clone()),
                    };
                    return self.chunk(text, None, Some(delta));
                }
                Some(Event::Finished {
                    reason,
                    completion_tokens,
                    cached_tokens,
                }) => {
                    self.phase = if self.s.include_usage {
                        Phase::Usage(completion_tokens, cached_tokens)
                    } else {
                        Phase::Done
                    };
                    return self.chunk(String::new(), Some(reason), Some(ChatDelta::default()));
                }
                Some(Event::Failed(e)) => return self.error(to_api_error(e, self.s.param)),
                None => return self.error(worker_vanished()),
            }
        }
    }

    fn error(&mut self, e: ApiError) -> String {
        self.phase = Phase::Done;
        frame(&e.body())
    }

    /// A chunk with one choice: `text` for completions, `delta` for chat.
    fn chunk(&mut self, text: String, finish: Option<Finish>, delta: Option<ChatDelta>) -> String {
        let s = &self.s;
        let token_ids = s.return_token_ids.then(|| mem::take(&mut self.pending));
        let usage = s.include_usage.then_some(None);
        let finish_reason = finish.map(Finish::as_str);
        match s.kind {
            Kind::Chat => frame(&ChatChunk {
                id: s.id.clone(),
                object: "chat.completion.chunk",
                created: s.created,
                model: s.model.clone(),
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: delta.unwrap_or_default(),
                    logprobs: None,
                    finish_reason,
                    token_ids,
                }],
                usage,
                prompt_token_ids: self.prompt_ids.take(),
            }),
            Kind::Completion => frame(&CompletionChunk {
                id: s.id.clone(),
                object: "text_completion",
                created: s.created,
                model: s.model.clone(),
                choices: vec![CompletionChunkChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason,
                    prompt_token_ids: self.prompt_ids.take(),
                    token_ids,
                }],
                usage,
            }),
        }
    }
}
