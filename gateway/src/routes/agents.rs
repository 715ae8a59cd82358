//! `GET /agents/count`: live workers, for the dashboard.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// How many workers are live.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentCount {
    /// Workers whose last heartbeat is within `WORKER_TTL_SECONDS`.
    pub count: u64,
}

/// Count live workers. Never fails: 0 when Redis is unreachable (with a warning logged).
#[utoipa::path(
    get,
    path = "/agents/count",
    responses((status = 200, description = "Live workers", body = AgentCount))
)]
pub async fn agent_count(State(state): State<AppState>) -> Json<AgentCount> {
    let ttl = Duration::from_secs(state.settings.common.worker_ttl_seconds);
    let count = match state.store.count_live_workers(Utc::now(), ttl).await {
        Ok(count) => count,
        Err(error) => {
            tracing::warn!(%error, "cannot count workers; answering 0");
            0
        }
    };
    Json(AgentCount { count })
}
