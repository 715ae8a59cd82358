//! Whole agents as child processes (the `scripted_agent` example): crashes and signals.

use crate::helpers::{AgentProcess, TestEnv, poll};
use anyhow::Context;
use shared::Status;
use std::time::Duration;

/// Which worker's presence shows it working on `id`.
async fn holder(
    env: &TestEnv,
    workers: &[&AgentProcess],
    id: uuid::Uuid,
) -> anyhow::Result<String> {
    poll(Duration::from_secs(10), || async {
        for worker in workers {
            let mut conn = env.redis.clone();
            let json: Option<String> = redis::cmd("GET")
                .arg(env.keys.worker_status(&worker.worker_id))
                .query_async(&mut conn)
                .await?;
            let Some(json) = json else { continue };
            let presence: serde_json::Value = serde_json::from_str(&json)?;
            if presence["correlation_id"] == id.to_string() {
                return Ok(Some(worker.worker_id.clone()));
            }
        }
        Ok(None)
    })
    .await
}

#[tokio::test]
async fn killing_an_agent_mid_task_hands_the_task_to_a_second_agent_which_completes_it_once()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let suffix = &env.prefix[5..13];
    let mut first = AgentProcess::spawn(&env, &format!("a-{suffix}"), &[])?;
    let mut second = AgentProcess::spawn(&env, &format!("b-{suffix}"), &[])?;
    first.wait_registered(&env).await?;
    second.wait_registered(&env).await?;
    let id = env.create_task("ticks=8 tick_ms=250", 10).await?;
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::InProgress
    })
    .await?;

    let holder = holder(&env, &[&first, &second], id).await?;
    let (victim, survivor) = if holder == first.worker_id {
        (&mut first, &second)
    } else {
        (&mut second, &first)
    };
    victim.kill9().await?;
    let record = env
        .wait_record(id, Duration::from_secs(30), |r| r.status.is_terminal())
        .await
        .with_context_logs(survivor)?;

    assert_eq!(
        record.status,
        Status::Completed,
        "error: {:?}",
        record.error
    );
    let summary = record.result.map(|r| r.summary).unwrap_or_default();
    assert_eq!(summary, format!("done by {}", survivor.worker_id));
    assert_eq!(record.attempts, 2);
    assert_eq!(
        env.runs(id).await?,
        2,
        "started on the victim, run again on the survivor"
    );
    assert_eq!(env.quota_used().await?, 8, "refunded once: 2 of 10");
    env.wait_ready(&env.topology.queue, 0).await?;
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    first.kill9().await?;
    second.kill9().await?;
    env.cleanup().await
}

#[tokio::test]
async fn sigterm_during_a_task_lets_it_finish_then_exits_zero_with_presence_gone()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let mut agent = AgentProcess::spawn(
        &env,
        &format!("t-{}", &env.prefix[5..13]),
        &[("SHUTDOWN_GRACE_SECONDS", "20")],
    )?;
    agent.wait_registered(&env).await?;
    let id = env.create_task("ticks=6 tick_ms=300", 10).await?;
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::InProgress
    })
    .await?;

    agent.sigterm()?;
    let exit = agent.wait_exit(Duration::from_secs(20)).await?;

    assert!(exit.success(), "exit {exit:?}; log:\n{}", agent.logs());
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Completed, "log:\n{}", agent.logs());
    let mut conn = env.redis.clone();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(env.keys.workers_status())
        .arg(&agent.worker_id)
        .query_async(&mut conn)
        .await?;
    let record_exists: bool = redis::cmd("EXISTS")
        .arg(env.keys.worker_status(&agent.worker_id))
        .query_async(&mut conn)
        .await?;
    assert_eq!(score, None, "deregistered from workers:status");
    assert!(!record_exists, "worker:status deleted");
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_killed_agent_drops_out_of_the_live_workers_within_the_worker_ttl() -> anyhow::Result<()>
{
    let env = TestEnv::new(3).await?;
    let mut agent = AgentProcess::spawn(&env, &format!("p-{}", &env.prefix[5..13]), &[])?;
    agent.wait_registered(&env).await?;
    let live = |env: &TestEnv| {
        let mut conn = env.redis.clone();
        let key = env.keys.workers_status();
        async move {
            let since = chrono::Utc::now().timestamp_millis() - 2000;
            let count: u32 = redis::cmd("ZCOUNT")
                .arg(key)
                .arg(since)
                .arg("+inf")
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(count)
        }
    };
    assert_eq!(live(&env).await?, 1);

    agent.kill9().await?;
    let killed_at = std::time::Instant::now();
    poll(Duration::from_secs(5), || async {
        Ok((live(&env).await? == 0).then_some(()))
    })
    .await?;
    poll(Duration::from_secs(5), || async {
        let mut conn = env.redis.clone();
        let exists: bool = redis::cmd("EXISTS")
            .arg(env.keys.worker_status(&agent.worker_id))
            .query_async(&mut conn)
            .await?;
        Ok((!exists).then_some(()))
    })
    .await?;

    assert!(
        killed_at.elapsed() < Duration::from_millis(3500),
        "gone {:?} after the kill; WORKER_TTL_SECONDS is 2",
        killed_at.elapsed()
    );
    env.cleanup().await
}

