//! How much each arrangement holds, from differential's own accounting, for `/metrics`.
//!
//! **Where the numbers come from.** With metrics on, every worker subscribes to two of its
//! log streams before it builds the dataflow (operators take their loggers when they are
//! built). `differential/arrange` reports, per operator id, every batch a trace takes in
//! (`Batch`), every merge of two batches into one (`Merge` once `complete`: the merged batch
//! replaces its two inputs, so updates that cancelled or were compacted leave the count
//! there), and the batches of a trace that is dropped (`Drop`); differential documents these
//! as balancing, so their running sum is the number of updates the trace holds. Its
//! `Batcher` events count the updates an arrange operator has received but not yet sealed
//! into a batch, because their times are not complete. The `timely` stream's `Operates`
//! events name the operator ids, so a sample carries the arrangement's operator name (`Join
//! left: enriched`, `Arrange: Aggregate: per_app`, a reduce's output under the reduce's
//! name). Each worker keeps its own tallies, written only by its own callbacks; a scrape sums
//! them by name, so operators that share a name are one sample.
//!
//! **What is counted.** Updates — `(key, value, time, diff)` tuples — not keys or rows. An
//! update and its retraction at a later time both count until a merge compacts them, so the
//! count can exceed the collection's size for a while; a merge in progress is counted by its
//! inputs until it completes. The counts lag the dataflow by at most one worker step (the
//! loggers are flushed at the end of each step).
//!
//! **No bytes.** Differential 0.26 reports sizes only in `Batcher` events, whose size and
//! capacity fields are zero for its stock batchers (their chunk types do not implement the
//! hook), and reports none for traces. Bytes computed from records would need each
//! arrangement's key and value types and the heap behind them, which the log does not carry,
//! so no byte figure is exposed rather than a guess.
//!
//! **Cost.** Nothing for a run without metrics; `sluice run` always has them (its status
//! line reads them), so there it is always on. The differential callback sees a few events
//! per batch and merge, and takes one uncontended lock per buffer of events. Timely's stream
//! cannot be subscribed to by kind: the operators built while it is registered log every
//! schedule and message they make for the rest of the run (a clock read and a push each, in
//! buffers the callback skips). The subscription is removed once the dataflow is built, so
//! parks and anything built later do not log. On the delivery (1 M records) and contacts
//! benchmark workloads with two workers the difference was within run-to-run noise.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use timely::logging::{TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

use crate::metrics::{Exposition, Kind};

/// The log stream differential's traces and batchers report to.
const DIFFERENTIAL: &str = "differential/arrange";
/// The log stream timely's operators report to (their creation, with names).
const TIMELY: &str = "timely";

/// What one arrangement holds, on one worker or summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Updates in the arrangement's trace.
    pub records: i64,
    /// Updates its batcher holds, not yet sealed into the trace; `None` when it reported no
    /// batcher (a reduce's output trace has none).
    pub pending: Option<i64>,
}

/// One worker's tallies, by operator id.
#[derive(Default)]
struct Tally {
    names: HashMap<usize, String>,
    held: HashMap<usize, Held>,
}

impl Tally {
    fn apply(&mut self, event: &DifferentialEvent) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        match event {
            DifferentialEvent::Batch(b) => {
                let held = self.held.entry(b.operator).or_default();
                held.records = held.records.saturating_add(count(b.length));
            }
            DifferentialEvent::Merge(m) => {
                // A merge's start changes nothing held: its inputs stay until it completes.
                if let Some(merged) = m.complete {
                    let held = self.held.entry(m.operator).or_default();
                    held.records = held
                        .records
                        .saturating_add(count(merged))
                        .saturating_sub(count(m.length1))
                        .saturating_sub(count(m.length2));
                }
            }
            DifferentialEvent::Drop(d) => {
                let held = self.held.entry(d.operator).or_default();
                held.records = held.records.saturating_sub(count(d.length));
            }
            DifferentialEvent::Batcher(b) => {
                let held = self.held.entry(b.operator).or_default();
                let pending = held.pending.get_or_insert(0);
                *pending = pending.saturating_add(b.records_diff as i64);
            }
            // Neither a missed merge deadline nor a new reader changes what a trace holds.
            DifferentialEvent::MergeShortfall(_) | DifferentialEvent::TraceShare(_) => {}
        }
    }
}

/// The arrangement tallies of every worker of a run, exposed at each scrape.
#[derive(Default)]
pub struct Arrangements {
    workers: Mutex<Vec<Arc<Mutex<Tally>>>>,
}

impl std::fmt::Debug for Arrangements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrangements").finish_non_exhaustive()
    }
}

/// A worker subscribed to operator names while it builds; see [`Attached::built`].
#[must_use = "call `built` once the dataflow is built, or every operator logs for the whole run"]
#[derive(Debug)]
pub struct Attached(());

impl Arrangements {
    /// No tallies yet: each worker adds its own when it [attaches](Self::attach).
    pub fn new() -> Arc<Arrangements> {
        Arc::default()
    }

