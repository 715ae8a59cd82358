//! One client's event stream of one task: a snapshot or the entries after its `Last-Event-ID`, then the
//! live feed, until the terminal event.
//!
//! The stream subscribes to the hub before reading the log, and remembers the id of the last entry it
//! sent (its cursor): an entry that arrives both ways is sent once, and an entry missed by the feed is
//! read from the log. Entry ids only grow, so "after the cursor" is all the bookkeeping needed.

use super::hub::{Feed, Hub, Subscription};
use crate::store::{StoreError, TaskStore};
use shared::api::TaskResponse;
use shared::backoff::Backoff;
use shared::events::{EntryId, Notice};
use shared::task::TaskRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Reads of the log a stream tries when it must catch up, and the pauses between them (doubling).
const CATCH_UP_ATTEMPTS: u32 = 5;
const CATCH_UP_FIRST_RETRY: Duration = Duration::from_millis(100);
const CATCH_UP_MAX_RETRY: Duration = Duration::from_secs(1);

/// One frame of the stream.
#[derive(Debug, Clone)]
pub enum Frame {
    /// The task as it stands at log position `id` (absent when the log is empty).
    Snapshot {
        /// The log position the snapshot stands for.
        id: Option<EntryId>,
        /// The task.
        task: Box<TaskResponse>,
    },
    /// An entry of the log.
    Event(Arc<Notice>),
    /// A finished task whose log has no terminal entry (written before the log existed).
    Ended(Box<TaskResponse>),
}

impl Frame {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Snapshot { .. } => "snapshot",
            Frame::Event(notice) => notice.kind.as_str(),
            Frame::Ended(task) => task.status.as_str(),
        }
    }

    /// The SSE `id:`.
    pub fn id(&self) -> Option<EntryId> {
        match self {
            Frame::Snapshot { id, .. } => *id,
            Frame::Event(notice) => Some(notice.id),
            Frame::Ended(_) => None,
        }
    }

    /// The SSE `data:`, JSON. A terminal event's entry holds the record's fields; clients get the task as
    /// the API shows it.
    pub fn data(&self) -> String {
        match self {
            Frame::Snapshot { task, .. } | Frame::Ended(task) => to_json(task),
            Frame::Event(notice) if notice.kind.is_terminal() => match terminal_task(notice) {
                Some(task) => to_json(&task),
                None => {
                    tracing::warn!(task_id = %notice.task, "a terminal event holds no readable record");
                    format!(
                        r#"{{"correlation_id":"{}","status":"{}"}}"#,
                        notice.task, notice.kind
                    )
                }
            },
            Frame::Event(notice) => notice.data.clone(),
        }
    }

    /// Whether this frame ends the stream.
    fn is_terminal(&self) -> bool {
        match self {
            Frame::Event(notice) => notice.kind.is_terminal(),
            Frame::Ended(_) => true,
            Frame::Snapshot { .. } => false,
        }
    }
}

fn to_json(task: &TaskResponse) -> String {
    serde_json::to_string(task).expect("a TaskResponse always serialises")
}

fn terminal_task(notice: &Notice) -> Option<TaskResponse> {
    let fields: HashMap<String, String> = serde_json::from_str(&notice.data).ok()?;
    let record = TaskRecord::from_fields(&fields).ok()?;
    Some(TaskResponse::from_record(notice.task, record))
}

/// A client following one task.
#[derive(Debug)]
pub struct Follow {
    store: TaskStore,
    task: Uuid,
    subscription: Subscription,
    /// The last log entry sent (or covered by the snapshot sent).
    cursor: EntryId,
    /// Frames ready to send.
    ready: VecDeque<Frame>,
    /// The terminal frame is queued: end once `ready` is empty.
    finishing: bool,
    /// Fired when the gateway shuts down: streams end, and clients reconnect elsewhere.
    stop: CancellationToken,
}

