//! The `webhook` sink: sends the fanout dataflow's deliveries as HTTP requests, with
//! retries, Standard Webhooks signatures, an SSRF guard, per-target concurrency limits, dead
//! letters and pending deliveries kept in checkpoints.
//!
//! ```text
//!  delivery rows ──write──▶ pending set ──▶ dispatcher (own tokio runtime, 2 threads)
//!  (worker 0)               │  ▲              per-target queues ─▶ reqwest ─▶ receivers
//!                           │  └─ retries ◀── backoff timers ◀── 5xx 408 429 timeouts
//!                           ▼                                    connection errors
//!            checkpoint: unresolved deliveries        permanent failure / out of attempts
//!                                                               │
//!            inner dead-letter sink ◀── write/commit/checkpoint ◀┘ (queued for worker 0)
//! ```
//!
//! **Rows.** Each insertion (once per unit of its diff) of a row of the fanout's
//! `deliveries` output is one delivery: `delivery_id`, `method`, `url`, `headers`, `body`,
//! `subscriber`, `topic` and optionally `secret` (see `sluice_fanout::deliver`). Retractions
//! are ignored: a request cannot be unsent. A row that is not a delivery (no `url` or
//! `delivery_id`, a URL that is not http(s), a header that cannot be sent) goes straight to
//! the dead letters with the reason. The sink sends as rows come, so [`Sink::ordered`] is
//! `false`.
//!
//! **Requests.** The method, URL, headers and body as given; `Idempotency-Key` is the
//! delivery id (added if a row lacks it), the same at every attempt and after a restart, so
//! receivers can deduplicate. With a `secret`, the Standard Webhooks headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` are added, signed again at each attempt because receivers
//! reject old timestamps. The HMAC key is the base64-decoded text after a `whsec_` prefix
//! (the Standard Webhooks form), otherwise the secret's UTF-8 bytes.
//!
//! **Outcomes.** 2xx: done. 5xx, 408, 429, timeouts and connection errors: retried after
//! `d = min(max_backoff, initial_backoff · 2^(attempts-1))`, jittered uniformly in
//! `[d/2, d]` — at least half, so retries still back off; spread over the other half, so the
//! deliveries a receiver failed together do not all return in the same instant when it
//! recovers. A `Retry-After` (seconds or an HTTP date) on a retryable answer replaces the
//! delay, clamped to `[0, max_backoff]`. Other 4xx fail for good. After `max_attempts`
//! attempts, or when the next attempt would fall after the first attempt plus `max_age`, or
//! on a permanent failure, the delivery is dead-lettered.
//!
//! **Redirects are not followed**, and fail for good ("redirect to `<Location>` not
//! followed"): following one would send the body and signature to a URL the subscriber did
//! not register — possibly internal, past the SSRF guard's look at the registered URL — and
//! a 301/302 turns a POST into a GET; a moved endpoint should be fixed in the subscription.
//!
//! **What an event cannot change.** Its headers may not frame the request or steer the
//! connection: `Host`, `Content-Length`, `Transfer-Encoding`, `Connection`, `Keep-Alive`,
//! `Upgrade`, `TE`, `Trailer`, `Expect` and `Proxy-*` are dropped (a short `Content-Length`
//! would truncate the body, a `Host` reach another virtual host). A URL with a `.` or `..`
//! path segment (also spelt `%2e`), which a `:placeholder` filled with `..` makes, is refused
//! for good: the URL parser would resolve it and send the request outside the path the
//! subscriber registered.
//!
//! **SSRF guard.** Unless `allow_private_targets`, targets that are or resolve to loopback,
//! private, link-local (cloud metadata included), unspecified, broadcast, multicast, carrier
//! NAT or reserved addresses, IPv4-mapped forms included, are refused for good — checked on
//! the addresses the connection actually uses (see [`guard`]).
//!
//! **Limits.** At most `per_target_concurrency` requests to one target (a subscriber's
//! endpoint: subscribers sharing a host do not share a limit; scheme, host and port for a
//! row without a subscriber) and `max_in_flight` in all; each target has its own queue, so a slow or hanging
//! target never delays others. `write` blocks while `max_queued` deliveries wait for their
//! first attempt: backpressure on the dataflow. One target may have at most
//! `max_pending_per_target` unresolved deliveries (queued, in flight, or waiting to retry).
//! When it has that many and no success for a request timeout (it is down, hangs, or fails
//! every attempt), one more is dead-lettered at once, unattempted, with the reason; a full
//! target that does succeed (a burst) holds `write` back until it has room instead. Without
//! that bound a target that hangs or is down for days would fill `max_queued` by itself,
//! and `write` would then admit everyone's deliveries at its pace; and its retries would
//! fill memory and every checkpoint.
//!
//! **Dead letters go to an inner sink**, opened by the caller (a file, Kafka), not back into
//! the dataflow: a delivery fails at wall-clock time, possibly days after its epoch became
//! final; feeding it back as an update would have to hold every downstream frontier open
//! until then. Dead letters are rows keyed by `delivery_id` with `subscriber`, `topic`,
//! `method`, `url`, `attempts`, `last_status`, `last_error`, `first_attempt_ms` and
//! `last_attempt_ms` — never the secret, the headers or the body. They are decided on the
//! sink's runtime but written only from the sink's own methods, on the worker thread, at
//! non-decreasing wall-clock times.
//!
//! **Durability.** A delivery is resolved when it succeeded, or when its dead letter is
//! durable in the inner sink. [`Sink::durable`] is the later of the last checkpoint's
//! frontier and the resolved frontier: the smallest time with an unresolved delivery, else
//! the last commit's frontier. So without checkpoints a Kafka source commits only past
//! deliveries that are finished, and a crash sends the others again. With checkpoints, every
//! unresolved delivery is in the checkpoint (with its attempts so far) and a restart sends it
//! again at once with the same delivery id: at least once, deduplicable by
//! `Idempotency-Key`. Checkpoints hold the pending deliveries whole, secrets included (a
//! restart must sign them), so they need the protection the secrets have. When the input ends, [`Sink::commit`] waits until every delivery is
//! resolved — unless the pipeline is stopping, when it waits only for the requests in
//! flight and leaves the rest to the checkpoint.

