//! Forgetting what tasks leave outside their records: the memory of deleted tasks, and memory older than
//! any task record.
//!
//! A delete adds `(owner, task)` to the `memory:purges` stream; every agent reads it every
//! [`PURGE_INTERVAL`] and asks its executor to forget each task (with an embedded store each agent holds
//! its own points; with a Qdrant server the deletes repeat harmlessly). An agent starting up reads the
//! purges of the last [`PURGE_LOOKBACK`]; older ones are covered by retention: every
//! [`RETENTION_INTERVAL`], points written more than `TASK_TTL_SECONDS` ago are deleted, since no task
//! record lives longer than that after its task ended.

use crate::executor::TaskExecutor;
use redis::aio::ConnectionManager;
use shared::Keys;
use shared::events::EntryId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the purge requests are read.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(2);
/// How far back an agent starting up reads purge requests.
pub const PURGE_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// How often old memory is deleted.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Purge requests read per round trip.
const BATCH: usize = 100;

/// Reads purge requests and applies retention for an executor.
#[derive(Debug)]
pub struct Purger<E> {
    /// Who forgets.
    pub executor: Arc<E>,
    /// Where the purge requests are.
    pub redis: ConnectionManager,
    /// The key names.
    pub keys: Keys,
    /// How long memory is kept (`TASK_TTL_SECONDS`).
    pub retention: Duration,
}

impl<E: TaskExecutor> Purger<E> {
    /// Runs until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let lookback = u64::try_from(PURGE_LOOKBACK.as_millis()).unwrap_or(u64::MAX);
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let mut cursor = EntryId {
            ms: now_ms.saturating_sub(lookback),
            seq: 0,
        };
        let mut purges = tokio::time::interval(PURGE_INTERVAL);
        let mut retention = tokio::time::interval(RETENTION_INTERVAL);
        purges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = purges.tick() => cursor = self.purge_from(cursor).await,
                _ = retention.tick() => self.apply_retention().await,
            }
        }
    }

    /// Forgets every task named after `cursor`; returns the new cursor (the last entry forgotten). A task
    /// that cannot be forgotten now stops the round; it is retried at the next one.
    pub async fn purge_from(&self, mut cursor: EntryId) -> EntryId {
        loop {
            let entries: Vec<(String, HashMap<String, String>)> = match redis::cmd("XRANGE")
                .arg(self.keys.memory_purges())
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut self.redis.clone())
                .await
            {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::debug!(%error, "cannot read purge requests; retrying");
                    return cursor;
                }
            };
            let read = entries.len();
            for (id, fields) in entries {
                let Ok(id) = id.parse::<EntryId>() else {
                    continue;
                };
                let task = fields.get("task").and_then(|t| t.parse::<Uuid>().ok());
                if let (Some(owner), Some(task)) = (fields.get("owner"), task) {
                    if let Err(error) = self.executor.forget(owner, task).await {
                        tracing::warn!(task_id = %task, %error, "cannot forget a deleted task yet; retrying");
                        return cursor;
                    }
                    tracing::info!(task_id = %task, "forgot a deleted task's memory");
                }
                cursor = id;
            }
            if read < BATCH {
                return cursor;
            }
        }
    }

    async fn apply_retention(&self) {
        let keep = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now().timestamp().saturating_sub(keep);
        if let Err(error) = self.executor.forget_written_before(cutoff).await {
            tracing::warn!(%error, "cannot delete old memory yet; retrying later");
        }
    }
}
