//! The fan-out hub: how many events per second `POST /publish` accepts durably, and how many
//! deliveries per second the webhook sink makes to a fast local receiver.
//!
//! Run by hand (not in CI), from the repository root:
//!
//! ```text
//! cargo bench --bench hub                                     # both, with the defaults below
//! cargo bench --bench hub -- publish --clients 1,16,64 --seconds 10 --partitions 1
//! cargo bench --bench hub -- publish --tls                    # over HTTPS (the test certificate)
//! cargo bench --bench hub -- deliver --events 20000 --subscribers 200 --topics 20
//! ```
//!
//! **publish**: `sluice run` of a hub whose subscriber table is empty, so what is measured is
//! the endpoint: token check, body decoding, the append to the publish log and its group
//! commit (`fdatasync`), then reading the log into the dataflow. `--clients` concurrent
//! HTTP/1.1 keep-alive connections publish for `--seconds`; every `200` counted was durable.
//! With `--tls` the endpoint serves HTTPS with the test certificate of
//! `connectors/http-ingest/tests/fixtures/tls`, which the client trusts.
//!
//! **deliver**: `../shared/bench/gen.py fanout` writes events and subscribers; the
//! subscribers' target URLs are pointed at a receiver in this process (axum, answering 200 to
//! everything). A bounded `sluice run` matches the events (from a file) and sends every
//! delivery; it ends once every delivery is answered, so deliveries/s is the received count
//! over the run's wall time. The receiver shares the machine's cores with `sluice`.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{between, generator, list};

// As the binary does: the receiver's and client's allocations are many and small.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-publish-secret-0123456789";

struct Args {
    what: Vec<String>,
    clients: Vec<usize>,
    seconds: u64,
    partitions: u32,
    events: u64,
    subscribers: u64,
    topics: u64,
    tls: bool,
}

fn args() -> Args {
    let mut a = Args {
        what: Vec::new(),
        clients: vec![1, 16, 64],
        seconds: 10,
        partitions: 1,
        events: 20_000,
        subscribers: 200,
        topics: 20,
        tls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => a.clients = list(it.next()).unwrap_or(a.clients),
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.seconds),
            "--partitions" => a.partitions = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.partitions),
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.events),
            "--subscribers" => a.subscribers = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.subscribers),
            "--topics" => a.topics = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.topics),
            "--tls" => a.tls = true,
            "publish" | "deliver" => a.what.push(arg),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    if a.what.is_empty() {
        a.what = vec!["publish".into(), "deliver".into()];
    }
    a
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for what in &args.what {
        match what.as_str() {
            "publish" => publish(&args, &runtime),
            _ => deliver(&args, &runtime),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A hub pipeline in `dir`: subscribers from `subscribers`, events from the publish endpoint
/// on `port` or from `events`, deliveries to the webhook sink.
fn pipeline(dir: &Path, port: u16, partitions: u32, events: Option<&str>, tls: bool) -> String {
    let tls = if tls {
        let fixtures = tls_fixtures();
        format!(
            "tls = {{ cert = '{}', key = '{}' }}\n",
            fixtures.join("cert-a.pem").display(),
            fixtures.join("key-a.pem").display()
        )
    } else {
        String::new()
    };
    let events = match events {
        Some(file) => format!("type = \"file\"\npath = \"{file}\"\nstart_after = [\"subscribers\"]\n"),
        None => format!(
            "type = \"http-ingest\"\nlisten = \"127.0.0.1:{port}\"\nlog_dir = \"{}\"\njwt_secret = \"{SECRET}\"\npartitions = {partitions}\n{tls}",
            dir.join("log").display()
        ),
    };
    format!(
        r#"[pipeline]
name = "hub-bench"
workers = 2
epoch_ms = 20

[dead_letters]
type = "file"
path = "{dir}/dead-letters.jsonl"

[sources.subscribers]
type = "file"
path = "{dir}/subscribers.jsonl"
envelope = "upsert"
key = ["id"]

[sources.events]
{events}
[nodes.hub]
type = "fanout"
subscribers = "subscribers"
events = "events"

[sinks.webhooks]
type = "webhook"
input = "hub.deliveries"
mode = "append"
allow_private_targets = true
per_target_concurrency = 128
max_in_flight = 256

[sinks.webhooks.dead_letters]
type = "file"
path = "{dir}/failed.jsonl"
"#,
        dir = dir.display()
    )
}

fn tls_fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/http-ingest/tests/fixtures/tls")
}

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    sluice_auth::jwt::sign(
        SECRET.as_bytes(),
        &serde_json::json!({"sub": "bench", "exp": now + 3600}),
    )
}

