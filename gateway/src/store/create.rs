//! Creating a task: idempotency, the daily quota, the active-task cap, the record, the owner's index and the
//! `created` event, in one Lua script and so one round trip.
//!
//! Two concurrent requests can never overspend the quota nor pass the cap, a refused request writes
//! nothing (and keeps no idempotency key), and a request repeating an `Idempotency-Key` charges nothing.

use super::{StoreError, TaskStore};
use crate::quota::QUOTA_KEY_TTL_SECONDS;
use shared::Status;
use shared::api::CreatedEvent;
use shared::events::{EVENT_LOG_MAX_LEN, EventKind, NewEvent};
use shared::task::TaskRecord;
use std::sync::LazyLock;
use uuid::Uuid;

/// An idempotency entry is kept this long after the request that created it.
pub const IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;

/// How long an abandon mark is kept: far longer than any create can wait in Redis.
const ABANDON_MARK_TTL_SECONDS: u64 = 3600;

/// Index entries older than this many task lifetimes are dropped when a task is created: their records
/// expired long ago.
const INDEX_RETENTION_TTLS: u64 = 2;

/// KEYS[1] quota key, KEYS[2] task key, KEYS[3] its event log, KEYS[4] the owner's task index, KEYS[5] the
/// owner's active set, KEYS[6] the task's abandon marker, KEYS[7] the idempotency entry (only when the
/// request carries a key).
/// ARGV[1] ticks to charge, ARGV[2] daily limit, ARGV[3] quota key TTL, ARGV[4] active-task cap, ARGV[5]
/// task id, ARGV[6] index member, ARGV[7] creation time (ms), ARGV[8] event log length, ARGV[9] `created`
/// event data, ARGV[10] request fingerprint, ARGV[11] idempotency TTL, ARGV[12] index members below this
/// one are dropped, ARGV[13..] the record's field/value pairs.
///
/// The `created` event is logged but not announced: nobody can be following a task whose id this very
/// request is about to hand out, and announcing it would cost every gateway a message per task created.
/// Returns {1, remaining} recorded; {0, remaining} over the quota; {-1, 0} the task id exists; {-2, active}
/// at the cap; {-3, ''} the key was used with another request; {-4, task id, state} the key was used with
/// this request before; {-5, 0} the gateway abandoned this create already. Nothing is written unless the
/// answer is 1.
const CREATE_BODY_LUA: &str = r#"
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {-5, 0}
end
if #KEYS == 7 then
  local entry = redis.call('HMGET', KEYS[7], 'task', 'task_key', 'fingerprint', 'state')
  if entry[1] then
    if redis.call('EXISTS', entry[2]) == 1 then
      if entry[3] ~= ARGV[10] then return {-3, ''} end
      return {-4, entry[1], entry[4]}
    end
    redis.call('DEL', KEYS[7])
  end
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local charge = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if used + charge > limit then
  return {0, math.max(limit - used, 0)}
end
local active = redis.call('ZCARD', KEYS[5])
if active >= tonumber(ARGV[4]) then
  return {-2, active}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1, 0}
end
redis.call('INCRBY', KEYS[1], charge)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 13))
redis.call('ZADD', KEYS[4], 0, ARGV[6])
redis.call('ZREMRANGEBYLEX', KEYS[4], '-', '(' .. ARGV[12])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'type', 'created', 'data', ARGV[9])
if #KEYS == 7 then
  redis.call('HSET', KEYS[7], 'task', ARGV[5], 'task_key', KEYS[2], 'fingerprint', ARGV[10], 'state', 'in_progress')
  redis.call('EXPIRE', KEYS[7], ARGV[11])
end
return {1, limit - used - charge}
"#;

static CREATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CREATE_BODY_LUA));

/// A task to create.
#[derive(Debug)]
pub struct NewTask<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its record, `pending`.
    pub record: &'a TaskRecord,
    /// The daily tick limit.
    pub daily_limit: u32,
    /// The most queued-or-running tasks the owner may have.
    pub active_cap: u32,
    /// The request's `Idempotency-Key`, if it carried one.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and what identifies the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The entry's full key (see [`shared::Keys::idempotency`]).
    pub key: String,
    /// A digest of the request (what it asks for, after validation).
    pub fingerprint: String,
}

