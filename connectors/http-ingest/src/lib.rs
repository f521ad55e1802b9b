//! The `http-ingest` source: an authenticated HTTP publish endpoint that appends events to a
//! local append-only log before it answers, and readers of that log.
//!
//! ```text
//!  POST /publish ─────────────┐
//!                             ├─▶ token ─▶ body (≤ limit) ─▶ line ─▶ partition fnv1a(topic) % n
//!  POST /v1/topics/{t}/events ┘                                              │
//!                                        that partition's group-commit writer: write the
//!                                        batch, fdatasync once, then answer each request
//!                                                                            │
//!  ◀── 200 {"partition": "p0", "offset": line} ──────────────────────────────┤
//!                                       log_dir/p0/*.log ◀── LogReader (Position::Line) ──▶ worker
//! ```
//!
//! **Endpoints.** `POST /publish` takes `{"Topic": …, "Payload": <base64 of the data>}` (keys
//! in any case; two keys equal but for case are refused; standard or URL-safe base64, padded
//! or not); `POST /v1/topics/{topic}/events` takes the data object itself. Both need
//! `Authorization: Bearer <JWT>` (scheme in any case), an HS256 token signed with the
//! configured secret, checked by [`sluice_auth::jwt::verify_claims`] (HS256 only, `exp` and
//! `nbf` enforced, no `sub` needed); otherwise `401` with `WWW-Authenticate: Bearer`. A body
//! that is not JSON, lacks a topic, or whose data is not a JSON object gets `400` with
//! `{"error": reason}`; a log that cannot be written, or a full in-flight budget, `503`. `GET /health` answers `ok`,
//! without authentication.
//!
//! **What `200` means.** `{"partition": "p0", "offset": n}` is sent only after the event's
//! line is written to its partition's log and `fdatasync` on the segment has returned: an
//! acknowledged event survives a crash of the process or the machine right after. `n` is the
//! event's 1-based line number in its partition, the same number its record carries when
//! read ([`RawRecord::offset`](sluice_runtime::source::RawRecord)). An event that got no
//! `200` (a timeout, `503`) may or may not be in the log: publishers retry, and delivery
//! from the log on is at least once.
//!
//! **Body limit.** A body declared (`Content-Length`) larger than `max_body_bytes` is refused
//! with `413` before any of it is read; a chunked one as soon as the bytes received pass the
//! limit. Nothing larger than the limit is ever buffered.
//!
//! **Memory bound.** The bodies of all publishes in progress (read, queued for the group
//! commit, or waiting for its fsync) hold at most `max_in_flight_bytes` together: a request
//! reserves its declared length before reading, a chunked one reserves as its bytes arrive,
//! and the reservation travels with the event's line to the log's writer, which returns it
//! once the line is written: a publisher that hangs up while its line waits for the disk
//! does not free memory still in use. The body is dropped once its line is made, so one copy
//! waits. A publish that would pass the budget gets
//! `503` with `Retry-After: 1` at once, before more of it is read: under a flood of
//! publishers (or a disk slower than they are) memory stays bounded and publishers back off,
//! instead of the process growing until it is killed. Refusals are logged at most every
//! 10 seconds, with their count. A body must arrive within `body_timeout` (30 s) of its
//! headers, else `408`: a publisher that stalls mid-body gives its reservation back.
//!
//! **HTTPS.** With [`IngestConfig::tls`] the endpoint serves HTTPS only: rustls with the
//! aws-lc-rs provider (TLS 1.2 and 1.3), ALPN offering HTTP/2 and HTTP/1.1, no client
//! certificates (publishers authenticate with their token). The certificate and key are
//! loaded before the port is bound, so a bad file is a start error, and reloaded when the
//! files change ([`sluice_auth::tls`]). Handshakes run on tasks of their own, so a client
//! that never finishes one delays neither accepting nor other clients.
//!
//! **Line format.** One event per line, `{"topic":T,"data":D}` and `\n`: the same shape the
//! fanout dataflow reads from Kafka. `D` is the data object as published (key order, numbers
//! and escapes kept) with the whitespace between its tokens removed, so it fits on one line.
//!
//! **File layout.** One log per partition under `log_dir`:
//!
//! ```text
//!  log_dir/lock                          held (flock) by the running source: one writer per log
//!  log_dir/p0/00000000000000000000.log   a segment, named by its first byte's global offset
//!  log_dir/p0/00000000000000000000.base  lines before that segment (decimal), its sidecar
//!  log_dir/p0/00000000000067108990.log   the next segment: offsets continue across segments
//!  log_dir/p0/00000000000067108990.base
//!  log_dir/p0/committed                  {"byte": …, "line": …}: the committed position
//! ```
//!
//! Segment names are Kafka's: twenty digits of the global byte offset of their first byte.
//! The `.base` sidecar holds the number of lines before the segment, written and synced
//! (with its directory entry) before the segment is created and deleted after it, so the
//! oldest segment left always has one and line numbers stay right after old segments are
//! deleted. A segment at or past `segment_bytes` is closed before the next batch is written,
//! so segments end on line boundaries and exceed the size by at most one batch.
//!
//! **Group commit.** Each partition has a writer thread. Requests queue up (the line and a
//! reply channel); the writer takes everything queued (up to 4 MiB), writes it with one
//! `write`, calls `fdatasync` once, publishes the new durable end, then answers every request
//! of the batch with its line number. One fsync costs about as much for one event as for a
//! thousand, so under load events per second grow with concurrency instead of being capped
//! at one fsync each. A failed write is cut off again (the batch gets `503`), so a full disk
//! that gets room back needs no restart.
//!
//! **Recovery.** At start, leftovers of interrupted operations are removed (a temporary
//! `committed`, a sidecar without its segment), segments are checked to follow each other,
//! and the newest segment is cut after its last complete line (a tail without `\n`, or a
//! line holding a NUL byte, which JSON never does, is a batch whose fsync never returned,
//! so it was never acknowledged). Its lines are counted from its sidecar on; older segments
//! are not read. Whole lines whose fsync never returned (a crash, not a power loss, leaves
//! them in the page cache) are synced before they are read, so nothing read and delivered
//! can be taken back later, and a new partition's directory entry is synced when created.
//!
//! **Reading.** A partition's native position is [`Position::Line`]: the global byte offset
//! of the next unread line and the number of lines before it. Readers never read past the
//! durable end, so they never see a line that a crash could still take back; they cross
//! segment boundaries by opening the segment named by the offset where the last one ended.
//! [`Position::Start`] resumes from the committed position if there is one, else from the
//! oldest segment. A position inside a deleted segment is a configuration error.
//!
//! **Commit and deletion.** [`PartitionReader::commit`] stores the position atomically
//! (temporary file, fsync, rename, directory fsync) on a thread of its own, so the worker
//! does not wait (except for the last commit of a run), then deletes the segments that end
//! at or before it, except the newest of them. The engine commits a position only once
//! every sink's output before it is durable and, with checkpoints, a checkpoint holds it;
//! but a restart may fall back to the checkpoint before the newest (a torn newest one), whose
//! position lies before the committed one: the one segment of margin keeps it readable in
//! the usual case, where a checkpoint interval is short next to a segment. The active
//! segment is never deleted: it has no successor, so it never "ends" before a position.
//!
//! **Threads.** The endpoint runs on a tokio runtime of its own (two worker threads); each
//! partition has a writer thread and a committer thread. Dropping the source stops the
//! endpoint first (requests in flight still get their answer), then the writers after what
//! is queued, then the committers after what is pending, then releases the directory lock.
//!
//! **Partitions.** Events go to partition `fnv1a(topic) % partitions` ([`partition_of`]), a
//! hash that does not change between builds or runs, so one topic's events are in one log,
//! in publish order, and are read in that order. Changing `partitions` moves topics: events
//! published before and after the change may then be read out of order.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, Source, SourceError};
use tokio::sync::watch;

