//! Queueing a task once it is charged and recorded, detached from the request that created it.
//!
//! A `pending` record must end up either with its message on the queue or `failed` with its ticks refunded:
//! a `pending` record with no message would wait forever and keep the user's ticks. Two things could leave
//! one behind, and this module closes both:
//! - The client going away: axum drops a handler whose client disconnects, which could stop it between the
//!   record and the publish. The publish, and the "failed" write when it does not succeed, run in a task of
//!   their own, which the handler only awaits.
//! - Redis going away too: when the "failed" write fails as well, it is retried in the background with
//!   backoff until it lands.
//! - Redis answering the create too late: the request is answered 503 without knowing whether the task
//!   was recorded and charged, so the create is abandoned (see [`Enqueuer::abandon`]): a mark stops it if
//!   it has not run yet, and a task it recorded is failed and refunded. At shutdown the gateway waits for those (bounded) and names, at ERROR, every
//!   task it still has to leave `pending`.

use crate::publisher::Publisher;
use crate::store::{StoreError, TaskStore};
use shared::Status;
use shared::backoff::Backoff;
use shared::queue::Origin;
use shared::store::Outcome;
use shared::task::TaskMessage;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

/// Tries at writing "failed" before the client gets its answer, and the pause after the first.
const QUICK_ATTEMPTS: u32 = 3;
const QUICK_BACKOFF: Duration = Duration::from_millis(100);
/// Pauses between the background retries: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What became of failing a task that could not be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failing {
    /// Failed and refunded.
    Failed,
    /// Redis did not answer; retried in the background until it does.
    Retrying,
    /// The task had left `pending` (an agent took it, or its owner cancelled it): left alone.
    TakenAlready(Status),
}

/// How to settle a task that was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// It was recorded: fail it.
    Fail,
    /// Whether it was recorded is unknown: stop a late create, then fail it if it was recorded.
    Abandon,
}

/// Publishes recorded tasks, and fails with a refund those it cannot publish. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Enqueuer {
    publisher: Publisher,
    store: TaskStore,
    /// Every publish in flight and every background retry.
    tracker: TaskTracker,
    /// Cancelled when the gateway stops waiting for background retries.
    abandon: CancellationToken,
}

impl Enqueuer {
    /// An enqueuer publishing through `publisher` and writing failures to `store`.
    pub fn new(publisher: Publisher, store: TaskStore) -> Self {
        Self {
            publisher,
            store,
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
        }
    }

    /// Publishes `message` and waits for the broker's confirm. The work goes on if the caller's future is
    /// dropped.
    ///
    /// # Errors
    /// Why the task could not be queued; it has then been marked `failed` with its ticks refunded, or will
    /// be as soon as Redis answers.
    pub async fn enqueue(
        &self,
        message: TaskMessage,
        origin: Origin,
        idempotency_key: Option<String>,
    ) -> Result<(), String> {
        let this = self.clone();
        let work = async move {
            this.publish_or_fail(&message, &origin).await?;
            if let Some(key) = idempotency_key {
                this.mark_answered(&key).await;
            }
            Ok(())
        };
        self.tracker
            .spawn(work.in_current_span())
            .await
            .unwrap_or_else(|error| Err(format!("queueing the task failed: {error}")))
    }

    async fn publish_or_fail(&self, message: &TaskMessage, origin: &Origin) -> Result<(), String> {
        let Err(error) = self.publisher.publish(message, origin).await else {
            return Ok(());
        };
        let reason = format!("the task could not be queued: {error}");
        match self.fail(message.correlation_id, &reason).await {
            Failing::Failed | Failing::Retrying => Err(reason),
            Failing::TakenAlready(status) => {
                // The broker took the message after all (its confirm was late) and an agent has the
                // task, or its owner ended it: it is not an unqueued task.
                tracing::warn!(%error, ?status, "the publish timed out but the task was taken; answering as queued");
                Ok(())
            }
        }
    }

    /// Records that the request with idempotency entry `key` is answered 202. Best effort: if it fails,
    /// a repeated request is settled from the task's own status (see `store::create::replay`).
    async fn mark_answered(&self, key: &str) {
        if let Err(error) = self.store.mark_idempotency_done(key).await {
            tracing::warn!(%error, "could not mark the idempotency key answered");
        }
    }

    /// Gives up on creating task `id` after the store did not answer (it may have recorded and charged
    /// it, or may still): marks the create abandoned and, if the task was recorded, fails it with its
    /// ticks refunded; at once if Redis answers within a few tries, else in the background.
    pub async fn abandon(&self, id: Uuid, reason: &str) {
        if matches!(
            self.settle(id, reason, Settle::Abandon).await,
            Failing::Retrying
        ) {
            tracing::warn!(reason, "the create is abandoned once Redis answers");
        }
    }

    /// Marks the task `id` failed with `reason` and refunds it if it is still `pending`, trying a few times
    /// at once and then, if Redis still does not answer, in the background.
    async fn fail(&self, id: Uuid, reason: &str) -> Failing {
        self.settle(id, reason, Settle::Fail).await
    }

    async fn settle(&self, id: Uuid, reason: &str, how: Settle) -> Failing {
        for attempt in 1..=QUICK_ATTEMPTS {
            match self.settle_once(id, reason, how).await {
                Ok(Some(Outcome::Refused { current, .. })) => {
                    return Failing::TakenAlready(current);
                }
                Ok(outcome) => {
                    // The request's answer (a 503, logged at WARN with its cause) is the event an
                    // operator acts on; that its task was failed and refunded is the expected sequel.
                    tracing::info!(?outcome, reason, "task settled: it was not queued");
                    return Failing::Failed;
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "could not settle the unqueued task");
                    if attempt < QUICK_ATTEMPTS {
                        tokio::time::sleep(QUICK_BACKOFF * attempt).await;
                    }
                }
            }
        }
        let this = self.clone();
        let reason = reason.to_owned();
        let retry = async move { this.keep_settling(id, &reason, how).await };
        self.tracker.spawn(retry.in_current_span());
        Failing::Retrying
    }

    /// One try: the abandon mark first when abandoning (`None` when the task was never recorded), then
    /// the failure of a task still `pending`.
    async fn settle_once(
        &self,
        id: Uuid,
        reason: &str,
        how: Settle,
    ) -> Result<Option<Outcome>, StoreError> {
        if how == Settle::Abandon && !self.store.abandon_create(id).await? {
            return Ok(None);
        }
        self.store.fail_unqueued(id, reason).await.map(Some)
    }

    async fn keep_settling(&self, id: Uuid, reason: &str, how: Settle) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            tokio::select! {
                () = self.abandon.cancelled() => {
                    tracing::error!(
                        task_id = %id,
                        reason,
                        "the gateway stopped before Redis answered: this task may stay pending with no \
                         message; mark it failed and refund its ticks"
                    );
                    return;
                }
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            match self.settle_once(id, reason, how).await {
                Ok(outcome) => {
                    tracing::warn!(?outcome, reason, "task settled once Redis answered again");
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "still cannot settle the unqueued task");
                }
            }
        }
    }

    /// At shutdown: waits up to `grace` for publishes in flight and background retries, then gives up on
    /// the retries (each logs its task at ERROR). Returns once every one of them has ended.
    pub async fn finish(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            self.abandon.cancel();
            self.tracker.wait().await;
        }
    }
}
