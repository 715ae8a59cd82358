//! The gateway's Prometheus metrics, rendered on `GET /metrics`, and the middleware that gives each
//! request its span, trace context and metrics.
//!
//! Labels are bounded: a route is its template (`/tasks/{id}`, never a task id), a status its three
//! digits, an outcome or reason one of a few fixed words. The recorder is the process's one
//! ([`shared::telemetry::metrics`]).

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use shared::telemetry::{self, TRACEPARENT, TraceParent};
use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Requests answered, by `method`, `route` and `status`.
pub const REQUESTS: &str = "gateway_http_requests_total";
/// Time from a request's head to its answer's head, by `method` and `route`. An event stream's is the
/// time to open it, not how long it stayed open.
pub const REQUEST_SECONDS: &str = "gateway_http_request_duration_seconds";
/// Time from publishing a task to the broker's confirm, by `outcome` (`ack`, `nack`, `returned`,
/// `timeout`, `error`). Publishes that could not start (no broker connection) are not timed.
pub const PUBLISH_CONFIRM_SECONDS: &str = "gateway_publish_confirm_seconds";
/// `POST /tasks` refused for a user's limits, by `reason` (`quota_exceeded`, `too_many_active_tasks`).
pub const REFUSALS: &str = "gateway_task_refusals_total";
/// Event streams open now.
pub const EVENT_STREAMS: &str = "gateway_event_streams_open";

/// The route label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// A request's two series: its count (by method, route and status) and its latency (by method and route).
type Series = (Counter, Histogram);

/// The request series already registered, by route template, then method and status. A request finds
/// its handles here under a read lock instead of building, hashing and comparing its labelled keys in
/// the recorder's registry: measured with callgrind, that lookup was about 2,000 instructions a request.
/// Bounded: routes are the router's templates (and `unmatched`), methods a fixed set, statuses a few.
static SERIES: LazyLock<RwLock<SeriesByRoute>> = LazyLock::new(RwLock::default);

/// Route template, then method and status, to the series; foldhash, as the keys are the router's own.
type SeriesByRoute = HashMap<String, HashMap<(&'static str, u16), Series, FoldHash>, FoldHash>;
type FoldHash = foldhash::fast::RandomState;

/// Counts a request answered `status` on `route` and records its latency.
fn record_request(method: &'static str, route: &str, status: u16, took: Duration) {
    {
        let series = SERIES.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((count, latency)) = series.get(route).and_then(|r| r.get(&(method, status))) {
            count.increment(1);
            latency.record(took);
            return;
        }
    }
    let count = ::metrics::counter!(
        REQUESTS,
        "method" => method,
        "route" => route.to_owned(),
        "status" => status.to_string()
    );
    let latency =
        ::metrics::histogram!(REQUEST_SECONDS, "method" => method, "route" => route.to_owned());
    count.increment(1);
    latency.record(took);
    SERIES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(route.to_owned())
        .or_default()
        .insert((method, status), (count, latency));
}

/// Middleware giving every request its span (with its `request_id` and `trace_id`), its trace context
/// (continuing the caller's `traceparent`, or a new trace; handlers read it with
/// [`telemetry::current_trace`]), and its count and latency by route template. The request id layer
/// must run before it.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let (span, trace) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = header(crate::startup::REQUEST_ID.as_str()).unwrap_or(""),
            trace_id = tracing::field::Empty,
        );
        let incoming = header(TRACEPARENT).and_then(TraceParent::parse);
        let trace = telemetry::continue_trace(&span, incoming.as_ref());
        (span, trace)
    };
    let response = telemetry::in_trace(trace, next.run(request))
        .instrument(span)
        .await;
    record_request(
        method,
        route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The method as a label from a fixed set (any other method is `other`).
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// Records how long a publish took to be confirmed, and how it ended.
pub fn publish_confirmed(outcome: &'static str, took: Duration) {
    ::metrics::histogram!(PUBLISH_CONFIRM_SECONDS, "outcome" => outcome).record(took);
}

/// Counts a `POST /tasks` refused for the user's limits.
pub fn refused(reason: &'static str) {
    ::metrics::counter!(REFUSALS, "reason" => reason).increment(1);
}

/// Counts an event stream open for as long as it lives.
#[derive(Debug)]
pub struct OpenStream(());

impl OpenStream {
    /// Counts one more open stream.
    #[must_use]
    pub fn opened() -> Self {
        ::metrics::gauge!(EVENT_STREAMS).increment(1.0);
        Self(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        ::metrics::gauge!(EVENT_STREAMS).decrement(1.0);
    }
}

/// `GET /metrics`: every metric of this process in the Prometheus text format.
pub async fn render() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            shared::telemetry::METRICS_CONTENT_TYPE,
        )],
        shared::telemetry::render_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn methods_outside_the_known_set_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
