//! Pipeline files: the declarative description of sources, graph nodes and sinks.
//!
//! A pipeline is a TOML file. Parsing ([`parse`]) never stops at the first problem: it walks
//! the whole document, collects every [`Problem`] with its file, line, column and key path,
//! and only returns a [`Pipeline`] when there are none. [`check`] then validates the graph
//! (references, cycles, keyed/append shapes). Nothing here opens a file other than the
//! pipeline itself or makes a connection: `sluice validate` is offline by construction.
//!
//! Expressions and domain-node parameters are checked by the layer that owns their
//! compilers (the CLI wiring), which reports through the same [`Problem`] type using the
//! locations recorded here.

mod check;
mod dot;
mod parse;
mod walk;

use std::fmt;
use std::path::{Path, PathBuf};

pub use check::{Graph, Shape, check, check_partial};
pub use dot::to_dot;
pub use parse::{Parsed, parse, parse_partial};

/// A 1-based line and column in the pipeline file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Loc {
    /// Line, starting at 1.
    pub line: usize,
    /// Column (in characters), starting at 1.
    pub col: usize,
}

/// A value from the pipeline file with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    /// The value (after `${VAR}` interpolation for strings).
    pub value: T,
    /// Where the value starts in the file.
    pub loc: Loc,
    /// The dotted key path of the value, e.g. `nodes.errors.expr`.
    pub path: String,
}

/// One problem found in a pipeline file, with enough context to fix it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The pipeline file.
    pub file: PathBuf,
    /// Where in the file; `None` when the problem is about the file as a whole.
    pub loc: Option<Loc>,
    /// The dotted key path the problem is about.
    pub path: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl Problem {
    /// A problem at a spanned value.
    pub fn at<T>(file: &Path, at: &Spanned<T>, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_path_buf(),
            loc: Some(at.loc),
            path: at.path.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.loc {
            write!(f, ":{}:{}", loc.line, loc.col)?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// A parsed pipeline file.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The file it was read from.
    pub file: PathBuf,
    /// The directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// The pipeline's name (defaults to the file stem).
    pub name: String,
    /// Timely worker threads (overridable by `--workers`).
    pub workers: usize,
    /// The epoch clock tick in milliseconds.
    pub epoch_ms: u64,
    /// Where checkpoints are kept (resolved against the pipeline's directory); `None`: the
    /// pipeline keeps none and a restart starts over.
    pub checkpoint_dir: Option<PathBuf>,
    /// How often a checkpoint is taken, in milliseconds (one is also taken at a clean stop).
    pub checkpoint_interval_ms: u64,
    /// Where dead letters go.
    pub dead_letters: SinkTarget,
    /// Sources in file order; a source's index here is its `Pos::source`.
    pub sources: Vec<SourceDecl>,
    /// Graph nodes in file order.
    pub nodes: Vec<NodeDecl>,
    /// Sinks in file order.
    pub sinks: Vec<SinkDecl>,
    /// The server answering clients of served views, if any.
    pub server: Option<ServerSpec>,
}

/// A named source.
#[derive(Clone, Debug)]
pub struct SourceDecl {
    /// The source's name, as referenced by nodes and sinks.
    pub name: Spanned<String>,
    /// What to read.
    pub spec: SourceSpec,
    /// How bytes become values.
    pub format: Format,
    /// How values become a collection.
    pub envelope: Envelope,
    /// Bounded sources that must be read to their end before this one starts (a table
    /// before the events that need it, in a backfill).
    pub start_after: Vec<Spanned<String>>,
}

/// The closed set of source kinds; adding a connector adds a variant.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// JSON lines from one file or a glob of files.
    File(FileSourceSpec),
    /// Records of one or more Kafka topics.
    Kafka(KafkaSourceSpec),
    /// Records of a Kinesis data stream, shard by shard.
    Kinesis(KinesisSourceSpec),
    /// Items of a DynamoDB table, read by a parallel scan (always bounded).
    DynamodbScan(DynamodbScanSpec),
    /// Events published over HTTP (`POST /publish`), kept in a local append-only log.
    HttpIngest(HttpIngestSpec),
}

impl SourceSpec {
    /// The `type` name of the source kind.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::File(_) => "file",
            SourceSpec::Kafka(_) => "kafka",
            SourceSpec::Kinesis(_) => "kinesis",
            SourceSpec::DynamodbScan(_) => "dynamodb-scan",
            SourceSpec::HttpIngest(_) => "http-ingest",
        }
    }

    /// Whether the source ends by itself (files not followed, Kafka with `bounded = true`).
    pub fn bounded(&self) -> bool {
        match self {
            SourceSpec::File(f) => !f.follow && !f.reload,
            SourceSpec::Kafka(k) => k.bounded,
            SourceSpec::Kinesis(k) => k.bounded,
            SourceSpec::DynamodbScan(_) => true,
            SourceSpec::HttpIngest(_) => false,
        }
    }

    /// Whether the source's readers tell how much of a bounded run they have read
    /// ([`crate::source::PartitionReader::progress`]): a file not followed, a scan.
    pub fn reports_progress(&self) -> bool {
        match self {
            SourceSpec::File(_) | SourceSpec::DynamodbScan(_) => self.bounded(),
            SourceSpec::Kafka(_) | SourceSpec::Kinesis(_) | SourceSpec::HttpIngest(_) => false,
        }
    }
}

