//! The served-view gRPC servers: how fast a client reads the cds directory's snapshot, and
//! how long a change takes from the input file to many following clients.
//!
//! Run by hand (not in CI), from the repository root:
//!
//! ```text
//! cargo bench --bench serve                                   # both, with the defaults below
//! cargo bench --bench serve -- snapshot --accounts 1000000,10000000
//! cargo bench --bench serve -- follow --clients 1,100 --rate 10000 --seconds 30
//! cargo bench --bench serve -- follow --scan 100000 --workers 1 --epoch-ms 20
//! cargo bench --bench serve -- follow --retention-ms 1000 --dump delays.txt   # per-change delays
//! ```
//!
//! **snapshot** (in process, one child process per size so peak memory is that size's own):
//! a directory [`ServedView`] is filled with N accounts (100 k rows per time), the server is
//! started on a free port, and one tonic client is timed from connect to the first message
//! with `dataset_current`. Peak RSS (`VmHWM`) is read after the fill (the view) and after the
//! snapshot (plus the server's and the client's share).
//!
//! **follow** (end to end): `sluice run` of a cds pipeline following `scan.jsonl` (100 k
//! accounts) and `changes.jsonl`, serving its directory over `AccountStreamService`. Once a
//! client's snapshot holds every account, `--clients` clients connect and read theirs, then
//! MODIFY records are appended at `--rate` per second (a batch every 10 ms) for `--seconds`.
//! Change `seq` moves an account to the number `15_560_000_000 + seq`; each client measures,
//! per upsert of such a number, the delay since the batch holding it was written. Accounts
//! are moved in a seeded random order, each at most once per `--scan` changes, so every new
//! number lives long enough (10 s at the defaults) that every client must see it.
//! The clients run in this process, beside `sluice` on the same machine.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::list;
use common::procfs::{cpu_by_thread, cpu_report, mib, peak_rss};
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use sluice_runtime::sink::Sink as _;
use sluice_runtime::{Row, Value};
use sluice_served::{ServedView, ViewConfig};
use sluice_server::proto::org::signal::AccountDataRequest;
use sluice_server::proto::org::signal::account_stream_service_client::AccountStreamServiceClient;
use sluice_server::{AccountStreamConfig, ServerConfig};
use tokio::sync::watch;

// The allocator `sluice` runs with, so the view's memory is what it would be in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN_KEY: &str = "bench-token-key-0123456789";
/// Scanned account `n` has the number `+1` followed by this plus `n`.
const SCAN_NUMBERS: i64 = 15_550_000_000;
/// Change `seq` moves an account to this plus `seq`.
const MOVED_NUMBERS: i64 = 15_560_000_000;
/// Rows per time when filling a view in process.
const FILL_BATCH: u32 = 100_000;
/// How often the change writer appends a batch.
const WRITE_EVERY: Duration = Duration::from_millis(10);
const SEED: u64 = 0x5e_7e;

struct Args {
    modes: Vec<String>,
    accounts: Vec<u32>,
    clients: Vec<usize>,
    rate: u64,
    seconds: u64,
    scan: u32,
    workers: usize,
    epoch_ms: Option<u64>,
    retention_ms: Option<u64>,
    /// Where to write per-change delays (first and last client), for a closer look.
    dump: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        modes: Vec::new(),
        accounts: vec![1_000_000],
        clients: vec![100],
        rate: 10_000,
        seconds: 30,
        scan: 100_000,
        workers: 2,
        epoch_ms: None,
        retention_ms: None,
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, name: &str| -> u64 {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "snapshot" | "follow" | "snapshot-one" => args.modes.push(a),
            "--accounts" => args.accounts = list(it.next()).unwrap_or(args.accounts),
            "--clients" => args.clients = list(it.next()).unwrap_or(args.clients),
            "--rate" => args.rate = number(it.next(), "--rate"),
            "--seconds" => args.seconds = number(it.next(), "--seconds"),
            "--scan" => args.scan = u32::try_from(number(it.next(), "--scan")).expect("--scan fits in u32"),
            "--workers" => args.workers = usize::try_from(number(it.next(), "--workers")).expect("--workers"),
            "--epoch-ms" => args.epoch_ms = Some(number(it.next(), "--epoch-ms")),
            "--retention-ms" => args.retention_ms = Some(number(it.next(), "--retention-ms")),
            "--dump" => args.dump = it.next(),
            // cargo bench passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    if args.modes.is_empty() {
        args.modes = vec!["snapshot".into(), "follow".into()];
    }
    args
}

