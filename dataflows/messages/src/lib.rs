//! The messages dataflow: a messenger's message timeline, per-user sync feed and file usage
//! statistics (spec/messages.md).
//!
//! [`messages`] takes the `message_ops` events (JSON commands with `op` = `send`, `edit`,
//! `mark_read` or `delete`, a `request_id` and the authenticated `user`) and maintains:
//!
//! | output | key | value | kind |
//! |---|---|---|---|
//! | `messages` | `id` | the message at its latest version | one row per message ever sent |
//! | `feed` | `user`, `id` | `id`, `timestamp` and the message as that user syncs it | one row per (user, message) |
//! | `accepted` | `request_id` | `request_id`, `id`, `timestamp` | append; rows carry the op's position |
//! | `rejections` | `request_id` | `request_id`, `code`, `reasons`, `id` (if named) | append; rows carry the op's position |
//! | `file_usage` | `file_id` | `file_id`, `count` | one row per file some live message uses |
//! | `file_usage_events` | `file_id` | `fileId`, `inUse` | append; one per 0 ↔ ≥1 change |
//!
//! The feed is served by a `served` sink (`partition_by = "user"`, `version_field =
//! "timestamp"`, see sinks/served), which keeps its final times per user by timestamp; the
//! server's Messages service and `GET /messages` answer `changes(user, after, limit)` from it.
//!
//! Decisions where the spec is silent:
//!
//! * **Timestamps** are `epoch_ms << 21 | rank`, the rank being the op's place in its epoch
//!   by source position ([`sequence`]): unique, increasing, the same on replay and for any
//!   number of workers, and readable (`timestamp >> 21` is when the op was ingested). Every
//!   op gets one; a rejected op's is simply unused. Ids are the send's timestamp in 24
//!   hexadecimal digits, the form of the original's ids. `created` and `edited` are the
//!   epoch (milliseconds) of the send and of the last edit.
//! * **Malformed ops.** A record without a string `request_id` and `user` cannot be answered
//!   and goes to `errors`. Any other malformed field (`if_match` not an integer, `read` not a
//!   boolean, an unknown `op`) is an `invalid` rejection listing every problem, checked first
//!   like the send's own `invalid` cases.
//! * **Order within the table's third row**: `forbidden` is checked before the empty-edit
//!   `invalid`, and the whole row before `gone`, as the table lists them: an empty edit of a
//!   deleted message (which has no files) is `invalid`.
//! * **Feed entries** of a deleted message are `{"id", "timestamp", "deleted": true}`; others
//!   carry `from`, `to`, `created`, `edited` (`null` until edited), `read`, `text`, `files`.
//! * **File usage** counts each live message once per distinct file it references.
//!
//! Workers: ops are numbered per source partition, ranked once every worker's counts of the
//! epoch are in, and applied by the worker owning the target message; outputs are the same
//! for any number of workers.

mod op;
mod sequence;
mod timeline;

use std::sync::Arc;

use differential_dataflow::AsCollection;
use sluice_runtime::operators::named::{Coll, concat_named, flat_map_named, map_named, split_named};
use sluice_runtime::{DeadLetter, DeadLetters, Diff, Pos, Row, Rows, Time, Value};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

pub use op::{Code, Command, FILE_ID_LEN, Message, Op, OpError, Rejection, decide, message_id};
pub use sequence::{MAX_OPS_PER_EPOCH, RANK_BITS, timestamp, timestamp_epoch};
pub use timeline::{Applied, Sequenced};

/// The names of the outputs, in the order of [`MessagesOutputs::split`].
pub const OUTPUTS: &[&str] = sluice_runtime::spec::MESSAGES_OUTPUTS;

/// The collections the messages dataflow produces (see the crate documentation for shapes).
pub struct MessagesOutputs<'s> {
    /// Every message at its latest version.
    pub messages: Rows<'s>,
    /// Per user, the messages they sync.
    pub feed: Rows<'s>,
    /// Accepted ops.
    pub accepted: Rows<'s>,
    /// Refused ops.
    pub rejections: Rows<'s>,
    /// Per file, the live messages that use it.
    pub file_usage: Rows<'s>,
    /// Files going into or out of use.
    pub file_usage_events: Rows<'s>,
    /// Records that are not message ops.
    pub errors: DeadLetters<'s>,
}

