//! What a fleet costs on Fargate: list prices and per-second billing.

use crate::size::AgentSize;

/// USD per vCPU-hour: Fargate, us-east-1, Linux/x86, on demand.
///
/// From the AWS Fargate pricing page (<https://aws.amazon.com/fargate/pricing/>), as listed in 2024; this
/// machine cannot reach the page to re-check. The list price since 2019.
pub const USD_PER_VCPU_HOUR: f64 = 0.04048;

/// USD per GB-hour of task memory: Fargate, us-east-1, Linux/x86, on demand.
///
/// From the AWS Fargate pricing page (<https://aws.amazon.com/fargate/pricing/>), as listed in 2024; this
/// machine cannot reach the page to re-check. The list price since 2019.
pub const USD_PER_GB_HOUR: f64 = 0.004445;

/// Fargate bills Linux tasks per second, from the image pull to the task's stop, with a one-minute minimum.
pub const MINIMUM_BILLED_SECONDS: u64 = 60;

/// What one second of one worker of `size` costs, USD.
pub fn usd_per_worker_second(size: AgentSize) -> f64 {
    (size.vcpu * USD_PER_VCPU_HOUR + size.memory_gb * USD_PER_GB_HOUR) / 3600.0
}

/// The seconds billed for a worker that lived `lifetime` seconds.
pub fn billed_seconds(lifetime: u64) -> u64 {
    lifetime.max(MINIMUM_BILLED_SECONDS)
}

/// USD per 1,000 completed tasks; `None` when nothing completed.
pub fn usd_per_thousand_tasks(total_usd: f64, completed: usize) -> Option<f64> {
    (completed > 0).then(|| total_usd / completed as f64 * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_worker_second_costs_the_vcpu_and_memory_list_prices() {
        let seed_size = AgentSize {
            vcpu: 1.0,
            memory_gb: 3.0,
        };
        // 0.04048 + 3 x 0.004445 = 0.053815 USD an hour.
        assert!(close(usd_per_worker_second(seed_size) * 3600.0, 0.053_815));
        let bigger = AgentSize {
            vcpu: 2.0,
            memory_gb: 8.0,
        };
        assert!(close(
            usd_per_worker_second(bigger) * 3600.0,
            2.0 * 0.04048 + 8.0 * 0.004445
        ));
    }

    #[test]
    fn a_worker_is_billed_at_least_a_minute() {
        assert_eq!(billed_seconds(0), 60);
        assert_eq!(billed_seconds(59), 60);
        assert_eq!(billed_seconds(61), 61);
    }

    #[test]
    fn cost_per_thousand_tasks_divides_by_the_completed_count() {
        assert_eq!(usd_per_thousand_tasks(2.0, 400), Some(5.0));
        assert_eq!(usd_per_thousand_tasks(2.0, 0), None);
    }
}
