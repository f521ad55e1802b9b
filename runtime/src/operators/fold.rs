//! `keyed_fold`: per-key state folded from append-only events, output as a collection.
//!
//! This is the engine's one mechanism for "state bounded by the number of keys, never by the
//! number of events": the upsert envelope (latest value per key, tombstones forget), `latest`
//! by a field, append-only aggregates and the delivery dataflow's latest report per token all
//! fold events into one state per key and render that state as at most one output record.
//!
//! Semantics, per key (keys are exchanged by their `Hashable` hash, so one worker owns each):
//!
//! * Events wait until the input frontier passes their time `t`; then all events of `t` are
//!   sorted by `(K, E)` and applied in that order. Callers pick the order within a time through
//!   `E`'s `Ord`: `(Pos, value)` replays arrival order, `(ts, report)` makes "latest by ts"
//!   independent of arrival order. Times are processed in increasing order.
//! * For each key touched at `t` the output changes from `render(state before)` to
//!   `render(state after)`: `(old, t, -1)` and `(new, t, +1)`, only when they differ.
//! * The fold may set the state to `None`, which forgets the key (a tombstone).
//!
//! Two inputs are accepted: a timely stream of `(K, E)`, whose events happen at their message's
//! time, and a differential collection of `(K, E)`, where an update `((k, e), t, d)` with
//! `d > 0` is `d` events at `t`. Retractions (`d <= 0`) are ignored: events are facts that
//! happened, and a fold cannot be un-applied. Callers that need retractions use differential's
//! `reduce`, whose state is the history, not a summary.
//!
//! Checkpoints: [`keyed_fold_core`](KeyedFold::keyed_fold_core) returns a [`FoldState`] handle
//! on the worker's state (`len`, `snapshot`). [`keyed_fold_checkpointed`](KeyedFold::keyed_fold_checkpointed)
//! also takes a [`FoldCheckpoint`]: when a cut at frontier `T` is requested, the operator copies
//! its state as of `T` — every time before `T` applied, none after — whatever the frontier
//! does in between; and a fold started from a restored state emits `render` of every
//! restored key it owns at the restore time, which is all downstream operators need to
//! rebuild (docs/decisions.md, "Checkpoints").

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::{AsCollection, Data, ExchangeData, Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::record::{Diff, Time};

/// Folds keyed events into per-key state and renders each key's state as a collection.
pub trait KeyedFold<'s, K, E>: Sized {
    /// Folds events into one state per key and outputs `render(state)` for every key.
    ///
    /// `fold` applies one event to a key's state (`None` before the key's first event);
    /// leaving `None` forgets the key. `render` gives the key's output record, if any.
    ///
    /// # Examples
    /// ```
    /// use differential_dataflow::input::Input;
    /// use sluice_runtime::operators::fold::KeyedFold;
    ///
    /// timely::example(|scope| {
    ///     let (_input, events) = scope.new_collection_from(vec![(1u32, 3), (1, 5), (2, 1)]);
    ///     // The largest value seen per key.
    ///     events.keyed_fold_named(
    ///         "Max",
    ///         |_k, max: &mut Option<i32>, v| *max = Some(max.map_or(v, |m| m.max(v))),
    ///         |k, max| Some((*k, *max)),
    ///     );
    /// });
    /// ```
    fn keyed_fold_named<S, O, F, R>(self, name: &str, fold: F, render: R) -> VecCollection<'s, Time, O, Diff>
    where
        S: 'static,
        O: Data,
        F: FnMut(&K, &mut Option<S>, E) + 'static,
        R: FnMut(&K, &S) -> Option<O> + 'static,
    {
        self.keyed_fold_core(name, fold, render).0
    }

    /// As [`keyed_fold_named`](KeyedFold::keyed_fold_named), also returning a handle on the
    /// calling worker's part of the state (for metrics, tests and checkpoints).
    fn keyed_fold_core<S, O, F, R>(
        self,
        name: &str,
        fold: F,
        render: R,
    ) -> (VecCollection<'s, Time, O, Diff>, FoldState<K, S>)
    where
        S: 'static,
        O: Data,
        F: FnMut(&K, &mut Option<S>, E) + 'static,
        R: FnMut(&K, &S) -> Option<O> + 'static,
    {
        self.keyed_fold_with(name, (fold, render), None)
    }

    /// As [`keyed_fold_core`](KeyedFold::keyed_fold_core), with its state cut at requested
    /// frontiers and started from `checkpoint`'s restored state, if any.
    fn keyed_fold_checkpointed<S, O, F, R>(
        self,
        name: &str,
        fold: F,
        render: R,
        checkpoint: &FoldCheckpoint<K, S>,
    ) -> (VecCollection<'s, Time, O, Diff>, FoldState<K, S>)
    where
        S: Clone + 'static,
        O: Data,
        F: FnMut(&K, &mut Option<S>, E) + 'static,
        R: FnMut(&K, &S) -> Option<O> + 'static,
    {
        self.keyed_fold_with(name, (fold, render), Some(checkpoint.clone()))
    }

    /// The fold behind the others, over this kind of input: with checkpoint hooks or without.
    fn keyed_fold_with<S, O, F, R>(
        self,
        name: &str,
        fold_render: (F, R),
        checkpoint: Option<FoldCheckpoint<K, S>>,
    ) -> (VecCollection<'s, Time, O, Diff>, FoldState<K, S>)
    where
        S: 'static,
        O: Data,
        F: FnMut(&K, &mut Option<S>, E) + 'static,
        R: FnMut(&K, &S) -> Option<O> + 'static;
}

impl<'s, K, E> KeyedFold<'s, K, E> for StreamVec<'s, Time, (K, E)>
where
    K: ExchangeData + Hash,
    E: ExchangeData,
{
    fn keyed_fold_with<S, O, F, R>(
        self,
        name: &str,
        fold_render: (F, R),
        checkpoint: Option<FoldCheckpoint<K, S>>,
    ) -> (VecCollection<'s, Time, O, Diff>, FoldState<K, S>)
    where
        S: 'static,
        O: Data,
        F: FnMut(&K, &mut Option<S>, E) + 'static,
        R: FnMut(&K, &S) -> Option<O> + 'static,
    {
        fold_operator(
            self,
            name,
            |(k, _): &(K, E)| k.hashed(),
            |(k, e), time| Some((k, e, time, 1)),
            fold_render,
            checkpoint,
        )
    }
}

impl<'s, K, E> KeyedFold<'s, K, E> for VecCollection<'s, Time, (K, E), Diff>
where
    K: ExchangeData + Hash,
    E: ExchangeData,
{
    fn keyed_fold_with<S, O, F, R>(
        self,
        name: &str,
        fold_render: (F, R),
        checkpoint: Option<FoldCheckpoint<K, S>>,
    ) -> (VecCollection<'s, Time, O, Diff>, FoldState<K, S>)
    where
        S: 'static,
        O: Data,
        F: FnMut(&K, &mut Option<S>, E) + 'static,
        R: FnMut(&K, &S) -> Option<O> + 'static,
    {
        fold_operator(
            self.inner,
            name,
            |((k, _), _, _): &((K, E), Time, Diff)| k.hashed(),
            |((k, e), time, diff), _| usize::try_from(diff).ok().filter(|&n| n > 0).map(|n| (k, e, time, n)),
            fold_render,
            checkpoint,
        )
    }
}

/// A handle on one worker's fold state: the state of the keys that hash to this worker.
///
/// Shared with the operator; read it between steps of the worker, never from inside an operator.
pub struct FoldState<K, S> {
    map: Rc<RefCell<HashMap<K, S>>>,
}

impl<K, S> Clone for FoldState<K, S> {
    fn clone(&self) -> Self {
        FoldState {
            map: Rc::clone(&self.map),
        }
    }
}

impl<K: Ord + Clone, S: Clone> FoldState<K, S> {
    /// Number of keys with state on this worker.
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Whether this worker holds no state.
    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }

    /// A copy of this worker's state, sorted by key (so it can be written deterministically).
    pub fn snapshot(&self) -> Vec<(K, S)> {
        sorted_copy(&self.map.borrow())
    }
}

/// A copy of a fold's state, sorted by key (keys are unique, so any sort gives one order).
fn sorted_copy<K: Ord + Clone, S: Clone>(map: &HashMap<K, S>) -> SavedState<K, S> {
    let mut all: SavedState<K, S> = map.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Requests for cuts: the newest frontier a checkpoint was requested at (0: none yet).
///
/// One per process, shared by every stateful operator of every worker. It must be set
/// before any input reaches the requested frontier, so that no operator has passed it.
#[derive(Clone, Default)]
pub struct CutRequests(Arc<AtomicU64>);

impl CutRequests {
    /// Requests a cut of every stateful operator's state at `frontier`.
    pub fn request(&self, frontier: Time) {
        self.0.fetch_max(frontier, Ordering::SeqCst);
    }

    /// The newest requested frontier, if any.
    pub fn latest(&self) -> Option<Time> {
        Some(self.0.load(Ordering::SeqCst)).filter(|t| *t > 0)
    }
}

/// A fold's state as saved: every key's state, sorted by key.
pub type SavedState<K, S> = Vec<(K, S)>;

/// A saved state and the frontier it was cut at, to start a fold from.
pub type Restore<K, S> = Option<(Time, SavedState<K, S>)>;

/// One worker's checkpoint hooks of one fold: cuts taken, and the state to start from.
pub struct FoldCheckpoint<K, S> {
    requests: CutRequests,
    taken: Rc<RefCell<BTreeMap<Time, SavedState<K, S>>>>,
    restore: Rc<RefCell<Restore<K, S>>>,
    /// Copies a worker's state, sorted by key (so only checkpointed folds need `Clone`).
    copy: fn(&HashMap<K, S>) -> SavedState<K, S>,
}

impl<K, S> Clone for FoldCheckpoint<K, S> {
    fn clone(&self) -> Self {
        FoldCheckpoint {
            requests: self.requests.clone(),
            taken: Rc::clone(&self.taken),
            restore: Rc::clone(&self.restore),
            copy: self.copy,
        }
    }
}

impl<K: Ord + Clone, S: Clone> FoldCheckpoint<K, S> {
    /// Hooks that cut at `requests`; `restore` is a saved state and the time it was cut at
    /// (all workers may be given all of it: each keeps the keys it owns).
    pub fn new(requests: CutRequests, restore: Restore<K, S>) -> Self {
        FoldCheckpoint {
            requests,
            taken: Rc::default(),
            restore: Rc::new(RefCell::new(restore)),
            copy: sorted_copy,
        }
    }
}

impl<K, S> FoldCheckpoint<K, S> {
    /// For operators that keep their own per-key state: the saved state to start from, once.
    pub fn take_restore(&self) -> Option<(Time, SavedState<K, S>)> {
        self.restore.borrow_mut().take()
    }

    /// For operators that keep their own per-key state: the newest requested cut frontier.
    pub fn requested(&self) -> Option<Time> {
        self.requests.latest()
    }

    /// For operators that keep their own per-key state: records `map` as their state at
    /// `frontier` (every time before it applied, none after).
    pub fn save(&self, frontier: Time, map: &HashMap<K, S>) {
        self.taken.borrow_mut().insert(frontier, (self.copy)(map));
    }

    /// Whether the operator has cut its state at `frontier`.
    pub fn has(&self, frontier: Time) -> bool {
        self.taken.borrow().contains_key(&frontier)
    }

    /// Removes and returns the state cut at `frontier`, once the operator has taken it.
    pub fn take(&self, frontier: Time) -> Option<SavedState<K, S>> {
        self.taken.borrow_mut().remove(&frontier)
    }
}

/// Events of one time waiting for the frontier: the capability to emit at that time, and the
/// events as `(key, event, repetitions)`.
type Pending<K, E> = BTreeMap<Time, (Capability<Time>, Vec<(K, E, usize)>)>;

/// The operator behind both [`KeyedFold`] impls; `split` turns an input record and its
/// message's time into `(key, event, time, repetitions)`, or nothing to skip it.
fn fold_operator<'s, D, K, E, S, O, F, R>(
    stream: StreamVec<'s, Time, D>,
    name: &str,
    route: impl Fn(&D) -> u64 + 'static,
    mut split: impl FnMut(D, Time) -> Option<(K, E, Time, usize)> + 'static,
    (mut fold, mut render): (F, R),
    checkpoint: Option<FoldCheckpoint<K, S>>,
) -> (VecCollection<'s, Time, O, Diff>, FoldState<K, S>)
where
    D: ExchangeData,
    K: ExchangeData + Hash,
    E: ExchangeData,
    S: 'static,
    O: Data,
    F: FnMut(&K, &mut Option<S>, E) + 'static,
    R: FnMut(&K, &S) -> Option<O> + 'static,
{
    let state = FoldState {
        map: Rc::new(RefCell::new(HashMap::new())),
    };
    let handle = state.clone();
    let (index, peers) = (stream.scope().index(), stream.scope().peers());
    let stream = stream.unary_frontier::<CapacityContainerBuilder<Vec<(O, Time, Diff)>>, _, _, _>(
        Exchange::new(move |d: &D| route(d)),
        name,
        // The default capability is dropped at once: the operator holds capabilities only for
        // times with pending events, so an idle fold never holds back its output frontier.
        // A restored fold keeps it until its first activation, to emit the restored state.
        move |default, _info| {
            let mut pending: Pending<K, E> = BTreeMap::new();
            let restore = checkpoint.as_ref().and_then(|c| c.restore.borrow_mut().take());
            let mut restore = restore.map(|(time, pairs)| (default.delayed(&time), pairs));
            // A fold cuts each requested frontier once, from the newest it has restored or cut.
            let mut last_cut: Time = restore.as_ref().map_or(0, |(cap, _)| *cap.time());
            move |(input, frontier), output| {
                let port = output.output_index();
                if let Some((cap, pairs)) = restore.take() {
                    let mut map = state.map.borrow_mut();
                    let mut session = output.session(&cap);
                    for (key, s) in pairs {
                        // Every worker is given the whole state; it keeps the keys routed to it.
                        if (key.hashed() % peers as u64) as usize != index {
                            continue;
                        }
                        if let Some(rendered) = render(&key, &s) {
                            session.give((rendered, *cap.time(), 1));
                        }
                        map.insert(key, s);
                    }
                }
                input.for_each_stamp(|cap, containers| {
                    // Only messages sent under no capability lack a time; they make no progress
                    // claims and nothing in the engine sends them, so they cannot be placed.
                    let Some(least) = cap.least().copied() else {
                        tracing::warn!("keyed fold received events without a time; dropped");
                        return;
                    };
                    for container in containers {
                        for datum in container.drain(..) {
                            if let Some((key, event, time, n)) = split(datum, least) {
                                pending
                                    .entry(time)
                                    .or_insert_with(|| (cap.delayed(&time, port), Vec::new()))
                                    .1
                                    .push((key, event, n));
                            }
                        }
                    }
                });

                let mut map = state.map.borrow_mut();
                let cut_at = checkpoint
                    .as_ref()
                    .and_then(|c| c.requests.latest())
                    .filter(|t| *t > last_cut);
                let cut = |map: &HashMap<K, S>, at: Time| {
                    if let Some(c) = &checkpoint {
                        c.taken.borrow_mut().insert(at, (c.copy)(map));
                    }
                };
                while let Some(ready) = pending.first_entry() {
                    if frontier.less_equal(ready.key()) {
                        break;
                    }
                    // The state before the first time at or after a requested frontier is
                    // the state as of that frontier.
                    if let Some(at) = cut_at.filter(|at| *ready.key() >= *at && *at > last_cut) {
                        cut(&map, at);
                        last_cut = at;
                    }
                    let (time, (cap, mut events)) = ready.remove_entry();
                    events.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
                    let mut session = output.session(&cap);
                    let mut events = events.into_iter().peekable();
                    while let Some((key, event, n)) = events.next() {
                        let mut current = map.remove(&key);
                        let old = current.as_ref().and_then(|s| render(&key, s));
                        apply(&mut fold, &key, &mut current, event, n);
                        while let Some((_, event, n)) = events.next_if(|(k, _, _)| *k == key) {
                            apply(&mut fold, &key, &mut current, event, n);
                        }
                        let new = current.as_ref().and_then(|s| render(&key, s));
                        if let Some(s) = current {
                            map.insert(key, s);
                        }
                        if old != new {
                            if let Some(old) = old {
                                session.give((old, time, -1));
                            }
                            if let Some(new) = new {
                                session.give((new, time, 1));
                            }
                        }
                    }
                    // `cap` drops here, releasing the time.
                }
                // No events at or after the frontier yet, but every time before it is applied.
                if let Some(at) = cut_at.filter(|at| *at > last_cut && !frontier.less_equal(at)) {
                    cut(&map, at);
                    last_cut = at;
                }
            }
        },
    );
    (stream.as_collection(), handle)
}

/// Applies an event `n` times (an update with multiplicity `n` is `n` equal events).
fn apply<K, E: Clone, S>(
    fold: &mut impl FnMut(&K, &mut Option<S>, E),
    key: &K,
    state: &mut Option<S>,
    event: E,
    n: usize,
) {
    for _ in 1..n {
        fold(key, state, event.clone());
    }
    fold(key, state, event);
}

#[cfg(test)]
mod tests;
