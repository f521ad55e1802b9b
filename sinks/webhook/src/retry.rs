//! When to try again: exponential backoff with jitter, or what the receiver asked for.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// The nominal delay after `attempts` attempts: `initial * 2^(attempts - 1)`, at most `max`.
pub fn nominal_delay(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(63);
    let factor = 1u64 << doublings;
    let nanos = initial.as_nanos().saturating_mul(u128::from(factor));
    if nanos >= max.as_nanos() {
        max
    } else {
        // Below `max`, so it fits.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A delay drawn uniformly from `[d/2, d]`.
///
/// Half the nominal delay at least, so retries still back off; spread over the other half,
/// so the deliveries that failed together when a receiver went down do not all come back
/// in the same instant when it recovers.
pub fn jittered(d: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(nanos / 2..=nanos))
}

/// The delay a `Retry-After` header asks for — delta-seconds or an HTTP date, measured from
/// `now` — clamped to `[0, max]`; `None` when the value is neither.
pub fn retry_after(value: &str, now: SystemTime, max: Duration) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        // A date in the past asks for no wait at all.
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn the_nominal_delay_doubles_up_to_the_maximum() {
        let (s, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (1..=8).map(|a| nominal_delay(a, s, max).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(nominal_delay(0, s, max), s);
        assert_eq!(nominal_delay(u32::MAX, s, max), max, "no overflow");
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_delay() {
        let mut rng = SmallRng::seed_from_u64(7);
        let d = Duration::from_millis(800);
        for _ in 0..1000 {
            let j = jittered(d, &mut rng);
            assert!(j >= d / 2 && j <= d, "{j:?}");
        }
        assert_eq!(jittered(Duration::ZERO, &mut rng), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_clamped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Duration::from_secs(3600);
        assert_eq!(retry_after(" 120 ", now, max), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("99999", now, max), Some(max));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now, max), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&earlier, now, max), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now, max), None);
        assert_eq!(retry_after("-5", now, max), None);
    }
}
