//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): the exact ids a
//! prompt or a chat becomes, and back. Clients use them to count tokens
//! against `max_model_len` and to debug chat templates; tests use them to
//! prove the served template and tokenizer match the reference.
//!
//! Tokenizing is CPU work proportional to the prompt, so it runs on the
//! blocking pool rather than on an async worker.

use std::sync::Arc;

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    error::ApiError,
    error::{bad_json, to_api_error},
    openai::ChatMessage,
    validation,
};
use crate::engine::{Engine, EngineError};

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Value>,
    tools: Option<Value>,
    /// Chat only; default `true`, as in vLLM.
    add_generation_prompt: Option<bool>,
    /// Default `true` for a prompt, `false` for messages (the template
    /// already wrote the special tokens).
    add_special_tokens: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TokenizeRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(bad_json)?;
    let engine = engine(&state, req.model.as_deref())?;
    let input = match (req.prompt, req.messages) {
        (Some(prompt), None) => Input::Prompt(prompt),
        (None, Some(messages)) => Input::Chat(check_messages(messages)?),
        _ => {
            return Err(ApiError::invalid(
                "Send exactly one of `prompt` (a string) or `messages` (a list of chat messages).",
                None,
            ));
        }
    };
    if req.tools.as_ref().is_some_and(|t| !t.is_array()) {
        return Err(ApiError::invalid("`tools` must be a list.", Some("tools")));
    }
    let max_model_len = engine.max_model_len();
    let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
    let tokens = blocking(move || match input {
        Input::Prompt(text) => Ok(engine
            .tokenizer()
            .encode(&text, req.add_special_tokens.unwrap_or(true))?),
        Input::Chat(messages) => {
            let text = engine.render_chat(&messages, req.tools.as_ref(), add_generation_prompt)?;
            Ok(engine
                .tokenizer()
                .encode(&text, req.add_special_tokens.unwrap_or(false))?)
        }
    })
    .await?;
    Ok(Json(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": max_model_len,
    })))
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<DetokenizeRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(bad_json)?;
    let engine = engine(&state, req.model.as_deref())?;
    let tokens = req.tokens;
    let prompt = blocking(move || Ok(engine.tokenizer().decode(&tokens, false)?)).await?;
    Ok(Json(json!({ "prompt": prompt })))
}

enum Input {
    Prompt(String),
    Chat(Value),
}

/// The loaded engine, after checking the optional `model` field.
fn engine(state: &AppState, model: Option<&str>) -> Result<Arc<Engine>, ApiError> {
    if let Some(name) = model.filter(|m| *m != state.model_name) {
        return Err(ApiError::ModelNotFound(name.to_owned()));
    }
    state.engine.get().cloned().ok_or(ApiError::ModelLoading)
}

/// The messages exactly as a chat completion would render them (content
/// parts joined, calls' arguments as objects), or the same 400.
fn check_messages(messages: Value) -> Result<Value, ApiError> {
    let messages: Vec<ChatMessage> = serde_json::from_value(messages).map_err(|e| {
        ApiError::invalid(
            format!("`messages` must be a list of chat messages: {e}"),
            Some("messages"),
        )
    })?;
    validation::chat_messages(messages)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| to_api_error(e, "tokens")),
        Err(e) => Err(ApiError::Internal(format!("tokenizer task failed: {e}"))),
    }
}
