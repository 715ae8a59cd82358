//! The worker: what happens to one delivery, from taking it to the ack.
//!
//! [`Worker::try_execute_task`] is the whole life of a delivery, driven step by step in tests:
//! parse the message (a body that does not parse is rejected to the DLQ), take the task (`accepted`,
//! counting the attempt; a terminal task is acked without running, a missing record is rejected), run
//! the [`TaskExecutor`] while heartbeating `in_progress` with the tick, store the terminal status through
//! the shared atomic transition (refunding unused ticks once), and only then ack.
//!
//! Deliveries are counted: the quorum queue's `x-delivery-limit` is `MAX_DELIVERIES`, so the broker
//! delivers a message `MAX_DELIVERIES + 1` times before dead-lettering it. The worker runs a task on at
//! most `MAX_DELIVERIES` of them and uses the last one to mark the task `failed`, so a task whose worker
//! keeps dying never stays `in_progress` forever.

use crate::executor::{ExecutionError, TaskContext, TaskExecutor, TickReporter};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use redis::aio::ConnectionManager;
use shared::Keys;
use shared::Status;
use shared::backoff::Backoff;
use shared::queue::REQUEST_ID_HEADER;
use shared::store::{Outcome, StoreError, Transition, transition};
use shared::task::{TaskMessage, field};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// The header in which quorum queues count earlier deliveries of a message.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// The longest a retryable failure holds its message before giving it back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How long taking a task may wait for Redis before the message is given back.
const TAKE_DEADLINE: Duration = Duration::from_secs(30);

/// What the worker needs to know besides its dependencies.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tasks run at once.
    pub concurrency: u16,
    /// Deliveries a task may run on (`MAX_DELIVERIES`).
    pub max_deliveries: u32,
    /// Expiry of a terminal task record.
    pub task_ttl_seconds: u64,
    /// Period of the `in_progress` heartbeat.
    pub status_interval: Duration,
    /// How long a retryable failure holds its message before giving it back, times the delivery
    /// number, so a dependency hiccup is not retried in a tight loop.
    pub retry_delay: Duration,
}

/// How the worker learns that the process is stopping.
#[derive(Debug, Clone, Default)]
pub struct Stopping {
    /// Fired on SIGTERM: deliveries not started yet are given back.
    pub draining: CancellationToken,
    /// Fired when the grace period ends: tasks still running are cancelled and given back.
    pub grace_expired: CancellationToken,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The task ran and `completed` was stored; the message was acked.
    Completed,
    /// `failed` was stored with this error; the message was acked.
    Failed(String),
    /// The task was already terminal (a redelivery, or another worker finished it); acked, not run.
    AlreadyTerminal(Status),
    /// The message is poison (unparseable, or no such task): rejected without requeue, to the DLQ.
    Rejected(String),
    /// Given back to the queue (nack with requeue) for this reason.
    Requeued(String),
    /// A redelivery of a task this worker is running (its channel died meanwhile): the running task
    /// acks this delivery when it ends.
    Adopted,
}

/// One task this worker holds, as presence and health show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInHand {
    /// The task id.
    pub id: Uuid,
    /// Ticks reported so far.
    pub tick: u32,
}

#[derive(Debug)]
struct Slot {
    acker: Acker,
    tick: watch::Receiver<u32>,
}

/// The tasks this worker holds, with the delivery each must be acked on.
#[derive(Debug, Clone)]
pub struct InHand {
    slots: Arc<Mutex<HashMap<Uuid, Slot>>>,
    count: watch::Sender<usize>,
}

impl Default for InHand {
    fn default() -> Self {
        Self {
            slots: Arc::default(),
            count: watch::channel(0).0,
        }
    }
}

impl InHand {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When `id` is running here, answer it on `acker` from now on (the old channel is gone).
    fn adopt(&self, id: Uuid, acker: &Acker) -> bool {
        match self.lock().get_mut(&id) {
            Some(slot) => {
                slot.acker = acker.clone();
                true
            }
            None => false,
        }
    }

