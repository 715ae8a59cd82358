//! The task record stored in Redis (`task:{id}`), the result an agent produces, and the queue message.

use crate::status::{Status, UnknownStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// Field names of the `task:{id}` hash (SPEC section 3).
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
}

/// What a completed task produced (SPEC section 2).
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
    /// The status is not one of the five.
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
        }
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
        ];
        if let Some(result) = &self.result {
            let json = serde_json::to_string(result).expect("a TaskResult always serialises");
            fields.push((field::RESULT, json));
        }
        if let Some(error) = &self.error {
            fields.push((field::ERROR, error.clone()));
        }
        fields
    }

    /// Reads a record from the fields of its hash (as `HGETALL` returns them).
    ///
    /// # Errors
    /// [`RecordError`] when a required field is missing or malformed.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, RecordError> {
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
        })
    }
}

/// The body of a message on `agent.mandates` (SPEC section 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
        TaskRecord::new_pending("user-1", "find things", 7, "quota:user-1:20261123", now)
    }

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn a_record_round_trips_through_its_hash_fields() {
        let mut record = sample();
        record.status = Status::Completed;
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
    fn a_message_with_unknown_fields_does_not_parse() {
        let json = r#"{"correlation_id":"00000000-0000-0000-0000-000000000000","mandate":"m",
            "max_ticks":1,"owner":"o","created_at":"2026-11-23T10:00:00Z","extra":1}"#;
        assert!(serde_json::from_str::<TaskMessage>(json).is_err());
    }
}
