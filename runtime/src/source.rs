//! The source contract: partitions, native positions, and readers that resume from them.
//!
//! Designed for every connector to come, not just files:
//!
//! | source        | partition                | native position (resume point)        |
//! |---------------|--------------------------|---------------------------------------|
//! | file          | one file of the glob     | byte offset and line number           |
//! | kafka         | topic partition          | next offset                           |
//! | kinesis       | shard (with parents)     | last sequence number (decimal string) |
//! | dynamodb scan | scan segment             | last evaluated key                    |
//! | http ingest   | segment of the local log | byte offset                           |
//! | table file    | the file                 | key and content hash of every row     |
//!
//! A partition may name **parents** that must be read to their end before it starts (Kinesis
//! child shards after a split or merge), and may **finish** (a file in a bounded run, a
//! closed shard, a completed scan segment). Partitions are assigned to workers
//! deterministically by [`assign`], so every worker agrees without talking.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// One partition of a source, as discovered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// A stable identifier: the file path, `topic/partition`, the shard id, `segment-3`.
    pub id: String,
    /// Partitions that must be read to their end before this one starts.
    pub parents: Vec<String>,
}

/// Where a partition's reader is, in the source's own coordinates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// Nothing read yet: start at the configured start position.
    Start,
    /// A byte offset and the number of lines before it (files, local logs).
    Line {
        /// Byte offset of the next unread byte.
        byte: u64,
        /// Lines read so far (the next line's number is `line + 1`).
        line: u64,
    },
    /// The next offset to read (Kafka).
    Offset(u64),
    /// The last sequence number read (Kinesis; a decimal string of up to 128 bits).
    Sequence(String),
    /// The last evaluated key of a scan segment (DynamoDB).
    ScanKey(Value),
    /// The keys and content hashes of a table file as last read (a reloaded table file).
    Table(Value),
    /// The partition has been read to its end and will not grow.
    End,
}

/// One record as a source read it, before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// The record's ordinal within its partition (line number, Kafka offset): `Pos::offset`.
    pub offset: u64,
    /// The record's key bytes, for sources that carry keys apart from the value (Kafka).
    pub key: Option<Vec<u8>>,
    /// The payload; `None` is a tombstone (a Kafka null value).
    pub payload: Option<Vec<u8>>,
}

/// What a reader's poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadState {
    /// It returned records and may have more right away.
    More,
    /// Nothing more now, and nothing more there: the reader is caught up (a followed file at
    /// its end, a quiet topic); poll again later.
    Idle,
    /// Nothing more now, but the source has more it has not fetched yet (a scan page or a
    /// Kinesis shard behind its tip, on its way): poll again later, and do not count the
    /// partition as caught up.
    Waiting,
    /// The partition ended and will never have more (bounded file, closed shard).
    Finished,
}

/// Why a source failed, classified by whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration cannot work (a glob with no files, a missing stream): fix the pipeline.
    #[error("{0}")]
    Config(String),
    /// An external system failed (I/O, broker down); retried with backoff by the runner.
    #[error("{0}")]
    Transient(String),
}

/// A source at run time: lists its partitions and opens readers for them.
///
/// One `Source` value is shared by all workers of a process, so it is `Send + Sync`; readers
/// are owned by the worker that reads the partition.
pub trait Source: Send + Sync {
    /// Lists the partitions that exist now, in a stable order. Called at start and, for
    /// unbounded sources, periodically (new Kafka partitions, Kinesis child shards).
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError>;
    /// Opens a reader for `partition`, resuming after `from`.
    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError>;
    /// Whether every partition eventually finishes (the run can end by itself).
    fn bounded(&self) -> bool;
    /// What a record's ordinal is called in dead letters (`line`, `offset`).
    fn offset_label(&self) -> &'static str;
    /// How a dead letter names the partition: `("partition", id)` unless the source says
    /// more (Kafka: the topic and the partition number apart).
    fn coordinates(&self, partition: &PartitionInfo) -> Vec<(&'static str, Value)> {
        vec![("partition", Value::from(partition.id.as_str()))]
    }
}

/// Reads one partition.
pub trait PartitionReader: Send {
    /// Appends up to `max` records to `out` without blocking for long.
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError>;
    /// The position after the last record returned: resuming there reads what follows it.
    fn position(&self) -> Position;
    /// Records that everything before `position` is reflected in durable output, for the
    /// source's own bookkeeping (a Kafka consumer group's committed offsets, the publish log's
    /// old segments). Called only with positions the sinks have made durable and, when the
    /// pipeline takes checkpoints, that a written checkpoint holds: a source may forget what
    /// lies before them. It does not block, except when `last`
    /// (the run is ending), when it waits until the commit is recorded.
    fn commit(&mut self, _position: &Position, _last: bool) -> Result<(), SourceError> {
        Ok(())
    }
    /// How far this reader is behind the partition's end, if the source can tell (for lag
    /// metrics). Called about once a second from the worker loop: it must not block.
    fn lag(&self) -> Option<Lag> {
        None
    }
    /// How much of a bounded partition this reader has read, if the source can tell (for a
    /// bounded run's progress display). Called about once a second from the worker loop,
    /// also after the partition finished: it must not block.
    fn progress(&self) -> Option<Progress> {
        None
    }
}

