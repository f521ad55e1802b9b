//! What a run exposes to operators: Prometheus text metrics and readiness.
//!
//! One [`Metrics`] lives as long as the process's run and is read by the admin endpoint
//! (`/metrics`, `/readyz`) on its own thread. Counting stays where it was — the run's
//! [`RunStatus`] and each component's own atomics — and is only *read* at scrape time:
//! nothing on the hot path takes a lock or formats text for metrics. Components that own
//! counters of their own (a webhook sink, the checkpointer) register a collector, a closure
//! that writes their samples into the [`Exposition`] when `/metrics` is asked for.
//!
//! Every sample carries a `pipeline` label; the rest of its labels name the source, sink,
//! partition or stage it is about. Times are exposed in seconds, frontiers as epoch
//! milliseconds (sluice's times).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::exec::RunStatus;

/// What a metric family is, for its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (resets with the process).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with their sum and count.
    Histogram,
}

/// Bucket bounds for latencies, in seconds: from a fast local request to a delivery retried
/// for a day.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 10800.0, 86400.0,
];

/// A latency histogram that threads record into without locks, for a scrape to read.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bound, observations at or below it and above the one before; the last counts
    /// those above every bound.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds, in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// A writer of one scrape's samples, in the Prometheus text format (version 0.0.4).
pub struct Exposition {
    out: String,
    pipeline: String,
    /// Families already given `# HELP`/`# TYPE`, so two collectors may share one.
    declared: BTreeMap<String, ()>,
}

impl Exposition {
    fn new(pipeline: &str) -> Exposition {
        Exposition {
            out: String::with_capacity(4096),
            pipeline: pipeline.to_owned(),
            declared: BTreeMap::new(),
        }
    }

