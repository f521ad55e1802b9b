//! Following a served view for one client: reset, snapshot, then changes, in batches.
//!
//! Every streaming RPC is this loop with its own filter and message shape. The client's
//! position is a [`Cursor`] into the view's (version, key) order; each key sits there once, at
//! its latest version, so paging from [`Cursor::Start`] reads a consistent snapshot without a
//! copy per client: a key changed while the snapshot is read moves past the cursor and
//! arrives again later, as a change.
//!
//! A batch ends either full (`batch_size` items) or when the client has caught up with the
//! view's frontier; only the latter is a point to resume from, so only it names a frontier
//! (the continuation token). After catching up the producer sleeps until the view's frontier
//! moves, and a catch-up that brought nothing is not sent (except the one that makes the
//! client current — caught up with a view that holds everything the sources had — and the
//! end of a snapshot).
//!
//! A client whose position falls below the view's horizon (tombstones it has not read were
//! dropped after their retention) cannot be brought up to date by changes any more: it is
//! reset and sent a fresh snapshot, as a client presenting such a token would be.

use sluice_served::{Cursor, Entry, Progress, ServedView, Time, Value};
use tonic::Status;

use crate::outbox::{Outbox, Stop};
use crate::token::{self, TokenError};

/// Where a client starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Start {
    /// Nothing to resume from: reset the client, then send the snapshot.
    Fresh,
    /// Only the changes after this cursor.
    From(Cursor),
}

/// One batch for the service to shape into a message.
#[derive(Debug)]
pub(crate) struct Batch<R> {
    /// The service's items, in view order.
    pub items: Vec<R>,
    /// The client must drop what it holds (the first message of a fresh start, alone).
    pub reset: bool,
    /// Set when the batch ends at a catch-up: every change before this frontier is delivered.
    pub through: Option<Time>,
    /// The client has caught up with the view at least once.
    pub current: bool,
}

/// Whether a client may hold an older state of the entry's key, and so must hear of its
/// removal. In a fresh snapshot an entry below the frontier the snapshot began at has not
/// changed since, so no older state of its key can have been sent: its tombstone —
/// or, for filtered streams, its leaving the filter — is noise and is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// The client cannot hold the key: skip removals.
    No,
    /// The client may hold the key: send removals.
    Maybe,
}

/// The view's rows a stream reads: one partition.
pub(crate) struct Source<'a> {
    pub view: &'a ServedView,
    pub partition: &'a Value,
    pub batch_size: usize,
}

/// Follows `source` from `start` until the client or the server stops, sending what `select`
/// keeps from each entry, batched and shaped by `shape` (which may drop a batch).
pub(crate) async fn follow<T, R>(
    source: Source<'_>,
    start: Start,
    out: &mut Outbox<T>,
    mut select: impl FnMut(&Entry, Known) -> Option<R>,
    mut shape: impl FnMut(Batch<R>) -> Option<T>,
) -> Stop {
    let Source {
        view,
        partition,
        batch_size,
    } = source;
    let batch_size = batch_size.max(1);
    let mut changes = view.watch();
    let mut cursor = Cursor::Start;
    // Set while a snapshot is being read: the frontier when it began. Entries at or above it
    // changed after the snapshot began, so they may replace something the client was sent
    // (changes always land at versions at or above the frontier).
    let mut snapshot_began = None;
    let mut reset = false;
    match start {
        Start::Fresh => reset = true,
        Start::From(from) => cursor = from,
    }
    let mut items = Vec::new();
    let mut current = false;
    loop {
        if std::mem::take(&mut reset) {
            cursor = Cursor::Start;
            snapshot_began = Some(view.progress().frontier);
            items.clear();
            let reset = Batch {
                items: Vec::new(),
                reset: true,
                through: None,
                current,
            };
            if let Some(message) = shape(reset)
                && let Err(stop) = out.send(message).await
            {
                return stop;
            }
        }
        // Marked seen before the read, so a change that lands after it wakes the wait below.
        changes.borrow_and_update();
        let page = view.changes(partition, &cursor, batch_size);
        // Tombstones past their retention are dropped and the horizon rises past them; if it
        // passed this client's position, the page may lack deletions it needed. Checked after
        // the read: a horizon still at or below the position now was so during the read. In a
        // snapshot, only tombstones from its start on matter (older ones are skipped anyway).
        let position = match &cursor {
            Cursor::Start => 0,
            Cursor::After { version, .. } => version.saturating_add(1),
        };
        let needed_from = snapshot_began.map_or(position, |began| position.max(began));
        if view.progress().horizon > needed_from {
            tracing::info!(
                view = view.name(),
                "a client fell behind the view's horizon; sending a fresh snapshot"
            );
            reset = true;
            continue;
        }
        for entry in &page.entries {
            let known = match snapshot_began {
                Some(began) if entry.version < began => Known::No,
                _ => Known::Maybe,
            };
            let Some(item) = select(entry, known) else {
                continue;
            };
            // Flushed only when another item needs the room, so a batch that fills up exactly
            // at a catch-up still carries the catch-up's token.
            if items.len() >= batch_size {
                let full = Batch {
                    items: std::mem::take(&mut items),
                    reset: false,
                    through: None,
                    current,
                };
                if let Some(message) = shape(full)
                    && let Err(stop) = out.send(message).await
                {
                    return stop;
                }
            }
            items.push(item);
        }
        cursor = page.next;
        if !page.caught_up {
            // A filter may drop whole pages without sending (and so without awaiting); let
            // the other streams on this worker run between pages.
            tokio::task::yield_now().await;
            continue;
        }
        // The first catch-up, and the end of every snapshot, is sent even when empty: the
        // client learns it is current, and gets a token past its reset.
        // Current once the view holds everything the sources had when they caught up (the
        // scan finished, the streams at their ends), and from then on.
        let was_current = current;
        current |= view.progress().current;
        let announce = (current && !was_current) || snapshot_began.is_some();
        snapshot_began = None;
        if announce || !items.is_empty() {
            let batch = Batch {
                items: std::mem::take(&mut items),
                reset: false,
                through: Some(page.frontier),
                current,
            };
            if let Some(message) = shape(batch)
                && let Err(stop) = out.send(message).await
            {
                return stop;
            }
        }
        if let Err(stop) = out.wait(&mut changes).await {
            return stop;
        }
    }
}

