//! The worker: what happens to one delivery, from taking it to the ack.
//!
//! [`Worker::try_execute_task`] is the whole life of a delivery, driven step by step in tests:
//! parse the message (a body that does not parse is rejected to the DLQ), read what the task record says
//! the task is (its owner, mandate and tick budget: the message only names the task), take the task
//! (`accepted`, counting the attempt; a terminal task is acked without running, a deleted one dropped, a
//! missing record rejected), run the [`TaskExecutor`] while storing each tick with its event and
//! heartbeating `in_progress` ([`execute`]), store the terminal status through the shared atomic
//! transition (refunding unused ticks once), and only then ack.
//!
//! Deliveries are counted: the quorum queue's `x-delivery-limit` is `MAX_DELIVERIES`, so the broker
//! delivers a message `MAX_DELIVERIES + 1` times before dead-lettering it. The worker runs a task on at
//! most `MAX_DELIVERIES` deliveries and marks it `failed` on the next one, so a task whose worker keeps
//! dying never stays `in_progress` forever. The count is the task record's `attempts`, which each take
//! increments in the same atomic write, never the message's `x-delivery-count` header: the broker sets
//! that on a redelivery, but a publisher can set it on the first delivery, and it would then decide that
//! the task is out of deliveries before it ever ran. A delivery the broker made but no worker recorded
//! (its worker died before the take was stored) is not counted; if that lets the broker's last delivery
//! end unrecorded too, the message is dead-lettered and the dead-letter sweeper ends the task.

mod checkpoint;
mod delivery;
mod execute;
mod in_hand;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use in_hand::{CANCEL_POLL, InHand, TaskInHand};

use crate::executor::{Resume, TaskContext, TaskExecutor, TickFeed, TickReporter};
use delivery::{Answer, answer};
use execute::{Ending, RunEnd, Tally};
use lapin::Acker;
use lapin::message::Delivery;
use redis::aio::ConnectionManager;
use shared::Keys;
use shared::Status;
use shared::api::AcceptedEvent;
use shared::backoff::Backoff;
use shared::events::{EventKind, NewEvent};
use shared::store::{Lease, Outcome, StoreError, Transition, transition};
use shared::task::{TaskMessage, field};
use shared::telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// The longest a retryable failure holds its message before giving it back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How long taking a task may wait for Redis before the message is given back.
const TAKE_DEADLINE: Duration = Duration::from_secs(30);

/// How often a delivery held behind another worker's live lease looks again.
const LEASE_POLL: Duration = Duration::from_secs(1);

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
    /// The longest a task may run, across all its deliveries (`TASK_MAX_SECONDS`); past it the task is
    /// stopped and failed, keeping nothing but its error, and its unused ticks are refunded.
    pub max_run: Duration,
    /// This worker's lease, written with every status write: a delivery of a task whose lease another
    /// worker renewed within its lifetime (`WORKER_TTL_SECONDS`) is held, not run beside it.
    pub lease: Lease,
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
    /// Its owner cancelled it and `cancelled` was stored; the message was acked.
    Cancelled,
    /// The task was already terminal (a redelivery, or another worker finished it); acked, not run.
    AlreadyTerminal(Status),
    /// Its owner deleted it (before or while it ran); acked, and its memory forgotten.
    Deleted,
    /// The message is poison (unparseable, or no such task): rejected without requeue, to the DLQ.
    Rejected(String),
    /// Given back to the queue (nack with requeue) for this reason.
    Requeued(String),
    /// A redelivery of a task this worker is running (its channel died meanwhile): the running task
    /// acks this delivery when it ends.
    Adopted,
    /// Another worker took the task over after this worker's lease lapsed; this run stopped and its
    /// delivery was acked (the other worker holds the live one).
    TakenOver,
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

/// What the task record says about the task a message names.
enum Recorded {
    /// The message as the record has it (the record's owner, mandate, `max_ticks` and creation time), and
    /// the deliveries of it workers took so far.
    Task { message: TaskMessage, attempts: u32 },
    /// There is no record.
    Missing,
    /// The record lacks this field (a record the gateway wrote always has it).
    Incomplete(&'static str),
}

enum Taken {
    Run {
        attempts: u32,
        cancel_requested: bool,
    },
    Terminal(Status),
    Missing,
    /// Another worker holds a live lease on it.
    Held,
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

