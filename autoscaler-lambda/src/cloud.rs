//! The AWS side of a decision, behind the small [`Cloud`] trait: read the queue metrics, read and set the
//! service's desired count. [`AwsCloud`] talks to CloudWatch and ECS through the SDK (AWS itself, or moto
//! through `AWS_ENDPOINT_URL`); tests of the handler substitute a fake.

use crate::policy::Sample;
use crate::settings::Settings;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use std::collections::BTreeMap;
use std::future::Future;

/// The metric names the sidecar puts.
pub const QUEUE_DEPTH: &str = "QueueDepth";
/// Delivered, unacknowledged messages.
pub const IN_FLIGHT: &str = "InFlight";
/// The dimension naming the queue.
pub const QUEUE_DIMENSION: &str = "QueueName";
/// CloudWatch's standard resolution: one point per minute per metric.
pub const PERIOD_SECONDS: i32 = 60;

/// A call to AWS failed. Messages carry the SDK's error context, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// GetMetricData failed.
    #[error("cannot read the queue metrics from CloudWatch: {0}")]
    Metrics(String),
    /// DescribeServices failed.
    #[error("cannot describe ECS service {service} in cluster {cluster}: {message}")]
    Describe {
        /// The cluster asked.
        cluster: String,
        /// The service asked.
        service: String,
        /// What went wrong.
        message: String,
    },
    /// DescribeServices answered, but without that service (or with it inactive).
    #[error("ECS service {service} not found in cluster {cluster}")]
    ServiceNotFound {
        /// The cluster asked.
        cluster: String,
        /// The service asked.
        service: String,
    },
    /// UpdateService failed.
    #[error("cannot set the desired count of ECS service {service} to {desired}: {message}")]
    Update {
        /// The service.
        service: String,
        /// The count that was refused.
        desired: u32,
        /// What went wrong.
        message: String,
    },
}

/// What a decision needs from the cloud. Futures are `Send` so the handler runs inside `lambda_runtime`.
pub trait Cloud {
    /// The queue's samples with a period starting in `[start, end)` (unix seconds), any order.
    fn queue_samples(
        &self,
        start: i64,
        end: i64,
    ) -> impl Future<Output = Result<Vec<Sample>, CloudError>> + Send;

    /// The service's current desired count.
    fn desired_count(&self) -> impl Future<Output = Result<u32, CloudError>> + Send;

    /// Sets the service's desired count.
    fn set_desired_count(
        &self,
        desired: u32,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
}

/// CloudWatch and ECS through the AWS SDK.
#[derive(Debug, Clone)]
pub struct AwsCloud {
    cloudwatch: aws_sdk_cloudwatch::Client,
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
    namespace: String,
    queue: String,
}

impl AwsCloud {
    /// Clients built from `config` (region, credentials and endpoint), aimed at the service and metrics
    /// named in `settings`.
    pub fn new(config: &aws_config::SdkConfig, settings: &Settings) -> Self {
        Self {
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            ecs: aws_sdk_ecs::Client::new(config),
            cluster: settings.cluster.clone(),
            service: settings.service.clone(),
            namespace: settings.namespace.clone(),
            queue: settings.queue.clone(),
        }
    }

    fn query(&self, id: &str, metric_name: &str) -> MetricDataQuery {
        let metric = Metric::builder()
            .namespace(&self.namespace)
            .metric_name(metric_name)
            .dimensions(
                Dimension::builder()
                    .name(QUEUE_DIMENSION)
                    .value(&self.queue)
                    .build(),
            )
            .build();
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(metric)
                    .period(PERIOD_SECONDS)
                    // The peak of each minute: a burst inside a minute still counts.
                    .stat("Maximum")
                    .build(),
            )
            .return_data(true)
            .build()
    }

    fn describe_error(&self, message: String) -> CloudError {
        CloudError::Describe {
            cluster: self.cluster.clone(),
            service: self.service.clone(),
            message,
        }
    }
}

impl Cloud for AwsCloud {
    #[tracing::instrument(skip_all, fields(namespace = %self.namespace, queue = %self.queue))]
    async fn queue_samples(&self, start: i64, end: i64) -> Result<Vec<Sample>, CloudError> {
        // Points keyed by period start: (queue depth, in flight).
        let mut points: BTreeMap<i64, (Option<f64>, Option<f64>)> = BTreeMap::new();
        let mut next_token: Option<String> = None;
        loop {
            let output = self
                .cloudwatch
                .get_metric_data()
                .metric_data_queries(self.query("depth", QUEUE_DEPTH))
                .metric_data_queries(self.query("inflight", IN_FLIGHT))
                .start_time(DateTime::from_secs(start))
                .end_time(DateTime::from_secs(end))
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| CloudError::Metrics(shared::errors::chain(&e)))?;
            for result in output.metric_data_results() {
                let is_depth = result.id() == Some("depth");
                for (at, value) in result.timestamps().iter().zip(result.values()) {
                    let point = points.entry(at.secs()).or_default();
                    if is_depth {
                        point.0 = Some(*value);
                    } else {
                        point.1 = Some(*value);
                    }
                }
            }
            match output.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        // The sidecar puts both figures together; a point missing one of them reads it as zero.
        Ok(points
            .into_iter()
            .map(|(at, (depth, in_flight))| Sample {
                at,
                queue_depth: depth.unwrap_or(0.0),
                in_flight: in_flight.unwrap_or(0.0),
            })
            .collect())
    }

    #[tracing::instrument(skip_all, fields(cluster = %self.cluster, service = %self.service))]
    async fn desired_count(&self) -> Result<u32, CloudError> {
        let output = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| self.describe_error(shared::errors::chain(&e)))?;
        let service = output
            .services()
            .iter()
            .find(|s| s.status() != Some("INACTIVE"))
            .ok_or_else(|| CloudError::ServiceNotFound {
                cluster: self.cluster.clone(),
                service: self.service.clone(),
            })?;
        u32::try_from(service.desired_count()).map_err(|_| {
            self.describe_error(format!(
                "negative desired count {}",
                service.desired_count()
            ))
        })
    }

    #[tracing::instrument(skip_all, fields(cluster = %self.cluster, service = %self.service, desired))]
    async fn set_desired_count(&self, desired: u32) -> Result<(), CloudError> {
        let update_error = |message: String| CloudError::Update {
            service: self.service.clone(),
            desired,
            message,
        };
        let count =
            i32::try_from(desired).map_err(|_| update_error("count too large".to_owned()))?;
        self.ecs
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .desired_count(count)
            .send()
            .await
            .map_err(|e| update_error(shared::errors::chain(&e)))?;
        Ok(())
    }
}