/// Configuration of a `file` source.
#[derive(Clone, Debug)]
pub struct FileSourceSpec {
    /// A file path or glob, resolved against the pipeline's directory.
    pub path: Spanned<String>,
    /// Keep reading lines appended to the files (an unbounded source).
    pub follow: bool,
    /// The file is a whole table (JSON lines, or TOML arrays of tables), read again when it
    /// changes: what changed is emitted as upserts and tombstones (an unbounded source).
    pub reload: bool,
    /// How often a followed or reloaded file is checked for changes, in milliseconds.
    pub poll_ms: u64,
}

/// Configuration of an `http-ingest` source: the publish endpoint and the local log that
/// makes an accepted event durable before it is acknowledged.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpIngestSpec {
    /// Where the endpoint listens (`host:port`).
    pub listen: Spanned<String>,
    /// The directory of the log, resolved against the pipeline's directory.
    pub log_dir: PathBuf,
    /// The HS256 secret publishers' tokens are signed with.
    pub jwt_secret: String,
    /// The largest request body accepted, in bytes; larger ones get `413`.
    pub max_body_bytes: u64,
    /// The request body bytes all publishes in progress may hold together; past it, `503`.
    pub max_in_flight_bytes: u64,
    /// How long a request's body may take to arrive after its headers, in ms; then `408`.
    pub body_timeout_ms: u64,
    /// Logs (partitions) events are spread over by topic.
    pub partitions: u32,
    /// The size at which a log segment is closed and a new one started, in bytes.
    pub segment_bytes: u64,
    /// Serve HTTPS with this certificate and key (`[sources.NAME.tls]`); plain HTTP without.
    pub tls: Option<TlsSpec>,
}

/// A certificate chain and its private key, as PEM files, for an endpoint serving HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSpec {
    /// The certificate chain, leaf first, resolved against the pipeline's directory.
    pub cert: PathBuf,
    /// The leaf's private key, resolved against the pipeline's directory.
    pub key: PathBuf,
}

/// Configuration of a `kafka` source.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSourceSpec {
    /// The bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topics read, in the order given.
    pub topics: Vec<String>,
    /// The consumer group offsets are committed to (for lag monitoring and `start = "committed"`).
    pub group_id: String,
    /// Where a partition without a resume position starts.
    pub start: KafkaStart,
    /// Read each partition up to the end it had when it was opened, then finish (a bounded
    /// run, for backfills and tests).
    pub bounded: bool,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, `fetch.*`), applied last.
    pub options: Vec<(String, String)>,
}

