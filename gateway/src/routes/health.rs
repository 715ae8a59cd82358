//! `GET /health`: for the load balancer and operators.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The gateway's view of its dependencies.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when every component is reachable, `degraded` otherwise.
    pub status: String,
    /// Reachability of each dependency.
    pub components: Components,
}

/// Reachability of each dependency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Components {
    /// Redis answered PING.
    pub redis: bool,
    /// The publisher's channel to RabbitMQ is open.
    pub rabbitmq: bool,
}

/// Report health. Always 200, so the process is kept while a dependency restarts.
#[utoipa::path(
    get,
    path = "/health",
    responses((status = 200, description = "Health", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let redis = state.store.ping().await;
    let rabbitmq = state.publisher.is_connected();
    let status = if redis && rabbitmq { "ok" } else { "degraded" };
    Json(Health {
        status: status.into(),
        components: Components { redis, rabbitmq },
    })
}
