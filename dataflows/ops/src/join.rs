//! `join`: rows of two keyed collections with equal keys.

use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
pub use sluice_runtime::spec::JoinKind;
use sluice_runtime::{Diff, Pos, Row, Rows, Time, Value};

use sluice_runtime::operators::named::{concat_named, flat_map_named, map_named};

/// Joins `left` and `right` on their keys; each output value is `{"left": l, "right": r}`.
///
/// Every pair of a left and a right row with equal keys is one output row (with the product
/// of their multiplicities), keyed by the key and keeping the left row's position, so events
/// joined with a table can still be traced to their source.
///
/// A left join is the inner join plus, for each left row whose key has no right row, the row
/// `{"left": l, "right": null}`: all left rows as unmatched rows, minus those whose key is
/// among the right keys. When a right row for such a key arrives later, the `right = null`
/// row is retracted as the matched row appears, and it comes back if the right side empties.
/// Both sides are arranged once; the left join adds only the set of right keys.
pub fn join<'s>(left: Rows<'s>, right: Rows<'s>, kind: JoinKind, name: &str) -> Rows<'s> {
    let left_kv = map_named(left.clone(), &format!("Join left rows: {name}"), |r: Row| {
        (r.key, (r.val, r.pos))
    });
    let right_kv = map_named(right, &format!("Join right rows: {name}"), |r: Row| (r.key, r.val));
    let left_arr = left_kv.arrange_by_key_named(&format!("Join left: {name}"));
    let right_arr = right_kv.arrange_by_key_named(&format!("Join right: {name}"));
    let matched = left_arr
        .clone()
        .join_core(right_arr.clone(), |k: &Value, (lv, pos): &(Value, Pos), rv: &Value| {
            Some(Row {
                key: k.clone(),
                val: Value::map([("left", lv.clone()), ("right", rv.clone())]),
                pos: *pos,
            })
        });
    match kind {
        JoinKind::Inner => matched,
        JoinKind::Left => {
            let right_keys = right_arr
                .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<Value, (), Time, Diff>, _, _>(
                    &format!("Join right keys: {name}"),
                    |_key, input: &[(&Value, Diff)], output: &mut Vec<((), Diff)>| {
                        if input.iter().any(|(_, n)| *n > 0) {
                            output.push(((), 1));
                        }
                    },
                    |vec, key: &Value, upds: &mut Vec<((), Time, Diff)>| {
                        vec.clear();
                        vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
                    },
                );
            let all_left = flat_map_named(left, &format!("Join unmatched: {name}"), |r: Row| {
                Some(unmatched(r.key, r.val, r.pos))
            });
            let matched_left = left_arr.join_core(right_keys, |k: &Value, (lv, pos): &(Value, Pos), _: &()| {
                Some(unmatched(k.clone(), lv.clone(), *pos))
            });
            let scope = matched.scope();
            concat_named(
                scope,
                vec![matched, all_left, matched_left.negate()],
                &format!("Join output: {name}"),
            )
        }
    }
}

/// The left join's row for a left row without a match.
fn unmatched(key: Value, left: Value, pos: Pos) -> Row {
    Row {
        key,
        val: Value::map([("left", left), ("right", Value::Null)]),
        pos,
    }
}
