//! Generic declarative operators over rows: `filter`, `map`, `key_by`, `latest`, `join`,
//! `count`, `aggregate` and `union`.
//!
//! Each is a plain function from [`Rows`](sluice_runtime::Rows) to rows (and dead letters
//! where a record can fail), one family per file, and names its timely operators and
//! arrangements after the pipeline node (`"Aggregate: per_app"`, `"Arrange: Aggregate:
//! per_app"`).
//!
//! **Events and tables.** Operators that keep state per key take an `append_only` flag from
//! the planner: on event collections they fold each key's events into a bounded state
//! ([`KeyedFold`](sluice_runtime::operators::fold::KeyedFold)); on collections that also
//! retract they use differential `reduce`, which stays exact under retractions.
//!
//! **Dead letters** follow their record's updates: a record that fails is dead-lettered
//! when it is inserted, and a later retraction of that record retracts its dead letter. An
//! append-mode dead-letter sink writes the insertions; on event inputs nothing is retracted.
//! Each carries the record's position, `stage = "node <name>"`, the reason and the record's
//! JSON.

mod aggregate;
mod count;
mod filter;
mod join;
mod key_by;
mod latest;
mod map;

pub mod order;
mod union;

pub use aggregate::{AggFunc, AggSpec, aggregate};
pub use count::count;
pub use filter::{filter, filter_named};
pub use join::{JoinKind, join};
pub use key_by::{KeySpec, key_by};
pub use latest::{LatestOrder, latest};
pub use map::map;
pub use union::{union, union_named};

use std::sync::Arc;

use sluice_runtime::{DeadLetter, Row};

/// The `stage` of the dead letters of node `name`.
pub(crate) fn stage(name: &str) -> Arc<str> {
    Arc::from(format!("node {name}"))
}

/// A dead letter for `row`, rejected at `stage` for `reason`.
pub(crate) fn dead_letter(stage: &Arc<str>, row: &Row, reason: impl Into<Arc<str>>) -> DeadLetter {
    DeadLetter {
        pos: row.pos,
        stage: stage.clone(),
        reason: reason.into(),
        raw: Arc::from(row.val.to_json_string()),
    }
}
