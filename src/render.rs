//! The one place where spec enums meet their implementations: compiling nodes at
//! validation, opening sources and sinks, and rendering nodes into the dataflow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use sluice_connector_dynamodb::ScanSource;
use sluice_connector_file::{FileSource, TableFileSource, TableFormat};
use sluice_connector_http_ingest::{HttpIngestSource, IngestConfig, PublishStats, TlsFiles};
use sluice_connector_kafka::KafkaSource;
use sluice_connector_kinesis::KinesisSource;
use sluice_delivery::DeliveryConfig;
use sluice_expr::Expr;
use sluice_runtime::exec::{Built, Wiring};
use sluice_runtime::ingest::{Decode, JsonDecoder};
use sluice_runtime::metrics::{Exposition, Kind, Metrics};
use sluice_runtime::progress::CaughtUp;
use sluice_runtime::recovery::StateRegistry;
use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::source::{Source, SourceError};
use sluice_runtime::spec::{
    Envelope, Format, Graph, NodeDecl, NodeSpec, Pipeline, Problem, SinkMode, SinkTarget, SourceSpec, Spanned,
};
use sluice_runtime::{Rows, Time};
use sluice_served::{ServedView, ViewConfig};
use sluice_sink_file::JsonLinesSink;
use sluice_sink_kafka::KafkaSink;
use sluice_sink_kinesis::KinesisSink;
use sluice_sink_webhook::{WebhookConfig, WebhookStats};

use crate::formats;
use timely::dataflow::Scope;

/// What validation compiled for a node, reused by every worker.
#[derive(Clone)]
pub enum Compiled {
    /// Nothing to compile.
    Nothing,
    /// A compiled CEL expression (`filter`, `map`).
    Expr(Expr),
    /// A validated delivery configuration (classification table loaded).
    Delivery(Arc<DeliveryConfig>),
}

/// Compiles a node's expressions and domain parameters, reporting problems at their place.
pub fn compile(p: &Pipeline, node: &NodeDecl) -> Result<Compiled, Vec<Problem>> {
    match &node.spec {
        NodeSpec::Filter { expr, .. } | NodeSpec::Map { expr, .. } => compile_expr(&p.file, expr).map(Compiled::Expr),
        NodeSpec::Delivery(d) => {
            let classification = d.classification.as_ref().map(|c| c.value.as_path());
            DeliveryConfig::new(
                classification,
                d.guard_share.as_ref().map(|s| s.value),
                d.guard_window_ms.as_ref().map(|s| s.value),
                d.guard_min_reports.as_ref().map(|s| s.value),
            )
            .map(|c| Compiled::Delivery(Arc::new(c)))
            .map_err(|e| {
                let at: &dyn Fn(&str) -> Problem = &|msg: &str| match &d.classification {
                    Some(c) => Problem::at(&p.file, c, msg),
                    None => Problem::at(&p.file, &node.name, msg),
                };
                e.problems().iter().map(|m| at(m)).collect()
            })
        }
        _ => Ok(Compiled::Nothing),
    }
}

fn compile_expr(file: &Path, expr: &Spanned<String>) -> Result<Expr, Vec<Problem>> {
    Expr::compile(&expr.value).map_err(|e| vec![Problem::at(file, expr, format!("invalid expression: {e}"))])
}

/// A sink that keeps nothing: the engine still counts what it is given.
struct Discard;

impl Sink for Discard {
    fn write(
        &mut self,
        _time: Time,
        _updates: &[(sluice_runtime::Row, sluice_runtime::Diff)],
    ) -> Result<(), SinkError> {
        Ok(())
    }

    fn commit(&mut self, _frontier: Option<Time>) -> Result<(), SinkError> {
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        None
    }

    fn ordered(&self) -> bool {
        false
    }
}

/// The [`Wiring`] of this binary.
pub struct SluiceWiring {
    pipeline: Arc<Pipeline>,
    graph: Graph,
    compiled: BTreeMap<String, Compiled>,
    /// Every reference some node or sink reads: outputs nobody reads are not built.
    used: BTreeSet<String>,
    /// Per filter node, records whose condition failed to evaluate (summed over workers).
    pub filter_errors: BTreeMap<String, Arc<AtomicU64>>,
    /// Per fanout node, events, deliveries and filter failures (summed over workers).
    pub fanout_counters: BTreeMap<String, Arc<sluice_fanout::Counters>>,
    /// Per served sink, the view its sink feeds and the server reads.
    pub views: BTreeMap<String, ServedView>,
    /// Set when the run is asked to stop: a webhook sink then leaves its pending retries to
    /// the checkpoint instead of waiting for them.
    stop: Arc<AtomicBool>,
    /// Where sinks with counters of their own (webhooks) register them for `/metrics`.
    metrics: Option<Arc<Metrics>>,
    /// Whether the sources are caught up, reported by the workers, read by the views.
    caught_up: Arc<CaughtUp>,
}

