//! A bounded run's progress on stderr: a bar redrawn four times a second on a terminal, or,
//! without one, the share done and the time left in the periodic status line.
//!
//! The share comes from the readers (bytes of files, items of scan segments; see
//! `runtime::progress`), published by the workers about once a second; records read come
//! from the run's counters. The time left is the share still to do over the rate the share
//! grew at lately, so it follows the run's pace rather than its average since the start.
//!
//! Log lines go through [`log_writer`], which erases the bar before writing: a warning is
//! never drawn over the bar, and the bar comes back on the next frame.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal as _, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_runtime::metrics::{Metrics, RunProgress};
use sluice_runtime::progress::SourceProgress;
use sluice_runtime::source::ProgressUnit;
use sluice_runtime::spec::Pipeline;

/// How often the bar is redrawn.
const FRAME: Duration = Duration::from_millis(250);
/// Rates are measured over about this much of the recent past.
const WINDOW: Duration = Duration::from_secs(15);
/// How long the end of a run waits for the status line's last line.
const LAST_LINE_WITHIN: Duration = Duration::from_secs(2);
/// Erases the current terminal line and returns to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";
/// The width of the bar itself, brackets excluded.
const BAR_WIDTH: usize = 20;

/// When a bounded run draws a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// When stderr is a terminal.
    Auto,
    /// Even when stderr is not a terminal (a pipe shown by something that honours `\r`).
    Always,
    /// Never; the status line still tells the share done and the time left.
    Never,
}

/// A run's progress display; clones share it. Does nothing for an unbounded run.
#[derive(Clone)]
pub struct Progress {
    inner: Option<Arc<Inner>>,
    bar: Option<Arc<Bar>>,
}

struct Inner {
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    /// The sources the share done is over; empty when one of them cannot tell its own.
    expected: Vec<String>,
    rates: Mutex<Rates>,
    /// Whether the run has ended having read everything, and whether the status line has
    /// logged its last line since.
    end: Mutex<End>,
    ended: Condvar,
    /// Whether the status line logs a last line at the end.
    status_line: bool,
}

#[derive(Default)]
struct End {
    complete: bool,
    /// [`Progress::pause`] has told the status line to log its last line.
    told: bool,
    logged: bool,
}

struct Rates {
    share: Rate,
    records: Rate,
}

