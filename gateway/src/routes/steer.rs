//! `POST /tasks/{id}/cancel` and `DELETE /tasks/{id}`.

use crate::error::ApiError;
use crate::extract::{AuthUser, TaskId};
use crate::routes::openapi::ErrorResponse;
use crate::state::AppState;
use crate::store::{CancelOutcome, DeleteOutcome};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::api::TaskResponse;
use std::time::Duration;

/// How long a delete waits for the agent running the task to stop it.
pub const DELETE_WAIT: Duration = Duration::from_secs(3);

/// Cancel a task. Idempotent: a queued task is cancelled at once (200 `cancelled`), a running one is asked
/// to stop (202 `cancelling`; its agent stops within a second and stores `cancelled`), a finished one is
/// left as it is (200).
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    params(("id" = Uuid, Path, description = "The task id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled (it was queued), or already finished and unchanged", body = TaskResponse),
        (status = 202, description = "Running: its agent was asked to stop; the task is shown `cancelling` until it is `cancelled` (or it finished first)", body = TaskResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such task, or not yours", body = ErrorResponse),
        (status = 503, description = "Redis unavailable; nothing changed", body = ErrorResponse),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id, user))]
pub async fn cancel_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    TaskId(id): TaskId,
) -> Result<(StatusCode, Json<TaskResponse>), ApiError> {
    let outcome = state
        .store
        .cancel(id, &user.sub)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let (status, record) = match outcome {
        CancelOutcome::Missing => return Err(ApiError::NotFound),
        CancelOutcome::Cancelling(record) => (StatusCode::ACCEPTED, record),
        CancelOutcome::Cancelled(record) | CancelOutcome::Unchanged(record) => {
            (StatusCode::OK, record)
        }
    };
    Ok((status, Json(TaskResponse::from_record(id, record))))
}

/// Delete a task: its record, events, checkpoint and memory. A running task is cancelled first.
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    params(("id" = Uuid, Path, description = "The task id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted: the record, its events and its checkpoint are gone; its memory points are purged by the agents within seconds"),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such task, or not yours", body = ErrorResponse),
        (status = 503, description = "Redis unavailable", body = ErrorResponse),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id, user))]
pub async fn delete_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    TaskId(id): TaskId,
) -> Result<StatusCode, ApiError> {
    match state
        .store
        .delete(id, &user.sub, DELETE_WAIT)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::Missing => Err(ApiError::NotFound),
    }
}
