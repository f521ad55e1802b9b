//! The `kinesis` source: a data stream's shards, read by the workers they are assigned to,
//! child shards only after all their parents, resumable by sequence number.
//!
//! ```text
//!  ListShards ──▶ partitions (shard id, parents) ──▶ engine: children wait for their parents
//!  per open shard: background task on the AWS runtime
//!     GetShardIterator ─▶ GetRecords loop ──bounded channel (4 pages)──▶ reader.poll (never waits)
//! ```
//!
//! **Shards.** [`Source::discover`] lists the shards (`ListShards`, every page); each is a
//! partition whose parents are its `ParentShardId` and `AdjacentParentShardId` (a merge has
//! two), so the engine opens a child only once both are read to their end. A parent that is
//! no longer listed (expired past the retention period) is dropped from the child's parents:
//! it could never finish. The listing is cached for `shard_refresh_ms`, since every worker
//! asks for it (the engine rediscovers unbounded sources every few seconds).
//!
//! **Positions.** A shard's position is the sequence number of the last record returned
//! ([`Position::Sequence`]), or [`Position::End`] once the shard is closed and read to its
//! end. A shard with no resume position starts at the configured `start`; one that appeared
//! while the pipeline runs (a child of a split or merge) starts at `TRIM_HORIZON` whatever
//! `start` says, since `LATEST` would skip what was written to it before it was opened.
//!
//! **Record ordinals.** A record's `offset` (its `Pos`, dead-letter coordinate and input to
//! delivery ids) is derived from its sequence number by [`sequence::ordinal`]: the same after
//! a restart and increasing within a shard. Dead letters name it `sequence_index`, and the
//! shard as `shard`.
//!
//! **Tombstones.** A record with empty data is a tombstone (a `None` payload), which is how
//! the `kinesis` sink writes an `upsert` deletion: Kinesis has no null records.
//!
//! **Trimmed positions.** A resume position older than the retention period means records
//! were lost. When a shard resumes from a sequence number, the reader checks it: the service
//! refusing it (`InvalidArgumentException`), or the oldest retained record coming after it,
//! means it was trimmed. `on_trimmed = "fail"` then fails the run; `"oldest"` logs an error
//! and reads from `TRIM_HORIZON`. A shard with no records retained at all cannot tell, and
//! resumes normally.
//!
//! **Limits and outages.** A reader waits 200 ms after a `GetRecords` that returned nothing
//! (Kinesis allows five calls per second per shard) and continues at once after one that
//! returned records. Throttling and network failures are retried with backoff (100 ms doubling
//! to 5 s, with jitter) and logged at most every 30 s per shard, so an outage stalls the shard
//! and loses nothing. An expired iterator is renewed from the last sequence number read. A
//! missing stream or shard, or a refused request (access denied, a disabled KMS key), fails
//! the run.
//!
//! **Bounded runs.** With `bounded = true` a shard finishes once it is closed and read, or
//! once a `GetRecords` returns nothing while `MillisBehindLatest` is 0 (caught up). A shard
//! that finished by catching up keeps its sequence number as its position, so a later run
//! continues after it. The engine does not rediscover bounded sources, so shards created
//! during a bounded run are not read by it.
//!
//! **Lag.** Every reader publishes the `MillisBehindLatest` of its last `GetRecords` in a map
//! shared by the source's readers in this process: [`KinesisSource::lag`],
//! [`KinesisSource::caught_up`], and each reader's own [`PartitionReader::lag`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use sluice_runtime::source::{
    Lag, PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError,
};
use sluice_runtime::spec::{KinesisSourceSpec, KinesisStart};
use sluice_runtime::value::Value;
use tokio::sync::mpsc;

mod reader;
pub mod sequence;

use sluice_aws::{Failure, Kind, StreamRef};

use reader::{Event, Record, Resume, ShardTask};

/// How many pages of records a shard's task may have fetched ahead of its reader.
const PAGES_AHEAD: usize = 4;

/// The shards' `MillisBehindLatest`, shared by a source's readers.
#[derive(Debug, Default)]
pub(crate) struct ShardLags {
    /// Per open shard, the last `MillisBehindLatest` (`None` before the first answer).
    shards: Mutex<BTreeMap<String, Option<i64>>>,
    /// Whether any shard has answered yet.
    reported: std::sync::atomic::AtomicBool,
}

