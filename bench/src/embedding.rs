//! Embedding benchmark: what one memory write or query costs the agent, per call of
//! `agent::embedding::Embedder` (all-MiniLM-L6-v2 on the CPU, one thread), then the forward pass alone
//! (`minilm::Model`, no tokenizer, no cache) for token sequences of the lengths memory texts have.
//!
//! Texts are made unique per call (a counter inside the sentence), so the model runs on each, except in the
//! row that measures a text served from the embedder's cache.
//!
//!     cargo run --release -p bench --bin embedding [-- --cold]
//!
//! `--cold` reads 64 MB between calls (untimed) so that each starts with the weights out of the caches, as in
//! an agent, where other work runs between two ticks.
//!
//! (The dev profile builds the model's crates optimised too, so `cargo run -p bench --bin embedding` gives
//! nearly the same figures without a release build.)

use agent::embedding::Embedder;
use std::path::PathBuf;
use std::time::Instant;

const CALLS: usize = 300;

/// The texts of call `i` of one benchmark row.
type Texts = fn(usize) -> Vec<String>;

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q) as usize]
}

/// Whether each call starts with the model's weights out of the CPU caches, as in an agent, where other
/// work runs between two ticks (`--cold`): a 64 MB buffer is read before every call, untimed.
static COLD: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();

/// Prints the p50 and p99, in milliseconds, of `CALLS` calls of `call(i)`, after ten calls of warm-up.
fn row(name: &str, mut call: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS + 10 {
        if let Some(evict) = COLD.get() {
            std::hint::black_box(evict.iter().fold(0u64, |a, b| a.wrapping_add(*b)));
        }
        let started = Instant::now();
        call(i)?;
        if i >= 10 {
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);
    println!("{name:<36} {p50:>10.3} {p99:>10.3}");
    Ok(())
}

/// A sequence of `len` token ids (`[CLS]`, words, `[SEP]`), its words varied by `seed`.
fn sequence(len: usize, seed: usize) -> Vec<u32> {
    let mut ids = vec![101];
    ids.extend((0..len.saturating_sub(2)).map(|i| 2_000 + ((seed * 31 + i * 7) % 20_000) as u32));
    ids.push(102);
    ids
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("EMBEDDING_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    let cold = std::env::args().any(|a| a == "--cold");
    if cold {
        COLD.get_or_init(|| (0..8 << 20).collect());
    }
    let embedder = Embedder::load_blocking(&dir)?;
    println!(
        "all-MiniLM-L6-v2 on one thread of {} cores, {} build; {CALLS} calls each; caches {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if cold {
            "emptied before each call (--cold)"
        } else {
            "warm"
        },
    );
    println!(
        "{:<36} {:>10} {:>10}",
        "Embedder::embed", "p50 ms", "p99 ms"
    );
    let rows: [(&str, Texts); 3] = [
        // The fleet benchmark's memory write and query (tests/src/bin/fixture-model.rs --bench).
        ("a note (6-7 tokens)", |i| {
            vec![format!("benchmark note number {i}")]
        }),
        ("write + query (a note and a question)", |i| {
            vec![
                format!("benchmark note number {i}"),
                format!("which notes mention benchmark {i}?"),
            ]
        }),
        ("a sentence (~40 tokens)", |i| {
            vec![format!(
                "The agent visited page {i} about the Roman empire and found that the capital moved to \
                 Constantinople in 330 AD, which it keeps for the final report."
            )]
        }),
    ];
    for (name, texts) in rows {
        row(name, |i| {
            embedder.embed_blocking(&texts(i))?;
            Ok(())
        })?;
    }
    let seen = ["which benchmark notes exist?".to_owned()];
    row("a text seen before (cache)", |_| {
        embedder.embed_blocking(&seen)?;
        Ok(())
    })?;

    drop(embedder);
    let model = minilm::Model::load(&dir)?;
    println!(
        "{:<36} {:>10} {:>10}",
        "Model::embed (tokens)", "p50 ms", "p99 ms"
    );
    for lengths in [&[4][..], &[8], &[16], &[32], &[64], &[7, 9], &[7, 9, 12, 5]] {
        row(&format!("{lengths:?}"), |i| {
            let batch: Vec<Vec<u32>> = lengths.iter().map(|&n| sequence(n, i)).collect();
            let refs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
            std::hint::black_box(model.embed(&refs)?);
            Ok(())
        })?;
    }
    Ok(())
}
