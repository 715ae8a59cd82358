//! The daily tick quota (docs/api.md, quota).
//!
//! `POST /tasks` charges `max_ticks` to `quota:{sub}:{YYYYMMDD}` up front. The charge and the `pending`
//! record are written by one Lua script, so two concurrent requests can never overspend, and a refused
//! charge leaves nothing behind. The agent refunds unused ticks through the shared transition script.

/// A quota key lives this long after its last charge, so late refunds still find the day they belong to.
pub const QUOTA_KEY_TTL_SECONDS: u64 = 48 * 3600;

/// KEYS[1] quota key, KEYS[2] task key.
/// ARGV[1] ticks to charge, ARGV[2] daily limit, ARGV[3] quota key TTL, ARGV[4..] task field/value pairs.
/// Returns {1, remaining after the charge} when charged and recorded, {0, remaining} when the charge
/// would pass the limit (nothing written), {-1, 0} when the task key already exists (nothing written).
pub const CHARGE_AND_RECORD_LUA: &str = r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local charge = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if used + charge > limit then
  return {0, math.max(limit - used, 0)}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1, 0}
end
redis.call('INCRBY', KEYS[1], charge)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
return {1, limit - used - charge}
"#;

/// Ticks left for the day after `used` were charged against `limit`.
pub fn remaining(limit: u32, used: u32) -> u32 {
    limit.saturating_sub(used)
}

/// Whether a charge of `charge` ticks fits when `used` are already charged against `limit`.
/// The Lua script applies the same rule atomically; this is its specification.
pub fn fits(limit: u32, used: u32, charge: u32) -> bool {
    u64::from(used) + u64::from(charge) <= u64::from(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_that_lands_exactly_on_the_limit_fits() {
        assert!(fits(256, 206, 50));
    }

    #[test]
    fn a_charge_that_passes_the_daily_limit_is_refused() {
        assert!(!fits(256, 207, 50));
        assert!(!fits(10, 0, 11));
    }

    #[test]
    fn remaining_never_goes_below_zero() {
        assert_eq!(remaining(256, 56), 200);
        assert_eq!(remaining(100, 150), 0);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        assert!(!fits(u32::MAX, u32::MAX, 1));
    }
}
