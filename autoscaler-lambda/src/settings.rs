//! The Lambda's settings, read from the function's environment at every cold start,
//! so operators change `MAX_WORKERS` and the others without a rebuild. An invalid value is an error that
//! names the variable, never a silent default.

use crate::policy::Policy;
use shared::settings::{Reader, SettingsError, Source};

/// The default CloudWatch namespace the sidecar puts into.
pub const DEFAULT_NAMESPACE: &str = "Euglena/RabbitMQ";

/// `SCALE_TO_ZERO_AFTER_SECONDS` by default: a fleet idle for 15 minutes sleeps until the next task.
pub const DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS: u64 = 900;

/// The shortest idle span accepted before the fleet may sleep (0 turns sleeping off). Shorter spans would
/// put the fleet to sleep between the tasks of a slow trickle, so each would pay a worker's start-up; and
/// the agents sweep the dead-letter queue every minute, so ten quiet minutes leave it swept before the last
/// agent stops.
pub const MIN_SCALE_TO_ZERO_AFTER_SECONDS: u64 = 600;

/// Everything one decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ECS_CLUSTER`: the cluster holding the agent service.
    pub cluster: String,
    /// `ECS_SERVICE`: the agent service whose desired count is set.
    pub service: String,
    /// `QUEUE_NAME` (defaults to `AGENT_INPUT_QUEUE`, then `agent.mandates`): the metrics' `QueueName`.
    pub queue: String,
    /// `METRICS_NAMESPACE` (default `Euglena/RabbitMQ`): where the sidecar puts the metrics.
    pub namespace: String,
    /// `TARGET_MESSAGES_PER_WORKER`, `MIN_WORKERS`, `MAX_WORKERS`, `SCALE_IN_STABILIZATION_SECONDS`,
    /// `SCALE_TO_ZERO_AFTER_SECONDS`.
    pub policy: Policy,
    /// `DRY_RUN`: decide and log, but never call UpdateService.
    pub dry_run: bool,
}

