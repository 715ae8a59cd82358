//! Tests that restart the real RabbitMQ. They disturb every other test, so `scripts/test.sh` runs them
//! alone, after the rest.

use crate::helpers::{Options, publish, spawn_app};
use euglena_tests::broker::rabbitmqctl;
use std::time::Duration;

#[tokio::test]
async fn the_sidecar_reconnects_after_rabbitmq_restarts() {
    let app = spawn_app(Options {
        management: false,
        ..Options::default()
    })
    .await;
    app.health_until(Duration::from_secs(10), |h| h["reads"].as_u64() >= Some(1))
        .await;

    rabbitmqctl(&["stop_app"]);
    let down = app
        .health_until(Duration::from_secs(30), |h| h["status"] == "degraded")
        .await;
    rabbitmqctl(&["start_app"]);
    assert!(down["read_errors"].as_u64() >= Some(1), "{down}");

    // The quorum queue survives the restart; the loop reconnects on its own and reads it again.
    let reads_before = app.health().await["reads"].as_u64().unwrap_or(0);
    publish(&app.queue, 3).await;
    let health = app
        .health_until(Duration::from_secs(60), |h| {
            h["status"] == "ok" && h["queue_depth"] == 3 && h["reads"].as_u64() > Some(reads_before)
        })
        .await;
    assert!(health["broker_connects"].as_u64() >= Some(2), "{health}");
    app.stop().await;
}
