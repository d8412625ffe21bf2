//! `POST /v1/completions` and `POST /v1/chat/completions`.
//!
//! A request is parsed ([`super::openai`]), validated
//! ([`super::validation`]), tokenized on the blocking pool, checked against
//! the context length, given the checkpoint's sampling defaults, and
//! submitted to the scheduler — which may refuse it at once (429). Every
//! error up to here is a plain HTTP error. Then either the whole answer is
//! collected into one JSON response, or it is streamed as server-sent
//! events ([`super::stream`]).
//!
//! Cancellation is by drop: when the client disconnects, hyper drops the
//! handler future (non-streaming) or the response body (streaming), the
//! scheduler [`Handle`] goes with it, and the worker stops at the next
//! token.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{
    AppState,
    error::ApiError,
    openai::{
        AssistantMessage, ChatChoice, ChatRequest, ChatResponse, CompletionChoice,
        CompletionRequest, CompletionResponse, Usage,
    },
    stream::{self, Kind},
    validation::{self, DEFAULT_COMPLETION_MAX_TOKENS, Input, Validated},
};
use crate::{
    engine::{Engine, EngineError, GenerateRequest, TemplateError, TokenizerError},
    scheduler::{Event, Finish, Handle, Job},
};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Json(body) = body.map_err(bad_json)?;
    let req: CompletionRequest = validation::parse_body(body, validation::completion_fields())?;
    let request = validation::completion(req, &state.model_name)?;
    let id = random_id("cmpl");
    let (return_ids, streaming) = (request.return_token_ids, request.stream);
    let include_usage = request.include_usage;
    let started = start(&state, request, &id, arrived, |_| {
        DEFAULT_COMPLETION_MAX_TOKENS
    })
    .await?;
    let created = crate::serve::unix_now();
    if streaming {
        return Ok(started.stream(
            &state,
            Kind::Completion,
            id,
            created,
            include_usage,
            return_ids,
        ));
    }
    let out = started.collect().await?;
    let prompt_ids = return_ids.then(|| out.prompt.clone());
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model: state.model_name.clone(),
        usage: out.usage(),
        choices: vec![CompletionChoice {
            index: 0,
            text: out.text,
            logprobs: None,
            finish_reason: out.finish.as_str(),
            prompt_token_ids: prompt_ids.clone(),
            token_ids: return_ids.then_some(out.tokens),
        }],
        prompt_token_ids: prompt_ids,
    })
    .into_response())
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Json(body) = body.map_err(bad_json)?;
    let req: ChatRequest = validation::parse_body(body, validation::chat_fields())?;
    let request = validation::chat(req, &state.model_name)?;
    let id = random_id("chatcmpl");
    let (return_ids, streaming) = (request.return_token_ids, request.stream);
    let include_usage = request.include_usage;
    // As vLLM: by default a chat may use the rest of the context.
    // Chat without `max_tokens`: the checkpoint's `max_new_tokens`, else the rest of the context
    // (vLLM's defaults).
    let configured = state
        .engine
        .get()
        .and_then(|e| e.generation_defaults().max_new_tokens);
    let started = start(&state, request, &id, arrived, |room| {
        configured.unwrap_or(room)
    })
    .await?;
    let created = crate::serve::unix_now();
    if streaming {
        return Ok(started.stream(&state, Kind::Chat, id, created, include_usage, return_ids));
    }
    let out = started.collect().await?;
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created,
        model: state.model_name.clone(),
        usage: out.usage(),
        prompt_token_ids: return_ids.then(|| out.prompt.clone()),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: out.text,
            },
            logprobs: None,
            finish_reason: out.finish.as_str(),
            token_ids: return_ids.then_some(out.tokens),
        }],
    })
    .into_response())
}

/// A request admitted by the scheduler.
struct Started {
    handle: Handle,
    prompt: Vec<u32>,
    /// The request field the prompt came from, named by errors.
    param: &'static str,
}

impl Started {
    /// Answers with server-sent events; dropping the body cancels.
    fn stream(
        self,
        state: &AppState,
        kind: Kind,
        id: String,
        created: u64,
        include_usage: bool,
        return_token_ids: bool,
    ) -> Response {
        stream::respond(stream::Stream {
            kind,
            id,
            created,
            model: state.model_name.clone(),
            handle: self.handle,
            prompt: self.prompt,
            include_usage,
            return_token_ids,
            param: self.param,
        })
    }

