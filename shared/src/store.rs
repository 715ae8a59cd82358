//! Atomic moves of a task record: the forward-only transition rule applied inside Redis.
//!
//! Every status write goes through one Lua script, so a stale heartbeat racing a completion, or a
//! redelivered message racing the worker that already finished it, can never move a task backwards or
//! touch a terminal one. The script also performs the once-only quota refund and the terminal TTL in the
//! same step, so a finished task is never left half-written.

use crate::keys::Keys;
use crate::status::{Status, UnknownStatus};
use crate::task::{field, rfc3339};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use uuid::Uuid;

/// KEYS[1] task key.
/// ARGV[1] new status, ARGV[2] updated_at, ARGV[3] TTL in seconds to set (0: leave as is),
/// ARGV[4] space-separated statuses the task may be in, ARGV[5] ticks used for the refund ('' for none),
/// ARGV[6] '1' to count a delivery in `attempts`, ARGV[7..] more field/value pairs.
/// Returns {code, status, attempts}: code 1 applied, 0 refused (status is the current one), -1 missing.
///
/// The quota key is read from the record (it names the day that was charged); Redis Cluster would need
/// it in KEYS, which a single-node or replicated Redis (ElastiCache non-cluster) does not.
const TRANSITION_LUA: &str = r#"
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {-1, '', 0} end
local allowed = false
for s in string.gmatch(ARGV[4], '%S+') do
  if s == current then allowed = true break end
end
if not allowed then
  return {0, current, tonumber(redis.call('HGET', KEYS[1], 'attempts')) or 0}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
local attempts
if ARGV[6] == '1' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
else
  attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts')) or 0
end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'refunded') ~= '1' then
  local max_ticks = tonumber(redis.call('HGET', KEYS[1], 'max_ticks')) or 0
  local refund = max_ticks - tonumber(ARGV[5])
  local quota_key = redis.call('HGET', KEYS[1], 'quota_key')
  if refund > 0 and quota_key and redis.call('EXISTS', quota_key) == 1 then
    redis.call('DECRBY', quota_key, refund)
  end
  redis.call('HSET', KEYS[1], 'refunded', '1')
end
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, ARGV[1], attempts}
"#;

static TRANSITION: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TRANSITION_LUA));

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
}

impl Transition {
    /// A bare move to `to`.
    pub fn to(to: Status) -> Self {
        Self {
            to,
            fields: Vec::new(),
            refund_ticks_used: None,
            count_attempt: false,
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

    /// `failed` with `error`, refunding the unused ticks.
    pub fn fail(error: impl Into<String>, ticks_used: u32) -> Self {
        Self::to(Status::Failed)
            .with(field::ERROR, error)
            .refunding(ticks_used)
    }
}

/// What became of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written; `attempts` is the record's delivery count after the write.
    Applied {
        /// Deliveries counted so far.
        attempts: u32,
    },
    /// Refused by the forward-only rule; nothing changed.
    Refused {
        /// The status the task is in.
        current: Status,
        /// Deliveries counted so far.
        attempts: u32,
    },
    /// There is no such task.
    Missing,
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

/// Applies `transition` to `task:{id}` atomically.
///
/// `terminal_ttl_seconds` is set as the record's expiry when the move is to a terminal status.
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
    let sources = Status::allowed_sources(transition.to)
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let ttl = if transition.to.is_terminal() {
        terminal_ttl_seconds
    } else {
        0
    };
    let mut invocation = TRANSITION.key(keys.task(id));
    invocation
        .arg(transition.to.as_str())
        .arg(rfc3339(now))
        .arg(ttl)
        .arg(sources)
        .arg(
            transition
                .refund_ticks_used
                .map(|t| t.to_string())
                .unwrap_or_default(),
        )
        .arg(if transition.count_attempt { "1" } else { "0" });
    for (name, value) in &transition.fields {
        invocation.arg(*name).arg(value);
    }
    let (code, status, attempts): (i64, String, u32) = invocation.invoke_async(conn).await?;
    match code {
        1 => Ok(Outcome::Applied { attempts }),
        0 => Ok(Outcome::Refused {
            current: status.parse()?,
            attempts,
        }),
        -1 => Ok(Outcome::Missing),
        other => Err(StoreError::Unexpected(other.to_string())),
    }
}
