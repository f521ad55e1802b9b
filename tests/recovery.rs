//! Checkpoints and exact recovery of the `sluice` binary: a pipeline killed with SIGKILL at
//! random points and restarted each time ends with the outputs of one uninterrupted run —
//! nothing lost, nothing written twice — and a clean stop and restart continue exactly.
//!
//! The pipeline is the shape checkpoints cover today (docs/decisions.md, "Checkpoints"):
//! an event stream filtered to a file, and an upsert table written as upserts and as a
//! changelog, all from followed files.

mod common;
mod kafka_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{exits_within, final_upsert_state, hostfile, read_jsonl};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The pipeline: `follow` for the continuous runs, and checkpoints when `checkpoints`.
fn pipeline(follow: bool, checkpoints: bool) -> String {
    let checkpoint = if checkpoints {
        "checkpoint_dir = \"state\"\ncheckpoint_interval_ms = 100\n"
    } else {
        ""
    };
    format!(
        "[pipeline]\nname = \"recovery\"\nworkers = 2\nepoch_ms = 10\n{checkpoint}\n\
         [dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n\n\
         [sources.events]\ntype = \"file\"\npath = \"events.jsonl\"\nfollow = {follow}\npoll_ms = 10\n\n\
         [sources.table]\ntype = \"file\"\npath = \"table.jsonl\"\nfollow = {follow}\npoll_ms = 10\n\
         envelope = \"upsert\"\nkey = [\"id\"]\ndeleted_field = \"deleted\"\n\n\
         [nodes.evens]\ntype = \"filter\"\ninput = \"events\"\nexpr = 'n % 2 == 0'\n\n\
         [sinks.evens]\ntype = \"file\"\npath = \"out/evens.jsonl\"\ninput = \"evens\"\nmode = \"append\"\n\n\
         [sinks.table]\ntype = \"file\"\npath = \"out/table.jsonl\"\ninput = \"table\"\nmode = \"upsert\"\n\n\
         [sinks.table_log]\ntype = \"file\"\npath = \"out/table_log.jsonl\"\ninput = \"table\"\nmode = \"changelog\"\n"
    )
}

fn spawn(dir: &Path) -> Child {
    spawn_with(dir, &[])
}

/// As [`spawn`], with more arguments to `sluice run`.
fn spawn_with(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice")
}

/// SIGTERM, then a clean exit within 30 s.
fn stop(child: Child) {
    common::stop_cleanly(child);
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    for l in lines {
        writeln!(f, "{l}").expect("append");
    }
}

/// Waits until `out/evens.jsonl` in `dir` has `n` lines.
fn wait_evens(dir: &Path, n: usize) {
    let path = dir.join("out/evens.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&path).map_or(0, |t| t.lines().count()) < n {
        assert!(Instant::now() < deadline, "evens never reached {n} lines");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the outputs of a run say: the evens in file order, the final table, and the
/// changelog consolidated over time.
#[derive(Debug, PartialEq)]
struct Outputs {
    evens: Vec<u64>,
    table: BTreeMap<String, serde_json::Value>,
    changelog: BTreeMap<String, i64>,
}

fn outputs(dir: &Path) -> Outputs {
    let evens = read_jsonl(&dir.join("out/evens.jsonl"))
        .iter()
        .filter_map(|v| v["n"].as_u64())
        .collect();
    let table = final_upsert_state(&read_jsonl(&dir.join("out/table.jsonl")));
    let mut changelog = BTreeMap::new();
    for line in read_jsonl(&dir.join("out/table_log.jsonl")) {
        *changelog
            .entry(format!("{} {}", line["key"], line["value"]))
            .or_insert(0) += line["diff"].as_i64().expect("diff");
    }
    changelog.retain(|_, d| *d != 0);
    Outputs {
        evens,
        table,
        changelog,
    }
}

/// The same input run once, bounded, without checkpoints.
fn uninterrupted(input: &Path) -> Outputs {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["events.jsonl", "table.jsonl"] {
        std::fs::copy(input.join(f), dir.path().join(f)).expect("copy input");
    }
    std::fs::write(dir.path().join("pipeline.toml"), pipeline(false, false)).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    outputs(dir.path())
}

fn events(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| format!("{{\"n\":{n}}}")).collect()
}

#[test]
fn a_clean_stop_and_restart_continue_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pipeline.toml"), pipeline(true, true)).expect("write");
    append(&d.join("events.jsonl"), &events(1..1001));
    append(
        &d.join("table.jsonl"),
        &(1..=3)
            .map(|i| format!("{{\"id\":{i},\"v\":\"a{i}\"}}"))
            .collect::<Vec<_>>(),
    );
    let run = spawn(d);
    wait_evens(d, 500);
    stop(run);
    assert!(d.join("state").is_dir(), "a checkpoint directory");

    append(&d.join("events.jsonl"), &events(1001..2001));
    append(
        &d.join("table.jsonl"),
        &[
            "{\"id\":2,\"v\":\"b2\"}".to_owned(),
            "{\"id\":3,\"deleted\":true}".to_owned(),
            "{\"id\":4,\"v\":\"a4\"}".to_owned(),
        ],
    );
    // On three workers instead of two: each reads every saved piece and keeps its keys.
    let run = spawn_with(d, &["--workers", "3"]);
    wait_evens(d, 1000);
    // The table's last change is in by the time a later event is.
    append(&d.join("events.jsonl"), &events(2001..2003));
    wait_evens(d, 1001);
    stop(run);
    assert_eq!(outputs(d), uninterrupted(d));
}

