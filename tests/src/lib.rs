//! Fixture servers for Euglena-rs tests, on loopback: an OpenAI-compatible chat-completions server that
//! replays scripted answers ([`model`]), and a web-search API server with canned results ([`search`]).
//!
//! They stand in for the only two things no test here can run for real: a language model and a web
//! search engine. Everything else in the tests is real (Redis, RabbitMQ, Chromium, the AWS emulator).

pub mod broker;
pub mod chromium;
pub mod cleanup;
pub mod model;
pub mod otlp;
pub mod privilege;
pub mod proxy;
pub mod scrape;
pub mod search;
pub mod sse;
pub mod supabase;
pub mod tls;

use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Serves `router` on 127.0.0.1 (port 0 unless `port` is given) in a background task.
///
/// # Errors
/// When the port cannot be bound.
pub async fn serve(router: axum::Router, port: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "fixture server stopped");
        }
    });
    Ok(address)
}
