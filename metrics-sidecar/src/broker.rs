//! The queue's ready count from RabbitMQ: a passive `queue.declare` answers with it. The connection is
//! opened lazily and reopened after any failure (a broker restart, a closed channel), so the sidecar
//! recovers on its own at the next tick.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use shared::tls::Tls;
use std::time::Duration;

/// How long one broker operation may take before it counts as failed.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Reading the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Connecting or opening a channel failed.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
    /// The passive declare failed (e.g. the queue does not exist: 404 NOT_FOUND).
    #[error("cannot read queue {queue}: {source}")]
    Declare {
        /// The queue.
        queue: String,
        /// The broker's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not answer in time.
    #[error("RabbitMQ did not answer within {0:?}")]
    Timeout(Duration),
}

/// Reads a queue's ready count, reconnecting as needed.
#[derive(Debug)]
pub struct QueueReader {
    url: SecretString,
    /// How to reach it over TLS (`amqps://`).
    tls: Tls,
    queue: String,
    connection_name: String,
    open: Option<(Connection, Channel)>,
    connects: u64,
}

impl QueueReader {
    /// A reader of `queue` on the broker at `url`; `connection_name` shows in the management UI.
    pub fn new(
        url: SecretString,
        tls: Tls,
        queue: impl Into<String>,
        connection_name: impl Into<String>,
    ) -> Self {
        Self {
            url,
            tls,
            queue: queue.into(),
            connection_name: connection_name.into(),
            open: None,
            connects: 0,
        }
    }

    /// How many times a connection was opened (1 after start; more after reconnects).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// The queue's ready messages.
    ///
    /// # Errors
    /// [`BrokerError`]; the connection is dropped so the next call reconnects.
    pub async fn ready_count(&mut self) -> Result<u32, BrokerError> {
        let queue = self.queue.clone();
        self.count(&queue).await
    }

    /// The ready messages of the queue's dead-letter queue (`{queue}.dlq`): what could not be processed.
    ///
    /// # Errors
    /// [`BrokerError`]; the connection is dropped so the next call reconnects.
    pub async fn dead_letter_count(&mut self) -> Result<u32, BrokerError> {
        let queue = format!("{}.dlq", self.queue);
        self.count(&queue).await
    }

    async fn count(&mut self, queue: &str) -> Result<u32, BrokerError> {
        let result = self.try_count(queue).await;
        if result.is_err() {
            self.open = None;
        }
        result
    }

    async fn try_count(&mut self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = tokio::time::timeout(
            OPERATION_TIMEOUT,
            channel.queue_declare(queue.into(), options, FieldTable::default()),
        )
        .await
        .map_err(|_| BrokerError::Timeout(OPERATION_TIMEOUT))?
        .map_err(|source| BrokerError::Declare {
            queue: queue.to_owned(),
            source,
        })?;
        Ok(queue.message_count())
    }

    /// The open channel, or a new connection and channel when there is none or it closed.
    ///
    /// # Errors
    /// [`BrokerError::Connect`] or [`BrokerError::Timeout`].
    pub async fn channel(&mut self) -> Result<Channel, BrokerError> {
        if let Some((connection, channel)) = &self.open
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        self.open = None;
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let connect = async {
            let connection = self
                .tls
                .amqp_connect(self.url.expose_secret(), properties)
                .await?;
            let channel = connection.create_channel().await?;
            Ok::<_, lapin::Error>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(OPERATION_TIMEOUT, connect)
            .await
            .map_err(|_| BrokerError::Timeout(OPERATION_TIMEOUT))?
            .map_err(BrokerError::Connect)?;
        self.connects += 1;
        tracing::info!(connects = self.connects, "connected to RabbitMQ");
        self.open = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Closes the connection, if open.
    pub async fn close(&mut self) {
        if let Some((connection, _)) = self.open.take() {
            let _ = connection
                .close(200, "metrics sidecar stopping".into())
                .await;
        }
    }
}