/// Lines to append to one input file.
type Appends = (&'static str, Vec<String>);

/// A pipeline for the kill harness: its files, its graph, its sinks, and how input arrives.
struct Scenario {
    name: &'static str,
    /// Per source: its name, its file and its other keys.
    sources: &'static [(&'static str, &'static str, &'static str)],
    /// The nodes, as pipeline-file text.
    graph: &'static str,
    /// Per sink: its name, its input and its mode.
    sinks: &'static [(&'static str, &'static str, &'static str)],
    /// Append outputs whose events depend on how input is split over time (a streaming run
    /// sees intermediate states a bounded run never does, and a bounded run reading several
    /// partitions sees some of its own): reported, not compared.
    timing_dependent: &'static [&'static str],
    /// Of those, the outputs that must still hold no line twice, across every restart.
    once: &'static [&'static str],
    /// Fields removed from every output key and value before comparing: values a run
    /// derives from when it read its input (the messages dataflow's ids and timestamps).
    strip: &'static [&'static str],
    /// One round of input: lines to append to each file.
    round: fn(&mut SmallRng, u64) -> Vec<Appends>,
    /// A line that, appended to the first source's file last, shows in the first sink
    /// once the pipeline has read everything before it.
    last: fn() -> String,
}

impl Scenario {
    /// The pipeline reading files, or Kafka topics named after the files at `brokers`.
    fn pipeline_on(&self, brokers: Option<&str>, follow: bool, checkpoints: bool) -> String {
        let mut toml = format!("[pipeline]\nname = \"{}\"\nworkers = 2\nepoch_ms = 10\n", self.name);
        if checkpoints {
            toml += "checkpoint_dir = \"state\"\ncheckpoint_interval_ms = 100\n";
        }
        toml += "\n[dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n";
        for (name, file, extra) in self.sources {
            toml += &match brokers {
                None => format!(
                    "\n[sources.{name}]\ntype = \"file\"\npath = \"{file}\"\nfollow = {follow}\npoll_ms = 10\n{extra}\n"
                ),
                Some(b) => format!(
                    "\n[sources.{name}]\ntype = \"kafka\"\nbrokers = \"{b}\"\ntopic = \"{}\"\nstart = \"earliest\"\n\
                     bounded = {}\n{extra}\n",
                    topic(file),
                    !follow
                ),
            };
        }
        toml += "\n";
        toml += self.graph;
        for (name, input, mode) in self.sinks {
            toml += &format!(
                "\n[sinks.{name}]\ntype = \"file\"\npath = \"out/{name}.jsonl\"\ninput = \"{input}\"\nmode = \"{mode}\"\n"
            );
        }
        toml
    }

    /// Every sink's output, normalised by its mode: upserts as the final table, a
    /// changelog consolidated over time, appends as a sorted list.
    fn outputs(&self, dir: &Path) -> BTreeMap<String, Vec<String>> {
        let strip = |v: &serde_json::Value| -> serde_json::Value {
            let mut v = v.clone();
            if let Some(map) = v.as_object_mut() {
                for field in self.strip {
                    map.remove(*field);
                }
            }
            v
        };
        let mut all = BTreeMap::new();
        for (name, _, mode) in self.sinks.iter().chain(&[("dead", "", "append")]) {
            let lines: Vec<serde_json::Value> = read_jsonl(&dir.join(format!("out/{name}.jsonl")))
                .iter()
                .map(|l| match *mode {
                    "append" => strip(l),
                    _ => l.clone(),
                })
                .collect();
            let mut normal: Vec<String> = match *mode {
                "upsert" => final_upsert_state(&lines)
                    .into_iter()
                    .map(|(k, v)| {
                        let k: serde_json::Value = serde_json::from_str(&k).unwrap_or_default();
                        format!("{} => {}", strip(&k), strip(&v))
                    })
                    .collect(),
                "changelog" => {
                    let mut c: BTreeMap<String, i64> = BTreeMap::new();
                    for l in &lines {
                        *c.entry(format!("{} {}", strip(&l["key"]), strip(&l["value"])))
                            .or_insert(0) += l["diff"].as_i64().expect("diff");
                    }
                    c.into_iter()
                        .filter(|(_, d)| *d != 0)
                        .map(|(k, d)| format!("{k} x{d}"))
                        .collect()
                }
                _ => lines.iter().map(|l| l.to_string()).collect(),
            };
            normal.sort();
            all.insert(name.to_string(), normal);
        }
        all
    }
}

/// The Kafka topic standing for an input file.
fn topic(file: &str) -> String {
    file.trim_end_matches(".jsonl").to_owned()
}

