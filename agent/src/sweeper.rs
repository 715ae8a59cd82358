//! The dead-letter sweeper: no task stays unfinished because its message was dead-lettered, and the
//! dead-letter queue does not fill up.
//!
//! The worker marks a task `failed` on the broker's last delivery of its message. If that last delivery's
//! worker dies first (or cannot reach Redis), the broker dead-letters the message into `{queue}.dlq` and no
//! worker will ever see it again: the task would stay `pending`, `accepted` or `in_progress` forever.
//!
//! So every [`SWEEP_INTERVAL`] one agent of the fleet (whichever takes the Redis lock `dlq:sweeper`) empties
//! the DLQ. For each message that names a task still unfinished, and not touched by any worker for
//! `WORKER_TTL_SECONDS` (a live worker writes its status far more often), it stores `failed` with the
//! reason, refunding the unused ticks once, through the same forward-only transition as everything else.
//! Poison messages and finished tasks are left alone. Then it moves the message, handled, into the parking
//! queue `{queue}.dlq.parked`: it publishes the same body and properties there, through the exchange
//! `{queue}.dlq.parking` (the only exchange the agents' user may write to, bound to that queue alone), with
//! a publisher confirm, and acknowledges the original only once the broker confirmed the copy, so no dead
//! letter is lost.
//!
//! How the DLQ is emptied, and why: the sweeper is the DLQ's only consumer, and nobody else should take
//! messages out of it. Were the DLQ left to hold its messages, a sweeper reading it could only ever look
//! at the head, and past a long enough backlog new dead letters (the ones whose tasks still need failing
//! and refunding) would never be reached. Operators find every dead letter, with its `x-death` headers,
//! in `{queue}.dlq.parked`, which keeps the newest 100,000 for 14 days (the oldest are dropped first; see
//! [`shared::queue::Topology::parked_queue_arguments`]), and may empty it whenever they like with
//! `rabbitmqctl purge_queue {queue}.dlq.parked`: the tasks' outcomes are in Redis already.
//!
//! A message whose task a worker touched within the worker TTL is not consumed yet: the sweep holds it
//! unacknowledged (so its next reads reach the messages behind it) and gives it back to the DLQ when the
//! sweep ends, for a later sweep to judge again. A sweep reads at most as many messages as the DLQ held
//! when it started, in batches of [`BATCH_SIZE`] on one channel, so messages given back or dead-lettered
//! meanwhile never keep it going: they wait for the next sweep.
//!
//! Stopping or failing mid-sweep loses nothing: the broker returns every unacknowledged message to the DLQ
//! when the sweeper's connection goes. At worst a message whose copy was confirmed but whose original was
//! not yet acknowledged is parked twice; judging a task again is harmless (the transition is forward-only).

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use redis::aio::ConnectionManager;
use secrecy::SecretString;
use shared::Keys;
use shared::Status;
use shared::queue::{parked_queue_of, parking_exchange_of, ready_messages};
use shared::store::{StoreError, Transition, transition};
use shared::task::{TaskMessage, TaskResult, field};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the fleet sweeps the DLQ.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Messages read, handled and parked before their copies' confirms are awaited and the originals
/// acknowledged.
pub const BATCH_SIZE: u32 = 200;

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
    /// Messages read from the DLQ: the parked ones plus the ones given back (recently active, or read
    /// when the sweep stopped on an error).
    pub read: u32,
    /// Tasks this sweep marked `failed` (or `cancelled`, when their owner had asked to cancel them).
    pub failed: Vec<Uuid>,
    /// Messages that are not task messages, or name no stored task: parked as they are.
    pub poison: u32,
    /// Messages whose task was already finished: parked, the task left alone.
    pub finished: u32,
    /// Messages given back to the DLQ because a worker touched their task within the worker TTL.
    pub recently_active: u32,
    /// Messages moved into the parking queue (copy confirmed, original acknowledged).
    pub parked: u32,
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
    /// The broker did not take a message's copy into the parking queue (refused it, or could not route
    /// it); the original went back to the DLQ.
    #[error("the broker did not park a dead letter in {queue}")]
    NotParked {
        /// The parking queue.
        queue: String,
    },
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
    /// How to reach it over TLS (`amqps://`).
    pub tls: shared::tls::Tls,
    /// The queue swept (`{queue}.dlq`); its messages are moved into `{queue}.dlq.parked` through
    /// `{queue}.dlq.parking`.
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

    /// The parking queue (`{queue}.dlq.parked`).
    fn parked_queue(&self) -> String {
        parked_queue_of(&self.dead_letter_queue)
    }

    /// The exchange bound to the parking queue (`{queue}.dlq.parking`): the one exchange the agents' user
    /// may publish to.
    fn parking_exchange(&self) -> String {
        parking_exchange_of(&self.dead_letter_queue)
    }

    /// Sweeps every [`SWEEP_INTERVAL`] (when this agent wins the lock) until `stop` fires. Failures are
    /// logged and retried at the next interval. Stopping mid-sweep is safe: the broker gives the messages
    /// read and not yet acknowledged back to the DLQ when the sweeper's connection goes.
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

    /// One sweep on a connection of its own: handles and parks every message the DLQ held when it
    /// started, except those of recently active tasks, which go back to the DLQ.
    ///
    /// # Errors
    /// [`SweepError`] when the broker or Redis fails; every message not yet parked goes back to the DLQ.
    pub async fn sweep_now(&self) -> Result<SweepReport, SweepError> {
        let connection =
            crate::consumer::connect(&self.rabbitmq_url, &self.tls, "dlq-sweeper").await?;
        let result = self.sweep_on(&connection).await;
        if let Err(error) = connection.close(200, "swept".into()).await {
            tracing::debug!(%error, "cannot close the sweeper's connection");
        }
        result
    }

    async fn sweep_on(&self, connection: &Connection) -> Result<SweepReport, SweepError> {
        let channel = connection.create_channel().await?;
        let depth = ready_messages(&channel, &self.dead_letter_queue).await?;
        let mut report = SweepReport::default();
        if depth == 0 {
            return Ok(report);
        }
        // Fails (NOT_FOUND) before anything is read when the topology was never declared.
        ready_messages(&channel, &self.parked_queue()).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut held = Vec::new();
        let outcome = self
            .sweep_batches(&channel, depth, &mut report, &mut held)
            .await;
        // Recently active tasks' messages go back to the DLQ for a later sweep. Only now: given back
        // earlier, they would be read again by this sweep instead of the messages behind them.
        for tag in held {
            if let Err(error) = channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
            {
                // The broker gives it back anyway when the connection closes.
                tracing::debug!(%error, "cannot give a dead letter back to the DLQ");
                break;
            }
        }
        // Acknowledgements have no reply: closing the connection right after the last ones can make the
        // broker give those messages back to the DLQ as if they had never been acknowledged (and they are
        // parked already). The broker handles a channel's methods in order, so once it confirms closing
        // the channel it has taken every acknowledgement sent on it.
        outcome?;
        channel.close(200, "swept".into()).await?;
        Ok(report)
    }

    /// Reads up to `depth` messages in batches, stopping early when the DLQ has nothing ready.
    async fn sweep_batches(
        &self,
        channel: &Channel,
        depth: u32,
        report: &mut SweepReport,
        held: &mut Vec<u64>,
    ) -> Result<(), SweepError> {
        let mut left = depth;
        while left > 0 {
            let batch = left.min(BATCH_SIZE);
            let read = self.sweep_batch(channel, batch, report, held).await?;
            if read < batch {
                break;
            }
            left -= batch;
        }
        Ok(())
    }

    /// Reads, handles and parks up to `batch` messages, returning how many it read.
    async fn sweep_batch(
        &self,
        channel: &Channel,
        batch: u32,
        report: &mut SweepReport,
        held: &mut Vec<u64>,
    ) -> Result<u32, SweepError> {
        let parked_queue = self.parked_queue();
        let mut parking = Vec::new();
        let read = self
            .read_batch(channel, batch, report, held, &mut parking)
            .await;
        // The copies published before a failure are settled too, so their originals are not parked twice.
        settle(channel, &parked_queue, parking, report).await?;
        read
    }

    /// Reads and handles up to `batch` messages, publishing the copies of those to park into
    /// `parking` (delivery tag, confirm) and the tags of those to give back into `held`.
    async fn read_batch(
        &self,
        channel: &Channel,
        batch: u32,
        report: &mut SweepReport,
        held: &mut Vec<u64>,
        parking: &mut Vec<(u64, PublisherConfirm)>,
    ) -> Result<u32, SweepError> {
        let (exchange, parked_queue) = (self.parking_exchange(), self.parked_queue());
        let mut read = 0;
        while read < batch {
            let Some(message) = channel
                .basic_get(
                    self.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            read += 1;
            report.read += 1;
            let delivery = message.delivery;
            let handled = self.handle(&delivery.data, &delivery.properties).await?;
            report.count(handled);
            match disposition(handled) {
                Disposition::GiveBack => held.push(delivery.delivery_tag),
                Disposition::Park => {
                    let confirm = channel
                        .basic_publish(
                            exchange.as_str().into(),
                            parked_queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &delivery.data,
                            delivery.properties.clone(),
                        )
                        .await?;
                    parking.push((delivery.delivery_tag, confirm));
                }
            }
        }
        Ok(read)
    }

    /// Judges one dead letter, failing its task when it was abandoned.
    async fn handle(
        &self,
        body: &[u8],
        properties: &lapin::BasicProperties,
    ) -> Result<Handled, SweepError> {
        let Ok(task) = serde_json::from_slice::<TaskMessage>(body) else {
            return Ok(Handled::Poison);
        };
        let reason = dead_letter_reason(properties.headers().as_ref());
        let verdict = self.fail_if_abandoned(task.correlation_id, &reason).await?;
        if verdict == Verdict::RecentlyActive {
            tracing::debug!(
                task_id = %task.correlation_id,
                "a worker touched this dead-lettered task lately: left in the DLQ for a later sweep"
            );
        }
        Ok(Handled::Task(task.correlation_id, verdict))
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
            // A worker holds a live lease on it (never for the sweeper's own lease-less writes): it is
            // being worked on, so its message waits for a later sweep.
            shared::store::Outcome::Leased { .. } => Verdict::RecentlyActive,
        })
    }
}

