//! The worker driven one delivery at a time (`try_execute_task`) against the real Redis and RabbitMQ.

use crate::helpers::{FnExecutor, TestEnv, give_back, poll, result};
use agent::executor::ExecutionError;
use agent::worker::{Handled, Stopping};
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use shared::Status;
use shared::store::{Transition, transition};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// What an executor that refuses every task says.
const REFUSED: &str = "refused before the first tick";
/// The header in which quorum queues count earlier deliveries of a message: the broker sets it on a
/// redelivery, but on a first delivery it holds whatever the publisher wrote, so the worker never reads it.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// An executor that fails every task at once, fatally, before its first tick.
struct Refusing;

impl agent::TaskExecutor for Refusing {
    async fn execute(
        &self,
        _task: agent::TaskContext,
        _ticks: agent::TickReporter,
        _cancel: tokio_util::sync::CancellationToken,
    ) -> Result<shared::task::TaskResult, ExecutionError> {
        Err(ExecutionError::Fatal(REFUSED.to_owned()))
    }
}

#[tokio::test]
async fn a_task_is_accepted_then_in_progress_on_its_first_tick_then_completed_with_a_refund()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("anything", 10).await?;
    let seen_in_progress = Arc::new(AtomicU32::new(0));
    let keys = env.keys.clone();
    let redis = env.redis.clone();
    let seen = Arc::clone(&seen_in_progress);
    let executor = FnExecutor(
        move |task: agent::TaskContext, ticks: agent::TickReporter, _| {
            let keys = keys.clone();
            let redis = redis.clone();
            let seen = Arc::clone(&seen);
            async move {
                assert_eq!(task.request_id.as_deref(), Some("req-test"));
                assert_eq!(task.delivery, 1);
                let status = |redis: redis::aio::ConnectionManager| {
                    let key = keys.task(task.id);
                    async move {
                        let mut conn = redis;
                        let status: String = redis::cmd("HGET")
                            .arg(key)
                            .arg("status")
                            .query_async(&mut conn)
                            .await?;
                        anyhow::Ok(status)
                    }
                };
                assert_eq!(status(redis.clone()).await.unwrap(), "accepted");
                ticks.report(1);
                poll(Duration::from_secs(2), || async {
                    Ok((status(redis.clone()).await? == "in_progress").then_some(()))
                })
                .await
                .unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                ticks.report(3);
                Ok(result(3))
            }
        },
    );
    let worker = env.worker(executor, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    assert_eq!(seen_in_progress.load(Ordering::SeqCst), 1);
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.result, Some(result(3)));
    assert_eq!(record.tick, 3);
    assert_eq!(record.attempts, 1);
    assert!(record.refunded);
    assert_eq!(
        env.quota_used().await?,
        3,
        "7 of the 10 ticks charged are refunded"
    );
    assert_eq!(
        env.ready(&env.topology.queue).await?,
        0,
        "the message was acked"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_message_that_does_not_parse_is_rejected_into_the_dead_letter_queue() -> anyhow::Result<()>
{
    let env = TestEnv::new(3).await?;
    env.publish_raw(b"{not json").await?;
    let worker = env.worker(Refusing, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert!(matches!(handled, Handled::Rejected(_)), "{handled:?}");
    env.wait_ready(&env.topology.dead_letter_queue(), 1).await?;
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_message_whose_task_record_is_missing_goes_to_the_dead_letter_queue() -> anyhow::Result<()>
{
    let env = TestEnv::new(3).await?;
    let message = env.store_task("ticks=1", 5).await?;
    let mut conn = env.redis.clone();
    redis::cmd("DEL")
        .arg(env.keys.task(message.correlation_id))
        .query_async::<()>(&mut conn)
        .await?;
    env.publish(&message).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert!(matches!(handled, Handled::Rejected(_)), "{handled:?}");
    env.wait_ready(&env.topology.dead_letter_queue(), 1).await?;
    assert_eq!(env.runs(message.correlation_id).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_redelivered_terminal_task_is_acked_without_running_again() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("ticks=2", 5).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());
    assert_eq!(
        worker.try_execute_task(env.next_delivery().await?).await,
        Handled::Completed
    );
    let message = shared::task::TaskMessage {
        correlation_id: id,
        mandate: "ticks=2".into(),
        max_ticks: 5,
        owner: crate::helpers::OWNER.into(),
        created_at: chrono::Utc::now(),
    };
    env.publish(&message).await?;

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::AlreadyTerminal(Status::Completed));
    assert_eq!(env.runs(id).await?, 1, "the task ran once");
    assert_eq!(
        env.quota_used().await?,
        2,
        "refunded once: 5 charged, 3 back"
    );
    assert_eq!(
        env.ready(&env.topology.queue).await?,
        0,
        "the redelivery was acked"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_fatal_failure_ends_failed_and_refunds_the_unused_ticks() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("ticks=2 fail=fatal", 8).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Failed("scripted fatal failure".into()));
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.error.as_deref(), Some("scripted fatal failure"));
    assert_eq!(record.tick, 2);
    assert_eq!(env.quota_used().await?, 2);
    env.cleanup().await
}

#[tokio::test]
async fn a_task_that_fails_fatally_before_its_first_tick_is_failed_with_all_ticks_refunded()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("find things", 6).await?;
    let worker = env.worker(Refusing, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Failed(REFUSED.into()));
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.error.as_deref(), Some(REFUSED));
    assert_eq!(
        env.quota_used().await?,
        0,
        "a task failing before its first tick refunds all"
    );
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_retryable_failure_is_requeued_and_fails_the_task_on_its_last_delivery()
-> anyhow::Result<()> {
    let env = TestEnv::new(2).await?;
    let id = env.create_task("ticks=1 fail=retryable", 4).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let first = worker.try_execute_task(env.next_delivery().await?).await;
    let second = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(
        first,
        Handled::Requeued("scripted retryable failure".into())
    );
    let Handled::Failed(error) = second else {
        panic!("the last delivery must fail the task, got {second:?}");
    };
    assert!(error.starts_with("gave up after 2 deliveries"), "{error}");
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.attempts, 2);
    assert_eq!(env.quota_used().await?, 1);
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_task_whose_workers_keep_dying_ends_failed_once_its_deliveries_are_exhausted()
-> anyhow::Result<()> {
    let env = TestEnv::new(2).await?;
    let id = env.create_task("ticks=1", 4).await?;
    // Two workers take the task (the take counts the delivery in the record) and die holding the
    // message: the broker gets it back twice without an answer.
    for _ in 0..2 {
        let delivery = env.next_delivery().await?;
        env.advance(id, &[Transition::to(Status::Accepted).counting_attempt()])
            .await?;
        give_back(&delivery.acker).await?;
    }
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    let Handled::Failed(error) = handled else {
        panic!("expected failed, got {handled:?}");
    };
    assert!(error.starts_with("gave up after 2 deliveries"), "{error}");
    assert_eq!(env.runs(id).await?, 0, "the last delivery is not run");
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(env.quota_used().await?, 0);
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn deliveries_no_worker_recorded_do_not_count_against_the_task() -> anyhow::Result<()> {
    let env = TestEnv::new(2).await?;
    let id = env.create_task("ticks=1", 4).await?;
    // Two deliveries end before any worker stored its take (the broker counts them, the record does not).
    for _ in 0..2 {
        let delivery = env.next_delivery().await?;
        give_back(&delivery.acker).await?;
    }
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    // The broker's last delivery: the record counts it as the first, so the task runs (had this worker
    // died too, the broker would dead-letter the message and the sweeper end the task).
    assert_eq!(handled, Handled::Completed);
    assert_eq!(env.runs(id).await?, 1);
    let record = env.record(id).await?;
    assert_eq!((record.status, record.attempts), (Status::Completed, 1));
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_task_left_in_progress_by_a_dead_worker_is_taken_again_and_completes()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("ticks=2", 5).await?;
    env.advance(
        id,
        &[
            Transition::to(Status::Accepted).counting_attempt(),
            Transition::to(Status::InProgress).with("tick", "1"),
        ],
    )
    .await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.attempts, 2);
    env.cleanup().await
}

