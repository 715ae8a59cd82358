//! Telemetry: logs, metrics and traces.
//!
//! - Logs: JSON lines by default, `LOG_FORMAT=pretty` for humans, filtered by `RUST_LOG`. They go to stderr,
//!   so a command's own output on stdout (e.g. `autoscaler-lambda once`) stays clean; ECS, Lambda and Docker
//!   collect both streams. A JSON line carries the fields of every span it happened in (`spans`), so a
//!   line logged deep inside a task still names its `task_id`, `trace_id` and `request_id`.
//! - Metrics: one Prometheus recorder per process ([`metrics`]), shared by every service built in it,
//!   rendered on each service's `/metrics`.
//! - Traces: a W3C trace context ([`TraceParent`]) follows a task from the request that created it to the
//!   agent's model and search calls. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over
//!   OTLP/HTTP with protobuf to `{endpoint}/v1/traces` as service `OTEL_SERVICE_NAME` (default: the
//!   binary's name); unset, no span is built for export and the trace context costs a few random numbers
//!   per request.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use std::fmt;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The HTTP and AMQP header carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `Content-Type` of the Prometheus text format that `/metrics` answers with.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The default filter when `RUST_LOG` is unset.
///
/// lapin logs every I/O error of a connection at ERROR, including the "invalid channel state: Closing"
/// it meets while a connection that is being closed on purpose (a clean shutdown, a reconnect) still
/// has frames to flush; the services log the failures that matter themselves (a lost connection, a
/// failed publish), with their consequence and at the level it deserves, so lapin's own lines are kept
/// for `RUST_LOG=lapin=debug` sessions.
const DEFAULT_FILTER: &str = "info,lapin=off,amq_protocol=warn";

/// Histogram buckets (seconds) of every `*_seconds` metric: from half a millisecond (a Redis read) to two
/// minutes (a slow model call).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// How often recorded histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what CloudWatch Logs and log shippers want).
    Json,
    /// Human-readable, coloured when the terminal supports it.
    Pretty,
}

impl LogFormat {
    /// Reads `LOG_FORMAT` (`json`, the default, or `pretty`).
    ///
    /// # Errors
    /// [`crate::settings::SettingsError`] for any other value.
    pub fn from_env() -> Result<Self, crate::settings::SettingsError> {
        match crate::settings::optional("LOG_FORMAT")?.as_deref() {
            None | Some("json") => Ok(LogFormat::Json),
            Some("pretty") => Ok(LogFormat::Pretty),
            Some(other) => Err(crate::settings::SettingsError::Invalid {
                name: "LOG_FORMAT",
                reason: format!("expected json or pretty, got {other:?}"),
            }),
        }
    }
}

/// Where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL; spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME`: the `service.name` of the exported spans.
    pub service_name: String,
}

