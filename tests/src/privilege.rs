//! Restricted users for one test: a Redis ACL user and a RabbitMQ user for each of the gateway, the agent
//! and the metrics sidecar, with exactly the rules `docker/euglena-users.sh` gives every deployment, scoped
//! to the test's key prefix and queue. Dropping [`Accounts`] deletes the users (and so closes their
//! connections); the default Redis user and RabbitMQ's guest are never changed.
//!
//! This file is also compiled into the agent's runtime tests (`#[path]`), so it names no crate-local item.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ExchangeKind};
use std::process::Command;
use std::time::Duration;

/// The Redis the tests use, as its default (unrestricted) user.
pub const ADMIN_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The RabbitMQ management API the tests use, with guest's credentials.
pub const ADMIN_MANAGEMENT_URL: &str = "http://127.0.0.1:15672";
const ADMIN_USER: &str = "guest";
const ADMIN_PASSWORD: &str = "guest";

/// The components that get a user of their own.
pub const COMPONENTS: [&str; 3] = ["gateway", "agent", "metrics-sidecar"];

/// `docker/euglena-users.sh`, the rules every deployment uses.
pub fn users_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/euglena-users.sh")
}

/// What `docker/euglena-users.sh ARGS` prints for `prefix` and `queue`, one entry per line.
///
/// # Panics
/// When the script fails (a broken script must fail the test that relies on it).
pub fn script_lines(args: &[&str], prefix: &str, queue: &str) -> Vec<String> {
    let output = Command::new("sh")
        .arg(users_script())
        .args(args)
        .env("REDIS_KEY_PREFIX", prefix)
        .env("AGENT_INPUT_QUEUE", queue)
        .output()
        .expect("sh runs");
    assert!(
        output.status.success(),
        "docker/euglena-users.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("the script prints text")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// One component's credentials.
#[derive(Debug, Clone)]
pub struct Account {
    /// `gateway`, `agent` or `metrics-sidecar`.
    pub component: &'static str,
    /// The user name (the same in Redis and RabbitMQ).
    pub user: String,
    /// The password (the same in Redis and RabbitMQ).
    pub password: String,
    /// `REDIS_URL` with these credentials.
    pub redis_url: String,
    /// `RABBITMQ_URL` with these credentials.
    pub rabbitmq_url: String,
}

/// The three restricted users of one test.
#[derive(Debug)]
pub struct Accounts {
    /// The gateway's.
    pub gateway: Account,
    /// The agent's.
    pub agent: Account,
    /// The metrics sidecar's.
    pub sidecar: Account,
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Accounts {
    /// Creates the users for key prefix `prefix` and queue `queue` (the queue's topology is declared by
    /// the caller, as a deployment's set-up does).
    ///
    /// # Errors
    /// When Redis or the management API refuses (the users made so far are deleted on drop).
    pub async fn create(prefix: &str, queue: &str) -> anyhow::Result<Self> {
        let tag = &random_hex()[..12];
        let account = |component: &'static str| {
            let user = format!("t-{tag}-{component}");
            let password = random_hex();
            Account {
                component,
                redis_url: format!("redis://{user}:{password}@127.0.0.1:6379/0"),
                rabbitmq_url: format!("amqp://{user}:{password}@127.0.0.1:5672/%2f"),
                user,
                password,
            }
        };
        let accounts = Self {
            gateway: account("gateway"),
            agent: account("agent"),
            sidecar: account("metrics-sidecar"),
        };
        let mut redis = redis::Client::open(ADMIN_REDIS_URL)?
            .get_multiplexed_async_connection()
            .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        for account in accounts.all() {
            let rules = script_lines(&["redis-rules", account.component], prefix, queue);
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&account.user)
                .arg("reset")
                .arg("on")
                .arg(format!(">{}", account.password))
                .arg(&rules)
                .query_async::<()>(&mut redis)
                .await?;
            let permissions =
                script_lines(&["rabbitmq-permissions", account.component], prefix, queue);
            let [configure, write, read, tags] = permissions.as_slice() else {
                anyhow::bail!("rabbitmq-permissions printed {permissions:?}");
            };
            http.put(format!("{ADMIN_MANAGEMENT_URL}/api/users/{}", account.user))
                .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
                .json(&serde_json::json!({"password": account.password, "tags": tags}))
                .send()
                .await?
                .error_for_status()?;
            http.put(format!(
                "{ADMIN_MANAGEMENT_URL}/api/permissions/%2f/{}",
                account.user
            ))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .json(&serde_json::json!({"configure": configure, "write": write, "read": read}))
            .send()
            .await?
            .error_for_status()?;
        }
        Ok(accounts)
    }

    /// The three accounts.
    pub fn all(&self) -> [&Account; 3] {
        [&self.gateway, &self.agent, &self.sidecar]
    }

    /// What Redis refused these users so far, from its ACL log (`reason object (user)` each): a
    /// component that works under its rules leaves nothing there, not even a refusal its code shrugs off.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn redis_denials(&self) -> anyhow::Result<Vec<String>> {
        let users: Vec<&str> = self.all().iter().map(|a| a.user.as_str()).collect();
        let mut redis = redis::Client::open(ADMIN_REDIS_URL)?
            .get_multiplexed_async_connection()
            .await?;
        let entries: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("ACL")
            .arg("LOG")
            .arg(128)
            .query_async(&mut redis)
            .await?;
        let text = |entry: &std::collections::HashMap<String, redis::Value>, name: &str| {
            entry
                .get(name)
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .unwrap_or_default()
        };
        Ok(entries
            .iter()
            .filter(|entry| users.contains(&text(entry, "username").as_str()))
            .map(|entry| {
                format!(
                    "{} {} ({})",
                    text(entry, "reason"),
                    text(entry, "object"),
                    text(entry, "username")
                )
            })
            .collect())
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        delete_users(self.all().iter().map(|a| a.user.clone()).collect());
    }
}

