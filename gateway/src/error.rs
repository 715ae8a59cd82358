//! The one error type every handler returns, and how it becomes a JSON response.
//!
//! Bodies are `{"error": {"code": "<stable_code>", "message": "<human text>"}}` (`docs/api.md`). The
//! `match` from variant to status is exhaustive on purpose: a new variant must be given a status here.
//! 5xx bodies stay generic; their cause is logged inside the request span.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong with a request, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all, or not sent as JSON (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is JSON but not a valid request (422).
    #[error("{0}")]
    InvalidRequest(String),
    /// The body did not arrive in time (408): a client that stalls mid-body holds nothing for long.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The body is larger than the gateway accepts (413).
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// No token, or a token that does not verify (401). The text says why, never echoing the token.
    #[error("{0}")]
    Unauthorized(String),
    /// An anonymous user, while those are not allowed (403).
    #[error("confirm your email address before creating tasks")]
    EmailNotConfirmed,
    /// The daily tick quota would be passed (429).
    #[error("this task needs {requested} ticks but only {remaining} remain today")]
    QuotaExceeded {
        /// Ticks still available today.
        remaining: u32,
        /// Ticks the request asked for.
        requested: u32,
    },
    /// The owner already has the most queued-or-running tasks allowed (429).
    #[error(
        "you have {active} tasks queued or running; the limit is {limit}: wait for one to finish or cancel one"
    )]
    TooManyActiveTasks {
        /// Tasks queued or running.
        active: u32,
        /// `MAX_ACTIVE_TASKS_PER_USER`.
        limit: u32,
    },
    /// The `Idempotency-Key` was used before with another request body (422).
    #[error("this Idempotency-Key was used with another request; use a new key for a new task")]
    IdempotencyKeyReused,
    /// The first request with this `Idempotency-Key` has not been answered yet (409).
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyKeyInUse,
    /// No such task, or not the caller's (404).
    #[error("no such task")]
    NotFound,
    /// No such route (404) or method (405).
    #[error("no such route")]
    NoRoute(StatusCode),
    /// Redis or RabbitMQ is unavailable, or the request took too long (503). The cause is logged only.
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
    /// A bug or an impossible state (500). The cause is logged only.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

impl ApiError {
    /// The HTTP status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::EmailNotConfirmed => (StatusCode::FORBIDDEN, "email_not_confirmed"),
            ApiError::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            ApiError::TooManyActiveTasks { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_active_tasks")
            }
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::IdempotencyKeyInUse => (StatusCode::CONFLICT, "idempotency_key_in_use"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute(status) if *status == StatusCode::METHOD_NOT_ALLOWED => {
                (*status, "method_not_allowed")
            }
            ApiError::NoRoute(status) => (*status, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Unavailable(cause) => tracing::warn!(cause = %cause, "answering 503"),
            ApiError::Internal(cause) => tracing::error!(cause = %cause, "answering 500"),
            ApiError::Unauthorized(reason) => tracing::debug!(reason = %reason, "answering 401"),
            _ => {}
        }
        let remaining = match &self {
            ApiError::QuotaExceeded { remaining, .. } => Some(*remaining),
            _ => None,
        };
        let limit = match &self {
            ApiError::TooManyActiveTasks { limit, .. } => Some(*limit),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                remaining,
                limit,
            },
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_quota_error_carries_the_remaining_ticks() {
        let (status, body) = body_of(ApiError::QuotaExceeded {
            remaining: 4,
            requested: 10,
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "quota_exceeded");
        assert_eq!(body["error"]["remaining"], 4);
    }

    #[tokio::test]
    async fn a_cap_error_carries_the_limit() {
        let (status, body) = body_of(ApiError::TooManyActiveTasks {
            active: 20,
            limit: 20,
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "too_many_active_tasks");
        assert_eq!(body["error"]["limit"], 20);
        assert!(body["error"].get("remaining").is_none());
    }

    #[tokio::test]
    async fn a_5xx_body_never_carries_its_cause() {
        let (status, body) = body_of(ApiError::Unavailable(
            "redis at 10.0.0.7: password rejected".into(),
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(!body.to_string().contains("10.0.0.7"));
    }
}
