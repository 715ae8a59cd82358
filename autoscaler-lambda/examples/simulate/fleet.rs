//! The fleet model, in one-second steps: the queue, the workers and their task slots, the metric pipeline,
//! the Lambda's decision and ECS converging on it.

use crate::cost::billed_seconds;
use crate::trace::{HORIZON, Rng, Task};
use autoscaler_lambda::{Policy, Sample};
use std::collections::VecDeque;

/// How often the Lambda fires, seconds.
pub const LAMBDA_EVERY: u64 = 120;

/// How often the sidecar samples the queue, seconds.
pub const SAMPLE_EVERY: u64 = 10;

/// Agent CPU one tick of a task costs (prompt building, parsing, browser work between model calls),
/// seconds.
///
/// From `bench/footprint.sh` (2026-12-03, 2 cores): 0.33 CPU seconds per tick for the agent and its
/// Chromium together at 1-16 tasks in hand, with four of a task's nine ticks visiting a JavaScript page;
/// Chromium took 97% of it (opening a tab and its renderer, loading the page), the agent 8-12 ms.
pub const CPU_SECONDS_PER_TICK: f64 = 0.33;

/// Remaining work below this counts as done (processor sharing leaves fractions behind).
const DONE_EPSILON: f64 = 1e-9;

/// Which scaling policy runs, and with it whether the agents hold ECS scale-in protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ceil(ready / target)` from the latest point, applied at once both ways; no scale-in protection.
    Seed,
    /// [`Policy::decide`]; each agent holds scale-in protection while any of its slots is used.
    Ours,
}

/// What one worker is: the tasks it holds at once and the CPU they share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agent {
    /// `AGENT_CONCURRENCY`, also the broker's prefetch.
    pub concurrency: u32,
    /// The Fargate task's vCPU.
    pub vcpu: f64,
    /// Agent CPU per tick, seconds (normally [`CPU_SECONDS_PER_TICK`]).
    pub cpu_seconds_per_tick: f64,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Queue waits in seconds, sorted: first arrival to the start that ran to completion (to the end of the
    /// run for a task never started).
    pub waits: Vec<u64>,
    /// Seconds of workers alive, launch to stop (the figure the worker-minutes column shows).
    pub worker_seconds: u64,
    /// Seconds Fargate bills: each worker's lifetime, at least a minute.
    pub billed_worker_seconds: u64,
    /// Lambda decisions that asked for fewer workers than were busy.
    pub decisions_below_busy: u32,
    /// Busy workers ECS stopped; their tasks went back to the queue.
    pub busy_workers_stopped: u32,
    /// Task-seconds of work thrown away by those stops.
    pub lost_work_seconds: u64,
    /// Tasks done within the run.
    pub completed: usize,
    /// The highest CPU demand one worker's tasks put on it, vCPU.
    pub peak_cpu_demand: f64,
    /// Times the fleet was scaled out from zero workers.
    pub wakes: u32,
    /// Queue waits in seconds of the tasks that arrived while no worker was serving, in arrival order.
    pub cold_waits: Vec<u64>,
}

/// The speed each task on a worker runs at, as a share of its uncontended speed, when its tasks together
/// ask for `demand_vcpu` of a worker with `vcpu`: processor sharing, every task slowed alike.
pub fn sharing_speed(demand_vcpu: f64, vcpu: f64) -> f64 {
    if demand_vcpu <= vcpu {
        1.0
    } else {
        vcpu / demand_vcpu
    }
}

/// One task in hand.
#[derive(Debug)]
struct Slot {
    task: usize,
    started: u64,
    /// Uncontended seconds of work left.
    remaining: f64,
    /// vCPU it asks for while running at full speed.
    cpu_demand: f64,
}

#[derive(Debug)]
struct Worker {
    launched_at: u64,
    serving_from: u64,
    slots: Vec<Slot>,
}