mod config;
mod delivery;
mod dispatch;
pub mod guard;
mod retry;
mod sign;
mod state;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sluice_runtime::log_limit::LogLimit;
use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::{Diff, Row, Time};
use tokio::sync::mpsc::UnboundedSender;

pub use config::{
    DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_AGE, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PENDING_PER_TARGET, DEFAULT_MAX_QUEUED, DEFAULT_PER_TARGET_CONCURRENCY, DEFAULT_TIMEOUT, WebhookConfig,
};
pub use sign::{BadSecret, WHSEC_PREFIX, signature, signing_key};
pub use state::WebhookStats;

use crate::delivery::{Delivery, Progress, invalid_dead_letter};
use crate::dispatch::{Command, Dispatcher};
use crate::state::{Dead, SAVED_VERSION, Saved, SavedDelivery, Shared, now_ms};

/// How often a blocked `write` or a waiting `commit` looks at the stop flag.
const WAKE_EVERY: Duration = Duration::from_millis(100);
/// How often the end-of-input wait logs how many deliveries are still pending.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The webhook sink (see the crate docs).
pub struct WebhookSink {
    config: Arc<WebhookConfig>,
    shared: Arc<Shared>,
    commands: UnboundedSender<Command>,
    /// Where dead letters go; used only from this sink's methods, on the worker thread.
    inner: Box<dyn Sink>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The frontier of the last checkpoint (or the one restored from).
    saved: Time,
    /// The last commit's frontier: `None` before the first, `Some(None)` once the input ended.
    last_commit: Option<Option<Time>>,
    /// The largest finite frontier committed.
    high: Time,
    /// The time of the inner sink's next write: wall-clock milliseconds, never going back.
    inner_time: Time,
    /// Dead letters written to the inner sink at a time, not yet durable there, with the
    /// output times of their deliveries.
    unsettled: VecDeque<(Time, Vec<Option<Time>>)>,
    /// Log lines about deliveries dead-lettered for a full target backlog, at most one per
    /// [`LOG_EVERY`].
    overflowed: LogLimit,
}

