//! Helpers shared by the integration tests: a source on a free port, tokens, requests, and
//! reading a partition to its end.

#![allow(dead_code)] // each test file uses its own share

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sluice_connector_http_ingest::{HttpIngestSource, IngestConfig};
use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source};

/// The secret the test sources verify tokens with.
pub const SECRET: &[u8] = b"test-publish-secret-0123456789";

/// A configuration on a free port of 127.0.0.1 with its log in `dir`.
pub fn config(dir: &Path) -> IngestConfig {
    IngestConfig::new("events", "127.0.0.1:0", dir, SECRET)
}

/// A source started with `config`.
pub fn start(config: IngestConfig) -> HttpIngestSource {
    HttpIngestSource::start(config).expect("start the source")
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A valid token for [`SECRET`].
pub fn token() -> String {
    sluice_auth::jwt::sign(SECRET, &json!({"sub": "tests", "exp": now() + 3600}))
}

/// A `/publish` body for `topic` and `data`.
pub fn publish_body(topic: &str, data: &Value) -> String {
    json!({"Topic": topic, "Payload": STANDARD.encode(data.to_string())}).to_string()
}

/// A response's status, `WWW-Authenticate` header and body text.
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub text: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).expect("a JSON body")
    }
}

/// POSTs `body` to `path` with `authorization` (if any).
pub async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    body: String,
) -> Answer {
    let mut request = client.post(format!("http://{addr}{path}")).body(body);
    if let Some(auth) = authorization {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body");
    Answer {
        status,
        www_authenticate,
        text,
    }
}

/// Publishes `data` to `topic` with a valid token and returns the answer.
pub async fn publish(client: &reqwest::Client, addr: SocketAddr, topic: &str, data: &Value) -> Answer {
    let auth = format!("Bearer {}", token());
    post(client, addr, "/publish", Some(&auth), publish_body(topic, data)).await
}

/// The partition `id`.
pub fn partition(id: &str) -> PartitionInfo {
    PartitionInfo {
        id: id.into(),
        parents: Vec::new(),
    }
}

/// Polls `reader` until it is idle; every record, and the state of each poll.
pub fn drain(reader: &mut dyn PartitionReader, max: usize) -> Vec<RawRecord> {
    let mut out = Vec::new();
    loop {
        let before = out.len();
        match reader.poll(&mut out, max).expect("poll") {
            ReadState::More => assert!(out.len() > before, "More without records"),
            ReadState::Idle => {
                assert_eq!(out.len(), before, "Idle with records");
                return out;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Every record of partition `id` from `from`.
pub fn read(source: &HttpIngestSource, id: &str, from: &Position) -> Vec<RawRecord> {
    let mut reader = source.open(&partition(id), from).expect("open");
    drain(reader.as_mut(), 7)
}

/// A record's payload as JSON.
pub fn payload(record: &RawRecord) -> Value {
    serde_json::from_slice(record.payload.as_deref().expect("a payload")).expect("a JSON line")
}

/// A record's payload as text.
pub fn text(record: &RawRecord) -> String {
    String::from_utf8(record.payload.clone().expect("a payload")).expect("UTF-8")
}
