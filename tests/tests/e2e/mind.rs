//! The tick loop through the whole fleet.

use crate::helpers::{serve_pages, spawn_fleet};
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use euglena_tests::model::{Reply, ReplyFn, prompt_text};
use euglena_tests::search::Hit;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(90);

/// The lines of a prompt section (`## title` up to the next `##`).
fn section(prompt: &str, title: &str) -> Vec<String> {
    prompt
        .split("\n## ")
        .find(|part| part.starts_with(title))
        .map(|part| {
            part.lines()
                .skip(1)
                .filter_map(|l| l.strip_prefix("- "))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_searches_visits_a_javascript_page_remembers_thinks_and_exits() {
    let fleet = spawn_fleet(&[]).await;
    let nonce = Uuid::new_v4().simple().to_string();
    let page = format!(
        "<html><head><title>fixture</title></head><body>loading...<script>\
         document.body.innerText = 'rendered-' + (6 * 7) + '-{nonce}';</script></body></html>"
    );
    let pages =
        serve_pages(Router::new().route("/js", get(move || async move { Html(page) }))).await;
    let page_url = format!("{pages}/js");
    fleet.search.set_hits(vec![Hit {
        title: "The page that renders".into(),
        url: page_url.clone(),
        snippet: "its text only exists after JavaScript runs".into(),
    }]);
    let marker = format!("e2e-{}", Uuid::new_v4());
    let rendered = format!("rendered-42-{nonce}");
    let echo_page = {
        let rendered = rendered.clone();
        Arc::new(move |request: &Value| {
            let prompt = prompt_text(request);
            let seen = if prompt.contains(&rendered) {
                rendered.clone()
            } else {
                "page text not seen".into()
            };
            Reply::action(
                "THINK",
                "",
                json!({
                    "memory_query": ["What is the secret colour?"],
                    "deliverable": format!("the page says {seen}"),
                }),
            )
        })
    };
    let echo_memory = Arc::new(|request: &Value| {
        let recalled = section(&prompt_text(request), "Recalled memory");
        let colour = if recalled.iter().any(|m| m.contains("ultramarine")) {
            "ultramarine"
        } else {
            "not recalled"
        };
        Reply::action(
            "EXIT",
            "",
            json!({"deliverable": format!("the secret colour is {colour}")}),
        )
    });
    let synthesise = Arc::new(|request: &Value| {
        let deliverables = section(&prompt_text(request), "Deliverables");
        Reply::Json(
            json!({"summary": "searched, visited, remembered", "deliverables": deliverables}),
        )
    });
    fleet.model.script(
        &marker,
        vec![
            Reply::action(
                "SEARCH",
                "page that renders",
                json!({"memory_write": ["The secret colour is ultramarine."]}),
            ),
            Reply::action("VISIT", &page_url, json!({})),
            Reply::Computed(echo_page),
            Reply::Computed(echo_memory),
            Reply::Computed(synthesise),
        ],
    );

    let id = fleet
        .submit("alice", &format!("Find the rendered text ({marker})"), 10)
        .await;
    let task = fleet.wait_terminal("alice", &id, DEADLINE).await;

    assert_eq!(task["status"], "completed", "{task}");
    let result = &task["result"];
    assert_eq!(result["success"], true);
    assert_eq!(result["ticks_used"], 4);
    assert_eq!(result["sources"], json!([page_url]));
    let deliverables = result["deliverables"].to_string();
    assert!(
        deliverables.contains(&rendered),
        "only the JavaScript rendering produces it: {deliverables}"
    );
    assert!(
        deliverables.contains("the secret colour is ultramarine"),
        "memory round trip: {deliverables}"
    );
    assert_eq!(fleet.search.queries(), vec!["page that renders"]);
    assert_eq!(
        fleet.model.requests_for(&marker).len(),
        5,
        "four ticks and one synthesis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_answer_costs_a_tick_and_is_fed_back_to_the_model() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("e2e-{}", Uuid::new_v4());
    let saw_feedback = Arc::new(|request: &Value| {
        let fed_back = prompt_text(request).contains("Your last answer could not be used");
        Reply::action(
            "EXIT",
            "",
            json!({"deliverable": format!("feedback seen: {fed_back}")}),
        )
    });
    fleet.model.script(
        &marker,
        vec![
            Reply::Text("I am not JSON at all".into()),
            Reply::Computed(saw_feedback),
            Reply::synthesis("done", &[]),
        ],
    );

    let id = fleet.submit("alice", &format!("m {marker}"), 5).await;
    let task = fleet.wait_terminal("alice", &id, DEADLINE).await;

    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["ticks_used"], 2);
    assert_eq!(
        task["result"]["deliverables"],
        json!(["feedback seen: true"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_only_answers_garbage_fails_the_task_with_a_clear_error() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("e2e-{}", Uuid::new_v4());
    fleet
        .model
        .script(&marker, vec![Reply::Text("```\nnot json\n```".into())]);

    let id = fleet.submit("alice", &format!("m {marker}"), 3).await;
    let task = fleet.wait_terminal("alice", &id, DEADLINE).await;

    assert_eq!(task["status"], "failed", "{task}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("no usable answer in 3 ticks"), "{error}");
    assert!(fleet.agent_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_server_fails_the_task_after_bounded_retries_and_the_worker_goes_on() {
    let fleet = spawn_fleet(&[("MODEL_MAX_RETRIES", "1"), ("MAX_DELIVERIES", "2")]).await;
    let broken = format!("e2e-{}", Uuid::new_v4());
    fleet.model.script(&broken, vec![Reply::Status(500)]);
    let healthy = format!("e2e-{}", Uuid::new_v4());
    fleet.model.script(
        &healthy,
        vec![
            Reply::action("EXIT", "", json!({})),
            Reply::synthesis("ok", &["d"]),
        ],
    );

    let id = fleet.submit("alice", &format!("m {broken}"), 3).await;
    let task = fleet.wait_terminal("alice", &id, DEADLINE).await;

    assert_eq!(task["status"], "failed", "{task}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("model server is unavailable: HTTP 500"),
        "{error}"
    );
    let calls = fleet.model.requests_for(&broken).len();
    assert!(
        (2..=4).contains(&calls),
        "bounded: 2 attempts per delivery, at most 2 deliveries, got {calls}"
    );
    assert!(fleet.agent_alive());
    let next = fleet.submit("alice", &format!("m {healthy}"), 3).await;
    assert_eq!(
        fleet.wait_terminal("alice", &next, DEADLINE).await["status"],
        "completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_answers_times_out_instead_of_hanging_the_task() {
    let fleet = spawn_fleet(&[
        ("MODEL_TIMEOUT_SECONDS", "0.3"),
        ("MODEL_MAX_RETRIES", "0"),
        ("MAX_DELIVERIES", "1"),
    ])
    .await;
    let marker = format!("e2e-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![Reply::Delayed(
            Duration::from_secs(30),
            Box::new(Reply::action("EXIT", "", json!({}))),
        )],
    );

    let id = fleet.submit("alice", &format!("m {marker}"), 3).await;
    let task = fleet
        .wait_terminal("alice", &id, Duration::from_secs(20))
        .await;

    assert_eq!(task["status"], "failed", "{task}");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_tick_task_with_long_observations_never_sends_a_prompt_over_the_models_context() {
    const CONTEXT: usize = 4_000;
    const ANSWER: usize = 600;
    let fleet = spawn_fleet(&[
        ("MODEL_CONTEXT_TOKENS", "4000"),
        ("MODEL_MAX_TOKENS", "600"),
        ("MEMORY_ENABLED", "false"),
    ])
    .await;
    fleet.search.set_hits(
        (0..20)
            .map(|n| Hit {
                title: format!("result {n}"),
                url: format!("https://example.org/{n}"),
                snippet: "a long snippet ".repeat(30),
            })
            .collect(),
    );
    let marker = format!("long-{}", Uuid::new_v4());
    // Each tick searches, adds a long history line and note, and every tenth a deliverable.
    let tick: ReplyFn = Arc::new(|request: &Value| {
        let prompt = prompt_text(request);
        let tick: u32 = prompt
            .split("Tick ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Reply::action(
            "SEARCH",
            &format!("query {tick}"),
            json!({
                "history_update": format!("tick {tick:03} {}", "h".repeat(300)),
                "note_update": format!("note {tick:03} {}", "n".repeat(200)),
                "deliverable": tick.is_multiple_of(10).then(|| format!("deliverable {tick:03} {}", "d".repeat(200))),
            }),
        )
    });
    let mut replies = vec![Reply::Computed(tick); 100];
    replies.push(Reply::synthesis("a long task", &[]));
    fleet.model.script(&marker, replies);

    let id = fleet
        .submit("alice", &format!("{marker}: keep going"), 100)
        .await;
    let task = fleet
        .wait_terminal("alice", &id, Duration::from_secs(240))
        .await;

    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["ticks_used"], 100);
    let requests = fleet.model.requests_for(&marker);
    assert_eq!(requests.len(), 101, "100 ticks and the synthesis");
    for (n, request) in requests.iter().enumerate() {
        let tokens: usize = request.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().chars().count().div_ceil(4))
            .sum();
        assert!(
            tokens <= CONTEXT - ANSWER,
            "request {n} has {tokens} prompt tokens, over {}",
            CONTEXT - ANSWER
        );
        assert_eq!(request.body["max_tokens"], ANSWER, "request {n}");
    }
    let last_tick = prompt_text(&requests[99].body);
    assert!(
        last_tick.contains("tick 099") && !last_tick.contains("tick 001"),
        "the oldest history went first"
    );
    assert!(last_tick.contains("older entries omitted"));
    assert!(
        last_tick.contains("note 099") && last_tick.contains("deliverable 090"),
        "the newest notes and deliverables stay"
    );
    assert!(
        last_tick.contains("a long snippet"),
        "the observation is shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_visit_tells_the_model_why_without_the_address_the_host_resolved_to() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("e2e-{}", Uuid::new_v4());
    // `localhost` is not on the fleet's allow-list (only `127.0.0.1` is), and resolves to loopback.
    fleet.model.script(
        &marker,
        vec![
            Reply::action("VISIT", "http://localhost:9/admin", json!({})),
            Reply::action("EXIT", "", json!({"deliverable": "gave up"})),
            Reply::synthesis("done", &["gave up"]),
        ],
    );

    let id = fleet.submit("alice", &format!("probe {marker}"), 5).await;
    let task = fleet.wait_terminal("alice", &id, DEADLINE).await;
    assert_eq!(task["status"], "completed", "{task}");

    let requests = fleet.model.requests_for(&marker);
    let told = prompt_text(&requests[1].body);
    assert!(
        told.contains("VISIT refused: localhost: it is not a public address"),
        "the model is told the URL was refused and why: {told}"
    );
    for internal in ["127.0.0.1", "::1"] {
        assert!(
            !told.contains(internal),
            "the model is not told the resolved address ({internal}): {told}"
        );
    }
}
