//! A fleet in one test: the gateway and an agent in process, each on its own queue and key prefix, a
//! fixture model, a fixture search API, and pages served on loopback.

use agent::mind::Mind;
use axum::Router;
use euglena_tests::model::FixtureModel;
use euglena_tests::search::FixtureSearch;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use shared::settings::Reader;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The embedding model the agent's memory needs (fetched by `scripts/fetch-embedding-model.sh`).
pub fn model_dir() -> PathBuf {
    let dir = std::env::var("EMBEDDING_MODEL_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "the embedding model is missing at {}: run scripts/fetch-embedding-model.sh",
        dir.display()
    );
    dir
}

pub struct Fleet {
    pub gateway: String,
    pub model: FixtureModel,
    pub search: FixtureSearch,
    pub client: reqwest::Client,
    secret: String,
    stop: CancellationToken,
    queue: String,
    key_prefix: String,
    _memory_dir: tempfile::TempDir,
    agent: Option<tokio::task::JoinHandle<()>>,
    env: HashMap<String, String>,
}

/// Starts a fleet; `overrides` replace the agent's and gateway's environment.
pub async fn spawn_fleet(overrides: &[(&str, &str)]) -> Fleet {
    spawn_fleet_with(overrides, true).await
}

/// Starts a fleet without an agent: tests add agents as processes with [`Fleet::spawn_agent`].
pub async fn spawn_gateway(overrides: &[(&str, &str)]) -> Fleet {
    spawn_fleet_with(overrides, false).await
}

async fn spawn_fleet_with(overrides: &[(&str, &str)], in_process_agent: bool) -> Fleet {
    shared::telemetry::init("e2e", shared::telemetry::LogFormat::Pretty);
    let model = FixtureModel::start(0).await.unwrap();
    let search = FixtureSearch::start(Some("search-key")).await.unwrap();
    let memory_dir = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4().simple().to_string();
    let secret = format!("secret-{id}");
    let mut env: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.to_owned());
    };
    set("HOST", "127.0.0.1");
    set("PORT", "0");
    set("HEALTH_PORT", "0");
    set("REDIS_KEY_PREFIX", &format!("e2e:{id}:"));
    set("AGENT_INPUT_QUEUE", &format!("e2e.{id}"));
    set("SUPABASE_JWT_SECRET", &secret);
    set("MODEL_API_URL", &model.base_url);
    set("MODEL_NAME", "fixture-model");
    set("MODEL_RETRY_BASE_MS", "20");
    set("SEARCH_API_URL", &search.brave_url);
    set("SEARCH_API_KEY", "search-key");
    // The test pages are served on loopback, which VISIT refuses unless allow-listed.
    set("VISIT_ALLOWLIST", "127.0.0.1");
    set("QDRANT_PATH", memory_dir.path().to_str().unwrap());
    set("EMBEDDING_MODEL_DIR", model_dir().to_str().unwrap());
    set("AGENT_STATUS_TIME", "0.5");
    set("WORKER_TTL_SECONDS", "5");
    for (k, v) in overrides {
        set(k, v);
    }

    let gateway_settings = gateway::Settings::from_source(env.clone()).unwrap();
    let gateway_app = gateway::Application::build(gateway_settings).await.unwrap();
    let gateway_url = format!("http://127.0.0.1:{}", gateway_app.port());
    let stop = CancellationToken::new();
    tokio::spawn(gateway_app.run_until_stopped(stop.clone().cancelled_owned()));

    let agent = if in_process_agent {
        let agent_settings = agent::AgentSettings::from_source(&Reader::new(env.clone())).unwrap();
        let mind = Mind::build(&agent_settings.mind).await.unwrap();
        let visitor = mind.visitor().clone();
        let agent_app = agent::Application::build(agent_settings, mind)
            .await
            .unwrap();
        let agent_stop = stop.clone();
        Some(tokio::spawn(async move {
            agent_app
                .run_until_stopped(agent_stop.cancelled_owned())
                .await
                .unwrap();
            visitor.shutdown().await;
        }))
    } else {
        None
    };
    Fleet {
        gateway: gateway_url,
        model,
        search,
        client: reqwest::Client::new(),
        secret,
        stop,
        queue: format!("e2e.{id}"),
        key_prefix: format!("e2e:{id}:"),
        _memory_dir: memory_dir,
        agent,
        env,
    }
}

impl Fleet {
    pub fn token(&self, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.token_with(
            json!({"sub": sub, "aud": "authenticated", "role": "authenticated",
                               "exp": now + 3600, "iat": now}),
        )
    }

    /// A token with `claims`, signed with the fleet's secret.
    pub fn token_with(&self, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .unwrap()
    }

