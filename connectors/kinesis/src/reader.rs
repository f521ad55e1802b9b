//! The background task that reads one shard: iterators, `GetRecords`, retries, and the
//! trimmed-position check, feeding the worker's reader through a bounded channel.

use std::cmp::Ordering;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorOutput;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use sluice_runtime::spec::TrimmedPolicy;
use tokio::sync::mpsc;

use crate::{ShardLags, sequence};
use sluice_aws::{Backoff, Failure, Kind, LogLimit, StreamRef};

/// Records per `GetRecords` call (the service's maximum).
const RECORDS_PER_CALL: i32 = 10_000;
/// The wait after a call that returned nothing: Kinesis allows five calls per second per shard.
pub(crate) const EMPTY_WAIT: Duration = Duration::from_millis(200);
/// How often a shard's retry warnings may be logged.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How often a shard's lag is logged while it does not change.
const LAG_LOG_EVERY: Duration = Duration::from_secs(60);
/// How many `GetRecords` calls the trimmed-position check makes looking for the oldest
/// retained record before giving up (empty pages are possible before the first record).
const PROBE_CALLS: usize = 20;

/// One record fetched from a shard.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) sequence: String,
    pub(crate) offset: u64,
    pub(crate) key: String,
    pub(crate) data: Vec<u8>,
}

/// What the task tells the reader.
#[derive(Debug)]
pub(crate) enum Event {
    /// Records, in shard order.
    Page(Vec<Record>),
    /// The shard is closed, and everything in it was sent.
    Closed,
    /// A bounded run caught up with the shard.
    CaughtUp,
    /// Reading cannot go on (a configuration or permission problem, a trimmed position).
    Failed(String),
}

/// Where the next shard iterator starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Resume {
    /// The oldest retained record.
    TrimHorizon,
    /// After the newest record.
    Latest,
    /// Records that arrived at this time or later (a `LATEST` iterator renewed before any
    /// record was read: `LATEST` again would skip what arrived meanwhile).
    AtTimestamp(SystemTime),
    /// After this sequence number, which was read in this run.
    After(String),
    /// After this sequence number from an earlier run, checked for trimming first.
    Checked(String),
}

/// Reads one shard until it ends, fails, or its reader is dropped.
pub(crate) struct ShardTask {
    pub(crate) client: Client,
    pub(crate) stream: StreamRef,
    pub(crate) shard: String,
    pub(crate) resume: Resume,
    pub(crate) on_trimmed: TrimmedPolicy,
    pub(crate) bounded: bool,
    pub(crate) tx: mpsc::Sender<Event>,
    pub(crate) lag: Arc<ShardLags>,
}

/// Why reading stopped before the shard ended.
enum Stop {
    /// The reader was dropped: nobody listens.
    Dropped,
    /// A failure to report.
    Failed(String),
}

/// Retries for one shard: backoff and rate-limited warnings.
struct Retries {
    backoff: Backoff,
    warnings: LogLimit,
}

impl Retries {
    /// Runs `call` until it succeeds or fails with a kind retrying cannot help.
    async fn call<T, F, Fut>(&mut self, shard: &str, what: &str, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        loop {
            match call().await {
                Ok(v) => {
                    self.backoff.reset();
                    return Ok(v);
                }
                Err(f) if f.kind.retryable() => self.wait(shard, what, &f).await,
                Err(f) => return Err(f),
            }
        }
    }

    /// Logs (rate-limited) and sleeps before the next attempt.
    async fn wait(&mut self, shard: &str, what: &str, failure: &Failure) {
        let wait = self.backoff.next_wait();
        if let Some(held_back) = self.warnings.allow() {
            let throttled = failure.kind == Kind::Throttled;
            tracing::warn!(
                shard, error = %failure, throttled, failures = self.backoff.failures(), held_back,
                retry_in_ms = wait.as_millis() as u64, "kinesis {what} failed; retrying"
            );
        }
        tokio::time::sleep(wait).await;
    }
}

impl ShardTask {
    /// Reads the shard and tells the reader how it ended.
    pub(crate) async fn run(mut self) {
        let mut retries = Retries {
            backoff: Backoff::default(),
            warnings: LogLimit::new(WARN_EVERY),
        };
        let ending = self.read(&mut retries).await;
        self.lag.close(&self.shard);
        let event = match ending {
            Ok(event) => event,
            Err(Stop::Failed(message)) => Event::Failed(message),
            Err(Stop::Dropped) => return,
        };
        // A dropped reader no longer cares how it ended.
        let _ = self.tx.send(event).await;
    }

