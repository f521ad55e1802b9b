//! The sink's settings, with the defaults the fanout spec names.

use std::time::Duration;

use sluice_runtime::sink::SinkError;

/// Default [`WebhookConfig::timeout`]: 10 s per request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`WebhookConfig::max_attempts`]: 25.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;
/// Default [`WebhookConfig::max_age`]: 3 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3 * 24 * 3600);
/// Default [`WebhookConfig::initial_backoff`]: 1 s.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Default [`WebhookConfig::max_backoff`]: 6 h.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Default [`WebhookConfig::per_target_concurrency`]: 8.
pub const DEFAULT_PER_TARGET_CONCURRENCY: usize = 8;
/// Default [`WebhookConfig::max_in_flight`]: 256.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default [`WebhookConfig::max_queued`]: 100 000.
pub const DEFAULT_MAX_QUEUED: usize = 100_000;
/// Default [`WebhookConfig::max_pending_per_target`]: 10 000, a tenth of `max_queued`, so a
/// few stuck targets cannot take the whole queue.
pub const DEFAULT_MAX_PENDING_PER_TARGET: usize = 10_000;

/// How the webhook sink sends, retries and limits its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The sink's name, for logs.
    pub name: String,
    /// The longest one request may take, connection and response body included
    /// ([`DEFAULT_TIMEOUT`]); a request that takes longer is retried.
    pub timeout: Duration,
    /// Attempts of one delivery before it is dead-lettered ([`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// No retry is scheduled later than the first attempt plus this ([`DEFAULT_MAX_AGE`]):
    /// a retry that would fall after it dead-letters the delivery instead.
    pub max_age: Duration,
    /// The nominal delay before the first retry ([`DEFAULT_INITIAL_BACKOFF`]); it doubles
    /// with each attempt.
    pub initial_backoff: Duration,
    /// The longest nominal delay between attempts, and the most a `Retry-After` header can
    /// ask for ([`DEFAULT_MAX_BACKOFF`]).
    pub max_backoff: Duration,
    /// Requests in flight to one target — a subscriber's endpoint; scheme, host and port for
    /// a row without a subscriber ([`DEFAULT_PER_TARGET_CONCURRENCY`]).
    pub per_target_concurrency: usize,
    /// Requests in flight in all ([`DEFAULT_MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// Deliveries written but not yet attempted before `write` blocks, as backpressure
    /// ([`DEFAULT_MAX_QUEUED`]).
    pub max_queued: usize,
    /// Unresolved deliveries (queued, in flight or waiting to retry) one target may have; a
    /// delivery beyond is dead-lettered at once, unattempted, so a target that is down or
    /// hangs for long holds neither the other targets nor unbounded memory
    /// ([`DEFAULT_MAX_PENDING_PER_TARGET`]).
    pub max_pending_per_target: usize,
    /// Whether targets on loopback, private, link-local, metadata and other internal
    /// addresses may be sent to (default `false`; tests set it).
    pub allow_private_targets: bool,
}

impl Default for WebhookConfig {
    /// The spec's defaults, named `webhook`.
    fn default() -> Self {
        WebhookConfig {
            name: "webhook".to_owned(),
            timeout: DEFAULT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age: DEFAULT_MAX_AGE,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            per_target_concurrency: DEFAULT_PER_TARGET_CONCURRENCY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            max_pending_per_target: DEFAULT_MAX_PENDING_PER_TARGET,
            allow_private_targets: false,
        }
    }
}

impl WebhookConfig {
    /// Checks the limits that would stall the sink: a zero limit never lets a request start.
    pub fn validate(&self) -> Result<(), SinkError> {
        let positive = [
            ("max_attempts", self.max_attempts as usize),
            ("per_target_concurrency", self.per_target_concurrency),
            ("max_in_flight", self.max_in_flight),
            ("max_queued", self.max_queued),
            ("max_pending_per_target", self.max_pending_per_target),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(SinkError::Config(format!(
                    "webhook sink {}: `{name}` must be at least 1",
                    self.name
                )));
            }
        }
        if self.timeout.is_zero() {
            return Err(SinkError::Config(format!(
                "webhook sink {}: `timeout` must be positive",
                self.name
            )));
        }
        Ok(())
    }
}
