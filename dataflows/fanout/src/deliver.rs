//! The operator that matches events against the subscribers of their topic.
//!
//! Subscribers are state: per topic, each subscriber with its filter compiled once, when the
//! subscriber is loaded. Events are not: an event waits only until the subscribers are known
//! up to its time, is matched, produces its deliveries and is dropped. Memory is bounded by
//! the subscribers and one epoch or so of events, never by the number of events — which a
//! differential join (it arranges both inputs) would not give.
//!
//! Times are handled in order across both inputs: subscriber changes at `t` apply once no
//! event before `t` can still arrive, and events at `t` are matched once every subscriber
//! change at or before `t` has applied. So an event sees exactly the subscribers of its
//! epoch, changes of that same epoch included.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::{AsCollection, Hashable};
use sluice_expr::Expr;
use sluice_runtime::operators::named::Coll;
use sluice_runtime::{Diff, Row, Rows, Time, Value};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::progress::frontier::MutableAntichain;

use crate::event::Event;
use crate::request::{delivery_id, headers, url};
use crate::subscriber::Subscriber;

/// Counts a pipeline reports: what went through, and filters that failed to evaluate.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events matched against subscribers.
    pub events: AtomicU64,
    /// Deliveries produced.
    pub deliveries: AtomicU64,
    /// Filter evaluations that failed (a missing key, a type error): counted as no match.
    pub filter_errors: AtomicU64,
}

/// A loaded subscriber: the row, and its filter compiled (`None`: matches everything).
struct Active {
    subscriber: Subscriber,
    filter: Option<Expr>,
}

/// Events matched per activation of the operator.
const MATCH_BATCH: usize = 1024;

type Pending<D> = BTreeMap<Time, (Capability<Time>, Vec<D>)>;

