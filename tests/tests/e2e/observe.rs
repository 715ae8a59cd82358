//! What an operator sees of a task: the agent's and the gateway's `/metrics`, scraped over HTTP from
//! the real binaries and parsed as Prometheus would, and one trace from the request to the last model
//! call, exported over OTLP to a receiver the test runs.

use crate::helpers::{serve_pages, spawn_gateway};
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use euglena_tests::model::Reply;
use euglena_tests::otlp::{OtlpReceiver, ReceivedSpan};
use euglena_tests::scrape::Scrape;
use euglena_tests::search::Hit;
use serde_json::json;
use shared::telemetry::{self, LogFormat, OtlpSettings, TraceParent};
use std::time::Duration;
use uuid::Uuid;

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_metrics_count_a_tasks_ticks_model_calls_visits_searches_and_memory() {
    let fleet = spawn_gateway(&[]).await;
    let health_port = free_port();
    let mut agent = fleet.spawn_agent("metrics-1", &[("HEALTH_PORT", &health_port.to_string())]);
    let pages = serve_pages(Router::new().route(
        "/page",
        get(|| async { Html("<html><body><p>a page to read</p></body></html>") }),
    ))
    .await;
    let page_url = format!("{pages}/page");
    fleet.search.set_hits(vec![Hit {
        title: "a page".into(),
        url: page_url.clone(),
        snippet: "to read".into(),
    }]);
    let marker = format!("metrics-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("SEARCH", "a page", json!({"memory_write": ["remember me"]})),
            Reply::action("VISIT", &page_url, json!({})),
            Reply::action("THINK", "", json!({"memory_query": ["what to remember"]})),
            Reply::action("EXIT", "", json!({"deliverable": "done"})),
            Reply::Json(json!({"summary": "done", "deliverables": ["done"]})),
        ],
    );

    let id = fleet
        .submit("alice", &format!("observe ({marker})"), 10)
        .await;
    let task = fleet
        .wait_terminal("alice", &id, Duration::from_secs(90))
        .await;
    assert_eq!(task["status"], "completed", "{task}\n{}", agent.logs());

    let scrape = Scrape::fetch(&format!("http://127.0.0.1:{health_port}/metrics"))
        .await
        .unwrap();
    assert_eq!(
        scrape.value("agent_tasks_total", &[("outcome", "completed")]),
        1.0
    );
    for action in ["SEARCH", "VISIT", "THINK", "EXIT"] {
        assert_eq!(
            scrape.value("agent_ticks_total", &[("action", action)]),
            1.0,
            "{action}"
        );
    }
    assert_eq!(
        scrape.observations("agent_model_call_duration_seconds", &[("outcome", "ok")]),
        5.0,
        "four ticks and the synthesis"
    );
    assert!(scrape.value("agent_model_tokens_total", &[("kind", "prompt")]) > 0.0);
    assert!(scrape.value("agent_model_tokens_total", &[("kind", "completion")]) > 0.0);
    assert_eq!(
        scrape.observations("agent_visit_duration_seconds", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        scrape.observations("agent_search_duration_seconds", &[("outcome", "ok")]),
        1.0
    );
    assert!(scrape.observations("agent_embedding_duration_seconds", &[]) >= 1.0);
    assert_eq!(
        scrape.value("agent_checkpoint_writes_total", &[("outcome", "stored")]),
        4.0,
        "one per tick"
    );
    assert_eq!(scrape.value("agent_tasks_in_hand", &[]), 0.0);
    let labels = scrape.label_values("agent_visit_duration_seconds", "outcome");
    assert!(
        labels.iter().all(|l| !l.contains("127.0.0.1")),
        "no URL is a label: {labels:?}"
    );

    let gateway = Scrape::fetch(&format!("{}/metrics", fleet.gateway))
        .await
        .unwrap();
    assert_eq!(
        gateway.value(
            "gateway_http_requests_total",
            &[("method", "POST"), ("route", "/tasks"), ("status", "202")]
        ),
        1.0
    );
    agent.sigterm();
    agent.wait_exit(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_post_to_the_agents_last_model_call() {
    let receiver = OtlpReceiver::start().await.unwrap();
    telemetry::init_with(
        "gateway",
        LogFormat::Pretty,
        Some(OtlpSettings {
            endpoint: receiver.endpoint.clone(),
            service_name: "gateway".into(),
        }),
    );
    let fleet = spawn_gateway(&[]).await;
    let mut agent = fleet.spawn_agent(
        "traced-1",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "agent"),
        ],
    );
    let marker = format!("traced-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({})),
            Reply::action("EXIT", "", json!({"deliverable": "done"})),
            Reply::Json(json!({"summary": "done", "deliverables": ["done"]})),
        ],
    );
    // The client's own trace, which the gateway continues.
    let caller = TraceParent::new_root();
    let trace_id = caller.trace_id().to_string();
    let response = fleet
        .client
        .post(format!("{}/tasks", fleet.gateway))
        .bearer_auth(fleet.token("alice"))
        .header("traceparent", caller.to_string())
        .json(&json!({"mandate": format!("traced ({marker})"), "max_ticks": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["correlation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = fleet
        .wait_terminal("alice", &id, Duration::from_secs(90))
        .await;
    assert_eq!(task["status"], "completed", "{task}\n{}", agent.logs());
    let stored = fleet.stored_field(&id, "traceparent").await.unwrap();
    assert!(
        stored.contains(&trace_id),
        "the record keeps the trace: {stored}"
    );

    // The agent exports its last spans as it stops; the gateway's are flushed here.
    agent.sigterm();
    agent.wait_exit(Duration::from_secs(20)).await;
    tokio::task::spawn_blocking(telemetry::flush).await.unwrap();
    let spans = receiver.spans();
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let named = |service: &str, name: &str| -> Vec<&ReceivedSpan> {
        in_trace
            .iter()
            .copied()
            .filter(|s| s.service == service && s.name == name)
            .collect()
    };
    let by_id = |span_id: &str| in_trace.iter().copied().find(|s| s.span_id == span_id);
    let reaches = |span: &ReceivedSpan, ancestor: &ReceivedSpan| {
        let mut current = span;
        while let Some(parent) = by_id(&current.parent_span_id) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = parent;
        }
        false
    };

    let requests = named("gateway", "request");
    let post = requests
        .iter()
        .find(|s| s.parent_span_id == caller.parent_id().to_string())
        .unwrap_or_else(|| panic!("the POST continues the caller's trace: {spans:#?}"));
    let tasks = named("agent", "task");
    assert_eq!(tasks.len(), 1, "{spans:#?}");
    assert!(
        reaches(tasks[0], post),
        "the agent's task span descends from the POST"
    );
    let ticks = named("agent", "tick");
    assert_eq!(ticks.len(), 2, "{spans:#?}");
    let calls = named("agent", "model_call");
    assert_eq!(calls.len(), 3, "two ticks and the synthesis: {spans:#?}");
    for call in &calls {
        assert!(
            reaches(call, tasks[0]),
            "a model call is a child of the task"
        );
    }
    // The model server was handed the trace too, each call as the parent of what it does.
    let sent: Vec<String> = fleet
        .model
        .requests_for(&marker)
        .into_iter()
        .filter_map(|r| r.traceparent)
        .collect();
    assert_eq!(sent.len(), 3, "every model call carries a traceparent");
    for traceparent in &sent {
        let parent = TraceParent::parse(traceparent).unwrap();
        assert_eq!(parent.trace_id().to_string(), trace_id);
        assert!(
            calls
                .iter()
                .any(|c| c.span_id == parent.parent_id().to_string()),
            "{traceparent} names a model_call span"
        );
    }
}