impl SluiceWiring {
    /// Wiring for a validated plan.
    pub fn new(
        pipeline: Arc<Pipeline>,
        graph: Graph,
        compiled: BTreeMap<String, Compiled>,
        stop: Arc<AtomicBool>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let filter_errors = pipeline
            .nodes
            .iter()
            .filter(|n| matches!(n.spec, NodeSpec::Filter { .. }))
            .map(|n| (n.name.value.clone(), Arc::default()))
            .collect();
        let fanout_counters = pipeline
            .nodes
            .iter()
            .filter(|n| matches!(n.spec, NodeSpec::Fanout(_)))
            .map(|n| (n.name.value.clone(), Arc::default()))
            .collect();
        let inputs = pipeline.nodes.iter().flat_map(|n| n.spec.inputs());
        let used = inputs
            .chain(pipeline.sinks.iter().map(|s| &s.input))
            .map(|r| r.value.clone())
            .collect();
        let caught_up = Arc::new(CaughtUp::new());
        let views = pipeline
            .sinks
            .iter()
            .filter_map(|s| match &s.target {
                SinkTarget::Served(spec) => Some((
                    spec.name.clone(),
                    ServedView::following(
                        ViewConfig {
                            name: spec.name.clone(),
                            partition_by: spec.partition_by.as_ref().map(|f| f.value.clone()),
                            version_field: spec.version_field.as_ref().map(|f| f.value.clone()),
                            retention_ms: spec.retention_ms,
                        },
                        Arc::clone(&caught_up),
                    ),
                )),
                _ => None,
            })
            .collect();
        SluiceWiring {
            pipeline,
            graph,
            compiled,
            used,
            filter_errors,
            fanout_counters,
            views,
            stop,
            metrics,
            caught_up,
        }
    }
}

impl Wiring for SluiceWiring {
    fn caught_up(&self) -> Option<Arc<CaughtUp>> {
        Some(Arc::clone(&self.caught_up))
    }

    fn open_source(&self, pipeline: &Pipeline, index: usize) -> Result<Arc<dyn Source>, SourceError> {
        let decl = pipeline
            .sources
            .get(index)
            .ok_or_else(|| SourceError::Config(format!("no source number {index}")))?;
        match &decl.spec {
            SourceSpec::Kafka(k) => Ok(Arc::new(KafkaSource::new(k, &decl.name.value)?)),
            SourceSpec::DynamodbScan(d) => Ok(Arc::new(ScanSource::new(d, &decl.name.value)?)),
            SourceSpec::Kinesis(k) => Ok(Arc::new(KinesisSource::new(k, &decl.name.value)?)),
            SourceSpec::HttpIngest(h) => {
                let config = IngestConfig {
                    name: decl.name.value.clone(),
                    listen: h.listen.value.clone(),
                    log_dir: h.log_dir.clone(),
                    jwt_secret: h.jwt_secret.clone().into_bytes(),
                    max_body_bytes: usize::try_from(h.max_body_bytes).unwrap_or(usize::MAX),
                    max_in_flight_bytes: usize::try_from(h.max_in_flight_bytes).unwrap_or(usize::MAX),
                    body_timeout: Duration::from_millis(h.body_timeout_ms),
                    partitions: h.partitions,
                    segment_bytes: h.segment_bytes,
                    tls: h.tls.as_ref().map(|t| TlsFiles::new(&t.cert, &t.key)),
                };
                // The address or the log: nothing a retry fixes.
                let source = HttpIngestSource::start(config).map_err(|e| SourceError::Config(e.to_string()))?;
                if let Some(m) = &self.metrics {
                    let (stats, name) = (source.stats(), decl.name.value.clone());
                    m.register(Box::new(move |x| expose_publish(&name, &stats, x)));
                }
                Ok(Arc::new(source))
            }
            SourceSpec::File(f) if f.reload => {
                let key = match &decl.envelope {
                    Envelope::Upsert { key: Some(k), .. } => k.fields.iter().map(|f| f.join(".")).collect(),
                    _ => Vec::new(),
                };
                let path = f.path.value.clone();
                let format = TableFormat::from_path(&path);
                Ok(Arc::new(TableFileSource::new(path, format, key, f.poll_ms)))
            }
            SourceSpec::File(f) => {
                let source = FileSource::new(f.path.value.clone(), f.follow);
                // Events may be read in parallel chunks; upserts must apply in file order.
                Ok(Arc::new(match decl.envelope {
                    Envelope::Append { .. } => source.with_chunks(sluice_connector_file::CHUNK_BYTES),
                    Envelope::Upsert { .. } => source,
                }))
            }
        }
    }

