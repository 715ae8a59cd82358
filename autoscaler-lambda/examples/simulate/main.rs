//! Replays a bursty arrival trace through a model fleet and prints, per scaling policy and agent
//! configuration, what 1,000 tasks cost on Fargate and how long tasks wait in the queue.
//!
//! ```text
//! cargo run -p autoscaler-lambda --example simulate --release -- \
//!     [--seed N] [--max-workers N] [--concurrency C] [--vcpu X] [--memory-gb X] [--scale-to-zero-after S]
//! cargo test -p autoscaler-lambda --examples
//! ```
//!
//! Defaults: seed 42, 11 workers at most, C = 8 tasks per agent on 1 vCPU / 3 GB (the ECS agent task). The table has a row for
//! the seed's policy at one task per agent (1 vCPU / 3 GB, `TARGET_MESSAGES_PER_WORKER=1`), ours at one task
//! per agent (same size and target), and ours at C = 2, 4, 8, 16 and the chosen C with
//! `TARGET_MESSAGES_PER_WORKER = C` on the chosen size, so the cost-versus-C curve shows, and ours at the chosen
//! C once more with scaling to zero off (`SCALE_TO_ZERO_AFTER_SECONDS=0`, default 900 s). A sweep value whose
//! tasks do not fit the chosen size runs on the smallest Fargate size with the same vCPU that holds them
//! (a note under the table says so); a chosen C that does not fit is refused with the figures, not run.
//!
//! The model, in one-second steps (`fleet.rs`):
//! - Arrivals (`trace.rs`): quiet (one task per ~5 min) for 20 min, a burst of 200 tasks within one minute, a
//!   trickle (one per ~2 min) for 70 min, a second burst of 80, a trickle (one per ~3 min) for an hour, then
//!   nothing; the run lasts 4 hours so every configuration is charged for the same span.
//! - Task durations: log-normal, median 3 min, sigma 0.7, clamped to 20 s..30 min, as they would run alone.
//!   Each task is a number of ticks: the model's wait per tick is 1-3 s of wall time (drawn per task), so a
//!   3-minute task has ~90 ticks at 2 s a tick.
//! - Concurrency: a worker holds up to C tasks at once (`AGENT_CONCURRENCY`, also the broker's prefetch). The
//!   queue hands a waiting task to a ready worker with a free slot, the least loaded first (close to the
//!   broker's round-robin over consumers with prefetch credit). A worker is busy while any slot is used.
//! - CPU, deliberately simple: each tick costs [`fleet::CPU_SECONDS_PER_TICK`] of agent CPU, so a task asks
//!   for ticks x CPU per tick / duration vCPU. When a worker's tasks together ask for more than its vCPU,
//!   every one of them slows by the same factor (processor sharing, the model wait included); nothing else
//!   (the agent at rest, Chromium, the runtime) takes CPU.
//! - Memory (`size.rs`): the agent at rest takes [`size::MEMORY_BASE_MB`] and each task in hand
//!   [`size::MEMORY_PER_TASK_MB`]; C tasks must fit in 90% of the task's memory, and the size must be one
//!   Fargate sells, or the configuration is refused.
//! - A new worker starts serving 60-120 s after ECS launches it (image pull, start-up).
//! - The sidecar samples every 10 s (`InFlight` is the tasks held, not the busy workers); CloudWatch keeps
//!   the per-minute maximum of each metric; the Lambda fires every 2 minutes and ECS applies the new desired
//!   count at once.
//! - Ours lets the fleet sleep: after `SCALE_TO_ZERO_AFTER_SECONDS` of metrics showing nothing ready and
//!   nothing in flight, its floor is zero instead of `MIN_WORKERS`; the next task scales it out again. The
//!   seed's policy keeps `MIN_WORKERS`.
//! - Scale-in stops workers that are still starting first, then idle ones. Under the seed's policy it then
//!   stops busy ones, those that started work last first (the best case for ECS without scale-in
//!   protection): their tasks go back to the queue (the broker redelivers them) and their work is lost. Our
//!   agents hold scale-in protection while any slot is used, so ECS never stops them busy; it stops them
//!   once idle if the service is still above its desired count.
//! - Cost (`cost.rs`): Fargate us-east-1 Linux/x86 on-demand list prices ([`cost::USD_PER_VCPU_HOUR`],
//!   [`cost::USD_PER_GB_HOUR`]); a worker is billed per second from launch to stop, at least a minute.
//!   Cost per 1,000 tasks is the run's cost over the tasks completed, times 1,000.
//! - Queue wait: from a task's first arrival to the start of the run that completes it (a redelivered task
//!   keeps its first arrival), reported as p50 and p95.
//!
//! Policies: the seed's (`ceil(ready / target)` from the latest point, clamped, applied at once in both
//! directions) and ours ([`autoscaler_lambda::Policy`], the code the Lambda runs). Deterministic: a seeded
//! xorshift generator, no other randomness.

