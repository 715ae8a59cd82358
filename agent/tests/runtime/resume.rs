//! Durable ticks: a redelivered task resumes after its last stored tick, with the state it had.

use crate::helpers::{FnExecutor, TestEnv, give_back, result};
use crate::steer::progress;
use agent::worker::{Handled, Stopping};
use agent::{Resume, TaskContext, TickReporter};
use shared::Status;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Runs a first delivery of task `id` that records `ticks` ticks and then stalls, and drops it as a dying
/// worker would: the broker then redelivers the message.
async fn first_delivery_dies_after(env: &TestEnv, id: Uuid, ticks: u32) -> anyhow::Result<()> {
    let executor = FnExecutor(move |_task, reporter: TickReporter, _cancel| async move {
        for tick in 1..=ticks {
            reporter.report(tick);
            reporter.record(progress(tick, &[&format!("deliverable {tick}")]));
        }
        std::future::pending::<()>().await;
        Ok(result(ticks))
    });
    let worker = env.worker(executor, Stopping::default());
    let delivery = env.next_delivery().await?;
    let acker = delivery.acker.clone();
    let running = tokio::spawn(async move { worker.try_execute_task(delivery).await });
    env.wait_record(id, Duration::from_secs(5), |r| r.tick == ticks)
        .await?;
    running.abort();
    // The worker is gone without answering; its connection closing gives the message back.
    give_back(&acker).await?;
    Ok(())
}

/// An executor that records what it was resumed from and runs to `max_ticks`.
fn finishing(seen: Arc<Mutex<Option<Option<Resume>>>>) -> impl agent::TaskExecutor {
    FnExecutor(move |task: TaskContext, reporter: TickReporter, _cancel| {
        let seen = Arc::clone(&seen);
        async move {
            *seen.lock().unwrap() = Some(task.resume.clone());
            let from = task.resume.as_ref().map_or(0, |r| r.tick);
            for tick in from + 1..=task.message.max_ticks {
                reporter.report(tick);
                reporter.record(progress(tick, &["late"]));
            }
            Ok(result(task.message.max_ticks))
        }
    })
}

#[tokio::test]
async fn a_redelivered_task_resumes_after_its_last_stored_tick_with_its_state() -> anyhow::Result<()>
{
    let env = TestEnv::new(3).await?;
    let id = env.create_task("resumable", 5).await?;
    first_delivery_dies_after(&env, id, 3).await?;
    let checkpoint: String = redis::cmd("GET")
        .arg(env.keys.task_state(id))
        .query_async(&mut env.redis.clone())
        .await?;
    assert!(checkpoint.contains("after tick 3"), "{checkpoint}");

    let seen = Arc::new(Mutex::new(None));
    let worker = env.worker(finishing(Arc::clone(&seen)), Stopping::default());
    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    let resume = seen.lock().unwrap().clone().flatten().expect("resumed");
    assert_eq!(resume.tick, 3);
    assert_eq!(resume.usage.model_calls, 3);
    assert_eq!(
        resume.state,
        Some(serde_json::json!({"notes": ["after tick 3"]}))
    );
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.tick, 5);
    assert_eq!(record.attempts, 2);
    assert_eq!(
        env.quota_used().await?,
        5,
        "charged the 5 ticks run across both deliveries"
    );
    let left: Option<String> = redis::cmd("GET")
        .arg(env.keys.task_state(id))
        .query_async(&mut env.redis.clone())
        .await?;
    assert_eq!(left, None, "a finished task keeps no checkpoint");
    env.cleanup().await
}

#[tokio::test]
async fn an_unreadable_checkpoint_is_logged_and_the_task_resumes_from_its_record()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("damaged", 6).await?;
    first_delivery_dies_after(&env, id, 2).await?;
    redis::cmd("SET")
        .arg(env.keys.task_state(id))
        .arg(r#"{"version":9,"tick":2}"#)
        .query_async::<()>(&mut env.redis.clone())
        .await?;

    let seen = Arc::new(Mutex::new(None));
    let worker = env.worker(finishing(Arc::clone(&seen)), Stopping::default());
    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Completed);
    let resume = seen.lock().unwrap().clone().flatten().expect("resumed");
    assert_eq!((resume.tick, resume.state), (2, None));
    assert_eq!(env.record(id).await?.tick, 6);
    assert_eq!(env.quota_used().await?, 6);
    env.cleanup().await
}

#[tokio::test]
async fn a_task_cancelled_right_after_a_resume_keeps_what_its_earlier_run_gathered()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("cancel after resume", 8).await?;
    first_delivery_dies_after(&env, id, 2).await?;
    env.advance(
        id,
        &[shared::store::Transition::to(Status::InProgress)
            .with(shared::task::field::CANCEL_REQUESTED, "1")],
    )
    .await?;
    let worker = env.worker(
        FnExecutor(|_task, _ticks, _cancel| async { Ok(result(8)) }),
        Stopping::default(),
    );

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Cancelled);
    let kept = env.record(id).await?.result.unwrap();
    assert_eq!(kept.ticks_used, 2);
    assert_eq!(kept.deliverables, ["deliverable 2"]);
    assert_eq!(env.quota_used().await?, 2);
    env.cleanup().await
}

/// An executor that records a tick every 100 ms and never finishes.
fn endless() -> impl agent::TaskExecutor {
    FnExecutor(
        |task: TaskContext, reporter: TickReporter, _cancel| async move {
            let from = task.resume.as_ref().map_or(0, |r| r.tick);
            for tick in from + 1.. {
                tokio::time::sleep(Duration::from_millis(100)).await;
                reporter.report(tick);
                reporter.record(progress(tick, &[&format!("deliverable {tick}")]));
            }
            Ok(result(0))
        },
    )
}

#[tokio::test]
async fn a_task_running_past_its_time_limit_across_deliveries_is_stopped_and_failed_with_a_refund()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("endless", 100).await?;
    let limit = Duration::from_millis(1_500);
    // The first delivery runs about a second, then its worker dies.
    let first = env.worker_with(endless(), Stopping::default(), limit);
    let delivery = env.next_delivery().await?;
    let acker = delivery.acker.clone();
    let running = tokio::spawn(async move { first.try_execute_task(delivery).await });
    env.wait_record(id, Duration::from_secs(5), |r| r.tick >= 9)
        .await?;
    running.abort();
    give_back(&acker).await?;

    let second = env.worker_with(endless(), Stopping::default(), limit);
    let started = std::time::Instant::now();
    let handled = second.try_execute_task(env.next_delivery().await?).await;
    let took = started.elapsed();

    let Handled::Failed(error) = handled else {
        panic!("expected a failure, got {handled:?}");
    };
    assert!(error.contains("time limit of 1 s"), "{error}");
    assert!(
        took < Duration::from_millis(2_200),
        "the second delivery only had what the first left of the limit (it took {took:?}, a lease \
         hold of about a second included)"
    );
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Failed);
    let ticks = i64::from(record.tick);
    assert!(
        (12..=17).contains(&ticks),
        "ran about 1.5 s of ticks: {ticks}"
    );
    assert_eq!(env.quota_used().await?, ticks, "charged the ticks run");
    env.cleanup().await
}
