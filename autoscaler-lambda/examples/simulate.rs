//! Replays a bursty arrival trace through a model fleet under two scaling policies and prints a table.
//!
//! `cargo run -p autoscaler-lambda --example simulate -- [--seed N] [--max-workers N]`
//!
//! The model, in one-second steps:
//! - Arrivals: quiet (one task per ~5 min) for 20 min, a burst of 200 tasks within one minute, a trickle
//!   (one per ~2 min) for 70 min, a second burst of 80, a trickle (one per ~3 min) for an hour, then
//!   nothing; the run lasts 4 hours so both policies are charged for the same span.
//! - Task durations: log-normal, median 3 min, sigma 0.7, clamped to 20 s..30 min. One task per worker
//!   (`AGENT_CONCURRENCY=1`).
//! - A new worker starts serving 60-120 s after ECS launches it (image pull, start-up), billed from launch.
//! - The sidecar samples every 10 s; CloudWatch keeps the per-minute maximum of each metric; the Lambda
//!   fires every 2 minutes and ECS applies the new desired count at once.
//! - Scale-in stops workers that are still starting first, then idle ones, then busy ones (the best case
//!   for ECS without scale-in protection). A stopped busy worker's task goes back to the queue (the broker
//!   redelivers it) and its work so far is lost.
//!
//! Policies: the seed's (`ceil(ready / target)` from the latest point, clamped, applied at once in both
//! directions) and ours ([`autoscaler_lambda::Policy`], the code the Lambda runs). Deterministic: a seeded
//! xorshift generator, no other randomness.

use autoscaler_lambda::{Policy, Sample};
use std::collections::VecDeque;

/// xorshift64*: tiny, deterministic, good enough for a workload model.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -self.unit().ln() * mean
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

const HORIZON: u64 = 4 * 3600;
const LAMBDA_EVERY: u64 = 120;
const SAMPLE_EVERY: u64 = 10;

#[derive(Debug, Clone)]
struct Task {
    arrival: u64,
    duration: u64,
    waited: u64,
    enqueued_at: u64,
    done_at: Option<u64>,
}

#[derive(Debug)]
struct Worker {
    serving_from: u64,
    /// (task, started at, ends at)
    task: Option<(usize, u64, u64)>,
}

/// Arrival times and durations, the same for both policies.
fn trace(seed: u64) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    let mut arrivals = Vec::new();
    let poisson = |rng: &mut Rng, from: u64, to: u64, mean_gap: f64, out: &mut Vec<u64>| {
        let mut t = from as f64 + rng.exponential(mean_gap);
        while t < to as f64 {
            out.push(t as u64);
            t += rng.exponential(mean_gap);
        }
    };
    poisson(&mut rng, 0, 20 * 60, 300.0, &mut arrivals);
    arrivals.extend((0..200).map(|_| 20 * 60 + (rng.unit() * 60.0) as u64));
    poisson(&mut rng, 21 * 60, 90 * 60, 120.0, &mut arrivals);
    arrivals.extend((0..80).map(|_| 90 * 60 + (rng.unit() * 60.0) as u64));
    poisson(&mut rng, 91 * 60, 150 * 60, 180.0, &mut arrivals);
    arrivals.sort_unstable();
    arrivals
        .into_iter()
        .map(|arrival| {
            let duration = (180.0 * (0.7 * rng.normal()).exp()).clamp(20.0, 1800.0) as u64;
            Task {
                arrival,
                duration,
                waited: 0,
                enqueued_at: arrival,
                done_at: None,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Seed,
    Ours,
}

#[derive(Debug)]
struct Outcome {
    waits: Vec<u64>,
    worker_seconds: u64,
    scale_ins: u32,
    busy_scale_ins: u32,
    interrupted: u32,
    lost_work_seconds: u64,
    last_done: u64,
    undone: usize,
}

fn simulate(kind: Kind, policy: Policy, mut tasks: Vec<Task>, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed ^ 0xA5A5);
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut workers: Vec<Worker> = Vec::new();
    let mut desired = policy.min_workers;
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_arrival = 0;
    let (mut worker_seconds, mut scale_ins, mut busy_scale_ins, mut interrupted) = (0, 0, 0, 0);
    let mut lost_work_seconds = 0;

    for t in 0..HORIZON {
        while next_arrival < tasks.len() && tasks[next_arrival].arrival <= t {
            queue.push_back(next_arrival);
            next_arrival += 1;
        }
        for worker in &mut workers {
            if let Some((id, _, ends)) = worker.task
                && ends <= t
            {
                tasks[id].done_at = Some(t);
                worker.task = None;
            }
        }
        for worker in workers
            .iter_mut()
            .filter(|w| w.serving_from <= t && w.task.is_none())
        {
            let Some(id) = queue.pop_front() else { break };
            tasks[id].waited += t - tasks[id].enqueued_at;
            worker.task = Some((id, t, t + tasks[id].duration));
        }

        let busy = workers.iter().filter(|w| w.task.is_some()).count() as u32;
        if t % SAMPLE_EVERY == 0 {
            // CloudWatch: the per-minute maximum of each metric.
            let minute = (t / 60 * 60) as i64;
            let (depth, in_flight) = (queue.len() as f64, f64::from(busy));
            match samples.last_mut() {
                Some(last) if last.at == minute => {
                    last.queue_depth = last.queue_depth.max(depth);
                    last.in_flight = last.in_flight.max(in_flight);
                }
                _ => samples.push(Sample {
                    at: minute,
                    queue_depth: depth,
                    in_flight,
                }),
            }
        }

        if t > 0 && t % LAMBDA_EVERY == 0 {
            let window_start = t.saturating_sub(policy.stabilization_seconds.max(300)) as i64;
            let first = samples.partition_point(|s| s.at < window_start);
            let window = &samples[first..];
            let next = match kind {
                Kind::Seed => window.last().map_or(desired, |latest| {
                    policy.wanted(&Sample {
                        in_flight: 0.0,
                        ..*latest
                    })
                }),
                Kind::Ours => policy.decide(desired, window, t as i64).desired,
            };
            if next < desired {
                scale_ins += 1;
                if next < busy {
                    busy_scale_ins += 1;
                }
            }
            desired = next;
        }

        // ECS converges on the desired count.
        let desired_len = desired as usize;
        while workers.len() < desired_len {
            workers.push(Worker {
                serving_from: t + 60 + (rng.unit() * 60.0) as u64,
                task: None,
            });
        }
        if workers.len() > desired_len {
            // Stop the cheapest first: still starting, then idle, then the busy ones that started last.
            workers.sort_by_key(|w| match w.task {
                None if w.serving_from > t => (0, u64::MAX - w.serving_from),
                None => (1, 0),
                Some((_, started, _)) => (2, u64::MAX - started),
            });
            for worker in workers.drain(..workers.len() - desired_len) {
                if let Some((id, started, _)) = worker.task {
                    interrupted += 1;
                    lost_work_seconds += t - started;
                    tasks[id].enqueued_at = t;
                    queue.push_front(id);
                }
            }
        }
        worker_seconds += workers.len() as u64;
    }

    let mut waits: Vec<u64> = tasks.iter().map(|task| task.waited).collect();
    waits.sort_unstable();
    Outcome {
        waits,
        worker_seconds,
        scale_ins,
        busy_scale_ins,
        interrupted,
        lost_work_seconds,
        last_done: tasks
            .iter()
            .filter_map(|task| task.done_at)
            .max()
            .unwrap_or(0),
        undone: tasks.iter().filter(|task| task.done_at.is_none()).count(),
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

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v:?}"))
        })
        .unwrap_or(default)
}

