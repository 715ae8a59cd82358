//! Running a taken task: the executor under watch, each tick stored with its event, heartbeats, and the
//! terminal write.
//!
//! While the executor runs, the worker stores every tick it records (status `in_progress`, the tick, the
//! usage, the checkpoint, and the `tick` and `memory` events, in one atomic step), heartbeats `in_progress` every status
//! interval, and stops it at once when its owner cancels it (the poll in [`super::in_hand`], or the flag a
//! write returns), when the shutdown grace period ends, when another worker finished the task or took it
//! over (a write refused for another worker's lease), or when the task was deleted. Stopping drops the executor's future, so a model call or page visit in flight is
//! abandoned there and then.

use super::{Checkpoint, Handled, Worker};
use crate::executor::{ExecutionError, Report, TaskContext, TaskExecutor, TickFeed, TickReporter};
use shared::Status;
use shared::api::Usage;
use shared::events::{EventKind, NewEvent};
use shared::store::{Outcome, Transition};
use shared::task::{TaskResult, field};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a tick's write may retry Redis before the tick's event is given up (the status still moves on
/// with the next write).
const TICK_WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// How a task's run ended.
pub(super) enum RunEnd {
    Finished(Result<TaskResult, ExecutionError>),
    Cancelled,
    GraceExpired,
    TerminalElsewhere(Status),
    Deleted,
    TakenOver,
    TooLong(Duration),
}

/// What a run gathered, for its terminal write.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Ticks spent (model calls made for ticks).
    pub ticks: u32,
    /// The task's usage as last reported (`None`: nothing reported; the record keeps what it has).
    pub usage: Option<Usage>,
    /// Deliverables as last recorded.
    pub deliverables: Vec<String>,
    /// Sources as last recorded.
    pub sources: Vec<String>,
    /// How long earlier deliveries ran the task.
    pub run_before: Duration,
}

pub(super) struct Ran {
    pub end: RunEnd,
    pub tally: Tally,
}

/// How a task ends.
pub(super) enum Ending {
    Completed(TaskResult),
    Failed(String),
    Cancelled,
}

enum Step {
    Report(Report),
    Beat,
    Idle,
}

impl<E: TaskExecutor> Worker<E> {
    /// Runs the executor until it ends or must be stopped.
    pub(super) async fn execute(
        &self,
        context: TaskContext,
        reporter: TickReporter,
        mut feed: TickFeed,
        cancelled: CancellationToken,
        mut tally: Tally,
    ) -> Ran {
        let id = context.id;
        let started = Instant::now();
        let max_run = self.config.max_run;
        let deadline = started + max_run.saturating_sub(tally.run_before);
        let cancel = CancellationToken::new();
        let _cancel_on_exit = cancel.clone().drop_guard();
        let run = self.executor.execute(context, reporter, cancel.clone());
        tokio::pin!(run);
        let period = self.config.status_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ticking = false;
        loop {
            let step = tokio::select! {
                biased;
                Some(report) = feed.reports.recv() => Step::Report(report),
                result = &mut run => {
                    // Store what the executor recorded before it returned, so the log holds every tick
                    // before the terminal event.
                    while let Ok(report) = feed.reports.try_recv() {
                        self.store_report(id, report, &mut tally, started).await;
                    }
                    tally.ticks = *feed.tick.borrow();
                    return Ran { end: RunEnd::Finished(result), tally };
                }
                () = cancelled.cancelled() => {
                    cancel.cancel();
                    tally.ticks = *feed.tick.borrow();
                    return Ran { end: RunEnd::Cancelled, tally };
                }
                () = self.stopping.grace_expired.cancelled() => {
                    cancel.cancel();
                    return Ran { end: RunEnd::GraceExpired, tally };
                }
                () = tokio::time::sleep_until(deadline) => {
                    cancel.cancel();
                    tally.ticks = *feed.tick.borrow();
                    return Ran { end: RunEnd::TooLong(max_run), tally };
                }
                Ok(()) = feed.tick.changed(), if !ticking => Step::Beat,
                _ = heartbeat.tick() => if ticking { Step::Beat } else { Step::Idle },
            };
            let outcome = match step {
                Step::Idle => continue,
                Step::Report(report) => {
                    ticking |= matches!(report, Report::Tick(_));
                    self.store_report(id, report, &mut tally, started).await
                }
                Step::Beat => {
                    ticking = true;
                    let tick = *feed.tick.borrow_and_update();
                    let beat =
                        Transition::to(Status::InProgress).with(field::TICK, tick.to_string());
                    match self.store(id, &beat).await {
                        Ok(outcome) => Some(outcome),
                        Err(error) => {
                            tracing::warn!(%error, tick, "heartbeat not stored");
                            None
                        }
                    }
                }
            };
            match outcome {
                Some(Outcome::Refused { current, .. }) if current.is_terminal() => {
                    cancel.cancel();
                    return Ran {
                        end: RunEnd::TerminalElsewhere(current),
                        tally,
                    };
                }
                Some(Outcome::Missing) => {
                    cancel.cancel();
                    return Ran {
                        end: RunEnd::Deleted,
                        tally,
                    };
                }
                Some(Outcome::Leased { .. }) => {
                    cancel.cancel();
                    return Ran {
                        end: RunEnd::TakenOver,
                        tally,
                    };
                }
                Some(
                    Outcome::Applied {
                        cancel_requested: true,
                        ..
                    }
                    | Outcome::Refused {
                        cancel_requested: true,
                        ..
                    },
                ) => cancelled.cancel(),
                _ => {}
            }
        }
    }

