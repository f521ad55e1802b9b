//! The `dynamodb-scan` source: a bounded parallel scan of a DynamoDB table (a backfill),
//! its segments spread over the workers, resumable from checkpoints.
//!
//! ```text
//!  Scan(Segment i, TotalSegments N) ──pages──▶ bounded channel ──items──▶ the worker that owns segment-i
//!  (a task on the shared AWS runtime)           (2 pages ahead)          (poll never blocks)
//! ```
//!
//! **Partitions** are the scan's segments, `segment-0` … `segment-(N-1)` for `segments = N`;
//! each finishes when its last page has been handed out, so the source is bounded. Discovery
//! checks that the table exists (`DescribeTable`) and learns its key attributes.
//!
//! **Records.** Each item becomes one record whose payload is the item as DynamoDB typed
//! JSON (`{"U":{"B":"…"},"V":{"N":"1"}}`, names sorted), what the `dynamodb-item` format
//! decodes; records have no key. A record's ordinal (`item` in dead letters) is the number
//! of items of its segment handed out before it, counted across resumes. It identifies the
//! item only within one scan: a scan started again from the beginning, over a table that
//! changed in between, numbers items differently.
//!
//! **Positions and the resume guarantee.** A segment's position is the key of the last item
//! handed out, `Position::ScanKey({"key": {"U": {"B": "…"}}, "items": n})`, the key kept as
//! typed JSON so it converts back to an `ExclusiveStartKey` exactly, and `items` the count
//! of items handed out so far. At a page's end that key is the page's `LastEvaluatedKey`;
//! inside a page it is the key of the item where the poll stopped, which DynamoDB accepts as
//! an `ExclusiveStartKey` just the same (a `LastEvaluatedKey` *is* the key of the last item
//! evaluated). So a checkpoint taken after any poll, mid-page or not, is exact: an
//! interrupted backfill resumes each segment right after the last item it delivered, and
//! with exactly-once sinks and checkpoints every item reaches the output once. Pages fetched
//! ahead but not handed out are simply fetched again. When a segment's last page (one
//! without `LastEvaluatedKey`) has been handed out, its position is `Position::End` and the
//! reader reports `ReadState::Finished`. A scan sees items as they are when each page is
//! read; what changes meanwhile is the change stream's business (see the `cds` spec).
//!
//! **Projection.** `projection` lists top-level attribute names, comma-separated; each goes
//! behind a placeholder (`#p0, #p1, …` with `ExpressionAttributeNames`), so DynamoDB's
//! reserved words need no quoting and a name with a dot is taken literally. The table's key
//! attributes are always fetched (positions are made of them) and left out of the payload
//! when the projection did not ask for them.
//!
//! **Failures.** Throttling (`ProvisionedThroughputExceededException`,
//! `RequestLimitExceeded`, `ThrottlingException`), server errors and network errors are
//! retried in the background with backoff (100 ms doubling to 5 s, with jitter), with at
//! most one warning per source every 10 s; the segment just waits. A validation error (a bad
//! projection, a resume key from another table) or a missing table is a configuration error.
//! Other errors (access denied, expired credentials) are returned as transient errors: the
//! runner backs off, and the next poll starts the segment's scan again from its position.
//!
//! **Progress.** [`ScanSource::progress`] counts finished segments and items handed out by
//! this process, and a summary is logged when every segment is done. Each segment's reader
//! tells the run's progress display how far it is: items handed out against its share of
//! the table's item count (`ItemCount` from `DescribeTable`, an estimate DynamoDB updates
//! about every six hours, so a segment stays just short of done until it ends), or, while
//! that count is 0, 0 or 1 segment.

mod item;
mod progress;
mod reader;
mod request;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{KeyType, TableStatus};
use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, Source, SourceError};
use sluice_runtime::spec::DynamodbScanSpec;
use sluice_runtime::value::Value;

pub use item::{Item, KeyError, attribute_from_typed, item_json, key_from_value, key_to_value, typed_value};

use progress::Progress;
use reader::{ReaderParts, ScanReader};
use request::{Failure, ScanFetch};

/// DynamoDB's largest `TotalSegments`.
const MAX_SEGMENTS: u32 = 1_000_000;
/// How long `DescribeTable` may take before discovery counts it as an outage.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// How far a scan is, in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanProgress {
    /// Segments read to their end by this process's readers.
    pub segments_done: u32,
    /// The scan's segments (`TotalSegments`), in all processes.
    pub segments_total: u32,
    /// Items handed out by this process's readers.
    pub items: u64,
}

