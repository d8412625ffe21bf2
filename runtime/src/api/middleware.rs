//! Request middleware: one access-log line per request, and API-key
//! enforcement for every route outside [`super::PUBLIC_PATHS`].

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{AppState, PUBLIC_PATHS, error::ApiError};
use crate::auth::check_bearer;

/// Logs method, path, status and duration at `info` under the
/// `appliance_server::access` target, so an operator can silence frequent
/// probes with `RUST_LOG=info,appliance_server::access=warn`.
///
/// Only the path is logged: query strings and headers may carry secrets.
pub async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "appliance_server::access",
        "{method} {path} {} {millis:.3}ms",
        response.status().as_u16()
    );
    response
}

/// Refuses requests without the configured bearer key. Probes stay public:
/// Docker and Kubernetes health checks cannot be given a key.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    if PUBLIC_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match check_bearer(header, key) {
        Ok(()) => next.run(request).await,
        Err(failure) => ApiError::from(failure).into_response(),
    }
}
