//! Task statuses as stored in Redis and as the API shows them, and the forward-only transition rule.
//!
//! The rule is a pure function ([`Status::can_move_to`]); the Lua script in [`crate::store`] enforces it
//! atomically by receiving, for each write, the set of statuses it may come from
//! ([`Status::allowed_sources`]), so Rust stays the single place the rule is written down.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A task's status as stored in the `status` field of `task:{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Recorded by the gateway, before the message is published.
    Pending,
    /// An agent took the message.
    Accepted,
    /// An agent ran at least one tick.
    InProgress,
    /// Finished with a result. Terminal.
    Completed,
    /// Finished with an error. Terminal.
    Failed,
    /// Stopped at its owner's request. Terminal.
    Cancelled,
}

/// A task's status as the HTTP API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShownStatus {
    /// Waiting in the queue.
    InQueue,
    /// An agent is working on it.
    InProgress,
    /// Its owner asked to cancel it; the agent running it is stopping.
    Cancelling,
    /// Finished; `result` is set.
    Completed,
    /// Finished; `error` is set.
    Failed,
    /// Cancelled; `result` holds what was done before (`success: false`).
    Cancelled,
}

impl ShownStatus {
    /// Every shown status.
    pub const ALL: [ShownStatus; 6] = [
        ShownStatus::InQueue,
        ShownStatus::InProgress,
        ShownStatus::Cancelling,
        ShownStatus::Completed,
        ShownStatus::Failed,
        ShownStatus::Cancelled,
    ];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ShownStatus::InQueue => "in_queue",
            ShownStatus::InProgress => "in_progress",
            ShownStatus::Cancelling => "cancelling",
            ShownStatus::Completed => "completed",
            ShownStatus::Failed => "failed",
            ShownStatus::Cancelled => "cancelled",
        }
    }
}

impl FromStr for ShownStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ShownStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl Status {
    /// Every status, in order of progress.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Accepted,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The name stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Accepted => "accepted",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the task is finished: nothing may change it afterwards.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// Whether an agent holds the task (it took the message and has not finished).
    pub fn is_running(self) -> bool {
        matches!(self, Status::Accepted | Status::InProgress)
    }

    /// The status the API shows for this stored status; `cancel_requested` is the record's flag, set when
    /// its owner asked to cancel a running task.
    pub fn shown(self, cancel_requested: bool) -> ShownStatus {
        match self {
            Status::Pending => ShownStatus::InQueue,
            Status::Accepted | Status::InProgress if cancel_requested => ShownStatus::Cancelling,
            Status::Accepted | Status::InProgress => ShownStatus::InProgress,
            Status::Completed => ShownStatus::Completed,
            Status::Failed => ShownStatus::Failed,
            Status::Cancelled => ShownStatus::Cancelled,
        }
    }

    /// The forward-only rule: `pending -> accepted -> in_progress -> completed | failed | cancelled`, and
    /// `pending -> failed | cancelled`.
    ///
    /// A worker may also re-take a task it (or a dead worker) had already taken (`accepted -> accepted`,
    /// `in_progress -> accepted` is refused), heartbeat an `in_progress` task (`in_progress -> in_progress`),
    /// and finish a task that never reached its first tick (`accepted -> completed | failed | cancelled`).
    /// Nothing moves out of a terminal status, and nothing moves back to `pending`.
    pub fn can_move_to(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (Completed | Failed | Cancelled, _) => false,
            (_, Pending) => false,
            (Pending, Accepted | Failed | Cancelled) => true,
            (Pending, InProgress | Completed) => false,
            (Accepted, Accepted | InProgress | Completed | Failed | Cancelled) => true,
            (InProgress, InProgress | Completed | Failed | Cancelled) => true,
            (InProgress, Accepted) => false,
        }
    }

    /// The statuses a record may be in for a write of `to` to apply.
    pub fn allowed_sources(to: Status) -> Vec<Status> {
        Status::ALL
            .into_iter()
            .filter(|from| from.can_move_to(to))
            .collect()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored (or requested) value is not one of the statuses.
#[derive(Debug, thiserror::Error)]
#[error("unknown task status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;
    use super::*;

    #[test]
    fn the_happy_path_moves_forward_step_by_step() {
        assert!(Pending.can_move_to(Accepted));
        assert!(Accepted.can_move_to(InProgress));
        assert!(InProgress.can_move_to(Completed));
        assert!(InProgress.can_move_to(Failed));
        assert!(Pending.can_move_to(Failed));
    }

    #[test]
    fn nothing_leaves_a_terminal_status() {
        for from in [Completed, Failed, Cancelled] {
            for to in Status::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn no_status_moves_backwards() {
        let rank = |s: Status| match s {
            Pending => 0,
            Accepted => 1,
            InProgress => 2,
            Completed | Failed | Cancelled => 3,
        };
        for from in Status::ALL {
            for to in Status::ALL {
                if rank(to) < rank(from) {
                    assert!(!from.can_move_to(to), "{from} -> {to} moves backwards");
                }
            }
        }
    }

    #[test]
    fn a_pending_task_cannot_skip_being_accepted() {
        assert!(!Pending.can_move_to(InProgress));
        assert!(!Pending.can_move_to(Completed));
        assert!(!Pending.can_move_to(Pending));
    }

    #[test]
    fn heartbeats_and_redeliveries_may_repeat_a_status() {
        assert!(InProgress.can_move_to(InProgress));
        assert!(Accepted.can_move_to(Accepted));
        assert!(!InProgress.can_move_to(Accepted));
    }

    #[test]
    fn a_task_can_be_cancelled_until_it_finishes() {
        for from in [Pending, Accepted, InProgress] {
            assert!(from.can_move_to(Cancelled), "{from} -> cancelled");
        }
        assert!(Cancelled.is_terminal());
        assert!(!Cancelled.can_move_to(Completed));
        assert!(!Completed.can_move_to(Cancelled));
    }

    #[test]
    fn allowed_sources_agree_with_the_rule() {
        assert_eq!(Status::allowed_sources(Accepted), vec![Pending, Accepted]);
        assert_eq!(
            Status::allowed_sources(Failed),
            vec![Pending, Accepted, InProgress]
        );
        assert_eq!(Status::allowed_sources(Pending), vec![]);
    }

    #[test]
    fn stored_statuses_are_shown_as_the_api_names_them() {
        assert_eq!(Pending.shown(false), ShownStatus::InQueue);
        assert_eq!(Accepted.shown(false), ShownStatus::InProgress);
        assert_eq!(InProgress.shown(false), ShownStatus::InProgress);
        assert_eq!(Completed.shown(false), ShownStatus::Completed);
        assert_eq!(Failed.shown(false), ShownStatus::Failed);
        assert_eq!(Cancelled.shown(false), ShownStatus::Cancelled);
        for status in ShownStatus::ALL {
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
            assert_eq!(status.as_str().parse::<ShownStatus>().unwrap(), status);
        }
    }

    #[test]
    fn a_running_task_whose_owner_asked_to_cancel_is_shown_cancelling() {
        assert_eq!(Accepted.shown(true), ShownStatus::Cancelling);
        assert_eq!(InProgress.shown(true), ShownStatus::Cancelling);
        // Once finished, the outcome is shown whatever was asked.
        assert_eq!(Completed.shown(true), ShownStatus::Completed);
        assert_eq!(Pending.shown(true), ShownStatus::InQueue);
    }

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        }
        assert!("done".parse::<Status>().is_err());
    }
}
