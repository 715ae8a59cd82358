//! The dead-letter sweeper: no task stays unfinished because its message was dead-lettered.
//!
//! The worker marks a task `failed` on the broker's last delivery of its message. If that last delivery's
//! worker dies first (or cannot reach Redis), the broker dead-letters the message into `{queue}.dlq` and no
//! worker will ever see it again: the task would stay `pending`, `accepted` or `in_progress` forever.
//!
//! So every [`SWEEP_INTERVAL`] one agent of the fleet (whichever takes the Redis lock `dlq:sweeper`) reads
//! the DLQ without consuming it: it takes every message unacknowledged, then gives them all back, so the DLQ
//! keeps holding them for operators (SPEC section 4). For each message that names a task still unfinished,
//! and not touched by any worker for `WORKER_TTL_SECONDS` (a live worker writes its status far more often),
//! it stores `failed` with the reason, refunding the unused ticks once, through the same forward-only
//! transition as everything else. Poison messages and finished tasks are left alone.

use chrono::{DateTime, Utc};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use redis::aio::ConnectionManager;
use secrecy::SecretString;
use shared::Keys;
use shared::Status;
use shared::store::{StoreError, Transition, transition};
use shared::task::{TaskMessage, TaskResult, field};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the fleet sweeps the DLQ.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Messages read per sweep at most; the rest wait for the next sweep.
const MAX_MESSAGES_PER_SWEEP: u32 = 1_000;

/// `status`, `updated_at`, `tick`, `max_ticks`, `cancel_requested` of a swept task, each read leniently: a
/// field that is missing or unreadable must not keep a dead-lettered task unfinished.
type SweptFields = (
    Option<String>,
    Option<String>,
    Option<u32>,
    Option<u32>,
    Option<String>,
);

/// What one sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Messages read from the DLQ (all given back).
    pub read: u32,
    /// Tasks this sweep marked `failed`.
    pub failed: Vec<Uuid>,
    /// Messages that are not task messages, or name no stored task.
    pub poison: u32,
    /// Tasks left alone because a worker touched them within the worker TTL.
    pub recently_active: u32,
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::consumer::ConsumeError),
    /// The broker refused or dropped a request.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// Redis refused or dropped a request.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Storing a transition failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sweeps `{queue}.dlq` on a timer.
#[derive(Debug, Clone)]
pub struct Sweeper {
    /// Where the task records and the sweep lock live.
    pub redis: ConnectionManager,
    /// The key names.
    pub keys: Keys,
    /// The broker; each sweep opens a connection of its own and closes it.
    pub rabbitmq_url: SecretString,
    /// The queue swept (`{queue}.dlq`).
    pub dead_letter_queue: String,
    /// A task whose record was written within this long is still a worker's: left for a later sweep.
    pub worker_ttl: Duration,
    /// How long a finished task's record is kept (as everywhere: `TASK_TTL_SECONDS`).
    pub task_ttl_seconds: u64,
    /// This agent, as the holder of the sweep lock.
    pub worker_id: String,
}

impl Sweeper {
    /// The Redis key whose holder sweeps this interval.
    fn lock_key(&self) -> String {
        self.keys.dlq_sweeper_lock()
    }

