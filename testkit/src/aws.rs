//! Real Kinesis and DynamoDB implementations: kinesalite and dynalite, npm packages that
//! `scripts/services` installs into `.tools/aws`, run with the `node` on `PATH`, started on free
//! 127.0.0.1 ports and stopped (by their PID) on drop. What they do and do not implement is in
//! docs/aws-test-services.md.
//!
//! Each server comes with a client of the Rust AWS SDK (static dummy credentials, region
//! us-east-1, the server as endpoint) and blocking helpers that set up and drive tests; each
//! helper runs on the server's own small tokio runtime, so it must not be called from inside
//! another runtime (use [`Kinesis::client`] / [`Dynamo::client`] with `.await` there).
//!
//! One server serves a whole test binary if each test uses its own stream and table names.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest, ScalarAttributeType,
    TableStatus, WriteRequest,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::{free_port, root};

/// The region every client uses (kinesalite puts it in its ARNs; any would do).
pub const REGION: &str = "us-east-1";

/// How long a helper waits for a stream or table to become active, or retries throttled writes.
const PATIENCE: Duration = Duration::from_secs(30);

/// Where `scripts/services` installs the npm packages: `$SLUICE_AWS_TOOLS`, else `.tools/aws`.
pub fn tools() -> PathBuf {
    let dir = std::env::var_os("SLUICE_AWS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/aws"));
    for package in ["kinesalite", "dynalite"] {
        assert!(
            dir.join("node_modules").join(package).join("package.json").exists(),
            "{package} is not installed in {}: run scripts/services (scripts/test does)",
            dir.display()
        );
    }
    dir
}

/// A kinesalite or dynalite process on 127.0.0.1, killed (by its PID) on drop; what
/// [`Kinesis`] and [`Dynamo`] run, and what benchmarks that bring their own clients start.
pub struct Server {
    child: Child,
    port: u16,
    /// Kept open: the kinesalite launcher exits when its stdin closes, so a test process that
    /// dies without dropping the server (killed on a timeout) leaves none behind.
    _stdin: Option<ChildStdin>,
}