    /// Stores one report: a tick with its events (retrying Redis briefly), or a usage update (kept for the
    /// terminal write). `started` is when this delivery began running the task.
    async fn store_report(
        &self,
        id: Uuid,
        report: Report,
        tally: &mut Tally,
        started: Instant,
    ) -> Option<Outcome> {
        let progress = match report {
            Report::Usage(usage) => {
                tally.usage = Some(usage);
                return None;
            }
            Report::Tick(progress) => progress,
        };
        let usage = progress.event.usage;
        tally.usage = Some(usage);
        tally.deliverables.clone_from(&progress.deliverables);
        tally.sources.clone_from(&progress.sources);
        let mut change = Transition::to(Status::InProgress)
            .with(field::TICK, progress.event.tick.to_string())
            .with(field::USAGE, usage_json(usage))
            .checkpointing(
                Checkpoint::of(&progress, tally.run_before + started.elapsed()).encode(),
            );
        if let Some(memory) = &progress.memory {
            change = change.event(NewEvent::new(EventKind::Memory, memory));
        }
        change = change.event(NewEvent::new(EventKind::Tick, &progress.event));
        let deadline = Instant::now() + TICK_WRITE_DEADLINE;
        let stored = self.store_retrying(id, &change, Some(deadline)).await;
        crate::metrics::checkpoint_written(stored.is_ok());
        match stored {
            Ok(outcome) => Some(outcome),
            Err(error) => {
                tracing::warn!(%error, tick = progress.event.tick, "the tick was not stored; its event is lost");
                None
            }
        }
    }

    /// Stores how the task ended, with what the run gathered, refunding what it did not use.
    pub(super) async fn end(
        &self,
        id: Uuid,
        ending: Ending,
        tally: &Tally,
        max_ticks: u32,
    ) -> Handled {
        let (mut change, handled) = terminal(ending, tally, max_ticks);
        if let Some(usage) = tally.usage {
            change = change.with(field::USAGE, usage_json(usage));
        }
        self.finish(id, change, handled).await
    }

    /// Ends a task without running it now (cancelled before this delivery started, or out of deliveries),
    /// with what its earlier runs gathered, refunding what they did not use.
    pub(super) async fn end_unrun(&self, id: Uuid, ending: Ending, max_ticks: u32) -> Handled {
        let (_, tally) = self.resume_point(id).await;
        self.end(id, ending, &tally, max_ticks).await
    }

    /// Stores a terminal transition, retrying Redis until it answers or the grace period ends.
    async fn finish(&self, id: Uuid, terminal: Transition, handled: Handled) -> Handled {
        let stored = tokio::select! {
            stored = self.store_retrying(id, &terminal, None) => stored,
            () = self.stopping.grace_expired.cancelled() => {
                return Handled::Requeued(
                    "the terminal status could not be stored before the grace period ran out".into(),
                );
            }
        };
        match stored {
            Ok(Outcome::Applied { .. }) => {
                crate::metrics::task_ended(terminal.to.as_str());
                handled
            }
            Ok(Outcome::Refused { current, .. }) => Handled::AlreadyTerminal(current),
            Ok(Outcome::Missing) => {
                tracing::info!("the task record vanished while the task ran: it was deleted");
                Handled::Deleted
            }
            Ok(Outcome::Leased { .. }) => {
                tracing::warn!("another worker took the task over; its ending is not stored");
                Handled::TakenOver
            }
            Err(error) => Handled::Requeued(format!("cannot store the terminal status: {error}")),
        }
    }
}

fn usage_json(usage: Usage) -> String {
    serde_json::to_string(&usage).expect("a Usage always serialises")
}

/// The terminal write for `ending`, and what to report once it is stored.
fn terminal(ending: Ending, tally: &Tally, max_ticks: u32) -> (Transition, Handled) {
    match ending {
        Ending::Completed(result) => {
            let ticks = result.ticks_used;
            let json = serde_json::to_string(&result).expect("a TaskResult always serialises");
            let change = Transition::to(Status::Completed)
                .with(field::RESULT, json)
                .with(field::TICK, ticks.to_string())
                .refunding(ticks);
            (change, Handled::Completed)
        }
        Ending::Failed(error) => {
            let change = Transition::fail(error.clone(), tally.ticks)
                .with(field::TICK, tally.ticks.to_string());
            (change, Handled::Failed(error))
        }
        Ending::Cancelled => {
            let result = TaskResult::cancelled(
                tally.ticks,
                max_ticks,
                tally.deliverables.clone(),
                tally.sources.clone(),
            );
            let json = serde_json::to_string(&result).expect("a TaskResult always serialises");
            let change = Transition::to(Status::Cancelled)
                .with(field::RESULT, json)
                .with(field::TICK, tally.ticks.to_string())
                .refunding(tally.ticks);
            (change, Handled::Cancelled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_task_keeps_what_it_gathered_and_refunds_the_rest() {
        let tally = Tally {
            ticks: 3,
            usage: None,
            deliverables: vec!["half a report".into()],
            sources: vec!["https://example.org/".into()],
            run_before: Duration::ZERO,
        };
        let (change, handled) = terminal(Ending::Cancelled, &tally, 10);
        assert_eq!(handled, Handled::Cancelled);
        assert_eq!(change.to, Status::Cancelled);
        assert_eq!(change.refund_ticks_used, Some(3));
        let result: TaskResult = serde_json::from_str(
            &change
                .fields
                .iter()
                .find(|(name, _)| *name == field::RESULT)
                .unwrap()
                .1,
        )
        .unwrap();
        assert!(!result.success);
        assert_eq!(result.deliverables, tally.deliverables);
        assert_eq!(result.sources, tally.sources);
        assert!(result.summary.contains("3 of 10"), "{}", result.summary);
    }
}
