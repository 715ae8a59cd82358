//! The purger against the real Redis: every delete request is read once, in order, however many there
//! are; one that cannot be applied yet is retried, not skipped; retention deletes by the task TTL.

use crate::helpers::TestEnv;
use agent::purger::Purger;
use shared::events::EntryId;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Records what it is asked to forget; fails for the tasks in `refuse`.
#[derive(Default)]
struct Forgetting {
    forgotten: Mutex<Vec<(String, Uuid)>>,
    cutoffs: Mutex<Vec<i64>>,
    refuse: Mutex<Vec<Uuid>>,
}

impl agent::TaskExecutor for Forgetting {
    async fn execute(
        &self,
        _task: agent::TaskContext,
        _ticks: agent::TickReporter,
        _cancel: tokio_util::sync::CancellationToken,
    ) -> Result<shared::task::TaskResult, agent::executor::ExecutionError> {
        unreachable!("the purger runs no task")
    }

    async fn forget(&self, owner: &str, task: Uuid) -> Result<(), String> {
        if self.refuse.lock().unwrap().contains(&task) {
            return Err("the store is unreachable".into());
        }
        self.forgotten
            .lock()
            .unwrap()
            .push((owner.to_owned(), task));
        Ok(())
    }

    async fn forget_written_before(&self, cutoff: i64) -> Result<(), String> {
        self.cutoffs.lock().unwrap().push(cutoff);
        Ok(())
    }
}

async fn request_purge(env: &TestEnv, owner: &str, task: Uuid) -> anyhow::Result<()> {
    redis::cmd("XADD")
        .arg(env.keys.memory_purges())
        .arg("*")
        .arg("owner")
        .arg(owner)
        .arg("task")
        .arg(task.to_string())
        .query_async::<String>(&mut env.redis.clone())
        .await?;
    Ok(())
}

fn purger(env: &TestEnv, executor: &Arc<Forgetting>) -> Purger<Forgetting> {
    Purger {
        executor: Arc::clone(executor),
        redis: env.redis.clone(),
        keys: env.keys.clone(),
        retention: Duration::from_secs(3_600),
    }
}

#[tokio::test]
async fn every_delete_request_is_forgotten_once_in_order_past_a_batch_and_a_refusal_is_retried()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let executor = Arc::new(Forgetting::default());
    let tasks: Vec<Uuid> = (0..250).map(|_| Uuid::new_v4()).collect();
    for (n, task) in tasks.iter().enumerate() {
        request_purge(&env, &format!("user-{}", n % 3), *task).await?;
    }
    executor.refuse.lock().unwrap().push(tasks[180]);
    let purger = purger(&env, &executor);

    let cursor = purger.purge_from(EntryId { ms: 0, seq: 0 }).await;
    let forgotten: Vec<Uuid> = executor
        .forgotten
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.1)
        .collect();
    assert_eq!(
        forgotten,
        tasks[..180],
        "stops at the refusal, past the first batch of 100"
    );
    assert_eq!(executor.forgotten.lock().unwrap()[4].0, "user-1");

    executor.refuse.lock().unwrap().clear();
    let again = purger.purge_from(cursor).await;
    let forgotten: Vec<Uuid> = executor
        .forgotten
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.1)
        .collect();
    assert_eq!(forgotten, tasks, "the refused one and the rest, each once");
    assert_eq!(
        purger.purge_from(again).await,
        again,
        "nothing new, nothing forgotten"
    );
    assert_eq!(executor.forgotten.lock().unwrap().len(), 250);
    env.cleanup().await
}

#[tokio::test]
async fn a_running_purger_forgets_new_requests_and_deletes_memory_older_than_the_task_ttl()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let executor = Arc::new(Forgetting::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let started = chrono::Utc::now().timestamp();
    let running = tokio::spawn(purger(&env, &executor).run(stop.clone()));
    let task = Uuid::new_v4();
    request_purge(&env, "user-1", task).await?;

    crate::helpers::poll(Duration::from_secs(5), || async {
        Ok(executor
            .forgotten
            .lock()
            .unwrap()
            .iter()
            .any(|f| f.1 == task)
            .then_some(()))
    })
    .await?;
    let cutoffs = executor.cutoffs.lock().unwrap().clone();
    assert_eq!(cutoffs.len(), 1, "retention runs at start");
    assert!(
        (started - 3_600 - 1..=started - 3_600 + 1).contains(&cutoffs[0]),
        "memory written before now less the task TTL goes: {cutoffs:?} at {started}"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), running).await??;
    env.cleanup().await
}
