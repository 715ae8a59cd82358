//! Helpers for the tests against moto: an SDK configuration aimed at it (dummy credentials set here, not
//! taken from the environment), and an ECS service and metric namespace unique to each test.

use autoscaler_lambda::{AutoscaleError, AwsCloud, Decision, Policy, Settings, decide_and_apply};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_ecs::config::Credentials;
use aws_sdk_ecs::types::ContainerDefinition;
use std::time::Duration;
use uuid::Uuid;

/// The moto endpoint: `AWS_ENDPOINT_URL`, or the port `scripts/ensure-moto.sh` uses by default.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".to_owned())
}

/// Fails the test with a clear message when moto does not answer (never skips silently).
pub async fn require_moto() -> String {
    let endpoint = endpoint();
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        reachable,
        "moto is not reachable at {endpoint}: run scripts/ensure-moto.sh (or set AWS_ENDPOINT_URL)"
    );
    endpoint
}

/// An SDK configuration for moto with dummy credentials and region us-east-1.
pub async fn aws_config() -> SdkConfig {
    let endpoint = require_moto().await;
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

/// The environment the `autoscaler-lambda` binary needs to reach moto.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_SESSION_TOKEN", "testing".to_owned()),
    ]
}

/// An ECS cluster and service created in moto, with a metric namespace of its own.
#[derive(Debug)]
pub struct Fleet {
    pub config: SdkConfig,
    pub settings: Settings,
    pub ecs: aws_sdk_ecs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Fleet {
    /// Creates a cluster, a task definition and a service with `desired` tasks, all named uniquely.
    pub async fn create(desired: i32) -> Self {
        let config = aws_config().await;
        let id = Uuid::new_v4().simple().to_string();
        let settings = Settings {
            cluster: format!("euglena-{id}"),
            service: format!("agent-{id}"),
            // Unique too: moto's GetMetricData ignores the namespace when a query names dimensions, so
            // only a queue name of its own keeps each test's points apart.
            queue: format!("agent.mandates.{id}"),
            namespace: format!("Euglena/Test/{id}"),
            policy: Policy {
                target_per_worker: 1,
                min_workers: 1,
                max_workers: 11,
                stabilization_seconds: 300,
                scale_to_zero_after_seconds: 900,
            },
            dry_run: false,
        };
        let ecs = aws_sdk_ecs::Client::new(&config);
        ecs.create_cluster()
            .cluster_name(&settings.cluster)
            .send()
            .await
            .expect("create the cluster in moto");
        ecs.register_task_definition()
            .family(format!("agent-{id}"))
            .container_definitions(
                ContainerDefinition::builder()
                    .name("agent")
                    .image("euglena/agent:test")
                    .memory(512)
                    .build(),
            )
            .send()
            .await
            .expect("register the task definition in moto");
        ecs.create_service()
            .cluster(&settings.cluster)
            .service_name(&settings.service)
            .task_definition(format!("agent-{id}"))
            .desired_count(desired)
            .send()
            .await
            .expect("create the service in moto");
        let cloudwatch = aws_sdk_cloudwatch::Client::new(&config);
        Self {
            config,
            settings,
            ecs,
            cloudwatch,
        }
    }

    /// Puts one `QueueDepth`/`InFlight` pair, as the sidecar does, timestamped `at` (unix seconds).
    pub async fn put_metrics(&self, at: i64, queue_depth: f64, in_flight: f64) {
        let datum = |name: &str, value: f64| {
            MetricDatum::builder()
                .metric_name(name)
                .dimensions(
                    Dimension::builder()
                        .name("QueueName")
                        .value(&self.settings.queue)
                        .build(),
                )
                .value(value)
                .unit(StandardUnit::Count)
                .timestamp(DateTime::from_secs(at))
                .build()
        };
        self.cloudwatch
            .put_metric_data()
            .namespace(&self.settings.namespace)
            .metric_data(datum("QueueDepth", queue_depth))
            .metric_data(datum("InFlight", in_flight))
            .send()
            .await
            .expect("put metrics into moto");
    }

    /// Makes one decision at `now` (unix seconds) for this fleet, through the real SDK clients, and
    /// carries it out.
    pub async fn decide(&self, now: i64) -> Result<Decision, AutoscaleError> {
        let cloud = AwsCloud::new(&self.config, &self.settings);
        decide_and_apply(&cloud, &self.settings, now).await
    }

    /// The service's desired count as DescribeServices reports it.
    pub async fn desired_count(&self) -> i32 {
        let output = self
            .ecs
            .describe_services()
            .cluster(&self.settings.cluster)
            .services(&self.settings.service)
            .send()
            .await
            .expect("describe the service in moto");
        output.services()[0].desired_count()
    }

    /// Removes the service and cluster (moto keeps state for the server's lifetime).
    pub async fn delete(self) {
        let _ = self
            .ecs
            .delete_service()
            .cluster(&self.settings.cluster)
            .service(&self.settings.service)
            .force(true)
            .send()
            .await;
        let _ = self
            .ecs
            .delete_cluster()
            .cluster(&self.settings.cluster)
            .send()
            .await;
    }
}