impl Worker {
    /// The order ECS stops workers in: still starting, then idle, then busy ones that started work last.
    fn stop_order(&self, now: u64) -> (u8, u64) {
        match self.slots.iter().map(|slot| slot.started).max() {
            None if self.serving_from > now => (0, u64::MAX - self.serving_from),
            None => (1, 0),
            Some(latest) => (2, u64::MAX - latest),
        }
    }
}

/// The per-run state of one task of the trace.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    last_start: Option<u64>,
    done_at: Option<u64>,
}

/// Runs `tasks` through a fleet of `agent`s scaled by `kind` with the knobs of `policy`.
///
/// Each second: arrivals join the queue; finished tasks leave their slots; the queue hands waiting tasks
/// to ready workers with a free slot, the least loaded first; the sidecar samples every
/// [`SAMPLE_EVERY`] s (CloudWatch keeps each minute's maximum); the Lambda decides every
/// [`LAMBDA_EVERY`] s; ECS launches or stops workers; running tasks advance at their sharing speed.
pub fn simulate(kind: Kind, policy: Policy, agent: Agent, tasks: &[Task], seed: u64) -> Outcome {
    let mut rng = Rng::new(seed ^ 0xA5A5);
    let concurrency = agent.concurrency.max(1) as usize;
    let mut progress = vec![Progress::default(); tasks.len()];
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut workers: Vec<Worker> = Vec::new();
    let mut desired = policy.min_workers;
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_arrival = 0;
    let mut outcome = Outcome {
        waits: Vec::new(),
        worker_seconds: 0,
        billed_worker_seconds: 0,
        decisions_below_busy: 0,
        busy_workers_stopped: 0,
        lost_work_seconds: 0,
        completed: 0,
        peak_cpu_demand: 0.0,
        wakes: 0,
        cold_waits: Vec::new(),
    };
    let mut arrived_cold = vec![false; tasks.len()];

    for t in 0..HORIZON {
        while next_arrival < tasks.len() && tasks[next_arrival].arrival <= t {
            arrived_cold[next_arrival] = !workers.iter().any(|w| w.serving_from <= t);
            queue.push_back(next_arrival);
            next_arrival += 1;
        }
        for worker in &mut workers {
            worker.slots.retain(|slot| {
                let done = slot.remaining <= DONE_EPSILON;
                if done {
                    progress[slot.task].done_at = Some(t);
                }
                !done
            });
        }
        while let Some(&id) = queue.front() {
            let Some(worker) = workers
                .iter_mut()
                .filter(|w| w.serving_from <= t && w.slots.len() < concurrency)
                .min_by_key(|w| w.slots.len())
            else {
                break;
            };
            queue.pop_front();
            progress[id].last_start = Some(t);
            let task = tasks[id];
            worker.slots.push(Slot {
                task: id,
                started: t,
                remaining: task.duration as f64,
                cpu_demand: f64::from(task.ticks) * agent.cpu_seconds_per_tick
                    / task.duration as f64,
            });
        }

        let busy_workers = workers.iter().filter(|w| !w.slots.is_empty()).count() as u32;
        if t % SAMPLE_EVERY == 0 {
            // CloudWatch: the per-minute maximum of each metric.
            let minute = (t / 60 * 60) as i64;
            let in_flight = workers.iter().map(|w| w.slots.len()).sum::<usize>() as f64;
            let depth = queue.len() as f64;
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
            // What the Lambda reads: its stabilisation window, at least 5 minutes, and the idle span.
            let lookback = policy
                .stabilization_seconds
                .max(300)
                .max(policy.scale_to_zero_after_seconds);
            let window_start = t.saturating_sub(lookback) as i64;
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
            if next < busy_workers {
                outcome.decisions_below_busy += 1;
            }
            if desired == 0 && next > 0 {
                outcome.wakes += 1;
            }
            desired = next;
        }

        // ECS converges on the desired count.
        let desired_len = desired as usize;
        while workers.len() < desired_len {
            workers.push(Worker {
                launched_at: t,
                serving_from: t + 60 + (rng.unit() * 60.0) as u64,
                slots: Vec::new(),
            });
        }
        if workers.len() > desired_len {
            // Stop the cheapest first; a protected (busy) worker is skipped, and stopped once idle if the
            // service is still above its desired count then.
            workers.sort_by_key(|w| w.stop_order(t));
            let excess = workers.len() - desired_len;
            let stoppable = match kind {
                Kind::Seed => excess,
                Kind::Ours => workers
                    .iter()
                    .take(excess)
                    .take_while(|w| w.slots.is_empty())
                    .count(),
            };
            for worker in workers.drain(..stoppable) {
                outcome.billed_worker_seconds += billed_seconds(t - worker.launched_at);
                if !worker.slots.is_empty() {
                    outcome.busy_workers_stopped += 1;
                }
                for slot in worker.slots {
                    // The broker redelivers the unacknowledged task; its work so far is lost.
                    outcome.lost_work_seconds += t - slot.started;
                    queue.push_front(slot.task);
                }
            }
        }
        outcome.worker_seconds += workers.len() as u64;

        for worker in &mut workers {
            let demand: f64 = worker.slots.iter().map(|slot| slot.cpu_demand).sum();
            outcome.peak_cpu_demand = outcome.peak_cpu_demand.max(demand);
            let speed = sharing_speed(demand, agent.vcpu);
            for slot in &mut worker.slots {
                slot.remaining -= speed;
            }
        }
    }

    outcome.billed_worker_seconds += workers
        .iter()
        .map(|w| billed_seconds(HORIZON - w.launched_at))
        .sum::<u64>();
    outcome.waits = tasks
        .iter()
        .zip(&progress)
        .map(|(task, p)| p.last_start.unwrap_or(HORIZON) - task.arrival)
        .collect();
    outcome.cold_waits = outcome
        .waits
        .iter()
        .zip(&arrived_cold)
        .filter_map(|(&wait, &cold)| cold.then_some(wait))
        .collect();
    outcome.waits.sort_unstable();
    outcome.completed = progress.iter().filter(|p| p.done_at.is_some()).count();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::trace;

    fn policy(target_per_worker: u32) -> Policy {
        Policy {
            target_per_worker,
            min_workers: 1,
            max_workers: 11,
            stabilization_seconds: 300,
            scale_to_zero_after_seconds: 0,
        }
    }

    fn agent(concurrency: u32) -> Agent {
        Agent {
            concurrency,
            vcpu: 1.0,
            cpu_seconds_per_tick: CPU_SECONDS_PER_TICK,
        }
    }

    #[test]
    fn tasks_run_at_full_speed_until_their_demand_passes_the_vcpu() {
        assert_eq!(sharing_speed(0.4, 1.0), 1.0);
        assert_eq!(sharing_speed(1.0, 1.0), 1.0);
        assert_eq!(sharing_speed(2.0, 1.0), 0.5);
        assert_eq!(sharing_speed(3.0, 2.0), 2.0 / 3.0);
    }

    #[test]
    fn one_task_per_agent_gives_the_worker_minutes_of_the_one_task_model() {
        // Worker-minutes the model printed before it had slots, CPU or cost (seeds 1, 2, 3, 42).
        let before = [
            (1, 1320, 1362),
            (2, 1364, 1434),
            (3, 1440, 1504),
            (42, 1544, 1544),
        ];
        for (seed, seed_policy, ours) in before {
            let tasks = trace(seed);
            let run = |kind| simulate(kind, policy(1), agent(1), &tasks, seed).worker_seconds / 60;
            assert_eq!(
                run(Kind::Seed),
                seed_policy,
                "the seed's policy, seed {seed}"
            );
            assert_eq!(run(Kind::Ours), ours, "ours, seed {seed}");
        }
    }

    #[test]
    fn ours_never_stops_a_busy_worker() {
        let tasks = trace(42);
        let sleepy = |target| Policy {
            scale_to_zero_after_seconds: 900,
            ..policy(target)
        };
        for (concurrency, target) in [(1, 1), (8, 8), (16, 16)] {
            let outcome = simulate(Kind::Ours, sleepy(target), agent(concurrency), &tasks, 42);
            assert_eq!(outcome.busy_workers_stopped, 0, "C={concurrency}");
            assert_eq!(outcome.completed, tasks.len(), "C={concurrency}");
        }
        // At one task per agent the policy alone never asks for fewer workers than are busy.
        let one = simulate(Kind::Ours, policy(1), agent(1), &tasks, 42);
        assert_eq!(one.decisions_below_busy, 0);
    }

    #[test]
    fn the_seeds_policy_stops_busy_workers() {
        let outcome = simulate(Kind::Seed, policy(1), agent(1), &trace(42), 42);
        assert!(outcome.busy_workers_stopped > 0);
        assert!(outcome.lost_work_seconds > 0);
    }

    #[test]
    fn a_worker_short_of_cpu_slows_its_tasks_down() {
        let tasks = trace(42);
        let roomy = simulate(
            Kind::Ours,
            policy(8),
            Agent {
                cpu_seconds_per_tick: 0.05,
                ..agent(8)
            },
            &tasks,
            42,
        );
        let starved = simulate(
            Kind::Ours,
            policy(8),
            Agent {
                cpu_seconds_per_tick: 2.0,
                ..agent(8)
            },
            &tasks,
            42,
        );
        assert!(roomy.peak_cpu_demand <= 1.0, "{}", roomy.peak_cpu_demand);
        assert!(starved.peak_cpu_demand > 1.0);
        assert!(starved.worker_seconds > roomy.worker_seconds);
    }

    #[test]
    fn billing_covers_every_second_a_worker_lived() {
        let outcome = simulate(Kind::Seed, policy(1), agent(1), &trace(1), 1);
        assert!(outcome.billed_worker_seconds >= outcome.worker_seconds);
        // The one-minute minimum adds at most a minute per worker launched, far less than the total.
        assert!(outcome.billed_worker_seconds < outcome.worker_seconds + 60 * 200);
    }

    #[test]
    fn an_idle_fleet_sleeps_and_the_next_task_wakes_it() {
        // One task at the start, a second an hour later, then nothing.
        let task = |arrival| Task {
            arrival,
            duration: 120,
            ticks: 60,
        };
        let tasks = [task(300), task(3600)];
        let always_on = simulate(Kind::Ours, policy(8), agent(8), &tasks, 7);
        let sleepy = Policy {
            scale_to_zero_after_seconds: 900,
            ..policy(8)
        };
        let sleeping = simulate(Kind::Ours, sleepy, agent(8), &tasks, 7);

        assert_eq!(always_on.completed, 2);
        assert_eq!(sleeping.completed, 2);
        assert_eq!(
            always_on.worker_seconds, HORIZON,
            "one worker the whole run"
        );
        assert_eq!((always_on.wakes, sleeping.wakes), (0, 1));
        // Awake from the start until 15 idle minutes after the first task, then from the wake-up until 15
        // idle minutes after the second: well under an hour in all, against four.
        assert!(
            sleeping.worker_seconds < 3600,
            "{}",
            sleeping.worker_seconds
        );
        // The second task arrives to no worker: it waits for the next decision (the Lambda runs every two
        // minutes) and a worker's start-up (one to two minutes).
        assert_eq!(sleeping.cold_waits.len(), 1);
        let wait = sleeping.cold_waits[0];
        assert!((60..=LAMBDA_EVERY + 180).contains(&wait), "{wait}");
        assert_eq!(always_on.cold_waits.len(), 0);
    }
}
