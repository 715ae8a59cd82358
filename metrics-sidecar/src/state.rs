//! What the sidecar last saw and did, shared between the collector loop and the HTTP routes, and its
//! Prometheus text rendering.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

/// The last figures and counters. Cloned out of the lock, never held across an await.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// The queue measured.
    pub queue: String,
    /// Whether CloudWatch puts are on.
    pub cloudwatch: bool,
    /// `"management"` or `"presence"`.
    pub in_flight_source: &'static str,
    /// Ready messages at the last successful read.
    pub queue_depth: Option<u64>,
    /// Unacknowledged deliveries at the last successful read.
    pub in_flight: Option<u64>,
    /// Messages in the dead-letter queue at the last successful read of it.
    pub dead_letter_depth: Option<u64>,
    /// When the figures were last read successfully.
    pub last_read_at: Option<DateTime<Utc>>,
    /// When CloudWatch last accepted a put.
    pub last_put_at: Option<DateTime<Utc>>,
    /// Whether the latest tick read both figures.
    pub last_read_ok: bool,
    /// The latest tick's error, if any (never carries credentials).
    pub last_error: Option<String>,
    /// Why the latest put failed, while puts are failing; `None` once one succeeds.
    pub last_put_error: Option<String>,
    /// Successful reads.
    pub reads: u64,
    /// Failed reads.
    pub read_errors: u64,
    /// Successful puts.
    pub puts: u64,
    /// Failed puts, those abandoned at their deadline included.
    pub put_errors: u64,
    /// Puts abandoned because they did not finish within their deadline.
    pub put_timeouts: u64,
    /// Puts failed in a row since the last successful one (0 once one succeeds).
    pub consecutive_put_errors: u64,
    /// Connections opened to RabbitMQ (more than 1 means it reconnected).
    pub broker_connects: u64,
}

/// The snapshot behind a lock, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SharedState(Arc<RwLock<Snapshot>>);

impl SharedState {
    /// A state starting from `initial`.
    pub fn new(initial: Snapshot) -> Self {
        Self(Arc::new(RwLock::new(initial)))
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Changes the snapshot under the lock.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        match self.0.write() {
            Ok(mut guard) => change(&mut guard),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }
}

impl Snapshot {
    /// `"ok"` once the latest tick read the queue and, with CloudWatch on, the latest put (if any)
    /// succeeded; `"degraded"` otherwise.
    pub fn status(&self) -> &'static str {
        if self.last_read_ok && !self.puts_failing() {
            "ok"
        } else {
            "degraded"
        }
    }

