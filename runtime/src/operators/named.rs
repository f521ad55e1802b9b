//! Named stateless operators: differential's `map`, `flat_map`, `filter`, `concat` and
//! `consolidate_stream` take no name, so a node's operators would show up in timely's logs
//! as anonymous "Map"s. These carry the node's name, and the split evaluates each record once
//! where `map` + two `flat_map`s would clone every result twice.

use crate::record::{Diff, Time};
use differential_dataflow::consolidation::ConsolidatingContainerBuilder;
use differential_dataflow::{AsCollection, Data, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{Scope, StreamVec};
use timely::progress::operate::FrontierInterest;

/// A collection of the engine's time and difference types.
pub type Coll<'s, D> = VecCollection<'s, Time, D, Diff>;

/// Replaces each record by the records `logic` gives for it (with the same time and diff).
pub fn flat_map_named<'s, D, D2, I, L>(input: Coll<'s, D>, name: &str, mut logic: L) -> Coll<'s, D2>
where
    D: Data,
    D2: Data,
    I: IntoIterator<Item = D2>,
    L: FnMut(D) -> I + 'static,
{
    input
        .inner
        .unary::<CapacityContainerBuilder<Vec<(D2, Time, Diff)>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for (datum, time, diff) in data.drain(..) {
                        for out in logic(datum) {
                            session.give((out, time, diff));
                        }
                    }
                });
            }
        })
        .as_collection()
}

/// Replaces each record by `logic`'s result (with the same time and diff).
pub fn map_named<'s, D, D2, L>(input: Coll<'s, D>, name: &str, mut logic: L) -> Coll<'s, D2>
where
    D: Data,
    D2: Data,
    L: FnMut(D) -> D2 + 'static,
{
    flat_map_named(input, name, move |d| Some(logic(d)))
}

/// Keeps the records `keep` accepts; it also sees each record's diff.
pub fn filter_named<'s, D, P>(input: Coll<'s, D>, name: &str, mut keep: P) -> Coll<'s, D>
where
    D: Data,
    P: FnMut(&D, Diff) -> bool + 'static,
{
    input
        .inner
        .unary::<CapacityContainerBuilder<Vec<(D, Time, Diff)>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    output
                        .session(&cap)
                        .give_iterator(data.drain(..).filter(|(d, _, diff)| keep(d, *diff)));
                });
            }
        })
        .as_collection()
}

/// Sends each update to the first output (`Ok`) or the second (`Err`), with its time and diff.
pub fn split_named<'s, D, A, B, L>(input: Coll<'s, D>, name: &str, logic: L) -> (Coll<'s, A>, Coll<'s, B>)
where
    D: Data,
    A: Data,
    B: Data,
    L: FnMut(D) -> Result<A, B> + 'static,
{
    split_where_named(input, name, |_| true, logic)
}

/// Sends each update to the first output (`Ok`) or the second (`Err`), with its time and
/// diff; `keep` sees the diff first and drops the update when it says no.
pub fn split_where_named<'s, D, A, B, K, L>(
    input: Coll<'s, D>,
    name: &str,
    mut keep: K,
    mut logic: L,
) -> (Coll<'s, A>, Coll<'s, B>)
where
    D: Data,
    A: Data,
    B: Data,
    K: FnMut(Diff) -> bool + 'static,
    L: FnMut(D) -> Result<A, B> + 'static,
{
    let mut builder = OperatorBuilder::new(name.to_owned(), input.inner.scope());
    let mut input = builder.new_input(input.inner, Pipeline);
    builder.set_notify_for(0, FrontierInterest::Never);
    let (ok, ok_stream): (_, StreamVec<'s, Time, (A, Time, Diff)>) = builder.new_output();
    let (err, err_stream): (_, StreamVec<'s, Time, (B, Time, Diff)>) = builder.new_output();
    let mut ok = OutputBuilder::from(ok);
    let mut err = OutputBuilder::from(err);
    builder.build(move |_capabilities| {
        move |_frontiers| {
            let mut ok = ok.activate();
            let mut err = err.activate();
            input.for_each(|cap, data| {
                let mut ok = ok.session(&cap);
                let mut err = err.session(&cap);
                for (datum, time, diff) in data.drain(..) {
                    if !keep(diff) {
                        continue;
                    }
                    match logic(datum) {
                        Ok(a) => ok.give((a, time, diff)),
                        Err(b) => err.give((b, time, diff)),
                    }
                }
            });
        }
    });
    (ok_stream.as_collection(), err_stream.as_collection())
}

/// The multiset union of `inputs`.
pub fn concat_named<'s, D: Data>(scope: Scope<'s, Time>, inputs: Vec<Coll<'s, D>>, name: &str) -> Coll<'s, D> {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let mut handles: Vec<_> = inputs
        .into_iter()
        .map(|c| builder.new_input(c.inner, Pipeline))
        .collect();
    for i in 0..handles.len() {
        builder.set_notify_for(i, FrontierInterest::Never);
    }
    let (mut output, stream): (_, StreamVec<'s, Time, (D, Time, Diff)>) = builder.new_output();
    builder.build(move |_capabilities| {
        move |_frontiers| {
            let mut output = output.activate();
            for handle in handles.iter_mut() {
                handle.for_each(|cap, data| output.give(&cap, data));
            }
        }
    });
    stream.as_collection()
}

/// Cancels equal updates of opposite sign that arrive together (differential's
/// `consolidate_stream`, named): no exchange, no state, no guarantee across batches.
///
/// A client's change retracts its old view and inserts the new one; most outputs see only a
/// part of the view, so most of those pairs project to identical records. Cancelling them
/// here, on small typed records, saves building output rows that would cancel in the sink.
pub fn consolidate_batches_named<'s, D: Data>(input: Coll<'s, D>, name: &str) -> Coll<'s, D> {
    input
        .inner
        .unary::<ConsolidatingContainerBuilder<_>, _, _, _>(Pipeline, name, |_cap, _info| {
            move |input, output| {
                input.for_each(|time, data| {
                    output.session_with_builder(&time).give_iterator(data.drain(..));
                })
            }
        })
        .as_collection()
}
