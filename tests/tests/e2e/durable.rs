//! Durable ticks across real agent processes: a task whose agent is killed or drained mid-task resumes on
//! another agent after its last stored tick, with what it had gathered, charged for the ticks it ran.

use crate::helpers::{AgentProcess, Fleet, spawn_gateway};
use euglena_tests::model::{Reply, prompt_text};
use serde_json::{Value, json};
use std::time::Duration;

const ALICE: &str = "alice";
/// Long enough that the first agent is still waiting on this tick when it is stopped.
const STALL: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);

fn think(tick: u32) -> Reply {
    Reply::action(
        "THINK",
        "",
        json!({"history_update": format!("tick {tick}"), "deliverable": format!("d{tick}")}),
    )
}

/// Ticks 1 and 2 answer at once; tick 3 stalls the first time it is asked; the second ask (on the
/// resuming agent) answers, tick 4 too, tick 5 exits, then the synthesis.
fn stall_at_tick_three(fleet: &Fleet, marker: &str) {
    fleet.model.script(
        marker,
        vec![
            think(1),
            think(2),
            Reply::Delayed(STALL, Box::new(think(3))),
            think(3),
            think(4),
            Reply::action("EXIT", "", json!({"history_update": "tick 5"})),
            Reply::synthesis("resumed and finished", &[]),
        ],
    )
}

/// Polls the task every 20 ms until it ends; returns every `tick` seen, in order, and the final body.
fn poll_ticks(fleet: &Fleet, id: &str) -> tokio::task::JoinHandle<(Vec<u64>, Value)> {
    let client = fleet.client.clone();
    let url = format!("{}/tasks/{id}", fleet.gateway);
    let token = fleet.token(ALICE);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let body: Value = client
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            seen.push(body["tick"].as_u64().unwrap());
            if ["completed", "failed", "cancelled"].contains(&body["status"].as_str().unwrap()) {
                return (seen, body);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn wait_for_calls(fleet: &Fleet, marker: &str, calls: usize, agent: &AgentProcess) {
    let started = tokio::time::Instant::now();
    while fleet.model.requests_for(marker).len() < calls {
        assert!(
            started.elapsed() < WAIT,
            "the model saw {} calls, not {calls}; agent log:\n{}",
            fleet.model.requests_for(marker).len(),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What both ways of losing the first agent must leave: a completed task with every deliverable once,
/// the stalled tick asked twice and no stored tick asked again, ticks that never went backwards, and a
/// charge of exactly the ticks run.
async fn assert_resumed(
    fleet: &Fleet,
    marker: &str,
    poller: tokio::task::JoinHandle<(Vec<u64>, Value)>,
) {
    let (ticks, body) = tokio::time::timeout(WAIT, poller)
        .await
        .expect("the task ends")
        .unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    let result = &body["result"];
    assert_eq!(result["ticks_used"], 5, "{body}");
    assert_eq!(result["deliverables"], json!(["d1", "d2", "d3", "d4"]));
    assert_eq!(result["summary"], "resumed and finished");
    assert!(
        ticks.windows(2).all(|pair| pair[0] <= pair[1]),
        "a poller saw tick go backwards: {ticks:?}"
    );
    assert_eq!(
        fleet.model.requests_for(marker).len(),
        5 + 1 + 1,
        "five ticks, the stalled one asked twice, one synthesis"
    );
    let asked = fleet.model.requests_for(marker);
    assert_eq!(
        prompt_text(&asked[3].body),
        prompt_text(&asked[2].body),
        "tick 3 is asked again with the same history, notes, deliverables and observation"
    );
    assert_eq!(
        body["usage"]["model_calls"], 6,
        "the abandoned call is not counted: {body}"
    );
    assert_eq!(
        fleet.quota_used(ALICE).await,
        5,
        "charged the five ticks run"
    );
}

#[tokio::test]
async fn a_task_whose_agent_is_killed_mid_tick_resumes_on_another_agent_after_its_last_stored_tick()
{
    let fleet = spawn_gateway(&[("MEMORY_ENABLED", "false")]).await;
    let marker = "durable-kill9";
    stall_at_tick_three(&fleet, marker);
    let mut first = fleet.spawn_agent("kill9-first", &[]);
    let id = fleet
        .submit(ALICE, &format!("{marker}: research"), 10)
        .await;
    let poller = poll_ticks(&fleet, &id);
    wait_for_calls(&fleet, marker, 3, &first).await;

    first.kill9().await;
    let mut second = fleet.spawn_agent("kill9-second", &[]);

    assert_resumed(&fleet, marker, poller).await;
    let logs = second.logs();
    assert!(
        logs.contains("task resumed") && logs.contains(r#""after_tick":2"#),
        "the second agent logs where it resumed: {logs}"
    );
    second.kill9().await;
}

#[tokio::test]
async fn a_task_drained_past_its_agents_grace_period_resumes_on_another_agent() {
    let fleet = spawn_gateway(&[("MEMORY_ENABLED", "false")]).await;
    let marker = "durable-sigterm";
    stall_at_tick_three(&fleet, marker);
    let mut first = fleet.spawn_agent("sigterm-first", &[("SHUTDOWN_GRACE_SECONDS", "1")]);
    let id = fleet
        .submit(ALICE, &format!("{marker}: research"), 10)
        .await;
    let poller = poll_ticks(&fleet, &id);
    wait_for_calls(&fleet, marker, 3, &first).await;

    first.sigterm();
    let exit = first.wait_exit(Duration::from_secs(20)).await;
    assert!(
        exit.success(),
        "a drained agent exits 0: {exit:?}\n{}",
        first.logs()
    );
    let mut second = fleet.spawn_agent("sigterm-second", &[]);

    assert_resumed(&fleet, marker, poller).await;
    second.kill9().await;
}

#[tokio::test]
async fn a_task_whose_agent_dies_during_the_synthesis_resumes_straight_into_the_synthesis() {
    let fleet = spawn_gateway(&[("MEMORY_ENABLED", "false")]).await;
    let marker = "durable-synthesis";
    fleet.model.script(
        marker,
        vec![
            think(1),
            Reply::action("EXIT", "", json!({"history_update": "tick 2"})),
            Reply::Delayed(STALL, Box::new(Reply::synthesis("never seen", &[]))),
            Reply::synthesis("written on resume", &[]),
        ],
    );
    let mut first = fleet.spawn_agent("synthesis-first", &[]);
    let id = fleet
        .submit(ALICE, &format!("{marker}: research"), 10)
        .await;
    wait_for_calls(&fleet, marker, 3, &first).await;

    first.kill9().await;
    let mut second = fleet.spawn_agent("synthesis-second", &[]);
    let body = fleet.wait_terminal(ALICE, &id, WAIT).await;

    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["result"]["summary"], "written on resume");
    assert_eq!(body["result"]["ticks_used"], 2);
    assert_eq!(body["result"]["deliverables"], json!(["d1"]));
    assert_eq!(
        fleet.model.requests_for(marker).len(),
        4,
        "two ticks and the synthesis asked twice; no tick after EXIT"
    );
    assert_eq!(fleet.quota_used(ALICE).await, 2);
    second.kill9().await;
}
