//! The sidecar against the real RabbitMQ and Redis, and moto for CloudWatch. Needs the RabbitMQ
//! management plugin (port 15672) and moto (`scripts/ensure-moto.sh`); a test fails with a clear message
//! when moto is not there. Tests in `disruptive` restart RabbitMQ and are run on their own.

mod deadline;
mod disruptive;
mod helpers;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use helpers::{CloudWatch, Options, declare_queue, hold, publish, spawn_app};
use metrics_sidecar::Application;
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// The management API's figures lag the broker by about 5 s.
const MANAGEMENT_LAG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_sidecar_reports_ready_and_unacknowledged_counts_from_the_broker() {
    let app = spawn_app(Options {
        cloudwatch: CloudWatch::Moto,
        ..Options::default()
    })
    .await;
    publish(&app.queue, 5).await;
    let holder = hold(&app.queue, 2).await;

    let health = app
        .health_until(MANAGEMENT_LAG, |h| {
            h["queue_depth"] == 3 && h["in_flight"] == 2
        })
        .await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["in_flight_source"], "management");

    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "euglena_queue_depth{{queue=\"{}\"}} 3\n",
            app.queue
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "euglena_queue_in_flight{{queue=\"{}\"}} 2\n",
            app.queue
        )),
        "{metrics}"
    );

    drop(holder);
    app.stop().await;
}

#[tokio::test]
async fn the_puts_are_read_back_from_cloudwatch_with_get_metric_data() {
    let app = spawn_app(Options {
        cloudwatch: CloudWatch::Moto,
        ..Options::default()
    })
    .await;
    publish(&app.queue, 4).await;
    let dead_letter_queue = format!("{}.dlq", app.queue);
    publish(&dead_letter_queue, 2).await;
    let holder = hold(&app.queue, 1).await;
    app.health_until(MANAGEMENT_LAG, |h| {
        h["queue_depth"] == 3
            && h["in_flight"] == 1
            && h["dead_letter_depth"] == 2
            && h["last_put_at"].is_string()
    })
    .await;

    // The latest point of each metric, read the way the autoscaler reads them.
    let cloudwatch = aws_sdk_cloudwatch::Client::new(app.aws.as_ref().unwrap());
    let query = |id: &str, name: &str, queue: &str| {
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace(&app.namespace)
                            .metric_name(name)
                            .dimensions(Dimension::builder().name("QueueName").value(queue).build())
                            .build(),
                    )
                    .period(1)
                    .stat("Maximum")
                    .build(),
            )
            .build()
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = chrono::Utc::now().timestamp();
        let output = cloudwatch
            .get_metric_data()
            .metric_data_queries(query("depth", "QueueDepth", &app.queue))
            .metric_data_queries(query("inflight", "InFlight", &app.queue))
            .metric_data_queries(query("dlq", "QueueDepth", &dead_letter_queue))
            .start_time(DateTime::from_secs(now - 120))
            .end_time(DateTime::from_secs(now + 5))
            .send()
            .await
            .expect("GetMetricData on moto");
        let latest: HashMap<&str, f64> = output
            .metric_data_results()
            .iter()
            .filter_map(|r| {
                let newest = r
                    .timestamps()
                    .iter()
                    .zip(r.values())
                    .max_by_key(|(at, _)| at.secs())?;
                Some((r.id()?, *newest.1))
            })
            .collect();
        if latest.get("depth") == Some(&3.0)
            && latest.get("inflight") == Some(&1.0)
            && latest.get("dlq") == Some(&2.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "CloudWatch never showed QueueDepth 3, InFlight 1 and the DLQ's QueueDepth 2: {latest:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(holder);
    app.stop().await;
}

