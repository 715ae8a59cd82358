//! Health, worker count, OpenAPI, CORS, request ids, unknown routes.

use crate::helpers::{spawn_app, spawn_app_with};
use redis::AsyncCommands;
use serde_json::Value;

#[tokio::test]
async fn health_reports_both_components_up() {
    let app = spawn_app().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["components"]["redis"], true);
    assert_eq!(body["components"]["rabbitmq"], true);
}

#[tokio::test]
async fn the_worker_count_counts_live_workers_and_prunes_stale_ones() {
    let app = spawn_app_with(&[("WORKER_TTL_SECONDS", "30")]).await;
    let now = chrono::Utc::now().timestamp_millis();
    let key = app.keys.workers_status();
    let mut redis = app.redis.clone();
    let _: () = redis
        .zadd_multiple(
            &key,
            &[(now, "w1"), (now - 5_000, "w2"), (now - 60_000, "stale")],
        )
        .await
        .unwrap();

    let body: Value = app.get("/agents/count").await.json().await.unwrap();

    assert_eq!(body["count"], 2);
    let members: Vec<String> = redis.zrange(&key, 0, -1).await.unwrap();
    assert!(
        !members.contains(&"stale".to_owned()),
        "stale members are pruned"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/tasks", "/tasks/{id}", "/agents/count", "/health"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["paths"]["/tasks"]["post"]["responses"]["429"].is_object());
    assert!(doc["components"]["schemas"]["TaskResponse"].is_object());
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_an_incoming_one_is_kept() {
    let app = spawn_app().await;
    let fresh = app.get("/health").await;
    assert!(!fresh.headers()["x-request-id"].is_empty());
    let kept = app
        .client
        .get(format!("{}/nowhere", app.address))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "req-123");
    assert_eq!(kept.status(), 404);
    let body: Value = kept.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_wrong_method_gets_a_json_405() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(format!("{}/tasks", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = spawn_app_with(&[("CORS_ORIGINS", "https://app.example")]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/tasks", app.address))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