fn main() {
    let seed = arg("--seed", 42);
    let policy = Policy {
        target_per_worker: 1,
        min_workers: 1,
        max_workers: u32::try_from(arg("--max-workers", 11)).expect("--max-workers fits in u32"),
        stabilization_seconds: 300,
    };
    let tasks = trace(seed);
    println!(
        "seed {seed}: {} tasks over 4 h; TARGET_MESSAGES_PER_WORKER={} MIN_WORKERS={} MAX_WORKERS={} \
         SCALE_IN_STABILIZATION_SECONDS={}; Lambda every {} s; worker start-up 60-120 s",
        tasks.len(),
        policy.target_per_worker,
        policy.min_workers,
        policy.max_workers,
        policy.stabilization_seconds,
        LAMBDA_EVERY
    );
    println!();
    println!(
        "| policy | p50 queue wait (min) | p95 queue wait (min) | worker-minutes | scale-in decisions | scale-ins that hit a busy worker | tasks interrupted (work lost, min) | last task done (min) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, name) in [
        (Kind::Seed, "seed: ceil(ready / target), scale in at once"),
        (
            Kind::Ours,
            "ours: (ready + in flight), scale in to the 5-min max",
        ),
    ] {
        let outcome = simulate(kind, policy, tasks.clone(), seed);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} ({}) | {}{} |",
            minutes(percentile(&outcome.waits, 50.0)),
            minutes(percentile(&outcome.waits, 95.0)),
            outcome.worker_seconds / 60,
            outcome.scale_ins,
            outcome.busy_scale_ins,
            outcome.interrupted,
            outcome.lost_work_seconds / 60,
            minutes(outcome.last_done),
            if outcome.undone > 0 {
                format!(" ({} never done)", outcome.undone)
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_is_the_same_for_the_same_seed() {
        let a: Vec<(u64, u64)> = trace(7).iter().map(|t| (t.arrival, t.duration)).collect();
        let b: Vec<(u64, u64)> = trace(7).iter().map(|t| (t.arrival, t.duration)).collect();
        assert_eq!(a, b);
        assert!(a.len() > 280, "two bursts of 200 and 80 plus the trickles");
    }

    #[test]
    fn ours_never_scales_in_below_the_busy_count() {
        let policy = Policy {
            target_per_worker: 1,
            min_workers: 1,
            max_workers: 11,
            stabilization_seconds: 300,
        };
        let outcome = simulate(Kind::Ours, policy, trace(42), 42);
        assert_eq!(outcome.busy_scale_ins, 0);
        assert_eq!(outcome.undone, 0);
    }
}
