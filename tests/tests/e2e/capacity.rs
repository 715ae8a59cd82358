//! One agent process holding sixteen tasks that all visit pages: its browser stays within its tab limit,
//! what it cannot take stays in the queue, and every task completes once.

use std::collections::HashSet;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use euglena_tests::chromium::renderers_of;
use euglena_tests::model::Reply;
use serde_json::json;

use crate::helpers::{serve_pages, spawn_gateway};

const DEADLINE: Duration = Duration::from_secs(120);
const IN_HAND: usize = 16;
const TASKS: usize = 20;
const TABS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holding_sixteen_tasks_keeps_its_tab_limit_and_leaves_the_rest_queued() {
    let fleet = spawn_gateway(&[]).await;
    let pages = serve_pages(Router::new().route(
        "/heavy",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Html(
                "<body><script>const rows = []; for (let i = 0; i < 2000; i++) \
                 { const p = document.createElement('p'); p.textContent = 'row ' + i; rows.push(p); } \
                 document.body.append(...rows); document.body.innerText = 'heavy-read';</script></body>",
            )
        }),
    ))
    .await;
    let url = format!("{pages}/heavy");
    let slow = |reply: Reply| Reply::Delayed(Duration::from_millis(1_500), Box::new(reply));
    fleet.model.default_script(vec![
        slow(Reply::action("VISIT", &url, json!({}))),
        slow(Reply::action("EXIT", "", json!({"deliverable": "read"}))),
        Reply::synthesis("visited", &["read"]),
    ]);

    let mut ids = Vec::new();
    for i in 0..TASKS {
        let user = format!("user-{i}");
        let id = fleet.submit(&user, "visit the heavy page", 5).await;
        ids.push((user, id));
    }
    let agent = fleet.spawn_agent(
        "capacity",
        &[("AGENT_CONCURRENCY", "16"), ("BROWSER_MAX_TABS", "2")],
    );

    let (mut most_running, mut queued_while_full, mut most_renderers) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut running = 0;
        let mut terminal = 0;
        for (user, id) in &ids {
            let (_, task) = fleet
                .call(reqwest::Method::GET, user, &format!("/tasks/{id}"))
                .await;
            match task["status"].as_str() {
                Some("in_progress") => running += 1,
                Some("completed" | "failed" | "cancelled") => terminal += 1,
                _ => {}
            }
        }
        let queued = fleet.queued_messages().await;
        most_running = most_running.max(running);
        // The statuses are read one after another, so a snapshot can catch a task that just ended beside
        // the one that took its slot: hence "at least".
        if running >= IN_HAND {
            queued_while_full = queued_while_full.max(queued);
        }
        most_renderers = most_renderers.max(renderers_of(agent.pid()).len());
        if terminal == TASKS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{terminal} of {TASKS} tasks ended in time; agent log:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut results = HashSet::new();
    for (user, id) in &ids {
        let task = fleet.wait_terminal(user, id, DEADLINE).await;
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(
            fleet.stored_field(id, "attempts").await.as_deref(),
            Some("1")
        );
        results.insert(task["result"]["deliverables"].to_string());
    }
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        most_running >= IN_HAND,
        "the agent never held {IN_HAND} tasks (at most {most_running})"
    );
    assert_eq!(
        queued_while_full,
        (TASKS - IN_HAND) as u32,
        "while the agent held {IN_HAND} tasks the rest should wait in the queue"
    );
    // Two tab slots: a renderer per open tab, one per tab still swapping from its blank page, one per
    // closed tab still exiting, and Chromium's spare; sixteen tabs at once would be sixteen or more.
    assert!(
        most_renderers <= 4 * TABS + 3,
        "{most_renderers} renderers at once with {TABS} tabs allowed"
    );
    let visits = agent.logs().matches("\"visited\"").count();
    assert_eq!(visits, TASKS, "one visit per task");
}
