//! The one error shape of the API: every 4xx and 5xx answer is
//! `{"error": code, "message": ..., "field": ...}`, with a message a person
//! can act on and, for validation errors, the field at fault.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herd_core::SubmitError;
use herd_core::store::StoreError;
use serde::Serialize;

/// A request the server answers with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`invalid_field`, `unknown_batch`).
    pub code: &'static str,
    /// What was wrong and what to do, for people.
    pub message: String,
    /// The request field at fault (`concurrency`, `tasks[2].after`).
    pub field: Option<String>,
}

/// The JSON body of an error.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    /// [`ApiError::code`].
    pub error: &'a str,
    /// [`ApiError::message`].
    pub message: &'a str,
    /// [`ApiError::field`].
    pub field: Option<&'a str>,
}

/// The error shape, as the OpenAPI document shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorShape {
    /// A stable code: `invalid_field`, `malformed_json`, `unknown_batch`,
    /// `unauthorized`, `too_many_records`, `body_too_large`, ...
    pub error: String,
    /// What was wrong and what to do.
    pub message: String,
    /// The request field at fault, for validation errors.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A 422 for a field whose value cannot work.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                message.into(),
            )
        }
    }

    /// A 400 for a request that could not be read at all.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 404 for something the server does not have.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Names the field at fault.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::Invalid(f) => ApiError::invalid(f.field, message),
            SubmitError::DuplicateKey(_) => ApiError::invalid("tasks", message),
            SubmitError::UnknownDependency { .. } => ApiError::invalid("tasks", message),
            SubmitError::Cycle { .. } => ApiError {
                code: "dependency_cycle",
                ..ApiError::invalid("tasks", message)
            },
            SubmitError::AfterInOpenBatch => ApiError::invalid("tasks", message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Submit(e) => e.into(),
            StoreError::UnknownBatch(_) => ApiError::not_found("unknown_batch", message),
            StoreError::UnknownTask(_) => ApiError::not_found("unknown_task", message),
            StoreError::Unfinished(_) => {
                ApiError::new(StatusCode::CONFLICT, "batch_unfinished", message)
            }
            StoreError::Live(_) => ApiError::new(StatusCode::CONFLICT, "batch_live", message),
            StoreError::Forgotten(_) => {
                ApiError::new(StatusCode::CONFLICT, "batch_forgotten", message)
            }
            StoreError::Sealed(_) => ApiError::new(StatusCode::CONFLICT, "batch_sealed", message),
            StoreError::Backend(_) => {
                tracing::error!(error = %chain(&e), "store operation failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store failed to answer: try again; if it persists, check the server's log and the store (disk, database)",
                )
            }
        }
    }
}

/// An error's message followed by its causes: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
