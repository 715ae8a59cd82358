//! Redis key builders: the only place a key string is formatted (SPEC section 3).

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
        assert_eq!(keys.quota("user-1", day), "t1:quota:user-1:20260307");
        assert_eq!(keys.workers_status(), "t1:workers:status");
        assert_eq!(keys.worker_status("w-9"), "t1:worker:status:w-9");
    }

    #[test]
    fn an_empty_prefix_leaves_keys_bare() {
        assert_eq!(Keys::default().workers_status(), "workers:status");
    }
}
