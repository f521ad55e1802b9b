//! `latest`: the latest row per key, by a field or by arrival.

use sluice_runtime::operators::fold::KeyedFold;
use sluice_runtime::recovery::StateRegistry;
use sluice_runtime::{Pos, Row, Rows, Value};

use crate::order::compare;
use sluice_runtime::operators::named::{Coll, map_named};

/// How `latest` decides which row is newest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LatestOrder {
    /// The row with the greatest value of this field path wins, numbers compared by value
    /// ([`order::compare`](crate::order::compare)); a missing field is `null`, which orders
    /// first. Ties go to the greatest whole record, so the result never depends on arrival
    /// order.
    Field(Vec<String>),
    /// The row that arrived last wins: later epochs, and within an epoch later positions.
    /// Only meaningful for event collections: on a collection that retracts, retractions are
    /// ignored (the planner only allows it on events).
    Arrival,
}

/// The latest row per key: one derived row `(key, record)` per key with rows.
///
/// On event collections (`append_only`) a keyed fold keeps one row per key, so memory follows
/// the number of keys. On collections that retract, a `reduce` picks the newest of the rows
/// currently present, so retracting the newest row brings back the one before it.
///
/// Its fold saves its state in checkpoints through `state`, under `name`.
pub fn latest<'s>(
    rows: Rows<'s>,
    order: LatestOrder,
    append_only: bool,
    name: &str,
    state: &mut StateRegistry,
) -> Rows<'s> {
    let op_name = format!("Latest: {name}");
    match (order, append_only) {
        (LatestOrder::Arrival, _) => {
            let events = map_named(rows, &format!("Latest events: {name}"), |r: Row| {
                (r.key, (r.pos, r.val))
            });
            // The fold applies one time's events in `(key, (pos, record))` order: the last applied
            // is the latest position.
            events
                .keyed_fold_checkpointed(
                    &op_name,
                    |_k, state: &mut Option<Value>, (_pos, val): (Pos, Value)| *state = Some(val),
                    |k, v| Some(Row::derived(k.clone(), v.clone())),
                    &state.fold(name),
                )
                .0
        }
        (LatestOrder::Field(path), true) => {
            ordered_by(rows, path, name)
                .keyed_fold_checkpointed(
                    &op_name,
                    |_k, state: &mut Option<(Value, Value)>, event: (Value, Value)| {
                        if state.as_ref().is_none_or(|s| newer(&event, s)) {
                            *state = Some(event);
                        }
                    },
                    |k, (_, v)| Some(Row::derived(k.clone(), v.clone())),
                    &state.fold(name),
                )
                .0
        }
        (LatestOrder::Field(path), false) => {
            let latest = ordered_by(rows, path, name).reduce_named(
                &op_name,
                |_key, input: &[(&(Value, Value), isize)], output: &mut Vec<(Value, isize)>| {
                    let present = input.iter().filter(|(_, n)| *n > 0).map(|(e, _)| *e);
                    if let Some((_, val)) = present.reduce(|a, b| if newer(b, a) { b } else { a }) {
                        output.push((val.clone(), 1));
                    }
                },
            );
            map_named(latest, &format!("Latest rows: {name}"), |(key, val)| {
                Row::derived(key, val)
            })
        }
    }
}

/// Whether `(order value, record)` `a` beats `b`.
fn newer(a: &(Value, Value), b: &(Value, Value)) -> bool {
    compare(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)).is_gt()
}

/// Rows as `(key, (value of the order field or null, record))`.
fn ordered_by<'s>(rows: Rows<'s>, path: Vec<String>, name: &str) -> Coll<'s, (Value, (Value, Value))> {
    map_named(rows, &format!("Latest order: {name}"), move |r: Row| {
        let order = r.val.get_path(&path).cloned().unwrap_or(Value::Null);
        (r.key, (order, r.val))
    })
}