#[tokio::test]
async fn without_a_management_url_in_flight_comes_from_the_presence_records() {
    let app = spawn_app(Options {
        management: false,
        ..Options::default()
    })
    .await;
    let keys = shared::Keys::new(app.key_prefix.clone());
    let client = redis::Client::open(helpers::REDIS_URL).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let workers = [
        ("w1", now, "working"),
        ("w2", now, "working"),
        ("w3", now, "free"),
        ("stale", now - 600_000, "working"),
    ];
    for (id, seen, state) in workers {
        let _: () = redis.zadd(keys.workers_status(), id, seen).await.unwrap();
        // The shape agents write (`shared::presence::PresenceRecord`); a record missing a field counts none.
        let record = serde_json::json!({
            "worker_id": id,
            "state": state,
            "correlation_id": null,
            "tick": 0,
            "updated_at": chrono::Utc::now().to_rfc3339(),
        });
        let _: () = redis
            .set_ex(keys.worker_status(id), record.to_string(), 60)
            .await
            .unwrap();
    }

    // Judge only a tick that started after every record was written.
    let reads_before = app.health().await["reads"].as_u64().unwrap_or(0);
    let health = app
        .health_until(Duration::from_secs(10), |h| {
            h["reads"].as_u64() >= Some(reads_before + 2)
        })
        .await;
    assert_eq!(health["in_flight"], 2, "{health}");
    assert_eq!(health["in_flight_source"], "presence");
    assert_eq!(health["queue_depth"], 0);
    assert_eq!(
        health["cloudwatch"], false,
        "no AWS settings: CloudWatch off"
    );
    assert!(health["last_put_at"].is_null());
    let members: Vec<String> = redis.zrange(keys.workers_status(), 0, -1).await.unwrap();
    assert!(
        !members.contains(&"stale".to_owned()),
        "stale members are pruned: {members:?}"
    );

    let _: () = redis
        .del(
            [keys.workers_status()]
                .into_iter()
                .chain(workers.iter().map(|(id, _, _)| keys.worker_status(id)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_metrics_endpoint_speaks_prometheus_text_with_cloudwatch_off() {
    let app = spawn_app(Options {
        management: false,
        ..Options::default()
    })
    .await;
    publish(&app.queue, 2).await;
    app.health_until(Duration::from_secs(10), |h| h["queue_depth"] == 2)
        .await;

    let response = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let label = format!("{{queue=\"{}\"}}", app.queue);
    assert!(
        text.contains(&format!(
            "# TYPE euglena_queue_depth gauge\neuglena_queue_depth{label} 2\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("euglena_sidecar_cloudwatch_enabled{label} 0\n")),
        "{text}"
    );
    assert!(
        !text.contains("euglena_sidecar_last_put_timestamp_seconds"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_put_is_counted_and_retried_while_the_figures_keep_coming() {
    let app = spawn_app(Options {
        cloudwatch: CloudWatch::Unreachable,
        management: false,
        ..Options::default()
    })
    .await;

    let health = app
        .health_until(Duration::from_secs(30), |h| {
            h["put_errors"].as_u64() >= Some(2) && h["reads"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(
        health["last_read_ok"], true,
        "reads still succeed: {health}"
    );
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["publishing"], "failing", "{health}");
    assert_eq!(health["cloudwatch"], true);
    assert_eq!(health["puts"], 0);
    assert!(health["last_put_at"].is_null());
    assert!(
        health["last_put_error"]
            .as_str()
            .unwrap_or_default()
            .contains("PutMetricData failed"),
        "{health}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_missing_queue_degrades_health_and_the_loop_recovers_once_it_exists() {
    let app = spawn_app(Options {
        declare_queue: false,
        management: false,
        ..Options::default()
    })
    .await;

    let health = app
        .health_until(Duration::from_secs(10), |h| {
            h["read_errors"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(health["status"], "degraded");
    assert!(
        health["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("NOT_FOUND"),
        "{health}"
    );

    declare_queue(&app.queue).await;
    publish(&app.queue, 1).await;
    app.health_until(Duration::from_secs(10), |h| {
        h["status"] == "ok" && h["queue_depth"] == 1
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_sidecar_reconnects_after_the_broker_drops_its_connection() {
    let app = spawn_app(Options::default()).await;
    app.health_until(MANAGEMENT_LAG, |h| h["reads"].as_u64() >= Some(1))
        .await;

    // Close the sidecar's connection from the broker side, as a broker restart would.
    let connection_name = find_connection(&app.http, &app.queue).await;
    let closed = app
        .http
        .delete(format!(
            "http://127.0.0.1:15672/api/connections/{}",
            metrics_sidecar::settings::percent_encode(&connection_name)
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());

    publish(&app.queue, 2).await;
    let health = app
        .health_until(MANAGEMENT_LAG, |h| {
            h["broker_connects"].as_u64() >= Some(2) && h["status"] == "ok" && h["queue_depth"] == 2
        })
        .await;
    assert_eq!(health["last_error"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_broker_at_start_is_a_clear_error_after_the_deadline() {
    let mut settings = helpers::settings(&[
        ("PORT", "0".to_owned()),
        (
            "RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:9/%2f".to_owned(),
        ),
    ]);
    settings.startup_deadline = Duration::from_secs(1);

    let error = Application::build(settings, None)
        .await
        .unwrap_err()
        .to_string();

    assert!(
        error.starts_with("RabbitMQ unreachable for 1s at start"),
        "{error}"
    );
    assert!(!error.contains("guest:guest"), "{error}");
}

/// The management API's name of the connection whose client-provided name mentions `queue`.
async fn find_connection(http: &reqwest::Client, queue: &str) -> String {
    let give_up = tokio::time::Instant::now() + MANAGEMENT_LAG;
    loop {
        let connections: Vec<Value> = http
            .get("http://127.0.0.1:15672/api/connections")
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = connections.iter().find(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|name| name.contains(queue))
        });
        if let Some(name) = found.and_then(|c| c["name"].as_str()) {
            return name.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the sidecar's connection never appeared in the management API"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
