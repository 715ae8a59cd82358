//! The task record stored in Redis (`task:{id}`), the result an agent produces, and the queue message.

use crate::api::Usage;
use crate::status::{ShownStatus, Status, UnknownStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// Field names of the `task:{id}` hash.
pub mod field {
    /// The JWT `sub` of the user who created the task.
    pub const OWNER: &str = "owner";
    /// The stored [`crate::Status`].
    pub const STATUS: &str = "status";
    /// The mandate text, trimmed.
    pub const MANDATE: &str = "mandate";
    /// The tick budget charged to the quota.
    pub const MAX_TICKS: &str = "max_ticks";
    /// Ticks run so far.
    pub const TICK: &str = "tick";
    /// The JSON [`crate::task::TaskResult`], once completed.
    pub const RESULT: &str = "result";
    /// Why the task failed, once failed.
    pub const ERROR: &str = "error";
    /// RFC 3339 creation time.
    pub const CREATED_AT: &str = "created_at";
    /// RFC 3339 time of the last write.
    pub const UPDATED_AT: &str = "updated_at";
    /// The full (prefixed) quota key the task was charged to, so a refund goes to the same day.
    pub const QUOTA_KEY: &str = "quota_key";
    /// `1` once unused ticks were refunded: a refund happens once per task.
    pub const REFUNDED: &str = "refunded";
    /// How many times an agent took the task's message.
    pub const ATTEMPTS: &str = "attempts";
    /// The JSON [`crate::api::Usage`] so far.
    pub const USAGE: &str = "usage";
    /// `1` once the owner asked to cancel the task while it ran.
    pub const CANCEL_REQUESTED: &str = "cancel_requested";
    /// The full (prefixed) key of the owner's set of active tasks, left when the task ends.
    pub const ACTIVE_KEY: &str = "active_key";
    /// The full (prefixed) key of the `Idempotency-Key` entry that created the task, if any.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// The W3C trace context of the request that created the task: an operator finds the task's trace
    /// from its id.
    pub const TRACEPARENT: &str = "traceparent";
}

/// What a completed (or cancelled) task produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskResult {
    /// Whether the agent considers the mandate fulfilled.
    pub success: bool,
    /// The deliverables, as text.
    pub deliverables: Vec<String>,
    /// A summary of the work.
    pub summary: String,
    /// URLs the agent actually visited.
    pub sources: Vec<String>,
    /// Ticks the task consumed.
    pub ticks_used: u32,
}

impl TaskResult {
    /// What a task its owner cancelled after `ticks_used` of `max_ticks` ticks keeps: what it gathered
    /// until then, and no synthesis (`success: false`).
    pub fn cancelled(
        ticks_used: u32,
        max_ticks: u32,
        deliverables: Vec<String>,
        sources: Vec<String>,
    ) -> Self {
        let summary = if ticks_used == 0 {
            "Cancelled by its owner before its first tick.".to_owned()
        } else {
            format!(
                "Cancelled by its owner after {ticks_used} of {max_ticks} ticks; no final summary was \
                 written. The deliverables gathered until then are kept."
            )
        };
        Self {
            success: false,
            deliverables,
            summary,
            sources,
            ticks_used,
        }
    }
}

/// A task record as read back from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The tenant that owns the task (JWT `sub`).
    pub owner: String,
    /// Stored status.
    pub status: Status,
    /// The mandate text.
    pub mandate: String,
    /// Tick budget.
    pub max_ticks: u32,
    /// Ticks run so far.
    pub tick: u32,
    /// Set once completed.
    pub result: Option<TaskResult>,
    /// Set once failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// The quota key charged (prefixed).
    pub quota_key: String,
    /// Whether unused ticks were refunded.
    pub refunded: bool,
    /// Deliveries taken by agents.
    pub attempts: u32,
    /// What the task consumed so far.
    pub usage: Usage,
    /// Whether the owner asked to cancel the task while it ran.
    pub cancel_requested: bool,
    /// The owner's active-task set (prefixed key); empty for records written before the cap existed.
    pub active_key: String,
    /// The idempotency entry that created the task (prefixed key), if the request carried a key.
    pub idempotency_key: Option<String>,
    /// The trace context (`traceparent`) of the request that created the task.
    pub traceparent: Option<String>,
}

