//! The dispatcher: one task that decides which delivery is sent when, and the attempts it
//! spawns.
//!
//! ```text
//!  write/open ──Deliver(seq)──▶ per-target queues ──▶ runnable targets (round robin)
//!                                    ▲                      │ ≤ per_target_concurrency
//!                 due retries ◀── timers (due, seq)          │ ≤ max_in_flight
//!                                    ▲                      ▼
//!                                    └──── Finished ◀── attempt task (one request)
//! ```
//!
//! Each target has its own queue and in-flight count, and only targets with work and a free
//! slot are in the round robin: a target that hangs fills its own slots and nothing else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use reqwest::header::{HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Client, Response, StatusCode};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::config::WebhookConfig;
use crate::delivery::Prepared;
use crate::guard::{Refused, check_literal};
use crate::retry::{jittered, nominal_delay, retry_after};
use crate::sign::signature;
use crate::state::{Shared, WebhookStats, now_ms};

/// What the sink tells the dispatcher.
pub(crate) enum Command {
    /// A new (or restored) delivery to send now.
    Deliver(u64),
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A 2xx.
    Success,
    /// Worth another attempt: 5xx, 408, 429, a timeout, a connection error.
    Retry {
        status: Option<u16>,
        error: String,
        /// What `Retry-After` asked for, clamped.
        after: Option<Duration>,
    },
    /// Never going to work: a redirect, another 4xx, a refused target.
    Permanent { status: Option<u16>, error: String },
}

struct Finished {
    seq: u64,
    target: Arc<str>,
    outcome: Outcome,
    /// How long the request took.
    took: Duration,
}

#[derive(Default)]
struct Target {
    /// Deliveries ready to send, oldest first.
    queue: VecDeque<u64>,
    busy: usize,
    /// In the round robin.
    listed: bool,
}

/// The dispatcher's own state; it runs as one task on the sink's runtime.
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    config: Arc<WebhookConfig>,
    client: Client,
    targets: HashMap<Arc<str>, Target>,
    runnable: VecDeque<Arc<str>>,
    /// Retries by due time; the sequence number makes keys unique.
    timers: BTreeMap<(Instant, u64), Arc<str>>,
    in_flight: usize,
    rng: SmallRng,
}