#[tokio::test]
async fn an_invalid_setting_stops_the_agent_with_one_clear_line() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let mut agent = AgentProcess::spawn(&env, "invalid", &[("AGENT_CONCURRENCY", "0")])?;

    let exit = agent.wait_exit(Duration::from_secs(10)).await?;

    assert!(!exit.success());
    let logs = agent.logs();
    assert!(
        logs.contains("invalid settings: AGENT_CONCURRENCY is invalid"),
        "{logs}"
    );
    env.cleanup().await
}

trait WithLogs<T> {
    fn with_context_logs(self, agent: &AgentProcess) -> anyhow::Result<T>;
}

impl<T> WithLogs<T> for anyhow::Result<T> {
    fn with_context_logs(self, agent: &AgentProcess) -> anyhow::Result<T> {
        self.map_err(|error| {
            error.context(format!("log of {}:\n{}", agent.worker_id, agent.logs()))
        })
    }
}

/// Closes the broker connection named `name` (an agent names its connection after its worker id), as a
/// network blip, a broker failover or the consumer timeout would.
fn close_broker_connection(name: &str) -> anyhow::Result<()> {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let pid = listing
        .lines()
        .find(|line| line.contains(&needle))
        .and_then(|line| line.split_whitespace().next())
        .with_context(|| format!("no broker connection named {name}:\n{listing}"))?;
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pid, "closed by a test"])
        .status()?;
    anyhow::ensure!(status.success(), "rabbitmqctl close_connection failed");
    Ok(())
}

#[tokio::test]
async fn a_task_whose_holder_loses_its_broker_connection_is_not_run_a_second_time_beside_it()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let suffix = &env.prefix[5..13];
    let mut first = AgentProcess::spawn(&env, &format!("lease-a-{suffix}"), &[])?;
    let mut second = AgentProcess::spawn(&env, &format!("lease-b-{suffix}"), &[])?;
    first.wait_registered(&env).await?;
    second.wait_registered(&env).await?;
    let id = env.create_task("ticks=16 tick_ms=250", 20).await?;
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::InProgress
    })
    .await?;
    let holder_id = holder(&env, &[&first, &second], id).await?;
    let (holder, other) = if holder_id == first.worker_id {
        (&first, &second)
    } else {
        (&second, &first)
    };

    close_broker_connection(&holder.worker_id)?;
    let record = env
        .wait_record(id, Duration::from_secs(30), |r| r.status.is_terminal())
        .await
        .with_context_logs(holder)?;

    assert_eq!(record.status, Status::Completed, "{:?}", record.error);
    assert_eq!(
        env.runs(id).await?,
        1,
        "the task ran once, on its holder; logs:\n{}\n{}",
        holder.logs(),
        other.logs()
    );
    let summary = record.result.map(|r| r.summary).unwrap_or_default();
    assert_eq!(summary, format!("done by {}", holder.worker_id));
    env.wait_ready(&env.topology.queue, 0).await?;
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    first.kill9().await?;
    second.kill9().await?;
    env.cleanup().await
}
