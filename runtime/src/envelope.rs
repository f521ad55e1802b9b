//! Source envelopes rendered as collections: the upsert envelope as a keyed fold.

use timely::dataflow::StreamVec;

use crate::operators::fold::{FoldCheckpoint, KeyedFold};
use crate::record::{Pos, Row, Rows, Time};
use crate::value::Value;

/// Turns a stream of `(key, (position, new value or tombstone))` into the collection of
/// each key's current value.
///
/// The state is one value per key (never the history). Within one time, records apply in
/// position order, i.e. in the order their partition holds them; a tombstone forgets the
/// key. The emitted row carries no position: it stands for the key's current value and
/// must compare equal to be retracted later.
pub fn upsert<'s>(stream: StreamVec<'s, Time, (Value, (Pos, Option<Value>))>, name: &str) -> Rows<'s> {
    stream.keyed_fold_named(
        &format!("Upsert: {name}"),
        |_key, state: &mut Option<Value>, (_pos, value): (Pos, Option<Value>)| *state = value,
        |key, value: &Value| Some(Row::derived(key.clone(), value.clone())),
    )
}

/// As [`upsert`], with the table cut at checkpoint frontiers and started from a restored one.
pub fn upsert_checkpointed<'s>(
    stream: StreamVec<'s, Time, (Value, (Pos, Option<Value>))>,
    name: &str,
    hooks: &FoldCheckpoint<Value, Value>,
) -> Rows<'s> {
    stream
        .keyed_fold_checkpointed(
            &format!("Upsert: {name}"),
            |_key, state: &mut Option<Value>, (_pos, value): (Pos, Option<Value>)| *state = value,
            |key, value: &Value| Some(Row::derived(key.clone(), value.clone())),
            hooks,
        )
        .0
}
