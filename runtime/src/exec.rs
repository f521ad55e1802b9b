//! Running a pipeline: timely workers, the epoch clock, sources, sinks and termination.
//!
//! Each worker builds the same dataflow. Sources are not timely operators: the worker loop
//! polls the partitions assigned to it and pushes what they return into the dataflow's
//! inputs at the current **epoch** (milliseconds since the Unix epoch). Every `epoch_ms` the
//! loop advances all inputs to a new epoch whether or not data arrived, so frontiers — and
//! with them every sink's commit signal — keep moving on quiet streams.
//!
//! Partitions: partition `i` of source `s` in the first listing goes to worker
//! `(s + i) % workers`; one found later goes to the worker its id hashes to. A partition
//! with parents (a Kinesis child shard) is opened only once every parent has been read to
//! its end by whichever worker owns it; a parent no longer listed counts as done. The
//! record of finished partitions is shared by the threads of a process, and told to the
//! other processes of a cluster (see [`crate::cluster`]).
//!
//! Commits: every sink instance publishes its durable frontier; a partition's position is
//! committed to its source (Kafka group offsets) only once every sink's output is durable
//! past the epoch that position was read in. Transient read errors are retried with
//! backoff, never fatal.
//!
//! Backpressure: a worker stops reading while its sinks' frontier is more than
//! [`MAX_EPOCHS_IN_FLIGHT`] epochs behind its inputs, so a fast file cannot flood memory.
//!
//! Termination: when every source of a worker is finished (bounded run) or a stop is
//! requested (SIGINT/SIGTERM), the worker closes its inputs and keeps stepping until its
//! sinks have seen the empty frontier, so everything read is written and flushed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Input as TimelyInput;
use timely::dataflow::operators::vec::input::Handle;
use timely::dataflow::{ProbeHandle, Scope};

use crate::cluster::{ClusterSpec, Control, Outbox, To};
use crate::envelope;
use crate::ingest::{Decode, Ingested, Ingester};
use crate::record::{DeadLetter, DeadLetters, Diff, Pos, Row, Rows, Time};
use crate::recovery::{Checkpointer, Positions, StateRegistry};
use crate::sink::{Sink, SinkError, SinkRecovery, sink_rows};
use crate::source::{
    PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError, assign, assign_by_id,
};
use crate::spec::{Envelope, Format, Pipeline, SinkMode, SinkTarget};
use crate::value::Value;

/// Epochs a worker may have in flight before it pauses reading.
pub const MAX_EPOCHS_IN_FLIGHT: u64 = 8;
/// Records a worker may have read in epochs its outputs have not passed before it pauses
/// reading: epochs bound the lag in time, this bounds it in memory when records are slow
/// to process or multiply (a fanout event becomes several deliveries).
pub const MAX_RECORDS_IN_FLIGHT: usize = 16_384;
/// Records read from one partition before the worker steps the dataflow again.
const POLL_BATCH: usize = 4096;
/// How often unbounded sources are asked for new partitions.
const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// The domain-specific part of a run: opening connectors and rendering graph nodes.
///
/// The runtime knows no connector or dataflow crate; the CLI implements this trait with one
/// exhaustive `match` over the closed spec enums.
pub trait Wiring: Send + Sync + 'static {
    /// Opens the source declared at `index` of the pipeline (once per process).
    fn open_source(&self, pipeline: &Pipeline, index: usize) -> Result<Arc<dyn Source>, SourceError>;
    /// The decoder of the source declared at `index`: its format's, or one with a filter
    /// pushed down from the nodes that read it.
    fn decoder(&self, pipeline: &Pipeline, index: usize) -> Arc<dyn Decode>;
    /// Opens a sink (on worker 0 only); `resume` is what the sink's
    /// [`checkpoint`](Sink::checkpoint) returned in the checkpoint the run restarts from.
    fn open_sink(
        &self,
        target: &SinkTarget,
        mode: SinkMode,
        format: Format,
        resume: Option<&[u8]>,
    ) -> Result<Box<dyn Sink>, SinkError>;
    /// Renders the graph nodes over the source collections, returning every referencable
    /// output (by reference name) and the dead letters the nodes produce.
    /// Stateful operators take their checkpoint hooks from `state`, by a name unique in the
    /// pipeline.
    fn build<'s>(
        &self,
        scope: Scope<'s, Time>,
        sources: &BTreeMap<String, Rows<'s>>,
        state: &mut StateRegistry,
    ) -> Built<'s>;
    /// Where the workers report whether the sources are caught up, if anyone wants to know
    /// (served views, for `dataset_current`).
    fn caught_up(&self) -> Option<Arc<crate::progress::CaughtUp>> {
        None
    }
}

/// The rendered graph of one worker.
pub struct Built<'s> {
    /// Every node output by the name sinks reference (`node`, `node.output`); the runtime
    /// adds the sources itself.
    pub outputs: BTreeMap<String, Rows<'s>>,
    /// Dead letters produced by nodes.
    pub dead_letters: Vec<DeadLetters<'s>>,
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads (overrides the pipeline's `workers`).
    pub workers: Option<usize>,
    /// Set to request a clean stop (drain, flush, exit).
    pub stop: Arc<AtomicBool>,
    /// Where the run publishes its metrics and readiness (the admin endpoint reads them).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// This process's place in a cluster of processes (`None`: the run is this process alone).
    pub cluster: Option<ClusterSpec>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A source could not be opened or read.
    #[error("source {source_name}: {error}")]
    Source {
        /// The source's name.
        source_name: String,
        /// What went wrong.
        error: SourceError,
    },
    /// A sink failed.
    #[error("{0}")]
    Sink(String),
    /// timely could not start or a worker failed.
    #[error("{0}")]
    Workers(String),
    /// Checkpoints could not be read or written.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The processes of a cluster could not form it, or the pipeline cannot run in one.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// What a finished run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Records read per source (including dead-lettered and dropped ones).
    pub records_in: BTreeMap<String, u64>,
    /// Records per source that its decoder dropped as irrelevant to every reader.
    pub records_dropped: BTreeMap<String, u64>,
    /// Bytes read per source: record keys and payloads as the source gave them.
    pub bytes_in: BTreeMap<String, u64>,
    /// Updates written per sink (after consolidation).
    pub updates_out: BTreeMap<String, u64>,
    /// Records written to the dead-letter output (by sources and by nodes).
    pub dead_letters: u64,
    /// Whether the run ended because a stop was requested.
    pub stopped: bool,
    /// The process's peak resident memory at the end of the run, where the OS tells it.
    pub peak_rss_bytes: Option<u64>,
}

impl RunReport {
    /// Records read by every source.
    pub fn records_read(&self) -> u64 {
        self.records_in.values().sum()
    }

    /// Updates written to every sink but the dead-letter output.
    pub fn updates_written(&self) -> u64 {
        self.updates_out
            .iter()
            .filter(|(sink, _)| *sink != DEAD_LETTER_SINK)
            .map(|(_, n)| n)
            .sum()
    }

    /// Records written to the dead-letter output so far (`dead_letters` is set at the end).
    pub fn dead_letters_written(&self) -> u64 {
        self.updates_out.get(DEAD_LETTER_SINK).copied().unwrap_or(0)
    }

