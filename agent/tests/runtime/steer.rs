//! The worker under its owner's steering: ticks stored with their events, cancels (queued, running, racing
//! the completion), deletes.

use crate::helpers::{FnExecutor, TestEnv, poll, result};
use agent::Progress;
use agent::worker::{CANCEL_POLL, Handled, Stopping};
use shared::Status;
use shared::api::{CancellingEvent, MemoryEvent, TickEvent, Usage};
use shared::store::{Transition, transition};
use shared::task::field;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The task's event log: (kind, data) in order.
async fn events(env: &TestEnv, id: Uuid) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(env.keys.task_events(id))
        .arg("-")
        .arg("+")
        .query_async(&mut env.redis.clone())
        .await?;
    Ok(entries
        .into_iter()
        .map(|(_, fields)| {
            (
                fields["type"].clone(),
                serde_json::from_str(&fields["data"]).unwrap_or_default(),
            )
        })
        .collect())
}

fn kinds(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

/// What the gateway does when the owner cancels a running task.
async fn request_cancel(env: &TestEnv, id: Uuid) -> anyhow::Result<()> {
    redis::pipe()
        .hset(env.keys.task(id), field::CANCEL_REQUESTED, "1")
        .xadd(
            env.keys.task_events(id),
            "*",
            &[
                ("type", "cancelling"),
                ("data", &serde_json::to_string(&CancellingEvent::default())?),
            ],
        )
        .query_async::<()>(&mut env.redis.clone())
        .await?;
    Ok(())
}

pub fn progress(tick: u32, deliverables: &[&str]) -> Progress {
    Progress {
        event: TickEvent {
            tick,
            action: "THINK".into(),
            observation: format!("thought {tick}"),
            model_ms: 3,
            tokens_in: 40,
            tokens_out: 8,
            usage: Usage {
                model_calls: tick,
                prompt_tokens: 40 * u64::from(tick),
                completion_tokens: 8 * u64::from(tick),
                ..Usage::default()
            },
            ..TickEvent::default()
        },
        memory: (tick == 1).then_some(MemoryEvent {
            tick,
            writes: 2,
            queries: 1,
        }),
        deliverables: deliverables.iter().map(|d| d.to_string()).collect(),
        sources: Vec::new(),
        state: Some(serde_json::json!({"notes": [format!("after tick {tick}")]})),
    }
}

#[tokio::test]
async fn each_recorded_tick_is_stored_with_its_usage_and_events_before_the_terminal_one()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("three ticks", 10).await?;
    let executor = FnExecutor(|_task, ticks: agent::TickReporter, _cancel| async move {
        for tick in 1..=3 {
            ticks.report(tick);
            ticks.record(progress(tick, &["d"]));
        }
        ticks.usage(Usage {
            model_calls: 4,
            prompt_tokens: 200,
            completion_tokens: 30,
            ..Usage::default()
        });
        Ok(result(3))
    });
    let worker = env.worker(executor, Stopping::default());

    assert_eq!(
        worker.try_execute_task(env.next_delivery().await?).await,
        Handled::Completed
    );
    let log = events(&env, id).await?;
    assert_eq!(
        kinds(&log),
        ["accepted", "memory", "tick", "tick", "tick", "completed"]
    );
    assert_eq!(log[1].1["writes"], 2);
    assert_eq!(log[2].1["tick"], 1);
    assert_eq!(log[4].1["usage"]["prompt_tokens"], 120);
    let record = env.record(id).await?;
    assert_eq!(record.usage.model_calls, 4, "the synthesis call counted");
    assert_eq!(record.usage.completion_tokens, 30);
    assert_eq!(log[5].1["usage"], serde_json::to_string(&record.usage)?);
    env.cleanup().await
}

