//! The `kinesis` sink: keyed records in upsert, changelog or append mode, sent with
//! `PutRecords` in batches by a background task, durable when Kinesis has taken them.
//!
//! ```text
//!  rows of a closed time ──encode per mode──▶ batch (≤ 500 records, ≤ 5 MiB)
//!     ──bounded channel──▶ task on the AWS runtime ──PutRecords, failed entries retried──▶ stream
//!                                                   └─ack──▶ durable frontier
//! ```
//!
//! **Records.** The same shapes as the `kafka` sink, values in JSON:
//! - `upsert`: partition key = the row key, data = the row value; a key whose value was
//!   retracted with no replacement gets a record with **empty data**, the tombstone (Kinesis
//!   has no null records; the `kinesis` source reads empty data as a tombstone).
//! - `changelog`: data = `{"time": T, "diff": D, "key": K, "value": V}` for every update.
//! - `append`: data = the record, or its encoding in the sink's `format`; insertions only,
//!   in source order.
//!
//! **Partition keys** ([`partition_key`]): the format's (`cds-update`: the account UUID),
//! else the row key's JSON text, else — an unkeyed row — the hex SHA-256 of the data, which
//! spreads unkeyed records over the shards and sends a record written again to the same
//! shard. Kinesis wants 1 to 256 characters: an empty format key falls back to the row key,
//! and a longer key is replaced by its hex SHA-256 (64 characters), so it still picks one shard
//! per key, but a reader cannot decode it as the row key any more.
//!
//! **Order.** Batches are sent one request at a time, in the output's order, and a batch's
//! failed entries are retried (with backoff) before the next batch is sent, so a key's
//! records can only be reordered within one request. There, `PutRecords` may take a later
//! record of a key and refuse (throttle) an earlier one; the retry then sends the refused
//! record *and every later record of the same key in that request again*, so the stream
//! ends with the key's records in order, at the price of duplicates.
//!
//! **Delivery.** Throttling (`ProvisionedThroughputExceeded`), service failures and network
//! errors are retried for as long as it takes (100 ms doubling to 5 s, with jitter; warnings
//! at most every 30 s), so an outage stalls the pipeline — `write` blocks once the channel
//! holds [`BATCHES_AHEAD`] batches — and loses nothing. A record over 1 MiB (data and key)
//! fails the sink at once, naming its key; a record or request the service refuses for good
//! (no such stream, access denied, a disabled KMS key) fails it when the answer arrives.
//!
//! **Durability.** The durable frontier advances to a frontier `F` once every record of
//! the times before `F` has been taken by Kinesis. Sources commit their positions only
//! behind it.
//!
//! **After a crash: at least once.** A restarted pipeline writes the output after its last
//! checkpoint (or durable point) again, and a request that timed out after Kinesis took it
//! is sent again: records can be doubled, never lost. They are keyed so that doubles do not
//! change *final state*: an `upsert` stream read as a table ends with the same value per
//! key, a `changelog` consumer deduplicates by (key, time), and `append` records carry their
//! source position or a delivery id for consumers that must deduplicate.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sha2::{Digest, Sha256};
use sluice_aws::{Backoff, Failure, Kind, LogLimit, StreamRef};
use sluice_runtime::record::{Diff, Row, Time};
use sluice_runtime::sink::{Encode, PendingCommits, Record, Sink, SinkError, for_each_record};
use sluice_runtime::spec::{KinesisSinkSpec, SinkMode};
use sluice_runtime::value::Value;
use tokio::sync::mpsc;

/// Records in one `PutRecords` request (the service's limit).
pub const MAX_RECORDS: usize = 500;
/// Bytes of data and partition keys in one request (the service's limit, 5 MiB).
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// Bytes of data and partition key of one record (the service's limit, 1 MiB).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Characters of a partition key (the service's limit).
pub const MAX_KEY_CHARS: usize = 256;
/// Batches that may wait for the background task before `write` blocks.
pub const BATCHES_AHEAD: usize = 4;
/// How often the task's retry warnings may be logged.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// One record to put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The partition key (1 to 256 characters).
    pub key: String,
    /// The data; empty for an upsert tombstone.
    pub data: Vec<u8>,
}

