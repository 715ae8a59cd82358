//! `fixture-model`: the scripted stand-in for a language model that `scripts/run-local.sh` uses when no
//! model is configured. It is NOT an LLM: every task gets the same canned answers (two THINK ticks, then
//! EXIT, then a synthesis that says it came from the fixture), so the pipeline can be seen working offline.
//!
//! Usage: `fixture-model [PORT] [--bench]` (default 8099); prints its `MODEL_API_URL`. With `--bench` it
//! answers at once with four THINK ticks that each write and query memory (texts never
//! seen before), then EXIT (for `bench/fleet.sh`).

use euglena_tests::model::{FixtureModel, Reply};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Each answer waits this long, so a person watching the demo sees the ticks go by.
const THINKING_TIME: Duration = Duration::from_millis(700);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let port = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(8099);
    let model = FixtureModel::start(port).await?;
    if bench {
        // Every memory text is new (a counter no two ticks share), so each THINK embeds two texts the
        // embedder has never seen: the benchmark measures the model, not the embedding cache.
        let think = |_: u32| {
            Reply::Computed(Arc::new(|_| {
                static TEXTS: AtomicU64 = AtomicU64::new(0);
                let n = TEXTS.fetch_add(1, Ordering::Relaxed);
                Reply::action(
                    "THINK",
                    "",
                    json!({"memory_write": [format!("benchmark note number {n}")],
                           "memory_query": [format!("which notes mention benchmark {n}?")]}),
                )
            }))
        };
        model.default_script(vec![
            think(1),
            think(2),
            think(3),
            think(4),
            Reply::action("EXIT", "", json!({"deliverable": "benchmark deliverable"})),
            Reply::synthesis(
                "benchmark run by the fixture model",
                &["benchmark deliverable"],
            ),
        ]);
        println!("fixture-model --bench at MODEL_API_URL={}", model.base_url);
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let slow = |reply: Reply| Reply::Delayed(THINKING_TIME, Box::new(reply));
    model.default_script(vec![
        slow(Reply::action(
            "THINK",
            "",
            json!({"thought": "fixture model: planning (scripted, not an LLM)"}),
        )),
        slow(Reply::action(
            "THINK",
            "",
            json!({"thought": "fixture model: still scripted", "note_update": "scripted note"}),
        )),
        slow(Reply::action(
            "EXIT",
            "",
            json!({"deliverable": "a scripted deliverable from the fixture model"}),
        )),
        Reply::synthesis(
            "This result was produced by the fixture model, a scripted stand-in for an LLM.",
            &["a scripted deliverable from the fixture model"],
        ),
    ]);
    println!(
        "fixture-model (scripted stand-in, not an LLM) at MODEL_API_URL={}",
        model.base_url
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
