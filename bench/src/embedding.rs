//! Embedding benchmark: what one memory write or query costs the agent, per call of
//! `agent::embedding::Embedder` (all-MiniLM-L6-v2 on the CPU, one thread).
//!
//! Texts are made unique per call (a counter inside the sentence, same token count), so the model runs on
//! each, except in the last row, which measures a text served from the embedder's cache.
//!
//!     cargo run --release -p bench --bin embedding
//!
//! (The dev profile builds the model's crates optimised too, so `cargo run -p bench --bin embedding` gives
//! nearly the same figures without a release build.)

use agent::embedding::Embedder;
use std::path::PathBuf;
use std::time::Instant;

const CALLS: usize = 200;

/// The texts of call `i` of one benchmark row.
type Texts = fn(usize) -> Vec<String>;

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q) as usize]
}

/// p50 and p99, in milliseconds, of `CALLS` calls of `embed(i)`, after a warm-up.
fn time(embedder: &Embedder, texts: impl Fn(usize) -> Vec<String>) -> anyhow::Result<(f64, f64)> {
    for i in 0..10 {
        embedder.embed_blocking(&texts(CALLS + i))?;
    }
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let batch = texts(i);
        let started = Instant::now();
        embedder.embed_blocking(&batch)?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok((
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    ))
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("EMBEDDING_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    let embedder = Embedder::load_blocking(&dir)?;
    println!(
        "all-MiniLM-L6-v2 on one thread of {} cores, {} build; {CALLS} calls each",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    println!("{:<34} {:>10} {:>10}", "input", "p50 ms", "p99 ms");
    let rows: [(&str, Texts); 3] = [
        ("1 short text (8 tokens)", |i| {
            vec![format!("benchmark note number {i}")]
        }),
        ("write + query (2 x 8 tokens)", |i| {
            vec![
                format!("benchmark note number {i}"),
                format!("which notes mention {i}?"),
            ]
        }),
        ("1 sentence (~40 tokens)", |i| {
            vec![format!(
                "The agent visited page {i} about the Roman empire and found that the capital moved to \
                 Constantinople in 330 AD, which it keeps for the final report."
            )]
        }),
    ];
    for (name, texts) in rows {
        let (p50, p99) = time(&embedder, texts)?;
        println!("{name:<34} {p50:>10.2} {p99:>10.2}");
    }
    let (p50, p99) = time(&embedder, |_| {
        vec!["which benchmark notes exist?".to_owned()]
    })?;
    println!(
        "{:<34} {p50:>10.3} {p99:>10.3}",
        "a text seen before (cache)"
    );
    Ok(())
}
