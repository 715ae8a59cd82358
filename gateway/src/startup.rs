//! Building the gateway: connect to Redis and RabbitMQ, assemble the router, serve until shutdown.

use crate::auth::Authenticator;
use crate::enqueue::Enqueuer;
use crate::error::ApiError;
use crate::follow::Hub;
use crate::publisher::{ConnectError, Publisher};
use crate::routes;
use crate::settings::Settings;
use crate::state::{AppState, Inner};
use crate::store::{StoreError, TaskStore};
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName as Name;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::routing::{get, post};
use axum::{BoxError, Router};
use secrecy::ExposeSecret;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

/// The request id header, set on every request and response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long in-flight requests get to finish after the shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Redis did not answer within the start-up deadline.
    #[error("cannot reach Redis within {deadline:?}: {last_error}")]
    Redis {
        /// The start-up deadline that passed.
        deadline: Duration,
        /// The last failure seen.
        last_error: String,
    },
    /// The Redis settings are unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis URL is unusable.
    #[error("invalid REDIS_URL: {0}")]
    RedisUrl(String),
    /// The Redis behind the URL is of a kind the gateway cannot use.
    #[error(transparent)]
    RedisMode(#[from] shared::deployment::RedisModeError),
    /// RabbitMQ did not answer within the start-up deadline.
    #[error(transparent)]
    Broker(#[from] ConnectError),
    /// The port could not be bound.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A gateway bound to its port, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    shutdown: CancellationToken,
    draining: CancellationToken,
    enqueuer: Enqueuer,
}

impl Application {
    /// Connects to Redis and RabbitMQ (waiting up to the start-up deadline), makes sure the topology exists
    /// and binds the port.
    ///
    /// # Errors
    /// [`StartupError`] with one clear reason.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let shutdown = CancellationToken::new();
        let store = TaskStore::new(
            settings.common.redis_url.expose_secret(),
            &settings.common.tls,
            settings.common.keys(),
            settings.common.task_ttl_seconds,
            crate::connections::CONNECTIONS,
        )?;
        wait_for_redis(&store, settings.startup_deadline).await?;
        let publisher = Publisher::start(
            settings.common.rabbitmq_url.clone(),
            settings.common.tls.clone(),
            settings.common.topology(),
            settings.publish_confirm_timeout,
            settings.startup_deadline,
            shutdown.clone(),
        )
        .await?;
        let address = format!("{}:{}", settings.host, settings.port);
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| StartupError::Bind {
                address: address.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { address, source })?
            .port();
        let enqueuer = Enqueuer::new(publisher.clone(), store.clone());
        let hub = Hub::new();
        let pubsub = settings
            .common
            .tls
            .redis_client(settings.common.redis_url.expose_secret())
            .map_err(|e| StartupError::RedisUrl(e.to_string()))?;
        tokio::spawn(hub.clone().run(
            pubsub,
            settings.common.keys().events_channel(),
            shutdown.clone(),
        ));
        let draining = CancellationToken::new();
        let state = AppState::new(Inner {
            auth: Authenticator::new(&settings.auth),
            settings,
            store,
            publisher,
            enqueuer: enqueuer.clone(),
            hub,
            draining: draining.clone(),
            figures: Default::default(),
            openapi: Default::default(),
        });
        Ok(Self {
            listener,
            router: router(state),
            port,
            shutdown,
            draining,
            enqueuer,
        })
    }

    /// The bound port (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `signal` completes, then lets in-flight requests finish (bounded), waits for the
    /// publishes and the "failed" writes still running (bounded) and closes the broker connection.
    ///
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()> + Send + 'static) {
        tracing::info!(port = self.port, "gateway listening");
        let shutdown = self.shutdown.clone();
        // Event streams end as soon as draining starts, so their connections close and clients reconnect
        // to another gateway with Last-Event-ID.
        let draining = self.draining.clone();
        let serve =
            crate::server::serve(self.listener, self.router, draining.clone(), DRAIN_TIMEOUT);
        tokio::pin!(serve);
        tokio::select! {
            () = &mut serve => {}
            () = signal => {
                draining.cancel();
                serve.await;
            }
        }
        self.enqueuer.finish(DRAIN_TIMEOUT).await;
        shutdown.cancel();
        tracing::info!("gateway stopped");
    }
}

