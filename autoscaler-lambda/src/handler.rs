//! One decision: read the window's metrics and the service's desired count, apply the [`Policy`], update the
//! service when the count changes (unless `DRY_RUN`), and return and log `{"previous", "desired", "reason"}`.
//!
//! [`Policy`]: crate::policy::Policy

use crate::cloud::{Cloud, CloudError, PERIOD_SECONDS};
use crate::policy::Decision;
use crate::settings::Settings;
use lambda_runtime::Diagnostic;

/// How far back the metrics are read at least, so a short stabilisation window still sees the latest
/// minute's point even when CloudWatch publishes it late.
pub const MIN_LOOKBACK_SECONDS: u64 = 300;

/// A decision could not be made or carried out.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// Reading the metrics or the service, or updating it, failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

impl From<AutoscaleError> for Diagnostic {
    fn from(error: AutoscaleError) -> Self {
        let error_type = match &error {
            AutoscaleError::Cloud(CloudError::Metrics(_)) => "MetricsUnavailable",
            AutoscaleError::Cloud(CloudError::Describe { .. }) => "EcsDescribeFailed",
            AutoscaleError::Cloud(CloudError::ServiceNotFound { .. }) => "EcsServiceNotFound",
            AutoscaleError::Cloud(CloudError::Update { .. }) => "EcsUpdateFailed",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Makes one decision at `now` (unix seconds) and carries it out.
///
/// # Errors
/// [`AutoscaleError`] when the metrics or the service cannot be read, or the update is refused.
#[tracing::instrument(skip_all, fields(cluster = %settings.cluster, service = %settings.service, dry_run = settings.dry_run))]
pub async fn decide_and_apply<C: Cloud>(
    cloud: &C,
    settings: &Settings,
    now: i64,
) -> Result<Decision, AutoscaleError> {
    // The stabilisation window, and the idle span a scale to zero must see whole.
    let lookback = settings
        .policy
        .stabilization_seconds
        .max(settings.policy.scale_to_zero_after_seconds)
        .max(MIN_LOOKBACK_SECONDS);
    let start = now - i64::try_from(lookback).unwrap_or(i64::MAX / 2);
    let end = now + i64::from(PERIOD_SECONDS);
    let samples = cloud.queue_samples(start, end).await?;
    let current = cloud.desired_count().await?;
    let mut decision = settings.policy.decide(current, &samples, now);
    if decision.changes() {
        if settings.dry_run {
            decision.reason = format!("dry run, not applied: {}", decision.reason);
        } else {
            cloud.set_desired_count(decision.desired).await?;
        }
    }
    tracing::info!(
        previous = decision.previous,
        desired = decision.desired,
        reason = %decision.reason,
        samples = samples.len(),
        "autoscaling decision"
    );
    Ok(decision)
}

/// The current time in unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, Sample};
    use std::sync::Mutex;

    const NOW: i64 = 1_800_000_000;

    /// An in-memory cloud recording the calls it gets.
    #[derive(Debug)]
    struct FakeCloud {
        samples: Vec<Sample>,
        desired: Mutex<u32>,
        updates: Mutex<Vec<u32>>,
        asked: Mutex<Option<(i64, i64)>>,
    }

    impl FakeCloud {
        fn new(desired: u32, samples: Vec<Sample>) -> Self {
            Self {
                samples,
                desired: Mutex::new(desired),
                updates: Mutex::new(Vec::new()),
                asked: Mutex::new(None),
            }
        }
    }

    impl Cloud for FakeCloud {
        async fn queue_samples(&self, start: i64, end: i64) -> Result<Vec<Sample>, CloudError> {
            *self.asked.lock().unwrap() = Some((start, end));
            Ok(self
                .samples
                .iter()
                .copied()
                .filter(|s| s.at >= start && s.at < end)
                .collect())
        }

        async fn desired_count(&self) -> Result<u32, CloudError> {
            Ok(*self.desired.lock().unwrap())
        }

        async fn set_desired_count(&self, desired: u32) -> Result<(), CloudError> {
            self.updates.lock().unwrap().push(desired);
            *self.desired.lock().unwrap() = desired;
            Ok(())
        }
    }

    /// A cloud whose metrics read fails.
    #[derive(Debug)]
    struct BrokenMetrics;

    impl Cloud for BrokenMetrics {
        async fn queue_samples(&self, _: i64, _: i64) -> Result<Vec<Sample>, CloudError> {
            Err(CloudError::Metrics("connection refused".into()))
        }
        async fn desired_count(&self) -> Result<u32, CloudError> {
            Ok(1)
        }
        async fn set_desired_count(&self, _: u32) -> Result<(), CloudError> {
            panic!("must not update without metrics")
        }
    }

    fn settings(dry_run: bool) -> Settings {
        Settings {
            cluster: "c".into(),
            service: "s".into(),
            queue: "q".into(),
            namespace: "n".into(),
            policy: Policy {
                target_per_worker: 1,
                min_workers: 1,
                max_workers: 11,
                stabilization_seconds: 300,
                scale_to_zero_after_seconds: 0,
            },
            dry_run,
        }
    }

    fn sample(at: i64, queue_depth: f64, in_flight: f64) -> Sample {
        Sample {
            at,
            queue_depth,
            in_flight,
        }
    }

    #[tokio::test]
    async fn a_changed_count_updates_the_service_once() {
        let cloud = FakeCloud::new(1, vec![sample(NOW - 60, 4.0, 1.0)]);
        let decision = decide_and_apply(&cloud, &settings(false), NOW)
            .await
            .unwrap();
        assert_eq!((decision.previous, decision.desired), (1, 5));
        assert_eq!(*cloud.updates.lock().unwrap(), vec![5]);
    }

    #[tokio::test]
    async fn an_unchanged_count_does_not_call_update_service() {
        let cloud = FakeCloud::new(5, vec![sample(NOW - 60, 4.0, 1.0)]);
        let decision = decide_and_apply(&cloud, &settings(false), NOW)
            .await
            .unwrap();
        assert!(!decision.changes());
        assert!(cloud.updates.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_dry_run_decides_but_never_updates() {
        let cloud = FakeCloud::new(1, vec![sample(NOW - 60, 8.0, 0.0)]);
        let decision = decide_and_apply(&cloud, &settings(true), NOW)
            .await
            .unwrap();
        assert_eq!(decision.desired, 8);
        assert!(
            decision.reason.starts_with("dry run"),
            "{}",
            decision.reason
        );
        assert!(cloud.updates.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_metric_data_changes_nothing() {
        let cloud = FakeCloud::new(3, vec![]);
        let decision = decide_and_apply(&cloud, &settings(false), NOW)
            .await
            .unwrap();
        assert_eq!((decision.previous, decision.desired), (3, 3));
        assert!(cloud.updates.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_metrics_are_read_over_the_stabilisation_window_and_the_current_minute() {
        let cloud = FakeCloud::new(1, vec![]);
        let mut long = settings(false);
        long.policy.stabilization_seconds = 900;
        decide_and_apply(&cloud, &long, NOW).await.unwrap();
        assert_eq!(*cloud.asked.lock().unwrap(), Some((NOW - 900, NOW + 60)));
        long.policy.stabilization_seconds = 0;
        decide_and_apply(&cloud, &long, NOW).await.unwrap();
        assert_eq!(*cloud.asked.lock().unwrap(), Some((NOW - 300, NOW + 60)));
        // A scale to zero must see its whole idle span.
        long.policy.scale_to_zero_after_seconds = 1800;
        decide_and_apply(&cloud, &long, NOW).await.unwrap();
        assert_eq!(*cloud.asked.lock().unwrap(), Some((NOW - 1800, NOW + 60)));
    }

    #[tokio::test]
    async fn a_metrics_failure_is_an_error_that_maps_to_a_lambda_diagnostic() {
        let error = decide_and_apply(&BrokenMetrics, &settings(false), NOW)
            .await
            .unwrap_err();
        let diagnostic = Diagnostic::from(error);
        assert_eq!(diagnostic.error_type, "MetricsUnavailable");
        assert!(diagnostic.error_message.contains("connection refused"));
    }

    #[test]
    fn the_decision_serialises_as_previous_desired_reason() {
        let decision = Decision {
            previous: 1,
            desired: 2,
            reason: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&decision).unwrap(),
            serde_json::json!({"previous": 1, "desired": 2, "reason": "r"})
        );
    }
}