/// Where an AWS service is reached: region and endpoint; credentials come from the standard
/// AWS chain (environment, profile, instance role).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AwsSpec {
    /// The region; `None`: from the AWS chain (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// An endpoint override (`http://127.0.0.1:4567` for a local implementation).
    pub endpoint: Option<String>,
}

/// Configuration of a `kinesis` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisSourceSpec {
    /// The stream's name or ARN.
    pub stream: String,
    /// Where the service is.
    pub aws: AwsSpec,
    /// Where a shard without a resume position starts.
    pub start: KinesisStart,
    /// What to do when a resume position is older than the stream's retention.
    pub on_trimmed: TrimmedPolicy,
    /// Read each shard until it is caught up (`MillisBehindLatest` 0) or closed, then finish:
    /// a bounded run, for backfills and tests.
    pub bounded: bool,
    /// How often the shard list is refreshed (new child shards), in milliseconds.
    pub shard_refresh_ms: u64,
}

/// Where a Kinesis shard starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KinesisStart {
    /// At the oldest retained record (`TRIM_HORIZON`).
    TrimHorizon,
    /// After the newest record when the shard is opened (`LATEST`).
    Latest,
}

/// What a Kinesis source does with a resume position older than the stream's retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimmedPolicy {
    /// Fail the run: records were lost, and a person must decide.
    Fail,
    /// Log an error and go on from the oldest retained record.
    Oldest,
}

/// Configuration of a `dynamodb-scan` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamodbScanSpec {
    /// The table.
    pub table: String,
    /// Where the service is.
    pub aws: AwsSpec,
    /// The parallel scan's `TotalSegments`; segments are spread over workers.
    pub segments: u32,
    /// A `ProjectionExpression` (attribute names, comma-separated), if only some are needed.
    pub projection: Option<String>,
    /// Items per `Scan` call (`Limit`); `None`: the service's 1 MB pages.
    pub page_size: Option<u32>,
}

/// Configuration of a `kinesis` sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisSinkSpec {
    /// The stream's name or ARN.
    pub stream: String,
    /// Where the service is.
    pub aws: AwsSpec,
}

/// Where a Kafka partition starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaStart {
    /// At the oldest retained record.
    Earliest,
    /// After the newest record at the time the partition is opened.
    Latest,
    /// At the consumer group's committed offset, or the earliest record if there is none.
    Committed,
}

impl KafkaStart {
    /// The name in pipeline files.
    pub fn name(&self) -> &'static str {
        match self {
            KafkaStart::Earliest => "earliest",
            KafkaStart::Latest => "latest",
            KafkaStart::Committed => "committed",
        }
    }
}

/// Configuration of a `kafka` sink (or dead-letter output).
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSinkSpec {
    /// The bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic written.
    pub topic: String,
    /// How long librdkafka may retry a record before the sink fails the run, in
    /// milliseconds; `0` retries until the broker takes it (an outage stalls, never loses).
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka properties, applied last.
    pub options: Vec<(String, String)>,
}

/// Configuration of a `webhook` sink: its retry policy, limits, and where deliveries that
/// failed for good go.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookSinkSpec {
    /// The sink's name, for logs: set from the sink's table.
    pub name: String,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per delivery before it is dead-lettered.
    pub max_attempts: u32,
    /// How long after its first attempt a delivery may still be retried, in milliseconds.
    pub max_age_ms: u64,
    /// The delay before the first retry, in milliseconds; it doubles with each attempt.
    pub initial_backoff_ms: u64,
    /// The longest delay between attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Requests in flight to one target (scheme, host and port) at most.
    pub per_target_concurrency: u32,
    /// Requests in flight overall at most.
    pub max_in_flight: u32,
    /// Deliveries not yet attempted at most; above it the sink holds the pipeline back.
    pub max_queued: u64,
    /// Unresolved deliveries one target may have; one more is dead-lettered unattempted.
    pub max_pending_per_target: u64,
    /// Whether targets on loopback, private, link-local or metadata addresses are allowed.
    pub allow_private_targets: bool,
    /// Where deliveries that failed for good are written (the spec's `dead_letters` output).
    pub dead_letters: Box<SinkTarget>,
}

