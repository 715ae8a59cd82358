//! Tests that restart a shared service: they break whatever runs beside them, so the lead's command runs
//! them alone (`cargo nextest run -p agent -E 'test(/disruptive/)' -j 1`).
//!
//! They restart the local broker with `rabbitmqctl stop_app` / `start_app`. To aim them at a private
//! node instead, set `AGENT_TEST_RABBITMQ_URL` (e.g. `amqp://guest:guest@127.0.0.1:5679/%2f`) and
//! `AGENT_TEST_RABBITMQ_NODE` (e.g. `agenttest@localhost`); every agent test then uses that broker.

use crate::app::start_agent;
use crate::helpers::{TestEnv, poll};
use shared::Status;
use std::time::Duration;

fn rabbitmqctl(command: &str) -> anyhow::Result<()> {
    let mut rabbitmqctl = std::process::Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var("AGENT_TEST_RABBITMQ_NODE") {
        rabbitmqctl.arg("-n").arg(node);
    }
    let status = rabbitmqctl
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "rabbitmqctl {command} failed: {status}");
    Ok(())
}

/// Waits until the broker accepts AMQP connections again.
async fn wait_broker_up() -> anyhow::Result<()> {
    poll(Duration::from_secs(60), || async {
        let up = lapin::Connection::connect(
            &crate::helpers::rabbitmq_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .is_ok();
        Ok(up.then_some(()))
    })
    .await
}

#[tokio::test]
async fn an_idle_agent_reconnects_after_rabbitmq_restarts_and_takes_the_next_task()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let agent = start_agent(&env, &[]).await?;
    poll(Duration::from_secs(5), || async {
        Ok((agent.health().await?["components"]["rabbitmq"] == true).then_some(()))
    })
    .await?;

    rabbitmqctl("stop_app")?;
    let down = poll(Duration::from_secs(10), || async {
        Ok((agent.health().await?["components"]["rabbitmq"] == false).then_some(()))
    })
    .await;
    rabbitmqctl("start_app")?;
    wait_broker_up().await?;
    down?;

    let env = env.reconnect().await?;
    let id = env.create_task("ticks=2 tick_ms=50", 4).await?;
    let record = env
        .wait_record(id, Duration::from_secs(60), |r| r.status.is_terminal())
        .await?;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(agent.health().await?["components"]["rabbitmq"], true);
    agent.shutdown().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_task_in_hand_survives_a_rabbitmq_restart_and_completes_once() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let agent = start_agent(&env, &[]).await?;
    let id = env.create_task("ticks=30 tick_ms=250", 40).await?;
    env.wait_record(id, Duration::from_secs(10), |r| {
        r.status == Status::InProgress
    })
    .await?;

    rabbitmqctl("stop_app")?;
    rabbitmqctl("start_app")?;
    wait_broker_up().await?;
    let env = env.reconnect().await?;
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
        "the task kept running through the restart"
    );
    poll(Duration::from_secs(30), || async {
        Ok((env.ready(&env.topology.queue).await? == 0
            && agent.health().await?["tasks_in_hand"] == 0)
            .then_some(()))
    })
    .await?;
    assert_eq!(env.quota_used().await?, 30);
    agent.shutdown().await?;
    env.cleanup().await
}
