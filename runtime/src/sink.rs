//! The sink contract and the operator that feeds a sink in time order.
//!
//! A sink sees, for each time, the consolidated updates `(row, diff)` of that time — sorted,
//! so output is deterministic whatever the number of workers — strictly in time order, and
//! after them the new frontier: "every time before F is final". The frontier is the only
//! commit signal in sluice; Kafka commits, continuation tokens and checkpoints hang on it.
//!
//! What a sink writes for a time's updates depends only on its mode, so every sink makes its
//! records with [`for_each_record`]: a file line, a Kafka record and a Kinesis record of the
//! same update carry the same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::exec::RunStatus;
use crate::record::{Diff, Row, Rows, Time};
use crate::recovery::Checkpointer;
use crate::spec::SinkMode;
use crate::value::{Json, Value};

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
    /// right after it (a file's length), for the checkpoint at `frontier`: every time before
    /// it has been written, none after (its commit may not have come yet). `None`: the sink
    /// cannot resume exactly, and a restart writes again what came after the checkpoint.
    fn checkpoint(&mut self, _frontier: Time) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(None)
    }
}

/// The commits of a sink whose writes are acknowledged later (Kafka, Kinesis): each commit's
/// frontier with the number of sends before it. A commit is durable once every send before
/// it is acknowledged, and acknowledgements arrive in no particular relation to commits.
#[derive(Debug)]
pub struct PendingCommits {
    pending: std::collections::VecDeque<(Option<Time>, u64)>,
    durable: Option<Time>,
}

impl Default for PendingCommits {
    /// Nothing committed: nothing is durable (the frontier is the start of time).
    fn default() -> Self {
        PendingCommits {
            pending: std::collections::VecDeque::new(),
            durable: Some(0),
        }
    }
}

impl PendingCommits {
    /// Records a commit of everything before `frontier` (`None`: all), after `sent` sends.
    pub fn commit(&mut self, frontier: Option<Time>, sent: u64) {
        self.pending.push_back((frontier, sent));
    }

    /// The durable frontier once the first `acked` sends are acknowledged, without forgetting
    /// the commits it passes (for a look between commits).
    pub fn durable(&self, acked: u64) -> Option<Time> {
        self.passed(acked)
            .checked_sub(1)
            .and_then(|i| self.pending.get(i))
            .map_or(self.durable, |(frontier, _)| *frontier)
    }

    /// Moves the durable frontier past every commit whose sends are all acknowledged.
    pub fn advance(&mut self, acked: u64) {
        let done = self.passed(acked);
        if let Some(&(frontier, _)) = done.checked_sub(1).and_then(|i| self.pending.get(i)) {
            self.durable = frontier;
            self.pending.drain(..done);
        }
    }

    /// How many of the oldest commits have every send before them acknowledged.
    fn passed(&self, acked: u64) -> usize {
        self.pending.iter().take_while(|(_, sent)| *sent <= acked).count()
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

/// One record of a sink's output: a line of a file, a Kafka record, a Kinesis record.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    /// The key the record is written under: in `upsert` mode the row's key, even a null one
    /// (the record replaces that key's value); otherwise the row's key unless it is null (an
    /// unkeyed collection).
    pub key: Option<&'a Value>,
    /// The record's data (see [`for_each_record`]); `None` for an upsert tombstone.
    pub payload: Option<&'a [u8]>,
    row: &'a Row,
    /// The format whose partition key [`Record::format_key`] gives (append mode only).
    encoder: Option<&'a dyn Encode>,
}

impl Record<'_> {
    /// The format's partition key for the record's row, in append mode with an encoder that
    /// names one. Made on demand: only partitioned sinks ask for it.
    pub fn format_key(&self) -> Option<String> {
        self.encoder.and_then(|e| e.partition_key(self.row))
    }
}