impl<'s> MessagesOutputs<'s> {
    /// The row outputs in the order of [`OUTPUTS`], and the dead letters.
    pub fn split(self) -> (Vec<Rows<'s>>, DeadLetters<'s>) {
        (
            vec![
                self.messages,
                self.feed,
                self.accepted,
                self.rejections,
                self.file_usage,
                self.file_usage_events,
            ],
            self.errors,
        )
    }
}

/// Builds the messages dataflow over `ops`.
///
/// `name` names the operators (`"<name>: …"`) and the dead letters' stage (`"node <name>"`).
///
/// The timeline saves its messages in checkpoints through `state`, under `<name>.timeline`.
pub fn messages<'s>(
    ops: Rows<'s>,
    name: &str,
    state: &mut sluice_runtime::recovery::StateRegistry,
) -> MessagesOutputs<'s> {
    let scope = ops.inner.scope();
    let stage: Arc<str> = Arc::from(format!("node {name}"));
    let (ranked, overflow) = sequence::sequence(ops, name, &stage);
    let read_stage = Arc::clone(&stage);
    let (sequenced, unreadable) =
        split_named(
            ranked,
            &format!("{name}: read ops"),
            move |(timestamp, row)| match Op::from_record(&row.val) {
                Ok(op) => Ok(Sequenced {
                    target: op.target(timestamp),
                    timestamp,
                    pos: row.pos,
                    op,
                }),
                Err(e) => Err(DeadLetter::for_row(&row, &read_stage, e)),
            },
        );
    let hooks = state.fold(&format!("{name}.timeline"));
    let applied = timeline::apply(sequenced, &format!("{name}: apply ops"), hooks);

    let messages: Coll<'s, Message> = flat_map_named(applied.clone(), &format!("{name}: versions"), |a| match a {
        Applied::Message(m) => Some(m),
        _ => None,
    });
    let accepted = flat_map_named(applied.clone(), &format!("{name}: accepted"), |a| match a {
        Applied::Accepted {
            request_id,
            id,
            timestamp,
            pos,
        } => Some(Row {
            key: request_key(&request_id),
            val: Value::map([
                ("request_id", Value::Str(request_id)),
                ("id", Value::Str(id)),
                ("timestamp", timestamp_value(timestamp)),
            ]),
            pos,
        }),
        _ => None,
    });
    let rejections = flat_map_named(applied, &format!("{name}: rejections"), |a| match a {
        Applied::Rejected {
            request_id,
            id,
            rejection,
            pos,
        } => Some(rejection_row(request_id, id, &rejection, pos)),
        _ => None,
    });

    let rows = map_named(messages.clone(), &format!("{name}: messages"), |m| {
        Row::derived(Value::map([("id", Value::Str(Arc::clone(&m.id)))]), message_value(&m))
    });
    let feed = flat_map_named(messages.clone(), &format!("{name}: feed"), |m| {
        let entry = feed_value(&m);
        let users = if m.from == m.to {
            vec![Arc::clone(&m.from)]
        } else {
            vec![Arc::clone(&m.from), Arc::clone(&m.to)]
        };
        let id = Arc::clone(&m.id);
        users.into_iter().map(move |user| {
            Row::derived(
                Value::map([("user", Value::Str(user)), ("id", Value::Str(Arc::clone(&id)))]),
                entry.clone(),
            )
        })
    });

    let files = flat_map_named(messages, &format!("{name}: files in use"), |m| {
        let mut files = if m.deleted { Vec::new() } else { m.files };
        files.sort();
        files.dedup();
        files
    });
    let file_usage = map_named(files.clone().count(), &format!("{name}: file_usage"), |(file, n)| {
        Row::derived(
            file_key(&file),
            Value::map([("file_id", Value::Str(file)), ("count", Value::Int(n as i64))]),
        )
    });
    // `distinct` changes exactly when a file's count goes 0 → ≥1 (+1) or back (-1); each such
    // change becomes an event, inserted at its time.
    let file_usage_events = in_use_events(files.distinct(), &format!("{name}: file_usage_events"));

    MessagesOutputs {
        messages: rows,
        feed,
        accepted,
        rejections,
        file_usage,
        file_usage_events,
        errors: concat_named(scope, vec![overflow, unreadable], &format!("{name}: errors")),
    }
}

