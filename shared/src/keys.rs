//! Redis key builders: the only place a key string is formatted.
//!
//! Every key starts with `REDIS_KEY_PREFIX` (empty by default), so several deployments (or tests) can
//! share one Redis. `docs/architecture.md` lists what each key holds.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Builds every Redis key with the deployment's `REDIS_KEY_PREFIX`.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Prepended to every key; empty by default. Tests use a unique prefix each.
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (may be empty).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `task:{id}`: the task record hash.
    pub fn task(&self, id: Uuid) -> String {
        format!("{}task:{id}", self.prefix)
    }

    /// `task:{id}:events`: the task's event log (a stream, capped, expiring with the record).
    pub fn task_events(&self, id: Uuid) -> String {
        format!("{}task:{id}:events", self.prefix)
    }

    /// `task:{id}:state`: the task's checkpoint (its working state after the last stored tick).
    pub fn task_state(&self, id: Uuid) -> String {
        format!("{}task:{id}:state", self.prefix)
    }

    /// `task:{id}:deleted`: a tombstone left by a delete, so a message met later is dropped quietly.
    pub fn task_deleted(&self, id: Uuid) -> String {
        format!("{}task:{id}:deleted", self.prefix)
    }

    /// `task:{id}:abandoned`: left by a gateway that gave up on creating the task (Redis answered too
    /// late to know whether it was created), so a create that runs later writes and charges nothing.
    pub fn task_abandoned(&self, id: Uuid) -> String {
        format!("{}task:{id}:abandoned", self.prefix)
    }

    /// `user:{sub}:tasks`: the user's task ids, newest first (a sorted set ordered by member).
    pub fn user_tasks(&self, sub: &str) -> String {
        format!("{}user:{sub}:tasks", self.prefix)
    }

    /// `user:{sub}:active`: the user's queued or running task ids (a sorted set by creation time).
    pub fn user_active(&self, sub: &str) -> String {
        format!("{}user:{sub}:active", self.prefix)
    }

    /// `idempotency:{sub}:{key}`: what an `Idempotency-Key` of `sub` created, kept for a day.
    pub fn idempotency(&self, sub: &str, key: &str) -> String {
        format!("{}idempotency:{sub}:{key}", self.prefix)
    }

    /// `events`: the pub/sub channel on which every appended task event is announced.
    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// `memory:purges`: a stream of `(owner, task)` pairs whose memory points every agent deletes.
    pub fn memory_purges(&self) -> String {
        format!("{}memory:purges", self.prefix)
    }

    /// `dlq:sweeper`: held by the agent sweeping the dead-letter queue this interval.
    pub fn dlq_sweeper_lock(&self) -> String {
        format!("{}dlq:sweeper", self.prefix)
    }

    /// `quota:{sub}:{YYYYMMDD}`: ticks charged to `sub` on the UTC day of `at`.
    pub fn quota(&self, sub: &str, at: DateTime<Utc>) -> String {
        format!("{}quota:{sub}:{}", self.prefix, at.format("%Y%m%d"))
    }

    /// `workers:status`: sorted set of worker ids scored by last heartbeat (unix ms).
    pub fn workers_status(&self) -> String {
        format!("{}workers:status", self.prefix)
    }

    /// `worker:status:{worker_id}`: one worker's presence record.
    pub fn worker_status(&self, worker_id: &str) -> String {
        format!("{}worker:status:{worker_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn keys_carry_the_prefix_and_the_spec_layout() {
        let keys = Keys::new("t1:");
        let id = Uuid::nil();
        let day = Utc.with_ymd_and_hms(2026, 3, 7, 23, 59, 59).unwrap();
        assert_eq!(
            keys.task(id),
            "t1:task:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            keys.task_events(id),
            "t1:task:00000000-0000-0000-0000-000000000000:events"
        );
        assert_eq!(
            keys.task_state(id),
            "t1:task:00000000-0000-0000-0000-000000000000:state"
        );
        assert_eq!(keys.user_tasks("u"), "t1:user:u:tasks");
        assert_eq!(keys.user_active("u"), "t1:user:u:active");
        assert_eq!(keys.idempotency("u", "k-1"), "t1:idempotency:u:k-1");
        assert_eq!(keys.events_channel(), "t1:events");
        assert_eq!(keys.memory_purges(), "t1:memory:purges");
        assert_eq!(keys.quota("user-1", day), "t1:quota:user-1:20260307");
        assert_eq!(keys.workers_status(), "t1:workers:status");
        assert_eq!(keys.worker_status("w-9"), "t1:worker:status:w-9");
    }

    #[test]
    fn an_empty_prefix_leaves_keys_bare() {
        assert_eq!(Keys::default().workers_status(), "workers:status");
    }
}