/// Deletes `users` from Redis and RabbitMQ, best effort, blocking: a runtime of its own on a thread of its
/// own, since it runs from `Drop`, maybe inside the test's runtime.
fn delete_users(users: Vec<String>) {
    let _ = std::thread::spawn(move || {
        if let Ok(client) = redis::Client::open(ADMIN_REDIS_URL)
            && let Ok(mut redis) = client.get_connection_with_timeout(Duration::from_secs(5))
        {
            let _: Result<(), _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&users)
                .query(&mut redis);
        }
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let Ok(http) = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
            else {
                return;
            };
            for user in users {
                let _ = http
                    .delete(format!("{ADMIN_MANAGEMENT_URL}/api/users/{user}"))
                    .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
                    .send()
                    .await;
            }
        });
    })
    .join();
}

/// The definitions file `docker/euglena-users.sh rabbitmq-definitions` writes for a broker's set-up (compose,
/// the ECS `containers` layout, an Amazon MQ import), for `queue`, with the users renamed `{tag}-admin`,
/// `{tag}-gateway`, ... so that tests running side by side do not share them. Each password is its user's
/// name. Dropping it deletes the users it imported.
#[derive(Debug)]
pub struct Definitions {
    /// The users' prefix.
    pub tag: String,
    /// The file's text.
    pub json: String,
}

impl Definitions {
    /// Renders the file.
    ///
    /// # Panics
    /// When the script fails.
    pub fn render(queue: &str) -> Self {
        let tag = format!("t-{}", &random_hex()[..12]);
        let name = |component: &str| format!("{tag}-{component}");
        let output = Command::new("sh")
            .arg(users_script())
            .arg("rabbitmq-definitions")
            .env("AGENT_INPUT_QUEUE", queue)
            .env("MAX_DELIVERIES", "3")
            .env("RABBITMQ_DEFAULT_USER", name("admin"))
            .env("RABBITMQ_DEFAULT_PASS", name("admin"))
            .env("GATEWAY_RABBITMQ_PASSWORD", name("gateway"))
            .env("AGENT_RABBITMQ_PASSWORD", name("agent"))
            .env("SIDECAR_RABBITMQ_PASSWORD", name("metrics-sidecar"))
            .output()
            .expect("sh runs");
        assert!(
            output.status.success(),
            "rabbitmq-definitions failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json = String::from_utf8(output.stdout)
            .expect("the script prints text")
            .replace("\"euglena-", &format!("\"{tag}-"));
        Self { tag, json }
    }

    /// `RABBITMQ_URL` of `component`'s user.
    pub fn amqp_url(&self, component: &str) -> String {
        let user = format!("{}-{component}", self.tag);
        format!("amqp://{user}:{user}@127.0.0.1:5672/%2f")
    }

    /// Imports the file through the management API, as an administrator would.
    ///
    /// # Errors
    /// When the API refuses it.
    pub async fn import(&self) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!("{ADMIN_MANAGEMENT_URL}/api/definitions"))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .header("content-type", "application/json")
            .body(self.json.clone())
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Drop for Definitions {
    fn drop(&mut self) {
        delete_users(
            ["admin", "gateway", "agent", "metrics-sidecar"]
                .iter()
                .map(|c| format!("{}-{c}", self.tag))
                .collect(),
        );
    }
}

/// Whether RabbitMQ still knows `user` (for tests of the clean-up itself).
///
/// # Errors
/// When the management API cannot be reached.
pub async fn rabbitmq_user_exists(user: &str) -> anyhow::Result<bool> {
    let status = reqwest::Client::new()
        .get(format!("{ADMIN_MANAGEMENT_URL}/api/users/{user}"))
        .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
        .send()
        .await?
        .status();
    Ok(status.is_success())
}

/// Whether the broker refused `error`'s operation for want of permission (`ACCESS_REFUSED`, 403), which
/// closes the channel.
pub fn is_access_refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 403)
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Confirmed and routed to a queue.
    Routed,
    /// Confirmed, but no queue is bound for its routing key: returned (it was `mandatory`).
    Unroutable,
    /// `ACCESS_REFUSED`: the user may not write to the exchange.
    Refused,
}