#[tokio::test]
async fn a_task_cancelled_while_queued_is_acked_without_running() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("never runs", 5).await?;
    // What the gateway does for a queued task.
    env.advance(id, &[Transition::to(Status::Cancelled).refunding(0)])
        .await?;
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let executor = FnExecutor(move |_task, _ticks, _cancel| {
        flag.store(true, Ordering::SeqCst);
        async { Ok(result(1)) }
    });
    let worker = env.worker(executor, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::AlreadyTerminal(Status::Cancelled));
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(env.ready(&env.topology.queue).await?, 0, "acked");
    assert_eq!(env.quota_used().await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_running_task_stops_within_a_second_of_its_cancel_keeping_what_it_gathered()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("long", 10).await?;
    let model_call_aborted = Arc::new(AtomicBool::new(true));
    let aborted = Arc::clone(&model_call_aborted);
    let executor = FnExecutor(move |_task, ticks: agent::TickReporter, _cancel| {
        let aborted = Arc::clone(&aborted);
        async move {
            for tick in 1..=2 {
                ticks.report(tick);
                ticks.record(progress(tick, &["first half"]));
            }
            // A model call that would take a minute.
            tokio::time::sleep(Duration::from_secs(60)).await;
            aborted.store(false, Ordering::SeqCst);
            Ok(result(3))
        }
    });
    let worker = env.worker(executor, Stopping::default());
    let stop = CancellationToken::new();
    tokio::spawn(
        worker
            .clone()
            .watch_cancellations(CANCEL_POLL, stop.clone()),
    );
    let run = tokio::spawn({
        let worker = worker.clone();
        let delivery = env.next_delivery().await?;
        async move { worker.try_execute_task(delivery).await }
    });
    env.wait_record(id, Duration::from_secs(5), |r| r.tick == 2)
        .await?;

    let asked = Instant::now();
    request_cancel(&env, id).await?;
    let handled = run.await?;
    let took = asked.elapsed();
    stop.cancel();

    assert_eq!(handled, Handled::Cancelled);
    assert!(took < Duration::from_secs(1), "stopped after {took:?}");
    assert!(
        model_call_aborted.load(Ordering::SeqCst),
        "the call in flight is abandoned"
    );
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Cancelled);
    let kept = record.result.expect("a cancelled task keeps a result");
    assert!(!kept.success);
    assert_eq!(kept.deliverables, ["first half"]);
    assert_eq!(kept.ticks_used, 2);
    assert_eq!(env.quota_used().await?, 2, "8 of the 10 ticks refunded");
    assert_eq!(env.ready(&env.topology.queue).await?, 0, "acked");
    let log = events(&env, id).await?;
    assert_eq!(
        log.iter().filter(|(k, _)| k == "cancelled").count(),
        1,
        "{log:?}"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_task_whose_cancel_was_asked_before_a_redelivery_is_cancelled_without_running()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("taken then orphaned", 6).await?;
    // A worker took it, ran two ticks and died; then the owner cancelled it.
    env.advance(
        id,
        &[
            Transition::to(Status::Accepted).counting_attempt(),
            Transition::to(Status::InProgress).with(field::TICK, "2"),
        ],
    )
    .await?;
    request_cancel(&env, id).await?;
    let executor = FnExecutor(|_task, _ticks, _cancel| async { Ok(result(6)) });
    let worker = env.worker(executor, Stopping::default());

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Cancelled);
    let record = env.record(id).await?;
    assert_eq!(record.status, Status::Cancelled);
    assert_eq!(record.result.unwrap().ticks_used, 2);
    assert_eq!(
        env.quota_used().await?,
        2,
        "charged the ticks its first run used"
    );
    env.cleanup().await
}