/// Where a kill harness's input goes: appended to files, or produced to Kafka topics: an
/// event topic has two partitions and a round's lines go to one of them; a table topic has
/// one, since an upsert key must live in one partition (as a keyed producer ensures).
enum Input {
    Files,
    Kafka(kafka_support::Broker, Vec<&'static str>),
}

impl Input {
    fn send(&self, dir: &Path, file: &str, lines: &[String], round: u64) {
        match self {
            Input::Files => append(&dir.join(file), lines),
            Input::Kafka(broker, tables) => {
                let partition = if tables.contains(&file) { 0 } else { (round % 2) as i32 };
                let records: Vec<kafka_support::Produce> = lines
                    .iter()
                    .map(|l| (partition, None, Some(l.clone().into_bytes())))
                    .collect();
                broker.produce(&topic(file), &records);
            }
        }
    }

    fn brokers(&self) -> Option<&str> {
        match self {
            Input::Files => None,
            Input::Kafka(broker, _) => Some(&broker.brokers),
        }
    }
}

/// Runs `scenario` killed with SIGKILL at `kills` random points while its input arrives,
/// restarted each time, then compares every output with one uninterrupted bounded run.
fn kill_and_compare(scenario: &Scenario, kills: usize) {
    kill_and_compare_on(scenario, kills, &Input::Files);
}

/// As [`kill_and_compare`], reading Kafka topics on a real broker.
fn kill_and_compare_kafka(scenario: &Scenario, kills: usize) {
    let broker = kafka_support::Broker::start();
    let mut tables = Vec::new();
    for (_, file, extra) in scenario.sources {
        let table = extra.contains("upsert");
        broker.create_topic(&topic(file), if table { 1 } else { 2 });
        if table {
            tables.push(*file);
        }
    }
    kill_and_compare_on(scenario, kills, &Input::Kafka(broker, tables));
}

fn kill_and_compare_on(scenario: &Scenario, kills: usize, input: &Input) {
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("pipeline.toml"),
        scenario.pipeline_on(input.brokers(), true, true),
    )
    .expect("write");
    for (_, file, _) in scenario.sources {
        std::fs::write(d.join(file), "").expect("write");
    }
    let rounds = 40;
    let mut round = 0;
    let feed = |rng: &mut SmallRng, round: &mut u64| {
        if *round < rounds {
            for (file, lines) in (scenario.round)(rng, *round) {
                input.send(d, file, &lines, *round);
            }
            *round += 1;
        }
    };
    let mut kill_points = Vec::new();
    for _ in 0..kills {
        let mut run = spawn(d);
        let alive = Duration::from_millis(rng.random_range(50..600));
        let started = Instant::now();
        while started.elapsed() < alive {
            feed(&mut rng, &mut round);
            std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
        }
        run.kill().expect("SIGKILL");
        run.wait().expect("reap");
        kill_points.push(alive.as_millis());
    }
    while round < rounds {
        feed(&mut rng, &mut round);
    }
    // A last run reads the rest; it is stopped cleanly once the line appended last (so no
    // killed run wrote it) is out.
    let run = spawn(d);
    send_last_and_wait(scenario, d, input);
    stop(run);
    eprintln!(
        "{}: seed {seed:#x}, {kills} SIGKILLs after {kill_points:?} ms",
        scenario.name
    );
    assert_like_uninterrupted(scenario, d, input, None);
}

