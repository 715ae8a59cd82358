//! `checkpoint`: what the per-tick checkpoint costs. Builds the working state of a task after `--ticks`
//! ticks (history, notes, recalled memory, deliverables, sources and a search observation of the sizes
//! the prompt budgets allow), then stores `--rounds` tick updates through the same transition script the
//! agent uses, alternating with and without the checkpoint, and prints the checkpoint's size and the p50
//! and p99 of each (encoding included), against the local Redis.

use agent::mind::TaskState;
use agent::worker::Checkpoint;
use clap::Parser;
use hdrhistogram::Histogram;
use shared::api::Usage;
use shared::store::{Transition, transition};
use shared::task::{TaskRecord, field};
use shared::{Keys, Status};
use std::time::Instant;

#[derive(Debug, Parser)]
struct Options {
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    url: String,
    /// Ticks of history in the state.
    #[arg(long, default_value_t = 20)]
    ticks: usize,
    /// Tick updates of each kind.
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
}

fn text(label: &str, n: usize, chars: usize) -> String {
    let mut line = format!("{label} {n}: ");
    while line.len() < chars {
        line.push_str("the quick brown fox jumps over the lazy dog ");
    }
    line.truncate(chars);
    line
}

/// The state after `ticks` ticks, each part at about the size its prompt budget keeps.
fn state(ticks: usize) -> TaskState {
    TaskState {
        history: (0..ticks).map(|n| text("did", n, 160)).collect(),
        notes: (0..ticks / 2).map(|n| text("note", n, 200)).collect(),
        memories: (0..5).map(|n| text("memory", n, 300)).collect(),
        deliverables: (0..3).map(|n| text("deliverable", n, 1_500)).collect(),
        sources: (0..ticks / 2)
            .map(|n| format!("https://example.org/articles/{n}/a-page-the-agent-visited"))
            .collect(),
        observation: Some(text("search results", 0, 6_000)),
        usable_answers: u32::try_from(ticks).unwrap_or(u32::MAX),
        last_parse_error: None,
        usage: Usage::default(),
        exited: false,
    }
}

fn checkpoint(state: &TaskState, tick: u32) -> String {
    Checkpoint {
        version: 1,
        tick,
        usage: state.usage,
        deliverables: state.deliverables.clone(),
        sources: state.sources.clone(),
        state: Some(serde_json::to_value(state).expect("a state serialises")),
        run_ms: 12_345,
    }
    .encode()
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let client = redis::Client::open(options.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys = Keys::new(format!(
        "bench:checkpoint:{}:",
        uuid::Uuid::new_v4().simple()
    ));
    let id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    let record = TaskRecord::new_pending("bench", "mandate", 1_000_000, "q", "a", now);
    redis::cmd("HSET")
        .arg(keys.task(id))
        .arg(record.to_fields())
        .query_async::<()>(&mut conn)
        .await?;
    let state = state(options.ticks);
    let size = checkpoint(&state, 1).len();

    let mut with = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut without = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for round in 0..options.rounds {
        let tick = u32::try_from(round + 1)?;
        let base = || {
            Transition::to(Status::InProgress)
                .with(field::TICK, tick.to_string())
                .with(field::USAGE, r#"{"model_calls":1}"#)
        };
        let started = Instant::now();
        transition(&mut conn, &keys, id, &base(), chrono::Utc::now(), 3_600).await?;
        without.saturating_record(micros(started));
        let started = Instant::now();
        let change = base().checkpointing(checkpoint(&state, tick));
        transition(&mut conn, &keys, id, &change, chrono::Utc::now(), 3_600).await?;
        with.saturating_record(micros(started));
    }
    let keys_left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(&mut conn)
        .await?;
    for key in keys_left {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await?;
    }

    println!(
        "checkpoint after {} ticks: {size} bytes ({:.1} KB)",
        options.ticks,
        size as f64 / 1024.0
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "tick update without checkpoint: p50 {:.3} ms  p99 {:.3} ms",
        ms(&without, 0.5),
        ms(&without, 0.99)
    );
    println!(
        "tick update with checkpoint:    p50 {:.3} ms  p99 {:.3} ms",
        ms(&with, 0.5),
        ms(&with, 0.99)
    );
    println!(
        "added by the checkpoint: p50 {:.3} ms",
        ms(&with, 0.5) - ms(&without, 0.5)
    );
    Ok(())
}
