//! Dispatch latency of the agent runtime: from publishing a task (as the gateway does, after its record
//! is stored) to the agent having taken it (`accepted` stored, executor started), one task at a time
//! against the local Redis and RabbitMQ, with an executor that completes at once.
//!
//! ```text
//! cargo run --release -p agent --example dispatch_bench -- 500
//! ```
//! Prints p50/p90/p99 in microseconds (with the broker's own publish -> confirm time for comparison:
//! a quorum queue delivers a message only once it is committed) and the process's resident memory.

use agent::{AgentSettings, Application, ExecutionError, TaskContext, TaskExecutor, TickReporter};
use anyhow::Context;
use chrono::Utc;
use lapin::{Connection, ConnectionProperties};
use shared::settings::Reader;
use shared::task::{TaskMessage, TaskRecord, TaskResult};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Signals the instant it is started, then completes.
struct Signal(mpsc::UnboundedSender<Instant>);

impl TaskExecutor for Signal {
    async fn execute(
        &self,
        _task: TaskContext,
        _ticks: TickReporter,
        _cancel: CancellationToken,
    ) -> Result<TaskResult, ExecutionError> {
        let _ = self.0.send(Instant::now());
        Ok(TaskResult {
            success: true,
            deliverables: Vec::new(),
            summary: String::new(),
            sources: Vec::new(),
            ticks_used: 1,
        })
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map_or(Ok(300), |n| n.parse())?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench:{id}:");
    let vars: HashMap<String, String> = [
        ("AGENT_INPUT_QUEUE", format!("bench.agent.{id}")),
        ("REDIS_KEY_PREFIX", prefix.clone()),
        ("HEALTH_PORT", "0".to_owned()),
        ("WORKER_ID", format!("bench-{}", &id[..8])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = AgentSettings::from_source(&Reader::new(vars))?;
    let topology = settings.common.topology();
    let keys = settings.common.keys();

    let (started_tx, mut started) = mpsc::unbounded_channel();
    let app = Application::build(settings, Signal(started_tx)).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib();

    let mut redis = redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?;
    let connection = Connection::connect(RABBITMQ_URL, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let mut latencies = Vec::with_capacity(count);
    let mut confirms = Vec::with_capacity(count);
    for _ in 0..count {
        let task = uuid::Uuid::new_v4();
        let now = Utc::now();
        let record = TaskRecord::new_pending("bench", "bench", 1, "none", "", now);
        redis::cmd("HSET")
            .arg(keys.task(task))
            .arg(record.to_fields())
            .query_async::<()>(&mut redis)
            .await?;
        let message = TaskMessage {
            correlation_id: task,
            mandate: "bench".into(),
            max_ticks: 1,
            owner: "bench".into(),
            created_at: now,
        };
        let published = Instant::now();
        topology
            .publish(&channel, &message, &shared::queue::Origin::default())
            .await?
            .await?;
        confirms.push(published.elapsed());
        let taken = tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .context("the agent did not take the task")?
            .context("the agent stopped")?;
        latencies.push(taken.duration_since(published));
    }
    latencies.sort();
    confirms.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_micros();
    println!(
        "for comparison, publish -> broker confirm: p50 {} us",
        confirms[confirms.len() / 2].as_micros()
    );
    println!(
        "dispatch publish -> accepted over {count} tasks: p50 {} us, p90 {} us, p99 {} us, max {} us",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    println!(
        "resident memory: idle {} KiB, after the run {} KiB",
        idle_rss,
        rss_kib()
    );

    stop.cancel();
    running.await??;
    for queue in topology.queues() {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await?;
    }
    for exchange in topology.exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await?;
    }
    let leftovers: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await?;
    if !leftovers.is_empty() {
        redis::cmd("DEL")
            .arg(leftovers)
            .query_async::<()>(&mut redis)
            .await?;
    }
    Ok(())
}