/// Configuration of a `served` sink: how its view is partitioned, versioned and pruned.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedSinkSpec {
    /// The view's name, which clients ask for: the sink's name.
    pub name: String,
    /// A field of the key (or else the value) whose value picks the partition a client reads.
    pub partition_by: Option<Spanned<String>>,
    /// A value field holding each entry's version (the messages feed's `timestamp`); by
    /// default the version is the time of the change.
    pub version_field: Option<Spanned<String>>,
    /// How long a deletion is kept as a tombstone, in milliseconds; `None`: forever.
    pub retention_ms: Option<u64>,
}

/// The pipeline's `[server]`: where served views are answered, and with which keys.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSpec {
    /// Where the gRPC services listen (`host:port`).
    pub grpc: Option<Spanned<String>>,
    /// Where the HTTP endpoints listen (`host:port`).
    pub http: Option<Spanned<String>>,
    /// The key continuation tokens are signed with (at least 16 bytes).
    pub token_key: Spanned<String>,
    /// The secret `Subscribe` callers send as `x-sluice-auth-token`; `None`: no auth.
    pub subscribe_auth_token: Option<String>,
    /// Messages buffered per client stream.
    pub client_buffer: usize,
    /// How long a client stream's buffer may stay full before it is cut off, in milliseconds.
    pub stall_timeout_ms: u64,
    /// The contact-discovery `AccountStreamService`, if served.
    pub account_stream: Option<AccountStreamSpec>,
    /// The messages sync service (gRPC and HTTP), if served.
    pub messages: Option<MessagesServiceSpec>,
    /// Serve TLS on both listeners (`[server.tls]`); plain without.
    pub tls: Option<TlsSpec>,
    /// Where the section starts, for problems about it as a whole.
    pub loc: Loc,
}

/// `[server.account_stream]`: the view it serves and its auth secret.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountStreamSpec {
    /// The served sink holding the cds directory.
    pub view: Spanned<String>,
    /// The secret clients send as `x-signal-auth-token`; `None`: no auth (warned at start).
    pub auth_token: Option<String>,
}

/// `[server.messages]`: the view it serves and the bearer-token secret.
#[derive(Clone, Debug, PartialEq)]
pub struct MessagesServiceSpec {
    /// The served sink holding the messages feed.
    pub view: Spanned<String>,
    /// The HS256 secret that callers' bearer tokens are signed with.
    pub jwt_secret: Spanned<String>,
}

/// How a source's bytes are decoded into values, or a sink's values encoded into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per record (a line, for files).
    Json,
    /// A DynamoDB change record as Kinesis Data Streams for DynamoDB (or DynamoDB Streams)
    /// delivers it, with DynamoDB-typed attributes.
    DynamodbStream,
    /// A DynamoDB item with DynamoDB-typed attributes, as a table scan returns it.
    DynamodbItem,
    /// A contact-discovery update (spec/cds.md), as the original function wrote to Kinesis.
    CdsUpdate,
}

impl Format {
    /// Every format, in the order they are listed in messages.
    pub const ALL: [Format; 4] = [
        Format::Json,
        Format::DynamodbStream,
        Format::DynamodbItem,
        Format::CdsUpdate,
    ];

    /// The format's name in pipeline files.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::DynamodbStream => "dynamodb-stream",
            Format::DynamodbItem => "dynamodb-item",
            Format::CdsUpdate => "cds-update",
        }
    }

    /// Whether sinks can write this format (a format with an encoder).
    pub fn encodes(&self) -> bool {
        matches!(self, Format::Json | Format::CdsUpdate)
    }
}