/// How far the request that first used an idempotency key got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayState {
    /// Still publishing, or answered before the entry could be marked.
    InProgress,
    /// Answered 202: the task was queued.
    Done,
}

/// What creating a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Charged and recorded; `remaining` ticks are left today.
    Recorded {
        /// Ticks left today after this charge.
        remaining: u32,
    },
    /// The charge would pass the limit; nothing was written.
    QuotaExceeded {
        /// Ticks left today.
        remaining: u32,
    },
    /// The owner already has this many tasks queued or running, the cap; nothing was written.
    TooManyActive {
        /// Tasks queued or running.
        active: u32,
    },
    /// A task with this id already exists; nothing was written.
    Duplicate,
    /// The idempotency key was used with another request; nothing was written.
    KeyReused,
    /// The gateway had abandoned this create (an earlier reply came too late); nothing was written.
    Abandoned,
    /// The idempotency key was used with this same request, which created `task`.
    Replay {
        /// The task the first request created.
        task: Uuid,
        /// How far that request got.
        state: ReplayState,
    },
}

/// The owner's index member of a task: its creation time (ms, zero-padded) and id, so that members sort
/// newest last and a cursor stays valid while tasks are added.
pub fn index_member(created_ms: i64, id: Uuid) -> String {
    format!("{:013}:{id}", created_ms.max(0))
}

impl TaskStore {
    /// Charges the record's `max_ticks` to its quota key and records the task, unless the idempotency
    /// key was seen, the quota or the active-task cap would be passed, or the id exists.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails; then nothing was written or everything was.
    #[tracing::instrument(skip_all, fields(task_id = %task.id))]
    pub async fn create(&self, task: &NewTask<'_>) -> Result<Created, StoreError> {
        let record = task.record;
        let owner = &record.owner;
        let created_ms = record.created_at.timestamp_millis();
        let retention_ms =
            i64::try_from(self.task_ttl_seconds * INDEX_RETENTION_TTLS * 1000).unwrap_or(i64::MAX);
        let created = NewEvent::new(
            EventKind::Created,
            &CreatedEvent {
                max_ticks: record.max_ticks,
            },
        );
        self.bounded(async {
            let mut conn = self.connection();
            let mut invocation = CREATE.key(&record.quota_key);
            invocation
                .key(self.keys.task(task.id))
                .key(self.keys.task_events(task.id))
                .key(self.keys.user_tasks(owner))
                .key(&record.active_key)
                .key(self.keys.task_abandoned(task.id));
            if let Some(idempotency) = &task.idempotency {
                invocation.key(&idempotency.key);
            }
            invocation
                .arg(record.max_ticks)
                .arg(task.daily_limit)
                .arg(QUOTA_KEY_TTL_SECONDS)
                .arg(task.active_cap)
                .arg(task.id.to_string())
                .arg(index_member(created_ms, task.id))
                .arg(created_ms)
                .arg(EVENT_LOG_MAX_LEN)
                .arg(&created.data)
                .arg(
                    task.idempotency
                        .as_ref()
                        .map_or("", |i| i.fingerprint.as_str()),
                )
                .arg(IDEMPOTENCY_TTL_SECONDS)
                .arg(index_member(
                    created_ms.saturating_sub(retention_ms),
                    Uuid::nil(),
                ));
            for (name, value) in record.to_fields() {
                invocation.arg(name).arg(value);
            }
            let answer: Vec<redis::Value> = invocation.invoke_async(&mut conn).await?;
            read_answer(&answer)
        })
        .await
    }

    /// Gives up on a create whose answer never came (Redis may have run it, or may run it still): marks
    /// it abandoned, so a create that runs after this writes nothing, and says whether the task was
    /// recorded before the mark (then it must be failed and refunded). Idempotent.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails; try again.
    pub async fn abandon_create(&self, id: Uuid) -> Result<bool, StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            let (recorded,): (bool,) = redis::pipe()
                .set_ex(self.keys.task_abandoned(id), 1, ABANDON_MARK_TTL_SECONDS)
                .ignore()
                .exists(self.keys.task(id))
                .query_async(&mut conn)
                .await?;
            Ok(recorded)
        })
        .await
    }

    /// Marks the idempotency entry `key` as answered 202 (its task was queued).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn mark_idempotency_done(&self, key: &str) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            redis::cmd("HSET")
                .arg(key)
                .arg("state")
                .arg("done")
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }
}

