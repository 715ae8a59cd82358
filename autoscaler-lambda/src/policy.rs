//! The scaling policy as a pure function, so every rule is unit-tested without AWS.
//!
//! desired = clamp(ceil((QueueDepth + InFlight) / TARGET_MESSAGES_PER_WORKER), floor, MAX_WORKERS).
//! Scale out at once to the latest sample's count; scale in only to the highest count seen across the
//! stabilisation window (so a dip inside the window never sheds workers, and busy workers, counted in
//! `InFlight`, keep their seats); with no metric data, change nothing.
//!
//! The floor is `MIN_WORKERS`, except once the metrics show nothing queued and nothing in flight over the
//! whole last `SCALE_TO_ZERO_AFTER_SECONDS`: then it is zero, and an idle fleet costs nothing until the next
//! task scales it out again (after the next decision and a worker's start-up, a few minutes).

use serde::Serialize;

/// The policy's knobs, read from the function's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Messages (ready plus in flight) one worker is expected to hold; at least 1.
    pub target_per_worker: u32,
    /// The fewest workers the service keeps.
    pub min_workers: u32,
    /// The most workers the service gets; `min_workers <= max_workers`.
    pub max_workers: u32,
    /// How far back a scale-in looks for the highest desired count, in seconds.
    pub stabilization_seconds: u64,
    /// After this many seconds of metrics showing no message ready or in flight, the floor drops from
    /// `min_workers` to zero; 0 keeps `min_workers` at all times.
    pub scale_to_zero_after_seconds: u64,
}

/// The longest gap between metric points (seconds) that still counts as continuous data: the sidecar puts
/// a point every 10 s and CloudWatch keeps one per minute, so a longer gap means the sidecar was down, and a
/// quiet span with a hole in it is no proof that the fleet was idle.
pub const MAX_POINT_GAP_SECONDS: i64 = 180;

/// One point of the queue metrics: the figures the sidecar put for one period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The period's start, unix seconds.
    pub at: i64,
    /// Ready messages (`QueueDepth`).
    pub queue_depth: f64,
    /// Delivered, unacknowledged messages (`InFlight`): tasks a worker holds.
    pub in_flight: f64,
}

/// What the policy decided: the record the Lambda returns and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The service's desired count before this decision.
    pub previous: u32,
    /// The desired count after it (equal to `previous` when nothing changes).
    pub desired: u32,
    /// Why, for the log and the operator.
    pub reason: String,
}

impl Decision {
    /// Whether the service must be updated.
    pub fn changes(&self) -> bool {
        self.previous != self.desired
    }
}

impl Policy {
    /// The worker count `sample` alone asks for, clamped to `[min_workers, max_workers]`.
    pub fn wanted(&self, sample: &Sample) -> u32 {
        self.wanted_above(sample, self.min_workers)
    }

