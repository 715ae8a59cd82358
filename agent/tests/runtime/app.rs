//! Whole agents in process: presence, `/health` and ECS scale-in protection.

use crate::helpers::{TestEnv, poll};
use agent::{AgentSettings, Application};
use axum::Json;
use axum::extract::State;
use axum::routing::put;
use shared::Status;
use shared::settings::Reader;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An agent running in this process on `env`, stopped through `stop`.
pub struct RunningAgent {
    pub worker_id: String,
    pub health_port: u16,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), agent::AgentError>>,
}

pub async fn start_agent(env: &TestEnv, extra: &[(&str, &str)]) -> anyhow::Result<RunningAgent> {
    let mut vars = env.agent_env();
    let worker_id = format!("inproc-{}", &env.prefix[5..13]);
    vars.insert("WORKER_ID".into(), worker_id.clone());
    for (name, value) in extra {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    let settings = AgentSettings::from_source(&Reader::new(vars))?;
    let executor = env.scripted(&worker_id).await?;
    let app = Application::build(settings, executor).await?;
    let health_port = app.health_port();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    Ok(RunningAgent {
        worker_id,
        health_port,
        stop,
        task,
    })
}

impl RunningAgent {
    pub async fn health(&self) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/health", self.health_port);
        let response = reqwest::get(url).await?;
        anyhow::ensure!(
            response.status() == 200,
            "health answered {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task).await???;
        Ok(())
    }
}

async fn presence(env: &TestEnv, worker_id: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let mut conn = env.redis.clone();
    let json: Option<String> = redis::cmd("GET")
        .arg(env.keys.worker_status(worker_id))
        .query_async(&mut conn)
        .await?;
    Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
}

#[tokio::test]
async fn an_agent_shows_free_then_working_in_presence_and_health_and_deregisters_on_shutdown()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let agent = start_agent(&env, &[]).await?;
    let free = poll(Duration::from_secs(5), || async {
        presence(&env, &agent.worker_id).await
    })
    .await?;
    assert_eq!(free["state"], "free");
    let health = agent.health().await?;
    assert_eq!(health["worker_id"], agent.worker_id.as_str());
    assert_eq!(health["state"], "free");
    assert_eq!(health["components"]["redis"], true);
    assert_eq!(health["components"]["rabbitmq"], true);

    let id = env.create_task("ticks=6 tick_ms=250", 10).await?;
    let working = poll(Duration::from_secs(5), || async {
        Ok(presence(&env, &agent.worker_id)
            .await?
            .filter(|p| p["state"] == "working" && p["tick"].as_u64() > Some(0)))
    })
    .await?;
    assert_eq!(working["correlation_id"], id.to_string());
    let health = agent.health().await?;
    assert_eq!(health["tasks_in_hand"], 1);
    assert_eq!(health["task_ids"][0], id.to_string());
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::Completed
    })
    .await?;

    let worker_id = agent.worker_id.clone();
    agent.shutdown().await?;
    assert_eq!(presence(&env, &worker_id).await?, None);
    let mut conn = env.redis.clone();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(env.keys.workers_status())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    assert!(members.is_empty(), "{members:?}");
    env.cleanup().await
}

#[tokio::test]
async fn an_agent_runs_up_to_its_concurrency_at_once_and_no_more() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let agent = start_agent(&env, &[("AGENT_CONCURRENCY", "3")]).await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(env.create_task("ticks=6 tick_ms=250", 10).await?);
    }

    let mut most = 0;
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while done < ids.len() && tokio::time::Instant::now() < deadline {
        most = most.max(agent.health().await?["tasks_in_hand"].as_u64().unwrap_or(0));
        done = 0;
        for id in &ids {
            if env.record(*id).await?.status == Status::Completed {
                done += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(done, ids.len(), "every task completed");
    assert_eq!(most, 3, "three at once, never four");
    agent.shutdown().await?;
    env.cleanup().await
}

/// The ECS agent endpoint, recording each `PUT /task-protection/v1/state` body.
async fn fake_ecs_agent() -> anyhow::Result<(String, Arc<Mutex<Vec<serde_json::Value>>>)> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/task-protection/v1/state",
            put(
                |State(calls): State<Arc<Mutex<Vec<serde_json::Value>>>>,
                 Json(body): Json<serde_json::Value>| async move {
                    calls.lock().unwrap().push(body);
                    Json(serde_json::json!({"protection": {}}))
                },
            ),
        )
        .with_state(Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, calls))
}