/// A `dynamodb-scan` source: one partition per scan segment.
pub struct ScanSource {
    spec: DynamodbScanSpec,
    name: String,
    client: Client,
    /// The projection's attribute names, checked at construction.
    projection: Option<Vec<String>>,
    /// What readers share, once `DescribeTable` has told the table's key attributes.
    table: Mutex<Option<Arc<Table>>>,
    progress: Arc<Progress>,
}

/// What the readers of one source share.
struct Table {
    fetch: Arc<ScanFetch>,
    keys: Arc<[String]>,
    strip: Arc<[String]>,
}

impl ScanSource {
    /// A source named `name` for `spec`, with the AWS configuration of `spec.aws` and the
    /// standard credential chain; sends no request until [`Source::discover`].
    pub fn new(spec: &DynamodbScanSpec, name: &str) -> Result<ScanSource, SourceError> {
        let sdk = sluice_aws::client_config(&sluice_aws::sdk_config(&spec.aws));
        ScanSource::with_client(spec, name, Client::new(&sdk))
    }

    /// Like [`ScanSource::new`], with a client the caller configured (credentials, retries,
    /// timeouts); `spec.aws` is not used.
    pub fn with_client(spec: &DynamodbScanSpec, name: &str, client: Client) -> Result<ScanSource, SourceError> {
        if spec.segments == 0 || spec.segments > MAX_SEGMENTS {
            return Err(SourceError::Config(format!(
                "source `{name}`: segments must be between 1 and {MAX_SEGMENTS}, not {}",
                spec.segments
            )));
        }
        if let Some(size) = spec.page_size
            && (size == 0 || i32::try_from(size).is_err())
        {
            return Err(SourceError::Config(format!(
                "source `{name}`: page_size must be between 1 and {}, not {size}",
                i32::MAX
            )));
        }
        let projection = match &spec.projection {
            Some(p) => Some(request::projection_names(p).map_err(|e| match e {
                SourceError::Config(m) => SourceError::Config(format!("source `{name}`: {m}")),
                other => other,
            })?),
            None => None,
        };
        Ok(ScanSource {
            progress: Arc::new(Progress::new(&spec.table, name, spec.segments)),
            spec: spec.clone(),
            name: name.to_owned(),
            client,
            projection,
            table: Mutex::new(None),
        })
    }

    /// How far the scan is: segments finished and items handed out, by this process.
    pub fn progress(&self) -> ScanProgress {
        self.progress.snapshot()
    }

    /// What readers share, asking `DescribeTable` the first time (blocking this thread).
    fn table(&self) -> Result<Arc<Table>, SourceError> {
        if let Some(t) = self.table.lock().ok().and_then(|t| t.clone()) {
            return Ok(t);
        }
        let keys = self.describe()?;
        let projection = self
            .projection
            .as_deref()
            .map(|names| request::projection(names, &keys));
        let strip: Arc<[String]> = projection.as_ref().map(|p| p.added.clone()).unwrap_or_default().into();
        let table = Arc::new(Table {
            fetch: Arc::new(ScanFetch {
                client: self.client.clone(),
                table: self.spec.table.clone(),
                // Both checked in `with_client`.
                total_segments: i32::try_from(self.spec.segments).unwrap_or(i32::MAX),
                limit: self.spec.page_size.and_then(|s| i32::try_from(s).ok()),
                projection,
                progress: Arc::clone(&self.progress),
            }),
            keys: keys.into(),
            strip,
        });
        if let Ok(mut slot) = self.table.lock() {
            *slot = Some(Arc::clone(&table));
        }
        Ok(table)
    }

    /// The table's key attribute names (hash, then range), if it exists and is usable; notes
    /// its item count for progress.
    fn describe(&self) -> Result<Vec<String>, SourceError> {
        let table = &self.spec.table;
        let request = self.client.describe_table().table_name(table).send();
        let response = sluice_aws::runtime()
            .block_on(async { tokio::time::timeout(DESCRIBE_TIMEOUT, request).await })
            .map_err(|_| {
                SourceError::Transient(format!(
                    "DescribeTable of `{table}` took longer than {} s",
                    DESCRIBE_TIMEOUT.as_secs()
                ))
            })?;
        let output = response.map_err(|e| match request::classify(&e, table) {
            Failure::Retry(text) => SourceError::Transient(format!("DescribeTable of `{table}`: {text}")),
            Failure::Fail(error) => error,
        })?;
        let Some(description) = output.table() else {
            return Err(SourceError::Transient(format!(
                "DescribeTable of `{table}` answered without a description"
            )));
        };
        if matches!(description.table_status(), Some(TableStatus::Creating)) {
            return Err(SourceError::Transient(format!(
                "DynamoDB table `{table}` is still being created"
            )));
        }
        let mut schema: Vec<_> = description.key_schema().iter().collect();
        // The hash key first: positions list it first when shown.
        schema.sort_by_key(|k| !matches!(k.key_type(), KeyType::Hash));
        let keys: Vec<String> = schema.iter().map(|k| k.attribute_name().to_owned()).collect();
        if keys.is_empty() {
            return Err(SourceError::Transient(format!(
                "DescribeTable of `{table}` gave no key schema"
            )));
        }
        if let Some(items) = description.item_count().and_then(|n| u64::try_from(n).ok()) {
            self.progress.set_table_items(items);
        }
        Ok(keys)
    }
}

