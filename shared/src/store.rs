//! Atomic moves of a task record: the forward-only transition rule applied inside Redis.
//!
//! Every status write goes through one Lua script, so a stale heartbeat racing a completion, or a
//! redelivered message racing the worker that already finished it, can never move a task backwards or
//! touch a terminal one. The script also performs the once-only quota refund, the release of the owner's
//! active-task slot, the task's events and the terminal TTL in the same step, so a finished task is never
//! left half-written and exactly one terminal event is ever logged.

use crate::events::{APPEND_EVENT_LUA, EVENT_LOG_MAX_LEN, NewEvent, RECORD_JSON_LUA};
use crate::keys::Keys;
use crate::status::{Status, UnknownStatus};
use crate::task::{field, rfc3339};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use uuid::Uuid;

/// KEYS[1] task key, KEYS[2] its event log, KEYS[3] its checkpoint.
/// ARGV[1] new status, ARGV[2] updated_at, ARGV[3] '1' when the new status is terminal, ARGV[4] the TTL
/// a terminal record gets, ARGV[5] space-separated statuses the task may be in, ARGV[6] ticks used for the
/// refund ('' for none), ARGV[7] '1' to count a delivery in `attempts`, ARGV[8] task id, ARGV[9] event
/// channel, ARGV[10] event log length, ARGV[11] the checkpoint to store ('' to leave it), ARGV[12] the
/// worker writing under a lease ('' for none), ARGV[13] the lease's lifetime in ms, ARGV[14] number N of
/// events to append, ARGV[15 .. 14 + 2N] their kind/data pairs, then field/value pairs to write.
/// Returns {code, status, attempts, cancel_requested, holder}: code 1 applied, 0 refused (status is the
/// current one), -1 missing, -2 another worker holds a live lease (holder names it).
///
/// The lease: a worker writing under one takes the task (`lease_worker`, `lease_at` in Redis time, ms)
/// unless another worker's lease was renewed within the lifetime; every write it makes renews it. So a
/// redelivered message never starts a second run beside a live one, and a worker whose task was taken
/// over after its lease lapsed has its next write refused.
///
/// A `tick` field never lowers the stored tick: a poller never sees it go backwards. A terminal move also
/// appends the terminal event (the record as it now stands), leaves the owner's active set, deletes the
/// checkpoint, and gives the record and its log the terminal TTL.
///
/// The quota and active-set keys are read from the record (they name what was charged); Redis Cluster
/// would need them in KEYS, which a single-node or replicated Redis (ElastiCache non-cluster) does not.
const TRANSITION_BODY_LUA: &str = r#"
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {-1, '', 0, 0, ''} end
local cancel = 0
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then cancel = 1 end
local allowed = false
for s in string.gmatch(ARGV[5], '%S+') do
  if s == current then allowed = true break end
end
if not allowed then
  return {0, current, tonumber(redis.call('HGET', KEYS[1], 'attempts')) or 0, cancel, ''}
end
if ARGV[12] ~= '' then
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local holder = redis.call('HGET', KEYS[1], 'lease_worker')
  if holder and holder ~= '' and holder ~= ARGV[12] then
    local at = tonumber(redis.call('HGET', KEYS[1], 'lease_at') or '0') or 0
    if now_ms - at < tonumber(ARGV[13]) then
      return {-2, current, tonumber(redis.call('HGET', KEYS[1], 'attempts')) or 0, cancel, holder}
    end
  end
  redis.call('HSET', KEYS[1], 'lease_worker', ARGV[12], 'lease_at', tostring(now_ms))
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
local events = tonumber(ARGV[14])
local first_field = 15 + 2 * events
if #ARGV >= first_field then
  local pairs_ = {}
  for i = first_field, #ARGV, 2 do
    local name, value = ARGV[i], ARGV[i + 1]
    if name == 'tick' then
      local stored = tonumber(redis.call('HGET', KEYS[1], 'tick')) or 0
      if stored > tonumber(value) then value = tostring(stored) end
    end
    pairs_[#pairs_ + 1] = name
    pairs_[#pairs_ + 1] = value
  end
  redis.call('HSET', KEYS[1], unpack(pairs_))
end
local attempts
if ARGV[7] == '1' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
else
  attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts')) or 0
end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'refunded') ~= '1' then
  local max_ticks = tonumber(redis.call('HGET', KEYS[1], 'max_ticks')) or 0
  local refund = max_ticks - tonumber(ARGV[6])
  local quota_key = redis.call('HGET', KEYS[1], 'quota_key')
  if refund > 0 and quota_key and redis.call('EXISTS', quota_key) == 1 then
    redis.call('DECRBY', quota_key, refund)
  end
  redis.call('HSET', KEYS[1], 'refunded', '1')
end
if ARGV[11] ~= '' then redis.call('SET', KEYS[3], ARGV[11]) end
for i = 0, events - 1 do
  append_event(KEYS[2], ARGV[9], ARGV[8], ARGV[10], ARGV[15 + 2 * i], ARGV[16 + 2 * i])
end
if ARGV[3] == '1' then
  local active_key = redis.call('HGET', KEYS[1], 'active_key')
  if active_key and active_key ~= '' then redis.call('ZREM', active_key, ARGV[8]) end
  append_event(KEYS[2], ARGV[9], ARGV[8], ARGV[10], ARGV[1], record_json(KEYS[1]))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[3])
