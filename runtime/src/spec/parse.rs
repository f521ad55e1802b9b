//! Reading a pipeline file into a [`Pipeline`], reporting every problem at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use toml_edit::{Document, TableLike};

use super::walk::{Walker, join};
use super::{
    AccountStreamSpec, AggFunc, AggregateDecl, AwsSpec, CdsSpec, ContactsSpec, DeliverySpec, DynamodbScanSpec,
    Envelope, FanoutSpec, FileSourceSpec, Format, HttpIngestSpec, JoinKind, KafkaSinkSpec, KafkaSourceSpec, KafkaStart,
    KeyFields, KinesisSinkSpec, KinesisSourceSpec, KinesisStart, Loc, MessagesServiceSpec, MessagesSpec, NodeDecl,
    NodeSpec, Pipeline, Problem, ServedSinkSpec, ServerSpec, SinkDecl, SinkMode, SinkTarget, SourceDecl, SourceSpec,
    Spanned, TlsSpec, TrimmedPolicy, WebhookSinkSpec,
};

const TOP_KEYS: &[&str] = &["pipeline", "dead_letters", "sources", "nodes", "sinks", "server"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "workers",
    "epoch_ms",
    "checkpoint_dir",
    "checkpoint_interval_ms",
];
const SOURCE_TYPES: &[&str] = &["file", "kafka", "kinesis", "dynamodb-scan", "http-ingest"];
/// Keys of an `http-ingest` source besides the common ones.
const INGEST_SOURCE_KEYS: &[&str] = &[
    "listen",
    "log_dir",
    "jwt_secret",
    "max_body_bytes",
    "max_in_flight_bytes",
    "body_timeout_ms",
    "partitions",
    "segment_bytes",
    "tls",
];
/// Keys of a `kinesis` source besides the common ones.
const KINESIS_SOURCE_KEYS: &[&str] = &[
    "stream",
    "region",
    "endpoint",
    "start",
    "on_trimmed",
    "bounded",
    "shard_refresh_ms",
];
/// Keys of a `dynamodb-scan` source besides the common ones.
const SCAN_SOURCE_KEYS: &[&str] = &["table", "region", "endpoint", "segments", "projection", "page_size"];
/// Keys of a `kinesis` sink target.
const KINESIS_SINK_KEYS: &[&str] = &["stream", "region", "endpoint"];
const NODE_TYPES: &[&str] = &[
    "filter",
    "map",
    "key_by",
    "latest",
    "join",
    "count",
    "aggregate",
    "union",
    "delivery",
    "contacts",
    "cds",
    "fanout",
    "messages",
];
const SINK_TYPES: &[&str] = &["file", "stdout", "discard", "kafka", "served", "kinesis", "webhook"];
/// Keys of a `webhook` sink target.
const WEBHOOK_SINK_KEYS: &[&str] = &[
    "timeout_ms",
    "max_attempts",
    "max_age_ms",
    "initial_backoff_ms",
    "max_backoff_ms",
    "per_target_concurrency",
    "max_in_flight",
    "max_queued",
    "max_pending_per_target",
    "allow_private_targets",
    "dead_letters",
];
/// Keys of a `served` sink target.
const SERVED_SINK_KEYS: &[&str] = &["partition_by", "version_field", "retention_ms"];
/// Keys of the `[server]` section.
const SERVER_KEYS: &[&str] = &[
    "grpc",
    "http",
    "token_key",
    "subscribe_auth_token",
    "client_buffer",
    "stall_timeout_ms",
    "account_stream",
    "messages",
    "tls",
];
/// Keys of a `kafka` source besides the common ones.
const KAFKA_SOURCE_KEYS: &[&str] = &["brokers", "topic", "topics", "group_id", "start", "bounded", "options"];
/// Keys of a `kafka` sink target.
const KAFKA_SINK_KEYS: &[&str] = &["brokers", "topic", "delivery_timeout_ms", "options"];