mod commit;
mod config;
mod event;
mod http;
mod log;
mod reader;

pub use config::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_PARTITIONS,
    DEFAULT_SEGMENT_BYTES, IngestConfig,
};

use crate::http::Endpoint;
pub use crate::http::PublishStats;
use crate::log::PartitionLog;
use crate::reader::LogReader;
use sluice_auth::tls::Listening;
pub use sluice_auth::tls::{TlsError, TlsFiles};

/// Why an `http-ingest` source could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A configuration value cannot work.
    #[error("{0}")]
    Config(String),
    /// The listen address could not be bound (in use, no permission, not an address).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The log directory (or a file in it) could not be created, read or written.
    #[error("log directory {}: {source}", path.display())]
    LogDir {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Another process (or source) is using the log directory.
    #[error("log directory {} is in use by another process", path.display())]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// The log's files are inconsistent in a way recovery cannot repair.
    #[error("log file {} is damaged: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS certificate or key cannot be read or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A thread or the runtime could not be started.
    #[error("cannot start the http-ingest source: {0}")]
    Runtime(String),
}

/// The partition (0-based) a topic's events go to among `partitions`: FNV-1a 64 of the
/// topic's bytes, modulo the count; stable across builds and runs.
pub fn partition_of(topic: &str, partitions: u32) -> u32 {
    (sluice_runtime::source::stable_hash(topic) % u64::from(partitions.max(1))) as u32
}

