//! Timestamps for message ops: unique, strictly increasing, and derived from the epoch and the
//! input position only, so a replay of the same input at the same epochs gives the same ones —
//! whatever the number of workers.
//!
//! An op at epoch `t` gets `t << RANK_BITS | rank`, where `rank` is the op's place among all
//! ops of epoch `t` ordered by source position. Ranking needs every op of the epoch, spread
//! over workers, so it takes two steps:
//!
//! 1. ops are exchanged by partition, so each partition's ops of an epoch meet on one worker,
//!    which numbers them in position order and broadcasts one count per partition;
//! 2. once every count of the epoch is in (the frontier has passed it), each worker adds to
//!    its ops the counts of the partitions ordered before theirs.
//!
//! Epochs increase by at least one millisecond, so timestamps of later epochs are larger than
//! any of earlier ones, across restarts too (the epoch clock never goes back past a checkpoint).
//! The top bits are the epoch in milliseconds, which is what `created` and `edited` show.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::{AsCollection, Hashable};
use sluice_runtime::operators::named::{Coll, split_named};
use sluice_runtime::{DeadLetter, DeadLetters, Diff, Row, Rows, Time};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};

/// Bits of a timestamp that number the ops of one epoch.
pub const RANK_BITS: u32 = 21;

/// The most ops one epoch can hold (2,097,152); more are dead-lettered, never given a
/// timestamp that could collide with the next millisecond's.
pub const MAX_OPS_PER_EPOCH: u64 = 1 << RANK_BITS;

/// The timestamp of the op ranked `rank` in epoch `epoch`, if it has one.
pub fn timestamp(epoch: Time, rank: u64) -> Option<u64> {
    (rank < MAX_OPS_PER_EPOCH && epoch < (1 << (64 - RANK_BITS))).then_some((epoch << RANK_BITS) | rank)
}

/// The epoch (milliseconds since the Unix epoch) a timestamp was given in.
pub fn timestamp_epoch(timestamp: u64) -> Time {
    timestamp >> RANK_BITS
}

/// A partition of a source: `(source, partition)` of a position.
type Part = (u32, u32);

/// An op with its partition and its index among the partition's ops of its epoch.
type NumberedOp = (Part, u64, Row);

/// What the numbering step sends on: an op with its index in its partition's ops of the
/// epoch, or the number of those ops.
#[derive(Clone, Debug)]
enum Numbered {
    Op(Part, u64, Row),
    Count(Part, u64),
}

/// Gives every op (an insertion of `ops`; retractions are ignored, ops are events) its
/// timestamp, at the op's time. Ops beyond [`MAX_OPS_PER_EPOCH`] in an epoch are dead letters.
pub fn sequence<'s>(ops: Rows<'s>, name: &str, stage: &Arc<str>) -> (Coll<'s, (u64, Row)>, DeadLetters<'s>) {
    let numbered = number(ops.inner, &format!("{name}: number ops per partition"));
    let counts = numbered
        .clone()
        .flat_map(|n| match n {
            Numbered::Count(part, count) => Some((part, count)),
            Numbered::Op(..) => None,
        })
        .broadcast();
    let ops = numbered.flat_map(|n| match n {
        Numbered::Op(part, index, row) => Some((part, index, row)),
        Numbered::Count(..) => None,
    });
    let stage = Arc::clone(stage);
    let ranked = ops
        .binary_frontier::<_, CapacityContainerBuilder<Vec<(Result<(u64, Row), DeadLetter>, Time, Diff)>>, _, _, _, _>(
            counts,
            Pipeline,
            Pipeline,
            &format!("{name}: rank ops"),
            move |_default, _info| {
                let mut ops: BTreeMap<Time, (Capability<Time>, Vec<NumberedOp>)> = BTreeMap::new();
                let mut counts: BTreeMap<Time, BTreeMap<Part, u64>> = BTreeMap::new();
                move |(ops_in, ops_frontier), (counts_in, counts_frontier), output| {
                    // Only messages sent under no capability lack a time; nothing sends them.
                    ops_in.for_each(|cap, data| {
                        let Some(time) = cap.least().copied() else { return };
                        let entry = ops.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new()));
                        entry.1.append(data);
                    });
                    counts_in.for_each(|cap, data| {
                        let Some(time) = cap.least().copied() else { return };
                        let entry = counts.entry(time).or_default();
                        for (part, n) in data.drain(..) {
                            *entry.entry(part).or_default() += n;
                        }
                    });
                    let done = |t: &Time| !ops_frontier.less_equal(t) && !counts_frontier.less_equal(t);
                    while let Some(entry) = ops.first_entry() {
                        if !done(entry.key()) {
                            break;
                        }
                        let (time, (cap, pending)) = entry.remove_entry();
                        let mut before = BTreeMap::new();
                        let mut total = 0u64;
                        for (part, n) in counts.remove(&time).unwrap_or_default() {
                            before.insert(part, total);
                            total += n;
                        }
                        let mut session = output.session(&cap);
                        for (part, index, row) in pending {
                            let rank = before.get(&part).copied().unwrap_or(0) + index;
                            let out = match timestamp(time, rank) {
                                Some(ts) => Ok((ts, row)),
                                None => Err(DeadLetter::for_row(
                                    &row,
                                    &stage,
                                    format!("more than {MAX_OPS_PER_EPOCH} message ops in one epoch; lower the input rate or the epoch length"),
                                )),
                            };
                            session.give((out, time, 1));
                        }
                    }
                    // Counts of epochs in which this worker had no ops.
                    while counts.first_key_value().is_some_and(|(t, _)| done(t)) {
                        counts.pop_first();
                    }
                }
            },
        )
        .as_collection();
    split_named(ranked, &format!("{name}: ranked ops"), |r| r)
}

/// Step 1: per partition and epoch, numbers the ops in position order and counts them.
fn number<'s>(ops: StreamVec<'s, Time, (Row, Time, Diff)>, name: &str) -> StreamVec<'s, Time, Numbered> {
    ops.unary_frontier::<CapacityContainerBuilder<Vec<Numbered>>, _, _, _>(
        Exchange::new(|(row, _, _): &(Row, Time, Diff)| (row.pos.source, row.pos.partition).hashed()),
        name,
        |_default, _info| {
            let mut pending: BTreeMap<Time, (Capability<Time>, Vec<Row>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (row, time, diff) in data.drain(..) {
                        let Ok(n) = usize::try_from(diff) else { continue };
                        if n == 0 {
                            continue;
                        }
                        let entry = pending
                            .entry(time)
                            .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()));
                        entry.1.extend(std::iter::repeat_n(row, n));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (_, (cap, mut rows)) = entry.remove_entry();
                    rows.sort_unstable_by(|a, b| (a.pos, a).cmp(&(b.pos, b)));
                    let mut session = output.session(&cap);
                    let mut rows = rows.into_iter().peekable();
                    while let Some(first) = rows.next() {
                        let part = (first.pos.source, first.pos.partition);
                        session.give(Numbered::Op(part, 0, first));
                        let mut n = 1u64;
                        while let Some(row) = rows.next_if(|r| (r.pos.source, r.pos.partition) == part) {
                            session.give(Numbered::Op(part, n, row));
                            n += 1;
                        }
                        session.give(Numbered::Count(part, n));
                    }
                }
            }
        },
    )
}
