//! Publishing task messages with publisher confirms on one long-lived channel.
//!
//! Many publishes are in flight on the channel at once; lapin matches each broker confirm to its publish,
//! so a request waits only for its own confirm. A supervisor task owns the connection: it connects (and
//! makes sure the topology exists), watches the connection, and reconnects with backoff after the broker
//! restarts.
//! While there is no channel, [`Publisher::publish`] fails at once with [`PublishError::Unavailable`], so
//! the gateway answers 503 quickly rather than hanging.

use lapin::Confirmation;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::SecretString;
use shared::backoff::Backoff;
use shared::queue::{Origin, Topology};
use shared::task::TaskMessage;
use shared::tls::{BrokerAddress, Tls};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the supervisor checks that the connection is still up.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// There is no connection to the broker right now.
    #[error("the broker is not connected")]
    Unavailable,
    /// The broker returned the message as unroutable (the queue does not exist).
    #[error("the broker could not route the message (is the queue missing?)")]
    Returned,
    /// The broker refused the message.
    #[error("the broker refused the message")]
    Nacked,
    /// The broker did not take the message and confirm it in time (it may still take it later: the task
    /// is failed first, so a late message finds it finished and is acked without running).
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    /// The channel failed while publishing.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// Why the broker could not be reached at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach RabbitMQ within {deadline:?}: {last_error}")]
pub struct ConnectError {
    /// The start-up deadline that passed.
    pub deadline: Duration,
    /// The last failure seen.
    pub last_error: String,
}

struct Shared {
    /// The channel messages are published on (confirm mode).
    channel: RwLock<Option<Channel>>,
    /// A channel for reading the queue's depth (a passive declare), kept apart from publishing.
    status: RwLock<Option<Channel>>,
    lost: Notify,
}

fn read(lock: &RwLock<Option<Channel>>) -> Option<Channel> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn replace(lock: &RwLock<Option<Channel>>, channel: Option<Channel>) -> Option<Channel> {
    std::mem::replace(
        &mut *lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        channel,
    )
}

/// Publishes task messages; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    topology: Topology,
    confirm_timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topology", &self.topology)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Publisher {
    /// Connects to the broker (waiting up to `deadline`), makes sure the topology exists, and starts the
    /// supervisor that keeps the connection up until `shutdown` is cancelled.
    ///
    /// # Errors
    /// [`ConnectError`] when no connection could be made within `deadline`.
    pub async fn start(
        url: SecretString,
        tls: Tls,
        topology: Topology,
        confirm_timeout: Duration,
        deadline: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, ConnectError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let broker = BrokerAddress { url, tls };
        let (connection, channel, status) = loop {
            let result = open(&broker, &topology).await;
            let delay = backoff.next_delay();
            match result {
                Ok(opened) => break opened,
                Err(error) if started.elapsed() + delay < deadline => {
                    tracing::warn!(%error, "RabbitMQ not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    return Err(ConnectError {
                        deadline,
                        last_error: error,
                    });
                }
            }
        };
        tracing::info!(queue = %topology.queue, "connected to RabbitMQ");
        let shared = Arc::new(Shared {
            channel: RwLock::new(Some(channel)),
            status: RwLock::new(Some(status)),
            lost: Notify::new(),
        });
        tokio::spawn(supervise(
            shared.clone(),
            broker,
            topology.clone(),
            connection,
            shutdown,
        ));
        Ok(Self {
            shared,
            topology,
            confirm_timeout,
        })
    }

    /// Whether a channel is open right now.
    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|c| c.status().connected())
    }

    fn current(&self) -> Option<Channel> {
        read(&self.shared.channel)
    }

    /// Messages ready in the task queue (a passive declare on a channel of its own), within 2 s.
    ///
    /// # Errors
    /// [`PublishError::Unavailable`] without a connection; the broker's error otherwise (a missing queue
    /// closes the status channel, and the supervisor reconnects and declares it again if its user may).
    pub async fn queue_depth(&self) -> Result<u32, PublishError> {
        let channel = read(&self.shared.status)
            .filter(|c| c.status().connected())
            .ok_or(PublishError::Unavailable)?;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..lapin::options::QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            Duration::from_secs(2),
            channel.queue_declare(
                self.topology.queue.as_str().into(),
                passive,
                lapin::types::FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| PublishError::Timeout(Duration::from_secs(2)))?
        .inspect_err(|_| self.shared.lost.notify_one())?;
        Ok(declared.message_count())
    }

    /// Publishes `message` and waits for the broker's confirm, both within the confirm timeout.
    ///
    /// # Errors
    /// [`PublishError`] when the message is not known to be queued.
    #[tracing::instrument(skip_all, fields(task_id = %message.correlation_id))]
    pub async fn publish(
        &self,
        message: &TaskMessage,
        origin: &Origin,
    ) -> Result<(), PublishError> {
        let channel = self
            .current()
            .filter(|c| c.status().connected())
            .ok_or(PublishError::Unavailable)?;
        let started = std::time::Instant::now();
        let published = self.publish_on(&channel, message, origin).await;
        crate::metrics::publish_confirmed(confirm_outcome(&published), started.elapsed());
        published
    }

    /// [`Publisher::publish`] on `channel`.
    async fn publish_on(
        &self,
        channel: &Channel,
        message: &TaskMessage,
        origin: &Origin,
    ) -> Result<(), PublishError> {
        // One deadline for the write and the confirm: a broker under a memory or disk alarm stops
        // reading from publishers, so the write itself can wait as long as the alarm lasts.
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let timed_out = |_| PublishError::Timeout(self.confirm_timeout);
        let confirm =
            tokio::time::timeout_at(deadline, self.topology.publish(channel, message, origin))
                .await
                .map_err(timed_out)?
                .inspect_err(|_| self.shared.lost.notify_one())?;
        let confirmation = tokio::time::timeout_at(deadline, confirm)
            .await
            .map_err(timed_out)?
            .inspect_err(|_| self.shared.lost.notify_one())?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Returned),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // The channel is always in confirm mode; a missing confirm means it was not.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