impl Entry {
    /// What the record counts against the request and record limits.
    pub fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

/// Records that go in one `PutRecords` request, in order.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
    bytes: usize,
}

impl Batch {
    /// Whether a record of `size` bytes fits in this batch.
    pub fn fits(&self, size: usize) -> bool {
        self.entries.len() < MAX_RECORDS && self.bytes + size <= MAX_REQUEST_BYTES
    }

    /// Adds `entry`; the caller checked that it [fits](Batch::fits).
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.size();
        self.entries.push(entry);
    }

    /// Whether every record of `other` fits in this batch too.
    pub fn can_take(&self, other: &Batch) -> bool {
        self.entries.len() + other.entries.len() <= MAX_RECORDS && self.bytes + other.bytes <= MAX_REQUEST_BYTES
    }

    /// Appends `other`'s records.
    pub fn append(&mut self, other: Batch) {
        self.bytes += other.bytes;
        self.entries.extend(other.entries);
    }

    /// The records, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether the batch has no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The partition key of a record: the format's key if it has a non-empty one, else the row
/// key's JSON text, else (an unkeyed row) the hex SHA-256 of `data`; a key over
/// [`MAX_KEY_CHARS`] characters is replaced by its hex SHA-256.
pub fn partition_key(format_key: Option<String>, row_key: &Value, data: &[u8]) -> String {
    let key = match format_key.filter(|k| !k.is_empty()) {
        Some(k) => k,
        None if !row_key.is_null() => row_key.to_json_string(),
        None => return hex_sha256(data),
    };
    if key.chars().count() > MAX_KEY_CHARS {
        hex_sha256(key.as_bytes())
    } else {
        key
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Which records of a request to send again, given which ones failed: every failed record,
/// and every later record with the key of an earlier failed one (so that the key's last
/// record lands last), in their order.
pub fn to_retry(keys: &[&str], failed: &[bool]) -> Vec<usize> {
    let mut failed_keys: BTreeSet<&str> = BTreeSet::new();
    let mut again = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let this_failed = failed.get(i).copied().unwrap_or(false);
        if this_failed || failed_keys.contains(key) {
            again.push(i);
        }
        if this_failed {
            failed_keys.insert(key);
        }
    }
    again
}

/// What the background task reports: batches taken by Kinesis, and the first permanent failure.
#[derive(Debug, Default)]
struct Progress {
    /// Batches (as numbered by the sink) that Kinesis has taken entirely.
    acked: u64,
    failure: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
        self.changed.notify_all();
    }
}

/// A sink writing one output to one Kinesis stream.
pub struct KinesisSink {
    stream: StreamRef,
    mode: SinkMode,
    encoder: Option<Arc<dyn Encode>>,
    /// The batch being filled.
    batch: Batch,
    /// To the background task; `None` once it is gone.
    tx: Option<mpsc::Sender<Batch>>,
    shared: Arc<Shared>,
    /// Batches handed to the task so far.
    sent: u64,
    /// Commits not yet known durable, with the batches sent before each.
    commits: PendingCommits,
}

impl KinesisSink {
    /// A sink writing to `spec`'s stream in `mode`, encoding append records with `encoder`
    /// when the sink has a format other than JSON; the standard AWS configuration chain with
    /// the spec's region and endpoint.
    pub fn new(
        spec: &KinesisSinkSpec,
        mode: SinkMode,
        encoder: Option<Arc<dyn Encode>>,
    ) -> Result<KinesisSink, SinkError> {
        Self::with_sdk_config(spec, mode, encoder, &sluice_aws::sdk_config(&spec.aws))
    }