    /// Holds `id`, unless it is held already (then adopts `acker` and answers false).
    fn claim(&self, id: Uuid, acker: &Acker, tick: watch::Receiver<u32>) -> bool {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&id) {
            slot.acker = acker.clone();
            return false;
        }
        slots.insert(
            id,
            Slot {
                acker: acker.clone(),
                tick,
            },
        );
        self.count.send_replace(slots.len());
        true
    }

    /// Releases `id`, returning the delivery to answer.
    fn release(&self, id: Uuid) -> Option<Acker> {
        let mut slots = self.lock();
        let slot = slots.remove(&id);
        self.count.send_replace(slots.len());
        slot.map(|slot| slot.acker)
    }

    /// The tasks held now.
    pub fn snapshot(&self) -> Vec<TaskInHand> {
        let mut tasks: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, slot)| TaskInHand {
                id: *id,
                tick: *slot.tick.borrow(),
            })
            .collect();
        tasks.sort_by_key(|task| task.id);
        tasks
    }

    /// How many tasks are held now.
    pub fn len(&self) -> usize {
        *self.count.borrow()
    }

    /// Whether no task is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches the number of tasks held.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// How a delivery is answered.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ack,
    Requeue,
    DeadLetter,
}

/// How a task's run ended.
enum RunEnd {
    Finished(Result<shared::task::TaskResult, ExecutionError>),
    GraceExpired,
    TerminalElsewhere(Status),
}

/// Takes deliveries and runs them through a [`TaskExecutor`].
#[derive(Debug)]
pub struct Worker<E> {
    executor: Arc<E>,
    redis: ConnectionManager,
    keys: Keys,
    config: WorkerConfig,
    in_hand: InHand,
    permits: Arc<Semaphore>,
    stopping: Stopping,
}

impl<E> Clone for Worker<E> {
    fn clone(&self) -> Self {
        Self {
            executor: Arc::clone(&self.executor),
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            config: self.config.clone(),
            in_hand: self.in_hand.clone(),
            permits: Arc::clone(&self.permits),
            stopping: self.stopping.clone(),
        }
    }
}

