//! In-flight deliveries: tasks a worker holds and has not acknowledged yet.
//!
//! With `RABBITMQ_MANAGEMENT_URL` set, the management API's `messages_unacknowledged` for the queue (its
//! figures lag the broker by about 5 s). Without it, the agents' presence records in Redis: the tasks held
//! by the live members of `workers:status` (stale ones pruned by whoever counts), as
//! [`shared::presence::read_fleet`] reads them.

use crate::settings::Management;
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use shared::Keys;
use std::time::Duration;

/// How long one management or Redis call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Reading the in-flight count failed.
#[derive(Debug, thiserror::Error)]
pub enum InFlightError {
    /// The management API could not be reached or answered with an error status.
    #[error("RabbitMQ management API request failed: {0}")]
    Management(#[source] reqwest::Error),
    /// The management API answered without the figure (a queue too new to have statistics yet).
    #[error("the management API reports no messages_unacknowledged for queue {0} yet")]
    NoFigure(String),
    /// Redis failed.
    #[error("cannot read the presence records from Redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where the in-flight figure comes from.
#[derive(Debug)]
pub enum InFlightSource {
    /// The RabbitMQ management API.
    Management(ManagementClient),
    /// The agents' presence records in Redis.
    Presence(Box<PresenceReader>),
}

impl InFlightSource {
    /// `"management"` or `"presence"`, for `/health`.
    pub fn name(&self) -> &'static str {
        match self {
            InFlightSource::Management(_) => "management",
            InFlightSource::Presence(_) => "presence",
        }
    }

    /// The current in-flight count.
    ///
    /// # Errors
    /// [`InFlightError`] from the source.
    pub async fn count(&mut self) -> Result<u64, InFlightError> {
        match self {
            InFlightSource::Management(client) => client.unacknowledged().await,
            InFlightSource::Presence(reader) => reader.tasks_held().await,
        }
    }
}

/// Reads `messages_unacknowledged` from the management API.
#[derive(Debug)]
pub struct ManagementClient {
    http: reqwest::Client,
    url: String,
    queue: String,
    user: String,
    password: SecretString,
}

#[derive(Debug, Deserialize)]
struct QueueStats {
    messages_unacknowledged: Option<u64>,
}

impl ManagementClient {
    /// A client for `queue` through `management`.
    pub fn new(management: &Management, queue: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            url: management.queue_url(queue),
            queue: queue.to_owned(),
            user: management.user.clone(),
            password: management.password.clone(),
        }
    }

    /// `messages_unacknowledged` for the queue.
    ///
    /// # Errors
    /// [`InFlightError::Management`] or [`InFlightError::NoFigure`].
    pub async fn unacknowledged(&self) -> Result<u64, InFlightError> {
        let stats: QueueStats = self
            .http
            .get(&self.url)
            .basic_auth(&self.user, Some(self.password.expose_secret()))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(InFlightError::Management)?
            .json()
            .await
            .map_err(InFlightError::Management)?;
        stats
            .messages_unacknowledged
            .ok_or_else(|| InFlightError::NoFigure(self.queue.clone()))
    }
}

/// Counts the tasks agents hold, from their presence records.
#[derive(Debug)]
pub struct PresenceReader {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    keys: Keys,
    worker_ttl: Duration,
}

impl PresenceReader {
    /// A reader over the presence records under `keys`, live within `worker_ttl`.
    ///
    /// # Errors
    /// [`InFlightError::Redis`] when the URL does not parse.
    pub fn new(
        redis_url: &SecretString,
        tls: &shared::tls::Tls,
        keys: Keys,
        worker_ttl: Duration,
    ) -> Result<Self, InFlightError> {
        Ok(Self {
            client: tls
                .redis_client(redis_url.expose_secret())
                .map_err(InFlightError::Redis)?,
            connection: None,
            keys,
            worker_ttl,
        })
    }

    /// Tasks the live agents hold.
    ///
    /// # Errors
    /// [`InFlightError::Redis`] or [`InFlightError::Timeout`]; the connection is reopened next time.
    pub async fn tasks_held(&mut self) -> Result<u64, InFlightError> {
        let result = tokio::time::timeout(CALL_TIMEOUT, self.try_tasks_held())
            .await
            .unwrap_or(Err(InFlightError::Timeout(CALL_TIMEOUT)));
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn try_tasks_held(&mut self) -> Result<u64, InFlightError> {
        let mut connection = match &self.connection {
            Some(connection) => connection.clone(),
            None => {
                let connection = self
                    .client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(InFlightError::Redis)?;
                self.connection = Some(connection.clone());
                connection
            }
        };
        let fleet = shared::presence::read_fleet(
            &mut connection,
            &self.keys,
            chrono::Utc::now().timestamp_millis(),
            self.worker_ttl,
        )
        .await
        .map_err(InFlightError::Redis)?;
        Ok(fleet.tasks)
    }
}
