//! What the Kinesis source and sink share about talking to the service: the client, how its
//! errors are classified, and the backoff and log rate limit for retries.
//!
//! The SDK's own retries are turned off: the reader and the sink retry for as long as it
//! takes with their own backoff, and a retry loop inside the SDK would only hide how long a
//! shard has been stalled.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// How long one request may take before it counts as a network failure (and is retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Kinesis client for `sdk`, with the SDK's retries off and timeouts on every request.
pub fn client(sdk: &aws_config::SdkConfig) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// A stream named by name or by ARN (`arn:…`), which requests carry in different fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamRef {
    /// `StreamName`.
    Name(String),
    /// `StreamARN`.
    Arn(String),
}

impl StreamRef {
    /// The stream `spec` names: an ARN if it starts with `arn:`, else a name.
    pub fn parse(stream: &str) -> StreamRef {
        if stream.starts_with("arn:") {
            StreamRef::Arn(stream.to_owned())
        } else {
            StreamRef::Name(stream.to_owned())
        }
    }

    /// The `StreamName` field of a request.
    pub fn name(&self) -> Option<String> {
        match self {
            StreamRef::Name(n) => Some(n.clone()),
            StreamRef::Arn(_) => None,
        }
    }

    /// The `StreamARN` field of a request.
    pub fn arn(&self) -> Option<String> {
        match self {
            StreamRef::Arn(a) => Some(a.clone()),
            StreamRef::Name(_) => None,
        }
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamRef::Name(s) | StreamRef::Arn(s) => f.write_str(s),
        }
    }
}

/// What kind of failure a request had, deciding what the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Over a limit (`ProvisionedThroughputExceeded`, `LimitExceeded`): retry after a backoff.
    Throttled,
    /// The network, a timeout or the service's own fault (5xx): retry after a backoff.
    Transient,
    /// The shard iterator is older than five minutes: get a new one.
    ExpiredIterator,
    /// The stream or shard does not exist.
    NotFound,
    /// The service refused an argument (for a shard iterator: a sequence number it cannot honour).
    InvalidArgument,
    /// Anything else (access denied, a KMS key disabled): retrying cannot help.
    Fatal,
}

impl Kind {
    /// Whether waiting and trying again can succeed.
    pub fn retryable(self) -> bool {
        matches!(self, Kind::Throttled | Kind::Transient)
    }

    /// The kind of a per-record error code in a `PutRecords` answer.
    pub fn of_code(code: &str) -> Kind {
        match code {
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "ThrottlingException"
            | "RequestLimitExceeded" => Kind::Throttled,
            "InternalFailure" | "InternalFailureException" | "ServiceUnavailable" | "ServiceUnavailableException" => {
                Kind::Transient
            }
            // The stream is being created or updated: it will be usable soon.
            "ResourceInUseException" | "ExpiredNextTokenException" => Kind::Transient,
            "ExpiredIteratorException" => Kind::ExpiredIterator,
            "ResourceNotFoundException" => Kind::NotFound,
            "InvalidArgumentException" => Kind::InvalidArgument,
            _ => Kind::Fatal,
        }
    }
}

/// A failed request: its kind and a message for logs and errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What the caller does about it.
    pub kind: Kind,
    /// The service's or the client's description.
    pub message: String,
}

impl Failure {
    /// Classifies an SDK error.
    pub fn of<E>(err: &SdkError<E>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = DisplayErrorContext(err).to_string();
        let kind = match err {
            SdkError::ServiceError(_) => match err.code() {
                Some(code) => Kind::of_code(code),
                None => Kind::Transient,
            },
            // Timeouts, refused connections, unreadable answers: the network or the service.
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Kind::Transient,
            // The request could not be built (no region, no credentials): the configuration, but
            // credential providers also fail for a moment (an instance role being refreshed).
            SdkError::ConstructionFailure(_) => Kind::Transient,
            _ => Kind::Transient,
        };
        // An unknown code with a 5xx status is the service's fault and passes.
        let kind = match (kind, err.raw_response().map(|r| r.status().as_u16())) {
            (Kind::Fatal, Some(status)) if status >= 500 => Kind::Transient,
            (kind, _) => kind,
        };
        Failure { kind, message }
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait drawn from its upper
/// half so that many shards throttled together do not retry in step.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    random: RandomState,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            failures: 0,
            random: RandomState::new(),
        }
    }
}

impl Backoff {
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(5);
    /// The first wait's upper bound.
    pub const FIRST: Duration = Duration::from_millis(100);

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = Self::ceiling(self.failures);
        self.failures = self.failures.saturating_add(1);
        let mut h = self.random.build_hasher();
        h.write_u32(self.failures);
        let half = ceiling.as_millis() as u64 / 2;
        Duration::from_millis(half + h.finish() % (half + 1))
    }

    /// The upper bound of the wait after `failures` consecutive failures.
    pub fn ceiling(failures: u32) -> Duration {
        Self::FIRST.saturating_mul(1 << failures.min(10)).min(Self::MAX)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Lets a repeated warning through at most once per interval, counting the ones held back.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimit {
    /// A limit of one message per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` if a message may be logged now, `n` being how many were held back since the
    /// last one; `None` if it must be held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}
