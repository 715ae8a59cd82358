//! `kill9`: what crashes cost. Runs a gateway and `--agents` agent processes (the binaries built beside
//! this one) against the local Redis and RabbitMQ with an in-process fixture model whose every answer
//! takes `--think-ms`, submits `--tasks` tasks of `--ticks` ticks, and while they run kills a random
//! agent with SIGKILL every `--kill-every-ms` and starts a replacement. When every task has ended it
//! prints the kills, the ticks run, and the model calls made against the ideal (each tick asked once plus
//! one synthesis per task): with checkpoints, each kill costs at most the call it interrupted.

use clap::Parser;
use euglena_tests::model::{FixtureModel, Reply};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
struct Options {
    /// Tasks to run.
    #[arg(long, default_value_t = 20)]
    tasks: usize,
    /// Ticks each task runs before it exits.
    #[arg(long, default_value_t = 8)]
    ticks: u32,
    /// Agent processes kept running.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How long each model answer takes.
    #[arg(long, default_value_t = 200)]
    think_ms: u64,
    /// How often an agent is killed.
    #[arg(long, default_value_t = 1500)]
    kill_every_ms: u64,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    rabbitmq_url: String,
}

/// The gateway and agent binaries: beside this one.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join(name))
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it first",
        path.display()
    );
    Ok(path)
}

struct Fleet {
    env: HashMap<String, String>,
    agent: PathBuf,
    logs: PathBuf,
    agents: Vec<Child>,
    started: usize,
}

