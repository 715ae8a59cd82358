//! An executor whose behaviour the mandate describes, for testing the runtime without a model.
//!
//! The mandate is a list of `key=value` words:
//! - `ticks=N` (default 1): ticks to run, each reported to the runtime;
//! - `tick_ms=M` (default 0): how long each tick takes;
//! - `fail=fatal` or `fail=retryable`: fail that way after the ticks instead of completing;
//! - `retryable_until=K`: fail retryably (after the ticks) on deliveries before the K-th.
//!
//! Every run increments `{prefix}scripted:runs:{task_id}` in Redis (when a connection is given), so a
//! test can count how often a task really ran. A completed task's summary names the worker that ran it.

use agent::{ExecutionError, TaskContext, TaskExecutor, TickReporter};
use shared::task::TaskResult;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a mandate asks the scripted executor to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub ticks: u32,
    pub tick_ms: u64,
    pub fail: Option<String>,
    pub retryable_until: u32,
}

impl Script {
    /// Reads the script from a mandate; unknown words are ignored.
    pub fn parse(mandate: &str) -> Self {
        let mut script = Script {
            ticks: 1,
            tick_ms: 0,
            fail: None,
            retryable_until: 0,
        };
        for word in mandate.split_whitespace() {
            match word.split_once('=') {
                Some(("ticks", v)) => script.ticks = v.parse().unwrap_or(1),
                Some(("tick_ms", v)) => script.tick_ms = v.parse().unwrap_or(0),
                Some(("fail", v)) => script.fail = Some(v.to_owned()),
                Some(("retryable_until", v)) => script.retryable_until = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        script
    }
}

/// Runs mandates as scripts.
#[derive(Debug, Clone)]
pub struct ScriptedExecutor {
    pub worker_id: String,
    pub redis: Option<redis::aio::MultiplexedConnection>,
    pub key_prefix: String,
}

/// The Redis key counting the runs of `task_id`.
pub fn runs_key(prefix: &str, task_id: uuid::Uuid) -> String {
    format!("{prefix}scripted:runs:{task_id}")
}

impl TaskExecutor for ScriptedExecutor {
    async fn execute(
        &self,
        task: TaskContext,
        ticks: TickReporter,
        cancel: CancellationToken,
    ) -> Result<TaskResult, ExecutionError> {
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            let _: Result<i64, _> = redis::cmd("INCR")
                .arg(runs_key(&self.key_prefix, task.id))
                .query_async(&mut conn)
                .await;
        }
        let script = Script::parse(&task.message.mandate);
        for tick in 1..=script.ticks {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(script.tick_ms)) => {}
                () = cancel.cancelled() => return Err(ExecutionError::Retryable("cancelled".into())),
            }
            ticks.report(tick);
        }
        if task.delivery < script.retryable_until {
            return Err(ExecutionError::Retryable(format!(
                "scripted retryable failure on delivery {}",
                task.delivery
            )));
        }
        match script.fail.as_deref() {
            Some("fatal") => Err(ExecutionError::Fatal("scripted fatal failure".into())),
            Some("retryable") => Err(ExecutionError::Retryable(
                "scripted retryable failure".into(),
            )),
            _ => Ok(TaskResult {
                success: true,
                deliverables: vec![task.message.mandate.clone()],
                summary: format!("done by {}", self.worker_id),
                sources: Vec::new(),
                ticks_used: script.ticks,
            }),
        }
    }
}
