//! Test receivers (axum on 127.0.0.1, port 0), an in-memory dead-letter sink and delivery
//! rows.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::{Diff, Row, Time, Value};
use sluice_sink_webhook::{WebhookConfig, WebhookSink};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// What a receiver answers.
pub enum Reply {
    Status(u16),
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// Answers after a while.
    Delayed(Duration, u16),
    /// Never answers.
    Hang,
}

/// Decides the answer to the `n`th request (from 0).
pub type Script = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

struct Inner {
    seen: Mutex<Vec<Seen>>,
    script: Script,
}

/// An HTTP receiver on 127.0.0.1, stopped when dropped.
pub struct Receiver {
    runtime: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    pub fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let inner = Arc::new(Inner {
            seen: Mutex::new(Vec::new()),
            script: Arc::new(script),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new().fallback(handle).with_state(Arc::clone(&inner));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            runtime: Some(runtime),
            addr,
            inner,
        }
    }

    /// Always answers `status`.
    pub fn status(status: u16) -> Receiver {
        Receiver::start(move |_, _| Reply::Status(status))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().expect("seen").clone()
    }

    pub fn count(&self) -> usize {
        self.inner.seen.lock().expect("seen").len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        at: Instant::now(),
        method: method.to_string(),
        uri: uri.to_string(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let reply = {
        let mut all = inner.seen.lock().expect("seen");
        let n = all.len();
        all.push(seen.clone());
        (inner.script)(n, &seen)
    };
    let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::WithHeaders(code, headers) => {
            let mut response = status(code).into_response();
            for (name, value) in headers {
                if let Ok(value) = value.parse() {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Reply::Delayed(wait, code) => {
            tokio::time::sleep(wait).await;
            status(code).into_response()
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// A port with nothing listening (bound, then closed).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// What the dead-letter sink got.
#[derive(Default)]
pub struct Got {
    pub rows: Vec<(Time, Row)>,
    pub commits: Vec<Option<Time>>,
    pub durable: Option<Option<Time>>,
    pub checkpoints: usize,
}

/// An in-memory dead-letter sink; clones share what it got.
#[derive(Clone, Default)]
pub struct Letters(pub Arc<Mutex<Got>>);

impl Letters {
    pub fn rows(&self) -> Vec<Row> {
        self.0
            .lock()
            .expect("letters")
            .rows
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn boxed(&self) -> Box<dyn Sink> {
        Box::new(self.clone())
    }
}

impl Sink for Letters {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        let mut got = self.0.lock().expect("letters");
        if let Some((last, _)) = got.rows.last() {
            assert!(time >= *last, "inner times go back: {time} after {last}");
        }
        for (row, diff) in updates {
            assert_eq!(*diff, 1, "dead letters are insertions");
            got.rows.push((time, row.clone()));
        }
        Ok(())
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        let mut got = self.0.lock().expect("letters");
        got.commits.push(frontier);
        got.durable = Some(frontier);
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        self.0.lock().expect("letters").durable.unwrap_or(Some(0))
    }

    fn checkpoint(&mut self, _frontier: Time) -> Result<Option<Vec<u8>>, SinkError> {
        let mut got = self.0.lock().expect("letters");
        got.checkpoints += 1;
        Ok(Some(format!("inner:{}", got.rows.len()).into_bytes()))
    }
}

/// A delivery row as the fanout dataflow builds it: POST, JSON body, `Content-Type` and
/// `Idempotency-Key` headers.
pub fn delivery(id: &str, url: &str) -> Row {
    let headers = Value::map([
        ("Content-Type", Value::from("application/json")),
        ("Idempotency-Key", Value::from(id)),
    ]);
    let val = Value::map([
        ("delivery_id", Value::from(id)),
        ("subscriber", Value::from("sub-1")),
        ("topic", Value::from("orders")),
        ("method", Value::from("POST")),
        ("url", Value::from(url)),
        ("headers", headers),
        ("body", Value::from(r#"{"n":1}"#)),
    ]);
    Row::derived(Value::map([("delivery_id", Value::from(id))]), val)
}

/// `row` with `field` set to `value`.
pub fn with(row: Row, field: &str, value: Value) -> Row {
    let mut map = row.val.as_map().cloned().unwrap_or_default();
    map.insert(Arc::from(field), value);
    Row {
        val: Value::Map(Arc::new(map)),
        ..row
    }
}

/// A configuration for tests: private targets allowed, short timeout and backoff.
pub fn config() -> WebhookConfig {
    WebhookConfig {
        name: "test".into(),
        timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(5),
        allow_private_targets: true,
        ..WebhookConfig::default()
    }
}

/// Opens a sink with `config`, writing its dead letters to a fresh [`Letters`].
pub fn open(config: WebhookConfig) -> (WebhookSink, Letters, Arc<AtomicBool>) {
    let letters = Letters::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sink = sluice_sink_webhook::open(config, letters.boxed(), None, Arc::clone(&stop)).expect("open");
    (sink, letters, stop)
}

/// Waits up to `limit` for `condition`.
pub fn wait_for(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// A field of a dead letter.
pub fn field<'a>(row: &'a Row, name: &str) -> &'a Value {
    row.val.get(name).unwrap_or(&Value::Null)
}

/// A dead letter's integer field.
pub fn int(row: &Row, name: &str) -> Option<i64> {
    field(row, name).as_i64()
}

/// A dead letter's text field.
pub fn text(row: &Row, name: &str) -> String {
    field(row, name).as_str().unwrap_or_default().to_owned()
}
