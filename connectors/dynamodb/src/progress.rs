//! How far a scan is: counters shared by the readers of one source, the table's item count
//! that segments measure their progress against, and rate-limited retry warnings. The run's
//! progress display (in the `sluice` binary) shows it, with every other source's.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_aws::LogLimit;

use crate::ScanProgress;

/// At most one retry warning per source in this time: eight throttled segments would
/// otherwise log eight lines per backoff step.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The counters of one scan source in this process.
pub(crate) struct Progress {
    table: String,
    source: String,
    total: u32,
    done: Mutex<BTreeSet<u32>>,
    items: AtomicU64,
    /// The table's item count as `DescribeTable` told it (0: not known).
    table_items: AtomicU64,
    started: Instant,
    /// Shared by the source's segments: one warning per source, not per segment.
    warnings: Mutex<LogLimit>,
}

impl Progress {
    /// Counters for the scan of `table` in `total` segments, by the source called `source`.
    pub(crate) fn new(table: &str, source: &str, total: u32) -> Self {
        Progress {
            table: table.to_owned(),
            source: source.to_owned(),
            total,
            done: Mutex::default(),
            items: AtomicU64::new(0),
            table_items: AtomicU64::new(0),
            started: Instant::now(),
            warnings: Mutex::new(LogLimit::new(WARN_EVERY)),
        }
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> ScanProgress {
        ScanProgress {
            segments_done: self.done.lock().map_or(0, |d| d.len() as u32),
            segments_total: self.total,
            items: self.items.load(Ordering::Relaxed),
        }
    }

    /// Counts items handed out.
    pub(crate) fn add_items(&self, n: u64) {
        self.items.fetch_add(n, Ordering::Relaxed);
    }

    /// Notes the table's item count, from `DescribeTable`.
    pub(crate) fn set_table_items(&self, n: u64) {
        self.table_items.store(n, Ordering::Relaxed);
    }

    /// The items one segment is expected to hold: the table's count spread evenly, which
    /// DynamoDB's hash partitioning makes close. `None` when the count is not known or is
    /// 0 (DynamoDB updates it about every six hours, so a new table may say 0).
    pub(crate) fn items_per_segment(&self) -> Option<u64> {
        let items = self.table_items.load(Ordering::Relaxed);
        (items > 0).then(|| items.div_ceil(u64::from(self.total.max(1))))
    }

    /// Records that `segment` has been read to its end (counted once, however often a
    /// reader for it is opened); the last one logs a summary.
    pub(crate) fn segment_done(&self, segment: u32) {
        let all = {
            let Ok(mut done) = self.done.lock() else {
                return;
            };
            if !done.insert(segment) {
                return;
            }
            done.len() as u32 >= self.total
        };
        if all {
            let items = self.items.load(Ordering::Relaxed);
            tracing::info!(
                source = %self.source,
                "scan of `{}` finished: {} segments, {} items in {:.1} s",
                self.table,
                self.total,
                group_digits(items),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Reports a failed request that will be retried, at most once per [`WARN_EVERY`].
    pub(crate) fn warn_retry(&self, segment: u32, error: &str, retry_in: Duration) {
        let Some(others) = self.warnings.lock().ok().and_then(|mut w| w.allow()) else {
            return;
        };
        tracing::warn!(
            source = %self.source, table = %self.table, segment, error, retry_in_ms = retry_in.as_millis() as u64,
            retries_not_reported = others, "scan request failed; retrying with backoff"
        );
    }
}

/// `1234567` as `1 234 567`.
pub(crate) fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1 000");
        assert_eq!(group_digits(123_456), "123 456");
        assert_eq!(group_digits(1_234_567), "1 234 567");
    }

    #[test]
    fn the_table_count_is_spread_over_the_segments() {
        let p = Progress::new("T", "t", 3);
        assert_eq!(p.items_per_segment(), None, "not known yet");
        p.set_table_items(10);
        assert_eq!(p.items_per_segment(), Some(4), "rounded up");
        p.set_table_items(0);
        assert_eq!(
            p.items_per_segment(),
            None,
            "a count of 0 is not yet updated, not empty"
        );
    }

    #[test]
    fn segments_count_once() {
        let p = Progress::new("T", "t", 3);
        p.segment_done(1);
        p.segment_done(1);
        p.add_items(7);
        assert_eq!(
            p.snapshot(),
            ScanProgress {
                segments_done: 1,
                segments_total: 3,
                items: 7
            }
        );
        p.segment_done(0);
        p.segment_done(2);
        assert_eq!(p.snapshot().segments_done, 3);
    }
}