/// How much of its partition a reader has read: `done` of `total`, in the unit its source
/// knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The work done so far.
    pub done: u64,
    /// The partition's whole work; may be an estimate (a scan segment's item count).
    pub total: u64,
    /// What `done` and `total` count.
    pub unit: ProgressUnit,
}

/// What a [`Progress`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProgressUnit {
    /// Bytes of a file.
    Bytes,
    /// Items (a scan segment's, against the table's item count).
    Items,
    /// Whole partitions (a scan segment is 0 of 1 until it finishes).
    Segments,
}

impl Progress {
    /// The share done, from 0 to 1; a partition with nothing to do is done.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).clamp(0.0, 1.0)
        }
    }

    /// The same progress for a partition read to its end: all of it done.
    pub fn finished(self) -> Progress {
        let all = self.total.max(self.done);
        Progress {
            done: all,
            total: all,
            unit: self.unit,
        }
    }
}

impl ProgressUnit {
    /// The unit's name, plural (`bytes`, `items`, `segments`).
    pub fn label(&self) -> &'static str {
        match self {
            ProgressUnit::Bytes => "bytes",
            ProgressUnit::Items => "items",
            ProgressUnit::Segments => "segments",
        }
    }
}

/// How far a reader is behind its partition's end, in the unit its source knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lag {
    /// Records not read yet (Kafka: high watermark minus the next offset).
    Records(u64),
    /// How old the newest record read is against the partition's tip (Kinesis).
    Millis(u64),
    /// Bytes not read yet (a file, the publish log).
    Bytes(u64),
}

impl Lag {
    /// The unit, as a metric label.
    pub fn unit(&self) -> &'static str {
        match self {
            Lag::Records(_) => "records",
            Lag::Millis(_) => "milliseconds",
            Lag::Bytes(_) => "bytes",
        }
    }

    /// The amount, in [`Lag::unit`]s.
    pub fn value(&self) -> u64 {
        match self {
            Lag::Records(n) | Lag::Millis(n) | Lag::Bytes(n) => *n,
        }
    }
}

/// The worker that reads partition number `index` of source number `source`.
///
/// Offsetting by the source index spreads the first partitions of different sources over
/// different workers instead of piling them all on worker 0.
pub fn assign(source: usize, index: usize, peers: usize) -> usize {
    (source + index) % peers.max(1)
}

/// The worker that reads a partition discovered after the run started, by its id: the
/// processes of a cluster each list partitions on their own, and may see new ones in
/// different orders, but agree on ids.
pub fn assign_by_id(source: usize, id: &str, peers: usize) -> usize {
    (stable_hash(id).wrapping_add(source as u64) % peers.max(1) as u64) as usize
}

/// 64-bit FNV-1a: the same in every process and build, unlike the standard library's
/// hasher, for what must agree across processes or outlive a build (partition owners, the
/// publish log's topic partitions, hashes kept in checkpoints).
pub fn stable_hash(bytes: impl AsRef<[u8]>) -> u64 {
    bytes.as_ref().iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Start => f.write_str("start"),
            Position::Line { byte, line } => write!(f, "line {line} (byte {byte})"),
            Position::Offset(o) => write!(f, "offset {o}"),
            Position::Sequence(s) => write!(f, "sequence {s}"),
            Position::ScanKey(k) => write!(f, "after key {k}"),
            Position::Table(rows) => match rows.as_list() {
                Some(rows) => write!(f, "table of {} rows", rows.len()),
                None => f.write_str("table"),
            },
            Position::End => f.write_str("end"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_found_later_go_to_a_worker_chosen_by_their_id_alone() {
        // Pinned: every process and build must agree.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let owners: Vec<usize> = (0..64)
            .map(|i| assign_by_id(1, &format!("shardId-{i:012}"), 4))
            .collect();
        assert!(owners.iter().all(|w| *w < 4));
        assert!(
            (0..4).all(|w| owners.contains(&w)),
            "spread over every worker: {owners:?}"
        );
        assert_eq!(assign_by_id(1, "shardId-000000000007", 4), owners[7]);
    }
}
