//! Keeping a repeated warning from flooding the log.

use std::time::{Duration, Instant};

/// Lets a repeated warning through at most once per interval, counting the ones held back.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimit {
    /// A limit of one message per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` if a message may be logged now, `n` being how many were held back since the
    /// last one; `None` if it must be held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_limit_lets_one_message_through_per_interval_and_counts_the_rest() {
        let mut limit = LogLimit::new(Duration::from_millis(50));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.allow(), Some(2));
    }
}
