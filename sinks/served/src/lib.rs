//! Served views: an output kept per key, at the version of its last change, for clients that
//! read a snapshot, then every change after it, and resume where they left off.
//!
//! ```text
//!  final times of an output ──▶ ServedSink ──▶ ServedView ◀── changes(partition, after, limit)
//!      (sorted, consolidated)   write/commit   per partition:      get(partition, key)
//!                                              key → (version, value | tombstone)
//!                                              (version, key) index
//! ```
//!
//! **Versions.** Each key holds one entry: its latest value (or a tombstone once deleted)
//! and the version of that change. The version is the change's time (epoch milliseconds),
//! or, for a view with a `version_field`, that field of the row (the messages feed's
//! `timestamp`, which clients sync by). Entries are indexed by `(version, key)`, so "every
//! change after cursor C" is a range read, and a snapshot is the same read from the start:
//! a key changed while a client pages through moves to a later version and is read again
//! later, so there is no copy of the data per client.
//!
//! **Only final times.** The sink applies a time once the frontier has passed it, so every
//! entry is final: nothing can appear later at a version already served. [`Progress::frontier`]
//! is the version below which everything is in the view: the time frontier, or for a
//! `version_field` view one past the largest version applied (later changes carry larger
//! versions, spec/messages.md).
//!
//! **Tombstones** of a time-versioned view are kept for `retention_ms` after their change,
//! then dropped; [`Progress::horizon`] then rises past them, and a client whose cursor is
//! below the horizon cannot be given the changes it missed: it needs a fresh snapshot. A
//! view started empty (no checkpoint) sets its horizon to the start time, so a token from an
//! earlier run is reset rather than honoured with gaps. In a `version_field` view a deletion
//! must itself be a row with a version (the feed's `deleted: true` entries); a retraction
//! without a replacement removes the entry outright.
//!
//! **Partitions.** A view with `partition_by` keeps one index per value of that field (the
//! messages feed per `user`), so a client reads only its own partition.
//!
//! **Checkpoints.** [`ServedSink`]'s [`Sink::checkpoint`] is the whole view, cut exactly at
//! the checkpoint's frontier; a restart restores it, so cursors and tokens stay meaningful.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bincode::Options;
use serde::{Deserialize, Serialize};
use sluice_runtime::progress::CaughtUp;
use sluice_runtime::record::{Diff, Row};
use sluice_runtime::sink::{Sink, SinkError};
pub use sluice_runtime::{Time, Value};
use tokio::sync::watch;

/// How an output is served: its name, partitioning, versions and tombstone retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewConfig {
    /// The served sink's name, which clients ask for.
    pub name: String,
    /// A field of the key (or else the value) whose value picks the partition.
    pub partition_by: Option<String>,
    /// A field of the value holding the version (an unsigned integer); `None`: the change time.
    pub version_field: Option<String>,
    /// How long a tombstone is kept after its change, in milliseconds; `None`: forever.
    pub retention_ms: Option<u64>,
}

/// Where a client is in a partition: before everything, or after a `(version, key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Before the first entry: a read from here is a snapshot.
    Start,
    /// After the entry `(version, key)`, or after every entry of `version` when `key` is `None`.
    After {
        /// The version read through.
        version: u64,
        /// The last key read at that version, or `None` for all of them.
        key: Option<Value>,
    },
}

impl Cursor {
    /// The cursor of a client that has every change below `frontier`.
    pub fn through(frontier: u64) -> Cursor {
        match frontier.checked_sub(1) {
            Some(version) => Cursor::After { version, key: None },
            None => Cursor::Start,
        }
    }
}

/// One key's latest change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, as the output's rows have it.
    pub key: Value,
    /// The version of the change (its time, or its version field).
    pub version: u64,
    /// The time of the change (epoch milliseconds).
    pub time: Time,
    /// The value, or `None` when the key was deleted (a tombstone).
    pub value: Option<Value>,
}

/// A page of entries, ascending by `(version, key)`, read under one lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The entries after the cursor, at most the limit.
    pub entries: Vec<Entry>,
    /// Where to read on from: after the last entry, or the cursor given when there was none.
    pub next: Cursor,
    /// Nothing followed `next` when the page was read.
    pub caught_up: bool,
    /// The view's frontier when the page was read: caught up, the reader has every change
    /// below it.
    pub frontier: u64,
}

