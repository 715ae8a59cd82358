//! The agent under least privilege: with the Redis and RabbitMQ users `docker/euglena-users.sh` gives it,
//! a whole agent runs tasks to the end (ticks, checkpoints, events, refunds, cancellation, presence) and the
//! sweeper fails and parks dead letters, while the gateway's keys, other queues and exchanges, configuring
//! the topology and other deployments' keys are refused, and an agent whose topology is missing stops at
//! start-up. And a message names only its task: what runs, for whom and on what budget come from the task
//! record the gateway wrote, whoever published the message.

#[path = "../../../tests/src/privilege.rs"]
#[allow(dead_code)]
mod accounts;

use crate::helpers::{OWNER, TestEnv, give_back, poll};
use accounts::{Accounts, Published, configuration_allowed, is_access_refused, publish_as};
use agent::sweeper::Sweeper;
use agent::worker::{Handled, Stopping, Worker, WorkerConfig};
use agent::{AgentSettings, Application, ExecutionError, Progress, TaskContext, TickReporter};
use anyhow::{Context, Result};
use lapin::options::{BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use redis::aio::ConnectionManager;
use shared::Status;
use shared::api::TickEvent;
use shared::settings::Reader;
use shared::store::Transition;
use shared::task::{TaskMessage, TaskResult, field};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Runs `ticks=N` mandates: records each tick with a checkpoint, then completes; remembers every
/// context it was given. A mandate `wait` runs ticks until cancelled.
#[derive(Clone, Default)]
struct Recording {
    seen: Arc<Mutex<Vec<TaskContext>>>,
}

impl agent::TaskExecutor for Recording {
    async fn execute(
        &self,
        task: TaskContext,
        ticks: TickReporter,
        cancel: CancellationToken,
    ) -> Result<TaskResult, ExecutionError> {
        self.seen.lock().unwrap().push(task.clone());
        let wait = task.message.mandate.contains("wait");
        let planned = task
            .message
            .mandate
            .split_whitespace()
            .find_map(|word| word.strip_prefix("ticks=")?.parse().ok())
            .unwrap_or(1_u32)
            .min(task.message.max_ticks);
        let mut tick = 0;
        while wait || tick < planned {
            tick += 1;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = cancel.cancelled() => return Err(ExecutionError::Retryable("stopped".into())),
            }
            ticks.record(Progress {
                event: TickEvent {
                    tick,
                    action: "THINK".into(),
                    ..TickEvent::default()
                },
                deliverables: vec![format!("tick {tick}")],
                state: Some(serde_json::json!({"tick": tick})),
                ..Progress::default()
            });
        }
        Ok(TaskResult {
            success: true,
            deliverables: vec![task.message.mandate.clone()],
            summary: format!("ran for {}", task.message.owner),
            sources: Vec::new(),
            ticks_used: tick,
        })
    }
}

async fn connect(url: &str) -> Result<ConnectionManager> {
    Ok(ConnectionManager::new(redis::Client::open(url)?).await?)
}

fn is_noperm(error: &redis::RedisError) -> bool {
    error.code() == Some("NOPERM")
}

/// Runs `command` and says whether Redis refused it for lack of permission (any other failure fails the
/// test: a refusal must come from the ACL, not from a typo).
async fn refused(conn: &mut ConnectionManager, command: &redis::Cmd) -> bool {
    match command.query_async::<redis::Value>(conn).await {
        Ok(_) => false,
        Err(error) if is_noperm(&error) => true,
        Err(error) => panic!("{command:?} failed otherwise than NOPERM: {error}"),
    }
}

fn cmd(name: &str, args: &[&str]) -> redis::Cmd {
    let mut command = redis::cmd(name);
    for arg in args {
        command.arg(*arg);
    }
    command
}