impl ShardLags {
    fn open(&self, shard: &str) {
        if let Ok(mut m) = self.shards.lock() {
            m.insert(shard.to_owned(), None);
        }
    }

    pub(crate) fn set(&self, shard: &str, millis: Option<i64>) {
        if let Ok(mut m) = self.shards.lock() {
            m.insert(shard.to_owned(), millis);
        }
        if millis.is_some() {
            self.reported.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn at_tip(&self, shard: &str) -> bool {
        self.millis(shard) == Some(0)
    }

    /// The shard's last `MillisBehindLatest`, if it has answered one.
    fn millis(&self, shard: &str) -> Option<i64> {
        self.shards.lock().ok()?.get(shard).copied().flatten()
    }

    pub(crate) fn close(&self, shard: &str) {
        if let Ok(mut m) = self.shards.lock() {
            m.remove(shard);
        }
    }
}

/// The shard listing, cached for `shard_refresh_ms`.
struct Listing {
    at: Instant,
    shards: Vec<PartitionInfo>,
}

/// A Kinesis source: one stream's shards.
pub struct KinesisSource {
    spec: KinesisSourceSpec,
    stream: StreamRef,
    client: Client,
    lag: Arc<ShardLags>,
    listing: Mutex<Option<Listing>>,
    /// The shards of the first discovery; any other was created while the pipeline ran.
    initial: Mutex<Option<BTreeSet<String>>>,
}

impl KinesisSource {
    /// A source named `name` for `spec`, with the standard AWS configuration chain and the
    /// spec's region and endpoint. Nothing is requested until the first discovery.
    pub fn new(spec: &KinesisSourceSpec, name: &str) -> Result<KinesisSource, SourceError> {
        Self::with_sdk_config(spec, name, &sluice_aws::sdk_config(&spec.aws))
    }

    /// As [`KinesisSource::new`], with an SDK configuration made by the caller (static
    /// credentials for a local test service).
    pub fn with_sdk_config(
        spec: &KinesisSourceSpec,
        name: &str,
        sdk: &aws_config::SdkConfig,
    ) -> Result<KinesisSource, SourceError> {
        if spec.stream.trim().is_empty() {
            return Err(SourceError::Config(format!(
                "kinesis source `{name}`: `stream` is empty"
            )));
        }
        Ok(KinesisSource {
            spec: spec.clone(),
            stream: StreamRef::parse(&spec.stream),
            client: Client::new(&sluice_aws::client_config(sdk)),
            lag: Arc::default(),
            listing: Mutex::new(None),
            initial: Mutex::new(None),
        })
    }

    /// The last `MillisBehindLatest` of every shard open in this process that has answered one.
    pub fn lag(&self) -> BTreeMap<String, i64> {
        self.lag
            .shards
            .lock()
            .map(|m| m.iter().filter_map(|(k, v)| v.map(|v| (k.clone(), v))).collect())
            .unwrap_or_default()
    }

    /// Whether every shard open in this process is caught up (its last `MillisBehindLatest`
    /// is 0), and some shard has answered at all: `false` before the first answer.
    pub fn caught_up(&self) -> bool {
        if !self.lag.reported.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.lag
            .shards
            .lock()
            .map(|m| m.values().all(|v| *v == Some(0)))
            .unwrap_or(false)
    }

    fn created_while_running(&self, id: &str) -> bool {
        self.initial
            .lock()
            .ok()
            .and_then(|initial| initial.as_ref().map(|ids| !ids.contains(id)))
            .unwrap_or(false)
    }

    /// Lists every shard (all pages).
    async fn list_shards(client: &Client, stream: &StreamRef) -> Result<Vec<aws_sdk_kinesis::types::Shard>, Failure> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let request = client.list_shards();
            // A follow-up page names only its token: the service refuses it with the stream.
            let request = match &next {
                Some(token) => request.next_token(token),
                None => request.set_stream_name(stream.name()).set_stream_arn(stream.arn()),
            };
            let out = request.send().await.map_err(|e| Failure::of(&e))?;
            shards.extend(out.shards().iter().cloned());
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => return Ok(shards),
            }
        }
    }
}

