//! A fan-out hub under test: `sluice run` of a pipeline with the publish endpoint and the
//! webhook sink, and real HTTP receivers on 127.0.0.1 that succeed, fail, hang or redirect.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::common::read_jsonl;
use crate::serve_support::{free_port, wait_for};

/// The secret publishers sign their tokens with in every test hub.
pub const PUBLISH_SECRET: &str = "hub-test-publish-secret-0123456789";

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Every header, names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header's value, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// The idempotency key.
    pub fn key(&self) -> &str {
        self.header("idempotency-key")
    }
}

struct Shared {
    log: Mutex<Vec<Received>>,
    attempts: Mutex<HashMap<String, u32>>,
    /// `/flaky/…` answers 503 until this is set.
    healthy: AtomicBool,
    port: u16,
}

/// HTTP receivers on one port. The first path segment picks the behaviour:
/// `ok` 200; `fail2` 500 to the first two attempts of each delivery, then 200; `down` always
/// 500; `gone` 404; `moved` 302 to `/ok/moved`; `hang` never answers (30 s); `busy` 429 with
/// `Retry-After: 1` once per delivery, then 200; `flaky` 503 until [`Receiver::heal`].
pub struct Receiver {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Receiver {
    /// Starts the receivers on a free port.
    pub fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a receiver");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(false),
            port,
        });
        let app = axum::Router::new().fallback(receive).with_state(Arc::clone(&shared));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            shared,
            runtime,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The requests whose path starts with `prefix`.
    pub fn to(&self, prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.log.lock().map(|l| l.len()).unwrap_or_default()
    }

    /// Makes `/flaky/…` answer 200 from now on.
    pub fn heal(&self) {
        self.shared.healthy.store(true, Ordering::SeqCst);
    }

    /// Runs a future on the receivers' runtime (for HTTP calls from tests).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let received = Received {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    };
    let key = received.key().to_owned();
    if let Ok(mut log) = shared.log.lock() {
        log.push(received);
    }
    let attempt = {
        let mut attempts = shared.attempts.lock().expect("attempts");
        let n = attempts.entry(key).or_default();
        *n += 1;
        *n
    };
    let kind = path
        .trim_start_matches('/')
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    match kind {
        "fail2" if attempt <= 2 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "down" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "gone" => StatusCode::NOT_FOUND.into_response(),
        "moved" => (
            StatusCode::FOUND,
            [("location", format!("http://127.0.0.1:{}/ok/moved", shared.port))],
        )
            .into_response(),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        "busy" if attempt == 1 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
        "flaky" if !shared.healthy.load(Ordering::SeqCst) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

/// The webhook sink's settings in a test hub: quick retries, a short timeout.
pub struct HubOptions {
    /// `allow_private_targets` (the receivers are on 127.0.0.1).
    pub allow_private: bool,
    /// `max_attempts`.
    pub max_attempts: u32,
    /// `initial_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// `timeout_ms`.
    pub timeout_ms: u64,
    /// `per_target_concurrency`.
    pub per_target_concurrency: u32,
    /// Subscribers from a Kafka topic (`brokers`, `topic`) instead of a reloaded file.
    pub kafka_subscribers: Option<(String, String)>,
    /// Publish over HTTPS with this certificate and key (PEM files); the hub's client trusts
    /// that certificate only.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            allow_private: true,
            max_attempts: 4,
            initial_backoff_ms: 200,
            timeout_ms: 1000,
            per_target_concurrency: 4,
            kafka_subscribers: None,
            tls: None,
        }
    }
}

/// A hub pipeline in a directory of its own.
pub struct Hub {
    child: Option<Child>,
    /// The pipeline's directory.
    pub dir: PathBuf,
    /// The publish endpoint's base URL.
    pub url: String,
    port: u16,
    /// The admin endpoint's base URL (`/metrics`).
    pub admin: String,
    client: reqwest::Client,
}

