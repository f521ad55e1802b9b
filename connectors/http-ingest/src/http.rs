//! The endpoint: authentication, bounded body reading, and the append that answers `200`.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sluice_runtime::log_limit::LogLimit;
use sluice_runtime::metrics::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::event::{BadEvent, check_object, event_line, parse_publish};
use crate::log::PartitionLog;
use crate::partition_of;

/// How long open connections may take to finish after shutdown before they are cut.
const DRAIN: Duration = Duration::from_secs(2);
/// The shortest time between two log lines about publishes refused for the budget.
pub(crate) const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);

/// What every request needs.
pub(crate) struct Endpoint {
    pub(crate) name: String,
    pub(crate) secret: Vec<u8>,
    pub(crate) max_body_bytes: usize,
    /// Permits are bytes of request bodies; a request's are released once its line is written
    /// and answered (by the log's writer, so a client that goes away cannot free them early).
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) body_timeout: Duration,
    /// Log lines about publishes refused for the budget, at most one per [`BUSY_LOG_EVERY`].
    pub(crate) refused_busy: Mutex<LogLimit>,
    pub(crate) partitions: Vec<Arc<PartitionLog>>,
    pub(crate) stats: Arc<PublishStats>,
}

/// Upper bounds of [`PublishStats::accept_seconds`], in seconds: an fsync takes from a tenth
/// of a millisecond to tens of them.
const ACCEPT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What the publish endpoint answered, for metrics.
#[derive(Debug)]
pub struct PublishStats {
    /// Publishes answered `200`: durable in the log.
    pub accepted: AtomicU64,
    /// Refused with `400`: the body is not an event.
    pub bad_request: AtomicU64,
    /// Refused with `401`: no valid token.
    pub unauthorized: AtomicU64,
    /// Refused with `408`: the body did not arrive within `body_timeout`.
    pub timed_out: AtomicU64,
    /// Refused with `413`: the body is over `max_body_bytes`.
    pub too_large: AtomicU64,
    /// Refused with `503`: the in-flight budget is full, or the log cannot be written.
    pub unavailable: AtomicU64,
    /// How long each accepted publish took, from its request to its `200` (fsync included).
    pub accept_seconds: Histogram,
}

impl Default for PublishStats {
    fn default() -> Self {
        PublishStats {
            accepted: AtomicU64::new(0),
            bad_request: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            accept_seconds: Histogram::new(ACCEPT_BUCKETS),
        }
    }
}

impl PublishStats {
    /// Answers so far by status code: 200, 400, 401, 408, 413 and 503, in that order.
    pub fn answers(&self) -> [(u16, u64); 6] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (200, load(&self.accepted)),
            (400, load(&self.bad_request)),
            (401, load(&self.unauthorized)),
            (408, load(&self.timed_out)),
            (413, load(&self.too_large)),
            (503, load(&self.unavailable)),
        ]
    }

    /// Counts `response`, and times it from `started` when it accepted the event.
    fn record(&self, started: Instant, response: Response) -> Response {
        let counter = match response.status() {
            StatusCode::OK => {
                self.accept_seconds.observe(started.elapsed());
                &self.accepted
            }
            StatusCode::BAD_REQUEST => &self.bad_request,
            StatusCode::UNAUTHORIZED => &self.unauthorized,
            StatusCode::REQUEST_TIMEOUT => &self.timed_out,
            StatusCode::PAYLOAD_TOO_LARGE => &self.too_large,
            StatusCode::SERVICE_UNAVAILABLE => &self.unavailable,
            _ => return response,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        response
    }
}

/// The routes of the endpoint.
pub(crate) fn router(endpoint: Arc<Endpoint>) -> Router {
    Router::new()
        .route("/publish", post(publish))
        .route("/v1/topics/{topic}/events", post(topic_events))
        .route("/health", get(|| async { "ok" }))
        .with_state(endpoint)
}

