//! The `kafka` source: topic partitions read by the workers they are assigned to, with
//! offsets committed to the consumer group only once the sinks have made the output durable.
//!
//! ```text
//!  brokers ──fetch──▶ one consumer per source and process ──split──▶ a queue per partition
//!                                                                   └─▶ the worker that owns it
//! ```
//!
//! **Assignment, not subscription.** Partitions are spread over workers by the engine's
//! deterministic rule, so every worker knows its share without a group rebalance (and none
//! of a group join's seconds of waiting). The consumer group is used only to record offsets:
//! sluice commits a partition's offset after every output up to it is durable, never by
//! auto-commit, so the group's lag is the pipeline's true lag and operators' tools work.
//!
//! **Positions.** A partition's native position is the next offset to read. A partition
//! starts at the configured `start` (`earliest`, `latest`, or the group's `committed`
//! offset); the pipeline's checkpoints, when there are some, take precedence.
//!
//! **Outages.** librdkafka reconnects by itself; its errors are logged and the reader idles
//! and retries, so a broker outage stalls the pipeline and loses nothing. A missing topic
//! at start is a configuration error.
//!
//! **Bounded runs.** With `bounded = true` each partition is read up to the high watermark
//! it had when it was opened, then finishes, so a Kafka backfill ends by itself.
//!
//! **Lag.** A reader's lag is the records between its next offset and the partition's end as
//! the last fetch response gave it, read from librdkafka's statistics (every second; every
//! 100 ms in bounded runs), so asking costs no broker request.
//!
//! One consumer serves all partitions of a source in a process: librdkafka fetches for all
//! of them over one connection per broker, and each partition's messages go to their own
//! queue, polled by the worker that owns the partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_runtime::source::{
    Lag, PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError,
};
use sluice_runtime::spec::{KafkaSourceSpec, KafkaStart};
use sluice_runtime::value::Value;

/// How long a metadata or watermark request may take before it counts as an outage.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How often librdkafka reports its statistics when the source is unbounded: they carry the
/// high watermarks lag is measured against, and the engine asks for lag about once a second.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// Forwards librdkafka's logs and errors to `tracing`, naming the source, and keeps the
/// partition offsets its statistics report (for [`KafkaReader::done`] and lag).
pub struct Logged {
    name: String,
    partitions: Mutex<HashMap<(String, i32), PartitionStats>>,
}

/// What librdkafka's last statistics said about one partition; its offsets are negative while
/// unknown (`-1001`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartitionStats {
    /// The high watermark, from the last fetch response.
    high: i64,
    /// The end this consumer can read to, from the last fetch response: the last stable
    /// offset with `isolation.level` `read_committed` (librdkafka's default), else the high
    /// watermark.
    stable: i64,
    /// The log start offset, from the last fetch response.
    low: i64,
    /// The offset after the last message or transaction marker the reader was given.
    app: i64,
    /// The next offset librdkafka will fetch.
    fetch: i64,
    /// Messages fetched and queued for the reader.
    queued: i64,
}

impl Logged {
    /// A context for the source called `name`.
    pub fn new(name: &str) -> Self {
        Logged {
            name: name.to_owned(),
            partitions: Mutex::default(),
        }
    }

    fn partition(&self, topic: &str, partition: i32) -> Option<PartitionStats> {
        let partitions = self.partitions.lock().ok()?;
        partitions.get(&(topic.to_owned(), partition)).copied()
    }

    fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partition(topic, partition).map(|p| p.high).filter(|h| *h >= 0)
    }
}

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(client = %self.name, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(client = %self.name, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(client = %self.name, facility = fac, "kafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(client = %self.name, error = %error, "kafka: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        for (topic, t) in statistics.topics {
            for (p, partition) in t.partitions {
                let seen = PartitionStats {
                    high: partition.hi_offset,
                    stable: partition.ls_offset,
                    low: partition.lo_offset,
                    app: partition.app_offset,
                    fetch: partition.next_offset,
                    queued: partition.fetchq_cnt,
                };
                partitions.insert((topic.clone(), p), seen);
            }
        }
    }
}

impl ConsumerContext for Logged {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(client = %self.name, error = %e, "kafka: offset commit failed; the next one catches up");
        }
    }
}

type Client = BaseConsumer<Logged>;