/// What the sweeper made of one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Not a task message.
    Poison,
    /// The message of task `.0`, judged `.1`.
    Task(Uuid, Verdict),
}

/// Where a handled dead letter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Into the parking queue: nothing is left to do with it.
    Park,
    /// Back into the DLQ when the sweep ends, for a later sweep to judge again.
    GiveBack,
}

/// The pure rule: only a recently active task's message stays in the DLQ; every other one (poison, no
/// such task, finished, just failed) is done with and parked.
fn disposition(handled: Handled) -> Disposition {
    match handled {
        Handled::Task(_, Verdict::RecentlyActive) => Disposition::GiveBack,
        Handled::Poison
        | Handled::Task(_, Verdict::Missing | Verdict::Finished | Verdict::Failed) => {
            Disposition::Park
        }
    }
}

impl SweepReport {
    /// Counts one handled dead letter (its parking is counted once confirmed).
    fn count(&mut self, handled: Handled) {
        match handled {
            Handled::Poison | Handled::Task(_, Verdict::Missing) => self.poison += 1,
            Handled::Task(_, Verdict::Finished) => self.finished += 1,
            Handled::Task(_, Verdict::RecentlyActive) => self.recently_active += 1,
            Handled::Task(id, Verdict::Failed) => self.failed.push(id),
        }
    }
}

