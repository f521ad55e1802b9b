//! The records that flow through generic collections, their provenance and dead letters.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Logical time of every collection: milliseconds since the Unix epoch, assigned at ingestion.
pub type Time = u64;

/// Multiplicity change of an update (`+1` insert, `-1` retract).
pub type Diff = isize;

/// A differential collection of generic rows.
pub type Rows<'s> = VecCollection<'s, Time, Row, Diff>;

/// A differential collection of dead letters: insertions, and retractions when the rejected
/// row itself is retracted (the dead-letter output writes insertions only).
pub type DeadLetters<'s> = VecCollection<'s, Time, DeadLetter, Diff>;

/// Where a record came from: which source, which partition, which record in it.
///
/// Only append (event) records carry a position through the graph; records that a node derives
/// from state (an upsert's current value, a count) carry [`Pos::NONE`], because they stand for
/// many inputs at once and must compare equal to be retracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    /// Index of the source in the pipeline (the planner maps it back to the source's name).
    pub source: u32,
    /// Index of the partition within the source (a file, a Kafka partition, a Kinesis shard).
    pub partition: u32,
    /// The record's ordinal within the partition: the line number for files (1-based), the
    /// offset for Kafka; its meaning is the source's, documented with each source.
    pub offset: u64,
}

impl Pos {
    /// The position of a derived record, which has none.
    pub const NONE: Pos = Pos {
        source: u32::MAX,
        partition: u32::MAX,
        offset: u64::MAX,
    };

    /// Whether this is [`Pos::NONE`].
    pub fn is_none(&self) -> bool {
        *self == Pos::NONE
    }
}

/// One record of a generic collection: a key (`Null` when unkeyed), a value and its position.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Row {
    /// The record's key; `Value::Null` for collections that are not keyed.
    pub key: Value,
    /// The record itself.
    pub val: Value,
    /// Where it came from, or [`Pos::NONE`] for derived records.
    pub pos: Pos,
}

impl Row {
    /// A derived (position-less) row.
    pub fn derived(key: Value, val: Value) -> Row {
        Row {
            key,
            val,
            pos: Pos::NONE,
        }
    }
}

/// A record that could not be processed, on its way to the pipeline's dead-letter output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where the record came from ([`Pos::NONE`] if it was derived).
    pub pos: Pos,
    /// The pipeline element that rejected it: `source <name>` or `node <name>`.
    pub stage: Arc<str>,
    /// Why it was rejected, in words a user can act on.
    pub reason: Arc<str>,
    /// The record as received: the raw line for decode failures, its JSON otherwise.
    pub raw: Arc<str>,
}

impl DeadLetter {
    /// The dead letter of a row a node rejects: its position, and its value as JSON.
    pub fn for_row(row: &Row, stage: &Arc<str>, reason: impl std::fmt::Display) -> DeadLetter {
        DeadLetter {
            pos: row.pos,
            stage: Arc::clone(stage),
            reason: Arc::from(reason.to_string()),
            raw: Arc::from(row.val.to_json_string()),
        }
    }
}

/// Builds a row key from field paths of a record: always a map from each dotted field path to
/// its value (`{"app": "a", "push_token": "t"}`, or `{"id": 7}` for one field).
///
/// A map even for one field keeps keys self-describing in sink output and identical whichever
/// node produced them. A missing or null field is an error naming the field.
pub fn key_from_fields(record: &Value, fields: &[Vec<String>]) -> Result<Value, String> {
    let mut key = crate::value::ValueMap::new();
    for path in fields {
        match record.get_path(path) {
            Some(v) if !v.is_null() => {
                key.insert(Arc::from(path.join(".")), v.clone());
            }
            _ => return Err(format!("missing key field `{}`", path.join("."))),
        }
    }
    Ok(Value::Map(Arc::new(key)))
}