/// The partition id of segment `n`.
fn segment_id(n: u32) -> String {
    format!("segment-{n}")
}

impl Source for ScanSource {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        self.table()?;
        Ok((0..self.spec.segments)
            .map(|n| PartitionInfo {
                id: segment_id(n),
                parents: Vec::new(),
            })
            .collect())
    }

    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        let segment = parse_segment(&partition.id)
            .filter(|n| *n < self.spec.segments)
            .ok_or_else(|| {
                SourceError::Config(format!(
                    "`{}` is not a segment of the {}-segment scan of `{}`",
                    partition.id, self.spec.segments, self.spec.table
                ))
            })?;
        let table = self.table()?;
        let parts = ReaderParts {
            fetch: table.fetch.clone(),
            segment,
            keys: Arc::clone(&table.keys),
            strip: Arc::clone(&table.strip),
            progress: Arc::clone(&self.progress),
        };
        let reader = ScanReader::new(parts, &partition.id, from)?;
        tracing::debug!(source = %self.name, partition = %partition.id, from = %from, "scan segment opened");
        Ok(Box::new(reader))
    }

    fn bounded(&self) -> bool {
        true
    }

    fn offset_label(&self) -> &'static str {
        "item"
    }

    fn coordinates(&self, partition: &PartitionInfo) -> Vec<(&'static str, Value)> {
        let segment = match parse_segment(&partition.id) {
            Some(n) => Value::Int(i64::from(n)),
            None => Value::from(partition.id.as_str()),
        };
        vec![("table", Value::from(self.spec.table.as_str())), ("segment", segment)]
    }
}

/// The segment number of a `segment-N` id.
fn parse_segment(id: &str) -> Option<u32> {
    id.strip_prefix("segment-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use sluice_runtime::spec::AwsSpec;

    use super::*;

    fn spec(segments: u32) -> DynamodbScanSpec {
        DynamodbScanSpec {
            table: "Accounts".to_owned(),
            aws: AwsSpec::default(),
            segments,
            projection: Some("U, P,C".to_owned()),
            page_size: Some(100),
        }
    }

    /// A client that is never used: these tests send nothing.
    fn client() -> Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        Client::from_conf(config)
    }

    #[test]
    fn settings_are_checked_at_construction() {
        assert!(ScanSource::with_client(&spec(8), "accounts", client()).is_ok());
        for bad in [
            DynamodbScanSpec { segments: 0, ..spec(1) },
            DynamodbScanSpec {
                segments: 1_000_001,
                ..spec(1)
            },
            DynamodbScanSpec {
                page_size: Some(0),
                ..spec(1)
            },
            DynamodbScanSpec {
                page_size: Some(u32::MAX),
                ..spec(1)
            },
            DynamodbScanSpec {
                projection: Some("U,,P".to_owned()),
                ..spec(1)
            },
        ] {
            assert!(matches!(
                ScanSource::with_client(&bad, "accounts", client()),
                Err(SourceError::Config(_))
            ));
        }
    }

    #[test]
    fn segments_are_named_and_located() {
        let source = ScanSource::with_client(&spec(8), "accounts", client()).expect("source");
        assert!(source.bounded());
        assert_eq!(source.offset_label(), "item");
        assert_eq!(parse_segment("segment-7"), Some(7));
        assert_eq!(parse_segment("segment-x"), None);
        assert_eq!(parse_segment("7"), None);
        let p = PartitionInfo {
            id: segment_id(3),
            parents: Vec::new(),
        };
        assert_eq!(
            source.coordinates(&p),
            vec![("table", Value::from("Accounts")), ("segment", Value::Int(3))]
        );
        for bad in ["segment-8", "shard-1"] {
            let p = PartitionInfo {
                id: bad.to_owned(),
                parents: Vec::new(),
            };
            assert!(
                matches!(source.open(&p, &Position::Start), Err(SourceError::Config(_))),
                "{bad}"
            );
        }
        assert_eq!(
            source.progress(),
            ScanProgress {
                segments_done: 0,
                segments_total: 8,
                items: 0
            }
        );
    }
}
