//! The source's configuration and its defaults.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::IngestError;
use sluice_auth::tls::TlsFiles;

/// The largest request body accepted by default: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// The request body bytes held at once by default (64 MiB); publishes past it get `503`.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// How long a request's body may take to arrive by default; a slower one gets `408`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The number of partitions (logs) by default.
pub const DEFAULT_PARTITIONS: u32 = 1;
/// The size at which a segment is closed and the next one started, by default: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// What an `http-ingest` source needs to run.
#[derive(Clone)]
pub struct IngestConfig {
    /// The source's name, for logs.
    pub name: String,
    /// Where the endpoint listens, `host:port` (`127.0.0.1:8088`; port 0 picks a free one).
    pub listen: String,
    /// The directory holding one log per partition (`p0/`, `p1/`, …); created if missing.
    pub log_dir: PathBuf,
    /// The HS256 secret publishers' tokens are signed with (not empty).
    pub jwt_secret: Vec<u8>,
    /// The largest request body accepted, in bytes; larger ones get `413`.
    pub max_body_bytes: usize,
    /// The request body bytes all publishes in progress may hold together (at least
    /// `max_body_bytes`); a publish that would pass it gets `503` with `Retry-After`.
    pub max_in_flight_bytes: usize,
    /// How long a request's body may take to arrive once its headers have; a slower one gets
    /// `408`, so a stalled publisher cannot keep its share of the budget.
    pub body_timeout: Duration,
    /// Logs events are spread over by topic (at least 1).
    pub partitions: u32,
    /// A segment at or past this size is closed before the next write, in bytes (at least 1).
    pub segment_bytes: u64,
    /// Serve HTTPS with this certificate and key; plain HTTP without.
    pub tls: Option<TlsFiles>,
}

impl IngestConfig {
    /// A configuration with the default body limits, partition count and segment size.
    pub fn new(
        name: impl Into<String>,
        listen: impl Into<String>,
        log_dir: impl Into<PathBuf>,
        jwt_secret: impl Into<Vec<u8>>,
    ) -> Self {
        IngestConfig {
            name: name.into(),
            listen: listen.into(),
            log_dir: log_dir.into(),
            jwt_secret: jwt_secret.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            partitions: DEFAULT_PARTITIONS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            tls: None,
        }
    }

    /// Refuses values the source cannot run with.
    pub(crate) fn check(&self) -> Result<(), IngestError> {
        let problem = if self.jwt_secret.is_empty() {
            // HMAC accepts an empty key, so anyone could sign a valid token.
            "jwt_secret must not be empty"
        } else if self.partitions == 0 {
            "partitions must be at least 1"
        } else if self.segment_bytes == 0 {
            "segment_bytes must be at least 1"
        } else if self.max_body_bytes == 0 {
            "max_body_bytes must be at least 1"
        } else if u32::try_from(self.max_body_bytes).is_err() {
            // Permits are taken a request at a time, at most u32::MAX of them.
            "max_body_bytes must be at most 4 GiB"
        } else if self.max_in_flight_bytes < self.max_body_bytes {
            // A body of the largest size allowed could never be taken.
            "max_in_flight_bytes must be at least max_body_bytes"
        } else if self.max_in_flight_bytes > tokio::sync::Semaphore::MAX_PERMITS {
            "max_in_flight_bytes is too large"
        } else if self.body_timeout.is_zero() {
            "body_timeout must be longer than zero"
        } else {
            return Ok(());
        };
        Err(IngestError::Config(format!("source `{}`: {problem}", self.name)))
    }
}

// By hand, so the secret never reaches a log line.
impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("log_dir", &self.log_dir)
            .field("jwt_secret", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("body_timeout", &self.body_timeout)
            .field("partitions", &self.partitions)
            .field("segment_bytes", &self.segment_bytes)
            .field("tls", &self.tls)
            .finish()
    }
}
