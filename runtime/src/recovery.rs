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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::checkpoint::{CheckpointError, Checkpoints, Loaded, LocalDir};
use crate::cluster::{Control, Outbox, To};
use crate::operators::fold::{CutRequests, FoldCheckpoint};
use crate::record::Time;
use crate::source::Position;

/// Source name → partition id → position.
pub type Positions = BTreeMap<String, BTreeMap<String, Position>>;
/// Stateful operator name → its state as each worker saved it: the piece of worker `i` of
/// `n` under `(i, n)`, serialized with bincode.
pub type States = BTreeMap<String, BTreeMap<(usize, usize), Vec<u8>>>;

/// What a run restarts from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restored {
    /// The checkpoint's frontier.
    pub frontier: Time,
    /// Where each partition resumes.
    pub positions: Positions,
    /// Each stateful operator's state at the frontier (upsert tables, folds), one piece per
    /// worker that saved it.
    pub states: States,
    /// Each sink's position, by sink name.
    pub sinks: BTreeMap<String, Vec<u8>>,
}

const POSITIONS: &str = "positions.json";
const SINKS: &str = "sinks.json";
/// State parts are named `state.<operator>.<worker>-of-<workers>`.
const STATE_PREFIX: &str = "state.";

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
        let mut states = States::new();
        for (name, bytes) in &loaded.parts {
            let Some((operator, piece)) = name.strip_prefix(STATE_PREFIX).and_then(|n| n.rsplit_once('.')) else {
                continue;
            };
            let worker = piece
                .split_once("-of-")
                .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
                .ok_or_else(|| CheckpointError::Invalid {
                    name: name.clone(),
                    reason: "not a state piece name".to_owned(),
                })?;
            states
                .entry(operator.to_owned())
                .or_default()
                .insert(worker, bytes.clone());
        }
        Ok(Restored {
            frontier: loaded.frontier,
            positions: part(&loaded, POSITIONS)?,
            states,
            sinks: part(&loaded, SINKS)?,
        })
    }

    fn encode(&self) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
        let err = |e: serde_json::Error| CheckpointError::Store(e.to_string());
        let mut parts = vec![
            (POSITIONS.to_owned(), serde_json::to_vec(&self.positions).map_err(err)?),
            (SINKS.to_owned(), serde_json::to_vec(&self.sinks).map_err(err)?),
        ];
        for (operator, pieces) in &self.states {
            for ((i, n), piece) in pieces {
                parts.push((format!("{STATE_PREFIX}{operator}.{i}-of-{n}"), piece.clone()));
            }
        }
        Ok(parts)
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
    restored: Option<Arc<Restored>>,
    assembly: Mutex<Option<Assembly>>,
    /// The newest frontier written (0: none).
    written: AtomicU64,
    last_started: Mutex<Instant>,
    workers: usize,
    sink_instances: usize,
    stats: CheckpointStats,
    /// In a process of a cluster other than the leader: where parts go instead of being
    /// assembled here.
    forward: Option<Arc<Outbox>>,
}