#[tokio::test]
async fn scale_in_protection_is_enabled_while_busy_renewed_and_cleared_when_idle()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let (ecs_url, calls) = fake_ecs_agent().await?;
    let agent = start_agent(
        &env,
        &[
            ("ECS_AGENT_URI", &ecs_url),
            ("ECS_PROTECTION_EXPIRES_MINUTES", "5"),
            ("ECS_PROTECTION_RENEW_SECONDS", "0.4"),
        ],
    )
    .await?;
    poll(Duration::from_secs(5), || async {
        presence(&env, &agent.worker_id).await
    })
    .await?;
    assert!(
        calls.lock().unwrap().is_empty(),
        "an idle agent asks for nothing"
    );

    let id = env.create_task("ticks=6 tick_ms=250", 10).await?;
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::Completed
    })
    .await?;
    let cleared = serde_json::json!({"ProtectionEnabled": false});
    poll(Duration::from_secs(5), || async {
        Ok((calls.lock().unwrap().last() == Some(&cleared)).then_some(()))
    })
    .await?;

    let calls = calls.lock().unwrap().clone();
    let enabled = serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": 5});
    let enables = calls.iter().filter(|c| **c == enabled).count();
    assert_eq!(calls.first(), Some(&enabled), "{calls:?}");
    assert!(
        enables >= 2,
        "enabled, then renewed at least once: {calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| **c == cleared).count(),
        1,
        "{calls:?}"
    );
    agent.shutdown().await?;
    env.cleanup().await
}

#[tokio::test]
async fn an_unreachable_ecs_agent_endpoint_never_stops_the_work() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let agent = start_agent(&env, &[("ECS_AGENT_URI", "http://127.0.0.1:9")]).await?;
    let id = env.create_task("ticks=2 tick_ms=50", 4).await?;
    let record = env
        .wait_record(id, Duration::from_secs(10), |r| r.status.is_terminal())
        .await?;
    assert_eq!(record.status, Status::Completed);
    agent.shutdown().await?;
    env.cleanup().await
}

