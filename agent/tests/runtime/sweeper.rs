//! The dead-letter sweeper against the real broker and Redis: a message the broker really dead-letters
//! (every delivery given back, as when each worker dies) ends its task `failed` once, with the reason, and
//! every dead letter the sweeper is done with moves from the DLQ into the parking queue, however long the
//! DLQ is.

use crate::helpers::{TestEnv, give_back, poll, rabbitmq_url};
use agent::sweeper::Sweeper;
use anyhow::{Context, Result};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use shared::Status;
use shared::store::Transition;
use shared::task::{TaskMessage, TaskResult, field};
use std::time::Duration;

fn sweeper(env: &TestEnv, worker_ttl: Duration) -> Sweeper {
    Sweeper {
        redis: env.redis.clone(),
        keys: env.keys.clone(),
        rabbitmq_url: rabbitmq_url().into(),
        tls: shared::tls::Tls::default(),
        dead_letter_queue: env.topology.dead_letter_queue(),
        worker_ttl,
        task_ttl_seconds: 3_600,
        worker_id: "sweeper-test".to_owned(),
    }
}

/// Gives every delivery of the task queue back until the broker dead-letters the message, as it does
/// when each worker holding it dies, and the DLQ holds `dlq_depth` messages.
async fn exhaust_deliveries(env: &TestEnv, dlq_depth: u32) -> Result<()> {
    let queue = env.topology.queue.clone();
    let dlq = env.topology.dead_letter_queue();
    poll(Duration::from_secs(20), || async {
        if let Some(message) = env
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?
        {
            give_back(&message.delivery).await?;
        }
        Ok((env.ready(&dlq).await? == dlq_depth).then_some(()))
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

/// A task stored, taken by a worker and completed.
async fn finished_task(env: &TestEnv) -> Result<TaskMessage> {
    let finished = env.store_task("already done", 5).await?;
    let result = TaskResult {
        success: true,
        summary: "done".into(),
        deliverables: vec![],
        sources: vec![],
        ticks_used: 2,
    };
    let done =
        Transition::to(Status::Completed).with(field::RESULT, serde_json::to_string(&result)?);
    env.advance(
        finished.correlation_id,
        &[Transition::to(Status::Accepted).counting_attempt(), done],
    )
    .await?;
    Ok(finished)
}

#[tokio::test]
async fn a_task_whose_every_delivery_died_is_failed_by_the_sweeper_once_and_refunded() -> Result<()>
{
    let env = TestEnv::new(1).await?;
    let id = env.create_task("every worker dies", 10).await?;
    // The deliveries ran three ticks between them before the last one died.
    env.advance(
        id,
        &[
            Transition::to(Status::Accepted).counting_attempt(),
            Transition::to(Status::InProgress).with(field::TICK, "3"),
        ],
    )
    .await?;
    assert_eq!(env.quota_used().await?, 10);
    exhaust_deliveries(&env, 1).await?;
    let dlq = env.topology.dead_letter_queue();
    let parked = env.topology.parked_queue();

    let report = sweeper(&env, Duration::ZERO).sweep_now().await?;

    assert_eq!(report.failed, vec![id], "{report:?}");
    assert_eq!((report.read, report.parked), (1, 1), "{report:?}");
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    let error = record.error.unwrap_or_default();
    assert!(error.contains("dead-lettered (delivery_limit)"), "{error}");
    assert_eq!(record.tick, 3);
    assert_eq!(
        env.quota_used().await?,
        3,
        "the seven ticks not run are refunded"
    );
    let active: Vec<String> = redis::cmd("ZRANGE")
        .arg(env.keys.user_active(crate::helpers::OWNER))
        .arg(0)
        .arg(-1)
        .query_async(&mut env.redis.clone())
        .await?;
    assert!(
        active.is_empty(),
        "the active-task cap is released: {active:?}"
    );
    assert_eq!(env.ready(&dlq).await?, 0, "the DLQ is emptied");
    assert_eq!(env.ready(&parked).await?, 1, "the parked queue holds it");

    let again = sweeper(&env, Duration::ZERO).sweep_now().await?;
    assert!(again.failed.is_empty(), "{again:?}");
    assert_eq!(again.read, 0, "nothing is left to read: {again:?}");
    assert_eq!(env.record(id).await?.status, Status::Failed);
    assert_eq!(env.quota_used().await?, 3, "refunded once, not twice");
    assert_eq!(env.ready(&dlq).await?, 0);
    assert_eq!(env.ready(&parked).await?, 1);

    // The parked copy is the dead letter as the broker dead-lettered it: body, ids and headers.
    let copy = env
        .channel
        .basic_get(parked.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .context("the parked queue is empty")?
        .delivery;
    let message: TaskMessage = serde_json::from_slice(&copy.data)?;
    assert_eq!(message.correlation_id, id);
    assert_eq!(
        copy.properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(id.to_string())
    );
    let headers = copy.properties.headers().clone().unwrap_or_default();
    assert!(
        matches!(
            headers.inner().get("x-death"),
            Some(AMQPValue::FieldArray(_))
        ),
        "{headers:?}"
    );
    assert_eq!(
        headers.inner().get(shared::queue::REQUEST_ID_HEADER),
        Some(&AMQPValue::LongString("req-test".into()))
    );
    env.cleanup().await
}

#[tokio::test]
async fn the_sweeper_leaves_poison_finished_and_recently_active_tasks_alone() -> Result<()> {
    let env = TestEnv::new(3).await?;
    let finished = finished_task(&env).await?;

    let working = env.store_task("a live worker has it", 5).await?;
    let running = Transition::to(Status::InProgress).with(field::TICK, "1");
    env.advance(
        working.correlation_id,
        &[Transition::to(Status::Accepted).counting_attempt(), running],
    )
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
    assert_eq!(report.finished, 1, "{report:?}");
    assert_eq!(report.recently_active, 1, "{report:?}");
    assert_eq!(report.parked, 2, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        env.record(finished.correlation_id).await?.status,
        Status::Completed
    );
    assert_eq!(
        env.record(working.correlation_id).await?.status,
        Status::InProgress
    );
    assert_eq!(
        env.ready(&dlq).await?,
        1,
        "the recently active task's message is given back"
    );
    assert_eq!(
        env.ready(&env.topology.parked_queue()).await?,
        2,
        "the poison and finished messages are parked"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_dead_letter_behind_fifteen_hundred_others_is_still_swept() -> Result<()> {
    let env = TestEnv::new(1).await?;
    let dlq = env.topology.dead_letter_queue();
    let finished = finished_task(&env).await?;
    let finished_body = serde_json::to_vec(&finished)?;
    // 1,499 dead letters nothing is to be done about: 1,490 poison, 9 of a finished task.
    for n in 0..1_499 {
        let body = if n % 166 == 165 {
            finished_body.clone()
        } else {
            format!("poison {n}").into_bytes()
        };
        env.channel
            .basic_publish(
                "".into(),
                dlq.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
    }
    env.wait_ready(&dlq, 1_499).await?;
    // Then the one that matters, dead-lettered by the broker last of all.
    let id = env
        .create_task("dead-lettered behind a backlog", 10)
        .await?;
    env.advance(
        id,
        &[
            Transition::to(Status::Accepted).counting_attempt(),
            Transition::to(Status::InProgress).with(field::TICK, "4"),
        ],
    )
    .await?;
    exhaust_deliveries(&env, 1_500).await?;

    let report = sweeper(&env, Duration::ZERO).sweep_now().await?;

    assert_eq!(report.failed, vec![id], "{report:?}");
    assert_eq!(report.read, 1_500, "{report:?}");
    assert_eq!(report.poison, 1_490, "{report:?}");
    assert_eq!(report.finished, 9, "{report:?}");
    assert_eq!(report.parked, 1_500, "{report:?}");
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(
        env.quota_used().await?,
        5 + 4,
        "the finished task's 5 ticks stay charged; 4 of the last task's 10 stay charged"
    );
    assert_eq!(env.ready(&dlq).await?, 0, "the DLQ is emptied");
    assert_eq!(env.ready(&env.topology.parked_queue()).await?, 1_500);
    env.cleanup().await
}

#[tokio::test]
async fn a_recently_active_tasks_dead_letter_waits_in_the_dlq_without_holding_up_those_behind_it()
-> Result<()> {
    const WORKER_TTL: Duration = Duration::from_secs(2);
    let env = TestEnv::new(3).await?;
    let dlq = env.topology.dead_letter_queue();
    let parked = env.topology.parked_queue();
    let accepted = Transition::to(Status::Accepted).counting_attempt();

    let active = env.store_task("a worker wrote it just now", 5).await?;
    env.advance(active.correlation_id, std::slice::from_ref(&accepted))
        .await?;
    let abandoned = env.store_task("its worker is long gone", 5).await?;
    env.advance(abandoned.correlation_id, &[accepted]).await?;
    let long_ago = shared::task::rfc3339(chrono::Utc::now() - chrono::Duration::hours(1));
    redis::cmd("HSET")
        .arg(env.keys.task(abandoned.correlation_id))
        .arg(field::UPDATED_AT)
        .arg(long_ago)
        .query_async::<()>(&mut env.redis.clone())
        .await?;

    // The recently active task's message is at the head; the others are behind it.
    publish_to_dlq(&env, &serde_json::to_vec(&active)?).await?;
    publish_to_dlq(&env, b"not a task").await?;
    publish_to_dlq(&env, &serde_json::to_vec(&abandoned)?).await?;
    env.wait_ready(&dlq, 3).await?;

    let first = sweeper(&env, WORKER_TTL).sweep_now().await?;

    assert_eq!(first.read, 3, "each message is read once: {first:?}");
    assert_eq!(first.recently_active, 1, "{first:?}");
    assert_eq!(first.failed, vec![abandoned.correlation_id], "{first:?}");
    assert_eq!((first.poison, first.parked), (1, 2), "{first:?}");
    assert_eq!(
        env.record(active.correlation_id).await?.status,
        Status::Accepted
    );
    assert_eq!(
        env.record(abandoned.correlation_id).await?.status,
        Status::Failed
    );
    assert_eq!(env.ready(&dlq).await?, 1, "the active task's message waits");
    assert_eq!(env.ready(&parked).await?, 2);

    // No worker writes the task any more: once the worker TTL has passed, the next sweep fails it.
    tokio::time::sleep(WORKER_TTL).await;
    let later = sweeper(&env, WORKER_TTL).sweep_now().await?;

    assert_eq!(later.read, 1, "{later:?}");
    assert_eq!(later.failed, vec![active.correlation_id], "{later:?}");
    assert_eq!(later.parked, 1, "{later:?}");
    assert_eq!(
        env.record(active.correlation_id).await?.status,
        Status::Failed
    );
    assert_eq!(env.quota_used().await?, 0, "both tasks' ticks are refunded");
    assert_eq!(env.ready(&dlq).await?, 0);
    assert_eq!(env.ready(&parked).await?, 3);
    env.cleanup().await
}
