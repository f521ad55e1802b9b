//! Taking checkpoints during a run and restarting from them (docs/decisions.md,
//! "Checkpoints").
//!
//! Worker 0 picks a frontier `T` — the epoch it is about to advance its inputs to, so no
//! operator has passed it — and requests a cut there. Parts then arrive as the dataflow
//! passes `T`: each worker's source positions at `T` and its upsert sources' state cut at
//! `T`, and each sink instance's position after writing the times before `T`. When every
//! part is in and every sink's output before `T` is durable, worker 0 writes the checkpoint.
//!
//! A restart loads the newest valid checkpoint: partitions resume from their positions,
//! upsert sources start from their saved tables (emitted at `T`), inputs start after `T`,
//! and sinks skip the times up to `T` — their durable output already holds them — after
//! file sinks cut back to their saved length.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::checkpoint::{CheckpointError, Checkpoints, Loaded, LocalDir};
use crate::operators::fold::CutRequests;
use crate::record::Time;
use crate::source::Position;
use crate::value::Value;

/// Source name → partition id → position.
pub type Positions = BTreeMap<String, BTreeMap<String, Position>>;
/// Source name → the upsert table (key, value).
pub type Tables = BTreeMap<String, Vec<(Value, Value)>>;

/// What a run restarts from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restored {
    /// The checkpoint's frontier.
    pub frontier: Time,
    /// Where each partition resumes.
    pub positions: Positions,
    /// Each upsert source's table at the frontier.
    pub tables: Tables,
    /// Each sink's position, by sink name.
    pub sinks: BTreeMap<String, Vec<u8>>,
}

const POSITIONS: &str = "positions.json";
const TABLES: &str = "tables.json";
const SINKS: &str = "sinks.json";

impl Restored {
    fn decode(loaded: Loaded) -> Result<Restored, CheckpointError> {
        fn part<T: serde::de::DeserializeOwned>(loaded: &Loaded, name: &str) -> Result<T, CheckpointError> {
            let bytes = loaded.parts.get(name).ok_or_else(|| CheckpointError::Invalid {
                name: name.to_owned(),
                reason: "missing from the manifest".to_owned(),
            })?;
            serde_json::from_slice(bytes).map_err(|e| CheckpointError::Invalid {
                name: name.to_owned(),
                reason: e.to_string(),
            })
        }
        Ok(Restored {
            frontier: loaded.frontier,
            positions: part(&loaded, POSITIONS)?,
            tables: part(&loaded, TABLES)?,
            sinks: part(&loaded, SINKS)?,
        })
    }

    fn encode(&self) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
        let err = |e: serde_json::Error| CheckpointError::Store(e.to_string());
        Ok(vec![
            (POSITIONS.to_owned(), serde_json::to_vec(&self.positions).map_err(err)?),
            (TABLES.to_owned(), serde_json::to_vec(&self.tables).map_err(err)?),
            (SINKS.to_owned(), serde_json::to_vec(&self.sinks).map_err(err)?),
        ])
    }
}

/// A checkpoint being put together.
#[derive(Default)]
struct Assembly {
    parts: Restored,
    workers_done: usize,
    sinks_done: usize,
}

/// The checkpoints of one run: requests, assembly, writing, and what the run restarted from.
pub struct Checkpointer {
    store: Checkpoints<LocalDir>,
    interval: Duration,
    requests: CutRequests,
    restored: Option<Restored>,
    assembly: Mutex<Option<Assembly>>,
    /// The newest frontier written (0: none).
    written: AtomicU64,
    last_started: Mutex<Instant>,
    workers: usize,
    sink_instances: usize,
}

impl Checkpointer {
    /// Opens the checkpoints of `pipeline` in `dir` and loads the newest valid one.
    pub fn open(
        dir: &Path,
        pipeline: &str,
        interval: Duration,
        (workers, sink_instances): (usize, usize),
    ) -> Result<Checkpointer, CheckpointError> {
        let store = Checkpoints::new(LocalDir::new(dir), pipeline);
        let restored = store.load_latest()?.map(Restored::decode).transpose()?;
        if let Some(r) = &restored {
            tracing::info!(frontier = r.frontier, dir = %dir.display(), "restarting from a checkpoint");
        }
        Ok(Checkpointer {
            store,
            interval,
            requests: CutRequests::default(),
            written: AtomicU64::new(restored.as_ref().map_or(0, |r| r.frontier)),
            restored,
            assembly: Mutex::new(None),
            last_started: Mutex::new(Instant::now()),
            workers,
            sink_instances,
        })
    }

    /// What the run restarts from, if anything.
    pub fn restored(&self) -> Option<&Restored> {
        self.restored.as_ref()
    }

    /// The cut requests every stateful operator watches.
    pub fn requests(&self) -> &CutRequests {
        &self.requests
    }

    /// The frontier of the checkpoint being assembled, if one is.
    pub fn in_progress(&self) -> Option<Time> {
        self.assembly.lock().ok()?.as_ref().map(|a| a.parts.frontier)
    }