end
return {1, ARGV[1], attempts, cancel, ''}
"#;

static TRANSITION: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{APPEND_EVENT_LUA}{RECORD_JSON_LUA}{TRANSITION_BODY_LUA}"
    ))
});

/// A status write to apply atomically.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The status to move to.
    pub to: Status,
    /// Other fields to write with it (`tick`, `result`, `error`, ...).
    pub fields: Vec<(&'static str, String)>,
    /// On a terminal move: the ticks the task used, so `max_ticks - ticks_used` is refunded (once).
    pub refund_ticks_used: Option<u32>,
    /// Count this write as a delivery taken (`attempts += 1`).
    pub count_attempt: bool,
    /// Events to append to the task's log when the write applies (a terminal move adds its own).
    pub events: Vec<NewEvent>,
    /// When set, the write applies only from these statuses (a subset of what the forward-only rule
    /// allows), e.g. the gateway cancels at once only a task still queued.
    pub only_from: Option<Vec<Status>>,
    /// The task's working state to store as its checkpoint (`task:{id}:state`), in the same step.
    pub checkpoint: Option<String>,
    /// Write under this worker's lease: refused while another worker's lease is live, renewing it
    /// otherwise.
    pub lease: Option<Lease>,
}

/// A worker's lease on a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The worker holding it.
    pub worker: String,
    /// How long it lasts after its last renewal (`WORKER_TTL_SECONDS`).
    pub lifetime: std::time::Duration,
}

impl Transition {
    /// A bare move to `to`.
    pub fn to(to: Status) -> Self {
        Self {
            to,
            fields: Vec::new(),
            refund_ticks_used: None,
            count_attempt: false,
            events: Vec::new(),
            only_from: None,
            checkpoint: None,
            lease: None,
        }
    }

    /// Also write `name = value`.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    /// Refund `max_ticks - ticks_used` to the quota day that was charged, unless already refunded.
    pub fn refunding(mut self, ticks_used: u32) -> Self {
        self.refund_ticks_used = Some(ticks_used);
        self
    }

    /// Count a delivery taken.
    pub fn counting_attempt(mut self) -> Self {
        self.count_attempt = true;
        self
    }

    /// Also append `event` to the task's log.
    pub fn event(mut self, event: NewEvent) -> Self {
        self.events.push(event);
        self
    }

    /// Also store `state` as the task's checkpoint.
    pub fn checkpointing(mut self, state: String) -> Self {
        self.checkpoint = Some(state);
        self
    }

    /// Write under `lease` (see [`Lease`]).
    pub fn leased(mut self, lease: &Lease) -> Self {
        self.lease = Some(lease.clone());
        self
    }

    /// Apply only when the task is in one of `statuses` (and the forward-only rule allows it).
    pub fn only_from(mut self, statuses: &[Status]) -> Self {
        self.only_from = Some(statuses.to_vec());
        self
    }

    /// `failed` with `error`, refunding the unused ticks.
    pub fn fail(error: impl Into<String>, ticks_used: u32) -> Self {
        Self::to(Status::Failed)
            .with(field::ERROR, error)
            .refunding(ticks_used)
    }

