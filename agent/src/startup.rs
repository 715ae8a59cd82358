//! Start-up and shutdown: connect within the start-up deadline, run the consumer, presence, protection
//! and health server, and on the shutdown signal stop consuming, drain within the grace period, clear
//! protection, deregister and close the connection.

use crate::consumer::{Consumer, connect};
use crate::error::AgentError;
use crate::executor::TaskExecutor;
use crate::health::{HealthServer, HealthState};
use crate::presence::Presence;
use crate::protection::Protection;
use crate::purger::Purger;
use crate::settings::AgentSettings;
use crate::worker::{CANCEL_POLL, Stopping, Worker, WorkerConfig};
use lapin::Connection;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use shared::store::Lease;
use shared::tls::BrokerAddress;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Base delay before a retryable failure gives its message back (times the delivery number).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long tasks cancelled at the end of the grace period get to give their messages back.
const REQUEUE_DEADLINE: Duration = Duration::from_secs(5);

/// A built agent: connected, health port bound, ready to run.
#[derive(Debug)]
pub struct Application<E> {
    settings: AgentSettings,
    worker_id: String,
    redis: ConnectionManager,
    connection: Connection,
    health: HealthServer,
    health_state: HealthState,
    executor: Arc<E>,
}

impl<E: TaskExecutor> Application<E> {
    /// Binds the health port and serves `starting` on it, then connects to Redis and RabbitMQ (retrying
    /// until `STARTUP_TIMEOUT_SECONDS`) and makes sure the queue topology exists.
    ///
    /// # Errors
    /// [`AgentError`] when a dependency stays unreachable past the deadline, the topology is missing (and
    /// this user may not create it) or refused, or the port cannot be bound.
    pub async fn build(settings: AgentSettings, executor: E) -> Result<Self, AgentError> {
        let deadline = Instant::now() + settings.startup_timeout;
        let worker_id = match &settings.worker_id {
            Some(id) => id.clone(),
            None => derive_worker_id().await,
        };
        let health_state = HealthState::starting(&worker_id);
        let health = HealthServer::start(settings.health_port, health_state.clone()).await?;
        tracing::info!(
            worker_id,
            port = health.port(),
            "agent starting; health served"
        );
        let redis = connect_redis(&settings, deadline).await?;
        health_state.redis_connected();
        let connection = connect_broker(&settings, &worker_id, deadline).await?;
        health_state.broker().set(true);
        // The agents' own user may not create the topology: it is checked passively, and declared only by a
        // user allowed to.
        settings.common.topology().ensure(&connection).await?;
        tracing::info!(worker_id, "agent connected");
        Ok(Self {
            settings,
            worker_id,
            redis,
            connection,
            health,
            health_state,
            executor: Arc::new(executor),
        })
    }

    /// The port `/health` listens on.
    pub fn health_port(&self) -> u16 {
        self.health.port()
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until `shutdown` completes, then drains and exits cleanly.
    ///
    /// # Errors
    /// [`AgentError::HealthServe`] when the health server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        let Self {
            settings,
            worker_id,
            redis,
            connection,
            health,
            health_state,
            executor,
        } = self;
        let common = &settings.common;
        let stopping = Stopping::default();
        let executor_handle = Arc::clone(&executor);
        let worker = Worker::new(
            executor,
            redis.clone(),
            common.keys(),
            WorkerConfig {
                concurrency: settings.concurrency,
                max_deliveries: common.max_deliveries,
                task_ttl_seconds: common.task_ttl_seconds,
                status_interval: settings.status_interval,
                retry_delay: RETRY_DELAY,
                max_run: settings.task_max_run,
                lease: Lease {
                    worker: worker_id.clone(),
                    lifetime: Duration::from_secs(common.worker_ttl_seconds),
                },
            },
            stopping.clone(),
        );
        let in_hand = worker.in_hand().clone();
        let executor_for_purges = Arc::clone(&executor_handle);

        let background = CancellationToken::new();
        let presence = Presence::new(
            redis.clone(),
            common.keys(),
            worker_id.clone(),
            common.worker_ttl_seconds,
        );
        let presence_task = tokio::spawn(presence.clone().run(
            in_hand.clone(),
            settings.status_interval,
            background.clone(),
        ));
        let sweeper = crate::sweeper::Sweeper {
            redis: redis.clone(),
            keys: common.keys(),
            rabbitmq_url: common.rabbitmq_url.clone(),
            tls: common.tls.clone(),
            dead_letter_queue: common.topology().dead_letter_queue(),
            worker_ttl: Duration::from_secs(common.worker_ttl_seconds),
            task_ttl_seconds: common.task_ttl_seconds,
            worker_id: worker_id.clone(),
        };
        let sweeper_task = tokio::spawn(sweeper.run(background.clone()));
        let cancel_task = tokio::spawn(
            worker
                .clone()
                .watch_cancellations(CANCEL_POLL, background.clone()),
        );
        let purger = Purger {
            executor: executor_for_purges,
            redis: redis.clone(),
            keys: common.keys(),
            retention: Duration::from_secs(common.task_ttl_seconds),
        };
        let purger_task = tokio::spawn(purger.run(background.clone()));
        let protection_task = settings.ecs_agent_uri.as_deref().map(|uri| {
            let protection = Protection::new(
                uri,
                settings.protection_expires_minutes,
                settings.protection_renew,
            );
            tokio::spawn(protection.run(in_hand.watch(), background.clone()))
        });

