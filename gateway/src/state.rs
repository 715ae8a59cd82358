//! What every handler shares.

use crate::auth::Authenticator;
use crate::enqueue::Enqueuer;
use crate::follow::Hub;
use crate::publisher::Publisher;
use crate::settings::Settings;
use crate::store::TaskStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared, read-only state behind an `Arc`; cloned per request.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// Settings the gateway started with.
    pub settings: Settings,
    /// Verifies bearer tokens.
    pub auth: Authenticator,
    /// Task records, quota, worker counts.
    pub store: TaskStore,
    /// The confirmed publisher.
    pub publisher: Publisher,
    /// Publishes recorded tasks, detached from their requests, and fails those it cannot publish.
    pub enqueuer: Enqueuer,
    /// Hands appended task events to the streams following them.
    pub hub: Hub,
    /// Fired when the gateway starts shutting down: event streams end so connections can drain.
    pub draining: CancellationToken,
    /// The fleet's figures of `GET /queue`, shared for a second.
    pub figures: crate::routes::queue::FiguresCache,
    /// The body of `GET /openapi.json`, built on its first request.
    pub openapi: std::sync::OnceLock<axum::body::Bytes>,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}
