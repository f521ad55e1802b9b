//! The `dynamodb-scan` and `kinesis` sources of `sluice run`, beside the raw AWS SDK loop on
//! the same local server: the ceiling.
//!
//! Run by hand (not in CI), from the repository root, with kinesalite and dynalite installed
//! (`scripts/services`):
//!
//! ```text
//! cargo bench --bench aws                                  # both, with the defaults below
//! cargo bench --bench aws -- scan --items 200000 --segments 1,8
//! cargo bench --bench aws -- kinesis --records 300000 --shards 4 --workers 1,2
//! cargo bench --bench aws -- kinesis --perf /tmp/aws-perf  # each sluice run under `perf record -g`
//! ```
//!
//! The servers (dynalite for `scan`, kinesalite for `kinesis`) are started by the benchmark on
//! free 127.0.0.1 ports with the machine's `node`, and stopped by their PID at the end. They
//! share the machine's cores with everything measured.
//!
//! **scan**: a table of `--items` cds Accounts items (binary hash key `U`, and `V`, `P`, `C`,
//! `PNI`, `UAK`, `D`) is loaded with BatchWriteItem. Per `--segments` count: the ceiling is a
//! parallel scan with the AWS SDK, one tokio task per segment paging to the end and counting
//! items; then `sluice run` of a `dynamodb-scan` source into a `discard` sink (reading alone),
//! and of the same source as the snapshot of a `cds` node (its changes an empty file) with a
//! `discard` sink on `cds.accounts_by_uuid`.
//!
//! **kinesis**: a stream of `--shards` shards is loaded with `--records` cds change records
//! (MODIFY with both images, about 1 KB; the partition key is the account) by PutRecords, 500
//! a call, in order. The ceiling is one tokio task per shard, GetShardIterator TRIM_HORIZON
//! then GetRecords until caught up (an empty response with MillisBehindLatest 0), counting
//! records and copying their data as the source does; then `sluice run` of a bounded
//! `kinesis` source (`format = "dynamodb-stream"`) into a `discard` sink, and into a `cds`
//! node (no snapshot) with `discard` sinks on its three outputs.
//!
//! (The change records' `D` blob carries a 96-byte filler field to bring them to ~1 KB; the
//! cds dataflow reads `D` only when `PNI` or `UAK` is missing.)
//!
//! The ceilings run in a child process (this binary again), so their peak memory is their
//! own; the ceiling runs once unrecorded first, since the server's first pass over its data
//! is slower (JIT, heap growth). Each measurement runs `--runs` times (3) and the run with the
//! median rate is shown, with the lowest and highest. Rates of `sluice run` are records read
//! over the seconds of its summary line (process start-up and DescribeTable/ListShards
//! included); the ceiling's are over its read loop alone; wall seconds are the whole
//! process's. CPU is read from `/proc` while each run goes: cores used per thread of the
//! client (sluice or the ceiling) and of the server (`node[main]` is its JavaScript thread),
//! and when the server was busy, which shows how long sluice ran before the server's first
//! answer and after its last. `--perf DIR` runs each `sluice run` under `perf record -g`
//! (`DIR/<run>.data`, the last of the runs; perf adds its own overhead and exit time). The
//! data is the same on every run: no randomness, records put in order.
//!
//! Measured on the 2-vCPU development VM (node 20; median of 3): the servers are the limit,
//! each single-threaded in node with its JavaScript thread at 0.8–0.95 of a core. Scan of
//! 200 k items: ceiling 83 k items/s with 1 segment, 118 k with 8; sluice into `discard`
//! 86–87 k / 105–110 k, through cds 84–87 k / 102–110 k (1–2 workers; peak 75–97 MiB
//! discarding, 140–184 MiB through cds). Kinesis, 300 k records of 1016 bytes in 4 shards:
//! ceiling 36.6 k records/s; sluice into `discard` 35 k (peak ~200 MiB: up to 4 pages of
//! 10 000 records fetched ahead per shard), through cds 32 k / 31 k (326 / 393 MiB).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest, ScalarAttributeType,
    TableStatus, WriteRequest,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use base64::Engine as _;
