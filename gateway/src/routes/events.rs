//! `GET /tasks/{id}/events`: a task's events as Server-Sent Events.

use crate::error::ApiError;
use crate::extract::{AuthUser, TaskId};
use crate::follow::{Follow, Frame};
use crate::routes::openapi::ErrorResponse;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::time::Duration;

/// A comment is sent this often on a quiet stream, so proxies (the ALB cuts idle connections after 60 s)
/// keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The header a reconnecting client sends with the id of the last event it received.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

impl Frame {
    fn into_sse(self) -> Event {
        let mut event = Event::default().event(self.name()).data(self.data());
        if let Some(id) = self.id() {
            event = event.id(id.to_string());
        }
        event
    }
}

/// Follow a task: its events as they happen, as Server-Sent Events.
///
/// Without `Last-Event-ID` the first event is `snapshot` (the task now) and the events after it follow;
/// with it, the stream goes on right after that event (a fresh `snapshot` when the log no longer holds it,
/// or it is not an event id). Event types: `snapshot`, `created`, `accepted`, `tick`, `memory`,
/// `cancelling`, and one terminal event, `completed`, `failed` or `cancelled`, carrying the task; the
/// stream closes after it. A comment line every 15 s keeps it open through proxies. Disconnecting never
/// cancels the task.
#[utoipa::path(
    get,
    path = "/tasks/{id}/events",
    params(
        ("id" = Uuid, Path, description = "The task id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (its `id:`)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`text/event-stream`. Each frame: `id: <event id>`, `event: <type>`, `data: <JSON>`. `snapshot` and the terminal events carry a TaskResponse; `tick` a TickEvent; `memory` a MemoryEvent; `created` a CreatedEvent; `accepted` an AcceptedEvent; `cancelling` an empty object.",
         content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such task, or not yours", body = ErrorResponse),
        (status = 503, description = "Redis unavailable", body = ErrorResponse),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id, user))]
pub async fn task_events(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    TaskId(id): TaskId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers.get(LAST_EVENT_ID).and_then(|v| v.to_str().ok());
    let follow = Follow::open(
        state.store.clone(),
        &state.hub,
        id,
        &user.sub,
        last_event_id,
        state.draining.clone(),
    )
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))?
    .ok_or(ApiError::NotFound)?;
    let open = crate::metrics::OpenStream::opened();
    let frames = futures::stream::unfold((follow, open), |(mut follow, open)| async move {
        let frame = follow.next_frame().await?;
        Some((Ok::<_, Infallible>(frame.into_sse()), (follow, open)))
    });
    let mut response = Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Tell buffering proxies (nginx) to pass events through at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
