//! `POST /v1/completions` and `POST /v1/chat/completions`, non-streaming.
//!
//! A request is parsed ([`super::openai`]), validated
//! ([`super::validation`]), tokenized on the blocking pool, checked against
//! the context length, and then generated on the blocking pool
//! (`spawn_blocking`) while holding a permit of a semaphore sized by
//! `--max-concurrent-requests`.
//!
//! Not here yet (later tasks): streaming (SSE; `stream: true` is refused
//! with a 400), a bounded wait queue with 429s (`--max-queued-requests`;
//! today requests past the concurrency limit wait on the semaphore without
//! bound), batching across requests (each request runs its own sequence),
//! and `generation_config.json` sampling defaults (the engine does not
//! expose them yet, so an absent `temperature` means OpenAI's default 1.0).
//!
//! Stop strings are checked by decoding the generated ids after each token;
//! the returned text is cut before the earliest match, while `token_ids`
//! keeps every generated id, up to the one that completed the match.

use std::{
    hash::{BuildHasher, RandomState},
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use serde_json::Value;

use super::{
    AppState,
    error::ApiError,
    openai::{
        AssistantMessage, ChatChoice, ChatRequest, ChatResponse, CompletionChoice,
        CompletionRequest, CompletionResponse, Usage,
    },
    validation::{self, DEFAULT_COMPLETION_MAX_TOKENS, Input, Validated},
};
use crate::engine::{
    Engine, EngineError, FinishReason, GenerateRequest, TemplateError, TokenizerError,
};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<CompletionResponse>, ApiError> {
    let Json(body) = body.map_err(bad_json)?;
    let req: CompletionRequest = validation::parse_body(body, validation::completion_fields())?;
    let request = validation::completion(req, &state.model_name)?;
    let return_ids = request.return_token_ids;
    let out = run(&state, request, |_| DEFAULT_COMPLETION_MAX_TOKENS).await?;
    let prompt_ids = return_ids.then(|| out.prompt.clone());
    Ok(Json(CompletionResponse {
        id: random_id("cmpl"),
        object: "text_completion",
        created: unix_now(),
        model: state.model_name.clone(),
        usage: out.usage(),
        choices: vec![CompletionChoice {
            index: 0,
            text: out.text,
            logprobs: None,
            finish_reason: out.finish_reason,
            prompt_token_ids: prompt_ids.clone(),
            token_ids: return_ids.then_some(out.tokens),
        }],
        prompt_token_ids: prompt_ids,
    }))
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<ChatResponse>, ApiError> {
    let Json(body) = body.map_err(bad_json)?;
    let req: ChatRequest = validation::parse_body(body, validation::chat_fields())?;
    let request = validation::chat(req, &state.model_name)?;
    let return_ids = request.return_token_ids;
    // As vLLM: by default a chat may use the rest of the context.
    let out = run(&state, request, |room| room).await?;
    Ok(Json(ChatResponse {
        id: random_id("chatcmpl"),
        object: "chat.completion",
        created: unix_now(),
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
            finish_reason: out.finish_reason,
            token_ids: return_ids.then_some(out.tokens),
        }],
    }))
}

/// One finished generation.
struct Outcome {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    finish_reason: &'static str,
}

impl Outcome {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.tokens.len(),
            total_tokens: self.prompt.len() + self.tokens.len(),
        }
    }
}

/// Sets the flag when dropped: the handler future is dropped when the
/// client disconnects, and the generation thread then stops early.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn run(
    state: &AppState,
    request: Validated,
    default_max_tokens: impl FnOnce(usize) -> usize,
) -> Result<Outcome, ApiError> {
    let engine = state.engine.get().cloned().ok_or(ApiError::ModelLoading)?;
    let param = request.input.param();
    let prompt = {
        let engine = Arc::clone(&engine);
        let input = request.input;
        blocking(move || encode(&engine, input), param).await?
    };
    let max_model_len = engine.max_model_len();
    validation::check_prompt(&prompt, param, max_model_len, engine.spec().vocab_size)?;
    let room = max_model_len - prompt.len();
    let max_new_tokens = request
        .max_tokens
        .unwrap_or_else(|| default_max_tokens(room))
        .min(room);

    let permit = Arc::clone(&state.generation_slots)
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Internal("the generation semaphore is closed".into()))?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(Arc::clone(&cancelled));
    let generate = GenerateRequest {
        prompt,
        max_new_tokens,
        sampling: request.sampling,
        ignore_eos: request.ignore_eos,
    };
    let stop = request.stop;
    blocking(
        move || {
            let _permit = permit;
            generate_text(&engine, generate, &stop, &cancelled)
        },
        param,
    )
    .await
}

fn encode(engine: &Engine, input: Input) -> Result<Vec<u32>, EngineError> {
    match input {
        Input::Tokens(ids) => Ok(ids),
        // As vLLM: completion prompts get the tokenizer's special tokens.
        Input::Text(text) => Ok(engine.tokenizer().encode(&text, true)?),
        Input::Chat(messages) => engine.encode_chat(&messages, None, true),
    }
}

fn generate_text(
    engine: &Engine,
    request: GenerateRequest,
    stop: &[String],
    cancelled: &AtomicBool,
) -> Result<Outcome, EngineError> {
    let mut so_far = Vec::new();
    let mut stopped: Option<String> = None;
    let mut decode_error = None;
    let generation = engine.generate(&request, |token| {
        if cancelled.load(Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        if stop.is_empty() {
            return ControlFlow::Continue(());
        }
        so_far.push(token);
        match engine.tokenizer().decode(&so_far, true) {
            Ok(text) => match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                Some(at) => {
                    stopped = Some(text[..at].to_owned());
                    ControlFlow::Break(())
                }
                None => ControlFlow::Continue(()),
            },
            Err(e) => {
                decode_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = decode_error {
        return Err(e.into());
    }
    let (text, finish_reason) = match (generation.finish_reason, stopped) {
        (FinishReason::Cancelled, Some(text)) => (text, "stop"),
        (FinishReason::Cancelled, None) => (String::new(), "cancelled"),
        (FinishReason::Stop, _) => (engine.tokenizer().decode(&generation.tokens, true)?, "stop"),
        (FinishReason::Length, _) => (
            engine.tokenizer().decode(&generation.tokens, true)?,
            "length",
        ),
    };
    Ok(Outcome {
        prompt: request.prompt,
        tokens: generation.tokens,
        text,
        finish_reason,
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
    param: &'static str,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| to_api_error(e, param)),
        Err(e) => Err(ApiError::Internal(format!("generation task failed: {e}"))),
    }
}

/// The client's mistakes are 400s; the rest is ours.
fn to_api_error(e: EngineError, param: &'static str) -> ApiError {
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

fn bad_json(rejection: JsonRejection) -> ApiError {
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