/// A running publish endpoint and its log, read as a source; dropping it stops both.
pub struct HttpIngestSource {
    name: String,
    addr: SocketAddr,
    partitions: Vec<Arc<PartitionLog>>,
    /// Writer and committer threads of every partition.
    threads: Vec<JoinHandle<()>>,
    shutdown: Option<watch::Sender<bool>>,
    server: Option<JoinHandle<()>>,
    stats: Arc<PublishStats>,
    /// Held (locked) while the source runs; released when dropped, after the threads stop.
    _lock: File,
}

impl HttpIngestSource {
    /// Recovers the logs under `config.log_dir`, binds `config.listen` and serves the
    /// endpoint on a runtime of its own (two worker threads).
    pub fn start(config: IngestConfig) -> Result<HttpIngestSource, IngestError> {
        config.check()?;
        let dir_error = |source| IngestError::LogDir {
            path: config.log_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.log_dir).map_err(dir_error)?;
        let lock = File::create(config.log_dir.join("lock")).map_err(dir_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(IngestError::Locked {
                    path: config.log_dir.clone(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(dir_error(e)),
        }
        let bind_error = |source| IngestError::Bind {
            addr: config.listen.clone(),
            source,
        };
        // Before binding: a bad certificate is a configuration error, found before anything runs.
        let tls = config
            .tls
            .as_ref()
            .map(|files| sluice_auth::tls::acceptor(files, &config.name))
            .transpose()?;
        let listener = std::net::TcpListener::bind(&config.listen).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        warn_about_other_partitions(&config);

        let mut source = HttpIngestSource {
            name: config.name.clone(),
            addr,
            partitions: Vec::new(),
            threads: Vec::new(),
            shutdown: None,
            server: None,
            stats: Arc::default(),
            _lock: lock,
        };
        // Opened one by one into `source`, so a failure part-way stops what already runs.
        for p in 0..config.partitions {
            let id = format!("p{p}");
            let (log, threads) = PartitionLog::open(config.log_dir.join(&id), id, config.segment_bytes)?;
            source.partitions.push(log);
            source.threads.extend(threads);
        }
        let endpoint = Arc::new(Endpoint {
            name: config.name.clone(),
            secret: config.jwt_secret,
            max_body_bytes: config.max_body_bytes,
            budget: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight_bytes)),
            max_in_flight_bytes: config.max_in_flight_bytes,
            body_timeout: config.body_timeout,
            refused_busy: std::sync::Mutex::new(sluice_runtime::log_limit::LogLimit::new(http::BUSY_LOG_EVERY)),
            partitions: source.partitions.clone(),
            stats: Arc::clone(&source.stats),
        });
        let (shutdown, signal) = watch::channel(false);
        source.shutdown = Some(shutdown);
        source.server = Some(spawn_server(
            listener,
            tls,
            config.name.clone(),
            http::router(endpoint),
            signal,
        )?);
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        tracing::info!(source = %config.name, %addr, scheme, log_dir = %config.log_dir.display(), "publish endpoint listening");
        Ok(source)
    }

    /// The address the endpoint is bound to (the port chosen when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the endpoint has answered so far, for metrics.
    pub fn stats(&self) -> Arc<PublishStats> {
        Arc::clone(&self.stats)
    }

    /// The durable end of `partition`'s log (`p0`…): the position after its last synced line.
    pub fn durable_end(&self, partition: &str) -> Option<Position> {
        let log = self.partitions.iter().find(|p| p.id == partition)?;
        let (byte, line) = log.durable.position();
        Some(Position::Line { byte, line })
    }

    fn log(&self, partition: &PartitionInfo) -> Result<&Arc<PartitionLog>, SourceError> {
        self.partitions
            .iter()
            .find(|p| p.id == partition.id)
            .ok_or_else(|| SourceError::Config(format!("source `{}` has no partition {}", self.name, partition.id)))
    }
}

impl Source for HttpIngestSource {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        Ok(self
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                id: p.id.clone(),
                parents: Vec::new(),
            })
            .collect())
    }

    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        Ok(Box::new(LogReader::open(Arc::clone(self.log(partition)?), from)?))
    }

    fn bounded(&self) -> bool {
        false
    }

    fn offset_label(&self) -> &'static str {
        "line"
    }
}

