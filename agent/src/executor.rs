//! The seam between the runtime and the agent's mind: [`TaskExecutor`] runs one task's tick loop.
//!
//! The runtime owns everything around a task (taking the message, statuses, heartbeats, refunds, acks,
//! shutdown); an executor only turns a mandate into a [`TaskResult`], reporting each tick through the
//! [`TickReporter`] it is given. The production implementation is [`crate::mind::Mind`]; the tests use
//! scripted ones.

use shared::task::{TaskMessage, TaskResult};
use std::future::Future;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What an executor is given about the task it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task id (the message's `correlation_id`).
    pub id: Uuid,
    /// The message as published by the gateway: mandate, `max_ticks`, owner.
    pub message: TaskMessage,
    /// The HTTP request id that created the task, when the gateway sent one.
    pub request_id: Option<String>,
    /// Which delivery of the message this is, from 1; above 1 the task was started before and its worker
    /// died or gave it back.
    pub delivery: u32,
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
/// it finishes with [`TickReporter::report`]; the runtime turns reports into `in_progress` writes on its
/// heartbeat and uses the last one to refund unused ticks when the task fails. When `cancel` fires (the
/// shutdown grace period ran out, or another worker already finished the task) the runtime stops
/// polling the future soon after: an executor should stop at the next await point and clean up what it
/// spawned.
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
}

/// Where an executor reports the ticks it has run.
#[derive(Debug)]
pub struct TickReporter {
    sender: watch::Sender<u32>,
}

impl TickReporter {
    /// A reporter and the receiver the runtime watches.
    pub fn new() -> (Self, watch::Receiver<u32>) {
        let (sender, receiver) = watch::channel(0);
        (Self { sender }, receiver)
    }

    /// Records that `tick` ticks have run so far.
    pub fn report(&self, tick: u32) {
        self.sender.send_replace(tick);
    }

    /// The ticks reported so far.
    pub fn current(&self) -> u32 {
        *self.sender.borrow()
    }
}