    /// Sweeps every [`SWEEP_INTERVAL`] (when this agent wins the lock) until `stop` fires. Failures are
    /// logged and retried at the next interval. Stopping mid-sweep is safe: the broker gives the messages
    /// read so far back to the DLQ when the sweeper's connection goes.
    pub async fn run(self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.turn() => {}
            }
        }
    }

    /// Sweeps once if this agent takes this interval's lock.
    async fn turn(&self) {
        match self.take_turn().await {
            Ok(false) => {}
            Ok(true) => match self.sweep_now().await {
                Ok(report) if report.read > 0 => {
                    tracing::info!(?report, "swept the dead-letter queue");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "dead-letter sweep failed"),
            },
            Err(error) => tracing::warn!(%error, "cannot take the dead-letter sweep lock"),
        }
    }

    /// Takes this interval's sweep for this agent, unless another agent already has it.
    async fn take_turn(&self) -> Result<bool, redis::RedisError> {
        let mut conn = self.redis.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.lock_key())
            .arg(&self.worker_id)
            .arg("NX")
            .arg("PX")
            .arg(SWEEP_INTERVAL.as_millis() as u64 - 1_000)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    /// One sweep on a connection of its own.
    ///
    /// # Errors
    /// [`SweepError`] when the broker or Redis fails; the messages read so far go back to the DLQ.
    pub async fn sweep_now(&self) -> Result<SweepReport, SweepError> {
        let connection = crate::consumer::connect(&self.rabbitmq_url, "dlq-sweeper").await?;
        let result = self.sweep_on(&connection).await;
        if let Err(error) = connection.close(200, "swept".into()).await {
            tracing::debug!(%error, "cannot close the sweeper's connection");
        }
        result
    }

    async fn sweep_on(&self, connection: &Connection) -> Result<SweepReport, SweepError> {
        let channel = connection.create_channel().await?;
        let depth = channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count();
        let mut report = SweepReport::default();
        if depth == 0 {
            return Ok(report);
        }
        let mut last_tag = None;
        let outcome = self
            .read_all(&channel, depth, &mut report, &mut last_tag)
            .await;
        // Every message goes back where it was, whatever happened.
        if let Some(tag) = last_tag {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
        }
        outcome.map(|()| report)
    }

    async fn read_all(
        &self,
        channel: &Channel,
        depth: u32,
        report: &mut SweepReport,
        last_tag: &mut Option<u64>,
    ) -> Result<(), SweepError> {
        for _ in 0..depth.min(MAX_MESSAGES_PER_SWEEP) {
            let Some(message) = channel
                .basic_get(
                    self.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            let delivery = message.delivery;
            *last_tag = Some(delivery.delivery_tag);
            report.read += 1;
            let Ok(task) = serde_json::from_slice::<TaskMessage>(&delivery.data) else {
                report.poison += 1;
                continue;
            };
            let reason = dead_letter_reason(delivery.properties.headers().as_ref());
            match self.fail_if_abandoned(task.correlation_id, &reason).await? {
                Verdict::Failed => report.failed.push(task.correlation_id),
                Verdict::Missing => report.poison += 1,
                Verdict::RecentlyActive => report.recently_active += 1,
                Verdict::Finished => {}
            }
        }
        Ok(())
    }

    /// Marks task `id` failed when it is unfinished and no worker touched it within the worker TTL.
    async fn fail_if_abandoned(&self, id: Uuid, reason: &str) -> Result<Verdict, SweepError> {
        let mut conn = self.redis.clone();
        let (status, updated_at, tick, max_ticks, cancel_requested): SweptFields =
            redis::cmd("HMGET")
                .arg(self.keys.task(id))
                .arg(field::STATUS)
                .arg(field::UPDATED_AT)
                .arg(field::TICK)
                .arg(field::MAX_TICKS)
                .arg(field::CANCEL_REQUESTED)
                .query_async(&mut conn)
                .await?;
        let Some(status) = status.and_then(|status| status.parse::<Status>().ok()) else {
            return Ok(Verdict::Missing);
        };
        let now = Utc::now();
        match judge(status, updated_at.as_deref(), now, self.worker_ttl) {
            Verdict::Failed => {}
            other => return Ok(other),
        }
        let ticks = tick.unwrap_or(0);
        // Its owner asked to cancel it: that is how it ends, whatever became of its workers.
        let end = if cancel_requested.as_deref() == Some("1") {
            let result =
                TaskResult::cancelled(ticks, max_ticks.unwrap_or(ticks), Vec::new(), Vec::new());
            Transition::to(Status::Cancelled)
                .with(
                    field::RESULT,
                    serde_json::to_string(&result).expect("a TaskResult always serialises"),
                )
                .refunding(ticks)
        } else {
            let error = format!(
                "the task's message was dead-lettered ({reason}) and no worker finished it: \
                 its workers died or lost their connections on every delivery"
            );
            Transition::fail(error, ticks)
        };
        let outcome =
            transition(&mut conn, &self.keys, id, &end, now, self.task_ttl_seconds).await?;
        Ok(match outcome {
            shared::store::Outcome::Applied { .. } => {
                tracing::warn!(task_id = %id, reason, "failed a dead-lettered task");
                Verdict::Failed
            }
            shared::store::Outcome::Refused { .. } => Verdict::Finished,
            shared::store::Outcome::Missing => Verdict::Missing,
        })
    }
}