mod cost;
mod fleet;
mod size;
mod trace;

use autoscaler_lambda::Policy;
use fleet::{Agent, CPU_SECONDS_PER_TICK, Kind, LAMBDA_EVERY, Outcome, simulate};
use size::{AgentSize, MEMORY_BASE_MB, MEMORY_PER_TASK_MB};
use std::process::ExitCode;

/// The seed's agent: one task at a time on 1 vCPU / 3 GB.
const SEED_SIZE: AgentSize = AgentSize {
    vcpu: 1.0,
    memory_gb: 3.0,
};

/// The concurrencies every run shows, besides one and the chosen one.
const SWEEP: [u32; 4] = [2, 4, 8, 16];

/// How much cheaper than the seed's policy ours must be at the chosen concurrency.
const TARGET_SAVING: f64 = 3.0;

/// One configuration of the table.
#[derive(Debug)]
struct Row {
    kind: Kind,
    concurrency: u32,
    size: AgentSize,
    chosen: bool,
    /// Whether ours may scale to zero (the seed's never does).
    sleeps: bool,
}

/// A configuration and what its run measured.
#[derive(Debug)]
struct Measured {
    row: Row,
    outcome: Outcome,
    usd_per_thousand: Option<f64>,
}

impl Measured {
    fn p95(&self) -> u64 {
        percentile(&self.outcome.waits, 95.0)
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn minutes(seconds: u64) -> String {
    format!("{:.1}", seconds as f64 / 60.0)
}

/// The value after `name` on the command line, or `default`.
fn arg<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("{name} takes a value"))?;
            value
                .parse()
                .map_err(|_| format!("{name} takes a number, got {value:?}"))
        }
    }
}

fn run(row: Row, policy: Policy, tasks: &[trace::Task], seed: u64) -> Measured {
    let policy = Policy {
        target_per_worker: row.concurrency,
        scale_to_zero_after_seconds: if row.sleeps {
            policy.scale_to_zero_after_seconds
        } else {
            0
        },
        ..policy
    };
    let agent = Agent {
        concurrency: row.concurrency,
        vcpu: row.size.vcpu,
        cpu_seconds_per_tick: CPU_SECONDS_PER_TICK,
    };
    let outcome = simulate(row.kind, policy, agent, tasks, seed);
    let total_usd = outcome.billed_worker_seconds as f64 * cost::usd_per_worker_second(row.size);
    let usd_per_thousand = cost::usd_per_thousand_tasks(total_usd, outcome.completed);
    Measured {
        row,
        outcome,
        usd_per_thousand,
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("simulate: {message}");
            ExitCode::from(2)
        }
    }
}

