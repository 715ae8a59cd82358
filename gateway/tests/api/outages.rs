//! Redis or RabbitMQ going away, without disturbing other tests: the gateway reaches them through a
//! TCP proxy the test can cut and restore.

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};
use euglena_tests::proxy::Proxy;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn post(app: &TestApp, sub: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = app
        .post_task(
            Some(&app.token(sub)),
            &json!({"mandate": "m", "max_ticks": 5}),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap(), started.elapsed())
}

#[tokio::test]
async fn a_publish_to_a_missing_queue_is_503_the_task_failed_and_the_quota_refunded() {
    let app = spawn_app().await;
    app.delete_queue().await;

    let (status, body, _) = post(&app, "alice").await;

    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    let tasks = app.task_ids().await;
    assert_eq!(tasks.len(), 1);
    let stored = app.stored(&tasks[0]).await;
    assert_eq!(stored["status"], "failed");
    assert!(
        stored["error"].contains("could not be queued"),
        "{}",
        stored["error"]
    );
    assert_eq!(stored["refunded"], "1");
    assert_eq!(
        app.quota_used("alice").await,
        0,
        "the quota is back where it was"
    );
}

#[tokio::test]
async fn while_the_broker_is_unreachable_posts_fail_fast_and_recover_when_it_returns() {
    let mut proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.address());
    let app = spawn_app_with(&[("RABBITMQ_URL", &url)]).await;
    assert_eq!(post(&app, "alice").await.0, 202);

    proxy.cut();
    let degraded = eventually(Duration::from_secs(5), || async {
        let health: Value = app.get("/health").await.json().await.unwrap();
        (health["components"]["rabbitmq"] == false).then_some(health)
    })
    .await
    .expect("health notices the broker is gone");
    assert_eq!(degraded["status"], "degraded");
    let (status, body, took) = post(&app, "alice").await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    assert_eq!(
        app.quota_used("alice").await,
        5,
        "the failed task's ticks were refunded"
    );
    assert_eq!(app.task_ids().await.len(), 2);

    proxy.restore().await;
    let recovered = eventually(Duration::from_secs(15), || async {
        let (status, _, _) = post(&app, "alice").await;
        (status == 202).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the gateway reconnects by itself");
}

#[tokio::test]
async fn while_redis_is_unreachable_the_gateway_answers_fast_and_recovers_when_it_returns() {
    let mut proxy = Proxy::start("127.0.0.1:6379").await;
    let url = format!("redis://{}/0", proxy.address());
    let app = spawn_app_with(&[("REDIS_URL", &url)]).await;
    let token = app.token("alice");
    assert_eq!(post(&app, "alice").await.0, 202);

    proxy.cut();
    let (status, body, took) = post(&app, "alice").await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let started = Instant::now();
    let get = app
        .get_task(&token, &uuid::Uuid::new_v4().to_string())
        .await;
    assert_eq!(get.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    let count: Value = app.get("/agents/count").await.json().await.unwrap();
    assert_eq!(count["count"], 0);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["components"]["redis"], false);
    assert!(
        app.next_message().await.is_some(),
        "only the first task was queued"
    );
    assert!(app.next_message().await.is_none());

    proxy.restore().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        (post(&app, "alice").await.0 == 202).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the gateway reconnects by itself");
}

/// The id of the one task this test's gateway recorded, once it is recorded.
async fn the_task(app: &TestApp) -> String {
    eventually(Duration::from_secs(5), || async {
        app.task_ids().await.into_iter().next()
    })
    .await
    .expect("the task is recorded")
}

/// Waits until `alice`'s task `id` is `failed` because it could not be queued, refunded once.
async fn ends_failed_and_refunded(app: &TestApp, id: &str, within: Duration) {
    let stored = eventually(within, || async {
        let stored = app.stored(id).await;
        (stored["status"] == "failed").then_some(stored)
    })
    .await
    .expect("the task ends failed");
    assert!(
        stored["error"].contains("could not be queued"),
        "{}",
        stored["error"]
    );
    assert_eq!(stored["refunded"], "1");
    assert_eq!(app.quota_used("alice").await, 0, "refunded exactly once");
}

#[tokio::test]
async fn a_client_that_gives_up_while_its_task_is_being_queued_still_gets_it_failed_and_refunded() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.address());
    let app = spawn_app_with(&[
        ("RABBITMQ_URL", &url),
        ("PUBLISH_CONFIRM_TIMEOUT_MS", "1000"),
    ])
    .await;
    proxy.stall();

    // The broker never confirms; the client gives up long before the gateway's confirm timeout.
    let gave_up = app
        .client
        .post(format!("{}/tasks", app.address))
        .bearer_auth(app.token("alice"))
        .json(&json!({"mandate": "m", "max_ticks": 5}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up: {gave_up:?}");
    let id = the_task(&app).await;
    assert_eq!(app.quota_used("alice").await, 5, "charged while queueing");

    ends_failed_and_refunded(&app, &id, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_task_that_cannot_be_queued_while_redis_is_away_too_ends_failed_once_redis_returns() {
    let broker = Proxy::start("127.0.0.1:5672").await;
    let mut redis = Proxy::start("127.0.0.1:6379").await;
    let app = spawn_app_with(&[
        (
            "RABBITMQ_URL",
            &format!("amqp://guest:guest@{}/%2f", broker.address()),
        ),
        ("REDIS_URL", &format!("redis://{}/0", redis.address())),
        ("PUBLISH_CONFIRM_TIMEOUT_MS", "1500"),
    ])
    .await;
    broker.stall();

    // Charged and recorded; then Redis goes away while the publish waits for a confirm that never comes.
    let ((status, body, _), id) = tokio::join!(post(&app, "alice"), async {
        let id = the_task(&app).await;
        redis.cut();
        id
    });
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        app.stored(&id).await["status"],
        "pending",
        "Redis was away: nothing could be written"
    );
    assert_eq!(app.quota_used("alice").await, 5);

    redis.restore().await;
    ends_failed_and_refunded(&app, &id, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn during_a_broker_outage_each_503_is_one_warn_line_and_no_error_line() {
    let mut proxy = Proxy::start("127.0.0.1:5672").await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("secret-{run}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let queue = format!("test.logs.{run}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("REDIS_KEY_PREFIX", format!("test:{run}:"))
        .env(
            "RABBITMQ_URL",
            format!("amqp://guest:guest@{}/%2f", proxy.address()),
        )
        .env("AGENT_INPUT_QUEUE", &queue)
        .env("SUPABASE_JWT_SECRET", &secret)
        .env("LOG_FORMAT", "json")
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let health = || async {
        let answer = client.get(format!("{base}/health")).send().await.ok()?;
        answer.json::<Value>().await.ok()
    };
    let up = eventually(Duration::from_secs(15), || async {
        (health().await?["status"] == "ok").then_some(())
    })
    .await;
    assert!(up.is_some(), "the gateway starts");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "aud": "authenticated", "role": "authenticated", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();

    proxy.cut();
    let gone = eventually(Duration::from_secs(5), || async {
        (health().await?["components"]["rabbitmq"] == false).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the gateway notices the broker is gone");
    let ids: Vec<String> = (0..5).map(|n| format!("outage-{run}-{n}")).collect();
    for id in &ids {
        let response = client
            .post(format!("{base}/tasks"))
            .bearer_auth(&token)
            .header("x-request-id", id)
            .json(&json!({"mandate": "m", "max_ticks": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    // SIGTERM: a clean stop, which must not log the broker client's noise at ERROR either.
    let pid = i32::try_from(gateway.id().unwrap()).unwrap();
    std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .expect("the gateway stops")
        .unwrap();

    let lines: Vec<Value> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "no ERROR line: {errors:#?}");
    for id in &ids {
        let about: Vec<&Value> = lines
            .iter()
            .filter(|line| line.to_string().contains(id.as_str()))
            .filter(|line| line["level"] == "WARN" || line["level"] == "ERROR")
            .collect();
        assert_eq!(about.len(), 1, "one WARN line for request {id}: {about:#?}");
    }
    euglena_tests::cleanup::remove_test_state(&queue, &format!("test:{run}:"));
    proxy.restore().await;
}
