//! Health, worker count, OpenAPI, CORS, request ids, unknown routes.

use crate::helpers::{spawn_app, spawn_app_with};
use redis::AsyncCommands;
use serde_json::{Value, json};

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
    for (path, method) in [
        ("/tasks", "post"),
        ("/tasks", "get"),
        ("/tasks/{id}", "get"),
        ("/tasks/{id}", "delete"),
        ("/tasks/{id}/cancel", "post"),
        ("/tasks/{id}/events", "get"),
        ("/agents/count", "get"),
        ("/health", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let create = &doc["paths"]["/tasks"]["post"];
    for status in ["202", "409", "413", "422", "429", "503"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /tasks {status}"
        );
    }
    let header_names = |operation: &Value| -> Vec<String> {
        operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(header_names(create), ["Idempotency-Key"]);
    assert!(create["responses"]["202"]["headers"]["Idempotent-Replayed"].is_object());
    let events = &doc["paths"]["/tasks/{id}/events"]["get"];
    assert_eq!(header_names(events), ["Last-Event-ID"]);
    assert!(events["responses"]["200"]["content"]["text/event-stream"].is_object());
    let cancel = &doc["paths"]["/tasks/{id}/cancel"]["post"];
    for status in ["200", "202", "404"] {
        assert!(cancel["responses"][status].is_object(), "cancel {status}");
    }
    assert!(doc["paths"]["/tasks/{id}"]["delete"]["responses"]["204"].is_object());
    let list_params: Vec<_> = doc["paths"]["/tasks"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(list_params, ["limit", "after", "status"]);
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "TaskResponse",
        "TaskList",
        "Usage",
        "TickEvent",
        "MemoryEvent",
        "CreatedEvent",
        "AcceptedEvent",
        "CancellingEvent",
    ] {
        assert!(schemas[schema].is_object(), "{schema} is described");
    }
    let statuses = schemas["ShownStatus"]["enum"].to_string();
    for status in ["cancelling", "cancelled"] {
        assert!(statuses.contains(status), "{statuses}");
    }
}

#[tokio::test]
async fn the_openapi_document_carries_the_configured_limits_and_the_server_keeps_them() {
    let app = spawn_app_with(&[("MAX_MANDATE_CHARS", "40"), ("MAX_TICKS_PER_TASK", "9")]).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let create = &doc["components"]["schemas"]["CreateTask"]["properties"];
    assert_eq!(create["mandate"]["maxLength"], 40);
    assert_eq!(create["max_ticks"]["maximum"], 9);
    assert_eq!(create["max_ticks"]["type"], "integer");
    let token = app.token("limits");

    let at_limits = app
        .post_task(
            Some(&token),
            &json!({"mandate": "m".repeat(40), "max_ticks": 9}),
        )
        .await;
    assert_eq!(at_limits.status(), 202);
    for (body, why) in [
        (json!({"mandate": "m".repeat(41)}), "mandate over maxLength"),
        (
            json!({"mandate": "m", "max_ticks": 10}),
            "max_ticks over maximum",
        ),
        (
            json!({"mandate": "m", "max_ticks": 0}),
            "max_ticks under minimum",
        ),
        (json!({"mandate": "m", "max_ticks": null}), "max_ticks null"),
        (json!({"mandate": null}), "mandate null"),
    ] {
        let response = app.post_task(Some(&token), &body).await;
        assert_eq!(response.status(), 422, "{why}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_request", "{why}");
    }
    assert_eq!(
        app.task_ids().await.len(),
        1,
        "only the valid request made a task"
    );
    assert_eq!(
        app.quota_used("limits").await,
        9,
        "refused requests charged nothing"
    );
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
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn an_oversized_or_unprintable_request_id_is_replaced_with_a_fresh_one() {
    let app = spawn_app().await;
    for unusable in ["x".repeat(8_000), "two words".into(), String::new()] {
        let response = app
            .client
            .get(format!("{}/health", app.address))
            .header("x-request-id", &unusable)
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(echoed, unusable);
        assert!(
            uuid::Uuid::parse_str(echoed).is_ok(),
            "a fresh id replaces {:?}: {echoed}",
            &unusable[..unusable.len().min(20)]
        );
    }
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
