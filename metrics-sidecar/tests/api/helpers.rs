//! Spawns the sidecar on port 0 against the real RabbitMQ and Redis, with a queue, key prefix and metric
//! namespace unique to each test so tests run in parallel; CloudWatch is moto (dummy credentials set here)
//! or off. Also a broker client to publish and hold deliveries, and polling with a deadline.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudwatch::config::Credentials;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use metrics_sidecar::{Application, Settings};
use serde_json::Value;
use shared::queue::Topology;
use shared::settings::Reader;
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const MANAGEMENT_URL: &str = "http://guest:guest@127.0.0.1:15672";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Where the sidecar under test puts its metrics.
#[derive(Debug, Clone)]
pub enum CloudWatch {
    /// Off: no AWS settings.
    Off,
    /// moto, at `AWS_ENDPOINT_URL` or the port `scripts/ensure-moto.sh` uses.
    Moto,
    /// An endpoint where nothing listens, so every put fails.
    Unreachable,
    /// This endpoint (e.g. a proxy in front of moto), with moto's dummy credentials.
    At(String),
}

/// How to spawn the sidecar.
#[derive(Debug, Clone)]
pub struct Options {
    pub management: bool,
    pub cloudwatch: CloudWatch,
    pub declare_queue: bool,
    /// Overrides the deadline of one put (by default half the 1 s interval).
    pub put_deadline: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            management: true,
            cloudwatch: CloudWatch::Off,
            declare_queue: true,
            put_deadline: None,
        }
    }
}

/// A running sidecar and the names it was given.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub queue: String,
    pub namespace: String,
    pub key_prefix: String,
    pub aws: Option<SdkConfig>,
    pub http: reqwest::Client,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// The moto endpoint.
pub fn moto_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".to_owned())
}

/// An SDK configuration for `endpoint` with dummy credentials, failing the test when it is moto and moto
/// does not answer.
pub async fn aws_config(endpoint: &str, check_reachable: bool) -> SdkConfig {
    if check_reachable {
        let reachable = reqwest::Client::new()
            .get(format!("{endpoint}/moto-api/"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok();
        assert!(
            reachable,
            "moto is not reachable at {endpoint}: run scripts/ensure-moto.sh (or set AWS_ENDPOINT_URL)"
        );
    }
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

/// The settings the sidecar reads, from a map instead of the process environment.
pub fn settings(pairs: &[(&str, String)]) -> Settings {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Settings::from_source(&Reader::new(env)).expect("test settings are valid")
}

/// Declares the queue (unless told not to) and spawns the sidecar ticking every second.
pub async fn spawn_app(options: Options) -> TestApp {
    let id = Uuid::new_v4().simple().to_string();
    let queue = format!("test.sidecar.{id}");
    let namespace = format!("Euglena/Test/{id}");
    let key_prefix = format!("test:{id}:");
    if options.declare_queue {
        declare_queue(&queue).await;
    }
    let mut pairs = vec![
        ("PORT", "0".to_owned()),
        ("RABBITMQ_URL", RABBITMQ_URL.to_owned()),
        ("REDIS_URL", REDIS_URL.to_owned()),
        ("QUEUE_NAME", queue.clone()),
        ("METRICS_NAMESPACE", namespace.clone()),
        ("REDIS_KEY_PREFIX", key_prefix.clone()),
        ("PUBLISH_INTERVAL_SECONDS", "1".to_owned()),
    ];
    if options.management {
        pairs.push(("RABBITMQ_MANAGEMENT_URL", MANAGEMENT_URL.to_owned()));
    }
    let aws = match options.cloudwatch {
        CloudWatch::Off => None,
        CloudWatch::Moto => Some(aws_config(&moto_endpoint(), true).await),
        CloudWatch::Unreachable => Some(aws_config("http://127.0.0.1:9", false).await),
        CloudWatch::At(endpoint) => Some(aws_config(&endpoint, false).await),
    };
    let mut settings = settings(&pairs);
    if let Some(deadline) = options.put_deadline {
        settings.put_deadline = deadline;
    }
    let application = Application::build(settings, aws.clone())
        .await
        .expect("the sidecar starts");
    let address = format!("http://127.0.0.1:{}", application.port());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let handle = tokio::spawn(async move {
        application
            .run_until(async move { stopped.cancelled().await })
            .await
            .expect("the sidecar runs until stopped");
    });
    TestApp {
        address,
        queue,
        namespace,
        key_prefix,
        aws,
        http: reqwest::Client::new(),
        stop,
        handle,
    }
}

impl TestApp {
    pub async fn health(&self) -> Value {
        self.http
            .get(format!("{}/health", self.address))
            .send()
            .await
            .expect("GET /health")
            .json()
            .await
            .expect("/health is JSON")
    }

    /// Polls `/health` until `done` holds, failing with the last body after `deadline`.
    pub async fn health_until(&self, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let health = self.health().await;
            if done(&health) {
                return health;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "gave up after {deadline:?}; last /health: {health}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the sidecar and deletes the test's queues.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the sidecar stops within 10 s")
            .expect("the sidecar task did not panic");
        delete_queue(&self.queue).await;
    }
}

pub async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(RABBITMQ_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ runs on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("open a channel");
    (connection, channel)
}

/// Declares the production topology (quorum queue plus DLQ) under the test's queue name.
pub async fn declare_queue(queue: &str) {
    let (connection, channel) = channel().await;
    Topology::new(queue, 3)
        .declare(&channel)
        .await
        .expect("declare the test queue");
    let _ = connection.close(200, "done".into()).await;
}

pub async fn delete_queue(queue: &str) {
    let (connection, channel) = channel().await;
    let topology = Topology::new(queue, 3);
    for name in topology.queues() {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for name in topology.exchanges() {
        let _ = channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Publishes `count` persistent messages with publisher confirms.
pub async fn publish(queue: &str, count: usize) {
    let (connection, channel) = channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for i in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("the broker confirms");
    }
    let _ = connection.close(200, "done".into()).await;
}

/// A consumer holding deliveries without acknowledging them, until dropped.
#[derive(Debug)]
pub struct Holder {
    // The channel closes when its last handle drops, which would requeue the deliveries: keep them all.
    _connection: Connection,
    _channel: Channel,
    _consumer: lapin::Consumer,
    _deliveries: Vec<lapin::message::Delivery>,
}

/// Takes `count` deliveries from `queue` and holds them unacknowledged.
pub async fn hold(queue: &str, count: u16) -> Holder {
    let (connection, channel) = channel().await;
    channel
        .basic_qos(count, BasicQosOptions::default())
        .await
        .expect("set the prefetch");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut deliveries = Vec::new();
    while deliveries.len() < usize::from(count) {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the consumer is open")
            .expect("a delivery");
        deliveries.push(delivery);
    }
    Holder {
        _connection: connection,
        _channel: channel,
        _consumer: consumer,
        _deliveries: deliveries,
    }
}
