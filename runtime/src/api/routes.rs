//! Route handlers that answer from [`AppState`] alone: nothing here touches
//! the engine, so probes stay responsive under load. The engine-backed
//! `/tokenize` and `/detokenize` live in `tokenize.rs`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{AppState, error::ApiError};
use crate::readiness::Readiness;

/// Liveness: the process is up and serving HTTP, whatever the model state.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 only once the engine loaded and its warm-up generation
/// succeeded (see `crate::readiness`).
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match state.readiness.get() {
        Readiness::Ready => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "model": state.model_name })),
        )
            .into_response(),
        Readiness::Loading => (unavailable, Json(json!({ "status": "loading" }))).into_response(),
        Readiness::ShuttingDown => {
            (unavailable, Json(json!({ "status": "shutting down" }))).into_response()
        }
        Readiness::Failed(reason) => (
            unavailable,
            Json(json!({ "status": "failed", "reason": reason })),
        )
            .into_response(),
    }
}

/// Build facts (same as the embedded marker) plus the served model, so an
/// operator can tell which server build an image runs from the outside.
pub async fn version(State(state): State<Arc<AppState>>) -> Json<Value> {
    let b = &state.build;
    Json(json!({
        "name": b.name,
        "version": b.version,
        "features": b.features,
        "target": b.target,
        "profile": b.profile,
        "commit": b.source_revision,
        "model": state.model_name,
        "weights_digest": state.weights_digest.get(),
    }))
}

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "appliance",
    })
}

/// `GET /v1/models`: OpenAI's list shape with the single served model.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

/// `GET /v1/models/{model}`; a catch-all segment because served names may
/// contain `/` (e.g. `org/model`).
pub async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    model: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    match model {
        Ok(Path(name)) if name == state.model_name => Ok(Json(model_object(&state))),
        Ok(Path(name)) => Err(ApiError::ModelNotFound(name)),
        Err(rejection) => Err(ApiError::ModelNotFound(rejection.body_text())),
    }
}

/// `GET /metrics`: Prometheus text format with vLLM's metric names. Behind
/// the API key like every non-probe route: the counters reveal traffic.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Every other `/v1/*` route: explicit 501, never a fabricated completion.
pub async fn not_implemented(method: Method, uri: Uri) -> ApiError {
    ApiError::NotImplemented {
        method,
        path: uri.path().to_owned(),
    }
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method,
        path: uri.path().to_owned(),
    }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}
