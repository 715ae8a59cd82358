//! Following a task: its event stream (`GET /tasks/{id}/events`), with an agent's writes made through the
//! shared transition, as the agent makes them.

use crate::helpers::{agent_accepts, agent_completes, agent_tick, spawn_app, spawn_app_with};
use euglena_tests::proxy::Proxy;
use euglena_tests::sse::Frame;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

fn names(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|f| f.event.as_str()).collect()
}

#[tokio::test]
async fn a_stream_starts_with_a_snapshot_then_delivers_each_event_as_it_happens_and_closes_after_the_end()
 {
    let app = spawn_app().await;
    let id = app.create("alice", 5).await;
    let (status, stream) = app.events("alice", &id, None).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();

    let snapshot = stream.next(WAIT).await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data["status"], "in_queue");
    assert_eq!(snapshot.data["correlation_id"], id.as_str());
    assert!(
        !snapshot.id.is_empty(),
        "the snapshot carries its log position"
    );

    app.as_agent(&id, &agent_accepts()).await;
    let accepted = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (accepted.event.as_str(), &accepted.data["attempt"]),
        ("accepted", &serde_json::json!(1))
    );
    for tick in 1..=2 {
        app.as_agent(&id, &agent_tick(tick, "SEARCH")).await;
        let frame = stream.next(WAIT).await.unwrap();
        assert_eq!(frame.event, "tick");
        assert_eq!(frame.data["tick"], tick);
        assert_eq!(frame.data["action"], "SEARCH");
        assert_eq!(frame.data["param"], format!("param {tick}"));
        assert_eq!(frame.data["observation"], format!("saw {tick}"));
        assert_eq!(frame.data["usage"]["model_calls"], tick);
    }
    app.as_agent(&id, &agent_completes(2)).await;

    let rest = stream.until_closed(WAIT).await;
    assert_eq!(names(&rest), ["completed"], "{rest:?}");
    let done = &rest[0].data;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"]["deliverables"][0], "the deliverable");
    assert_eq!(done["tick"], 2);
    assert!(
        done.get("owner").is_none(),
        "the terminal event shows the API view: {done}"
    );
}

#[tokio::test]
async fn a_client_resuming_with_last_event_id_gets_what_followed_without_loss_or_repetition() {
    let app = spawn_app().await;
    let id = app.create("alice", 9).await;
    let (_, stream) = app.events("alice", &id, None).await;
    let mut stream = stream.unwrap();
    app.as_agent(&id, &agent_accepts()).await;
    for tick in 1..=3 {
        app.as_agent(&id, &agent_tick(tick, "THINK")).await;
    }
    // The client read up to the first tick, then its connection dropped.
    let seen = stream.until("tick", WAIT).await;
    assert_eq!(names(&seen), ["snapshot", "accepted", "tick"]);
    let after = seen.last().unwrap().id.clone();
    drop(stream);

    for tick in 4..=5 {
        app.as_agent(&id, &agent_tick(tick, "VISIT")).await;
    }
    let (status, stream) = app.events("alice", &id, Some(&after)).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let mut ticks = Vec::new();
    for _ in 0..4 {
        let frame = stream.next(WAIT).await.unwrap();
        assert_eq!(frame.event, "tick", "no snapshot on a resume: {frame:?}");
        ticks.push(frame.data["tick"].as_u64().unwrap());
    }
    assert_eq!(ticks, [2, 3, 4, 5]);
    app.as_agent(&id, &agent_completes(5)).await;
    assert_eq!(names(&stream.until_closed(WAIT).await), ["completed"]);
}

#[tokio::test]
async fn a_last_event_id_the_log_does_not_hold_or_that_is_not_an_id_gets_a_fresh_snapshot() {
    let app = spawn_app().await;
    let id = app.create("alice", 5).await;
    app.as_agent(&id, &agent_accepts()).await;
    for last in ["not-an-id", "99999999999999-0", "%%%", "-1-0"] {
        let (status, stream) = app.events("alice", &id, Some(last)).await;
        assert_eq!(status, 200, "{last}");
        let first = stream.unwrap().next(WAIT).await.unwrap();
        assert_eq!(first.event, "snapshot", "{last}");
        assert_eq!(first.data["status"], "in_progress");
    }
}

#[tokio::test]
async fn a_finished_tasks_stream_sends_the_snapshot_then_its_terminal_event_and_closes() {
    let app = spawn_app().await;
    let id = app.create("alice", 5).await;
    app.as_agent(&id, &agent_accepts()).await;
    app.as_agent(&id, &agent_tick(1, "EXIT")).await;
    app.as_agent(&id, &agent_completes(1)).await;

    let (_, stream) = app.events("alice", &id, None).await;
    let frames = stream.unwrap().until_closed(WAIT).await;
    assert_eq!(names(&frames), ["snapshot", "completed"]);
    assert_eq!(frames[0].data["status"], "completed");
    assert_eq!(frames[1].data["result"]["success"], true);

    // Resuming from the start replays the whole log; resuming from the end repeats only the end.
    let (_, stream) = app.events("alice", &id, Some("0-0")).await;
    let all = stream.unwrap().until_closed(WAIT).await;
    assert_eq!(names(&all), ["created", "accepted", "tick", "completed"]);
    let terminal_id = frames[1].id.clone();
    let (_, stream) = app.events("alice", &id, Some(&terminal_id)).await;
    let again = stream.unwrap().until_closed(WAIT).await;
    assert_eq!(names(&again), ["completed"]);
    assert_eq!(again[0].id, terminal_id);
}

