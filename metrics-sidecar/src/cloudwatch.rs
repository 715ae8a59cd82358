//! Puts the queue figures into CloudWatch: `QueueDepth` and `InFlight` (unit Count) in one PutMetricData
//! call, with the dimension `QueueName`, so the autoscaler always sees the two together.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

/// The metric of ready messages.
pub const QUEUE_DEPTH: &str = "QueueDepth";
/// The metric of delivered, unacknowledged messages.
pub const IN_FLIGHT: &str = "InFlight";
/// The dimension naming the queue.
pub const QUEUE_DIMENSION: &str = "QueueName";

/// A put failed; it is logged and retried with fresh figures at the next tick.
#[derive(Debug, thiserror::Error)]
#[error("CloudWatch PutMetricData failed: {0}")]
pub struct PutError(String);

/// Puts the figures for one queue into one namespace.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
    queue: String,
}

impl Publisher {
    /// A publisher using the region, credentials and endpoint of `config`.
    pub fn new(
        config: &aws_config::SdkConfig,
        namespace: impl Into<String>,
        queue: impl Into<String>,
    ) -> Self {
        Self {
            client: aws_sdk_cloudwatch::Client::new(config),
            namespace: namespace.into(),
            queue: queue.into(),
        }
    }

    /// Puts `queue_depth` and `in_flight`, timestamped `at`, and the dead-letter queue's depth as
    /// `QueueDepth` with `QueueName={queue}.dlq` when it was read (the DLQ alarm watches it).
    ///
    /// # Errors
    /// [`PutError`] with the SDK's error context.
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
        request
            .send()
            .await
            .map_err(|e| PutError(shared::errors::chain(&e)))?;
        Ok(())
    }
}
