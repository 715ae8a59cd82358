//! The daily tick quota.

use crate::helpers::spawn_app_with;
use futures::future::join_all;
use serde_json::{Value, json};

#[tokio::test]
async fn fifty_concurrent_posts_against_a_limit_that_fits_ten_accept_exactly_ten() {
    let app = spawn_app_with(&[("DAILY_TICK_LIMIT", "70")]).await;
    let token = app.token("racer");

    let body = json!({"mandate": "m", "max_ticks": 7});
    let responses = join_all((0..50).map(|_| app.post_task(Some(&token), &body))).await;

    let accepted = responses.iter().filter(|r| r.status() == 202).count();
    let refused = responses.iter().filter(|r| r.status() == 429).count();
    assert_eq!((accepted, refused), (10, 40));
    assert_eq!(app.quota_used("racer").await, 70);
    let mut queued = 0;
    while app.next_message().await.is_some() {
        queued += 1;
    }
    assert_eq!(queued, 10, "one message per accepted task");
    assert_eq!(
        app.task_ids().await.len(),
        10,
        "no record for a refused task"
    );
}

#[tokio::test]
async fn a_charge_that_passes_the_limit_is_429_with_the_remaining_ticks() {
    let app = spawn_app_with(&[("DAILY_TICK_LIMIT", "30")]).await;
    let token = app.token("bob");
    assert_eq!(
        app.post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 20}))
            .await
            .status(),
        202
    );

    let response = app
        .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 11}))
        .await;

    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["remaining"], 10);
    assert_eq!(
        app.quota_used("bob").await,
        20,
        "a refused charge costs nothing"
    );
    assert_eq!(
        app.post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 10}))
            .await
            .status(),
        202,
        "the exact remainder still fits"
    );
    assert_eq!(
        app.post_task(
            Some(&app.token("carol")),
            &json!({"mandate": "m", "max_ticks": 30})
        )
        .await
        .status(),
        202,
        "quotas are per user"
    );
}
