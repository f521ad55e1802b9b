//! Whether the sources have read everything there is: what "caught up" means for clients
//! (spec/cds.md's `dataset_current`: the scan finished and the change streams caught up).
//!
//! Every worker reports when each of its partitions has nothing more to read right now (a
//! followed file at its end, a Kafka partition at its high watermark, a Kinesis shard with
//! `MillisBehindLatest` 0, a finished scan segment) and none is waiting to open, with the
//! epoch it became so. Records read before that are at that epoch or earlier, so once a
//! sink's frontier has passed [`CaughtUp::since`], its output holds everything the sources
//! had.
//!
//! For a bounded run's progress display, [`ReadProgress`] keeps how much of each partition
//! its reader has read (bytes of a file, items of a scan segment), as the workers last
//! reported it, and sums it per source; [`overall`] makes one share of the whole run.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::record::Time;
use crate::source::{Progress, ProgressUnit};

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

/// How much of each partition of this process the readers have read, as last reported.
#[derive(Debug, Default)]
pub struct ReadProgress {
    partitions: Mutex<BTreeMap<(String, String), Progress>>,
}

/// One source's progress, summed over its partitions that have reported.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceProgress {
    /// Work done, summed over the partitions (in `unit`, when they share one).
    pub done: u64,
    /// The partitions' whole work, summed likewise.
    pub total: u64,
    /// The unit every partition reported in; `None` when they differ.
    pub unit: Option<ProgressUnit>,
    /// The share done, 0 to 1: `done / total` when the partitions share a unit, else the
    /// mean of their shares.
    pub fraction: f64,
    /// The partitions that reported.
    pub partitions: usize,
}

impl ReadProgress {
    /// Nothing reported yet.
    pub fn new() -> ReadProgress {
        ReadProgress::default()
    }

    /// Partition `partition` of `source` has read `progress` (`None`: its reader cannot
    /// tell); once `finished`, all of it counts as done, whatever the reader last said (a
    /// file's last line may end past its chunk, a scan segment may hold more items than
    /// estimated).
    pub fn report(&self, source: &str, partition: &str, progress: Option<Progress>, finished: bool) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let progress = progress.map(|p| if finished { p.finished() } else { p });
        let key = (source.to_owned(), partition.to_owned());
        match progress {
            Some(p) => {
                partitions.insert(key, p);
            }
            None => {
                partitions.remove(&key);
            }
        }
    }

    /// Per source that has reported, its progress.
    pub fn sources(&self) -> BTreeMap<String, SourceProgress> {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut grouped: BTreeMap<&str, Vec<Progress>> = BTreeMap::new();
        for ((source, _), p) in partitions.iter() {
            grouped.entry(source.as_str()).or_default().push(*p);
        }
        grouped
            .into_iter()
            .map(|(source, parts)| (source.to_owned(), sum(&parts)))
            .collect()
    }
}

/// The progress of one source's partitions together.
fn sum(parts: &[Progress]) -> SourceProgress {
    let done = parts.iter().map(|p| p.done).fold(0u64, u64::saturating_add);
    let total = parts.iter().map(|p| p.total).fold(0u64, u64::saturating_add);
    let unit = parts
        .first()
        .map(|p| p.unit)
        .filter(|u| parts.iter().all(|p| p.unit == *u));
    let fraction = match unit {
        Some(unit) => Progress { done, total, unit }.fraction(),
        // Bytes and items do not add up: each partition weighs the same.
        None => parts.iter().map(Progress::fraction).sum::<f64>() / parts.len().max(1) as f64,
    };
    SourceProgress {
        done,
        total,
        unit,
        fraction,
        partitions: parts.len(),
    }
}

