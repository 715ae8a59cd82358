//! Following and steering real tasks through the whole fleet: the event stream of a task the agent runs,
//! a cancel that aborts a model call in flight, a delete that forgets the task's memory.

use crate::helpers::{serve_pages, spawn_fleet};
use agent::memory::{DEFAULT_COLLECTION, RemoteStore, VectorStore};
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use euglena_tests::model::Reply;
use euglena_tests::search::Hit;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_task_shows_each_tick_as_it_happens_with_its_action_time_tokens_and_usage() {
    let fleet = spawn_fleet(&[]).await;
    let pages = serve_pages(Router::new().route(
        "/page",
        get(|| async { Html("<html><body><p>The answer is 42.</p></body></html>") }),
    ))
    .await;
    let page = format!("{pages}/page");
    fleet.search.set_hits(vec![Hit {
        title: "The answer".into(),
        url: page.clone(),
        snippet: "a page with the answer".into(),
    }]);
    let marker = format!("e2e-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("SEARCH", "the answer", json!({})),
            Reply::action(
                "VISIT",
                &page,
                json!({"memory_write": ["the answer is 42"]}),
            ),
            Reply::action("THINK", "", json!({"deliverable": "42"})),
            Reply::action("EXIT", "", json!({})),
            Reply::synthesis("found it", &["42"]),
        ],
    );

    let id = fleet
        .submit("alice", &format!("Find the answer ({marker})"), 8)
        .await;
    // From the start of its log: the client sees every event, whenever it connects.
    let frames = fleet
        .events("alice", &id, Some("0-0"))
        .await
        .until_closed(DEADLINE)
        .await;

    let names: Vec<_> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "created",
            "accepted",
            "tick",
            "memory",
            "tick",
            "tick",
            "tick",
            "completed"
        ],
        "{frames:?}"
    );
    let ticks: Vec<_> = frames.iter().filter(|f| f.event == "tick").collect();
    let actions: Vec<_> = ticks
        .iter()
        .map(|f| f.data["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["SEARCH", "VISIT", "THINK", "EXIT"]);
    assert_eq!(ticks[0].data["param"], "the answer");
    assert_eq!(ticks[1].data["param"], page.as_str());
    assert!(
        ticks[1].data["observation"]
            .as_str()
            .unwrap()
            .contains("The answer is 42."),
        "{:?}",
        ticks[1].data
    );
    for (n, tick) in ticks.iter().enumerate() {
        assert_eq!(tick.data["tick"], n + 1);
        assert!(
            tick.data["tokens_in"].as_u64().unwrap() > 0,
            "{:?}",
            tick.data
        );
        assert!(tick.data["tokens_out"].as_u64().unwrap() > 0);
        assert!(tick.data["model_ms"].is_u64());
        assert!(tick.data["observation"].as_str().unwrap().chars().count() <= 500);
        assert_eq!(tick.data["usage"]["model_calls"], n + 1);
    }
    let memory = frames.iter().find(|f| f.event == "memory").unwrap();
    assert_eq!(
        (memory.data["tick"].as_u64(), memory.data["writes"].as_u64()),
        (Some(2), Some(1))
    );
    let done = &frames.last().unwrap().data;
    assert_eq!(done["status"], "completed");
    let usage = &done["usage"];
    assert_eq!(
        usage["model_calls"], 5,
        "four ticks and the synthesis: {usage}"
    );
    assert_eq!(
        (usage["searches"].as_u64(), usage["visits"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > usage["completion_tokens"].as_u64().unwrap()
    );
    let (_, polled) = fleet
        .call(Method::GET, "alice", &format!("/tasks/{id}"))
        .await;
    assert_eq!(polled["usage"], *usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_aborts_the_model_call_in_flight_and_keeps_its_deliverables() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("e2e-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "the first finding"})),
            // The second tick's model call would take a minute.
            Reply::Delayed(
                Duration::from_secs(60),
                Box::new(Reply::action("EXIT", "", json!({}))),
            ),
        ],
    );
    let id = fleet.submit("alice", &format!("m {marker}"), 10).await;
    let mut events = fleet.events("alice", &id, Some("0-0")).await;
    events.until("tick", DEADLINE).await;
    // Wait until the second call is in flight.
    let started = Instant::now();
    while fleet.model.requests_for(&marker).len() < 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "the second tick never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let asked = Instant::now();
    let (status, body) = fleet
        .call(Method::POST, "alice", &format!("/tasks/{id}/cancel"))
        .await;
    assert_eq!((status, body["status"].as_str()), (202, Some("cancelling")));
    let rest = events.until_closed(Duration::from_secs(10)).await;
    let took = asked.elapsed();

    let names: Vec<_> = rest.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(names, ["cancelling", "cancelled"]);
    assert!(
        took < Duration::from_secs(1),
        "stored cancelled {took:?} after the request"
    );
    let task = &rest[1].data;
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["result"]["success"], false);
    assert_eq!(task["result"]["deliverables"], json!(["the first finding"]));
    assert_eq!(task["result"]["ticks_used"], 1);
    assert_eq!(
        fleet.model.requests_for(&marker).len(),
        2,
        "no synthesis after a cancel"
    );
    // Cancelling again changes nothing.
    let (_, again) = fleet
        .call(Method::POST, "alice", &format!("/tasks/{id}/cancel"))
        .await;
    assert_eq!(again["status"], "cancelled");
    assert!(fleet.agent_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_task_forgets_the_memory_it_wrote() {
    let emulator = std::env::var("QDRANT_EMULATOR_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:16334".to_owned());
    let fleet = spawn_fleet(&[("QDRANT_URL", &emulator)]).await;
    let marker = format!("e2e-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action(
                "THINK",
                "",
                json!({"memory_write": ["the vault code is 1234", "the vault is in Bern"]}),
            ),
            Reply::action("EXIT", "", json!({})),
            Reply::synthesis("done", &[]),
        ],
    );
    let id = fleet.submit("alice", &format!("m {marker}"), 5).await;
    assert_eq!(
        fleet.wait_terminal("alice", &id, DEADLINE).await["status"],
        "completed"
    );
    let store = RemoteStore::connect(&emulator, None, DEFAULT_COLLECTION)
        .await
        .unwrap();
    let task: Uuid = id.parse().unwrap();
    assert_eq!(store.count_task("alice", task).await.unwrap(), 2);

    let (status, _) = fleet
        .call(Method::DELETE, "alice", &format!("/tasks/{id}"))
        .await;
    assert_eq!(status, 204);

    let started = Instant::now();
    while store.count_task("alice", task).await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the task's memory was not forgotten"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = fleet
        .call(Method::GET, "alice", &format!("/tasks/{id}"))
        .await;
    assert_eq!(status, 404);
}
