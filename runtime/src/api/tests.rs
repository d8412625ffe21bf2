//! In-process router tests for states the end-to-end tests cannot pin down
//! reliably: `/ready` while loading and while shutting down, and which
//! paths stay public when an API key is set.

use std::sync::Arc;

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, router};
use crate::{
    auth::Secret,
    build_info,
    readiness::{self, Readiness, ReadinessTx},
};

fn app(api_key: Option<&str>) -> (axum::Router, ReadinessTx) {
    let (tx, rx) = readiness::channel();
    let metrics = Arc::new(crate::metrics::Metrics::new("m"));
    let state = AppState {
        model_name: "m".to_owned(),
        created: 0,
        build: build_info::current().expect("build info"),
        api_key: api_key.map(|k| k.parse::<Secret>().expect("key")),
        readiness: rx,
        engine: std::sync::OnceLock::new(),
        weights_digest: Arc::default(),
        scheduler: crate::scheduler::Scheduler::new(
            crate::scheduler::SchedulerConfig {
                max_num_seqs: 1,
                max_queued: 0,
            },
            Arc::clone(&metrics),
        ),
        metrics,
        tool_call_parser: None,
    };
    (router(Arc::new(state)), tx)
}

async fn call(app: &axum::Router, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::get(path);
    if let Some(key) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

#[tokio::test]
async fn ready_follows_the_lifecycle() {
    let (app, tx) = app(None);
    assert_eq!(
        call(&app, "/ready", None).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading"})
        )
    );
    assert_eq!(
        call(&app, "/health", None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    tx.set(Readiness::Ready);
    assert_eq!(
        call(&app, "/ready", None).await,
        (StatusCode::OK, json!({"status": "ready", "model": "m"}))
    );
    tx.set(Readiness::ShuttingDown);
    assert_eq!(
        call(&app, "/ready", None).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting down"})
        )
    );
}

#[tokio::test]
async fn only_probes_are_public_when_a_key_is_set() {
    let (app, tx) = app(Some("key"));
    tx.set(Readiness::Ready);
    for path in ["/health", "/ready"] {
        assert_eq!(call(&app, path, None).await.0, StatusCode::OK, "{path}");
    }
    for path in [
        "/version",
        "/v1/models",
        "/v1/models/m",
        "/v1/x",
        "/health/",
        "/x",
    ] {
        let (status, body) = call(&app, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{path}");
    }
    assert_eq!(call(&app, "/version", Some("key")).await.0, StatusCode::OK);
    assert_eq!(
        call(&app, "/v1/x", Some("key")).await.0,
        StatusCode::NOT_IMPLEMENTED
    );
}
