//! The agent's Fargate size and whether its tasks fit in it.

use std::fmt;

/// Memory the agent process and its Chromium hold with no task in hand, MB, plus the worst a hostile
/// page can add before its renderer is stopped: `bench/footprint.sh` measured 345 MiB PSS at rest (the
/// intercept of its fit over 1-16 tasks, 2026-12-03, 2 cores), and each of the `BROWSER_MAX_TABS` = 4
/// tabs may grow to its V8 heap limit (`BROWSER_JS_HEAP_MB` = 512) before it crashes.
pub const MEMORY_BASE_MB: f64 = 345.0 + 4.0 * 512.0;

/// Memory each task in hand adds (its browser page, context and buffers), MB.
///
/// From `bench/footprint.sh` (2026-12-03): the slope of peak PSS over 1-16 tasks in hand, each visiting
/// JavaScript pages and using memory, was 18.2 MiB per task.
pub const MEMORY_PER_TASK_MB: f64 = 18.0;

/// The share of the task's memory a plan may fill; the rest is headroom for spikes and the runtime.
pub const MEMORY_USABLE_SHARE: f64 = 0.9;

/// One Fargate task size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentSize {
    pub vcpu: f64,
    pub memory_gb: f64,
}

impl fmt::Display for AgentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPU / {} GB", self.vcpu, self.memory_gb)
    }
}

/// Why a configuration is refused rather than simulated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    /// Fargate sells no such combination, so it has no price.
    #[error(
        "{size} is not a Fargate size (Linux: 0.25 vCPU with 0.5, 1 or 2 GB; 0.5 vCPU with 1-4 GB; 1 vCPU with \
         2-8 GB; 2 vCPU with 4-16 GB; 4 vCPU with 8-30 GB, in 1 GB steps; 8 vCPU with 16-60 GB in 4 GB steps; \
         16 vCPU with 32-120 GB in 8 GB steps)"
    )]
    NotAFargateSize { size: AgentSize },
    /// The agent at rest plus `concurrency` tasks needs more memory than the size leaves usable.
    #[error(
        "{concurrency} tasks per agent do not fit {size}: {MEMORY_BASE_MB} MB + {concurrency} x \
         {MEMORY_PER_TASK_MB} MB = {needed_mb} MB, above the {usable_mb:.0} MB usable \
         ({MEMORY_USABLE_SHARE} of the task's memory)"
    )]
    DoesNotFit {
        size: AgentSize,
        concurrency: u32,
        needed_mb: f64,
        usable_mb: f64,
    },
}

/// The memory sizes Fargate offers with `vcpu` (Linux), in GB; empty for a CPU size it does not sell.
pub fn fargate_memory_sizes(vcpu: f64) -> Vec<f64> {
    let steps = |from: u32, to: u32, step: usize| -> Vec<f64> {
        (from..=to).step_by(step).map(f64::from).collect()
    };
    let quarters = vcpu * 4.0;
    if quarters.fract() != 0.0 {
        return Vec::new();
    }
    match quarters as u32 {
        1 => vec![0.5, 1.0, 2.0],
        2 => steps(1, 4, 1),
        4 => steps(2, 8, 1),
        8 => steps(4, 16, 1),
        16 => steps(8, 30, 1),
        32 => steps(16, 60, 4),
        64 => steps(32, 120, 8),
        _ => Vec::new(),
    }
}

/// Refuses a size Fargate does not sell, or one where `concurrency` tasks do not fit in memory.
///
/// # Errors
/// [`SizeError`] saying which and by how much.
pub fn check(size: AgentSize, concurrency: u32) -> Result<(), SizeError> {
    if !fargate_memory_sizes(size.vcpu).contains(&size.memory_gb) {
        return Err(SizeError::NotAFargateSize { size });
    }
    let needed_mb = MEMORY_BASE_MB + f64::from(concurrency) * MEMORY_PER_TASK_MB;
    let usable_mb = size.memory_gb * 1024.0 * MEMORY_USABLE_SHARE;
    if needed_mb > usable_mb {
        return Err(SizeError::DoesNotFit {
            size,
            concurrency,
            needed_mb,
            usable_mb,
        });
    }
    Ok(())
}

/// The Fargate size with `vcpu` and the least memory that holds `concurrency` tasks, if any does.
pub fn smallest_fitting(vcpu: f64, concurrency: u32) -> Option<AgentSize> {
    fargate_memory_sizes(vcpu)
        .into_iter()
        .map(|memory_gb| AgentSize { vcpu, memory_gb })
        .find(|&size| check(size, concurrency).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_BY_FOUR: AgentSize = AgentSize {
        vcpu: 1.0,
        memory_gb: 4.0,
    };

    #[test]
    fn eight_tasks_fit_one_vcpu_with_four_gb() {
        // 2393 + 8 x 18 = 2537 MB of 3686 MB usable.
        assert_eq!(check(ONE_BY_FOUR, 8), Ok(()));
    }

    #[test]
    fn tasks_that_overflow_the_memory_are_refused_with_the_figures() {
        // 2393 + 80 x 18 = 3833 MB > 4 x 1024 x 0.9 = 3686.4 MB.
        let error = check(ONE_BY_FOUR, 80).expect_err("80 tasks need 3833 MB");
        assert_eq!(
            error,
            SizeError::DoesNotFit {
                size: ONE_BY_FOUR,
                concurrency: 80,
                needed_mb: 3833.0,
                usable_mb: 4.0 * 1024.0 * 0.9,
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("3833 MB") && message.contains("3686 MB usable"),
            "{message}"
        );
    }

    #[test]
    fn a_size_fargate_does_not_sell_is_refused() {
        let size = AgentSize {
            vcpu: 1.0,
            memory_gb: 12.0,
        };
        assert_eq!(check(size, 1), Err(SizeError::NotAFargateSize { size }));
        let odd = AgentSize {
            vcpu: 0.3,
            memory_gb: 1.0,
        };
        assert!(check(odd, 1).is_err());
    }

    #[test]
    fn the_smallest_fitting_size_is_the_first_memory_step_that_holds_the_tasks() {
        // 2393 + 24 x 18 = 2825 MB needs 4 GB (3686 MB usable; 3 GB gives 2765).
        assert_eq!(
            smallest_fitting(1.0, 24),
            Some(AgentSize {
                vcpu: 1.0,
                memory_gb: 4.0
            })
        );
        // 2393 + 400 x 18 = 9593 MB: more than 8 GB x 0.9, the most 1 vCPU gets.
        assert_eq!(smallest_fitting(1.0, 400), None);
    }
}