#[tokio::test]
async fn privilege_an_agent_with_its_own_users_runs_cancels_and_refunds_tasks() -> Result<()> {
    let env = TestEnv::new(3).await?;
    let accounts = Accounts::create(&env.prefix, &env.topology.queue).await?;
    let mut vars = env.agent_env();
    vars.insert("REDIS_URL".into(), accounts.agent.redis_url.clone());
    vars.insert("RABBITMQ_URL".into(), accounts.agent.rabbitmq_url.clone());
    vars.insert("WORKER_ID".into(), format!("least-{}", &env.prefix[5..13]));
    let settings = AgentSettings::from_source(&Reader::new(vars))?;
    let executor = Recording::default();
    let app = Application::build(settings, executor.clone()).await?;
    let health_url = format!("http://127.0.0.1:{}/health", app.health_port());
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));

    // Presence, written with the agent's user, read by the sidecar's user as the sidecar reads it.
    let sidecar = connect(&accounts.sidecar.redis_url).await?;
    let fleet = poll(Duration::from_secs(10), || async {
        let fleet = shared::presence::read_fleet(
            &mut sidecar.clone(),
            &env.keys,
            chrono::Utc::now().timestamp_millis(),
            Duration::from_secs(2),
        )
        .await?;
        Ok((fleet.agents == 1).then_some(fleet))
    })
    .await?;
    assert_eq!(fleet.tasks, 0);
    let health: serde_json::Value = reqwest::get(&health_url).await?.json().await?;
    assert_eq!(health["status"], "ok", "{health}");

    // A task runs to the end: ticks with checkpoints and events, the refund, the active set left.
    let id = env.create_task("ticks=3", 10).await?;
    let record = env
        .wait_record(id, Duration::from_secs(15), |r| r.status.is_terminal())
        .await?;
    assert_eq!(record.status, Status::Completed, "{record:?}");
    assert_eq!(record.tick, 3);
    assert_eq!(env.quota_used().await?, 3, "seven of ten ticks refunded");
    let mut admin = env.redis.clone();
    let active: Vec<String> = cmd("ZRANGE", &[&env.keys.user_active(OWNER), "0", "-1"])
        .query_async(&mut admin)
        .await?;
    assert!(active.is_empty(), "{active:?}");
    let kinds: Vec<(String, std::collections::HashMap<String, String>)> =
        cmd("XRANGE", &[&env.keys.task_events(id), "-", "+"])
            .query_async(&mut admin)
            .await?;
    let kinds: Vec<&str> = kinds
        .iter()
        .filter_map(|(_, fields)| fields.get("type").map(String::as_str))
        .collect();
    assert_eq!(kinds, ["accepted", "tick", "tick", "tick", "completed"]);

    // Cancelled while it runs: the agent's poll reads the flag, it stores `cancelled` and refunds.
    let long = env.create_task("wait", 20).await?;
    env.wait_record(long, Duration::from_secs(10), |r| r.tick >= 1)
        .await?;
    cmd(
        "HSET",
        &[&env.keys.task(long), field::CANCEL_REQUESTED, "1"],
    )
    .query_async::<()>(&mut admin)
    .await?;
    let cancelled = env
        .wait_record(long, Duration::from_secs(10), |r| r.status.is_terminal())
        .await?;
    assert_eq!(cancelled.status, Status::Cancelled, "{cancelled:?}");
    assert_eq!(
        env.quota_used().await?,
        3 + i64::from(cancelled.tick),
        "only the ticks run stay charged"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running).await???;
    let members: Vec<String> = cmd("ZRANGE", &[&env.keys.workers_status(), "0", "-1"])
        .query_async(&mut admin)
        .await?;
    assert!(members.is_empty(), "deregistered: {members:?}");
    assert_eq!(accounts.redis_denials().await?, Vec::<String>::new());
    drop(accounts);
    env.cleanup().await
}

