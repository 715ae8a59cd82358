//! The hub: reads the `events` pub/sub channel on one connection and hands each event to the streams
//! following its task.
//!
//! Each followed task has a bounded broadcast channel. A stream too slow for it is told it lagged, and a
//! lost pub/sub connection tells every stream to resync; either way the stream reads what it missed from
//! the task's log, so nothing is dropped and no memory grows without bound.

use futures::StreamExt;
use shared::backoff::Backoff;
use shared::events::Notice;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events a task's channel buffers for its slowest stream before that stream must resync from the log.
const TOPIC_CAPACITY: usize = 64;
/// How often the pub/sub connection is pinged, so a connection that died silently is noticed.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping or a (re)subscription may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a stream receives from the hub.
#[derive(Debug, Clone)]
pub enum Feed {
    /// An event appended to the task's log.
    Event(Arc<Notice>),
    /// Events may have been missed (the pub/sub connection was lost): read the log.
    Resync,
}

#[derive(Debug, Default)]
struct Inner {
    topics: Mutex<HashMap<Uuid, broadcast::Sender<Feed>>>,
    connected: AtomicBool,
}

impl Inner {
    fn topics(&self) -> MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Feed>>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands appended events to the streams following their tasks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A stream's registration with the hub for one task; leaving it unregisters.
#[derive(Debug)]
pub struct Subscription {
    task: Uuid,
    receiver: broadcast::Receiver<Feed>,
    hub: Arc<Inner>,
}

impl Subscription {
    /// The next feed item.
    ///
    /// # Errors
    /// [`broadcast::error::RecvError::Lagged`] when this stream fell behind (read the log), `Closed` never
    /// while the subscription lives.
    pub async fn recv(&mut self) -> Result<Feed, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.topics();
        // This subscription's receiver is still counted until after `drop` returns.
        if topics
            .get(&self.task)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            topics.remove(&self.task);
        }
    }
}

impl Hub {
    /// An idle hub; [`Hub::run`] feeds it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a stream for `task`'s events.
    pub fn subscribe(&self, task: Uuid) -> Subscription {
        let receiver = self
            .inner
            .topics()
            .entry(task)
            .or_insert_with(|| broadcast::channel(TOPIC_CAPACITY).0)
            .subscribe();
        Subscription {
            task,
            receiver,
            hub: Arc::clone(&self.inner),
        }
    }

    /// Hands `notice` to the streams following its task, if any.
    pub fn deliver(&self, notice: Notice) {
        if let Some(sender) = self.inner.topics().get(&notice.task) {
            // No receiver left means the last stream is leaving; nothing to do.
            let _ = sender.send(Feed::Event(Arc::new(notice)));
        }
    }

    /// Tells every stream to read what it may have missed.
    fn resync_all(&self) {
        for sender in self.inner.topics().values() {
            let _ = sender.send(Feed::Resync);
        }
    }

    /// Tasks followed right now.
    pub fn followed_tasks(&self) -> usize {
        self.inner.topics().len()
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.inner
            .topics()
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum()
    }

    /// Whether the pub/sub connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Reads `channel` on a connection of its own, reconnecting with backoff, until `stop` fires. After
    /// every (re)subscription all streams resync, since events published meanwhile were not seen.
    pub async fn run(self, client: redis::Client, channel: String, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let subscribed = tokio::select! {
                () = stop.cancelled() => return,
                subscribed = tokio::time::timeout(CALL_TIMEOUT, subscribe(&client, &channel)) => subscribed,
            };
            match subscribed {
                Ok(Ok((sink, stream))) => {
                    self.inner.connected.store(true, Ordering::Relaxed);
                    backoff.reset();
                    self.resync_all();
                    tracing::debug!(%channel, "following task events");
                    let ended = self.pump(sink, stream, &stop).await;
                    self.inner.connected.store(false, Ordering::Relaxed);
                    match ended {
                        None => return,
                        Some(reason) => {
                            tracing::warn!(%reason, "lost the task-event feed; reconnecting");
                        }
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot subscribe to task events; retrying")
                }
                Err(_) => tracing::warn!("subscribing to task events timed out; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Delivers messages until the connection fails (`Some(reason)`) or `stop` fires (`None`).
    async fn pump(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        stop: &CancellationToken,
    ) -> Option<String> {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                message = stream.next() => match message {
                    Some(message) => match Notice::decode(message.get_payload_bytes()) {
                        Some(notice) => self.deliver(notice),
                        None => tracing::debug!("skipped an event this release does not read"),
                    },
                    None => return Some("the connection closed".into()),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(CALL_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Some(error.to_string()),
                        Err(_) => return Some(format!("no answer to a ping within {CALL_TIMEOUT:?}")),
                    }
                }
            }
        }
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.split())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::events::{EntryId, EventKind};

    fn notice(task: Uuid, seq: u64) -> Notice {
        Notice {
            task,
            id: EntryId { ms: 1, seq },
            kind: EventKind::Tick,
            data: "{}".into(),
        }
    }

    #[tokio::test]
    async fn an_event_reaches_every_stream_of_its_task_and_no_other() {
        let hub = Hub::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut first = hub.subscribe(a);
        let mut second = hub.subscribe(a);
        let mut other = hub.subscribe(b);
        hub.deliver(notice(a, 1));
        for sub in [&mut first, &mut second] {
            match sub.recv().await.unwrap() {
                Feed::Event(n) => assert_eq!(n.id.seq, 1),
                Feed::Resync => panic!("expected the event"),
            }
        }
        assert!(other.receiver.try_recv().is_err());
        assert_eq!(hub.open_streams(), 3);
    }

    #[tokio::test]
    async fn a_task_is_forgotten_when_its_last_stream_leaves() {
        let hub = Hub::new();
        let task = Uuid::new_v4();
        let first = hub.subscribe(task);
        let second = hub.subscribe(task);
        drop(first);
        assert_eq!(hub.followed_tasks(), 1);
        drop(second);
        assert_eq!(hub.followed_tasks(), 0);
        // Delivering to a task nobody follows is a no-op.
        hub.deliver(notice(task, 1));
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_told_so_instead_of_growing() {
        let hub = Hub::new();
        let task = Uuid::new_v4();
        let mut slow = hub.subscribe(task);
        for seq in 0..(TOPIC_CAPACITY as u64 + 10) {
            hub.deliver(notice(task, seq));
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
