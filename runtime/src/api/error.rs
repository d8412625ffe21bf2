//! Errors the HTTP API returns, rendered in OpenAI's error shape
//! (`{"error":{"message","type","param","code"}}`) so that OpenAI client
//! libraries surface them as API errors instead of parse failures.

use axum::{
    Json,
    extract::rejection::JsonRejection,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::auth::AuthFailure;
use crate::engine::{EngineError, TemplateError, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "Missing API key. Send it in the Authorization header as `Authorization: Bearer <key>`."
    )]
    MissingApiKey,
    #[error("Incorrect API key provided.")]
    IncorrectApiKey,
    #[error("{method} {path} is not implemented by this build of appliance-server.")]
    NotImplemented { method: Method, path: String },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("No route for {method} {path}.")]
    NotFound { method: Method, path: String },
    #[error("Method {method} is not allowed for {path}.")]
    MethodNotAllowed { method: Method, path: String },
    /// A malformed or semantically invalid request body (HTTP 400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        /// Owned only for names the client chose (an unknown field).
        param: Option<std::borrow::Cow<'static, str>>,
    },
    #[error("The model is still loading; retry once /ready answers 200.")]
    ModelLoading,
    /// The scheduler's queue is full (HTTP 429 with `Retry-After`).
    #[error(transparent)]
    Overloaded(crate::scheduler::SubmitError),
    /// An engine failure that is not the client's fault (HTTP 500).
    #[error("Internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(std::borrow::Cow::Borrowed),
        }
    }
}

impl From<crate::scheduler::SubmitError> for ApiError {
    fn from(e: crate::scheduler::SubmitError) -> Self {
        use crate::scheduler::SubmitError;
        match e {
            SubmitError::Overloaded { .. } => Self::Overloaded(e),
            // Before the loop started no handler has an engine to submit with.
            SubmitError::NotStarted => Self::ModelLoading,
            SubmitError::NeverFits { .. } => Self::invalid(e.to_string(), Some("prompt")),
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Missing => Self::MissingApiKey,
            AuthFailure::Incorrect => Self::IncorrectApiKey,
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::MissingApiKey | Self::IncorrectApiKey => StatusCode::UNAUTHORIZED,
            Self::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            Self::ModelNotFound(_) | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelLoading => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    fn kind(&self) -> &'static str {
        match self {
            Self::MissingApiKey | Self::IncorrectApiKey | Self::ModelNotFound(_) => {
                "invalid_request_error"
            }
            Self::NotImplemented { .. } => "not_implemented",
            Self::NotFound { .. } => "not_found_error",
            Self::MethodNotAllowed { .. } | Self::InvalidRequest { .. } => "invalid_request_error",
            Self::ModelLoading => "service_unavailable_error",
            // TGI's name for the same refusal.
            Self::Overloaded(_) => "overloaded",
            Self::Internal(_) => "internal_server_error",
        }
    }

    /// OpenAI's `code` field.
    fn code(&self) -> Option<&'static str> {
        match self {
            Self::MissingApiKey | Self::IncorrectApiKey => Some("invalid_api_key"),
            Self::ModelNotFound(_) => Some("model_not_found"),
            Self::ModelLoading => Some("model_loading"),
            Self::Overloaded(_) => Some("queue_full"),
            Self::NotImplemented { .. }
            | Self::NotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidRequest { .. }
            | Self::Internal(_) => None,
        }
    }

    /// OpenAI's `param` field.
    fn param(&self) -> Option<&str> {
        match self {
            Self::ModelNotFound(_) => Some("model"),
            Self::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::MissingApiKey | Self::IncorrectApiKey => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Overloaded(_) => {
                let secs = crate::scheduler::SubmitError::RETRY_AFTER.as_secs();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

impl ApiError {
    /// `{"error": {...}}`, also sent as an SSE event when a stream fails
    /// after it started.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }
}

pub(crate) fn worker_vanished() -> ApiError {
    ApiError::Internal("the engine worker stopped before finishing the request".into())
}

/// The client's mistakes are 400s; the rest is ours.
pub(crate) fn to_api_error(e: EngineError, param: &'static str) -> ApiError {
    match e {
        EngineError::Template(TemplateError::Render(m)) => ApiError::invalid(m, Some("messages")),
        EngineError::Template(TemplateError::Missing) => {
            ApiError::invalid(TemplateError::Missing.to_string(), Some("messages"))
        }
        e @ (EngineError::Tokenizer(TokenizerError::UnknownId { .. })
        | EngineError::EmptyPrompt
        | EngineError::PromptTooLong { .. }
        | EngineError::BadTokenId { .. }) => ApiError::invalid(e.to_string(), Some(param)),
        other => ApiError::Internal(crate::errors::chain(&other)),
    }
}

pub(crate) fn bad_json(rejection: JsonRejection) -> ApiError {
    ApiError::invalid(
        format!("Invalid request body: {}", rejection.body_text()),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_implemented_has_the_openai_shape() {
        let err = ApiError::NotImplemented {
            method: Method::POST,
            path: "/v1/chat/completions".into(),
        };
        assert_eq!(err.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(err.kind(), "not_implemented");
        assert_eq!((err.code(), err.param()), (None, None));
        assert!(err.to_string().contains("/v1/chat/completions"));
    }
}
