//! `loadgen`: drives a running gateway at a fixed concurrency and prints requests/s and p50/p99
//! latency for `POST /tasks`, then `GET /tasks/{id}` over the tasks it created.
//!
//! Usage: `loadgen --url http://127.0.0.1:8080 --secret S [--concurrency 32] [--seconds 10] [--users 1000]
//! [--bare http://127.0.0.1:18090 --rounds 3]`
//! The gateway must accept HS256 tokens signed with `S` and have a daily limit large enough for the run.
//! With `--bare` (the `bare` binary on the gateway's key prefix), the `GET /tasks/{id}` phase alternates
//! between the gateway and the bare handler for `--rounds` rounds over the same tasks, and the gateway's
//! throughput is printed as a share of the bare handler's, measured in the same run.

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{EncodingKey, Header};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
struct Options {
    url: String,
    secret: String,
    concurrency: usize,
    seconds: u64,
    users: usize,
    bare: Option<String>,
    rounds: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        url: "http://127.0.0.1:8080".into(),
        secret: String::new(),
        concurrency: 32,
        seconds: 10,
        users: 1000,
        bare: None,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => options.url = value,
            "--secret" => options.secret = value,
            "--concurrency" => options.concurrency = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--users" => options.users = value.parse()?,
            "--bare" => options.bare = Some(value),
            "--rounds" => options.rounds = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if options.secret.is_empty() {
        bail!("--secret is required (the gateway's SUPABASE_JWT_SECRET)");
    }
    Ok(options)
}

fn tokens(secret: &str, users: usize) -> anyhow::Result<Vec<String>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    (0..users)
        .map(|n| {
            let claims = serde_json::json!({
                "sub": format!("bench-user-{n}"), "aud": "authenticated", "role": "authenticated",
                "iat": now, "exp": now + 3600,
            });
            Ok(jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )?)
        })
        .collect()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Outcome {
    latencies: Histogram<u64>,
    errors: u64,
    ids: Vec<(usize, String)>,
}

/// Runs `concurrency` loops for `seconds`, each sending the request `make(worker, n)` builds.
async fn phase<F>(
    client: &HttpClient,
    options: &Options,
    make: F,
) -> anyhow::Result<(Outcome, Duration)>
where
    F: Fn(usize, u64) -> (usize, Request<Full<Bytes>>) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let (client, make) = (client.clone(), make.clone());
        workers.push(tokio::spawn(async move {
            let mut outcome = Outcome {
                latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                errors: 0,
                ids: Vec::new(),
            };
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (user, request) = make(worker, n);
                n += 1;
                let sent = Instant::now();
                let response = client.request(request).await;
                let ok = match response {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.into_body().collect().await.map(|b| b.to_bytes());
                        match body {
                            Ok(body) if status == StatusCode::ACCEPTED => {
                                if let Ok(value) =
                                    serde_json::from_slice::<serde_json::Value>(&body)
                                    && let Some(id) = value["correlation_id"].as_str()
                                {
                                    outcome.ids.push((user, id.to_owned()));
                                }
                                true
                            }
                            Ok(_) => status == StatusCode::OK,
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                };
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                outcome.latencies.saturating_record(micros.max(1));
                if !ok {
                    outcome.errors += 1;
                }
            }
            outcome
        }));
    }
    let mut total = Outcome {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: 0,
        ids: Vec::new(),
    };
    for worker in workers {
        let outcome = worker.await?;
        total.latencies.add(&outcome.latencies)?;
        total.errors += outcome.errors;
        total.ids.extend(outcome.ids);
    }
    Ok((total, started.elapsed()))
}

/// Requests per second of a phase.
#[allow(clippy::cast_precision_loss)]
fn rate(outcome: &Outcome, elapsed: Duration) -> f64 {
    outcome.latencies.len() as f64 / elapsed.as_secs_f64()
}

fn report(name: &str, outcome: &Outcome, elapsed: Duration) {
    let count = outcome.latencies.len();
    #[allow(clippy::cast_precision_loss)]
    let rps = count as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<18} {count:>8} requests  {rps:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {}",
        outcome.latencies.value_at_quantile(0.50) as f64 / 1000.0,
        outcome.latencies.value_at_quantile(0.99) as f64 / 1000.0,
        outcome.latencies.max() as f64 / 1000.0,
        outcome.errors
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let tokens = Arc::new(tokens(&options.secret, options.users)?);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.concurrency)
        .build(connector);
    println!(
        "loadgen: {} at concurrency {} for {} s per phase, {} users",
        options.url, options.concurrency, options.seconds, options.users
    );

    let (url, t) = (options.url.clone(), tokens.clone());
    let concurrency = options.concurrency;
    let (created, elapsed) = phase(&client, &options, move |worker, n| {
        let user = (worker + concurrency * usize::try_from(n).unwrap_or(0)) % t.len();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{url}/tasks"))
            .header("authorization", format!("Bearer {}", t[user]))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"mandate":"benchmark mandate","max_ticks":1}"#,
            )))
            .expect("a valid request");
        (user, request)
    })
    .await?;
    report("POST /tasks", &created, elapsed);
    if created.ids.is_empty() {
        bail!("no task was created; is the gateway up and the secret right?");
    }

    let ids = Arc::new(created.ids);
    let read = |url: String| {
        let (t, ids) = (tokens.clone(), ids.clone());
        move |worker: usize, n: u64| {
            let index = (worker * 7919 + usize::try_from(n).unwrap_or(0)) % ids.len();
            let (user, id) = &ids[index];
            let request = Request::builder()
                .method(Method::GET)
                .uri(format!("{url}/tasks/{id}"))
                .header("authorization", format!("Bearer {}", t[*user]))
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            (*user, request)
        }
    };
    let Some(bare) = options.bare.clone() else {
        let (outcome, elapsed) = phase(&client, &options, read(options.url.clone())).await?;
        report("GET /tasks/{id}", &outcome, elapsed);
        return Ok(());
    };
    let (mut gateway_rate, mut bare_rate) = (0.0, 0.0);
    for round in 1..=options.rounds {
        let (outcome, elapsed) = phase(&client, &options, read(options.url.clone())).await?;
        report(&format!("gateway GET #{round}"), &outcome, elapsed);
        gateway_rate += rate(&outcome, elapsed);
        let (outcome, elapsed) = phase(&client, &options, read(bare.clone())).await?;
        report(&format!("bare GET #{round}"), &outcome, elapsed);
        bare_rate += rate(&outcome, elapsed);
    }
    println!(
        "gateway GET /tasks/{{id}} = {:.0}% of the bare handler's throughput (same run, {} rounds)",
        100.0 * gateway_rate / bare_rate,
        options.rounds
    );
    Ok(())
}
