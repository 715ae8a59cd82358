//! Spawning a gateway on port 0 against the real Redis and RabbitMQ, with a unique key prefix and queue
//! per test so tests run in parallel; minting tokens; a JWKS server on loopback.

use axum::Json;
use axum::routing::get;
use euglena_tests::sse::{self, EventStream};
use gateway::{Application, Settings};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::{Value, json};
use shared::Keys;
use shared::store::{Outcome, Transition, transition};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-private.pem");
pub const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa-public.pem");
pub const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec-private.pem");

/// A JWKS endpoint on loopback whose key set a test can change, counting the fetches it serves.
#[derive(Clone)]
pub struct JwksServer {
    pub base_url: String,
    pub keys: Arc<RwLock<JwkSet>>,
    pub fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start() -> Self {
        let keys = Arc::new(RwLock::new(JwkSet {
            keys: vec![
                jwk(RSA_PRIVATE, Algorithm::RS256, "rsa-1"),
                jwk(EC_PRIVATE, Algorithm::ES256, "ec-1"),
            ],
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/auth/v1/.well-known/jwks.json",
            get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    Json(k.read().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base_url,
            keys,
            fetches,
        }
    }
}

/// The public JWK of a private key, under `kid`.
pub fn jwk(private_pem: &[u8], alg: Algorithm, kid: &str) -> Jwk {
    let key = encoding_key(private_pem, alg);
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

pub fn encoding_key(private_pem: &[u8], alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem).unwrap(),
        other => panic!("no fixture key for {other:?}"),
    }
}

pub fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub keys: Keys,
    pub queue: String,
    pub secret: String,
    pub issuer: String,
    pub jwks: JwksServer,
    pub redis: redis::aio::MultiplexedConnection,
    _amqp: Connection,
    pub channel: Channel,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// The settings a test gateway starts with; `overrides` replace or add variables.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    shared::telemetry::init("gateway-tests", shared::telemetry::LogFormat::Pretty);
    let jwks = JwksServer::start().await;
    let id = Uuid::new_v4().simple().to_string();
    let prefix = format!("test:{id}:");
    let queue = format!("test.gateway.{id}");
    let secret = format!("test-secret-{}", Uuid::new_v4());
    let mut env: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("REDIS_URL", REDIS_URL),
        ("RABBITMQ_URL", RABBITMQ_URL),
        ("STARTUP_DEADLINE_SECONDS", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("REDIS_KEY_PREFIX".into(), prefix.clone());
    env.insert("AGENT_INPUT_QUEUE".into(), queue.clone());
    env.insert("SUPABASE_JWT_SECRET".into(), secret.clone());
    env.insert("SUPABASE_URL".into(), jwks.base_url.clone());
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let queue = env["AGENT_INPUT_QUEUE"].clone();
    let settings = Settings::from_source(env).expect("test settings are valid");
    let application = Application::build(settings)
        .await
        .expect("the gateway starts");
    let address = format!("http://127.0.0.1:{}", application.port());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone().cancelled_owned()));

    let redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let amqp = Connection::connect(RABBITMQ_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    TestApp {
        address,
        client: reqwest::Client::new(),
        keys: Keys::new(prefix),
        queue,
        secret,
        issuer: format!("{}/auth/v1", jwks.base_url),
        jwks,
        redis,
        _amqp: amqp,
        channel,
        shutdown,
        server: Some(server),
    }
}

/// What an agent writes for tick `tick` of a task: `in_progress`, the tick, and its `tick` event.
pub fn agent_tick(tick: u32, action: &str) -> Transition {
    let event = shared::api::TickEvent {
        tick,
        action: action.to_owned(),
        param: format!("param {tick}"),
        observation: format!("saw {tick}"),
        model_ms: 5,
        tokens_in: 10,
        tokens_out: 2,
        usage: shared::api::Usage {
            model_calls: tick,
            ..shared::api::Usage::default()
        },
    };
    Transition::to(shared::Status::InProgress)
        .with(shared::task::field::TICK, tick.to_string())
        .event(shared::events::NewEvent::new(
            shared::events::EventKind::Tick,
            &event,
        ))
}

/// What an agent writes when it takes a task.
pub fn agent_accepts() -> Transition {
    Transition::to(shared::Status::Accepted)
        .counting_attempt()
        .event(shared::events::NewEvent::new(
            shared::events::EventKind::Accepted,
            &shared::api::AcceptedEvent { attempt: 1 },
        ))
}

/// What an agent writes when a task completes after `ticks` ticks.
pub fn agent_completes(ticks: u32) -> Transition {
    let result = shared::task::TaskResult {
        success: true,
        deliverables: vec!["the deliverable".into()],
        summary: "done".into(),
        sources: vec!["https://example.org/".into()],
        ticks_used: ticks,
    };
    Transition::to(shared::Status::Completed)
        .with(
            shared::task::field::RESULT,
            serde_json::to_string(&result).unwrap(),
        )
        .with(shared::task::field::TICK, ticks.to_string())
        .refunding(ticks)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

impl TestApp {
    /// Claims of a confirmed, signed-in user that the gateway accepts.
    pub fn claims(&self, sub: &str) -> Value {
        json!({
            "sub": sub,
            "aud": "authenticated",
            "role": "authenticated",
            "iss": self.issuer,
            "exp": now_secs() + 3600,
            "iat": now_secs(),
            "email": format!("{sub}@example.org"),
            "is_anonymous": false,
            "user_metadata": {"email_verified": true},
        })
    }

    pub fn hs256(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .unwrap()
    }

    /// A valid HS256 token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.hs256(&self.claims(sub))
    }

    pub async fn post_task(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/tasks", self.address))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the gateway answers")
    }

