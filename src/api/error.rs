//! The one API error type: a status, a stable machine-readable code and a
//! reason a person can act on, always as a JSON body. Bad input is a 4xx,
//! never a 5xx; a 503 means "retry", never "your request was wrong".

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::ValidationError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {reason}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (`unknown_poll`, `invalid_body`, ...).
    pub code: &'static str,
    /// Human explanation.
    pub reason: String,
    /// Optional field the error is about.
    pub field: Option<String>,
    /// Seconds to wait before retrying (`Retry-After`; a 503 says 1 when
    /// unset).
    pub retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    /// A stable, machine-readable code (`unknown_poll`, `invalid_body`, ...).
    pub error: String,
    /// What went wrong, for a person.
    pub reason: String,
    /// The field the error is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The statuses an error may have are declared by each route (see
/// `contract::op`), not inferred from the type.
impl aide::OperationOutput for ApiError {
    type Inner = ErrorBody;
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Says when to retry (`Retry-After`).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Names the field the error is about.
    pub fn field(mut self, name: &str) -> Self {
        self.field = Some(name.to_owned());
        self
    }

    /// 400.
    pub fn bad_request(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, reason)
    }
    /// 401.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }
    /// 403.
    pub fn forbidden(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, reason)
    }
    /// 404.
    pub fn not_found(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, reason)
    }
    /// 409.
    pub fn conflict(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, reason)
    }
    /// 422.
    pub fn unprocessable(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, reason)
    }
    /// 503: a dependency is down or the view is behind; retry.
    pub fn unavailable(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, reason)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_field",
            reason: e.reason,
            field: Some(e.field),
            retry_after: None,
        }
    }
}

impl From<crate::view::ViewError> for ApiError {
    fn from(e: crate::view::ViewError) -> Self {
        tracing::warn!(error = %e, "view store error");
        Self::unavailable("views_unavailable", "the view store is unavailable; retry")
    }
}

impl From<crate::bus::BusError> for ApiError {
    fn from(e: crate::bus::BusError) -> Self {
        tracing::warn!(error = %e, "log append failed");
        Self::unavailable("log_unavailable", "the event log is unavailable; retry")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            crate::telemetry::emit::ingest_rejected(self.code);
        }
        let mut res = (
            self.status,
            Json(ErrorBody {
                error: self.code.to_owned(),
                reason: self.reason,
                field: self.field,
            }),
        )
            .into_response();
        let retry = self
            .retry_after
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(secs) = retry {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