/// How far a view is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Every change with a version below this is in the view.
    pub frontier: u64,
    /// A reader that has every change below `t` can be given the rest only if
    /// `horizon <= t <= frontier`; below, tombstones it needs are gone.
    pub horizon: u64,
    /// The output ended (a bounded run finished): nothing will change any more.
    pub ended: bool,
    /// Keys with a value.
    pub live: usize,
    /// Keys kept as tombstones.
    pub tombstones: usize,
    /// The view holds everything the pipeline's sources had when they last caught up
    /// (spec/cds.md's `dataset_current`); always true for a view not told of its sources.
    pub current: bool,
}

/// Why a view cannot be restored or fed.
#[derive(Debug, thiserror::Error)]
pub enum ServedError {
    /// A checkpointed view that does not decode.
    #[error("served view {view}: the checkpointed view does not decode: {reason}")]
    Restore {
        /// The view.
        view: String,
        /// The decoder's message.
        reason: String,
    },
}

/// One partition: each key's version, and the entries by `(version, key)`. Readers walk
/// `order` alone; a write looks the key's version up in `versions`. Both are B-trees: a hash
/// map would rehash every key under the write lock as it grows, stalling the sink and every
/// reader (200 ms at 230 k keys).
#[derive(Default)]
struct Part {
    versions: BTreeMap<Value, u64>,
    order: BTreeMap<(u64, Value), Slot>,
}

struct Slot {
    time: Time,
    value: Option<Value>,
}

#[derive(Default)]
struct State {
    parts: HashMap<Value, Part>,
    /// Every time before this has been applied.
    time_frontier: Time,
    /// The largest version applied (for `version_field` views).
    max_version: u64,
    horizon: u64,
    ended: bool,
    /// Tombstones in time order, to drop after the retention: `(time, partition, key, version)`.
    tombstones: VecDeque<(Time, Value, Value, u64)>,
    live: usize,
}

struct Shared {
    config: ViewConfig,
    caught_up: Option<Arc<CaughtUp>>,
    state: RwLock<State>,
    tick: watch::Sender<u64>,
}

/// A served output, shared by the sink that feeds it and the servers that read it.
#[derive(Clone)]
pub struct ServedView {
    shared: Arc<Shared>,
}

/// What a checkpoint holds of a view.
#[derive(Serialize, Deserialize)]
struct Saved {
    time_frontier: Time,
    max_version: u64,
    horizon: u64,
    /// `(partition, key, version, time, value)`.
    entries: Vec<(Value, Value, u64, Time, Option<Value>)>,
}

impl ServedView {
    /// An empty view.
    pub fn new(config: ViewConfig) -> ServedView {
        ServedView::build(config, None)
    }

    /// An empty view that is [`Progress::current`] only once the run's sources have caught up
    /// and the view's frontier has passed that point.
    pub fn following(config: ViewConfig, caught_up: Arc<CaughtUp>) -> ServedView {
        ServedView::build(config, Some(caught_up))
    }

    fn build(config: ViewConfig, caught_up: Option<Arc<CaughtUp>>) -> ServedView {
        let (tick, _) = watch::channel(0);
        ServedView {
            shared: Arc::new(Shared {
                config,
                caught_up,
                state: RwLock::new(State::default()),
                tick,
            }),
        }
    }

    /// The name clients ask for.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The field that partitions the view, if any.
    pub fn partition_by(&self) -> Option<&str> {
        self.shared.config.partition_by.as_deref()
    }

    /// The view's configuration.
    pub fn config(&self) -> &ViewConfig {
        &self.shared.config
    }

    /// How far the view is.
    pub fn progress(&self) -> Progress {
        let state = self.read();
        Progress {
            frontier: self.frontier(&state),
            horizon: state.horizon,
            ended: state.ended,
            live: state.live,
            tombstones: state.tombstones.len(),
            current: self
                .shared
                .caught_up
                .as_ref()
                .is_none_or(|c| c.since().is_some_and(|since| state.time_frontier > since)),
        }
    }

    /// Up to `limit` entries of `partition` (`Value::Null` when unpartitioned) after `after`.
    pub fn changes(&self, partition: &Value, after: &Cursor, limit: usize) -> Page {
        let state = self.read();
        let frontier = self.frontier(&state);
        let Some(part) = state.parts.get(partition) else {
            return Page {
                entries: Vec::new(),
                next: after.clone(),
                caught_up: true,
                frontier,
            };
        };
        let from = match after {
            Cursor::Start => Bound::Unbounded,
            Cursor::After {
                version,
                key: Some(key),
            } => Bound::Excluded((*version, key.clone())),
            // `Null` is the smallest value, so this is the first key of the next version.
            Cursor::After { version, key: None } => match version.checked_add(1) {
                Some(next) => Bound::Included((next, Value::Null)),
                None => {
                    return Page {
                        entries: Vec::new(),
                        next: after.clone(),
                        caught_up: true,
                        frontier,
                    };
                }
            },
        };
        let mut range = part.order.range((from, Bound::Unbounded));
        let entries: Vec<Entry> = range
            .by_ref()
            .take(limit)
            .map(|((version, key), slot)| Entry {
                key: key.clone(),
                version: *version,
                time: slot.time,
                value: slot.value.clone(),
            })
            .collect();
        let caught_up = range.next().is_none();
        let next = match entries.last() {
            Some(last) => Cursor::After {
                version: last.version,
                key: Some(last.key.clone()),
            },
            None => after.clone(),
        };
        Page {
            entries,
            next,
            caught_up,
            frontier,
        }
    }

