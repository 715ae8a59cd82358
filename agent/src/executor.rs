//! The seam between the runtime and the agent's mind: [`TaskExecutor`] runs one task's tick loop.
//!
//! The runtime owns everything around a task (taking the message, statuses, events, heartbeats, refunds,
//! cancelling, acks, shutdown); an executor only turns a mandate into a [`TaskResult`], reporting its
//! progress through the [`TickReporter`] it is given. The production implementation is
//! [`crate::mind::Mind`]; the tests use scripted ones.

use shared::api::{MemoryEvent, TickEvent, Usage};
use shared::task::{TaskMessage, TaskResult};
use std::future::Future;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What an executor is given about the task it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task id (the message's `correlation_id`).
    pub id: Uuid,
    /// What to run, as the task's record has it (owner, mandate, `max_ticks`, creation time): the queue
    /// message only names the task, and a message that disagrees with the record is overruled.
    pub message: TaskMessage,
    /// The HTTP request id that created the task, when the gateway sent one.
    pub request_id: Option<String>,
    /// Which delivery of the message this is, from 1; above 1 the task was started before and its worker
    /// died or gave it back.
    pub delivery: u32,
    /// Where an earlier delivery stopped, when one ran ticks: run from `resume.tick + 1`.
    pub resume: Option<Resume>,
}

/// Where a task stopped on an earlier delivery, read from its checkpoint (or only from its record, when
/// the checkpoint is missing or unreadable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    /// Ticks already run (across all earlier deliveries).
    pub tick: u32,
    /// Usage so far.
    pub usage: Usage,
    /// The executor's working state after that tick, as it recorded it (`None`: start afresh from
    /// `tick + 1`).
    pub state: Option<serde_json::Value>,
}

/// A task's failure as the executor classifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutionError {
    /// Worth another delivery (a dependency hiccup that outlasted the executor's own retries): the
    /// runtime requeues the message, or fails the task when it was its last delivery.
    #[error("{0}")]
    Retryable(String),
    /// Running again would not help (budget spent, mandate refused, ...): the task ends `failed`.
    #[error("{0}")]
    Fatal(String),
}

/// Runs the tick loop of one task.
///
/// The runtime calls [`TaskExecutor::execute`] once per delivery it takes. The executor reports each tick
/// with [`TickReporter::report`] as soon as its model call is made (that tick is then spent), and what the
/// tick did with [`TickReporter::record`] once its action is done; the runtime stores each record with the
/// tick's event, and keeps the latest for a task cancelled midway. When `cancel` fires (its owner
/// cancelled it, the shutdown grace period ran out, or another worker already finished it) the runtime
/// stops polling the future soon after: an executor should stop at the next await point and clean up what
/// it spawned.
pub trait TaskExecutor: Send + Sync + 'static {
    /// Runs `task` to a result.
    ///
    /// # Errors
    /// [`ExecutionError`], classified retryable or fatal.
    fn execute(
        &self,
        task: TaskContext,
        ticks: TickReporter,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<TaskResult, ExecutionError>> + Send;

    /// Forgets everything kept about `owner`'s task `task` outside the task record (its memory points):
    /// the task was deleted. The default keeps nothing, so forgets nothing.
    ///
    /// # Errors
    /// Why it could not be forgotten now (it is retried later).
    fn forget(&self, owner: &str, task: Uuid) -> impl Future<Output = Result<(), String>> + Send {
        let _ = (owner, task);
        async { Ok(()) }
    }

    /// Forgets everything it kept that was written before `cutoff` (unix seconds): nothing outlives the
    /// task records it belongs to. The default keeps nothing, so forgets nothing.
    ///
    /// # Errors
    /// Why it could not be forgotten now (it is retried later).
    fn forget_written_before(
        &self,
        cutoff: i64,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let _ = cutoff;
        async { Ok(()) }
    }
}

/// What one tick did, as the executor records it once the tick's action is done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The tick's event (its `usage` is the task's usage after the tick).
    pub event: TickEvent,
    /// The tick's memory use, if it wrote or queried memory.
    pub memory: Option<MemoryEvent>,
    /// Deliverables gathered so far (what a task cancelled now keeps).
    pub deliverables: Vec<String>,
    /// URLs visited so far.
    pub sources: Vec<String>,
    /// The executor's working state after this tick: what it resumes from on a later delivery. Stored
    /// with the tick, in the same atomic step.
    pub state: Option<serde_json::Value>,
}

/// What the runtime receives from an executor besides the tick count.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A tick's record.
    Tick(Box<Progress>),
    /// The task's usage changed outside a tick (the final synthesis call).
    Usage(Usage),
}

/// Where an executor reports the ticks it has run.
#[derive(Debug)]
pub struct TickReporter {
    tick: watch::Sender<u32>,
    reports: mpsc::UnboundedSender<Report>,
}

/// The runtime's end of a [`TickReporter`].
#[derive(Debug)]
pub struct TickFeed {
    /// Ticks spent so far (model calls made).
    pub tick: watch::Receiver<u32>,
    /// Tick records and usage updates, in order.
    pub reports: mpsc::UnboundedReceiver<Report>,
}

impl TickReporter {
    /// A reporter and the feed the runtime reads.
    pub fn new() -> (Self, TickFeed) {
        let (tick, tick_rx) = watch::channel(0);
        let (reports, reports_rx) = mpsc::unbounded_channel();
        (
            Self { tick, reports },
            TickFeed {
                tick: tick_rx,
                reports: reports_rx,
            },
        )
    }

    /// Records that `tick` ticks have been spent so far (the tick's model call was made).
    pub fn report(&self, tick: u32) {
        self.tick.send_replace(tick);
    }

    /// Records what a tick did; the runtime stores it with the tick's event.
    pub fn record(&self, progress: Progress) {
        self.tick.send_if_modified(|tick| {
            let changed = *tick < progress.event.tick;
            *tick = (*tick).max(progress.event.tick);
            changed
        });
        // The runtime may have stopped listening (the task is ending); nothing to do then.
        let _ = self.reports.send(Report::Tick(Box::new(progress)));
    }

    /// Records the task's usage after a model call made outside a tick (the synthesis).
    pub fn usage(&self, usage: Usage) {
        let _ = self.reports.send(Report::Usage(usage));
    }

    /// The ticks reported so far.
    pub fn current(&self) -> u32 {
        *self.tick.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_counts_its_tick_and_reaches_the_feed_in_order() {
        let (reporter, mut feed) = TickReporter::new();
        reporter.report(1);
        let mut progress = Progress::default();
        progress.event.tick = 2;
        reporter.record(progress.clone());
        reporter.usage(Usage {
            model_calls: 3,
            ..Usage::default()
        });
        assert_eq!(reporter.current(), 2);
        assert_eq!(
            feed.reports.try_recv().unwrap(),
            Report::Tick(Box::new(progress))
        );
        assert!(matches!(feed.reports.try_recv().unwrap(), Report::Usage(u) if u.model_calls == 3));
    }

    #[test]
    fn a_late_record_never_lowers_the_tick_count() {
        let (reporter, _feed) = TickReporter::new();
        reporter.report(5);
        let mut progress = Progress::default();
        progress.event.tick = 4;
        reporter.record(progress);
        assert_eq!(reporter.current(), 5);
    }
}
