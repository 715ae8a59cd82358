//! The loop: every `PUBLISH_INTERVAL_SECONDS`, read the ready count and the in-flight count, record them
//! for `/health` and `/metrics`, and put them into CloudWatch when it is on. Every failure is logged and
//! counted and the next tick tries again; the loop only ends on shutdown. Every call a tick makes is
//! bounded (the broker's and Redis's operation timeouts, the put's deadline), so a stalled peer delays a
//! tick but never stops the loop.

use crate::broker::QueueReader;
use crate::cloudwatch::{Publisher, PutError};
use crate::inflight::InFlightSource;
use crate::state::SharedState;
use chrono::Utc;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Reads the figures and puts them.
#[derive(Debug)]
pub struct Collector {
    reader: QueueReader,
    in_flight: InFlightSource,
    publisher: Option<Publisher>,
    state: SharedState,
}

impl Collector {
    /// A collector recording into `state`; `publisher` is `None` when CloudWatch is off.
    pub fn new(
        reader: QueueReader,
        in_flight: InFlightSource,
        publisher: Option<Publisher>,
        state: SharedState,
    ) -> Self {
        Self {
            reader,
            in_flight,
            publisher,
            state,
        }
    }

    /// One tick: read both figures, record them, put them. Never fails; failures land in the state.
    pub async fn tick(&mut self) {
        let ready = self.reader.ready_count().await;
        let connects = self.reader.connects();
        // Without the ready count there is nothing to put; skip the second read too.
        let figures = match ready {
            Ok(ready) => self
                .in_flight
                .count()
                .await
                .map(|in_flight| (u64::from(ready), in_flight))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let now = Utc::now();
        let (queue_depth, in_flight) = match figures {
            Ok(figures) => figures,
            Err(error) => {
                tracing::warn!(%error, "cannot read the queue figures; retrying at the next tick");
                self.state.update(|s| {
                    s.broker_connects = connects;
                    s.last_read_ok = false;
                    s.read_errors += 1;
                    s.last_error = Some(error);
                });
                return;
            }
        };
        // The DLQ depth feeds an alarm, not the scaling; a failed read of it only skips that figure.
        let dead_letter_depth = match self.reader.dead_letter_count().await {
            Ok(depth) => Some(u64::from(depth)),
            Err(error) => {
                tracing::warn!(%error, "cannot read the dead-letter queue");
                None
            }
        };
        self.state.update(|s| {
            s.broker_connects = connects;
            s.dead_letter_depth = dead_letter_depth;
            s.queue_depth = Some(queue_depth);
            s.in_flight = Some(in_flight);
            s.last_read_at = Some(now);
            s.last_read_ok = true;
            s.last_error = None;
            s.reads += 1;
        });
        tracing::debug!(queue_depth, in_flight, "read the queue figures");

        let Some(publisher) = &self.publisher else {
            return;
        };
        // The put is bounded by the publisher's deadline, so this await always ends before the next tick.
        match publisher
            .put(queue_depth, in_flight, dead_letter_depth, now)
            .await
        {
            Ok(()) => self.state.update(|s| {
                s.last_put_at = Some(Utc::now());
                s.puts += 1;
                s.consecutive_put_errors = 0;
                s.last_put_error = None;
            }),
            Err(error) => {
                let mut consecutive_put_errors = 0;
                self.state.update(|s| {
                    s.put_errors += 1;
                    s.consecutive_put_errors += 1;
                    if matches!(error, PutError::Timeout { .. }) {
                        s.put_timeouts += 1;
                    }
                    s.last_error = Some(error.to_string());
                    s.last_put_error = Some(error.to_string());
                    consecutive_put_errors = s.consecutive_put_errors;
                });
                match &error {
                    PutError::Timeout { deadline } => tracing::warn!(
                        deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                        consecutive_put_errors,
                        %error,
                        "CloudWatch put abandoned at its deadline; a fresh value goes at the next tick"
                    ),
                    PutError::Failed(_) => tracing::warn!(
                        consecutive_put_errors,
                        %error,
                        "CloudWatch put failed; retrying at the next tick"
                    ),
                }
            }
        }
    }

    /// Ticks every `interval` (the first at once) until `cancel` fires, then closes the broker connection.
    pub async fn run(mut self, interval: Duration, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.tick() => {}
            }
        }
        self.reader.close().await;
    }
}
