//! `GET /queue`: the fleet at a glance, for the dashboard: tasks waiting, tasks being worked on, live
//! agents.
//!
//! The figures cost a broker round trip (a passive declare) and two Redis round trips, so they are kept
//! for [`FRESH_FOR`] and every dashboard polling within that window shares one reading.

use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::routes::openapi::ErrorResponse;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// How long one reading of the figures is served.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The fleet's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueFigures {
    /// Tasks waiting in the queue for an agent.
    pub ready: u64,
    /// Tasks agents hold right now.
    pub in_flight: u64,
    /// Live agents.
    pub agents: u64,
}

/// The last reading, shared by the requests that come within [`FRESH_FOR`].
#[derive(Debug, Default)]
pub struct FiguresCache {
    last: Mutex<Option<(Instant, QueueFigures)>>,
}

impl FiguresCache {
    fn fresh(&self) -> Option<QueueFigures> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, figures)| figures)
    }

    fn keep(&self, figures: QueueFigures) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), figures));
    }
}

/// Tasks waiting, tasks in flight, live agents.
#[utoipa::path(
    get,
    path = "/queue",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fleet's figures (at most a second old)", body = QueueFigures),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 503, description = "Redis or RabbitMQ unavailable", body = ErrorResponse),
    )
)]
pub async fn queue(
    State(state): State<AppState>,
    AuthUser(_user): AuthUser,
) -> Result<Json<QueueFigures>, ApiError> {
    if let Some(figures) = state.figures.fresh() {
        return Ok(Json(figures));
    }
    let ttl = Duration::from_secs(state.settings.common.worker_ttl_seconds);
    let (ready, fleet) = tokio::join!(
        state.publisher.queue_depth(),
        state.store.fleet(chrono::Utc::now(), ttl)
    );
    let ready = ready.map_err(|e| ApiError::Unavailable(format!("queue depth: {e}")))?;
    let fleet = fleet.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let figures = QueueFigures {
        ready: u64::from(ready),
        in_flight: fleet.tasks,
        agents: fleet.agents,
    };
    state.figures.keep(figures);
    Ok(Json(figures))
}
