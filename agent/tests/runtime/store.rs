//! The shared atomic transition under concurrency, as the worker uses it.

use crate::helpers::TestEnv;
use shared::Status;
use shared::store::{Outcome, Transition, transition};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_heartbeat_racing_the_completion_never_leaves_the_task_in_progress()
-> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    for round in 0..30 {
        let message = env.store_task("race", 10).await?;
        let id = message.correlation_id;
        let mut conn = env.redis.clone();
        let now = chrono::Utc::now();
        transition(
            &mut conn,
            &env.keys,
            id,
            &Transition::to(Status::Accepted),
            now,
            600,
        )
        .await?;

        let mut writers = tokio::task::JoinSet::new();
        for tick in 0..20u32 {
            let (mut conn, keys) = (env.redis.clone(), env.keys.clone());
            writers.spawn(async move {
                let heartbeat = Transition::to(Status::InProgress).with("tick", tick.to_string());
                transition(&mut conn, &keys, id, &heartbeat, chrono::Utc::now(), 600).await
            });
            if tick == 10 {
                let (mut conn, keys) = (env.redis.clone(), env.keys.clone());
                writers.spawn(async move {
                    let completed = Transition::to(Status::Completed)
                        .with("tick", "4")
                        .refunding(4);
                    transition(&mut conn, &keys, id, &completed, chrono::Utc::now(), 600).await
                });
            }
        }
        while let Some(outcome) = writers.join_next().await {
            if let Outcome::Refused { current, .. } = outcome?? {
                assert_eq!(
                    current,
                    Status::Completed,
                    "only a terminal task refuses a heartbeat"
                );
            }
        }

        let record = env.record(id).await?;
        assert_eq!(record.status, Status::Completed, "round {round}");
        assert!(record.refunded);
        let mut conn = env.redis.clone();
        let ttl: i64 = redis::cmd("TTL")
            .arg(env.keys.task(id))
            .query_async(&mut conn)
            .await?;
        assert!(ttl > 0, "a terminal record expires (round {round})");
    }
    assert_eq!(
        env.quota_used().await?,
        30 * 4,
        "each task refunded exactly once: 6 of its 10 ticks"
    );
    env.cleanup().await
}