    /// The entry of `key` in `partition`, if the view has one (tombstones included).
    pub fn get(&self, partition: &Value, key: &Value) -> Option<Entry> {
        let state = self.read();
        let part = state.parts.get(partition)?;
        let version = *part.versions.get(key)?;
        let slot = part.order.get(&(version, key.clone()))?;
        Some(Entry {
            key: key.clone(),
            version,
            time: slot.time,
            value: slot.value.clone(),
        })
    }

    /// A receiver whose value changes whenever the view's frontier advances.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.tick.subscribe()
    }

    /// The sink that feeds this view: restored from a checkpointed view, or started empty
    /// (with its horizon at the current time, so tokens of an earlier run get a snapshot).
    pub fn sink(&self, resume: Option<&[u8]>) -> Result<ServedSink, ServedError> {
        let mut fresh = State::default();
        match resume {
            Some(bytes) => {
                let saved: Saved = bincode::options()
                    .deserialize(bytes)
                    .map_err(|e| ServedError::Restore {
                        view: self.name().to_owned(),
                        reason: e.to_string(),
                    })?;
                fresh.time_frontier = saved.time_frontier;
                fresh.max_version = saved.max_version;
                fresh.horizon = saved.horizon;
                let mut tombstones = Vec::new();
                for (partition, key, version, time, value) in saved.entries {
                    if value.is_some() {
                        fresh.live += 1;
                    } else {
                        tombstones.push((time, partition.clone(), key.clone(), version));
                    }
                    let part = fresh.parts.entry(partition).or_default();
                    part.versions.insert(key.clone(), version);
                    part.order.insert((version, key), Slot { time, value });
                }
                tombstones.sort_by_key(|t| t.0);
                fresh.tombstones = tombstones.into();
            }
            None if self.shared.config.version_field.is_none() => fresh.horizon = now_ms(),
            None => {}
        }
        let saved = fresh.time_frontier;
        *self.write() = fresh;
        self.shared.tick.send_modify(|n| *n += 1);
        Ok(ServedSink {
            view: self.clone(),
            saved,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn frontier(&self, state: &State) -> u64 {
        match self.shared.config.version_field {
            None => state.time_frontier,
            Some(_) => state.max_version.saturating_add(1),
        }
    }

    /// Applies the consolidated updates of one final time, sorted by row (so by key).
    fn apply(&self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        let config = &self.shared.config;
        let mut state = self.write();
        let mut rest = updates;
        while let Some((first, _)) = rest.first() {
            let n = rest.iter().take_while(|(r, _)| r.key == first.key).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            // An output that is not a function of its key offers several values; the last
            // (largest) wins, as an upsert sink would leave it.
            let inserted = group.iter().rev().find(|(_, d)| *d > 0).map(|(r, _)| r);
            let key = first.key.clone();
            let version = match (&config.version_field, inserted) {
                (None, _) => time,
                (Some(field), Some(row)) => version_of(row, field).ok_or_else(|| {
                    SinkError::Config(format!(
                        "served view {}: row {} has no unsigned integer `{field}` to version it by",
                        config.name,
                        row.key.to_json_string()
                    ))
                })?,
                (Some(_), None) => 0,
            };
            state.max_version = state.max_version.max(version);
            let partition = inserted.map(|r| self.partition_of(r));
            // A key whose partition field changed leaves its old partition as a deletion.
            for (row, _) in group.iter().filter(|(_, d)| *d < 0) {
                let old = self.partition_of(row);
                if partition.as_ref() != Some(&old) {
                    self.set(&mut state, old, key.clone(), version, time, None);
                }
            }
            if let (Some(partition), Some(row)) = (partition, inserted) {
                self.set(&mut state, partition, key, version, time, Some(row.val.clone()));
            }
        }
        Ok(())
    }

    fn partition_of(&self, row: &Row) -> Value {
        match &self.shared.config.partition_by {
            Some(field) => row
                .key
                .get(field)
                .or_else(|| row.val.get(field))
                .cloned()
                .unwrap_or_default(),
            None => Value::Null,
        }
    }

    /// Sets `key`'s entry in `partition`: a value, or a deletion (a tombstone in a
    /// time-versioned view; gone in a `version_field` view, whose deletions are rows).
    fn set(&self, state: &mut State, partition: Value, key: Value, version: u64, time: Time, value: Option<Value>) {
        let tombstones = self.shared.config.version_field.is_none();
        let part = state.parts.entry(partition.clone()).or_default();
        let old = part
            .versions
            .remove(&key)
            .and_then(|v| part.order.remove(&(v, key.clone())));
        let live = value.is_some();
        if live || tombstones {
            part.versions.insert(key.clone(), version);
            part.order.insert((version, key.clone()), Slot { time, value });
        } else if part.versions.is_empty() {
            state.parts.remove(&partition);
        }
        match (old.is_some_and(|o| o.value.is_some()), live) {
            (true, false) => state.live -= 1,
            (false, true) => state.live += 1,
            _ => {}
        }
        if !live && tombstones {
            state.tombstones.push_back((time, partition, key, version));
        }
    }

    /// Records that every time before `frontier` is applied (`None`: the output ended),
    /// drops tombstones past their retention, and wakes the readers.
    fn advance(&self, frontier: Option<Time>) {
        let mut state = self.write();
        let before = (state.time_frontier, state.ended);
        match frontier {
            Some(f) => state.time_frontier = state.time_frontier.max(f),
            None => {
                state.ended = true;
                state.time_frontier = state.time_frontier.max(state.max_version.saturating_add(1));
            }
        }
        if let Some(retention) = self.shared.config.retention_ms {
            let cutoff = state.time_frontier.saturating_sub(retention);
            while state.tombstones.front().is_some_and(|t| t.0 < cutoff) {
                let Some((_, partition, key, version)) = state.tombstones.pop_front() else {
                    break;
                };
                // The key may have changed since: only a tombstone still at that version goes.
                let Some(part) = state.parts.get_mut(&partition) else {
                    continue;
                };
                let at = (version, key);
                if part.order.get(&at).is_some_and(|s| s.value.is_none()) {
                    part.order.remove(&at);
                    part.versions.remove(&at.1);
                    if part.versions.is_empty() {
                        state.parts.remove(&partition);
                    }
                    state.horizon = state.horizon.max(version.saturating_add(1));
                }
            }
        }
        if (state.time_frontier, state.ended) != before {
            drop(state);
            self.shared.tick.send_modify(|n| *n += 1);
        }
    }

    /// The view's checkpoint and the time frontier it is cut at.
    fn save(&self) -> Result<(Vec<u8>, Time), SinkError> {
        let state = self.read();
        let mut entries = Vec::with_capacity(state.live + state.tombstones.len());
        for (partition, part) in &state.parts {
            for ((version, key), slot) in &part.order {
                entries.push((partition.clone(), key.clone(), *version, slot.time, slot.value.clone()));
            }
        }
        let saved = Saved {
            time_frontier: state.time_frontier,
            max_version: state.max_version,
            horizon: state.horizon,
            entries,
        };
        let bytes = bincode::options()
            .serialize(&saved)
            .map_err(|e| SinkError::Io(format!("served view {}: {e}", self.name())))?;
        Ok((bytes, saved.time_frontier))
    }
}

fn version_of(row: &Row, field: &str) -> Option<u64> {
    match row.val.get(field)? {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::UInt(n) => Some(*n),
        _ => None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sink of a served output: applies each final time to its [`ServedView`].
pub struct ServedSink {
    view: ServedView,
    /// The frontier of the view as last saved for a checkpoint (or restored from one).
    saved: Time,
}

impl Sink for ServedSink {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        self.view.apply(time, updates)
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.view.advance(frontier);
        Ok(())
    }

    /// The view lives in memory: it is durable only as far as the last checkpoint that holds
    /// it. So without checkpoints nothing is durable, and a Kafka source never commits past
    /// what a restart (which starts the view empty) would need to read again.
    fn durable(&self) -> Option<Time> {
        (!self.view.read().ended).then_some(self.saved)
    }

    fn checkpoint(&mut self, frontier: Time) -> Result<Option<Vec<u8>>, SinkError> {
        let (bytes, view_frontier) = self.view.save()?;
        // The view holds every time before the checkpoint's frontier, though its own
        // frontier moves there only at the next commit: durable as far as the checkpoint.
        self.saved = view_frontier.max(frontier);
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests;
