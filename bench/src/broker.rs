//! `broker`: the broker alone, as the gateway uses it: `--concurrency` publishers, each publishing
//! persistent, `mandatory` task messages with publisher confirms to a quorum queue declared with the task
//! queue's arguments, on one shared channel, for `--seconds`. Prints publishes/s and the publish-to-confirm
//! latency: the floor under `POST /tasks`' latency (`bench/post-tail.sh` runs both side by side).

use clap::Parser;
use hdrhistogram::Histogram;
use lapin::options::{ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use shared::queue::Topology;
use shared::task::TaskMessage;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Options {
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Publishers in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let connection = Connection::connect(&options.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::new(format!("bench.broker.{}", uuid::Uuid::new_v4().simple()), 3);
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (channel, topology) = (Arc::new(channel), Arc::new(topology));
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency {
        let (channel, topology) = (Arc::clone(&channel), Arc::clone(&topology));
        publishers.spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while Instant::now() < deadline {
                let message = TaskMessage {
                    correlation_id: uuid::Uuid::new_v4(),
                    mandate: "benchmark mandate".into(),
                    max_ticks: 1,
                    owner: "bench".into(),
                    created_at: chrono::Utc::now(),
                };
                let sent = Instant::now();
                topology
                    .publish(&channel, &message, &shared::queue::Origin::default())
                    .await?
                    .await?;
                latencies.saturating_record(
                    u64::try_from(sent.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(done) = publishers.join_next().await {
        all.add(&done??)?;
    }
    let elapsed = started.elapsed();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "broker alone       {:>8} publishes {:>9.0} /s     p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        ms(0.50),
        ms(0.99),
        all.max() as f64 / 1000.0
    );
    for queue in [topology.queue.clone(), topology.dead_letter_queue()] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}
