//! How the AWS connectors wait between attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait drawn from its upper
/// half so that many shards or segments throttled together do not retry in step.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    /// The jitter's source: each `RandomState` has its own keys, so two backoffs created
    /// together still draw different waits.
    random: RandomState,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            failures: 0,
            random: RandomState::new(),
        }
    }
}

impl Backoff {
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(5);
    /// The first wait's upper bound.
    pub const FIRST: Duration = Duration::from_millis(100);

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = Self::ceiling(self.failures);
        self.failures = self.failures.saturating_add(1);
        let mut h = self.random.build_hasher();
        h.write_u32(self.failures);
        let half = ceiling.as_millis() as u64 / 2;
        Duration::from_millis(half + h.finish() % (half + 1))
    }

    /// The upper bound of the wait after `failures` consecutive failures.
    pub fn ceiling(failures: u32) -> Duration {
        Self::FIRST.saturating_mul(1 << failures.min(10)).min(Self::MAX)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_5_s_with_jitter_in_the_upper_half() {
        let ceilings: Vec<u64> = (0..9).map(|n| Backoff::ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(Backoff::ceiling(u32::MAX), Duration::from_secs(5));
        let mut b = Backoff::default();
        let mut waits = Vec::new();
        for n in 0..40 {
            let w = b.next_wait();
            let ceiling = Backoff::ceiling(n);
            assert!(w >= ceiling / 2 && w <= ceiling, "wait {w:?} after {n} failures");
            waits.push(w);
        }
        // Jitter: the capped waits are not all equal.
        assert!(waits[10..].windows(2).any(|w| w[0] != w[1]), "{waits:?}");
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn backoffs_created_together_do_not_wait_in_step() {
        let mut a = Backoff::default();
        let mut b = Backoff::default();
        let a: Vec<Duration> = (0..20).map(|_| a.next_wait()).collect();
        let b: Vec<Duration> = (0..20).map(|_| b.next_wait()).collect();
        assert_ne!(a, b);
    }
}