/// How decoded records become a collection.
#[derive(Clone, Debug, PartialEq)]
pub enum Envelope {
    /// Each record is an event; `key` (if any) sets the row key.
    Append {
        /// Fields forming the row key; `None` leaves rows unkeyed.
        key: Option<KeyFields>,
    },
    /// Each record is the latest value of its key; a tombstone retracts it.
    Upsert {
        /// Fields forming the key; `None` keys records by the message key (Kafka).
        key: Option<KeyFields>,
        /// A record whose value of this field is `true` is a tombstone (besides `null`).
        deleted_field: Option<String>,
    },
}

impl Envelope {
    /// The key fields, if the envelope has any.
    pub fn key(&self) -> Option<&KeyFields> {
        match self {
            Envelope::Append { key } => key.as_ref(),
            Envelope::Upsert { key, .. } => key.as_ref(),
        }
    }
}

/// A list of field paths that form a key (`["app", "push_token"]`, `["a.b"]`).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyFields {
    /// Each field as a path of names (`"a.b"` → `["a", "b"]`).
    pub fields: Vec<Vec<String>>,
    /// Where the list was written.
    pub loc: Loc,
    /// The key path of the list.
    pub path: String,
}

/// A named graph node.
#[derive(Clone, Debug)]
pub struct NodeDecl {
    /// The node's name.
    pub name: Spanned<String>,
    /// What the node computes.
    pub spec: NodeSpec,
}

/// A reference to a source, a single-output node (`name`) or one output of a node
/// (`name.output`).
pub type Ref = Spanned<String>;

/// The closed set of node kinds.
#[derive(Clone, Debug)]
pub enum NodeSpec {
    /// Keeps records for which a CEL expression is true.
    Filter {
        /// The input collection.
        input: Ref,
        /// The condition.
        expr: Spanned<String>,
    },
    /// Replaces each record by the value of a CEL expression.
    Map {
        /// The input collection.
        input: Ref,
        /// The new record.
        expr: Spanned<String>,
    },
    /// Sets the key of each record.
    KeyBy {
        /// The input collection.
        input: Ref,
        /// The key fields.
        key: KeyFields,
    },
    /// The latest record per key.
    Latest {
        /// The input collection (keyed).
        input: Ref,
        /// Order by this field (greatest wins); by arrival when absent.
        order_by: Option<Spanned<String>>,
    },
    /// Joins two keyed collections on their keys.
    Join {
        /// The left input.
        left: Ref,
        /// The right input.
        right: Ref,
        /// Inner or left join.
        kind: JoinKind,
    },
    /// The number of records per key.
    Count {
        /// The input collection (keyed).
        input: Ref,
    },
    /// Aggregates per key.
    Aggregate {
        /// The input collection (keyed).
        input: Ref,
        /// The aggregates to compute, by output field name.
        aggregates: Vec<AggregateDecl>,
    },
    /// The union of several collections.
    Union {
        /// The inputs.
        inputs: Vec<Ref>,
    },
    /// The push delivery-report dataflow (spec/delivery.md).
    Delivery(DeliverySpec),
    /// The client and contact resolution dataflow (spec/contacts.md).
    Contacts(ContactsSpec),
    /// The contact-discovery account dataflow (spec/cds.md).
    Cds(CdsSpec),
    /// Topic fan-out to filtered subscribers (spec/fanout.md).
    Fanout(FanoutSpec),
    /// The message timeline and sync feed (spec/messages.md).
    Messages(MessagesSpec),
}

/// Parameters of a `fanout` node.
#[derive(Clone, Debug)]
pub struct FanoutSpec {
    /// The subscriber table (an upsert collection keyed by `id`).
    pub subscribers: Ref,
    /// The published events (append).
    pub events: Ref,
}

