//! The sync feed as a queryable view: `changes(user, after, limit)` over the `feed` output.
//!
//! A [`FeedView`] is fed the feed output's updates of final times only — it is a [`Sink`],
//! and sinks receive a time's updates once the frontier has passed it. Every timestamp of a
//! later change is larger than every timestamp of a final time (timestamps grow with the
//! epoch), so a client that asks for changes after the last timestamp it processed never
//! misses one. Each user's entries are indexed by timestamp; a message keeps one entry, at
//! its latest timestamp (deletions stay, as tombstones, so they sync).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::{Diff, Row, Time, Value};

/// Entries per page when the caller gives no limit.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest page a caller may ask for.
pub const MAX_LIMIT: i64 = 100;

/// Why a query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The limit is outside 1–100.
    #[error("limit must be between 1 and {MAX_LIMIT}, not {0}")]
    Limit(i64),
}

/// One change of a user's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message.
    pub id: Arc<str>,
    /// Its latest timestamp.
    pub timestamp: u64,
    /// The entry as the feed output has it: `id`, `timestamp` and the message data inline.
    pub data: Value,
}

/// A page of changes, in ascending timestamp order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// The changes; empty when the caller is up to date.
    pub entries: Vec<Entry>,
}

#[derive(Default)]
struct UserFeed {
    by_timestamp: BTreeMap<u64, Arc<str>>,
    entries: HashMap<Arc<str>, (u64, Value)>,
}

#[derive(Default)]
struct State {
    users: HashMap<Arc<str>, UserFeed>,
    /// Everything before this time has been applied (`None`: the feed ended).
    frontier: Option<Option<Time>>,
}

/// Every user's feed at the last final time, shared by the sink that feeds it and the
/// callers that query it.
#[derive(Clone, Default)]
pub struct FeedView {
    state: Arc<RwLock<State>>,
}

impl FeedView {
    /// An empty view.
    pub fn new() -> FeedView {
        FeedView::default()
    }

    /// Applies the consolidated updates of one final time of the `feed` output. Rows that are
    /// not feed rows (no `user`/`id` key, no `timestamp`) are errors and change nothing.
    pub fn apply(&self, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Retractions first: a changed entry is retracted and inserted at the same time.
        for retract in [true, false] {
            for (row, diff) in updates.iter().filter(|(_, d)| (*d < 0) == retract && *d != 0) {
                let (user, id, timestamp) = feed_row(row)?;
                let feed = state.users.entry(user).or_default();
                if retract {
                    if feed.entries.get(&id).is_some_and(|(ts, _)| *ts == timestamp) {
                        feed.entries.remove(&id);
                        feed.by_timestamp.remove(&timestamp);
                    }
                } else {
                    if *diff != 1 {
                        return Err(SinkError::Io(format!(
                            "feed row {} inserted {diff} times",
                            row.key.to_json_string()
                        )));
                    }
                    if let Some((old, _)) = feed.entries.insert(Arc::clone(&id), (timestamp, row.val.clone())) {
                        feed.by_timestamp.remove(&old);
                    }
                    feed.by_timestamp.insert(timestamp, id);
                }
            }
        }
        state.users.retain(|_, feed| !feed.entries.is_empty());
        Ok(())
    }

    /// Records that every time before `frontier` has been applied (`None`: all of them).
    pub fn advance(&self, frontier: Option<Time>) {
        self.state.write().unwrap_or_else(PoisonError::into_inner).frontier = Some(frontier);
    }

    /// The frontier the view is complete up to: `None` before anything was applied,
    /// `Some(None)` once the feed ended.
    pub fn frontier(&self) -> Option<Option<Time>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).frontier
    }

    /// The user's entries with a timestamp greater than `after`, ascending, at most `limit`
    /// (default [`DEFAULT_LIMIT`], 1 to [`MAX_LIMIT`]).
    pub fn changes(&self, user: &str, after: u64, limit: Option<i64>) -> Result<Page, QueryError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(QueryError::Limit(limit));
        }
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let Some(feed) = state.users.get(user) else {
            return Ok(Page::default());
        };
        let entries = feed
            .by_timestamp
            .range(after.saturating_add(1)..)
            .take(limit as usize)
            .filter_map(|(ts, id)| {
                let (_, data) = feed.entries.get(id)?;
                Some(Entry {
                    id: Arc::clone(id),
                    timestamp: *ts,
                    data: data.clone(),
                })
            })
            .collect();
        Ok(Page { entries })
    }

    /// Message `id` as `user` syncs it, if it is in the user's feed.
    pub fn message(&self, user: &str, id: &str) -> Option<Value> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Some(state.users.get(user)?.entries.get(id)?.1.clone())
    }

    /// A sink that feeds this view (attach it to the `feed` output).
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(FeedSink { view: self.clone() })
    }
}

/// The user, id and timestamp of a feed row.
fn feed_row(row: &Row) -> Result<(Arc<str>, Arc<str>, u64), SinkError> {
    let text = |name: &str| match row.key.get(name) {
        Some(Value::Str(s)) => Ok(Arc::clone(s)),
        _ => Err(SinkError::Config(format!(
            "a feed row's key has a `{name}` string; {} has not",
            row.key.to_json_string()
        ))),
    };
    let timestamp = match row.val.get("timestamp") {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        Some(Value::UInt(n)) => Some(*n),
        _ => None,
    }
    .ok_or_else(|| SinkError::Config(format!("feed row {} has no timestamp", row.key.to_json_string())))?;
    Ok((text("user")?, text("id")?, timestamp))
}

struct FeedSink {
    view: FeedView,
}

impl Sink for FeedSink {
    fn write(&mut self, _time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        self.view.apply(updates)
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.view.advance(frontier);
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        // In memory: nothing of it survives the process; the checkpoint work restores it.
        Some(0)
    }
}
