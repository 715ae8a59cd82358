//! The gateway under least privilege: with the Redis and RabbitMQ users `docker/euglena-users.sh` gives
//! it, every endpoint works (create with an idempotency key, read, list, follow while an agent user moves
//! the task, cancel, delete, the fleet's figures), nothing it sends is refused, and what it does not need
//! (consuming tasks, publishing anywhere but through its exchange, configuring or creating the topology,
//! writing agents' presence, the sweep lock, other prefixes) is refused. The metrics sidecar's user reads
//! the queue depths and the agents' presence, and nothing more.

use crate::helpers::{
    TestApp, agent_accepts, agent_completes, agent_tick, eventually, spawn_app_with,
};
use euglena_tests::privilege::{
    ADMIN_MANAGEMENT_URL, Accounts, Definitions, Published, configuration_allowed,
    is_access_refused, may_purge, publish_as,
};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use reqwest::Method;
use serde_json::{Value, json};
use shared::Keys;
use shared::queue::{Topology, TopologyError};
use std::time::Duration;
use uuid::Uuid;

/// A gateway on its own restricted users, over a topology declared beforehand by the broker's
/// administrator (as every deployment's set-up does), and the users.
async fn restricted_gateway() -> (TestApp, Accounts) {
    let id = Uuid::new_v4().simple().to_string();
    let prefix = format!("test:{id}:");
    let queue = format!("test.gateway.{id}");
    let admin = Connection::connect(
        crate::helpers::RABBITMQ_URL,
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    Topology::new(queue.clone(), 3)
        .declare(&admin.create_channel().await.unwrap())
        .await
        .unwrap();
    let _ = admin.close(200, "declared".into()).await;
    let accounts = Accounts::create(&prefix, &queue).await.unwrap();
    let mut app = spawn_app_with(&[
        ("REDIS_KEY_PREFIX", &prefix),
        ("AGENT_INPUT_QUEUE", &queue),
        ("REDIS_URL", &accounts.gateway.redis_url),
        ("RABBITMQ_URL", &accounts.gateway.rabbitmq_url),
    ])
    .await;
    app.keys = Keys::new(prefix);
    (app, accounts)
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Applies `change` as the agent's user would.
async fn as_agent_user(
    app: &TestApp,
    accounts: &Accounts,
    id: &str,
    change: &shared::store::Transition,
) {
    let mut agent = redis::Client::open(accounts.agent.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let outcome = shared::store::transition(
        &mut agent,
        &app.keys,
        id.parse().unwrap(),
        change,
        chrono::Utc::now(),
        600,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, shared::store::Outcome::Applied { .. }),
        "{outcome:?}"
    );
}

fn noperm(result: redis::RedisResult<redis::Value>) -> bool {
    matches!(result, Err(error) if error.code() == Some("NOPERM"))
}

#[tokio::test]
async fn privilege_a_gateway_with_its_own_users_serves_every_endpoint() {
    let (app, accounts) = restricted_gateway().await;
    let token = app.token("alice");

    // Created with an Idempotency-Key, queued, and replayed.
    let body = json!({"mandate": "least privilege", "max_ticks": 6});
    let create = || {
        app.client
            .post(format!("{}/tasks", app.address))
            .bearer_auth(&token)
            .header("Idempotency-Key", "k-1")
            .json(&body)
            .send()
    };
    let (status, created) = json_of(create().await.unwrap()).await;
    assert_eq!(status, 202, "{created}");
    let id = created["correlation_id"].as_str().unwrap().to_owned();
    assert!(app.next_message().await.is_some(), "the message was queued");
    let replay = create().await.unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(app.quota_used("alice").await, 6, "charged once");

    // Followed while the agent's user moves it to the end; the refund goes to the owner's day.
    let (status, stream) = app.events("alice", &id, None).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    as_agent_user(&app, &accounts, &id, &agent_accepts()).await;
    as_agent_user(&app, &accounts, &id, &agent_tick(1, "THINK")).await;
    as_agent_user(&app, &accounts, &id, &agent_completes(2)).await;
    let frames = stream.until("completed", Duration::from_secs(10)).await;
    let kinds: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert!(
        kinds.ends_with(&["accepted", "tick", "completed"]),
        "{kinds:?}"
    );
    assert_eq!(
        app.quota_used("alice").await,
        2,
        "four of six ticks refunded"
    );
    let (status, task) = json_of(app.get_task(&token, &id).await).await;
    assert_eq!((status, &task["status"]), (200, &json!("completed")));

    // A queued task cancelled at once, one running asked to stop, both listed.
    let queued = app.create("alice", 3).await;
    let (status, cancelled) = json_of(
        app.call(
            Method::POST,
            "alice",
            &format!("/tasks/{queued}/cancel"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")));
    let running = app.create("alice", 3).await;
    as_agent_user(&app, &accounts, &running, &agent_accepts()).await;
    let (status, cancelling) = json_of(
        app.call(
            Method::POST,
            "alice",
            &format!("/tasks/{running}/cancel"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((status, &cancelling["status"]), (202, &json!("cancelling")));
    let (status, list) = json_of(app.call(Method::GET, "alice", "/tasks", None).await).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");

    // Deleted: every trace gone, a tombstone and a purge request the agent's user can read.
    let deleted = app
        .call(Method::DELETE, "alice", &format!("/tasks/{id}"), None)
        .await;
    assert_eq!(deleted.status(), 204);
    let mut agent = redis::Client::open(accounts.agent.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let tombstone: bool = redis::cmd("EXISTS")
        .arg(app.keys.task_deleted(id.parse().unwrap()))
        .query_async(&mut agent)
        .await
        .unwrap();
    assert!(tombstone);
    let purges: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(app.keys.memory_purges())
        .arg("-")
        .arg("+")
        .query_async(&mut agent)
        .await
        .unwrap();
    assert_eq!(purges.len(), 1);

    // The fleet's figures: a live agent's presence (written by the agent's user), the queue depth.
    let now = chrono::Utc::now();
    redis::pipe()
        .zadd(app.keys.workers_status(), "w-1", now.timestamp_millis())
        .set_ex(
            app.keys.worker_status("w-1"),
            json!({"worker_id": "w-1", "state": "working", "tasks": 1, "updated_at": "x"})
                .to_string(),
            30,
        )
        .query_async::<()>(&mut agent)
        .await
        .unwrap();
    let (status, count) =
        json_of(app.call(Method::GET, "alice", "/agents/count", None).await).await;
    assert_eq!((status, &count["count"]), (200, &json!(1)), "{count}");
    let (status, figures) = json_of(app.call(Method::GET, "alice", "/queue", None).await).await;
    assert_eq!(status, 200, "{figures}");
    assert_eq!(
        (&figures["agents"], &figures["in_flight"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        figures["ready"], 2,
        "the two tasks created after the first: {figures}"
    );
    let (status, health) = json_of(app.get("/health").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        health["components"],
        json!({"redis": true, "rabbitmq": true})
    );

    assert_eq!(
        accounts.redis_denials().await.unwrap(),
        Vec::<String>::new(),
        "nothing the gateway or the agent's user sent was refused"
    );
}

#[tokio::test]
async fn privilege_the_gateways_users_cannot_consume_tasks_or_touch_what_agents_own() {
    let (app, accounts) = restricted_gateway().await;
    let mut gateway = redis::Client::open(accounts.gateway.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for command in [
        redis::cmd("SET")
            .arg(app.keys.worker_status("w-1"))
            .arg("{}")
            .clone(),
        redis::cmd("SET")
            .arg(app.keys.dlq_sweeper_lock())
            .arg("me")
            .clone(),
        redis::cmd("HGETALL")
            .arg(format!("another:task:{}", Uuid::new_v4()))
            .clone(),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("FLUSHDB").clone(),
    ] {
        assert!(
            noperm(command.query_async(&mut gateway).await),
            "{command:?} was allowed"
        );
    }
    // It publishes tasks; it never takes one off the queue, or purges it.
    let amqp = Connection::connect(
        &accounts.gateway.rabbitmq_url,
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let error = amqp
        .create_channel()
        .await
        .unwrap()
        .basic_get(app.queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect_err("consuming the task queue");
    assert!(is_access_refused(&error), "{error}");
    assert!(!may_purge(&amqp, &app.queue).await.unwrap());
    // It publishes through its exchange, which reaches the task queue and nothing else: not through the
    // default exchange (which reaches every queue), the dead-letter or parking exchange, or any other.
    let topology = Topology::new(app.queue.clone(), 3);
    let (queue, dlq, parked) = (
        topology.queue.as_str(),
        topology.dead_letter_queue(),
        topology.parked_queue(),
    );
    for (exchange, routing_key, expected) in [
        ("", queue, Published::Refused),
        ("", dlq.as_str(), Published::Refused),
        ("", parked.as_str(), Published::Refused),
        (
            &topology.dead_letter_exchange(),
            dlq.as_str(),
            Published::Refused,
        ),
        (
            &topology.parking_exchange(),
            parked.as_str(),
            Published::Refused,
        ),
        ("amq.direct", queue, Published::Refused),
        ("amq.topic", "anything", Published::Refused),
        (
            &topology.input_exchange(),
            dlq.as_str(),
            Published::Unroutable,
        ),
        (
            &topology.input_exchange(),
            parked.as_str(),
            Published::Unroutable,
        ),
        (&topology.input_exchange(), queue, Published::Routed),
    ] {
        assert_eq!(
            publish_as(&amqp, exchange, routing_key).await.unwrap(),
            expected,
            "publishing to '{exchange}' with routing key '{routing_key}'"
        );
    }
    let probe = app.next_message().await.expect("the routed probe");
    assert_eq!(probe.delivery.data, b"{\"probe\": true}");
    assert!(
        app.next_message().await.is_none(),
        "nothing else reached it"
    );
    // It configures nothing: no deleting, re-declaring, declaring or rebinding queues and exchanges.
    let allowed = configuration_allowed(&amqp, &topology.queues(), &topology.exchanges())
        .await
        .unwrap();
    assert_eq!(allowed, Vec::<String>::new());
    let _ = amqp.close(200, "done".into()).await;
    // Nor can it create a topology the set-up has not: it finds what is missing and stops there.
    let fresh = Topology::new(format!("{}-fresh", app.queue), 3);
    let users = Accounts::create(app.keys.prefix(), &fresh.queue)
        .await
        .unwrap();
    let amqp = Connection::connect(&users.gateway.rabbitmq_url, ConnectionProperties::default())
        .await
        .unwrap();
    let refused = fresh
        .ensure(&amqp)
        .await
        .expect_err("creating the topology");
    assert!(
        matches!(&refused, TopologyError::Missing { missing, refused }
            if *missing == format!("exchange '{}'", fresh.input_exchange())
                && refused.contains("ACCESS_REFUSED")),
        "{refused}"
    );
    let _ = amqp.close(200, "done".into()).await;
    // It created nothing.
    let admin = Connection::connect(
        crate::helpers::RABBITMQ_URL,
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for queue in fresh.queues() {
        let checked = admin
            .create_channel()
            .await
            .unwrap()
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await;
        assert!(checked.is_err(), "{queue} exists");
    }
    let _ = admin.close(200, "done".into()).await;
    euglena_tests::cleanup::remove_test_state(&fresh.queue, app.keys.prefix());
}

#[tokio::test]
async fn privilege_the_sidecars_users_read_depths_and_presence_and_nothing_more() {
    let (app, accounts) = restricted_gateway().await;
    app.create("alice", 3).await;

    // The ready count, by a passive declare, as the sidecar reads it.
    let amqp = Connection::connect(
        &accounts.sidecar.rabbitmq_url,
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let ready = channel
        .queue_declare(app.queue.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    assert_eq!(ready, 1);
    channel
        .queue_declare(
            format!("{}.dlq", app.queue).as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    // The in-flight count from the management API, with the same user (a new queue's statistics take a
    // few seconds to appear).
    let http = reqwest::Client::new();
    let unacknowledged = eventually(Duration::from_secs(30), || async {
        let stats: Value = http
            .get(format!(
                "{ADMIN_MANAGEMENT_URL}/api/queues/%2f/{}",
                app.queue
            ))
            .basic_auth(&accounts.sidecar.user, Some(&accounts.sidecar.password))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        stats.get("messages_unacknowledged").and_then(Value::as_u64)
    })
    .await;
    assert_eq!(unacknowledged, Some(0));
    // The agents' presence, as read_fleet reads it.
    let mut redis = redis::Client::open(accounts.sidecar.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fleet = shared::presence::read_fleet(
        &mut redis,
        &app.keys,
        chrono::Utc::now().timestamp_millis(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(fleet, shared::presence::Fleet::default());
    assert_eq!(
        accounts.redis_denials().await.unwrap(),
        Vec::<String>::new()
    );

    // Nothing more: no task records, no writing presence, no consuming, no publishing, no administration.
    let id: Uuid = app.task_ids().await[0].parse().unwrap();
    for command in [
        redis::cmd("HGETALL").arg(app.keys.task(id)).clone(),
        redis::cmd("SET")
            .arg(app.keys.worker_status("w-1"))
            .arg("{}")
            .clone(),
        redis::cmd("PUBLISH")
            .arg(app.keys.events_channel())
            .arg("x")
            .clone(),
    ] {
        assert!(
            noperm(command.query_async(&mut redis).await),
            "{command:?} was allowed"
        );
    }
    let get = amqp
        .create_channel()
        .await
        .unwrap()
        .basic_get(app.queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect_err("consuming")
        .to_string();
    assert!(get.contains("ACCESS_REFUSED"), "{get}");
    let topology = Topology::new(app.queue.clone(), 3);
    for exchange in ["".to_owned(), topology.input_exchange()] {
        assert_eq!(
            publish_as(&amqp, &exchange, &app.queue).await.unwrap(),
            Published::Refused,
            "publishing to '{exchange}'"
        );
    }
    let allowed = configuration_allowed(&amqp, &topology.queues(), &topology.exchanges())
        .await
        .unwrap();
    assert_eq!(allowed, Vec::<String>::new());
    assert!(!may_purge(&amqp, &app.queue).await.unwrap());
    let users = http
        .get(format!("{ADMIN_MANAGEMENT_URL}/api/users"))
        .basic_auth(&accounts.sidecar.user, Some(&accounts.sidecar.password))
        .send()
        .await
        .unwrap()
        .status();
    // The same credentials read the queue above: this refusal is the tag's (RabbitMQ answers 401 here).
    assert!(
        matches!(users.as_u16(), 401 | 403),
        "the management tag is not an administrator's: {users}"
    );
    let _ = amqp.close(200, "done".into()).await;
}

#[tokio::test]
async fn privilege_a_broker_set_up_from_the_definitions_file_serves_a_restricted_gateway() {
    // As compose and the ECS `containers` layout set up their broker: the definitions file declares the
    // topology and creates the users; nobody declared anything before. The gateway, which may not declare
    // anything, finds the topology whole and publishes through its exchange.
    let id = Uuid::new_v4().simple().to_string();
    let prefix = format!("test:{id}:");
    let queue = format!("test.gateway.{id}");
    let definitions = Definitions::render(&queue);
    definitions.import().await.unwrap();
    let accounts = Accounts::create(&prefix, &queue).await.unwrap();
    let mut app = spawn_app_with(&[
        ("REDIS_KEY_PREFIX", &prefix),
        ("AGENT_INPUT_QUEUE", &queue),
        ("REDIS_URL", &accounts.gateway.redis_url),
        ("RABBITMQ_URL", &definitions.amqp_url("gateway")),
    ])
    .await;
    app.keys = Keys::new(prefix);

    app.create("alice", 2).await;

    assert!(app.next_message().await.is_some(), "queued");
    // The agents' user of the file may take from the task queue; the sidecar's may not.
    let agent = Connection::connect(
        &definitions.amqp_url("agent"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    agent
        .create_channel()
        .await
        .unwrap()
        .basic_get(app.queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap();
    let sidecar = Connection::connect(
        &definitions.amqp_url("metrics-sidecar"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let refused = sidecar
        .create_channel()
        .await
        .unwrap()
        .basic_get(app.queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect_err("the sidecar consuming")
        .to_string();
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
}