/// A Kafka source: its topics' partitions, one shared consumer.
pub struct KafkaSource {
    spec: KafkaSourceSpec,
    consumer: Arc<Client>,
    /// The partitions of the first discovery; any other was created while the pipeline ran.
    initial: Mutex<Option<Vec<String>>>,
}

impl KafkaSource {
    /// A source named `name` for `spec`; connects lazily (the first metadata request).
    pub fn new(spec: &KafkaSourceSpec, name: &str) -> Result<Self, SourceError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &spec.brokers)
            .set("group.id", &spec.group_id)
            .set("client.id", format!("sluice-{name}"))
            // sluice commits durable offsets itself; auto-commit would run ahead of the sinks.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // `committed` falls back to the oldest record when the group has no offset yet.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            // Prefetched records wait per partition (each has its own queue): librdkafka's
            // default of 64 MiB each would make memory grow with the partition count. A small
            // queue needs refilling often, so the wait before refetching a full queue drops from
            // librdkafka's 1 s to 5 ms (measured: 46 k/s → 298 k/s with 2 MiB queues).
            .set("queued.max.messages.kbytes", "2048")
            .set("fetch.queue.backoff.ms", "5")
            .set("reconnect.backoff.max.ms", "2000");
        // The statistics report the high watermarks that fetch responses carry: where a
        // bounded partition ends (see `KafkaReader::done`, which wants them soon), and what
        // lag is measured against without a request to the broker.
        let interval = if spec.bounded { "100" } else { STATISTICS_INTERVAL_MS };
        config.set("statistics.interval.ms", interval);
        for (key, value) in &spec.options {
            config.set(key, value);
        }
        let consumer: Client = config
            .create_with_context(Logged::new(name))
            .map_err(|e| SourceError::Config(format!("cannot create a Kafka consumer: {e}")))?;
        Ok(KafkaSource {
            spec: spec.clone(),
            consumer: Arc::new(consumer),
            initial: Mutex::new(None),
        })
    }
}

impl KafkaSource {
    fn created_while_running(&self, id: &str) -> bool {
        self.initial
            .lock()
            .ok()
            .and_then(|initial| initial.as_ref().map(|ids| !ids.iter().any(|i| i == id)))
            .unwrap_or(false)
    }
}

/// The partition id sluice gives partition `p` of `topic`.
pub fn partition_id(topic: &str, p: i32) -> String {
    format!("{topic}/{p}")
}

/// The topic and partition number of a partition id made by [`partition_id`].
fn split_id(id: &str) -> Result<(&str, i32), SourceError> {
    id.rsplit_once('/')
        .and_then(|(topic, p)| p.parse().ok().map(|p| (topic, p)))
        .ok_or_else(|| SourceError::Config(format!("`{id}` is not a Kafka partition id (topic/partition)")))
}

impl Source for KafkaSource {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        let mut found = Vec::new();
        for topic in &self.spec.topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|e| SourceError::Transient(format!("metadata of topic `{topic}`: {e}")))?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(SourceError::Config(format!(
                    "topic `{topic}` was not in the broker's metadata"
                )));
            };
            if let Some(e) = t.error() {
                let e = rdkafka::types::RDKafkaErrorCode::from(e);
                return Err(SourceError::Config(format!(
                    "topic `{topic}` cannot be read from {}: {e}",
                    self.spec.brokers
                )));
            }
            let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            ids.sort_unstable();
            found.extend(ids.into_iter().map(|p| PartitionInfo {
                id: partition_id(topic, p),
                parents: Vec::new(),
            }));
        }
        if let Ok(mut initial) = self.initial.lock() {
            initial.get_or_insert_with(|| found.iter().map(|p| p.id.clone()).collect());
        }
        Ok(found)
    }

    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        let (topic, p) = split_id(&partition.id)?;
        let start = match from {
            Position::Offset(n) => Offset::Offset(*n as i64),
            // A partition created while the pipeline runs is read from its first record:
            // `latest` would skip what was written before it was discovered.
            Position::Start if self.spec.start == KafkaStart::Latest && self.created_while_running(&partition.id) => {
                Offset::Beginning
            }
            Position::Start => match self.spec.start {
                KafkaStart::Earliest => Offset::Beginning,
                KafkaStart::Latest => Offset::End,
                KafkaStart::Committed => Offset::Stored,
            },
            other => {
                return Err(SourceError::Config(format!(
                    "a Kafka partition cannot resume from {other}"
                )));
            }
        };
        let (listed_low, listed_end) = if self.spec.bounded {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                .map_err(|e| SourceError::Transient(format!("watermarks of {}: {e}", partition.id)))?;
            (low, Some(high))
        } else {
            (0, None)
        };
        // Split before assigning, so no message of this partition reaches the shared queue.
        let queue = self
            .consumer
            .split_partition_queue(topic, p)
            .ok_or_else(|| SourceError::Config(format!("no queue for partition {}", partition.id)))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, start)
            .map_err(|e| SourceError::Config(format!("{}: {e}", partition.id)))?;
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| SourceError::Transient(format!("assigning {}: {e}", partition.id)))?;
        let next = match from {
            Position::Offset(n) => Some(*n as i64),
            _ => None,
        };
        Ok(Box::new(KafkaReader {
            consumer: self.consumer.clone(),
            queue,
            topic: topic.to_owned(),
            partition: p,
            next,
            listed_low,
            listed_end,
            end: None,
            committed: None,
            last_error_warning: None,
            start,
            start_is_end: matches!(start, Offset::End),
        }))
    }

    fn bounded(&self) -> bool {
        self.spec.bounded
    }

    fn offset_label(&self) -> &'static str {
        "offset"
    }

    fn coordinates(&self, partition: &PartitionInfo) -> Vec<(&'static str, Value)> {
        match split_id(&partition.id) {
            Ok((topic, p)) => vec![("topic", Value::from(topic)), ("partition", Value::Int(i64::from(p)))],
            Err(_) => vec![("partition", Value::from(partition.id.as_str()))],
        }
    }
}