/// Parameters of a `messages` node.
#[derive(Clone, Debug)]
pub struct MessagesSpec {
    /// The message ops (append).
    pub ops: Ref,
}

/// Parameters of a `contacts` node.
#[derive(Clone, Debug)]
pub struct ContactsSpec {
    /// The `client_changes` events (append).
    pub changes: Ref,
    /// The contact-data mapping (an upsert collection).
    pub contact_data: Ref,
}

/// The outputs of the contacts node, in a fixed order.
pub const CONTACTS_OUTPUTS: &[&str] = &[
    "client_state",
    "devices",
    "resolved_contacts",
    "contact_references",
    "anonymous_contacts_created",
    "client_state_client_updates",
    "client_state_push_token_updates",
    "client_state_contact_updates",
    "suite_contact_updates",
];

/// Parameters of a `cds` node.
#[derive(Clone, Debug)]
pub struct CdsSpec {
    /// The decoded DynamoDB change records (append).
    pub changes: Ref,
    /// The decoded items of a table scan (append), if the pipeline backfills.
    pub snapshot: Option<Ref>,
}

/// The outputs of the cds node, in a fixed order.
pub const CDS_OUTPUTS: &[&str] = &["cds_updates", "accounts_by_uuid", "directory"];

/// The outputs of the messages node, in a fixed order.
pub const MESSAGES_OUTPUTS: &[&str] = &[
    "messages",
    "feed",
    "accepted",
    "rejections",
    "file_usage",
    "file_usage_events",
];

/// The outputs of the fanout node, in a fixed order.
pub const FANOUT_OUTPUTS: &[&str] = &["deliveries", "subscriber_errors"];

/// Parameters of a `delivery` node.
#[derive(Clone, Debug)]
pub struct DeliverySpec {
    /// The delivery reports (append).
    pub input: Ref,
    /// A classification table file replacing the built-in one.
    pub classification: Option<Spanned<PathBuf>>,
    /// Share of `SENDER_ID_MISMATCH` reports in a window above which unsubscribes are held.
    pub guard_share: Option<Spanned<f64>>,
    /// The guard's tumbling window, in milliseconds of report `ts`.
    pub guard_window_ms: Option<Spanned<u64>>,
    /// Reports an app needs in a window before the guard can trip.
    pub guard_min_reports: Option<Spanned<u64>>,
}

/// The outputs of the delivery node, in a fixed order.
pub const DELIVERY_OUTPUTS: &[&str] = &["unsubscribes", "token_replacements", "error_stats", "alerts"];

impl NodeSpec {
    /// The `type` name of the node kind.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeSpec::Filter { .. } => "filter",
            NodeSpec::Map { .. } => "map",
            NodeSpec::KeyBy { .. } => "key_by",
            NodeSpec::Latest { .. } => "latest",
            NodeSpec::Join { .. } => "join",
            NodeSpec::Count { .. } => "count",
            NodeSpec::Aggregate { .. } => "aggregate",
            NodeSpec::Union { .. } => "union",
            NodeSpec::Delivery(_) => "delivery",
            NodeSpec::Contacts(_) => "contacts",
            NodeSpec::Cds(_) => "cds",
            NodeSpec::Fanout(_) => "fanout",
            NodeSpec::Messages(_) => "messages",
        }
    }

    /// The collections this node reads.
    pub fn inputs(&self) -> Vec<&Ref> {
        match self {
            NodeSpec::Filter { input, .. }
            | NodeSpec::Map { input, .. }
            | NodeSpec::KeyBy { input, .. }
            | NodeSpec::Latest { input, .. }
            | NodeSpec::Count { input }
            | NodeSpec::Aggregate { input, .. } => vec![input],
            NodeSpec::Join { left, right, .. } => vec![left, right],
            NodeSpec::Union { inputs } => inputs.iter().collect(),
            NodeSpec::Delivery(d) => vec![&d.input],
            NodeSpec::Contacts(c) => vec![&c.changes, &c.contact_data],
            NodeSpec::Cds(c) => std::iter::once(&c.changes).chain(&c.snapshot).collect(),
            NodeSpec::Fanout(f) => vec![&f.subscribers, &f.events],
            NodeSpec::Messages(m) => vec![&m.ops],
        }
    }

    /// The names of the node's outputs; empty for single-output nodes (referenced by name).
    pub fn outputs(&self) -> &'static [&'static str] {
        match self {
            NodeSpec::Delivery(_) => DELIVERY_OUTPUTS,
            NodeSpec::Contacts(_) => CONTACTS_OUTPUTS,
            NodeSpec::Cds(_) => CDS_OUTPUTS,
            NodeSpec::Fanout(_) => FANOUT_OUTPUTS,
            NodeSpec::Messages(_) => MESSAGES_OUTPUTS,
            _ => &[],
        }
    }
}

