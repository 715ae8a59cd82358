//! The workload every run replays: a seeded generator and the bursty arrival trace drawn from it.

/// How long one run lasts, in seconds: every configuration is charged for the same span.
pub const HORIZON: u64 = 4 * 3600;

/// The fewest wall seconds one tick spends waiting on the model.
pub const MODEL_WAIT_PER_TICK_MIN: f64 = 1.0;

/// The most wall seconds one tick spends waiting on the model.
pub const MODEL_WAIT_PER_TICK_MAX: f64 = 3.0;

/// xorshift64*: tiny, deterministic, good enough for a workload model.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -self.unit().ln() * mean
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// One task of the trace, as it would run alone on an uncontended agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Task {
    /// When it is published, seconds from the start of the run.
    pub arrival: u64,
    /// Wall seconds from start to done with the CPU to itself.
    pub duration: u64,
    /// Steps of the agent's loop; each costs [`crate::fleet::CPU_SECONDS_PER_TICK`] of CPU.
    pub ticks: u32,
}

/// Arrival times, durations and tick counts, the same for every configuration.
///
/// Tick counts come from a second stream, so arrivals and durations do not depend on them.
pub fn trace(seed: u64) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    let mut arrivals = Vec::new();
    let poisson = |rng: &mut Rng, from: u64, to: u64, mean_gap: f64, out: &mut Vec<u64>| {
        let mut t = from as f64 + rng.exponential(mean_gap);
        while t < to as f64 {
            out.push(t as u64);
            t += rng.exponential(mean_gap);
        }
    };
    poisson(&mut rng, 0, 20 * 60, 300.0, &mut arrivals);
    arrivals.extend((0..200).map(|_| 20 * 60 + (rng.unit() * 60.0) as u64));
    poisson(&mut rng, 21 * 60, 90 * 60, 120.0, &mut arrivals);
    arrivals.extend((0..80).map(|_| 90 * 60 + (rng.unit() * 60.0) as u64));
    poisson(&mut rng, 91 * 60, 150 * 60, 180.0, &mut arrivals);
    arrivals.sort_unstable();
    let mut tick_rng = Rng::new(seed ^ 0x71C4_5EED);
    arrivals
        .into_iter()
        .map(|arrival| {
            let duration = (180.0 * (0.7 * rng.normal()).exp()).clamp(20.0, 1800.0) as u64;
            let wait_per_tick = MODEL_WAIT_PER_TICK_MIN
                + (MODEL_WAIT_PER_TICK_MAX - MODEL_WAIT_PER_TICK_MIN) * tick_rng.unit();
            Task {
                arrival,
                duration,
                ticks: ((duration as f64 / wait_per_tick).round() as u32).max(1),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_is_the_same_for_the_same_seed() {
        let a = trace(7);
        assert_eq!(a, trace(7));
        assert!(a.len() > 280, "two bursts of 200 and 80 plus the trickles");
    }

    #[test]
    fn a_median_task_has_about_ninety_ticks() {
        let tasks = trace(42);
        let mut ticks: Vec<u32> = tasks.iter().map(|t| t.ticks).collect();
        ticks.sort_unstable();
        let median = ticks[ticks.len() / 2];
        assert!((60..=130).contains(&median), "median ticks {median}");
        assert!(tasks.iter().all(|t| {
            let per_tick = t.duration as f64 / f64::from(t.ticks);
            t.ticks == 1 || (0.8..=3.5).contains(&per_tick)
        }));
    }
}
