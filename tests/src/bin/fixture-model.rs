//! `fixture-model`: the scripted stand-in for a language model that `scripts/run-local.sh` uses when no
//! model is configured. It is NOT an LLM: every task gets the same canned answers (two THINK ticks, then
//! EXIT, then a synthesis that says it came from the fixture), so the pipeline can be seen working offline.
//!
//! Usage: `fixture-model [PORT] [--bench | --footprint PAGES_URL]` (default 8099); prints its
//! `MODEL_API_URL`. With `--bench` it answers at once with four THINK ticks that each write and query memory
//! (texts never seen before), then EXIT (for `bench/fleet.sh`). With `--footprint` it paces every answer
//! like a real model (1 to 3 s) and walks each task through four VISITs of `PAGES_URL/news/{n}` (the pages
//! of `fixture-pages`), each followed by a THINK that writes and queries memory, then EXIT (for
//! `bench/footprint.sh`); a task whose mandate contains [`WARM_UP`] walks the same script unpaced.
//!
//! As in every default script, the synthesis call is told from the tick calls only by its position: it is
//! the task's next call after EXIT (the script keeps one position per task).

use euglena_tests::model::{FixtureModel, Reply, prompt_text};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Each answer waits this long, so a person watching the demo sees the ticks go by.
const THINKING_TIME: Duration = Duration::from_millis(700);

/// In `--footprint` mode, a mandate containing this gets its answers at once (to warm an agent up).
const WARM_UP: &str = "footprint warm-up";

/// In `--footprint` mode, the pages a task visits: that many VISIT/THINK pairs before EXIT.
const FOOTPRINT_VISITS: usize = 4;

/// What the process was asked to do.
enum Mode {
    Demo,
    Bench,
    Footprint { pages: String },
}

/// Reads `[PORT] [--bench | --footprint PAGES_URL]`.
fn arguments() -> anyhow::Result<(u16, Mode)> {
    let mut port = 8099;
    let mut mode = Mode::Demo;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => mode = Mode::Bench,
            "--footprint" => {
                let pages = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--footprint needs the pages' base URL"))?;
                mode = Mode::Footprint {
                    pages: pages.trim_end_matches('/').to_owned(),
                };
            }
            other => port = other.parse()?,
        }
    }
    Ok((port, mode))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (port, mode) = arguments()?;
    let model = FixtureModel::start(port).await?;
    if let Mode::Footprint { pages } = &mode {
        model.default_script(footprint_script(pages));
        println!(
            "fixture-model --footprint (pages at {pages}) at MODEL_API_URL={}",
            model.base_url
        );
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    if matches!(mode, Mode::Bench) {
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

/// The `--footprint` script: (VISIT, THINK with memory) x [`FOOTPRINT_VISITS`], EXIT, the synthesis.
fn footprint_script(pages: &str) -> Vec<Reply> {
    let visit = || {
        let pages = pages.to_owned();
        Reply::Computed(Arc::new(move |request| {
            // Tasks spread over 64 pages, so the pages differ as a reader's would.
            static VISITS: AtomicU64 = AtomicU64::new(0);
            let n = VISITS.fetch_add(1, Ordering::Relaxed) % 64;
            paced(
                request,
                Reply::action("VISIT", &format!("{pages}/news/{n}"), json!({})),
            )
        }))
    };
    let think = || {
        Reply::Computed(Arc::new(|request| {
            static TEXTS: AtomicU64 = AtomicU64::new(0);
            let n = TEXTS.fetch_add(1, Ordering::Relaxed);
            paced(
                request,
                Reply::action(
                    "THINK",
                    "",
                    json!({"memory_write": [format!("footprint note {n}: what the last page reported")],
                           "memory_query": [format!("which pages reported on note {n}?")]}),
                ),
            )
        }))
    };
    let mut script = Vec::new();
    for _ in 0..FOOTPRINT_VISITS {
        script.push(visit());
        script.push(think());
    }
    let exit = Reply::action("EXIT", "", json!({"deliverable": "footprint deliverable"}));
    let synthesis = Reply::synthesis(
        "footprint run by the fixture model",
        &["footprint deliverable"],
    );
    script.push(Reply::Computed(Arc::new(move |r| paced(r, exit.clone()))));
    script.push(Reply::Computed(Arc::new(move |r| {
        paced(r, synthesis.clone())
    })));
    script
}

/// `reply` after a real model's latency: 1 to 3 s, spread by a counter (deterministic, mean 2 s); at once
/// for a warm-up task.
fn paced(request: &serde_json::Value, reply: Reply) -> Reply {
    static ANSWERS: AtomicU64 = AtomicU64::new(0);
    if prompt_text(request).contains(WARM_UP) {
        return reply;
    }
    let n = ANSWERS.fetch_add(1, Ordering::Relaxed);
    let delay = Duration::from_millis(1_000 + n * 769 % 2_001);
    Reply::Delayed(delay, Box::new(reply))
}
