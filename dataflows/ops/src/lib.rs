//! Generic declarative operators over rows: `filter`, `map`, `key_by`, `latest`, `join`,
//! `count`, `aggregate` and `union`.
//!
//! Each is a plain function from [`Rows`](sluice_runtime::Rows) to rows (and dead letters
//! where a record can fail), one family per file. Operators that keep state per key take an
//! `append_only` flag from the planner: on event collections they fold each key's events into
//! a bounded state ([`KeyedFold`](sluice_runtime::operators::fold::KeyedFold)); on collections
//! that also retract they use differential `reduce`, which stays exact under retractions.

mod aggregate;
mod count;
mod filter;
mod join;
mod key_by;
mod latest;
mod map;
mod union;

pub use aggregate::{AggFunc, AggSpec, aggregate};
pub use count::count;
pub use filter::filter;
pub use join::{JoinKind, join};
pub use key_by::key_by;
pub use latest::{LatestOrder, latest};
pub use map::map;
pub use union::union;

use std::sync::Arc;

use sluice_runtime::{DeadLetter, Row};

/// A dead letter for `row`, rejected by node `name` for `reason`.
pub(crate) fn dead_letter(name: &str, row: &Row, reason: impl Into<Arc<str>>) -> DeadLetter {
    DeadLetter {
        pos: row.pos,
        stage: Arc::from(format!("node {name}")),
        reason: reason.into(),
        raw: Arc::from(row.val.to_json_string()),
    }
}