impl Drop for HttpIngestSource {
    fn drop(&mut self) {
        // The server first: requests in flight get their answers from the writers, which
        // then stop after what is queued, and the committers after what is pending.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        if let Some(server) = self.server.take()
            && server.join().is_err()
        {
            tracing::error!(source = %self.name, "the publish endpoint's thread panicked");
        }
        for log in &self.partitions {
            log.stop();
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(source = %self.name, "a log thread panicked");
            }
        }
    }
}

/// Starts the server thread and its runtime, and waits until the runtime holds the listener.
fn spawn_server(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    name: String,
    router: axum::Router,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, IngestError> {
    // The runtime is built, used and dropped on its own thread: `start` and `drop` may be
    // called from async code, where blocking on or dropping a runtime panics.
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ingest-http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ingest-http")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let adopted = runtime.block_on(async { Listening::adopt(listener, tls.as_ref(), &name) });
            match adopted {
                Ok(listening) => {
                    let _ = ready_tx.send(Ok(()));
                    match listening {
                        Listening::Plain(listener) => runtime.block_on(http::serve(listener, router, shutdown)),
                        Listening::Tls(listener) => runtime.block_on(http::serve(listener, router, shutdown)),
                    }
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                }
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| IngestError::Runtime(e.to_string()))?;
    let started = ready
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the server thread died while starting")));
    match started {
        Ok(()) => Ok(thread),
        Err(error) => {
            let _ = thread.join();
            Err(IngestError::Runtime(error.to_string()))
        }
    }
}

/// Partitions beyond the configured count keep their events but are no longer read: say so.
fn warn_about_other_partitions(config: &IngestConfig) {
    let Ok(entries) = std::fs::read_dir(&config.log_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix('p'))
            .and_then(|n| n.parse::<u32>().ok());
        if index.is_some_and(|i| i >= config.partitions) {
            tracing::warn!(
                source = %config.name,
                dir = %entry.path().display(),
                partitions = config.partitions,
                "a log of a partition beyond the configured count is not read"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_fnv1a_and_stable() {
        // FNV-1a 64 test vectors.
        assert_eq!(
            partition_of("", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            partition_of("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(partition_of("orders", 1), 0);
        assert_eq!(partition_of("orders", 0), 0);
        let spread: std::collections::BTreeSet<u32> = (0..100).map(|i| partition_of(&format!("t{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
    }
}
