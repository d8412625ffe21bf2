//! Server-sent event responses for `"stream": true`, in OpenAI's framing:
//! one `data: <json>\n\n` per chunk and a final `data: [DONE]\n\n`.
//!
//! Chat streams open with a chunk whose delta carries only the role, then
//! content deltas, then an empty delta with `finish_reason`; completion
//! streams send text chunks and a last empty one with `finish_reason`. With
//! `n` > 1 every chunk holds one choice, tagged by `index`, the choices'
//! chunks interleaved as their tokens come (OpenAI's framing); `logprobs`
//! ride on the chunk that carries their tokens' text. With
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

use std::{collections::VecDeque, convert::Infallible, mem};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use serde::Serialize;

use std::sync::Arc;

use super::{
    choices::{Choices, finish_reason},
    error::ApiError,
    error::{to_api_error, worker_vanished},
    logprobs,
    openai::{
        ChatChunk, ChatChunkChoice, ChatDelta, ChatLogprobs, CompletionChunk,
        CompletionChunkChoice, CompletionLogprobs, FunctionDelta, ToolCallDelta, Usage,
    },
    tools::{ToolDelta, ToolOutput, ToolStream},
};
use crate::{
    engine::{Engine, TokenLogprobs},
    scheduler::Event,
};

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
    pub choices: Choices,
    /// For the tokens' text in `logprobs`.
    pub engine: Arc<Engine>,
    pub prompt: Vec<u32>,
    pub include_usage: bool,
    pub return_token_ids: bool,
    pub logprobs: bool,
    /// Chat with tools: text is read for tool calls.
    pub tools: Option<ToolOutput>,
    /// The request field the prompt came from, for error events.
    pub param: &'static str,
}

/// Where the stream is.
enum Phase {
    /// Chat's role chunk of this choice is next.
    Opening(usize),
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
    choice: Vec<ChoiceState>,
    /// Choices not finished yet.
    open: usize,
    /// Completion tokens of the finished choices, and the first choice's
    /// cached prompt tokens.
    completion_tokens: usize,
    cached_tokens: usize,
    /// Frames due before the next event is read (a choice's last tool
    /// calls come before its final chunk).
    queued: VecDeque<String>,
}

#[derive(Default)]
struct ChoiceState {
    /// Ids generated but not yet sent (their text was held back).
    pending: Vec<u32>,
    /// Characters of text sent so far (completions' `text_offset`).
    offset: usize,
    tools: Option<ToolStream>,
}

