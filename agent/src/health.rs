//! `GET /health` on `HEALTH_PORT`: the worker's id, state, tasks in hand, and whether Redis and RabbitMQ
//! are reachable. Served from the start of start-up, before the worker has connected to anything, and
//! always 200 while the process serves (a dependency outage is reported, not fatal: the worker
//! reconnects by itself). `GET /metrics` on the same port: the agent's metrics ([`crate::metrics`]) in
//! the Prometheus text format.

use crate::error::AgentError;
use crate::worker::InHand;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
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

/// What `/health` reads. Served from the first moment of start-up: until the worker runs, it answers
/// `starting` with what has connected so far.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// This worker's id.
    worker_id: String,
    /// The broker connection.
    broker: BrokerStatus,
    /// Whether start-up has reached Redis.
    redis_connected: Arc<AtomicBool>,
    /// Set once the worker runs.
    running: Arc<OnceLock<Running>>,
}

/// What a running worker's health reads.
#[derive(Debug)]
struct Running {
    /// The tasks held.
    in_hand: InHand,
    /// Redis, pinged on each request.
    redis: ConnectionManager,
}

impl HealthState {
    /// The state of a worker that is starting.
    pub fn starting(worker_id: &str) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            broker: BrokerStatus::default(),
            redis_connected: Arc::default(),
            running: Arc::default(),
        }
    }

    /// Start-up reached Redis.
    pub fn redis_connected(&self) {
        self.redis_connected.store(true, Ordering::Relaxed);
    }

    /// The broker connection's status, which the consumer keeps.
    pub fn broker(&self) -> &BrokerStatus {
        &self.broker
    }

    /// The worker runs: report its tasks and ping Redis from now on.
    pub fn running(&self, in_hand: InHand, redis: ConnectionManager) {
        if self.running.set(Running { in_hand, redis }).is_err() {
            tracing::warn!("health was told twice that the worker runs");
        }
    }
}

/// The body of `GET /health`.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// `starting` until the worker runs, then `ok` when both dependencies are reachable and
    /// `degraded` when one is not. Every one of them answers 200: the process is alive and reconnects by
    /// itself, and a replacement would face the same outage. Start-up that cannot connect within
    /// `STARTUP_TIMEOUT_SECONDS` exits non-zero instead.
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

/// Reachability of Redis and RabbitMQ (while starting: whether start-up has connected to each).
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
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<HealthState>) -> impl axum::response::IntoResponse {
    crate::metrics::tasks_in_hand(state.running.get().map_or(0, |r| r.in_hand.len()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            shared::telemetry::METRICS_CONTENT_TYPE,
        )],
        shared::telemetry::render_metrics(),
    )
}

async fn health(State(state): State<HealthState>) -> Json<HealthReport> {
    let rabbitmq = state.broker.connected();
    let Some(running) = state.running.get() else {
        return Json(HealthReport {
            status: "starting",
            worker_id: state.worker_id.clone(),
            state: "free",
            tasks_in_hand: 0,
            task_ids: Vec::new(),
            components: Components {
                redis: state.redis_connected.load(Ordering::Relaxed),
                rabbitmq,
            },
        });
    };
    let mut conn = running.redis.clone();
    let ping_cmd = redis::cmd("PING");
    let ping = ping_cmd.query_async::<String>(&mut conn);
    let redis = matches!(
        tokio::time::timeout(REDIS_PING_TIMEOUT, ping).await,
        Ok(Ok(_))
    );
    let tasks = running.in_hand.snapshot();
    Json(HealthReport {
        status: if redis && rabbitmq { "ok" } else { "degraded" },
        worker_id: state.worker_id.clone(),
        state: if tasks.is_empty() { "free" } else { "working" },
        tasks_in_hand: tasks.len(),
        task_ids: tasks.iter().map(|task| task.id).collect(),
        components: Components { redis, rabbitmq },
    })
}

/// The health server, serving from the moment it is bound until stopped (or dropped, when start-up
/// fails).
#[derive(Debug)]
pub struct HealthServer {
    port: u16,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl HealthServer {
    /// Binds `0.0.0.0:port` and serves `state` at once.
    ///
    /// # Errors
    /// [`AgentError::HealthBind`] when the port cannot be bound.
    pub async fn start(port: u16, state: HealthState) -> Result<Self, AgentError> {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| AgentError::HealthBind { port, source })?;
        let bound = listener.local_addr().map_or(port, |a| a.port());
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            axum::serve(listener, router(state))
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Ok(Self {
            port: bound,
            stop,
            task: Some(task),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops serving and waits for the server to end.
    ///
    /// # Errors
    /// [`AgentError::HealthServe`] when the server failed.
    pub async fn stop(mut self) -> Result<(), AgentError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(AgentError::HealthServe(error)),
                Err(error) => {
                    tracing::error!(%error, "the health server panicked");
                    Ok(())
                }
            },
            None => Ok(()),
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