        let broker = health_state.broker().clone();
        health_state.running(in_hand.clone(), redis);

        let tracker = TaskTracker::new();
        let consumer = Consumer::new(
            BrokerAddress {
                url: common.rabbitmq_url.clone(),
                tls: common.tls.clone(),
            },
            worker_id.clone(),
            common.topology(),
            settings.concurrency,
            worker,
            tracker.clone(),
            broker.clone(),
        );
        let consuming = tokio::spawn(consumer.run(connection, stopping.draining.clone()));

        shutdown.await;
        tracing::info!(
            tasks_in_hand = in_hand.len(),
            grace = ?settings.shutdown_grace,
            "stopping: no new tasks; letting the tasks in hand finish"
        );
        stopping.draining.cancel();
        let connection = consuming.await.unwrap_or_else(|error| {
            tracing::error!(%error, "the consumer task panicked");
            None
        });
        tracker.close();
        if tokio::time::timeout(settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks_in_hand = in_hand.len(),
                "grace period over: requeueing the tasks still running"
            );
            stopping.grace_expired.cancel();
            if tokio::time::timeout(REQUEUE_DEADLINE, tracker.wait())
                .await
                .is_err()
            {
                tracing::error!("tasks did not give their messages back in time");
            }
        }

        background.cancel();
        if let Err(error) = presence_task.await {
            tracing::error!(%error, "the presence task panicked");
        }
        if let Err(error) = sweeper_task.await {
            tracing::error!(%error, "the dead-letter sweeper panicked");
        }
        for (name, task) in [("cancel watcher", cancel_task), ("purger", purger_task)] {
            if let Err(error) = task.await {
                tracing::error!(%error, "the {name} panicked");
            }
        }
        if let Some(task) = protection_task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the protection task panicked");
        }
        match presence.deregister().await {
            Ok(()) => tracing::info!("deregistered"),
            Err(error) => {
                tracing::warn!(%error, "cannot deregister; the entry goes stale by itself")
            }
        }
        if let Some((connection, channel)) = connection {
            if let Err(error) = channel.close(200, "agent shutting down".into()).await {
                tracing::warn!(%error, "cannot close the rabbitmq channel cleanly");
            }
            if let Err(error) = connection.close(200, "agent shutting down".into()).await {
                tracing::warn!(%error, "cannot close the rabbitmq connection cleanly");
            }
        }
        broker.set(false);
        health.stop().await?;
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// Connects to Redis, retrying until `deadline`. The connection manager reconnects by itself afterwards.
async fn connect_redis(
    settings: &AgentSettings,
    deadline: Instant,
) -> Result<ConnectionManager, AgentError> {
    let timeout = settings.startup_timeout;
    let client = settings
        .common
        .tls
        .redis_client(settings.common.redis_url.expose_secret())
        .map_err(|error| AgentError::RedisUnreachable(timeout, error))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(2));
    let mut backoff =
        shared::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(mut manager) => {
                shared::deployment::refuse_cluster(&mut manager).await?;
                return Ok(manager);
            }
            Err(error) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return Err(AgentError::RedisUnreachable(timeout, error));
                }
                tracing::warn!(%error, "redis unreachable; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Connects to RabbitMQ, retrying until `deadline`.
async fn connect_broker(
    settings: &AgentSettings,
    worker_id: &str,
    deadline: Instant,
) -> Result<Connection, AgentError> {
    let timeout = settings.startup_timeout;
    let mut backoff =
        shared::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        match connect(
            &settings.common.rabbitmq_url,
            &settings.common.tls,
            worker_id,
        )
        .await
        {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return Err(AgentError::BrokerUnreachable(timeout, error));
                }
                tracing::warn!(%error, "rabbitmq unreachable; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The ECS task id when running on ECS, else the hostname plus a short uuid.
async fn derive_worker_id() -> String {
    let short = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    if let Ok(metadata) = std::env::var("ECS_CONTAINER_METADATA_URI_V4")
        && let Some(task_id) = ecs_task_id(&metadata).await
    {
        return format!("{task_id}-{short}");
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".to_owned());
    format!("{host}-{short}")
}

/// The task id from the ECS task metadata endpoint (the last segment of `TaskARN`).
async fn ecs_task_id(metadata_uri: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let task: serde_json::Value = client
        .get(format!("{}/task", metadata_uri.trim_end_matches('/')))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let arn = task.get("TaskARN")?.as_str()?;
    arn.rsplit('/').next().map(str::to_owned)
}
