//! `union`: all rows of several collections.

use sluice_runtime::{Rows, Time};
use timely::dataflow::Scope;

use sluice_runtime::operators::named::concat_named;

/// The multiset union of `inputs`; as [`union_named`], named `"union"`.
pub fn union<'s>(scope: Scope<'s, Time>, inputs: Vec<Rows<'s>>) -> Rows<'s> {
    union_named(scope, inputs, "union")
}

/// The multiset union of `inputs` (empty for none), in an operator named after node `name`.
///
/// Rows keep their keys and positions; a row present in two inputs is present twice.
pub fn union_named<'s>(scope: Scope<'s, Time>, inputs: Vec<Rows<'s>>, name: &str) -> Rows<'s> {
    concat_named(scope, inputs, &format!("Union: {name}"))
}
