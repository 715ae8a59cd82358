//! The broker side: consume the task queue with manual acks and `basic_qos(prefetch)`, hand each
//! delivery to the [`Worker`], and reconnect with backoff when the connection drops.
//!
//! Tasks in hand keep running while the connection is down: their deliveries die with the channel, the
//! broker redelivers the messages, and a redelivery of a task still running here is adopted by it (see
//! [`Worker::try_execute_task`]), while one that reaches another worker after the task ended is acked
//! without running because the task is terminal.

use crate::executor::TaskExecutor;
use crate::health::BrokerStatus;
use crate::worker::Worker;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use shared::backoff::Backoff;
use shared::queue::Topology;
use shared::tls::{BrokerAddress, Tls};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the broker may take to confirm the consumer's cancel at shutdown.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumer stopped for a reason worth a reconnect.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The broker or the connection failed.
    #[error("rabbitmq: {0}")]
    Broker(#[from] lapin::Error),
    /// The queue topology is missing (and this user may not create it) or refused.
    #[error(transparent)]
    Topology(#[from] shared::queue::TopologyError),
    /// A connection attempt timed out.
    #[error("rabbitmq did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker ended the consumer (queue deleted, connection closed).
    #[error("the broker ended the consumer")]
    Ended,
}

/// Opens a connection to `url` (over TLS for `amqps://`), named `name` in the broker's management UI.
///
/// # Errors
/// [`ConsumeError`] when the broker refuses or does not answer in time.
pub async fn connect(
    url: &SecretString,
    tls: &Tls,
    name: &str,
) -> Result<Connection, ConsumeError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        tls.amqp_connect(url.expose_secret(), properties),
    )
    .await
    .map_err(|_| ConsumeError::Timeout(CONNECT_TIMEOUT))?
    .map_err(ConsumeError::from)
}

/// Consumes the task queue for a [`Worker`], reconnecting as needed.
#[derive(Debug)]
pub struct Consumer<E> {
    broker_address: BrokerAddress,
    name: String,
    topology: Topology,
    prefetch: u16,
    worker: Worker<E>,
    tracker: TaskTracker,
    broker: BrokerStatus,
}

impl<E: TaskExecutor> Consumer<E> {
    /// A consumer of `topology`'s queue at `broker_address`, running deliveries on `tracker`.
    pub fn new(
        broker_address: BrokerAddress,
        name: String,
        topology: Topology,
        prefetch: u16,
        worker: Worker<E>,
        tracker: TaskTracker,
        broker: BrokerStatus,
    ) -> Self {
        Self {
            broker_address,
            name,
            topology,
            prefetch,
            worker,
            tracker,
            broker,
        }
    }

    /// Consumes until `draining` fires, starting on `connection` and reconnecting with backoff whenever
    /// it drops. Returns the live connection and channel (to close once the tasks in hand have answered
    /// their deliveries on it), if any.
    pub async fn run(
        self,
        connection: Connection,
        draining: CancellationToken,
    ) -> Option<(Connection, Channel)> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut next = Some(connection);
        loop {
            let connection = match next.take() {
                Some(connection) => connection,
                None => {
                    let attempt = tokio::select! {
                        attempt = connect(&self.broker_address.url, &self.broker_address.tls, &self.name) => attempt,
                        () = draining.cancelled() => return None,
                    };
                    match attempt {
                        Ok(connection) => connection,
                        Err(error) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(%error, ?delay, "cannot reconnect to rabbitmq; retrying");
                            tokio::select! {
                                () = tokio::time::sleep(delay) => continue,
                                () = draining.cancelled() => return None,
                            }
                        }
                    }
                }
            };
            match self.consume(&connection, &draining, &mut backoff).await {
                Ok(channel) => return Some((connection, channel)),
                Err(error) => {
                    self.broker.set(false);
                    // A channel-level failure leaves the connection open: close it before replacing it.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        connection.close(200, "reconnecting".into()),
                    )
                    .await;
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, "lost the rabbitmq consumer; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = draining.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Consumes on one connection until `draining` fires (`Ok`, with the channel the deliveries in hand
    /// must be answered on: dropping it would close it) or the connection fails.
    async fn consume(
        &self,
        connection: &Connection,
        draining: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Channel, ConsumeError> {
        self.topology.ensure(connection).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("{}-{}", self.name, channel.id());
        let mut deliveries = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.broker.set(true);
        backoff.reset();
        tracing::info!(queue = %self.topology.queue, prefetch = self.prefetch, "consuming");
        loop {
            tokio::select! {
                () = draining.cancelled() => {
                    // Bounded: a broker that stopped answering must not hold up the drain (the grace
                    // period has not started yet).
                    match tokio::time::timeout(
                        CANCEL_TIMEOUT,
                        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(%error, "cannot cancel the consumer"),
                        Err(_) => tracing::warn!(
                            timeout = ?CANCEL_TIMEOUT,
                            "the broker did not confirm the consumer's cancel; draining anyway"
                        ),
                    }
                    // Deliveries already on their way are given back by the draining worker.
                    while let Ok(Some(Ok(delivery))) =
                        tokio::time::timeout(Duration::from_millis(50), deliveries.next()).await
                    {
                        self.dispatch(delivery);
                    }
                    tracing::info!("stopped consuming");
                    return Ok(channel);
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => self.dispatch(delivery),
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(ConsumeError::Ended),
                },
            }
        }
    }

    fn dispatch(&self, delivery: lapin::message::Delivery) {
        let worker = self.worker.clone();
        self.tracker.spawn(async move {
            worker.try_execute_task(delivery).await;
        });
    }
}