/// Publishes a small message, `mandatory`, to `exchange` (`""` is the default exchange) with
/// `routing_key`, on a fresh channel of `amqp` in confirm mode, and says what the broker did with it.
///
/// # Errors
/// Any other broker error.
pub async fn publish_as(
    amqp: &Connection,
    exchange: &str,
    routing_key: &str,
) -> anyhow::Result<Published> {
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let sent = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"{\"probe\": true}",
                BasicProperties::default(),
            )
            .await?
            .await
    }
    .await;
    let published = match sent {
        Ok(Confirmation::Ack(None)) => Published::Routed,
        Ok(Confirmation::Ack(Some(_))) => Published::Unroutable,
        Err(error) if is_access_refused(&error) => return Ok(Published::Refused),
        Ok(other) => anyhow::bail!("publishing to '{exchange}': {other:?}"),
        Err(error) => return Err(error.into()),
    };
    let _ = channel.close(200, "published".into()).await;
    Ok(published)
}

/// Runs `attempt` (made on a channel of its own); `Ok(true)` when the broker refused it with
/// `ACCESS_REFUSED`, `Ok(false)` when it allowed it.
async fn refused<T>(
    attempt: impl std::future::Future<Output = lapin::Result<T>>,
) -> anyhow::Result<bool> {
    match attempt.await {
        Ok(_) => Ok(false),
        Err(error) if is_access_refused(&error) => Ok(true),
        Err(error) => Err(error.into()),
    }
}

/// Tries, as `amqp`'s user, everything `configure` (or `write` on a queue) would allow on a deployment's
/// topology: deleting each of its queues and exchanges, re-declaring its task queue (`queues[2]`, with
/// whatever arguments), declaring a new queue and a new exchange, unbinding the task queue from its
/// exchange (`exchanges[0]`) and binding a queue to another exchange. Returns what the broker allowed:
/// nothing, for a component's user.
///
/// # Errors
/// When the broker fails otherwise than by refusing.
pub async fn configuration_allowed(
    amqp: &Connection,
    queues: &[String; 3],
    exchanges: &[String; 3],
) -> anyhow::Result<Vec<String>> {
    let mut allowed = Vec::new();
    for queue in queues {
        let channel = amqp.create_channel().await?;
        if !refused(channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()))
            .await?
        {
            allowed.push(format!("queue.delete {queue}"));
        }
    }
    for exchange in exchanges {
        let channel = amqp.create_channel().await?;
        let delete =
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default());
        if !refused(delete).await? {
            allowed.push(format!("exchange.delete {exchange}"));
        }
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let task_queue = &queues[2];
    let elsewhere = format!("{task_queue}.elsewhere");
    for queue in [task_queue, &elsewhere] {
        let channel = amqp.create_channel().await?;
        let declare = channel.queue_declare(queue.as_str().into(), durable, FieldTable::default());
        if !refused(declare).await? {
            allowed.push(format!("queue.declare {queue}"));
        }
    }
    let channel = amqp.create_channel().await?;
    let declare = channel.exchange_declare(
        elsewhere.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    );
    if !refused(declare).await? {
        allowed.push(format!("exchange.declare {elsewhere}"));
    }
    let channel = amqp.create_channel().await?;
    let unbind = channel.queue_unbind(
        task_queue.as_str().into(),
        exchanges[0].as_str().into(),
        task_queue.as_str().into(),
        FieldTable::default(),
    );
    if !refused(unbind).await? {
        allowed.push(format!("queue.unbind {task_queue} from {}", exchanges[0]));
    }
    for queue in queues {
        let channel = amqp.create_channel().await?;
        let bind = channel.queue_bind(
            queue.as_str().into(),
            "amq.direct".into(),
            "anything".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        if !refused(bind).await? {
            allowed.push(format!("queue.bind {queue} to amq.direct"));
        }
    }
    Ok(allowed)
}

/// Whether `amqp`'s user may purge `queue` (RabbitMQ ties purging to `read`).
///
/// # Errors
/// When the broker fails otherwise than by refusing.
pub async fn may_purge(amqp: &Connection, queue: &str) -> anyhow::Result<bool> {
    let channel = amqp.create_channel().await?;
    Ok(!refused(channel.queue_purge(queue.into(), QueuePurgeOptions::default())).await?)
}
