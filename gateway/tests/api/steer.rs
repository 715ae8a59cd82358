//! Steering tasks: cancel, delete, list, idempotent create, the active-task cap.

use crate::helpers::{
    TestApp, agent_accepts, agent_completes, agent_tick, spawn_app, spawn_app_with,
};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn cancel(app: &TestApp, sub: &str, id: &str) -> (u16, Value) {
    json_of(
        app.call(Method::POST, sub, &format!("/tasks/{id}/cancel"), None)
            .await,
    )
    .await
}

async fn active(app: &TestApp, sub: &str) -> usize {
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(app.keys.user_active(sub))
        .arg(0)
        .arg(-1)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    members.len()
}

#[tokio::test]
async fn cancelling_a_queued_task_ends_it_at_once_refunds_everything_and_is_idempotent() {
    let app = spawn_app().await;
    let id = app.create("alice", 7).await;
    assert_eq!(app.quota_used("alice").await, 7);
    assert_eq!(active(&app, "alice").await, 1);

    let (status, body) = cancel(&app, "alice", &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["result"]["success"], false);
    assert_eq!(app.quota_used("alice").await, 0, "all ticks refunded");
    assert_eq!(
        active(&app, "alice").await,
        0,
        "the active slot is released"
    );

    let (status, again) = cancel(&app, "alice", &id).await;
    assert_eq!((status, &again["status"]), (200, &json!("cancelled")));
    assert_eq!(app.quota_used("alice").await, 0, "refunded once");
    // The agent, meeting the message later, finds a finished task (see the agent's tests).
    let (_, events) = app.events("alice", &id, Some("0-0")).await;
    let frames = events.unwrap().until_closed(Duration::from_secs(5)).await;
    let names: Vec<_> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(names, ["created", "cancelled"]);
}

#[tokio::test]
async fn cancelling_a_running_task_asks_its_agent_and_shows_it_cancelling() {
    let app = spawn_app().await;
    let id = app.create("alice", 7).await;
    app.as_agent(&id, &agent_accepts()).await;
    app.as_agent(&id, &agent_tick(1, "THINK")).await;

    let (status, body) = cancel(&app, "alice", &id).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelling");
    assert_eq!(app.stored(&id).await["cancel_requested"], "1");
    let (status, again) = cancel(&app, "alice", &id).await;
    assert_eq!((status, &again["status"]), (202, &json!("cancelling")));

    let (_, events) = app.events("alice", &id, Some("0-0")).await;
    let mut events = events.unwrap();
    let seen = events.until("cancelling", Duration::from_secs(5)).await;
    assert_eq!(
        seen.iter().filter(|f| f.event == "cancelling").count(),
        1,
        "one cancelling event however often it is asked: {seen:?}"
    );
    // The agent then stores the end: cancelled, here, or completed had it finished first.
    app.as_agent(&id, &agent_completes(1)).await;
    let (status, finished) = cancel(&app, "alice", &id).await;
    assert_eq!((status, &finished["status"]), (200, &json!("completed")));
}

