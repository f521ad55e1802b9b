//! `sluice.v1.Messages`: the messenger sync feed (spec/messages.md, "Sync feed").
//!
//! The view is the messages dataflow's `feed` output, partitioned by `user` and versioned by
//! the entry's `timestamp`, so "changes after T" is a read of the caller's partition after
//! cursor `(T, every key)`. The view only holds final timestamps: nothing can later appear at
//! or below one already served, which is what lets a client sync by its last timestamp.
//!
//! Feed values are `{"id", "timestamp", "from", "to", "created", "edited" (null until
//! edited), "read", "text", "files"}` or, once deleted, `{"id", "timestamp", "deleted": true}`
//! (a `user` field, if a view carries one, is not part of the message).

use std::sync::Arc;

use sluice_served::{Cursor, Entry, Page, ServedView, Value};
use tonic::{Request, Response, Status};

use crate::follow::{self, Batch, Source, Start};
use crate::outbox::{self, ClientStream};
use crate::proto::sluice::v1::messages_server::Messages;
use crate::proto::sluice::v1::{ChangesRequest, ChangesResponse, Message, WatchRequest};
use crate::{Shared, auth};

/// Entries per page when the caller gives no limit.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest page a caller may ask for.
pub const MAX_LIMIT: usize = 100;

/// The feed view and the secret its bearer tokens are signed with.
#[derive(Clone)]
pub(crate) struct Feed {
    pub view: ServedView,
    pub jwt_secret: Arc<[u8]>,
}

impl Feed {
    /// At most `limit` of `user`'s entries with a timestamp above `after`, ascending.
    pub fn changes(&self, user: &str, after: u64, limit: usize) -> Page {
        self.view.changes(&Value::str(user), &after_timestamp(after), limit)
    }

    /// Message `id` as `user` syncs it, as JSON; `None` if it is not in the user's feed.
    pub fn message_json(&self, user: &str, id: &str) -> Option<String> {
        let key = Value::map([("id", Value::str(id)), ("user", Value::str(user))]);
        let entry = self.view.get(&Value::str(user), &key)?;
        entry_json(&entry)
    }
}

/// The limit a caller asked for (0: the default), or why it is refused.
pub(crate) fn limit(asked: u64) -> Result<usize, String> {
    match asked {
        0 => Ok(DEFAULT_LIMIT),
        n if n <= MAX_LIMIT as u64 => Ok(n as usize),
        n => Err(format!("limit must be between 1 and {MAX_LIMIT}, not {n}")),
    }
}

/// The cursor after every entry with a timestamp up to `after`.
fn after_timestamp(after: u64) -> Cursor {
    Cursor::After {
        version: after,
        key: None,
    }
}

/// An entry as JSON: the feed value without `user`; `None` for a key without a value.
pub(crate) fn entry_json(entry: &Entry) -> Option<String> {
    let value = entry.value.as_ref()?;
    Some(match value.as_map() {
        Some(map) if map.contains_key("user") => {
            let mut map = map.clone();
            map.remove("user");
            Value::Map(Arc::new(map)).to_json_string()
        }
        _ => value.to_json_string(),
    })
}

/// An entry as the wire's `Message`.
fn message(entry: &Entry) -> Message {
    let Some(value) = &entry.value else {
        // The view dropped the key altogether: to the client, a deletion.
        return Message {
            id: text(entry.key.get("id")),
            timestamp: entry.version,
            deleted: true,
            ..Message::default()
        };
    };
    let number = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_i64)
            .and_then(|n| u64::try_from(n).ok())
    };
    let id = value.get("id").or_else(|| entry.key.get("id"));
    Message {
        id: text(id),
        timestamp: number("timestamp").unwrap_or(entry.version),
        deleted: value.get("deleted").and_then(Value::as_bool).unwrap_or(false),
        from: text(value.get("from")),
        to: text(value.get("to")),
        created: number("created").unwrap_or(0),
        edited: number("edited"),
        read: value.get("read").and_then(Value::as_bool).unwrap_or(false),
        text: text(value.get("text")),
        files: value
            .get("files")
            .and_then(Value::as_list)
            .map(|files| files.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    }
}

fn text(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The gRPC service.
pub(crate) struct MessagesService {
    pub feed: Feed,
    pub shared: crate::Shared,
}

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn changes(&self, request: Request<ChangesRequest>) -> Result<Response<ChangesResponse>, Status> {
        let user = auth::grpc_user(request.metadata(), &self.feed.jwt_secret)?;
        let request = request.into_inner();
        let limit = limit(u64::from(request.limit)).map_err(Status::invalid_argument)?;
        let page = self.feed.changes(&user, request.after, limit);
        Ok(Response::new(ChangesResponse {
            messages: page.entries.iter().map(message).collect(),
        }))
    }

    type WatchStream = ClientStream<ChangesResponse>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let user = auth::grpc_user(request.metadata(), &self.feed.jwt_secret)?;
        let after = request.into_inner().after;
        let Shared { limits, shutdown, .. } = &self.shared;
        let (mut out, stream) = outbox::channel(*limits, shutdown.clone());
        let view = self.feed.view.clone();
        tokio::spawn(async move {
            let partition = Value::str(user);
            let source = Source {
                view: &view,
                partition: &partition,
                batch_size: MAX_LIMIT,
            };
            let start = Start::From(after_timestamp(after));
            let shape =
                |batch: Batch<Message>| (!batch.items.is_empty()).then_some(ChangesResponse { messages: batch.items });
            let stop = follow::follow(source, start, &mut out, |e, _| Some(message(e)), shape).await;
            tracing::debug!(view = view.name(), ?stop, "messages watch ended");
            out.finish(stop);
        });
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: Option<Value>) -> Entry {
        Entry {
            key: Value::map([("id", Value::str("m1")), ("user", Value::str("ann"))]),
            version: 9,
            time: 1,
            value,
        }
    }

    #[test]
    fn limits() {
        assert_eq!(limit(0), Ok(50));
        assert_eq!(limit(1), Ok(1));
        assert_eq!(limit(100), Ok(100));
        assert!(limit(101).is_err());
    }

    #[test]
    fn live_and_deleted_messages() {
        let live = Value::map([
            ("id", Value::str("m1")),
            ("user", Value::str("ann")),
            ("timestamp", Value::Int(9)),
            ("from", Value::str("ann")),
            ("to", Value::str("bob")),
            ("created", Value::Int(5)),
            ("edited", Value::Null),
            ("read", Value::Bool(true)),
            ("text", Value::str("hi")),
            ("files", Value::list([Value::str("f1")])),
        ]);
        let m = message(&entry(Some(live.clone())));
        assert_eq!((m.id.as_str(), m.timestamp, m.deleted), ("m1", 9, false));
        assert_eq!(
            (m.from.as_str(), m.to.as_str(), m.created, m.edited),
            ("ann", "bob", 5, None)
        );
        assert_eq!((m.read, m.text.as_str(), m.files), (true, "hi", vec!["f1".to_owned()]));
        let json = entry_json(&entry(Some(live))).unwrap_or_default();
        assert!(!json.contains("\"user\"") && json.contains("\"text\":\"hi\""), "{json}");

        let deleted = Value::map([
            ("id", Value::str("m1")),
            ("timestamp", Value::Int(9)),
            ("deleted", Value::Bool(true)),
        ]);
        let m = message(&entry(Some(deleted)));
        assert_eq!((m.id.as_str(), m.deleted, m.text.as_str()), ("m1", true, ""));
        let gone = message(&entry(None));
        assert_eq!((gone.id.as_str(), gone.timestamp, gone.deleted), ("m1", 9, true));
    }
}