/// Parses pipeline `text` read from `file`; `env` resolves `${VAR}` references.
///
/// Returns every problem found (unknown keys, wrong types, missing keys, bad names, missing
/// variables), sorted by position, or the pipeline when there are none. Graph-level checks
/// are [`super::check`]'s.
pub fn parse(file: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Pipeline, Vec<Problem>> {
    let parsed = parse_partial(file, text, env);
    if parsed.problems.is_empty() {
        parsed.pipeline.ok_or_else(Vec::new)
    } else {
        Err(parsed.problems)
    }
}

/// What [`parse_partial`] could make of a file: every element that parsed, the problems,
/// and the names of elements that did not parse (so graph checks can skip references to
/// them instead of reporting them twice).
pub struct Parsed {
    /// The pipeline without the elements that failed; `None` if the file is not TOML.
    pub pipeline: Option<Pipeline>,
    /// Every problem found, sorted by position.
    pub problems: Vec<Problem>,
    /// Names of sources and nodes that failed to parse.
    pub broken: BTreeSet<String>,
    /// Names of sinks that failed to parse.
    pub broken_sinks: BTreeSet<String>,
}

/// Parses as much of the file as possible, so that later checks can report their problems
/// in the same run instead of one round of fixes at a time.
pub fn parse_partial(file: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Parsed {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let mut w = Walker::new(file, text, env);
            w.problem(e.span(), "", format!("not valid TOML: {}", e.message().trim()));
            return Parsed {
                pipeline: None,
                problems: w.problems,
                broken: BTreeSet::new(),
                broken_sinks: BTreeSet::new(),
            };
        }
    };
    let mut w = Walker::new(file, text, env);
    let root: &dyn TableLike = doc.as_table();
    w.deny_unknown(root, "", TOP_KEYS);

    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let default_name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".to_owned());
    let (mut name, mut workers, mut epoch_ms) = (default_name, 1, 50);
    let (mut checkpoint_dir, mut checkpoint_interval_ms) = (None, 10_000);
    if let Some(p) = w.table(root, "pipeline", "") {
        w.deny_unknown(p, "pipeline", PIPELINE_KEYS);
        if let Some(n) = w.string(p, "name", "pipeline") {
            name = n.value;
        }
        if let Some(n) = w.uint(p, "workers", "pipeline", 1..=1024) {
            workers = n.value as usize;
        }
        if let Some(n) = w.uint(p, "epoch_ms", "pipeline", 1..=60_000) {
            epoch_ms = n.value;
        }
        if let Some(d) = w.string(p, "checkpoint_dir", "pipeline") {
            checkpoint_dir = Some(resolve(&base_dir, &d.value));
        }
        if let Some(n) = w.uint(p, "checkpoint_interval_ms", "pipeline", 100..=86_400_000) {
            checkpoint_interval_ms = n.value;
        }
    }

    let dead_letters = match w.table(root, "dead_letters", "") {
        Some(t) => {
            let loc = w.key_loc(root, "dead_letters");
            w.deny_unknown(t, "dead_letters", &[&["type", "path"][..], KAFKA_SINK_KEYS].concat());
            match sink_target(&mut w, t, "dead_letters", loc, &base_dir) {
                Some(SinkTarget::Served(_)) => {
                    let at = w.key_loc(t, "type").unwrap_or_default();
                    w.problem_at(
                        at,
                        "dead_letters.type",
                        "dead letters cannot be a served view: use a file, stdout or kafka",
                    );
                    SinkTarget::Stdout
                }
                Some(target) => target,
                None => SinkTarget::Stdout,
            }
        }
        None => SinkTarget::File {
            path: PathBuf::from("dead-letters.jsonl"),
        },
    };

    let mut broken = BTreeSet::new();
    let mut sources = Vec::new();
    let pipeline_name = name.clone();
    for (name, t, loc) in named_tables(&mut w, root, "sources", &mut broken) {
        let n = name.value.clone();
        match source(&mut w, name, t, loc, (&base_dir, &pipeline_name)) {
            Some(s) => sources.push(s),
            None => drop(broken.insert(n)),
        }
    }
    let mut nodes = Vec::new();
    for (name, t, loc) in named_tables(&mut w, root, "nodes", &mut broken) {
        let n = name.value.clone();
        match node(&mut w, name, t, loc, &base_dir) {
            Some(node) => nodes.push(node),
            None => drop(broken.insert(n)),
        }
    }
    let mut sinks = Vec::new();
    let mut broken_sinks = BTreeSet::new();
    for (name, t, loc) in named_tables(&mut w, root, "sinks", &mut broken_sinks) {
        let n = name.value.clone();
        match sink(&mut w, name, t, loc, &base_dir) {
            Some(s) => sinks.push(s),
            None => drop(broken_sinks.insert(n)),
        }
    }

    let server = w.table(root, "server", "").and_then(|t| {
        let loc = w.key_loc(root, "server").unwrap_or_default();
        server(&mut w, t, loc, &base_dir)
    });

    let mut problems = w.problems;
    problems.sort();
    problems.dedup();
    Parsed {
        pipeline: Some(Pipeline {
            file: file.to_path_buf(),
            base_dir,
            name,
            workers,
            epoch_ms,
            checkpoint_dir,
            checkpoint_interval_ms,
            dead_letters,
            sources,
            nodes,
            sinks,
            server,
        }),
        problems,
        broken,
        broken_sinks,
    }
}

/// The entries of a table of named tables (`[sources.x]`, `[nodes.y]`), with valid names.
fn named_tables<'d>(
    w: &mut Walker,
    root: &'d dyn TableLike,
    section: &str,
    broken: &mut BTreeSet<String>,
) -> Vec<(Spanned<String>, &'d dyn TableLike, Option<Loc>)> {
    let Some(table) = w.table(root, section, "") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, item) in table.iter() {
        let path = join(section, key);
        let loc = w.key_loc(table, key);
        let Some(t) = item.as_table_like() else {
            w.problem(
                item.span(),
                &path,
                format!("expected a table: write it as `[{section}.{key}]` with its keys below"),
            );
            broken.insert(key.to_owned());
            continue;
        };
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            w.problem_at(
                loc.unwrap_or_default(),
                &path,
                format!("`{key}` is not a valid name: use letters, digits, `_` and `-`, starting with a letter"),
            );
            broken.insert(key.to_owned());
            continue;
        }
        let name = Spanned {
            value: key.to_owned(),
            loc: loc.unwrap_or_default(),
            path,
        };
        out.push((name, t, loc));
    }
    out
}

/// The `type` of an element, checked against the allowed kinds.
fn kind(w: &mut Walker, t: &dyn TableLike, path: &str, loc: Option<Loc>, allowed: &[&str]) -> Option<String> {
    let ty = required(w, t, "type", path, loc)?;
    if allowed.contains(&ty.value.as_str()) {
        return Some(ty.value);
    }
    let hint = super::walk::nearest(&ty.value, allowed)
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    w.problem_at(
        ty.loc,
        &ty.path,
        format!("unknown type `{}`{hint} (one of: {})", ty.value, allowed.join(", ")),
    );
    None
}

/// A required key, reported at the table header when missing.
fn required(w: &mut Walker, t: &dyn TableLike, key: &str, path: &str, loc: Option<Loc>) -> Option<Spanned<String>> {
    if t.get(key).is_none() {
        w.problem_at(
            loc.unwrap_or_default(),
            &join(path, key),
            format!("missing required key `{key}`"),
        );
        return None;
    }
    w.string(t, key, path)
}

