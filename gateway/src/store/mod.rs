//! The gateway's Redis side: task records, quota charges, listing, cancelling, deleting, the event log and
//! live-worker counts, one file per concern.
//!
//! Every operation is one round trip (a Lua script, one command, or one atomic pipeline) unless its doc
//! says otherwise, and is bounded by [`OPERATION_TIMEOUT`], so a Redis that is down or restarting turns
//! into a quick 503, never a hang.

pub mod create;
mod events;
mod list;
mod steer;

pub use create::{Created, Idempotency, NewTask, ReplayState};
pub use events::LogStart;
pub use list::{Cursor, ListPage, ListQuery};
pub use steer::{CancelOutcome, DeleteOutcome};

use crate::connections::Connections;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use shared::Keys;
use shared::store::{Outcome, Transition, transition};
use shared::task::TaskRecord;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// The longest any single Redis operation may take, connection included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(800);

/// A Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis URL is unusable.
    #[error("invalid redis url: {0}")]
    Url(String),
    /// Redis answered with an error or the connection broke.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The operation took longer than [`OPERATION_TIMEOUT`].
    #[error("redis did not answer within {OPERATION_TIMEOUT:?}")]
    Timeout,
    /// A stored record could not be read.
    #[error(transparent)]
    Record(#[from] shared::task::RecordError),
    /// The shared transition script failed.
    #[error(transparent)]
    Transition(#[from] shared::store::StoreError),
    /// The script returned something it never returns.
    #[error("unexpected answer from redis: {0}")]
    Unexpected(String),
}

/// Task records and counts in Redis.
#[derive(Clone)]
pub struct TaskStore {
    redis: Connections,
    keys: Keys,
    task_ttl_seconds: u64,
}

impl std::fmt::Debug for TaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStore")
            .field("keys", &self.keys)
            .field("redis", &self.redis)
            .finish()
    }
}

impl TaskStore {
    /// A store over `connections` shared connections to `url`. Connects on first use.
    ///
    /// # Errors
    /// [`StoreError::Url`] when the URL is invalid.
    pub fn new(
        url: &str,
        tls: &shared::tls::Tls,
        keys: Keys,
        task_ttl_seconds: u64,
        connections: usize,
    ) -> Result<Self, StoreError> {
        let client = tls
            .redis_client(url)
            .map_err(|e| StoreError::Url(redact(&e.to_string())))?;
        let redis = Connections::new(&client, connections, OPERATION_TIMEOUT)
            .map_err(|e| StoreError::Url(redact(&e.to_string())))?;
        Ok(Self {
            redis,
            keys,
            task_ttl_seconds,
        })
    }

    /// The key builder in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// How long a finished task's record is kept.
    pub fn task_ttl_seconds(&self) -> u64 {
        self.task_ttl_seconds
    }

    async fn bounded<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        tokio::time::timeout(OPERATION_TIMEOUT, operation)
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    fn connection(&self) -> redis::aio::ConnectionManager {
        self.redis.get()
    }

    /// Answers whether Redis responds to PING.
    pub async fn ping(&self) -> bool {
        self.check().await.is_ok()
    }

    /// PINGs Redis.
    ///
    /// # Errors
    /// Why Redis did not answer (unreachable, refused credentials, a certificate not trusted, ...).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Refuses a Redis Cluster (see [`shared::deployment`]).
    ///
    /// # Errors
    /// [`shared::deployment::RedisModeError`] when cluster mode is on.
    pub async fn refuse_cluster(&self) -> Result<(), shared::deployment::RedisModeError> {
        shared::deployment::refuse_cluster(&mut self.connection()).await
    }

    /// Marks a task that is still `pending` failed with `error`, refunding all its ticks (it never ran).
    /// A task an agent has already taken is left alone: its message was queued after all.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    #[tracing::instrument(skip_all, fields(task_id = %id))]
    pub async fn fail_unqueued(&self, id: Uuid, error: &str) -> Result<Outcome, StoreError> {
        let change = Transition::fail(error, 0).only_from(&[shared::Status::Pending]);
        self.apply(id, &change).await
    }

    /// Reads a task record in one round trip; `None` when there is no such task.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or the record is malformed.
    pub async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            let fields: RecordFields = conn.hgetall(self.keys.task(id)).await?;
            record_of(&fields)
        })
        .await
    }

    /// Reads the record of task `id` if it belongs to `owner`: another user's task is treated exactly
    /// like a missing one.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or the record is malformed.
    pub async fn get_owned(&self, id: Uuid, owner: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.get(id).await?.filter(|record| record.owner == owner))
    }

    /// Applies `change` to task `id` (one script).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn apply(&self, id: Uuid, change: &Transition) -> Result<Outcome, StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            Ok(transition(
                &mut conn,
                &self.keys,
                id,
                change,
                Utc::now(),
                self.task_ttl_seconds,
            )
            .await?)
        })
        .await
    }

    /// The live agents and the tasks they hold, from their presence records (two round trips).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn fleet(
        &self,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<shared::presence::Fleet, StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            Ok(
                shared::presence::read_fleet(&mut conn, &self.keys, now.timestamp_millis(), ttl)
                    .await?,
            )
        })
        .await
    }

    /// Counts workers whose last heartbeat is within `ttl` of `now`, pruning the stale ones, in one
    /// atomic round trip.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn count_live_workers(
        &self,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            let key = self.keys.workers_status();
            let oldest_live = now.timestamp_millis() - i64::try_from(ttl.as_millis()).unwrap_or(0);
            let (count,): (u64,) = redis::pipe()
                .atomic()
                .zrembyscore(&key, "-inf", format!("({oldest_live}"))
                .ignore()
                .zcard(&key)
                .query_async(&mut conn)
                .await?;
            Ok(count)
        })
        .await
    }
}

/// A task record's fields as `HGETALL` returns them, hashed with foldhash: the keys are the record's own
/// field names, so no caller can choose them to collide.
type RecordFields = HashMap<String, String, foldhash::fast::RandomState>;

/// A record from the fields `HGETALL` returned; `None` when there were none (no such key).
fn record_of<S: std::hash::BuildHasher>(
    fields: &HashMap<String, String, S>,
) -> Result<Option<TaskRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(TaskRecord::from_fields(fields)?))
}

/// Removes credentials from a URL-bearing error message.
fn redact(message: &str) -> String {
    match (message.find("://"), message.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &message[..scheme], &message[at..])
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_error_messages() {
        assert_eq!(
            redact("bad url redis://user:pw@host:6379/0"),
            "bad url redis://***@host:6379/0"
        );
        assert_eq!(redact("connection refused"), "connection refused");
    }
}
