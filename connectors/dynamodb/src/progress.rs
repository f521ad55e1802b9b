//! How far a scan is: counters shared by the readers of one source, a one-line progress bar
//! on a terminal (a log line every 10 s otherwise), and rate-limited retry warnings.

use std::collections::BTreeSet;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sluice_aws::LogLimit;

use crate::ScanProgress;

/// How often the bar is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(200);
/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// At most one retry warning per source in this time: eight throttled segments would
/// otherwise log eight lines per backoff step.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Erases the current terminal line (the bar) and returns to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// The counters of one scan source in this process.
pub(crate) struct Progress {
    table: String,
    source: String,
    total: u32,
    done: Mutex<BTreeSet<u32>>,
    items: AtomicU64,
    started: Instant,
    /// Whether a bar is on screen, and whether drawing has stopped for good; one lock, so
    /// the bar is never drawn after it was cleared.
    screen: Mutex<Screen>,
    /// Shared by the source's segments: one warning per source, not per segment.
    warnings: Mutex<LogLimit>,
}

#[derive(Default)]
struct Screen {
    drawn: bool,
    closed: bool,
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
            started: Instant::now(),
            screen: Mutex::default(),
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

    /// Records that `segment` has been read to its end (counted once, however often a
    /// reader for it is opened); the last one clears the bar and logs a summary.
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
            self.close_display();
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

    /// Clears the bar if one is drawn, and draws no more.
    pub(crate) fn close_display(&self) {
        let Ok(mut screen) = self.screen.lock() else {
            return;
        };
        if screen.drawn {
            // A progress bar that cannot be erased is not worth failing anything for.
            let _ = write!(std::io::stderr().lock(), "{CLEAR_LINE}");
        }
        screen.drawn = false;
        screen.closed = true;
    }

    fn draw(&self, line: &str) {
        let Ok(mut screen) = self.screen.lock() else {
            return;
        };
        if screen.closed {
            return;
        }
        let mut err = std::io::stderr().lock();
        // As above: the bar is a courtesy; a closed terminal must not stop the scan.
        let _ = write!(err, "{CLEAR_LINE}{line}");
        let _ = err.flush();
        screen.drawn = true;
    }
}

/// Starts the thread that shows `progress`: a bar redrawn every 200 ms when stderr is a
/// terminal, else an info line every 10 s. It ends when every segment is done or when the
/// source and all its readers are gone.
pub(crate) fn spawn_display(progress: &Arc<Progress>) {
    let weak = Arc::downgrade(progress);
    let spawned = std::thread::Builder::new()
        .name("sluice-scan-progress".to_owned())
        .spawn(move || display(weak, std::io::stderr().is_terminal()));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the scan progress display; the scan goes on without it");
    }
}

fn display(progress: Weak<Progress>, terminal: bool) {
    let mut window = (Instant::now(), 0u64);
    let mut rate = 0u64;
    let mut last_log = Instant::now();
    loop {
        std::thread::sleep(DRAW_EVERY);
        let Some(p) = progress.upgrade() else {
            return;
        };
        let now = p.snapshot();
        if now.segments_done >= now.segments_total {
            p.close_display();
            return;
        }
        // The rate over the last second or so: steadier than per-frame, quicker than overall.
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            rate = (now.items.saturating_sub(window.1) as f64 / elapsed.as_secs_f64()) as u64;
            window = (Instant::now(), now.items);
        }
        let text = line(&p.table, now, rate);
        if terminal {
            p.draw(&text);
        } else if last_log.elapsed() >= LOG_EVERY {
            last_log = Instant::now();
            tracing::info!(source = %p.source, "{text}");
        }
    }
}

/// The progress line: `scan Accounts: 5/8 segments, 123 456 items, 12 345 items/s`.
pub(crate) fn line(table: &str, p: ScanProgress, rate: u64) -> String {
    format!(
        "scan {table}: {}/{} segments, {} items, {} items/s",
        p.segments_done,
        p.segments_total,
        group_digits(p.items),
        group_digits(rate)
    )
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
    fn the_line_groups_digits() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1 000");
        assert_eq!(group_digits(123_456), "123 456");
        assert_eq!(group_digits(1_234_567), "1 234 567");
        let p = ScanProgress {
            segments_done: 5,
            segments_total: 8,
            items: 123_456,
        };
        assert_eq!(
            line("Accounts", p, 12_345),
            "scan Accounts: 5/8 segments, 123 456 items, 12 345 items/s"
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
