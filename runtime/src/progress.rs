//! Whether the sources have read everything there is: what "caught up" means for clients
//! (spec/cds.md's `dataset_current`: the scan finished and the change streams caught up).
//!
//! Every worker reports when each of its partitions has nothing more to read right now (a
//! followed file at its end, a Kafka partition at its high watermark, a Kinesis shard with
//! `MillisBehindLatest` 0, a finished scan segment) and none is waiting to open, with the
//! epoch it became so. Records read before that are at that epoch or earlier, so once a
//! sink's frontier has passed [`CaughtUp::since`], its output holds everything the sources
//! had.

use std::sync::Mutex;

use crate::record::Time;

/// The workers' caught-up reports, shared by the run and whoever serves its outputs.
#[derive(Debug, Default)]
pub struct CaughtUp {
    workers: Mutex<Vec<Option<Time>>>,
}

impl CaughtUp {
    /// Nothing reported yet: not caught up.
    pub fn new() -> CaughtUp {
        CaughtUp::default()
    }

    /// Worker `index` of `peers` has had nothing more to read since epoch `since`, or
    /// (`None`) has more to read.
    pub fn report(&self, index: usize, peers: usize, since: Option<Time>) {
        let mut workers = self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if workers.len() != peers {
            workers.resize(peers, None);
        }
        if let Some(slot) = workers.get_mut(index) {
            *slot = since;
        }
    }

    /// The epoch since which every worker has been caught up, or `None` while one has more to
    /// read (or has not reported).
    pub fn since(&self) -> Option<Time> {
        let workers = self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if workers.is_empty() {
            return None;
        }
        workers.iter().try_fold(0, |latest: Time, w| w.map(|t| latest.max(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_once_every_worker_is_and_since_the_latest_of_them() {
        let c = CaughtUp::new();
        assert_eq!(c.since(), None);
        c.report(0, 2, Some(10));
        assert_eq!(c.since(), None, "worker 1 has not reported");
        c.report(1, 2, Some(30));
        assert_eq!(c.since(), Some(30));
        c.report(0, 2, None);
        assert_eq!(c.since(), None, "worker 0 has more to read");
        c.report(0, 2, Some(40));
        assert_eq!(c.since(), Some(40));
    }
}
