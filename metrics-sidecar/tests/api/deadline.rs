//! A CloudWatch endpoint that accepts connections but never answers must not freeze the collector loop:
//! each put is abandoned at its deadline, logged once with the deadline, shown on `/health`, and the loop
//! publishes again as soon as the endpoint answers.
//!
//! The stalling endpoint is a loopback TCP proxy in front of moto: until it is switched, it accepts every
//! connection and reads what comes without ever writing a byte; once switched, new connections are piped
//! to moto. The sidecar's warnings are captured by a subscriber installed for this test's thread (the
//! test runtime runs the sidecar on that same thread).

use crate::helpers::{self, CloudWatch, Options, spawn_app};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The put deadline the sidecar under test gets (its interval is 1 s).
const DEADLINE: Duration = Duration::from_millis(300);

/// How late past the deadline an abandoned connection may still be open (a loaded test machine).
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_stalled_put_is_abandoned_at_its_deadline_and_the_loop_publishes_again() {
    let warnings = Warnings::default();
    let _capture = tracing::subscriber::set_default(warnings.clone());
    // Fail early and clearly when moto is not there: the second half of the test puts into it.
    let _ = helpers::aws_config(&helpers::moto_endpoint(), true).await;
    let proxy = StallingProxy::start().await;
    let app = spawn_app(Options {
        cloudwatch: CloudWatch::At(proxy.url()),
        management: false,
        put_deadline: Some(DEADLINE),
        ..Options::default()
    })
    .await;

    // Without a deadline the first put would hang forever: no put would ever fail and the reads would stop.
    let health = app
        .health_until(Duration::from_secs(15), |h| {
            h["put_timeouts"].as_u64() >= Some(3) && h["reads"].as_u64() >= Some(3)
        })
        .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["publishing"], "failing", "{health}");
    assert_eq!(health["last_read_ok"], true, "reads go on: {health}");
    assert_eq!(health["puts"], 0, "{health}");
    assert!(health["last_put_at"].is_null(), "{health}");
    assert!(
        health["consecutive_put_errors"].as_u64() >= Some(3),
        "{health}"
    );
    assert!(
        text(&health["last_put_error"]).contains("did not finish within 300ms"),
        "{health}"
    );

    // Every tick opened a fresh connection, and dropped each abandoned one by the deadline.
    assert!(proxy.stalled() >= 3, "{} stalled", proxy.stalled());
    let held = proxy.held();
    assert!(
        held.len() >= 2,
        "abandoned connections are closed: {held:?}"
    );
    assert!(
        held.iter().all(|held| *held <= DEADLINE + SLACK),
        "each stalled connection is dropped at the deadline: {held:?}"
    );

    // One warning per abandoned put, naming the deadline, and no credentials in any warning.
    let abandoned = warnings.matching("abandoned at its deadline");
    assert!(abandoned.len() >= 3, "{abandoned:?}");
    for warning in &abandoned {
        assert_eq!(
            warning.get("deadline_ms").map(String::as_str),
            Some("300"),
            "{warning:?}"
        );
        assert!(
            warning.get("error").is_some_and(|e| e.contains("300ms")),
            "{warning:?}"
        );
    }
    assert!(
        warnings
            .all()
            .iter()
            .all(|w| !w.values().any(|v| v.contains("testing"))),
        "a warning carries the secret key: {:?}",
        warnings.all()
    );

    // The endpoint answers again: the next tick publishes a fresh value and health recovers.
    proxy.forward_to(moto_address().await);
    let health = app
        .health_until(Duration::from_secs(15), |h| {
            h["puts"].as_u64() >= Some(1) && h["publishing"] == "ok"
        })
        .await;
    assert_eq!(health["status"], "ok", "{health}");
    assert!(health["last_put_at"].is_string(), "{health}");
    assert!(health["last_put_error"].is_null(), "{health}");
    assert_eq!(health["consecutive_put_errors"], 0, "{health}");

    // Exactly one warning per failed put.
    let (put_errors, logged) = loop {
        let before = warnings.matching("CloudWatch put").len();
        let put_errors = app.health().await["put_errors"].as_u64().unwrap_or(0);
        let after = warnings.matching("CloudWatch put").len();
        if before == after {
            break (put_errors, after);
        }
    };
    assert_eq!(
        u64::try_from(logged).unwrap(),
        put_errors,
        "{:?}",
        warnings.all()
    );
    app.stop().await;
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// moto's socket address.
async fn moto_address() -> SocketAddr {
    let url = reqwest::Url::parse(&helpers::moto_endpoint()).expect("the moto endpoint is a URL");
    let host = url.host_str().expect("the moto endpoint has a host");
    let port = url
        .port_or_known_default()
        .expect("the moto endpoint has a port");
    tokio::net::lookup_host((host, port))
        .await
        .expect("the moto host resolves")
        .next()
        .expect("the moto host has an address")
}