fn key_fields(w: &mut Walker, t: &dyn TableLike, key: &str, path: &str) -> Option<KeyFields> {
    let list = w.string_list(t, key, path)?;
    if list.value.is_empty() {
        w.problem_at(list.loc, &list.path, "a key needs at least one field");
        return None;
    }
    let mut fields = Vec::new();
    for f in &list.value {
        let parts: Vec<String> = f.value.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            w.problem_at(
                f.loc,
                &f.path,
                format!("`{}` is not a field path: write `field` or `outer.inner`", f.value),
            );
            return None;
        }
        fields.push(parts);
    }
    Some(KeyFields {
        fields,
        loc: list.loc,
        path: list.path,
    })
}

fn source(
    w: &mut Walker,
    name: Spanned<String>,
    t: &dyn TableLike,
    loc: Option<Loc>,
    (base, pipeline): (&Path, &str),
) -> Option<SourceDecl> {
    let path = name.path.clone();
    let ty = kind(w, t, &path, loc, SOURCE_TYPES);
    let common = ["type", "format", "envelope", "key", "deleted_field", "start_after"];
    let spec = match ty.as_deref() {
        Some("file") => {
            w.deny_unknown(
                t,
                &path,
                &[&common[..], &["path", "follow", "reload", "poll_ms"]].concat(),
            );
            let file = required(w, t, "path", &path, loc);
            let follow = w.bool(t, "follow", &path).is_some_and(|b| b.value);
            let reload = w.bool(t, "reload", &path);
            if let Some(r) = reload.as_ref().filter(|r| r.value) {
                if follow {
                    w.problem_at(
                        r.loc,
                        &r.path,
                        "`reload` and `follow` exclude each other: a reloaded file is a whole table, a followed one a log",
                    );
                }
                if w.string(t, "envelope", &path).is_none_or(|e| e.value != "upsert") {
                    w.problem_at(
                        r.loc,
                        &r.path,
                        "a reloaded file is a table: it needs `envelope = \"upsert\"` and `key`",
                    );
                }
            }
            let poll_ms = w.uint(t, "poll_ms", &path, 1..=600_000).map_or(100, |p| p.value);
            file.map(|mut f| {
                f.value = resolve(base, &f.value).to_string_lossy().into_owned();
                SourceSpec::File(FileSourceSpec {
                    path: f,
                    follow,
                    reload: reload.is_some_and(|r| r.value),
                    poll_ms,
                })
            })
        }
        Some("http-ingest") => {
            w.deny_unknown(t, &path, &[&common[..], INGEST_SOURCE_KEYS].concat());
            http_ingest_source(w, t, &path, loc, base).map(SourceSpec::HttpIngest)
        }
        Some("kafka") => {
            w.deny_unknown(t, &path, &[&common[..], KAFKA_SOURCE_KEYS].concat());
            kafka_source(w, t, &path, loc, pipeline).map(SourceSpec::Kafka)
        }
        Some("kinesis") => {
            w.deny_unknown(t, &path, &[&common[..], KINESIS_SOURCE_KEYS].concat());
            kinesis_source(w, t, &path, loc).map(SourceSpec::Kinesis)
        }
        Some("dynamodb-scan") => {
            w.deny_unknown(t, &path, &[&common[..], SCAN_SOURCE_KEYS].concat());
            scan_source(w, t, &path, loc).map(SourceSpec::DynamodbScan)
        }
        _ => None,
    };
    let message_keyed = ty.as_deref() == Some("kafka");
    let format = match ty.as_deref() {
        // A scan yields DynamoDB items, in DynamoDB's JSON: nothing else would decode.
        Some("dynamodb-scan") => match format(w, t, &path, &[Format::DynamodbItem]) {
            Some(_) if w.key_loc(t, "format").is_none() => Some(Format::DynamodbItem),
            f => f.map(|f| f.value),
        },
        // The publish log holds JSON lines `{"topic", "data"}`, and a reloaded table is read
        // into JSON rows, whatever its file's syntax.
        Some("http-ingest") => format(w, t, &path, &[Format::Json]).map(|f| f.value),
        Some("file") if w.bool(t, "reload", &path).is_some_and(|r| r.value) => {
            format(w, t, &path, &[Format::Json]).map(|f| f.value)
        }
        _ => format(w, t, &path, Format::ALL.as_slice()).map(|f| f.value),
    };
    let key = key_fields(w, t, "key", &path);
    let deleted_field = w.string(t, "deleted_field", &path);
    let envelope = match w.string(t, "envelope", &path) {
        None => Some("append".to_owned()),
        Some(e) if e.value == "append" || e.value == "upsert" => Some(e.value),
        Some(e) => {
            w.problem_at(
                e.loc,
                &e.path,
                format!("unknown envelope `{}` (one of: append, upsert)", e.value),
            );
            None
        }
    };
    let envelope = match envelope.as_deref() {
        Some("upsert") => match key {
            Some(key) => Some(Envelope::Upsert {
                key: Some(key),
                deleted_field: deleted_field.map(|d| d.value),
            }),
            // Kafka records carry their key: without `key` fields, the message key is the key.
            None if message_keyed => Some(Envelope::Upsert {
                key: None,
                deleted_field: deleted_field.map(|d| d.value),
            }),
            None => {
                w.problem_at(
                    loc.unwrap_or_default(),
                    &join(&path, "key"),
                    "the upsert envelope needs `key`: the fields that identify a record",
                );
                None
            }
        },
        Some(_) => {
            if let Some(d) = deleted_field {
                w.problem_at(d.loc, &d.path, "`deleted_field` only applies to the upsert envelope");
            }
            Some(Envelope::Append { key })
        }
        None => None,
    };
    let start_after = w
        .string_list(t, "start_after", &path)
        .map(|l| l.value)
        .unwrap_or_default();
    if let (Some(SourceSpec::Kafka(k)), Some(Envelope::Upsert { .. })) = (&spec, &envelope)
        && k.start == KafkaStart::Committed
    {
        // The upsert state of the keys read before the commit is not in the topic's tail.
        let at = w.key_loc(t, "start").or(loc).unwrap_or_default();
        w.problem_at(
            at,
            &join(&path, "start"),
            "an upsert source rebuilds its table from its whole topic: use start = \"earliest\" \
             (\"committed\" would skip every key written before the committed offset)",
        );
        return None;
    }
    Some(SourceDecl {
        name,
        spec: spec?,
        format: format?,
        envelope: envelope?,
        start_after,
    })
}