    /// Stops held tasks whose owner asked to cancel them, polling every `period` until `stop` fires.
    pub async fn watch_cancellations(self, period: Duration, stop: CancellationToken) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(error) = self
                .in_hand
                .poll_cancellations(&self.redis, &self.keys)
                .await
            {
                tracing::debug!(%error, "cannot read cancel requests; retrying");
            }
        }
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
        let origin = delivery::origin(&delivery);
        let span = tracing::info_span!(
            "task",
            task_id = %message.correlation_id,
            request_id = origin.request_id.as_deref().unwrap_or(""),
            trace_id = tracing::field::Empty,
        );
        // The task's span continues the request's trace; model and search calls hand it on.
        let trace = telemetry::continue_trace(&span, origin.trace.as_ref());
        telemetry::in_trace(trace, self.handle(message, origin.request_id, delivery))
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
        let (reporter, feed) = TickReporter::new();
        let cancelled = CancellationToken::new();
        if !self
            .in_hand
            .claim(id, &delivery.acker, feed.tick.clone(), cancelled.clone())
        {
            return Handled::Adopted;
        }
        let handled = self
            .run(message, request_id, reporter, feed, cancelled)
            .await;
        let acker = self
            .in_hand
            .release(id)
            .unwrap_or_else(|| delivery.acker.clone());
        let answer_with = match &handled {
            Handled::Completed
            | Handled::Failed(_)
            | Handled::Cancelled
            | Handled::AlreadyTerminal(_)
            | Handled::Deleted
            | Handled::TakenOver => Answer::Ack,
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
        reporter: TickReporter,
        feed: TickFeed,
        cancelled: CancellationToken,
    ) -> Handled {
        let id = message.correlation_id;
        // Whose task it is, what it asks, its budget and how often it was taken come from the record the
        // gateway and the workers wrote, never from the message: whoever publishes it writes those.
        let (message, attempts_before) = match self.recorded(message).await {
            Ok(Recorded::Task { message, attempts }) => (message, attempts),
            Ok(Recorded::Missing) => return self.missing(id).await,
            Ok(Recorded::Incomplete(missing)) => {
                tracing::warn!(
                    field = missing,
                    "the task record lacks a field; the message goes to the dead-letter queue"
                );
                return Handled::Rejected(format!("the task record has no {missing}"));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the task record; giving the message back");
                return Handled::Requeued(format!("cannot read the task record: {error}"));
            }
        };
        let taken = self
            .take_when_free(id, attempts_before.saturating_add(1))
            .await;
        let (attempts, cancel_requested) = match taken {
            Ok(Taken::Run {
                attempts,
                cancel_requested,
            }) => (attempts, cancel_requested),
            Ok(Taken::Held) => {
                tracing::info!(
                    "another worker holds a live lease on the task; giving the message back"
                );
                return Handled::Requeued("another worker is running the task".to_owned());
            }
            Ok(Taken::Terminal(status)) => {
                tracing::info!(%status, "the task is already terminal; acked without running");
                return Handled::AlreadyTerminal(status);
            }
            Ok(Taken::Missing) => return self.missing(id).await,
            Err(error) => {
                tracing::warn!(%error, "cannot take the task; giving the message back");
                return Handled::Requeued(format!("cannot take the task: {error}"));
            }
        };
        if cancel_requested {
            tracing::info!("its owner cancelled the task before it resumed; not running it");
            return self
                .end_unrun(id, Ending::Cancelled, message.max_ticks)
                .await;
        }
        let max = self.config.max_deliveries;
        let (delivery_number, last) = match attempt(attempts, max) {
            Attempt::Run { number, last } => (number, last),
            Attempt::Exhausted => {
                let error = format!(
                    "gave up after {max} deliveries: the worker running the task died or gave it back each time"
                );
                tracing::warn!(%error, "the task ran out of deliveries");
                return self
                    .end_unrun(id, Ending::Failed(error), message.max_ticks)
                    .await;
            }
        };
        // A task taken before resumes where its last stored tick left it.
        let (resume, tally) = match delivery_number {
            1 => (None, Tally::default()),
            _ => self.resume_point(id).await,
        };
        if let Some(resume) = &resume {
            reporter.report(resume.tick);
            tracing::info!(
                delivery = delivery_number,
                after_tick = resume.tick,
                "task resumed"
            );
        } else {
            tracing::info!(delivery = delivery_number, "task taken");
        }

        let owner = message.owner.clone();
        let max_ticks = message.max_ticks;
        let context = TaskContext {
            id,
            message,
            request_id,
            delivery: delivery_number,
            resume,
        };
        let ran = self
            .execute(context, reporter, feed, cancelled, tally)
            .await;
        match ran.end {
            RunEnd::Finished(Err(crate::ExecutionError::Retryable(error))) if !last => {
                let delay = (self.config.retry_delay * delivery_number).min(MAX_RETRY_DELAY);
                tracing::warn!(%error, ?delay, "the task hit a retryable error; giving the message back");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stopping.draining.cancelled() => {}
                }
                Handled::Requeued(error)
            }
            RunEnd::Finished(Err(crate::ExecutionError::Retryable(error))) => {
                let error = format!("gave up after {max} deliveries; the last one failed: {error}");
                tracing::warn!(%error, "the task failed on its last delivery");
                self.end(id, Ending::Failed(error), &ran.tally, max_ticks)
                    .await
            }
            RunEnd::Finished(Err(crate::ExecutionError::Fatal(error))) => {
                tracing::warn!(%error, "the task failed");
                self.end(id, Ending::Failed(error), &ran.tally, max_ticks)
                    .await
            }
            RunEnd::Finished(Ok(result)) => {
                self.end(id, Ending::Completed(result), &ran.tally, max_ticks)
                    .await
            }
            RunEnd::Cancelled => {
                tracing::info!(ticks = ran.tally.ticks, "cancelled at its owner's request");
                self.end(id, Ending::Cancelled, &ran.tally, max_ticks).await
            }
            RunEnd::GraceExpired => {
                tracing::warn!("the shutdown grace period ran out; giving the message back");
                Handled::Requeued("the shutdown grace period ran out".to_owned())
            }
            RunEnd::TerminalElsewhere(status) => {
                tracing::info!(%status, "another worker finished the task; stopped");
                Handled::AlreadyTerminal(status)
            }
            RunEnd::Deleted => self.deleted(&owner, id).await,
            RunEnd::TooLong(max_run) => {
                let error = format!(
                    "the task ran longer than its time limit of {} s (TASK_MAX_SECONDS) and was stopped",
                    max_run.as_secs()
                );
                tracing::warn!(%error, ticks = ran.tally.ticks, "the task ran too long");
                self.end(id, Ending::Failed(error), &ran.tally, max_ticks)
                    .await
            }
            RunEnd::TakenOver => {
                tracing::warn!(
                    "another worker took the task over after this worker's lease lapsed; stopped"
                );
                Handled::TakenOver
            }
        }
    }

    /// Takes the task (its `accepted` event numbering the attempt `attempt`); while another worker holds a
    /// live lease on it, waits (polling) up to the lease's lifetime for that lease to lapse or the task to
    /// end, then gives up with [`Taken::Held`]. A delivery met while draining is not held.
    async fn take_when_free(&self, id: Uuid, attempt: u32) -> Result<Taken, StoreError> {
        let poll = self.config.status_interval.min(LEASE_POLL);
        // A lease seen at the start lapses within its lifetime unless renewed: hold a little longer.
        let until = Instant::now() + self.config.lease.lifetime + 2 * poll;
        loop {
            let taken = self.take(id, attempt).await?;
            if !matches!(taken, Taken::Held) || Instant::now() + poll > until {
                return Ok(taken);
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = self.stopping.draining.cancelled() => return Ok(Taken::Held),
            }
        }
    }

    /// The task `message` names, as its record has it, and the deliveries workers took so far (one round
    /// trip, Redis failures retried with backoff for up to [`TAKE_DEADLINE`]). A message whose owner,
    /// mandate or `max_ticks` disagree with the record is logged (WARN, naming the fields, not their
    /// values) and runs with the record's.
    async fn recorded(&self, message: TaskMessage) -> Result<Recorded, redis::RedisError> {
        let id = message.correlation_id;
        let deadline = Instant::now() + TAKE_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let fields: Vec<Option<String>> = loop {
            let read = redis::cmd("HMGET")
                .arg(self.keys.task(id))
                .arg(field::OWNER)
                .arg(field::MANDATE)
                .arg(field::MAX_TICKS)
                .arg(field::CREATED_AT)
                .arg(field::ATTEMPTS)
                .query_async(&mut self.redis.clone())
                .await;
            match read {
                Ok(fields) => break fields,
                Err(error) => {
                    let delay = backoff.next_delay();
                    if Instant::now() + delay > deadline {
                        return Err(error);
                    }
                    tracing::warn!(%error, "cannot read the task record; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let value = |i: usize| fields.get(i).cloned().flatten();
        let (owner, mandate, max_ticks, created_at) = (value(0), value(1), value(2), value(3));
        if owner.is_none() && mandate.is_none() && max_ticks.is_none() && created_at.is_none() {
            return Ok(Recorded::Missing);
        }
        let Some(owner) = owner else {
            return Ok(Recorded::Incomplete(field::OWNER));
        };
        let Some(mandate) = mandate else {
            return Ok(Recorded::Incomplete(field::MANDATE));
        };
        let Some(max_ticks) = max_ticks.and_then(|n| n.parse::<u32>().ok()) else {
            return Ok(Recorded::Incomplete(field::MAX_TICKS));
        };
        let disagreeing: Vec<&str> = [
            (field::OWNER, message.owner != owner),
            (field::MANDATE, message.mandate != mandate),
            (field::MAX_TICKS, message.max_ticks != max_ticks),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        if !disagreeing.is_empty() {
            tracing::warn!(
                fields = %disagreeing.join(","),
                "the message disagrees with the task record; running the record's values"
            );
        }
        let created_at = created_at
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
            .map_or(message.created_at, |at| at.with_timezone(&chrono::Utc));
        let attempts = value(4).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(Recorded::Task {
            message: TaskMessage {
                correlation_id: id,
                mandate,
                max_ticks,
                owner,
                created_at,
            },
            attempts,
        })
    }

    /// Moves the task to `accepted` (or re-takes it when a dead worker left it `in_progress`), counting
    /// the attempt and logging an `accepted` event numbering it `attempt`.
    async fn take(&self, id: Uuid, attempt: u32) -> Result<Taken, StoreError> {
        let event = NewEvent::new(EventKind::Accepted, &AcceptedEvent { attempt });
        let accepted = Transition::to(Status::Accepted)
            .counting_attempt()
            .event(event.clone());
        let retake = Transition::to(Status::InProgress)
            .counting_attempt()
            .event(event);
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
            Outcome::Applied {
                attempts,
                cancel_requested,
            } => Taken::Run {
                attempts,
                cancel_requested,
            },
            Outcome::Refused { current, .. } => Taken::Terminal(current),
            Outcome::Missing => Taken::Missing,
            Outcome::Leased { .. } => Taken::Held,
        })
    }

    /// A message whose task has no record: deleted by its owner (a tombstone says so) is dropped; anything
    /// else is unexplained and goes to the dead-letter queue for an operator.
    async fn missing(&self, id: Uuid) -> Handled {
        let mut conn = self.redis.clone();
        let deleted: bool = redis::cmd("EXISTS")
            .arg(self.keys.task_deleted(id))
            .query_async(&mut conn)
            .await
            .unwrap_or(false);
        if deleted {
            tracing::info!("the task was deleted by its owner; its message is dropped");
            Handled::Deleted
        } else {
            tracing::warn!("no such task record; the message goes to the dead-letter queue");
            Handled::Rejected("the task record does not exist".to_owned())
        }
    }

    /// The task was deleted while it ran: forget its memory here too (the gateway's purge request may
    /// have been read before this run wrote its last points).
    async fn deleted(&self, owner: &str, id: Uuid) -> Handled {
        tracing::info!("the task was deleted while it ran; stopped");
        if let Err(error) = self.executor.forget(owner, id).await {
            tracing::warn!(%error, "could not forget the deleted task's memory");
        }
        Handled::Deleted
    }

    /// Applies `change` once, under this worker's lease.
    async fn store(&self, id: Uuid, change: &Transition) -> Result<Outcome, StoreError> {
        let mut conn = self.redis.clone();
        let leased = change.clone().leased(&self.config.lease);
        transition(
            &mut conn,
            &self.keys,
            id,
            &leased,
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

    /// Where an earlier delivery of task `id` stopped: its checkpoint, or (when there is none, or it
    /// cannot be read) what its record counts. `None` when it ran no tick. One round trip.
    async fn resume_point(&self, id: Uuid) -> (Option<Resume>, Tally) {
        let read: Result<(Option<u32>, Option<String>, Option<String>), _> = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.task(id))
            .arg(field::TICK)
            .arg(field::USAGE)
            .get(self.keys.task_state(id))
            .query_async::<(Vec<Option<String>>, Option<String>)>(&mut self.redis.clone())
            .await
            .map(|(fields, state)| {
                let tick = fields
                    .first()
                    .cloned()
                    .flatten()
                    .and_then(|t| t.parse().ok());
                let usage = fields.get(1).cloned().flatten();
                (tick, usage, state)
            });
        let (tick, usage, state) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read the checkpoint; running from the start");
                return (None, Tally::default());
            }
        };
        if let Some(text) = state {
            match Checkpoint::decode(&text) {
                Ok(checkpoint) => {
                    let tally = Tally {
                        ticks: checkpoint.tick,
                        usage: Some(checkpoint.usage),
                        deliverables: checkpoint.deliverables.clone(),
                        sources: checkpoint.sources.clone(),
                        run_before: Duration::from_millis(checkpoint.run_ms),
                    };
                    return (Some(checkpoint.resume()), tally);
                }
                Err(error) => tracing::warn!(
                    %error,
                    "the checkpoint cannot be used; resuming from the task record with a fresh state"
                ),
            }
        }
        let tick = tick.unwrap_or(0);
        if tick == 0 {
            return (None, Tally::default());
        }
        let usage = usage
            .and_then(|u| serde_json::from_str(&u).ok())
            .unwrap_or_default();
        let resume = Resume {
            tick,
            usage,
            state: None,
        };
        let tally = Tally {
            ticks: tick,
            usage: Some(usage),
            ..Tally::default()
        };
        (Some(resume), tally)
    }
}

/// Which delivery of its task a taken delivery is, as the record counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Run the task: delivery `number` (from 1); `last` when no later delivery may run it, so a
    /// retryable failure fails the task rather than giving the message back.
    Run { number: u32, last: bool },
    /// Taken more often than `MAX_DELIVERIES`: the task is failed without running.
    Exhausted,
}