/// A stored record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A required field is absent.
    #[error("task record lacks the field {0:?}")]
    Missing(&'static str),
    /// A field holds a value of the wrong shape.
    #[error("task record field {field:?} is malformed: {reason}")]
    Malformed {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The status is not one of the known ones.
    #[error(transparent)]
    Status(#[from] UnknownStatus),
}

/// Formats a time as the RFC 3339 UTC string stored and shown everywhere.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl TaskRecord {
    /// A new `pending` record, as the gateway stores it before publishing. Times are kept to the
    /// millisecond, as stored, so what the gateway answers equals what it later reads back.
    pub fn new_pending(
        owner: &str,
        mandate: &str,
        max_ticks: u32,
        quota_key: &str,
        active_key: &str,
        now: DateTime<Utc>,
    ) -> Self {
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        Self {
            owner: owner.to_owned(),
            status: Status::Pending,
            mandate: mandate.to_owned(),
            max_ticks,
            tick: 0,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            quota_key: quota_key.to_owned(),
            refunded: false,
            attempts: 0,
            usage: Usage::default(),
            cancel_requested: false,
            active_key: active_key.to_owned(),
            idempotency_key: None,
            traceparent: None,
        }
    }

    /// The status the API shows.
    pub fn shown_status(&self) -> ShownStatus {
        self.status.shown(self.cancel_requested)
    }

    /// The hash fields to write for this record (`result` and `error` only when set).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (field::OWNER, self.owner.clone()),
            (field::STATUS, self.status.as_str().to_owned()),
            (field::MANDATE, self.mandate.clone()),
            (field::MAX_TICKS, self.max_ticks.to_string()),
            (field::TICK, self.tick.to_string()),
            (field::CREATED_AT, rfc3339(self.created_at)),
            (field::UPDATED_AT, rfc3339(self.updated_at)),
            (field::QUOTA_KEY, self.quota_key.clone()),
            (field::REFUNDED, u8::from(self.refunded).to_string()),
            (field::ATTEMPTS, self.attempts.to_string()),
            (
                field::USAGE,
                serde_json::to_string(&self.usage).expect("a Usage always serialises"),
            ),
            (field::ACTIVE_KEY, self.active_key.clone()),
        ];
        if self.cancel_requested {
            fields.push((field::CANCEL_REQUESTED, "1".to_owned()));
        }
        if let Some(key) = &self.idempotency_key {
            fields.push((field::IDEMPOTENCY_KEY, key.clone()));
        }
        if let Some(trace) = &self.traceparent {
            fields.push((field::TRACEPARENT, trace.clone()));
        }
        if let Some(result) = &self.result {
            let json = serde_json::to_string(result).expect("a TaskResult always serialises");
            fields.push((field::RESULT, json));
        }
        if let Some(error) = &self.error {
            fields.push((field::ERROR, error.clone()));
        }
        fields
    }

    /// Reads a record from the fields of its hash (as `HGETALL` returns them). Fields it does not know
    /// (written by a newer release) are ignored.
    ///
    /// # Errors
    /// [`RecordError`] when a required field is missing or malformed.
    pub fn from_fields<S: std::hash::BuildHasher>(
        fields: &HashMap<String, String, S>,
    ) -> Result<Self, RecordError> {
        let get = |name: &'static str| {
            fields
                .get(name)
                .map(String::as_str)
                .ok_or(RecordError::Missing(name))
        };
        let optional = |name: &'static str| fields.get(name).filter(|v| !v.is_empty());
        let number = |name: &'static str| -> Result<u32, RecordError> {
            match fields.get(name) {
                None => Ok(0),
                Some(v) => v
                    .parse()
                    .map_err(|e: std::num::ParseIntError| RecordError::Malformed {
                        field: name,
                        reason: e.to_string(),
                    }),
            }
        };
        let time = |name: &'static str| -> Result<DateTime<Utc>, RecordError> {
            DateTime::parse_from_rfc3339(get(name)?)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| RecordError::Malformed {
                    field: name,
                    reason: e.to_string(),
                })
        };
        let result = optional(field::RESULT)
            .map(|json| serde_json::from_str(json))
            .transpose()
            .map_err(|e| RecordError::Malformed {
                field: field::RESULT,
                reason: e.to_string(),
            })?;
        // Usage is informational: a malformed value (written by a release that shaped it otherwise) reads
        // as zero rather than making the whole task unreadable.
        let usage = optional(field::USAGE)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        Ok(Self {
            owner: get(field::OWNER)?.to_owned(),
            status: get(field::STATUS)?.parse()?,
            mandate: get(field::MANDATE)?.to_owned(),
            max_ticks: number(field::MAX_TICKS)?,
            tick: number(field::TICK)?,
            result,
            error: optional(field::ERROR).cloned(),
            created_at: time(field::CREATED_AT)?,
            updated_at: time(field::UPDATED_AT)?,
            quota_key: get(field::QUOTA_KEY)?.to_owned(),
            refunded: fields.get(field::REFUNDED).is_some_and(|v| v == "1"),
            attempts: number(field::ATTEMPTS)?,
            usage,
            cancel_requested: fields
                .get(field::CANCEL_REQUESTED)
                .is_some_and(|v| v == "1"),
            active_key: optional(field::ACTIVE_KEY).cloned().unwrap_or_default(),
            idempotency_key: optional(field::IDEMPOTENCY_KEY).cloned(),
            traceparent: optional(field::TRACEPARENT).cloned(),
        })
    }
}

