//! `GET /metrics`: scraped and parsed as Prometheus would, after real requests.

use crate::helpers::{eventually, spawn_app_with};
use euglena_tests::scrape::Scrape;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_metrics_count_requests_by_route_publishes_refusals_and_open_streams() {
    let app = spawn_app_with(&[("DAILY_TICK_LIMIT", "10")]).await;
    let metrics = format!("{}/metrics", app.address);
    let before = Scrape::fetch(&metrics).await.unwrap();

    let id = app.create("alice", 6).await;
    let token = app.token("alice");
    assert_eq!(app.get_task(&token, &id).await.status(), 200);
    let missing = uuid::Uuid::new_v4().to_string();
    assert_eq!(app.get_task(&token, &missing).await.status(), 404);
    let refused = app
        .post_task(Some(&token), &json!({"mandate": "more", "max_ticks": 6}))
        .await;
    assert_eq!(refused.status(), 429);
    assert_eq!(app.get("/no/such/route").await.status(), 404);
    let (status, stream) = app.events("alice", &id, None).await;
    assert_eq!(status, 200);

    let after = Scrape::fetch(&metrics).await.unwrap();
    let requests = "gateway_http_requests_total";
    let moved =
        |labels: &[(&str, &str)]| after.value(requests, labels) - before.value(requests, labels);
    assert_eq!(
        moved(&[("method", "POST"), ("route", "/tasks"), ("status", "202")]),
        1.0
    );
    assert_eq!(
        moved(&[("method", "POST"), ("route", "/tasks"), ("status", "429")]),
        1.0
    );
    assert_eq!(
        moved(&[
            ("method", "GET"),
            ("route", "/tasks/{id}"),
            ("status", "200")
        ]),
        1.0
    );
    assert_eq!(
        moved(&[
            ("method", "GET"),
            ("route", "/tasks/{id}"),
            ("status", "404")
        ]),
        1.0
    );
    let routes = after.label_values(requests, "route");
    assert_eq!(
        moved(&[("route", "unmatched"), ("status", "404")]),
        1.0,
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .all(|route| !route.contains(&id) && !route.contains(&missing)),
        "no task id is a label: {routes:?}"
    );
    assert!(
        after.observations(
            "gateway_http_request_duration_seconds",
            &[("route", "/tasks/{id}")]
        ) >= 2.0
    );
    assert_eq!(
        after.observations("gateway_publish_confirm_seconds", &[("outcome", "ack")])
            - before.observations("gateway_publish_confirm_seconds", &[("outcome", "ack")]),
        1.0
    );
    assert_eq!(
        after.value(
            "gateway_task_refusals_total",
            &[("reason", "quota_exceeded")]
        ) - before.value(
            "gateway_task_refusals_total",
            &[("reason", "quota_exceeded")]
        ),
        1.0
    );
    assert_eq!(after.value("gateway_event_streams_open", &[]), 1.0);

    drop(stream);
    let closed = eventually(Duration::from_secs(20), || async {
        let scrape = Scrape::fetch(&metrics).await.unwrap();
        (scrape.value("gateway_event_streams_open", &[]) == 0.0).then_some(())
    })
    .await;
    assert!(closed.is_some(), "a closed stream is no longer counted");
}
