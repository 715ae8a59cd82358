//! The autoscaler against moto through the real SDK clients: the metrics it reads were put with
//! PutMetricData, and the desired count it sets is read back with DescribeServices. Needs moto running
//! (`scripts/ensure-moto.sh`); a test fails with a clear message when it is not.

mod helpers;
mod runtime_api;

use autoscaler_lambda::handler::unix_now;
use autoscaler_lambda::{AutoscaleError, AwsCloud, CloudError, decide_and_apply};
use helpers::{Fleet, aws_env};
use runtime_api::{Answer, scheduled_event};
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn the_handler_scales_a_moto_service_to_the_queue_metrics() {
    let fleet = Fleet::create(1).await;
    let now = unix_now();
    fleet.put_metrics(now - 30, 6.0, 2.0).await;

    let decision = fleet.decide(now).await.unwrap();

    assert_eq!(
        (decision.previous, decision.desired),
        (1, 8),
        "{decision:?}"
    );
    assert_eq!(fleet.desired_count().await, 8);
    fleet.delete().await;
}

#[tokio::test]
async fn a_busy_fleet_over_an_empty_queue_keeps_its_busy_workers() {
    let fleet = Fleet::create(6).await;
    let now = unix_now();
    fleet.put_metrics(now - 30, 0.0, 4.0).await;

    let decision = fleet.decide(now).await.unwrap();

    assert_eq!(
        (decision.previous, decision.desired),
        (6, 4),
        "{decision:?}"
    );
    assert_eq!(fleet.desired_count().await, 4);
    fleet.delete().await;
}

#[tokio::test]
async fn a_fleet_idle_for_the_whole_span_sleeps_at_zero_and_the_next_task_wakes_it() {
    let fleet = Fleet::create(1).await;
    let now = unix_now();
    // The sidecar's points over the last 16 minutes: nothing queued, nothing in flight.
    for minute in 0..16 {
        fleet.put_metrics(now - 30 - minute * 60, 0.0, 0.0).await;
    }
    let asleep = fleet.decide(now).await.unwrap();
    assert_eq!((asleep.previous, asleep.desired), (1, 0), "{asleep:?}");
    assert!(
        asleep.reason.contains("the floor is 0, not MIN_WORKERS=1"),
        "{}",
        asleep.reason
    );
    assert_eq!(fleet.desired_count().await, 0);

    // A task is published: the sidecar's next point shows it ready.
    fleet.put_metrics(now - 10, 1.0, 0.0).await;
    let awake = fleet.decide(now).await.unwrap();
    assert_eq!((awake.previous, awake.desired), (0, 1), "{awake:?}");
    assert_eq!(fleet.desired_count().await, 1);
    fleet.delete().await;
}

#[tokio::test]
async fn a_fleet_with_a_hole_in_its_metrics_keeps_its_floor() {
    let fleet = Fleet::create(1).await;
    let now = unix_now();
    // Quiet, but the sidecar put nothing between 11 and 5 minutes ago.
    for minute in (0..5).chain(11..16) {
        fleet.put_metrics(now - 30 - minute * 60, 0.0, 0.0).await;
    }
    let decision = fleet.decide(now).await.unwrap();
    assert_eq!(
        (decision.previous, decision.desired),
        (1, 1),
        "{decision:?}"
    );
    assert_eq!(fleet.desired_count().await, 1);
    fleet.delete().await;
}

#[tokio::test]
async fn a_dry_run_leaves_the_moto_service_as_it_is() {
    let mut fleet = Fleet::create(2).await;
    fleet.settings.dry_run = true;
    let now = unix_now();
    fleet.put_metrics(now - 30, 9.0, 0.0).await;

    let decision = fleet.decide(now).await.unwrap();

    assert_eq!(decision.desired, 9);
    assert!(
        decision.reason.starts_with("dry run"),
        "{}",
        decision.reason
    );
    assert_eq!(fleet.desired_count().await, 2);
    fleet.delete().await;
}

#[tokio::test]
async fn without_metric_data_the_moto_service_is_left_alone() {
    let fleet = Fleet::create(3).await;

    let decision = fleet.decide(unix_now()).await.unwrap();

    assert_eq!((decision.previous, decision.desired), (3, 3));
    assert!(
        decision.reason.contains("no metric data"),
        "{}",
        decision.reason
    );
    assert_eq!(fleet.desired_count().await, 3);
    fleet.delete().await;
}