fn try_main() -> Result<(), String> {
    let seed: u64 = arg("--seed", 42)?;
    let chosen: u32 = arg("--concurrency", 8)?;
    let size = AgentSize {
        vcpu: arg("--vcpu", 1.0)?,
        memory_gb: arg("--memory-gb", 3.0)?,
    };
    let policy = Policy {
        target_per_worker: 1,
        min_workers: 1,
        max_workers: arg("--max-workers", 11)?,
        stabilization_seconds: 300,
        scale_to_zero_after_seconds: arg("--scale-to-zero-after", 900)?,
    };
    if chosen == 0 || policy.max_workers == 0 {
        return Err("--concurrency and --max-workers must be at least 1".to_owned());
    }
    size::check(size, chosen).map_err(|e| format!("refused, not simulated: {e}"))?;

    let mut rows = vec![
        Row {
            kind: Kind::Seed,
            concurrency: 1,
            size: SEED_SIZE,
            chosen: false,
            sleeps: false,
        },
        Row {
            kind: Kind::Ours,
            concurrency: 1,
            size: SEED_SIZE,
            chosen: chosen == 1,
            sleeps: true,
        },
    ];
    let mut sweep: Vec<u32> = SWEEP
        .into_iter()
        .chain([chosen])
        .filter(|&c| c > 1)
        .collect();
    sweep.sort_unstable();
    sweep.dedup();
    let mut notes = Vec::new();
    for concurrency in sweep {
        let fitting = match size::check(size, concurrency) {
            Ok(()) => Some(size),
            Err(refusal) => {
                let other = size::smallest_fitting(size.vcpu, concurrency);
                notes.push(match other {
                    Some(other) => format!("C={concurrency} runs on {other}: {refusal}."),
                    None => format!(
                        "C={concurrency} not simulated: {refusal}, and no larger memory fits."
                    ),
                });
                other
            }
        };
        if let Some(size) = fitting {
            rows.push(Row {
                kind: Kind::Ours,
                concurrency,
                size,
                chosen: concurrency == chosen,
                sleeps: true,
            });
        }
    }
    if policy.scale_to_zero_after_seconds > 0 {
        // What sleeping saves: the chosen configuration again, never below MIN_WORKERS.
        let awake = rows.iter().find(|row| row.chosen).map(|row| Row {
            kind: Kind::Ours,
            concurrency: row.concurrency,
            size: row.size,
            chosen: false,
            sleeps: false,
        });
        rows.extend(awake);
    }

    let tasks = trace::trace(seed);
    let measured: Vec<Measured> = rows
        .into_iter()
        .map(|row| run(row, policy, &tasks, seed))
        .collect();

    println!(
        "seed {seed}: {} tasks over 4 h; MIN_WORKERS={} MAX_WORKERS={} SCALE_IN_STABILIZATION_SECONDS={}; \
         Lambda every {LAMBDA_EVERY} s; worker start-up 60-120 s; {CPU_SECONDS_PER_TICK} CPU s per tick, \
         {MEMORY_BASE_MB} MB + {MEMORY_PER_TASK_MB} MB per task (measured by bench/footprint.sh); \
         ours: SCALE_TO_ZERO_AFTER_SECONDS={}",
        tasks.len(),
        policy.min_workers,
        policy.max_workers,
        policy.stabilization_seconds,
        policy.scale_to_zero_after_seconds,
    );
    println!();
    println!(
        "| policy | tasks/agent | agent size | target/worker | worker-minutes | cost per 1,000 tasks ($) | cost vs seed | p50 wait (min) | p95 wait (min) | busy workers stopped (work lost, min) | scale-ins below the busy count | peak CPU per agent (vCPU) | wakes from zero (longest wait, min) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let baseline = measured[0].usd_per_thousand;
    for m in &measured {
        let name = match (m.row.kind, m.row.chosen) {
            (Kind::Seed, _) => "seed's",
            (Kind::Ours, false) if m.row.sleeps => "ours",
            (Kind::Ours, false) => "ours, never below MIN_WORKERS",
            (Kind::Ours, true) => "ours, chosen",
        };
        let never_done = tasks.len() - m.outcome.completed;
        println!(
            "| {name}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {:.2} | {} ({}) |",
            if never_done > 0 {
                format!(" ({never_done} never done)")
            } else {
                String::new()
            },
            m.row.concurrency,
            m.row.size,
            m.row.concurrency,
            m.outcome.worker_seconds / 60,
            m.usd_per_thousand
                .map_or_else(|| "-".to_owned(), |usd| format!("{usd:.2}")),
            ratio(m.usd_per_thousand, baseline),
            minutes(percentile(&m.outcome.waits, 50.0)),
            minutes(m.p95()),
            m.outcome.busy_workers_stopped,
            m.outcome.lost_work_seconds / 60,
            m.outcome.decisions_below_busy,
            m.outcome.peak_cpu_demand,
            m.outcome.wakes,
            minutes(m.outcome.cold_waits.iter().copied().max().unwrap_or(0)),
        );
    }
    println!();
    println!(
        "seed's: ceil(ready / target), scale in at once, no scale-in protection. ours: ceil((ready + in \
         flight) / target), scale in to the 5-min max, agents protected while busy, floor 0 after the idle span."
    );
    for note in notes {
        println!("{note}");
    }
    println!("{}", verdict(&measured));
    Ok(())
}

/// `usd` as a share of the seed's policy's cost, with the saving when it is cheaper.
fn ratio(usd: Option<f64>, baseline: Option<f64>) -> String {
    match (usd, baseline) {
        (Some(usd), Some(baseline)) if usd < baseline => {
            format!("{:.2} ({:.2}x cheaper)", usd / baseline, baseline / usd)
        }
        (Some(usd), Some(baseline)) => format!("{:.2}", usd / baseline),
        _ => "-".to_owned(),
    }
}

/// Whether ours at the chosen C is [`TARGET_SAVING`] times cheaper than the seed's policy with a p95 wait
/// no worse and no busy worker stopped, and which rows meet that.
fn verdict(measured: &[Measured]) -> String {
    let seed = &measured[0];
    let meets = |m: &Measured| match (m.usd_per_thousand, seed.usd_per_thousand) {
        (Some(usd), Some(baseline)) => {
            baseline / usd >= TARGET_SAVING
                && m.p95() <= seed.p95()
                && m.outcome.busy_workers_stopped == 0
        }
        _ => false,
    };
    let passing: Vec<String> = measured
        .iter()
        .filter(|m| m.row.kind == Kind::Ours && meets(m))
        .map(|m| format!("C={} on {}", m.row.concurrency, m.row.size))
        .collect();
    let chosen = measured.iter().find(|m| m.row.chosen);
    let head = match chosen {
        Some(m) => format!(
            "target ({TARGET_SAVING}x cheaper per 1,000 tasks than the seed's, p95 wait no worse, no busy \
             worker stopped) at C={}: {}",
            m.row.concurrency,
            if meets(m) { "holds" } else { "does not hold" }
        ),
        None => "target: the chosen configuration did not run".to_owned(),
    };
    if passing.is_empty() {
        format!("{head}; no row meets it.")
    } else {
        format!("{head}; rows that meet it: {}.", passing.join(", "))
    }
}