/// Opens a webhook sink writing its dead letters to `dead_letters` (opened by the caller
/// with [`inner_resume`]'s part of `resume`), restoring the pending deliveries of `resume`
/// and sending them again right away.
pub fn open(
    config: WebhookConfig,
    dead_letters: Box<dyn Sink>,
    resume: Option<&[u8]>,
    stop: Arc<AtomicBool>,
) -> Result<WebhookSink, SinkError> {
    config.validate()?;
    let saved = resume.map(decode).transpose()?;
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("webhook-{}", config.name))
        .enable_all()
        .build()
        .map_err(|e| SinkError::Io(format!("webhook sink {}: cannot start its runtime: {e}", config.name)))?;
    let client = {
        let _context = runtime.enter();
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .no_proxy()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        let builder = if config.allow_private_targets {
            builder
        } else {
            builder.dns_resolver(guard::GuardedResolver)
        };
        builder
            .build()
            .map_err(|e| SinkError::Config(format!("webhook sink {}: HTTP client: {e}", config.name)))?
    };
    let shared = Arc::new(Shared::new(stop));
    let (commands, receiver) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Dispatcher::new(Arc::clone(&shared), Arc::clone(&config), client);
    runtime.spawn(dispatcher.run(receiver));
    let mut sink = WebhookSink {
        config,
        shared,
        commands,
        inner: dead_letters,
        runtime: Some(runtime),
        saved: 0,
        last_commit: None,
        high: 0,
        inner_time: 0,
        unsettled: VecDeque::new(),
        overflowed: LogLimit::new(LOG_EVERY),
    };
    if let Some(saved) = saved {
        sink.restore(saved)?;
    }
    Ok(sink)
}

/// The inner dead-letter sink's part of a webhook sink's checkpoint, to open that sink with
/// before [`open`].
pub fn inner_resume(resume: &[u8]) -> Result<Option<Vec<u8>>, SinkError> {
    Ok(decode(resume)?.inner)
}

fn decode(bytes: &[u8]) -> Result<Saved, SinkError> {
    use bincode::Options as _;
    let bad = |e: bincode::Error| SinkError::Config(format!("webhook sink checkpoint: {e}"));
    // The version first, so a checkpoint of another format says so instead of failing to parse.
    let version: u32 = bincode::options()
        .allow_trailing_bytes()
        .deserialize(bytes)
        .map_err(bad)?;
    if version != SAVED_VERSION {
        return Err(SinkError::Config(format!(
            "webhook sink checkpoint: version {version} (this build reads {SAVED_VERSION})"
        )));
    }
    bincode::options().deserialize(bytes).map_err(bad)
}

impl WebhookSink {
    /// The sink's counters.
    pub fn stats(&self) -> Arc<WebhookStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Deliveries not resolved yet (dead letters not yet written included).
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    fn restore(&mut self, saved: Saved) -> Result<(), SinkError> {
        self.saved = saved.frontier;
        let mut sends = Vec::new();
        {
            let mut state = self.shared.lock();
            for SavedDelivery {
                delivery,
                progress,
                dead,
            } in saved.deliveries
            {
                match delivery.prepare() {
                    Ok(prepared) => {
                        let seq = state.admit(prepared, progress, None);
                        if dead {
                            state.kill(seq);
                        } else {
                            sends.push(seq);
                        }
                    }
                    // It was sendable when it was saved; say so if this build thinks not.
                    Err(e) => {
                        let row = delivery.dead_letter(&progress, now_ms());
                        tracing::warn!(sink = %self.config.name, delivery = %delivery.id, error = %e, "a restored delivery cannot be sent");
                        state.dead.push(Dead::Row(None, row));
                    }
                }
            }
        }
        if !sends.is_empty() {
            tracing::info!(sink = %self.config.name, deliveries = sends.len(), "sending the deliveries pending at the checkpoint again");
        }
        for seq in sends {
            self.send(seq)?;
        }
        Ok(())
    }

    fn send(&self, seq: u64) -> Result<(), SinkError> {
        self.commands
            .send(Command::Deliver(seq))
            .map_err(|_| SinkError::Io(format!("webhook sink {}: its dispatcher stopped", self.config.name)))
    }