impl OtlpSettings {
    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` (default `service`); `None` when no
    /// endpoint is set (or it is empty).
    pub fn from_env(service: &str) -> Option<Self> {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Some(Self {
            endpoint: read("OTEL_EXPORTER_OTLP_ENDPOINT")?,
            service_name: read("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned()),
        })
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }
}

/// Whether spans are being exported (set once, by the first successful [`init_with`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// The exporting tracer provider, kept to flush it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The process's metrics recorder.
static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global subscriber for `service`, exporting spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set, and the metrics recorder. `RUST_LOG` overrides the default `info` level. Safe to call more than
/// once (later calls do nothing), so tests can call it freely.
pub fn init(service: &'static str, format: LogFormat) {
    init_with(service, format, OtlpSettings::from_env(service));
}

/// [`init`] with the export settings given rather than read from the environment.
pub fn init_with(service: &'static str, format: LogFormat, otlp: Option<OtlpSettings>) {
    metrics();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let provider = match otlp.as_ref().map(build_provider).transpose() {
        Ok(provider) => provider,
        Err(error) => {
            eprintln!("{service}: spans will not be exported: {error}");
            None
        }
    };
    let otel = provider.as_ref().map(|provider| {
        let name = otlp
            .as_ref()
            .map_or(service.to_owned(), |o| o.service_name.clone());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(name))
            .with_tracked_inactivity(false)
            .with_threads(false)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_span_events(FmtSpan::NONE),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    if result.is_err() {
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return;
    }
    if let (Some(provider), Some(otlp)) = (provider, otlp) {
        EXPORTING.store(true, Ordering::Release);
        tracing::info!(
            endpoint = %otlp.traces_url(),
            service_name = %otlp.service_name,
            "exporting spans over OTLP"
        );
        let _ = PROVIDER.set(provider);
    }
    tracing::debug!(service, "telemetry initialised");
}

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct ExportError(String);

fn build_provider(otlp: &OtlpSettings) -> Result<SdkTracerProvider, ExportError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otlp.traces_url())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ExportError(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported (an OTLP endpoint was configured when telemetry started).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// Exports the spans that ended and are not exported yet, waiting for the collector (bounded by the
/// exporter's timeout). Blocks: call it from a blocking context. Does nothing when not exporting.
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.force_flush()
    {
        tracing::warn!(%error, "cannot flush the spans");
    }
}

/// Exports what is left and stops exporting: the last thing a binary does. Blocks. Does nothing when
/// not exporting.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        eprintln!("cannot export the last spans: {error}");
    }
}

/// The process's Prometheus recorder, installed on first use: every service built in this process
/// records into it and renders it on `/metrics`. `*_seconds` histograms get [`LATENCY_BUCKETS`].
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will stay empty");
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// The metrics in the Prometheus text format.
pub fn render_metrics() -> String {
    metrics().render()
}

/// A W3C trace context (`traceparent`): the trace, and the span that is the parent of whatever receives
/// it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    sampled: bool,
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            u8::from(self.sampled)
        )
    }
}

thread_local! {
    static IDS: RandomIdGenerator = RandomIdGenerator::default();
}

impl TraceParent {
    /// Reads a `traceparent` header value: `{version}-{trace-id}-{parent-id}-{flags}` in lowercase hex.
    /// Version `ff`, an all-zero id, or a version-00 value with anything after the flags is refused;
    /// a later version may carry more fields, which are ignored.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2) || version == "ff" || !hex(flags, 2) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_id, 16) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let parent_id = SpanId::from_hex(parent_id).ok()?;
        if trace_id == TraceId::INVALID || parent_id == SpanId::INVALID {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, sampled, with a random id.
    pub fn new_root() -> Self {
        IDS.with(|ids| Self {
            trace_id: ids.new_trace_id(),
            parent_id: ids.new_span_id(),
            sampled: true,
        })
    }

    /// The same trace with a new random parent: what a span continuing this context hands on.
    pub fn child(&self) -> Self {
        Self {
            parent_id: IDS.with(RandomIdGenerator::new_span_id),
            ..*self
        }
    }

    /// The trace id, 32 lowercase hex digits when displayed.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The parent span's id.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    fn span_context(&self) -> SpanContext {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            self.trace_id,
            self.parent_id,
            flags,
            true,
            TraceState::default(),
        )
    }

    fn of(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: context.trace_id(),
            parent_id: context.span_id(),
            sampled: context.is_sampled(),
        })
    }
}

/// Makes `span` continue the trace `parent` (a new trace when `None`), records its `trace_id` field
/// (declare it `trace_id = tracing::field::Empty`), and returns the context `span` hands on: when
/// exporting, `span`'s own; otherwise `parent`'s trace with a new parent id. Call it before `span` is
/// first entered.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) -> TraceParent {
    let handed_on = if exporting() {
        if let Some(parent) = parent {
            let context =
                opentelemetry::Context::new().with_remote_span_context(parent.span_context());
            let _ = span.set_parent(context);
        }
        span_traceparent(span)
    } else {
        None
    };
    let handed_on =
        handed_on.unwrap_or_else(|| parent.map_or_else(TraceParent::new_root, TraceParent::child));
    span.record("trace_id", tracing::field::display(handed_on.trace_id()));
    handed_on
}

/// The trace context of `span` as exported (its trace, with itself as the parent); `None` when spans
/// are not exported or `span` is disabled.
pub fn span_traceparent(span: &tracing::Span) -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    TraceParent::of(span.context().span().span_context())
}

tokio::task_local! {
    static TRACE: TraceParent;
}

/// Runs `future` with `trace` as its trace context: what [`outgoing_traceparent`] continues when spans
/// are not exported. Tasks spawned from `future` do not inherit it.
pub async fn in_trace<F: Future>(trace: TraceParent, future: F) -> F::Output {
    TRACE.scope(trace, future).await
}

/// The trace context of the enclosing [`in_trace`], if any: what a request handler hands on to the work it
/// starts (the task's record and queue message).
pub fn current_trace() -> Option<TraceParent> {
    TRACE.try_with(|trace| *trace).ok()
}

/// The `traceparent` to send on an outgoing request made now: the current span's context when spans are
/// exported (so the callee's spans are its children), else the context of the enclosing
/// [`in_trace`] with a new parent id; `None` outside both.
pub fn outgoing_traceparent() -> Option<TraceParent> {
    span_traceparent(&tracing::Span::current()).or_else(|| TRACE.try_with(TraceParent::child).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips_through_its_header_value() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parsed.sampled());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value}");
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let parsed = TraceParent::parse(value).unwrap();
        assert!(!parsed.sampled());
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_parent() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert_ne!(TraceParent::new_root(), TraceParent::new_root());
    }

    #[tokio::test]
    async fn outgoing_requests_continue_the_enclosing_trace() {
        assert_eq!(outgoing_traceparent(), None);
        let trace = TraceParent::new_root();
        let outgoing = in_trace(trace, async { outgoing_traceparent() })
            .await
            .unwrap();
        assert_eq!(outgoing.trace_id(), trace.trace_id());
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_the_signal_path() {
        let otlp = OtlpSettings {
            endpoint: "http://collector:4318/".into(),
            service_name: "gateway".into(),
        };
        assert_eq!(otlp.traces_url(), "http://collector:4318/v1/traces");
    }
}