/// The partitions for a shard listing, in shard-id order (children after their parents),
/// each naming the parents that are listed too.
pub fn partitions(shards: &[(String, Option<String>, Option<String>)]) -> Vec<PartitionInfo> {
    let listed: BTreeSet<&str> = shards.iter().map(|(id, _, _)| id.as_str()).collect();
    let mut parts: Vec<PartitionInfo> = shards
        .iter()
        .map(|(id, parent, adjacent)| PartitionInfo {
            id: id.clone(),
            parents: [parent, adjacent]
                .into_iter()
                .flatten()
                .filter(|p| listed.contains(p.as_str()) && *p != id)
                .cloned()
                .collect(),
        })
        .collect();
    parts.sort();
    parts.dedup_by(|a, b| a.id == b.id);
    parts
}

impl Source for KinesisSource {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        let refresh = Duration::from_millis(self.spec.shard_refresh_ms);
        if let Ok(cached) = self.listing.lock()
            && let Some(l) = cached.as_ref()
            && l.at.elapsed() < refresh
        {
            return Ok(l.shards.clone());
        }
        let listed = sluice_aws::runtime()
            .block_on(Self::list_shards(&self.client, &self.stream))
            .map_err(|f| match f.kind {
                Kind::NotFound => SourceError::Config(format!("Kinesis stream `{}` not found: {f}", self.stream)),
                Kind::Fatal | Kind::InvalidArgument => SourceError::Config(format!(
                    "cannot list the shards of Kinesis stream `{}`: {f}",
                    self.stream
                )),
                _ => SourceError::Transient(format!("listing the shards of Kinesis stream `{}`: {f}", self.stream)),
            })?;
        let triples: Vec<_> = listed
            .iter()
            .map(|s| {
                (
                    s.shard_id().to_owned(),
                    s.parent_shard_id().map(str::to_owned),
                    s.adjacent_parent_shard_id().map(str::to_owned),
                )
            })
            .collect();
        let found = partitions(&triples);
        if let Ok(mut initial) = self.initial.lock() {
            initial.get_or_insert_with(|| found.iter().map(|p| p.id.clone()).collect());
        }
        if let Ok(mut cached) = self.listing.lock() {
            *cached = Some(Listing {
                at: Instant::now(),
                shards: found.clone(),
            });
        }
        Ok(found)
    }

    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        let shard = partition.id.clone();
        let resume = match from {
            Position::End => return Ok(Box::new(KinesisReader::finished(shard))),
            Position::Sequence(s) => Resume::Checked(s.clone()),
            // A shard born while the pipeline runs is read whole: `LATEST` would skip the
            // records written to it between the split and now.
            Position::Start if self.created_while_running(&shard) => Resume::TrimHorizon,
            Position::Start => match self.spec.start {
                KinesisStart::TrimHorizon => Resume::TrimHorizon,
                KinesisStart::Latest => Resume::Latest,
            },
            other => {
                return Err(SourceError::Config(format!(
                    "Kinesis shard {shard} cannot resume from {other}"
                )));
            }
        };
        let (tx, rx) = mpsc::channel(PAGES_AHEAD);
        self.lag.open(&shard);
        let task = ShardTask {
            client: self.client.clone(),
            stream: self.stream.clone(),
            shard: shard.clone(),
            resume,
            on_trimmed: self.spec.on_trimmed,
            bounded: self.spec.bounded,
            tx,
            lag: self.lag.clone(),
        };
        let handle = sluice_aws::runtime().spawn(task.run());
        Ok(Box::new(KinesisReader {
            shard,
            rx: Some(rx),
            page: VecDeque::new(),
            position: from.clone(),
            end: None,
            failure: None,
            task: Some(handle),
            lag: Some(self.lag.clone()),
        }))
    }

    fn bounded(&self) -> bool {
        self.spec.bounded
    }

    fn offset_label(&self) -> &'static str {
        "sequence_index"
    }

    fn coordinates(&self, partition: &PartitionInfo) -> Vec<(&'static str, Value)> {
        vec![("shard", Value::from(partition.id.as_str()))]
    }
}