/// The body of a message on `agent.mandates`.
///
/// Unknown fields are ignored: during a rolling deploy a newer gateway may add fields that older agents
/// do not know yet, and their tasks must still run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// The task id, also the message's `message_id` and `correlation_id`.
    pub correlation_id: Uuid,
    /// The mandate text.
    pub mandate: String,
    /// Tick budget.
    pub max_ticks: u32,
    /// The tenant (JWT `sub`).
    pub owner: String,
    /// RFC 3339 creation time.
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TaskRecord {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        TaskRecord::new_pending(
            "user-1",
            "find things",
            7,
            "quota:user-1:20261123",
            "user:user-1:active",
            now,
        )
    }

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn a_record_round_trips_through_its_hash_fields() {
        let mut record = sample();
        record.status = Status::Completed;
        record.usage.model_calls = 4;
        record.cancel_requested = true;
        record.idempotency_key = Some("idempotency:user-1:k".into());
        record.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        record.result = Some(TaskResult {
            success: true,
            deliverables: vec!["d".into()],
            summary: "s".into(),
            sources: vec!["https://example.org/".into()],
            ticks_used: 3,
        });
        let back = TaskRecord::from_fields(&as_map(record.to_fields())).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_cancelled_result_keeps_what_was_gathered_and_says_when_it_stopped() {
        let result =
            TaskResult::cancelled(3, 10, vec!["d".into()], vec!["https://a.example/".into()]);
        assert!(!result.success);
        assert_eq!(result.deliverables, vec!["d"]);
        assert!(result.summary.contains("3 of 10"), "{}", result.summary);
        assert!(
            TaskResult::cancelled(0, 10, vec![], vec![])
                .summary
                .contains("before its first tick")
        );
    }

    #[test]
    fn a_record_without_an_owner_is_refused() {
        let mut fields = as_map(sample().to_fields());
        fields.remove(field::OWNER);
        assert!(matches!(
            TaskRecord::from_fields(&fields),
            Err(RecordError::Missing("owner"))
        ));
    }

    #[test]
    fn a_malformed_status_is_refused() {
        let mut fields = as_map(sample().to_fields());
        fields.insert(field::STATUS.into(), "done".into());
        assert!(matches!(
            TaskRecord::from_fields(&fields),
            Err(RecordError::Status(_))
        ));
    }

    #[test]
    fn a_message_with_fields_from_a_newer_release_still_parses() {
        let json = r#"{"correlation_id":"00000000-0000-0000-0000-000000000000","mandate":"m",
            "max_ticks":1,"owner":"o","created_at":"2026-11-23T10:00:00Z","extra":1}"#;
        let message: TaskMessage = serde_json::from_str(json).unwrap();
        assert_eq!(message.max_ticks, 1);
    }

    #[test]
    fn a_record_with_fields_from_a_newer_release_still_reads() {
        let mut fields = as_map(sample().to_fields());
        fields.insert("priority".into(), "high".into());
        fields.insert(
            field::USAGE.into(),
            r#"{"model_calls":2,"gpu_seconds":9}"#.into(),
        );
        let record = TaskRecord::from_fields(&fields).unwrap();
        assert_eq!(record.usage.model_calls, 2);
    }

    #[test]
    fn a_record_written_before_usage_and_cancel_existed_still_reads() {
        let mut fields = as_map(sample().to_fields());
        for name in [field::USAGE, field::ACTIVE_KEY, field::CANCEL_REQUESTED] {
            fields.remove(name);
        }
        let record = TaskRecord::from_fields(&fields).unwrap();
        assert_eq!(record.usage, Usage::default());
        assert!(!record.cancel_requested);
        assert_eq!(record.active_key, "");
    }
}