/// Sends the scenario's last line and waits until it is out, so everything before it is too.
fn send_last_and_wait(scenario: &Scenario, d: &Path, input: &Input) {
    let (first_source, first_sink) = (scenario.sources[0].1, scenario.sinks[0].0);
    let marker = (scenario.last)();
    input.send(d, first_source, std::slice::from_ref(&marker), 0);
    let out = d.join(format!("out/{first_sink}.jsonl"));
    let needle = serde_json::from_str::<serde_json::Value>(&marker)
        .ok()
        .and_then(|v| v.get("marker").and_then(|m| m.as_str().map(str::to_owned)))
        .expect("a marker line has a `marker` field");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out).is_ok_and(|t| t.contains(&needle)) {
        assert!(
            Instant::now() < deadline,
            "{}: the last line never reached {first_sink}",
            scenario.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Compares every output in `d` with one uninterrupted bounded run of the same input (with a
/// source's file read as a glob if `spread` names both).
fn assert_like_uninterrupted(scenario: &Scenario, d: &Path, input: &Input, spread: Option<(&str, &str)>) {
    let got = scenario.outputs(d);
    let want = {
        let fresh = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "jsonl")
                && let Some(name) = path.file_name()
            {
                std::fs::copy(&path, fresh.path().join(name)).expect("copy input");
            }
        }
        let mut bounded = scenario.pipeline_on(input.brokers(), false, false);
        if let Some((file, glob)) = spread {
            bounded = bounded.replace(&format!("path = \"{file}\""), &format!("path = \"{glob}\""));
        }
        std::fs::write(fresh.path().join("pipeline.toml"), bounded).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet", "pipeline.toml"])
            .current_dir(fresh.path())
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        scenario.outputs(fresh.path())
    };
    for (sink, want_lines) in &want {
        let got_lines = &got[sink];
        // Counted with multiplicity: an append output may rightly hold one line twice.
        let mut counts: BTreeMap<&String, (usize, usize)> = BTreeMap::new();
        for l in want_lines {
            counts.entry(l).or_default().0 += 1;
        }
        for l in got_lines {
            counts.entry(l).or_default().1 += 1;
        }
        let (mut lost, mut extra, mut doubled) = (0, 0, 0);
        for (want_n, got_n) in counts.values() {
            lost += want_n.saturating_sub(*got_n);
            if *want_n == 0 {
                extra += got_n;
            } else {
                doubled += got_n.saturating_sub(*want_n);
            }
        }
        eprintln!(
            "  {sink}: {} entries, {lost} lost or different, {extra} extra, {doubled} written twice",
            want_lines.len()
        );
        if std::env::var_os("SLUICE_CRASH_DIFF").is_some() {
            for l in want_lines
                .iter()
                .filter(|l| got_lines.binary_search(l).is_err())
                .take(3)
            {
                eprintln!("    want {l}");
            }
            for l in got_lines
                .iter()
                .filter(|l| want_lines.binary_search(l).is_err())
                .take(3)
            {
                eprintln!("    got  {l}");
            }
        }
        if scenario.once.contains(&sink.as_str()) {
            let twice = got_lines.windows(2).filter(|w| w[0] == w[1]).count();
            assert_eq!(twice, 0, "{}: {sink} holds a line twice", scenario.name);
        }
        if !scenario.timing_dependent.contains(&sink.as_str()) {
            assert_eq!(
                (lost, extra),
                (0, 0),
                "{}: {sink} differs from the uninterrupted run",
                scenario.name
            );
            assert_eq!(got_lines, want_lines, "{}: {sink} (duplicates)", scenario.name);
        }
    }
}

/// A filter over events and an upsert table, as upserts and as a changelog.
const GENERIC: Scenario = Scenario {
    name: "generic",
    sources: &[
        ("events", "events.jsonl", ""),
        (
            "table",
            "table.jsonl",
            "envelope = \"upsert\"\nkey = [\"id\"]\ndeleted_field = \"deleted\"",
        ),
    ],
    graph: "[nodes.evens]\ntype = \"filter\"\ninput = \"events\"\nexpr = 'n % 2 == 0'\n",
    sinks: &[
        ("evens", "evens", "append"),
        ("table", "table", "upsert"),
        ("table_log", "table", "changelog"),
    ],
    timing_dependent: &[],
    once: &[],
    strip: &[],
    round: |rng, round| {
        let events = events(round * 500..round * 500 + 500);
        let changes = (0..10)
            .map(|_| {
                let id = rng.random_range(0..50u32);
                if rng.random_bool(0.2) {
                    format!("{{\"id\":{id},\"deleted\":true}}")
                } else {
                    format!("{{\"id\":{id},\"v\":{}}}", rng.random_range(0..1000u32))
                }
            })
            .collect();
        vec![("events.jsonl", events), ("table.jsonl", changes)]
    },
    last: || "{\"n\":100000,\"marker\":\"the end\"}".to_owned(),
};

/// Lines of a bundled example file, to vary into new input.
fn templates(path: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(common::root().join(path))
        .expect("example data")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Sets `field` of `v` to `value` where `v` has it.
fn vary(v: &mut serde_json::Value, field: &str, value: serde_json::Value) {
    if let Some(slot) = v.get_mut(field) {
        *slot = value;
    }
}

/// The delivery dataflow over reports varied from the bundled ones: 100 tokens, timestamps
/// out of order, some lines broken.
const DELIVERY: Scenario = Scenario {
    name: "delivery",
    sources: &[("reports", "reports.jsonl", "")],
    graph: "[nodes.delivery]\ntype = \"delivery\"\ninput = \"reports\"\nguard_share = 0.5\nguard_window_ms = 600000\n",
    sinks: &[
        ("unsubscribes", "delivery.unsubscribes", "upsert"),
        ("token_replacements", "delivery.token_replacements", "upsert"),
        ("error_stats", "delivery.error_stats", "upsert"),
        ("alerts", "delivery.alerts", "upsert"),
    ],
    timing_dependent: &[],
    once: &[],
    strip: &[],
    round: |rng, round| {
        let templates = templates("examples/delivery/reports.jsonl");
        let lines = (0..200)
            .map(|i| {
                if rng.random_bool(0.01) {
                    return "{\"broken\":".to_owned();
                }
                let mut v = templates[rng.random_range(0..templates.len())].clone();
                vary(&mut v, "push_token", format!("tok-{}", rng.random_range(0..100)).into());
                vary(
                    &mut v,
                    "registration_id",
                    format!("tok-{}", rng.random_range(0..100)).into(),
                );
                vary(&mut v, "message_id", format!("m-{round}-{i}").into());
                let ts = 1_700_000_000_000u64 + round * 60_000 + rng.random_range(0..120_000);
                vary(&mut v, "ts", ts.into());
                v.to_string()
            })
            .collect();
        vec![("reports.jsonl", lines)]
    },
    // A dead token with a unique name, so its unsubscribe is the marker.
    last: || {
        "{\"message_id\":\"m-last\",\"app\":\"1:100000000001:android:0000aaaa\",\"protocol\":\"fcm-legacy\",\
          \"spam\":false,\"push_token\":\"tok-marker\",\"status\":\"error\",\"error_code\":\"NotRegistered\",\
          \"ts\":1800000000000,\"marker\":\"tok-marker\"}"
            .to_owned()
    },
};

/// The contacts dataflow over client changes varied from the bundled ones (30 clients, ten
/// contact fields) and a contact-data table that keeps changing.
const CONTACTS: Scenario = Scenario {
    name: "contacts",
    sources: &[
        ("changes", "changes.jsonl", ""),
        (
            "contact_data",
            "contact-data.jsonl",
            "envelope = \"upsert\"\nkey = [\"app_code\", \"contact_field_id\", \"contact_field_value\"]",
        ),
    ],
    graph: "[nodes.contacts]\ntype = \"contacts\"\nchanges = \"changes\"\ncontact_data = \"contact_data\"\n",
    sinks: &[
        ("client_state", "contacts.client_state", "upsert"),
        ("devices", "contacts.devices", "upsert"),
        ("resolved_contacts", "contacts.resolved_contacts", "upsert"),
        ("contact_references", "contacts.contact_references", "upsert"),
        (
            "anonymous_contacts_created",
            "contacts.anonymous_contacts_created",
            "append",
        ),
        ("client_updates", "contacts.client_state_client_updates", "changelog"),
        (
            "push_token_updates",
            "contacts.client_state_push_token_updates",
            "changelog",
        ),
        ("contact_updates", "contacts.client_state_contact_updates", "changelog"),
        ("suite_contact_updates", "contacts.suite_contact_updates", "changelog"),
    ],
    // A streaming run creates an anonymous contact for a field read before its mapping, which
    // a bounded run reading everything at once never does; but each is created once.
    timing_dependent: &["anonymous_contacts_created"],
    once: &["anonymous_contacts_created"],
    strip: &[],
    round: |rng, round| {
        let changes = templates("examples/contacts/client-changes.jsonl");
        let table = templates("examples/contacts/contact-data.jsonl");
        let field = |rng: &mut SmallRng| format!("person-{}@example.com", rng.random_range(0..10));
        let lines = (0..60)
            .map(|_| {
                let mut v = changes[rng.random_range(0..changes.len())].clone();
                vary(&mut v, "client_id", format!("c{}", rng.random_range(0..30)).into());
                vary(&mut v, "push_token", format!("tok-{}", rng.random_range(0..40)).into());
                vary(&mut v, "contact_field_value", field(rng).into());
                let ts = 1_700_000_000_000u64 + round * 10_000 + rng.random_range(0..20_000);
                vary(&mut v, "ts", ts.into());
                v.to_string()
            })
            .collect();
        let rows = (0..3)
            .map(|_| {
                let mut v = table[rng.random_range(0..table.len())].clone();
                vary(&mut v, "contact_field_value", field(rng).into());
                vary(&mut v, "contact_id", format!("C-{}", rng.random_range(0..20)).into());
                v.to_string()
            })
            .collect();
        vec![("changes.jsonl", lines), ("contact-data.jsonl", rows)]
    },
    last: || {
        "{\"type\":\"client\",\"client_id\":\"c-marker\",\"app_code\":\"APP1\",\"properties\":{},\
          \"ts\":1800000000000,\"marker\":\"c-marker\"}"
            .to_owned()
    },
};

/// The messages dataflow over sends between four users, some invalid, some with files.
/// Message ids and timestamps come from the epoch an op was read in, so they are compared
/// away; everything else must match exactly.
const MESSAGES: Scenario = Scenario {
    name: "messages",
    sources: &[("ops", "ops.jsonl", "")],
    graph: "[nodes.timeline]\ntype = \"messages\"\nops = \"ops\"\n",
    sinks: &[
        ("messages", "timeline.messages", "upsert"),
        ("feed", "timeline.feed", "upsert"),
        ("accepted", "timeline.accepted", "append"),
        ("rejections", "timeline.rejections", "append"),
        ("file_usage", "timeline.file_usage", "upsert"),
        ("file_usage_events", "timeline.file_usage_events", "append"),
    ],
    // Changes of the set of files in use, which depends on how sends fall into epochs.
    timing_dependent: &["file_usage_events"],
    once: &[],
    strip: &["id", "timestamp", "created", "edited"],
    round: |rng, round| {
        let users = ["ann", "bob", "cat", "dan"];
        let lines = (0..100)
            .map(|i| {
                let files: Vec<String> = (0..rng.random_range(0..3))
                    .map(|_| format!("65a1f0c2e4b0a1b2c3d4e5f{}", rng.random_range(0..5)))
                    .collect();
                let to = if rng.random_bool(0.05) {
                    "  "
                } else {
                    users[rng.random_range(0..4)]
                };
                serde_json::json!({
                    "op": "send",
                    "request_id": format!("r-{round}-{i}"),
                    "user": users[rng.random_range(0..4)],
                    "to": to,
                    "text": format!("message {round}-{i}"),
                    "files": files,
                })
                .to_string()
            })
            .collect();
        vec![("ops.jsonl", lines)]
    },
    last: || {
        "{\"op\":\"send\",\"request_id\":\"r-last\",\"user\":\"ann\",\"to\":\"bob\",\"text\":\"the end\",\
          \"files\":[],\"marker\":\"the end\"}"
            .to_owned()
    },
};

/// A DynamoDB-typed Accounts item with random discoverability and keys, the way real items
/// vary.
fn account_item(rng: &mut SmallRng, n: u32, version: u64, number: &str) -> serde_json::Value {
    let discoverable = rng.random_bool(0.9).then(|| rng.random_bool(0.7));
    let keys = rng.random_bool(0.8).then(|| rng.random_range(0..4u8));
    common::accounts::item(n, version, number, discoverable, keys)
}

/// The cds dataflow over a scan of the Accounts table and its change stream, arriving
/// together: 150 accounts competing for 60 numbers, versions out of order, removals,
/// changes that touch nothing cds sees, and some broken records.
const CDS: Scenario = Scenario {
    name: "cds",
    sources: &[
        (
            "account_changes",
            "account-changes.jsonl",
            "format = \"dynamodb-stream\"",
        ),
        ("accounts", "accounts-scan.jsonl", "format = \"dynamodb-item\""),
    ],
    graph: "[nodes.cds]\ntype = \"cds\"\nchanges = \"account_changes\"\nsnapshot = \"accounts\"\n",
    sinks: &[
        ("accounts_by_uuid", "cds.accounts_by_uuid", "upsert"),
        ("directory", "cds.directory", "upsert"),
        ("cds_updates", "cds.cds_updates", "append"),
    ],
    timing_dependent: &[],
    once: &[],
    strip: &[],
    round: |rng, round| {
        let number = |rng: &mut SmallRng| format!("+1555{:07}", rng.random_range(0..60));
        let scan = if round < 10 {
            (0..15)
                .map(|i| {
                    let n = (round * 15 + i) as u32;
                    let (number, version) = (number(rng), rng.random_range(1..4));
                    account_item(rng, n, version, &number).to_string()
                })
                .collect()
        } else {
            Vec::new()
        };
        let changes = (0..50)
            .map(|i| {
                if rng.random_bool(0.01) {
                    return "{\"eventName\":\"UPSERT\"}".to_owned();
                }
                let n = rng.random_range(0..150);
                let version = rng.random_range(1..12);
                let time_ms = 1_700_000_000_000 + round * 1_000 + rng.random_range(0..5_000);
                let sequence = round * 100 + i;
                let old_number = number(rng);
                let old = account_item(rng, n, version, &old_number);
                let record = match rng.random_range(0..10) {
                    0 => common::accounts::change("REMOVE", n, time_ms, sequence, Some(old), None),
                    1 => {
                        let new_number = number(rng);
                        let new = account_item(rng, n, version, &new_number);
                        common::accounts::change("INSERT", n, time_ms, sequence, None, Some(new))
                    }
                    // A change of V and D only: cds sees nothing.
                    2 => {
                        let mut new = old.clone();
                        new["V"] = serde_json::json!({"N": (version + 1).to_string()});
                        common::accounts::change("MODIFY", n, time_ms, sequence, Some(old), Some(new))
                    }
                    _ => {
                        let new_number = if rng.random_bool(0.5) { number(rng) } else { old_number };
                        let new = account_item(rng, n, version + 1, &new_number);
                        common::accounts::change("MODIFY", n, time_ms, sequence, Some(old), Some(new))
                    }
                };
                record.to_string()
            })
            .collect();
        vec![("account-changes.jsonl", changes), ("accounts-scan.jsonl", scan)]
    },
    // A new account on a number no other has: its row is the marker.
    last: || {
        let mut rng = SmallRng::seed_from_u64(0);
        let new = account_item(&mut rng, 999, 1, "+15559999999");
        let mut record = common::accounts::change("INSERT", 999, 1_800_000_000_000, 999_999, None, Some(new));
        record["marker"] = "+15559999999".into();
        record.to_string()
    },
};

#[test]
fn the_cds_pipeline_survives_sigkill_at_random_points() {
    kill_and_compare(&CDS, 20);
}

#[test]
fn the_cds_pipeline_from_kafka_survives_sigkill_at_random_points() {
    kill_and_compare_kafka(&CDS, 20);
}

#[test]
fn the_messages_pipeline_survives_sigkill_at_random_points() {
    kill_and_compare(&MESSAGES, 20);
}

#[test]
fn the_messages_pipeline_from_kafka_survives_sigkill_at_random_points() {
    kill_and_compare_kafka(&MESSAGES, 20);
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_doubles_nothing() {
    kill_and_compare(&GENERIC, 20);
}

#[test]
fn the_delivery_pipeline_survives_sigkill_at_random_points() {
    kill_and_compare(&DELIVERY, 20);
}

#[test]
fn the_contacts_pipeline_survives_sigkill_at_random_points() {
    kill_and_compare(&CONTACTS, 20);
}

#[test]
fn the_delivery_pipeline_from_kafka_survives_sigkill_at_random_points() {
    kill_and_compare_kafka(&DELIVERY, 20);
}

#[test]
fn the_contacts_pipeline_from_kafka_survives_sigkill_at_random_points() {
    kill_and_compare_kafka(&CONTACTS, 20);
}

#[test]
fn a_damaged_newest_checkpoint_is_skipped_for_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pipeline.toml"), pipeline(true, true)).expect("write");
    append(&d.join("events.jsonl"), &events(0..1000));
    append(&d.join("table.jsonl"), &["{\"id\":1,\"v\":\"a\"}".to_owned()]);
    // Two clean stops leave two checkpoints, the newest at the second stop.
    let run = spawn(d);
    wait_evens(d, 500);
    stop(run);
    append(&d.join("events.jsonl"), &events(1000..2000));
    append(&d.join("table.jsonl"), &["{\"id\":1,\"v\":\"b\"}".to_owned()]);
    let run = spawn(d);
    wait_evens(d, 1000);
    stop(run);

    let mut manifests: Vec<_> = std::fs::read_dir(d.join("state"))
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST-"))
        })
        .collect();
    manifests.sort();
    assert_eq!(manifests.len(), 2, "two checkpoints kept: {manifests:?}");
    // Flip one byte of a part of the newest checkpoint.
    let newest = manifests[1].file_name().expect("name").to_string_lossy().into_owned();
    let frontier = newest.trim_start_matches("MANIFEST-").trim_end_matches(".json");
    let part = d.join("state").join(format!("ckpt-{frontier}/positions.json"));
    let mut bytes = std::fs::read(&part).expect("part");
    bytes[3] ^= 0x20;
    std::fs::write(&part, bytes).expect("damage");

    // The restart goes back to the first checkpoint: everything after it is read and
    // written again, exactly once.
    append(&d.join("events.jsonl"), &events(2000..2002));
    let log = std::fs::File::create(d.join("restart.log")).expect("log");
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(d)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluice");
    wait_evens(d, 1001);
    stop(run);
    let log = std::fs::read_to_string(d.join("restart.log")).expect("log");
    assert!(log.contains("skipping a checkpoint that does not verify"), "{log}");
    let first = manifests[0].file_name().expect("name").to_string_lossy().into_owned();
    let first = first
        .trim_start_matches("MANIFEST-")
        .trim_end_matches(".json")
        .trim_start_matches('0');
    let restart = log
        .lines()
        .find(|l| l.contains("restarting from a checkpoint"))
        .unwrap_or_default();
    assert!(
        restart.contains(first),
        "restarted from the older checkpoint {first}: {log}"
    );
    assert_eq!(outputs(d), uninterrupted(d));
}