    /// One line for humans: records read, updates written, dead letters, time and rate.
    pub fn summary(&self, elapsed: Duration) -> String {
        let (read, written) = (self.records_read(), self.updates_written());
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { read as f64 / secs } else { 0.0 };
        let memory = self
            .peak_rss_bytes
            .map(|b| format!(", peak memory {:.1} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_default();
        let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let dropped: u64 = self.records_dropped.values().sum();
        let dropped = if dropped > 0 {
            format!(" ({dropped} dropped early as irrelevant)")
        } else {
            String::new()
        };
        format!(
            "sluice: read {}{dropped}, wrote {}, {}, in {secs:.2}s ({rate:.0} records/s{memory}){}",
            plural(read, "record"),
            plural(written, "update"),
            plural(self.dead_letters, "dead letter"),
            if self.stopped { "; stopped on request" } else { "" }
        )
    }
}

/// The name the dead-letter output has in counters.
pub const DEAD_LETTER_SINK: &str = "dead_letters";

/// Shared state of a run: counters, the first fatal error, sink completion, and the
/// frontier up to which every sink's output is durable.
#[derive(Default)]
pub struct RunStatus {
    error: Mutex<Option<String>>,
    abort: AtomicBool,
    sinks_closed: AtomicUsize,
    counters: Mutex<RunReport>,
    /// Per sink instance, the frontier its output is durable up to; [`ALL_DURABLE`] once
    /// everything is. A source commits a position only when every slot has passed it.
    durable: Vec<AtomicU64>,
    /// Dead letters per stage (`source x`, `node y`), for metrics.
    dead_by_stage: Mutex<BTreeMap<String, u64>>,
    /// Per sink, the frontier it last committed (`None`: its input ended), for metrics.
    frontiers: Mutex<BTreeMap<String, Option<Time>>>,
    /// Worker 0's epoch: the time new input is read at.
    epoch: AtomicU64,
    /// Per (source, partition), how far its reader is behind, with the unit.
    lags: Mutex<BTreeMap<(String, String), Lagging>>,
    /// Per (source, partition), how much of it has been read, for a bounded run's progress.
    pub(crate) read_progress: crate::progress::ReadProgress,
    /// Where the other processes of a cluster hear of failures and sink progress.
    outbox: Option<Arc<Outbox>>,
}

/// A reader's lag: the amount and its unit.
type Lagging = (u64, &'static str);

/// A durable-frontier slot's value once a sink has made all of its output durable.
const ALL_DURABLE: u64 = u64::MAX;

impl RunStatus {
    /// The status of a run whose sinks have `slots` instances in all.
    pub fn new(slots: usize) -> Self {
        RunStatus {
            durable: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            ..RunStatus::default()
        }
    }

    /// The status of a run whose sinks have `slots` instances in all, telling the other
    /// processes of a cluster through `outbox`.
    fn shared(slots: usize, outbox: Option<Arc<Outbox>>) -> Self {
        RunStatus {
            outbox,
            ..RunStatus::new(slots)
        }
    }

    /// Publishes how far sink instance `slot`'s output is durable (`None`: all of it).
    pub fn set_durable(&self, slot: usize, frontier: Option<Time>) {
        if let Some(d) = self.durable.get(slot) {
            let new = frontier.unwrap_or(ALL_DURABLE);
            if d.swap(new, Ordering::SeqCst) != new
                && let Some(o) = &self.outbox
            {
                o.push(
                    To::Others,
                    Control::Durable {
                        slot: slot as u32,
                        frontier,
                    },
                );
            }
        }
    }

    /// Another process's sink instance made its output durable up to `frontier`.
    fn durable_elsewhere(&self, slot: usize, frontier: Option<Time>) {
        if let Some(d) = self.durable.get(slot) {
            // Events may overtake each other only across processes, never per slot; the
            // maximum keeps a slot from going back all the same.
            d.fetch_max(frontier.unwrap_or(ALL_DURABLE), Ordering::SeqCst);
        }
    }

    /// The frontier every sink's output is durable up to (`None`: all output is durable).
    pub fn durable_frontier(&self) -> Option<Time> {
        let min = self
            .durable
            .iter()
            .map(|d| d.load(Ordering::SeqCst))
            .min()
            .unwrap_or(ALL_DURABLE);
        (min != ALL_DURABLE).then_some(min)
    }

    /// Records a fatal error; the first one wins and every worker (of every process) stops.
    pub fn fail(&self, message: String) {
        if let Some(o) = &self.outbox
            && !self.aborted()
        {
            o.push(
                To::Others,
                Control::Failed {
                    message: message.clone(),
                },
            );
        }
        self.fail_here(message);
    }

    fn fail_here(&self, message: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(message);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Counts updates written by a sink.
    pub fn count_out(&self, sink: &str, n: usize) {
        if let Ok(mut c) = self.counters.lock() {
            *c.updates_out.entry(sink.to_owned()).or_default() += n as u64;
        }
    }

    fn count_in(&self, source: &str, (read, dropped, bytes): (usize, usize, usize)) {
        if let Ok(mut c) = self.counters.lock() {
            *c.records_in.entry(source.to_owned()).or_default() += read as u64;
            *c.bytes_in.entry(source.to_owned()).or_default() += bytes as u64;
            if dropped > 0 {
                *c.records_dropped.entry(source.to_owned()).or_default() += dropped as u64;
            }
        }
    }

    /// Counts a dead letter of `stage`.
    pub fn count_dead(&self, stage: &str) {
        if let Ok(mut d) = self.dead_by_stage.lock() {
            match d.get_mut(stage) {
                Some(n) => *n += 1,
                None => {
                    d.insert(stage.to_owned(), 1);
                }
            }
        }
    }

    /// Records the frontier sink `sink` committed.
    pub fn set_frontier(&self, sink: &str, frontier: Option<Time>) {
        if let Ok(mut f) = self.frontiers.lock() {
            match f.get_mut(sink) {
                Some(slot) => *slot = frontier,
                None => {
                    f.insert(sink.to_owned(), frontier);
                }
            }
        }
    }

    fn set_lag(&self, source: &str, partition: &str, lag: Option<crate::source::Lag>) {
        let Ok(mut lags) = self.lags.lock() else {
            return;
        };
        let key = (source.to_owned(), partition.to_owned());
        match lag {
            Some(l) => {
                lags.insert(key, (l.value(), l.unit()));
            }
            None => {
                lags.remove(&key);
            }
        }
    }

    /// The counters so far, and the largest delay of a sink's frontier behind the wall clock
    /// (milliseconds; sinks whose input ended do not count), for a status line.
    pub fn progress(&self) -> (RunReport, Option<u64>) {
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let now = now_ms();
        let delay = self
            .frontiers
            .lock()
            .ok()
            .and_then(|f| f.values().flatten().map(|t| now.saturating_sub(*t)).max());
        (counters, delay)
    }

    /// Writes the run's counters, frontiers and lags into a scrape.
    pub fn expose(&self, x: &mut crate::metrics::Exposition) {
        use crate::metrics::Kind::{Counter, Gauge};
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        x.family(
            "sluice_records_in_total",
            Counter,
            "Records read per source, dead-lettered ones included.",
        );
        for (source, n) in &counters.records_in {
            x.sample("sluice_records_in_total", &[("source", source)], *n as f64);
        }
        x.family(
            "sluice_bytes_in_total",
            Counter,
            "Bytes read per source: record keys and payloads as the source gave them.",
        );
        for (source, n) in &counters.bytes_in {
            x.sample("sluice_bytes_in_total", &[("source", source)], *n as f64);
        }
        x.family(
            "sluice_records_dropped_total",
            Counter,
            "Records per source its decoder dropped early as irrelevant to every reader.",
        );
        for (source, n) in &counters.records_dropped {
            x.sample("sluice_records_dropped_total", &[("source", source)], *n as f64);
        }
        x.family(
            "sluice_updates_out_total",
            Counter,
            "Updates written per sink (dead_letters is the dead-letter output).",
        );
        for (sink, n) in &counters.updates_out {
            x.sample("sluice_updates_out_total", &[("sink", sink)], *n as f64);
        }
        x.family(
            "sluice_dead_letters_total",
            Counter,
            "Records dead-lettered, per stage that refused them (source or node).",
        );
        if let Ok(dead) = self.dead_by_stage.lock() {
            for (stage, n) in dead.iter() {
                x.sample("sluice_dead_letters_total", &[("stage", stage)], *n as f64);
            }
        }
        let now = now_ms();
        x.single(
            "sluice_epoch_ms",
            Gauge,
            "The time new input is read at (worker 0's epoch), in epoch milliseconds.",
            &[],
            self.epoch.load(Ordering::Relaxed) as f64,
        );
        x.family(
            "sluice_output_frontier_ms",
            Gauge,
            "Per sink, the frontier it last committed: every earlier time is final there.",
        );
        x.family(
            "sluice_output_delay_seconds",
            Gauge,
            "Per sink, how far its frontier is behind the wall clock (0 once its input ended).",
        );
        x.family(
            "sluice_output_durable_ms",
            Gauge,
            "The frontier every sink's output is durable up to, in epoch milliseconds.",
        );
        if let Ok(frontiers) = self.frontiers.lock() {
            for (sink, f) in frontiers.iter() {
                let labels = [("sink", sink.as_str())];
                if let Some(f) = f {
                    x.sample("sluice_output_frontier_ms", &labels, *f as f64);
                }
                let delay = f.map_or(0, |f| now.saturating_sub(f));
                x.sample("sluice_output_delay_seconds", &labels, delay as f64 / 1000.0);
            }
        }
        if let Some(d) = self.durable_frontier() {
            x.sample("sluice_output_durable_ms", &[], d as f64);
        }
        // What the arrangements' record counts cost in memory shows here, for the process.
        if let Some(b) = rss_bytes() {
            x.single(
                "sluice_process_resident_bytes",
                Gauge,
                "The process's resident memory now.",
                &[],
                b as f64,
            );
        }
        if let Some(b) = peak_rss_bytes() {
            x.single(
                "sluice_process_peak_resident_bytes",
                Gauge,
                "The process's peak resident memory so far.",
                &[],
                b as f64,
            );
        }
        x.family(
            "sluice_source_lag",
            Gauge,
            "How far each partition's reader is behind its end, in the unit the source knows.",
        );
        if let Ok(lags) = self.lags.lock() {
            for ((source, partition), (value, unit)) in lags.iter() {
                x.sample(
                    "sluice_source_lag",
                    &[("source", source), ("partition", partition), ("unit", unit)],
                    *value as f64,
                );
            }
        }
    }

    /// Notes that a sink has seen the empty frontier and committed everything.
    pub fn sink_closed(&self) {
        self.sinks_closed.fetch_add(1, Ordering::SeqCst);
        if let Some(o) = &self.outbox {
            o.push(To::Others, Control::SinkClosed);
        }
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
}

/// The partitions of every source, with stable indices (a partition keeps its index for
/// the whole run, in the order it was first discovered).
pub struct Catalog {
    sources: Vec<CatalogEntry>,
    /// Per source, how many partitions the first listing found: those are assigned by
    /// index, later ones by id.
    initial: Vec<usize>,
    /// Partitions read to their end, as (source index, partition id), from every worker.
    finished: Mutex<std::collections::BTreeSet<(usize, String)>>,
    /// Per source, the latest epoch in which one of its partitions was read to its end.
    finished_at: Mutex<BTreeMap<usize, Time>>,
    /// Partitions of unbounded sources that have been caught up at least once (their first
    /// `Idle`): a source started after one waits for this, not for an end that never comes.
    caught_up: Mutex<std::collections::BTreeSet<(usize, String)>>,
}

struct CatalogEntry {
    name: String,
    source: Arc<dyn Source>,
    partitions: RwLock<Vec<PartitionInfo>>,
}

impl Catalog {
    /// Notes that a partition was read to its end; returns whether that is news.
    fn mark_finished(&self, source: usize, id: &str, epoch: Time) -> bool {
        let new = self
            .finished
            .lock()
            .is_ok_and(|mut f| f.insert((source, id.to_owned())));
        if let Ok(mut at) = self.finished_at.lock() {
            let latest = at.entry(source).or_insert(epoch);
            *latest = (*latest).max(epoch);
        }
        new
    }

    /// Notes that a partition of an unbounded source has nothing more to read for now, for
    /// the first time or again: it counts as read to its end for `start_after`. Returns
    /// whether it is the first time.
    fn mark_caught_up(&self, source: usize, id: &str, epoch: Time) -> bool {
        let Ok(mut caught) = self.caught_up.lock() else {
            return false;
        };
        let new = caught.insert((source, id.to_owned()));
        if new && let Ok(mut at) = self.finished_at.lock() {
            let latest = at.entry(source).or_insert(epoch);
            *latest = (*latest).max(epoch);
        }
        new
    }

    /// If every partition of every source in `sources` has been read to its end — or, for an
    /// unbounded source, caught up once — the latest epoch in which one was: records read
    /// after them must not be at an earlier time.
    fn sources_done(&self, sources: &[usize]) -> Option<Time> {
        let finished = self.finished.lock().ok()?;
        let caught = self.caught_up.lock().ok()?;
        let at = self.finished_at.lock().ok()?;
        let mut latest = 0;
        for &s in sources {
            let listed = self.sources.get(s)?.partitions.read().ok()?;
            let done = |p: &PartitionInfo| {
                let key = (s, p.id.clone());
                finished.contains(&key) || caught.contains(&key)
            };
            if !listed.iter().all(done) {
                return None;
            }
            latest = latest.max(at.get(&s).copied().unwrap_or(0));
        }
        Some(latest)
    }

    /// The latest epoch in which a partition of `source` was read to its end (or caught up).
    fn finished_epoch(&self, source: usize) -> Option<Time> {
        self.finished_at.lock().ok()?.get(&source).copied()
    }

    /// Whether every parent of `part` has been read to its end.
    ///
    /// A parent that is no longer listed counts as finished: its data has expired (a
    /// Kinesis shard past retention), and waiting for it would stall the child forever.
    fn parents_done(&self, source: usize, part: &PartitionInfo) -> bool {
        let (Ok(listed), Ok(finished)) = (self.sources[source].partitions.read(), self.finished.lock()) else {
            return false;
        };
        part.parents
            .iter()
            .all(|parent| !listed.iter().any(|q| &q.id == parent) || finished.contains(&(source, parent.clone())))
    }

    /// Adds newly discovered partitions of source `s`; returns the full list.
    fn merge(&self, s: usize, found: Vec<PartitionInfo>) -> Vec<PartitionInfo> {
        let entry = &self.sources[s];
        let Ok(mut parts) = entry.partitions.write() else {
            return Vec::new();
        };
        for p in found {
            if !parts.iter().any(|q| q.id == p.id) {
                parts.push(p);
            }
        }
        parts.clone()
    }

    /// Renders a dead letter as the JSON row of the dead-letter output.
    pub fn dead_letter_row(&self, d: &DeadLetter) -> Row {
        let mut fields: Vec<(&str, Value)> = vec![
            ("stage", Value::str(d.stage.clone())),
            ("reason", Value::str(d.reason.clone())),
            ("raw", Value::str(d.raw.clone())),
        ];
        if let Some(entry) = self.sources.get(d.pos.source as usize) {
            fields.push(("source", Value::str(entry.name.as_str())));
            let partition = entry
                .partitions
                .read()
                .ok()
                .and_then(|p| p.get(d.pos.partition as usize).cloned());
            if let Some(p) = partition {
                fields.extend(entry.source.coordinates(&p));
            }
            fields.push((entry.source.offset_label(), Value::from(d.pos.offset)));
        }
        Row {
            key: Value::Null,
            val: Value::map(fields),
            pos: d.pos,
        }
    }
}

/// Runs a pipeline to completion (bounded sources) or until `options.stop` is set.
pub fn run<W: Wiring>(pipeline: Arc<Pipeline>, wiring: Arc<W>, options: RunOptions) -> Result<RunReport, RunError> {
    let cluster = options.cluster.clone().filter(|c| c.processes() > 1);
    if cluster.is_some()
        && let Some(s) = pipeline
            .sources
            .iter()
            .find(|s| matches!(s.spec, crate::spec::SourceSpec::HttpIngest(_)))
    {
        return Err(RunError::Cluster(format!(
            "source {}: an http-ingest source keeps its log on the machine that received the events, so it runs in one process only",
            s.name.value
        )));
    }
    let mut sources = Vec::new();
    let mut entries = Vec::new();
    for (i, decl) in pipeline.sources.iter().enumerate() {
        let source = wiring.open_source(&pipeline, i).map_err(|error| RunError::Source {
            source_name: decl.name.value.clone(),
            error,
        })?;
        let partitions =
            discover_first(source.as_ref(), &decl.name.value, &options.stop).map_err(|error| RunError::Source {
                source_name: decl.name.value.clone(),
                error,
            })?;
        entries.push(CatalogEntry {
            name: decl.name.value.clone(),
            source: source.clone(),
            partitions: RwLock::new(partitions),
        });
        sources.push(source);
    }
    if let Some(m) = &options.metrics {
        m.sources_listed();
    }
    let initial: Vec<usize> = entries
        .iter()
        .map(|e| e.partitions.read().map_or(0, |p| p.len()))
        .collect();
    // What every process of a cluster must have listed alike, since partitions are assigned
    // by their place in the first listing.
    let listed = entries.iter().fold(0u64, |h, e| {
        let ids = e
            .partitions
            .read()
            .map(|p| p.iter().map(|q| q.id.as_str()).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        h.rotate_left(7) ^ crate::source::stable_hash(format!("{}\n{ids}", e.name))
    });
    let catalog = Arc::new(Catalog {
        sources: entries,
        initial,
        finished: Mutex::default(),
        finished_at: Mutex::default(),
        caught_up: Mutex::default(),
    });
    // Indices of the sources each source starts after (validation checked the names).
    let start_after = pipeline
        .sources
        .iter()
        .map(|s| {
            s.start_after
                .iter()
                .filter_map(|a| pipeline.sources.iter().position(|o| o.name.value == a.value))
                .collect()
        })
        .collect();
    // Threads of this process; every process of a cluster runs as many.
    let threads = options.workers.unwrap_or(pipeline.workers).max(1);
    let processes = cluster.as_ref().map_or(1, ClusterSpec::processes);
    let workers = threads * processes;
    let outbox = cluster
        .as_ref()
        .map(|c| Arc::new(Outbox::new(c.process, processes, threads)));
    let slots = SinkSlots::new(&pipeline, workers);
    let status = Arc::new(RunStatus::shared(slots.total(), outbox.clone()));
    let checkpoints = match &pipeline.checkpoint_dir {
        Some(dir) => {
            let c = Checkpointer::open(
                dir,
                &pipeline.name,
                Duration::from_millis(pipeline.checkpoint_interval_ms),
                (workers, slots.total()),
            )
            .map_err(|e| RunError::Checkpoint(e.to_string()))?;
            Some(Arc::new(match &outbox {
                Some(o) => c.in_cluster(o),
                None => c,
            }))
        }
        None => None,
    };
    if let Some(m) = &options.metrics {
        m.attach(status.clone());
        m.restored();
        if let Some(c) = &checkpoints {
            let c = Arc::clone(c);
            m.register(Box::new(move |x| expose_checkpoints(&c, x)));
        }
    }
    // One collector for the process; each worker adds its own tallies when it builds.
    let arrangements = options.metrics.as_ref().map(|m| {
        let arrangements = crate::arrangements::Arrangements::new();
        let exposed = Arc::clone(&arrangements);
        m.register(Box::new(move |x| exposed.expose(x)));
        arrangements
    });
    let wiring_caught_up = wiring.caught_up();
    let ctx = Arc::new(Ctx {
        pipeline,
        wiring,
        sources,
        catalog,
        start_after,
        status: status.clone(),
        stop: options.stop.clone(),
        slots,
        checkpoints,
        done_reading: AtomicUsize::new(0),
        last_read_epoch: AtomicU64::new(0),
        final_requested: AtomicBool::new(false),
        final_at: AtomicU64::new(0),
        workers,
        threads,
        metrics: options.metrics.clone(),
        arrangements,
        caught_up: wiring_caught_up,
        outbox,
        acks: Mutex::default(),
        stop_shared: AtomicBool::new(false),
        local_done: AtomicUsize::new(0),
    });

    let (builders, comms): (
        Vec<timely::communication::AllocatorBuilder>,
        Box<dyn std::any::Any + Send>,
    ) = match &cluster {
        None => timely::CommunicationConfig::Process(threads)
            .try_build()
            .map_err(RunError::Workers)?,
        Some(c) => {
            let restored = ctx.checkpoints.as_ref().map_or(0, |c| c.written());
            let sockets = c
                .connect(&ctx.pipeline.name, (threads, restored, listed), &options.stop)
                .map_err(|e| RunError::Cluster(e.to_string()))?;
            tracing::info!(process = c.process, processes, threads, "the cluster has formed");
            let local = timely::communication::allocator::ProcessBuilder::new_typed_vector(
                threads,
                timely::communication::Hooks::default().refill,
                None,
            );
            let (builders, guard) =
                timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets(
                    local,
                    sockets,
                    c.process,
                    threads,
                    timely::communication::Hooks::default(),
                )
                .map_err(|e| RunError::Cluster(format!("starting timely's network threads: {e}")))?;
            let builders = builders
                .into_iter()
                .map(timely::communication::AllocatorBuilder::Tcp)
                .collect();
            (builders, Box::new(guard))
        }
    };
    let guards = timely::execute::execute_from(builders, comms, timely::WorkerConfig::default(), move |worker| {
        // The other workers wait for this one's progress and checkpoint parts: on an error or
        // a panic, tell them to stop instead of waiting forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker_main(worker, &ctx)));
        match result {
            Ok(Err(e)) => {
                ctx.status.fail(e.to_string());
                Err(e)
            }
            Ok(ok) => ok,
            Err(panic) => {
                let message = if crate::cluster::lost_peer(&crate::cluster::panic_text(panic.as_ref())) {
                    "lost the connection to another process of the cluster".to_owned()
                } else {
                    "a worker panicked".to_owned()
                };
                ctx.status.fail(message);
                std::panic::resume_unwind(panic)
            }
        }
    })
    .map_err(RunError::Workers)?;
    let mut first_error = None;
    // Joining also joins timely's network threads, which panic when another process is gone.
    let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guards.join()))
        .map_err(|_| RunError::Cluster("lost the connection to another process of the cluster".to_owned()));
    let joined = match joined {
        Ok(joined) => joined,
        Err(e) => {
            first_error = Some(
                status
                    .error
                    .lock()
                    .ok()
                    .and_then(|m| m.clone())
                    .map_or(e, RunError::Cluster),
            );
            Vec::new()
        }
    };
    for result in joined {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(panic) => first_error = first_error.or(Some(RunError::Workers(format!("a worker failed: {panic}")))),
        }
    }
    // A worker's own error first: the status then holds the same message, for the others.
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(message) = status.error.lock().ok().and_then(|e| e.clone()) {
        return Err(RunError::Sink(message));
    }
    let mut report = status.counters.lock().map(|c| c.clone()).unwrap_or_default();
    report.stopped = options.stop.load(Ordering::SeqCst);
    report.dead_letters = report.dead_letters_written();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

struct Ctx<W> {
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where workers tally their arrangements' sizes, when metrics are on.
    arrangements: Option<Arc<crate::arrangements::Arrangements>>,
    pipeline: Arc<Pipeline>,
    wiring: Arc<W>,
    sources: Vec<Arc<dyn Source>>,
    catalog: Arc<Catalog>,
    /// Per source, the sources that must be read to their end before it starts.
    start_after: Vec<Vec<usize>>,
    status: Arc<RunStatus>,
    stop: Arc<AtomicBool>,
    slots: SinkSlots,
    checkpoints: Option<Arc<Checkpointer>>,
    /// Workers that will read nothing more (stopped, or read their bounded partitions to the end).
    done_reading: AtomicUsize,
    /// The latest epoch any worker read in before it stopped reading.
    last_read_epoch: AtomicU64,
    /// Whether worker 0 has requested the final checkpoint of a bounded run.
    final_requested: AtomicBool,
    /// The final checkpoint's frontier, once requested.
    final_at: AtomicU64,
    /// The number of workers, of every process.
    workers: usize,
    /// The number of workers of this process.
    threads: usize,
    /// Where the workers report whether the sources are caught up, if anyone wants to know.
    caught_up: Option<Arc<crate::progress::CaughtUp>>,
    /// What this process tells the other processes of a cluster (`None`: it runs alone).
    outbox: Option<Arc<Outbox>>,
    /// At the leader, per checkpoint frontier, the processes that have registered it.
    acks: Mutex<BTreeMap<Time, usize>>,
    /// Whether this process has told the others of a stop (or heard of it from them).
    stop_shared: AtomicBool,
    /// Workers of this process that have left [`run_worker`].
    local_done: AtomicUsize,
}

impl<W> Ctx<W> {
    /// Whether every other process has registered the checkpoint at `frontier`, so the
    /// dataflow may pass it: none of their operators can miss the cut.
    fn acked(&self, frontier: Time) -> bool {
        let Some(o) = &self.outbox else {
            return true;
        };
        let acks = self.acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        acks.get(&frontier).copied().unwrap_or(0) + 1 >= o.processes()
    }

    /// Notes that the final checkpoint of a bounded run was requested at `frontier`: its
    /// frontier first, so a worker that sees the request sees where it is.
    fn final_requested_at(&self, frontier: Time) {
        self.final_at.store(frontier, Ordering::SeqCst);
        self.final_requested.store(true, Ordering::SeqCst);
    }

    /// Notes that a partition was read to its end, and tells the other processes the first
    /// time.
    fn partition_finished(&self, source: usize, id: &str, epoch: Time) {
        if self.catalog.mark_finished(source, id, epoch) {
            let partition = id.to_owned();
            self.tell(
                To::Others,
                Control::Finished {
                    source: source as u32,
                    partition,
                    epoch,
                },
            );
        }
    }

    /// Notes that a partition of an unbounded source has nothing more to read for now, and
    /// tells the other processes the first time.
    fn partition_caught_up(&self, source: usize, id: &str, epoch: Time) {
        if self.catalog.mark_caught_up(source, id, epoch) {
            let partition = id.to_owned();
            self.tell(
                To::Others,
                Control::CaughtUp {
                    source: source as u32,
                    partition,
                    epoch,
                },
            );
        }
    }

    /// Queues an event for other processes, when there are any.
    fn tell(&self, to: To, event: Control) {
        if let Some(o) = &self.outbox {
            o.push(to, event);
        }
    }

    /// Applies what another process told this one.
    fn apply(&self, event: Control) {
        match event {
            Control::Finished {
                source,
                partition,
                epoch,
            } => {
                self.catalog.mark_finished(source as usize, &partition, epoch);
            }
            Control::CaughtUp {
                source,
                partition,
                epoch,
            } => {
                self.catalog.mark_caught_up(source as usize, &partition, epoch);
            }
            Control::DoneReading { epoch } => {
                self.last_read_epoch.fetch_max(epoch, Ordering::SeqCst);
                self.done_reading.fetch_add(1, Ordering::SeqCst);
            }
            Control::Start { frontier, last } => {
                if let Some(c) = &self.checkpoints {
                    c.maybe_start(frontier, true);
                }
                if last {
                    self.final_requested_at(frontier);
                }
                // The cut is registered: this process's operators will take it.
                self.tell(To::Leader, Control::Ack { frontier });
            }
            Control::Ack { frontier } => {
                let mut acks = self.acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                *acks.entry(frontier).or_default() += 1;
                // Older checkpoints are written or replaced.
                acks.retain(|t, _| *t >= frontier);
            }
            Control::Part {
                frontier,
                worker,
                positions,
                states,
            } => {
                if let Some(c) = &self.checkpoints {
                    c.worker_part(frontier, (worker as usize, self.workers), positions, states);
                }
            }
            Control::SinkPart {
                frontier,
                sink,
                position,
            } => {
                if let Some(c) = &self.checkpoints {
                    c.sink_part(frontier, &sink, position);
                }
            }
            Control::Written { frontier } => {
                if let Some(c) = &self.checkpoints {
                    c.written_elsewhere(frontier);
                }
            }
            Control::Durable { slot, frontier } => self.status.durable_elsewhere(slot as usize, frontier),
            Control::SinkClosed => {
                self.status.sinks_closed.fetch_add(1, Ordering::SeqCst);
            }
            Control::WorkerCaughtUp { worker, since } => {
                if let Some(c) = &self.caught_up {
                    c.report(worker as usize, self.workers, since);
                }
            }
            Control::Failed { message } => self.status.fail_here(message),
            Control::Stop => {
                self.stop_shared.store(true, Ordering::SeqCst);
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The input of the control dataflow of one worker: the first worker of each process sends
/// its process's events; the others only run the dataflow.
struct ControlInput {
    handle: Handle<u64, (u64, Control)>,
    round: u64,
    sends: bool,
}

impl ControlInput {
    /// Sends what the process has queued for the others.
    fn send(&mut self, outbox: &Outbox) {
        if !self.sends {
            return;
        }
        let events = outbox.drain();
        if events.is_empty() {
            return;
        }
        for event in events {
            self.handle.send(event);
        }
        // A new round flushes the exchange's buffers: records at a time that never closes
        // would wait there.
        self.round += 1;
        self.handle.advance_to(self.round);
    }
}

/// Where each sink's instances publish their durable frontier in [`RunStatus`]: a
/// single-writer sink has one slot, a parallel one a slot per worker; dead letters come last.
struct SinkSlots {
    /// Per sink (in pipeline order, then the dead-letter output): first slot and instances.
    ranges: Vec<(usize, usize)>,
}

impl SinkSlots {
    fn new(p: &Pipeline, workers: usize) -> Self {
        let targets = p.sinks.iter().map(|s| &s.target).chain([&p.dead_letters]);
        let mut next = 0;
        let ranges = targets
            .map(|t| {
                let n = if t.parallel() { workers } else { 1 };
                next += n;
                (next - n, n)
            })
            .collect();
        SinkSlots { ranges }
    }

    fn total(&self) -> usize {
        self.ranges.iter().map(|(_, n)| n).sum()
    }

    /// The slot of sink `sink`'s instance on worker `index`.
    fn slot(&self, sink: usize, index: usize) -> usize {
        let (first, n) = self.ranges.get(sink).copied().unwrap_or((0, 1));
        first + if n > 1 { index } else { 0 }
    }
}

/// Lists a source's partitions at start, retrying an unreachable system (a broker being
/// restarted) with backoff until it answers or a stop is requested.
fn discover_first(source: &dyn Source, name: &str, stop: &AtomicBool) -> Result<Vec<PartitionInfo>, SourceError> {
    let mut backoff = Backoff::default();
    loop {
        match source.discover() {
            Err(SourceError::Transient(e)) if !stop.load(Ordering::SeqCst) => {
                let wait = backoff.next();
                tracing::warn!(source = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot list partitions; retrying");
                std::thread::sleep(wait);
            }
            other => return other,
        }
    }
}

/// Exponential backoff for retrying an external system: 100 ms doubling to 5 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait before the next attempt.
    fn next(&mut self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.failures.min(6)).min(5_000);
        self.failures += 1;
        Duration::from_millis(ms)
    }

    /// Consecutive failures so far.
    fn failures(&self) -> u32 {
        self.failures
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How often a partition commits its durable position to its source.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// The input of one source in one worker's dataflow.
enum SourceInput {
    Append(InputSession<Time, Row, Diff>),
    Upsert(Handle<Time, (Value, (Pos, Option<Value>))>),
}

impl SourceInput {
    fn advance_to(&mut self, t: Time) {
        match self {
            SourceInput::Append(s) => s.advance_to(t),
            SourceInput::Upsert(h) => h.advance_to(t),
        }
    }
    fn flush(&mut self) {
        match self {
            SourceInput::Append(s) => s.flush(),
            SourceInput::Upsert(h) => h.flush(),
        }
    }
}

/// A partition queued until its parents (or the sources it starts after) are done.
type Waiting = (usize, u32, PartitionInfo);

/// A partition this worker reads.
struct Assigned {
    source: usize,
    partition: u32,
    id: String,
    reader: Box<dyn PartitionReader>,
    finished: bool,
    idle_until: Option<Instant>,
    /// The last poll found nothing more to read right now.
    idle: bool,
    /// Failed polls in a row (a broker outage), for backoff and reporting.
    backoff: Backoff,
    /// The reader's position at the end of each epoch it read in, oldest first: a position
    /// may be committed once the sinks' output is durable past its epoch.
    marks: VecDeque<(Time, Position)>,
    last_commit: Instant,
    /// As `marks`, kept until a checkpoint past them is written, with the position before
    /// the oldest: the partition's position at any frontier a checkpoint may ask for.
    history: VecDeque<(Time, Position)>,
    base: Position,
}

impl Assigned {
    /// The position after every record read in epochs before `frontier`.
    fn position_at(&self, frontier: Time) -> Position {
        self.history
            .iter()
            .rev()
            .find(|(e, _)| *e < frontier)
            .map_or_else(|| self.base.clone(), |(_, p)| p.clone())
    }

    /// Forgets the history a written checkpoint at `frontier` no longer needs.
    fn prune_history(&mut self, frontier: Time) {
        self.base = self.position_at(frontier);
        self.history.retain(|(e, _)| *e >= frontier);
    }

    /// Commits the newest position whose records all lie before the durable frontier
    /// (`None`: everything is durable), at most every [`COMMIT_EVERY`] unless `now_or_never`.
    fn commit_durable(&mut self, durable: Option<Time>, now_or_never: bool) -> Result<(), SourceError> {
        if !now_or_never && self.last_commit.elapsed() < COMMIT_EVERY {
            return Ok(());
        }
        let mut newest = None;
        while self.marks.front().is_some_and(|(e, _)| durable.is_none_or(|d| *e < d)) {
            newest = self.marks.pop_front().map(|(_, p)| p);
        }
        if let Some(position) = newest {
            self.last_commit = Instant::now();
            self.reader.commit(&position, now_or_never)?;
        }
        Ok(())
    }
}

/// The peak resident set size of this process (Linux `VmHWM`), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// The resident set size of this process now (Linux `VmRSS`), if the OS reports it.
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The wall clock in epoch milliseconds: the unit of sluice's times.
pub fn now_ms() -> Time {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Time)
}

fn worker_main<W: Wiring>(worker: &mut timely::worker::Worker, ctx: &Arc<Ctx<W>>) -> Result<(), RunError> {
    let mut control = ctx.outbox.as_ref().map(|outbox| {
        let sends = outbox.receives(worker.index());
        let receiver = Arc::clone(ctx);
        worker.dataflow::<u64, _, _>(|scope| {
            let (handle, events) = scope.new_input::<(u64, Control)>();
            events.sink(
                Exchange::new(|(to, _): &(u64, Control)| *to),
                "Cluster control",
                move |(input, _)| {
                    input.for_each(|_, data| {
                        for (_, event) in data.drain(..) {
                            receiver.apply(event);
                        }
                    });
                },
            );
            ControlInput {
                handle,
                round: 0,
                sends,
            }
        })
    });
    let result = run_worker(worker, ctx, &mut control);
    if let Err(e) = &result {
        // Before winding down: the other workers, here and elsewhere, must stop waiting.
        ctx.status.fail(e.to_string());
    }
    ctx.local_done.fetch_add(1, Ordering::SeqCst);
    wind_down(worker, ctx, control);
    result
}

/// Steps the worker until its dataflows are complete: the first worker of a process goes on
/// sending the process's events until every worker of the process is done, for the others
/// may still wait for them. On a failure, drops the dataflows instead of waiting for
/// processes or workers that may never finish them.
fn wind_down<W>(worker: &mut timely::worker::Worker, ctx: &Ctx<W>, mut control: Option<ControlInput>) {
    loop {
        if let (Some(c), Some(outbox)) = (&mut control, &ctx.outbox) {
            c.send(outbox);
            if !c.sends || (ctx.local_done.load(Ordering::SeqCst) == ctx.threads && outbox.is_empty()) {
                control = None;
            }
        }
        if ctx.status.aborted() {
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            return;
        }
        if control.is_none() && !worker.has_dataflows() {
            return;
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
}

fn run_worker<W: Wiring>(
    worker: &mut timely::worker::Worker,
    ctx: &Ctx<W>,
    control: &mut Option<ControlInput>,
) -> Result<(), RunError> {
    let index = worker.index();
    let peers = worker.peers();
    let p = &ctx.pipeline;
    let probe = ProbeHandle::new();
    let checkpoints = ctx.checkpoints.clone();
    let restored = checkpoints.as_ref().and_then(|c| c.restored().cloned());
    // Restored state is emitted at the checkpoint's frontier; new input comes after it.
    let mut epoch = now_ms().max(restored.as_ref().map_or(0, |r| r.frontier + 1));
    // This worker's stateful operators, for checkpoints.
    let mut state = match &checkpoints {
        Some(c) => StateRegistry::new(c, (index, peers)),
        None => StateRegistry::disabled(),
    };
    // Records read per epoch, for the epochs the outputs have not passed yet.
    let mut in_flight: VecDeque<(Time, usize)> = VecDeque::new();
    // Every instance of a sink reports its close: one per single-writer sink, one per worker
    // for a parallel one.
    let instances = |parallel: bool| if parallel { worker.peers() } else { 1 };
    let n_sinks =
        p.sinks.iter().map(|s| instances(s.target.parallel())).sum::<usize>() + instances(p.dead_letters.parallel());

    // Operators take their loggers when they are built, so the logs are subscribed to first.
    let attached = ctx.arrangements.as_ref().map(|a| a.attach(worker));
    let (mut inputs, mut dead_input) = worker.dataflow::<Time, _, _>(|scope| {
        let mut inputs = Vec::new();
        let mut collections = BTreeMap::new();
        for decl in &p.sources {
            let (input, rows) = match &decl.envelope {
                Envelope::Append { .. } => {
                    let (session, rows) = scope.new_collection::<Row, Diff>();
                    (SourceInput::Append(session), rows)
                }
                Envelope::Upsert { .. } => {
                    let (handle, stream) = scope.new_input::<(Value, (Pos, Option<Value>))>();
                    let name = &decl.name.value;
                    let hooks = state.fold(&format!("source.{name}"));
                    (
                        SourceInput::Upsert(handle),
                        envelope::upsert_checkpointed(stream, name, &hooks),
                    )
                }
            };
            inputs.push(input);
            collections.insert(decl.name.value.clone(), rows);
        }
        let (dead_session, dead_rows) = scope.new_collection::<DeadLetter, Diff>();
        let built = ctx.wiring.build(scope, &collections, &mut state);
        for problem in state.problems() {
            ctx.status.fail(format!("checkpoint: {problem}"));
        }
        let mut outputs = built.outputs;
        outputs.extend(collections);

        for (k, sink) in p.sinks.iter().enumerate() {
            let Some(rows) = outputs.get(&sink.input.value) else {
                ctx.status.fail(format!(
                    "sink {}: input `{}` was not built",
                    sink.name.value, sink.input.value
                ));
                continue;
            };
            let rows = rows.clone().probe_with(&probe);
            attach_sink(
                ctx,
                (index, k),
                rows,
                (&sink.target, sink.mode.value, sink.format.value),
                &sink.name.value,
            );
        }

        let catalog = ctx.catalog.clone();
        let counted = ctx.status.clone();
        let dead =
            differential_dataflow::collection::concatenate(scope, built.dead_letters.into_iter().chain([dead_rows]))
                .map(move |d| {
                    counted.count_dead(&d.stage);
                    catalog.dead_letter_row(&d)
                })
                .probe_with(&probe);
        attach_sink(
            ctx,
            (index, p.sinks.len()),
            dead,
            (&p.dead_letters, SinkMode::Append, Format::Json),
            DEAD_LETTER_SINK,
        );
        (inputs, dead_session)
    });
    if let Some(a) = attached {
        a.built(worker);
    }

    let mut assigned: Vec<Assigned> = Vec::new();
    let caught_up = ctx.caught_up.clone();
    let mut caught_since: Option<Time> = None;
    let mut rotate = 0usize;
    let mut known: Vec<usize> = vec![0; ctx.sources.len()];
    let mut waiting: Vec<(usize, u32, PartitionInfo)> = Vec::new();
    let mut last_discover = Instant::now();
    let mut last_lag = Instant::now();
    open_new_partitions(ctx, index, peers, &mut known, &mut waiting, false);
    // Nothing has finished yet, so no source started after another opens here.
    open_ready_partitions(ctx, &mut waiting, &mut assigned)?;
    for input in &mut inputs {
        input.advance_to(epoch);
    }
    dead_input.advance_to(epoch);

    let all_bounded = ctx.sources.iter().all(|s| s.bounded());
    if let Some(m) = &ctx.metrics {
        m.running();
    }
    let mut next_tick = Instant::now() + Duration::from_millis(p.epoch_ms);
    let mut buf: Vec<RawRecord> = Vec::with_capacity(POLL_BATCH);
    let ingesters: Vec<Ingester> = p
        .sources
        .iter()
        .enumerate()
        .map(|(i, d)| Ingester::new(&d.name.value, ctx.wiring.decoder(p, i), d.envelope.clone()))
        .collect();

    // The newest checkpoint frontier this worker has sent its part for.
    let mut contributed: Time = restored.as_ref().map_or(0, |r| r.frontier);
    let mut done_reading = false;

    // Reading phase.
    loop {
        if ctx.status.aborted() {
            return Ok(());
        }
        let stopping = ctx.stop.load(Ordering::SeqCst);
        if stopping && !ctx.stop_shared.swap(true, Ordering::SeqCst) {
            ctx.tell(To::Others, Control::Stop);
        }
        if stopping || (all_bounded && waiting.is_empty() && assigned.iter().all(|a| a.finished)) {
            let Some(c) = &checkpoints else {
                break;
            };
            // A run (stopped, or bounded and read to its end) ends with a checkpoint of
            // everything read, taken once every worker has stopped reading, past the last
            // epoch any of them read in: a worker's epoch may run ahead of worker 0's. Until
            // then the inputs stay open, so the cut can still be made; worker 0's input holds
            // the dataflow's frontier at its epoch, so no operator has passed the cut.
            if !done_reading {
                done_reading = true;
                ctx.last_read_epoch.fetch_max(epoch, Ordering::SeqCst);
                ctx.done_reading.fetch_add(1, Ordering::SeqCst);
                ctx.tell(To::Leader, Control::DoneReading { epoch });
            }
            if index == 0
                && ctx.done_reading.load(Ordering::SeqCst) == peers
                && !ctx.final_requested.load(Ordering::SeqCst)
            {
                let last = ctx.last_read_epoch.load(Ordering::SeqCst).max(epoch);
                c.maybe_start(last + 1, true);
                ctx.tell(
                    To::Others,
                    Control::Start {
                        frontier: last + 1,
                        last: true,
                    },
                );
                ctx.final_requested_at(last + 1);
            }
            // Worker 0's open inputs hold the dataflow before the cut until every process has
            // registered it.
            if ctx.final_requested.load(Ordering::SeqCst)
                && (index != 0 || ctx.acked(ctx.final_at.load(Ordering::SeqCst)))
            {
                break;
            }
        }
        while in_flight.front().is_some_and(|(e, _)| !probe.less_equal(e)) {
            in_flight.pop_front();
        }
        let unfinished: usize = in_flight.iter().map(|(_, n)| n).sum();
        let behind = probe.less_than(&epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT * p.epoch_ms))
            || unfinished >= MAX_RECORDS_IN_FLIGHT;
        let mut busy = false;
        if !behind && !done_reading {
            let now = Instant::now();
            // One batch per step in total, starting at a rotating partition: small steps keep
            // the dataflow's working set in cache, and rotation keeps partitions fair.
            let mut budget = POLL_BATCH;
            let n = assigned.len();
            rotate = rotate.wrapping_add(1);
            for k in 0..n {
                let a = &mut assigned[(rotate + k) % n];
                if a.finished || a.idle_until.is_some_and(|t| t > now) {
                    continue;
                }
                if budget == 0 {
                    busy = true;
                    break;
                }
                buf.clear();
                let state = match a.reader.poll(&mut buf, budget) {
                    Ok(state) => {
                        a.backoff.reset();
                        state
                    }
                    Err(SourceError::Transient(e)) => {
                        // An outage is reported and retried, never fatal: the position is
                        // unchanged, so nothing is skipped when the system comes back.
                        let wait = a.backoff.next();
                        if a.backoff.failures().is_power_of_two() {
                            tracing::warn!(
                                source = %p.sources[a.source].name.value, partition = %a.id, error = %e,
                                failures = a.backoff.failures(), "read failed; retrying with backoff"
                            );
                        }
                        a.idle_until = Some(now + wait);
                        ReadState::Idle
                    }
                    Err(error) => {
                        return Err(RunError::Source {
                            source_name: p.sources[a.source].name.value.clone(),
                            error,
                        });
                    }
                };
                let read = buf.len();
                let bytes: usize = buf
                    .iter()
                    .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.payload.as_ref().map_or(0, Vec::len))
                    .sum();
                let mut dropped = 0;
                budget = budget.saturating_sub(read);
                for rec in buf.drain(..) {
                    let pos = Pos {
                        source: a.source as u32,
                        partition: a.partition,
                        offset: rec.offset,
                    };
                    match ingesters[a.source].ingest(pos, rec.key.as_deref(), rec.payload.as_deref()) {
                        Ingested::Event { key, val } => {
                            if let SourceInput::Append(s) = &mut inputs[a.source] {
                                s.insert(Row { key, val, pos });
                            }
                        }
                        Ingested::Upsert { key, val } => {
                            if let SourceInput::Upsert(h) = &mut inputs[a.source] {
                                h.send((key, (pos, val)));
                            }
                        }
                        Ingested::Dead(d) => dead_input.insert(d),
                        Ingested::Dropped => dropped += 1,
                    }
                }
                if read > 0 {
                    let position = a.reader.position();
                    for marks in [&mut a.marks, &mut a.history] {
                        match marks.back_mut() {
                            Some((e, pos)) if *e == epoch => *pos = position.clone(),
                            _ => marks.push_back((epoch, position.clone())),
                        }
                    }
                }
                a.idle = matches!(state, ReadState::Idle | ReadState::Finished);
                match state {
                    ReadState::More => busy = true,
                    ReadState::Idle | ReadState::Waiting if a.idle_until.is_some_and(|t| t > now) => {}
                    ReadState::Idle | ReadState::Waiting => {
                        if state == ReadState::Idle {
                            ctx.partition_caught_up(a.source, &a.id, epoch);
                        }
                        a.idle_until = Some(now + Duration::from_millis(idle_poll_ms(p, a.source)))
                    }
                    ReadState::Finished => {
                        a.finished = true;
                        ctx.partition_finished(a.source, &a.id, epoch);
                    }
                }
                ctx.status
                    .count_in(&p.sources[a.source].name.value, (read, dropped, bytes));
                match in_flight.back_mut() {
                    Some((e, n)) if *e == epoch => *n += read,
                    _ => in_flight.push_back((epoch, read)),
                }
            }
        }
        if let Some(c) = &caught_up {
            let now_caught = waiting.is_empty() && assigned.iter().all(|a| a.finished || a.idle);
            if now_caught != caught_since.is_some() {
                caught_since = now_caught.then_some(epoch);
                c.report(index, peers, caught_since);
                ctx.tell(
                    To::Others,
                    Control::WorkerCaughtUp {
                        worker: index as u32,
                        since: caught_since,
                    },
                );
            }
        }
        // In a cluster, worker 0 stays at a checkpoint's frontier until every process has
        // registered the cut.
        let held = index == 0
            && checkpoints
                .as_ref()
                .and_then(|c| c.in_progress())
                .is_some_and(|t| t <= epoch && !ctx.acked(t));
        if held && Instant::now() >= next_tick {
            next_tick = Instant::now() + Duration::from_millis(1);
        }
        if Instant::now() >= next_tick {
            let next = now_ms().max(epoch + 1);
            // Worker 0 starts checkpoints at the epoch it is about to enter: no input has
            // reached it, so no operator has passed it.
            if index == 0
                && let Some(c) = &checkpoints
                && c.maybe_start(next, false)
            {
                ctx.tell(
                    To::Others,
                    Control::Start {
                        frontier: next,
                        last: false,
                    },
                );
            }
            epoch = next;
            for input in &mut inputs {
                input.advance_to(epoch);
            }
            dead_input.advance_to(epoch);
            next_tick = Instant::now() + Duration::from_millis(p.epoch_ms);
        }
        for input in &mut inputs {
            input.flush();
        }
        dead_input.flush();
        let durable = commit_frontier(ctx);
        for a in &mut assigned {
            commit_or_fail(a, durable, false, p)?;
        }
        if index.is_multiple_of(ctx.threads) {
            ctx.status.epoch.store(epoch, Ordering::Relaxed);
        }
        if last_lag.elapsed() >= COMMIT_EVERY {
            last_lag = Instant::now();
            for a in &assigned {
                let lag = if a.finished { None } else { a.reader.lag() };
                ctx.status.set_lag(&p.sources[a.source].name.value, &a.id, lag);
                let read = a.reader.progress();
                ctx.status
                    .read_progress
                    .report(&p.sources[a.source].name.value, &a.id, read, a.finished);
            }
        }
        if let Some(c) = &checkpoints {
            // A worker whose clock is behind worker 0's catches up with a checkpoint's
            // frontier instead of holding it back.
            if let Some(t) = c.in_progress().filter(|t| *t > epoch)
                && !done_reading
            {
                epoch = t;
                for input in &mut inputs {
                    input.advance_to(epoch);
                }
                dead_input.advance_to(epoch);
            }
            checkpoint_step(
                ctx,
                c,
                (index, epoch, false),
                (&mut assigned, &waiting, &state),
                &mut contributed,
            )?;
        }
        if !all_bounded && last_discover.elapsed() >= DISCOVER_EVERY {
            last_discover = Instant::now();
            open_new_partitions(ctx, index, peers, &mut known, &mut waiting, true);
        }
        if !waiting.is_empty() && !held {
            // A source started after others reads at their last epoch or later, so its
            // records never precede theirs.
            if let Some(after) = open_ready_partitions(ctx, &mut waiting, &mut assigned)?
                && after > epoch
            {
                epoch = after;
                for input in &mut inputs {
                    input.advance_to(epoch);
                }
                dead_input.advance_to(epoch);
            }
        }
        if let (Some(c), Some(outbox)) = (control.as_mut(), &ctx.outbox) {
            c.send(outbox);
        }
        let park = if busy && !behind {
            Some(Duration::ZERO)
        } else {
            Some(next_tick.saturating_duration_since(Instant::now()))
        };
        worker.step_or_park(park);
    }

    // Draining phase: close the inputs, let every sink see the empty frontier.
    drop(inputs);
    drop(dead_input);
    loop {
        if ctx.status.aborted() {
            return Ok(());
        }
        let drained = probe.done() && ctx.status.sinks_closed.load(Ordering::SeqCst) >= n_sinks;
        let checkpointed = match &checkpoints {
            None => true,
            Some(c) => {
                checkpoint_step(
                    ctx,
                    c,
                    (index, epoch, true),
                    (&mut assigned, &waiting, &state),
                    &mut contributed,
                )?;
                // Worker 0 waits for the final checkpoint; the others for their part in it.
                match c.in_progress() {
                    Some(t) => index != 0 && contributed >= t,
                    None => true,
                }
            }
        };
        if let (Some(c), Some(outbox)) = (control.as_mut(), &ctx.outbox) {
            c.send(outbox);
        }
        if drained && checkpointed {
            break;
        }
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    // Every sink has closed, so everything read is durable — unless a sink holds work it
    // could not finish (a webhook's pending retries at a stop): record the final positions.
    let durable = commit_frontier(ctx);
    for a in &mut assigned {
        commit_or_fail(a, durable, true, p)?;
    }
    Ok(())
}

/// The checkpoints' cost and age, for a scrape.
fn expose_checkpoints(c: &Checkpointer, x: &mut crate::metrics::Exposition) {
    use crate::metrics::Kind::{Counter, Gauge};
    let s = c.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    x.single(
        "sluice_checkpoints_total",
        Counter,
        "Checkpoints written by this process.",
        &[],
        load(&s.written),
    );
    x.single(
        "sluice_checkpoint_duration_seconds",
        Gauge,
        "How long the last checkpoint took to encode and write.",
        &[],
        load(&s.last_ms) / 1000.0,
    );
    x.single(
        "sluice_checkpoint_bytes",
        Gauge,
        "The size of the last checkpoint written.",
        &[],
        load(&s.last_bytes),
    );
    x.single(
        "sluice_checkpoint_frontier_ms",
        Gauge,
        "The frontier of the newest checkpoint written or restored from.",
        &[],
        c.written() as f64,
    );
    let last = s.last_at_ms.load(Ordering::Relaxed);
    if last > 0 {
        x.single(
            "sluice_checkpoint_age_seconds",
            Gauge,
            "Time since the last checkpoint was written.",
            &[],
            now_ms().saturating_sub(last) as f64 / 1000.0,
        );
    }
}

/// The frontier before which sources may record their positions as done: the sinks' durable
/// frontier, and with checkpoints no further than the newest checkpoint written, because a
/// restart resumes from that checkpoint, and a source may delete what it holds before a
/// committed position (the publish log's segments).
fn commit_frontier<W: Wiring>(ctx: &Ctx<W>) -> Option<Time> {
    let durable = ctx.status.durable_frontier();
    match &ctx.checkpoints {
        None => durable,
        Some(c) => Some(durable.map_or(c.written(), |d| d.min(c.written()))),
    }
}

/// One worker's turn at checkpoints: send its part of the checkpoint in progress once it
/// can (its inputs past the frontier, or closed, and its folds cut there), write the
/// checkpoint when it is complete (worker 0), and forget position history a written
/// checkpoint no longer needs.
fn checkpoint_step<W: Wiring>(
    ctx: &Ctx<W>,
    c: &Checkpointer,
    (index, epoch, draining): (usize, Time, bool),
    (assigned, waiting, state): (&mut [Assigned], &[Waiting], &StateRegistry),
    contributed: &mut Time,
) -> Result<(), RunError> {
    if let Some(t) = c.in_progress().filter(|t| *t > *contributed)
        && (epoch >= t || draining)
        && state.cut(t)
    {
        let positions = worker_positions(ctx, t, assigned, waiting);
        let states = state.take(t).map_err(RunError::Checkpoint)?;
        c.worker_part(t, (index, ctx.workers), positions, states);
        *contributed = t;
    }
    if index == 0
        && let Some(frontier) = c
            .maybe_write(ctx.status.durable_frontier())
            .map_err(|e| RunError::Checkpoint(e.to_string()))?
    {
        ctx.tell(To::Others, Control::Written { frontier });
    }
    let written = c.written();
    for a in assigned.iter_mut() {
        if a.history.front().is_some_and(|(e, _)| *e < written) {
            a.prune_history(written);
        }
    }
    Ok(())
}

/// Commits a partition's durable position; a failure to record it is reported, not fatal
/// (the commit is bookkeeping for monitoring, and the next one catches up).
fn commit_or_fail(a: &mut Assigned, durable: Option<Time>, last: bool, p: &Pipeline) -> Result<(), RunError> {
    match a.commit_durable(durable, last) {
        Err(SourceError::Transient(e)) => {
            tracing::warn!(source = %p.sources[a.source].name.value, partition = %a.id, error = %e, "commit failed");
            Ok(())
        }
        Err(error) => Err(RunError::Source {
            source_name: p.sources[a.source].name.value.clone(),
            error,
        }),
        Ok(()) => Ok(()),
    }
}

/// Feeds `rows` to a sink: opened on worker 0, its single writer (other workers forward their
/// rows to it), or on every worker for a parallel target. A sink that cannot be opened fails
/// the run.
fn attach_sink<W: Wiring>(
    ctx: &Ctx<W>,
    (index, sink): (usize, usize),
    rows: Rows<'_>,
    (target, mode, format): (&SinkTarget, SinkMode, Format),
    name: &str,
) {
    let parallel = target.parallel();
    let restored = ctx.checkpoints.as_ref().and_then(|c| c.restored());
    let resume = restored.and_then(|r| r.sinks.get(name)).map(Vec::as_slice);
    let opened = if parallel || index == 0 {
        ctx.wiring
            .open_sink(target, mode, format, resume)
            .map_err(|e| ctx.status.fail(format!("sink {name}: {e}")))
            .ok()
    } else {
        None
    };
    let slot = ctx.slots.slot(sink, index);
    let recovery = ctx.checkpoints.as_ref().map(|c| SinkRecovery {
        checkpointer: c.clone(),
        skip_through: restored.map(|r| r.frontier),
    });
    sink_rows(rows, name, opened, ctx.status.clone(), (parallel, slot), recovery);
}

fn idle_poll_ms(p: &Pipeline, source: usize) -> u64 {
    match &p.sources[source].spec {
        crate::spec::SourceSpec::File(f) => f.poll_ms,
        // A Kafka reader only looks at what the client has already fetched: cheap to ask often.
        crate::spec::SourceSpec::Kafka(_) => 5,
        // Readers fetch in the background (Kinesis GetRecords, scan pages): polling drains
        // what arrived.
        crate::spec::SourceSpec::Kinesis(_) | crate::spec::SourceSpec::DynamodbScan(_) => 5,
        // The reader looks at the log's durable end, a number in memory: asking often is cheap,
        // and a published event waits for it.
        crate::spec::SourceSpec::HttpIngest(_) => 2,
    }
}

/// Where a partition resumes: its position in the checkpoint the run restarted from, if any.
fn restored_position<W: Wiring>(ctx: &Ctx<W>, source: usize, id: &str) -> Position {
    ctx.checkpoints
        .as_ref()
        .and_then(|c| c.restored())
        .and_then(|r| {
            r.positions
                .get(&ctx.pipeline.sources[source].name.value)?
                .get(id)
                .cloned()
        })
        .unwrap_or(Position::Start)
}

/// Every partition's position at `frontier` on this worker (partitions not opened yet
/// keep the position they were restored with).
fn worker_positions<W: Wiring>(ctx: &Ctx<W>, frontier: Time, assigned: &[Assigned], waiting: &[Waiting]) -> Positions {
    let mut positions = Positions::new();
    let name = |s: usize| ctx.pipeline.sources[s].name.value.clone();
    for a in assigned {
        positions
            .entry(name(a.source))
            .or_default()
            .insert(a.id.clone(), a.position_at(frontier));
    }
    for (s, _, part) in waiting {
        let from = restored_position(ctx, *s, &part.id);
        if from != Position::Start {
            positions.entry(name(*s)).or_default().insert(part.id.clone(), from);
        }
    }
    positions
}

/// Queues partitions newly assigned to this worker (from a fresh discovery if `rediscover`).
fn open_new_partitions<W: Wiring>(
    ctx: &Ctx<W>,
    index: usize,
    peers: usize,
    known: &mut [usize],
    waiting: &mut Vec<(usize, u32, PartitionInfo)>,
    rediscover: bool,
) {
    for (s, source) in ctx.sources.iter().enumerate() {
        let parts = if rediscover {
            match source.discover() {
                Ok(found) => ctx.catalog.merge(s, found),
                Err(e) => {
                    let name = &ctx.pipeline.sources[s].name.value;
                    tracing::warn!(source = %name, error = %e, "partition discovery failed; will retry");
                    continue;
                }
            }
        } else {
            ctx.catalog.merge(s, Vec::new())
        };
        let initial = ctx.catalog.initial.get(s).copied().unwrap_or(0);
        for (i, part) in parts.iter().enumerate().skip(known[s]) {
            let owner = if i < initial {
                assign(s, i, peers)
            } else {
                assign_by_id(s, &part.id, peers)
            };
            if owner == index {
                waiting.push((s, i as u32, part.clone()));
            }
        }
        known[s] = parts.len();
    }
}

/// Opens the queued partitions whose parents are all finished (by any worker), so that a
/// child shard is read only after every record of its parents, and whose source's
/// `start_after` sources are finished. Returns the latest epoch those sources (or a child's
/// parents' source) finished in, if a partition waiting for them opened.
fn open_ready_partitions<W: Wiring>(
    ctx: &Ctx<W>,
    waiting: &mut Vec<(usize, u32, PartitionInfo)>,
    assigned: &mut Vec<Assigned>,
) -> Result<Option<Time>, RunError> {
    let mut still = Vec::new();
    let mut after: Option<Time> = None;
    for (s, i, part) in waiting.drain(..) {
        let gate = ctx.start_after.get(s).map(Vec::as_slice).unwrap_or_default();
        let sources_done = if gate.is_empty() {
            Some(0)
        } else {
            ctx.catalog.sources_done(gate)
        };
        let Some(done_at) = sources_done.filter(|_| ctx.catalog.parents_done(s, &part)) else {
            still.push((s, i, part));
            continue;
        };
        if !gate.is_empty() {
            after = after.max(Some(done_at));
        }
        // A child's records come after its parents' in time too, even when another worker
        // (or process) read the parents at a later epoch than this worker's.
        if !part.parents.is_empty() {
            after = after.max(ctx.catalog.finished_epoch(s));
        }
        let from = restored_position(ctx, s, &part.id);
        let reader = ctx.sources[s].open(&part, &from).map_err(|error| RunError::Source {
            source_name: ctx.pipeline.sources[s].name.value.clone(),
            error,
        })?;
        assigned.push(Assigned {
            source: s,
            partition: i,
            id: part.id,
            reader,
            finished: false,
            idle_until: None,
            idle: false,
            backoff: Backoff::default(),
            marks: VecDeque::new(),
            last_commit: Instant::now(),
            history: VecDeque::new(),
            base: from,
        });
    }
    *waiting = still;
    Ok(after)
}