    fn decoder(&self, pipeline: &Pipeline, index: usize) -> Arc<dyn Decode> {
        let Some(decl) = pipeline.sources.get(index) else {
            return Arc::new(JsonDecoder);
        };
        match decl.format {
            Format::Json => Arc::new(JsonDecoder),
            Format::DynamodbStream if self.only_cds_changes_read(&decl.name.value) => {
                Arc::new(formats::CdsChangeDecoder)
            }
            Format::DynamodbStream => Arc::new(formats::DynamodbStreamDecoder),
            Format::DynamodbItem => Arc::new(formats::DynamodbItemDecoder),
            Format::CdsUpdate => Arc::new(formats::CdsUpdateDecoder),
        }
    }

    fn open_sink(
        &self,
        target: &SinkTarget,
        mode: SinkMode,
        format: Format,
        resume: Option<&[u8]>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        let encoder = formats::encoder(format);
        match target {
            SinkTarget::File { path } => {
                let sink = match resume {
                    Some(position) => JsonLinesSink::resume(path, mode, position)?,
                    None => JsonLinesSink::create(path, mode)?,
                };
                Ok(Box::new(sink.with_encoder(encoder)))
            }
            SinkTarget::Stdout => Ok(Box::new(JsonLinesSink::stdout(mode).with_encoder(encoder))),
            SinkTarget::Discard => Ok(Box::new(Discard)),
            SinkTarget::Kafka(k) => Ok(Box::new(KafkaSink::new(k, mode, encoder, &k.topic)?)),
            SinkTarget::Kinesis(k) => Ok(Box::new(KinesisSink::new(k, mode, encoder)?)),
            SinkTarget::Webhook(w) => {
                // The dead letters' own sink resumes from its part of the webhook's checkpoint.
                let inner_resume = resume.map(sluice_sink_webhook::inner_resume).transpose()?.flatten();
                let dead_letters =
                    self.open_sink(&w.dead_letters, SinkMode::Append, Format::Json, inner_resume.as_deref())?;
                let config = WebhookConfig {
                    name: w.name.clone(),
                    timeout: Duration::from_millis(w.timeout_ms),
                    max_attempts: w.max_attempts,
                    max_age: Duration::from_millis(w.max_age_ms),
                    initial_backoff: Duration::from_millis(w.initial_backoff_ms),
                    max_backoff: Duration::from_millis(w.max_backoff_ms),
                    per_target_concurrency: w.per_target_concurrency as usize,
                    max_in_flight: w.max_in_flight as usize,
                    max_queued: w.max_queued as usize,
                    max_pending_per_target: usize::try_from(w.max_pending_per_target).unwrap_or(usize::MAX),
                    allow_private_targets: w.allow_private_targets,
                };
                let sink = sluice_sink_webhook::open(config, dead_letters, resume, Arc::clone(&self.stop))?;
                if let Some(m) = &self.metrics {
                    let (stats, name) = (sink.stats(), w.name.clone());
                    m.register(Box::new(move |x| expose_webhook(&name, &stats, x)));
                }
                Ok(Box::new(sink))
            }
            SinkTarget::Served(s) => {
                let view = self
                    .views
                    .get(&s.name)
                    .ok_or_else(|| SinkError::Config(format!("no served view named {}", s.name)))?;
                Ok(Box::new(
                    view.sink(resume).map_err(|e| SinkError::Config(e.to_string()))?,
                ))
            }
        }
    }