use common::procfs::{cpu_by_thread, cpu_report, mib, peak_rss};
use common::{between, list};
use sluice_testkit::aws::{REGION, Server, sdk_config};

const TABLE: &str = "Accounts";
const STREAM: &str = "account-changes";
/// How long one request may take before the load or a ceiling fails instead of hanging.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// BatchWriteItem requests in flight while loading the table.
const LOADERS: usize = 4;
/// How often a run's threads' CPU time is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

struct Args {
    scan: bool,
    kinesis: bool,
    items: u32,
    segments: Vec<u32>,
    records: u32,
    shards: u32,
    /// Distinct accounts the change records are spread over (each changes records/accounts times).
    accounts: u32,
    workers: Vec<usize>,
    /// Runs of each measurement; the one with the median rate is reported.
    runs: usize,
    /// Where to put a `perf record -g` profile of each `sluice run`.
    perf: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        scan: false,
        kinesis: false,
        items: 200_000,
        segments: vec![1, 8],
        records: 300_000,
        shards: 4,
        accounts: 100_000,
        workers: vec![1, 2],
        runs: 3,
        perf: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "scan" => args.scan = true,
            "kinesis" => args.kinesis = true,
            "--items" => args.items = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.items),
            "--segments" => args.segments = list(it.next()).unwrap_or(args.segments),
            "--records" => args.records = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.records),
            "--shards" => args.shards = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.shards),
            "--accounts" => args.accounts = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.accounts),
            "--workers" => args.workers = list(it.next()).unwrap_or(args.workers),
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.runs).max(1),
            "--perf" => args.perf = it.next().map(PathBuf::from),
            // cargo bench passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    if !args.scan && !args.kinesis {
        args.scan = true;
        args.kinesis = true;
    }
    args.accounts = args.accounts.clamp(1, args.records.max(1));
    args
}

// ---------------------------------------------------------------------------------------------
// Servers (sluice-testkit starts them) and clients

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn timeouts() -> aws_sdk_kinesis::config::timeout::TimeoutConfig {
    aws_sdk_kinesis::config::timeout::TimeoutConfig::builder()
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk_config(endpoint))
        .timeout_config(timeouts())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::config::Builder::from(&sdk_config(endpoint))
        .timeout_config(timeouts())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

// ---------------------------------------------------------------------------------------------
// Data (as tests/common/accounts.rs makes it)

/// Account `n`'s 16-byte uuid.
fn uuid(n: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[6] = 0x40;
    b[8] = 0x80;
    b[12..].copy_from_slice(&n.to_be_bytes());
    b
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The PNI or UAK bytes of key set `key` (`0x50` for PNIs, `0xA0` for UAKs).
fn key_bytes(tag: u8, key: u8) -> Vec<u8> {
    [tag, key].repeat(8)
}

/// Account `n`'s number at `version`.
fn e164(n: u32, version: u64) -> String {
    format!("+1555{n:07}{:02}", version % 100)
}

/// Account `n` at version 1, discoverable, with key set `n % 200`, as a DynamoDB item.
fn item(n: u32) -> HashMap<String, AttributeValue> {
    let key = (n % 200) as u8;
    let blob = |b: Vec<u8>| AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(b));
    HashMap::from([
        ("U".to_owned(), blob(uuid(n).to_vec())),
        ("V".to_owned(), AttributeValue::N("1".to_owned())),
        ("P".to_owned(), AttributeValue::S(e164(n, 1))),
        ("C".to_owned(), AttributeValue::Bool(true)),
        ("PNI".to_owned(), blob(key_bytes(0x50, key))),
        ("UAK".to_owned(), blob(key_bytes(0xA0, key))),
        ("D".to_owned(), blob(b"{\"v\":1}".to_vec())),
    ])
}

