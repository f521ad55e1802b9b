//! The timeline: every message at its latest version, changed by ops in timestamp order.
//!
//! Ops are exchanged by the message they target, so one worker owns each message and applies
//! its ops one after the other. Within an epoch they apply in timestamp order, which is the
//! position order of [`crate::sequence`]; epochs apply in time order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use differential_dataflow::{AsCollection, Hashable};
use serde::{Deserialize, Serialize};
use sluice_runtime::operators::fold::FoldCheckpoint;
use sluice_runtime::operators::named::Coll;
use sluice_runtime::{Diff, Pos, Time};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::op::{Message, Op, Rejection, decide};

/// An op ready to apply: its target message, timestamp, position and content.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sequenced {
    /// The message the op creates or names.
    pub target: Arc<str>,
    /// The op's timestamp (the new version's, if it is accepted).
    pub timestamp: u64,
    /// Where the op was read.
    pub pos: Pos,
    /// The op.
    pub op: Op,
}

/// What applying ops produces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Applied {
    /// A message version: `+1` when it becomes current, `-1` when it stops being current.
    Message(Message),
    /// An accepted op, with the version it produced.
    Accepted {
        /// The op's request id.
        request_id: Arc<str>,
        /// The message changed.
        id: Arc<str>,
        /// Its new timestamp.
        timestamp: u64,
        /// Where the op was read.
        pos: Pos,
    },
    /// A refused op.
    Rejected {
        /// The op's request id.
        request_id: Arc<str>,
        /// The message it targeted, if it named one.
        id: Option<Arc<str>>,
        /// Why.
        rejection: Rejection,
        /// Where the op was read.
        pos: Pos,
    },
}

/// Applies `ops` (insertions only) to the messages they target.
///
/// The messages are the timeline's state: cut at checkpoint frontiers through `hooks`, and
/// restored from them (each worker keeps the messages routed to it, emitted at the
/// checkpoint's frontier so everything downstream rebuilds).
pub fn apply<'s>(ops: Coll<'s, Sequenced>, name: &str, hooks: FoldCheckpoint<Arc<str>, Message>) -> Coll<'s, Applied> {
    let (index, peers) = (ops.inner.scope().index(), ops.inner.scope().peers());
    ops.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(Applied, Time, Diff)>>, _, _, _>(
            Exchange::new(|(s, _, _): &(Sequenced, Time, Diff)| s.target.hashed()),
            name,
            move |default, _info| {
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<Sequenced>)> = BTreeMap::new();
                let mut messages: HashMap<Arc<str>, Message> = HashMap::new();
                let mut users: HashSet<Arc<str>> = HashSet::new();
                let mut restore = hooks
                    .take_restore()
                    .map(|(time, saved)| (default.delayed(&time), saved));
                let mut last_cut: Time = restore.as_ref().map_or(0, |(cap, _)| *cap.time());
                move |(input, frontier), output| {
                    if let Some((cap, saved)) = restore.take() {
                        let mut session = output.session(&cap);
                        for (id, message) in saved {
                            if (id.hashed() % peers as u64) as usize != index {
                                continue;
                            }
                            session.give((Applied::Message(message.clone()), *cap.time(), 1));
                            messages.insert(id, message);
                        }
                    }
                    let cut_at = hooks.requested().filter(|t| *t > last_cut);
                    input.for_each(|cap, data| {
                        for (op, time, diff) in data.drain(..) {
                            // Ops are events: a retraction cannot un-send a message.
                            if diff <= 0 {
                                continue;
                            }
                            let entry = pending
                                .entry(time)
                                .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()));
                            entry.1.push(op);
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        // The timeline before the first epoch at or after a requested frontier
                        // is the timeline as of that frontier.
                        if let Some(at) = cut_at.filter(|at| *entry.key() >= *at && *at > last_cut) {
                            hooks.save(at, &messages);
                            last_cut = at;
                        }
                        let (time, (cap, mut ops)) = entry.remove_entry();
                        ops.sort_unstable_by(|a, b| (a.timestamp, &a.op).cmp(&(b.timestamp, &b.op)));
                        let mut session = output.session(&cap);
                        // Each touched message's version before this epoch, to emit one net change.
                        let mut before: HashMap<Arc<str>, Option<Message>> = HashMap::new();
                        for s in ops {
                            let current = messages.get(&s.target);
                            let outcome = decide(&s.op, s.timestamp, current);
                            let applied = match outcome {
                                Ok(mut next) => {
                                    // One allocation per id and per user name, however many
                                    // versions and messages share them.
                                    next.id = Arc::clone(&s.target);
                                    next.from = intern(&mut users, &next.from);
                                    next.to = intern(&mut users, &next.to);
                                    before.entry(Arc::clone(&s.target)).or_insert_with(|| current.cloned());
                                    let accepted = Applied::Accepted {
                                        request_id: Arc::clone(&s.op.request_id),
                                        id: Arc::clone(&next.id),
                                        timestamp: next.timestamp,
                                        pos: s.pos,
                                    };
                                    messages.insert(Arc::clone(&s.target), next);
                                    accepted
                                }
                                Err(rejection) => Applied::Rejected {
                                    request_id: Arc::clone(&s.op.request_id),
                                    id: (s.op.names_target() && !s.target.is_empty()).then(|| Arc::clone(&s.target)),
                                    rejection,
                                    pos: s.pos,
                                },
                            };
                            session.give((applied, time, 1));
                        }
                        for (id, old) in before {
                            if let Some(old) = old {
                                session.give((Applied::Message(old), time, -1));
                            }
                            if let Some(new) = messages.get(&id) {
                                session.give((Applied::Message(new.clone()), time, 1));
                            }
                        }
                    }
                    if let Some(at) = cut_at.filter(|at| *at > last_cut && !frontier.less_equal(at)) {
                        hooks.save(at, &messages);
                        last_cut = at;
                    }
                }
            },
        )
        .as_collection()
}

/// The shared copy of `name`.
fn intern(users: &mut HashSet<Arc<str>>, name: &Arc<str>) -> Arc<str> {
    match users.get(name) {
        Some(shared) => Arc::clone(shared),
        None => {
            users.insert(Arc::clone(name));
            Arc::clone(name)
        }
    }
}