    fn build<'s>(
        &self,
        scope: Scope<'s, Time>,
        sources: &BTreeMap<String, Rows<'s>>,
        state: &mut StateRegistry,
    ) -> Built<'s> {
        let mut outputs: BTreeMap<String, Rows<'s>> = sources.clone();
        let mut dead_letters = Vec::new();
        for &i in &self.graph.order {
            let node = &self.pipeline.nodes[i];
            let name = node.name.value.as_str();
            let input = |r: &Spanned<String>| outputs.get(&r.value).cloned();
            let compiled = self.compiled.get(name).cloned().unwrap_or(Compiled::Nothing);
            match (&node.spec, compiled) {
                (NodeSpec::Filter { input: i, .. }, Compiled::Expr(expr)) => {
                    if let Some(rows) = input(i) {
                        let errors = self.filter_errors.get(name).cloned().unwrap_or_default();
                        outputs.insert(name.to_owned(), sluice_ops::filter_named(rows, &expr, errors, name));
                    }
                }
                (NodeSpec::Map { input: i, .. }, Compiled::Expr(expr)) => {
                    if let Some(rows) = input(i) {
                        let (rows, dead) = sluice_ops::map(rows, &expr, name);
                        outputs.insert(name.to_owned(), rows);
                        dead_letters.push(dead);
                    }
                }
                (NodeSpec::KeyBy { input: i, key }, _) => {
                    if let Some(rows) = input(i) {
                        let (rows, dead) = sluice_ops::key_by(rows, &key.fields, name);
                        outputs.insert(name.to_owned(), rows);
                        dead_letters.push(dead);
                    }
                }
                (NodeSpec::Latest { input: i, order_by }, _) => {
                    let append_only = self.append_only(&i.value);
                    if let Some(rows) = input(i) {
                        let order = match order_by {
                            Some(f) => sluice_ops::LatestOrder::Field(split_path(&f.value)),
                            None => sluice_ops::LatestOrder::Arrival,
                        };
                        outputs.insert(
                            name.to_owned(),
                            sluice_ops::latest(rows, order, append_only, name, state),
                        );
                    }
                }
                (NodeSpec::Join { left, right, kind }, _) => {
                    if let (Some(l), Some(r)) = (input(left), input(right)) {
                        outputs.insert(name.to_owned(), sluice_ops::join(l, r, *kind, name));
                    }
                }
                (NodeSpec::Count { input: i }, _) => {
                    if let Some(rows) = input(i) {
                        outputs.insert(name.to_owned(), sluice_ops::count(rows, name));
                    }
                }
                (NodeSpec::Aggregate { input: i, aggregates }, _) => {
                    let append_only = self.append_only(&i.value);
                    if let Some(rows) = input(i) {
                        let specs: Vec<sluice_ops::AggSpec> = aggregates
                            .iter()
                            .map(|a| sluice_ops::AggSpec {
                                name: a.name.clone(),
                                func: a.func,
                                field: a.field.clone(),
                            })
                            .collect();
                        let (rows, dead) = sluice_ops::aggregate(rows, &specs, append_only, name, state);
                        outputs.insert(name.to_owned(), rows);
                        dead_letters.push(dead);
                    }
                }
                (NodeSpec::Union { inputs }, _) => {
                    let all: Option<Vec<Rows<'s>>> = inputs.iter().map(input).collect();
                    if let Some(all) = all {
                        outputs.insert(name.to_owned(), sluice_ops::union_named(scope, all, name));
                    }
                }
                (NodeSpec::Delivery(d), Compiled::Delivery(config)) => {
                    if let Some(rows) = input(&d.input) {
                        let out = sluice_delivery::delivery(rows, &config, name, state);
                        outputs.insert(format!("{name}.unsubscribes"), out.unsubscribes);
                        outputs.insert(format!("{name}.token_replacements"), out.token_replacements);
                        outputs.insert(format!("{name}.error_stats"), out.error_stats);
                        outputs.insert(format!("{name}.alerts"), out.alerts);
                        dead_letters.push(out.errors);
                    }
                }
                (NodeSpec::Contacts(c), _) => {
                    if let (Some(changes), Some(contact_data)) = (input(&c.changes), input(&c.contact_data)) {
                        let (rows, errors, _state) =
                            sluice_contacts::contacts(changes, contact_data, name, state).split();
                        insert_outputs(&mut outputs, name, sluice_contacts::OUTPUTS, rows);
                        dead_letters.push(errors);
                    }
                }
                (NodeSpec::Cds(c), _) => {
                    // `None` when the snapshot was declared but not built (an upstream problem).
                    let snapshot = match &c.snapshot {
                        Some(r) => input(r).map(Some),
                        None => Some(None),
                    };
                    if let (Some(changes), Some(snapshot)) = (input(&c.changes), snapshot) {
                        let used = |o: &str| self.used.contains(&format!("{name}.{o}"));
                        let wanted = sluice_cds::Wanted {
                            cds_updates: used("cds_updates"),
                            accounts_by_uuid: used("accounts_by_uuid"),
                            directory: used("directory"),
                        };
                        let out = sluice_cds::cds(changes, snapshot, &wanted, name, state);
                        outputs.insert(format!("{name}.cds_updates"), out.cds_updates);
                        outputs.insert(format!("{name}.accounts_by_uuid"), out.accounts_by_uuid);
                        outputs.insert(format!("{name}.directory"), out.directory);
                        dead_letters.push(out.errors);
                    }
                }
                (NodeSpec::Fanout(f), _) => {
                    if let (Some(subscribers), Some(events)) = (input(&f.subscribers), input(&f.events)) {
                        let counters = self.fanout_counters.get(name).cloned().unwrap_or_default();
                        let (rows, errors) = sluice_fanout::fanout(subscribers, events, counters, name).split();
                        insert_outputs(&mut outputs, name, sluice_fanout::OUTPUTS, rows);
                        dead_letters.push(errors);
                    }
                }
                (NodeSpec::Messages(m), _) => {
                    if let Some(ops) = input(&m.ops) {
                        let (rows, errors) = sluice_messages::messages(ops, name, state).split();
                        insert_outputs(&mut outputs, name, sluice_messages::OUTPUTS, rows);
                        dead_letters.push(errors);
                    }
                }
                // Validation compiled every expression node; a mismatch here is a bug of ours.
                (spec, _) => tracing::error!(node = name, kind = spec.kind(), "node was not compiled; skipped"),
            }
        }
        Built { outputs, dead_letters }
    }
}