#[tokio::test]
async fn another_gateway_behind_the_same_load_balancer_serves_the_same_stream() {
    let first = spawn_app().await;
    let second = spawn_app_with(&[
        ("REDIS_KEY_PREFIX", first.keys.prefix()),
        ("AGENT_INPUT_QUEUE", &first.queue),
        ("SUPABASE_JWT_SECRET", &first.secret),
        ("SUPABASE_URL", first.jwks.base_url.as_str()),
    ])
    .await;
    let id = first.create("alice", 5).await;
    let (status, stream) = euglena_tests::sse::open(
        &second.client,
        &format!("{}/tasks/{id}/events", second.address),
        &first.token("alice"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    assert_eq!(stream.next(WAIT).await.unwrap().event, "snapshot");
    first.as_agent(&id, &agent_accepts()).await;
    first.as_agent(&id, &agent_tick(1, "THINK")).await;
    first.as_agent(&id, &agent_completes(1)).await;
    let frames = stream.until_closed(WAIT).await;
    assert_eq!(names(&frames), ["accepted", "tick", "completed"]);
}

#[tokio::test]
async fn a_stream_that_falls_behind_its_live_feed_still_gets_every_event_in_order() {
    let app = spawn_app_with(&[("MAX_TICKS_PER_TASK", "1000"), ("DAILY_TICK_LIMIT", "1000")]).await;
    let id = app.create("alice", 500).await;
    let (_, stream) = app.events("alice", &id, None).await;
    let mut stream = stream.unwrap();
    assert_eq!(stream.next(WAIT).await.unwrap().event, "snapshot");
    // Far more than a stream's live buffer, written while the client reads nothing.
    app.as_agent(&id, &agent_accepts()).await;
    for tick in 1..=300 {
        app.as_agent(&id, &agent_tick(tick, "THINK")).await;
    }
    app.as_agent(&id, &agent_completes(300)).await;
    let frames = stream.until_closed(Duration::from_secs(20)).await;
    let ticks: Vec<u64> = frames
        .iter()
        .filter(|f| f.event == "tick")
        .map(|f| f.data["tick"].as_u64().unwrap())
        .collect();
    assert_eq!(ticks, (1..=300).collect::<Vec<_>>());
    assert_eq!(frames.last().unwrap().event, "completed");
}

#[tokio::test]
async fn events_written_while_the_gateway_lost_redis_reach_the_stream_once_it_is_back() {
    let mut redis = Proxy::start("127.0.0.1:6379").await;
    let app = spawn_app_with(&[("REDIS_URL", &format!("redis://{}/0", redis.address()))]).await;
    let id = app.create("alice", 5).await;
    let (_, stream) = app.events("alice", &id, None).await;
    let mut stream = stream.unwrap();
    assert_eq!(stream.next(WAIT).await.unwrap().event, "snapshot");

    // The agent writes straight to Redis while this gateway cannot reach it.
    redis.cut();
    app.as_agent(&id, &agent_accepts()).await;
    app.as_agent(&id, &agent_tick(1, "THINK")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restore().await;
    app.as_agent(&id, &agent_completes(1)).await;

    let frames = stream.until_closed(Duration::from_secs(20)).await;
    assert_eq!(names(&frames), ["accepted", "tick", "completed"]);
}

#[tokio::test]
async fn a_stream_of_a_task_that_is_not_yours_or_not_a_task_is_404_and_without_a_token_401() {
    let app = spawn_app().await;
    let id = app.create("alice", 5).await;
    let (status, _) = app.events("mallory", &id, None).await;
    assert_eq!(status, 404);
    let (status, _) = app.events("alice", "not-a-uuid", None).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .events("alice", &uuid::Uuid::new_v4().to_string(), None)
        .await;
    assert_eq!(status, 404);
    let response = app
        .client
        .get(format!("{}/tasks/{id}/events", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
}

/// The keep-alive interval is the production one (15 s): this test takes that long.
#[tokio::test]
async fn a_quiet_stream_gets_a_comment_line_every_fifteen_seconds() {
    let app = spawn_app().await;
    let id = app.create("alice", 5).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /tasks/{id}/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        app.token("alice")
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = String::new();
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 4096];
    while !received.contains("\n:") && started.elapsed() < Duration::from_secs(20) {
        let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buffer))
            .await
            .expect("the stream stays open")
            .unwrap();
        assert!(read > 0, "the stream closed: {received}");
        received.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    let waited = started.elapsed();
    assert!(received.contains("event: snapshot"), "{received}");
    assert!(
        received.contains("\n:"),
        "no comment line in {waited:?}: {received}"
    );
    assert!(
        waited >= Duration::from_secs(14),
        "the first keep-alive came after {waited:?}"
    );
}

#[tokio::test]
async fn stopping_the_gateway_ends_open_streams_refuses_new_connections_and_exits() {
    let mut app = spawn_app().await;
    let id = app.create("alice", 5).await;
    let (_, stream) = app.events("alice", &id, None).await;
    let mut stream = stream.unwrap();
    assert_eq!(stream.next(WAIT).await.unwrap().event, "snapshot");

    assert!(
        app.stop(Duration::from_secs(5)).await,
        "an open event stream does not hold the gateway up"
    );
    let rest = stream.until_closed(WAIT).await;
    assert!(
        rest.is_empty(),
        "the stream closes without events: {rest:?}"
    );
    let refused = app
        .client
        .get(format!("{}/health", app.address))
        .send()
        .await;
    assert!(refused.is_err(), "the port no longer accepts: {refused:?}");
}
