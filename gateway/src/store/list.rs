//! Listing a user's tasks, newest first, a page at a time.
//!
//! Each user has an index (`user:{sub}:tasks`): a sorted set whose members are `{created ms}:{id}`, all of
//! score 0, so they sort by creation time. A page reads the index backwards from the cursor (the member
//! of the last task of the previous page), then the records in one pipeline. New tasks sort before every
//! cursor already handed out, so paging stays stable while tasks arrive. Index members whose record has
//! expired are dropped as they are met.

use super::{StoreError, TaskStore, record_of};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shared::ShownStatus;
use shared::task::TaskRecord;
use std::collections::HashMap;
use uuid::Uuid;

/// Index members read per round trip when a status filter may skip many.
const FILTERED_BATCH: usize = 100;
/// Index members one request may read at most; past that it answers a shorter page with `has_more` and a
/// cursor to go on from, so a filter that matches little cannot make a request scan without bound.
const SCAN_BUDGET: usize = 1_000;

/// Where a page starts: after the task this cursor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

/// The cursor does not come from this API.
#[derive(Debug, thiserror::Error)]
#[error("after is not a cursor this API handed out")]
pub struct BadCursor;

impl Cursor {
    fn of(member: &str) -> Self {
        Self(member.to_owned())
    }

    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Reads a cursor a client sent back.
    ///
    /// # Errors
    /// [`BadCursor`] when it is not one we handed out.
    pub fn decode(text: &str) -> Result<Self, BadCursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| BadCursor)?;
        let member = String::from_utf8(bytes).map_err(|_| BadCursor)?;
        let (ms, id) = member.split_once(':').ok_or(BadCursor)?;
        let well_formed =
            ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit()) && id.parse::<Uuid>().is_ok();
        if well_formed {
            Ok(Self(member))
        } else {
            Err(BadCursor)
        }
    }
}

/// What page to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Tasks per page.
    pub limit: usize,
    /// Start after this task (`None`: the newest).
    pub after: Option<Cursor>,
    /// Only tasks shown with one of these statuses (`None`: all).
    pub statuses: Option<Vec<ShownStatus>>,
}

/// One page.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The tasks, newest first.
    pub tasks: Vec<(Uuid, TaskRecord)>,
    /// Where the next page starts, when there may be one.
    pub next: Option<Cursor>,
}

impl TaskStore {
    /// Reads a page of `owner`'s tasks. Two round trips per batch of index members: one to read the
    /// index, one to read the records (a status filter may need several batches, at most
    /// [`SCAN_BUDGET`] members in all).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or a record is malformed.
    pub async fn list(&self, owner: &str, query: &ListQuery) -> Result<ListPage, StoreError> {
        let index = self.keys.user_tasks(owner);
        let batch = match query.statuses {
            None => query.limit + 1,
            Some(_) => FILTERED_BATCH.max(query.limit + 1),
        };
        let mut found: Vec<(String, Uuid, TaskRecord)> = Vec::new();
        let mut from = query.after.as_ref().map(|c| c.0.clone());
        let mut scanned = 0;
        loop {
            let members = self.index_page(&index, from.as_deref(), batch).await?;
            let records = self.records(&members).await?;
            let mut expired = Vec::new();
            for (member, record) in members.iter().zip(records) {
                scanned += 1;
                from = Some(member.clone());
                let Some((id, record)) = record else {
                    expired.push(member.clone());
                    continue;
                };
                let wanted = query
                    .statuses
                    .as_ref()
                    .is_none_or(|s| s.contains(&record.shown_status()));
                // A record whose owner differs would be a bug elsewhere; never show it.
                if wanted && record.owner == owner {
                    found.push((member.clone(), id, record));
                    if found.len() > query.limit {
                        break;
                    }
                }
            }
            if !expired.is_empty() {
                self.prune(&index, &expired).await;
            }
            if found.len() > query.limit {
                found.truncate(query.limit);
                let next = found.last().map(|(member, _, _)| Cursor::of(member));
                return Ok(page(found, next));
            }
            if members.len() < batch {
                return Ok(page(found, None));
            }
            if scanned >= SCAN_BUDGET {
                // Stop here; the client goes on from the last member read.
                return Ok(page(found, from.as_deref().map(Cursor::of)));
            }
        }
    }

    /// Up to `count` index members before `before` (or from the newest), newest first.
    async fn index_page(
        &self,
        index: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let max = before.map_or_else(|| "+".to_owned(), |member| format!("({member}"));
        self.bounded(async {
            let mut conn = self.connection();
            Ok(redis::cmd("ZREVRANGEBYLEX")
                .arg(index)
                .arg(max)
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .query_async(&mut conn)
                .await?)
        })
        .await
    }

    /// The records of index `members`, in one pipeline; `None` for those that expired.
    async fn records(
        &self,
        members: &[String],
    ) -> Result<Vec<Option<(Uuid, TaskRecord)>>, StoreError> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Option<Uuid>> = members
            .iter()
            .map(|m| m.split_once(':').and_then(|(_, id)| id.parse().ok()))
            .collect();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.keys.task(id.unwrap_or_default()));
        }
        let all: Vec<HashMap<String, String>> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(pipe.query_async(&mut conn).await?)
            })
            .await?;
        ids.into_iter()
            .zip(all)
            .map(|(id, fields)| match (id, record_of(&fields)?) {
                (Some(id), Some(record)) => Ok(Some((id, record))),
                _ => Ok(None),
            })
            .collect()
    }

    /// Drops index members whose records expired; best effort (the next listing retries).
    async fn prune(&self, index: &str, members: &[String]) {
        let pruned = self
            .bounded(async {
                let mut conn = self.connection();
                redis::cmd("ZREM")
                    .arg(index)
                    .arg(members)
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            })
            .await;
        if let Err(error) = pruned {
            tracing::debug!(%error, "could not prune expired tasks from the index");
        }
    }
}

fn page(found: Vec<(String, Uuid, TaskRecord)>, next: Option<Cursor>) -> ListPage {
    ListPage {
        tasks: found
            .into_iter()
            .map(|(_, id, record)| (id, record))
            .collect(),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::create::index_member;

    #[test]
    fn a_cursor_round_trips_and_is_opaque() {
        let member = index_member(1_764_000_000_000, Uuid::new_v4());
        let cursor = Cursor::of(&member);
        let text = cursor.encode();
        assert!(!text.contains(':'), "{text}");
        assert_eq!(Cursor::decode(&text).unwrap(), cursor);
    }

    #[test]
    fn a_cursor_we_did_not_hand_out_is_refused() {
        for bad in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("12:abc"),
            &URL_SAFE_NO_PAD.encode(format!("{}:{}", "x".repeat(13), Uuid::nil())),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }
}