/// More of the account data blob `D` in change records' images, so a record is about 1 KB
/// (the cds dataflow reads `D` only when `PNI` or `UAK` is missing).
const FILLER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Account `n` at `version` in DynamoDB JSON, as a change record's image.
fn image(n: u32, version: u64) -> serde_json::Value {
    let key = (n % 200) as u8;
    serde_json::json!({
        "U": {"B": b64(&uuid(n))},
        "V": {"N": version.to_string()},
        "P": {"S": e164(n, version)},
        "C": {"BOOL": true},
        "PNI": {"B": b64(&key_bytes(0x50, key))},
        "UAK": {"B": b64(&key_bytes(0xA0, key))},
        "D": {"B": b64(format!("{{\"v\":{version},\"data\":\"{FILLER}\"}}").as_bytes())},
    })
}

/// Change record `seq` (from 0): account `seq % accounts` renumbered from version `v - 1` to
/// `v`, as Kinesis Data Streams for DynamoDB delivers it; with its partition key.
fn change(seq: u64, accounts: u32) -> (String, Vec<u8>) {
    let n = (seq % u64::from(accounts)) as u32;
    let version = 2 + seq / u64::from(accounts);
    let record = serde_json::json!({
        "eventID": format!("{seq:032x}"),
        "eventName": "MODIFY",
        "dynamodb": {
            "ApproximateCreationDateTime": 1_800_000_000_000u64 + seq,
            "Keys": {"U": {"B": b64(&uuid(n))}},
            "SequenceNumber": (49_650_000_000_000_000_000u128 + u128::from(seq)).to_string(),
            "SizeBytes": 300,
            "OldImage": image(n, version - 1),
            "NewImage": image(n, version),
        },
        "tableName": TABLE,
        "recordFormat": "application/json",
        "eventSource": "aws:dynamodb",
    });
    (b64(&uuid(n)), record.to_string().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Creates the Accounts table and writes `items` items with BatchWriteItem (25 a request,
/// [`LOADERS`] requests in flight); returns the seconds the writes took.
fn load_table(endpoint: &str, items: u32) -> f64 {
    let client = dynamo_client(endpoint);
    let rt = runtime();
    rt.block_on(async {
        let definition = AttributeDefinition::builder()
            .attribute_name("U")
            .attribute_type(ScalarAttributeType::B)
            .build()
            .expect("an attribute definition");
        let key = KeySchemaElement::builder()
            .attribute_name("U")
            .key_type(KeyType::Hash)
            .build()
            .expect("a key schema element");
        client
            .create_table()
            .table_name(TABLE)
            .attribute_definitions(definition)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .expect("CreateTable");
        loop {
            let described = client
                .describe_table()
                .table_name(TABLE)
                .send()
                .await
                .expect("DescribeTable");
            if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let chunks: Vec<u32> = (0..items).step_by(25).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for loader in 0..LOADERS {
            let client = client.clone();
            let mine: Vec<u32> = chunks.iter().copied().skip(loader).step_by(LOADERS).collect();
            tasks.spawn(async move {
                for first in mine {
                    let mut requests: Vec<WriteRequest> = (first..(first + 25).min(items))
                        .map(|n| {
                            let put = PutRequest::builder()
                                .set_item(Some(item(n)))
                                .build()
                                .expect("a put request");
                            WriteRequest::builder().put_request(put).build()
                        })
                        .collect();
                    while !requests.is_empty() {
                        let out = client
                            .batch_write_item()
                            .request_items(TABLE, requests)
                            .send()
                            .await
                            .expect("BatchWriteItem");
                        requests = out
                            .unprocessed_items()
                            .and_then(|u| u.get(TABLE))
                            .cloned()
                            .unwrap_or_default();
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a loader panicked");
        }
        started.elapsed().as_secs_f64()
    })
}

/// Creates the stream and puts `records` change records with PutRecords, 500 a call, one call
/// at a time (so each shard holds its records in the same order on every run); returns the
/// seconds the puts took and the average record size.
fn load_stream(endpoint: &str, records: u32, shards: u32, accounts: u32) -> (f64, usize) {
    let client = kinesis_client(endpoint);
    let rt = runtime();
    rt.block_on(async {
        client
            .create_stream()
            .stream_name(STREAM)
            .shard_count(shards as i32)
            .send()
            .await
            .expect("CreateStream");
        loop {
            let summary = client
                .describe_stream_summary()
                .stream_name(STREAM)
                .send()
                .await
                .expect("DescribeStreamSummary");
            if summary.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let mut bytes = 0;
        for first in (0..u64::from(records)).step_by(500) {
            let mut pending: Vec<(String, Vec<u8>)> = (first..(first + 500).min(u64::from(records)))
                .map(|seq| change(seq, accounts))
                .collect();
            bytes += pending.iter().map(|(_, d)| d.len()).sum::<usize>();
            while !pending.is_empty() {
                let entries = pending
                    .iter()
                    .map(|(key, data)| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(key)
                            .data(Blob::new(data.clone()))
                            .build()
                            .expect("a PutRecords entry")
                    })
                    .collect();
                let out = client
                    .put_records()
                    .stream_name(STREAM)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .expect("PutRecords");
                // Failed entries (kinesalite never fails any) go again, in order.
                pending = pending
                    .into_iter()
                    .zip(out.records())
                    .filter(|(_, e)| e.error_code().is_some())
                    .map(|(p, _)| p)
                    .collect();
            }
        }
        (started.elapsed().as_secs_f64(), bytes / records.max(1) as usize)
    })
}

// ---------------------------------------------------------------------------------------------
// Ceilings (run in a child process: `aws --raw scan|kinesis ENDPOINT SEGMENTS`)

/// A parallel scan, one task per segment paging to the end: (items, seconds).
fn raw_scan(rt: &tokio::runtime::Runtime, endpoint: &str, segments: i32) -> (u64, f64) {
    let client = dynamo_client(endpoint);
    rt.block_on(async {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for segment in 0..segments {
            let client = client.clone();
            tasks.spawn(async move {
                let mut items = 0u64;
                let mut start: Option<HashMap<String, AttributeValue>> = None;
                loop {
                    let out = client
                        .scan()
                        .table_name(TABLE)
                        .segment(segment)
                        .total_segments(segments)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .expect("Scan");
                    items += out.items().len() as u64;
                    start = out.last_evaluated_key.filter(|k| !k.is_empty());
                    if start.is_none() {
                        return items;
                    }
                }
            });
        }
        let mut items = 0;
        while let Some(done) = tasks.join_next().await {
            items += done.expect("a segment task panicked");
        }
        (items, started.elapsed().as_secs_f64())
    })
}

/// Every shard read from TRIM_HORIZON until caught up, one task per shard: (records, seconds).
fn raw_kinesis(rt: &tokio::runtime::Runtime, endpoint: &str) -> (u64, f64) {
    let client = kinesis_client(endpoint);
    rt.block_on(async {
        let started = Instant::now();
        let shards = client
            .list_shards()
            .stream_name(STREAM)
            .send()
            .await
            .expect("ListShards");
        let mut tasks = tokio::task::JoinSet::new();
        for shard in shards.shards() {
            let client = client.clone();
            let shard = shard.shard_id().to_owned();
            tasks.spawn(async move {
                let out = client
                    .get_shard_iterator()
                    .stream_name(STREAM)
                    .shard_id(&shard)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .expect("GetShardIterator");
                let mut iterator = out.shard_iterator().map(str::to_owned);
                let (mut records, mut bytes) = (0u64, 0usize);
                while let Some(it) = iterator {
                    let out = client
                        .get_records()
                        .shard_iterator(it)
                        .limit(10_000)
                        .send()
                        .await
                        .expect("GetRecords");
                    for r in out.records() {
                        // Copied, as the source copies each record's data.
                        bytes += r.data().as_ref().to_vec().len();
                        records += 1;
                    }
                    if out.records().is_empty() && out.millis_behind_latest() == Some(0) {
                        break;
                    }
                    iterator = out.next_shard_iterator().map(str::to_owned);
                }
                assert!(records == 0 || bytes > 0);
                records
            });
        }
        let mut records = 0;
        while let Some(done) = tasks.join_next().await {
            records += done.expect("a shard task panicked");
        }
        (records, started.elapsed().as_secs_f64())
    })
}

/// The child process of a ceiling: prints `raw RECORDS SECONDS PEAK_KIB CPU-REPORT`.
fn raw_child(mut args: impl Iterator<Item = String>) {
    let what = args.next().unwrap_or_default();
    let endpoint = args.next().expect("an endpoint");
    // Created first, so its threads' CPU time is read before they end.
    let rt = runtime();
    let cpu_before = cpu_by_thread("self");
    let (n, secs) = match what.as_str() {
        "scan" => raw_scan(
            &rt,
            &endpoint,
            args.next().and_then(|s| s.parse().ok()).expect("segments"),
        ),
        "kinesis" => raw_kinesis(&rt, &endpoint),
        other => panic!("no ceiling called {other}"),
    };
    let cpu = cpu_report(&cpu_before, &cpu_by_thread("self"), secs);
    println!("raw {n} {secs} {} {cpu}", peak_rss("self"));
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// One measured run.
struct Measured {
    /// Records (items) read.
    read: u64,
    /// Updates written (sluice only).
    written: Option<u64>,
    /// The seconds the rate is over: the scan's or read loop's, or the summary line's.
    secs: f64,
    /// The process's wall seconds, start to exit.
    wall: f64,
    peak_mib: String,
    /// Cores used per thread of the client process.
    cpu: String,
    /// Cores the server used meanwhile, in all and per thread.
    server_cores: f64,
    server_cpu: String,
    /// From when to when (seconds after start) the server was busy.
    server_busy: Option<(f64, f64)>,
    /// The lowest and highest rate of all runs.
    range: (f64, f64),
}

impl Measured {
    fn rate(&self) -> f64 {
        self.read as f64 / self.secs
    }
}

/// CPU ticks per thread of a process, kept across samples, so a thread that ended before
/// the last sample still counts.
#[derive(Clone, Default)]
struct Threads(BTreeMap<u64, (String, u64)>);

impl Threads {
    /// Reads every thread of `pid`; false if the process is gone.
    fn sample(&mut self, pid: &str) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        let mut any = false;
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ...`: the name may hold spaces, so split at the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // utime and stime, fields 14 and 15 of stat.
            let ticks: u64 = fields
                .get(11..13)
                .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
            let name = &stat[open + 1..close];
            let entry = self.0.entry(tid).or_insert_with(|| (String::new(), 0));
            // The main thread apart: a node server's threads are all called `node`.
            entry.0 = if tid.to_string() == pid {
                format!("{name}[main]")
            } else {
                name.to_owned()
            };
            entry.1 = entry.1.max(ticks);
            any = true;
        }
        any
    }

    /// CPU seconds per thread name (USER_HZ is 100 on Linux).
    fn by_name(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, ticks) in self.0.values() {
            *out.entry(name.clone()).or_insert(0.0) += *ticks as f64 / 100.0;
        }
        out
    }

    fn total(&self) -> f64 {
        self.by_name().values().sum()
    }
}

/// What the server used between `before` and now, over `secs`: (cores, per thread).
fn server_use(server: &Server, before: &Threads, secs: f64) -> (f64, String) {
    let mut after = before.clone();
    after.sample(&server.pid().to_string());
    let cores = (after.total() - before.total()) / secs;
    (cores, cpu_report(&before.by_name(), &after.by_name(), secs))
}

/// Runs a ceiling in a child process.
fn measure_raw(args: &[&str], server: &Server) -> Measured {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let mut server_before = Threads::default();
    server_before.sample(&server.pid().to_string());
    let started = Instant::now();
    let out = Command::new(exe)
        .arg("--raw")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the ceiling");
    let wall = started.elapsed().as_secs_f64();
    let (server_cores, server_cpu) = server_use(server, &server_before, wall);
    assert!(out.status.success(), "the ceiling failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("raw "))
        .unwrap_or_else(|| panic!("no result from the ceiling: {text}"));
    let mut fields = line.splitn(4, ' ');
    let mut field = || fields.next().unwrap_or_default();
    let read = field().parse().expect("a count");
    let secs = field().parse().expect("seconds");
    let peak: u64 = field().parse().expect("a peak");
    Measured {
        read,
        written: None,
        secs,
        wall,
        peak_mib: mib(peak).to_string(),
        cpu: field().to_owned(),
        server_cores,
        server_cpu,
        server_busy: None,
        range: (0.0, 0.0),
    }
}

/// Runs `sluice run --workers N` over `pipeline` (in a fresh directory, beside an empty
/// `changes.jsonl`), sampling its threads' CPU until it exits; with `perf`, under
/// `perf record -g` into `perf/<name>.data`.
fn measure_sluice(pipeline: &str, workers: usize, server: &Server, perf: Option<(&Path, &str)>) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pipeline.toml"), pipeline).expect("write pipeline");
    std::fs::write(d.join("changes.jsonl"), "").expect("write changes");
    let log = std::fs::File::create(d.join("sluice.log")).expect("log");
    let mut server_before = Threads::default();
    server_before.sample(&server.pid().to_string());
    let started = Instant::now();
    // Under perf, `perf record` is the child and sluice its child.
    let mut command = match perf {
        Some((dir, name)) => {
            std::fs::create_dir_all(dir).expect("the perf directory");
            let mut c = Command::new("perf");
            c.args(["record", "-g", "-F", "999", "-q", "-o"])
                .arg(dir.join(format!("{name}.data")))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_sluice"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_sluice")),
    };
    let mut child = command
        .args(["run", "--workers", &workers.to_string(), "pipeline.toml"])
        .current_dir(d)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sluice run");
    let mut pid = child.id().to_string();
    if perf.is_some() {
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = Instant::now() + Duration::from_secs(10);
        pid = loop {
            let found = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(first) = found.split_whitespace().next() {
                break first.to_owned();
            }
            assert!(Instant::now() < deadline, "perf record did not start sluice");
            std::thread::sleep(Duration::from_millis(1));
        };
    }
    let mut threads = Threads::default();
    let mut peak = 0;
    let mut sampled = 0.0;
    // When the server was busy (used at least 0.4 cores since the previous sample): from the
    // first such sample to the last.
    let mut server_now = server_before.clone();
    let mut busy: Option<(f64, f64)> = None;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sluice") {
            break status;
        }
        if threads.sample(&pid) {
            peak = peak.max(peak_rss(&pid));
            sampled = started.elapsed().as_secs_f64();
        }
        let before = server_now.total();
        server_now.sample(&server.pid().to_string());
        let now = started.elapsed().as_secs_f64();
        if server_now.total() - before >= 0.4 * SAMPLE_EVERY.as_secs_f64() {
            busy = Some((busy.map_or(now, |b| b.0), now));
        }
        std::thread::sleep(SAMPLE_EVERY);
    };
    let wall = started.elapsed().as_secs_f64();
    let (server_cores, server_cpu) = server_use(server, &server_before, wall);
    let summary = std::fs::read_to_string(d.join("sluice.log")).unwrap_or_default();
    assert!(status.success(), "sluice failed: {summary}");
    let read: u64 = between(&summary, "sluice: read ", " record")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {summary}"));
    let written = between(&summary, "wrote ", " update").and_then(|n| n.parse().ok());
    let secs: f64 = between(&summary, " in ", "s (")
        .and_then(|s| s.parse().ok())
        .unwrap_or(wall);
    let peak_mib = between(&summary, "peak memory ", " MiB")
        .map(str::to_owned)
        .unwrap_or_else(|| mib(peak).to_string());
    Measured {
        read,
        written,
        secs,
        wall,
        peak_mib,
        cpu: cpu_report(&BTreeMap::new(), &threads.by_name(), sampled.max(f64::EPSILON)),
        server_cores,
        server_cpu,
        server_busy: busy,
        range: (0.0, 0.0),
    }
}

/// The run with the median rate of `runs` runs of `measure`.
fn median(runs: usize, mut measure: impl FnMut() -> Measured) -> Measured {
    let mut all: Vec<Measured> = (0..runs).map(|_| measure()).collect();
    all.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let range = (all[0].rate(), all[all.len() - 1].rate());
    let mut m = all.swap_remove(all.len() / 2);
    m.range = range;
    m
}

/// Runs the ceiling once, unrecorded: the server's first pass over its data is slower
/// (JIT compilation, heap growth), and would otherwise count against whatever runs first.
fn warm_up(args: &[&str], server: &Server) {
    let m = measure_raw(args, server);
    println!(
        "warm-up pass (the ceiling, not recorded): {:.0}/s, server {:.2} cores",
        m.read as f64 / m.secs,
        m.server_cores
    );
}

fn header(unit: &str, parts: &str) {
    println!(
        "{:<32} {:<8} {:<7} {:>9} {:>15} {:>7} {:>7} {:>8} {:>6} {:>6}",
        "run", parts, "workers", unit, "(min-max)", "seconds", "wall s", "peak MiB", "client", "server"
    );
}

/// One line of the table, and the CPU use per thread for the notes under it.
fn row(what: &str, parts: (&str, &str), workers: &str, m: &Measured, notes: &mut Vec<String>) {
    let client: f64 = m.cpu.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0.0);
    let range = format!("{:.0}-{:.0}", m.range.0, m.range.1);
    println!(
        "{what:<32} {:<8} {workers:<7} {:>9.0} {range:>15} {:>7.2} {:>7.2} {:>8} {client:>6.2} {:>6.2}",
        parts.1,
        m.rate(),
        m.secs,
        m.wall,
        m.peak_mib,
        m.server_cores
    );
    let written = m.written.map(|w| format!(", wrote {w} updates")).unwrap_or_default();
    let busy = m
        .server_busy
        .map(|(from, to)| {
            format!(
                "\n    server busy from {from:.2}s to {to:.2}s of {:.2}s: {:.2}s before, {:.2}s after",
                m.wall,
                from,
                m.wall - to
            )
        })
        .unwrap_or_default();
    notes.push(format!(
        "  {what}, {} {}, {workers} workers{written}:\n    client {}\n    server {}{busy}",
        parts.1, parts.0, m.cpu, m.server_cpu
    ));
}

fn aws_source(kind: &str, name: &str, endpoint: &str, extra: &str) -> String {
    let what = if kind == "dynamodb-scan" {
        format!("table = \"{TABLE}\"")
    } else {
        format!("stream = \"{STREAM}\"")
    };
    format!("[sources.{name}]\ntype = \"{kind}\"\n{what}\nendpoint = \"{endpoint}\"\n{extra}\n")
}

fn discard(name: &str, input: &str, mode: &str) -> String {
    format!("[sinks.{name}]\ntype = \"discard\"\ninput = \"{input}\"\nmode = \"{mode}\"\n\n")
}

const HEAD: &str = "[pipeline]\nname = \"aws-bench\"\n\n[dead_letters]\ntype = \"discard\"\n\n";

fn bench_scan(args: &Args) {
    let server = Server::dynalite();
    let endpoint = server.endpoint();
    let load = load_table(&endpoint, args.items);
    println!(
        "scan: {} cds Accounts items loaded into dynalite with BatchWriteItem in {load:.1}s ({:.0} items/s)",
        args.items,
        f64::from(args.items) / load
    );
    warm_up(&["scan", &endpoint, "1"], &server);
    header("items/s", "segments");
    let mut cpu = Vec::new();
    for &segments in &args.segments {
        let raw = median(args.runs, || {
            measure_raw(&["scan", &endpoint, &segments.to_string()], &server)
        });
        assert_eq!(raw.read, u64::from(args.items), "the raw scan read every item");
        row(
            "raw SDK parallel scan",
            ("segments", &segments.to_string()),
            "-",
            &raw,
            &mut cpu,
        );
        let source = aws_source(
            "dynamodb-scan",
            "accounts",
            &endpoint,
            &format!("segments = {segments}"),
        );
        let direct = format!("{HEAD}{source}{}", discard("items", "accounts", "append"));
        let cds = format!(
            "{HEAD}{source}[sources.changes]\ntype = \"file\"\npath = \"changes.jsonl\"\nformat = \"dynamodb-stream\"\n\n\
             [nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\nsnapshot = \"accounts\"\n\n{}",
            discard("accounts_by_uuid", "cds.accounts_by_uuid", "upsert")
        );
        for (what, pipeline) in [
            ("sluice scan → discard", &direct),
            ("sluice scan → cds → discard", &cds),
        ] {
            for &workers in &args.workers {
                let name = format!(
                    "scan-{}-s{segments}-w{workers}",
                    if what.contains("cds") { "cds" } else { "discard" }
                );
                let perf = args.perf.as_deref().map(|p| (p, name.as_str()));
                let m = median(args.runs, || measure_sluice(pipeline, workers, &server, perf));
                assert_eq!(m.read, u64::from(args.items), "{what} read every item");
                row(
                    what,
                    ("segments", &segments.to_string()),
                    &workers.to_string(),
                    &m,
                    &mut cpu,
                );
            }
        }
    }
    println!("cores used per thread, over each run:");
    for line in cpu {
        println!("{line}");
    }
}

fn bench_kinesis(args: &Args) {
    let server = Server::kinesalite();
    let endpoint = server.endpoint();
    let (load, size) = load_stream(&endpoint, args.records, args.shards, args.accounts);
    println!(
        "kinesis: {} cds change records ({size} bytes on average, {} accounts) put into {} shards of kinesalite \
         with PutRecords in {load:.1}s ({:.0} records/s)",
        args.records,
        args.accounts,
        args.shards,
        f64::from(args.records) / load
    );
    warm_up(&["kinesis", &endpoint], &server);
    header("records/s", "shards");
    let mut cpu = Vec::new();
    let shards = args.shards.to_string();
    let raw = median(args.runs, || measure_raw(&["kinesis", &endpoint], &server));
    assert_eq!(raw.read, u64::from(args.records), "the raw read got every record");
    row("raw SDK GetRecords loop", ("shards", &shards), "-", &raw, &mut cpu);
    let source = aws_source(
        "kinesis",
        "changes",
        &endpoint,
        "bounded = true\nformat = \"dynamodb-stream\"",
    );
    let direct = format!("{HEAD}{source}{}", discard("records", "changes", "append"));
    let cds = format!(
        "{HEAD}{source}[nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\n\n{}{}{}",
        discard("cds_updates", "cds.cds_updates", "append"),
        discard("directory", "cds.directory", "upsert"),
        discard("accounts_by_uuid", "cds.accounts_by_uuid", "upsert")
    );
    for (what, pipeline) in [
        ("sluice kinesis → discard", &direct),
        ("sluice kinesis → cds → discard", &cds),
    ] {
        for &workers in &args.workers {
            let name = format!(
                "kinesis-{}-w{workers}",
                if what.contains("cds") { "cds" } else { "discard" }
            );
            let perf = args.perf.as_deref().map(|p| (p, name.as_str()));
            let m = median(args.runs, || measure_sluice(pipeline, workers, &server, perf));
            assert_eq!(m.read, u64::from(args.records), "{what} read every record");
            row(what, ("shards", &shards), &workers.to_string(), &m, &mut cpu);
        }
    }
    println!("cores used per thread, over each run:");
    for line in cpu {
        println!("{line}");
    }
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--raw") {
        argv.next();
        raw_child(argv);
        return;
    }
    let args = parse_args();
    if args.scan {
        bench_scan(&args);
    }
    if args.kinesis {
        bench_kinesis(&args);
    }
}
