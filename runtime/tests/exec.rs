//! The run loop against in-memory sources and sinks: parents before children, and sinks
//! receiving each time's updates in time order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_runtime::exec::{Built, RunOptions, Wiring, run};
use sluice_runtime::ingest::{Decode, JsonDecoder};
use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError};
use sluice_runtime::spec::{Format, Pipeline, SinkMode, SinkTarget, parse};
use sluice_runtime::{Diff, Row, Rows, Time};
use timely::dataflow::Scope;

/// Two partitions: `parent` yields a record every 40 ms, `child` (whose parent it is) has
/// all its records at once.
struct Shards;

struct Reader {
    id: String,
    next: u64,
    last: Instant,
}

impl Source for Shards {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        Ok(vec![
            PartitionInfo {
                id: "parent".into(),
                parents: vec![],
            },
            PartitionInfo {
                id: "child".into(),
                parents: vec!["parent".into(), "expired".into()],
            },
        ])
    }
    fn open(&self, p: &PartitionInfo, _from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        Ok(Box::new(Reader {
            id: p.id.clone(),
            next: 0,
            last: Instant::now(),
        }))
    }
    fn bounded(&self) -> bool {
        true
    }
    fn offset_label(&self) -> &'static str {
        "offset"
    }
}

impl PartitionReader for Reader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        if self.next == 5 {
            return Ok(ReadState::Finished);
        }
        if self.id == "parent" && self.last.elapsed() < Duration::from_millis(40) {
            return Ok(ReadState::Idle);
        }
        self.last = Instant::now();
        let n = if self.id == "parent" { 1 } else { max.min(5) as u64 };
        for _ in 0..n {
            self.next += 1;
            let payload = format!(r#"{{"shard":"{}","n":{}}}"#, self.id, self.next);
            out.push(RawRecord {
                offset: self.next,
                key: None,
                payload: Some(payload.into_bytes()),
            });
        }
        Ok(ReadState::More)
    }
    fn position(&self) -> Position {
        Position::Offset(self.next)
    }
}

type Written = Arc<Mutex<Vec<(Time, Row, Diff)>>>;

struct Memory(Written, Option<Time>);

impl Sink for Memory {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        if let Ok(mut w) = self.0.lock() {
            w.extend(updates.iter().map(|(r, d)| (time, r.clone(), *d)));
        }
        Ok(())
    }
    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.1 = frontier;
        Ok(())
    }
    fn durable(&self) -> Option<Time> {
        self.1
    }
}

/// A wiring with one source for every declared source and the graph as the identity: the
/// `stdout` sinks get `sink(target)`'s sink, other targets (the dead-letter file) a memory
/// sink nothing should reach.
struct TestWiring {
    source: Box<dyn Fn() -> Arc<dyn Source> + Send + Sync>,
    sink: Box<dyn Fn() -> Box<dyn Sink> + Send + Sync>,
}

impl TestWiring {
    /// The `Shards` source, writing every sink's updates to `written`.
    fn shards(written: Written) -> Self {
        TestWiring {
            source: Box::new(|| Arc::new(Shards)),
            sink: Box::new(move || Box::new(Memory(written.clone(), None))),
        }
    }
}

impl Wiring for TestWiring {
    fn open_source(&self, _p: &Pipeline, _i: usize) -> Result<Arc<dyn Source>, SourceError> {
        Ok((self.source)())
    }
    fn decoder(&self, _p: &Pipeline, _i: usize) -> Arc<dyn Decode> {
        Arc::new(JsonDecoder)
    }
    fn open_sink(
        &self,
        target: &SinkTarget,
        _mode: SinkMode,
        _format: Format,
        _resume: Option<&[u8]>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(match target {
            SinkTarget::File { .. } => Box::new(Memory(Arc::default(), None)),
            _ => (self.sink)(),
        })
    }
    fn build<'s>(
        &self,
        _scope: Scope<'s, Time>,
        sources: &BTreeMap<String, Rows<'s>>,
        _state: &mut sluice_runtime::recovery::StateRegistry,
    ) -> Built<'s> {
        Built {
            outputs: sources.clone(),
            dead_letters: Vec::new(),
        }
    }
}

