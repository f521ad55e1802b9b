//! For the Kinesis source and sink tests: kinesalite (from sluice-testkit, which starts it
//! and sets up streams) and a driver that reads a source the way the engine does.
//!
//! Shared by the sink's tests (`#[path]`), so it knows nothing of either crate.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_runtime::source::{PartitionInfo, Position, RawRecord, ReadState, Source};
pub use sluice_testkit::aws::Kinesis;

/// One record as the driver read it.
#[derive(Clone, Debug)]
pub struct Read {
    /// The shard it came from.
    pub shard: String,
    /// The record.
    pub record: RawRecord,
    /// How many shards had been opened when it was read.
    pub opened_before: usize,
}

/// What a bounded read of a source found.
#[derive(Debug, Default)]
pub struct ReadAll {
    /// Every record, in the order returned (round robin over the open shards).
    pub records: Vec<Read>,
    /// Shards in the order they were opened.
    pub opened: Vec<String>,
    /// Shards in the order they finished, with their final positions.
    pub finished: Vec<(String, Position)>,
}

/// Reads a bounded `source` to its end as the engine does: children only after all their
/// listed parents finished, readers polled round robin, `from` giving resume positions.
pub fn read_all(source: &dyn Source, from: &BTreeMap<String, Position>, timeout: Duration) -> ReadAll {
    let parts: Vec<PartitionInfo> = source.discover().expect("discover");
    let listed: BTreeSet<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    let mut result = ReadAll::default();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut open: Vec<(String, Box<dyn sluice_runtime::source::PartitionReader>)> = Vec::new();
    let mut waiting: Vec<&PartitionInfo> = parts.iter().collect();
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    while !(waiting.is_empty() && open.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "not finished after {timeout:?}: open {:?}",
            open.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        let (ready, still): (Vec<&PartitionInfo>, Vec<&PartitionInfo>) = waiting.into_iter().partition(|p| {
            p.parents
                .iter()
                .all(|q| !listed.contains(q.as_str()) || done.contains(q))
        });
        waiting = still;
        for p in ready {
            let start = from.get(&p.id).cloned().unwrap_or(Position::Start);
            open.push((p.id.clone(), source.open(p, &start).expect("open")));
            result.opened.push(p.id.clone());
        }
        let mut busy = false;
        let mut i = 0;
        while i < open.len() {
            buf.clear();
            let state = open[i].1.poll(&mut buf, 97).expect("poll");
            for record in buf.drain(..) {
                result.records.push(Read {
                    shard: open[i].0.clone(),
                    record,
                    opened_before: result.opened.len(),
                });
            }
            match state {
                ReadState::More => {
                    busy = true;
                    i += 1;
                }
                ReadState::Idle | ReadState::Waiting => i += 1,
                ReadState::Finished => {
                    let (shard, reader) = open.remove(i);
                    result.finished.push((shard.clone(), reader.position()));
                    done.insert(shard);
                }
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    result
}