/// Turns each change of a set into an event inserted at the change's time.
fn in_use_events<'s>(in_use: Coll<'s, Arc<str>>, name: &str) -> Rows<'s> {
    in_use
        .inner
        .unary::<CapacityContainerBuilder<Vec<(Row, Time, Diff)>>, _, _, _>(Pipeline, name, |_, _| {
            |input, output| {
                input.for_each(|cap, data| {
                    output
                        .session(&cap)
                        .give_iterator(data.drain(..).map(|(file, time, diff)| {
                            let row = Row::derived(
                                file_key(&file),
                                Value::map([("fileId", Value::Str(file)), ("inUse", Value::Bool(diff > 0))]),
                            );
                            (row, time, 1)
                        }));
                });
            }
        })
        .as_collection()
}

fn request_key(request_id: &Arc<str>) -> Value {
    Value::map([("request_id", Value::Str(Arc::clone(request_id)))])
}

fn file_key(file: &Arc<str>) -> Value {
    Value::map([("file_id", Value::Str(Arc::clone(file)))])
}

/// A timestamp as a record value: an integer (with 42 bits of epoch milliseconds they stay
/// below `i64::MAX` until the year 2109).
fn timestamp_value(timestamp: u64) -> Value {
    i64::try_from(timestamp).map_or(Value::UInt(timestamp), Value::Int)
}

fn rejection_row(request_id: Arc<str>, id: Option<Arc<str>>, rejection: &Rejection, pos: Pos) -> Row {
    let mut fields = vec![
        ("request_id", Value::Str(Arc::clone(&request_id))),
        ("code", Value::str(rejection.code.as_str())),
        (
            "reasons",
            Value::list(rejection.reasons.iter().map(|r| Value::str(r.as_str()))),
        ),
    ];
    if let Some(id) = id {
        fields.push(("id", Value::Str(id)));
    }
    Row {
        key: request_key(&request_id),
        val: Value::map(fields),
        pos,
    }
}

/// A message as the `messages` output shows it.
pub fn message_value(m: &Message) -> Value {
    let mut fields = vec![
        ("id", Value::Str(Arc::clone(&m.id))),
        ("from", Value::Str(Arc::clone(&m.from))),
        ("to", Value::Str(Arc::clone(&m.to))),
        ("created", timestamp_value(m.created)),
        ("timestamp", timestamp_value(m.timestamp)),
        ("deleted", Value::Bool(m.deleted)),
    ];
    if !m.deleted {
        fields.extend(content(m));
    }
    Value::map(fields)
}

/// A message as its users' feeds show it: just `deleted` once deleted.
pub fn feed_value(m: &Message) -> Value {
    let mut fields = vec![
        ("id", Value::Str(Arc::clone(&m.id))),
        ("timestamp", timestamp_value(m.timestamp)),
    ];
    if m.deleted {
        fields.push(("deleted", Value::Bool(true)));
    } else {
        fields.extend([
            ("from", Value::Str(Arc::clone(&m.from))),
            ("to", Value::Str(Arc::clone(&m.to))),
            ("created", timestamp_value(m.created)),
        ]);
        fields.extend(content(m));
    }
    Value::map(fields)
}

fn content(m: &Message) -> [(&'static str, Value); 4] {
    [
        ("edited", m.edited.map_or(Value::Null, timestamp_value)),
        ("read", Value::Bool(m.read)),
        ("text", Value::Str(Arc::clone(&m.text))),
        ("files", Value::list(m.files.iter().map(|f| Value::Str(Arc::clone(f))))),
    ]
}