    /// As [`KinesisSink::new`], with an SDK configuration made by the caller (static
    /// credentials for a local test service).
    pub fn with_sdk_config(
        spec: &KinesisSinkSpec,
        mode: SinkMode,
        encoder: Option<Arc<dyn Encode>>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<KinesisSink, SinkError> {
        if spec.stream.trim().is_empty() {
            return Err(SinkError::Config("kinesis sink: `stream` is empty".to_owned()));
        }
        let stream = StreamRef::parse(&spec.stream);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(BATCHES_AHEAD);
        let client = Client::new(&sluice_aws::client_config(sdk));
        sluice_aws::runtime().spawn(deliver(client, stream.clone(), rx, shared.clone()));
        Ok(KinesisSink {
            stream,
            mode,
            encoder,
            batch: Batch::default(),
            tx: Some(tx),
            shared,
            sent: 0,
            commits: PendingCommits::default(),
        })
    }

    /// A sink whose batches go to the returned receiver instead of a task (for tests).
    #[cfg(test)]
    fn with_channel(
        stream: &str,
        mode: SinkMode,
        encoder: Option<Arc<dyn Encode>>,
    ) -> (KinesisSink, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(1024);
        let sink = KinesisSink {
            stream: StreamRef::parse(stream),
            mode,
            encoder,
            batch: Batch::default(),
            tx: Some(tx),
            shared: Arc::default(),
            sent: 0,
            commits: PendingCommits::default(),
        };
        (sink, rx)
    }

    /// Fails if a record was refused for good.
    fn check(&self) -> Result<(), SinkError> {
        match self.shared.progress.lock() {
            Ok(p) => match &p.failure {
                Some(f) => Err(SinkError::Io(f.clone())),
                None => Ok(()),
            },
            Err(_) => Err(SinkError::Io("the Kinesis sink's progress was poisoned".to_owned())),
        }
    }

    /// Adds `record` to the batch, sending the batch first if the record does not fit.
    fn put(&mut self, record: Record<'_>) -> Result<(), SinkError> {
        // A tombstone is a record with empty data: Kinesis has no null records.
        let data = record.payload.unwrap_or_default();
        let key = match record.key {
            // Keyed: every record of the key goes to one shard, whatever its data, even for a
            // null key (an upsert of a collection whose key came out null).
            Some(key) => partition_key(record.format_key(), key, &[]),
            None => partition_key(record.format_key(), &Value::Null, data),
        };
        let entry = Entry {
            key,
            data: data.to_vec(),
        };
        if entry.size() > MAX_RECORD_BYTES {
            return Err(SinkError::Io(format!(
                "a record for partition key `{}` has {} bytes, over Kinesis's limit of {MAX_RECORD_BYTES} \
                 (data and key) for stream `{}`",
                entry.key,
                entry.size(),
                self.stream
            )));
        }
        if !self.batch.fits(entry.size()) {
            self.flush()?;
        }
        self.batch.push(entry);
        Ok(())
    }

    /// Hands the batch being filled to the task, waiting while the channel is full.
    fn flush(&mut self) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let sent = self.tx.as_ref().is_some_and(|tx| tx.blocking_send(batch).is_ok());
        if !sent {
            self.tx = None;
            self.check()?;
            return Err(SinkError::Io(format!(
                "the Kinesis sink for stream `{}` stopped sending",
                self.stream
            )));
        }
        self.sent += 1;
        Ok(())
    }

    /// Batches Kinesis has taken so far, in order.
    fn acknowledged(&self) -> u64 {
        self.shared.progress.lock().map_or(0, |p| p.acked)
    }

    /// Waits until every batch sent is taken, or the task failed.
    fn wait_all_taken(&self) -> Result<(), SinkError> {
        let Ok(mut p) = self.shared.progress.lock() else {
            return Err(SinkError::Io("the Kinesis sink's progress was poisoned".to_owned()));
        };
        while p.acked < self.sent && p.failure.is_none() {
            p = match self.shared.changed.wait_timeout(p, Duration::from_millis(100)) {
                Ok((p, _)) => p,
                Err(_) => return Err(SinkError::Io("the Kinesis sink's progress was poisoned".to_owned())),
            };
        }
        Ok(())
    }
}

impl Sink for KinesisSink {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        self.check()?;
        // A handle of its own: `put` borrows the whole sink.
        let encoder = self.encoder.clone();
        for_each_record(self.mode, encoder.as_deref(), time, updates, |record| self.put(record))
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.flush()?;
        self.commits.commit(frontier, self.sent);
        if frontier.is_none() {
            // The end of the run: wait until every record is taken (or refused).
            self.wait_all_taken()?;
        }
        self.check()?;
        self.commits.advance(self.acknowledged());
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        // Batches are taken between commits: look without waiting for one.
        self.commits.durable(self.acknowledged())
    }
}