/// The `outcome` label of a publish's confirm latency.
fn confirm_outcome(published: &Result<(), PublishError>) -> &'static str {
    match published {
        Ok(()) => "ack",
        Err(PublishError::Nacked) => "nack",
        Err(PublishError::Returned) => "returned",
        Err(PublishError::Timeout(_)) => "timeout",
        Err(PublishError::Unavailable | PublishError::Broker(_)) => "error",
    }
}

async fn open(
    broker: &BrokerAddress,
    topology: &Topology,
) -> Result<(Connection, Channel, Channel), String> {
    let attempt = async {
        let connection = broker
            .connect(ConnectionProperties::default().with_connection_name("euglena-gateway".into()))
            .await
            .map_err(|error| error.to_string())?;
        // The topology exists (the gateway's own user may not create it): checked passively.
        topology
            .ensure(&connection)
            .await
            .map_err(|error| error.to_string())?;
        let opened = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let status = connection.create_channel().await?;
            Ok::<_, lapin::Error>((channel, status))
        };
        let (channel, status) = opened.await.map_err(|error| error.to_string())?;
        Ok::<_, String>((connection, channel, status))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(opened) => opened,
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

async fn supervise(
    shared: Arc<Shared>,
    broker: BrokerAddress,
    topology: Topology,
    mut connection: Connection,
    shutdown: CancellationToken,
) {
    loop {
        // Watch the live connection until it drops or we are told to stop.
        loop {
            let channel_up = [&shared.channel, &shared.status]
                .into_iter()
                .all(|lock| read(lock).is_some_and(|c| c.status().connected()));
            if !connection.status().connected() || !channel_up {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    // The channels before their connection: closing a connection under an open channel
                    // makes lapin log an error for a clean shutdown.
                    for lock in [&shared.channel, &shared.status] {
                        if let Some(channel) = replace(lock, None) {
                            let _ = channel.close(200, "gateway shutting down".into()).await;
                        }
                    }
                    let _ = connection.close(200, "gateway shutting down".into()).await;
                    return;
                }
                () = shared.lost.notified() => {}
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
        }
        tracing::warn!("lost the RabbitMQ connection; reconnecting");
        replace(&shared.channel, None);
        replace(&shared.status, None);
        let _ = connection.close(200, "reconnecting".into()).await;

        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match open(&broker, &topology).await {
                Ok((new_connection, channel, status)) => {
                    connection = new_connection;
                    replace(&shared.channel, Some(channel));
                    replace(&shared.status, Some(status));
                    tracing::info!("reconnected to RabbitMQ");
                    break;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "RabbitMQ reconnect failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