/// The share of the whole run done, 0 to 1, over the sources named in `expected` (a source
/// that has not reported yet, such as one waiting for `start_after`, has done nothing);
/// `None` when `expected` is empty.
///
/// When every expected source has reported in one unit, the work is pooled, so a large file
/// weighs more than a small one; otherwise each source weighs the same.
pub fn overall(sources: &BTreeMap<String, SourceProgress>, expected: &[String]) -> Option<f64> {
    if expected.is_empty() {
        return None;
    }
    let reported: Vec<&SourceProgress> = expected.iter().filter_map(|s| sources.get(s)).collect();
    let unit = reported.first().and_then(|s| s.unit);
    if reported.len() == expected.len()
        && let Some(unit) = unit
        && reported.iter().all(|s| s.unit == Some(unit))
    {
        let done = reported.iter().map(|s| s.done).fold(0u64, u64::saturating_add);
        let total = reported.iter().map(|s| s.total).fold(0u64, u64::saturating_add);
        return Some(Progress { done, total, unit }.fraction());
    }
    let sum: f64 = expected
        .iter()
        .map(|s| sources.get(s).map_or(0.0, |p| p.fraction))
        .sum();
    Some(sum / expected.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(done: u64, total: u64) -> Option<Progress> {
        Some(Progress {
            done,
            total,
            unit: ProgressUnit::Bytes,
        })
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn partitions_add_up_per_source_and_the_latest_report_wins() {
        let r = ReadProgress::new();
        r.report("a", "x", bytes(10, 100), false);
        r.report("a", "y", bytes(0, 300), false);
        r.report("a", "x", bytes(50, 100), false);
        r.report("b", "z", bytes(1, 4), false);
        let s = r.sources();
        assert_eq!(s.len(), 2);
        assert_eq!((s["a"].done, s["a"].total, s["a"].partitions), (50, 400, 2));
        assert_eq!(s["a"].unit, Some(ProgressUnit::Bytes));
        assert!((s["a"].fraction - 0.125).abs() < 1e-9);
        assert!((s["b"].fraction - 0.25).abs() < 1e-9);
        r.report("b", "z", None, false);
        assert!(!r.sources().contains_key("b"), "a reader that cannot tell is forgotten");
    }

    #[test]
    fn a_finished_partition_counts_as_all_done() {
        let r = ReadProgress::new();
        // The last line of a chunk ends past the chunk; a scan segment had more items than
        // estimated; an empty file has nothing to do.
        r.report("a", "chunk", bytes(120, 100), true);
        r.report("a", "segment", bytes(3, 90), true);
        let a = &r.sources()["a"];
        assert_eq!((a.done, a.total), (210, 210));
        assert!((a.fraction - 1.0).abs() < 1e-9);
        r.report("e", "empty", bytes(0, 0), false);
        assert!((r.sources()["e"].fraction - 1.0).abs() < 1e-9);
    }

    #[test]
    fn mixed_units_weigh_each_partition_the_same() {
        let r = ReadProgress::new();
        r.report("s", "p0", bytes(1, 2), false);
        r.report(
            "s",
            "p1",
            Some(Progress {
                done: 0,
                total: 1,
                unit: ProgressUnit::Segments,
            }),
            false,
        );
        let s = &r.sources()["s"];
        assert_eq!(s.unit, None);
        assert!((s.fraction - 0.25).abs() < 1e-9);
    }

    #[test]
    fn the_overall_share_pools_one_unit_and_counts_silent_sources_as_not_started() {
        let r = ReadProgress::new();
        r.report("big", "f", bytes(300, 900), false);
        r.report("small", "f", bytes(100, 100), false);
        let s = r.sources();
        // Pooled: 400 of 1000 bytes, not the mean of 1/3 and 1.
        let all = overall(&s, &names(&["big", "small"])).expect("overall");
        assert!((all - 0.4).abs() < 1e-9, "{all}");
        // A source still waiting has done nothing: the mean of 1/3, 1 and 0.
        let waiting = overall(&s, &names(&["big", "small", "later"])).expect("overall");
        assert!((waiting - 4.0 / 9.0).abs() < 1e-9, "{waiting}");
        assert_eq!(overall(&s, &[]), None);
        r.report(
            "scan",
            "segment-0",
            Some(Progress {
                done: 1,
                total: 4,
                unit: ProgressUnit::Items,
            }),
            false,
        );
        let mixed = overall(&r.sources(), &names(&["big", "scan"])).expect("overall");
        assert!((mixed - (1.0 / 3.0 + 0.25) / 2.0).abs() < 1e-9, "{mixed}");
    }

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
