//! Agents' presence: the record each agent heartbeats into `worker:status:{id}` (and its score in
//! `workers:status`), and how the gateway and the metrics sidecar read the fleet from them.
//!
//! Each beat is one pipelined round trip: `ZADD workers:status <unix ms> <id>` and
//! `SET worker:status:{id} <json> EX WORKER_TTL_SECONDS`. A killed agent stops beating, so its score goes
//! stale and its record expires within `WORKER_TTL_SECONDS`; a clean shutdown removes both at once.

use crate::keys::Keys;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// An agent's state as `worker:status:{id}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Holds no task.
    Free,
    /// Holds at least one task.
    Working,
}

/// The JSON stored in `worker:status:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The worker id.
    pub worker_id: String,
    /// Free or working.
    pub state: WorkerState,
    /// The task being worked on (the first, when several are).
    #[serde(default)]
    pub correlation_id: Option<Uuid>,
    /// Its tick.
    #[serde(default)]
    pub tick: Option<u32>,
    /// How many tasks the agent holds (absent in records of older agents: one when working).
    #[serde(default)]
    pub tasks: Option<u32>,
    /// RFC 3339 time of this beat.
    pub updated_at: String,
}

impl PresenceRecord {
    /// Tasks this record says its agent holds.
    pub fn tasks_held(&self) -> u32 {
        match (self.state, self.tasks) {
            (_, Some(tasks)) => tasks,
            (WorkerState::Working, None) => 1,
            (WorkerState::Free, None) => 0,
        }
    }
}

/// The fleet as the presence records show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Live agents (a heartbeat within the worker TTL).
    pub agents: u64,
    /// Tasks the live agents hold.
    pub tasks: u64,
}

/// Tasks held according to `records` (as `MGET` returns them); missing or unreadable records count none.
pub fn tasks_held(records: &[Option<String>]) -> u64 {
    records
        .iter()
        .flatten()
        .filter_map(|raw| serde_json::from_str::<PresenceRecord>(raw).ok())
        .map(|record| u64::from(record.tasks_held()))
        .sum()
}

/// Reads the fleet: prunes agents whose last beat is older than `ttl`, then reads the live agents'
/// records. Two round trips.
///
/// # Errors
/// When Redis fails.
pub async fn read_fleet<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    now_ms: i64,
    ttl: Duration,
) -> redis::RedisResult<Fleet> {
    let set = keys.workers_status();
    let oldest_live = now_ms - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let (live,): (Vec<String>,) = redis::pipe()
        .atomic()
        .zrembyscore(&set, "-inf", format!("({oldest_live}"))
        .ignore()
        .zrangebyscore(&set, oldest_live, "+inf")
        .query_async(conn)
        .await?;
    if live.is_empty() {
        return Ok(Fleet::default());
    }
    let records: Vec<Option<String>> = redis::cmd("MGET")
        .arg(
            live.iter()
                .map(|id| keys.worker_status(id))
                .collect::<Vec<_>>(),
        )
        .query_async(conn)
        .await?;
    Ok(Fleet {
        agents: u64::try_from(live.len()).unwrap_or(u64::MAX),
        tasks: tasks_held(&records),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_held_are_summed_and_unreadable_records_count_none() {
        let records = [
            Some(r#"{"worker_id":"a","state":"working","correlation_id":null,"tick":3,"tasks":4,"updated_at":"x"}"#.to_owned()),
            Some(r#"{"worker_id":"b","state":"free","updated_at":"x"}"#.to_owned()),
            None,
            Some("not json".to_owned()),
            // An older agent's record, without `tasks`.
            Some(r#"{"worker_id":"c","state":"working","updated_at":"x"}"#.to_owned()),
        ];
        assert_eq!(tasks_held(&records), 5);
    }
}