/// The background task: sends the batches in order, merging those that queued up into one
/// request while they fit, until the sink is dropped or a record is refused for good.
async fn deliver(client: Client, stream: StreamRef, mut rx: mpsc::Receiver<Batch>, shared: Arc<Shared>) {
    let mut retries = (Backoff::default(), LogLimit::new(WARN_EVERY));
    let mut carry: Option<Batch> = None;
    loop {
        let mut batch = match carry.take() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => return,
            },
        };
        let mut count = 1;
        while let Ok(next) = rx.try_recv() {
            if batch.can_take(&next) {
                batch.append(next);
                count += 1;
            } else {
                carry = Some(next);
                break;
            }
        }
        match put_records(&client, &stream, batch.entries, &mut retries).await {
            Ok(()) => shared.update(|p| p.acked += count),
            Err(message) => {
                tracing::error!(stream = %stream, error = %message, "kinesis sink failed");
                shared.update(|p| {
                    p.failure.get_or_insert(message);
                });
                return;
            }
        }
    }
}

/// Puts `entries` until every one is taken, retrying what failed; `Err` when the service
/// refuses the request or a record for good.
async fn put_records(
    client: &Client,
    stream: &StreamRef,
    mut entries: Vec<Entry>,
    (backoff, warnings): &mut (Backoff, LogLimit),
) -> Result<(), String> {
    while !entries.is_empty() {
        let request = entries
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&e.key)
                    .data(Blob::new(e.data.clone()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot build a PutRecords request for stream `{stream}`: {e}"))?;
        let answer = client
            .put_records()
            .set_stream_name(stream.name())
            .set_stream_arn(stream.arn())
            .set_records(Some(request))
            .send()
            .await;
        let failure = match answer {
            Err(e) => {
                let f = Failure::of(&e);
                if !f.kind.retryable() {
                    return Err(match f.kind {
                        Kind::NotFound => format!("Kinesis stream `{stream}` not found: {f}"),
                        _ => format!("PutRecords to Kinesis stream `{stream}` refused: {f}"),
                    });
                }
                f
            }
            Ok(out) if out.failed_record_count().unwrap_or(0) == 0 => {
                backoff.reset();
                return Ok(());
            }
            Ok(out) => {
                let results = out.records();
                if results.len() != entries.len() {
                    return Err(format!(
                        "PutRecords to Kinesis stream `{stream}` answered {} results for {} records",
                        results.len(),
                        entries.len()
                    ));
                }
                let mut failed = vec![false; entries.len()];
                let mut first = None;
                for (i, r) in results.iter().enumerate() {
                    let Some(code) = r.error_code() else { continue };
                    let message = r.error_message().unwrap_or_default();
                    if !Kind::of_code(code).retryable() {
                        return Err(format!(
                            "Kinesis stream `{stream}` refused the record for partition key `{}`: {code}: {message}",
                            entries[i].key
                        ));
                    }
                    failed[i] = true;
                    first.get_or_insert_with(|| Failure {
                        kind: Kind::of_code(code),
                        message: format!(
                            "{} of {} records failed, first {code}: {message}",
                            out.failed_record_count().unwrap_or(0),
                            entries.len()
                        ),
                    });
                }
                let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                let again: BTreeSet<usize> = to_retry(&keys, &failed).into_iter().collect();
                entries = entries
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| again.contains(i))
                    .map(|(_, e)| e)
                    .collect();
                match first {
                    Some(f) => f,
                    // A failed count without a failed entry: nothing to retry.
                    None => return Ok(()),
                }
            }
        };
        let wait = backoff.next_wait();
        if let Some(held_back) = warnings.allow() {
            tracing::warn!(
                stream = %stream, error = %failure, throttled = failure.kind == Kind::Throttled,
                failures = backoff.failures(), held_back, retry_in_ms = wait.as_millis() as u64,
                "kinesis PutRecords failed; retrying"
            );
        }
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