#[tokio::test]
async fn a_task_still_running_when_the_grace_period_ends_is_requeued() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("ticks=100 tick_ms=100", 100).await?;
    let stopping = Stopping::default();
    let worker = env.worker(env.scripted("w").await?, stopping.clone());
    let delivery = env.next_delivery().await?;
    let running = tokio::spawn(async move { worker.try_execute_task(delivery).await });
    env.wait_record(id, Duration::from_secs(5), |r| {
        r.status == Status::InProgress
    })
    .await?;

    stopping.draining.cancel();
    stopping.grace_expired.cancel();
    let handled = tokio::time::timeout(Duration::from_secs(5), running).await??;

    assert!(matches!(handled, Handled::Requeued(_)), "{handled:?}");
    env.wait_ready(&env.topology.queue, 1).await?;
    assert_eq!(env.record(id).await?.status, Status::InProgress);
    env.cleanup().await
}

#[tokio::test]
async fn a_heartbeat_that_finds_the_task_finished_elsewhere_stops_the_run() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("ticks=100 tick_ms=50", 100).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());
    let delivery = env.next_delivery().await?;
    let running = tokio::spawn(async move { worker.try_execute_task(delivery).await });
    env.wait_record(id, Duration::from_secs(5), |r| {
        r.status == Status::InProgress
    })
    .await?;

    let mut conn = env.redis.clone();
    let failed = Transition::fail("finished by another worker", 0);
    transition(&mut conn, &env.keys, id, &failed, chrono::Utc::now(), 600).await?;
    let handled = tokio::time::timeout(Duration::from_secs(5), running).await??;

    assert_eq!(handled, Handled::AlreadyTerminal(Status::Failed));
    assert_eq!(env.ready(&env.topology.queue).await?, 0, "acked");
    env.cleanup().await
}

