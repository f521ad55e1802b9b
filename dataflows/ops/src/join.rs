//! `join`: rows of two keyed collections with equal keys.

pub use sluice_runtime::spec::JoinKind;
use sluice_runtime::{Pos, Row, Rows, Value};

/// Joins `left` and `right` on their keys; each output value is `{"left": l, "right": r}`.
///
/// Output rows keep the left row's position, so events joined with a table can still be
/// traced to their source. A left join is the inner join plus the left rows whose key is
/// absent on the right; when a right row for such a key arrives later, the `right = null`
/// row is retracted as the matched row appears.
pub fn join<'s>(left: Rows<'s>, right: Rows<'s>, kind: JoinKind, name: &str) -> Rows<'s> {
    let left_kv = left.map(|r| (r.key, (r.val, r.pos)));
    let right_kv = right.map(|r| (r.key, r.val));
    let left_arr = left_kv.clone().arrange_by_key_named(&format!("Join left: {name}"));
    let right_arr = right_kv.clone().arrange_by_key_named(&format!("Join right: {name}"));
    let matched = left_arr.join_core(right_arr, |k: &Value, (lv, pos): &(Value, Pos), rv: &Value| {
        Some(Row {
            key: k.clone(),
            val: Value::map([("left", lv.clone()), ("right", rv.clone())]),
            pos: *pos,
        })
    });
    match kind {
        JoinKind::Inner => matched,
        JoinKind::Left => {
            let right_keys = right_kv.map(|(k, _)| k).distinct();
            let unmatched = left_kv.antijoin(right_keys).map(|(key, (lv, pos))| Row {
                key,
                val: Value::map([("left", lv), ("right", Value::Null)]),
                pos,
            });
            matched.concat(unmatched)
        }
    }
}
