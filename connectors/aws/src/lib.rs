//! What the AWS connectors (Kinesis source and sink, DynamoDB scan) share.
//!
//! * **Configuration**: [`sdk_config`] loads the standard AWS chain (environment, profile,
//!   web identity, instance role) for credentials and region, then applies the pipeline's
//!   `region` and `endpoint` (a local implementation such as kinesalite or dynalite).
//! * **One runtime**: the SDKs are asynchronous, and timely workers must never block on
//!   the network. Every AWS request runs on [`runtime`], a small tokio runtime shared by all
//!   AWS sources and sinks of the process; readers and sinks hand work to it and collect the
//!   results without waiting (bounded channels), so a slow service stalls only its own shard
//!   or segment.

use std::sync::OnceLock;

use sluice_runtime::spec::AwsSpec;

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
