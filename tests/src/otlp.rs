//! An OTLP/HTTP trace receiver on loopback that keeps the spans it is sent (protobuf, `POST /v1/traces`).
//! It stands in for an OpenTelemetry collector, which none of the registries here ships; the spans are
//! decoded with the protocol's own generated types (`opentelemetry-proto`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// One span as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Its id, 16 lowercase hex digits.
    pub span_id: String,
    /// Its parent's id; empty for a root span.
    pub parent_span_id: String,
}

/// The receiver: where to send spans, and what arrived.
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it (`/v1/traces` is added by exporters).
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

async fn receive(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                },
            )
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    spans.lock().expect("not poisoned").extend(received);
    StatusCode::OK
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&spans));
        let address = crate::serve(router, 0).await?;
        Ok(Self {
            endpoint: format!("http://{address}"),
            spans,
        })
    }

    /// Every span received so far.
    #[must_use]
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("not poisoned").clone()
    }
}
