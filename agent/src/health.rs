//! `GET /health` on `HEALTH_PORT`: the worker's id, state, tasks in hand, and whether Redis and RabbitMQ
//! are reachable. Always 200 while the process serves (a dependency outage is reported, not fatal: the
//! worker reconnects by itself).

use crate::worker::InHand;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// How long `/health` waits for Redis to answer a PING.
const REDIS_PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether the consumer holds a live broker connection; written by the consumer, read by `/health`.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus(Arc<AtomicBool>);

impl BrokerStatus {
    /// Records whether the broker connection is up.
    pub fn set(&self, connected: bool) {
        self.0.store(connected, Ordering::Relaxed);
    }

    /// Whether the broker connection is up.
    pub fn connected(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What `/health` reads.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// This worker's id.
    pub worker_id: String,
    /// The tasks held.
    pub in_hand: InHand,
    /// The broker connection.
    pub broker: BrokerStatus,
    /// Redis, pinged on each request.
    pub redis: ConnectionManager,
}

/// The body of `GET /health`.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// `ok` when both dependencies are reachable, `degraded` otherwise.
    pub status: &'static str,
    /// This worker's id.
    pub worker_id: String,
    /// `free` or `working`.
    pub state: &'static str,
    /// How many tasks are held.
    pub tasks_in_hand: usize,
    /// Their ids.
    pub task_ids: Vec<Uuid>,
    /// Reachability of each dependency.
    pub components: Components,
}

/// Reachability of Redis and RabbitMQ.
#[derive(Debug, Serialize)]
pub struct Components {
    /// Redis answered a PING.
    pub redis: bool,
    /// The consumer holds a live connection.
    pub rabbitmq: bool,
}

/// The health router.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(state)
}

async fn health(State(state): State<HealthState>) -> Json<HealthReport> {
    let mut conn = state.redis.clone();
    let ping_cmd = redis::cmd("PING");
    let ping = ping_cmd.query_async::<String>(&mut conn);
    let redis = matches!(
        tokio::time::timeout(REDIS_PING_TIMEOUT, ping).await,
        Ok(Ok(_))
    );
    let rabbitmq = state.broker.connected();
    let tasks = state.in_hand.snapshot();
    Json(HealthReport {
        status: if redis && rabbitmq { "ok" } else { "degraded" },
        worker_id: state.worker_id.clone(),
        state: if tasks.is_empty() { "free" } else { "working" },
        tasks_in_hand: tasks.len(),
        task_ids: tasks.iter().map(|task| task.id).collect(),
        components: Components { redis, rabbitmq },
    })
}