    /// Submits a mandate as `sub` and returns the task id.
    pub async fn submit(&self, sub: &str, mandate: &str, max_ticks: u32) -> String {
        let response = self
            .client
            .post(format!("{}/tasks", self.gateway))
            .bearer_auth(self.token(sub))
            .json(&json!({"mandate": mandate, "max_ticks": max_ticks}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["correlation_id"].as_str().unwrap().to_owned()
    }

    /// Polls the task until it is completed or failed, or `deadline` passes.
    pub async fn wait_terminal(&self, sub: &str, id: &str, deadline: Duration) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let body: Value = self
                .client
                .get(format!("{}/tasks/{id}", self.gateway))
                .bearer_auth(self.token(sub))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ["completed", "failed", "cancelled"].contains(&body["status"].as_str().unwrap_or(""))
            {
                return body;
            }
            assert!(
                started.elapsed() < deadline,
                "task still {} after {deadline:?}: {body}",
                body["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens task `id`'s event stream as `sub`.
    pub async fn events(
        &self,
        sub: &str,
        id: &str,
        last_event_id: Option<&str>,
    ) -> euglena_tests::sse::EventStream {
        let (status, stream) = euglena_tests::sse::open(
            &self.client,
            &format!("{}/tasks/{id}/events", self.gateway),
            &self.token(sub),
            last_event_id,
        )
        .await;
        assert_eq!(status, 200);
        stream.expect("a stream")
    }

    /// Sends `method path` as `sub` and returns the status and the JSON body (null when there is none).
    pub async fn call(&self, method: reqwest::Method, sub: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.gateway))
            .bearer_auth(self.token(sub))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Whether the agent is still running (it never crashes on a bad model).
    pub fn agent_alive(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| !a.is_finished())
    }
}

/// The release agent binary as a child process on a fleet's queue and keys.
pub struct AgentProcess {
    pub worker_id: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Fleet {
    /// Starts the `agent` binary (built beside this test) as worker `worker_id` with the fleet's
    /// settings, its own memory directory and `extra` settings.
    pub fn spawn_agent(&self, worker_id: &str, extra: &[(&str, &str)]) -> AgentProcess {
        let exe = std::env::current_exe().unwrap();
        let binary = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("agent"))
            .unwrap();
        assert!(
            binary.is_file(),
            "{} is missing: build it with `cargo build -p agent`",
            binary.display()
        );
        let memory = self._memory_dir.path().join(worker_id);
        std::fs::create_dir_all(&memory).unwrap();
        let log = self._memory_dir.path().join(format!("{worker_id}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("QDRANT_PATH", &memory)
            .env("WORKER_ID", worker_id)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        AgentProcess {
            worker_id: worker_id.to_owned(),
            child: command.spawn().unwrap(),
            log,
        }
    }

    /// Messages waiting in the fleet's task queue, not yet handed to an agent.
    pub async fn queued_messages(&self) -> u32 {
        euglena_tests::broker::ready_messages(&self.queue).await
    }

    /// The ticks charged to `sub` today.
    pub async fn quota_used(&self, sub: &str) -> i64 {
        let keys = shared::keys::Keys::new(&self.key_prefix);
        let now = chrono::Utc::now();
        let mut redis = redis::Client::open(euglena_tests::cleanup::REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let used: Option<i64> = redis::cmd("GET")
            .arg(keys.quota(sub, now))
            .query_async(&mut redis)
            .await
            .unwrap();
        used.unwrap_or(0)
    }

    /// One field of task `id`'s record, straight from Redis.
    pub async fn stored_field(&self, id: &str, field: &str) -> Option<String> {
        let keys = shared::keys::Keys::new(&self.key_prefix);
        let mut redis = redis::Client::open(euglena_tests::cleanup::REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("HGET")
            .arg(keys.task(id.parse().unwrap()))
            .arg(field)
            .query_async(&mut redis)
            .await
            .unwrap()
    }
}

impl AgentProcess {
    /// SIGKILL: the process gets no chance to clean up.
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the agent runs")
    }

    pub async fn kill9(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            self.child.kill().await.unwrap();
        }
    }

    /// SIGTERM: the clean shutdown path.
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("the agent still runs");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "agent {} did not exit within {within:?}; its log:\n{}",
                self.worker_id,
                self.logs()
            ),
        }
    }

    /// What the agent logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
        euglena_tests::cleanup::remove_test_state(&self.queue, &self.key_prefix);
    }
}

/// Serves `router` on loopback and returns its base URL.
pub async fn serve_pages(router: Router) -> String {
    let address = euglena_tests::serve(router, 0).await.unwrap();
    format!("http://{address}")
}