#[test]
fn a_child_partition_starts_after_its_parents_finish() {
    let text = "[pipeline]\nepoch_ms = 5\n[dead_letters]\ntype = \"file\"\npath = \"unused\"\n\
                [sources.s]\ntype = \"file\"\npath = \"unused\"\n[sinks.o]\ntype = \"stdout\"\ninput = \"s\"\nmode = \"append\"\n";
    let pipeline = Arc::new(parse(Path::new("test.toml"), text, &|_| None).expect("valid pipeline"));
    let written: Written = Arc::default();
    let wiring = Arc::new(TestWiring::shards(written.clone()));
    // Two workers: the parent is read by worker 0 and the child by worker 1.
    let options = RunOptions {
        workers: Some(2),
        stop: Arc::new(AtomicBool::new(false)),
        metrics: None,
        cluster: None,
    };
    let report = run(pipeline, wiring, options).expect("run");
    assert_eq!(report.records_in.get("s"), Some(&10));

    let rows = written.lock().expect("lock").clone();
    let time_of = |shard: &str| -> Vec<Time> {
        rows.iter()
            .filter(|(_, r, _)| r.val.get("shard").and_then(|s| s.as_str()) == Some(shard))
            .map(|(t, _, _)| *t)
            .collect()
    };
    let (parent, child) = (time_of("parent"), time_of("child"));
    assert_eq!((parent.len(), child.len()), (5, 5));
    let last_parent = parent.iter().max().copied().unwrap_or_default();
    let first_child = child.iter().min().copied().unwrap_or_default();
    assert!(
        first_child >= last_parent,
        "child read at {first_child} before its parent ended at {last_parent}"
    );
    // Sinks see times in increasing order.
    assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn a_parallel_sink_gets_every_update_once_across_its_instances() {
    let text = "[pipeline]\nepoch_ms = 5\n[dead_letters]\ntype = \"file\"\npath = \"unused\"\n\
                [sources.s]\ntype = \"file\"\npath = \"unused\"\n[sinks.o]\ntype = \"discard\"\ninput = \"s\"\nmode = \"append\"\n";
    let pipeline = Arc::new(parse(Path::new("test.toml"), text, &|_| None).expect("valid pipeline"));
    let written: Written = Arc::default();
    let wiring = Arc::new(TestWiring::shards(written.clone()));
    let options = RunOptions {
        workers: Some(3),
        stop: Arc::new(AtomicBool::new(false)),
        metrics: None,
        cluster: None,
    };
    let report = run(pipeline, wiring, options).expect("run ends once every instance has closed");
    assert_eq!(report.records_in.get("s"), Some(&10));
    let mut rows: Vec<String> = written
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, r, d)| format!("{} {d}", r.val.to_json_string()))
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 10, "each record once: {rows:?}");
    rows.dedup();
    assert_eq!(rows.len(), 10, "ten different records: {rows:?}");
}

#[test]
fn a_source_started_after_another_reads_only_once_it_ended_and_never_at_an_earlier_time() {
    let text = "[pipeline]\nepoch_ms = 5\n[dead_letters]\ntype = \"file\"\npath = \"unused\"\n\
                [sources.table]\ntype = \"file\"\npath = \"unused\"\n\
                [sources.events]\ntype = \"file\"\npath = \"unused\"\nstart_after = [\"table\"]\n\
                [sinks.t]\ntype = \"stdout\"\ninput = \"table\"\nmode = \"append\"\n\
                [sinks.e]\ntype = \"stdout\"\ninput = \"events\"\nmode = \"append\"\n";
    let pipeline = Arc::new(parse(Path::new("test.toml"), text, &|_| None).expect("valid pipeline"));
    let written: Written = Arc::default();
    let wiring = Arc::new(TestWiring::shards(written.clone()));
    // Two workers: each reads one partition of each source, so the table's slow partition
    // and the events are read by different workers.
    let options = RunOptions {
        workers: Some(2),
        stop: Arc::new(AtomicBool::new(false)),
        metrics: None,
        cluster: None,
    };
    let report = run(pipeline, wiring, options).expect("run");
    assert_eq!(report.records_in.get("events"), Some(&10));
    let rows = written.lock().expect("lock").clone();
    let times = |source: u32| -> Vec<Time> {
        rows.iter()
            .filter(|(_, r, _)| r.pos.source == source)
            .map(|(t, _, _)| *t)
            .collect()
    };
    let (table, events) = (times(0), times(1));
    assert_eq!((table.len(), events.len()), (10, 10));
    let last_table = table.iter().max().copied().unwrap_or_default();
    let first_event = events.iter().min().copied().unwrap_or_default();
    assert!(
        first_event >= last_table,
        "an event was read at {first_event}, before the table ended at {last_table}"
    );
}