impl Fleet {
    fn spawn_agent(&mut self, concurrency: usize) -> anyhow::Result<()> {
        self.started += 1;
        let log = std::fs::File::create(self.logs.join(format!("agent-{}.log", self.started)))?;
        let child = Command::new(&self.agent)
            .envs(&self.env)
            .env("WORKER_ID", format!("kill9-agent-{}", self.started))
            .env("HEALTH_PORT", "0")
            .env("AGENT_CONCURRENCY", concurrency.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.agents.push(child);
        Ok(())
    }
}

fn token(secret: &str) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "kill9", "aud": "authenticated", "role": "authenticated",
                "iat": now, "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

async fn wait_healthy(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if client.get(format!("{url}/health")).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the gateway did not start")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let logs = std::env::temp_dir().join(format!("kill9-{run}"));
    std::fs::create_dir_all(&logs)?;
    let model = FixtureModel::start(0).await?;
    // Answers follow the tick number in the prompt (not the call count), so a call cut off by a kill and
    // asked again gets the same answer: THINK until the last tick, EXIT on it, then the synthesis.
    let last = options.ticks;
    let answer: euglena_tests::model::ReplyFn = std::sync::Arc::new(move |request: &Value| {
        let prompt = euglena_tests::model::prompt_text(request);
        let tick = prompt
            .split("\nTick ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok());
        match tick {
            None => Reply::synthesis("done", &[]),
            Some(tick) if tick >= last => Reply::action("EXIT", "", json!({})),
            Some(tick) => Reply::action(
                "THINK",
                "",
                json!({"history_update": format!("tick {tick}"), "deliverable": format!("d{tick}")}),
            ),
        }
    });
    let script = vec![Reply::Delayed(
        Duration::from_millis(options.think_ms),
        Box::new(Reply::Computed(answer)),
    )];
    model.default_script(script);

    let secret = format!("kill9-{run}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let prefix = format!("kill9:{run}:");
    let queue = format!("kill9.{run}");
    let env: HashMap<String, String> = [
        ("REDIS_URL", options.redis_url.as_str()),
        ("RABBITMQ_URL", options.rabbitmq_url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("AGENT_INPUT_QUEUE", queue.as_str()),
        ("SUPABASE_JWT_SECRET", secret.as_str()),
        ("MODEL_API_URL", model.base_url.as_str()),
        ("MODEL_NAME", "fixture-model"),
        ("MEMORY_ENABLED", "false"),
        ("MAX_DELIVERIES", "20"),
        ("WORKER_TTL_SECONDS", "5"),
        ("AGENT_STATUS_TIME", "0.5"),
        ("RUST_LOG", "warn"),
        ("MAX_ACTIVE_TASKS_PER_USER", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let gateway_log = std::fs::File::create(logs.join("gateway.log"))?;
    let _gateway = Command::new(binary("gateway")?)
        .envs(&env)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(gateway_log)
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &url).await?;
    let mut fleet = Fleet {
        env,
        agent: binary("agent")?,
        logs: logs.clone(),
        agents: Vec::new(),
        started: 0,
    };
    for _ in 0..options.agents {
        fleet.spawn_agent(options.concurrency)?;
    }

    let token = token(&secret)?;
    let mut ids = Vec::new();
    for n in 0..options.tasks {
        let created: Value = client
            .post(format!("{url}/tasks"))
            .bearer_auth(&token)
            .json(&json!({"mandate": format!("kill9 task {n}"), "max_ticks": options.ticks + 4}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(
            created["correlation_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }

    let started = Instant::now();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(options.kill_every_ms);
    let finals = loop {
        let mut finals = Vec::new();
        for id in &ids {
            let task: Value = client
                .get(format!("{url}/tasks/{id}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            finals.push(task);
        }
        let running = finals
            .iter()
            .filter(|t| {
                !["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or(""))
            })
            .count();
        if running == 0 {
            break finals;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{running} tasks still running after 10 minutes; logs in {}",
            logs.display()
        );
        if Instant::now() >= next_kill {
            let victim = usize::try_from(rand_index())? % fleet.agents.len();
            let mut child = fleet.agents.swap_remove(victim);
            child.kill().await?;
            kills += 1;
            fleet.spawn_agent(options.concurrency)?;
            next_kill = Instant::now() + Duration::from_millis(options.kill_every_ms);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();

    let mut calls: HashMap<String, usize> = HashMap::new();
    for request in model.requests() {
        let task = request.body["user"].as_str().unwrap_or_default().to_owned();
        *calls.entry(task).or_default() += 1;
    }
    let completed = finals.iter().filter(|t| t["status"] == "completed").count();
    let ticks: u64 = finals.iter().map(|t| t["tick"].as_u64().unwrap_or(0)).sum();
    let made: usize = ids
        .iter()
        .map(|id| calls.get(id).copied().unwrap_or(0))
        .sum();
    let ideal = usize::try_from(ticks)? + finals.len();
    let failed: Vec<&Value> = finals
        .iter()
        .filter(|t| t["status"] != "completed")
        .collect();
    println!(
        "{} tasks of {} ticks, {} agents x {}, one SIGKILL every {} ms, answers after {} ms",
        options.tasks,
        options.ticks,
        options.agents,
        options.concurrency,
        options.kill_every_ms,
        options.think_ms
    );
    println!(
        "{completed} completed in {:.1} s, {kills} agents killed; ticks run {ticks} (ideal {})",
        elapsed.as_secs_f64(),
        u64::from(options.ticks) * u64::try_from(options.tasks)?
    );
    println!(
        "model calls {made}, ideal {ideal} (each tick once, one synthesis per task): {} extra, {:.1}% over; \
         the bound is one call per task in hand per kill, {} here",
        made.saturating_sub(ideal),
        100.0 * (made as f64 - ideal as f64) / ideal as f64,
        kills * options.concurrency
    );
    for task in failed {
        println!(
            "not completed: {} {} {}",
            task["correlation_id"], task["status"], task["error"]
        );
    }
    drop(fleet);
    cleanup(&options.redis_url, &prefix, &queue).await;
    println!("logs: {}", logs.display());
    Ok(())
}

/// A random index from the clock (no rand dependency for one choice per kill).
fn rand_index() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos / 1000)
}

async fn cleanup(redis_url: &str, prefix: &str, queue: &str) {
    let _ = Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", queue])
        .status()
        .await;
    for dead in [format!("{queue}.dlq"), format!("{queue}.dlq.parked")] {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &dead])
            .status()
            .await;
    }
    if let Ok(client) = redis::Client::open(redis_url)
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for key in keys {
            let _ = redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut conn)
                .await;
        }
    }
}
