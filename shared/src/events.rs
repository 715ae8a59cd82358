//! The task event log: what happened to a task, in order, for clients that follow it.
//!
//! Each task has a Redis stream `task:{id}:events`. The gateway appends `created` and `cancelling`, the agent
//! `accepted`, `tick` and `memory`, and whichever side ends the task appends its one terminal event
//! (`completed`, `failed` or `cancelled`) in the same atomic step as the terminal status. Every append is
//! also announced on the pub/sub channel `events`, so a gateway can push it to the clients following that
//! task without polling Redis per client; the stream stays the source of truth for a client that
//! reconnects with `Last-Event-ID`.
//!
//! Appends happen inside the Lua scripts that change the record ([`APPEND_EVENT_LUA`] is pasted into
//! each), so an event can never be recorded without its change, nor a change without its event.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Entries a task's log keeps (approximately: Redis trims whole nodes); older ones are dropped, and a
/// client resuming from a dropped entry gets a fresh snapshot.
pub const EVENT_LOG_MAX_LEN: u32 = 1_000;

/// The kinds of event, as the stream and the SSE `event:` field name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The gateway recorded the task.
    Created,
    /// An agent took it.
    Accepted,
    /// The agent ran a tick.
    Tick,
    /// The tick used vector memory.
    Memory,
    /// The owner asked to cancel it while it ran.
    Cancelling,
    /// Terminal: completed.
    Completed,
    /// Terminal: failed.
    Failed,
    /// Terminal: cancelled.
    Cancelled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 8] = [
        EventKind::Created,
        EventKind::Accepted,
        EventKind::Tick,
        EventKind::Memory,
        EventKind::Cancelling,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Cancelled,
    ];

    /// The name in the stream and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Accepted => "accepted",
            EventKind::Tick => "tick",
            EventKind::Memory => "memory",
            EventKind::Cancelling => "cancelling",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
        }
    }

    /// Whether this event ends the task (it is the last one its log gets).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event kind that is not one of ours (written by a newer release, or garbage).
#[derive(Debug, thiserror::Error)]
#[error("unknown event kind {0:?}")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.to_owned()))
    }
}

/// An event to append: its kind and its JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The kind.
    pub kind: EventKind,
    /// The data, JSON.
    pub data: String,
}

impl NewEvent {
    /// An event of `kind` whose data is `data` serialised.
    pub fn new(kind: EventKind, data: &impl Serialize) -> Self {
        Self {
            kind,
            data: serde_json::to_string(data).expect("event data always serialises"),
        }
    }
}

/// A Redis stream entry id, `<milliseconds>-<sequence>`: the `id:` of an SSE frame and what a client
/// sends back as `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EntryId {
    /// The smallest id: before every entry.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Not a stream entry id.
#[derive(Debug, thiserror::Error)]
#[error("not an event id: {0:?}")]
pub struct BadEntryId(pub String);

impl FromStr for EntryId {
    type Err = BadEntryId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEntryId(s.chars().take(64).collect());
        let (ms, seq) = s.trim().split_once('-').ok_or_else(bad)?;
        let digits = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
        };
        Ok(EntryId {
            ms: digits(ms).ok_or_else(bad)?,
            seq: digits(seq).ok_or_else(bad)?,
        })
    }
}

/// An appended event, as announced on the `events` channel and as read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The task.
    pub task: Uuid,
    /// Its entry in the task's log.
    pub id: EntryId,
    /// The kind.
    pub kind: EventKind,
    /// The data, JSON. For a terminal event, the task record's fields as a JSON object.
    pub data: String,
}

impl Notice {
    /// Reads an announcement: `task \n id \n kind \n data` (as [`APPEND_EVENT_LUA`] publishes it).
    /// `None` for anything else, such as a kind from a newer release.
    pub fn decode(payload: &[u8]) -> Option<Notice> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(4, '\n');
        let task = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let kind = parts.next()?.parse().ok()?;
        let data = parts.next()?.to_owned();
        Some(Notice {
            task,
            id,
            kind,
            data,
        })
    }

    /// The announcement's text (what the Lua snippet publishes); for tests and tools that inject events.
    pub fn encode(&self) -> String {
        format!("{}\n{}\n{}\n{}", self.task, self.id, self.kind, self.data)
    }
}

/// Lua: `append_event(events_key, channel, task_id, max_len, kind, data)` appends one event to a task's log,
/// announces it, and returns its id. Pasted at the top of every script that appends events.
pub const APPEND_EVENT_LUA: &str = r#"
local function append_event(events_key, channel, task_id, max_len, kind, data)
  local id = redis.call('XADD', events_key, 'MAXLEN', '~', max_len, '*', 'type', kind, 'data', data)
  redis.call('PUBLISH', channel, task_id .. '\n' .. id .. '\n' .. kind .. '\n' .. data)
  return id
end
"#;

/// Lua: `record_json(task_key)` is the task record's fields as a JSON object: the data of a terminal
/// event, taken in the same step as the terminal status.
pub const RECORD_JSON_LUA: &str = r#"
local function record_json(task_key)
  local flat = redis.call('HGETALL', task_key)
  local record = {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  return cjson.encode(record)
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_print_and_order_like_redis() {
        let a: EntryId = "1700000000000-0".parse().unwrap();
        let b: EntryId = "1700000000000-1".parse().unwrap();
        let c: EntryId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1700000000000-0");
        assert!(EntryId::ZERO < a);
    }

    #[test]
    fn anything_else_is_not_an_entry_id() {
        for bad in [
            "", "-", "12", "12-", "-3", "a-1", "1-b", "1-2-3", "+", "$", "1 -2",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_notice_round_trips_with_newlines_in_its_data() {
        let notice = Notice {
            task: Uuid::new_v4(),
            id: EntryId { ms: 5, seq: 2 },
            kind: EventKind::Tick,
            data: "{\"observation\":\"line one\\nline two\"}\nraw newline".into(),
        };
        assert_eq!(
            Notice::decode(notice.encode().as_bytes()),
            Some(notice.clone())
        );
    }

    #[test]
    fn a_notice_of_an_unknown_kind_is_skipped() {
        let text = format!("{}\n1-0\nteleported\n{{}}", Uuid::new_v4());
        assert_eq!(Notice::decode(text.as_bytes()), None);
        assert_eq!(Notice::decode(b"garbage"), None);
    }

    #[test]
    fn kinds_round_trip_and_three_are_terminal() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
        }
        let terminal: Vec<_> = EventKind::ALL
            .into_iter()
            .filter(|k| k.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                EventKind::Completed,
                EventKind::Failed,
                EventKind::Cancelled
            ]
        );
    }
}
