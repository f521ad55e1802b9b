//! `latest`: the latest row per key, by a field or by arrival.

use differential_dataflow::VecCollection;
use sluice_runtime::operators::fold::KeyedFold;
use sluice_runtime::{Diff, Pos, Row, Rows, Time, Value};

/// How `latest` decides which row is newest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LatestOrder {
    /// The row with the greatest value of this field path wins (a missing field is `null`,
    /// which orders first); ties go to the greatest whole record, so the result never
    /// depends on arrival order.
    Field(Vec<String>),
    /// The row that arrived last wins: later epochs, and within an epoch later positions.
    /// Only meaningful for event collections (the planner enforces it).
    Arrival,
}

/// The latest row per key.
///
/// On event collections (`append_only`) a keyed fold keeps one row per key, so memory follows
/// the number of keys. On collections that retract, a `reduce` picks the newest of the rows
/// currently present, so retracting the newest row brings back the one before it.
pub fn latest<'s>(rows: Rows<'s>, order: LatestOrder, append_only: bool, name: &str) -> Rows<'s> {
    let fold_name = format!("Latest: {name}");
    match (order, append_only) {
        (LatestOrder::Arrival, _) => rows.map(|r| (r.key, (r.pos, r.val))).keyed_fold_named(
            &fold_name,
            |_k, state: &mut Option<Value>, (_pos, val): (Pos, Value)| *state = Some(val),
            |k, v| Some(Row::derived(k.clone(), v.clone())),
        ),
        (LatestOrder::Field(path), true) => ordered_by(rows, path).keyed_fold_named(
            &fold_name,
            |_k, state: &mut Option<(Value, Value)>, event: (Value, Value)| {
                if state.as_ref().is_none_or(|s| event > *s) {
                    *state = Some(event);
                }
            },
            |k, (_, v)| Some(Row::derived(k.clone(), v.clone())),
        ),
        (LatestOrder::Field(path), false) => ordered_by(rows, path)
            .reduce_named(
                &fold_name,
                |_key, input: &[(&(Value, Value), isize)], output: &mut Vec<(Value, isize)>| {
                    // Values arrive sorted ascending and present (positive count): the last is newest.
                    if let Some(((_, val), _)) = input.iter().rev().find(|(_, n)| *n > 0) {
                        output.push((val.clone(), 1));
                    }
                },
            )
            .map(|(key, val)| Row::derived(key, val)),
    }
}

/// Rows as `(key, (value of the order field or null, record))`.
fn ordered_by<'s>(rows: Rows<'s>, path: Vec<String>) -> VecCollection<'s, Time, (Value, (Value, Value)), Diff> {
    rows.map(move |r| {
        let order = r.val.get_path(&path).cloned().unwrap_or(Value::Null);
        (r.key, (order, r.val))
    })
}