/// What the commit test shares between its source, its sink and its assertions.
#[derive(Default)]
struct Ledger {
    /// Per record written: the time it was written at and its offset.
    written: Vec<(Time, u64)>,
    /// The sink's durable frontier, one commit behind the frontiers it was given.
    durable: Option<Time>,
    /// Per commit the source received: the position, whether it was the last, and whether
    /// every record up to it was written before the durable frontier.
    commits: Vec<(u64, bool, bool)>,
}

/// One partition of 2,000 records, 50 every 60 ms, so the run outlasts two commit intervals.
struct Counted(Arc<Mutex<Ledger>>);

struct CountedReader(Arc<Mutex<Ledger>>, u64);

impl Source for Counted {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        Ok(vec![PartitionInfo {
            id: "only".into(),
            parents: vec![],
        }])
    }
    fn open(&self, _p: &PartitionInfo, _from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        Ok(Box::new(CountedReader(self.0.clone(), 0)))
    }
    fn bounded(&self) -> bool {
        true
    }
    fn offset_label(&self) -> &'static str {
        "offset"
    }
}

impl PartitionReader for CountedReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, _max: usize) -> Result<ReadState, SourceError> {
        if self.1 == 2_000 {
            return Ok(ReadState::Finished);
        }
        std::thread::sleep(Duration::from_millis(60));
        for _ in 0..50 {
            out.push(RawRecord {
                offset: self.1,
                key: None,
                payload: Some(format!(r#"{{"n":{}}}"#, self.1).into_bytes()),
            });
            self.1 += 1;
        }
        Ok(ReadState::More)
    }
    fn position(&self) -> Position {
        Position::Offset(self.1)
    }
    fn commit(&mut self, position: &Position, last: bool) -> Result<(), SourceError> {
        let Position::Offset(next) = *position else {
            return Err(SourceError::Config(format!("unexpected position {position}")));
        };
        let mut ledger = self.0.lock().map_err(|_| SourceError::Config("poisoned".into()))?;
        let durable = ledger.durable;
        let covered = (0..next).all(|offset| {
            ledger
                .written
                .iter()
                .any(|(t, o)| *o == offset && durable.is_none_or(|d| *t < d))
        });
        ledger.commits.push((next, last, covered));
        Ok(())
    }
}

/// A sink whose output becomes durable one commit late, as a Kafka producer's does.
struct Lagging(Arc<Mutex<Ledger>>, Option<Option<Time>>);

impl Sink for Lagging {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        if let Ok(mut l) = self.0.lock() {
            for (row, _) in updates {
                let n = row.val.get("n").and_then(|n| n.as_i64()).unwrap_or(-1);
                l.written.push((time, n as u64));
            }
        }
        Ok(())
    }
    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        if let Ok(mut l) = self.0.lock() {
            // The end of the input makes everything durable at once.
            l.durable = if frontier.is_none() {
                None
            } else {
                self.1.flatten().or(Some(0))
            };
        }
        self.1 = Some(frontier);
        Ok(())
    }
    fn durable(&self) -> Option<Time> {
        self.0.lock().map_or(Some(0), |l| l.durable)
    }
}