/// Awaits the broker's confirm of each parked copy, then acknowledges its original in the DLQ; an
/// original whose copy the broker refused or returned goes back to the DLQ.
async fn settle(
    channel: &Channel,
    parked_queue: &str,
    parking: Vec<(u64, PublisherConfirm)>,
    report: &mut SweepReport,
) -> Result<(), SweepError> {
    let mut refused = false;
    for (tag, confirm) in parking {
        if let Confirmation::Ack(None) = confirm.await? {
            channel.basic_ack(tag, BasicAckOptions::default()).await?;
            report.parked += 1;
        } else {
            refused = true;
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await?;
        }
    }
    if refused {
        return Err(SweepError::NotParked {
            queue: parked_queue.to_owned(),
        });
    }
    Ok(())
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
    fn only_a_recently_active_tasks_message_goes_back_to_the_dlq() {
        let id = Uuid::new_v4();
        assert_eq!(
            disposition(Handled::Task(id, Verdict::RecentlyActive)),
            Disposition::GiveBack
        );
        for handled in [
            Handled::Poison,
            Handled::Task(id, Verdict::Missing),
            Handled::Task(id, Verdict::Finished),
            Handled::Task(id, Verdict::Failed),
        ] {
            assert_eq!(disposition(handled), Disposition::Park, "{handled:?}");
        }
    }

    #[test]
    fn the_report_counts_each_dead_letter_once_under_its_verdict() {
        let (failed, active) = (Uuid::new_v4(), Uuid::new_v4());
        let mut report = SweepReport::default();
        for handled in [
            Handled::Poison,
            Handled::Task(Uuid::new_v4(), Verdict::Missing),
            Handled::Task(Uuid::new_v4(), Verdict::Finished),
            Handled::Task(active, Verdict::RecentlyActive),
            Handled::Task(failed, Verdict::Failed),
        ] {
            report.count(handled);
        }
        assert_eq!(
            report,
            SweepReport {
                read: 0,
                failed: vec![failed],
                poison: 2,
                finished: 1,
                recently_active: 1,
                parked: 0,
            }
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