#[tokio::test]
async fn an_idle_agent_survives_a_redis_restart_and_takes_the_next_task() -> anyhow::Result<()> {
    let mut redis = crate::helpers::PrivateRedis::start().await?;
    let env = TestEnv::with_redis(3, &redis.url()).await?;
    let agent = start_agent(&env, &[]).await?;
    poll(Duration::from_secs(5), || async {
        presence(&env, &agent.worker_id).await
    })
    .await?;

    redis.kill().await?;
    poll(Duration::from_secs(5), || async {
        Ok((agent.health().await?["components"]["redis"] == false).then_some(()))
    })
    .await?;
    redis.restart().await?;
    poll(Duration::from_secs(10), || async {
        presence(&env, &agent.worker_id).await
    })
    .await?;
    let id = env.create_task("ticks=2 tick_ms=50", 4).await?;
    let record = env
        .wait_record(id, Duration::from_secs(15), |r| r.status.is_terminal())
        .await?;

    assert_eq!(record.status, Status::Completed);
    assert_eq!(agent.health().await?["components"]["redis"], true);
    agent.shutdown().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_task_in_hand_survives_a_redis_restart_and_completes_once() -> anyhow::Result<()> {
    let mut redis = crate::helpers::PrivateRedis::start().await?;
    let env = TestEnv::with_redis(3, &redis.url()).await?;
    let agent = start_agent(&env, &[]).await?;
    let id = env.create_task("ticks=16 tick_ms=250", 30).await?;
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::InProgress
    })
    .await?;

    redis.kill().await?;
    poll(Duration::from_secs(5), || async {
        Ok((agent.health().await?["components"]["redis"] == false).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart().await?;
    let record = env
        .wait_record(id, Duration::from_secs(60), |r| r.status.is_terminal())
        .await?;

    assert_eq!(
        record.status,
        Status::Completed,
        "error: {:?}",
        record.error
    );
    assert_eq!(
        env.runs(id).await?,
        1,
        "the task kept running through the outage"
    );
    assert_eq!(
        env.quota_used().await?,
        16,
        "the 14 unused ticks are refunded once"
    );
    assert_eq!(agent.health().await?["components"]["redis"], true);
    agent.shutdown().await?;
    env.cleanup().await
}

/// A port nothing listens on (bound, then released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Accepts on `listener` and splices every connection to RabbitMQ.
async fn forward_to_rabbitmq(listener: tokio::net::TcpListener) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn an_agent_serves_health_while_it_waits_for_the_broker_and_reports_ok_once_connected()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let broker_port = free_port()?;
    let health_port = free_port()?;
    let mut vars = env.agent_env();
    let worker_id = format!("starting-{}", &env.prefix[5..13]);
    vars.insert("WORKER_ID".into(), worker_id.clone());
    vars.insert("HEALTH_PORT".into(), health_port.to_string());
    vars.insert(
        "RABBITMQ_URL".into(),
        format!("amqp://guest:guest@127.0.0.1:{broker_port}/%2f"),
    );
    vars.insert("STARTUP_TIMEOUT_SECONDS".into(), "30".into());
    let settings = AgentSettings::from_source(&Reader::new(vars))?;
    let executor = env.scripted(&worker_id).await?;
    let started = tokio::time::Instant::now();
    let building = tokio::spawn(Application::build(settings, executor));

    let url = format!("http://127.0.0.1:{health_port}/health");
    let starting: serde_json::Value = poll(Duration::from_secs(1), || async {
        match reqwest::get(&url).await {
            Ok(response) if response.status() == 200 => Ok(Some(response.json().await?)),
            _ => Ok(None),
        }
    })
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served within the first second"
    );
    assert_eq!(starting["status"], "starting");
    assert_eq!(starting["worker_id"], worker_id.as_str());
    assert_eq!(starting["components"]["rabbitmq"], false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still: serde_json::Value = reqwest::get(&url).await?.json().await?;
    assert_eq!(
        (
            still["status"].as_str(),
            still["components"]["redis"].as_bool()
        ),
        (Some("starting"), Some(true)),
        "Redis is reached, the broker is not: {still}"
    );
    assert!(
        !building.is_finished(),
        "start-up still waits for the broker"
    );

    let forwarder = tokio::spawn(forward_to_rabbitmq(
        tokio::net::TcpListener::bind(("127.0.0.1", broker_port)).await?,
    ));
    let app = tokio::time::timeout(Duration::from_secs(15), building).await???;
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    let ok: serde_json::Value = poll(Duration::from_secs(5), || async {
        let report: serde_json::Value = reqwest::get(&url).await?.json().await?;
        Ok((report["status"] == "ok").then_some(report))
    })
    .await?;
    assert_eq!(ok["components"]["rabbitmq"], true);
    assert_eq!(ok["state"], "free");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task).await???;
    forwarder.abort();
    env.cleanup().await
}

#[tokio::test]
async fn an_agent_that_cannot_reach_the_broker_by_its_deadline_stops_serving_health_and_fails()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let health_port = free_port()?;
    let mut vars = env.agent_env();
    vars.insert("WORKER_ID".into(), format!("never-{}", &env.prefix[5..13]));
    vars.insert("HEALTH_PORT".into(), health_port.to_string());
    vars.insert(
        "RABBITMQ_URL".into(),
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()?),
    );
    vars.insert("STARTUP_TIMEOUT_SECONDS".into(), "1".into());
    let settings = AgentSettings::from_source(&Reader::new(vars))?;
    let executor = env.scripted("never").await?;

    let error = Application::build(settings, executor)
        .await
        .expect_err("no broker, no agent");

    assert!(error.to_string().contains("RabbitMQ"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("http://127.0.0.1:{health_port}/health");
    assert!(
        reqwest::get(&url).await.is_err(),
        "the health port is released with the failed start-up"
    );
    env.cleanup().await
}
