//! Puts the queue figures into CloudWatch: `QueueDepth` and `InFlight` (unit Count) in one PutMetricData
//! call, with the dimension `QueueName`, so the autoscaler always sees the two together.
//!
//! Every put is bounded by a deadline shorter than the publish interval: a put that stalls (a network
//! blackhole, a hung endpoint) is abandoned at the deadline instead of freezing the collector loop, and the
//! next tick puts a fresh value.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use std::time::Duration;

/// The metric of ready messages.
pub const QUEUE_DEPTH: &str = "QueueDepth";
/// The metric of delivered, unacknowledged messages.
pub const IN_FLIGHT: &str = "InFlight";
/// The dimension naming the queue.
pub const QUEUE_DIMENSION: &str = "QueueName";

/// A put failed; it is logged and retried with fresh figures at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// CloudWatch (or the network on the way) answered with an error: the SDK's error chain, which never
    /// carries the credentials.
    #[error("CloudWatch PutMetricData failed: {0}")]
    Failed(String),
    /// The put did not finish within its deadline and was abandoned.
    #[error("CloudWatch PutMetricData did not finish within {deadline:?}; abandoned")]
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
}

/// Puts the figures for one queue into one namespace.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
    queue: String,
    deadline: Duration,
}

impl Publisher {
    /// A publisher using the region, credentials and endpoint of `config`, abandoning any put that takes
    /// longer than `deadline` (see [`crate::settings::Settings::put_deadline`]).
    pub fn new(
        config: &aws_config::SdkConfig,
        namespace: impl Into<String>,
        queue: impl Into<String>,
        deadline: Duration,
    ) -> Self {
        Self {
            client: aws_sdk_cloudwatch::Client::new(config),
            namespace: namespace.into(),
            queue: queue.into(),
            deadline,
        }
    }

    /// Puts `queue_depth` and `in_flight`, timestamped `at`, and the dead-letter queue's depth as
    /// `QueueDepth` with `QueueName={queue}.dlq` when it was read (the DLQ alarm watches it).
    ///
    /// The whole call (credentials, signing, connecting, every SDK retry, reading the answer) is bounded by
    /// the publisher's deadline: past it the request is dropped, which closes its connection.
    ///
    /// # Errors
    /// [`PutError::Failed`] with the SDK's error context, [`PutError::Timeout`] past the deadline.
    #[tracing::instrument(skip_all, fields(namespace = %self.namespace, queue = %self.queue, queue_depth, in_flight))]
    pub async fn put(
        &self,
        queue_depth: u64,
        in_flight: u64,
        dead_letter_depth: Option<u64>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), PutError> {
        let timestamp = DateTime::from_millis(at.timestamp_millis());
        let dead_letter_queue = format!("{}.dlq", self.queue);
        let datum = |name: &str, queue: &str, value: u64| {
            MetricDatum::builder()
                .metric_name(name)
                .dimensions(
                    Dimension::builder()
                        .name(QUEUE_DIMENSION)
                        .value(queue)
                        .build(),
                )
                // Counts far below 2^53: exact as f64.
                .value(value as f64)
                .unit(StandardUnit::Count)
                .timestamp(timestamp)
                .build()
        };
        let mut request = self
            .client
            .put_metric_data()
            .namespace(&self.namespace)
            .metric_data(datum(QUEUE_DEPTH, &self.queue, queue_depth))
            .metric_data(datum(IN_FLIGHT, &self.queue, in_flight));
        if let Some(depth) = dead_letter_depth {
            request = request.metric_data(datum(QUEUE_DEPTH, &dead_letter_queue, depth));
        }
        match tokio::time::timeout(self.deadline, request.send()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(PutError::Failed(shared::errors::chain(&error))),
            Err(_elapsed) => Err(PutError::Timeout {
                deadline: self.deadline,
            }),
        }
    }
}