/// The keys of a `kafka` source (`path` is the source's key path).
fn kafka_source(
    w: &mut Walker,
    t: &dyn TableLike,
    path: &str,
    loc: Option<Loc>,
    pipeline: &str,
) -> Option<KafkaSourceSpec> {
    let brokers = required(w, t, "brokers", path, loc);
    let topics = match (w.string_list(t, "topics", path), w.string(t, "topic", path)) {
        (Some(list), None) if !list.value.is_empty() => Some(list.value.into_iter().map(|s| s.value).collect()),
        (Some(list), None) => {
            w.problem_at(list.loc, &list.path, "`topics` needs at least one topic");
            None
        }
        (None, Some(one)) => Some(vec![one.value]),
        (Some(list), Some(_)) => {
            w.problem_at(list.loc, &list.path, "give either `topic` or `topics`, not both");
            None
        }
        (None, None) => {
            w.problem_at(
                loc.unwrap_or_default(),
                &join(path, "topic"),
                "missing required key `topic` (or `topics`)",
            );
            None
        }
    };
    let group_id = w
        .string(t, "group_id", path)
        .map_or_else(|| format!("sluice-{pipeline}"), |g| g.value);
    let start = match w.string(t, "start", path) {
        None => Some(None),
        Some(s) => match s.value.as_str() {
            "earliest" => Some(Some(KafkaStart::Earliest)),
            "latest" => Some(Some(KafkaStart::Latest)),
            "committed" => Some(Some(KafkaStart::Committed)),
            other => {
                w.problem_at(
                    s.loc,
                    &s.path,
                    format!("unknown start `{other}` (one of: earliest, latest, committed)"),
                );
                None
            }
        },
    };
    let bounded = w.bool(t, "bounded", path).is_some_and(|b| b.value);
    // Append sources resume where the group's commit says by default; upsert sources must
    // read their whole topic (the envelope check enforces it), and a bounded run is a
    // backfill of what the topic holds.
    let upsert = w.string(t, "envelope", path).is_some_and(|e| e.value == "upsert");
    let default_start = if upsert || bounded {
        KafkaStart::Earliest
    } else {
        KafkaStart::Committed
    };
    if bounded && start == Some(Some(KafkaStart::Committed)) {
        let at = w.key_loc(t, "start").unwrap_or_default();
        w.problem_at(
            at,
            &join(path, "start"),
            "a bounded Kafka source reads from \"earliest\" or \"latest\"; \"committed\" is for continuous runs",
        );
        return None;
    }
    let options = string_table(w, t, "options", path);
    Some(KafkaSourceSpec {
        brokers: brokers?.value,
        topics: topics?,
        group_id,
        start: start?.unwrap_or(default_start),
        bounded,
        options: options?,
    })
}