fn main() {
    let args = parse_args();
    for mode in &args.modes {
        match mode.as_str() {
            "snapshot" => {
                // One process per size: peak RSS is a process's high-water mark.
                let exe = std::env::current_exe().expect("the benchmark's own path");
                for n in &args.accounts {
                    let status = Command::new(&exe)
                        .args(["snapshot-one", "--accounts", &n.to_string()])
                        .status()
                        .expect("run the snapshot measurement");
                    assert!(status.success(), "the snapshot measurement of {n} accounts failed");
                }
            }
            "snapshot-one" => snapshot(args.accounts[0]),
            _ => {
                for &clients in &args.clients {
                    follow(&args, clients);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// snapshot

fn e164(n: u32) -> String {
    format!("+{}", SCAN_NUMBERS + i64::from(n))
}

/// Account `n`'s 16-byte uuid (as tests/common/accounts.rs makes it).
fn uuid(n: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[6] = 0x40;
    b[8] = 0x80;
    b[12..].copy_from_slice(&n.to_be_bytes());
    b
}

/// The PNI or UAK bytes of key set `key` (`0x50` for PNIs, `0xA0` for UAKs).
fn key_bytes(tag: u8, key: u8) -> Vec<u8> {
    [tag, key].repeat(8)
}

/// A cds `directory` row as the dataflow derives it (dataflows/cds/src/graph.rs).
fn directory_row(n: u32) -> Row {
    let number: Arc<str> = e164(n).into();
    let key = n.to_le_bytes()[0];
    Row::derived(
        Value::map([("e164", Value::Str(Arc::clone(&number)))]),
        Value::map([
            ("e164", Value::Str(number)),
            ("aci", Value::Bytes(uuid(n).into())),
            ("pni", Value::Bytes(key_bytes(0x50, key).into())),
            ("uak", Value::Bytes(key_bytes(0xA0, key).into())),
        ]),
    )
}

fn snapshot(n: u32) {
    // Up to 449,999,999 accounts the numbers have the same width, so ascending n is ascending rows.
    assert!(n < 450_000_000, "at most 449,999,999 accounts");
    let rss_start = peak_rss("self");
    let view = ServedView::new(ViewConfig {
        name: "directory".into(),
        partition_by: None,
        version_field: None,
        retention_ms: None,
    });
    let mut sink = view.sink(None).expect("a fresh view");
    let filling = Instant::now();
    let t0 = now_ms();
    for (i, start) in (1..=n).step_by(FILL_BATCH as usize).enumerate() {
        let end = start.saturating_add(FILL_BATCH).min(n + 1);
        let rows: Vec<_> = (start..end).map(|a| (directory_row(a), 1)).collect();
        let time = t0 + i as u64;
        sink.write(time, &rows).expect("apply a batch");
        sink.commit(Some(time + 1)).expect("advance the view");
    }
    let fill_secs = filling.elapsed().as_secs_f64();
    let rss_view = peak_rss("self");

    let server = sluice_server::start(ServerConfig {
        grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        http: None,
        token_key: TOKEN_KEY.as_bytes().to_vec(),
        views: BTreeMap::new(),
        subscribe_token: None,
        account_stream: Some(AccountStreamConfig {
            view: view.clone(),
            auth_token: None,
        }),
        messages: None,
        client_buffer: 64,
        stall_timeout: Duration::from_secs(60),
        tls: None,
    })
    .expect("start the server");
    let addr = server.grpc_addr().expect("a gRPC address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime");
    let cpu_before = cpu_by_thread("self");
    let started = Instant::now();
    let read = runtime.block_on(read_snapshot(addr)).expect("read the snapshot");
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_report(&cpu_before, &cpu_by_thread("self"), secs);
    let rss_after = peak_rss("self");
    server.stop();

    assert!(read.cleared, "the first message did not clear the client");
    assert_eq!(read.records, u64::from(n), "records in the snapshot");
    let want: i64 = (1..=i64::from(n)).map(|a| SCAN_NUMBERS + a).sum();
    assert_eq!(read.e164_sum, want, "the snapshot's numbers are not the view's");
    println!(
        "snapshot {n} accounts: {:.0} records/s, {secs:.2} s to dataset_current ({} messages); \
         peak RSS {} MiB at start, {} MiB with the view filled ({:.0} rows/s), {} MiB after the snapshot",
        f64::from(n) / secs,
        read.messages,
        mib(rss_start),
        mib(rss_view),
        f64::from(n) / fill_secs,
        mib(rss_after),
    );
    println!("  CPU while reading (cores; the client runs on this process's main thread): {cpu}");
}

/// What one client read up to `dataset_current`.
struct Snapshot {
    cleared: bool,
    messages: u64,
    records: u64,
    e164_sum: i64,
}

/// Connects a fresh client and reads to the first message with `dataset_current`.
async fn read_snapshot(addr: SocketAddr) -> Result<Snapshot, String> {
    let mut client = AccountStreamServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream = client
        .stream_account_data(AccountDataRequest {
            shard: None,
            last_continuation_token: Vec::new(),
        })
        .await
        .map_err(|e| format!("stream_account_data: {e}"))?
        .into_inner();
    let mut read = Snapshot {
        cleared: false,
        messages: 0,
        records: 0,
        e164_sum: 0,
    };
    while let Some(message) = stream.message().await.map_err(|e| format!("stream: {e}"))? {
        read.cleared |= read.messages == 0 && message.clear_all;
        read.messages += 1;
        for record in &message.records {
            if !record.aci.is_empty() {
                read.records += 1;
                read.e164_sum += record.e164;
            }
        }
        if message.dataset_current {
            return Ok(read);
        }
    }
    Err("the stream ended before dataset_current".into())
}

// ---------------------------------------------------------------------------------------
// follow

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An Accounts item (tests/common/accounts.rs): uuid, version, number, discoverable, keys.
fn item(n: u32, version: u64, number: &str, key: u8) -> serde_json::Value {
    serde_json::json!({
        "U": {"B": b64(&uuid(n))},
        "V": {"N": version.to_string()},
        "P": {"S": number},
        "D": {"B": b64(format!("{{\"v\":{version}}}").as_bytes())},
        "C": {"BOOL": true},
        "PNI": {"B": b64(&key_bytes(0x50, key))},
        "UAK": {"B": b64(&key_bytes(0xA0, key))},
    })
}

/// A MODIFY record as Kinesis Data Streams for DynamoDB delivers it (tests/common/accounts.rs).
fn change(n: u32, time_ms: u64, sequence: u64, old: serde_json::Value, new: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "eventID": format!("{sequence:032x}"),
        "eventName": "MODIFY",
        "dynamodb": {
            "ApproximateCreationDateTime": time_ms,
            "Keys": {"U": {"B": b64(&uuid(n))}},
            "SequenceNumber": (49_650_000_000_000_000_000u128 + u128::from(sequence)).to_string(),
            "SizeBytes": 300,
            "OldImage": old,
            "NewImage": new,
        },
        "tableName": "Accounts",
        "recordFormat": "application/json",
        "eventSource": "aws:dynamodb",
    })
}

fn pipeline(args: &Args, port: u16) -> String {
    let epoch = args.epoch_ms.map_or(String::new(), |e| format!("epoch_ms = {e}\n"));
    let retention = args
        .retention_ms
        .map_or(String::new(), |r| format!("retention_ms = {r}\n"));
    let source = |name: &str, file: &str, format: &str| {
        format!(
            "[sources.{name}]\ntype = \"file\"\npath = \"{file}\"\nformat = \"{format}\"\nfollow = true\npoll_ms = 5\n\n"
        )
    };
    format!(
        "[pipeline]\nname = \"serve-bench\"\nworkers = {}\n{epoch}\n\
         [dead_letters]\ntype = \"file\"\npath = \"dead-letters.jsonl\"\n\n{}{}\
         [nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\nsnapshot = \"accounts\"\n\n\
         [sinks.directory]\ntype = \"served\"\ninput = \"cds.directory\"\nmode = \"upsert\"\n{retention}\n\
         [server]\ngrpc = \"127.0.0.1:{port}\"\ntoken_key = \"{TOKEN_KEY}\"\n\n\
         [server.account_stream]\nview = \"directory\"\n",
        args.workers,
        source("accounts", "scan.jsonl", "dynamodb-item"),
        source("changes", "changes.jsonl", "dynamodb-stream"),
    )
}

/// `sluice run`, stopped with SIGTERM (by its PID) when dropped.
struct Sluice {
    child: Child,
}

impl Sluice {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn stop(mut self) -> bool {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one following client saw after its snapshot.
#[derive(Default)]
struct Seen {
    snapshot_secs: f64,
    records: u64,
    /// Per change, the delay of the first upsert of its number in microseconds
    /// ([`MISSING`]: none arrived).
    delays_us: Vec<u32>,
    received: usize,
    repeats: u64,
}

/// A change a client did not receive.
const MISSING: u32 = u32::MAX;

/// The write instants of the changes, as nanoseconds since `base` (0: not written yet).
struct Clock {
    base: Instant,
    written: Vec<AtomicU64>,
}

fn follow(args: &Args, clients: usize) {
    assert!(
        args.scan < 10_000_000,
        "--scan below 10,000,000 (numbers must stay below the moved ones)"
    );
    let total = usize::try_from(args.rate * args.seconds).expect("changes fit in memory");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut scan = String::new();
    for n in 1..=args.scan {
        scan += &item(n, 1, &e164(n), n.to_le_bytes()[0]).to_string();
        scan.push('\n');
    }
    std::fs::write(d.join("scan.jsonl"), scan).expect("write the scan");
    std::fs::write(d.join("changes.jsonl"), "").expect("create the change file");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    std::fs::write(d.join("pipeline.toml"), pipeline(args, port)).expect("write the pipeline");
    let log = std::fs::File::create(d.join("sluice.log")).expect("create the log");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sluice run");
    let sluice = Sluice { child };
    let pid = sluice.pid();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a client runtime");

    // The whole scan in a fresh client's snapshot.
    let loading = Instant::now();
    loop {
        let read = runtime.block_on(read_snapshot(addr));
        if read.as_ref().is_ok_and(|r| r.records == u64::from(args.scan)) {
            break;
        }
        let log = std::fs::read_to_string(d.join("sluice.log")).unwrap_or_default();
        assert!(
            loading.elapsed() < Duration::from_secs(300),
            "the directory did not reach {} accounts: {read:?}\n{log}",
            args.scan,
            read = read.map(|r| r.records)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let load_secs = loading.elapsed().as_secs_f64();
    let rss_before = peak_rss(&pid);

    let clock = Arc::new(Clock {
        base: Instant::now(),
        written: (0..total).map(|_| AtomicU64::new(0)).collect(),
    });
    let ready = Arc::new(AtomicUsize::new(0));
    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..clients).map(|_| AtomicUsize::new(0)).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    let connecting = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let follower = Follower {
                addr,
                scan: args.scan,
                clock: Arc::clone(&clock),
                ready: Arc::clone(&ready),
                progress: Arc::clone(&progress),
                index: i,
                stop: stop_rx.clone(),
            };
            runtime.spawn(follower.run())
        })
        .collect();
    while ready.load(Ordering::Acquire) < clients {
        if tasks.iter().any(tokio::task::JoinHandle::is_finished) {
            let ended: Vec<String> = tasks
                .into_iter()
                .filter(tokio::task::JoinHandle::is_finished)
                .map(|t| match runtime.block_on(t) {
                    Ok(Ok(_)) => "ended early".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                })
                .collect();
            panic!("clients failed before reaching dataset_current: {ended:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let connect_secs = connecting.elapsed().as_secs_f64();

    let cpu_before = (cpu_by_thread(&pid), cpu_by_thread("self"));
    let window = Instant::now();
    let written = write_changes(&d.join("changes.jsonl"), args, &clock);
    let write_secs = window.elapsed().as_secs_f64();
    // Every client has every change, or 30 s passed since the last write.
    let draining = Instant::now();
    while progress.iter().any(|p| p.load(Ordering::Acquire) < written) && draining.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain_secs = draining.elapsed().as_secs_f64();
    let cpu_secs = window.elapsed().as_secs_f64();
    let cpu_after = (cpu_by_thread(&pid), cpu_by_thread("self"));
    let rss_end = peak_rss(&pid);
    let _ = stop_tx.send(true);
    let seen: Vec<Seen> = tasks
        .into_iter()
        .map(|t| {
            runtime
                .block_on(t)
                .expect("a client task panicked")
                .unwrap_or_else(|e| panic!("a client failed: {e}"))
        })
        .collect();
    drop(runtime);
    let stopped = sluice.stop();

    let delays: Vec<u32> = seen
        .iter()
        .flat_map(|s| s.delays_us.iter().copied().filter(|&d| d != MISSING))
        .collect();
    // Per change, its first and its last client: the pipeline's share and the fan-out's.
    let (first, last): (Vec<u32>, Vec<u32>) = (0..written)
        .filter_map(|seq| {
            let got = seen.iter().map(|s| s.delays_us[seq]).filter(|&d| d != MISSING);
            Some((got.clone().min()?, got.max()?))
        })
        .unzip();
    if let Some(path) = &args.dump {
        let mut out = String::from("seq written_ms first_client_us last_client_us\n");
        for (seq, (f, l)) in first.iter().zip(&last).enumerate() {
            let at = clock.written[seq].load(Ordering::Acquire) / 1_000_000;
            out += &format!("{seq} {at} {f} {l}\n");
        }
        std::fs::write(path, out).expect("write the dump");
    }
    let records: Vec<u64> = seen.iter().map(|s| s.records).collect();
    let complete = seen.iter().filter(|s| s.received == written).count();
    let repeats: u64 = seen.iter().map(|s| s.repeats).sum();
    let snapshot_max = seen.iter().map(|s| s.snapshot_secs).fold(0.0, f64::max);
    println!(
        "follow {clients} clients, {} changes/s for {} s ({written} changes in {write_secs:.1} s; {} accounts, \
         workers {}, epoch_ms {}):",
        args.rate,
        args.seconds,
        args.scan,
        args.workers,
        args.epoch_ms.map_or("default".to_owned(), |e| e.to_string()),
    );
    println!(
        "  scan served after {load_secs:.1} s; {clients} clients at dataset_current after {connect_secs:.2} s \
         (slowest snapshot {snapshot_max:.2} s)"
    );
    let deliveries = delays.len();
    println!(
        "  delay write -> client: {} over {deliveries} deliveries",
        percentiles(delays)
    );
    if clients > 1 {
        println!("  per change, first client: {}", percentiles(first));
        println!("  per change, last client:  {}", percentiles(last));
    }
    println!(
        "  records per client after the snapshot: min {}, max {}; every client received every change: {} \
         ({complete}/{clients} complete, {repeats} repeated upserts; drain {drain_secs:.2} s)",
        records.iter().min().unwrap_or(&0),
        records.iter().max().unwrap_or(&0),
        if complete == clients { "yes" } else { "NO" },
    );
    println!(
        "  sluice peak RSS: {} MiB before the clients, {} MiB at the end; stopped cleanly: {}",
        mib(rss_before),
        mib(rss_end),
        if stopped { "yes" } else { "no" }
    );
    println!(
        "  CPU over {cpu_secs:.1} s (cores): sluice {}; bench {}",
        cpu_report(&cpu_before.0, &cpu_after.0, cpu_secs),
        cpu_report(&cpu_before.1, &cpu_after.1, cpu_secs)
    );
}

/// p50, p99 and max of delays in microseconds, as milliseconds.
fn percentiles(mut us: Vec<u32>) -> String {
    us.sort_unstable();
    let at = |p: usize| {
        us.get((us.len() * p / 100).min(us.len().saturating_sub(1)))
            .map_or(f64::NAN, |&d| f64::from(d) / 1000.0)
    };
    format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", at(50), at(99), at(100))
}

/// Appends `rate` MODIFY records per second for `seconds`, a batch every [`WRITE_EVERY`],
/// noting each batch's write instant; returns how many were written.
fn write_changes(path: &Path, args: &Args, clock: &Clock) -> usize {
    let total = clock.written.len();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(SEED);
    let mut order: Vec<u32> = (1..=args.scan).collect();
    order.shuffle(&mut rng);
    let mut numbers: Vec<String> = (0..=args.scan).map(e164).collect();
    let mut versions = vec![1u64; numbers.len()];
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open the change file");
    let start = Instant::now();
    let mut seq = 0usize;
    let mut tick = 1u32;
    let mut lines = String::new();
    while seq < total {
        let due = start + WRITE_EVERY * tick;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let elapsed_ms = u64::try_from((WRITE_EVERY * tick).as_millis()).expect("ms");
        let target = usize::try_from(args.rate * elapsed_ms / 1000)
            .expect("count")
            .min(total);
        let first = seq;
        let time_ms = now_ms();
        lines.clear();
        for s in first..target {
            let n = order[s % order.len()];
            let i = n as usize;
            let number = format!("+{}", MOVED_NUMBERS + i64::try_from(s).expect("seq"));
            let key = n.to_le_bytes()[0];
            let old = item(n, versions[i], &numbers[i], key);
            versions[i] += 1;
            let new = item(n, versions[i], &number, key);
            lines += &change(n, time_ms, s as u64 + 1, old, new).to_string();
            lines.push('\n');
            numbers[i] = number;
        }
        let at = u64::try_from(clock.base.elapsed().as_nanos()).expect("ns").max(1);
        for s in first..target {
            clock.written[s].store(at, Ordering::Release);
        }
        file.write_all(lines.as_bytes()).expect("append changes");
        seq = target;
        tick += 1;
    }
    seq
}

/// One following client: snapshot to `dataset_current`, then every change until stopped.
struct Follower {
    addr: SocketAddr,
    scan: u32,
    clock: Arc<Clock>,
    ready: Arc<AtomicUsize>,
    progress: Arc<Vec<AtomicUsize>>,
    index: usize,
    stop: watch::Receiver<bool>,
}

impl Follower {
    async fn run(mut self) -> Result<Seen, String> {
        let started = Instant::now();
        let mut client = AccountStreamServiceClient::connect(format!("http://{}", self.addr))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = client
            .stream_account_data(AccountDataRequest {
                shard: None,
                last_continuation_token: Vec::new(),
            })
            .await
            .map_err(|e| format!("stream_account_data: {e}"))?
            .into_inner();
        let mut seen = Seen::default();
        let mut snapshot = 0u64;
        let mut current = false;
        seen.delays_us = vec![MISSING; self.clock.written.len()];
        loop {
            let message = tokio::select! {
                biased;
                _ = self.stop.wait_for(|stop| *stop) => break,
                message = stream.message() => message.map_err(|e| format!("stream: {e}"))?,
            };
            let Some(message) = message else {
                return Err("the stream ended".into());
            };
            let now = u64::try_from(self.clock.base.elapsed().as_nanos()).expect("ns");
            if !current {
                snapshot += message.records.iter().filter(|r| !r.aci.is_empty()).count() as u64;
                if message.dataset_current {
                    if snapshot != u64::from(self.scan) {
                        return Err(format!("a snapshot of {snapshot} accounts, not {}", self.scan));
                    }
                    current = true;
                    seen.snapshot_secs = started.elapsed().as_secs_f64();
                    self.ready.fetch_add(1, Ordering::Release);
                }
                continue;
            }
            seen.records += message.records.len() as u64;
            for record in &message.records {
                let Ok(seq) = usize::try_from(record.e164 - MOVED_NUMBERS) else {
                    continue;
                };
                if record.aci.is_empty() || seq >= seen.delays_us.len() {
                    continue;
                }
                if seen.delays_us[seq] != MISSING {
                    seen.repeats += 1;
                    continue;
                }
                let written = self.clock.written[seq].load(Ordering::Acquire);
                if written == 0 {
                    return Err(format!("change {seq} arrived before it was written"));
                }
                seen.received += 1;
                let us = now.saturating_sub(written) / 1000;
                seen.delays_us[seq] = u32::try_from(us).unwrap_or(MISSING - 1);
            }
            self.progress[self.index].store(seen.received, Ordering::Release);
        }
        Ok(seen)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