struct Bar {
    done: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Starts the display of a run of `pipeline`: the bar when `mode` and stderr call for one
/// and every source is bounded. `last_line`: whether the periodic status line (which runs
/// when there is no bar) logs a last line when the run completes.
pub fn start(
    mode: Mode,
    pipeline: &Pipeline,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    last_line: bool,
) -> Progress {
    if !pipeline.sources.iter().all(|s| s.spec.bounded()) {
        return Progress { inner: None, bar: None };
    }
    let expected = if pipeline.sources.iter().all(|s| s.spec.reports_progress()) {
        pipeline.sources.iter().map(|s| s.name.value.clone()).collect()
    } else {
        Vec::new()
    };
    let draw = match mode {
        Mode::Always => true,
        Mode::Never => false,
        Mode::Auto => std::io::stderr().is_terminal() && std::env::var("TERM").is_ok_and(|t| t != "dumb"),
    };
    let inner = Arc::new(Inner {
        metrics,
        stop,
        expected,
        rates: Mutex::new(Rates {
            share: Rate::new(WINDOW),
            records: Rate::new(WINDOW),
        }),
        end: Mutex::default(),
        ended: Condvar::new(),
        status_line: last_line && !draw,
    });
    let bar = draw.then(|| {
        let bar = Arc::new(Bar {
            done: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let (i, b) = (Arc::clone(&inner), Arc::clone(&bar));
        match std::thread::Builder::new()
            .name("sluice-progress".to_owned())
            .spawn(move || draw_loop(&i, &b))
        {
            Ok(handle) => {
                *bar.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the progress bar; the run goes on without it"),
        }
        bar
    });
    Progress {
        inner: Some(inner),
        bar,
    }
}

impl Progress {
    /// Whether a bar is drawn (then no periodic status line is needed).
    pub fn draws_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// For the status line: the share done in percent and the seconds left, when known.
    pub fn status_fields(&self) -> (Option<f64>, Option<u64>) {
        let Some(view) = self.inner.as_ref().and_then(|i| i.view(Instant::now())) else {
            return (None, None);
        };
        let percent = view.share.map(|s| (s * 1000.0).round() / 10.0);
        (percent, view.eta.map(|d| d.as_secs()))
    }

    /// Waits `every` for the status line, or less when the run has completed: `true` then
    /// (once), and the status line logs its last line and calls [`Progress::logged_last`].
    pub fn pause(&self, every: Duration) -> bool {
        let Some(inner) = self.inner.as_ref().filter(|i| i.status_line) else {
            std::thread::sleep(every);
            return false;
        };
        let end = inner.end.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut end, _) = inner
            .ended
            .wait_timeout_while(end, every, |e| !e.complete || e.told)
            .unwrap_or_else(PoisonError::into_inner);
        let last = end.complete && !end.told;
        end.told |= last;
        last
    }

    /// The status line has logged its last line.
    pub fn logged_last(&self) {
        if let Some(inner) = &self.inner {
            inner.end.lock().unwrap_or_else(PoisonError::into_inner).logged = true;
            inner.ended.notify_all();
        }
    }

    /// Ends the display as the run ends: erases the bar, or has the status line log a last
    /// line (100 % when `complete`: every source was read to its end).
    pub fn finish(&self, complete: bool) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Some(bar) = &self.bar {
            bar.done.store(true, Ordering::SeqCst);
            let thread = bar.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            erase();
        }
        if !complete {
            return;
        }
        let mut end = inner.end.lock().unwrap_or_else(PoisonError::into_inner);
        end.complete = true;
        inner.ended.notify_all();
        if inner.status_line {
            // Bounded, so a stuck status line cannot hold the exit up.
            let _ = inner
                .ended
                .wait_timeout_while(end, LAST_LINE_WITHIN, |e| !e.logged)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What one frame or status line shows.
struct View {
    share: Option<f64>,
    eta: Option<Duration>,
    records: u64,
    records_per_s: Option<f64>,
    sources: BTreeMap<String, SourceProgress>,
}

impl Inner {
    /// The run's progress now, with the rates updated; `None` before the run has started.
    fn view(&self, now: Instant) -> Option<View> {
        let RunProgress {
            overall,
            records,
            sources,
        } = self.metrics.read_progress(&self.expected)?;
        let complete = self.end.lock().unwrap_or_else(PoisonError::into_inner).complete;
        // The workers' last reports may predate the end by up to a second.
        let share = if complete { Some(1.0) } else { overall };
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        rates.records.observe(now, records as f64);
        let eta = share.and_then(|s| {
            rates.share.observe(now, s);
            eta(1.0 - s, rates.share.per_second())
        });
        Some(View {
            share,
            eta,
            records,
            records_per_s: rates.records.per_second(),
            sources,
        })
    }
}

fn draw_loop(inner: &Inner, bar: &Bar) {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w >= 20)
        .unwrap_or(80);
    while !bar.done.load(Ordering::SeqCst) {
        if let Some(view) = inner.view(Instant::now()) {
            let stopping = inner.stop.load(Ordering::SeqCst);
            draw(&line(&view, stopping, width));
        }
        std::thread::sleep(FRAME);
    }
}

/// Whether the bar is on screen now; held while writing, so a log line and a frame never
/// interleave.
static SCREEN: Mutex<bool> = Mutex::new(false);

fn draw(text: &str) {
    let mut drawn = SCREEN.lock().unwrap_or_else(PoisonError::into_inner);
    let mut err = std::io::stderr().lock();
    // The bar is a courtesy: a closed terminal must not stop the run.
    let _ = write!(err, "{CLEAR_LINE}{text}");
    let _ = err.flush();
    *drawn = true;
}

fn erase() {
    let mut drawn = SCREEN.lock().unwrap_or_else(PoisonError::into_inner);
    if *drawn {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{CLEAR_LINE}");
        let _ = err.flush();
    }
    *drawn = false;
}

/// Log lines' way to stderr: erases the bar first, if one is drawn.
pub struct LogWriter;

/// A [`LogWriter`], for `tracing_subscriber`'s `with_writer`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut drawn = SCREEN.lock().unwrap_or_else(PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        if *drawn {
            err.write_all(CLEAR_LINE.as_bytes())?;
            *drawn = false;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A quantity's rate of change over the recent past, from samples of it.
struct Rate {
    window: Duration,
    samples: VecDeque<(Instant, f64)>,
}

impl Rate {
    fn new(window: Duration) -> Rate {
        Rate {
            window,
            samples: VecDeque::new(),
        }
    }

    /// The quantity is `value` at `at`.
    fn observe(&mut self, at: Instant, value: f64) {
        self.samples.push_back((at, value));
        // Two samples stay, however far apart: a status line every minute still has a rate.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| at.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Change per second over the samples kept; `None` over less than a second, when the
    /// workers' once-a-second reports cannot have shown a change yet.
    fn per_second(&self) -> Option<f64> {
        let ((t0, v0), (t1, v1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.duration_since(*t0).as_secs_f64();
        (secs >= 1.0).then(|| (v1 - v0) / secs)
    }
}

/// The time left to do `remaining` (a share) at `per_second`; `Some(0)` when nothing is
/// left, `None` when the rate says nothing (unknown, or not growing).
fn eta(remaining: f64, per_second: Option<f64>) -> Option<Duration> {
    if remaining <= 0.0 {
        return Some(Duration::ZERO);
    }
    let rate = per_second.filter(|r| *r > 0.0)?;
    let secs = remaining / rate;
    // Beyond a few days the estimate means nothing but "not soon".
    (secs < 1e7).then(|| Duration::from_secs(secs.ceil() as u64))
}

/// A time left as `42s`, `3m05s` or `2h03m`; `—` when unknown.
fn format_eta(eta: Option<Duration>) -> String {
    let Some(eta) = eta else {
        return "—".to_owned();
    };
    let s = eta.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A count as `987`, `12.3k`, `4.56M`.
fn format_count(n: f64) -> String {
    let n = n.max(0.0);
    let (value, suffix) = if n >= 1e9 {
        (n / 1e9, "G")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e3 {
        (n / 1e3, "k")
    } else {
        return format!("{n:.0}");
    };
    if value >= 100.0 {
        format!("{value:.0}{suffix}")
    } else if value >= 10.0 {
        format!("{value:.1}{suffix}")
    } else {
        format!("{value:.2}{suffix}")
    }
}

/// Bytes as `512 B`, `3.4 MiB`, `1.20 GiB`.
fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if value >= 100.0 => format!("{value:.0} {}", UNITS[unit]),
        _ if value >= 10.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.2} {}", UNITS[unit]),
    }
}

/// `[=====>     ]` for `share` of the bar filled.
fn bar(share: f64) -> String {
    let filled = ((share.clamp(0.0, 1.0) * BAR_WIDTH as f64).floor() as usize).min(BAR_WIDTH);
    let mut out = String::with_capacity(BAR_WIDTH + 2);
    out.push('[');
    out.push_str(&"=".repeat(filled));
    if filled < BAR_WIDTH {
        out.push('>');
        out.push_str(&" ".repeat(BAR_WIDTH - filled - 1));
    }
    out.push(']');
    out
}

/// One source's work: `1.20 GiB of 3.40 GiB`, `5 of 8 segments`, `12.3k of 40.0k items`.
fn source_detail(p: &SourceProgress) -> String {
    match p.unit {
        Some(ProgressUnit::Bytes) => format!("{} of {}", format_bytes(p.done), format_bytes(p.total)),
        Some(ProgressUnit::Segments) => format!("{} of {} segments", p.done, p.total),
        Some(ProgressUnit::Items) => format!(
            "{} of ~{} items",
            format_count(p.done as f64),
            format_count(p.total as f64)
        ),
        None => format!("{:.0}%", p.fraction * 100.0),
    }
}

/// The bar's line, at most `width - 1` characters so the terminal never wraps it (a wrapped
/// line could not be erased): the parts that do not fit are left out, the last first.
fn line(view: &View, stopping: bool, width: usize) -> String {
    let mut parts = Vec::new();
    if let Some(share) = view.share {
        parts.push(format!("{} {:5.1}%", bar(share), share * 100.0));
        parts.push(format!("ETA {}", format_eta(view.eta)));
    }
    parts.push(format!(
        "{} record{}",
        format_count(view.records as f64),
        if view.records == 1 { "" } else { "s" }
    ));
    if let Some(rate) = view.records_per_s {
        parts.push(format!("{}/s", format_count(rate)));
    }
    match view.sources.len() {
        0 => {}
        1 => parts.extend(view.sources.values().map(source_detail)),
        _ => parts.push(
            view.sources
                .iter()
                .map(|(name, p)| format!("{name} {:.0}%", p.fraction * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
    if stopping {
        // Before the detail: while a stop drains, this matters more.
        let at = parts.len().saturating_sub(usize::from(!view.sources.is_empty()));
        parts.insert(at, "stopping".to_owned());
    }
    let room = width.saturating_sub(1);
    let mut out = String::new();
    for part in parts {
        let sep = if out.is_empty() { "" } else { " · " };
        if out.chars().count() + sep.chars().count() + part.chars().count() > room {
            break;
        }
        out.push_str(sep);
        out.push_str(&part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_the_share_left_over_the_rate() {
        assert_eq!(eta(0.5, Some(0.01)), Some(Duration::from_secs(50)));
        assert_eq!(eta(0.1, Some(0.3)), Some(Duration::from_secs(1)), "rounded up");
        assert_eq!(eta(0.0, None), Some(Duration::ZERO), "nothing left");
        assert_eq!(eta(0.5, None), None, "no rate yet");
        assert_eq!(eta(0.5, Some(0.0)), None, "stalled");
        assert_eq!(eta(0.5, Some(-0.1)), None, "going backwards");
        assert_eq!(eta(0.5, Some(1e-9)), None, "not in any useful time");
    }

    #[test]
    fn the_rate_follows_the_recent_past() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Rate::new(Duration::from_secs(10));
        r.observe(t0, 0.0);
        assert_eq!(r.per_second(), None);
        r.observe(t0 + Duration::from_millis(500), 0.1);
        assert_eq!(r.per_second(), None, "less than a second of samples");
        r.observe(at(2), 0.2);
        assert!((r.per_second().expect("rate") - 0.1).abs() < 1e-9);
        // Slower from here on: once the fast start is out of the window, the rate is the new pace.
        for s in 3..=30 {
            r.observe(at(s), 0.2 + 0.01 * (s - 2) as f64);
        }
        assert!((r.per_second().expect("rate") - 0.01).abs() < 1e-9);
        let mut sparse = Rate::new(Duration::from_secs(10));
        sparse.observe(at(0), 0.0);
        sparse.observe(at(60), 0.6);
        sparse.observe(at(120), 0.9);
        assert!(
            (sparse.per_second().expect("rate") - 0.005).abs() < 1e-9,
            "samples further apart than the window still give a rate"
        );
    }

    #[test]
    fn times_counts_and_sizes_read_at_a_glance() {
        assert_eq!(format_eta(None), "—");
        assert_eq!(format_eta(Some(Duration::from_secs(42))), "42s");
        assert_eq!(format_eta(Some(Duration::from_secs(185))), "3m05s");
        assert_eq!(format_eta(Some(Duration::from_secs(7380))), "2h03m");
        assert_eq!(format_count(987.0), "987");
        assert_eq!(format_count(12_345.0), "12.3k");
        assert_eq!(format_count(4_560_000.0), "4.56M");
        assert_eq!(format_count(250_000_000.0), "250M");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 * 1024 * 1024 + 400 * 1024), "3.39 MiB");
        assert_eq!(format_bytes(1288490188), "1.20 GiB");
        assert_eq!(bar(0.0), format!("[>{}]", " ".repeat(BAR_WIDTH - 1)));
        assert_eq!(bar(0.5), format!("[{}>{}]", "=".repeat(10), " ".repeat(9)));
        assert_eq!(bar(1.0), format!("[{}]", "=".repeat(BAR_WIDTH)));
    }

    fn source(done: u64, total: u64, unit: Option<ProgressUnit>) -> SourceProgress {
        SourceProgress {
            done,
            total,
            unit,
            fraction: if total == 0 { 1.0 } else { done as f64 / total as f64 },
            partitions: 1,
        }
    }

    #[test]
    fn the_line_shows_share_eta_records_rate_and_each_sources_work() {
        let mut view = View {
            share: Some(0.473),
            eta: Some(Duration::from_secs(72)),
            records: 1_234_567,
            records_per_s: Some(412_000.0),
            sources: [("orders".to_owned(), source(473, 1000, Some(ProgressUnit::Bytes)))].into(),
        };
        let full = format!(
            "[{}>{}]  47.3% · ETA 1m12s · 1.23M records · 412k/s · 473 B of 1000 B",
            "=".repeat(9),
            " ".repeat(10)
        );
        assert_eq!(line(&view, false, 200), full);
        assert_eq!(
            line(&view, false, full.chars().count()),
            full.trim_end_matches(" · 473 B of 1000 B"),
            "what does not fit is left out whole"
        );
        view.sources
            .insert("scan".to_owned(), source(1, 4, Some(ProgressUnit::Segments)));
        let two = line(&view, true, 200);
        assert!(two.ends_with("412k/s · stopping · orders 47%, scan 25%"), "{two}");
        let unknown = View {
            share: None,
            eta: None,
            records: 1,
            records_per_s: None,
            sources: BTreeMap::new(),
        };
        assert_eq!(line(&unknown, false, 80), "1 record", "no share: no bar, no ETA");
        assert_eq!(
            source_detail(&source(12_300, 40_000, Some(ProgressUnit::Items))),
            "12.3k of ~40.0k items"
        );
        assert_eq!(source_detail(&source(1, 4, None)), "25%");
    }
}