async fn wait_for_redis(store: &TaskStore, deadline: Duration) -> Result<(), StartupError> {
    let started = tokio::time::Instant::now();
    loop {
        let error = match store.check().await {
            Ok(()) => {
                store.refuse_cluster().await?;
                return Ok(());
            }
            Err(error) => error,
        };
        if started.elapsed() >= deadline {
            return Err(StartupError::Redis {
                deadline,
                last_error: error.to_string(),
            });
        }
        tracing::warn!(%error, "Redis not reachable yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The full router with its middleware: request ids, each request's span, trace context and metrics,
/// CORS, body limit, request timeout.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings.request_timeout;
    // No origins configured, no CORS layer: browsers refuse cross-origin calls either way, and the layer
    // costs every request (measured with callgrind: 3% of the instructions of a `GET /tasks/{id}`).
    let cors =
        (!state.settings.cors_origins.is_empty()).then(|| cors(&state.settings.cors_origins));
    let body_limit = state.settings.body_limit();
    Router::new()
        .route(
            "/tasks",
            post(routes::tasks::create_task).get(routes::tasks::list_tasks),
        )
        .route(
            "/tasks/{id}",
            get(routes::tasks::get_task).delete(routes::steer::delete_task),
        )
        .route("/tasks/{id}/cancel", post(routes::steer::cancel_task))
        .route("/tasks/{id}/events", get(routes::events::task_events))
        .route("/queue", get(routes::queue::queue))
        .route("/agents/count", get(routes::agents::agent_count))
        .route("/", get(crate::dashboard::index))
        .route("/assets/{version}/{*path}", get(crate::dashboard::asset))
        .route("/dashboard/config.json", get(crate::dashboard::config))
        .route("/health", get(routes::health::health))
        .route("/openapi.json", get(routes::openapi::openapi))
        .route("/metrics", get(crate::metrics::render))
        .fallback(|| async { ApiError::NoRoute(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { ApiError::NoRoute(StatusCode::METHOD_NOT_ALLOWED) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            ServiceBuilder::new()
                .map_request(drop_unusable_request_id)
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(axum::middleware::from_fn(crate::metrics::observe))
                .option_layer(cors)
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    if error.is::<tower::timeout::error::Elapsed>() {
                        ApiError::Unavailable("the request timed out".into())
                    } else {
                        ApiError::Internal(error.to_string())
                    }
                }))
                .timeout(timeout),
        )
        .with_state(state)
}

/// The longest `x-request-id` a client may choose: ids are echoed, logged and copied into the task's
/// queue message, so a longer one is replaced with a fresh UUID.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `x-request-id` is kept: 1 to [`MAX_REQUEST_ID_LEN`] bytes of letters, digits and
/// `-_.:` (what UUIDs, ULIDs and load balancers' trace ids use; nothing that could split a log line).
pub fn usable_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Removes an unusable `x-request-id` so that the request-id layer gives the request a fresh one.
fn drop_unusable_request_id<B>(mut request: Request<B>) -> Request<B> {
    if request
        .headers()
        .get(REQUEST_ID)
        .is_some_and(|id| !usable_request_id(id.as_bytes()))
    {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            Name::from_static("idempotency-key"),
            Name::from_static("last-event-id"),
        ])
        .expose_headers([
            REQUEST_ID,
            header::LOCATION,
            Name::from_static("idempotent-replayed"),
        ])
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_only_when_short_and_printable() {
        assert!(usable_request_id(b"req-123"));
        assert!(usable_request_id(
            b"1-67891233-abcdef012345678912345678:root.span_9"
        ));
        assert!(usable_request_id("a".repeat(MAX_REQUEST_ID_LEN).as_bytes()));
        assert!(!usable_request_id(b""));
        assert!(!usable_request_id(
            "a".repeat(MAX_REQUEST_ID_LEN + 1).as_bytes()
        ));
        assert!(!usable_request_id(b"two words"));
        assert!(!usable_request_id(b"line\nbreak"));
        assert!(!usable_request_id("caf\u{e9}".as_bytes()));
    }
}