impl Hub {
    /// Writes the pipeline with `subscribers` (JSON lines) into `dir` and starts it.
    pub fn start(dir: &Path, subscribers: &[serde_json::Value], options: HubOptions) -> Hub {
        let port = free_port();
        let subscribers_source = match &options.kafka_subscribers {
            None => {
                write_subscribers(dir, subscribers);
                "type = \"file\"\npath = \"subscribers.jsonl\"\nreload = true\npoll_ms = 50\n".to_owned()
            }
            Some((brokers, topic)) => format!(
                "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nstart = \"earliest\"\n\
                 options = {{ \"session.timeout.ms\" = \"6000\" }}\n"
            ),
        };
        let pipeline = format!(
            r#"[pipeline]
name = "hub"
workers = 2
epoch_ms = 20
checkpoint_dir = "checkpoints"
checkpoint_interval_ms = 300

[dead_letters]
type = "file"
path = "dead-letters.jsonl"

[sources.subscribers]
{subscribers_source}envelope = "upsert"
key = ["id"]

[sources.events]
type = "http-ingest"
start_after = ["subscribers"]
listen = "127.0.0.1:{port}"
log_dir = "publish-log"
jwt_secret = "{PUBLISH_SECRET}"
max_body_bytes = 65536
{tls}
[nodes.hub]
type = "fanout"
subscribers = "subscribers"
events = "events"

[sinks.webhooks]
type = "webhook"
input = "hub.deliveries"
mode = "append"
allow_private_targets = {allow}
max_attempts = {attempts}
initial_backoff_ms = {backoff}
max_backoff_ms = 2000
timeout_ms = {timeout}
per_target_concurrency = {concurrency}

[sinks.webhooks.dead_letters]
type = "file"
path = "failed.jsonl"

[sinks.subscriber_errors]
type = "file"
path = "subscriber-errors.jsonl"
input = "hub.subscriber_errors"
mode = "upsert"
"#,
            allow = options.allow_private,
            attempts = options.max_attempts,
            backoff = options.initial_backoff_ms,
            timeout = options.timeout_ms,
            concurrency = options.per_target_concurrency,
            tls = match &options.tls {
                Some((cert, key)) => format!("tls = {{ cert = '{}', key = '{}' }}\n", cert.display(), key.display()),
                None => String::new(),
            },
        );
        let (scheme, client) = match &options.tls {
            Some((cert, _)) => {
                let pem = std::fs::read(cert).expect("the certificate");
                let cert = reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
                let client = reqwest::Client::builder().tls_certs_only([cert]).build();
                ("https", client.expect("a client"))
            }
            None => ("http", reqwest::Client::new()),
        };
        std::fs::write(dir.join("pipeline.toml"), pipeline).expect("write the pipeline");
        let mut hub = Hub {
            child: None,
            dir: dir.to_path_buf(),
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            admin: format!("http://127.0.0.1:{}", free_port()),
            client,
        };
        hub.launch();
        hub
    }

    /// Starts (or restarts) `sluice run` and waits until the publish endpoint answers.
    pub fn launch(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet", "pipeline.toml", "--admin"])
            .arg(self.admin.trim_start_matches("http://"))
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
        wait_for(30, "the publish endpoint", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// SIGKILL: no drain, no final checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and a clean exit.
    pub fn stop(mut self) {
        if let Some(child) = self.child.take() {
            crate::common::stop_cleanly(child);
        }
    }

    /// A valid publish token.
    pub fn token(&self) -> String {
        token(
            PUBLISH_SECRET.as_bytes(),
            serde_json::json!({"sub": "tests", "exp": now() + 600}),
        )
    }

    /// `POST /publish` of `data` to `topic` with a valid token, through `receiver`'s runtime;
    /// returns the status.
    pub fn publish(&self, receiver: &Receiver, topic: &str, data: &serde_json::Value) -> u16 {
        let body = publish_body(topic, data);
        self.post(receiver, "/publish", &format!("Bearer {}", self.token()), body)
    }

    /// `POST path` with an `Authorization` header and a body; returns the status.
    pub fn post(&self, receiver: &Receiver, path: &str, authorization: &str, body: String) -> u16 {
        let request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(body);
        receiver
            .block_on(request.send())
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The samples of the hub's `/metrics`.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        crate::serve_support::scrape(&self.admin)
    }

    /// The frontier of the newest checkpoint written, if any.
    pub fn newest_checkpoint(&self) -> Option<u64> {
        crate::serve_support::newest_checkpoint(&self.dir.join("checkpoints"))
    }

    /// The dead-lettered deliveries so far.
    pub fn failed(&self) -> Vec<serde_json::Value> {
        let path = self.dir.join("failed.jsonl");
        if path.exists() { read_jsonl(&path) } else { Vec::new() }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `/publish` body for `data` on `topic`.
pub fn publish_body(topic: &str, data: &serde_json::Value) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(data.to_string());
    serde_json::json!({"Topic": topic, "Payload": payload}).to_string()
}

/// Writes the subscriber table the hub reloads (atomically: written aside, then renamed).
pub fn write_subscribers(dir: &Path, subscribers: &[serde_json::Value]) {
    let text: String = subscribers.iter().map(|s| format!("{s}\n")).collect();
    let aside = dir.join("subscribers.jsonl.tmp");
    std::fs::write(&aside, text).expect("write subscribers");
    std::fs::rename(&aside, dir.join("subscribers.jsonl")).expect("rename subscribers");
}

/// An HS256 token for `claims`.
pub fn token(secret: &[u8], claims: serde_json::Value) -> String {
    sluice_auth::jwt::sign(secret, &claims)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Milliseconds since the epoch (the unit of sluice's epochs).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A subscriber row.
pub fn subscriber(id: &str, topic: &str, filter: &str, url: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "topic": topic, "filter": filter, "target_url": url})
}
