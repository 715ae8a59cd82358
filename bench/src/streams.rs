//! `streams`: how many event streams one gateway holds, what they cost in memory, and how fast an event
//! reaches every stream of its task while events flow.
//!
//! Against a running gateway (`bench/streams.sh` starts one): creates `--tasks` tasks, takes them as an
//! agent would, opens `--streams` event streams spread evenly over them and waits for every snapshot,
//! reads the gateway's resident memory, then appends `--rate` tick events per second for `--seconds`
//! (round-robin over the tasks, through the same Lua transition an agent uses, each carrying its send time)
//! and measures, on every stream, the delay from the append to the frame's arrival. Prints the gateway's
//! RSS idle and under load, the delivery latency percentiles, and how many frames arrived of those due.

use anyhow::{Context, bail};
use clap::Parser;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{EncodingKey, Header};
use shared::Keys;
use shared::Status;
use shared::api::TickEvent;
use shared::events::{EventKind, NewEvent};
use shared::store::{Transition, transition};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Parser)]
struct Options {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// The gateway's SUPABASE_JWT_SECRET.
    #[arg(long)]
    secret: String,
    /// The gateway's REDIS_KEY_PREFIX.
    #[arg(long)]
    prefix: String,
    /// The gateway's process id, to read its resident memory.
    #[arg(long)]
    pid: u32,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis: String,
    /// Tasks to follow.
    #[arg(long, default_value_t = 2_000)]
    tasks: usize,
    /// Streams to open, spread evenly over the tasks.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Tick events appended per second while measuring.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// How long to append events.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn now_micros() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(u64::MAX)
}

fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({"sub": sub, "aud": "authenticated", "role": "authenticated",
                                    "iat": now, "exp": now + 7200});
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Resident memory of process `pid`, in MB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// Creates one task per user (so no per-user cap applies) and takes it as an agent would.
async fn create_tasks(
    options: &Options,
    redis: &redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<(String, String)>> {
    let http = reqwest::Client::new();
    let keys = Keys::new(options.prefix.clone());
    let created = futures::stream::iter(0..options.tasks)
        .map(|n| {
            let (http, keys, redis) = (http.clone(), keys.clone(), redis.clone());
            async move {
                let token = token(&options.secret, &format!("stream-user-{n}"))?;
                let response = http
                    .post(format!("{}/tasks", options.url))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"mandate": "streams benchmark", "max_ticks": 1000}))
                    .send()
                    .await?;
                if response.status() != StatusCode::ACCEPTED {
                    bail!("POST /tasks answered {}", response.status());
                }
                let body: serde_json::Value = response.json().await?;
                let id = body["correlation_id"].as_str().context("no id")?.to_owned();
                transition(
                    &mut redis.clone(),
                    &keys,
                    id.parse()?,
                    &Transition::to(Status::Accepted),
                    chrono::Utc::now(),
                    3600,
                )
                .await?;
                Ok::<_, anyhow::Error>((id, token))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    created.into_iter().collect()
}

/// Opens one stream and records, for each tick frame, the delay since its send time (in `param`).
async fn follow(
    client: HttpClient,
    url: String,
    token: String,
    opened: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    latencies: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<()> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())?;
    let response = client.request(request).await?;
    if response.status() != StatusCode::OK {
        bail!("GET events answered {}", response.status());
    }
    let mut frames = response.into_body().into_data_stream().eventsource();
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        match frame.event.as_str() {
            "snapshot" => {
                opened.fetch_add(1, Ordering::Relaxed);
            }
            "tick" => {
                let event: TickEvent = serde_json::from_str(&frame.data)?;
                let sent: u64 = event.param.parse()?;
                local.saturating_record(now_micros().saturating_sub(sent).max(1));
                if received.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
                    latencies
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .add(&local)?;
                    local.reset();
                }
            }
            _ => {}
        }
    }
    latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .add(&local)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let redis = redis::Client::open(options.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    println!(
        "streams: {} streams over {} tasks, {} events/s for {} s, gateway pid {}",
        options.streams, options.tasks, options.rate, options.seconds, options.pid
    );
    let rss_start = rss_mb(options.pid)?;
    let tasks = create_tasks(&options, &redis).await?;
    println!("created and took {} tasks", tasks.len());

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let opened = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?));
    let mut followers = tokio::task::JoinSet::new();
    let open_started = Instant::now();
    for n in 0..options.streams {
        let (id, token) = &tasks[n % tasks.len()];
        followers.spawn(follow(
            client.clone(),
            format!("{}/tasks/{id}/events", options.url),
            token.clone(),
            Arc::clone(&opened),
            Arc::clone(&received),
            Arc::clone(&latencies),
        ));
        if n % 500 == 499 {
            // Let the gateway accept in batches rather than all 10,000 connections in one burst.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let wanted = u64::try_from(options.streams)?;
    while opened.load(Ordering::Relaxed) < wanted {
        if open_started.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {wanted} streams opened in 120 s",
                opened.load(Ordering::Relaxed)
            );
        }
        if let Some(Ok(Err(error))) = followers.try_join_next() {
            bail!("a stream failed: {error:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_mb(options.pid)?;
    println!(
        "{wanted} streams open in {:.1} s; gateway RSS {:.0} MB before, {:.0} MB with the streams open ({:.1} KB per stream)",
        open_started.elapsed().as_secs_f64(),
        rss_start,
        rss_idle,
        (rss_idle - rss_start) * 1024.0 / options.streams as f64
    );

    let keys = Keys::new(options.prefix.clone());
    let period = Duration::from_secs_f64(1.0 / options.rate as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = options.rate * options.seconds;
    let mut writes = tokio::task::JoinSet::new();
    let load_started = Instant::now();
    let mut rss_peak = rss_idle;
    for n in 0..total {
        ticker.tick().await;
        let index = usize::try_from(n)? % tasks.len();
        let id: uuid::Uuid = tasks[index].0.parse()?;
        let tick = u32::try_from(n / tasks.len() as u64 + 1)?;
        let event = TickEvent {
            tick,
            action: "THINK".into(),
            param: now_micros().to_string(),
            ..TickEvent::default()
        };
        let change = Transition::to(Status::InProgress)
            .with(shared::task::field::TICK, tick.to_string())
            .event(NewEvent::new(EventKind::Tick, &event));
        let (mut conn, keys) = (redis.clone(), keys.clone());
        writes.spawn(async move {
            transition(&mut conn, &keys, id, &change, chrono::Utc::now(), 3600).await
        });
        while let Some(done) = writes.try_join_next() {
            done??;
        }
        if n.is_multiple_of(options.rate) {
            rss_peak = rss_peak.max(rss_mb(options.pid)?);
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    let load_took = load_started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rss_peak = rss_peak.max(rss_mb(options.pid)?);

    let per_task = options.streams / tasks.len();
    let due = total * u64::try_from(per_task)?;
    let got = received.load(Ordering::Relaxed);
    let histogram = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "appended {total} events in {:.1} s ({:.0}/s); delivered {got} of {due} frames due",
        load_took.as_secs_f64(),
        total as f64 / load_took.as_secs_f64()
    );
    println!(
        "append-to-frame latency: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
    println!("gateway RSS peak {rss_peak:.0} MB");
    Ok(())
}