    /// The worker count `sample` alone asks for, clamped to `[floor, max_workers]`.
    fn wanted_above(&self, sample: &Sample, floor: u32) -> u32 {
        let messages = (sample.queue_depth.max(0.0) + sample.in_flight.max(0.0)).ceil();
        let target = f64::from(self.target_per_worker.max(1));
        let raw = (messages / target).ceil();
        // Float to int saturates; clamp bounds it to the configured range anyway.
        let raw = if raw >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            raw as u32
        };
        raw.clamp(floor.min(self.max_workers), self.max_workers)
    }

    /// Whether `samples` show the fleet idle over the whole `scale_to_zero_after_seconds` before `now`:
    /// every point in that span is zero (nothing ready, nothing in flight), and the points cover it with no
    /// gap longer than [`MAX_POINT_GAP_SECONDS`] (missing data never puts the fleet to sleep). Always
    /// false when scaling to zero is off.
    pub fn idle_long_enough(&self, samples: &[Sample], now: i64) -> bool {
        if self.scale_to_zero_after_seconds == 0 {
            return false;
        }
        let span = i64::try_from(self.scale_to_zero_after_seconds).unwrap_or(i64::MAX);
        let from = now.saturating_sub(span);
        let mut points: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from && s.at <= now)
            .collect();
        if points
            .iter()
            .any(|s| s.queue_depth > 0.0 || s.in_flight > 0.0)
        {
            return false;
        }
        points.sort_unstable_by_key(|s| s.at);
        let mut covered_to = from;
        for point in points {
            if point.at - covered_to > MAX_POINT_GAP_SECONDS {
                return false;
            }
            covered_to = point.at;
        }
        now - covered_to <= MAX_POINT_GAP_SECONDS
    }

    /// Decides the desired count from the service's `current` desired count and the samples read over
    /// the window ending at `now` (unix seconds). Samples may come in any order; samples older than the
    /// stabilisation window only count when they are the latest there is.
    pub fn decide(&self, current: u32, samples: &[Sample], now: i64) -> Decision {
        let Some(latest) = samples.iter().max_by_key(|s| s.at) else {
            return Decision {
                previous: current,
                desired: current,
                reason: "no metric data in the window: holding".to_owned(),
            };
        };
        let asleep = self.min_workers > 0 && self.idle_long_enough(samples, now);
        let floor = if asleep { 0 } else { self.min_workers };
        let now_wanted = self.wanted_above(latest, floor);
        let window_start =
            now.saturating_sub(i64::try_from(self.stabilization_seconds).unwrap_or(i64::MAX));
        let window_max = samples
            .iter()
            .filter(|s| s.at >= window_start)
            .map(|s| self.wanted_above(s, floor))
            .chain(std::iter::once(now_wanted))
            .max()
            .unwrap_or(now_wanted);
        let load = format!(
            "queue depth {}, in flight {}, target {} per worker",
            latest.queue_depth, latest.in_flight, self.target_per_worker
        );

        let (desired, reason) = if now_wanted > current {
            (
                now_wanted,
                format!("scale out at once: {load} wants {now_wanted}"),
            )
        } else if window_max < current {
            (
                window_max,
                format!(
                    "scale in to the highest count wanted over the last {} s ({window_max}): {load}",
                    self.stabilization_seconds
                ),
            )
        } else if window_max > now_wanted {
            (
                current,
                format!(
                    "holding: {load} wants {now_wanted}, but {window_max} was wanted within the last {} s",
                    self.stabilization_seconds
                ),
            )
        } else {
            (current, format!("holding: {load} wants {now_wanted}"))
        };
        let reason = if asleep {
            format!(
                "{reason}; nothing queued or in flight for {} s, so the floor is 0, not MIN_WORKERS={}",
                self.scale_to_zero_after_seconds, self.min_workers
            )
        } else {
            reason
        };
        Decision {
            previous: current,
            desired,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn policy() -> Policy {
        Policy {
            target_per_worker: 1,
            min_workers: 1,
            max_workers: 11,
            stabilization_seconds: 300,
            scale_to_zero_after_seconds: 0,
        }
    }

    fn sleepy() -> Policy {
        Policy {
            scale_to_zero_after_seconds: 900,
            ..policy()
        }
    }

    /// One point a minute over the last `minutes`, all with the given figures.
    fn minutes_of(minutes: i64, queue_depth: f64, in_flight: f64) -> Vec<Sample> {
        (0..=minutes)
            .map(|m| sample(m * 60, queue_depth, in_flight))
            .collect()
    }

    fn sample(seconds_ago: i64, queue_depth: f64, in_flight: f64) -> Sample {
        Sample {
            at: NOW - seconds_ago,
            queue_depth,
            in_flight,
        }
    }

    #[test]
    fn a_spike_scales_out_at_once() {
        let samples = [
            sample(240, 0.0, 1.0),
            sample(60, 0.0, 1.0),
            sample(0, 7.0, 1.0),
        ];
        let decision = policy().decide(1, &samples, NOW);
        assert_eq!(decision.desired, 8);
        assert!(decision.changes());
        assert!(
            decision.reason.starts_with("scale out"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn an_empty_queue_with_busy_workers_does_not_scale_in_below_the_busy_count() {
        // Five workers hold a task each and nothing waits: the window saw more, but the floor is five.
        let samples = [sample(600, 9.0, 0.0), sample(0, 0.0, 5.0)];
        let decision = policy().decide(9, &samples, NOW);
        assert_eq!(decision.desired, 5);
    }

    #[test]
    fn a_dip_inside_the_window_does_not_scale_in() {
        let samples = [
            sample(200, 4.0, 2.0),
            sample(120, 0.0, 1.0),
            sample(0, 0.0, 1.0),
        ];
        let decision = policy().decide(6, &samples, NOW);
        assert_eq!(decision.desired, 6);
        assert!(!decision.changes());
        assert!(
            decision.reason.contains("was wanted within"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn scale_in_goes_to_the_highest_count_seen_over_the_window() {
        let samples = [
            sample(900, 10.0, 0.0), // outside the window: ignored
            sample(240, 0.0, 3.0),
            sample(60, 0.0, 2.0),
            sample(0, 0.0, 1.0),
        ];
        let decision = policy().decide(10, &samples, NOW);
        assert_eq!(decision.desired, 3);
        assert!(
            decision.reason.starts_with("scale in"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn missing_data_holds_the_current_count() {
        let decision = policy().decide(4, &[], NOW);
        assert_eq!((decision.previous, decision.desired), (4, 4));
        assert!(decision.reason.contains("no metric data"));
    }

    #[test]
    fn the_count_is_clamped_to_the_configured_bounds() {
        let p = policy();
        assert_eq!(p.decide(1, &[sample(0, 500.0, 20.0)], NOW).desired, 11);
        assert_eq!(p.decide(3, &[sample(0, 0.0, 0.0)], NOW).desired, 1);
        let floor = Policy {
            min_workers: 2,
            ..p
        };
        assert_eq!(floor.decide(0, &[sample(0, 0.0, 0.0)], NOW).desired, 2);
    }

    #[test]
    fn a_target_above_one_divides_and_rounds_up() {
        let p = Policy {
            target_per_worker: 4,
            ..policy()
        };
        assert_eq!(p.decide(1, &[sample(0, 8.0, 1.0)], NOW).desired, 3);
        assert_eq!(p.decide(1, &[sample(0, 8.0, 0.0)], NOW).desired, 2);
    }

    #[test]
    fn a_lowered_maximum_scales_in_to_it() {
        let p = Policy {
            max_workers: 5,
            ..policy()
        };
        let decision = p.decide(11, &[sample(0, 40.0, 11.0)], NOW);
        assert_eq!(decision.desired, 5);
    }

    #[test]
    fn samples_arrive_in_any_order() {
        let samples = [sample(0, 2.0, 0.0), sample(240, 9.0, 0.0)];
        // The latest (2) is below current, but 9 was seen within the window: hold at 9.
        assert_eq!(policy().decide(9, &samples, NOW).desired, 9);
    }

    #[test]
    fn negative_figures_are_read_as_zero() {
        assert_eq!(policy().wanted(&sample(0, -3.0, -1.0)), 1);
    }

    #[test]
    fn a_fleet_idle_for_the_whole_span_scales_to_zero() {
        let decision = sleepy().decide(1, &minutes_of(16, 0.0, 0.0), NOW);
        assert_eq!(decision.desired, 0, "{decision:?}");
        assert!(
            decision
                .reason
                .contains("the floor is 0, not MIN_WORKERS=1"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn one_message_inside_the_span_keeps_the_floor() {
        let mut samples = minutes_of(16, 0.0, 0.0);
        samples[10].in_flight = 1.0; // ten minutes ago a worker held a task
        assert_eq!(sleepy().decide(1, &samples, NOW).desired, 1);
        let mut samples = minutes_of(16, 0.0, 0.0);
        samples[14].queue_depth = 1.0; // fourteen minutes ago a task waited
        assert_eq!(sleepy().decide(1, &samples, NOW).desired, 1);
    }

    #[test]
    fn a_quiet_span_shorter_than_the_setting_keeps_the_floor() {
        // Ten quiet minutes of data, fifteen asked for: the first five are not shown quiet.
        assert_eq!(
            sleepy().decide(1, &minutes_of(10, 0.0, 0.0), NOW).desired,
            1
        );
    }

    #[test]
    fn a_hole_in_the_metrics_never_puts_the_fleet_to_sleep() {
        let mut samples = minutes_of(16, 0.0, 0.0);
        samples.retain(|s| !(NOW - 600..NOW - 300).contains(&s.at)); // the sidecar was down 5 minutes
        assert!(!sleepy().idle_long_enough(&samples, NOW));
        assert_eq!(sleepy().decide(1, &samples, NOW).desired, 1);
        // Points that stopped arriving a while ago are no proof either.
        let stale: Vec<Sample> = minutes_of(20, 0.0, 0.0)
            .into_iter()
            .filter(|s| s.at <= NOW - 240)
            .collect();
        assert!(!sleepy().idle_long_enough(&stale, NOW));
    }

    #[test]
    fn scaling_to_zero_is_off_when_its_setting_is_zero() {
        assert_eq!(
            policy().decide(1, &minutes_of(60, 0.0, 0.0), NOW).desired,
            1
        );
    }

    #[test]
    fn the_next_task_wakes_a_sleeping_fleet_at_once() {
        let mut samples = minutes_of(30, 0.0, 0.0);
        samples[0].queue_depth = 1.0; // the latest point: one task waits
        let decision = sleepy().decide(0, &samples, NOW);
        assert_eq!((decision.previous, decision.desired), (0, 1));
        assert!(
            decision.reason.starts_with("scale out"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn a_sleeping_fleet_stays_at_zero_while_nothing_comes() {
        let decision = sleepy().decide(0, &minutes_of(30, 0.0, 0.0), NOW);
        assert_eq!((decision.previous, decision.desired), (0, 0));
        assert!(!decision.changes());
    }

    #[test]
    fn sleep_never_sheds_busy_workers() {
        // In-flight work is never idle, whatever the setting.
        let samples = minutes_of(30, 0.0, 3.0);
        assert_eq!(sleepy().decide(5, &samples, NOW).desired, 3);
    }
}