/// The pure rule, from `attempts`, the record's count of deliveries taken (this one included), and
/// `MAX_DELIVERIES`. Nothing a publisher writes into a message enters it.
fn attempt(attempts: u32, max_deliveries: u32) -> Attempt {
    let number = attempts.max(1);
    if number > max_deliveries {
        Attempt::Exhausted
    } else {
        Attempt::Run {
            number,
            last: number >= max_deliveries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_runs_on_each_delivery_the_record_counts_up_to_the_limit_and_the_last_is_marked() {
        assert_eq!(
            attempt(1, 3),
            Attempt::Run {
                number: 1,
                last: false
            }
        );
        assert_eq!(
            attempt(2, 3),
            Attempt::Run {
                number: 2,
                last: false
            }
        );
        assert_eq!(
            attempt(3, 3),
            Attempt::Run {
                number: 3,
                last: true
            }
        );
        assert_eq!(
            attempt(1, 1),
            Attempt::Run {
                number: 1,
                last: true
            }
        );
    }

    #[test]
    fn a_task_taken_more_often_than_the_limit_is_out_of_deliveries() {
        assert_eq!(attempt(4, 3), Attempt::Exhausted);
        assert_eq!(attempt(u32::MAX, 3), Attempt::Exhausted);
    }

    #[test]
    fn a_record_that_counts_no_take_still_makes_a_first_delivery() {
        assert_eq!(
            attempt(0, 3),
            Attempt::Run {
                number: 1,
                last: false
            }
        );
    }
}
