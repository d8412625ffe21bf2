//! The HTTP API: routing, shared state, and the middleware stack.
//!
//! This is the top layer of the `api → scheduler → engine → model` stack
//! (after Hugging Face TGI's router). Today: probes, version, the model list,
//! `/tokenize` + `/detokenize` (which need the engine's tokenizer and
//! chat template but no generation), and `/v1/completions` +
//! `/v1/chat/completions`, whole or streamed (`completions.rs`,
//! `stream.rs`), submitted to `crate::scheduler` (bounded queue, 429
//! beyond it; one sequence per request, no batching yet). Every other
//! `/v1/*` route answers 501 in OpenAI's error shape; none pretends to
//! work.
//!
//! Middleware order, outermost first: access log (so refused requests are
//! logged too), then API-key auth, then the routes and fallbacks.

mod choices;
mod completions;
mod logprobs;
mod middleware;
pub mod openai;
mod routes;
mod stream;
#[cfg(test)]
mod tests;
mod tokenize;
pub mod tools;
pub mod validation;

pub mod error;

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    middleware::{from_fn, from_fn_with_state},
    routing::{any, get, post},
};

use crate::{auth::Secret, build_info::BuildInfo, engine::Engine, readiness::ReadinessRx};

/// Paths that answer without an API key: orchestrator probes carry none.
pub const PUBLIC_PATHS: [&str; 2] = ["/health", "/ready"];

/// Read-only state shared by all handlers.
#[derive(Debug)]
pub struct AppState {
    pub model_name: String,
    /// Unix seconds reported as the model's `created` (server start time).
    pub created: u64,
    pub build: BuildInfo,
    pub api_key: Option<Secret>,
    pub readiness: ReadinessRx,
    /// Set once by the loader, after the warm-up and before `Ready`.
    /// Handlers that need it answer 503 while it is empty.
    pub engine: OnceLock<Arc<Engine>>,
    /// `sha256:` digest of the model files (see [`crate::weights_digest`]); set in the
    /// background once the model is ready.
    pub weights_digest: Arc<OnceLock<String>>,
    /// Admission (`--max-concurrent-requests` running,
    /// `--max-queued-requests` waiting, 429 beyond) and the engine workers.
    pub scheduler: crate::scheduler::Scheduler,
    /// Prometheus metrics under vLLM's names (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `--tool-call-parser`: how the model writes tool calls, where its chat
    /// template does not tell.
    pub tool_call_parser: Option<tools::ToolCallParser>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/version", get(routes::version))
        .route("/metrics", get(routes::metrics))
        .route("/v1/models", get(routes::list_models))
        .route("/v1/models/{*model}", get(routes::retrieve_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/v1/{*rest}", any(routes::not_implemented))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(from_fn_with_state(
            Arc::clone(&state),
            middleware::require_api_key,
        ))
        .layer(from_fn(middleware::access_log))
        .with_state(state)
}
