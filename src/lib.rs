//! sluice: loading pipeline files and wiring their sources, graph nodes and sinks.
//!
//! The runtime knows no connector, sink or dataflow crate. This crate is where the closed
//! spec enums meet their implementations, each in one exhaustive `match`: adding a
//! connector means a variant in the spec, an arm here, and its crate.

pub mod formats;
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use sluice_runtime::exec::{RunError, RunOptions, RunReport};
use sluice_runtime::spec::{self, Graph, Pipeline, Problem};

pub use render::Compiled;

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The pipeline file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file has problems; every one is listed.
    #[error("{} problem(s) in the pipeline file", .0.len())]
    Invalid(Vec<Problem>),
}

/// A validated pipeline, ready to run: the spec, its checked graph, compiled nodes.
pub struct Plan {
    pipeline: Arc<Pipeline>,
    graph: Graph,
    compiled: BTreeMap<String, Compiled>,
}

impl Plan {
    /// The pipeline spec.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// A one-line description: counts of sources, nodes and sinks.
    pub fn summary(&self) -> String {
        let p = &self.pipeline;
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}",
            plural(p.sources.len(), "source"),
            plural(p.nodes.len(), "node"),
            plural(p.sinks.len(), "sink")
        )
    }

    /// The dataflow graph as Graphviz DOT.
    pub fn dot(&self) -> String {
        spec::to_dot(&self.pipeline)
    }
}

/// Reads, parses and validates a pipeline file, with `${VAR}`s from the process environment.
pub fn load(path: &Path) -> Result<Plan, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    load_str(path, &text, &|name| std::env::var(name).ok())
}