/// How a shard's reading ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The shard is closed and every record was read.
    Closed,
    /// A bounded run caught up with the open shard.
    CaughtUp,
}

/// Reads one shard from what its background task fetched.
struct KinesisReader {
    shard: String,
    rx: Option<mpsc::Receiver<Event>>,
    /// Records received and not yet returned.
    page: VecDeque<Record>,
    /// The position after the last record returned.
    position: Position,
    /// Set once the task said the shard ended; the reader finishes after `page` is drained.
    end: Option<Ending>,
    /// A failure the task reported, returned once the records before it are.
    failure: Option<String>,
    task: Option<tokio::task::JoinHandle<()>>,
    lag: Option<Arc<ShardLags>>,
}

impl KinesisReader {
    /// A reader of a shard that was read to its end before.
    fn finished(shard: String) -> KinesisReader {
        KinesisReader {
            shard,
            rx: None,
            page: VecDeque::new(),
            position: Position::End,
            end: Some(Ending::Closed),
            failure: None,
            task: None,
            lag: None,
        }
    }

    /// Takes what the task sent, without waiting; false if nothing was there.
    fn receive(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        match rx.try_recv() {
            Ok(Event::Page(records)) => {
                self.page.extend(records);
                true
            }
            Ok(Event::Closed) => {
                self.end = Some(Ending::Closed);
                self.rx = None;
                false
            }
            Ok(Event::CaughtUp) => {
                self.end = Some(Ending::CaughtUp);
                self.rx = None;
                false
            }
            Ok(Event::Failed(message)) => {
                self.failure = Some(message);
                self.rx = None;
                false
            }
            Err(mpsc::error::TryRecvError::Empty) => false,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                if self.end.is_none() && self.failure.is_none() {
                    self.failure = Some(format!("the reader task of shard {} stopped unexpectedly", self.shard));
                }
                self.rx = None;
                false
            }
        }
    }
}

impl KinesisReader {
    /// Whether the shard's last `GetRecords` said it is at the tip (`MillisBehindLatest` 0).
    fn at_tip(&self) -> bool {
        self.lag.as_ref().is_some_and(|l| l.at_tip(&self.shard))
    }
}

impl PartitionReader for KinesisReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        let mut read = 0;
        while read < max {
            let Some(record) = self.page.pop_front() else {
                if self.receive() {
                    continue;
                }
                break;
            };
            out.push(RawRecord {
                offset: record.offset,
                key: Some(record.key.into_bytes()),
                payload: (!record.data.is_empty()).then_some(record.data),
            });
            self.position = Position::Sequence(record.sequence);
            read += 1;
        }
        if read == max {
            return Ok(ReadState::More);
        }
        if let Some(message) = self.failure.take() {
            if read > 0 {
                // The records before the failure count; the failure comes with the next poll.
                self.failure = Some(message);
                return Ok(ReadState::More);
            }
            return Err(SourceError::Config(message));
        }
        Ok(match self.end {
            Some(ending) if self.page.is_empty() => {
                if ending == Ending::Closed {
                    self.position = Position::End;
                }
                ReadState::Finished
            }
            _ if read > 0 => ReadState::More,
            // Caught up only once the shard's last answer said it is at its tip.
            _ if self.at_tip() => ReadState::Idle,
            _ => ReadState::Waiting,
        })
    }

    fn position(&self) -> Position {
        self.position.clone()
    }

    /// The `MillisBehindLatest` of the shard's last `GetRecords`, kept by its task: no request
    /// of its own. It measures where the task fetched to, so records fetched ahead and not yet
    /// returned (up to [`PAGES_AHEAD`] pages) are not in it, and it is as old as that answer:
    /// a task waiting for its reader to take a page asks nothing and the value stays put.
    fn lag(&self) -> Option<Lag> {
        let millis = self.lag.as_ref()?.millis(&self.shard)?;
        Some(Lag::Millis(u64::try_from(millis).unwrap_or(0)))
    }
}

impl Drop for KinesisReader {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(lag) = &self.lag {
            lag.close(&self.shard);
        }
    }
}

#[cfg(test)]
mod tests;
