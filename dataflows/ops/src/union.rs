//! `union`: all rows of several collections.

use sluice_runtime::{Rows, Time};
use timely::dataflow::Scope;

/// The multiset union of `inputs`.
pub fn union<'s>(scope: Scope<'s, Time>, inputs: Vec<Rows<'s>>) -> Rows<'s> {
    differential_dataflow::collection::concatenate(scope, inputs)
}
