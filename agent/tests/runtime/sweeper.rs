//! The dead-letter sweeper against the real broker and Redis: a message the broker really dead-letters
//! (every delivery given back, as when each worker dies) ends its task `failed` once, with the reason.

use crate::helpers::{TestEnv, poll, rabbitmq_url};
use agent::sweeper::Sweeper;
use anyhow::Result;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use shared::Status;
use shared::store::Transition;
use shared::task::TaskResult;
use std::time::Duration;

fn sweeper(env: &TestEnv, worker_ttl: Duration) -> Sweeper {
    Sweeper {
        redis: env.redis.clone(),
        keys: env.keys.clone(),
        rabbitmq_url: rabbitmq_url().into(),
        dead_letter_queue: env.topology.dead_letter_queue(),
        worker_ttl,
        task_ttl_seconds: 3_600,
        worker_id: "sweeper-test".to_owned(),
    }
}

/// Gives every delivery of the task queue back until the broker dead-letters the message, as it does
/// when each worker holding it dies.
async fn exhaust_deliveries(env: &TestEnv) -> Result<()> {
    let queue = env.topology.queue.clone();
    let dlq = env.topology.dead_letter_queue();
    poll(Duration::from_secs(20), || async {
        if let Some(message) = env
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?
        {
            message
                .delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok((env.ready(&dlq).await? == 1).then_some(()))
    })
    .await
}

async fn publish_to_dlq(env: &TestEnv, body: &[u8]) -> Result<()> {
    env.channel
        .basic_publish(
            "".into(),
            env.topology.dead_letter_queue().as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_task_whose_every_delivery_died_is_failed_by_the_sweeper_once_and_refunded() -> Result<()>
{
    let env = TestEnv::new(1).await?;
    let id = env.create_task("every worker dies", 10).await?;
    env.advance(id, &[Transition::to(Status::Accepted).counting_attempt()])
        .await?;
    assert_eq!(env.quota_used().await?, 10);
    exhaust_deliveries(&env).await?;
    let dlq = env.topology.dead_letter_queue();

    let report = sweeper(&env, Duration::ZERO).sweep_now().await?;

    assert_eq!(report.failed, vec![id], "{report:?}");
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    let error = record.error.unwrap_or_default();
    assert!(error.contains("dead-lettered (delivery_limit)"), "{error}");
    assert_eq!(env.quota_used().await?, 0, "the unused ticks are refunded");
    assert_eq!(env.ready(&dlq).await?, 1, "the DLQ still holds the message");

    let again = sweeper(&env, Duration::ZERO).sweep_now().await?;
    assert!(again.failed.is_empty(), "{again:?}");
    assert_eq!(env.record(id).await?.status, Status::Failed);
    assert_eq!(env.quota_used().await?, 0, "refunded once, not twice");
    assert_eq!(env.ready(&dlq).await?, 1);
    env.cleanup().await
}

#[tokio::test]
async fn the_sweeper_leaves_poison_finished_and_recently_active_tasks_alone() -> Result<()> {
    let env = TestEnv::new(3).await?;
    let accepted = Transition::to(Status::Accepted).counting_attempt();

    let finished = env.store_task("already done", 5).await?;
    let result = TaskResult {
        success: true,
        summary: "done".into(),
        deliverables: vec![],
        sources: vec![],
        ticks_used: 2,
    };
    let done = Transition::to(Status::Completed)
        .with(shared::task::field::RESULT, serde_json::to_string(&result)?);
    env.advance(finished.correlation_id, &[accepted.clone(), done])
        .await?;

    let working = env.store_task("a live worker has it", 5).await?;
    let running = Transition::to(Status::InProgress).with(shared::task::field::TICK, "1");
    env.advance(working.correlation_id, &[accepted, running])
        .await?;

    publish_to_dlq(&env, b"{not a task").await?;
    publish_to_dlq(&env, &serde_json::to_vec(&finished)?).await?;
    publish_to_dlq(&env, &serde_json::to_vec(&working)?).await?;
    let dlq = env.topology.dead_letter_queue();
    env.wait_ready(&dlq, 3).await?;

    let report = sweeper(&env, Duration::from_secs(3_600))
        .sweep_now()
        .await?;

    assert_eq!(report.read, 3, "{report:?}");
    assert_eq!(report.poison, 1, "{report:?}");
    assert_eq!(report.recently_active, 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        env.record(finished.correlation_id).await?.status,
        Status::Completed
    );
    assert_eq!(
        env.record(working.correlation_id).await?.status,
        Status::InProgress
    );
    assert_eq!(env.ready(&dlq).await?, 3, "every message is given back");
    env.cleanup().await
}
