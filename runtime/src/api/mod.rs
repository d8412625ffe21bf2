//! The HTTP API: routing, shared state, and the middleware stack.
//!
//! This is the top layer of the `api → scheduler → engine → model` stack
//! (after Hugging Face TGI's router). Today only the routes that need no
//! engine exist: probes, version, and the model list. Every other `/v1/*`
//! route answers 501 in OpenAI's error shape; none pretends to generate.
//!
//! Middleware order, outermost first: access log (so refused requests are
//! logged too), then API-key auth, then the routes and fallbacks.

mod middleware;
mod routes;
#[cfg(test)]
mod tests;

pub mod error;

use std::sync::Arc;

use axum::{
    Router,
    middleware::{from_fn, from_fn_with_state},
    routing::{any, get},
};

use crate::{auth::Secret, build_info::BuildInfo, readiness::ReadinessRx};

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
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/version", get(routes::version))
        .route("/v1/models", get(routes::list_models))
        .route("/v1/models/{*model}", get(routes::retrieve_model))
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
