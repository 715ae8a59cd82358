//! Following a task's event stream as a client does: `GET /tasks/{id}/events`, frames parsed with
//! `eventsource-stream`, every wait bounded.

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use serde_json::Value;
use std::pin::Pin;
use std::time::Duration;

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The `id:` (empty when the frame has none).
    pub id: String,
    /// The `event:`.
    pub event: String,
    /// The `data:`, parsed.
    pub data: Value,
}

type Frames = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// An open event stream.
pub struct EventStream {
    frames: Frames,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

/// Opens `url` (a task's events) with `token`, resuming after `last_event_id` when given. Returns the
/// response's status, and the stream when it is 200.
///
/// # Panics
/// When the request cannot be sent at all.
pub async fn open(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> (reqwest::StatusCode, Option<EventStream>) {
    let mut request = client.get(url).bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return (status, None);
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content type {content_type}"
    );
    let frames = response.bytes_stream().eventsource().boxed();
    (status, Some(EventStream { frames }))
}

impl EventStream {
    /// The next frame; `None` when the server closed the stream.
    ///
    /// # Panics
    /// When no frame arrives `within`, or the stream breaks.
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        let next = tokio::time::timeout(within, self.frames.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"));
        next.map(|event| {
            let event = event.expect("the event stream is well formed");
            Frame {
                id: event.id,
                data: serde_json::from_str(&event.data)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", event.data)),
                event: event.event,
            }
        })
    }

    /// Every frame until the server closes the stream.
    ///
    /// # Panics
    /// When the stream does not close `within`.
    pub async fn until_closed(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(frame) => frames.push(frame),
                None => return frames,
            }
        }
    }

    /// Frames until (and including) the first one named `event`.
    ///
    /// # Panics
    /// When it does not come `within`, or the stream closes first.
    pub async fn until(&mut self, event: &str, within: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("the stream closed before {event}: {frames:?}"));
            let done = frame.event == event;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
}
