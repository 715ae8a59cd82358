//! Redis or RabbitMQ going away, without disturbing other tests: the gateway reaches them through a
//! TCP proxy the test can cut and restore.

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A loopback TCP proxy to `target` that can be cut (closing every connection) and restored on the
/// same port.
struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    running: CancellationToken,
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let proxy = Self {
            address,
            target: target.parse().unwrap(),
            running: CancellationToken::new(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, running) = (self.target, self.running.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = running.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
                };
                let running = running.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = running.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    fn cut(&mut self) {
        self.running.cancel();
    }

    async fn restore(&mut self) {
        self.running = CancellationToken::new();
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }
}

async fn post(app: &TestApp, sub: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = app
        .post_task(
            Some(&app.token(sub)),
            &json!({"mandate": "m", "max_ticks": 5}),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap(), started.elapsed())
}

#[tokio::test]
async fn a_publish_to_a_missing_queue_is_503_the_task_failed_and_the_quota_refunded() {
    let app = spawn_app().await;
    app.delete_queue().await;

    let (status, body, _) = post(&app, "alice").await;

    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    let tasks: Vec<String> = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":task:"))
        .collect();
    assert_eq!(tasks.len(), 1);
    let id = tasks[0].rsplit(':').next().unwrap();
    let stored = app.stored(id).await;
    assert_eq!(stored["status"], "failed");
    assert!(
        stored["error"].contains("could not be queued"),
        "{}",
        stored["error"]
    );
    assert_eq!(stored["refunded"], "1");
    assert_eq!(
        app.quota_used("alice").await,
        0,
        "the quota is back where it was"
    );
}

#[tokio::test]
async fn while_the_broker_is_unreachable_posts_fail_fast_and_recover_when_it_returns() {
    let mut proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.address);
    let app = spawn_app_with(&[("RABBITMQ_URL", &url)]).await;
    assert_eq!(post(&app, "alice").await.0, 202);

    proxy.cut();
    let degraded = eventually(Duration::from_secs(5), || async {
        let health: Value = app.get("/health").await.json().await.unwrap();
        (health["components"]["rabbitmq"] == false).then_some(health)
    })
    .await
    .expect("health notices the broker is gone");
    assert_eq!(degraded["status"], "degraded");
    let (status, body, took) = post(&app, "alice").await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    assert_eq!(
        app.quota_used("alice").await,
        5,
        "the failed task's ticks were refunded"
    );
    let failed = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":task:"))
        .count();
    assert_eq!(failed, 2);

    proxy.restore().await;
    let recovered = eventually(Duration::from_secs(15), || async {
        let (status, _, _) = post(&app, "alice").await;
        (status == 202).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the gateway reconnects by itself");
}

#[tokio::test]
async fn while_redis_is_unreachable_the_gateway_answers_fast_and_recovers_when_it_returns() {
    let mut proxy = Proxy::start("127.0.0.1:6379").await;
    let url = format!("redis://{}/0", proxy.address);
    let app = spawn_app_with(&[("REDIS_URL", &url)]).await;
    let token = app.token("alice");
    assert_eq!(post(&app, "alice").await.0, 202);

    proxy.cut();
    let (status, body, took) = post(&app, "alice").await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let started = Instant::now();
    let get = app
        .get_task(&token, &uuid::Uuid::new_v4().to_string())
        .await;
    assert_eq!(get.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    let count: Value = app.get("/agents/count").await.json().await.unwrap();
    assert_eq!(count["count"], 0);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["components"]["redis"], false);
    assert!(
        app.next_message().await.is_some(),
        "only the first task was queued"
    );
    assert!(app.next_message().await.is_none());

    proxy.restore().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        (post(&app, "alice").await.0 == 202).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the gateway reconnects by itself");
}