/// What the checkpoints of this run cost, for metrics.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints written by this process.
    pub written: AtomicU64,
    /// How long the last one took to encode and write, in milliseconds.
    pub last_ms: AtomicU64,
    /// The size of the last one, in bytes.
    pub last_bytes: AtomicU64,
    /// When the last one was written (or the one restored from was), in epoch milliseconds.
    pub last_at_ms: AtomicU64,
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
        let restored = store.load_latest_as(Restored::decode)?.map(Arc::new);
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
            stats: CheckpointStats::default(),
            forward: None,
        })
    }

    /// Makes this the checkpointer of a process of a cluster: unless the process leads, it
    /// sends its workers' and sinks' parts to the leader, which writes the checkpoints.
    pub fn in_cluster(mut self, outbox: &Arc<Outbox>) -> Checkpointer {
        self.forward = (!outbox.leads()).then(|| Arc::clone(outbox));
        self
    }

    /// The leader wrote the checkpoint at `frontier` (in a process that does not lead).
    pub fn written_elsewhere(&self, frontier: Time) {
        self.written.fetch_max(frontier, Ordering::SeqCst);
        if let Ok(mut assembly) = self.assembly.lock()
            && assembly.as_ref().is_some_and(|a| a.parts.frontier <= frontier)
        {
            *assembly = None;
        }
        self.stats.last_at_ms.store(crate::exec::now_ms(), Ordering::Relaxed);
    }

    /// The cost of this run's checkpoints so far.
    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// What the run restarts from, if anything.
    pub fn restored(&self) -> Option<&Restored> {
        self.restored.as_deref()
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

    /// Worker `worker` of `workers`'s part of the checkpoint at `frontier`: its positions and
    /// its operators' states.
    pub fn worker_part(
        &self,
        frontier: Time,
        (worker, workers): (usize, usize),
        positions: Positions,
        states: BTreeMap<String, Vec<u8>>,
    ) {
        if let Some(leader) = &self.forward {
            let worker = worker as u32;
            let part = Control::Part {
                frontier,
                worker,
                positions,
                states,
            };
            leader.push(To::Leader, part);
            return;
        }
        let Ok(mut assembly) = self.assembly.lock() else {
            return;
        };
        let Some(a) = assembly.as_mut().filter(|a| a.parts.frontier == frontier) else {
            return;
        };
        for (source, parts) in positions {
            a.parts.positions.entry(source).or_default().extend(parts);
        }
        for (operator, piece) in states {
            a.parts
                .states
                .entry(operator)
                .or_default()
                .insert((worker, workers), piece);
        }
        a.workers_done += 1;
    }

    /// A sink instance's part: its position after the times before `frontier`.
    pub fn sink_part(&self, frontier: Time, sink: &str, position: Option<Vec<u8>>) {
        if let Some(leader) = &self.forward {
            let sink = sink.to_owned();
            leader.push(
                To::Leader,
                Control::SinkPart {
                    frontier,
                    sink,
                    position,
                },
            );
            return;
        }
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
        let ms = started.elapsed().as_millis() as u64;
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        self.stats.last_ms.store(ms, Ordering::Relaxed);
        self.stats.last_bytes.store(bytes as u64, Ordering::Relaxed);
        self.stats.last_at_ms.store(crate::exec::now_ms(), Ordering::Relaxed);
        tracing::info!(
            frontier,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(Some(frontier))
    }
}

/// What one stateful operator of one worker offers a checkpoint.
trait StateHook {
    /// Whether it has cut its state at `frontier`.
    fn has(&self, frontier: Time) -> bool;
    /// Its state cut at `frontier`, serialized.
    fn take(&self, frontier: Time) -> Result<Vec<u8>, String>;
}

impl<K, S> StateHook for FoldCheckpoint<K, S>
where
    K: Serialize,
    S: Serialize,
{
    fn has(&self, frontier: Time) -> bool {
        FoldCheckpoint::has(self, frontier)
    }

    fn take(&self, frontier: Time) -> Result<Vec<u8>, String> {
        let state = FoldCheckpoint::take(self, frontier).unwrap_or_default();
        bincode::options().serialize(&state).map_err(|e| e.to_string())
    }
}

/// One worker's stateful operators, for checkpoints: operators ask it for their hooks by a
/// name unique in the pipeline, and get their saved state back under that name on restart.
///
/// Without checkpoints it hands out hooks that are never asked to cut and restore nothing.
pub struct StateRegistry {
    enabled: bool,
    requests: CutRequests,
    restored: Option<Arc<Restored>>,
    /// This worker's index and the number of workers.
    worker: (usize, usize),
    hooks: Vec<(String, Box<dyn StateHook>)>,
    /// Names whose saved state did not decode, reported by [`StateRegistry::problems`].
    problems: Vec<String>,
}

impl StateRegistry {
    /// A registry for a run without checkpoints.
    pub fn disabled() -> Self {
        StateRegistry {
            enabled: false,
            requests: CutRequests::default(),
            restored: None,
            worker: (0, 1),
            hooks: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The registry of worker `worker` of `workers` in a run with `checkpointer`, restoring
    /// what it restarted from.
    pub fn new(checkpointer: &Checkpointer, worker: (usize, usize)) -> Self {
        StateRegistry {
            enabled: true,
            requests: checkpointer.requests().clone(),
            restored: checkpointer.restored.clone(),
            worker,
            hooks: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The hooks of the keyed fold called `name`, with the state saved under that name.
    pub fn fold<K, S>(&mut self, name: &str) -> FoldCheckpoint<K, S>
    where
        K: Serialize + DeserializeOwned + Ord + Clone + 'static,
        S: Serialize + DeserializeOwned + Clone + 'static,
    {
        let restore = self.restored.clone().map(|restored| {
            let pieces = restored.states.get(name);
            // With as many workers as when it was saved, this worker's keys are its own piece;
            // otherwise it reads every piece and the fold keeps the keys routed to it.
            let mine = pieces.and_then(|p| p.get(&self.worker));
            let read: Vec<&Vec<u8>> = match mine {
                Some(piece) => vec![piece],
                None => pieces.into_iter().flat_map(|p| p.values()).collect(),
            };
            let mut all: Vec<(K, S)> = Vec::new();
            for piece in read {
                match bincode::options().deserialize::<Vec<(K, S)>>(piece) {
                    Ok(part) => all.extend(part),
                    Err(e) => self
                        .problems
                        .push(format!("the saved state of `{name}` does not decode: {e}")),
                }
            }
            (restored.frontier, all)
        });
        let hooks = FoldCheckpoint::new(self.requests.clone(), restore);
        if self.enabled {
            self.hooks.push((name.to_owned(), Box::new(hooks.clone())));
        }
        hooks
    }

    /// Saved states that could not be decoded (the run must not go on without them).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Whether every registered operator has cut its state at `frontier`.
    pub fn cut(&self, frontier: Time) -> bool {
        self.hooks.iter().all(|(_, h)| h.has(frontier))
    }

    /// Every registered operator's state cut at `frontier`, serialized, by name.
    pub fn take(&self, frontier: Time) -> Result<BTreeMap<String, Vec<u8>>, String> {
        self.hooks
            .iter()
            .map(|(name, h)| h.take(frontier).map(|bytes| (name.clone(), bytes)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

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
        let table = bincode::options()
            .serialize(&vec![(Value::Int(1), Value::from("x"))])
            .expect("bincode");
        let states = BTreeMap::from([("t".to_owned(), table.clone())]);
        c.worker_part(100, (0, 2), positions("a", 7), states);
        c.sink_part(100, "out", Some(b"42".to_vec()));
        assert_eq!(c.maybe_write(None).expect("write"), None, "worker 1 is missing");
        c.worker_part(99, (1, 2), positions("b", 1), BTreeMap::new());
        assert_eq!(
            c.maybe_write(None).expect("write"),
            None,
            "a part for another frontier does not count"
        );
        c.worker_part(100, (1, 2), positions("b", 3), BTreeMap::new());
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
        assert_eq!(r.states["t"], BTreeMap::from([((0, 2), table)]));
        assert_eq!(r.sinks["out"], b"42".to_vec());
        assert_eq!(again.written(), 100);
    }
}