    /// Gathers the whole generation from the worker's events.
    async fn collect(mut self) -> Result<Outcome, ApiError> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        loop {
            match self.handle.next().await {
                Some(Event::Text {
                    text: t,
                    tokens: ids,
                }) => {
                    text.push_str(&t);
                    tokens.extend(ids);
                }
                Some(Event::Finished {
                    reason,
                    cached_tokens,
                    ..
                }) => {
                    return Ok(Outcome {
                        prompt: self.prompt,
                        tokens,
                        text,
                        finish: reason,
                        cached_tokens,
                    });
                }
                Some(Event::Failed(e)) => return Err(to_api_error(e, self.param)),
                None => return Err(worker_vanished()),
            }
        }
    }
}

/// Tokenizes, checks and submits; every failure is an HTTP error.
async fn start(
    state: &AppState,
    request: Validated,
    id: &str,
    arrived: Instant,
    default_max_tokens: impl FnOnce(usize) -> usize,
) -> Result<Started, ApiError> {
    let engine = state.engine.get().cloned().ok_or(ApiError::ModelLoading)?;
    let param = request.input.param();
    let prompt = {
        let engine = Arc::clone(&engine);
        let input = request.input;
        match tokio::task::spawn_blocking(move || encode(&engine, input)).await {
            Ok(result) => result.map_err(|e| to_api_error(e, param))?,
            Err(e) => return Err(ApiError::Internal(format!("tokenization task failed: {e}"))),
        }
    };
    let max_model_len = engine.max_model_len();
    validation::check_prompt(&prompt, param, max_model_len, engine.spec().vocab_size)?;
    let room = max_model_len - prompt.len();
    let max_new_tokens = request
        .max_tokens
        .unwrap_or_else(|| default_max_tokens(room))
        .min(room);
    let sampling = engine.generation_defaults().resolve(&request.sampling);
    let job = Job {
        id: id.to_owned(),
        request: GenerateRequest {
            prompt: prompt.clone(),
            max_new_tokens,
            sampling,
            ignore_eos: request.ignore_eos,
        },
        stop: request.stop,
        arrived,
    };
    let handle = state
        .scheduler
        .submit(job)
        .map_err(|e| match ApiError::from(e) {
            ApiError::InvalidRequest { message, .. } => ApiError::invalid(message, Some(param)),
            other => other,
        })?;
    Ok(Started {
        handle,
        prompt,
        param,
    })
}

/// One finished generation.
struct Outcome {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    finish: Finish,
    cached_tokens: usize,
}

impl Outcome {
    fn usage(&self) -> Usage {
        Usage::new(self.prompt.len(), self.tokens.len(), self.cached_tokens)
    }
}

pub(super) fn worker_vanished() -> ApiError {
    ApiError::Internal("the engine worker stopped before finishing the request".into())
}

fn encode(engine: &Engine, input: Input) -> Result<Vec<u32>, EngineError> {
    match input {
        Input::Tokens(ids) => Ok(ids),
        // As vLLM: completion prompts get the tokenizer's special tokens.
        Input::Text(text) => Ok(engine.tokenizer().encode(&text, true)?),
        Input::Chat(messages) => engine.encode_chat(&messages, None, true),
    }
}

/// The client's mistakes are 400s; the rest is ours.
pub(super) fn to_api_error(e: EngineError, param: &'static str) -> ApiError {
    match e {
        EngineError::Template(TemplateError::Render(m)) => ApiError::invalid(m, Some("messages")),
        EngineError::Template(TemplateError::Missing) => {
            ApiError::invalid(TemplateError::Missing.to_string(), Some("messages"))
        }
        e @ (EngineError::Tokenizer(TokenizerError::UnknownId { .. })
        | EngineError::EmptyPrompt
        | EngineError::PromptTooLong { .. }
        | EngineError::BadTokenId { .. }) => ApiError::invalid(e.to_string(), Some(param)),
        other => ApiError::Internal(crate::serve::chain(&other)),
    }
}

pub(super) fn bad_json(rejection: JsonRejection) -> ApiError {
    ApiError::invalid(
        format!("Invalid request body: {}", rejection.body_text()),
        None,
    )
}

/// `<prefix>-` and 32 hex digits, unique per process and unpredictable
/// enough for log correlation (not a secret).
fn random_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = RandomState::new().hash_one((n, SystemTime::now()));
    let b = RandomState::new().hash_one(n);
    format!("{prefix}-{a:016x}{b:016x}")
}
