//! `count`: the number of rows per key.

use sluice_runtime::{Row, Rows, Value};

use sluice_runtime::operators::named::map_named;

/// Per key, `{"count": n}`: the number of rows with that key, maintained under retractions.
///
/// A key whose rows are all retracted disappears from the output. The input is arranged by
/// key with a unit value, so its consolidated state is one entry per key even for an event
/// collection: memory follows the number of keys, not of events.
pub fn count<'s>(rows: Rows<'s>, name: &str) -> Rows<'s> {
    let keys = map_named(rows, &format!("Count keys: {name}"), |r: Row| (r.key, ()));
    let counts = keys.reduce_named(
        &format!("Count: {name}"),
        |_key, input: &[(&(), isize)], output: &mut Vec<(Value, isize)>| {
            let n: isize = input.iter().map(|(_, n)| *n).sum();
            if n > 0 {
                output.push((Value::map([("count", Value::Int(n as i64))]), 1));
            }
        },
    );
    map_named(counts, &format!("Count rows: {name}"), |(key, val)| {
        Row::derived(key, val)
    })
}
