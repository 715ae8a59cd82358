//! Presence: the worker's heartbeat in `workers:status` and `worker:status:{id}` (the record's shape and
//! how it is read are in [`shared::presence`]).

use crate::worker::{InHand, TaskInHand};
use chrono::Utc;
use redis::aio::ConnectionManager;
use shared::Keys;
use shared::presence::{PresenceRecord, WorkerState};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// This worker's record, holding `tasks`.
pub fn record(worker_id: &str, tasks: &[TaskInHand]) -> PresenceRecord {
    let first = tasks.first();
    PresenceRecord {
        worker_id: worker_id.to_owned(),
        state: if first.is_some() {
            WorkerState::Working
        } else {
            WorkerState::Free
        },
        correlation_id: first.map(|task| task.id),
        tick: first.map(|task| task.tick),
        tasks: Some(u32::try_from(tasks.len()).unwrap_or(u32::MAX)),
        updated_at: shared::task::rfc3339(Utc::now()),
    }
}

/// Writes this worker's presence.
#[derive(Debug, Clone)]
pub struct Presence {
    redis: ConnectionManager,
    keys: Keys,
    worker_id: String,
    ttl_seconds: u64,
}

impl Presence {
    /// Presence of `worker_id`, expiring after `ttl_seconds` without a beat.
    pub fn new(redis: ConnectionManager, keys: Keys, worker_id: String, ttl_seconds: u64) -> Self {
        Self {
            redis,
            keys,
            worker_id,
            ttl_seconds,
        }
    }

    /// One heartbeat, pipelined in a single round trip.
    ///
    /// # Errors
    /// When Redis fails; the next beat tries again.
    pub async fn beat(&self, tasks: &[TaskInHand]) -> Result<(), redis::RedisError> {
        let record = record(&self.worker_id, tasks);
        let json = serde_json::to_string(&record).expect("a presence record always serialises");
        let mut conn = self.redis.clone();
        redis::pipe()
            .zadd(
                self.keys.workers_status(),
                &self.worker_id,
                Utc::now().timestamp_millis(),
            )
            .ignore()
            .set_ex(
                self.keys.worker_status(&self.worker_id),
                json,
                self.ttl_seconds,
            )
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Removes this worker from the sorted set and deletes its record.
    ///
    /// # Errors
    /// When Redis fails; the entries then go stale within the TTL anyway.
    pub async fn deregister(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.redis.clone();
        redis::pipe()
            .zrem(self.keys.workers_status(), &self.worker_id)
            .ignore()
            .del(self.keys.worker_status(&self.worker_id))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Beats every `interval`, and at once when the tasks in hand change, until `stop` fires.
    pub async fn run(self, in_hand: InHand, interval: Duration, stop: CancellationToken) {
        let mut changes = in_hand.watch();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
                Ok(()) = changes.changed() => {}
            }
            if let Err(error) = self.beat(&in_hand.snapshot()).await {
                tracing::warn!(%error, "presence heartbeat not stored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_worker_without_tasks_is_free_and_one_with_tasks_is_working() {
        let free = record("w-1", &[]);
        assert_eq!(free.state, WorkerState::Free);
        assert_eq!(free.correlation_id, None);
        assert_eq!(free.tasks_held(), 0);
        let id = Uuid::new_v4();
        let working = record("w-1", &[TaskInHand { id, tick: 4 }]);
        assert_eq!(working.tasks_held(), 1);
        let json = serde_json::to_value(&working).unwrap();
        assert_eq!(json["state"], "working");
        assert_eq!(json["correlation_id"], id.to_string());
        assert_eq!(json["tick"], 4);
        assert_eq!(json["worker_id"], "w-1");
    }
}