    /// The statuses this write may apply from.
    pub fn sources(&self) -> Vec<Status> {
        Status::allowed_sources(self.to)
            .into_iter()
            .filter(|s| self.only_from.as_ref().is_none_or(|only| only.contains(s)))
            .collect()
    }
}

/// What became of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written; `attempts` is the record's delivery count after the write.
    Applied {
        /// Deliveries counted so far.
        attempts: u32,
        /// Whether the owner asked to cancel the task.
        cancel_requested: bool,
    },
    /// Refused by the forward-only rule; nothing changed.
    Refused {
        /// The status the task is in.
        current: Status,
        /// Deliveries counted so far.
        attempts: u32,
        /// Whether the owner asked to cancel the task.
        cancel_requested: bool,
    },
    /// There is no such task.
    Missing,
    /// Another worker holds a live lease on the task; nothing changed.
    Leased {
        /// The status the task is in.
        current: Status,
    },
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error; worth retrying.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the script never returns.
    #[error("unexpected answer from the transition script: {0}")]
    Unexpected(String),
    /// The stored status is unknown.
    #[error(transparent)]
    Status(#[from] UnknownStatus),
}

/// Applies `transition` to `task:{id}` atomically, appending its events to the task's log.
///
/// `terminal_ttl_seconds` is set as the record's (and its log's) expiry when the move is to a terminal
/// status.
///
/// # Errors
/// [`StoreError::Redis`] when Redis fails; the record is then unchanged or fully changed, never half.
pub async fn transition<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    id: Uuid,
    transition: &Transition,
    now: DateTime<Utc>,
    terminal_ttl_seconds: u64,
) -> Result<Outcome, StoreError> {
    let sources = transition
        .sources()
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut invocation = TRANSITION.key(keys.task(id));
    invocation
        .key(keys.task_events(id))
        .key(keys.task_state(id))
        .arg(transition.to.as_str())
        .arg(rfc3339(now))
        .arg(if transition.to.is_terminal() {
            "1"
        } else {
            "0"
        })
        .arg(terminal_ttl_seconds.max(1))
        .arg(sources)
        .arg(
            transition
                .refund_ticks_used
                .map(|t| t.to_string())
                .unwrap_or_default(),
        )
        .arg(if transition.count_attempt { "1" } else { "0" })
        .arg(id.to_string())
        .arg(keys.events_channel())
        .arg(EVENT_LOG_MAX_LEN)
        .arg(transition.checkpoint.as_deref().unwrap_or_default())
        .arg(transition.lease.as_ref().map_or("", |l| l.worker.as_str()))
        .arg(transition.lease.as_ref().map_or(0, |l| {
            u64::try_from(l.lifetime.as_millis()).unwrap_or(u64::MAX)
        }))
        .arg(transition.events.len());
    for event in &transition.events {
        invocation.arg(event.kind.as_str()).arg(&event.data);
    }
    for (name, value) in &transition.fields {
        invocation.arg(*name).arg(value);
    }
    let (code, status, attempts, cancel, holder): (i64, String, u32, u8, String) =
        invocation.invoke_async(conn).await?;
    let cancel_requested = cancel == 1;
    match code {
        1 => Ok(Outcome::Applied {
            attempts,
            cancel_requested,
        }),
        0 => Ok(Outcome::Refused {
            current: status.parse()?,
            attempts,
            cancel_requested,
        }),
        -1 => Ok(Outcome::Missing),
        -2 => {
            tracing::debug!(task_id = %id, holder, "another worker holds the task's lease");
            Ok(Outcome::Leased {
                current: status.parse()?,
            })
        }
        other => Err(StoreError::Unexpected(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_write_applies_only_from_the_statuses_it_names() {
        let cancel_queued = Transition::to(Status::Cancelled).only_from(&[Status::Pending]);
        assert_eq!(cancel_queued.sources(), vec![Status::Pending]);
        let cancel_any = Transition::to(Status::Cancelled);
        assert_eq!(
            cancel_any.sources(),
            vec![Status::Pending, Status::Accepted, Status::InProgress]
        );
        // A restriction never widens the forward-only rule.
        let odd = Transition::to(Status::Accepted).only_from(&[Status::Completed]);
        assert!(odd.sources().is_empty());
    }
}