/// Serves `router` on `listener` until `shutdown`, then lets connections drain for at most
/// [`DRAIN`].
pub(crate) async fn serve<L>(listener: L, router: Router, shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let signal = |mut shutdown: watch::Receiver<bool>| async move {
        // A dropped sender (the source is gone) also means stop.
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let serving = async {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(signal(shutdown.clone()))
            .await
        {
            tracing::error!(%error, "the publish endpoint failed");
        }
    };
    let drained = async {
        signal(shutdown.clone()).await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        () = serving => {}
        () = drained => tracing::warn!("publish connections still open {DRAIN:?} after shutdown; closing them"),
    }
}

/// `POST /publish`: `{"Topic": …, "Payload": <base64 of the data object>}`.
async fn publish(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let response = publish_event(&endpoint, &headers, body).await;
    endpoint.stats.record(started, response)
}

async fn publish_event(endpoint: &Endpoint, headers: &HeaderMap, body: Body) -> Response {
    if let Err(refused) = authorize(&endpoint.secret, headers) {
        return refused;
    }
    let (body, held) = match endpoint.read_body(headers, body).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    // The line is made and the body dropped before waiting for the disk: the reservation
    // then covers the one copy that waits.
    let event = match parse_publish(&body) {
        Ok(event) => event,
        Err(BadEvent(reason)) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let (index, line) = match endpoint.line(&event.topic, &event.data) {
        Ok(line) => line,
        Err(refused) => return refused,
    };
    drop(event);
    drop(body);
    endpoint.append(index, line, held).await
}

/// `POST /v1/topics/{topic}/events`: the data object itself.
async fn topic_events(
    State(endpoint): State<Arc<Endpoint>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = topic_event(&endpoint, &topic, &headers, body).await;
    endpoint.stats.record(started, response)
}

async fn topic_event(endpoint: &Endpoint, topic: &str, headers: &HeaderMap, body: Body) -> Response {
    if let Err(refused) = authorize(&endpoint.secret, headers) {
        return refused;
    }
    if topic.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the topic is empty");
    }
    let (body, held) = match endpoint.read_body(headers, body).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    if let Err(reason) = check_object(&body) {
        return error(StatusCode::BAD_REQUEST, &format!("the body {reason}"));
    }
    let (index, line) = match endpoint.line(topic, &body) {
        Ok(line) => line,
        Err(refused) => return refused,
    };
    drop(body);
    endpoint.append(index, line, held).await
}

impl Endpoint {
    /// The index of the topic's partition and the event's line, or the answer that refuses it.
    #[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
    fn line(&self, topic: &str, data: &[u8]) -> Result<(usize, Vec<u8>), Response> {
        let index = partition_of(topic, self.partitions.len() as u32) as usize;
        let line = event_line(topic, data).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
        Ok((index, line))
    }

    /// Appends the line to partition `index`; `200` once it is synced to disk. `held` goes
    /// with the line and is released by the writer.
    async fn append(&self, index: usize, line: Vec<u8>, held: OwnedSemaphorePermit) -> Response {
        let Some(log) = self.partitions.get(index) else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "no partition for the topic");
        };
        match log.append(line, held).await {
            Ok(offset) => json(
                StatusCode::OK,
                &serde_json::json!({"partition": log.id, "offset": offset}),
            ),
            Err(e) => {
                tracing::warn!(source = %self.name, partition = %log.id, error = %e, "publish not accepted");
                error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
            }
        }
    }
}

/// Checks the `Authorization: Bearer <HS256 JWT>` header (scheme in any case); `401` if not.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
fn authorize(secret: &[u8], headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let reason = match token {
        None => "missing bearer token".to_owned(),
        Some(token) => match sluice_auth::jwt::verify_claims(secret, token) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        },
    };
    Err((StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, "Bearer")], reason).into_response())
}

impl Endpoint {
    /// The whole body and the budget it holds, refused with `413` as soon as it is known to
    /// exceed the limit: from `Content-Length` before reading any of it, or when the bytes
    /// received pass the limit, so an oversized body is never buffered; refused with `503`
    /// when the budget of bodies in progress cannot hold it.
    #[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<(Vec<u8>, OwnedSemaphorePermit), Response> {
        let limit = self.max_body_bytes;
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {limit} bytes"),
            )
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        // The declared length is at most the limit, which the configuration keeps below 4 GiB.
        let mut held = self.reserve(declared.map_or(0, |n| n as usize))?;
        // Capacity for what is declared, up to a point: a declared length is only a promise.
        let mut bytes = Vec::with_capacity(declared.map_or(16 * 1024, |n| n.min(1 << 20) as usize));
        let mut body = pin!(body);
        let read = async {
            while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                let frame = frame.map_err(|e| error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    let total = bytes.len() + data.len();
                    if total > limit {
                        return Err(too_large());
                    }
                    // A body longer than declared (chunked: everything) reserves as it arrives.
                    if total > held.num_permits() {
                        held.merge(self.reserve(total - held.num_permits())?);
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(())) => Ok((bytes, held)),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} ms of the headers",
                    self.body_timeout.as_millis()
                ),
            )),
        }
    }

    /// `bytes` more of the in-flight budget, or `503` with `Retry-After` when it is full.
    #[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Response> {
        // `bytes` is at most `max_body_bytes`, which the configuration keeps within a u32.
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        Arc::clone(&self.budget).try_acquire_many_owned(permits).map_err(|_| {
            let logged = self.refused_busy.lock().unwrap_or_else(PoisonError::into_inner).allow();
            if let Some(held_back) = logged {
                tracing::warn!(
                    source = %self.name,
                    refused = held_back + 1,
                    max_in_flight_bytes = self.max_in_flight_bytes,
                    "publishes refused with 503: the bodies in progress fill max_in_flight_bytes"
                );
            }
            let mut refused = error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "too many publishes in progress (their bodies fill max_in_flight_bytes = {}); retry later",
                    self.max_in_flight_bytes
                ),
            );
            refused
                .headers_mut()
                .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            refused
        })
    }
}

/// A JSON response.
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// `{"error": reason}` with `status`.
fn error(status: StatusCode, reason: &str) -> Response {
    json(status, &serde_json::json!({ "error": reason }))
}