/// Whichever of the completion and the cancel is stored first wins; the other changes nothing. Run many
/// times with the cancel landing at different moments around the completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_the_completion_has_one_winner_one_terminal_event_and_one_refund()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let mut outcomes = HashMap::new();
    for round in 0..40u64 {
        let id = env.create_task("race", 10).await?;
        let executor = FnExecutor(
            move |_task, ticks: agent::TickReporter, _cancel| async move {
                ticks.report(4);
                ticks.record(progress(4, &["partial"]));
                tokio::time::sleep(Duration::from_millis(round % 8 * 40)).await;
                Ok(result(4))
            },
        );
        let worker = env.worker(executor, Stopping::default());
        let stop = CancellationToken::new();
        tokio::spawn(
            worker
                .clone()
                .watch_cancellations(Duration::from_millis(5), stop.clone()),
        );
        let delivery = env.next_delivery().await?;
        let run = tokio::spawn(async move { worker.try_execute_task(delivery).await });
        env.wait_record(id, Duration::from_secs(5), |r| r.tick == 4)
            .await?;
        tokio::time::sleep(Duration::from_millis(140)).await;
        request_cancel(&env, id).await?;
        let handled = run.await?;
        stop.cancel();

        let record = env.record(id).await?;
        let log = events(&env, id).await?;
        let terminal: Vec<_> = log
            .iter()
            .filter(|(k, _)| ["completed", "failed", "cancelled"].contains(&k.as_str()))
            .collect();
        assert_eq!(terminal.len(), 1, "round {round}: {log:?}");
        assert_eq!(terminal[0].0, record.status.as_str(), "round {round}");
        match handled {
            Handled::Completed => assert_eq!(record.status, Status::Completed),
            Handled::Cancelled => assert_eq!(record.status, Status::Cancelled),
            other => panic!("round {round}: {other:?}"),
        }
        assert!(record.refunded);
        *outcomes.entry(record.status).or_insert(0) += 1;
    }
    assert_eq!(
        env.quota_used().await?,
        40 * 4,
        "each task charged exactly the ticks it ran: one refund each"
    );
    assert!(
        outcomes.len() == 2,
        "both outcomes should occur across the rounds: {outcomes:?}"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_task_deleted_while_it_runs_stops_is_acked_and_its_memory_is_forgotten()
-> anyhow::Result<()> {
    struct Forgetful {
        forgot: Arc<AtomicU32>,
    }
    impl agent::TaskExecutor for Forgetful {
        async fn execute(
            &self,
            _task: agent::TaskContext,
            ticks: agent::TickReporter,
            _cancel: CancellationToken,
        ) -> Result<shared::task::TaskResult, agent::ExecutionError> {
            ticks.report(1);
            ticks.record(progress(1, &[]));
            tokio::time::sleep(Duration::from_millis(300)).await;
            ticks.report(2);
            ticks.record(progress(2, &[]));
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(result(2))
        }

        async fn forget(&self, _owner: &str, _task: Uuid) -> Result<(), String> {
            self.forgot.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let env = TestEnv::new(3).await?;
    let id = env.create_task("deleted midway", 5).await?;
    let forgot = Arc::new(AtomicU32::new(0));
    let worker = env.worker(
        Forgetful {
            forgot: Arc::clone(&forgot),
        },
        Stopping::default(),
    );
    let delivery = env.next_delivery().await?;
    let run = tokio::spawn(async move { worker.try_execute_task(delivery).await });
    env.wait_record(id, Duration::from_secs(5), |r| r.tick == 1)
        .await?;
    // What the gateway's delete does once the agent does not answer in time.
    redis::cmd("DEL")
        .arg(env.keys.task(id))
        .arg(env.keys.task_events(id))
        .query_async::<()>(&mut env.redis.clone())
        .await?;

    let handled = tokio::time::timeout(Duration::from_secs(5), run).await??;

    assert_eq!(handled, Handled::Deleted);
    assert_eq!(forgot.load(Ordering::SeqCst), 1);
    assert_eq!(env.ready(&env.topology.queue).await?, 0, "acked");
    let log = events(&env, id).await?;
    assert!(log.is_empty(), "nothing written after the delete: {log:?}");
    env.cleanup().await
}

#[tokio::test]
async fn a_message_of_a_deleted_task_is_dropped_not_dead_lettered() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let message = env.store_task("deleted while queued", 5).await?;
    let id = message.correlation_id;
    redis::pipe()
        .del(env.keys.task(id))
        .set(env.keys.task_deleted(id), "1")
        .query_async::<()>(&mut env.redis.clone())
        .await?;
    env.publish(&message).await?;
    let worker = env.worker(
        FnExecutor(|_task, _ticks, _cancel| async { Ok(result(1)) }),
        Stopping::default(),
    );

    let handled = worker.try_execute_task(env.next_delivery().await?).await;

    assert_eq!(handled, Handled::Deleted);
    assert_eq!(env.ready(&env.topology.queue).await?, 0);
    assert_eq!(env.ready(&env.topology.dead_letter_queue()).await?, 0);
    env.cleanup().await
}

#[tokio::test]
async fn the_flag_returned_by_a_tick_write_stops_the_task_even_without_the_poll()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let id = env.create_task("flag on write", 10).await?;
    let (redis, keys) = (env.redis.clone(), env.keys.clone());
    let executor = FnExecutor(
        move |task: agent::TaskContext, ticks: agent::TickReporter, _| {
            let (redis, keys) = (redis.clone(), keys.clone());
            async move {
                ticks.report(1);
                // The owner cancels while the tick runs; the tick's own write learns it.
                let _ = transition(
                    &mut redis.clone(),
                    &keys,
                    task.id,
                    &Transition::to(Status::InProgress).with(field::CANCEL_REQUESTED, "1"),
                    chrono::Utc::now(),
                    600,
                )
                .await;
                ticks.record(progress(1, &["kept"]));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(result(2))
            }
        },
    );
    let worker = env.worker(executor, Stopping::default());

    let handled = tokio::time::timeout(
        Duration::from_secs(5),
        worker.try_execute_task(env.next_delivery().await?),
    )
    .await?;

    assert_eq!(handled, Handled::Cancelled);
    assert_eq!(env.record(id).await?.status, Status::Cancelled);
    poll(Duration::from_secs(1), || async {
        Ok((env.ready(&env.topology.queue).await? == 0).then_some(()))
    })
    .await?;
    env.cleanup().await
}