#[tokio::test]
async fn cancelling_a_finished_task_changes_nothing_and_someone_elses_is_404() {
    let app = spawn_app().await;
    let id = app.create("alice", 3).await;
    app.as_agent(&id, &agent_accepts()).await;
    app.as_agent(&id, &agent_completes(2)).await;
    let before = app.stored(&id).await;

    let (status, body) = cancel(&app, "alice", &id).await;
    assert_eq!((status, &body["status"]), (200, &json!("completed")));
    assert_eq!(app.stored(&id).await, before);

    for (sub, path) in [
        ("mallory", format!("/tasks/{id}/cancel")),
        ("alice", format!("/tasks/{}/cancel", uuid::Uuid::new_v4())),
        ("alice", "/tasks/%FF%FE/cancel".to_owned()),
    ] {
        let (status, body) = json_of(app.call(Method::POST, sub, &path, None).await).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    assert_eq!(app.stored(&id).await, before);
}

#[tokio::test]
async fn deleting_a_task_removes_every_trace_and_asks_the_agents_to_forget_its_memory() {
    let app = spawn_app().await;
    let id = app.create("alice", 3).await;
    let other = app.create("alice", 3).await;
    app.as_agent(&id, &agent_accepts()).await;
    app.as_agent(&id, &agent_completes(1)).await;

    let response = app
        .call(Method::DELETE, "alice", &format!("/tasks/{id}"), None)
        .await;
    assert_eq!(response.status(), 204);

    let keys = app.redis_keys().await;
    let remaining: Vec<_> = keys
        .iter()
        .filter(|k| k.contains(&id) && !k.ends_with(":deleted"))
        .collect();
    assert!(remaining.is_empty(), "left behind: {remaining:?}");
    assert_eq!(app.get_task(&app.token("alice"), &id).await.status(), 404);
    let purges: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(app.keys.memory_purges())
        .arg("-")
        .arg("+")
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    assert_eq!(purges.len(), 1);
    assert_eq!(purges[0].1["task"], id);
    assert_eq!(purges[0].1["owner"], "alice");
    // The other task is untouched, and listing no longer shows the deleted one.
    let (_, list) = json_of(app.call(Method::GET, "alice", "/tasks", None).await).await;
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["correlation_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [other]);
    // Again: it is gone.
    let again = app
        .call(Method::DELETE, "alice", &format!("/tasks/{id}"), None)
        .await;
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn deleting_a_running_task_cancels_it_first_and_someone_elses_is_404() {
    let app = spawn_app().await;
    let id = app.create("alice", 5).await;
    app.as_agent(&id, &agent_accepts()).await;
    let foreign = app
        .call(Method::DELETE, "mallory", &format!("/tasks/{id}"), None)
        .await;
    assert_eq!(foreign.status(), 404);
    assert_eq!(app.stored(&id).await["status"], "accepted");

    // An agent that stops the task when asked, as the real one does.
    let agent = {
        let (redis, keys, id) = (app.redis.clone(), app.keys.clone(), id.clone());
        tokio::spawn(async move {
            let key = keys.task(id.parse().unwrap());
            loop {
                let flag: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("cancel_requested")
                    .query_async(&mut redis.clone())
                    .await
                    .unwrap();
                if flag.as_deref() == Some("1") {
                    let cancelled =
                        shared::store::Transition::to(shared::Status::Cancelled).refunding(0);
                    shared::store::transition(
                        &mut redis.clone(),
                        &keys,
                        id.parse().unwrap(),
                        &cancelled,
                        chrono::Utc::now(),
                        600,
                    )
                    .await
                    .unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let response = app
        .call(Method::DELETE, "alice", &format!("/tasks/{id}"), None)
        .await;
    assert_eq!(response.status(), 204);
    agent.await.unwrap();
    assert!(app.stored(&id).await.is_empty());
    assert_eq!(app.quota_used("alice").await, 0);
    assert_eq!(active(&app, "alice").await, 0);
}

#[tokio::test]
async fn listing_pages_through_my_tasks_newest_first_and_stays_stable_while_tasks_arrive() {
    let app = spawn_app_with(&[("DAILY_TICK_LIMIT", "1000")]).await;
    let mut mine = Vec::new();
    for _ in 0..7 {
        mine.push(app.create("alice", 1).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    app.create("bob", 1).await;
    mine.reverse(); // newest first

    let mut seen = Vec::new();
    let mut path = "/tasks?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = json_of(app.call(Method::GET, "alice", &path, None).await).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for task in page["data"].as_array().unwrap() {
            seen.push(task["correlation_id"].as_str().unwrap().to_owned());
        }
        if pages == 1 {
            // A task created while paging appears before the first page, never inside a later one.
            app.create("alice", 1).await;
        }
        if page["has_more"] == false {
            assert!(page["next"].is_null());
            break;
        }
        let next = page["next"].as_str().unwrap();
        path = format!("/tasks?limit=3&after={next}");
    }
    assert_eq!(seen, mine, "every task once, newest first, none of bob's");
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn listing_filters_by_shown_status() {
    let app = spawn_app().await;
    let queued = app.create("alice", 1).await;
    let running = app.create("alice", 1).await;
    let done = app.create("alice", 1).await;
    app.as_agent(&running, &agent_accepts()).await;
    app.as_agent(&done, &agent_accepts()).await;
    app.as_agent(&done, &agent_completes(1)).await;
    let cancelling = app.create("alice", 1).await;
    app.as_agent(&cancelling, &agent_accepts()).await;
    cancel(&app, "alice", &cancelling).await;

    for (filter, expected) in [
        ("in_queue", vec![queued.clone()]),
        ("in_progress", vec![running.clone()]),
        ("completed", vec![done.clone()]),
        ("cancelling", vec![cancelling.clone()]),
        ("in_queue,completed", vec![done.clone(), queued.clone()]),
        ("failed", vec![]),
    ] {
        let (status, page) = json_of(
            app.call(
                Method::GET,
                "alice",
                &format!("/tasks?status={filter}"),
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 200);
        let ids: Vec<_> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["correlation_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, expected, "{filter}");
    }
}

#[tokio::test]
async fn a_bad_list_parameter_is_422_with_what_is_wrong() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=x",
        "after=bogus",
        "status=done",
        "colour=blue",
    ] {
        let (status, body) = json_of(
            app.call(Method::GET, "alice", &format!("/tasks?{query}"), None)
                .await,
        )
        .await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}

fn keyed(app: &TestApp, sub: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
    app.client
        .post(format!("{}/tasks", app.address))
        .bearer_auth(app.token(sub))
        .header("Idempotency-Key", key)
        .json(body)
}

#[tokio::test]
async fn repeating_an_idempotency_key_answers_the_same_task_and_charges_nothing() {
    let app = spawn_app().await;
    let body = json!({"mandate": "find a bakery", "max_ticks": 5});
    let first = keyed(&app, "alice", "order-1", &body).send().await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = keyed(&app, "alice", "order-1", &body).send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["correlation_id"], first["correlation_id"]);
    assert_eq!(app.quota_used("alice").await, 5, "charged once");
    assert_eq!(app.task_ids().await.len(), 1);
    assert!(app.next_message().await.is_some());
    assert!(app.next_message().await.is_none(), "queued once");

    // Keys are per user: the same key by someone else is their own request.
    let bobs = keyed(&app, "bob", "order-1", &body).send().await.unwrap();
    assert_eq!(bobs.status(), 202);
    assert!(bobs.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    let sent = keyed(
        &app,
        "alice",
        "k",
        &json!({"mandate": "one", "max_ticks": 2}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(sent.status(), 202);
    let (status, body) = json_of(
        keyed(
            &app,
            "alice",
            "k",
            &json!({"mandate": "two", "max_ticks": 2}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("idempotency_key_reused"))
    );
    assert_eq!(app.quota_used("alice").await, 2);
    assert_eq!(app.task_ids().await.len(), 1);
}

#[tokio::test]
async fn a_refused_request_keeps_no_idempotency_key() {
    let app = spawn_app_with(&[("DAILY_TICK_LIMIT", "10")]).await;
    // Refused by validation, then by the quota: neither keeps the key.
    let invalid = keyed(&app, "alice", "k", &json!({"mandate": " ", "max_ticks": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);
    let too_big = keyed(
        &app,
        "alice",
        "k",
        &json!({"mandate": "m", "max_ticks": 11}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(too_big.status(), 429);
    let fits = keyed(&app, "alice", "k", &json!({"mandate": "m", "max_ticks": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 202);
    assert!(fits.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn an_idempotency_key_over_255_characters_or_not_printable_is_422() {
    let app = spawn_app().await;
    for key in ["k".repeat(256), "tab\there".to_owned(), "é".to_owned()] {
        let request = app
            .client
            .post(format!("{}/tasks", app.address))
            .bearer_auth(app.token("alice"))
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
            )
            .json(&json!({"mandate": "m", "max_ticks": 1}));
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, 422, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    assert_eq!(app.quota_used("alice").await, 0);
}

#[tokio::test]
async fn a_repeat_while_the_first_request_is_still_being_queued_is_409() {
    let broker = euglena_tests::proxy::Proxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(&[(
        "RABBITMQ_URL",
        &format!("amqp://guest:guest@{}/%2f", broker.address()),
    )])
    .await;
    broker.stall();
    let body = json!({"mandate": "slow", "max_ticks": 2});
    let first = tokio::spawn(keyed(&app, "alice", "k", &body).send());
    // The first request is recorded, then waits for the broker's confirm.
    crate::helpers::eventually(Duration::from_secs(5), || async {
        (!app.task_ids().await.is_empty()).then_some(())
    })
    .await
    .expect("the first request is recorded");
    let (status, conflict) = json_of(keyed(&app, "alice", "k", &body).send().await.unwrap()).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "idempotency_key_in_use");
    broker.resume();
    assert_eq!(first.await.unwrap().unwrap().status(), 202);
    let replay = keyed(&app, "alice", "k", &body).send().await.unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(app.quota_used("alice").await, 2);
}

#[tokio::test]
async fn a_hundred_concurrent_posts_by_one_user_at_the_cap_admit_exactly_the_cap_and_others_are_served()
 {
    let app = spawn_app_with(&[
        ("MAX_ACTIVE_TASKS_PER_USER", "7"),
        ("DAILY_TICK_LIMIT", "1000"),
    ])
    .await;
    let token = app.token("greedy");
    let body = json!({"mandate": "m", "max_ticks": 1});
    let responses = join_all((0..100).map(|_| app.post_task(Some(&token), &body))).await;
    let accepted = responses.iter().filter(|r| r.status() == 202).count();
    assert_eq!(accepted, 7);
    let mut refused = 0;
    for response in responses.into_iter().filter(|r| r.status() != 202) {
        let (status, body) = json_of(response).await;
        assert_eq!(status, 429);
        assert_eq!(body["error"]["code"], "too_many_active_tasks");
        assert_eq!(body["error"]["limit"], 7);
        refused += 1;
    }
    assert_eq!(refused, 93);
    assert_eq!(app.quota_used("greedy").await, 7, "refusals charge nothing");
    // Another user is still served, and a slot freed by a finished task is taken again.
    assert_eq!(
        app.post_task(Some(&app.token("other")), &body)
            .await
            .status(),
        202
    );
    assert_eq!(app.post_task(Some(&token), &body).await.status(), 429);
    let mut greedy = Vec::new();
    for id in app.task_ids().await {
        if app.stored(&id).await["owner"] == "greedy" {
            greedy.push(id);
        }
    }
    app.as_agent(&greedy[0], &agent_accepts()).await;
    app.as_agent(&greedy[0], &agent_completes(1)).await;
    assert_eq!(app.post_task(Some(&token), &body).await.status(), 202);
}
