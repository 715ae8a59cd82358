//! The HTTP/1.1 accept loop.
//!
//! `axum::serve` speaks HTTP/1 and HTTP/2 through hyper-util's auto builder, which keeps a preface
//! buffer and per-connection state for both protocols. Clients reach the gateway over HTTP/1.1 (the load
//! balancer's target group speaks HTTP/1.1 and so do the dashboard, the CLI and `curl`), and one gateway
//! holds thousands of event streams open at once, so this loop serves HTTP/1.1 only with a bounded read
//! buffer. Measured with `bench/streams.sh` (10,000 streams): resident memory per open stream fell from
//! about 29.6 KB to 22.8 KB, and 10,000 streams fit in 252 MB.

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The largest buffer hyper reads a request head into. Its minimum, and far above any request this API
/// accepts (a Supabase JWT is about 1 KB); bodies stream through it in chunks, so it does not cap them.
const READ_BUFFER: usize = 8192;

/// How long a connection may sit without sending a complete request head, idle keep-alive included.
/// Longer than the load balancer's 60 s idle timeout, so the balancer always closes first and never
/// forwards a request onto a connection the gateway is closing.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(75);

/// The most connections served at once. Past it the loop stops accepting, and new connections wait in
/// the kernel's backlog (the load balancer retries elsewhere) rather than taking descriptors and memory
/// from the ones being served. Twice the 10,000 open event streams one gateway is measured to hold.
pub const MAX_CONNECTIONS: usize = 20_000;

/// How long to wait before accepting again after `accept` fails (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `draining` is cancelled, then closes idle connections, lets
/// in-flight requests finish and returns once every connection has closed or `drain_timeout` passed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    draining: CancellationToken,
    drain_timeout: Duration,
) {
    serve_with(listener, router, draining, drain_timeout, Limits::default()).await;
}

/// What one connection, and all of them together, may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// How long a request head may take to arrive ([`HEAD_TIMEOUT`]).
    pub head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            head_timeout: HEAD_TIMEOUT,
        }
    }
}

/// [`serve`] with the given [`Limits`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    draining: CancellationToken,
    drain_timeout: Duration,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(READ_BUFFER);
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            () = draining.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = draining.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service =
            TowerToHyperService::new(router.clone().map_request(
                |request: hyper::Request<Incoming>| request.map(axum::body::Body::new),
            ));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!("in-flight requests did not finish within {drain_timeout:?}; stopping");
        }
    }
}
