//! Steering a task: cancelling it and deleting it.
//!
//! A queued task is cancelled at once through the shared forward-only transition (its message, when an
//! agent takes it, finds a terminal task and is acked without running). A running task is only flagged
//! (`cancel_requested`, shown as `cancelling`, with a `cancelling` event): the agent holding it notices,
//! stops, and stores `cancelled` itself with what the task had gathered. Deleting removes every trace of
//! the task: record, event log, checkpoint, index entries, idempotency entry, and (through a purge request
//! the agents act on) its memory points.

use super::{StoreError, TaskStore};
use crate::store::create::index_member;
use shared::api::CancellingEvent;
use shared::events::{APPEND_EVENT_LUA, EVENT_LOG_MAX_LEN, EventKind, NewEvent};
use shared::store::{Outcome, Transition};
use shared::task::{TaskRecord, TaskResult, field};
use shared::{Status, task::rfc3339};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Purge requests the agents' memory purger keeps (approximately); agents read them every few seconds.
const PURGE_LOG_MAX_LEN: u32 = 10_000;

/// How often a delete polls a running task it asked to cancel.
const DELETE_POLL: Duration = Duration::from_millis(100);

/// KEYS[1] task key, KEYS[2] its event log.
/// ARGV[1] updated_at, ARGV[2] space-separated statuses in which the task is running, ARGV[3] task id,
/// ARGV[4] event channel, ARGV[5] event log length, ARGV[6] `cancelling` event data.
/// Returns {1, status} flagged (or flagged already), {0, status} not running, {-1, ''} missing.
const REQUEST_CANCEL_BODY_LUA: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, ''} end
local running = false
for s in string.gmatch(ARGV[2], '%S+') do
  if s == status then running = true break end
end
if not running then return {0, status} end
if redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[1])
  append_event(KEYS[2], ARGV[4], ARGV[3], ARGV[5], 'cancelling', ARGV[6])
end
return {1, status}
"#;

static REQUEST_CANCEL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{APPEND_EVENT_LUA}{REQUEST_CANCEL_BODY_LUA}")));

/// What a cancel request did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The task was still queued: it is now `cancelled`.
    Cancelled(TaskRecord),
    /// The task is running: its agent was asked to stop (it is shown `cancelling`).
    Cancelling(TaskRecord),
    /// The task had already finished: nothing changed.
    Unchanged(TaskRecord),
    /// No such task, or not the caller's.
    Missing,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Every trace of the task is gone (its memory points as soon as an agent reads the purge request).
    Deleted,
    /// No such task, or not the caller's.
    Missing,
}

impl TaskStore {
    /// Cancels task `id` of `owner`: at once when queued, by asking its agent when running; a finished task
    /// is left as it is. A few round trips (read, change, read back); safe against every race with the
    /// agent, since each change is conditional on the status it finds.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    #[tracing::instrument(skip_all, fields(task_id = %id))]
    pub async fn cancel(&self, id: Uuid, owner: &str) -> Result<CancelOutcome, StoreError> {
        // The status can move between the read and the change (an agent takes the task, or finishes it):
        // then read again. Three rounds cover pending -> accepted -> terminal.
        for _ in 0..3 {
            let Some(record) = self.get_owned(id, owner).await? else {
                return Ok(CancelOutcome::Missing);
            };
            if record.status.is_terminal() {
                return Ok(CancelOutcome::Unchanged(record));
            }
            if record.status == Status::Pending {
                let result = TaskResult::cancelled(0, record.max_ticks, Vec::new(), Vec::new());
                let json = serde_json::to_string(&result).expect("a TaskResult always serialises");
                let cancel = Transition::to(Status::Cancelled)
                    .only_from(&[Status::Pending])
                    .with(field::RESULT, json)
                    .refunding(0);
                match self.apply(id, &cancel).await? {
                    Outcome::Applied { .. } => {
                        tracing::info!("queued task cancelled");
                        return Ok(match self.get_owned(id, owner).await? {
                            Some(record) => CancelOutcome::Cancelled(record),
                            None => CancelOutcome::Missing,
                        });
                    }
                    Outcome::Missing => return Ok(CancelOutcome::Missing),
                    Outcome::Refused { .. } | Outcome::Leased { .. } => continue,
                }
            }
            match self.request_cancel(id).await? {
                Some(true) => {
                    tracing::info!("running task asked to stop");
                    return self.settled(id, owner).await;
                }
                Some(false) => continue,
                None => return Ok(CancelOutcome::Missing),
            }
        }
        self.settled(id, owner).await
    }