    /// `"off"` when CloudWatch puts are off, `"failing"` while the latest put failed or was abandoned,
    /// `"ok"` otherwise (before the first put too).
    pub fn publishing(&self) -> &'static str {
        if !self.cloudwatch {
            "off"
        } else if self.puts_failing() {
            "failing"
        } else {
            "ok"
        }
    }

    /// Whether CloudWatch puts are on and the latest one failed.
    fn puts_failing(&self) -> bool {
        self.cloudwatch && self.consecutive_put_errors > 0
    }

    /// The snapshot in the Prometheus text exposition format (0.0.4). Figures not read yet are omitted.
    pub fn to_prometheus(&self) -> String {
        let queue = escape_label(&self.queue);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {value}");
            }
        };
        let seconds = |at: Option<DateTime<Utc>>| {
            at.map(|at| format!("{:.3}", at.timestamp_millis() as f64 / 1000.0))
        };
        gauge(
            "euglena_queue_depth",
            "Ready messages in the queue at the last read.",
            "gauge",
            self.queue_depth.map(|v| v.to_string()),
        );
        gauge(
            "euglena_queue_in_flight",
            "Delivered, unacknowledged messages at the last read.",
            "gauge",
            self.in_flight.map(|v| v.to_string()),
        );
        gauge(
            "euglena_dead_letter_depth",
            "Messages in the dead-letter queue at the last read.",
            "gauge",
            self.dead_letter_depth.map(|v| v.to_string()),
        );
        gauge(
            "euglena_sidecar_up",
            "1 when the latest tick read the queue, else 0.",
            "gauge",
            Some(u8::from(self.last_read_ok).to_string()),
        );
        gauge(
            "euglena_sidecar_cloudwatch_enabled",
            "1 when CloudWatch puts are on.",
            "gauge",
            Some(u8::from(self.cloudwatch).to_string()),
        );
        gauge(
            "euglena_sidecar_last_read_timestamp_seconds",
            "Unix time of the last successful read.",
            "gauge",
            seconds(self.last_read_at),
        );
        gauge(
            "euglena_sidecar_last_put_timestamp_seconds",
            "Unix time of the last successful CloudWatch put.",
            "gauge",
            seconds(self.last_put_at),
        );
        gauge(
            "euglena_sidecar_reads_total",
            "Successful reads of the queue figures.",
            "counter",
            Some(self.reads.to_string()),
        );
        gauge(
            "euglena_sidecar_read_errors_total",
            "Failed reads of the queue figures.",
            "counter",
            Some(self.read_errors.to_string()),
        );
        gauge(
            "euglena_sidecar_puts_total",
            "Successful CloudWatch puts.",
            "counter",
            Some(self.puts.to_string()),
        );
        gauge(
            "euglena_sidecar_put_errors_total",
            "Failed CloudWatch puts.",
            "counter",
            Some(self.put_errors.to_string()),
        );
        gauge(
            "euglena_sidecar_put_timeouts_total",
            "CloudWatch puts abandoned at their deadline.",
            "counter",
            Some(self.put_timeouts.to_string()),
        );
        gauge(
            "euglena_sidecar_consecutive_put_errors",
            "CloudWatch puts failed in a row since the last successful one.",
            "gauge",
            Some(self.consecutive_put_errors.to_string()),
        );
        gauge(
            "euglena_sidecar_broker_connects_total",
            "Connections opened to RabbitMQ.",
            "counter",
            Some(self.broker_connects.to_string()),
        );
        out
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_prometheus_text_carries_the_figures_with_the_queue_label() {
        let snapshot = Snapshot {
            queue: "agent.mandates".into(),
            queue_depth: Some(3),
            in_flight: Some(2),
            last_read_ok: true,
            last_put_at: Some(Utc.timestamp_millis_opt(1_700_000_000_500).unwrap()),
            puts: 4,
            put_timeouts: 2,
            ..Snapshot::default()
        };
        let text = snapshot.to_prometheus();
        assert!(text.contains("# TYPE euglena_queue_depth gauge\neuglena_queue_depth{queue=\"agent.mandates\"} 3\n"), "{text}");
        assert!(text.contains("euglena_queue_in_flight{queue=\"agent.mandates\"} 2\n"));
        assert!(text.contains(
            "euglena_sidecar_last_put_timestamp_seconds{queue=\"agent.mandates\"} 1700000000.500\n"
        ));
        assert!(text.contains("# TYPE euglena_sidecar_puts_total counter\neuglena_sidecar_puts_total{queue=\"agent.mandates\"} 4\n"));
        assert!(text.contains("euglena_sidecar_up{queue=\"agent.mandates\"} 1\n"));
        assert!(text.contains("euglena_sidecar_put_timeouts_total{queue=\"agent.mandates\"} 2\n"));
    }

    #[test]
    fn figures_not_read_yet_are_left_out_rather_than_shown_as_zero() {
        let text = Snapshot::default().to_prometheus();
        assert!(!text.contains("euglena_queue_depth"));
        assert!(!text.contains("euglena_sidecar_last_put_timestamp_seconds"));
        assert!(text.contains("euglena_sidecar_up{queue=\"\"} 0\n"));
    }

    #[test]
    fn failing_puts_degrade_the_status_even_when_the_reads_succeed() {
        let mut snapshot = Snapshot {
            cloudwatch: true,
            last_read_ok: true,
            ..Snapshot::default()
        };
        assert_eq!((snapshot.status(), snapshot.publishing()), ("ok", "ok"));
        snapshot.consecutive_put_errors = 1;
        assert_eq!(
            (snapshot.status(), snapshot.publishing()),
            ("degraded", "failing")
        );
        snapshot.cloudwatch = false;
        snapshot.consecutive_put_errors = 0;
        assert_eq!((snapshot.status(), snapshot.publishing()), ("ok", "off"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