#[tokio::test]
async fn a_delivery_that_arrives_while_draining_is_given_back_without_running() -> anyhow::Result<()>
{
    let env = TestEnv::new(3).await?;
    let id = env.create_task("ticks=1", 3).await?;
    let stopping = Stopping::default();
    let worker = env.worker(env.scripted("w").await?, stopping.clone());
    stopping.draining.cancel();

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert!(matches!(handled, Handled::Requeued(_)), "{handled:?}");
    assert_eq!(env.runs(id).await?, 0);
    assert_eq!(env.record(id).await?.status, Status::Pending);
    env.wait_ready(&env.topology.queue, 1).await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_message_and_record_from_a_newer_release_run_instead_of_being_dead_lettered()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let message = env.store_task("ticks=2", 5).await?;
    let id = message.correlation_id;
    redis::cmd("HSET")
        .arg(env.keys.task(id))
        .arg("priority")
        .arg("high")
        .query_async::<()>(&mut env.redis.clone())
        .await?;
    let mut body = serde_json::to_value(&message)?;
    body["priority"] = "high".into();
    body["trace"] = serde_json::json!({"parent": "00-abc-def-01"});
    env.publish_raw(&serde_json::to_vec(&body)?).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    let record = env.record(id).await?;
    assert_eq!((record.status, record.tick), (Status::Completed, 2));
    assert_eq!(env.quota_used().await?, 2);
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    let kept: Option<String> = redis::cmd("HGET")
        .arg(env.keys.task(id))
        .arg("priority")
        .query_async(&mut env.redis.clone())
        .await?;
    assert_eq!(
        kept.as_deref(),
        Some("high"),
        "fields it does not know are left alone"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_record_from_an_older_release_without_the_newer_fields_runs_and_is_refunded()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let message = env.store_task("ticks=2", 5).await?;
    let id = message.correlation_id;
    redis::cmd("HDEL")
        .arg(env.keys.task(id))
        .arg(shared::task::field::USAGE)
        .arg(shared::task::field::ACTIVE_KEY)
        .arg(shared::task::field::CANCEL_REQUESTED)
        .query_async::<()>(&mut env.redis.clone())
        .await?;
    env.publish(&message).await?;
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    let record = env.record(id).await?;
    assert_eq!((record.status, record.tick), (Status::Completed, 2));
    assert_eq!(
        env.quota_used().await?,
        2,
        "the three ticks not run are refunded"
    );
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_forged_delivery_count_on_a_first_delivery_neither_fails_the_task_nor_runs_it_twice()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let message = env.store_task("ticks=2", 5).await?;
    let id = message.correlation_id;
    // Read as the broker's count, a header of `MAX_DELIVERIES` would make this the delivery after the
    // last one, and the task would be failed without running.
    let forged = i64::from(env.topology.max_deliveries);
    let properties = shared::queue::message_properties(id, &shared::queue::Origin::default());
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(forged));
    env.channel
        .basic_publish(
            env.topology.input_exchange().as_str().into(),
            env.topology.queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &serde_json::to_vec(&message)?,
            properties.with_headers(headers),
        )
        .await?
        .await?;
    let mut delivery = env.next_delivery().await?;
    assert!(!delivery.redelivered);
    // Whether the publisher's header reaches the consumer depends on the broker's version (RabbitMQ 3.10
    // resets it to 0 on a quorum queue's first delivery; releases that only set it from the first
    // redelivery on hand the publisher's value over): the worker is handed the forged value either way.
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(forged));
    delivery.properties = delivery.properties.clone().with_headers(headers);
    let worker = env.worker(env.scripted("w").await?, Stopping::default());

    let handled = worker.try_execute_task(delivery).await;

    assert_eq!(handled, Handled::Completed);
    assert_eq!(env.runs(id).await?, 1, "run exactly once");
    let record = env.record(id).await?;
    assert_eq!((record.status, record.tick), (Status::Completed, 2));
    assert_eq!(record.attempts, 1, "the record counts one delivery");
    let events: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(env.keys.task_events(id))
        .arg("-")
        .arg("+")
        .query_async(&mut env.redis.clone())
        .await?;
    let accepted: Vec<serde_json::Value> = events
        .iter()
        .filter(|(_, fields)| fields.get("type").map(String::as_str) == Some("accepted"))
        .map(|(_, fields)| serde_json::from_str(&fields["data"]))
        .collect::<Result<_, _>>()?;
    assert_eq!(accepted, [serde_json::json!({"attempt": 1})]);
    assert_eq!(
        env.quota_used().await?,
        2,
        "the three ticks not run are refunded"
    );
    assert_eq!(env.ready(&env.topology.queue).await?, 0, "acked");
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    env.cleanup().await
}