    pub async fn get_task(&self, token: &str, id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/tasks/{id}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// Creates a task for `sub` (202 expected) and returns its id.
    pub async fn create(&self, sub: &str, max_ticks: u32) -> String {
        let response = self
            .post_task(
                Some(&self.token(sub)),
                &json!({"mandate": format!("task of {sub}"), "max_ticks": max_ticks}),
            )
            .await;
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let body: Value = response.json().await.unwrap();
        body["correlation_id"].as_str().unwrap().to_owned()
    }

    /// Applies `change` to task `id` as an agent would (through the shared transition).
    pub async fn as_agent(&self, id: &str, change: &Transition) -> Outcome {
        transition(
            &mut self.redis.clone(),
            &self.keys,
            id.parse().unwrap(),
            change,
            chrono::Utc::now(),
            600,
        )
        .await
        .unwrap()
    }

    /// Opens task `id`'s event stream as `sub`.
    pub async fn events(
        &self,
        sub: &str,
        id: &str,
        last_event_id: Option<&str>,
    ) -> (reqwest::StatusCode, Option<EventStream>) {
        sse::open(
            &self.client,
            &format!("{}/tasks/{id}/events", self.address),
            &self.token(sub),
            last_event_id,
        )
        .await
    }

    /// Sends `method path` as `sub`, with an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        sub: &str,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(self.token(sub));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("the gateway answers")
    }

    /// The stored fields of a task, straight from Redis.
    pub async fn stored(&self, id: &str) -> HashMap<String, String> {
        let id: Uuid = id.parse().unwrap();
        self.redis
            .clone()
            .hgetall(self.keys.task(id))
            .await
            .unwrap()
    }

    /// Ticks charged to `sub` today.
    pub async fn quota_used(&self, sub: &str) -> i64 {
        let key = self.keys.quota(sub, chrono::Utc::now());
        let used: Option<i64> = self.redis.clone().get(key).await.unwrap();
        used.unwrap_or(0)
    }

    /// Takes the next message off the test queue, if any.
    pub async fn next_message(&self) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    }

    /// Deletes the test queue (as an operator might), so publishes become unroutable.
    pub async fn delete_queue(&self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    /// The ids of the task records under this test's prefix (not their event logs or other keys).
    pub async fn task_ids(&self) -> Vec<String> {
        let records = format!("{}task:", self.keys.prefix());
        self.redis_keys()
            .await
            .into_iter()
            .filter_map(|k| k.strip_prefix(&records).map(str::to_owned))
            .filter(|rest| rest.parse::<Uuid>().is_ok())
            .collect()
    }

    /// Every key under this test's prefix.
    pub async fn redis_keys(&self) -> Vec<String> {
        let pattern = format!("{}*", self.keys.prefix());
        self.redis.clone().keys(pattern).await.unwrap()
    }
}

impl TestApp {
    /// Sends the shutdown signal and waits up to `within` for the gateway to stop; true when it did.
    pub async fn stop(&mut self, within: Duration) -> bool {
        self.shutdown.cancel();
        let server = self.server.take().expect("the gateway runs");
        tokio::time::timeout(within, server).await.is_ok()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        euglena_tests::cleanup::remove_test_state(&self.queue, self.keys.prefix());
    }
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if started.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