impl Settings {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first missing or invalid variable.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_source(&Reader::new(shared::settings::ProcessEnv))
    }

    /// Reads the settings from `reader`.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first missing or invalid variable, `MIN_WORKERS` above `MAX_WORKERS`, or
    /// `SCALE_TO_ZERO_AFTER_SECONDS` other than 0 below [`MIN_SCALE_TO_ZERO_AFTER_SECONDS`].
    pub fn from_source<S: Source>(reader: &Reader<S>) -> Result<Self, SettingsError> {
        let cluster = reader
            .optional("ECS_CLUSTER")
            .ok_or(SettingsError::Missing("ECS_CLUSTER"))?;
        let service = reader
            .optional("ECS_SERVICE")
            .ok_or(SettingsError::Missing("ECS_SERVICE"))?;
        let queue = reader
            .optional("QUEUE_NAME")
            .unwrap_or_else(|| reader.string_or("AGENT_INPUT_QUEUE", shared::queue::DEFAULT_QUEUE));
        let namespace = reader.string_or("METRICS_NAMESPACE", DEFAULT_NAMESPACE);
        let min_workers = reader.ranged("MIN_WORKERS", 1_u32, 0, 1000)?;
        let max_workers = reader.ranged("MAX_WORKERS", 11_u32, 1, 1000)?;
        if min_workers > max_workers {
            return Err(SettingsError::Invalid {
                name: "MIN_WORKERS",
                reason: format!("must not exceed MAX_WORKERS ({min_workers} > {max_workers})"),
            });
        }
        let scale_to_zero_after_seconds = reader.ranged(
            "SCALE_TO_ZERO_AFTER_SECONDS",
            DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS,
            0,
            86_400,
        )?;
        if (1..MIN_SCALE_TO_ZERO_AFTER_SECONDS).contains(&scale_to_zero_after_seconds) {
            return Err(SettingsError::Invalid {
                name: "SCALE_TO_ZERO_AFTER_SECONDS",
                reason: format!(
                    "must be 0 (never scale to zero) or at least {MIN_SCALE_TO_ZERO_AFTER_SECONDS}, got \
                     {scale_to_zero_after_seconds}"
                ),
            });
        }
        let policy = Policy {
            target_per_worker: reader.ranged("TARGET_MESSAGES_PER_WORKER", 1_u32, 1, 10_000)?,
            min_workers,
            max_workers,
            stabilization_seconds: reader.ranged(
                "SCALE_IN_STABILIZATION_SECONDS",
                300_u64,
                0,
                86_400,
            )?,
            scale_to_zero_after_seconds,
        };
        Ok(Self {
            cluster,
            service,
            queue,
            namespace,
            policy,
            dry_run: reader.bool_or("DRY_RUN", false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut all = vec![("ECS_CLUSTER", "euglena"), ("ECS_SERVICE", "agent")];
        all.extend_from_slice(pairs);
        Settings::from_source(&Reader::from_pairs(&all))
    }

    #[test]
    fn the_defaults_load_with_only_the_cluster_and_service_set() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.queue, "agent.mandates");
        assert_eq!(settings.namespace, "Euglena/RabbitMQ");
        assert_eq!(
            settings.policy,
            Policy {
                target_per_worker: 1,
                min_workers: 1,
                max_workers: 11,
                stabilization_seconds: 300,
                scale_to_zero_after_seconds: 900,
            }
        );
        assert!(!settings.dry_run);
    }

    #[test]
    fn the_cluster_is_required() {
        let error = Settings::from_source(&Reader::from_pairs(&[])).unwrap_err();
        assert_eq!(error.to_string(), "ECS_CLUSTER must be set");
    }

    #[test]
    fn an_invalid_max_workers_is_an_error_not_a_default() {
        let error = load(&[("MAX_WORKERS", "eleven")]).unwrap_err().to_string();
        assert!(error.starts_with("MAX_WORKERS is invalid"), "{error}");
        let error = load(&[("MAX_WORKERS", "0")]).unwrap_err().to_string();
        assert!(error.contains("between 1 and 1000"), "{error}");
    }

    #[test]
    fn a_minimum_above_the_maximum_is_refused() {
        let error = load(&[("MIN_WORKERS", "5"), ("MAX_WORKERS", "4")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "MIN_WORKERS is invalid: must not exceed MAX_WORKERS (5 > 4)"
        );
    }

    #[test]
    fn operators_override_every_knob_from_the_environment() {
        let settings = load(&[
            ("QUEUE_NAME", "q1"),
            ("AGENT_INPUT_QUEUE", "ignored"),
            ("TARGET_MESSAGES_PER_WORKER", "3"),
            ("MIN_WORKERS", "0"),
            ("MAX_WORKERS", "40"),
            ("SCALE_IN_STABILIZATION_SECONDS", "600"),
            ("SCALE_TO_ZERO_AFTER_SECONDS", "3600"),
            ("DRY_RUN", "true"),
        ])
        .unwrap();
        assert_eq!(settings.queue, "q1");
        assert_eq!(settings.policy.target_per_worker, 3);
        assert_eq!(settings.policy.min_workers, 0);
        assert_eq!(settings.policy.max_workers, 40);
        assert_eq!(settings.policy.stabilization_seconds, 600);
        assert_eq!(settings.policy.scale_to_zero_after_seconds, 3600);
        assert!(settings.dry_run);
    }

    #[test]
    fn scaling_to_zero_is_either_off_or_after_ten_minutes_at_least() {
        let off = load(&[("SCALE_TO_ZERO_AFTER_SECONDS", "0")]).unwrap();
        assert_eq!(off.policy.scale_to_zero_after_seconds, 0);
        let error = load(&[("SCALE_TO_ZERO_AFTER_SECONDS", "120")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "SCALE_TO_ZERO_AFTER_SECONDS is invalid: must be 0 (never scale to zero) or at least 600, got 120"
        );
    }

    #[test]
    fn a_zero_target_is_refused() {
        let error = load(&[("TARGET_MESSAGES_PER_WORKER", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("TARGET_MESSAGES_PER_WORKER is invalid"),
            "{error}"
        );
    }
}
