//! Helpers for dataflow tests: capturing a dataflow's updates, stepping workers through
//! times, and reading the captured `(record, time, diff)` updates back as the collection they
//! add up to at a time. Used by the dataflow crates' test harnesses.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::record::{DeadLetter, DeadLetters, Diff, Row, Rows, Time};

/// A keyed output's contents: key JSON → value JSON.
pub type Upserts = BTreeMap<String, String>;

/// The records with a non-zero count once every update at or before `at` is added up.
pub fn accumulate<D: Ord + Clone>(updates: &[(D, Time, Diff)], at: Time) -> BTreeMap<D, Diff> {
    let mut acc: BTreeMap<D, Diff> = BTreeMap::new();
    for (record, _, diff) in updates.iter().filter(|u| u.1 <= at) {
        *acc.entry(record.clone()).or_insert(0) += diff;
    }
    acc.retain(|_, d| *d != 0);
    acc
}

/// The contents of keyed output `name` at `at`.
///
/// # Panics
/// If the output is not a proper collection of derived rows: a row held other than once,
/// a row with a position, or two rows for one key.
pub fn upserts_at(updates: &[(Row, Time, Diff)], at: Time, name: &str) -> Upserts {
    let mut out = Upserts::new();
    for (row, d) in accumulate(updates, at) {
        assert_eq!(d, 1, "{name} holds {row:?} {d} times at {at}");
        assert!(row.pos.is_none(), "{name}: derived rows carry no position");
        let key = row.key.to_json_string();
        let prev = out.insert(key.clone(), row.val.to_json_string());
        assert!(prev.is_none(), "{name} has two rows for key {key} at {at}");
    }
    out
}

/// The dead letters present at `at`, sorted, each as many times as present.
///
/// # Panics
/// If a dead letter was retracted more often than it was inserted.
pub fn dead_letters_at(errors: &[(DeadLetter, Time, Diff)], at: Time) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    for (letter, d) in accumulate(errors, at) {
        let n = usize::try_from(d).unwrap_or_else(|_| panic!("dead letter {letter:?} retracted more than inserted"));
        out.extend(std::iter::repeat_n(letter, n));
    }
    out
}

/// Every update of a dataflow's row outputs and of its dead letters, as workers saw them.
#[derive(Debug, Default)]
pub struct Updates {
    /// The updates of each row output, in the order the outputs were given to [`capture`].
    pub outputs: Vec<Vec<(Row, Time, Diff)>>,
    /// The dead letters' updates.
    pub errors: Vec<(DeadLetter, Time, Diff)>,
}

impl Updates {
    /// Adds another worker's updates to these.
    pub fn absorb(&mut self, other: Updates) {
        if self.outputs.len() < other.outputs.len() {
            self.outputs.resize_with(other.outputs.len(), Vec::new);
        }
        for (mine, theirs) in self.outputs.iter_mut().zip(other.outputs) {
            mine.extend(theirs);
        }
        self.errors.extend(other.errors);
    }
}

/// Records every update of `outputs` and `errors` on this worker, and attaches them to `probe`.
pub fn capture<'s>(
    outputs: impl IntoIterator<Item = Rows<'s>>,
    errors: DeadLetters<'s>,
    probe: &ProbeHandle<Time>,
) -> Rc<RefCell<Updates>> {
    let captured = Rc::new(RefCell::new(Updates::default()));
    for (i, rows) in outputs.into_iter().enumerate() {
        captured.borrow_mut().outputs.push(Vec::new());
        let sink = Rc::clone(&captured);
        rows.inspect(move |u| sink.borrow_mut().outputs[i].push(u.clone()))
            .probe_with(probe);
    }
    let sink = Rc::clone(&captured);
    errors
        .inspect(move |u| sink.borrow_mut().errors.push(u.clone()))
        .probe_with(probe);
    captured
}

/// Steps `worker` until `probe` has passed `time`: each time's output must complete while
/// the inputs are still open.
///
/// # Panics
/// If that takes more than a minute.
pub fn step_past(worker: &mut Worker, probe: &ProbeHandle<Time>, time: Time) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.less_equal(&time) {
        assert!(Instant::now() < deadline, "outputs never passed time {time}");
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
}

/// Steps `worker` until everything `probe` watches is complete (the inputs are dropped).
pub fn step_to_end(worker: &mut Worker, probe: &ProbeHandle<Time>) {
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
}