    /// The newest frontier written (or restored from); 0 before any.
    pub fn written(&self) -> Time {
        self.written.load(Ordering::SeqCst)
    }

    /// Starts a checkpoint at `frontier` if one is due (`now`: regardless of the interval),
    /// replacing one in progress only when `now`. Called by worker 0 before it advances its
    /// inputs to `frontier`.
    pub fn maybe_start(&self, frontier: Time, now: bool) -> bool {
        let (Ok(mut assembly), Ok(mut last)) = (self.assembly.lock(), self.last_started.lock()) else {
            return false;
        };
        let due = now || (assembly.is_none() && last.elapsed() >= self.interval);
        if !due {
            return false;
        }
        *last = Instant::now();
        *assembly = Some(Assembly {
            parts: Restored {
                frontier,
                ..Restored::default()
            },
            ..Assembly::default()
        });
        self.requests.request(frontier);
        true
    }

    /// A worker's part of the checkpoint at `frontier`: its positions and tables.
    pub fn worker_part(&self, frontier: Time, positions: Positions, tables: Tables) {
        let Ok(mut assembly) = self.assembly.lock() else {
            return;
        };
        let Some(a) = assembly.as_mut().filter(|a| a.parts.frontier == frontier) else {
            return;
        };
        for (source, parts) in positions {
            a.parts.positions.entry(source).or_default().extend(parts);
        }
        for (source, table) in tables {
            a.parts.tables.entry(source).or_default().extend(table);
        }
        a.workers_done += 1;
    }

    /// A sink instance's part: its position after the times before `frontier`.
    pub fn sink_part(&self, frontier: Time, sink: &str, position: Option<Vec<u8>>) {
        let Ok(mut assembly) = self.assembly.lock() else {
            return;
        };
        let Some(a) = assembly.as_mut().filter(|a| a.parts.frontier == frontier) else {
            return;
        };
        if let Some(p) = position {
            a.parts.sinks.insert(sink.to_owned(), p);
        }
        a.sinks_done += 1;
    }

    /// Writes the checkpoint in progress if every part is in and every sink's output before
    /// its frontier is durable (`durable`: the run's durable frontier). Returns the frontier
    /// written.
    pub fn maybe_write(&self, durable: Option<Time>) -> Result<Option<Time>, CheckpointError> {
        let Ok(mut assembly) = self.assembly.lock() else {
            return Ok(None);
        };
        let ready = assembly.as_ref().is_some_and(|a| {
            a.workers_done >= self.workers
                && a.sinks_done >= self.sink_instances
                && durable.is_none_or(|d| d >= a.parts.frontier)
        });
        if !ready {
            return Ok(None);
        }
        let Some(a) = assembly.take() else {
            return Ok(None);
        };
        let frontier = a.parts.frontier;
        let started = Instant::now();
        let parts = a.parts.encode()?;
        let bytes: usize = parts.iter().map(|(_, b)| b.len()).sum();
        self.store.write(frontier, &parts)?;
        self.store.prune(2)?;
        self.written.fetch_max(frontier, Ordering::SeqCst);
        tracing::info!(
            frontier,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(Some(frontier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_written_only_when_every_part_is_in_and_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Checkpointer::open(dir.path(), "p", Duration::from_secs(3600), (2, 1)).expect("open");
        assert!(c.restored().is_none());
        assert!(!c.maybe_start(100, false), "not due before the interval");
        assert!(c.maybe_start(100, true));
        assert_eq!(c.requests().latest(), Some(100));
        let positions = |p: &str, n: u64| {
            Positions::from([("s".to_owned(), BTreeMap::from([(p.to_owned(), Position::Offset(n))]))])
        };
        c.worker_part(
            100,
            positions("a", 7),
            Tables::from([("t".to_owned(), vec![(Value::Int(1), Value::from("x"))])]),
        );
        c.sink_part(100, "out", Some(b"42".to_vec()));
        assert_eq!(c.maybe_write(None).expect("write"), None, "worker 1 is missing");
        c.worker_part(99, positions("b", 1), Tables::new());
        assert_eq!(
            c.maybe_write(None).expect("write"),
            None,
            "a part for another frontier does not count"
        );
        c.worker_part(100, positions("b", 3), Tables::new());
        assert_eq!(
            c.maybe_write(Some(99)).expect("write"),
            None,
            "the sinks are not durable up to 100"
        );
        assert_eq!(c.maybe_write(Some(100)).expect("write"), Some(100));

        let again = Checkpointer::open(dir.path(), "p", Duration::from_secs(3600), (1, 1)).expect("open");
        let r = again.restored().expect("restored");
        assert_eq!(r.frontier, 100);
        assert_eq!(r.positions["s"]["a"], Position::Offset(7));
        assert_eq!(r.positions["s"]["b"], Position::Offset(3));
        assert_eq!(r.tables["t"], vec![(Value::Int(1), Value::from("x"))]);
        assert_eq!(r.sinks["out"], b"42".to_vec());
        assert_eq!(again.written(), 100);
    }
}
