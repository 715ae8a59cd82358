//! Wiring: bind the HTTP listener, wait for RabbitMQ (bounded by the start-up deadline), build the
//! collector, and run both until shutdown.

use crate::broker::{BrokerError, QueueReader};
use crate::cloudwatch::Publisher;
use crate::collector::Collector;
use crate::inflight::{InFlightError, InFlightSource, ManagementClient, PresenceReader};
use crate::routes::router;
use crate::settings::Settings;
use crate::state::{SharedState, Snapshot};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The HTTP port could not be bound.
    #[error("cannot bind port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// RabbitMQ stayed unreachable past the start-up deadline.
    #[error("RabbitMQ unreachable for {deadline:?} at start: {source}")]
    Broker {
        /// The deadline.
        deadline: Duration,
        /// The last error.
        #[source]
        source: BrokerError,
    },
    /// The Redis URL is unusable.
    #[error(transparent)]
    Redis(#[from] InFlightError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// The AWS configuration from the standard variables when CloudWatch is on (region defaulting to
/// us-east-1 when only an endpoint is given, as for an emulator), `None` when it is off.
pub async fn aws_config(settings: &Settings) -> Option<aws_config::SdkConfig> {
    if !settings.cloudwatch {
        return None;
    }
    let region =
        aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    Some(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .load()
            .await,
    )
}

/// A built sidecar, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    port: u16,
    collector: Collector,
    state: SharedState,
    interval: Duration,
}

impl Application {
    /// Binds the port and connects to RabbitMQ. `aws` is `None` to run with CloudWatch off.
    ///
    /// # Errors
    /// [`StartupError`] when the port cannot be bound, RabbitMQ stays unreachable past the start-up
    /// deadline, or the Redis URL is invalid.
    pub async fn build(
        settings: Settings,
        aws: Option<aws_config::SdkConfig>,
    ) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(("0.0.0.0", settings.port))
            .await
            .map_err(|source| StartupError::Bind {
                port: settings.port,
                source,
            })?;
        let port = listener.local_addr().map_err(StartupError::Serve)?.port();

        let connection_name = format!("metrics-sidecar:{}:{}", settings.queue, std::process::id());
        let mut reader = QueueReader::new(
            settings.common.rabbitmq_url.clone(),
            settings.common.tls.clone(),
            settings.queue.clone(),
            connection_name,
        );
        connect_within(&mut reader, settings.startup_deadline).await?;

        let in_flight = match &settings.management {
            Some(management) => {
                InFlightSource::Management(ManagementClient::new(management, &settings.queue))
            }
            None => InFlightSource::Presence(Box::new(PresenceReader::new(
                &settings.common.redis_url,
                &settings.common.tls,
                settings.common.keys(),
                Duration::from_secs(settings.common.worker_ttl_seconds),
            )?)),
        };
        // A put must end before the next tick is due, whatever the caller set.
        let put_deadline = settings
            .put_deadline
            .min(crate::settings::put_deadline(settings.interval));
        let publisher = aws.as_ref().map(|config| {
            Publisher::new(
                config,
                settings.namespace.clone(),
                settings.queue.clone(),
                put_deadline,
            )
        });
        let state = SharedState::new(Snapshot {
            queue: settings.queue.clone(),
            cloudwatch: publisher.is_some(),
            in_flight_source: in_flight.name(),
            broker_connects: reader.connects(),
            ..Snapshot::default()
        });
        tracing::info!(
            port,
            queue = %settings.queue,
            cloudwatch = publisher.is_some(),
            in_flight_source = in_flight.name(),
            interval_seconds = settings.interval.as_secs(),
            put_deadline_ms = u64::try_from(put_deadline.as_millis()).unwrap_or(u64::MAX),
            "metrics sidecar ready"
        );
        Ok(Self {
            listener,
            port,
            collector: Collector::new(reader, in_flight, publisher, state.clone()),
            state,
            interval: settings.interval,
        })
    }

    /// The bound port (useful when `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state the routes serve.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Runs the loop and the HTTP server until `shutdown` completes.
    ///
    /// # Errors
    /// [`StartupError::Serve`] when the HTTP server fails.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let cancel = CancellationToken::new();
        let collector = tokio::spawn(self.collector.run(self.interval, cancel.clone()));
        let server_cancel = cancel.clone();
        let served = axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = server_cancel.cancelled() => {}
                }
            })
            .await
            .map_err(StartupError::Serve);
        cancel.cancel();
        let _ = collector.await;
        served
    }
}

/// Opens the first broker connection, retrying with backoff until `deadline`.
async fn connect_within(reader: &mut QueueReader, deadline: Duration) -> Result<(), StartupError> {
    let give_up = tokio::time::Instant::now() + deadline;
    let mut backoff = Duration::from_millis(250);
    loop {
        match reader.channel().await {
            Ok(_) => return Ok(()),
            Err(source) if tokio::time::Instant::now() + backoff >= give_up => {
                return Err(StartupError::Broker { deadline, source });
            }
            Err(error) => {
                tracing::warn!(%error, "RabbitMQ not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