/// Matches `events` against `subscribers` and produces one delivery row per match.
pub fn deliver<'s>(
    events: Coll<'s, Event>,
    subscribers: Coll<'s, Subscriber>,
    counters: Arc<Counters>,
    name: &str,
) -> Rows<'s> {
    let scope = events.inner.scope();
    events
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<(Row, Time, Diff)>>, _, _, _, _>(
            subscribers.inner,
            Exchange::new(|(e, _, _): &(Event, Time, Diff)| e.topic.hashed()),
            Exchange::new(|(s, _, _): &(Subscriber, Time, Diff)| s.topic.hashed()),
            name,
            move |_default, info| {
                let activator = scope.activator_for(info.address);
                let mut topics: HashMap<Arc<str>, BTreeMap<Arc<str>, Active>> = HashMap::new();
                let mut events: Pending<Event> = BTreeMap::new();
                let mut changes: BTreeMap<Time, Vec<(Subscriber, Diff)>> = BTreeMap::new();
                move |(events_in, events_frontier), (subs_in, subs_frontier), output| {
                    events_in.for_each(|cap, data| {
                        for (event, time, diff) in data.drain(..) {
                            // Events are facts: a retraction cannot un-send a request.
                            if diff <= 0 {
                                continue;
                            }
                            let entry = events
                                .entry(time)
                                .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()));
                            entry.1.extend(std::iter::repeat_n(event, diff as usize));
                        }
                    });
                    subs_in.for_each(|_cap, data| {
                        for (subscriber, time, diff) in data.drain(..) {
                            changes.entry(time).or_default().push((subscriber, diff));
                        }
                    });
                    loop {
                        let next_change = changes.first_key_value().map(|(t, _)| *t);
                        let next_event = events.first_key_value().map(|(t, _)| *t);
                        let change_first = match (next_change, next_event) {
                            (Some(tc), Some(te)) => tc <= te,
                            (Some(_), None) => true,
                            (None, Some(_)) => false,
                            (None, None) => break,
                        };
                        if change_first {
                            let Some(tc) = next_change else { break };
                            if !ready_to_apply(tc, subs_frontier, events_frontier) {
                                break;
                            }
                            if let Some((_, batch)) = changes.pop_first() {
                                apply(&mut topics, batch);
                            }
                            continue;
                        }
                        let Some(te) = next_event else { break };
                        if subs_frontier.less_equal(&te) {
                            break;
                        }
                        let Some(mut entry) = events.first_entry() else { break };
                        let time = *entry.key();
                        let (cap, pending) = entry.get_mut();
                        // A bounded slice per activation: an epoch's deliveries can be many
                        // times its events, and the sink consumes them between slices.
                        let take = pending.len().min(MATCH_BATCH);
                        let batch: Vec<Event> = pending.drain(..take).collect();
                        let mut session = output.session(&*cap);
                        let mut made = 0u64;
                        for event in &batch {
                            for row in matches(&topics, event, time, &counters) {
                                session.give((row, time, 1));
                                made += 1;
                            }
                        }
                        drop(session);
                        counters.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        counters.deliveries.fetch_add(made, Ordering::Relaxed);
                        if pending.is_empty() {
                            entry.remove();
                        } else {
                            activator.activate();
                            break;
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Whether subscriber changes at `t` may apply: all of them are in, and no event before `t`
/// can still arrive.
fn ready_to_apply(t: Time, subs: &MutableAntichain<Time>, events: &MutableAntichain<Time>) -> bool {
    !subs.less_equal(&t) && !events.less_than(&t)
}

/// Applies one time's subscriber changes: removals first, then the new versions.
fn apply(topics: &mut HashMap<Arc<str>, BTreeMap<Arc<str>, Active>>, mut batch: Vec<(Subscriber, Diff)>) {
    differential_dataflow::consolidation::consolidate(&mut batch);
    batch.sort_by_key(|(_, d)| *d > 0);
    for (subscriber, diff) in batch {
        if diff < 0 {
            if let Some(subs) = topics.get_mut(&subscriber.topic) {
                if subs.get(&subscriber.id).is_some_and(|a| a.subscriber == subscriber) {
                    subs.remove(&subscriber.id);
                }
                if subs.is_empty() {
                    topics.remove(&subscriber.topic);
                }
            }
            continue;
        }
        // Checked when read; compiled here once, for as long as the subscriber is loaded.
        let filter = if subscriber.filter.trim().is_empty() {
            None
        } else {
            match Expr::compile_filter(&subscriber.filter) {
                Ok(expr) => Some(expr),
                Err(e) => {
                    tracing::error!(subscriber = %subscriber.id, error = %e, "a checked filter failed to compile; subscriber skipped");
                    continue;
                }
            }
        };
        topics
            .entry(Arc::clone(&subscriber.topic))
            .or_default()
            .insert(Arc::clone(&subscriber.id), Active { subscriber, filter });
    }
}

/// The deliveries of one event: one per subscriber of its topic whose filter accepts it.
fn matches<'a>(
    topics: &'a HashMap<Arc<str>, BTreeMap<Arc<str>, Active>>,
    event: &'a Event,
    time: Time,
    counters: &'a Counters,
) -> impl Iterator<Item = Row> + 'a {
    topics
        .get(&event.topic)
        .into_iter()
        .flat_map(|subs| subs.values())
        .filter(move |active| match &active.filter {
            None => true,
            Some(filter) => filter.eval_bool(&event.record, &Value::Null).unwrap_or_else(|_| {
                counters.filter_errors.fetch_add(1, Ordering::Relaxed);
                false
            }),
        })
        .map(move |active| delivery_row(event, time, &active.subscriber))
}

/// The names a delivery row uses, allocated once: a delivery is built millions of times, and
/// its field names were a third of its allocations.
struct Names {
    delivery_id: Arc<str>,
    subscriber: Arc<str>,
    topic: Arc<str>,
    method: Arc<str>,
    url: Arc<str>,
    headers: Arc<str>,
    body: Arc<str>,
    secret: Arc<str>,
}

thread_local! {
    // Per thread: workers cloning one shared `Arc` would contend on its counter.
    static NAMES: Names = Names {
        delivery_id: Arc::from("delivery_id"),
        subscriber: Arc::from("subscriber"),
        topic: Arc::from("topic"),
        method: Arc::from("method"),
        url: Arc::from("url"),
        headers: Arc::from("headers"),
        body: Arc::from("body"),
        secret: Arc::from("secret"),
    };
}

/// The delivery of `event` to `subscriber`.
pub fn delivery_row(event: &Event, time: Time, subscriber: &Subscriber) -> Row {
    NAMES.with(|n| build_row(n, event, time, subscriber))
}

fn build_row(n: &Names, event: &Event, time: Time, subscriber: &Subscriber) -> Row {
    // One allocation for the id: it is the key, a field and a header.
    let id: Arc<str> = Arc::from(delivery_id(event.pos, time, &event.record, &subscriber.id));
    let request = &event.request;
    let mut fields = vec![
        (Arc::clone(&n.delivery_id), Value::Str(Arc::clone(&id))),
        (Arc::clone(&n.subscriber), Value::Str(Arc::clone(&subscriber.id))),
        (Arc::clone(&n.topic), Value::Str(Arc::clone(&event.topic))),
        (Arc::clone(&n.method), Value::Str(Arc::clone(&request.method))),
        (
            Arc::clone(&n.url),
            Value::str(url(&subscriber.target_url, &request.path, &request.query)),
        ),
        (Arc::clone(&n.headers), headers(request, &id)),
        (Arc::clone(&n.body), Value::Str(Arc::clone(&request.body))),
    ];
    if let Some(secret) = &subscriber.secret {
        fields.push((Arc::clone(&n.secret), Value::Str(Arc::clone(secret))));
    }
    Row {
        key: Value::map([(Arc::clone(&n.delivery_id), Value::Str(id))]),
        val: Value::map(fields),
        pos: event.pos,
    }
}