pub fn respond(s: Stream) -> Response {
    let phase = match s.kind {
        Kind::Chat => Phase::Opening(0),
        Kind::Completion => Phase::Generating,
    };
    let n = s.choices.n;
    let state = State {
        prompt_ids: s.return_token_ids.then(|| s.prompt.clone()),
        phase,
        choice: (0..n)
            .map(|_| ChoiceState {
                tools: s.tools.as_ref().map(ToolOutput::stream),
                ..ChoiceState::default()
            })
            .collect(),
        open: n,
        completion_tokens: 0,
        cached_tokens: 0,
        queued: VecDeque::new(),
        s,
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
        if let Some(frame) = self.queued.pop_front() {
            return Some(frame);
        }
        match self.phase {
            Phase::Opening(i) => {
                self.phase = if i + 1 < self.s.choices.n {
                    Phase::Opening(i + 1)
                } else {
                    Phase::Generating
                };
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                Some(self.chunk(i, String::new(), None, Some(delta), &[]))
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
            match self.s.choices.next().await {
                Some((
                    i,
                    Event::Text {
                        text,
                        tokens,
                        logprobs,
                    },
                )) => {
                    self.choice[i].pending.extend(tokens);
                    let delta = match &mut self.choice[i].tools {
                        Some(tools) => tool_delta(tools.push(&text)),
                        None => ChatDelta {
                            content: Some(text.clone()),
                            ..ChatDelta::default()
                        },
                    };
                    let empty = delta.content.as_ref().is_none_or(String::is_empty)
                        && delta.tool_calls.is_none();
                    if empty && logprobs.is_empty() {
                        continue;
                    }
                    return self.chunk(i, text, None, Some(delta), &logprobs);
                }
                Some((
                    i,
                    Event::Finished {
                        reason,
                        completion_tokens,
                        cached_tokens,
                    },
                )) => {
                    self.open -= 1;
                    self.completion_tokens += completion_tokens;
                    if i == 0 {
                        self.cached_tokens = cached_tokens;
                    }
                    if self.open == 0 {
                        self.phase = if self.s.include_usage {
                            Phase::Usage(self.completion_tokens, self.cached_tokens)
                        } else {
                            Phase::Done
                        };
                    }
                    // A choice's last tool calls settle when it ends: their chunk goes first.
                    let (last, called) = match &mut self.choice[i].tools {
                        Some(tools) => {
                            let pieces = tools.finish();
                            (
                                (!pieces.is_empty()).then(|| tool_delta(pieces)),
                                tools.called(),
                            )
                        }
                        None => (None, false),
                    };
                    let reason = finish_reason(reason, called);
                    let end = self.chunk(
                        i,
                        String::new(),
                        Some(reason),
                        Some(ChatDelta::default()),
                        &[],
                    );
                    return match last {
                        Some(delta) => {
                            self.queued.push_back(end);
                            self.chunk(i, String::new(), None, Some(delta), &[])
                        }
                        None => end,
                    };
                }
                Some((_, Event::Failed(e))) => return self.error(to_api_error(e, self.s.param)),
                None => return self.error(worker_vanished()),
            }
        }
    }

    fn error(&mut self, e: ApiError) -> String {
        self.phase = Phase::Done;
        frame(&e.body())
    }

    /// A chunk with choice `i`: `text` for completions, `delta` for chat,
    /// and the logprobs of the tokens behind it (when asked for).
    fn chunk(
        &mut self,
        i: usize,
        text: String,
        finish_reason: Option<&'static str>,
        delta: Option<ChatDelta>,
        tokens: &[TokenLogprobs],
    ) -> String {
        let s = &self.s;
        let choice = &mut self.choice[i];
        let token_ids = s.return_token_ids.then(|| mem::take(&mut choice.pending));
        let usage = s.include_usage.then_some(None);
        let tokenizer = s.engine.tokenizer();
        match s.kind {
            Kind::Chat => {
                let logprobs = match (s.logprobs, tokens.is_empty()) {
                    (true, false) => match logprobs::chat(tokenizer, tokens) {
                        Ok(l) => Some(l),
                        Err(e) => return self.error(ApiError::Internal(e.to_string())),
                    },
                    // OpenAI sends an empty list on the role and final chunks.
                    (true, true) => Some(ChatLogprobs::default()),
                    (false, _) => None,
                };
                frame(&ChatChunk {
                    id: s.id.clone(),
                    object: "chat.completion.chunk",
                    created: s.created,
                    model: s.model.clone(),
                    choices: vec![ChatChunkChoice {
                        index: i as u32,
                        delta: delta.unwrap_or_default(),
                        logprobs,
                        finish_reason,
                        token_ids,
                    }],
                    usage,
                    prompt_token_ids: self.prompt_ids.take(),
                })
            }
            Kind::Completion => {
                let logprobs = match s.logprobs {
                    true => match logprobs::completion(tokenizer, tokens, choice.offset) {
                        Ok((l, offset)) => {
                            choice.offset = offset;
                            Some(l)
                        }
                        Err(e) => return self.error(ApiError::Internal(e.to_string())),
                    },
                    false => None::<CompletionLogprobs>,
                };
                frame(&CompletionChunk {
                    id: s.id.clone(),
                    object: "text_completion",
                    created: s.created,
                    model: s.model.clone(),
                    choices: vec![CompletionChunkChoice {
                        index: i as u32,
                        text,
                        logprobs,
                        finish_reason,
                        prompt_token_ids: self.prompt_ids.take(),
                        token_ids,
                    }],
                    usage,
                })
            }
        }
    }
}

/// Content and tool-call pieces as one chat delta.
fn tool_delta(pieces: Vec<ToolDelta>) -> ChatDelta {
    let mut content: Option<String> = None;
    let mut calls = Vec::new();
    for piece in pieces {
        match piece {
            ToolDelta::Content(text) => content.get_or_insert_default().push_str(&text),
            ToolDelta::Call {
                index,
                id,
                name,
                arguments,
            } => calls.push(ToolCallDelta {
                index,
                id: Some(id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments,
                },
            }),
            ToolDelta::Arguments { index, text } => calls.push(ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: text,
                },
            }),
        }
    }
    ChatDelta {
        role: None,
        content,
        tool_calls: (!calls.is_empty()).then_some(calls),
    }
}