/// A table of string values (`options = { "fetch.min.bytes" = "1" }`), in file order.
fn string_table(w: &mut Walker, t: &dyn TableLike, key: &str, path: &str) -> Option<Vec<(String, String)>> {
    let Some(table) = w.table(t, key, path) else {
        return Some(Vec::new());
    };
    let at = join(path, key);
    let mut out = Vec::new();
    let mut ok = true;
    for (name, _) in table.iter() {
        match w.string(table, name, &at) {
            Some(v) => out.push((name.to_owned(), v.value)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Reads `format` (default `json`), accepting only `allowed`.
fn format(w: &mut Walker, t: &dyn TableLike, path: &str, allowed: &[Format]) -> Option<Spanned<Format>> {
    let Some(f) = w.string(t, "format", path) else {
        return Some(Spanned {
            value: Format::Json,
            loc: Loc::default(),
            path: join(path, "format"),
        });
    };
    match allowed.iter().find(|a| a.name() == f.value) {
        Some(&value) => Some(Spanned {
            value,
            loc: f.loc,
            path: f.path,
        }),
        None => {
            let names: Vec<&str> = allowed.iter().map(Format::name).collect();
            let hint = if Format::ALL.iter().any(|a| a.name() == f.value) {
                " here".to_owned()
            } else {
                String::new()
            };
            w.problem_at(
                f.loc,
                &f.path,
                format!("unknown format `{}`{hint} (one of: {})", f.value, names.join(", ")),
            );
            None
        }
    }
}

fn node(w: &mut Walker, name: Spanned<String>, t: &dyn TableLike, loc: Option<Loc>, base: &Path) -> Option<NodeDecl> {
    let path = name.path.clone();
    let ty = kind(w, t, &path, loc, NODE_TYPES)?;
    let allowed: &[&str] = match ty.as_str() {
        "filter" | "map" => &["type", "input", "expr"],
        "key_by" => &["type", "input", "key"],
        "latest" => &["type", "input", "order_by"],
        "join" => &["type", "left", "right", "kind"],
        "count" => &["type", "input"],
        "aggregate" => &["type", "input", "aggregates"],
        "union" => &["type", "inputs"],
        "contacts" => &["type", "changes", "contact_data"],
        "cds" => &["type", "changes", "snapshot"],
        "fanout" => &["type", "subscribers", "events"],
        "messages" => &["type", "ops"],
        _ => &[
            "type",
            "input",
            "classification",
            "guard_share",
            "guard_window_ms",
            "guard_min_reports",
        ],
    };
    w.deny_unknown(t, &path, allowed);
    let spec = match ty.as_str() {
        "filter" | "map" => {
            let input = required(w, t, "input", &path, loc);
            let expr = required(w, t, "expr", &path, loc);
            let (input, expr) = (input?, expr?);
            if ty == "filter" {
                NodeSpec::Filter { input, expr }
            } else {
                NodeSpec::Map { input, expr }
            }
        }
        "key_by" => {
            let input = required(w, t, "input", &path, loc);
            if t.get("key").is_none() {
                w.problem_at(
                    loc.unwrap_or_default(),
                    &join(&path, "key"),
                    "missing required key `key`",
                );
            }
            let key = key_fields(w, t, "key", &path);
            NodeSpec::KeyBy {
                input: input?,
                key: key?,
            }
        }
        "latest" => {
            let input = required(w, t, "input", &path, loc);
            let order_by = w.string(t, "order_by", &path);
            NodeSpec::Latest {
                input: input?,
                order_by,
            }
        }
        "join" => {
            let left = required(w, t, "left", &path, loc);
            let right = required(w, t, "right", &path, loc);
            let kind = match w.string(t, "kind", &path) {
                None => Some(JoinKind::Inner),
                Some(k) if k.value == "inner" => Some(JoinKind::Inner),
                Some(k) if k.value == "left" => Some(JoinKind::Left),
                Some(k) => {
                    w.problem_at(
                        k.loc,
                        &k.path,
                        format!("unknown join kind `{}` (one of: inner, left)", k.value),
                    );
                    None
                }
            };
            NodeSpec::Join {
                left: left?,
                right: right?,
                kind: kind?,
            }
        }
        "count" => NodeSpec::Count {
            input: required(w, t, "input", &path, loc)?,
        },
        "aggregate" => {
            let input = required(w, t, "input", &path, loc);
            let aggregates = aggregates(w, t, &path, loc);
            NodeSpec::Aggregate {
                input: input?,
                aggregates: aggregates?,
            }
        }
        "union" => {
            if t.get("inputs").is_none() {
                w.problem_at(
                    loc.unwrap_or_default(),
                    &join(&path, "inputs"),
                    "missing required key `inputs`",
                );
                return None;
            }
            let inputs = w.string_list(t, "inputs", &path)?;
            if inputs.value.len() < 2 {
                w.problem_at(inputs.loc, &inputs.path, "a union needs at least two inputs");
                return None;
            }
            NodeSpec::Union { inputs: inputs.value }
        }
        "contacts" => {
            let changes = required(w, t, "changes", &path, loc);
            let contact_data = required(w, t, "contact_data", &path, loc);
            NodeSpec::Contacts(ContactsSpec {
                changes: changes?,
                contact_data: contact_data?,
            })
        }
        "cds" => {
            let changes = required(w, t, "changes", &path, loc);
            let snapshot = w.string(t, "snapshot", &path);
            NodeSpec::Cds(CdsSpec {
                changes: changes?,
                snapshot,
            })
        }
        "fanout" => {
            let subscribers = required(w, t, "subscribers", &path, loc);
            let events = required(w, t, "events", &path, loc);
            NodeSpec::Fanout(FanoutSpec {
                subscribers: subscribers?,
                events: events?,
            })
        }
        "messages" => NodeSpec::Messages(MessagesSpec {
            ops: required(w, t, "ops", &path, loc)?,
        }),
        _ => {
            let input = required(w, t, "input", &path, loc);
            let classification = w.string(t, "classification", &path).map(|c| Spanned {
                value: resolve(base, &c.value),
                loc: c.loc,
                path: c.path,
            });
            let guard_share = w.float(t, "guard_share", &path, 0.0, 1.0);
            let guard_window_ms = w.uint(t, "guard_window_ms", &path, 1..=u64::from(u32::MAX));
            let guard_min_reports = w.uint(t, "guard_min_reports", &path, 1..=u64::from(u32::MAX));
            NodeSpec::Delivery(DeliverySpec {
                input: input?,
                classification,
                guard_share,
                guard_window_ms,
                guard_min_reports,
            })
        }
    };
    Some(NodeDecl { name, spec })
}

fn aggregates(w: &mut Walker, t: &dyn TableLike, path: &str, loc: Option<Loc>) -> Option<Vec<AggregateDecl>> {
    let Some(aggs) = w.table(t, "aggregates", path) else {
        if t.get("aggregates").is_none() {
            w.problem_at(
                loc.unwrap_or_default(),
                &join(path, "aggregates"),
                "missing required key `aggregates`, e.g. `aggregates = { total = { func = \"sum\", field = \"amount\" } }`",
            );
        }
        return None;
    };
    let apath = join(path, "aggregates");
    if aggs.is_empty() {
        w.problem_at(loc.unwrap_or_default(), &apath, "at least one aggregate is needed");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (name, item) in aggs.iter() {
        let p = join(&apath, name);
        let aloc = w.key_loc(aggs, name).unwrap_or_default();
        let Some(a) = item.as_table_like() else {
            w.problem_at(
                aloc,
                &p,
                "expected a table like `{ func = \"sum\", field = \"amount\" }`",
            );
            ok = false;
            continue;
        };
        w.deny_unknown(a, &p, &["func", "field"]);
        let func = match required(w, a, "func", &p, Some(aloc)) {
            Some(f) => match f.value.as_str() {
                "count" => Some(AggFunc::Count),
                "sum" => Some(AggFunc::Sum),
                "min" => Some(AggFunc::Min),
                "max" => Some(AggFunc::Max),
                other => {
                    w.problem_at(
                        f.loc,
                        &f.path,
                        format!("unknown function `{other}` (one of: count, sum, min, max)"),
                    );
                    None
                }
            },
            None => None,
        };
        let field = w.string(a, "field", &p);
        match (func, field) {
            (Some(AggFunc::Count), None) => out.push(AggregateDecl {
                name: name.to_owned(),
                func: AggFunc::Count,
                field: None,
                loc: aloc,
                path: p,
            }),
            (Some(func), Some(f)) => out.push(AggregateDecl {
                name: name.to_owned(),
                func,
                field: Some(f.value.split('.').map(str::to_owned).collect()),
                loc: aloc,
                path: p,
            }),
            (Some(_), None) => {
                w.problem_at(
                    aloc,
                    &join(&p, "field"),
                    "missing required key `field`: the field to aggregate",
                );
                ok = false;
            }
            (None, _) => ok = false,
        }
    }
    ok.then_some(out)
}

fn sink(w: &mut Walker, name: Spanned<String>, t: &dyn TableLike, loc: Option<Loc>, base: &Path) -> Option<SinkDecl> {
    let path = name.path.clone();
    w.deny_unknown(
        t,
        &path,
        &[
            &["type", "input", "mode", "path", "format"][..],
            KAFKA_SINK_KEYS,
            SERVED_SINK_KEYS,
            KINESIS_SINK_KEYS,
            WEBHOOK_SINK_KEYS,
        ]
        .concat(),
    );
    let input = required(w, t, "input", &path, loc);
    let encodable: Vec<Format> = Format::ALL.into_iter().filter(Format::encodes).collect();
    let format = format(w, t, &path, &encodable);
    let target = sink_target(w, t, &path, loc, base);
    let mode = match required(w, t, "mode", &path, loc) {
        Some(m) => match m.value.as_str() {
            "upsert" => Some(SinkMode::Upsert),
            "changelog" => Some(SinkMode::Changelog),
            "append" => Some(SinkMode::Append),
            other => {
                w.problem_at(
                    m.loc,
                    &m.path,
                    format!("unknown mode `{other}` (one of: upsert, changelog, append)"),
                );
                None
            }
        }
        .map(|value| Spanned {
            value,
            loc: m.loc,
            path: m.path,
        }),
        None => None,
    };
    let mut target = target;
    match &mut target {
        Some(SinkTarget::Served(spec)) => spec.name = name.value.clone(),
        Some(SinkTarget::Webhook(spec)) => spec.name = name.value.clone(),
        _ => {}
    }
    if let (Some(SinkTarget::Webhook(_)), Some(m)) = (&target, &mode)
        && m.value != SinkMode::Append
    {
        w.problem_at(
            m.loc,
            &m.path,
            "a webhook sink sends each delivery once: its mode must be `append`",
        );
    }
    if let (Some(SinkTarget::Served(_)), Some(m)) = (&target, &mode)
        && m.value != SinkMode::Upsert
    {
        w.problem_at(
            m.loc,
            &m.path,
            "a served view keeps each key's latest value: its mode must be `upsert`",
        );
    }
    Some(SinkDecl {
        name,
        input: input?,
        mode: mode?,
        format: format?,
        target: target?,
    })
}

fn sink_target(w: &mut Walker, t: &dyn TableLike, path: &str, loc: Option<Loc>, base: &Path) -> Option<SinkTarget> {
    let ty = kind(w, t, path, loc, SINK_TYPES)?;
    // Keys of the other kinds are refused by name, so a `path` on a Kafka sink is not ignored.
    let owned: [(&str, &[&str]); 5] = [
        ("file", &["path"]),
        ("kafka", KAFKA_SINK_KEYS),
        ("served", SERVED_SINK_KEYS),
        ("kinesis", KINESIS_SINK_KEYS),
        ("webhook", WEBHOOK_SINK_KEYS),
    ];
    let own: &[&str] = owned
        .iter()
        .find(|(owner, _)| *owner == ty)
        .map_or(&[], |(_, keys)| keys);
    for (owner, keys) in owned.into_iter().filter(|(owner, _)| *owner != ty) {
        // A key of this kind too (`region`, `endpoint` of the AWS kinds) is not another's.
        for key in keys.iter().filter(|k| !own.contains(k)) {
            if let Some(at) = w.key_loc(t, key) {
                w.problem_at(
                    at,
                    &join(path, key),
                    format!("`{key}` only applies to `type = \"{owner}\"`"),
                );
            }
        }
    }
    match ty.as_str() {
        "file" => required(w, t, "path", path, loc).map(|p| SinkTarget::File {
            path: resolve(base, &p.value),
        }),
        "kafka" => {
            let brokers = required(w, t, "brokers", path, loc);
            let topic = required(w, t, "topic", path, loc);
            let delivery_timeout_ms = w
                .uint(t, "delivery_timeout_ms", path, 0..=86_400_000)
                .map_or(0, |d| d.value);
            let options = string_table(w, t, "options", path);
            Some(SinkTarget::Kafka(KafkaSinkSpec {
                brokers: brokers?.value,
                topic: topic?.value,
                delivery_timeout_ms,
                options: options?,
            }))
        }
        "discard" => Some(SinkTarget::Discard),
        "kinesis" => {
            let stream = required(w, t, "stream", path, loc);
            let aws = aws(w, t, path);
            Some(SinkTarget::Kinesis(KinesisSinkSpec {
                stream: stream?.value,
                aws,
            }))
        }
        "webhook" => webhook_sink(w, t, path, loc, base).map(SinkTarget::Webhook),
        "served" => Some(SinkTarget::Served(ServedSinkSpec {
            // Set by `sink`, which knows the name.
            name: String::new(),
            partition_by: w.string(t, "partition_by", path),
            version_field: w.string(t, "version_field", path),
            retention_ms: w.uint(t, "retention_ms", path, 1..=u64::MAX).map(|r| r.value),
        })),
        _ => Some(SinkTarget::Stdout),
    }
}

/// The keys of an `http-ingest` source.
fn http_ingest_source(
    w: &mut Walker,
    t: &dyn TableLike,
    path: &str,
    loc: Option<Loc>,
    base: &Path,
) -> Option<HttpIngestSpec> {
    let listen = required(w, t, "listen", path, loc);
    let log_dir = required(w, t, "log_dir", path, loc);
    let secret = required(w, t, "jwt_secret", path, loc);
    if let Some(s) = secret.as_ref().filter(|s| s.value.len() < 16) {
        w.problem_at(
            s.loc,
            &s.path,
            "a publish secret needs at least 16 bytes: tokens signed with a short one can be guessed",
        );
    }
    let max_body_bytes = w
        .uint(t, "max_body_bytes", path, 1024..=(256 << 20))
        .map_or(1 << 20, |n| n.value);
    let max_in_flight_bytes = match w.uint(t, "max_in_flight_bytes", path, 1024..=(1 << 40)) {
        Some(n) if n.value < max_body_bytes => {
            w.problem_at(
                n.loc,
                &n.path,
                format!(
                    "must be at least max_body_bytes ({max_body_bytes}): a body of the largest size allowed could never be taken"
                ),
            );
            n.value
        }
        Some(n) => n.value,
        None => (64 << 20).max(max_body_bytes),
    };
    let body_timeout_ms = w
        .uint(t, "body_timeout_ms", path, 100..=3_600_000)
        .map_or(30_000, |n| n.value);
    let partitions = w.uint(t, "partitions", path, 1..=256).map_or(1, |n| n.value as u32);
    let segment_bytes = w
        .uint(t, "segment_bytes", path, 4096..=(1 << 40))
        .map_or(64 << 20, |n| n.value);
    let tls = tls(w, t, path, base);
    Some(HttpIngestSpec {
        tls,
        listen: listen?,
        log_dir: resolve(base, &log_dir?.value),
        jwt_secret: secret?.value,
        max_body_bytes,
        max_in_flight_bytes,
        body_timeout_ms,
        partitions,
        segment_bytes,
    })
}

/// The `tls` table of an endpoint (`cert`, `key`), if any.
fn tls(w: &mut Walker, t: &dyn TableLike, path: &str, base: &Path) -> Option<TlsSpec> {
    let table = w.table(t, "tls", path)?;
    let (at, tls_path) = (w.key_loc(t, "tls"), join(path, "tls"));
    w.deny_unknown(table, &tls_path, &["cert", "key"]);
    let cert = required(w, table, "cert", &tls_path, at);
    let key = required(w, table, "key", &tls_path, at);
    Some(TlsSpec {
        cert: resolve(base, &cert?.value),
        key: resolve(base, &key?.value),
    })
}

/// The keys of a `webhook` sink, with its `dead_letters` table.
fn webhook_sink(
    w: &mut Walker,
    t: &dyn TableLike,
    path: &str,
    loc: Option<Loc>,
    base: &Path,
) -> Option<WebhookSinkSpec> {
    let ms = |w: &mut Walker, key: &str, range: std::ops::RangeInclusive<u64>, default: u64| {
        w.uint(t, key, path, range).map_or(default, |n| n.value)
    };
    let timeout_ms = ms(w, "timeout_ms", 1..=600_000, 10_000);
    let max_attempts = ms(w, "max_attempts", 1..=1000, 25) as u32;
    let max_age_ms = ms(w, "max_age_ms", 1..=30 * 86_400_000, 3 * 86_400_000);
    let initial_backoff_ms = ms(w, "initial_backoff_ms", 1..=86_400_000, 1000);
    let max_backoff_ms = ms(w, "max_backoff_ms", 1..=7 * 86_400_000, 6 * 3_600_000);
    let per_target_concurrency = ms(w, "per_target_concurrency", 1..=1024, 8) as u32;
    let max_in_flight = ms(w, "max_in_flight", 1..=65_536, 256) as u32;
    let max_queued = ms(w, "max_queued", 1..=100_000_000, 100_000);
    let max_pending_per_target = ms(w, "max_pending_per_target", 1..=100_000_000, 10_000);
    let allow_private_targets = w.bool(t, "allow_private_targets", path).is_some_and(|b| b.value);
    let dl_path = join(path, "dead_letters");
    let dead_letters = match w.table(t, "dead_letters", path) {
        Some(d) => {
            let at = w.key_loc(t, "dead_letters");
            w.deny_unknown(
                d,
                &dl_path,
                &[&["type", "path"][..], KAFKA_SINK_KEYS, KINESIS_SINK_KEYS].concat(),
            );
            match sink_target(w, d, &dl_path, at, base)? {
                SinkTarget::Served(_) | SinkTarget::Webhook(_) => {
                    let at = w.key_loc(d, "type").unwrap_or_default();
                    w.problem_at(
                        at,
                        &join(&dl_path, "type"),
                        "failed deliveries go to a file, stdout, kafka or kinesis",
                    );
                    // Reported; the rest of the sink is still checked.
                    SinkTarget::Stdout
                }
                target => target,
            }
        }
        None => {
            w.problem_at(
                loc.unwrap_or_default(),
                &dl_path,
                "missing required table `dead_letters`: where deliveries that failed for good are written (e.g. `{ type = \"file\", path = \"failed.jsonl\" }`)",
            );
            return None;
        }
    };
    Some(WebhookSinkSpec {
        // Set by `sink`, which knows the name.
        name: String::new(),
        timeout_ms,
        max_attempts,
        max_age_ms,
        initial_backoff_ms,
        max_backoff_ms,
        per_target_concurrency,
        max_in_flight,
        max_queued,
        max_pending_per_target,
        allow_private_targets,
        dead_letters: Box::new(dead_letters),
    })
}

/// `region` and `endpoint` of an AWS source or sink.
fn aws(w: &mut Walker, t: &dyn TableLike, path: &str) -> AwsSpec {
    let endpoint = w.string(t, "endpoint", path);
    if let Some(e) = &endpoint
        && !(e.value.starts_with("http://") || e.value.starts_with("https://"))
    {
        w.problem_at(
            e.loc,
            &e.path,
            format!(
                "`{}` is not an endpoint URL: write `http://host:port` or `https://…`",
                e.value
            ),
        );
    }
    AwsSpec {
        region: w.string(t, "region", path).map(|r| r.value),
        endpoint: endpoint.map(|e| e.value),
    }
}

fn kinesis_source(w: &mut Walker, t: &dyn TableLike, path: &str, loc: Option<Loc>) -> Option<KinesisSourceSpec> {
    let stream = required(w, t, "stream", path, loc);
    let aws = aws(w, t, path);
    let start = match w.string(t, "start", path) {
        None => Some(KinesisStart::TrimHorizon),
        Some(s) => match s.value.as_str() {
            "trim_horizon" => Some(KinesisStart::TrimHorizon),
            "latest" => Some(KinesisStart::Latest),
            other => {
                w.problem_at(
                    s.loc,
                    &s.path,
                    format!("unknown start `{other}` (one of: trim_horizon, latest)"),
                );
                None
            }
        },
    };
    let on_trimmed = match w.string(t, "on_trimmed", path) {
        None => Some(TrimmedPolicy::Fail),
        Some(s) => match s.value.as_str() {
            "fail" => Some(TrimmedPolicy::Fail),
            "oldest" => Some(TrimmedPolicy::Oldest),
            other => {
                w.problem_at(
                    s.loc,
                    &s.path,
                    format!("unknown policy `{other}` (one of: fail, oldest)"),
                );
                None
            }
        },
    };
    let bounded = w.bool(t, "bounded", path).is_some_and(|b| b.value);
    let shard_refresh_ms = w
        .uint(t, "shard_refresh_ms", path, 100..=3_600_000)
        .map_or(10_000, |n| n.value);
    Some(KinesisSourceSpec {
        stream: stream?.value,
        aws,
        start: start?,
        on_trimmed: on_trimmed?,
        bounded,
        shard_refresh_ms,
    })
}

fn scan_source(w: &mut Walker, t: &dyn TableLike, path: &str, loc: Option<Loc>) -> Option<DynamodbScanSpec> {
    let table = required(w, t, "table", path, loc);
    let aws = aws(w, t, path);
    let segments = w.uint(t, "segments", path, 1..=1_000_000).map_or(1, |n| n.value as u32);
    let projection = w.string(t, "projection", path).map(|p| p.value);
    let page_size = w.uint(t, "page_size", path, 1..=1_000_000).map(|n| n.value as u32);
    Some(DynamodbScanSpec {
        table: table?.value,
        aws,
        segments,
        projection,
        page_size,
    })
}

/// The `[server]` section; references to views are checked with the graph.
fn server(w: &mut Walker, t: &dyn TableLike, loc: Loc, base: &Path) -> Option<ServerSpec> {
    w.deny_unknown(t, "server", SERVER_KEYS);
    let address = |w: &mut Walker, key: &str| {
        let a = w.string(t, key, "server")?;
        if a.value.parse::<std::net::SocketAddr>().is_err() {
            w.problem_at(
                a.loc,
                &a.path,
                format!(
                    "`{}` is not a listen address: write `host:port`, e.g. `127.0.0.1:50051`",
                    a.value
                ),
            );
        }
        Some(a)
    };
    let grpc = address(w, "grpc");
    let http = address(w, "http");
    if grpc.is_none() && http.is_none() {
        w.problem_at(
            loc,
            "server",
            "a server needs `grpc` or `http` (a listen address), or both",
        );
    }
    let token_key = required(w, t, "token_key", "server", Some(loc));
    if let Some(k) = &token_key
        && k.value.len() < 16
    {
        w.problem_at(
            k.loc,
            &k.path,
            "the token key must be at least 16 bytes: continuation tokens are signed with it",
        );
    }
    let subscribe_auth_token = w.string(t, "subscribe_auth_token", "server").map(|s| s.value);
    let client_buffer = w
        .uint(t, "client_buffer", "server", 1..=65_536)
        .map_or(64, |n| n.value as usize);
    let stall_timeout_ms = w
        .uint(t, "stall_timeout_ms", "server", 1..=3_600_000)
        .map_or(10_000, |n| n.value);
    let account_stream = match w.table(t, "account_stream", "server") {
        Some(a) => {
            let at = w.key_loc(t, "account_stream");
            w.deny_unknown(a, "server.account_stream", &["view", "auth_token"]);
            let view = required(w, a, "view", "server.account_stream", at);
            view.map(|view| AccountStreamSpec {
                view,
                auth_token: w.string(a, "auth_token", "server.account_stream").map(|s| s.value),
            })
        }
        None => None,
    };
    let messages = match w.table(t, "messages", "server") {
        Some(m) => {
            let at = w.key_loc(t, "messages");
            w.deny_unknown(m, "server.messages", &["view", "jwt_secret"]);
            let view = required(w, m, "view", "server.messages", at);
            let jwt_secret = required(w, m, "jwt_secret", "server.messages", at);
            if let Some(s) = &jwt_secret
                && s.value.len() < 16
            {
                w.problem_at(s.loc, &s.path, "the JWT secret must be at least 16 bytes");
            }
            match (view, jwt_secret) {
                (Some(view), Some(jwt_secret)) => Some(MessagesServiceSpec { view, jwt_secret }),
                _ => None,
            }
        }
        None => None,
    };
    let tls = tls(w, t, "server", base);
    // Kept when broken (its problems are reported already), so that the views it names are
    // still checked and its sinks are not also said to lack a server.
    Some(ServerSpec {
        grpc,
        http,
        token_key: token_key.unwrap_or_else(|| Spanned {
            value: String::new(),
            loc,
            path: "server.token_key".to_owned(),
        }),
        subscribe_auth_token,
        client_buffer,
        stall_timeout_ms,
        account_stream,
        messages,
        tls,
        loc,
    })
}

/// Resolves a path from the file against the pipeline's directory.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}