/// Reads one partition from its split queue.
struct KafkaReader {
    consumer: Arc<Client>,
    queue: PartitionQueue<Logged>,
    topic: String,
    partition: i32,
    /// The offset after the last record returned (`None` until one is).
    next: Option<i64>,
    /// For bounded runs, the low watermark a ListOffsets request gave at open: the first
    /// offset the partition still holds.
    listed_low: i64,
    /// For bounded runs, the high watermark a ListOffsets request gave at open.
    listed_end: Option<i64>,
    /// For bounded runs, where the partition ends, once known: offsets below it are read.
    end: Option<i64>,
    /// The last offset committed to the group.
    committed: Option<i64>,
    last_error_warning: Option<Instant>,
    /// Where reading started (for lag until the first record is read).
    start: Offset,
    /// A bounded partition that starts at `latest` has nothing to read.
    start_is_end: bool,
}

impl KafkaReader {
    /// Serves the consumer's shared queue: errors are logged by the context, commit results
    /// reported. No message can arrive there, since every partition is split before it is
    /// assigned; one that did would be lost, so it is refused loudly.
    fn serve_shared_queue(&mut self) -> Result<(), SourceError> {
        for _ in 0..16 {
            match self.consumer.poll(Duration::ZERO) {
                None => return Ok(()),
                Some(Err(e)) => {
                    if self
                        .last_error_warning
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
                    {
                        self.last_error_warning = Some(Instant::now());
                        tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error; retrying");
                    }
                }
                Some(Ok(m)) => {
                    return Err(SourceError::Config(format!(
                        "a message of {}/{} at offset {} arrived on the shared queue",
                        m.topic(),
                        m.partition(),
                        m.offset()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether a bounded partition has been read up to its end.
    ///
    /// The end is the greater of the high watermark listed at open and the first one a
    /// fetch response reports: brokers agree on both, except some Kafka-compatible ones
    /// (Tansu 0.6) whose ListOffsets answers the last batch's base offset + 1. Until a fetch
    /// has reported one, the partition is not done.
    fn done(&mut self) -> bool {
        let Some(listed) = self.listed_end else {
            return false;
        };
        if self.start_is_end {
            return true;
        }
        if self.end.is_none() {
            self.end = self
                .consumer
                .context()
                .high_watermark(&self.topic, self.partition)
                .map(|fetched| fetched.max(listed));
            if let Some(end) = self.end {
                tracing::debug!(topic = %self.topic, partition = self.partition, listed, end, "bounded partition ends");
            }
        }
        let Some(end) = self.end else {
            return false;
        };
        if self.next.is_some_and(|n| n >= end) {
            return true;
        }
        // A partition holding nothing from where this reader starts (empty, or its records
        // expired, or all read before a restart) ends before any record arrives; the
        // consumer's position would stay unset until one did.
        let first = match self.start {
            Offset::Beginning => Some(self.listed_low),
            Offset::Offset(n) => Some(n.max(self.listed_low)),
            _ => None,
        };
        if self.next.is_none() && first.is_some_and(|f| f >= end) {
            return true;
        }
        // Transaction markers take offsets but never arrive as messages: the consumer's
        // position moves past them all the same.
        self.consumer
            .position()
            .ok()
            .and_then(|tpl| tpl.find_partition(&self.topic, self.partition).map(|e| e.offset()))
            .is_some_and(|o| matches!(o, Offset::Offset(n) if n >= end))
    }

    /// The next offset this reader returns, as far as `seen` and its own records tell.
    fn next_offset(&self, seen: &PartitionStats) -> Option<i64> {
        // librdkafka's position also moves past transaction markers, which never arrive as
        // records; it is as old as the statistics, so the reader's own may be ahead of it.
        let read = self.next.unwrap_or(-1).max(seen.app);
        if read >= 0 {
            return Some(read);
        }
        match self.start {
            Offset::Offset(n) => Some(n),
            Offset::Beginning if seen.low >= 0 => Some(seen.low),
            // Where librdkafka resolved `latest` or the group's offset to: its fetch position
            // less what it fetched and queued for the reader. Only until the first record is
            // read, and approximate: offsets may have gaps (compaction, transaction markers),
            // and the queue also counts a marker of the fetch start until the reader polls.
            _ => (seen.fetch >= 0).then(|| (seen.fetch - seen.queued.max(0)).max(seen.low.max(0))),
        }
    }
}

impl PartitionReader for KafkaReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        self.serve_shared_queue()?;
        let end = self.end.unwrap_or(i64::MAX);
        let mut read = 0;
        while read < max {
            match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    if m.offset() >= end {
                        self.next = Some(end);
                        break;
                    }
                    out.push(RawRecord {
                        offset: m.offset() as u64,
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                    self.next = Some(m.offset() + 1);
                    read += 1;
                }
                Some(Err(e)) => {
                    if read > 0 {
                        break;
                    }
                    return Err(SourceError::Transient(format!(
                        "{}/{}: {e}",
                        self.topic, self.partition
                    )));
                }
            }
        }
        Ok(if read == max {
            ReadState::More
        } else if self.done() {
            ReadState::Finished
        } else {
            ReadState::Idle
        })
    }

    fn position(&self) -> Position {
        match self.next {
            Some(n) => Position::Offset(n as u64),
            None => Position::Start,
        }
    }

    fn commit(&mut self, position: &Position, last: bool) -> Result<(), SourceError> {
        let Position::Offset(n) = position else {
            return Ok(());
        };
        let n = *n as i64;
        if self.committed == Some(n) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(n))
            .map_err(|e| SourceError::Config(e.to_string()))?;
        // The final commit waits for the broker's answer, so a run that ends leaves its last
        // offsets recorded; the others must not hold up the worker.
        let mode = if last { CommitMode::Sync } else { CommitMode::Async };
        self.consumer
            .commit(&tpl, mode)
            .map_err(|e| SourceError::Transient(format!("commit of {}/{}: {e}", self.topic, self.partition)))?;
        self.committed = Some(n);
        Ok(())
    }

    /// Records between the reader's next offset and the partition's end, from librdkafka's
    /// last statistics: no broker request, so at most a statistics interval old. The end is
    /// the high watermark of the last fetch response (the last stable offset when reading
    /// only committed transactions, as librdkafka's own `consumer_lag` does). Statistics
    /// arrive as the source's readers poll, and fetching stops once the partition's queue is
    /// full, so the lag of a reader that is not polled stops changing; `None` until a fetch
    /// response reported an end.
    fn lag(&self) -> Option<Lag> {
        // A bounded partition that starts at `latest` reads nothing.
        if self.start_is_end && self.listed_end.is_some() {
            return Some(Lag::Records(0));
        }
        let seen = self.consumer.context().partition(&self.topic, self.partition)?;
        let end = if seen.stable >= 0 { seen.stable } else { seen.high };
        if end < 0 {
            return None;
        }
        // A bounded partition ends where it was found to end, whatever is appended later.
        let end = self.end.map_or(end, |bound| bound.min(end));
        let next = self.next_offset(&seen)?;
        Some(Lag::Records(u64::try_from(end - next).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests;
