//! What the worker thread and the dispatcher share: every unresolved delivery, the dead
//! letters waiting for the worker thread, and the counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sluice_runtime::metrics::Histogram;
use sluice_runtime::{Row, Time};

use crate::delivery::{Delivery, Prepared, Progress};

/// Counters of the sink's work, for metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests started (refused targets included).
    pub attempts: AtomicU64,
    /// Deliveries answered with a 2xx.
    pub successes: AtomicU64,
    /// Retries scheduled.
    pub retries: AtomicU64,
    /// Deliveries (and rows that are not deliveries) sent to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Requests in flight now.
    pub in_flight: AtomicU64,
    /// How long each request took, from sending to its answer or failure.
    pub attempt_seconds: Histogram,
    /// How long each delivery took, from entering the sink (in this run) to its success or
    /// dead letter, retries included.
    pub delivery_seconds: Histogram,
}

impl WebhookStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One unresolved delivery.
pub(crate) struct Entry {
    pub prepared: Arc<Prepared>,
    pub progress: Progress,
    /// The time of the output it was written at; `None` for one restored from a checkpoint,
    /// which the checkpoint's frontier already covers.
    pub time: Option<Time>,
    /// Not attempted yet in this run: counts against `max_queued`.
    pub fresh: bool,
    /// Failed for good: its dead letter waits in [`State::dead`].
    pub dead: bool,
    /// When it entered the sink in this run, for its latency.
    pub admitted: std::time::Instant,
}

/// A dead letter waiting for the worker thread to write it.
pub(crate) enum Dead {
    /// A delivery that failed for good (its entry is still in [`State::pending`]).
    Delivery(u64),
    /// A dead-letter row made already: of a row that is not a delivery, at its output time
    /// (`None`: restored from a checkpoint).
    Row(Option<Time>, Row),
}

/// The state behind the mutex.
#[derive(Default)]
pub(crate) struct State {
    pub next_seq: u64,
    /// Every unresolved delivery by sequence number.
    pub pending: HashMap<u64, Entry>,
    /// Unresolved deliveries per output time, for the durable frontier. A dead-lettered
    /// delivery stays counted until its dead letter is durable in the inner sink.
    pub times: BTreeMap<Time, usize>,
    /// Dead letters for the worker thread to write, in the order they were decided.
    pub dead: Vec<Dead>,
    /// Deliveries not attempted yet in this run.
    pub queued: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Unresolved deliveries per target (entries of `pending`), and how it is doing.
    pub per_target: HashMap<Arc<str>, TargetLoad>,
}

/// A target's unresolved deliveries, and the last sign that it works.
pub(crate) struct TargetLoad {
    pub pending: usize,
    /// Its last success, or when its first unresolved delivery came if none since.
    pub since: std::time::Instant,
}

impl State {
    /// Counts an unresolved delivery at `time`.
    pub fn hold(&mut self, time: Option<Time>) {
        if let Some(t) = time {
            *self.times.entry(t).or_default() += 1;
        }
    }

    /// Forgets an unresolved delivery at `time`.
    pub fn release(&mut self, time: Option<Time>) {
        if let Some(t) = time
            && let Some(n) = self.times.get_mut(&t)
        {
            *n -= 1;
            if *n == 0 {
                self.times.remove(&t);
            }
        }
    }

    /// Unresolved deliveries to `target`, and the last sign that it works.
    pub fn load(&self, target: &str) -> Option<&TargetLoad> {
        self.per_target.get(target)
    }

    /// Adds a delivery; returns its sequence number.
    pub fn admit(&mut self, prepared: Prepared, progress: Progress, time: Option<Time>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.hold(time);
        self.queued += 1;
        self.per_target
            .entry(Arc::clone(&prepared.target))
            .or_insert_with(|| TargetLoad {
                pending: 0,
                since: std::time::Instant::now(),
            })
            .pending += 1;
        let entry = Entry {
            prepared: Arc::new(prepared),
            progress,
            time,
            fresh: true,
            dead: false,
            admitted: std::time::Instant::now(),
        };
        self.pending.insert(seq, entry);
        seq
    }

    /// Removes a resolved delivery: `succeeded`, or its dead letter made.
    pub fn forget(&mut self, seq: u64, succeeded: bool) -> Option<Entry> {
        let entry = self.pending.remove(&seq)?;
        let target = &entry.prepared.target;
        if let Some(load) = self.per_target.get_mut(target) {
            load.pending -= 1;
            if succeeded {
                load.since = std::time::Instant::now();
            }
            if load.pending == 0 {
                self.per_target.remove(target);
            }
        }
        Some(entry)
    }

    /// Marks a delivery failed for good and queues its dead letter.
    pub fn kill(&mut self, seq: u64) {
        if let Some(entry) = self.pending.get_mut(&seq)
            && !entry.dead
        {
            entry.dead = true;
            if entry.fresh {
                entry.fresh = false;
                self.queued -= 1;
            }
            self.dead.push(Dead::Delivery(seq));
        }
    }
}

/// The state, a condition variable signalled whenever it changes in a way a waiting worker
/// thread cares about (an attempt started, a delivery resolved), and the counters.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub changed: Condvar,
    pub stats: Arc<WebhookStats>,
    pub stop: Arc<AtomicBool>,
}

impl Shared {
    pub fn new(stop: Arc<AtomicBool>) -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stats: Arc::new(WebhookStats::default()),
            stop,
        }
    }

    /// The state. A panic while it was held (a bug) leaves it as consistent as any single
    /// step leaves it, so a poisoned lock is taken over rather than spread.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the pipeline asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A delivery as a checkpoint keeps it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedDelivery {
    pub delivery: Delivery,
    pub progress: Progress,
    /// Failed for good before the checkpoint, its dead letter not written yet: restored
    /// straight into the dead letters, not sent again.
    pub dead: bool,
}

/// The checkpoint of a webhook sink.
#[derive(Serialize, Deserialize)]
pub(crate) struct Saved {
    /// [`SAVED_VERSION`], so a format change is an error and not garbage.
    pub version: u32,
    /// The durable frontier the checkpoint stands for.
    pub frontier: Time,
    pub deliveries: Vec<SavedDelivery>,
    /// The inner dead-letter sink's checkpoint.
    pub inner: Option<Vec<u8>>,
}

/// The version of [`Saved`].
pub(crate) const SAVED_VERSION: u32 = 1;

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
