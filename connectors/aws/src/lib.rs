//! What the AWS connectors (Kinesis source and sink, DynamoDB scan) share.
//!
//! * **Configuration**: [`sdk_config`] loads the standard AWS chain (environment, profile,
//!   web identity, instance role) for credentials and region, then applies the pipeline's
//!   `region` and `endpoint` (a local implementation such as kinesalite or dynalite).
//!   [`client_config`] turns it into what every client is built from: the SDK's own retries
//!   off and a timeout on every request.
//! * **Retries**: [`Failure::of`] sorts a failed request into a [`Kind`] (throttled,
//!   transient, not found, …) from its error code and HTTP status; retryable ones wait a
//!   [`Backoff`] (100 ms doubling to 5 s, with jitter) and are warned about through a
//!   [`LogLimit`]. The connectors retry for as long as it takes: a retry loop inside the SDK
//!   would only hide how long a shard or segment has been stalled.
//! * **One runtime**: the SDKs are asynchronous, and timely workers must never block on
//!   the network. Every AWS request runs on [`runtime`], a small tokio runtime shared by all
//!   AWS sources and sinks of the process; readers and sinks hand work to it and collect the
//!   results without waiting (bounded channels), so a slow service stalls only its own shard
//!   or segment.

mod failure;
mod retry;
mod stream;

use std::sync::OnceLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use sluice_runtime::spec::AwsSpec;

pub use failure::{Failure, Kind};
pub use retry::Backoff;
pub use sluice_runtime::log_limit::LogLimit;
pub use stream::StreamRef;

/// How long one request may take before it counts as a network failure (and is retried):
/// a stalled connection must not stall its shard or segment for good.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime every AWS request of this process runs on.
///
/// Two threads: requests spend their time waiting on the network, and the dataflow's
/// workers need the cores.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-aws")
            .enable_all()
            .build()
            // Creating a runtime fails only when threads cannot be spawned at all; nothing
            // in the process could run then.
            .unwrap_or_else(|e| panic!("cannot start the AWS runtime: {e}"))
    })
}

/// The SDK configuration for `spec`: the standard chain, then the pipeline's region and
/// endpoint. Blocks the calling thread (not a runtime thread) while the chain is read.
pub fn sdk_config(spec: &AwsSpec) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &spec.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &spec.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let config = runtime().block_on(loader.load());
    if config.region().is_none() {
        tracing::warn!("no AWS region configured: set `region` in the pipeline or AWS_REGION");
    }
    config
}

/// `sdk` as every AWS client of sluice is built from it: the SDK's retries off (the
/// connectors retry with their own [`Backoff`]) and [`CONNECT_TIMEOUT`] and
/// [`ATTEMPT_TIMEOUT`] on every request.
pub fn client_config(sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    sdk.to_builder()
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_retry_nothing_themselves_and_time_out() {
        let sdk = aws_config::SdkConfig::builder()
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(1)).build())
            .build();
        let config = client_config(&sdk);
        assert_eq!(config.retry_config().map(RetryConfig::max_attempts), Some(1));
        let timeouts = config.timeout_config().expect("timeouts");
        assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(timeouts.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
    }
}
