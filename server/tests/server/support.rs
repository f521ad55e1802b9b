//! Views fed by hand, a started server, and small gRPC/HTTP client helpers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_runtime::sink::Sink;
use sluice_runtime::{Diff, Row, Time, Value};
use sluice_served::{ServedSink, ServedView, ViewConfig};
use sluice_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// The continuation-token key of every test server.
pub const TOKEN_KEY: &[u8] = b"a test token key of 32 bytes...!";
/// The HS256 secret of the feed's bearer tokens.
pub const JWT_SECRET: &[u8] = b"feed secret";

/// Milliseconds since the epoch; test times sit above it, because a view started without a
/// checkpoint puts its horizon at the current time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock after 1970")
}

/// A view and the sink that feeds it.
pub struct Fed {
    pub view: ServedView,
    sink: ServedSink,
}

impl Fed {
    pub fn new(name: &str, partition_by: Option<&str>, version_field: Option<&str>, retention_ms: Option<u64>) -> Fed {
        let view = ServedView::new(ViewConfig {
            name: name.to_owned(),
            partition_by: partition_by.map(str::to_owned),
            version_field: version_field.map(str::to_owned),
            retention_ms,
        });
        let sink = view.sink(None).expect("sink");
        Fed { view, sink }
    }

    /// Applies one final time's updates (sorted, as the engine gives them) and advances past it.
    pub fn step(&mut self, time: Time, mut updates: Vec<(Row, Diff)>) {
        updates.sort();
        self.sink.write(time, &updates).expect("write");
        self.sink.commit(Some(time + 1)).expect("commit");
    }

    /// Advances the frontier without changes.
    pub fn advance(&mut self, frontier: Time) {
        self.sink.commit(Some(frontier)).expect("commit");
    }
}

/// A config with both listeners on free ports and nothing served.
pub fn config() -> ServerConfig {
    ServerConfig {
        grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        token_key: TOKEN_KEY.to_vec(),
        views: BTreeMap::new(),
        subscribe_token: None,
        account_stream: None,
        messages: None,
        client_buffer: 64,
        stall_timeout: Duration::from_secs(10),
        tls: None,
    }
}

/// A channel to the server's gRPC address.
pub async fn channel(addr: Option<SocketAddr>) -> Channel {
    endpoint(addr).connect().await.expect("connect")
}

/// The endpoint of the server's gRPC address, to tune before connecting.
pub fn endpoint(addr: Option<SocketAddr>) -> Endpoint {
    let addr = addr.expect("gRPC address");
    Endpoint::from_shared(format!("http://{addr}")).expect("endpoint")
}

/// A request with metadata.
pub fn request<T>(message: T, metadata: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in metadata {
        let value: MetadataValue<_> = value.parse().expect("metadata value");
        request.metadata_mut().insert(*key, value);
    }
    request
}

/// The next message of a stream, waiting at most five seconds.
pub async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a message within 5s")
        .expect("no error")
        .expect("stream open")
}

/// Asserts that a stream sends nothing for a while.
pub async fn quiet<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("expected silence, got {got:?}");
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` over HTTP/1.1, with an optional bearer token.
pub async fn get(addr: Option<SocketAddr>, path: &str, bearer: Option<&str>) -> HttpResponse {
    let addr = addr.expect("HTTP address");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut raw))
        .await
        .expect("response within 5s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    HttpResponse {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// A map value from `(field, value)` pairs.
pub fn map(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::map(fields)
}

/// Stops a server off the test's runtime: the clients' connections need it to answer the
/// server's goodbye while `stop` waits for them to close.
pub async fn stop(server: sluice_server::ServerHandle) {
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || server.stop()).await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
}
