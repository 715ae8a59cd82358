//! Request extractors that turn every rejection into an [`ApiError`] with a JSON body.

use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header =
            match parts.headers.get(AUTHORIZATION) {
                None => None,
                Some(value) => Some(value.to_str().map_err(|_| {
                    ApiError::Unauthorized("malformed authorization header".into())
                })?),
            };
        let user = state.auth.authenticate(header).await?;
        tracing::Span::current().record("user", tracing::field::display(&user.sub));
        Ok(AuthUser(user))
    }
}

/// How long a request body may take to arrive once its head has: a body of the size this API accepts
/// takes milliseconds, so a client that stalls mid-body is answered 408 and its connection closed, well
/// before the request timeout.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A JSON body: 408 when it stalls, 400 when it is not JSON (or not labelled as JSON), 422 when it does not fit `T`,
/// 413 when it is too large.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::BadRequest(
                "send the body as JSON with Content-Type: application/json".into(),
            ));
        }
        let bytes = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(BODY_TIMEOUT.as_secs()))?
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(ref inner)
                    if inner.body_text().contains("length limit") =>
                {
                    ApiError::PayloadTooLarge
                }
                other => ApiError::BadRequest(other.body_text()),
            })?;
        // serde would also read a struct from a JSON array; the API takes objects only.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::InvalidRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = T::deserialize(&mut deserializer).and_then(|value| {
            deserializer.end()?;
            Ok(value)
        });
        value.map(JsonBody).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => {
                ApiError::BadRequest(format!("the body is not valid JSON: {e}"))
            }
        })
    }
}

/// The `{id}` of a task route. An id that is not a UUID (or not even UTF-8) names no task: 404 with the
/// JSON error body, like a task that does not exist.
#[derive(Debug, Clone, Copy)]
pub struct TaskId(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TaskId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound)?;
        uuid::Uuid::parse_str(&raw)
            .map(TaskId)
            .map_err(|_| ApiError::NotFound)
    }
}