#[test]
fn positions_are_committed_only_behind_the_sinks_durable_frontier_and_finally_all() {
    let text = "[pipeline]\nepoch_ms = 2\n[dead_letters]\ntype = \"file\"\npath = \"unused\"\n\
                [sources.s]\ntype = \"file\"\npath = \"unused\"\n[sinks.o]\ntype = \"stdout\"\ninput = \"s\"\nmode = \"append\"\n";
    let pipeline = Arc::new(parse(Path::new("test.toml"), text, &|_| None).expect("valid pipeline"));
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let options = RunOptions {
        workers: Some(1),
        stop: Arc::new(AtomicBool::new(false)),
        metrics: None,
        cluster: None,
    };
    let (for_source, for_sink) = (ledger.clone(), ledger.clone());
    let wiring = TestWiring {
        source: Box::new(move || Arc::new(Counted(for_source.clone()))),
        sink: Box::new(move || Box::new(Lagging(for_sink.clone(), None))),
    };
    run(pipeline, Arc::new(wiring), options).expect("run");
    let ledger = ledger.lock().expect("lock");
    assert_eq!(ledger.written.len(), 2_000);
    let (last, intermediate) = ledger.commits.split_last().expect("commits");
    assert!(
        !intermediate.is_empty(),
        "positions are committed during the run, not only at its end"
    );
    assert!(
        intermediate.iter().all(|(_, last, covered)| *covered && !*last),
        "a commit ran ahead of the durable output: {:?}",
        ledger.commits
    );
    assert_eq!(*last, (2_000, true, true), "the final commit covers everything");
    assert!(
        ledger.commits.windows(2).all(|w| w[0].0 < w[1].0),
        "commits only move forward"
    );
}

/// An unbounded source that gains a second partition a moment after it starts, whose
/// readers fail with transient errors a few times before each of their records.
struct Growing {
    started: Instant,
}

struct Flaky {
    id: String,
    failures_left: u32,
    sent: u64,
}

impl Source for Growing {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        let mut parts = vec!["p0"];
        if self.started.elapsed() > Duration::from_millis(500) {
            parts.push("p1");
        }
        Ok(parts
            .into_iter()
            .map(|id| PartitionInfo {
                id: id.into(),
                parents: vec![],
            })
            .collect())
    }
    fn open(&self, p: &PartitionInfo, _from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        Ok(Box::new(Flaky {
            id: p.id.clone(),
            failures_left: 3,
            sent: 0,
        }))
    }
    fn bounded(&self) -> bool {
        false
    }
    fn offset_label(&self) -> &'static str {
        "offset"
    }
}

impl PartitionReader for Flaky {
    fn poll(&mut self, out: &mut Vec<RawRecord>, _max: usize) -> Result<ReadState, SourceError> {
        if self.sent == 3 {
            return Ok(ReadState::Idle);
        }
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(SourceError::Transient("broker unreachable".into()));
        }
        self.failures_left = 3;
        self.sent += 1;
        out.push(RawRecord {
            offset: self.sent,
            key: None,
            payload: Some(format!(r#"{{"p":"{}","n":{}}}"#, self.id, self.sent).into_bytes()),
        });
        Ok(ReadState::More)
    }
    fn position(&self) -> Position {
        Position::Offset(self.sent)
    }
}

#[test]
fn new_partitions_are_picked_up_and_transient_read_errors_are_retried() {
    let text = "[pipeline]\nepoch_ms = 5\n[dead_letters]\ntype = \"file\"\npath = \"unused\"\n\
                [sources.s]\ntype = \"file\"\npath = \"unused\"\nfollow = true\n\
                [sinks.o]\ntype = \"stdout\"\ninput = \"s\"\nmode = \"append\"\n";
    let pipeline = Arc::new(parse(Path::new("test.toml"), text, &|_| None).expect("valid pipeline"));
    let written: Written = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let options = RunOptions {
        workers: Some(2),
        stop: stop.clone(),
        metrics: None,
        cluster: None,
    };
    let sink_to = written.clone();
    let wiring = Arc::new(TestWiring {
        source: Box::new(|| {
            Arc::new(Growing {
                started: Instant::now(),
            })
        }),
        sink: Box::new(move || Box::new(Memory(sink_to.clone(), None))),
    });
    let runner = std::thread::spawn(move || run(pipeline, wiring, options));
    // Rediscovery runs every few seconds; both partitions' three records must arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.lock().expect("lock").len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = runner
        .join()
        .expect("join")
        .expect("transient errors never fail the run");
    assert!(report.stopped);
    let mut got: Vec<String> = written
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, r, _)| r.val.to_json_string())
        .collect();
    got.sort();
    let mut expected: Vec<String> = ["p0", "p1"]
        .iter()
        .flat_map(|p| (1..=3).map(move |n| format!(r#"{{"n":{n},"p":"{p}"}}"#)))
        .collect();
    expected.sort();
    assert_eq!(
        got, expected,
        "each partition's records once, the late partition's included"
    );
}