/// Turns one time's updates, sorted by row as [`Sink::write`] gets them, into the records of
/// `mode`, handing each to `emit` in order:
///
/// - `upsert`: per key, each value inserted at this time as JSON, or, when the key's values
///   were only retracted, one tombstone (no payload);
/// - `changelog`: per update, `{"time": T, "diff": D, "key": K, "value": V}`, `key` left out
///   for an unkeyed row;
/// - `append`: per insertion, in the order of source positions (derived rows last), the row
///   encoded by `encoder` (its value as JSON without one), once per unit of its diff;
///   retractions are not written.
///
/// The payloads are made in one buffer, lent to `emit` for each record in turn.
pub fn for_each_record(
    mode: SinkMode,
    encoder: Option<&dyn Encode>,
    time: Time,
    updates: &[(Row, Diff)],
    mut emit: impl FnMut(Record<'_>) -> Result<(), SinkError>,
) -> Result<(), SinkError> {
    let json = |e: serde_json::Error| SinkError::Io(e.to_string());
    let buf = &mut Vec::with_capacity(256);
    match mode {
        SinkMode::Upsert => {
            // Sorted by row, so each key's updates are adjacent.
            for group in updates.chunk_by(|a, b| a.0.key == b.0.key) {
                let first = &group[0].0;
                let mut inserted = false;
                for (row, _) in group.iter().filter(|(_, d)| *d > 0) {
                    inserted = true;
                    buf.clear();
                    serde_json::to_writer(&mut *buf, &Json(&row.val)).map_err(json)?;
                    emit(Record {
                        key: Some(&first.key),
                        payload: Some(buf),
                        row,
                        encoder: None,
                    })?;
                }
                if !inserted {
                    emit(Record {
                        key: Some(&first.key),
                        payload: None,
                        row: first,
                        encoder: None,
                    })?;
                }
            }
        }
        SinkMode::Changelog => {
            let t = Value::from(time);
            for (row, diff) in updates {
                let d = Value::Int(*diff as i64);
                let key = (!row.key.is_null()).then_some(&row.key);
                let fields = [
                    ("time", Some(&t)),
                    ("diff", Some(&d)),
                    ("key", key),
                    ("value", Some(&row.val)),
                ];
                buf.clear();
                buf.push(b'{');
                for (i, (name, value)) in fields.iter().filter_map(|(n, v)| Some((n, (*v)?))).enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    serde_json::to_writer(&mut *buf, name).map_err(json)?;
                    buf.push(b':');
                    serde_json::to_writer(&mut *buf, &Json(value)).map_err(json)?;
                }
                buf.push(b'}');
                emit(Record {
                    key,
                    payload: Some(buf),
                    row,
                    encoder: None,
                })?;
            }
        }
        SinkMode::Append => {
            let mut inserted: Vec<&(Row, Diff)> = updates.iter().filter(|(_, d)| *d > 0).collect();
            // Stable: rows made from one position (several records of one event) stay sorted.
            inserted.sort_by_key(|(row, _)| row.pos);
            for (row, diff) in inserted {
                buf.clear();
                match encoder {
                    Some(e) => e.encode(row, buf).map_err(SinkError::Io)?,
                    None => serde_json::to_writer(&mut *buf, &Json(&row.val)).map_err(json)?,
                }
                let key = (!row.key.is_null()).then_some(&row.key);
                for _ in 0..*diff {
                    emit(Record {
                        key,
                        payload: Some(buf),
                        row,
                        encoder,
                    })?;
                }
            }
        }
    }
    Ok(())
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
                    let position = target.checkpoint(at)?;
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
                if result.is_ok() {
                    status.set_frontier(&label, current);
                }
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
pub fn consolidate_rows(updates: &mut Vec<(Row, Diff)>) {
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

    #[test]
    fn a_commit_is_durable_once_every_send_before_it_is_acknowledged() {
        let mut c = PendingCommits::default();
        assert_eq!(c.durable(0), Some(0), "nothing committed: nothing durable");
        c.commit(Some(10), 3);
        c.commit(Some(20), 5);
        c.commit(None, 9);
        assert_eq!(c.durable(2), Some(0));
        assert_eq!(c.durable(4), Some(10), "a look does not forget");
        assert_eq!(c.durable(4), Some(10));
        c.advance(5);
        assert_eq!(c.durable(5), Some(20));
        assert_eq!(c.durable(0), Some(20), "advanced commits stay durable");
        c.advance(9);
        assert_eq!(c.durable(9), None, "everything");
    }
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

    /// Every record `for_each_record` makes, as (key JSON, format key, payload text).
    fn records(
        mode: SinkMode,
        encoder: Option<&dyn Encode>,
        updates: &[(Row, Diff)],
    ) -> Vec<(Option<String>, Option<String>, Option<String>)> {
        let mut out = Vec::new();
        for_each_record(mode, encoder, 7, updates, |r| {
            out.push((
                r.key.map(Value::to_json_string),
                r.format_key(),
                r.payload.map(|p| String::from_utf8_lossy(p).into_owned()),
            ));
            Ok(())
        })
        .expect("records");
        out
    }

    fn at(key: Value, val: i64, offset: u64) -> Row {
        Row {
            key,
            val: Value::map([("v", Value::Int(val))]),
            pos: crate::record::Pos {
                source: 0,
                partition: 0,
                offset,
            },
        }
    }

    fn text(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn upsert_records_are_each_keys_new_values_or_a_tombstone() {
        let (a, b, null) = (Value::from("a"), Value::from("b"), Value::Null);
        let updates = [
            (at(a.clone(), 1, 0), -1),
            (at(a.clone(), 2, 1), 1),
            (at(b.clone(), 3, 2), -1),
            (at(null.clone(), 4, 3), -1),
        ];
        assert_eq!(
            records(SinkMode::Upsert, None, &updates),
            vec![
                (text(r#""a""#), None, text(r#"{"v":2}"#)),
                (text(r#""b""#), None, None),
                // A null key is still the key whose value the record replaces.
                (text("null"), None, None),
            ]
        );
    }

    #[test]
    fn changelog_records_carry_time_diff_key_and_value_and_no_key_when_unkeyed() {
        let updates = [(at(Value::from("a"), 1, 0), -1), (at(Value::Null, 2, 1), 2)];
        assert_eq!(
            records(SinkMode::Changelog, None, &updates),
            vec![
                (
                    text(r#""a""#),
                    None,
                    text(r#"{"time":7,"diff":-1,"key":"a","value":{"v":1}}"#)
                ),
                (None, None, text(r#"{"time":7,"diff":2,"value":{"v":2}}"#)),
            ]
        );
    }

    /// Encodes a row as its value's `v` in brackets, partitioned by that number.
    struct Bracketed;

    impl Encode for Bracketed {
        fn encode(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), String> {
            let v = row.val.get("v").map(Value::to_json_string).unwrap_or_default();
            out.extend_from_slice(format!("[{v}]").as_bytes());
            Ok(())
        }

        fn partition_key(&self, row: &Row) -> Option<String> {
            row.val.get("v").map(|v| format!("p{}", v.to_json_string()))
        }
    }

    #[test]
    fn append_records_are_insertions_in_source_order_repeated_per_diff() {
        // Sorted by row; by position the order is c, a, then the derived row.
        let mut derived = at(Value::from("b"), 0, 0);
        derived.pos = crate::record::Pos::NONE;
        let updates = [
            (at(Value::from("a"), 1, 5), 1),
            (derived, 1),
            (at(Value::Null, 3, 2), 2),
            (at(Value::from("d"), 4, 1), -1),
        ];
        assert_eq!(
            records(SinkMode::Append, None, &updates),
            vec![
                (None, None, text(r#"{"v":3}"#)),
                (None, None, text(r#"{"v":3}"#)),
                (text(r#""a""#), None, text(r#"{"v":1}"#)),
                (text(r#""b""#), None, text(r#"{"v":0}"#)),
            ]
        );
        assert_eq!(
            records(SinkMode::Append, Some(&Bracketed), &updates[..1]),
            vec![(text(r#""a""#), text("p1"), text("[1]"))]
        );
        // Only append records are encoded, and have a format key.
        assert_eq!(
            records(SinkMode::Upsert, Some(&Bracketed), &updates[..1]),
            vec![(text(r#""a""#), None, text(r#"{"v":1}"#))]
        );
    }

    #[test]
    fn an_error_of_emit_stops_the_records() {
        let updates = [(at(Value::from("a"), 1, 0), 3)];
        let mut calls = 0;
        let result = for_each_record(SinkMode::Append, None, 1, &updates, |_| {
            calls += 1;
            Err(SinkError::Io("full".to_owned()))
        });
        assert!(matches!(result, Err(SinkError::Io(m)) if m == "full"));
        assert_eq!(calls, 1);
    }
}
