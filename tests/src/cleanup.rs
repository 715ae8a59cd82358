//! Removing what a test left in the shared Redis and RabbitMQ: its queues and its keys.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// The local RabbitMQ the tests use.
pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local Redis the tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Deletes `queue`, its dead-letter and parking queues, their exchanges (named as `shared::queue::Topology`
/// names them) and every Redis key under `key_prefix`, best effort, within a few seconds. Blocking, with
/// fresh connections on a runtime of its own, so it can run from `Drop` while the test's runtime (which
/// drives the test's own connections) is blocked.
pub fn remove_test_state(queue: &str, key_prefix: &str) {
    let queues = [
        queue.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.dlq.parked"),
    ];
    let exchanges = [
        format!("{queue}.in"),
        format!("{queue}.dlx"),
        format!("{queue}.dlq.parking"),
    ];
    let pattern = format!("{key_prefix}*");
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let cleanup = async {
                if let Ok(amqp) =
                    Connection::connect(RABBITMQ_URL, ConnectionProperties::default()).await
                    && let Ok(channel) = amqp.create_channel().await
                {
                    for queue in queues {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for exchange in exchanges {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = amqp.close(200, "test cleanup".into()).await;
                }
                if let Ok(client) = redis::Client::open(REDIS_URL)
                    && let Ok(mut redis) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(&pattern)
                        .query_async(&mut redis)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), cleanup).await;
        });
    })
    .join();
}