    /// Adds one delivery row at `time`, or dead-letters it if it is not one, or if its target
    /// has `max_pending_per_target` unresolved deliveries and no success for a request
    /// timeout. A target that is full but works (a burst) holds `write` back until it has
    /// room, as `max_queued` does.
    fn admit(&mut self, time: Time, row: &Row) -> Result<(), SinkError> {
        let prepared = match Delivery::from_row(row).and_then(|d| d.prepare()) {
            Ok(prepared) => prepared,
            Err(e) => return self.dead_letter(time, invalid_dead_letter(row, &e, now_ms())),
        };
        loop {
            let state = self.shared.lock();
            // A stopping pipeline is not held up, as in `wait_for_room`: the checkpoint keeps
            // what it could not send.
            let (backlog, stuck) = match state.load(&prepared.target) {
                Some(load) if load.pending >= self.config.max_pending_per_target && !self.shared.stopping() => {
                    (load.pending, load.since.elapsed() >= self.config.timeout)
                }
                _ => {
                    let mut state = state;
                    let seq = state.admit(prepared, Progress::default(), Some(time));
                    drop(state);
                    return self.send(seq);
                }
            };
            if stuck {
                drop(state);
                if let Some(held_back) = self.overflowed.allow() {
                    tracing::warn!(
                        sink = %self.config.name,
                        target = %prepared.target,
                        backlog,
                        dead_lettered = held_back + 1,
                        "deliveries dead-lettered unattempted: their target has max_pending_per_target unresolved"
                    );
                }
                let progress = Progress {
                    last_error: Some(format!(
                        "not attempted: {backlog} deliveries to this target are unresolved \
                         (max_pending_per_target) and none succeeded for {} ms: it is down or hanging",
                        self.config.timeout.as_millis()
                    )),
                    ..Progress::default()
                };
                return self.dead_letter(time, prepared.delivery.dead_letter(&progress, now_ms()));
            }
            let _ = self.shared.changed.wait_timeout(state, WAKE_EVERY);
            self.drain()?;
        }
    }

    /// Queues a dead letter made already, for a row written at `time`.
    fn dead_letter(&mut self, time: Time, row: Row) -> Result<(), SinkError> {
        let mut state = self.shared.lock();
        state.hold(Some(time));
        state.dead.push(Dead::Row(Some(time), row));
        WebhookStats::add(&self.shared.stats.dead_lettered, 1);
        Ok(())
    }

    /// Waits while `max_queued` deliveries wait for their first attempt, writing dead
    /// letters meanwhile. A stopping pipeline is not held up: its rows are taken anyway.
    fn wait_for_room(&mut self) -> Result<(), SinkError> {
        loop {
            {
                let state = self.shared.lock();
                if state.queued < self.config.max_queued || self.shared.stopping() {
                    return Ok(());
                }
                let _ = self.shared.changed.wait_timeout(state, WAKE_EVERY);
            }
            self.drain()?;
        }
    }

    /// Writes the queued dead letters to the inner sink and commits it.
    fn drain(&mut self) -> Result<(), SinkError> {
        let now = now_ms();
        let mut rows = Vec::new();
        let mut times = Vec::new();
        {
            let mut state = self.shared.lock();
            for dead in std::mem::take(&mut state.dead) {
                match dead {
                    Dead::Delivery(seq) => {
                        if let Some(entry) = state.forget(seq, false) {
                            rows.push((entry.prepared.delivery.dead_letter(&entry.progress, now), 1));
                            times.push(entry.time);
                        }
                    }
                    Dead::Row(time, row) => {
                        rows.push((row, 1));
                        times.push(time);
                    }
                }
            }
        }
        if !rows.is_empty() {
            let at = now.max(self.inner_time);
            if self.inner.ordered() {
                sluice_runtime::sink::consolidate_rows(&mut rows);
            }
            self.inner.write(at, &rows)?;
            self.inner.commit(Some(at + 1))?;
            self.inner_time = at + 1;
            self.unsettled.push_back((at, times));
        }
        self.settle();
        Ok(())
    }

    /// Releases the deliveries whose dead letters the inner sink now holds durably.
    fn settle(&mut self) {
        let durable = self.inner.durable();
        while let Some((at, _)) = self.unsettled.front() {
            if durable.is_some_and(|d| d <= *at) {
                break;
            }
            if let Some((_, times)) = self.unsettled.pop_front() {
                let mut state = self.shared.lock();
                for time in times {
                    state.release(time);
                }
            }
        }
    }