/// The kind of a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Only keys present on both sides.
    Inner,
    /// Every left record, with `right = null` where no right record matches.
    Left,
}

/// One aggregate of an `aggregate` node.
#[derive(Clone, Debug)]
pub struct AggregateDecl {
    /// The output field name.
    pub name: String,
    /// The function.
    pub func: AggFunc,
    /// The field aggregated (not used by `count`).
    pub field: Option<Vec<String>>,
    /// Where it was written.
    pub loc: Loc,
    /// Its key path.
    pub path: String,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// Number of records.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Smallest value of a field.
    Min,
    /// Greatest value of a field.
    Max,
}

/// A named sink.
#[derive(Clone, Debug)]
pub struct SinkDecl {
    /// The sink's name.
    pub name: Spanned<String>,
    /// The collection it writes.
    pub input: Ref,
    /// How updates are written.
    pub mode: Spanned<SinkMode>,
    /// How values are encoded (`json` unless the file says otherwise).
    pub format: Spanned<Format>,
    /// Where they are written.
    pub target: SinkTarget,
}

/// How a sink writes updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkMode {
    /// Key → latest value; a retraction with no replacement is a tombstone.
    Upsert,
    /// Every update with its time and diff.
    Changelog,
    /// Insertions only.
    Append,
}

impl SinkMode {
    /// The mode's name in pipeline files.
    pub fn name(&self) -> &'static str {
        match self {
            SinkMode::Upsert => "upsert",
            SinkMode::Changelog => "changelog",
            SinkMode::Append => "append",
        }
    }
}

/// The closed set of sink kinds; adding a sink adds a variant.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkTarget {
    /// JSON lines to a file (truncated at start).
    File {
        /// The file, resolved against the pipeline's directory.
        path: PathBuf,
    },
    /// JSON lines to standard output.
    Stdout,
    /// Nowhere: the updates are counted and dropped (to measure a graph without its output).
    Discard,
    /// Records of a Kafka topic.
    Kafka(KafkaSinkSpec),
    /// A served view, read by clients of the pipeline's `[server]`.
    Served(ServedSinkSpec),
    /// Records of a Kinesis data stream.
    Kinesis(KinesisSinkSpec),
    /// HTTP requests, one per delivery row, with retries and dead letters.
    Webhook(WebhookSinkSpec),
}

impl SinkTarget {
    /// The `type` name of the sink kind.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkTarget::File { .. } => "file",
            SinkTarget::Stdout => "stdout",
            SinkTarget::Discard => "discard",
            SinkTarget::Kafka(_) => "kafka",
            SinkTarget::Served(_) => "served",
            SinkTarget::Kinesis(_) => "kinesis",
            SinkTarget::Webhook(_) => "webhook",
        }
    }

    /// Whether every worker writes its own share (no single writer, no order across workers).
    pub fn parallel(&self) -> bool {
        matches!(self, SinkTarget::Discard)
    }
}
