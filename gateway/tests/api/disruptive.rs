//! Tests that restart the real RabbitMQ. They disturb every other test, so `scripts/test.sh` runs them
//! alone, after the rest.

use crate::helpers::{eventually, spawn_app_with};
use euglena_tests::broker::{MemoryAlarm, rabbitmqctl};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_gateway_reconnects_after_rabbitmq_restarts() {
    let app = spawn_app_with(&[]).await;
    let token = app.token("alice");
    assert_eq!(
        app.post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 1}))
            .await
            .status(),
        202
    );

    rabbitmqctl(&["stop_app"]);
    let during = app
        .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 1}))
        .await;
    rabbitmqctl(&["start_app"]);
    assert_eq!(during.status(), 503);

    let recovered = eventually(Duration::from_secs(60), || async {
        let status = app
            .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 1}))
            .await
            .status();
        (status == 202).then_some(())
    })
    .await;
    assert!(
        recovered.is_some(),
        "the gateway publishes again after the restart"
    );
}

/// Every task `sub` has, newest first, as the API lists them.
async fn tasks_of(app: &crate::helpers::TestApp, sub: &str) -> Vec<serde_json::Value> {
    let body: serde_json::Value = app
        .client
        .get(format!("{}/tasks?limit=100", app.address))
        .bearer_auth(app.token(sub))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"].as_array().cloned().expect("a task list")
}

#[tokio::test]
async fn a_broker_that_blocks_publishers_gets_answers_within_the_deadline_and_no_charged_task_stays_pending()
 {
    let deadline = Duration::from_secs(2);
    let mut app = spawn_app_with(&[("PUBLISH_CONFIRM_TIMEOUT_MS", "2000")]).await;
    let token = app.token("alice");
    let alarm = MemoryAlarm::raise();

    let posts = (0..8).map(|n| {
        let (app, token) = (&app, &token);
        async move {
            let started = Instant::now();
            let response = app
                .post_task(
                    Some(token),
                    &json!({"mandate": format!("m{n}"), "max_ticks": 3}),
                )
                .await;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let id = body["correlation_id"].as_str().map(str::to_owned);
            (status, started.elapsed(), id)
        }
    });
    let answers = futures::future::join_all(posts).await;
    for (status, took, _) in &answers {
        assert!([202, 503].contains(status), "{answers:?}");
        assert!(
            *took < deadline + Duration::from_secs(1),
            "answered within the publish deadline: {answers:?}"
        );
    }
    let accepted = answers.iter().filter(|(status, ..)| *status == 202).count();
    let queued: Vec<String> = answers.iter().filter_map(|(_, _, id)| id.clone()).collect();
    assert_eq!(
        app.quota_used("alice").await,
        3 * i64::try_from(accepted).unwrap(),
        "a 503 left nothing charged: {answers:?}"
    );
    let tasks = tasks_of(&app, "alice").await;
    assert_eq!(tasks.len(), 8);
    let failed = tasks.iter().filter(|t| t["status"] == "failed").count();
    assert_eq!(
        failed,
        8 - accepted,
        "every 503 is failed, none pending: {tasks:?}"
    );

    // When the alarm clears, a message the broker took late names a task already failed: an agent acks it
    // without running it.
    alarm.clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(message) = app.next_message().await {
        let late: shared::task::TaskMessage = serde_json::from_slice(&message.data).unwrap();
        let task: serde_json::Value = app
            .get_task(&token, &late.correlation_id.to_string())
            .await
            .json()
            .await
            .unwrap();
        let id = late.correlation_id.to_string();
        assert!(
            queued.contains(&id) || task["status"] == "failed",
            "a late message's task is failed: {task}"
        );
    }

    // A publish blocked at shutdown does not hold the gateway up past its grace.
    let _alarm = MemoryAlarm::raise();
    let blocked = {
        let client = app.client.clone();
        let url = format!("{}/tasks", app.address);
        let token = token.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"mandate": "at shutdown", "max_ticks": 1}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.stop(Duration::from_secs(15)).await,
        "the gateway stops within its grace while the broker blocks it"
    );
    let answer = blocked.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| r.status() == 503),
        "the request in flight was answered 503 or cut: {answer:?}"
    );
}

/// Keeps Redis busy for `seconds` with a script that spins on `TIME`: every other client waits.
fn stall_redis(seconds: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = redis::Client::open(euglena_tests::cleanup::REDIS_URL)
            .unwrap()
            .get_connection()
            .unwrap();
        let spin = "local start = tonumber(redis.call('TIME')[1]) \
                    while tonumber(redis.call('TIME')[1]) - start < tonumber(ARGV[1]) do end \
                    return 1";
        let _: i64 = redis::cmd("EVAL")
            .arg(spin)
            .arg(0)
            .arg(seconds)
            .query(&mut conn)
            .unwrap();
    })
}

#[tokio::test]
async fn a_create_whose_reply_comes_too_late_charges_nothing_and_leaves_no_pending_task() {
    let app = spawn_app_with(&[]).await;
    let token = app.token("alice");

    let stall = stall_redis(3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let during = app
        .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 4}))
        .await;
    let took = started.elapsed();
    stall.join().unwrap();

    assert_eq!(during.status(), 503, "{:?}", during.text().await);
    assert!(took < Duration::from_secs(10), "answered in {took:?}");
    // Whatever order Redis ran the create and the abandon in, nothing stays charged or pending.
    let settled = eventually(Duration::from_secs(10), || async {
        let tasks = tasks_of(&app, "alice").await;
        let pending = tasks.iter().any(|t| t["status"] == "pending");
        (app.quota_used("alice").await == 0 && !pending).then_some(tasks)
    })
    .await;
    let tasks = settled.expect("the charge is refunded and no task is pending");
    assert!(
        tasks.iter().all(|t| t["status"] == "failed"),
        "a task the late create recorded is failed: {tasks:?}"
    );
    assert!(
        app.next_message().await.is_none(),
        "no message was published for it"
    );
    let active: Vec<String> =
        redis::AsyncCommands::zrange(&mut app.redis.clone(), app.keys.user_active("alice"), 0, -1)
            .await
            .unwrap();
    assert!(
        active.is_empty(),
        "the active-task cap is released: {active:?}"
    );

    let after = app
        .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 4}))
        .await;
    assert_eq!(after.status(), 202);
    assert_eq!(app.quota_used("alice").await, 4);
}