    /// Ends the inner sink's input and waits until its dead letters are durable (at once
    /// for a file; as acknowledgements arrive for Kafka), unless the pipeline stops.
    fn close_inner(&mut self) -> Result<(), SinkError> {
        self.inner.commit(None)?;
        self.settle();
        while !self.unsettled.is_empty() && !self.shared.stopping() {
            std::thread::sleep(WAKE_EVERY);
            self.settle();
        }
        Ok(())
    }

    /// Blocks until every delivery is resolved, or, when the pipeline stops, until the
    /// requests in flight have finished (at most a request timeout).
    fn finish(&mut self) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut logged: Option<Instant> = None;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            self.drain()?;
            let state = self.shared.lock();
            let (pending, in_flight) = (state.pending.len(), state.in_flight);
            if pending == 0 && state.dead.is_empty() {
                drop(state);
                return self.close_inner();
            }
            if self.shared.stopping() {
                let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + self.config.timeout + WAKE_EVERY);
                if in_flight == 0 || Instant::now() >= deadline {
                    drop(state);
                    self.drain()?;
                    tracing::info!(sink = %self.config.name, pending, "stopping with deliveries pending; the checkpoint keeps them");
                    return Ok(());
                }
            }
            if logged.is_none_or(|l| l.elapsed() >= LOG_EVERY) {
                logged = Some(Instant::now());
                tracing::info!(
                    sink = %self.config.name,
                    pending,
                    in_flight,
                    waited_s = started.elapsed().as_secs(),
                    "input ended; waiting for pending deliveries"
                );
            }
            let _ = self.shared.changed.wait_timeout(state, WAKE_EVERY);
        }
    }
}

impl Sink for WebhookSink {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        for (row, diff) in updates.iter().filter(|(_, d)| *d > 0) {
            for _ in 0..*diff {
                self.wait_for_room()?;
                self.admit(time, row)?;
            }
        }
        self.drain()
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.last_commit = Some(frontier);
        if let Some(f) = frontier {
            self.high = self.high.max(f);
        }
        self.drain()?;
        if frontier.is_none() {
            self.finish()?;
        }
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        let state = self.shared.lock();
        let first = state.times.keys().next().copied();
        let resolved = match self.last_commit {
            None => Some(0),
            Some(Some(c)) => Some(first.map_or(c, |t| t.min(c))),
            Some(None) => match first {
                Some(t) => Some(t),
                None if state.pending.is_empty() && state.dead.is_empty() && self.unsettled.is_empty() => None,
                // Only restored deliveries are left: the checkpoint covers them, but the
                // output is not complete until they are resolved.
                None => Some(self.high),
            },
        };
        resolved.map(|r| r.max(self.saved))
    }

    fn ordered(&self) -> bool {
        false
    }

    fn checkpoint(&mut self, at: Time) -> Result<Option<Vec<u8>>, SinkError> {
        use bincode::Options as _;
        self.drain()?;
        // Every time before `at` is written, though its commit may still be to come: the
        // pending set saved here covers them all, so output is durable as far as `at`.
        let frontier = match self.last_commit {
            Some(Some(c)) => c,
            Some(None) => self.high,
            None => self.saved,
        }
        .max(self.saved)
        .max(at);
        let deliveries = {
            let state = self.shared.lock();
            let mut entries: Vec<(&u64, &state::Entry)> = state.pending.iter().collect();
            // In the order they were written, so a restart sends the oldest first.
            entries.sort_by_key(|(seq, _)| **seq);
            entries
                .into_iter()
                .map(|(_, e)| SavedDelivery {
                    delivery: e.prepared.delivery.clone(),
                    progress: e.progress.clone(),
                    dead: e.dead,
                })
                .collect()
        };
        let inner = self.inner.checkpoint(at)?;
        // The inner checkpoint made every dead letter written so far durable.
        while let Some((_, times)) = self.unsettled.pop_front() {
            let mut state = self.shared.lock();
            for time in times {
                state.release(time);
            }
        }
        let saved = Saved {
            version: SAVED_VERSION,
            frontier,
            deliveries,
            inner,
        };
        let bytes = bincode::options()
            .serialize(&saved)
            .map_err(|e| SinkError::Io(format!("webhook sink {}: checkpoint: {e}", self.config.name)))?;
        self.saved = frontier;
        Ok(Some(bytes))
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        // Requests still in flight are abandoned: they are pending in the checkpoint, or
        // the source was not committed past them.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
