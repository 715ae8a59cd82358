//! `GET /health` (the last figures, the time of the last successful put and whether puts are failing, as
//! JSON; always HTTP 200, with `status` `"degraded"` when reads or puts fail) and `GET /metrics` (the same
//! in Prometheus text format).

use crate::state::SharedState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

/// The sidecar's router.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(state): State<SharedState>) -> impl IntoResponse {
    let snapshot = state.snapshot();
    let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
    if let Some(object) = body.as_object_mut() {
        object.insert("status".into(), snapshot.status().into());
        object.insert("publishing".into(), snapshot.publishing().into());
    }
    Json(body)
}

async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            shared::telemetry::METRICS_CONTENT_TYPE,
        )],
        state.snapshot().to_prometheus(),
    )
}
