//! The sink contract and the operator that feeds a sink in time order.
//!
//! A sink sees, for each time, the consolidated updates `(row, diff)` of that time — sorted,
//! so output is deterministic whatever the number of workers — strictly in time order, and
//! after them the new frontier: "every time before F is final". The frontier is the only
//! commit signal in sluice; Kafka commits, continuation tokens and checkpoints hang on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::exec::RunStatus;
use crate::record::{Diff, Row, Rows, Time};
use crate::recovery::Checkpointer;

/// A sink's part in checkpoints: where it reports its position at each checkpoint's
/// frontier, and the times a restarted run must not write again.
pub struct SinkRecovery {
    /// The run's checkpoints.
    pub checkpointer: Arc<Checkpointer>,
    /// The frontier of the checkpoint the run restarted from: the sink's durable output
    /// already holds every time up to it, so updates at those times are skipped.
    pub skip_through: Option<Time>,
}

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's configuration cannot work (a directory that does not exist): fix the pipeline.
    #[error("{0}")]
    Config(String),
    /// Writing failed (disk full, broker down).
    #[error("{0}")]
    Io(String),
}

/// An output of the pipeline.
pub trait Sink {
    /// Writes the consolidated updates of one time, given in time order and sorted by row.
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError>;
    /// Everything before `frontier` has been written (`None`: the input ended); a sink makes
    /// what it wrote durable here (flush, commit a transaction).
    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError>;
    /// The frontier up to which output is durable (`None` = all of it), for checkpoints and
    /// source commits.
    fn durable(&self) -> Option<Time>;

    /// Whether the sink needs each time's updates consolidated and sorted (files do, for
    /// deterministic output). A sink that handles every update on its own — sends it,
    /// counts it — says no and saves the sort, which dominates wide append outputs.
    fn ordered(&self) -> bool {
        true
    }

    /// Makes everything written so far durable and returns what a restart needs to continue
    /// right after it (a file's length), for a checkpoint. `None`: the sink cannot resume
    /// exactly, and a restart writes again what came after the checkpoint.
    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(None)
    }
}

/// Encodes rows in a format other than the sinks' own JSON (`format = "cds-update"`).
///
/// Formats live with the connectors; sinks take an encoder from the wiring, so a file, Kafka
/// or Kinesis sink writes the same bytes for the same format.
pub trait Encode: Send + Sync {
    /// Appends the encoding of `row`'s value to `out`.
    fn encode(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), String>;
    /// The partition key of `row` for partitioned sinks (Kafka, Kinesis), if the format names one.
    fn partition_key(&self, _row: &Row) -> Option<String> {
        None
    }
}

/// Feeds `rows` to `sink` on worker 0; other workers pass `None` and forward their rows.
/// A `parallel` sink instead has an instance on every worker, fed that worker's rows.
///
/// After each step the sink's durable frontier is published in `status` at `slot`, which is
/// what sources wait for before committing their positions.
///
/// A sink that fails records the error in `status` and stops receiving updates; the run
/// loop sees the error and ends the run.
pub fn sink_rows<'s>(
    rows: Rows<'s>,
    name: &str,
    mut sink: Option<Box<dyn Sink>>,
    status: Arc<RunStatus>,
    (parallel, slot): (bool, usize),
    recovery: Option<SinkRecovery>,
) {
    // Routing to oneself keeps a parallel sink's rows on the worker that made them.
    let writer = if parallel { rows.inner.scope().index() as u64 } else { 0 };
    let mut stash: BTreeMap<Time, Vec<(Row, Diff)>> = BTreeMap::new();
    let mut last_frontier: Option<Option<Time>> = None;
    let label = name.to_owned();
    let skip_through = recovery.as_ref().and_then(|r| r.skip_through);
    // The newest checkpoint frontier this instance has reported its position for.
    let mut last_cut = skip_through.unwrap_or(0);
    rows.inner.sink(
        Exchange::new(move |_: &(Row, Time, Diff)| writer),
        &format!("Sink: {name}"),
        move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for (row, time, diff) in data.drain(..) {
                    if skip_through.is_some_and(|s| time <= s) {
                        continue;
                    }
                    stash.entry(time).or_default().push((row, diff));
                }
            });
            let current = frontier.frontier().first().copied();
            let Some(target) = sink.as_mut() else {
                stash.clear();
                return;
            };
            let ready: Vec<Time> = stash
                .keys()
                .copied()
                .take_while(|t| current.is_none_or(|f| *t < f))
                .collect();
            let mut result = Ok(());
            // The position a checkpoint at `T` needs is the one after every time before `T`.
            let cut_at = recovery
                .as_ref()
                .and_then(|r| r.checkpointer.in_progress())
                .filter(|t| *t > last_cut);
            let cut = |target: &mut Box<dyn Sink>, at: Time| -> Result<(), SinkError> {
                if let Some(r) = &recovery {
                    let position = target.checkpoint()?;
                    r.checkpointer.sink_part(at, &label, position);
                }
                Ok(())
            };
            for time in ready {
                if let Some(at) = cut_at.filter(|at| time >= *at && *at > last_cut) {
                    result = cut(target, at);
                    last_cut = at;
                    if result.is_err() {
                        break;
                    }
                }
                let Some(mut updates) = stash.remove(&time) else {
                    continue;
                };
                if target.ordered() {
                    consolidate_rows(&mut updates);
                }
                if updates.is_empty() {
                    continue;
                }
                status.count_out(&label, updates.len());
                result = target.write(time, &updates);
                if result.is_err() {
                    break;
                }
            }
            // Nothing at or after the checkpoint's frontier yet, but every time before it written.
            if let Some(at) = cut_at.filter(|at| *at > last_cut && current.is_none_or(|f| f > *at))
                && result.is_ok()
                && stash.keys().next().is_none_or(|t| *t >= at)
            {
                result = cut(target, at);
                last_cut = at;
            }
            if result.is_ok() && last_frontier != Some(current) {
                last_frontier = Some(current);
                result = target.commit(current);
                if result.is_ok() && current.is_none() {
                    status.sink_closed();
                }
            }
            if result.is_ok() {
                // Asynchronous sinks (Kafka) become durable as acknowledgements arrive.
                status.set_durable(slot, target.durable());
            }
            if let Err(e) = result {
                // A failed sink receives nothing more; the run loop ends the run on the error.
                status.fail(format!("sink {label}: {e}"));
                sink = None;
                stash.clear();
            }
        },
    );
}

/// Sorts updates by row and sums the diffs of equal rows, dropping those that cancel.
///
/// As differential's `consolidate`, but with an unstable sort (equal rows are merged, so
/// their order is moot): rows are maps, each comparison walks them, and the sink sorts every
/// update it writes.
fn consolidate_rows(updates: &mut Vec<(Row, Diff)>) {
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    updates.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    updates.retain(|(_, d)| *d != 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    #[test]
    fn consolidation_sums_equal_rows_drops_cancelled_ones_and_sorts() {
        let row = |k: i64| Row::derived(Value::Int(k), Value::Null);
        let mut updates = vec![
            (row(3), 1),
            (row(1), 1),
            (row(2), 1),
            (row(1), -1),
            (row(3), 2),
            (row(2), -1),
        ];
        consolidate_rows(&mut updates);
        assert_eq!(updates, vec![(row(3), 3)]);
        let mut updates = vec![(row(2), 1), (row(1), -1), (row(4), 0)];
        consolidate_rows(&mut updates);
        assert_eq!(updates, vec![(row(1), -1), (row(2), 1)]);
    }
}