fn publish(args: &Args, runtime: &tokio::runtime::Runtime) {
    let label = if args.tls { "https  " } else { "publish" };
    println!("{label}   clients  seconds  accepted  events/s  p50 ms  p99 ms  max ms");
    for &clients in &args.clients {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(dir.path().join("subscribers.jsonl"), "").expect("subscribers");
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, pipeline(dir.path(), port, args.partitions, None, args.tls)).expect("pipeline");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet"])
            .arg(&file)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run sluice");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the endpoint did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let scheme = if args.tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}/publish");
        let auth = format!("Bearer {}", token());
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let latencies: Vec<Vec<Duration>> = runtime.block_on(async {
            let mut client = reqwest::Client::builder().pool_max_idle_per_host(clients);
            if args.tls {
                let pem = std::fs::read(tls_fixtures().join("cert-a.pem")).expect("the test certificate");
                client = client.tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("a certificate")]);
            }
            let client = client.build().expect("client");
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut n = 0u64;
                        while Instant::now() < until {
                            let data = serde_json::json!({"body": {"client": c, "n": n}, "headers": {"x": "y"}});
                            let payload = base64::engine::general_purpose::STANDARD.encode(data.to_string());
                            let body = serde_json::json!({"Topic": format!("t{}", n % 16), "Payload": payload});
                            let sent = Instant::now();
                            let ok = client
                                .post(&url)
                                .header("authorization", &auth)
                                .body(body.to_string())
                                .send()
                                .await
                                .is_ok_and(|r| r.status().as_u16() == 200);
                            if ok {
                                lat.push(sent.elapsed());
                            }
                            n += 1;
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.unwrap_or_default());
            }
            all
        });
        let secs = started.elapsed().as_secs_f64();
        let mut all: Vec<Duration> = latencies.into_iter().flatten().collect();
        all.sort();
        let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)));
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        println!(
            "{label}   {clients:<8} {secs:<8.1} {:<9} {:<9.0} {:<7.2} {:<7.2} {:.2}",
            all.len(),
            all.len() as f64 / secs,
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(all.last())
        );
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

fn deliver(args: &Args, runtime: &tokio::runtime::Runtime) {
    let Some(gen_py) = generator() else {
        println!("deliver: ../shared/bench/gen.py not found; skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new("python3")
        .arg(&gen_py)
        .args(["fanout", "--n", &args.events.to_string()])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--topics", &args.topics.to_string()])
        .arg("--out")
        .arg(dir.path())
        .status()
        .expect("run gen.py");
    assert!(status.success(), "gen.py failed");

    let received = Arc::new(AtomicU64::new(0));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the receiver");
    let port = listener.local_addr().expect("address").port();
    let count = Arc::clone(&received);
    let app = axum::Router::new().fallback(move || {
        count.fetch_add(1, Ordering::Relaxed);
        async { "" }
    });
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // Every target at the receiver, keeping its path (and placeholders).
    let subscribers = std::fs::read_to_string(dir.path().join("subscribers.jsonl")).expect("subscribers");
    let mut rewritten = String::new();
    for line in subscribers.lines() {
        let mut row: serde_json::Value = serde_json::from_str(line).expect("subscriber");
        if let Some(url) = row["target_url"].as_str() {
            let path = url.splitn(4, '/').nth(3).unwrap_or_default();
            row["target_url"] = serde_json::json!(format!("http://127.0.0.1:{port}/{path}"));
        }
        rewritten.push_str(&row.to_string());
        rewritten.push('\n');
    }
    std::fs::write(dir.path().join("subscribers.jsonl"), rewritten).expect("subscribers");
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline(dir.path(), 0, 1, Some("events.jsonl"), false)).expect("pipeline");

    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .expect("run sluice");
    let secs = started.elapsed().as_secs_f64();
    let summary = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "sluice failed: {summary}");
    let got = received.load(Ordering::Relaxed);
    let failed = std::fs::read_to_string(dir.path().join("failed.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let peak = between(&summary, "peak memory ", " MiB").unwrap_or("?");
    println!("deliver   events  subscribers  deliveries  failed  seconds  deliveries/s  peak MiB");
    println!(
        "deliver   {:<7} {:<12} {got:<11} {failed:<7} {secs:<8.2} {:<13.0} {peak}",
        args.events,
        args.subscribers,
        got as f64 / secs
    );
}