/// A loopback endpoint that accepts every connection and never answers, until
/// [`StallingProxy::forward_to`] makes it pipe new connections to a real endpoint.
#[derive(Debug)]
struct StallingProxy {
    address: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    stalled: Arc<AtomicU64>,
    held: Arc<Mutex<Vec<Duration>>>,
    stop: CancellationToken,
}

impl StallingProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            address: listener.local_addr().unwrap(),
            target: Arc::default(),
            stalled: Arc::default(),
            held: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (target, stalled, held, stop) = (
            proxy.target.clone(),
            proxy.stalled.clone(),
            proxy.held.clone(),
            proxy.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => return,
                    },
                };
                let forward = *target.lock().unwrap();
                let stop = stop.clone();
                match forward {
                    Some(target) => {
                        tokio::spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = pipe(inbound, target) => {}
                            }
                        });
                    }
                    None => {
                        stalled.fetch_add(1, Ordering::SeqCst);
                        let held = held.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                held_for = stall(inbound) => held.lock().unwrap().push(held_for),
                            }
                        });
                    }
                }
            }
        });
        proxy
    }

    /// The endpoint URL to give the SDK.
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Pipes every later connection to `target`; connections already stalled stay stalled.
    fn forward_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
    }

    /// Connections accepted and never answered.
    fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::SeqCst)
    }

    /// How long each stalled connection the client closed was open.
    fn held(&self) -> Vec<Duration> {
        self.held.lock().unwrap().clone()
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads and discards whatever the client sends, never writing a byte, until the client closes the
/// connection; returns how long it was open.
async fn stall(mut inbound: TcpStream) -> Duration {
    let accepted = Instant::now();
    let mut buffer = vec![0; 16 * 1024];
    while let Ok(read) = inbound.read(&mut buffer).await {
        if read == 0 {
            break;
        }
    }
    accepted.elapsed()
}

/// Copies bytes both ways between `inbound` and a new connection to `target`.
async fn pipe(mut inbound: TcpStream, target: SocketAddr) {
    if let Ok(mut outbound) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

/// One captured event: its fields (the message under `message`), as text.
type Fields = BTreeMap<&'static str, String>;

/// Records the warnings and errors emitted on the test's thread.
#[derive(Debug, Clone, Default)]
struct Warnings(Arc<Mutex<Vec<Fields>>>);

impl Warnings {
    fn all(&self) -> Vec<Fields> {
        self.0.lock().unwrap().clone()
    }

    /// The events whose message contains `needle`.
    fn matching(&self, needle: &str) -> Vec<Fields> {
        self.all()
            .into_iter()
            .filter(|fields| fields.get("message").is_some_and(|m| m.contains(needle)))
            .collect()
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.is_event() && *metadata.level() <= tracing::Level::WARN
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = FieldText::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[derive(Debug, Default)]
struct FieldText(Fields);

impl tracing::field::Visit for FieldText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}
