//! TLS to Redis and RabbitMQ: `rediss://` and `amqps://` against real TLS listeners whose certificates a
//! CA made by the test signed, trusted through `TLS_CA_FILE`.

use crate::helpers::spawn_app_with;
use euglena_tests::tls::{RabbitTls, RedisTls, TestCa};
use gateway::{Application, Settings};
use serde_json::json;
use std::collections::HashMap;

#[tokio::test]
async fn the_gateway_records_and_queues_a_task_over_tls_to_redis_and_rabbitmq() {
    let ca = TestCa::generate("gateway");
    let redis = RedisTls::start(&ca);
    let rabbit = RabbitTls::start(&ca);
    let ca_file = ca.ca_file().to_string_lossy().into_owned();
    let app = spawn_app_with(&[
        ("REDIS_URL", &redis.url()),
        ("RABBITMQ_URL", &rabbit.url()),
        ("TLS_CA_FILE", &ca_file),
    ])
    .await;
    let token = app.token("alice");

    let created = app
        .post_task(
            Some(&token),
            &json!({"mandate": "over TLS", "max_ticks": 2}),
        )
        .await;
    assert_eq!(created.status(), 202);
    let id = created.json::<serde_json::Value>().await.unwrap()["correlation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let task: serde_json::Value = app.get_task(&token, &id).await.json().await.unwrap();
    assert_eq!(
        task["status"], "in_queue",
        "read back from the TLS Redis: {task}"
    );
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let message = app.next_message().await.expect("published over TLS");
    assert!(String::from_utf8_lossy(&message.data).contains(&id));
    let plain: Option<String> = redis::AsyncCommands::hget(
        &mut app.redis.clone(),
        app.keys.task(id.parse().unwrap()),
        "status",
    )
    .await
    .unwrap();
    assert_eq!(
        plain, None,
        "the record went to the TLS Redis, not the plain one"
    );
}

fn settings_for(redis_url: &str, rabbitmq_url: &str, ca_file: &str) -> Settings {
    let env: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("REDIS_URL", redis_url),
        ("RABBITMQ_URL", rabbitmq_url),
        ("TLS_CA_FILE", ca_file),
        ("SUPABASE_JWT_SECRET", "secret-for-a-start-up-test"),
        ("STARTUP_DEADLINE_SECONDS", "1"),
        ("AGENT_INPUT_QUEUE", "test.gateway.tls-refused"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Settings::from_source(env).expect("valid settings")
}

#[tokio::test]
async fn a_redis_or_broker_certificate_the_ca_file_does_not_vouch_for_is_a_clear_start_up_error() {
    let servers = TestCa::generate("servers");
    let other = TestCa::generate("another");
    let redis = RedisTls::start(&servers);
    let rabbit = RabbitTls::start(&servers);
    let wrong_ca = other.ca_file().to_string_lossy().into_owned();
    let right_ca = servers.ca_file().to_string_lossy().into_owned();

    let error = Application::build(settings_for(&redis.url(), "amqp://unused", &wrong_ca))
        .await
        .expect_err("an untrusted Redis is refused");
    let message = error.to_string();
    assert!(
        message.contains("Redis") && message.to_lowercase().contains("certificate"),
        "the error names Redis and the certificate: {message}"
    );

    let plain_redis = "redis://127.0.0.1:6379/0";
    let error = Application::build(settings_for(plain_redis, &rabbit.url(), &wrong_ca))
        .await
        .expect_err("an untrusted broker is refused");
    let message = error.to_string();
    assert!(
        message.contains("RabbitMQ") && message.to_lowercase().contains("certificate"),
        "the error names RabbitMQ and the certificate: {message}"
    );

    // The same servers with the right CA are fine.
    Application::build(settings_for(&redis.url(), &rabbit.url(), &right_ca))
        .await
        .expect("trusted servers are reached");
}

#[test]
fn a_tls_ca_file_that_cannot_be_read_stops_the_settings_with_its_name() {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("SUPABASE_JWT_SECRET".into(), "s".into());
    env.insert("TLS_CA_FILE".into(), "/nonexistent/ca.pem".into());
    let error = Settings::from_source(env).unwrap_err().to_string();
    assert!(error.contains("TLS_CA_FILE"), "{error}");
}