/// Starts process `i` of a cluster of `n`, each with `workers` workers, in `dir`.
fn spawn_process(dir: &Path, hosts: &Path, (i, n): (usize, usize), workers: usize) -> Child {
    let hosts = hosts.to_string_lossy();
    spawn_with(
        dir,
        &[
            "--workers",
            &workers.to_string(),
            "--processes",
            &n.to_string(),
            "--process",
            &i.to_string(),
            "--hostfile",
            &hosts,
        ],
    )
}

/// The contacts scenario with the changes read after the contact data: an anonymous contact
/// is then created only for fields nobody maps, whatever the number of workers, so every
/// output of a bounded run is the same however it is spread.
const CONTACTS_AFTER_TABLE: Scenario = Scenario {
    sources: &[
        ("changes", "changes.jsonl", "start_after = [\"contact_data\"]"),
        (
            "contact_data",
            "contact-data.jsonl",
            "envelope = \"upsert\"\nkey = [\"app_code\", \"contact_field_id\", \"contact_field_value\"]",
        ),
    ],
    timing_dependent: &[],
    ..CONTACTS
};

#[test]
fn the_contacts_pipeline_on_two_processes_of_two_workers_equals_one_worker() {
    let scenario = &CONTACTS_AFTER_TABLE;
    let mut rng = SmallRng::seed_from_u64(0xc1);
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::tempdir().expect("tempdir");
    for d in [one.path(), two.path()] {
        std::fs::write(d.join("pipeline.toml"), spread_pipeline(scenario, false)).expect("write");
    }
    for round in 0..40 {
        for (file, lines) in (scenario.round)(&mut rng, round) {
            append_spread(one.path(), file, &lines);
            append_spread(two.path(), file, &lines);
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "--workers", "1", "pipeline.toml"])
        .current_dir(one.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let hosts = hostfile(two.path(), 2);
    let mut processes: Vec<Child> = (0..2).map(|i| spawn_process(two.path(), &hosts, (i, 2), 2)).collect();
    for (i, p) in processes.iter_mut().enumerate() {
        let status = exits_within(p, Duration::from_secs(90)).expect("a bounded run ends");
        assert!(status.success(), "process {i}: {status:?}");
    }

    let want = scenario.outputs(one.path());
    let got = scenario.outputs(two.path());
    assert!(want["client_state"].len() >= 30, "{:?}", want["client_state"]);
    assert!(!want["anonymous_contacts_created"].is_empty());
    assert!(!want["dead"].is_empty(), "the examples' bad lines are dead-lettered");
    for (sink, lines) in &want {
        assert_eq!(
            &got[sink], lines,
            "{sink}: 2 processes × 2 workers differ from 1 worker"
        );
    }
}

#[test]
fn a_cluster_stops_when_one_process_dies_and_resumes_from_its_checkpoint() {
    let scenario = &CONTACTS;
    let mut rng = SmallRng::seed_from_u64(0xc2);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pipeline.toml"), spread_pipeline(scenario, true)).expect("write");
    for file in [
        "changes.jsonl",
        "changes-1.jsonl",
        "changes-2.jsonl",
        "changes-3.jsonl",
        "contact-data.jsonl",
    ] {
        std::fs::write(d.join(file), "").expect("write");
    }
    let hosts = hostfile(d, 2);
    let mut round = 0;
    let mut feed = |rng: &mut SmallRng, rounds: u64| {
        for _ in 0..rounds {
            for (file, lines) in (scenario.round)(rng, round) {
                append_spread(d, file, &lines);
            }
            round += 1;
        }
    };
    // Kill the follower, then the leader: either way the survivor stops.
    for victim in [1, 0] {
        let mut processes: Vec<Child> = (0..2).map(|i| spawn_process(d, &hosts, (i, 2), 2)).collect();
        for _ in 0..10 {
            feed(&mut rng, 1);
            std::thread::sleep(Duration::from_millis(rng.random_range(20..80)));
        }
        let checkpoints = || std::fs::read_dir(d.join("state")).map_or(0, |e| e.count());
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpoints() == 0 {
            assert!(Instant::now() < deadline, "no checkpoint was written");
            std::thread::sleep(Duration::from_millis(20));
        }
        processes[victim].kill().expect("SIGKILL");
        processes[victim].wait().expect("reap");
        let survivor = &mut processes[1 - victim];
        let status = exits_within(survivor, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("process {} still runs 30 s after process {victim} died", 1 - victim));
        assert!(!status.success(), "the survivor exits with an error: {status:?}");
    }
    feed(&mut rng, 10);
    let mut processes: Vec<Child> = (0..2).map(|i| spawn_process(d, &hosts, (i, 2), 2)).collect();
    send_last_and_wait(scenario, d, &Input::Files);
    // A stop sent to one process stops the cluster.
    let follower = processes.pop().expect("process 1");
    stop(processes.pop().expect("process 0"));
    let mut follower = follower;
    let status = exits_within(&mut follower, Duration::from_secs(30)).expect("process 1 stops with the cluster");
    assert!(status.success(), "process 1: {status:?}");
    assert_like_uninterrupted(scenario, d, &Input::Files, Some(("changes.jsonl", "changes*.jsonl")));
}

/// A contacts pipeline reading the changes from four files (`changes*.jsonl`), so that
/// partitions are read by the workers of every process.
fn spread_pipeline(scenario: &Scenario, streaming: bool) -> String {
    scenario
        .pipeline_on(None, streaming, streaming)
        .replace("path = \"changes.jsonl\"", "path = \"changes*.jsonl\"")
}

/// Appends contacts changes over four files by client (`changes.jsonl`, `changes-1.jsonl`
/// to `changes-3.jsonl`), keeping each client's changes in order; other files as they are.
fn append_spread(d: &Path, file: &str, lines: &[String]) {
    if file != "changes.jsonl" {
        return append(&d.join(file), lines);
    }
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines {
        let client = serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v.get("client_id").map(|c| c.to_string()))
            .unwrap_or_default();
        let k = client
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 4;
        let name = if k == 0 {
            "changes.jsonl".to_owned()
        } else {
            format!("changes-{k}.jsonl")
        };
        files.entry(name).or_default().push(l.clone());
    }
    for (name, lines) in files {
        append(&d.join(name), &lines);
    }
}

#[test]
fn processes_that_run_differently_refuse_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pipeline.toml"), spread_pipeline(&CONTACTS, false)).expect("write");
    std::fs::write(d.join("changes.jsonl"), "").expect("write");
    std::fs::write(d.join("contact-data.jsonl"), "").expect("write");
    let hosts = hostfile(d, 2);
    let run = |i: usize, workers: usize| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet", "pipeline.toml", "--processes", "2", "--hostfile"])
            .arg(&hosts)
            .args(["--process", &i.to_string(), "--workers", &workers.to_string()])
            .args(["--cluster-timeout", "60"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (leader, follower) = (run(0, 2), run(1, 1));
    let leader = leader.wait_with_output().expect("wait");
    let follower = follower.wait_with_output().expect("wait");
    assert!(!leader.status.success() && !follower.status.success());
    let told = String::from_utf8_lossy(&leader.stderr);
    assert!(
        told.contains("process 1 runs pipeline `contacts` as one of 2 processes with 1 workers each"),
        "{told}"
    );
    let told = String::from_utf8_lossy(&follower.stderr);
    assert!(told.contains("refused this one"), "{told}");
}
