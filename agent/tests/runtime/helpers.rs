//! A unique queue and key prefix per test, task records created the way the gateway creates them, and
//! polling with deadlines.

#![allow(dead_code)]

use agent::worker::{Stopping, Worker, WorkerConfig};
use agent::{ExecutionError, TaskContext, TaskExecutor, TickReporter};
use anyhow::{Context, Result, bail};
use chrono::Utc;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use redis::aio::ConnectionManager;
use shared::Keys;
use shared::queue::Topology;
use shared::task::{TaskMessage, TaskRecord, TaskResult};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The broker the tests use: `AGENT_TEST_RABBITMQ_URL`, or the local one on 5672.
pub fn rabbitmq_url() -> String {
    std::env::var("AGENT_TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}
pub const OWNER: &str = "user-1";

/// One test's corner of Redis and RabbitMQ.
pub struct TestEnv {
    pub redis_url: String,
    pub prefix: String,
    pub keys: Keys,
    pub topology: Topology,
    pub redis: ConnectionManager,
    pub connection: Connection,
    pub channel: Channel,
}

impl TestEnv {
    /// A fresh queue (with its DLQ) and key prefix.
    pub async fn new(max_deliveries: u32) -> Result<Self> {
        Self::with_redis(max_deliveries, REDIS_URL).await
    }

    /// A fresh queue and key prefix on the Redis at `redis_url`.
    pub async fn with_redis(max_deliveries: u32, redis_url: &str) -> Result<Self> {
        let id = Uuid::new_v4().simple().to_string();
        let prefix = format!("test:{id}:");
        let topology = Topology::new(format!("test.agent.{id}"), max_deliveries);
        let redis = ConnectionManager::new(redis::Client::open(redis_url)?)
            .await
            .context("redis")?;
        let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
            .await
            .context("rabbitmq")?;
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        Ok(Self {
            redis_url: redis_url.to_owned(),
            keys: Keys::new(prefix.clone()),
            prefix,
            topology,
            redis,
            connection,
            channel,
        })
    }

    /// The environment an agent needs to work on this test's queue and keys.
    pub fn agent_env(&self) -> HashMap<String, String> {
        [
            ("REDIS_URL", self.redis_url.clone()),
            ("RABBITMQ_URL", rabbitmq_url()),
            ("AGENT_INPUT_QUEUE", self.topology.queue.clone()),
            ("REDIS_KEY_PREFIX", self.prefix.clone()),
            ("MAX_DELIVERIES", self.topology.max_deliveries.to_string()),
            ("HEALTH_PORT", "0".to_owned()),
            ("AGENT_STATUS_TIME", "0.5".to_owned()),
            ("WORKER_TTL_SECONDS", "2".to_owned()),
            ("STARTUP_TIMEOUT_SECONDS", "10".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The quota key charged for tasks created today.
    pub fn quota_key(&self) -> String {
        self.keys.quota(OWNER, Utc::now())
    }

    /// Stores a pending task the way the gateway does (charging `max_ticks` to the quota) without
    /// publishing it.
    pub async fn store_task(&self, mandate: &str, max_ticks: u32) -> Result<TaskMessage> {
        let id = Uuid::new_v4();
        let now = Utc::now();
        let quota_key = self.quota_key();
        let active_key = self.keys.user_active(OWNER);
        let record =
            TaskRecord::new_pending(OWNER, mandate, max_ticks, &quota_key, &active_key, now);
        let mut conn = self.redis.clone();
        redis::pipe()
            .incr(&quota_key, max_ticks)
            .ignore()
            .expire(&quota_key, 48 * 3600)
            .ignore()
            .hset_multiple(self.keys.task(id), &record.to_fields())
            .ignore()
            .zadd(&active_key, id.to_string(), now.timestamp_millis())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(TaskMessage {
            correlation_id: id,
            mandate: mandate.to_owned(),
            max_ticks,
            owner: OWNER.to_owned(),
            created_at: now,
        })
    }

    /// Stores and publishes a task; returns its id.
    pub async fn create_task(&self, mandate: &str, max_ticks: u32) -> Result<Uuid> {
        let message = self.store_task(mandate, max_ticks).await?;
        self.publish(&message).await?;
        Ok(message.correlation_id)
    }

    /// Publishes `message` as the gateway does.
    pub async fn publish(&self, message: &TaskMessage) -> Result<()> {
        self.topology
            .publish(
                &self.channel,
                message,
                &shared::queue::Origin {
                    request_id: Some("req-test".into()),
                    trace: None,
                },
            )
            .await?
            .await?;
        Ok(())
    }

    /// Publishes raw bytes to the task queue.
    pub async fn publish_raw(&self, body: &[u8]) -> Result<()> {
        self.channel
            .basic_publish(
                "".into(),
                self.topology.queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        Ok(())
    }

    /// The next message of the task queue, waiting for it up to 5 s.
    pub async fn next_delivery(&self) -> Result<Delivery> {
        let queue = self.topology.queue.clone();
        let channel = self.channel.clone();
        let got = poll(Duration::from_secs(5), move || {
            let queue = queue.clone();
            let channel = channel.clone();
            async move {
                Ok(channel
                    .basic_get(queue.as_str().into(), BasicGetOptions::default())
                    .await?
                    .map(|message| message.delivery))
            }
        })
        .await?;
        Ok(got)
    }

    /// Messages ready in `queue`.
    pub async fn ready(&self, queue: &str) -> Result<u32> {
        Ok(shared::queue::ready_messages(&self.channel, queue).await?)
    }

    /// Waits until `queue` holds `count` ready messages.
    pub async fn wait_ready(&self, queue: &str, count: u32) -> Result<()> {
        poll(Duration::from_secs(10), || async {
            Ok((self.ready(queue).await? == count).then_some(()))
        })
        .await
    }

    /// The task record.
    pub async fn record(&self, id: Uuid) -> Result<TaskRecord> {
        let mut conn = self.redis.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(&mut conn)
            .await?;
        Ok(TaskRecord::from_fields(&fields)?)
    }

    /// Waits until the task record satisfies `done`, returning it.
    pub async fn wait_record(
        &self,
        id: Uuid,
        within: Duration,
        done: impl Fn(&TaskRecord) -> bool,
    ) -> Result<TaskRecord> {
        poll(within, || async {
            let record = self.record(id).await?;
            Ok(done(&record).then_some(record))
        })
        .await
    }

    /// Applies `steps` to task `id` in order, as workers would have (through the shared transition).
    pub async fn advance(&self, id: Uuid, steps: &[shared::store::Transition]) -> Result<()> {
        let mut conn = self.redis.clone();
        for step in steps {
            shared::store::transition(&mut conn, &self.keys, id, step, Utc::now(), 600).await?;
        }
        Ok(())
    }

    /// Ticks charged today.
    pub async fn quota_used(&self) -> Result<i64> {
        let mut conn = self.redis.clone();
        let used: Option<i64> = redis::cmd("GET")
            .arg(self.quota_key())
            .query_async(&mut conn)
            .await?;
        Ok(used.unwrap_or(0))
    }

    /// How many times the scripted executor ran `id`.
    pub async fn runs(&self, id: Uuid) -> Result<i64> {
        let mut conn = self.redis.clone();
        let runs: Option<i64> = redis::cmd("GET")
            .arg(crate::scripted::runs_key(&self.prefix, id))
            .query_async(&mut conn)
            .await?;
        Ok(runs.unwrap_or(0))
    }

    /// A worker on this test's keys, with a lease of its own that lapses a second after its last write
    /// (so a second worker takes over a task the first one abandoned after about a second).
    pub fn worker<E: TaskExecutor>(&self, executor: E, stopping: Stopping) -> Worker<E> {
        self.worker_with(executor, stopping, Duration::from_secs(3600))
    }

    /// A worker as [`TestEnv::worker`] whose tasks may run for `max_run` at most.
    pub fn worker_with<E: TaskExecutor>(
        &self,
        executor: E,
        stopping: Stopping,
        max_run: Duration,
    ) -> Worker<E> {
        Worker::new(
            Arc::new(executor),
            self.redis.clone(),
            self.keys.clone(),
            WorkerConfig {
                concurrency: 1,
                max_deliveries: self.topology.max_deliveries,
                task_ttl_seconds: 600,
                status_interval: Duration::from_millis(200),
                retry_delay: Duration::from_millis(10),
                max_run,
                lease: shared::store::Lease {
                    worker: format!("test-worker-{}", Uuid::new_v4().simple()),
                    lifetime: Duration::from_secs(1),
                },
            },
            stopping,
        )
    }

    /// The scripted executor of the example binary, counting runs in this test's keys.
    pub async fn scripted(&self, worker_id: &str) -> Result<crate::scripted::ScriptedExecutor> {
        let redis = redis::Client::open(self.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        Ok(crate::scripted::ScriptedExecutor {
            worker_id: worker_id.to_owned(),
            redis: Some(redis),
            key_prefix: self.prefix.clone(),
        })
    }

    /// Deletes the test's queues, exchanges and keys.
    pub async fn cleanup(self) -> Result<()> {
        let channel = match self.channel.status().connected() {
            true => self.channel.clone(),
            false => {
                Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
                    .await?
                    .create_channel()
                    .await?
            }
        };
        for queue in self.topology.queues() {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in self.topology.exchanges() {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let mut conn = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// Hands a delivered message back unanswered, as the broker sees it when the worker holding it dies: it is
/// requeued, and the broker counts the delivery.
pub async fn give_back(acker: &Acker) -> Result<()> {
    acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await?;
    Ok(())
}

/// Polls `probe` every 25 ms until it yields a value or `within` has passed.
pub async fn poll<T, F, Fut>(within: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("condition not met within {within:?}; last error: {error:#}"),
                None => bail!("condition not met within {within:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An executor made of a closure, for tests that need to observe or steer a run.
pub struct FnExecutor<F>(pub F);

impl<F, Fut> TaskExecutor for FnExecutor<F>
where
    F: Fn(TaskContext, TickReporter, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TaskResult, ExecutionError>> + Send,
{
    fn execute(
        &self,
        task: TaskContext,
        ticks: TickReporter,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<TaskResult, ExecutionError>> + Send {
        (self.0)(task, ticks, cancel)
    }
}

/// A successful result of `ticks` ticks.
pub fn result(ticks: u32) -> TaskResult {
    TaskResult {
        success: true,
        deliverables: vec!["d".into()],
        summary: "s".into(),
        sources: Vec::new(),
        ticks_used: ticks,
    }
}

/// The scripted agent binary (`agent/examples/scripted_agent.rs`), run as a child process.
pub struct AgentProcess {
    pub worker_id: String,
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl AgentProcess {
    /// Starts a scripted agent named `worker_id` on `env`'s queue and keys, with `extra` settings.
    pub fn spawn(env: &TestEnv, worker_id: &str, extra: &[(&str, &str)]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let binary = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("examples").join("scripted_agent"))
            .context("cannot locate the target directory")?;
        if !binary.exists() {
            bail!(
                "{} is missing: build it with `cargo build -p agent --examples`",
                binary.display()
            );
        }
        let log = std::env::temp_dir().join(format!("agent-test-{worker_id}.log"));
        let out = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(binary);
        command
            .envs(env.agent_env())
            .env("WORKER_ID", worker_id)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        Ok(Self {
            worker_id: worker_id.to_owned(),
            child: command.spawn()?,
            log,
        })
    }

    /// Waits until the agent has registered its presence.
    pub async fn wait_registered(&self, env: &TestEnv) -> Result<()> {
        let key = env.keys.worker_status(&self.worker_id);
        poll(Duration::from_secs(15), || async {
            let mut conn = env.redis.clone();
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            Ok(exists.then_some(()))
        })
        .await
        .with_context(|| format!("agent never registered; its log:\n{}", self.logs()))
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill9(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM: the clean shutdown path.
    pub fn sigterm(&self) -> Result<()> {
        let pid = self.child.id().context("the agent already exited")?;
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the agent did not exit within {within:?}; log:\n{}",
                    self.logs()
                )
            })?
            .map_err(Into::into)
    }

    /// What the agent logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl TestEnv {
    /// The same test corner over a fresh broker connection (after a broker restart).
    pub async fn reconnect(self) -> Result<Self> {
        let connection =
            Connection::connect(&rabbitmq_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        Ok(Self {
            connection,
            channel,
            ..self
        })
    }
}

/// A private Redis server on a free port, for tests that restart Redis without disturbing others. It keeps
/// its data in an append-only file synced on every write, as a production Redis would, so a restart (even
/// after `kill -9`) finds the task records where they were.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port.
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut redis = Self {
            port,
            child: None,
            dir: tempfile::tempdir()?,
        };
        redis.restart().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL): every client connection drops.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server")?;
        self.child = Some(child);
        let url = self.url();
        poll(Duration::from_secs(10), || async {
            let client = redis::Client::open(url.as_str())?;
            Ok(client
                .get_multiplexed_async_connection()
                .await
                .ok()
                .map(|_| ()))
        })
        .await
    }
}