    /// A running task after its cancel was requested: still `cancelling`, or already finished (by the
    /// cancel or by its own end).
    async fn settled(&self, id: Uuid, owner: &str) -> Result<CancelOutcome, StoreError> {
        Ok(match self.get_owned(id, owner).await? {
            Some(record) if record.status.is_terminal() => CancelOutcome::Unchanged(record),
            Some(record) => CancelOutcome::Cancelling(record),
            None => CancelOutcome::Missing,
        })
    }

    /// Flags a running task for cancelling. `Some(true)` when flagged (now or before), `Some(false)` when
    /// it is not running, `None` when it does not exist.
    async fn request_cancel(&self, id: Uuid) -> Result<Option<bool>, StoreError> {
        let running = Status::ALL
            .into_iter()
            .filter(|s| s.is_running())
            .map(Status::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let event = NewEvent::new(EventKind::Cancelling, &CancellingEvent::default());
        self.bounded(async {
            let mut conn = self.connection();
            let (code, _status): (i64, String) = REQUEST_CANCEL
                .key(self.keys.task(id))
                .key(self.keys.task_events(id))
                .arg(rfc3339(chrono::Utc::now()))
                .arg(running)
                .arg(id.to_string())
                .arg(self.keys.events_channel())
                .arg(EVENT_LOG_MAX_LEN)
                .arg(&event.data)
                .invoke_async(&mut conn)
                .await?;
            Ok(match code {
                1 => Some(true),
                0 => Some(false),
                _ => None,
            })
        })
        .await
    }

    /// Deletes task `id` of `owner`. A running task is cancelled first, and given up to `wait` to stop;
    /// if its agent does not answer in time the task is deleted anyway (the agent stops when it finds
    /// the record gone).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    #[tracing::instrument(skip_all, fields(task_id = %id))]
    pub async fn delete(
        &self,
        id: Uuid,
        owner: &str,
        wait: Duration,
    ) -> Result<DeleteOutcome, StoreError> {
        let record = match self.cancel(id, owner).await? {
            CancelOutcome::Missing => return Ok(DeleteOutcome::Missing),
            CancelOutcome::Cancelling(_) => self.await_end(id, owner, wait).await?,
            CancelOutcome::Cancelled(record) | CancelOutcome::Unchanged(record) => Some(record),
        };
        let Some(record) = record else {
            return Ok(DeleteOutcome::Missing);
        };
        self.remove(id, &record).await?;
        tracing::info!(status = %record.status, "task deleted");
        Ok(DeleteOutcome::Deleted)
    }

    /// Polls until the task ends or `wait` passes; the record as last seen.
    async fn await_end(
        &self,
        id: Uuid,
        owner: &str,
        wait: Duration,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            let record = self.get_owned(id, owner).await?;
            match &record {
                Some(r) if !r.status.is_terminal() && Instant::now() < deadline => {
                    tokio::time::sleep(DELETE_POLL).await;
                }
                Some(r) if !r.status.is_terminal() => {
                    tracing::warn!(
                        ?wait,
                        "the agent did not stop the task in time; deleting it anyway"
                    );
                    return Ok(record);
                }
                _ => return Ok(record),
            }
        }
    }

    /// Removes every key of the task, its index entries and idempotency entry, leaves a tombstone (so an
    /// agent that meets its message later drops it quietly), and asks the agents to purge its memory, in
    /// one atomic pipeline.
    async fn remove(&self, id: Uuid, record: &TaskRecord) -> Result<(), StoreError> {
        let keys = &self.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&[keys.task(id), keys.task_events(id), keys.task_state(id)])
            .ignore()
            .zrem(
                keys.user_tasks(&record.owner),
                index_member(record.created_at.timestamp_millis(), id),
            )
            .ignore()
            .set_ex(keys.task_deleted(id), "1", self.task_ttl_seconds.max(1))
            .ignore();
        if !record.active_key.is_empty() {
            pipe.zrem(&record.active_key, id.to_string()).ignore();
        }
        if let Some(key) = &record.idempotency_key {
            pipe.del(key).ignore();
        }
        pipe.cmd("XADD")
            .arg(keys.memory_purges())
            .arg("MAXLEN")
            .arg("~")
            .arg(PURGE_LOG_MAX_LEN)
            .arg("*")
            .arg("owner")
            .arg(&record.owner)
            .arg("task")
            .arg(id.to_string())
            .ignore();
        self.bounded(async {
            let mut conn = self.connection();
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }
}