#[tokio::test]
async fn privilege_the_sweeper_fails_and_parks_dead_letters_with_the_agents_users() -> Result<()> {
    let env = TestEnv::new(1).await?;
    let accounts = Accounts::create(&env.prefix, &env.topology.queue).await?;
    let id = env.create_task("every worker dies", 10).await?;
    env.advance(
        id,
        &[
            Transition::to(Status::Accepted).counting_attempt(),
            Transition::to(Status::InProgress).with(field::TICK, "2"),
        ],
    )
    .await?;
    // Every delivery given back: the broker dead-letters the message.
    let dlq = env.topology.dead_letter_queue();
    poll(Duration::from_secs(20), || async {
        if let Some(message) = env
            .channel
            .basic_get(
                env.topology.queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await?
        {
            give_back(&message.delivery).await?;
        }
        Ok((env.ready(&dlq).await? == 1).then_some(()))
    })
    .await?;
    let redis = connect(&accounts.agent.redis_url).await?;
    // The sweep lock, as each agent takes it.
    let taken: Option<String> = cmd(
        "SET",
        &[&env.keys.dlq_sweeper_lock(), "me", "NX", "PX", "1000"],
    )
    .query_async(&mut redis.clone())
    .await?;
    assert!(taken.is_some());
    let sweeper = Sweeper {
        redis,
        keys: env.keys.clone(),
        rabbitmq_url: accounts.agent.rabbitmq_url.clone().into(),
        tls: shared::tls::Tls::default(),
        dead_letter_queue: dlq.clone(),
        worker_ttl: Duration::ZERO,
        task_ttl_seconds: 600,
        worker_id: "least-privilege-sweeper".into(),
    };

    let report = sweeper.sweep_now().await?;

    assert_eq!(report.failed, vec![id], "{report:?}");
    assert_eq!(report.parked, 1, "{report:?}");
    assert_eq!(env.record(id).await?.status, Status::Failed);
    assert_eq!(env.quota_used().await?, 2, "eight of ten ticks refunded");
    assert_eq!(env.ready(&dlq).await?, 0);
    assert_eq!(env.ready(&env.topology.parked_queue()).await?, 1);
    assert_eq!(accounts.redis_denials().await?, Vec::<String>::new());
    drop(accounts);
    env.cleanup().await
}

#[tokio::test]
async fn privilege_the_agents_users_are_refused_the_gateways_keys_and_other_queues() -> Result<()> {
    let env = TestEnv::new(3).await?;
    let accounts = Accounts::create(&env.prefix, &env.topology.queue).await?;
    let message = env.store_task("anything", 5).await?;
    let id = message.correlation_id.to_string();
    let mut agent = connect(&accounts.agent.redis_url).await?;
    let keys = &env.keys;

    // What it needs answers.
    for allowed in [
        cmd("HGET", &[&keys.task(message.correlation_id), "status"]),
        cmd("EXISTS", &[&keys.task_deleted(message.correlation_id)]),
        cmd("XRANGE", &[&keys.memory_purges(), "-", "+"]),
        cmd("GET", &[&keys.quota(OWNER, chrono::Utc::now())]),
        cmd("PING", &[]),
    ] {
        allowed.query_async::<redis::Value>(&mut agent).await?;
    }
    // The gateway's own keys: idempotency entries, the owners' task indexes, abandon marks; the tombstones
    // and purge requests are read-only; no other prefix; no subscribing, listing or flushing.
    let other_prefix = format!("{}other:task:{id}", env.prefix);
    let forbidden = [
        cmd("HGETALL", &[&keys.idempotency(OWNER, "k-1")]),
        cmd("HSET", &[&keys.idempotency(OWNER, "k-1"), "task", &id]),
        cmd("ZRANGE", &[&keys.user_tasks(OWNER), "0", "-1"]),
        cmd("SET", &[&keys.task_abandoned(message.correlation_id), "1"]),
        cmd("EXISTS", &[&keys.task_abandoned(message.correlation_id)]),
        cmd("SET", &[&keys.task_deleted(message.correlation_id), "1"]),
        cmd(
            "XADD",
            &[&keys.memory_purges(), "*", "owner", OWNER, "task", &id],
        ),
        cmd("HGET", &[&format!("another:task:{id}"), "status"]),
        cmd("HGET", &[&other_prefix, "status"]),
        cmd("SUBSCRIBE", &[&keys.events_channel()]),
        cmd("KEYS", &["*"]),
        cmd("FLUSHDB", &[]),
        cmd("CONFIG", &["GET", "*"]),
    ];
    for command in &forbidden {
        assert!(
            refused(&mut agent, command).await,
            "{command:?} was allowed"
        );
    }
    let denials = accounts.redis_denials().await?;
    assert!(
        denials
            .iter()
            .any(|d| d.starts_with("key ") && d.contains(&keys.idempotency(OWNER, "k-1"))),
        "{denials:?}"
    );
    // Nor through a script: the transition on another deployment's task is refused before it runs.
    let elsewhere = shared::Keys::new("another:");
    let error = shared::store::transition(
        &mut agent,
        &elsewhere,
        message.correlation_id,
        &Transition::to(Status::Accepted),
        chrono::Utc::now(),
        600,
    )
    .await
    .expect_err("another prefix's task");
    assert!(
        matches!(&error, shared::store::StoreError::Redis(e) if is_noperm(e)),
        "{error}"
    );

    // RabbitMQ: the agents publish only through the parking exchange, which reaches the parking queue
    // alone: not through the default exchange (which reaches every queue), the gateway's exchange, the
    // dead-letter exchange or any other. They configure nothing: no deleting, re-declaring, declaring or
    // rebinding queues and exchanges. Nor may they read the parking queue (that is for operators).
    let amqp = Connection::connect(
        &accounts.agent.rabbitmq_url,
        ConnectionProperties::default(),
    )
    .await?;
    let topology = &env.topology;
    let (queue, dlq, parked) = (
        topology.queue.as_str(),
        topology.dead_letter_queue(),
        topology.parked_queue(),
    );
    for (exchange, routing_key, expected) in [
        ("", queue, Published::Refused),
        ("", dlq.as_str(), Published::Refused),
        ("", parked.as_str(), Published::Refused),
        (&topology.input_exchange(), queue, Published::Refused),
        (
            &topology.dead_letter_exchange(),
            dlq.as_str(),
            Published::Refused,
        ),
        ("amq.direct", queue, Published::Refused),
        ("amq.topic", "anything", Published::Refused),
        (&topology.parking_exchange(), queue, Published::Unroutable),
        (
            &topology.parking_exchange(),
            dlq.as_str(),
            Published::Unroutable,
        ),
        (
            &topology.parking_exchange(),
            parked.as_str(),
            Published::Routed,
        ),
    ] {
        assert_eq!(
            publish_as(&amqp, exchange, routing_key).await?,
            expected,
            "publishing to '{exchange}' with routing key '{routing_key}'"
        );
    }
    assert_eq!(env.ready(queue).await?, 0, "nothing reached the task queue");
    assert_eq!(env.ready(&dlq).await?, 0, "nothing reached the DLQ");
    let allowed = configuration_allowed(&amqp, &topology.queues(), &topology.exchanges()).await?;
    assert_eq!(allowed, Vec::<String>::new());
    let get = amqp
        .create_channel()
        .await?
        .basic_get(parked.as_str().into(), BasicGetOptions::default())
        .await
        .expect_err("reading the parking queue");
    assert!(is_access_refused(&get), "{get}");
    // The topology is whole after all that.
    assert_eq!(
        topology.ensure(&env.connection).await?,
        shared::queue::Ensured::Present
    );
    let _ = amqp.close(200, "done".into()).await;
    drop(accounts);
    env.cleanup().await
}

#[tokio::test]
async fn privilege_an_agent_whose_user_may_not_create_a_missing_topology_stops_at_start_up()
-> Result<()> {
    let env = TestEnv::new(3).await?;
    // A deployment whose set-up never created this queue's topology.
    let absent = shared::queue::Topology::new(format!("{}.absent", env.topology.queue), 3);
    let accounts = Accounts::create(&env.prefix, &absent.queue).await?;
    let mut vars = env.agent_env();
    vars.insert("REDIS_URL".into(), accounts.agent.redis_url.clone());
    vars.insert("RABBITMQ_URL".into(), accounts.agent.rabbitmq_url.clone());
    vars.insert("AGENT_INPUT_QUEUE".into(), absent.queue.clone());
    vars.insert("WORKER_ID".into(), format!("absent-{}", &env.prefix[5..13]));
    let settings = AgentSettings::from_source(&Reader::new(vars))?;

    let error = Application::build(settings, Recording::default())
        .await
        .err()
        .context("an agent started without its topology")?
        .to_string();

    assert!(
        error.contains(&format!(
            "exchange '{}' does not exist",
            absent.input_exchange()
        )) && error.contains("may not create it")
            && error.contains("ACCESS_REFUSED"),
        "{error}"
    );
    // It created nothing.
    for queue in absent.queues() {
        let checked = env
            .connection
            .create_channel()
            .await?
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(checked.is_err(), "{queue} exists");
    }
    drop(accounts);
    env.cleanup().await
}

/// A worker of this test's keys on `redis_url`, running `executor`.
fn worker(env: &TestEnv, redis: ConnectionManager, executor: Recording) -> Worker<Recording> {
    Worker::new(
        Arc::new(executor),
        redis,
        env.keys.clone(),
        WorkerConfig {
            concurrency: 1,
            max_deliveries: env.topology.max_deliveries,
            task_ttl_seconds: 600,
            status_interval: Duration::from_millis(200),
            retry_delay: Duration::from_millis(10),
            max_run: Duration::from_secs(3600),
            lease: shared::store::Lease {
                worker: format!("least-{}", Uuid::new_v4().simple()),
                lifetime: Duration::from_secs(1),
            },
        },
        Stopping::default(),
    )
}

#[tokio::test]
async fn privilege_a_forged_message_runs_the_records_mandate_and_refunds_the_records_owner()
-> Result<()> {
    let env = TestEnv::new(3).await?;
    let accounts = Accounts::create(&env.prefix, &env.topology.queue).await?;
    let stored = env.store_task("ticks=2 as the owner asked", 10).await?;
    // Only the gateway's user may publish into the task queue (through its exchange); should it be
    // misused, a message names the stored task but another owner, another mandate and a larger budget.
    let forged = TaskMessage {
        correlation_id: stored.correlation_id,
        mandate: "ticks=40 something else entirely".into(),
        max_ticks: 100,
        owner: "mallory".into(),
        created_at: chrono::Utc::now(),
    };
    let amqp = Connection::connect(
        &accounts.gateway.rabbitmq_url,
        ConnectionProperties::default(),
    )
    .await?;
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    env.topology
        .publish(&channel, &forged, &shared::queue::Origin::default())
        .await?
        .await?;
    let _ = amqp.close(200, "published".into()).await;
    let executor = Recording::default();
    let worker = worker(
        &env,
        connect(&accounts.agent.redis_url).await?,
        executor.clone(),
    );

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    let seen = executor.seen.lock().unwrap().clone();
    let [task] = seen.as_slice() else {
        panic!("ran {} times", seen.len());
    };
    assert_eq!(task.message.owner, OWNER);
    assert_eq!(task.message.mandate, stored.mandate);
    assert_eq!(task.message.max_ticks, 10);
    let record = env.record(stored.correlation_id).await?;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.tick, 2, "the record's mandate ran (two ticks)");
    assert_eq!(record.owner, OWNER);
    assert_eq!(
        env.quota_used().await?,
        2,
        "the owner's day is refunded the eight unused of its ten ticks"
    );
    let mallory: Option<i64> = cmd("GET", &[&env.keys.quota("mallory", chrono::Utc::now())])
        .query_async(&mut env.redis.clone())
        .await?;
    assert_eq!(
        mallory, None,
        "nothing is charged or refunded to the forged owner"
    );
    assert_eq!(accounts.redis_denials().await?, Vec::<String>::new());
    drop(accounts);
    env.cleanup().await
}

#[tokio::test]
async fn privilege_a_message_whose_record_lacks_its_mandate_is_dead_lettered_unrun() -> Result<()> {
    let env = TestEnv::new(3).await?;
    let message = env.store_task("ticks=1", 5).await?;
    cmd(
        "HDEL",
        &[&env.keys.task(message.correlation_id), field::MANDATE],
    )
    .query_async::<()>(&mut env.redis.clone())
    .await?;
    env.publish(&message).await?;
    let executor = Recording::default();
    let worker = worker(&env, env.redis.clone(), executor.clone());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(
        handled,
        Handled::Rejected("the task record has no mandate".into())
    );
    assert!(executor.seen.lock().unwrap().is_empty());
    let record: std::collections::HashMap<String, String> =
        cmd("HGETALL", &[&env.keys.task(message.correlation_id)])
            .query_async(&mut env.redis.clone())
            .await?;
    assert_eq!(
        record.get(field::STATUS).map(String::as_str),
        Some("pending")
    );
    env.wait_ready(&env.topology.dead_letter_queue(), 1)
        .await
        .context("dead-lettered")?;
    env.cleanup().await
}
