//! Creating and polling tasks.

use crate::helpers::spawn_app;
use redis::AsyncCommands;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn a_created_task_is_recorded_pending_and_queued_with_its_message_properties() {
    let app = spawn_app().await;
    let token = app.token("alice");

    let response = app
        .post_task(
            Some(&token),
            &json!({"mandate": "  find the tallest tree  ", "max_ticks": 7}),
        )
        .await;

    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["correlation_id"].as_str().unwrap().to_owned();
    assert_eq!(Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(location, format!("/tasks/{id}"));
    assert_eq!(body["status"], "in_queue");
    assert_eq!(body["mandate"], "find the tallest tree");
    assert_eq!(body["max_ticks"], 7);
    assert_eq!(body["tick"], 0);
    assert_eq!(body["result"], Value::Null);
    assert_eq!(body["error"], Value::Null);

    let stored = app.stored(&id).await;
    assert_eq!(stored["status"], "pending");
    assert_eq!(stored["owner"], "alice");
    assert_eq!(stored["attempts"], "0");
    assert_eq!(app.quota_used("alice").await, 7);

    let message = app.next_message().await.expect("a message is queued");
    let props = &message.delivery.properties;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), id);
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(props.delivery_mode(), &Some(2));
    let headers = props.headers().as_ref().unwrap();
    assert_eq!(
        headers.inner().get("x-request-id"),
        Some(&lapin::types::AMQPValue::LongString(
            request_id.as_str().into()
        ))
    );
    let queued: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(queued["correlation_id"], id.as_str());
    assert_eq!(queued["mandate"], "find the tallest tree");
    assert_eq!(queued["max_ticks"], 7);
    assert_eq!(queued["owner"], "alice");
    assert!(queued["created_at"].is_string());
    assert!(app.next_message().await.is_none(), "exactly one message");
}

#[tokio::test]
async fn the_owner_can_poll_a_created_task() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let created: Value = app
        .post_task(Some(&token), &json!({"mandate": "m"}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["correlation_id"].as_str().unwrap();

    let response = app.get_task(&token, id).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, created);
    assert_eq!(body["max_ticks"], 50, "max_ticks defaults to 50");
}

#[tokio::test]
async fn another_users_task_is_not_found_exactly_like_a_missing_one() {
    let app = spawn_app().await;
    let created: Value = app
        .post_task(
            Some(&app.token("alice")),
            &json!({"mandate": "secret plans"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["correlation_id"].as_str().unwrap();
    let mallory = app.token("mallory");

    let theirs = app.get_task(&mallory, id).await;
    let missing = app.get_task(&mallory, &Uuid::new_v4().to_string()).await;
    let malformed = app.get_task(&mallory, "not-a-uuid").await;

    assert_eq!(theirs.status(), 404);
    assert_eq!(missing.status(), 404);
    assert_eq!(malformed.status(), 404);
    let theirs: Value = theirs.json().await.unwrap();
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(theirs, missing);
    assert_eq!(theirs["error"]["code"], "not_found");
}

#[tokio::test]
async fn stored_statuses_are_shown_normalised() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let created: Value = app
        .post_task(Some(&token), &json!({"mandate": "m", "max_ticks": 3}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["correlation_id"].as_str().unwrap();
    let key = app.keys.task(id.parse().unwrap());
    let mut redis = app.redis.clone();

    let result = json!({"success": true, "deliverables": ["d"], "summary": "s",
                        "sources": ["https://example.org/"], "ticks_used": 2});
    let cases: [(&[(&str, String)], &str); 4] = [
        (&[("status", "accepted".into())], "in_progress"),
        (
            &[("status", "in_progress".into()), ("tick", "2".into())],
            "in_progress",
        ),
        (
            &[
                ("status", "completed".into()),
                ("result", result.to_string()),
            ],
            "completed",
        ),
        (
            &[("status", "failed".into()), ("error", "boom".into())],
            "failed",
        ),
    ];
    for (fields, shown) in cases {
        let _: () = redis.hset_multiple(&key, fields).await.unwrap();
        let body: Value = app.get_task(&token, id).await.json().await.unwrap();
        assert_eq!(body["status"], shown, "{fields:?}");
    }
    let body: Value = app.get_task(&token, id).await.json().await.unwrap();
    assert_eq!(body["error"], "boom");
    assert_eq!(body["result"], result);
    assert_eq!(body["tick"], 2);
}

#[tokio::test]
async fn each_invalid_body_is_refused_with_a_clear_error_and_changes_nothing() {
    let app = spawn_app_with_limits().await;
    let token = app.token("alice");
    let long = "x".repeat(101);
    let cases: Vec<(Value, u16)> = vec![
        (json!({}), 422),
        (json!({"mandate": ""}), 422),
        (json!({"mandate": "   \n"}), 422),
        (json!({"mandate": long}), 422),
        (json!({"mandate": 5}), 422),
        (json!({"mandate": "m", "max_ticks": 0}), 422),
        (json!({"mandate": "m", "max_ticks": -3}), 422),
        (json!({"mandate": "m", "max_ticks": 11}), 422),
        (json!({"mandate": "m", "max_ticks": 2.5}), 422),
        (json!({"mandate": "m", "max_ticks": "5"}), 422),
        (
            json!({"mandate": "m", "correlation_id": Uuid::new_v4()}),
            422,
        ),
        (json!(["m"]), 422),
    ];
    for (body, status) in cases {
        let response = app.post_task(Some(&token), &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_request", "{body}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }

    let not_json = app
        .client
        .post(format!("{}/tasks", app.address))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"mandate\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let no_content_type = app
        .client
        .post(format!("{}/tasks", app.address))
        .bearer_auth(&token)
        .body(r#"{"mandate": "m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_content_type.status(), 400);
    let body: Value = no_content_type.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    let too_large = app
        .client
        .post(format!("{}/tasks", app.address))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"mandate": "{}"}}"#, "x".repeat(1_000_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);

    assert!(app.redis_keys().await.is_empty(), "nothing stored");
    assert!(app.next_message().await.is_none(), "nothing queued");
}

#[tokio::test]
async fn a_mandate_at_the_character_limit_is_accepted_however_its_json_is_escaped() {
    let app = crate::helpers::spawn_app_with(&[("MAX_MANDATE_CHARS", "8000")]).await;
    let token = app.hs256(&app.claims("alice"));
    let post = |body: String| {
        app.client
            .post(format!("{}/tasks", app.address))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // 8,000 emoji, each written as a surrogate pair of escapes: 96,000 bytes of mandate.
    let escaped = "\\uD83D\\uDE00".repeat(8_000);
    let at_limit = post(format!(r#"{{"mandate": "{escaped}", "max_ticks": 1}}"#))
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 202, "{}", at_limit.text().await.unwrap());

    let over = "\\uD83D\\uDE00".repeat(8_001);
    let over_limit = post(format!(r#"{{"mandate": "{over}", "max_ticks": 1}}"#))
        .await
        .unwrap();
    assert_eq!(
        over_limit.status(),
        422,
        "one character too many is refused by the rule"
    );
}

async fn spawn_app_with_limits() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(&[("MAX_MANDATE_CHARS", "100"), ("MAX_TICKS_PER_TASK", "10")])
        .await
}