impl Server {
    /// Starts `node <args(port)>` on a free port and waits until it listens; tries other ports
    /// if the server exits first (another process took the port meanwhile).
    fn start(what: &str, args: impl Fn(u16) -> Vec<String>) -> Server {
        let mut exits = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("node")
                .args(args(port))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("start {what} with `node` (is Node.js on PATH?): {e}"));
            let stdin = child.stdin.take();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Server {
                        child,
                        port,
                        _stdin: stdin,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    exits.push(format!("port {port}: {status}"));
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{what} did not listen on 127.0.0.1:{port} within 20 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("{what} exited before listening: {exits:?}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's process id (a benchmark samples its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts kinesalite (through `scripts/kinesalite.js`, which binds 127.0.0.1 only and has
    /// no stream creation or resharding delays, and a 100-shard limit).
    pub fn kinesalite() -> Server {
        let tools = tools();
        let launcher = root().join("scripts/kinesalite.js");
        Server::start("kinesalite", |port| {
            vec![
                launcher.display().to_string(),
                port.to_string(),
                tools.display().to_string(),
            ]
        })
    }

    /// Starts dynalite (its CLI, bound to 127.0.0.1, with no table creation delays).
    pub fn dynalite() -> Server {
        let cli = tools().join("node_modules/dynalite/cli.js");
        Server::start("dynalite", |port| {
            let mut args = vec![cli.display().to_string()];
            args.extend(
                [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--createTableMs",
                    "0",
                    "--deleteTableMs",
                    "0",
                    "--updateTableMs",
                    "0",
                ]
                .map(str::to_string),
            );
            args
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime for the blocking helpers: one worker, which also keeps the clients' pooled
/// connections going between calls.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Fails a request after this long instead of hanging a test (kinesalite never answers some
/// requests, e.g. GetShardIterator AT_TIMESTAMP past a shard's last record).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

fn operation_timeout() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The SDK configuration of a server at `endpoint`: region [`REGION`] and static test
/// credentials, so nothing looks for real ones. What a connector under test is given; the
/// helpers' own clients add an operation timeout.
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(
            aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "sluice-tests"),
        ))
        .build()
}

/// A running server (stopped on drop), an SDK client for it, and the small runtime its
/// blocking helpers run on.
pub struct Served<C> {
    client: C,
    runtime: Option<tokio::runtime::Runtime>,
    server: Server,
}

/// kinesalite and a Kinesis client for it.
pub type Kinesis = Served<aws_sdk_kinesis::Client>;

/// dynalite and a DynamoDB client for it.
pub type Dynamo = Served<aws_sdk_dynamodb::Client>;

impl<C> Served<C> {
    fn new(server: Server, client: C) -> Served<C> {
        Served {
            client,
            runtime: Some(runtime()),
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The SDK configuration for a connector under test (see [`sdk_config`]).
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config(&self.endpoint())
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The SDK client the helpers use (for requests they do not cover).
    pub fn client(&self) -> &C {
        &self.client
    }

    /// Runs `future` (e.g. a `client()` request) on this server's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.as_ref().expect("runtime").block_on(future)
    }
}

impl<C> Drop for Served<C> {
    fn drop(&mut self) {
        // Allowed even inside another runtime, unlike dropping a runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kinesis

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// `shardId-000000000000`, …
    pub id: String,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second shard it was merged from.
    pub adjacent_parent: Option<String>,
    /// Its hash key range, inclusive.
    pub hash_keys: (u128, u128),
    /// The sequence number of its first record.
    pub starting_sequence_number: String,
    /// Set once the shard is closed (split or merged away).
    pub ending_sequence_number: Option<String>,
}

impl Shard {
    /// Whether the shard still takes records.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }
}

/// Where PutRecords placed a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// The shard.
    pub shard_id: String,
    /// The record's sequence number.
    pub sequence_number: String,
}

/// A record read back from a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its payload.
    pub data: Vec<u8>,
}

impl Kinesis {
    /// Starts kinesalite ([`Server::kinesalite`]) and a client for it.
    pub fn start() -> Kinesis {
        let server = Server::kinesalite();
        let config = aws_sdk_kinesis::config::Builder::from(&sdk_config(&server.endpoint()))
            .timeout_config(operation_timeout())
            .build();
        Served::new(server, aws_sdk_kinesis::Client::from_conf(config))
    }

    /// Creates `name` with `shards` shards and waits until it is ACTIVE.
    pub fn create_stream(&self, name: &str, shards: i32) {
        self.block_on(self.client.create_stream().stream_name(name).shard_count(shards).send())
            .unwrap_or_else(|e| panic!("CreateStream {name}: {e:?}"));
        self.wait_active(name);
    }

    /// Waits until `stream` is ACTIVE (after creation or resharding).
    pub fn wait_active(&self, stream: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let summary = self
                .block_on(self.client.describe_stream_summary().stream_name(stream).send())
                .unwrap_or_else(|e| panic!("DescribeStreamSummary {stream}: {e:?}"));
            let status = summary.stream_description_summary().map(|s| s.stream_status().clone());
            if status == Some(StreamStatus::Active) {
                return;
            }
            assert!(Instant::now() < deadline, "{stream} is still {status:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Puts `records` as (partition key, data) with PutRecords (500 a request, failed entries
    /// retried) and returns where each went, in the order given.
    pub fn put<K: AsRef<str>, D: AsRef<[u8]>>(&self, stream: &str, records: &[(K, D)]) -> Vec<Put> {
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(500) {
            let mut placed: Vec<Option<Put>> = vec![None; chunk.len()];
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let deadline = Instant::now() + PATIENCE;
            while !pending.is_empty() {
                let entries = pending
                    .iter()
                    .map(|&i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(chunk[i].0.as_ref())
                            .data(Blob::new(chunk[i].1.as_ref()))
                            .build()
                            .expect("a PutRecords entry")
                    })
                    .collect();
                let response = self
                    .block_on(
                        self.client
                            .put_records()
                            .stream_name(stream)
                            .set_records(Some(entries))
                            .send(),
                    )
                    .unwrap_or_else(|e| panic!("PutRecords {stream}: {e:?}"));
                let mut failed = Vec::new();
                for (&i, entry) in pending.iter().zip(response.records()) {
                    match (entry.shard_id(), entry.sequence_number(), entry.error_code()) {
                        (Some(shard), Some(seq), None) => {
                            placed[i] = Some(Put {
                                shard_id: shard.to_string(),
                                sequence_number: seq.to_string(),
                            })
                        }
                        _ => failed.push(i),
                    }
                }
                assert!(
                    failed.is_empty() || Instant::now() < deadline,
                    "PutRecords {stream}: {} records still failing",
                    failed.len()
                );
                if !failed.is_empty() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                pending = failed;
            }
            out.extend(placed.into_iter().map(|p| p.expect("placed")));
        }
        out
    }

    /// Every shard of `stream`, open and closed, in ListShards order (by id).
    pub fn list_shards(&self, stream: &str) -> Vec<Shard> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = match &next_token {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(stream),
            };
            let response = self
                .block_on(request.send())
                .unwrap_or_else(|e| panic!("ListShards {stream}: {e:?}"));
            for s in response.shards() {
                let range = s.hash_key_range().expect("a hash key range");
                let sequence = s.sequence_number_range().expect("a sequence number range");
                shards.push(Shard {
                    id: s.shard_id().to_string(),
                    parent: s.parent_shard_id().map(str::to_string),
                    adjacent_parent: s.adjacent_parent_shard_id().map(str::to_string),
                    hash_keys: (
                        range.starting_hash_key().parse().expect("a hash key"),
                        range.ending_hash_key().parse().expect("a hash key"),
                    ),
                    starting_sequence_number: sequence.starting_sequence_number().to_string(),
                    ending_sequence_number: sequence.ending_sequence_number().map(str::to_string),
                });
            }
            match response.next_token() {
                Some(token) => next_token = Some(token.to_string()),
                None => return shards,
            }
        }
    }

    fn shard(&self, stream: &str, id: &str) -> Shard {
        self.list_shards(stream)
            .into_iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("{stream} has no shard {id}"))
    }

    /// Splits the open shard `shard_id` at the middle of its hash key range, waits until the
    /// stream is ACTIVE again, and returns the two children (lower hash keys first).
    ///
    /// (kinesalite would also "split" a closed shard, into children overlapping the open ones.)
    pub fn split_shard(&self, stream: &str, shard_id: &str) -> (Shard, Shard) {
        let shard = self.shard(stream, shard_id);
        assert!(shard.is_open(), "{stream}/{shard_id} is closed: only open shards split");
        let (start, end) = shard.hash_keys;
        assert!(end - start >= 3, "{stream}/{shard_id} is too narrow to split");
        let middle = start + (end - start) / 2 + 1;
        self.block_on(
            self.client
                .split_shard()
                .stream_name(stream)
                .shard_to_split(shard_id)
                .new_starting_hash_key(middle.to_string())
                .send(),
        )
        .unwrap_or_else(|e| panic!("SplitShard {stream}/{shard_id}: {e:?}"));
        self.wait_active(stream);
        let mut children: Vec<Shard> = self
            .list_shards(stream)
            .into_iter()
            .filter(|s| s.parent.as_deref() == Some(shard_id) && s.adjacent_parent.is_none())
            .collect();
        assert_eq!(children.len(), 2, "children of {stream}/{shard_id}: {children:?}");
        children.sort_by_key(|s| s.hash_keys.0);
        let high = children.pop().expect("two children");
        let low = children.pop().expect("two children");
        (low, high)
    }

    /// Merges the open shards `a` and `b` (`b`'s hash keys must follow `a`'s directly), waits
    /// until the stream is ACTIVE again, and returns the child.
    pub fn merge_shards(&self, stream: &str, a: &str, b: &str) -> Shard {
        self.block_on(
            self.client
                .merge_shards()
                .stream_name(stream)
                .shard_to_merge(a)
                .adjacent_shard_to_merge(b)
                .send(),
        )
        .unwrap_or_else(|e| panic!("MergeShards {stream}/{a}+{b}: {e:?}"));
        self.wait_active(stream);
        self.list_shards(stream)
            .into_iter()
            .find(|s| s.parent.as_deref() == Some(a) && s.adjacent_parent.as_deref() == Some(b))
            .unwrap_or_else(|| panic!("no child of {stream}/{a}+{b}"))
    }

    /// Every record in `shard_id` now, in order: GetShardIterator TRIM_HORIZON, then GetRecords
    /// until a call returns none.
    pub fn read_shard(&self, stream: &str, shard_id: &str) -> Vec<Record> {
        let response = self
            .block_on(
                self.client
                    .get_shard_iterator()
                    .stream_name(stream)
                    .shard_id(shard_id)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("GetShardIterator {stream}/{shard_id}: {e:?}"));
        let mut iterator = response.shard_iterator().map(str::to_string);
        let mut out = Vec::new();
        while let Some(it) = iterator {
            let response = self
                .block_on(self.client.get_records().shard_iterator(it).send())
                .unwrap_or_else(|e| panic!("GetRecords {stream}/{shard_id}: {e:?}"));
            if response.records().is_empty() {
                break;
            }
            out.extend(response.records().iter().map(|r| Record {
                shard_id: shard_id.to_string(),
                sequence_number: r.sequence_number().to_string(),
                partition_key: r.partition_key().unwrap_or_default().to_string(),
                data: r.data().as_ref().to_vec(),
            }));
            iterator = response.next_shard_iterator().map(str::to_string);
        }
        out
    }

    /// Every record in every shard of `stream` now, shard by shard.
    pub fn read_all(&self, stream: &str) -> Vec<Record> {
        self.list_shards(stream)
            .iter()
            .flat_map(|s| self.read_shard(stream, &s.id))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// DynamoDB

impl Dynamo {
    /// Starts dynalite ([`Server::dynalite`]) and a client for it.
    pub fn start() -> Dynamo {
        let server = Server::dynalite();
        let config = aws_sdk_dynamodb::config::Builder::from(&sdk_config(&server.endpoint()))
            .timeout_config(operation_timeout())
            .build();
        Served::new(server, aws_sdk_dynamodb::Client::from_conf(config))
    }

    /// Creates the on-demand table `name` keyed by the attribute `hash_key` of type `key_type`
    /// (`"S"`, `"N"` or `"B"`; the cds Accounts table's key is `U`, binary), and waits until it
    /// is ACTIVE.
    pub fn create_table(&self, name: &str, hash_key: &str, key_type: &str) {
        assert!(
            ["S", "N", "B"].contains(&key_type),
            "a key attribute is S, N or B, not {key_type}"
        );
        let definition = AttributeDefinition::builder()
            .attribute_name(hash_key)
            .attribute_type(ScalarAttributeType::from(key_type))
            .build()
            .expect("an attribute definition");
        let key = KeySchemaElement::builder()
            .attribute_name(hash_key)
            .key_type(KeyType::Hash)
            .build()
            .expect("a key schema element");
        self.block_on(
            self.client
                .create_table()
                .table_name(name)
                .attribute_definitions(definition)
                .key_schema(key)
                .billing_mode(BillingMode::PayPerRequest)
                .send(),
        )
        .unwrap_or_else(|e| panic!("CreateTable {name}: {e:?}"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let described = self
                .block_on(self.client.describe_table().table_name(name).send())
                .unwrap_or_else(|e| panic!("DescribeTable {name}: {e:?}"));
            let status = described.table().and_then(|t| t.table_status().cloned());
            if status == Some(TableStatus::Active) {
                return;
            }
            assert!(Instant::now() < deadline, "table {name} is still {status:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes `items`, each in DynamoDB JSON (`{"U": {"B": "<base64>"}, "V": {"N": "1"}}`), with
    /// BatchWriteItem, 25 a request, retrying unprocessed items.
    pub fn put_items(&self, table: &str, items: &[Value]) {
        for chunk in items.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item_from_json(item)))
                        .build()
                        .expect("a put request");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            let deadline = Instant::now() + PATIENCE;
            while !requests.is_empty() {
                let response = self
                    .block_on(self.client.batch_write_item().request_items(table, requests).send())
                    .unwrap_or_else(|e| panic!("BatchWriteItem {table}: {e:?}"));
                requests = response
                    .unprocessed_items()
                    .and_then(|u| u.get(table))
                    .cloned()
                    .unwrap_or_default();
                if !requests.is_empty() {
                    assert!(
                        Instant::now() < deadline,
                        "BatchWriteItem {table}: {} items still unprocessed",
                        requests.len()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Every item of `table`, in DynamoDB JSON, in scan order.
    pub fn scan(&self, table: &str) -> Vec<Value> {
        self.scan_pages(table, None)
    }

    /// The items of one segment of a parallel scan of `table`, in DynamoDB JSON.
    pub fn scan_segment(&self, table: &str, segment: i32, total_segments: i32) -> Vec<Value> {
        self.scan_pages(table, Some((segment, total_segments)))
    }

    fn scan_pages(&self, table: &str, segment: Option<(i32, i32)>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut request = self.client.scan().table_name(table).set_exclusive_start_key(start);
            if let Some((segment, total)) = segment {
                request = request.segment(segment).total_segments(total);
            }
            let response = self
                .block_on(request.send())
                .unwrap_or_else(|e| panic!("Scan {table}: {e:?}"));
            out.extend(response.items().iter().map(item_to_json));
            start = response.last_evaluated_key().cloned();
            if start.is_none() {
                return out;
            }
        }
    }
}

/// An item from DynamoDB JSON: an object of attribute name → typed value.
pub fn item_from_json(item: &Value) -> HashMap<String, AttributeValue> {
    let Value::Object(attributes) = item else {
        panic!("an item is a JSON object of attributes, not {item}");
    };
    attributes
        .iter()
        .map(|(name, value)| (name.clone(), attribute_from_json(value)))
        .collect()
}

/// An item in DynamoDB JSON (binary values in base64, numbers as strings).
pub fn item_to_json(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        item.iter()
            .map(|(name, value)| (name.clone(), attribute_to_json(value)))
            .collect::<Map<_, _>>(),
    )
}

/// One attribute value from DynamoDB JSON (`{"S": "x"}`, `{"N": "1"}`, `{"B": "<base64>"}`,
/// `{"BOOL": true}`, `{"NULL": true}`, `{"M": {…}}`, `{"L": […]}`, `{"SS"|"NS"|"BS": […]}`).
pub fn attribute_from_json(value: &Value) -> AttributeValue {
    let typed = value.as_object().filter(|o| o.len() == 1);
    let Some((kind, inner)) = typed.and_then(|o| o.iter().next()) else {
        panic!("a DynamoDB JSON value is an object with one type key, not {value}");
    };
    let text = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) if kind.starts_with('N') => n.to_string(),
            _ => panic!("{kind} wants a string, not {v}"),
        }
    };
    let binary = |v: &Value| -> aws_sdk_dynamodb::primitives::Blob {
        let bytes = BASE64
            .decode(text(v))
            .unwrap_or_else(|e| panic!("{kind} wants base64, not {v}: {e}"));
        aws_sdk_dynamodb::primitives::Blob::new(bytes)
    };
    let list = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap_or_else(|| panic!("{kind} wants an array, not {v}"))
            .clone()
    };
    match kind.as_str() {
        "S" => AttributeValue::S(text(inner)),
        "N" => AttributeValue::N(text(inner)),
        "B" => AttributeValue::B(binary(inner)),
        "BOOL" => AttributeValue::Bool(
            inner
                .as_bool()
                .unwrap_or_else(|| panic!("BOOL wants a bool, not {inner}")),
        ),
        "NULL" => AttributeValue::Null(true),
        "M" => AttributeValue::M(item_from_json(inner)),
        "L" => AttributeValue::L(list(inner).iter().map(attribute_from_json).collect()),
        "SS" => AttributeValue::Ss(list(inner).iter().map(text).collect()),
        "NS" => AttributeValue::Ns(list(inner).iter().map(text).collect()),
        "BS" => AttributeValue::Bs(list(inner).iter().map(binary).collect()),
        other => panic!("unknown DynamoDB JSON type {other} in {value}"),
    }
}

/// One attribute value in DynamoDB JSON.
pub fn attribute_to_json(value: &AttributeValue) -> Value {
    let b64 = |b: &aws_sdk_dynamodb::primitives::Blob| Value::String(BASE64.encode(b.as_ref()));
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::M(m) => json!({ "M": item_to_json(m) }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(attribute_to_json).collect::<Vec<_>>() }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        other => panic!("unsupported attribute value {other:?}"),
    }
}
