//! `bare`: the floor the gateway's `GET /tasks/{id}` is measured against. A bare axum handler that does
//! the same Redis work (one `HGETALL` of the task's record on one multiplexed connection) and answers the
//! hash as JSON, with no authentication, tracing, metrics, request id, CORS, timeout or body-limit layer,
//! and the same allocator as the gateway. `bench/layers.sh` drives both in one run and prints the ratio.
//!
//! Usage: `bare --port 18090 --prefix <REDIS_KEY_PREFIX>` (Redis at `REDIS_URL`, default 127.0.0.1:6379).

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bare handler's options.
#[derive(Debug, Parser)]
struct Options {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 18090)]
    port: u16,
    /// The gateway's `REDIS_KEY_PREFIX`, so the same records are read.
    #[arg(long)]
    prefix: String,
    /// Redis.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[derive(Clone)]
struct Bare {
    redis: MultiplexedConnection,
    keys: shared::Keys,
}

async fn task(State(bare): State<Bare>, Path(id): Path<Uuid>) -> Response {
    let mut redis = bare.redis.clone();
    let record: Result<HashMap<String, String>, _> = redis::cmd("HGETALL")
        .arg(bare.keys.task(id))
        .query_async(&mut redis)
        .await;
    match record {
        Ok(record) if record.is_empty() => StatusCode::NOT_FOUND.into_response(),
        Ok(record) => Json(record).into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let redis = redis::Client::open(options.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("cannot reach Redis")?;
    let router = axum::Router::new()
        .route("/tasks/{id}", get(task))
        .with_state(Bare {
            redis,
            keys: shared::Keys::new(options.prefix),
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await?;
    println!("bare: listening on 127.0.0.1:{}", options.port);
    axum::serve(listener, router).await?;
    Ok(())
}