#[tokio::test]
async fn a_service_missing_from_the_cluster_is_a_clear_error() {
    let fleet = Fleet::create(1).await;
    let mut settings = fleet.settings.clone();
    settings.service = "no-such-service".to_owned();

    let cloud = AwsCloud::new(&fleet.config, &settings);
    let error = decide_and_apply(&cloud, &settings, unix_now())
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            AutoscaleError::Cloud(CloudError::ServiceNotFound { .. })
        ),
        "{error:?}"
    );
    fleet.delete().await;
}

#[tokio::test]
async fn the_once_command_prints_the_decision_as_json_and_applies_it() {
    let fleet = Fleet::create(1).await;
    fleet.put_metrics(unix_now() - 30, 3.0, 1.0).await;

    let output = Command::new(env!("CARGO_BIN_EXE_autoscaler-lambda"))
        .arg("once")
        .envs(aws_env())
        .env("ECS_CLUSTER", &fleet.settings.cluster)
        .env("ECS_SERVICE", &fleet.settings.service)
        .env("METRICS_NAMESPACE", &fleet.settings.namespace)
        .env("QUEUE_NAME", &fleet.settings.queue)
        .env("MAX_WORKERS", "3")
        .env("LOG_FORMAT", "json")
        .output()
        .expect("run autoscaler-lambda once");

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let printed: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .last()
            .expect("the decision is the last line on stdout"),
    )
    .unwrap();
    assert_eq!(printed["previous"], 1);
    assert_eq!(printed["desired"], 3, "clamped to MAX_WORKERS: {printed}");
    assert!(printed["reason"].as_str().unwrap().starts_with("scale out"));
    assert_eq!(fleet.desired_count().await, 3);
    fleet.delete().await;
}

#[test]
fn an_invalid_max_workers_stops_the_once_command_with_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_autoscaler-lambda"))
        .arg("once")
        .envs(aws_env())
        .env("ECS_CLUSTER", "c")
        .env("ECS_SERVICE", "s")
        .env("MAX_WORKERS", "lots")
        .output()
        .expect("run autoscaler-lambda once");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MAX_WORKERS is invalid"), "{stderr}");
}

/// Runs the `bootstrap` binary (no arguments) against the fake Runtime API for `fleet`'s service and
/// returns its answer to one scheduled event.
async fn invoke_bootstrap(fleet: &Fleet, cluster: &str) -> Answer {
    let mut api = runtime_api::start(vec![("invocation-1".to_owned(), scheduled_event())]).await;
    let mut bootstrap = tokio::process::Command::new(env!("CARGO_BIN_EXE_autoscaler-lambda"))
        .envs(aws_env())
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", "autoscaler")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("ECS_CLUSTER", cluster)
        .env("ECS_SERVICE", &fleet.settings.service)
        .env("METRICS_NAMESPACE", &fleet.settings.namespace)
        .env("QUEUE_NAME", &fleet.settings.queue)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the bootstrap binary");
    let answer = tokio::time::timeout(Duration::from_secs(30), api.answers.recv())
        .await
        .expect("the function answers within 30 s")
        .expect("the fake Runtime API is running");
    bootstrap.kill().await.expect("stop the bootstrap binary");
    assert_eq!(answer.0, "invocation-1");
    answer.1
}

#[tokio::test]
async fn the_bootstrap_answers_a_scheduled_event_through_the_runtime_api() {
    let fleet = Fleet::create(2).await;
    fleet.put_metrics(unix_now() - 30, 4.0, 1.0).await;

    let answer = invoke_bootstrap(&fleet, &fleet.settings.cluster).await;

    let Answer::Response(decision) = answer else {
        panic!("expected a response, got {answer:?}");
    };
    assert_eq!(decision["previous"], 2, "{decision}");
    assert_eq!(decision["desired"], 5, "{decision}");
    assert!(decision["reason"].is_string());
    assert_eq!(fleet.desired_count().await, 5);
    fleet.delete().await;
}

#[tokio::test]
async fn a_failed_decision_reaches_lambda_as_a_typed_error() {
    let fleet = Fleet::create(1).await;
    fleet.put_metrics(unix_now() - 30, 4.0, 0.0).await;

    let answer = invoke_bootstrap(&fleet, "no-such-cluster").await;

    let Answer::Error(diagnostic) = answer else {
        panic!("expected an error, got {answer:?}");
    };
    assert_eq!(diagnostic["errorType"], "EcsDescribeFailed", "{diagnostic}");
    assert!(
        diagnostic["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("ClusterNotFoundException"),
        "{diagnostic}"
    );
    assert_eq!(fleet.desired_count().await, 1);
    fleet.delete().await;
}
