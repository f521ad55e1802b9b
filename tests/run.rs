//! End-to-end runs of the `sluice` binary on file sources: bounded termination, identical
//! results for any number of workers, dead letters with line numbers, and a clean stop of
//! an unbounded run on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{final_upsert_state, read_jsonl, root, sluice_in};

/// Runs `pipeline` with `workers` in the pipeline's directory, returning stdout; fails the
/// test on a non-zero exit.
fn run_ok(pipeline: &Path, workers: usize) -> String {
    let dir = pipeline.parent().expect("pipeline dir");
    let out = sluice_in(
        dir,
        &[
            "run",
            "--quiet",
            "--workers",
            &workers.to_string(),
            &pipeline.to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "sluice run {} failed: {}",
        pipeline.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

fn parse_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Copies an example to a temp dir so runs do not write into the repository.
fn copy_example(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(root().join("examples").join(name)).expect("example dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

#[test]
fn quickstart_produces_the_expected_report_and_dead_letter() {
    let dir = copy_example("quickstart");
    let stdout = run_ok(&dir.path().join("pipeline.toml"), 2);
    let state = final_upsert_state(&parse_lines(&stdout));
    let expected: BTreeMap<String, serde_json::Value> = [
        (
            r#"{"customer":"c1"}"#,
            r#"{"largest":120,"name":"Ada","orders":2,"tier":"gold","total":162}"#,
        ),
        (
            r#"{"customer":"c2"}"#,
            r#"{"largest":260,"name":"Brendan","orders":3,"tier":"gold","total":313}"#,
        ),
        (
            r#"{"customer":"c3"}"#,
            r#"{"largest":15,"name":"Chen","orders":1,"tier":"bronze","total":15}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), serde_json::from_str(v).expect("json")))
    .collect();
    assert_eq!(state, expected);

    let dead = read_jsonl(&dir.path().join("out/dead-letters.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["source"], "orders");
    assert_eq!(dead[0]["line"], 7);
    assert_eq!(dead[0]["stage"], "source orders");
    assert!(
        dead[0]["reason"].as_str().is_some_and(|r| r.contains("invalid JSON")),
        "{dead:?}"
    );
    assert!(
        dead[0]["partition"]
            .as_str()
            .is_some_and(|p| p.ends_with("orders.jsonl"))
    );
    assert_eq!(dead[0]["raw"], r#"{"order_id": 7, "amount": 10, "status": "paid""#);
}

/// Final state of every output file and the dead letters (as a sorted multiset).
fn outputs_of(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("out")).expect("out dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lines = read_jsonl(&path);
        let changelog = lines.first().is_some_and(|l| l.get("diff").is_some());
        // Append sinks write the records themselves; upsert and changelog lines have a key.
        let append = lines.first().is_some_and(|l| l.get("key").is_none());
        let mut rendered: Vec<String> = if append || name.ends_with(".events.jsonl") {
            lines.iter().map(|l| l.to_string()).collect()
        } else if changelog {
            // Times are wall-clock epochs; what is stable is the collection the diffs add up to.
            let mut sum: BTreeMap<String, i64> = BTreeMap::new();
            for l in &lines {
                *sum.entry(format!("{} => {}", l["key"], l["value"])).or_default() += l["diff"].as_i64().unwrap_or(0);
            }
            sum.into_iter()
                .filter(|(_, n)| *n != 0)
                .map(|(row, n)| if n == 1 { row } else { format!("{row} (x{n})") })
                .collect()
        } else {
            final_upsert_state(&lines)
                .into_iter()
                .map(|(k, v)| format!("{k} => {v}"))
                .collect()
        };
        rendered.sort();
        all.insert(name, rendered);
    }
    all
}

/// A pipeline over generated data exercising every generic operator, written to files.
fn generic_pipeline(dir: &Path) {
    let mut events = std::fs::File::create(dir.join("events.jsonl")).expect("create");
    let mut state = 17u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    for i in 0..3000 {
        let r = next();
        let line = match r % 50 {
            0 => "{not json".to_owned(),
            1 => format!(r#"{{"n":{i},"amount":{}}}"#, r % 97),
            _ => format!(
                r#"{{"n":{i},"user":"u{}","amount":{},"kind":"{}"}}"#,
                r % 37,
                r % 97,
                ["a", "b", "c"][(r % 3) as usize]
            ),
        };
        writeln!(events, "{line}").expect("write");
    }
    let mut users = std::fs::File::create(dir.join("users.jsonl")).expect("create");
    for i in 0..37 {
        writeln!(users, r#"{{"user":"u{i}","tier":{}}}"#, i % 4).expect("write");
    }
    for i in (0..37).step_by(5) {
        writeln!(users, r#"{{"user":"u{i}","deleted":true}}"#).expect("write");
    }
    let toml = r#"
[dead_letters]
type = "file"
path = "out/dead-letters.jsonl"

[sources.events]
type = "file"
path = "events.jsonl"

[sources.users]
type = "file"
path = "users.jsonl"
envelope = "upsert"
key = ["user"]
deleted_field = "deleted"

[nodes.big]
type = "filter"
input = "events"
expr = "amount > 10"

[nodes.keyed]
type = "key_by"
input = "big"
key = ["user"]

[nodes.totals]
type = "aggregate"
input = "keyed"
aggregates = { n = { func = "count" }, sum = { func = "sum", field = "amount" }, lo = { func = "min", field = "amount" }, hi = { func = "max", field = "amount" } }

[nodes.counts]
type = "count"
input = "keyed"

[nodes.newest]
type = "latest"
input = "keyed"
order_by = "n"

[nodes.joined]
type = "join"
left = "totals"
right = "users"
kind = "left"

[nodes.shaped]
type = "map"
input = "joined"
expr = '{"sum": left.sum, "tier": right == null ? -1 : right.tier}'

[nodes.a_events]
type = "filter"
input = "events"
expr = 'kind == "a"'

[nodes.c_events]
type = "filter"
input = "events"
expr = 'kind == "c"'

[nodes.a_or_c]
type = "union"
inputs = ["a_events", "c_events"]

[sinks.shaped]
type = "file"
path = "out/shaped.jsonl"
input = "shaped"
mode = "upsert"

[sinks.counts]
type = "file"
path = "out/counts.jsonl"
input = "counts"
mode = "upsert"

[sinks.newest]
type = "file"
path = "out/newest.jsonl"
input = "newest"
mode = "upsert"

[sinks.a_or_c]
type = "file"
path = "out/a_or_c.events.jsonl"
input = "a_or_c"
mode = "append"
"#;
    std::fs::write(dir.join("pipeline.toml"), toml).expect("write pipeline");
}

#[test]
fn one_two_and_four_workers_give_identical_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    generic_pipeline(dir.path());
    let mut results = Vec::new();
    for workers in [1, 2, 4] {
        run_ok(&dir.path().join("pipeline.toml"), workers);
        results.push((workers, outputs_of(dir.path())));
    }
    let (_, first) = &results[0];
    assert!(first.get("shaped.jsonl").is_some_and(|s| s.len() == 37), "{first:?}");
    assert!(first.get("dead-letters.jsonl").is_some_and(|d| !d.is_empty()));
    for (workers, outputs) in &results[1..] {
        assert_eq!(outputs, first, "{workers} workers differ from 1 worker");
    }
}

#[test]
fn malformed_lines_are_dead_lettered_with_line_numbers_and_good_lines_are_unaffected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good: Vec<String> = (0..200).map(|i| format!(r#"{{"id":"k{}","v":{i}}}"#, i % 13)).collect();
    let mut mixed = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in good.iter().enumerate() {
        if i % 17 == 3 {
            mixed.push("{\"id\": \"broken\"".to_owned());
            bad_lines.push(mixed.len());
        }
        if i % 29 == 5 {
            mixed.push(r#"{"v": 1}"#.to_owned());
            bad_lines.push(mixed.len());
        }
        mixed.push(line.clone());
    }
    let pipeline = |data: &str, out: &str| {
        format!(
            "[dead_letters]\ntype = \"file\"\npath = \"{out}/dead.jsonl\"\n\n[sources.s]\ntype = \"file\"\npath = \"{data}\"\nenvelope = \"upsert\"\nkey = [\"id\"]\n\n[sinks.o]\ntype = \"file\"\npath = \"{out}/o.jsonl\"\ninput = \"s\"\nmode = \"upsert\"\n"
        )
    };
    std::fs::write(dir.path().join("good.jsonl"), good.join("\n")).expect("write");
    std::fs::write(dir.path().join("mixed.jsonl"), mixed.join("\n")).expect("write");
    std::fs::write(dir.path().join("good.toml"), pipeline("good.jsonl", "good")).expect("write");
    std::fs::write(dir.path().join("mixed.toml"), pipeline("mixed.jsonl", "mixed")).expect("write");
    run_ok(&dir.path().join("good.toml"), 2);
    run_ok(&dir.path().join("mixed.toml"), 2);

    let good_state = final_upsert_state(&read_jsonl(&dir.path().join("good/o.jsonl")));
    let mixed_state = final_upsert_state(&read_jsonl(&dir.path().join("mixed/o.jsonl")));
    assert_eq!(good_state.len(), 13);
    assert_eq!(mixed_state, good_state);

    let dead = read_jsonl(&dir.path().join("mixed/dead.jsonl"));
    let mut lines: Vec<usize> = dead
        .iter()
        .filter_map(|d| d["line"].as_u64())
        .map(|l| l as usize)
        .collect();
    lines.sort();
    assert_eq!(lines, bad_lines);
    assert!(
        dead.iter()
            .all(|d| d["source"] == "s" && d["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
    assert!(dead.iter().any(|d| d["reason"] == "missing key field `id`"));
    assert!(read_jsonl(&dir.path().join("good/dead.jsonl")).is_empty());
}

#[test]
fn an_unbounded_run_stops_cleanly_on_sigterm_and_flushes_its_sinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("events.jsonl");
    std::fs::write(&data, "{\"n\":1}\n").expect("write");
    let toml = "[pipeline]\nepoch_ms = 20\n\n[sources.e]\ntype = \"file\"\npath = \"events.jsonl\"\nfollow = true\npoll_ms = 20\n\n[sinks.o]\ntype = \"file\"\npath = \"out.jsonl\"\ninput = \"e\"\nmode = \"append\"\n";
    std::fs::write(dir.path().join("pipeline.toml"), toml).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", &dir.path().join("pipeline.toml").to_string_lossy()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let out = dir.path().join("out.jsonl");
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() >= n) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(wait_for(1), "the first line never reached the sink");
    let mut f = std::fs::OpenOptions::new().append(true).open(&data).expect("open");
    for n in 2..=50 {
        writeln!(f, "{{\"n\":{n}}}").expect("append");
    }
    drop(f);
    assert!(wait_for(50), "appended lines never reached the sink");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "sluice did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let mut ns: Vec<u64> = read_jsonl(&out).iter().filter_map(|v| v["n"].as_u64()).collect();
    ns.sort();
    assert_eq!(ns, (1..=50).collect::<Vec<_>>());
}

#[test]
fn a_bounded_run_over_many_files_terminates() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in 0..7 {
        let body: String = (0..100).map(|i| format!("{{\"f\":{f},\"i\":{i}}}\n")).collect();
        std::fs::write(dir.path().join(format!("part-{f}.jsonl")), body).expect("write");
    }
    let toml = "[sources.e]\ntype = \"file\"\npath = \"part-*.jsonl\"\n\n[sinks.o]\ntype = \"file\"\npath = \"out.jsonl\"\ninput = \"e\"\nmode = \"append\"\n";
    std::fs::write(dir.path().join("pipeline.toml"), toml).expect("write");
    run_ok(&dir.path().join("pipeline.toml"), 3);
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 700);
    // No dead-letter file is configured: the default lands in the working directory, empty.
    assert!(read_jsonl(&dir.path().join("dead-letters.jsonl")).is_empty());
}

#[test]
fn a_missing_input_file_fails_the_run_naming_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = "[sources.orders]\ntype = \"file\"\npath = \"missing.jsonl\"\n\n[sinks.o]\ntype = \"stdout\"\ninput = \"orders\"\nmode = \"append\"\n";
    std::fs::write(dir.path().join("pipeline.toml"), toml).expect("write");
    let out = sluice_in(dir.path(), &["run", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("source orders") && stderr.contains("missing.jsonl") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_sink_that_cannot_be_opened_fails_the_run_naming_the_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("events.jsonl"), "{\"a\":1}\n").expect("write");
    // A regular file where the sink's directory should be.
    std::fs::write(dir.path().join("blocked"), "").expect("write");
    let toml = "[sources.e]\ntype = \"file\"\npath = \"events.jsonl\"\n\n[sinks.out]\ntype = \"file\"\npath = \"blocked/out.jsonl\"\ninput = \"e\"\nmode = \"append\"\n";
    std::fs::write(dir.path().join("pipeline.toml"), toml).expect("write");
    let out = sluice_in(dir.path(), &["run", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sink out") && stderr.contains("blocked"), "{stderr}");
}

/// The outputs of an example run as one text: stdout (upsert lines as final state, other
/// lines in order) and every file under `out/`.
fn example_report(dir: &Path, stdout: &str) -> String {
    let lines = parse_lines(stdout);
    let (upserts, others): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| {
        l.get("key").is_some() && l.get("value").is_some() && l.as_object().is_some_and(|o| o.len() == 2)
    });
    let mut report = String::from("# stdout: upserts, final state\n");
    for (k, v) in final_upsert_state(&upserts) {
        report.push_str(&format!("{k} => {v}\n"));
    }
    report.push_str("# stdout: other lines, in order\n");
    for line in others {
        report.push_str(&format!("{line}\n"));
    }
    for (file, lines) in outputs_of(dir) {
        report.push_str(&format!("# {file}\n"));
        for line in lines {
            report.push_str(&line);
            report.push('\n');
        }
    }
    // The dead letters name the file they came from, which is in a temporary directory.
    report.replace(&dir.to_string_lossy().into_owned(), "<example dir>")
}

#[test]
fn the_contacts_example_produces_its_golden_outputs() {
    let dir = copy_example("contacts");
    let stdout = run_ok(&dir.path().join("pipeline.toml"), 2);
    common::assert_golden("examples/contacts.txt", &example_report(dir.path(), &stdout));
}

#[test]
fn the_cds_example_produces_its_golden_outputs() {
    let dir = copy_example("cds");
    let stdout = run_ok(&dir.path().join("pipeline.toml"), 2);
    common::assert_golden("examples/cds.txt", &example_report(dir.path(), &stdout));
}

#[test]
fn the_delivery_example_produces_its_golden_outputs() {
    let dir = copy_example("delivery");
    let stdout = run_ok(&dir.path().join("pipeline.toml"), 2);
    let mut report = String::from("# stdout (unsubscribes and alerts), final state\n");
    for (k, v) in final_upsert_state(&parse_lines(&stdout)) {
        report.push_str(&format!("{k} => {v}\n"));
    }
    for (file, lines) in outputs_of(dir.path()) {
        report.push_str(&format!("# {file}\n"));
        for line in lines {
            report.push_str(&line);
            report.push('\n');
        }
    }
    // The dead letters name the file they came from, which is in a temporary directory.
    let report = report.replace(&dir.path().to_string_lossy().into_owned(), "<example dir>");
    common::assert_golden("examples/delivery.txt", &report);
}

/// A change record of the cds example's shape, with the given images' typed JSON.
fn cds_change(event: &str, old: Option<&str>, new: Option<&str>, t: u64) -> String {
    let mut dynamodb = format!(r#""ApproximateCreationDateTime":{t},"SequenceNumber":"{t}""#);
    for (field, image) in [("OldImage", old), ("NewImage", new)] {
        if let Some(image) = image {
            dynamodb.push_str(&format!(r#","{field}":{image}"#));
        }
    }
    format!(r#"{{"eventName":"{event}","dynamodb":{{{dynamodb}}}}}"#)
}

/// An account image: `U` from `u`, `P`, `C`, `V`, `D`, and `PNI`/`UAK` unless `pni` is empty.
fn cds_image(u: u8, p: &str, c: bool, v: u64, d: &str, pni: &str) -> String {
    let uuid = sluice_runtime::value::base64_encode(&[u; 16]);
    let keys = if pni.is_empty() {
        String::new()
    } else {
        format!(r#","PNI":{{"B":"{pni}"}},"UAK":{{"B":"AAEC"}}"#)
    };
    let d = sluice_runtime::value::base64_encode(d.as_bytes());
    format!(
        r#"{{"U":{{"B":"{uuid}"}},"P":{{"S":"{p}"}},"C":{{"BOOL":{c}}},"V":{{"N":"{v}"}},"D":{{"B":"{d}"}}{keys}}}"#
    )
}

#[test]
fn the_cds_pre_filter_changes_no_output() {
    // Records the decoder may drop and records it must leave to the node: V-only changes,
    // equal values spelled differently, PNI/UAK from a changed D blob, an invalid U in both
    // images, number moves and removals.
    let pni = sluice_runtime::value::base64_encode(&[7; 16]);
    let blob = |uak: &str| format!(r#"{{"pni":"07070707-0707-0707-0707-070707070707","uak":"{uak}"}}"#);
    let a1 = cds_image(1, "+15550000001", true, 1, "{}", &pni);
    let a2 = cds_image(1, "+15550000001", true, 2, r#"{"x":1}"#, &pni);
    let a2_spaced = a2.replace(r#"{"S":"+15550000001"}"#, r#"{ "S" : "+15550000001" }"#);
    let a3 = cds_image(1, "+15550000002", true, 3, "{}", &pni);
    let b1 = cds_image(2, "+15550000003", true, 1, &blob("AAEC"), "");
    let b2 = cds_image(2, "+15550000003", true, 2, &blob("AAEC"), "");
    let b3 = cds_image(2, "+15550000003", true, 3, &blob("AAED"), "");
    let bad1 = cds_image(3, "+15550000004", true, 1, "{}", &pni)
        .replace(&sluice_runtime::value::base64_encode(&[3; 16]), "AAE=");
    let bad2 = bad1.replace(r#""V":{"N":"1"}"#, r#""V":{"N":"2"}"#);
    let lines = [
        cds_change("INSERT", None, Some(&a1), 1),
        cds_change("MODIFY", Some(&a1), Some(&a2), 2),
        cds_change("MODIFY", Some(&a2), Some(&a2_spaced), 3),
        cds_change("INSERT", None, Some(&b1), 4),
        cds_change("MODIFY", Some(&b1), Some(&b2), 5),
        cds_change("MODIFY", Some(&b2), Some(&b3), 6),
        cds_change("MODIFY", Some(&bad1), Some(&bad2), 7),
        cds_change("MODIFY", Some(&a2_spaced), Some(&a3), 8),
        cds_change("REMOVE", Some(&b3), None, 9),
    ];
    let sinks = r#"
[sinks.updates]
type = "file"
path = "out/updates.jsonl"
input = "cds.cds_updates"
mode = "append"
format = "cds-update"

[sinks.directory]
type = "file"
path = "out/directory.jsonl"
input = "cds.directory"
mode = "upsert"

[sinks.accounts]
type = "file"
path = "out/accounts.jsonl"
input = "cds.accounts_by_uuid"
mode = "upsert"
"#;
    let run = |also_read_by_a_sink: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("changes.jsonl"), lines.join("\n")).expect("write");
        let mut toml = format!(
            "[dead_letters]\ntype = \"file\"\npath = \"out/dead-letters.jsonl\"\n\n[sources.changes]\ntype = \"file\"\npath = \"changes.jsonl\"\nformat = \"dynamodb-stream\"\n\n[nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\n{sinks}"
        );
        if also_read_by_a_sink {
            // A second reader that needs every record turns the pre-filter off.
            toml.push_str("\n[sinks.raw]\ntype = \"file\"\npath = \"raw/changes.jsonl\"\ninput = \"changes\"\nmode = \"append\"\n");
        }
        std::fs::write(dir.path().join("pipeline.toml"), toml).expect("write");
        let out = sluice_in(dir.path(), &["run", "--workers", "2", "pipeline.toml"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary = String::from_utf8_lossy(&out.stderr).into_owned();
        // The V-only change and the unchanged blob are dropped before decoding; the same
        // values spelled differently and the invalid U are left to the node.
        assert_eq!(
            summary.contains("read 9 records (2 dropped early as irrelevant)"),
            !also_read_by_a_sink,
            "{summary}"
        );
        let raw_lines = std::fs::read_to_string(dir.path().join("raw/changes.jsonl")).map(|t| t.lines().count());
        let updates = std::fs::read_to_string(dir.path().join("out/updates.jsonl")).expect("updates");
        (outputs_of(dir.path()), updates, raw_lines.ok())
    };
    let (filtered, updates, _) = run(false);
    let (unfiltered, unfiltered_updates, raw) = run(true);
    assert_eq!(updates, unfiltered_updates, "cds_updates, byte for byte and in order");
    assert_eq!(raw, Some(lines.len()), "the second reader saw every record");
    let strip_raw = |outputs: &BTreeMap<String, Vec<String>>| {
        let mut outputs = outputs.clone();
        // The pre-filter hands the node only the attributes it reads, so `raw` differs.
        if let Some(letters) = outputs.get_mut("dead-letters.jsonl") {
            for letter in letters.iter_mut() {
                let mut v: serde_json::Value = serde_json::from_str(letter).expect("json");
                if let Some(o) = v.as_object_mut() {
                    o.remove("raw");
                    o.remove("partition"); // each run has its own directory
                }
                *letter = v.to_string();
            }
        }
        outputs
    };
    assert_eq!(strip_raw(&filtered), strip_raw(&unfiltered));
    let updates: Vec<&str> = updates.lines().collect();
    assert_eq!(
        updates.len(),
        6,
        "a1, b1, b3's new UAK, a's move (removal, insert), b's removal: {updates:?}"
    );
    let letters = &filtered["dead-letters.jsonl"];
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].contains("\"line\":7") && letters[0].contains("not 16"),
        "{letters:?}"
    );
}

#[test]
fn the_fanout_example_produces_its_golden_outputs() {
    let dir = copy_example("fanout");
    let stdout = run_ok(&dir.path().join("pipeline.toml"), 2);
    common::assert_golden("examples/fanout.txt", &example_report(dir.path(), &stdout));
}

#[test]
fn the_messages_example_produces_its_golden_outputs() {
    let dir = copy_example("messages");
    let stdout = run_ok(&dir.path().join("pipeline.toml"), 2);
    let report = example_report(dir.path(), &stdout);
    common::assert_golden("examples/messages.txt", &normalize_timestamps(&report));
}

/// Replaces the wall-clock parts of message output: timestamps (and the ids made of them) by
/// their rank among the report's timestamps, and epoch milliseconds by `<epoch>`. Ranks keep
/// what matters: which ids and timestamps are equal, and their order.
fn normalize_timestamps(report: &str) -> String {
    const MIN_TIMESTAMP: u64 = 1 << 50;
    let bytes = report.as_bytes();
    let mut tokens: Vec<(usize, usize, Option<u64>)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let end = (i..bytes.len())
                .find(|&j| !bytes[j].is_ascii_digit())
                .unwrap_or(bytes.len());
            let n: Option<u64> = report[i..end].parse().ok();
            match n {
                Some(n) if n >= MIN_TIMESTAMP => tokens.push((i, end, Some(n))),
                Some(_) if end - i == 13 => tokens.push((i, end, None)),
                _ => {}
            }
            i = end;
        } else if bytes[i] == b'"' && i + 25 < bytes.len() && bytes[i + 25] == b'"' {
            let text = &report[i + 1..i + 25];
            match u64::from_str_radix(text, 16) {
                Ok(n) if n >= MIN_TIMESTAMP => {
                    tokens.push((i + 1, i + 25, Some(n)));
                    // Past the id: its leading digits (`0000000034480abac…`) are not a number
                    // of their own, and would overlap this token.
                    i += 25;
                }
                _ => i += 1,
            }
        } else {
            i += 1;
        }
    }
    let mut stamps: Vec<u64> = tokens.iter().filter_map(|t| t.2).collect();
    stamps.sort_unstable();
    stamps.dedup();
    let mut out = String::with_capacity(report.len());
    let mut last = 0;
    for (start, end, stamp) in tokens {
        out.push_str(&report[last..start]);
        match stamp {
            Some(n) => {
                let rank = stamps.binary_search(&n).unwrap_or_default() + 1;
                let kind = if bytes[start - 1] == b'"' { "id" } else { "ts" };
                out.push_str(&format!("<{kind} {rank}>"));
            }
            None => out.push_str("<epoch>"),
        }
        last = end;
    }
    out.push_str(&report[last..]);
    out
}

#[test]
fn normalizing_keeps_an_id_whole_whatever_digits_it_starts_with() {
    // 13 leading digits, the length of epoch milliseconds: once taken for one, overlapping
    // the id (a flaky slicing panic, depending on the clock).
    let report =
        "{\"id\":\"0000000034480abac6000000\"} => {\"created\":1796375696944,\"timestamp\":3767272885597503488}";
    assert_eq!(
        normalize_timestamps(report),
        "{\"id\":\"<id 1>\"} => {\"created\":<epoch>,\"timestamp\":<ts 1>}"
    );
}

/// A bounded run held mid-way: four files of 40 000 lines for two workers, written to stdout,
/// which the test does not read until [`HeldRun::release`]. The stdout sink on worker 0
/// blocks once the pipe is full, and worker 1 stops reading its two files when too much is
/// in flight, so the run cannot end while held however fast the machine is.
struct HeldRun {
    _dir: tempfile::TempDir,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl HeldRun {
    fn start(extra: &[&str]) -> HeldRun {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in 0..4 {
            let body: String = (0..40_000).map(|i| format!("{{\"f\":{f},\"i\":{i}}}\n")).collect();
            std::fs::write(dir.path().join(format!("part-{f}.jsonl")), body).expect("write");
        }
        let toml = "[sources.e]\ntype = \"file\"\npath = \"part-*.jsonl\"\n\n[sinks.o]\ntype = \"stdout\"\ninput = \"e\"\nmode = \"append\"\n";
        std::fs::write(dir.path().join("pipeline.toml"), toml).expect("write");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--workers", "2", "--status-every", "1"])
            .args(extra)
            .arg("pipeline.toml")
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            // Wide enough for every part of the bar's line (80 columns leave the detail out).
            .env("COLUMNS", "200")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        HeldRun {
            _dir: dir,
            child,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned()
    }

    /// Waits (up to a minute, for a loaded machine) until stderr satisfies `seen`.
    fn wait_for(&self, what: &str, seen: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen(&self.stderr()) {
            assert!(
                Instant::now() < deadline,
                "no {what} within 60 s; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads stdout, letting the run finish; returns its stderr once it exited successfully.
    fn release(mut self) -> String {
        let mut stdout = self.child.stdout.take().expect("stdout");
        let mut lines = String::new();
        stdout.read_to_string(&mut lines).expect("read stdout");
        assert_eq!(lines.lines().count(), 160_000);
        let status = self.child.wait().expect("wait");
        // The reader thread ends at the pipe's end, soon after the exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains("sluice: read ") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = self.stderr();
        assert!(status.success(), "exit {status:?}: {stderr}");
        stderr
    }
}

/// The `progress_pct` of every status line, in order.
fn progress_pcts(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains("sluice::status"))
        .filter_map(|l| l.split("progress_pct=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn a_bounded_run_without_a_terminal_tells_its_progress_in_the_status_line() {
    let run = HeldRun::start(&[]);
    // Worker 1 has read part of its files, and cannot read them all while the run is held.
    run.wait_for("status line with a share between 0 and 100 %", |e| {
        progress_pcts(e).iter().any(|p| *p > 0.0 && *p < 100.0)
    });
    assert!(!run.stderr().contains('\r'), "no bar without a terminal");
    let stderr = run.release();
    let pcts = progress_pcts(&stderr);
    assert!(pcts.iter().all(|p| (0.0..=100.0).contains(p)), "{stderr}");
    let status: Vec<&str> = stderr.lines().filter(|l| l.contains("sluice::status")).collect();
    let last = status.last().expect("status lines");
    assert!(
        last.contains("progress_pct=100.0") && last.contains("eta_s=0") && last.contains("records_in=160000"),
        "the last status line is the end's: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("sluice: read 160000 records")),
        "the summary comes after it: {stderr}"
    );
}

#[test]
fn a_bounded_run_draws_a_bar_in_place_of_the_status_line_and_erases_it_before_the_summary() {
    let run = HeldRun::start(&["--progress", "always"]);
    // Once the workers have reported: the share, the read rate and the bytes read of all.
    run.wait_for("bar frame with the share, rate and bytes", |e| {
        e.split("\r\x1b[2K").any(|frame| {
            frame.starts_with('[') && frame.contains("% · ETA ") && frame.contains("/s · ") && frame.contains(" of ")
        })
    });
    let stderr = run.release();
    assert!(
        !stderr.contains("sluice::status"),
        "the bar replaces the status line: {stderr}"
    );
    let (frames, summary) = stderr.rsplit_once("\r\x1b[2K").expect("an erased bar");
    assert!(summary.starts_with("sluice: read 160000 records"), "{summary:?}");
    assert!(!frames.is_empty());
}