    /// Declares a family (once per scrape; later calls for the same name are ignored).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        if self.declared.insert(name.to_owned(), ()).is_some() {
            return;
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of family `name` with `labels` (besides `pipeline`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.out.push_str("{pipeline=\"");
        escape_into(&mut self.out, &self.pipeline);
        self.out.push('"');
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"");
            escape_into(&mut self.out, v);
            self.out.push('"');
        }
        self.out.push('}');
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e15 {
            let _ = writeln!(self.out, " {}", value as i64);
        } else {
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// A family with one sample: declared and written at once.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }

    /// A histogram's series under `labels`: cumulative `_bucket`s by `le`, `_sum` in
    /// seconds and `_count` (the family is declared as `name`).
    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        let les = h.bounds.iter().map(|b| b.to_string()).chain(["+Inf".to_owned()]);
        for (le, count) in les.zip(&h.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// How far a run's readers are: what [`Metrics::read_progress`] tells.
#[derive(Clone, Debug, PartialEq)]
pub struct RunProgress {
    /// The share of the run done, 0 to 1, when the sources can tell.
    pub overall: Option<f64>,
    /// Records read so far, by every source.
    pub records: u64,
    /// Per source that has reported, its progress in its own unit.
    pub sources: BTreeMap<String, crate::progress::SourceProgress>,
}

/// A collector: writes a component's samples at scrape time.
pub type Collector = Box<dyn Fn(&mut Exposition) + Send + Sync>;

/// A readiness check a component adds.
pub type Condition = Box<dyn Fn() -> bool + Send + Sync>;

/// Why the run is not ready, checked in this order.
#[derive(Debug, Default)]
struct Readiness {
    /// Every source answered its first listing of partitions.
    sources: AtomicBool,
    /// The checkpoint to restart from (if any) is loaded.
    restored: AtomicBool,
    /// The workers are reading.
    running: AtomicBool,
}

/// The metrics and readiness of one run, shared by the run and the admin endpoint.
pub struct Metrics {
    pipeline: String,
    status: RwLock<Option<Arc<RunStatus>>>,
    collectors: Mutex<Vec<Collector>>,
    ready: Readiness,
    /// Readiness conditions components add (served views caught up): a name and a check.
    conditions: Mutex<Vec<(String, Condition)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a run of pipeline `pipeline`.
    pub fn new(pipeline: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            pipeline: pipeline.to_owned(),
            status: RwLock::new(None),
            collectors: Mutex::new(Vec::new()),
            ready: Readiness::default(),
            conditions: Mutex::new(Vec::new()),
        })
    }

    /// Adds a collector, called at every scrape.
    pub fn register(&self, collector: Collector) {
        if let Ok(mut c) = self.collectors.lock() {
            c.push(collector);
        }
    }

    /// Adds a readiness condition: `/readyz` answers 503 naming `what` while `check` is false.
    pub fn require(&self, what: &str, check: Condition) {
        if let Ok(mut c) = self.conditions.lock() {
            c.push((what.to_owned(), check));
        }
    }

    pub(crate) fn attach(&self, status: Arc<RunStatus>) {
        if let Ok(mut s) = self.status.write() {
            *s = Some(status);
        }
    }

    pub(crate) fn sources_listed(&self) {
        self.ready.sources.store(true, Ordering::SeqCst);
    }

    pub(crate) fn restored(&self) {
        self.ready.restored.store(true, Ordering::SeqCst);
    }

    pub(crate) fn running(&self) {
        self.ready.running.store(true, Ordering::SeqCst);
    }

    /// `Ok` when the run is ready to serve, else what it still waits for.
    pub fn readiness(&self) -> Result<(), String> {
        let r = &self.ready;
        if !r.sources.load(Ordering::SeqCst) {
            return Err("sources not connected yet".to_owned());
        }
        if !r.restored.load(Ordering::SeqCst) {
            return Err("checkpoint not restored yet".to_owned());
        }
        if !r.running.load(Ordering::SeqCst) {
            return Err("workers not started yet".to_owned());
        }
        if let Ok(conditions) = self.conditions.lock()
            && let Some((what, _)) = conditions.iter().find(|(_, check)| !check())
        {
            return Err(format!("{what} not yet"));
        }
        Ok(())
    }

    /// The run's counters so far and its largest output delay, once the run has started.
    pub fn progress(&self) -> Option<(crate::exec::RunReport, Option<u64>)> {
        let status = self.status.read().ok()?.clone()?;
        Some(status.progress())
    }

    /// How far the run's readers are, for a bounded run's progress display, once the run has
    /// started: the share done over the sources named in `expected` (see
    /// [`crate::progress::overall`]), records read, and each source's detail.
    pub fn read_progress(&self, expected: &[String]) -> Option<RunProgress> {
        let status = self.status.read().ok()?.clone()?;
        let sources = status.read_progress.sources();
        let (counters, _) = status.progress();
        Some(RunProgress {
            overall: crate::progress::overall(&sources, expected),
            records: counters.records_read(),
            sources,
        })
    }

    /// Every sample now, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut x = Exposition::new(&self.pipeline);
        x.single(
            "sluice_up",
            Kind::Gauge,
            "1 while the process runs; 1 or 0 in sluice_ready for readiness.",
            &[],
            1.0,
        );
        x.single(
            "sluice_ready",
            Kind::Gauge,
            "Whether /readyz answers 200.",
            &[],
            if self.readiness().is_ok() { 1.0 } else { 0.0 },
        );
        let status = self.status.read().ok().and_then(|s| s.clone());
        if let Some(status) = status {
            status.expose(&mut x);
        }
        if let Ok(collectors) = self.collectors.lock() {
            for c in collectors.iter() {
                c(&mut x);
            }
        }
        x.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_and_cumulates_them() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [5, 10, 50, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 4);
        let m = Metrics::new("p");
        let h = Arc::new(h);
        let seen = Arc::clone(&h);
        m.register(Box::new(move |x| {
            x.histogram("lat_seconds", "Latency.", &[("sink", "s")], &seen)
        }));
        let text = m.render();
        assert_eq!(text.matches("# TYPE lat_seconds histogram").count(), 1, "{text}");
        // 10 ms sits on the bound, which counts as at or below it.
        for line in [
            "lat_seconds_bucket{pipeline=\"p\",sink=\"s\",le=\"0.01\"} 2\n",
            "lat_seconds_bucket{pipeline=\"p\",sink=\"s\",le=\"0.1\"} 3\n",
            "lat_seconds_bucket{pipeline=\"p\",sink=\"s\",le=\"1\"} 3\n",
            "lat_seconds_bucket{pipeline=\"p\",sink=\"s\",le=\"+Inf\"} 4\n",
            "lat_seconds_sum{pipeline=\"p\",sink=\"s\"} 2.065\n",
            "lat_seconds_count{pipeline=\"p\",sink=\"s\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn samples_are_labelled_escaped_and_declared_once() {
        let m = Metrics::new("p\"1");
        m.register(Box::new(|x| {
            x.family("a_total", Kind::Counter, "A count.");
            x.sample("a_total", &[("sink", "out\\x")], 3.0);
        }));
        m.register(Box::new(|x| {
            x.family("a_total", Kind::Counter, "A count.");
            x.sample("a_total", &[("sink", "two\nlines")], 0.5);
        }));
        let text = m.render();
        assert_eq!(text.matches("# TYPE a_total counter").count(), 1);
        assert!(
            text.contains("a_total{pipeline=\"p\\\"1\",sink=\"out\\\\x\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("a_total{pipeline=\"p\\\"1\",sink=\"two\\nlines\"} 0.5\n"),
            "{text}"
        );
        assert!(text.contains("sluice_ready{pipeline=\"p\\\"1\"} 0\n"));
    }

    #[test]
    fn ready_once_listed_restored_running_and_every_condition_holds() {
        let m = Metrics::new("p");
        assert!(m.readiness().is_err());
        m.sources_listed();
        m.restored();
        assert_eq!(m.readiness(), Err("workers not started yet".to_owned()));
        m.running();
        assert_eq!(m.readiness(), Ok(()));
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        m.require("served views caught up", Box::new(move || f.load(Ordering::SeqCst)));
        assert_eq!(m.readiness(), Err("served views caught up not yet".to_owned()));
        flag.store(true, Ordering::SeqCst);
        assert_eq!(m.readiness(), Ok(()));
    }
}
