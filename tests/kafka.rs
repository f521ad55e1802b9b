//! End-to-end runs of the `sluice` binary between Kafka topics on a real Kafka-protocol
//! broker (Tansu, started per test on a free port): the same outputs as the file-based run
//! of the same input, exact resumption after a clean stop, consumer-group lag reaching zero,
//! undecodable records dead-lettered with their coordinates, and a broker outage mid-run
//! losing nothing.

mod common;
mod kafka_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{final_upsert_state, read_jsonl, root};
use kafka_support::{Broker, Produce, Record};
use serde_json::Value as Json;

/// Writes `toml` as `pipeline.toml` in `dir` and runs it to the end against `broker`.
fn run_bounded(dir: &Path, toml: &str, broker: &Broker) {
    std::fs::write(dir.join("pipeline.toml"), toml).expect("write pipeline");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(dir)
        .env("KAFKA_BROKERS", &broker.brokers)
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A continuous run of `dir/pipeline.toml`, stopped by SIGTERM.
struct Running(Child);

impl Running {
    fn start(dir: &Path, toml: &str, broker: &Broker) -> Running {
        std::fs::write(dir.join("pipeline.toml"), toml).expect("write pipeline");
        Running::file(&dir.join("pipeline.toml"), broker)
    }

    /// Runs the pipeline file `file`, in its directory.
    fn file(file: &Path, broker: &Broker) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet"])
            .arg(file)
            .current_dir(file.parent().expect("the pipeline's directory"))
            .env("KAFKA_BROKERS", &broker.brokers)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        Running(child)
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "sluice did not stop within 60 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "exit status {exit:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave its sluice running.
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until `topic` holds at least `n` records; returns them.
fn wait_for_records(broker: &Broker, topic: &str, n: usize, within: Duration) -> Vec<Record> {
    let deadline = Instant::now() + within;
    loop {
        let records = broker.read_all(topic);
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has {} records, expected {n}",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
}

/// The final table an upsert topic describes: key → latest value, tombstones removing keys.
fn topic_state(records: &[Record]) -> BTreeMap<String, Json> {
    let lines: Vec<Json> = records
        .iter()
        .map(|r| {
            let key = r.key.as_deref().map_or(Json::Null, json);
            let value = r.value.as_deref().map_or(Json::Null, json);
            serde_json::json!({"key": key, "value": value})
        })
        .collect();
    final_upsert_state(&lines)
}

/// A changelog consolidated over time: (key, value) → summed diff, zeros dropped.
fn consolidated(lines: impl IntoIterator<Item = Json>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for line in lines {
        let entry = format!("{} {}", line["key"], line["value"]);
        *out.entry(entry).or_default() += line["diff"].as_i64().expect("diff");
    }
    out.retain(|_, d| *d != 0);
    out
}

/// The lines of a bundled example file.
fn example_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(root().join(path))
        .expect("example data")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The key and partition of `line` when produced keyed by `key_field` over `partitions`:
/// the partition its key hashes to, so every key keeps its order; 0 without the field.
fn keyed(line: &str, key_field: &str, partitions: u32) -> (Option<String>, i32) {
    let key = serde_json::from_str::<Json>(line)
        .ok()
        .and_then(|v| v.get(key_field).and_then(Json::as_str).map(str::to_owned));
    let partition = key.as_deref().map_or(0, |k| {
        (k.bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % partitions) as i32
    });
    (key, partition)
}

/// Produces `lines` to `topic` as [`keyed`] places them.
fn produce_keyed(broker: &Broker, topic: &str, partitions: u32, lines: &[String], key_field: &str) {
    let records: Vec<_> = lines
        .iter()
        .map(|line| {
            let (key, partition) = keyed(line, key_field, partitions);
            (partition, key.map(String::into_bytes), Some(line.clone().into_bytes()))
        })
        .collect();
    broker.produce(topic, &records);
}

const DELIVERY_OUTPUTS: [&str; 4] = ["unsubscribes", "token_replacements", "error_stats", "alerts"];

/// The delivery pipeline with the given source and sink tables (the node is the example's).
fn delivery_pipeline(source: &str, dead_letters: &str, sink: &dyn Fn(&str) -> String) -> String {
    let mut toml = format!(
        "[pipeline]\nname = \"delivery\"\nworkers = 2\nepoch_ms = 20\n\n[dead_letters]\n{dead_letters}\n\n\
         [sources.reports]\n{source}\n\n[nodes.delivery]\ntype = \"delivery\"\ninput = \"reports\"\n\
         guard_share = 0.5\nguard_window_ms = 600000\n"
    );
    for output in DELIVERY_OUTPUTS {
        toml.push_str(&format!(
            "\n[sinks.{output}]\n{}\ninput = \"delivery.{output}\"\nmode = \"upsert\"\n",
            sink(output)
        ));
    }
    toml
}

fn kafka_sink(topic: &str) -> String {
    format!("type = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"{topic}\"")
}

fn file_sink(name: &str) -> String {
    format!("type = \"file\"\npath = \"out/{name}.jsonl\"")
}

#[test]
fn delivery_between_topics_equals_the_file_run_and_dead_letters_carry_coordinates() {
    let broker = Broker::start();
    let lines = example_lines("examples/delivery/reports.jsonl");
    broker.create_topic("reports", 3);
    produce_keyed(&broker, "reports", 3, &lines, "push_token");
    for output in DELIVERY_OUTPUTS {
        broker.create_topic(output, 2);
    }
    broker.create_topic("dead", 1);

    let kafka_dir = tempfile::tempdir().expect("tempdir");
    let source = "type = \"kafka\"\nbrokers = \"${KAFKA_BROKERS}\"\ntopic = \"reports\"\nbounded = true\n\
                  group_id = \"delivery-test\"";
    run_bounded(
        kafka_dir.path(),
        &delivery_pipeline(source, &kafka_sink("dead"), &kafka_sink),
        &broker,
    );

    let file_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(file_dir.path().join("reports.jsonl"), lines.join("\n") + "\n").expect("write input");
    let file_source = "type = \"file\"\npath = \"reports.jsonl\"";
    run_bounded(
        file_dir.path(),
        &delivery_pipeline(file_source, &file_sink("dead"), &file_sink),
        &broker,
    );

    for output in DELIVERY_OUTPUTS {
        let from_file = final_upsert_state(&read_jsonl(&file_dir.path().join(format!("out/{output}.jsonl"))));
        let from_kafka = topic_state(&broker.read_all(output));
        assert!(!from_file.is_empty() || output == "alerts", "{output} is empty");
        assert_eq!(
            from_kafka, from_file,
            "{output} differs between the Kafka and the file run"
        );
    }

    // The line that is not JSON: dead-lettered with its topic, partition and offset, and
    // every other report went through (the comparison above).
    let dead: Vec<Json> = broker
        .read_all("dead")
        .iter()
        .map(|r| json(r.value.as_deref().expect("a dead letter")))
        .collect();
    let file_dead = read_jsonl(&file_dir.path().join("out/dead.jsonl"));
    assert_eq!(dead.len(), file_dead.len(), "dead letters: {dead:?}");
    let broken_line = lines
        .iter()
        .position(|l| l.contains("m-broken"))
        .expect("the broken report");
    let offset = lines[..broken_line]
        .iter()
        .filter(|l| keyed(l, "push_token", 3).1 == 0)
        .count();
    let broken = dead
        .iter()
        .find(|d| d["raw"].as_str().is_some_and(|r| r.contains("m-broken")))
        .expect("the broken report is a dead letter");
    assert_eq!(broken["topic"], "reports");
    assert_eq!(broken["partition"], 0);
    assert_eq!(broken["offset"], offset as u64);
    assert_eq!(broken["source"], "reports");
    assert!(
        broken["reason"].as_str().is_some_and(|r| r.contains("JSON")),
        "{broken}"
    );

    // The bounded run committed every offset it read: the group's lag is zero.
    for (committed, end) in broker.lag("reports", "delivery-test") {
        assert_eq!(committed, Some(end), "the group's committed offset is behind the end");
    }
}

const CONTACTS_UPSERT: [&str; 5] = [
    "client_state",
    "devices",
    "resolved_contacts",
    "contact_references",
    "anonymous_contacts_created",
];
const CONTACTS_CHANGELOG: [&str; 4] = [
    "client_state_client_updates",
    "client_state_push_token_updates",
    "client_state_contact_updates",
    "suite_contact_updates",
];

fn contacts_pipeline(changes: &str, table: &str, sink: &dyn Fn(&str) -> String) -> String {
    let mut toml = format!(
        "[pipeline]\nname = \"contacts\"\nworkers = 2\nepoch_ms = 20\n\n[dead_letters]\n{}\n\n\
         [sources.client_changes]\n{changes}\n\n[sources.contact_data]\n{table}\nenvelope = \"upsert\"\n\
         key = [\"app_code\", \"contact_field_id\", \"contact_field_value\"]\n\n\
         [nodes.contacts]\ntype = \"contacts\"\nchanges = \"client_changes\"\ncontact_data = \"contact_data\"\n",
        sink("dead")
    );
    for output in CONTACTS_UPSERT {
        // Anonymous contacts are created once each: an append output, kept as a table here.
        let mode = if output == "anonymous_contacts_created" {
            "append"
        } else {
            "upsert"
        };
        toml.push_str(&format!(
            "\n[sinks.{output}]\n{}\ninput = \"contacts.{output}\"\nmode = \"{mode}\"\n",
            sink(output)
        ));
    }
    for output in CONTACTS_CHANGELOG {
        toml.push_str(&format!(
            "\n[sinks.{output}]\n{}\ninput = \"contacts.{output}\"\nmode = \"changelog\"\n",
            sink(output)
        ));
    }
    toml
}

#[test]
fn contacts_between_topics_equals_the_file_run() {
    let broker = Broker::start();
    let changes = example_lines("examples/contacts/client-changes.jsonl");
    let table = example_lines("examples/contacts/contact-data.jsonl");
    broker.create_topic("changes", 2);
    broker.create_topic("table", 1);
    produce_keyed(&broker, "changes", 2, &changes, "client_id");
    let table_records: Vec<_> = table.iter().map(|l| (0, None, Some(l.clone().into_bytes()))).collect();
    broker.produce("table", &table_records);
    for output in CONTACTS_UPSERT.iter().chain(&CONTACTS_CHANGELOG).chain(&["dead"]) {
        broker.create_topic(output, 2);
    }

    let kafka_dir = tempfile::tempdir().expect("tempdir");
    let source = |topic: &str| {
        format!("type = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"{topic}\"\nbounded = true")
    };
    run_bounded(
        kafka_dir.path(),
        &contacts_pipeline(&source("changes"), &source("table"), &kafka_sink),
        &broker,
    );

    let file_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(file_dir.path().join("changes.jsonl"), changes.join("\n") + "\n").expect("write");
    std::fs::write(file_dir.path().join("table.jsonl"), table.join("\n") + "\n").expect("write");
    let file_source = |name: &str| format!("type = \"file\"\npath = \"{name}.jsonl\"");
    run_bounded(
        file_dir.path(),
        &contacts_pipeline(&file_source("changes"), &file_source("table"), &file_sink),
        &broker,
    );

    let file_out = |output: &str| read_jsonl(&file_dir.path().join(format!("out/{output}.jsonl")));
    for output in CONTACTS_UPSERT {
        let from_kafka = broker.read_all(output);
        if output == "anonymous_contacts_created" {
            let mut kafka: Vec<Json> = from_kafka.iter().filter_map(|r| r.value.as_deref().map(json)).collect();
            let mut file = file_out(output);
            kafka.sort_by_key(Json::to_string);
            file.sort_by_key(Json::to_string);
            assert_eq!(kafka, file, "{output} differs");
        } else {
            assert_eq!(
                topic_state(&from_kafka),
                final_upsert_state(&file_out(output)),
                "{output} differs"
            );
        }
    }
    for output in CONTACTS_CHANGELOG {
        let kafka = consolidated(
            broker
                .read_all(output)
                .iter()
                .filter_map(|r| r.value.as_deref().map(json)),
        );
        assert_eq!(kafka, consolidated(file_out(output)), "{output} differs");
        assert!(
            !kafka.is_empty() || output == "suite_contact_updates",
            "{output} is empty"
        );
    }
}

/// A filter between topics: the even `n` of `events` to `evens`, as a continuous run.
fn evens_pipeline(group: &str) -> String {
    format!(
        "[pipeline]\nname = \"evens\"\nworkers = 2\nepoch_ms = 20\n\n\
         [dead_letters]\ntype = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"dead\"\n\n\
         [sources.events]\ntype = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"events\"\ngroup_id = \"{group}\"\n\n\
         [nodes.evens]\ntype = \"filter\"\ninput = \"events\"\nexpr = 'n % 2 == 0'\n\n\
         [sinks.evens]\ntype = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"evens\"\ninput = \"evens\"\nmode = \"append\"\n"
    )
}

/// `{"n": i}` for `range`, spread over `partitions` by `n`.
fn numbered(range: std::ops::Range<u64>, partitions: u64) -> Vec<Produce> {
    range
        .map(|n| {
            (
                (n % partitions) as i32,
                None,
                Some(format!("{{\"n\":{n}}}").into_bytes()),
            )
        })
        .collect()
}

/// The `n` of every record of `evens`, sorted, failing on duplicates.
fn evens_read(broker: &Broker) -> Vec<u64> {
    let mut ns: Vec<u64> = broker
        .read_all("evens")
        .iter()
        .filter_map(|r| json(r.value.as_deref()?)["n"].as_u64())
        .collect();
    ns.sort_unstable();
    ns
}

fn setup_evens(broker: &Broker) {
    broker.create_topic("events", 3);
    broker.create_topic("evens", 2);
    broker.create_topic("dead", 1);
}

#[test]
fn a_clean_stop_resumes_exactly_where_it_left_off_and_the_lag_reaches_zero() {
    let broker = Broker::start();
    setup_evens(&broker);
    broker.produce("events", &numbered(0..3_000, 3));
    let dir = tempfile::tempdir().expect("tempdir");

    let first = Running::start(dir.path(), &evens_pipeline("resume"), &broker);
    wait_for_records(&broker, "evens", 1_500, Duration::from_secs(60));
    first.stop();
    // More input while the pipeline is down.
    broker.produce("events", &numbered(3_000..5_000, 3));

    let second = Running::start(dir.path(), &evens_pipeline("resume"), &broker);
    wait_for_records(&broker, "evens", 2_500, Duration::from_secs(60));
    second.stop();

    let expected: Vec<u64> = (0..5_000).filter(|n| n % 2 == 0).collect();
    assert_eq!(
        evens_read(&broker),
        expected,
        "every even number exactly once across the restart"
    );
    for (committed, end) in broker.lag("events", "resume") {
        assert_eq!(committed, Some(end), "the group's lag is zero after a clean stop");
    }
}

#[test]
fn a_broker_outage_mid_run_loses_nothing() {
    let broker = Broker::start_behind_proxy();
    setup_evens(&broker);
    // Enough input that the run takes seconds: the outage comes while it reads and writes.
    broker.produce("events", &numbered(0..500_000, 3));
    let dir = tempfile::tempdir().expect("tempdir");
    let run = Running::start(dir.path(), &evens_pipeline("outage"), &broker);
    broker.wait_first("evens", Duration::from_secs(60));

    // The broker goes away while records are in flight both ways, then comes back.
    broker.proxy().cut();
    std::thread::sleep(Duration::from_secs(3));
    broker.proxy().restore();
    broker.produce("events", &numbered(500_000..502_000, 3));
    wait_for_records(&broker, "evens", 251_000, Duration::from_secs(120));
    run.stop();

    let got = evens_read(&broker);
    let mut unique = got.clone();
    unique.dedup();
    let expected: Vec<u64> = (0..502_000).filter(|n| n % 2 == 0).collect();
    assert_eq!(unique, expected, "no record lost across the outage");
    assert_eq!(got.len(), unique.len(), "the idempotent producer wrote no duplicates");
}

#[test]
fn the_delivery_kafka_example_loads_and_runs_like_the_file_example() {
    let broker = Broker::start();
    let load = Command::new(root().join("scripts/kafka-load-examples"))
        .env("KAFKA_BROKERS", &broker.brokers)
        .env("SLUICE", env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_TANSU", kafka_support::tansu())
        .output()
        .expect("run the loader");
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));

    // The file example, for the expected outputs.
    let file_dir = tempfile::tempdir().expect("tempdir");
    for f in ["pipeline.toml", "reports.jsonl"] {
        std::fs::copy(root().join("examples/delivery").join(f), file_dir.path().join(f)).expect("copy");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(file_dir.path())
        .output()
        .expect("run the file example");
    assert!(out.status.success());
    let stdout: Vec<Json> = String::from_utf8_lossy(&out.stdout).lines().map(json).collect();
    let expected_stats = final_upsert_state(&read_jsonl(&file_dir.path().join("out/error_stats.jsonl")));

    let run = Running::file(&root().join("examples/delivery-kafka/pipeline.toml"), &broker);
    let deadline = Instant::now() + Duration::from_secs(60);
    while topic_state(&broker.read_all("delivery-error-stats")) != expected_stats {
        assert!(
            Instant::now() < deadline,
            "the error statistics never matched the file example's"
        );
    }
    run.stop();

    // Unsubscribes and alerts go to stdout in the file example, to two topics here.
    let mut from_kafka = topic_state(&broker.read_all("delivery-unsubscribes"));
    from_kafka.extend(topic_state(&broker.read_all("delivery-alerts")));
    assert_eq!(from_kafka, final_upsert_state(&stdout));
    assert_eq!(
        topic_state(&broker.read_all("delivery-token-replacements")),
        final_upsert_state(&read_jsonl(&file_dir.path().join("out/token_replacements.jsonl")))
    );
    // The report without a push token is a dead letter of the node, in the topic; the
    // one that is not JSON never left the loader.
    let dead = broker.read_all("delivery-dead-letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].value.as_deref().is_some_and(|v| v.contains("m-notoken")));
}

#[test]
fn a_stop_that_cannot_flush_ends_within_the_stop_timeout() {
    let broker = Broker::start_behind_proxy();
    setup_evens(&broker);
    // Enough input that output is still in flight when the broker goes away.
    broker.produce("events", &numbered(0..300_000, 3));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pipeline.toml"), evens_pipeline("stuck")).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "--stop-timeout", "2", "pipeline.toml"])
        .current_dir(dir.path())
        .env("KAFKA_BROKERS", &broker.brokers)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    broker.wait_first("evens", Duration::from_secs(60));
    // With the broker gone, more output can never be acknowledged.
    broker.proxy().cut();
    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the stop timeout did not end the run"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert_eq!(exit.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not drain within 2 s"), "{stderr}");
}

#[test]
fn contacts_from_kafka_on_two_processes_equals_the_file_run() {
    let broker = Broker::start();
    let changes = example_lines("examples/contacts/client-changes.jsonl");
    let table = example_lines("examples/contacts/contact-data.jsonl");
    // Four partitions: one for each worker of the cluster, in both processes.
    broker.create_topic("changes", 4);
    broker.create_topic("table", 1);
    produce_keyed(&broker, "changes", 4, &changes, "client_id");
    let table_records: Vec<_> = table.iter().map(|l| (0, None, Some(l.clone().into_bytes()))).collect();
    broker.produce("table", &table_records);

    // The changes after the table: anonymous contacts then do not depend on timing.
    let kafka_source = |topic: &str, after: &str| {
        format!("type = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"{topic}\"\nbounded = true\n{after}")
    };
    let cluster_dir = tempfile::tempdir().expect("tempdir");
    let d = cluster_dir.path();
    let toml = contacts_pipeline(
        &kafka_source("changes", "start_after = [\"contact_data\"]"),
        &kafka_source("table", ""),
        &file_sink,
    );
    std::fs::write(d.join("pipeline.toml"), toml).expect("write pipeline");
    common::hostfile(d, 2);
    let processes: Vec<Child> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["run", "--quiet", "pipeline.toml", "--workers", "2", "--processes", "2"])
                .args(["--hostfile", "hosts.txt", "--process", &i.to_string()])
                .current_dir(d)
                .env("KAFKA_BROKERS", &broker.brokers)
                .env(
                    "RUST_LOG",
                    std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
                )
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("stderr-{i}.txt"))).expect("log file"))
                .spawn()
                .expect("spawn sluice")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, mut p) in processes.into_iter().enumerate() {
        let log = |i: usize| std::fs::read_to_string(d.join(format!("stderr-{i}.txt"))).unwrap_or_default();
        match common::exits_within(&mut p, deadline.saturating_duration_since(Instant::now())) {
            Some(status) => assert!(status.success(), "process {i}: {}", log(i)),
            None => {
                let _ = p.kill();
                panic!(
                    "process {i} did not finish within 60 s: {}\nthe other: {}",
                    log(i),
                    log(1 - i)
                );
            }
        }
    }

    let file_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(file_dir.path().join("changes.jsonl"), changes.join("\n") + "\n").expect("write");
    std::fs::write(file_dir.path().join("table.jsonl"), table.join("\n") + "\n").expect("write");
    let file_source = |name: &str, after: &str| format!("type = \"file\"\npath = \"{name}.jsonl\"\n{after}");
    run_bounded(
        file_dir.path(),
        &contacts_pipeline(
            &file_source("changes", "start_after = [\"contact_data\"]"),
            &file_source("table", ""),
            &file_sink,
        ),
        &broker,
    );
    for output in CONTACTS_UPSERT {
        let read = |dir: &Path| read_jsonl(&dir.join(format!("out/{output}.jsonl")));
        if output == "anonymous_contacts_created" {
            let sorted = |mut v: Vec<Json>| {
                v.sort_by_key(Json::to_string);
                v
            };
            assert_eq!(sorted(read(d)), sorted(read(file_dir.path())), "{output} differs");
        } else {
            let state = final_upsert_state(&read(d));
            assert!(!state.is_empty() || output == "contact_references", "{output} is empty");
            assert_eq!(state, final_upsert_state(&read(file_dir.path())), "{output} differs");
        }
    }
    for output in CONTACTS_CHANGELOG {
        let read = |dir: &Path| consolidated(read_jsonl(&dir.join(format!("out/{output}.jsonl"))));
        assert_eq!(read(d), read(file_dir.path()), "{output} differs");
    }
}