impl<E: TaskExecutor> Worker<E> {
    /// A worker running tasks with `executor`, storing statuses in `redis` under `keys`.
    pub fn new(
        executor: Arc<E>,
        redis: ConnectionManager,
        keys: Keys,
        config: WorkerConfig,
        stopping: Stopping,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(usize::from(config.concurrency.max(1))));
        Self {
            executor,
            redis,
            keys,
            config,
            in_hand: InHand::default(),
            permits,
            stopping,
        }
    }

    /// The tasks this worker holds.
    pub fn in_hand(&self) -> &InHand {
        &self.in_hand
    }

    /// Handles one delivery to the end: runs the task if it should run, stores its terminal status, then
    /// answers the broker (ack, requeue or dead-letter).
    pub async fn try_execute_task(&self, delivery: Delivery) -> Handled {
        let message = match serde_json::from_slice::<TaskMessage>(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "a message that does not parse goes to the dead-letter queue");
                answer(&delivery.acker, Answer::DeadLetter).await;
                return Handled::Rejected(format!("the message does not parse: {error}"));
            }
        };
        let request_id = header_string(&delivery, REQUEST_ID_HEADER);
        let span = tracing::info_span!(
            "task",
            task_id = %message.correlation_id,
            request_id = request_id.as_deref().unwrap_or(""),
        );
        self.handle(message, request_id, delivery)
            .instrument(span)
            .await
    }

    async fn handle(
        &self,
        message: TaskMessage,
        request_id: Option<String>,
        delivery: Delivery,
    ) -> Handled {
        let id = message.correlation_id;
        if self.in_hand.adopt(id, &delivery.acker) {
            tracing::info!("a redelivery of a task running here; it will be answered when it ends");
            return Handled::Adopted;
        }
        let _permit = tokio::select! {
            biased;
            () = self.stopping.draining.cancelled() => {
                return self.give_back(&delivery.acker, "the agent is shutting down").await;
            }
            permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return self.give_back(&delivery.acker, "the worker is closed").await,
            },
        };
        let (reporter, ticks) = TickReporter::new();
        if !self.in_hand.claim(id, &delivery.acker, ticks.clone()) {
            return Handled::Adopted;
        }
        let handled = self
            .run(message, request_id, &delivery, reporter, ticks)
            .await;
        let acker = self
            .in_hand
            .release(id)
            .unwrap_or_else(|| delivery.acker.clone());
        let answer_with = match &handled {
            Handled::Completed | Handled::Failed(_) | Handled::AlreadyTerminal(_) => Answer::Ack,
            Handled::Rejected(_) => Answer::DeadLetter,
            Handled::Requeued(_) | Handled::Adopted => Answer::Requeue,
        };
        answer(&acker, answer_with).await;
        tracing::info!(outcome = ?handled, "delivery handled");
        handled
    }

    async fn give_back(&self, acker: &Acker, reason: &str) -> Handled {
        answer(acker, Answer::Requeue).await;
        Handled::Requeued(reason.to_owned())
    }

    /// Everything between taking the task and answering the delivery.
    async fn run(
        &self,
        message: TaskMessage,
        request_id: Option<String>,
        delivery: &Delivery,
        reporter: TickReporter,
        ticks: watch::Receiver<u32>,
    ) -> Handled {
        let id = message.correlation_id;
        let attempts = match self.take(id).await {
            Ok(Taken::Run { attempts }) => attempts,
            Ok(Taken::Terminal(status)) => {
                tracing::info!(%status, "the task is already terminal; acked without running");
                return Handled::AlreadyTerminal(status);
            }
            Ok(Taken::Missing) => {
                tracing::warn!("no such task record; the message goes to the dead-letter queue");
                return Handled::Rejected("the task record does not exist".to_owned());
            }
            Err(error) => {
                tracing::warn!(%error, "cannot take the task; giving the message back");
                return Handled::Requeued(format!("cannot take the task: {error}"));
            }
        };
        let header_count = header_u32(delivery, DELIVERY_COUNT_HEADER).map(|n| n + 1);
        let delivery_number = attempts.max(header_count.unwrap_or(0));
        let max = self.config.max_deliveries;
        if delivery_number > max {
            let error = format!(
                "gave up after {max} deliveries: the worker running the task died or gave it back each time"
            );
            return self.give_up(id, error).await;
        }
        tracing::info!(delivery = delivery_number, "task taken");

        let context = TaskContext {
            id,
            message,
            request_id,
            delivery: delivery_number,
        };
        let end = self.execute(context, reporter, ticks.clone()).await;
        let ticks_used = *ticks.borrow();
        match end {
            RunEnd::Finished(Ok(result)) => {
                let json = serde_json::to_string(&result).expect("a TaskResult always serialises");
                let completed = Transition::to(Status::Completed)
                    .with(field::RESULT, json)
                    .with(field::TICK, result.ticks_used.to_string())
                    .refunding(result.ticks_used);
                self.finish(id, completed, Handled::Completed).await
            }
            RunEnd::Finished(Err(ExecutionError::Fatal(error))) => {
                tracing::warn!(%error, "the task failed");
                let failed = Transition::fail(error.clone(), ticks_used)
                    .with(field::TICK, ticks_used.to_string());
                self.finish(id, failed, Handled::Failed(error)).await
            }
            RunEnd::Finished(Err(ExecutionError::Retryable(error))) if delivery_number >= max => {
                let error = format!("gave up after {max} deliveries; the last one failed: {error}");
                tracing::warn!(%error, "the task failed on its last delivery");
                let failed = Transition::fail(error.clone(), ticks_used)
                    .with(field::TICK, ticks_used.to_string());
                self.finish(id, failed, Handled::Failed(error)).await
            }
            RunEnd::Finished(Err(ExecutionError::Retryable(error))) => {
                let delay = (self.config.retry_delay * delivery_number).min(MAX_RETRY_DELAY);
                tracing::warn!(%error, ?delay, "the task hit a retryable error; giving the message back");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stopping.draining.cancelled() => {}
                }
                Handled::Requeued(error)
            }
            RunEnd::GraceExpired => {
                tracing::warn!("the shutdown grace period ran out; giving the message back");
                Handled::Requeued("the shutdown grace period ran out".to_owned())
            }
            RunEnd::TerminalElsewhere(status) => {
                tracing::info!(%status, "another worker finished the task; stopped");
                Handled::AlreadyTerminal(status)
            }
        }
    }

    /// Runs the executor, heartbeating `in_progress` with the tick: at once on the first tick, then every
    /// status interval.
    async fn execute(
        &self,
        context: TaskContext,
        reporter: TickReporter,
        mut ticks: watch::Receiver<u32>,
    ) -> RunEnd {
        let id = context.id;
        let cancel = CancellationToken::new();
        let _cancel_on_exit = cancel.clone().drop_guard();
        let run = self.executor.execute(context, reporter, cancel.clone());
        tokio::pin!(run);
        let period = self.config.status_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut started = false;
        loop {
            let beat = tokio::select! {
                biased;
                result = &mut run => return RunEnd::Finished(result),
                () = self.stopping.grace_expired.cancelled() => {
                    cancel.cancel();
                    return RunEnd::GraceExpired;
                }
                Ok(()) = ticks.changed(), if !started => true,
                _ = heartbeat.tick() => started,
            };
            if !beat {
                continue;
            }
            let tick = *ticks.borrow_and_update();
            started = true;
            let in_progress =
                Transition::to(Status::InProgress).with(field::TICK, tick.to_string());
            match self.store(id, &in_progress).await {
                Ok(Outcome::Refused { current, .. }) if current.is_terminal() => {
                    cancel.cancel();
                    return RunEnd::TerminalElsewhere(current);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, tick, "heartbeat not stored"),
            }
        }
    }

    /// Moves the task to `accepted` (or re-takes it when a dead worker left it `in_progress`), counting
    /// the attempt.
    async fn take(&self, id: Uuid) -> Result<Taken, StoreError> {
        let accepted = Transition::to(Status::Accepted).counting_attempt();
        let retake = Transition::to(Status::InProgress).counting_attempt();
        let deadline = Instant::now() + TAKE_DEADLINE;
        let outcome = self.store_retrying(id, &accepted, Some(deadline)).await?;
        let outcome = match outcome {
            Outcome::Refused {
                current: Status::InProgress,
                ..
            } => self.store_retrying(id, &retake, Some(deadline)).await?,
            other => other,
        };
        Ok(match outcome {
            Outcome::Applied { attempts } => Taken::Run { attempts },
            Outcome::Refused { current, .. } => Taken::Terminal(current),
            Outcome::Missing => Taken::Missing,
        })
    }

    /// Marks the task failed without running it, refunding what its earlier runs did not use.
    async fn give_up(&self, id: Uuid, error: String) -> Handled {
        tracing::warn!(%error, "the task ran out of deliveries");
        let mut conn = self.redis.clone();
        let ticks_used: u32 = redis::cmd("HGET")
            .arg(self.keys.task(id))
            .arg(field::TICK)
            .query_async::<Option<u32>>(&mut conn)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        self.finish(
            id,
            Transition::fail(error.clone(), ticks_used),
            Handled::Failed(error),
        )
        .await
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
            Ok(Outcome::Applied { .. }) => handled,
            Ok(Outcome::Refused { current, .. }) => Handled::AlreadyTerminal(current),
            Ok(Outcome::Missing) => {
                tracing::warn!("the task record vanished while the task ran");
                Handled::AlreadyTerminal(terminal.to)
            }
            Err(error) => Handled::Requeued(format!("cannot store the terminal status: {error}")),
        }
    }

    /// Applies `change` once.
    async fn store(&self, id: Uuid, change: &Transition) -> Result<Outcome, StoreError> {
        let mut conn = self.redis.clone();
        transition(
            &mut conn,
            &self.keys,
            id,
            change,
            chrono::Utc::now(),
            self.config.task_ttl_seconds,
        )
        .await
    }

    /// Applies `change`, retrying Redis failures with backoff until `deadline` (or forever).
    async fn store_retrying(
        &self,
        id: Uuid,
        change: &Transition,
        deadline: Option<Instant>,
    ) -> Result<Outcome, StoreError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match self.store(id, change).await {
                Ok(outcome) => return Ok(outcome),
                Err(error) => {
                    let delay = backoff.next_delay();
                    if deadline.is_some_and(|d| Instant::now() + delay > d) {
                        return Err(error);
                    }
                    tracing::warn!(%error, to = %change.to, "status write failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

enum Taken {
    Run { attempts: u32 },
    Terminal(Status),
    Missing,
}

/// Answers a delivery; a failure only means the broker will redeliver, which is safe.
async fn answer(acker: &Acker, how: Answer) {
    let sent = match how {
        Answer::Ack => acker.ack(BasicAckOptions::default()).await,
        Answer::Requeue => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Answer::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
    };
    match sent {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            answer = ?how,
            "the delivery's channel is gone; the broker will redeliver the message"
        ),
        Err(error) => tracing::warn!(answer = ?how, %error, "cannot answer the delivery"),
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
}

/// A string header (the request id).
fn header_string(delivery: &Delivery, name: &str) -> Option<String> {
    match header(delivery, name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// An integer header (the delivery count), whatever width the broker used.
fn header_u32(delivery: &Delivery, name: &str) -> Option<u32> {
    let value: i64 = match header(delivery, name)? {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    fn delivery_with(headers: FieldTable) -> Delivery {
        let mut delivery = Delivery::mock(1, "".into(), "q".into(), true, Vec::new());
        delivery.properties = BasicProperties::default().with_headers(headers);
        delivery
    }

    #[test]
    fn the_delivery_count_is_read_whatever_integer_width_the_broker_used() {
        let mut headers = FieldTable::default();
        headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            header_u32(&delivery_with(headers), DELIVERY_COUNT_HEADER),
            Some(3)
        );
        let mut headers = FieldTable::default();
        headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::ShortUInt(2));
        assert_eq!(
            header_u32(&delivery_with(headers), DELIVERY_COUNT_HEADER),
            Some(2)
        );
        assert_eq!(
            header_u32(&delivery_with(FieldTable::default()), DELIVERY_COUNT_HEADER),
            None
        );
    }

    #[test]
    fn the_request_id_is_read_from_its_header() {
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::LongString("req-7".into()),
        );
        assert_eq!(
            header_string(&delivery_with(headers), REQUEST_ID_HEADER).as_deref(),
            Some("req-7")
        );
    }

    #[test]
    fn a_redelivery_of_a_held_task_is_adopted_not_held_twice() {
        let in_hand = InHand::default();
        let id = Uuid::new_v4();
        let first = Delivery::mock(1, "".into(), "q".into(), false, Vec::new());
        let second = Delivery::mock(2, "".into(), "q".into(), true, Vec::new());
        let (_reporter, ticks) = TickReporter::new();
        assert!(in_hand.claim(id, &first.acker, ticks.clone()));
        assert!(in_hand.adopt(id, &second.acker));
        assert!(!in_hand.claim(id, &second.acker, ticks));
        assert_eq!(in_hand.len(), 1);
        assert_eq!(in_hand.release(id), Some(second.acker.clone()));
        assert!(in_hand.is_empty());
        assert!(!in_hand.adopt(id, &first.acker));
    }
}