/// Where a client presenting `token` (empty: none) for `output` starts. A genuine token the
/// view can no longer honour — through a frontier below its horizon, or beyond its frontier —
/// starts fresh; a token that is not genuine is the client's error. A genuine token of another
/// output is refused too, unless `other_output_resets` (an account stream resumed with another
/// shard: its changes say nothing about the new shard, but the client did nothing wrong).
pub(crate) fn start_from(
    key: &[u8],
    output: &str,
    token: &[u8],
    progress: Progress,
    other_output_resets: bool,
) -> Result<Start, Status> {
    if token.is_empty() {
        return Ok(Start::Fresh);
    }
    match token::verify(key, output, token) {
        Ok(through) if through < progress.horizon || through > progress.frontier => Ok(Start::Fresh),
        Ok(through) => Ok(Start::From(Cursor::through(through))),
        Err(TokenError::OtherOutput) if other_output_resets => Ok(Start::Fresh),
        Err(error) => Err(Status::invalid_argument(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_runtime::sink::Sink;
    use sluice_runtime::{Diff, Row};
    use sluice_served::ViewConfig;
    use tokio::sync::watch;
    use tokio_stream::StreamExt;

    use super::*;
    use crate::outbox::{self, Limits};

    fn row(k: i64) -> Row {
        Row::derived(Value::map([("k", Value::Int(k))]), Value::map([("v", Value::Int(k))]))
    }

    /// `(reset, keys, through)` of each message.
    type Seen = (bool, Vec<String>, Option<Time>);

    async fn first_messages(view: ServedView, start: Start, n: usize) -> Vec<Seen> {
        let limits = Limits {
            buffer: 8,
            stall: Duration::from_secs(5),
        };
        let (_stop, shutdown) = watch::channel(false);
        let (mut out, stream) = outbox::channel(limits, shutdown);
        let producer = tokio::spawn(async move {
            let source = Source {
                view: &view,
                partition: &Value::Null,
                batch_size: 2,
            };
            let select =
                |e: &Entry, known| (e.value.is_some() || known == Known::Maybe).then(|| e.key.to_json_string());
            let shape = |b: Batch<String>| Some((b.reset, b.items, b.through));
            follow(source, start, &mut out, select, shape).await
        });
        let seen = stream.take(n).map(|m| m.unwrap_or_default()).collect().await;
        // Dropping the stream (inside `take`) is the client going away.
        assert_eq!(producer.await.ok(), Some(Stop::Gone));
        seen
    }

    #[tokio::test]
    async fn snapshot_batches_skip_old_tombstones_and_a_client_below_the_horizon_is_reset() {
        let view = ServedView::new(ViewConfig {
            name: "t".into(),
            partition_by: None,
            version_field: None,
            retention_ms: Some(1_000),
        });
        let mut sink = view.sink(None).unwrap_or_else(|e| panic!("{e}"));
        let base = view.progress().horizon + 60_000;
        let mut step = |time, mut updates: Vec<(Row, Diff)>| {
            updates.sort();
            sink.write(time, &updates).unwrap_or_else(|e| panic!("{e}"));
            sink.commit(Some(time + 1)).unwrap_or_else(|e| panic!("{e}"));
        };
        step(base, vec![(row(1), 1), (row(2), 1), (row(3), 1), (row(4), 1)]);
        step(base + 10, vec![(row(4), -1)]);
        let key = |k: i64| format!(r#"{{"k":{k}}}"#);

        let fresh = first_messages(view.clone(), Start::Fresh, 3).await;
        let expected = vec![
            (true, vec![], None),
            (false, vec![key(1), key(2)], None),
            (false, vec![key(3)], Some(base + 11)),
        ];
        assert_eq!(fresh, expected);

        // A client through `base + 1` is still before the horizon: it gets the deletion.
        let resumed = first_messages(view.clone(), Start::From(Cursor::through(base + 1)), 1).await;
        assert_eq!(resumed, vec![(false, vec![key(4)], Some(base + 11))]);

        // Once the tombstone is dropped, the same position can only be reset.
        step(base + 5_000, vec![]);
        assert!(view.progress().horizon > base + 1);
        let behind = first_messages(view, Start::From(Cursor::through(base + 1)), 3).await;
        assert_eq!(
            behind,
            expected
                .into_iter()
                .map(|(r, k, t)| (r, k, t.map(|_| base + 5_001)))
                .collect::<Vec<_>>()
        );
    }
}