impl Follow {
    /// Starts following task `id` for `owner`, resuming after `last_event_id` when the log still holds
    /// that entry (otherwise, or when it is not an entry id, with a fresh snapshot). `None` when there is
    /// no such task or it is another user's.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn open(
        store: TaskStore,
        hub: &Hub,
        id: Uuid,
        owner: &str,
        last_event_id: Option<&str>,
        stop: CancellationToken,
    ) -> Result<Option<Self>, StoreError> {
        let subscription = hub.subscribe(id);
        let resume = last_event_id.and_then(|text| text.parse::<EntryId>().ok());
        let start = store.open_log(id, resume).await?;
        let Some(record) = start.record.filter(|r| r.owner == owner) else {
            return Ok(None);
        };
        let finished = record.status.is_terminal();
        let mut follow = Self {
            store,
            task: id,
            subscription,
            cursor: EntryId::ZERO,
            ready: VecDeque::new(),
            finishing: false,
            stop,
        };
        match (start.resumed, resume) {
            (Some(entries), Some(after)) => {
                follow.cursor = after;
                follow.queue_entries(entries);
            }
            _ => {
                let at = start.last.as_ref().map(|n| n.id);
                follow.cursor = at.unwrap_or(EntryId::ZERO);
                follow.ready.push_back(Frame::Snapshot {
                    id: at,
                    task: Box::new(TaskResponse::from_record(id, record.clone())),
                });
            }
        }
        if finished && !follow.finishing {
            // A finished task's stream always ends on its terminal event, even when the client has seen
            // it already (it then gets it once more rather than a stream that never ends).
            let end = match start.last {
                Some(last) if last.kind.is_terminal() => Frame::Event(Arc::new(last)),
                _ => Frame::Ended(Box::new(TaskResponse::from_record(id, record))),
            };
            follow.ready.push_back(end);
            follow.finishing = true;
        }
        Ok(Some(follow))
    }

    /// Reads the log after the cursor, retrying briefly (Redis may just be coming back); `None` when it
    /// stays unreadable: the stream then ends and the client resumes with its `Last-Event-ID`.
    async fn catch_up(&self) -> Option<Vec<Notice>> {
        let mut backoff = Backoff::new(CATCH_UP_FIRST_RETRY, CATCH_UP_MAX_RETRY);
        for attempt in 1..=CATCH_UP_ATTEMPTS {
            match self.store.events_after(self.task, self.cursor).await {
                Ok(entries) => return Some(entries),
                Err(error) if attempt < CATCH_UP_ATTEMPTS => {
                    tracing::debug!(task_id = %self.task, %error, attempt, "cannot read the event log yet");
                    tokio::select! {
                        () = self.stop.cancelled() => return None,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(task_id = %self.task, %error, "cannot catch up from the event log; ending the stream");
                }
            }
        }
        None
    }

    /// Queues log entries after the cursor, up to and including a terminal one.
    fn queue_entries(&mut self, entries: impl IntoIterator<Item = Notice>) {
        for notice in entries {
            if self.finishing || notice.id <= self.cursor {
                continue;
            }
            self.cursor = notice.id;
            let frame = Frame::Event(Arc::new(notice));
            self.finishing = frame.is_terminal();
            self.ready.push_back(frame);
        }
    }

    /// The next frame; `None` once the terminal frame was sent, when the gateway stops, or when the log
    /// cannot be read to catch up (the client then reconnects with its `Last-Event-ID`).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(frame);
            }
            if self.finishing {
                return None;
            }
            let feed = tokio::select! {
                () = self.stop.cancelled() => return None,
                feed = self.subscription.recv() => feed,
            };
            match feed {
                Ok(Feed::Event(notice)) => {
                    if notice.id > self.cursor && !self.finishing {
                        self.cursor = notice.id;
                        let frame = Frame::Event(notice);
                        self.finishing = frame.is_terminal();
                        self.ready.push_back(frame);
                    }
                }
                Ok(Feed::Resync) | Err(RecvError::Lagged(_)) => {
                    let entries = self.catch_up().await?;
                    self.queue_entries(entries);
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