impl Dispatcher {
    pub fn new(shared: Arc<Shared>, config: Arc<WebhookConfig>, client: Client) -> Dispatcher {
        // Jitter needs spread, not secrecy: the clock is seed enough.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Dispatcher {
            shared,
            config,
            client,
            targets: HashMap::new(),
            runnable: VecDeque::new(),
            timers: BTreeMap::new(),
            in_flight: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Runs until the sink drops its end of `commands`.
    pub async fn run(mut self, mut commands: UnboundedReceiver<Command>) {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        loop {
            let next_timer = self.timers.first_key_value().map(|((at, _), _)| *at);
            let sleep = async move {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Deliver(seq)) => self.deliver(seq),
                    None => break,
                },
                Some(finished) = done_rx.recv() => self.finish(finished),
                () = sleep => {}
            }
            // Take everything already waiting before starting requests, so one pass fills
            // the slots fairly.
            while let Ok(Command::Deliver(seq)) = commands.try_recv() {
                self.deliver(seq);
            }
            while let Ok(finished) = done_rx.try_recv() {
                self.finish(finished);
            }
            let now = Instant::now();
            while let Some(entry) = self.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, seq), target) = entry.remove_entry();
                self.enqueue(target, seq);
            }
            self.start_ready(&done_tx);
        }
    }

    fn deliver(&mut self, seq: u64) {
        let target = self
            .shared
            .lock()
            .pending
            .get(&seq)
            .map(|e| Arc::clone(&e.prepared.target));
        if let Some(target) = target {
            self.enqueue(target, seq);
        }
    }

    fn enqueue(&mut self, target: Arc<str>, seq: u64) {
        let limit = self.config.per_target_concurrency;
        let state = self.targets.entry(Arc::clone(&target)).or_default();
        state.queue.push_back(seq);
        if !state.listed && state.busy < limit {
            state.listed = true;
            self.runnable.push_back(target);
        }
    }

    /// Starts requests while there are free slots, one per runnable target in turn.
    fn start_ready(&mut self, done: &UnboundedSender<Finished>) {
        let limit = self.config.per_target_concurrency;
        // Stopping: the requests already sent may finish, no new ones start; the rest waits
        // in the checkpoint.
        while self.in_flight < self.config.max_in_flight && !self.shared.stopping() {
            let Some(name) = self.runnable.pop_front() else {
                break;
            };
            let seq = match self.targets.get_mut(&name) {
                Some(target) => {
                    target.listed = false;
                    if target.busy < limit {
                        target.queue.pop_front()
                    } else {
                        None
                    }
                }
                None => continue,
            };
            if let Some(seq) = seq
                && self.start(seq, &name, done)
            {
                if let Some(target) = self.targets.get_mut(&name) {
                    target.busy += 1;
                }
                self.in_flight += 1;
            }
            if let Some(target) = self.targets.get_mut(&name)
                && !target.queue.is_empty()
                && target.busy < limit
            {
                target.listed = true;
                self.runnable.push_back(name);
            } else {
                self.forget_if_idle(&name);
            }
        }
    }

    /// Starts one attempt of `seq`; `false` when it is no longer pending.
    fn start(&mut self, seq: u64, target: &Arc<str>, done: &UnboundedSender<Finished>) -> bool {
        let prepared = {
            let mut state = self.shared.lock();
            let Some(entry) = state.pending.get_mut(&seq).filter(|e| !e.dead) else {
                return false;
            };
            let now = now_ms();
            entry.progress.attempts += 1;
            entry.progress.first_attempt_ms.get_or_insert(now);
            entry.progress.last_attempt_ms = Some(now);
            let was_fresh = std::mem::replace(&mut entry.fresh, false);
            let prepared = Arc::clone(&entry.prepared);
            if was_fresh {
                state.queued -= 1;
            }
            state.in_flight += 1;
            prepared
        };
        // `write` may be waiting for room in the queue.
        self.shared.changed.notify_all();
        let stats = &self.shared.stats;
        WebhookStats::add(&stats.attempts, 1);
        WebhookStats::add(&stats.in_flight, 1);
        let client = self.client.clone();
        let guard = !self.config.allow_private_targets;
        let timeout = self.config.timeout;
        let max_backoff = self.config.max_backoff;
        let done = done.clone();
        let target = Arc::clone(target);
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = attempt(&client, &prepared, guard, timeout, max_backoff).await;
            let took = started.elapsed();
            // The dispatcher is gone only when the sink is: nobody is left to tell.
            let _ = done.send(Finished {
                seq,
                target,
                outcome,
                took,
            });
        });
        true
    }

    fn finish(&mut self, finished: Finished) {
        let Finished {
            seq,
            target,
            outcome,
            took,
        } = finished;
        self.in_flight -= 1;
        let limit = self.config.per_target_concurrency;
        if let Some(t) = self.targets.get_mut(&target) {
            t.busy -= 1;
            if !t.listed && !t.queue.is_empty() && t.busy < limit {
                t.listed = true;
                self.runnable.push_back(Arc::clone(&target));
            }
        }
        self.forget_if_idle(&target);
        let stats = Arc::clone(&self.shared.stats);
        stats.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        stats.attempt_seconds.observe(took);
        let mut state = self.shared.lock();
        state.in_flight -= 1;
        let Some(entry) = state.pending.get_mut(&seq) else {
            drop(state);
            self.shared.changed.notify_all();
            return;
        };
        let id = Arc::clone(&entry.prepared.delivery.id);
        let age = entry.admitted.elapsed();
        match outcome {
            Outcome::Success => {
                let time = entry.time;
                state.forget(seq, true);
                state.release(time);
                WebhookStats::add(&stats.successes, 1);
                stats.delivery_seconds.observe(age);
                tracing::debug!(sink = %self.config.name, delivery = %id, "delivered");
            }
            Outcome::Retry { status, error, after } => {
                let attempts = entry.progress.attempts;
                let delay = after.unwrap_or_else(|| {
                    let d = nominal_delay(attempts, self.config.initial_backoff, self.config.max_backoff);
                    jittered(d, &mut self.rng)
                });
                let first = entry.progress.first_attempt_ms.unwrap_or_else(now_ms);
                let deadline = first.saturating_add(duration_ms(self.config.max_age));
                let due = now_ms().saturating_add(duration_ms(delay));
                tracing::debug!(sink = %self.config.name, delivery = %id, attempts, %error, ?delay, "attempt failed");
                entry.progress.last_status = status;
                entry.progress.last_error = Some(error);
                if attempts >= self.config.max_attempts || due > deadline {
                    state.kill(seq);
                    WebhookStats::add(&stats.dead_lettered, 1);
                    stats.delivery_seconds.observe(age);
                } else {
                    self.timers.insert((Instant::now() + delay, seq), target);
                    WebhookStats::add(&stats.retries, 1);
                }
            }
            Outcome::Permanent { status, error } => {
                tracing::debug!(sink = %self.config.name, delivery = %id, %error, "delivery failed for good");
                entry.progress.last_status = status;
                entry.progress.last_error = Some(error);
                state.kill(seq);
                WebhookStats::add(&stats.dead_lettered, 1);
                stats.delivery_seconds.observe(age);
            }
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    fn forget_if_idle(&mut self, name: &Arc<str>) {
        if self
            .targets
            .get(name)
            .is_some_and(|t| t.busy == 0 && t.queue.is_empty() && !t.listed)
        {
            self.targets.remove(name);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends one attempt of a delivery and says how it went.
async fn attempt(client: &Client, p: &Prepared, guard: bool, timeout: Duration, max_backoff: Duration) -> Outcome {
    // The connector does not resolve IP literals, so the resolver never sees them: check here.
    if guard
        && let Some(host) = p.url.host_str()
        && let Err(refused) = check_literal(host)
    {
        return Outcome::Permanent {
            status: None,
            error: refused.to_string(),
        };
    }
    let mut headers = p.headers.clone();
    if let Some(key) = &p.key {
        // Signed at each attempt: receivers reject timestamps more than a few minutes old.
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let d = &p.delivery;
        let sig = signature(key, &d.id, timestamp, d.body.as_bytes());
        let values = [
            ("webhook-id", HeaderValue::from_str(&d.id)),
            ("webhook-timestamp", HeaderValue::from_str(&timestamp.to_string())),
            ("webhook-signature", HeaderValue::from_str(&sig)),
        ];
        for (name, value) in values {
            let Ok(value) = value else {
                return Outcome::Permanent {
                    status: None,
                    error: format!("the delivery id cannot be sent as the `{name}` header"),
                };
            };
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let request = client
        .request(p.method.clone(), p.url.clone())
        .headers(headers)
        .body(p.delivery.body.to_string());
    match request.send().await {
        Ok(response) => judge(response, max_backoff).await,
        Err(e) => judge_error(e, timeout),
    }
}

/// The outcome of a response.
async fn judge(mut response: Response, max_backoff: Duration) -> Outcome {
    let status = response.status();
    let code = Some(status.as_u16());
    if status.is_success() {
        // Read a little of the body so the connection can be used again.
        let _ = excerpt(&mut response, 64 * 1024).await;
        return Outcome::Success;
    }
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
        let error = match location {
            Some(l) => format!("redirect to {l} not followed"),
            None => format!("HTTP {status} (a redirect without Location) not followed"),
        };
        return Outcome::Permanent { status: code, error };
    }
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now(), max_backoff));
    let body = excerpt(&mut response, 256).await;
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let error = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    };
    if retryable(status) {
        Outcome::Retry {
            status: code,
            error,
            after,
        }
    } else {
        Outcome::Permanent { status: code, error }
    }
}

/// 5xx, 408 Request Timeout and 429 Too Many Requests: the receiver may take it later.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// Up to `limit` bytes of the body, as text (for error messages).
async fn excerpt(response: &mut Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(limit);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The outcome of a request that got no response.
fn judge_error(e: reqwest::Error, timeout: Duration) -> Outcome {
    if let Some(refused) = source_of::<Refused>(&e) {
        return Outcome::Permanent {
            status: None,
            error: refused.to_string(),
        };
    }
    if e.is_builder() {
        return Outcome::Permanent {
            status: None,
            error: chain(&e.without_url()),
        };
    }
    let error = if e.is_timeout() {
        format!("timed out after {timeout:?}")
    } else {
        chain(&e.without_url())
    };
    Outcome::Retry {
        status: None,
        error,
        after: None,
    }
}

/// The first error of type `T` in `e`'s chain of sources.
fn source_of<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// An error and its sources, `: `-separated: reqwest's own message is only "error sending
/// request"; the cause (connection refused, a TLS failure) is further down.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut current = e.source();
    while let Some(err) = current {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = err.source();
    }
    text
}
