//! Reading a task's event log (`task:{id}:events`) for the clients that follow it.

use super::{StoreError, TaskStore, record_of};
use shared::events::{EVENT_LOG_MAX_LEN, EntryId, Notice};
use shared::task::TaskRecord;
use std::collections::HashMap;
use std::sync::LazyLock;
use uuid::Uuid;

/// What a client following a task starts from, read in one atomic step.
///
/// A client that asks to resume from `0-0` gets the whole log, as long as none of it was trimmed: how a
/// client shows a task's history from its start.
#[derive(Debug, Clone)]
pub struct LogStart {
    /// The task's record (`None`: no such task).
    pub record: Option<TaskRecord>,
    /// The log's last entry, if it has any (a finished task's is its terminal event).
    pub last: Option<Notice>,
    /// When the client asked to resume after an entry the log still holds: the entries after it.
    /// `None` when it asked for nothing, or for an entry the log no longer holds (or never did): then
    /// the client gets a fresh snapshot.
    pub resumed: Option<Vec<Notice>>,
}

type Entry = (String, HashMap<String, String>);

/// KEYS[1] task key, KEYS[2] its event log. ARGV[1] the entry to resume after ('' for none), ARGV[2] the
/// most entries to return.
/// Returns {record fields, {last entry}, first retained entry id, '1' when the log was ever trimmed,
/// entries after ARGV[1]}: everything a follower starts from, read at one instant.
const OPEN_LOG_LUA: &str = r#"
local record = redis.call('HGETALL', KEYS[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local first, trimmed = '', '0'
if #last > 0 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local length, added = 0, 0
  for i = 1, #info, 2 do
    if info[i] == 'length' then length = info[i + 1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
  end
  if added > length then trimmed = '1' end
end
local after = {}
if ARGV[1] ~= '' and #last > 0 then
  after = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {record, last, first, trimmed, after}
"#;

static OPEN_LOG: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(OPEN_LOG_LUA));

/// Whether a follower that saw everything up to `after` can resume from the log, given the log's first
/// and last entries and whether it was ever trimmed: `after` must not be later than the log's end (then
/// it is not from this log), and when entries were trimmed it must not be earlier than the first one kept
/// (entries it has not seen may be gone). Otherwise it gets a fresh snapshot.
pub fn can_resume(after: EntryId, first: EntryId, last: EntryId, trimmed: bool) -> bool {
    after <= last && !(trimmed && after < first)
}

impl TaskStore {
    /// The record, the log's last entry and, when `resume_after` is given and the log can serve it, the
    /// entries after it, in one atomic round trip: so a snapshot and the position it stands for always
    /// agree.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or the record is malformed.
    pub async fn open_log(
        &self,
        id: Uuid,
        resume_after: Option<EntryId>,
    ) -> Result<LogStart, StoreError> {
        let (fields, last, first, trimmed, entries_after): (
            HashMap<String, String>,
            Vec<Entry>,
            String,
            String,
            Vec<Entry>,
        ) = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(OPEN_LOG
                    .key(self.keys.task(id))
                    .key(self.keys.task_events(id))
                    .arg(resume_after.map(|a| a.to_string()).unwrap_or_default())
                    .arg(EVENT_LOG_MAX_LEN * 2)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        let last = notices(id, last).pop();
        let resumed = match (resume_after, &last, first.parse::<EntryId>()) {
            (Some(after), Some(last), Ok(first))
                if can_resume(after, first, last.id, trimmed == "1") =>
            {
                Some(notices(id, entries_after))
            }
            _ => None,
        };
        Ok(LogStart {
            record: record_of(&fields)?,
            last,
            resumed,
        })
    }

    /// Entries of task `id`'s log after `after` (used when a follower fell behind its live feed).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn events_after(&self, id: Uuid, after: EntryId) -> Result<Vec<Notice>, StoreError> {
        let entries: Vec<Entry> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("XRANGE")
                    .arg(self.keys.task_events(id))
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(EVENT_LOG_MAX_LEN * 2)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(notices(id, entries))
    }
}

/// Stream entries as notices; an entry of a kind this release does not know is skipped.
fn notices(task: Uuid, entries: Vec<Entry>) -> Vec<Notice> {
    entries
        .into_iter()
        .filter_map(|(id, mut fields)| {
            Some(Notice {
                task,
                id: id.parse().ok()?,
                kind: fields.get("type")?.parse().ok()?,
                data: fields.remove("data").unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    #[test]
    fn a_follower_resumes_from_any_entry_of_a_complete_log_even_before_its_first() {
        assert!(can_resume(id(5), id(5), id(9), false));
        assert!(can_resume(id(7), id(5), id(9), false));
        assert!(can_resume(id(9), id(5), id(9), false));
        assert!(can_resume(EntryId::ZERO, id(5), id(9), false));
    }

    #[test]
    fn a_follower_behind_a_trimmed_log_gets_a_snapshot() {
        assert!(!can_resume(id(4), id(5), id(9), true));
        assert!(!can_resume(EntryId::ZERO, id(5), id(9), true));
        assert!(can_resume(id(5), id(5), id(9), true));
    }

    #[test]
    fn an_id_beyond_the_log_is_not_from_it() {
        assert!(!can_resume(id(10), id(5), id(9), false));
    }
}