/// What the sweeper does with one dead-lettered task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Unfinished and abandoned: mark it failed.
    Failed,
    /// Already completed or failed: leave it.
    Finished,
    /// A worker wrote its status within the worker TTL: leave it for now.
    RecentlyActive,
    /// No such task.
    Missing,
}

/// The pure rule: a dead-lettered task is failed when it is unfinished and its record was last written
/// more than `worker_ttl` ago (or the time cannot be read).
fn judge(
    status: Status,
    updated_at: Option<&str>,
    now: DateTime<Utc>,
    worker_ttl: Duration,
) -> Verdict {
    if status.is_terminal() {
        return Verdict::Finished;
    }
    let updated = updated_at.and_then(|at| DateTime::parse_from_rfc3339(at).ok());
    match updated {
        Some(at) if now.signed_duration_since(at).to_std().unwrap_or_default() < worker_ttl => {
            Verdict::RecentlyActive
        }
        _ => Verdict::Failed,
    }
}

/// Why the broker dead-lettered a message, from its first `x-death` entry (`delivery_limit`,
/// `rejected`, ...).
fn dead_letter_reason(headers: Option<&FieldTable>) -> String {
    let reason = headers
        .and_then(|headers| headers.inner().get("x-death"))
        .and_then(|death| match death {
            AMQPValue::FieldArray(entries) => entries.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|entry| match entry {
            AMQPValue::FieldTable(table) => table.inner().get("reason").cloned(),
            _ => None,
        });
    match reason {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        Some(AMQPValue::ShortString(reason)) => reason.to_string(),
        _ => "reason unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn at(seconds_ago: i64) -> String {
        shared::task::rfc3339(Utc::now() - chrono::Duration::seconds(seconds_ago))
    }

    #[test]
    fn an_unfinished_task_untouched_for_longer_than_the_worker_ttl_is_failed() {
        for status in [Status::Pending, Status::Accepted, Status::InProgress] {
            assert_eq!(
                judge(status, Some(&at(31)), Utc::now(), TTL),
                Verdict::Failed
            );
        }
    }

    #[test]
    fn a_task_a_worker_wrote_within_the_worker_ttl_is_left_for_a_later_sweep() {
        assert_eq!(
            judge(Status::InProgress, Some(&at(5)), Utc::now(), TTL),
            Verdict::RecentlyActive
        );
    }

    #[test]
    fn finished_tasks_are_never_touched() {
        for status in [Status::Completed, Status::Failed] {
            assert_eq!(
                judge(status, Some(&at(3600)), Utc::now(), TTL),
                Verdict::Finished
            );
        }
    }

    #[test]
    fn an_unreadable_update_time_does_not_keep_a_task_unfinished_forever() {
        assert_eq!(
            judge(Status::Accepted, Some("yesterday"), Utc::now(), TTL),
            Verdict::Failed
        );
        assert_eq!(
            judge(Status::Accepted, None, Utc::now(), TTL),
            Verdict::Failed
        );
    }

    #[test]
    fn the_reason_comes_from_the_first_x_death_entry() {
        let mut entry = FieldTable::default();
        entry.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(entry)].into()),
        );
        assert_eq!(dead_letter_reason(Some(&headers)), "delivery_limit");
        assert_eq!(dead_letter_reason(None), "reason unknown");
    }
}
