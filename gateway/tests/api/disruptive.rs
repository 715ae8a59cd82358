//! Tests that restart the real RabbitMQ. They disturb every other test, so `scripts/test.sh` runs them
//! alone, after the rest.

use crate::helpers::{eventually, spawn_app_with};
use euglena_tests::broker::rabbitmqctl;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_gateway_reconnects_after_rabbitmq_restarts() {
    let app = spawn_app_with(&[]).await;
    let token = app.token("alice");
    assert_eq!(
        app.post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 1}))
            .await
            .status(),
        202
    );

    rabbitmqctl(&["stop_app"]);
    let during = app
        .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 1}))
        .await;
    rabbitmqctl(&["start_app"]);
    assert_eq!(during.status(), 503);

    let recovered = eventually(Duration::from_secs(60), || async {
        let status = app
            .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 1}))
            .await
            .status();
        (status == 202).then_some(())
    })
    .await;
    assert!(
        recovered.is_some(),
        "the gateway publishes again after the restart"
    );
}