impl SluiceWiring {
    fn append_only(&self, reference: &str) -> bool {
        self.graph.shapes.get(reference).is_some_and(|s| s.append_only)
    }

    /// Whether every reader of `source` is the `changes` input of a `cds` node, so its
    /// decoder may drop the changes those nodes would drop (spec/cds.md, rule 5).
    fn only_cds_changes_read(&self, source: &str) -> bool {
        let p = &self.pipeline;
        let mut readers = p.nodes.iter().flat_map(|n| {
            n.spec
                .inputs()
                .into_iter()
                .filter(|r| r.value == source)
                .map(move |r| match &n.spec {
                    NodeSpec::Cds(c) => std::ptr::eq(r, &c.changes),
                    _ => false,
                })
        });
        let sinks_read = p.sinks.iter().any(|s| s.input.value == source);
        !sinks_read && readers.all(|cds_changes| cds_changes)
    }
}

/// Adds a multi-output node's collections as `name.output`, in the order of `names`.
fn insert_outputs<'s>(
    outputs: &mut BTreeMap<String, Rows<'s>>,
    name: &str,
    names: &[&str],
    rows: impl IntoIterator<Item = Rows<'s>>,
) {
    for (output, rows) in names.iter().zip(rows) {
        outputs.insert(format!("{name}.{output}"), rows);
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

/// A publish endpoint's answers, for a scrape.
fn expose_publish(source: &str, stats: &PublishStats, x: &mut Exposition) {
    let name = "sluice_publish_requests_total";
    x.family(name, Kind::Counter, "Publish requests answered, by status code.");
    for (status, n) in stats.answers() {
        x.sample(name, &[("source", source), ("status", &status.to_string())], n as f64);
    }
    x.histogram(
        "sluice_publish_accept_seconds",
        "How long each accepted publish took, from its request to its 200 (the log's fsync included).",
        &[("source", source)],
        &stats.accept_seconds,
    );
}

/// A webhook sink's counters, for a scrape.
fn expose_webhook(sink: &str, stats: &WebhookStats, x: &mut Exposition) {
    let load = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let labels = [("sink", sink)];
    for (name, kind, help, value) in [
        (
            "sluice_webhook_attempts_total",
            Kind::Counter,
            "Requests sent, retries included.",
            &stats.attempts,
        ),
        (
            "sluice_webhook_successes_total",
            Kind::Counter,
            "Deliveries answered with 2xx.",
            &stats.successes,
        ),
        (
            "sluice_webhook_retries_total",
            Kind::Counter,
            "Attempts scheduled again after a retryable failure.",
            &stats.retries,
        ),
        (
            "sluice_webhook_dead_letters_total",
            Kind::Counter,
            "Deliveries that failed for good.",
            &stats.dead_lettered,
        ),
        (
            "sluice_webhook_in_flight",
            Kind::Gauge,
            "Requests waiting for an answer now.",
            &stats.in_flight,
        ),
    ] {
        x.single(name, kind, help, &labels, load(value));
    }
    x.histogram(
        "sluice_webhook_attempt_seconds",
        "How long each request took, from sending to its answer or failure.",
        &labels,
        &stats.attempt_seconds,
    );
    x.histogram(
        "sluice_webhook_delivery_seconds",
        "How long each delivery took from entering the sink to success or dead letter, retries included.",
        &labels,
        &stats.delivery_seconds,
    );
}