    /// Subscribes `worker` to the log streams that tally its arrangements. Call it before the
    /// worker builds its dataflow, and [`Attached::built`] after.
    pub fn attach(&self, worker: &Worker) -> Attached {
        let tally = Arc::new(Mutex::new(Tally::default()));
        if let Ok(mut workers) = self.workers.lock() {
            workers.push(Arc::clone(&tally));
        }
        let Some(mut registry) = worker.log_register() else {
            return Attached(());
        };
        let sizes = Arc::clone(&tally);
        registry.insert::<DifferentialEventBuilder, _>(DIFFERENTIAL, move |_time, events| {
            if let Some(events) = events
                && let Ok(mut t) = sizes.lock()
            {
                for (_, event) in events.iter() {
                    t.apply(event);
                }
            }
        });
        registry.insert::<TimelyEventBuilder, _>(TIMELY, move |_time, events| {
            for (_, event) in events.iter_mut().flat_map(|e| e.drain(..)) {
                if let TimelyEvent::Operates(op) = event
                    && let Ok(mut t) = tally.lock()
                {
                    t.names.insert(op.id, op.name);
                }
            }
        });
        Attached(())
    }

    /// Every arrangement's holdings, summed over workers by operator name.
    pub fn totals(&self) -> BTreeMap<String, Held> {
        let mut totals: BTreeMap<String, Held> = BTreeMap::new();
        let Ok(workers) = self.workers.lock() else {
            return totals;
        };
        for tally in workers.iter() {
            let Ok(t) = tally.lock() else {
                continue;
            };
            for (id, held) in &t.held {
                let name = t.names.get(id).cloned().unwrap_or_else(|| format!("operator {id}"));
                let sum = totals.entry(name).or_default();
                sum.records = sum.records.saturating_add(held.records);
                if let Some(p) = held.pending {
                    let total = sum.pending.get_or_insert(0);
                    *total = total.saturating_add(p);
                }
            }
        }
        totals
    }

    /// Writes every arrangement's holdings into a scrape.
    pub fn expose(&self, x: &mut Exposition) {
        let totals = self.totals();
        x.family(
            "sluice_arrangement_records",
            Kind::Gauge,
            "Updates ((key, value, time, diff) tuples) each arrangement's trace holds, summed over workers.",
        );
        for (name, held) in &totals {
            x.sample(
                "sluice_arrangement_records",
                &[("arrangement", name)],
                held.records as f64,
            );
        }
        x.family(
            "sluice_arrangement_pending_records",
            Kind::Gauge,
            "Updates each arrangement has received but not yet sealed into its trace, summed over workers.",
        );
        for (name, held) in &totals {
            if let Some(pending) = held.pending {
                x.sample(
                    "sluice_arrangement_pending_records",
                    &[("arrangement", name)],
                    pending as f64,
                );
            }
        }
    }
}

impl Attached {
    /// Ends the subscription to operator names once `worker` has built its dataflow: the
    /// names it logged are taken now, and operators built later keep no logger.
    pub fn built(self, worker: &Worker) {
        if let Some(mut registry) = worker.log_register() {
            // The operators' creation is logged when the dataflow is built, into a buffer.
            registry.flush();
            registry.remove(TIMELY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use differential_dataflow::logging::{BatchEvent, DropEvent, MergeEvent};
    use timely::dataflow::operators::Probe;

    #[test]
    fn merges_replace_their_inputs_and_drops_empty_the_trace() {
        let mut t = Tally::default();
        let merge = |length1, length2, complete| {
            DifferentialEvent::Merge(MergeEvent {
                operator: 7,
                scale: 0,
                length1,
                length2,
                complete,
            })
        };
        for event in [
            DifferentialEvent::Batch(BatchEvent {
                operator: 7,
                length: 10,
            }),
            DifferentialEvent::Batch(BatchEvent { operator: 7, length: 5 }),
            merge(10, 5, None),
        ] {
            t.apply(&event);
        }
        assert_eq!(t.held[&7].records, 15);
        // Three of the fifteen updates cancelled in the merge.
        t.apply(&merge(10, 5, Some(12)));
        assert_eq!(t.held[&7].records, 12);
        t.apply(&DifferentialEvent::Drop(DropEvent {
            operator: 7,
            length: 12,
        }));
        assert_eq!(t.held[&7], Held::default());
    }

    #[test]
    fn an_arrangement_is_counted_by_its_name_until_it_is_dropped() {
        let arrangements = Arrangements::new();
        let shared = Arc::clone(&arrangements);
        timely::execute_directly(move |worker| {
            let attached = shared.attach(worker);
            let (mut input, probe, trace) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, rows) = scope.new_collection::<(u64, u64), isize>();
                let arranged = rows.arrange_by_key_named("Arrange: test");
                let (probe, _) = arranged.stream.clone().probe();
                (input, probe, arranged.trace)
            });
            attached.built(worker);
            for i in 0..100 {
                input.insert((i % 10, i));
            }
            // Cancels within the batch: never reaches the trace.
            input.insert((0, 1000));
            input.remove((0, 1000));
            input.advance_to(1);
            input.flush();
            while probe.less_than(&1) {
                worker.step();
            }
            worker.step();
            let totals = shared.totals();
            let held = totals.get("Arrange: test").copied().unwrap_or_default();
            assert_eq!(held.records, 100, "{totals:?}");
            assert_eq!(held.pending.unwrap_or(0), 0, "{totals:?}");
            drop(trace);
        });
        // The worker has dropped its dataflow, and with it the trace.
        let held = arrangements.totals().get("Arrange: test").copied().unwrap_or_default();
        assert_eq!(held.records, 0);
    }
}