/// Parses and validates pipeline `text` as if read from `path`, resolving `${VAR}` with `env`.
///
/// Every problem is collected: syntax and keys first; when those are fine, references,
/// cycles and shapes; and expressions and domain-node parameters, compiled now so that a
/// bad one is reported before anything runs.
pub fn load_str(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, LoadError> {
    let parsed = spec::parse_partial(path, text, env);
    let mut problems = parsed.problems;
    let Some(pipeline) = parsed.pipeline else {
        return Err(LoadError::Invalid(problems));
    };
    let mut compiled = BTreeMap::new();
    for node in &pipeline.nodes {
        match render::compile(&pipeline, node) {
            Ok(c) => {
                compiled.insert(node.name.value.clone(), c);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    let graph = match spec::check_partial(&pipeline, &parsed.broken, !parsed.broken_sinks.is_empty()) {
        Ok(graph) => Some(graph),
        Err(mut p) => {
            problems.append(&mut p);
            None
        }
    };
    match graph {
        Some(graph) if problems.is_empty() => Ok(Plan {
            pipeline: Arc::new(pipeline),
            graph,
            compiled,
        }),
        _ => {
            problems.sort();
            problems.dedup();
            Err(LoadError::Invalid(problems))
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The dataflow failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The server for served views did not start.
    #[error(transparent)]
    Serve(#[from] sluice_server::ServerError),
}

/// Runs a validated pipeline, serving its served views while it runs.
pub fn run(plan: Plan, options: RunOptions) -> Result<RunReport, Failure> {
    let pipeline = plan.pipeline.clone();
    let wiring = Arc::new(render::SluiceWiring::new(
        plan.pipeline,
        plan.graph,
        plan.compiled,
        Arc::clone(&options.stop),
        options.metrics.clone(),
    ));
    if let Some(m) = &options.metrics
        && !wiring.views.is_empty()
    {
        // Served views answer `dataset_current` once the sources are caught up; a client sent
        // to this process before then would get an incomplete snapshot.
        let caught_up = sluice_runtime::exec::Wiring::caught_up(wiring.as_ref());
        m.require(
            "served views caught up",
            Box::new(move || caught_up.as_ref().is_some_and(|c| c.since().is_some())),
        );
    }
    // Listening before the dataflow starts: clients may connect at once, and wait for data.
    // In a cluster the served sinks write on worker 0, so process 0 alone has the views.
    let serves = options.cluster.as_ref().is_none_or(|c| c.process == 0);
    let server = match &pipeline.server {
        Some(spec) if serves => Some(sluice_server::start(server_config(spec, &wiring.views))?),
        Some(_) => {
            tracing::info!("[server] runs in process 0 of the cluster, where the served views are; not here");
            None
        }
        None => None,
    };
    if let (Some(m), Some(_)) = (&options.metrics, &server) {
        m.register(Box::new(|x| {
            use sluice_runtime::metrics::Kind;
            let (open, cut_off) = sluice_server::client_counts();
            x.single(
                "sluice_server_streams",
                Kind::Gauge,
                "Client streams (gRPC subscriptions) open now.",
                &[],
                open as f64,
            );
            x.single(
                "sluice_server_streams_cut_off_total",
                Kind::Counter,
                "Client streams ended with RESOURCE_EXHAUSTED for falling behind.",
                &[],
                cut_off as f64,
            );
        }));
    }
    if let Some(m) = &options.metrics
        && !(wiring.fanout_counters.is_empty() && wiring.filter_errors.is_empty())
    {
        let (fanout, filters) = (wiring.fanout_counters.clone(), wiring.filter_errors.clone());
        m.register(Box::new(move |x| expose_node_counters(&fanout, &filters, x)));
    }
    let report = sluice_runtime::exec::run(pipeline, wiring.clone(), options);
    if let Some(server) = server {
        server.stop();
    }
    let report = report?;
    for (node, errors) in &wiring.filter_errors {
        let n = errors.load(std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(node = %node, records = n, "filter condition could not be evaluated on some records; they did not match");
        }
    }
    for (node, c) in &wiring.fanout_counters {
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        let failed = load(&c.filter_errors);
        tracing::info!(node = %node, events = load(&c.events), deliveries = load(&c.deliveries), "fanout");
        if failed > 0 {
            tracing::warn!(node = %node, evaluations = failed, "subscriber filters could not be evaluated on some events; they did not match");
        }
    }
    Ok(report)
}

/// The counters of fanout and filter nodes, for a scrape: events matched, deliveries made,
/// and filters that could not be evaluated (spec/fanout.md: counted, and no match).
fn expose_node_counters(
    fanout: &BTreeMap<String, Arc<sluice_fanout::Counters>>,
    filters: &BTreeMap<String, Arc<std::sync::atomic::AtomicU64>>,
    x: &mut sluice_runtime::metrics::Exposition,
) {
    use sluice_runtime::metrics::Kind::Counter;
    use std::sync::atomic::{AtomicU64, Ordering};
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64;
    type Field = fn(&sluice_fanout::Counters) -> &AtomicU64;
    let families: [(&str, &str, Field); 3] = [
        (
            "sluice_fanout_events_total",
            "Events a fanout node matched against its subscribers.",
            |c| &c.events,
        ),
        (
            "sluice_fanout_deliveries_total",
            "Deliveries a fanout node made.",
            |c| &c.deliveries,
        ),
        (
            "sluice_fanout_filter_errors_total",
            "Subscriber filters that could not be evaluated on an event (counted as no match).",
            |c| &c.filter_errors,
        ),
    ];
    if !fanout.is_empty() {
        for (name, help, field) in families {
            x.family(name, Counter, help);
            for (node, c) in fanout {
                x.sample(name, &[("node", node)], load(field(c)));
            }
        }
    }
    if !filters.is_empty() {
        let name = "sluice_filter_errors_total";
        x.family(
            name,
            Counter,
            "Records whose filter condition could not be evaluated (they did not match).",
        );
        for (node, errors) in filters {
            x.sample(name, &[("node", node)], load(errors));
        }
    }
}

/// The server's configuration from the pipeline's `[server]` (validated: addresses parse,
/// services name served sinks).
fn server_config(
    spec: &spec::ServerSpec,
    views: &BTreeMap<String, sluice_served::ServedView>,
) -> sluice_server::ServerConfig {
    let address = |a: &Option<spec::Spanned<String>>| a.as_ref().and_then(|a| a.value.parse().ok());
    sluice_server::ServerConfig {
        grpc: address(&spec.grpc),
        http: address(&spec.http),
        token_key: spec.token_key.value.clone().into_bytes(),
        views: views.clone(),
        subscribe_token: spec.subscribe_auth_token.clone(),
        account_stream: spec.account_stream.as_ref().and_then(|a| {
            Some(sluice_server::AccountStreamConfig {
                view: views.get(&a.view.value)?.clone(),
                auth_token: a.auth_token.clone(),
            })
        }),
        messages: spec.messages.as_ref().and_then(|m| {
            Some(sluice_server::MessagesConfig {
                view: views.get(&m.view.value)?.clone(),
                jwt_secret: m.jwt_secret.value.clone().into_bytes(),
            })
        }),
        client_buffer: spec.client_buffer,
        stall_timeout: std::time::Duration::from_millis(spec.stall_timeout_ms),
        tls: spec.tls.as_ref().map(|t| sluice_server::TlsFiles::new(&t.cert, &t.key)),
    }
}
