//! The fanout dataflow: topics, subscribers with filters, and the deliveries a webhook sink
//! makes (spec/fanout.md; the webhook sink and the publish endpoint are separate).
//!
//! [`fanout`] takes `subscribers` (an upsert collection of `{"id", "topic", "filter",
//! "target_url", "secret"?}`; `"deleted": true` or a tombstone removes one) and `events` (an
//! append collection of `{"topic", "data"}`), and produces:
//!
//! | output | key | value | kind |
//! |---|---|---|---|
//! | `deliveries` | `delivery_id` | `delivery_id`, `subscriber`, `topic`, `method`, `url`, `headers`, `body`, `secret`? | append; rows carry the event's position |
//! | `subscriber_errors` | `id` | `id`, `error` | one row per subscriber that is rejected |
//!
//! Decisions where the spec is silent:
//!
//! * **Events do not accumulate** ([`deliver`]): subscribers are per-topic state with their
//!   filters compiled; an event waits for the subscribers of its epoch, is matched and is
//!   dropped. A subscriber change takes effect for events of its own epoch and later ones.
//! * **Filters** are CEL or the original hub's Python-style syntax, told apart and translated
//!   by [`sluice_expr::Expr::compile_filter`]. A filter that fails to evaluate does not match,
//!   and is counted in [`Counters::filter_errors`].
//! * **Delivery ids** are a 128-bit FNV-1a hash of the event's source position and the
//!   subscriber id, in hex ([`request::delivery_id`]): the same on every replay.
//! * **Deliveries carry the subscriber's `secret`**, because Standard Webhooks signatures cover
//!   a timestamp that must be the sending time (receivers reject old ones), so only the sink,
//!   at each attempt, can sign. Do not send `deliveries` anywhere you would not send secrets.
//! * **`body`** is the exact text sent: the JSON of `data.body` with keys sorted, `{}` when
//!   absent, so a signature over it verifies.
//! * **Bad events** (no string `topic`, `data` not an object, a header that is not a string, a
//!   method that is not a word) go to `errors` with their position. Subscribers that cannot
//!   be used (a missing `topic` or `target_url`, a URL that is not http(s), a filter that
//!   does not compile) are rows of `subscriber_errors` — an upsert, so fixing the row clears
//!   the error — and are logged; they receive nothing.
//! * `dead_letters` of the spec (deliveries that failed for good) come from the webhook sink.

mod deliver;
mod event;
pub mod request;
mod subscriber;

use std::sync::Arc;

use sluice_runtime::operators::named::{flat_map_named, split_named, split_where_named};
use sluice_runtime::{DeadLetter, DeadLetters, Row, Rows, Value};

pub use deliver::{Counters, delivery_row};
pub use event::{Event, EventError};
pub use subscriber::{Read, Subscriber};

/// The names of the outputs, in the order of [`FanoutOutputs::split`].
pub const OUTPUTS: &[&str] = sluice_runtime::spec::FANOUT_OUTPUTS;

/// The collections the fanout dataflow produces.
pub struct FanoutOutputs<'s> {
    /// One row per event and matching subscriber.
    pub deliveries: Rows<'s>,
    /// Subscribers that are rejected, with the reason.
    pub subscriber_errors: Rows<'s>,
    /// Events that could not be read.
    pub errors: DeadLetters<'s>,
}

impl<'s> FanoutOutputs<'s> {
    /// The row outputs in the order of [`OUTPUTS`], and the dead letters.
    pub fn split(self) -> (Vec<Rows<'s>>, DeadLetters<'s>) {
        (vec![self.deliveries, self.subscriber_errors], self.errors)
    }
}

/// Builds the fanout dataflow.
///
/// `name` names the operators (`"<name>: …"`) and the dead letters' stage (`"node <name>"`);
/// `counters` receives the counts of every worker.
pub fn fanout<'s>(subscribers: Rows<'s>, events: Rows<'s>, counters: Arc<Counters>, name: &str) -> FanoutOutputs<'s> {
    let stage: Arc<str> = Arc::from(format!("node {name}"));
    let (events, errors) = split_where_named(
        events,
        &format!("{name}: read events"),
        |diff| diff > 0,
        move |row: Row| Event::read(&row.val, row.pos).map_err(|e| DeadLetter::for_row(&row, &stage, e)),
    );
    // One read per subscriber change: the filter is compiled here to check it, and once more
    // where the subscriber is loaded, never per event.
    let label = name.to_owned();
    let (read, subscriber_errors) =
        split_named(
            subscribers,
            &format!("{name}: read subscribers"),
            move |row: Row| match Subscriber::read(&row) {
                Read::Subscriber(s) => Ok(Some(s)),
                Read::Deleted => Ok(None),
                Read::Rejected(id, reason) => {
                    tracing::warn!(node = %label, subscriber = %id.to_json_string(), %reason, "subscriber rejected");
                    Err(Row::derived(
                        Value::map([("id", id.clone())]),
                        Value::map([("id", id), ("error", Value::str(reason))]),
                    ))
                }
            },
        );
    let read = flat_map_named(read, &format!("{name}: subscribers"), |s: Option<Subscriber>| s);
    let deliveries = deliver::deliver(events, read, counters, &format!("{name}: match events"));
    FanoutOutputs {
        deliveries,
        subscriber_errors,
        errors,
    }
}