fn read_answer(answer: &[redis::Value]) -> Result<Created, StoreError> {
    use redis::FromRedisValue;
    let unexpected = || StoreError::Unexpected(format!("{answer:?}"));
    let int = |i: usize| -> Result<i64, StoreError> {
        answer
            .get(i)
            .and_then(|v| i64::from_redis_value(v.clone()).ok())
            .ok_or_else(unexpected)
    };
    let text = |i: usize| -> Result<String, StoreError> {
        answer
            .get(i)
            .and_then(|v| String::from_redis_value(v.clone()).ok())
            .ok_or_else(unexpected)
    };
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    Ok(match int(0)? {
        1 => Created::Recorded {
            remaining: count(int(1)?),
        },
        0 => Created::QuotaExceeded {
            remaining: count(int(1)?),
        },
        -1 => Created::Duplicate,
        -2 => Created::TooManyActive {
            active: count(int(1)?),
        },
        -3 => Created::KeyReused,
        -5 => Created::Abandoned,
        -4 => Created::Replay {
            task: text(1)?.parse().map_err(|_| unexpected())?,
            state: if text(2)? == "done" {
                ReplayState::Done
            } else {
                ReplayState::InProgress
            },
        },
        _ => return Err(unexpected()),
    })
}

/// What to answer a request that repeats an idempotency key, given how far the first request got and
/// where its task is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The first request answered 202: answer 202 again with the task.
    Accepted,
    /// The first request answered 503 (its task could not be queued and was failed): answer 503 again.
    Unavailable,
    /// The first request has not answered yet: 409.
    InUse,
}

/// The replay rule. An entry still `in_progress` is settled by the task itself: a task an agent took, or
/// that ended any other way than failing before any agent took it, was queued (the 202 was answered, or
/// the entry could not be marked); a task failed before any agent took it was refused with a 503 (only
/// the gateway fails a task that no agent took); a task still `pending` is being queued right now.
pub fn replay(state: ReplayState, record: &TaskRecord) -> Replay {
    match (state, record.status) {
        (ReplayState::Done, _) => Replay::Accepted,
        (ReplayState::InProgress, Status::Pending) => Replay::InUse,
        (ReplayState::InProgress, Status::Failed) if record.attempts == 0 => Replay::Unavailable,
        (ReplayState::InProgress, _) => Replay::Accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn record(status: Status, attempts: u32) -> TaskRecord {
        let mut record = TaskRecord::new_pending("u", "m", 5, "q", "a", Utc::now());
        record.status = status;
        record.attempts = attempts;
        record
    }

    #[test]
    fn a_marked_entry_replays_the_202_whatever_became_of_the_task() {
        for status in Status::ALL {
            assert_eq!(
                replay(ReplayState::Done, &record(status, 0)),
                Replay::Accepted
            );
        }
    }

    #[test]
    fn an_unmarked_entry_of_a_task_still_being_queued_is_in_use() {
        assert_eq!(
            replay(ReplayState::InProgress, &record(Status::Pending, 0)),
            Replay::InUse
        );
    }

    #[test]
    fn an_unmarked_entry_of_a_task_the_gateway_failed_replays_the_503() {
        assert_eq!(
            replay(ReplayState::InProgress, &record(Status::Failed, 0)),
            Replay::Unavailable
        );
        // Failed by an agent: it was queued, so the first answer was 202.
        assert_eq!(
            replay(ReplayState::InProgress, &record(Status::Failed, 1)),
            Replay::Accepted
        );
    }

    #[test]
    fn an_unmarked_entry_of_a_task_an_agent_took_replays_the_202() {
        for status in [Status::Accepted, Status::InProgress, Status::Completed] {
            assert_eq!(
                replay(ReplayState::InProgress, &record(status, 1)),
                Replay::Accepted
            );
        }
        assert_eq!(
            replay(ReplayState::InProgress, &record(Status::Cancelled, 0)),
            Replay::Accepted
        );
    }

    #[test]
    fn index_members_sort_by_creation_time() {
        let a = index_member(999, Uuid::nil());
        let b = index_member(1_000, Uuid::nil());
        assert!(a < b, "{a} < {b}");
        assert_eq!(a.len(), b.len());
        assert_eq!(index_member(-5, Uuid::nil()), index_member(0, Uuid::nil()));
    }
}