    async fn read(&mut self, retries: &mut Retries) -> Result<Event, Stop> {
        let mut iterator: Option<String> = None;
        let mut lag_log = LagLog::default();
        loop {
            let current = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(retries).await? {
                    Some(it) => it,
                    // No iterator: the shard is closed and there is nothing after the position.
                    None => return Ok(Event::Closed),
                },
            };
            let request = self
                .client
                .get_records()
                .shard_iterator(&current)
                .limit(RECORDS_PER_CALL)
                .set_stream_arn(self.stream.arn());
            let out = match request.send().await.map_err(|e| Failure::of(&e)) {
                Ok(out) => out,
                Err(f) if f.kind.retryable() => {
                    retries.wait(&self.shard, "GetRecords", &f).await;
                    iterator = Some(current);
                    continue;
                }
                Err(f) if f.kind == Kind::ExpiredIterator => {
                    tracing::debug!(shard = %self.shard, resume = ?self.resume, "shard iterator expired; renewing");
                    continue;
                }
                Err(f) => return Err(Stop::Failed(self.fatal("GetRecords", &f))),
            };
            retries.backoff.reset();
            let millis = out.millis_behind_latest();
            self.lag.set(&self.shard, millis);
            lag_log.log(&self.shard, millis);
            let records: Vec<Record> = out
                .records()
                .iter()
                .map(|r| Record {
                    sequence: r.sequence_number().to_owned(),
                    offset: sequence::ordinal(r.sequence_number()),
                    key: r.partition_key().unwrap_or_default().to_owned(),
                    data: r.data().as_ref().to_vec(),
                })
                .collect();
            let empty = records.is_empty();
            if let Some(last) = records.last() {
                self.resume = Resume::After(last.sequence.clone());
                if self.tx.send(Event::Page(records)).await.is_err() {
                    return Err(Stop::Dropped);
                }
            }
            match out.next_shard_iterator() {
                Some(next) if !next.is_empty() => iterator = Some(next.to_owned()),
                _ => return Ok(Event::Closed),
            }
            if empty {
                if self.bounded && millis == Some(0) {
                    return Ok(Event::CaughtUp);
                }
                tokio::time::sleep(EMPTY_WAIT).await;
            }
        }
    }

    /// A new shard iterator at `self.resume`; `None` if the service has none (a closed shard
    /// read to its end).
    async fn iterator(&mut self, retries: &mut Retries) -> Result<Option<String>, Stop> {
        if let Resume::Checked(sequence) = &self.resume {
            let sequence = sequence.clone();
            self.resume = self.check_resume(retries, sequence).await?;
        }
        let (kind, after, at) = match &self.resume {
            Resume::TrimHorizon => (ShardIteratorType::TrimHorizon, None, None),
            Resume::Latest => (ShardIteratorType::Latest, None, None),
            Resume::AtTimestamp(t) => (ShardIteratorType::AtTimestamp, None, Some(DateTime::from(*t))),
            Resume::After(s) | Resume::Checked(s) => (ShardIteratorType::AfterSequenceNumber, Some(s.clone()), None),
        };
        let asked_at = SystemTime::now();
        match self.shard_iterator(retries, kind, after, at).await {
            Ok(it) => {
                if self.resume == Resume::Latest {
                    self.resume = Resume::AtTimestamp(asked_at);
                }
                Ok(it)
            }
            Err(f) => Err(Stop::Failed(self.fatal("GetShardIterator", &f))),
        }
    }

    /// This shard's `GetShardIterator` of `kind` (after a sequence number, or at a time),
    /// retried like every call; `None` if the service has none (a closed shard read to its
    /// end).
    async fn shard_iterator(
        &self,
        retries: &mut Retries,
        kind: ShardIteratorType,
        after: Option<String>,
        at: Option<DateTime>,
    ) -> Result<Option<String>, Failure> {
        retries
            .call(&self.shard, "GetShardIterator", || {
                classified(
                    self.client
                        .get_shard_iterator()
                        .set_stream_name(self.stream.name())
                        .set_stream_arn(self.stream.arn())
                        .shard_id(&self.shard)
                        .shard_iterator_type(kind.clone())
                        .set_starting_sequence_number(after.clone())
                        .set_timestamp(at)
                        .send(),
                )
            })
            .await
            .map(|out| iterator_of(&out))
    }

    /// Checks a resume position from an earlier run against the shard's retention; returns
    /// where to resume.
    async fn check_resume(&mut self, retries: &mut Retries, sequence: String) -> Result<Resume, Stop> {
        let after = self
            .shard_iterator(
                retries,
                ShardIteratorType::AfterSequenceNumber,
                Some(sequence.clone()),
                None,
            )
            .await;
        match after {
            Ok(_) => {}
            Err(f) if f.kind == Kind::InvalidArgument => return self.trimmed(&sequence, &f.message),
            Err(f) => return Err(Stop::Failed(self.fatal("GetShardIterator", &f))),
        }
        match self.oldest_retained(retries).await? {
            Some(oldest) if sequence::compare(&oldest, &sequence) == Ordering::Greater => self.trimmed(
                &sequence,
                &format!("the oldest retained record is {oldest}, after the resume position"),
            ),
            _ => Ok(Resume::After(sequence)),
        }
    }

    /// What a trimmed resume position leads to, per `on_trimmed`.
    fn trimmed(&self, sequence: &str, why: &str) -> Result<Resume, Stop> {
        tracing::error!(
            stream = %self.stream, shard = %self.shard, sequence, reason = why,
            on_trimmed = ?self.on_trimmed,
            "the resume position of a Kinesis shard is older than the stream's retention: records were lost"
        );
        match self.on_trimmed {
            TrimmedPolicy::Fail => Err(Stop::Failed(format!(
                "shard {} of Kinesis stream `{}` cannot resume after sequence number {sequence} ({why}): \
                 records after it may have expired; set `on_trimmed = \"oldest\"` to go on from the oldest \
                 retained record",
                self.shard, self.stream
            ))),
            TrimmedPolicy::Oldest => Ok(Resume::TrimHorizon),
        }
    }

    /// The sequence number of the oldest record the shard retains, if one is found within
    /// [`PROBE_CALLS`] calls.
    async fn oldest_retained(&mut self, retries: &mut Retries) -> Result<Option<String>, Stop> {
        let mut iterator = match self
            .shard_iterator(retries, ShardIteratorType::TrimHorizon, None, None)
            .await
        {
            Ok(Some(it)) => it,
            Ok(None) => return Ok(None),
            Err(f) => return Err(Stop::Failed(self.fatal("GetShardIterator", &f))),
        };
        for _ in 0..PROBE_CALLS {
            let out = retries
                .call(&self.shard, "GetRecords", || {
                    classified(
                        self.client
                            .get_records()
                            .shard_iterator(&iterator)
                            .limit(1)
                            .set_stream_arn(self.stream.arn())
                            .send(),
                    )
                })
                .await;
            let out = match out {
                Ok(out) => out,
                // Checking took long enough for the iterator to expire: give up checking.
                Err(f) if f.kind == Kind::ExpiredIterator => return Ok(None),
                Err(f) => return Err(Stop::Failed(self.fatal("GetRecords", &f))),
            };
            if let Some(first) = out.records().first() {
                return Ok(Some(first.sequence_number().to_owned()));
            }
            match out.next_shard_iterator() {
                Some(next) if out.millis_behind_latest() != Some(0) => iterator = next.to_owned(),
                // Caught up or closed without a record: nothing is retained.
                _ => return Ok(None),
            }
            tokio::time::sleep(EMPTY_WAIT).await;
        }
        tracing::debug!(shard = %self.shard, "no retained record found; the resume position is not checked");
        Ok(None)
    }

    /// The message of a failure that ends reading.
    fn fatal(&self, what: &str, f: &Failure) -> String {
        match f.kind {
            Kind::NotFound => format!(
                "{what}: shard {} of Kinesis stream `{}` not found (the stream was deleted, or the shard \
                 expired past the retention period): {f}",
                self.shard, self.stream
            ),
            _ => format!(
                "{what} on shard {} of Kinesis stream `{}`: {f}",
                self.shard, self.stream
            ),
        }
    }
}

/// Awaits an SDK request, classifying its failure.
async fn classified<T, E>(request: impl Future<Output = Result<T, SdkError<E>>>) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    request.await.map_err(|e| Failure::of(&e))
}

/// The iterator of a `GetShardIterator` answer (`None` if it has none).
fn iterator_of(out: &GetShardIteratorOutput) -> Option<String> {
    out.shard_iterator().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Logs a shard's lag at debug level when it changes, and now and then when it does not.
#[derive(Default)]
struct LagLog {
    last: Option<(Option<i64>, Instant)>,
}

impl LagLog {
    fn log(&mut self, shard: &str, millis: Option<i64>) {
        let due = match self.last {
            None => true,
            Some((previous, at)) => {
                // Only changes that matter: caught up or not, or a second's difference.
                let changed = (previous == Some(0)) != (millis == Some(0))
                    || previous.zip(millis).is_none_or(|(a, b)| (a - b).abs() >= 1000);
                changed || at.elapsed() >= LAG_LOG_EVERY
            }
        };
        if due {
            self.last = Some((millis, Instant::now()));
            tracing::debug!(shard, millis_behind_latest = ?millis, "kinesis shard lag");
        }
    }
}
