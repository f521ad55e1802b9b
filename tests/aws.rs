//! The cds pipeline on AWS APIs, end to end, against local implementations (kinesalite and
//! dynalite, installed by `scripts/services`): a parallel scan of the Accounts table, the change
//! stream from Kinesis (split mid-stream), `cds_updates` written to Kinesis, compared with the
//! same input read from files; an interrupted scan resumed from its checkpoint; throttling.

use sluice_testkit::aws as aws_support;
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_support::{Dynamo, Kinesis};
use common::accounts;
use serde_json::Value;

/// The environment a `sluice run` gets: dummy credentials (the local services take any),
/// and no instance-metadata lookups (they would leave 127.0.0.1).
fn aws_env(command: &mut Command) -> &mut Command {
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", aws_support::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
}

fn spawn(dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("run.log")).expect("log");
    aws_env(&mut Command::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["run", "pipeline.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluice")
}

/// Runs `dir/pipeline.toml` to its end (a bounded pipeline) and returns its stderr.
fn run_to_end(dir: &Path) -> String {
    let out = aws_env(&mut Command::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["run", "pipeline.toml"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The number of records a run's summary line says it read.
fn records_read(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("sluice: read ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no summary line in {log}"))
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).expect("create");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
}

fn e164(account: u32, version: u64) -> String {
    format!("+1555{account:05}{version:02}")
}

/// `n` accounts, each discoverable with keys, at version 1.
fn scan_items(n: u32) -> Vec<Value> {
    (0..n)
        .map(|a| accounts::item(a, 1, &e164(a, 1), Some(true), Some((a % 200) as u8)))
        .collect()
}

/// Changes renumbering accounts `0..accounts` `rounds` times, in version order per account
/// (each a new number that encodes its version), with some removals at the end.
fn changes(accounts_n: u32, rounds: u64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seq = 0;
    for v in 2..2 + rounds {
        for a in 0..accounts_n {
            seq += 1;
            let old = accounts::item(a, v - 1, &e164(a, v - 1), Some(true), Some((a % 200) as u8));
            let new = accounts::item(a, v, &e164(a, v), Some(true), Some((a % 200) as u8));
            let record = accounts::change("MODIFY", a, 1_800_000_000_000 + seq, seq, Some(old), Some(new));
            out.push((accounts::account(a), record.to_string()));
        }
    }
    for a in (0..accounts_n).step_by(7) {
        seq += 1;
        let v = 1 + rounds;
        let old = accounts::item(a, v, &e164(a, v), Some(true), Some((a % 200) as u8));
        let record = accounts::change("REMOVE", a, 1_800_000_000_000 + seq, seq, Some(old), None);
        out.push((accounts::account(a), record.to_string()));
    }
    out
}

/// The final upsert table of a file sink, as text.
fn table(path: &Path) -> BTreeMap<String, Value> {
    common::final_upsert_state(&common::read_jsonl(path))
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect()
}

/// The same cds pipeline over files, bounded: the oracle.
fn file_run(items: &[Value], changes: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_lines(
        &d.join("scan.jsonl"),
        &items.iter().map(Value::to_string).collect::<Vec<_>>(),
    );
    write_lines(
        &d.join("changes.jsonl"),
        &changes.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
    );
    let text = "[pipeline]\nname = \"cds-files\"\nworkers = 2\n\n\
        [dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n\n\
        [sources.accounts]\ntype = \"file\"\npath = \"scan.jsonl\"\nformat = \"dynamodb-item\"\n\n\
        [sources.account_changes]\ntype = \"file\"\npath = \"changes.jsonl\"\nformat = \"dynamodb-stream\"\n\n\
        [nodes.cds]\ntype = \"cds\"\nchanges = \"account_changes\"\nsnapshot = \"accounts\"\n\n\
        [sinks.cds_updates]\ntype = \"file\"\npath = \"out/cds_updates.jsonl\"\ninput = \"cds.cds_updates\"\nmode = \"append\"\nformat = \"cds-update\"\n\n\
        [sinks.directory]\ntype = \"file\"\npath = \"out/directory.jsonl\"\ninput = \"cds.directory\"\nmode = \"upsert\"\n\n\
        [sinks.accounts_by_uuid]\ntype = \"file\"\npath = \"out/accounts_by_uuid.jsonl\"\ninput = \"cds.accounts_by_uuid\"\nmode = \"upsert\"\n";
    std::fs::write(d.join("pipeline.toml"), text).expect("write");
    run_to_end(d);
    dir
}

/// Per account uuid, the numbers of its updates in the order a reader of the stream sees them.
fn numbers_by_account(lines: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines {
        let uuid = l["uuid"].as_str().unwrap_or("").to_owned();
        by.entry(uuid)
            .or_default()
            .push(l["e164"].as_str().unwrap_or("").to_owned());
    }
    by
}

fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_cds_pipeline_on_a_table_scan_and_kinesis_equals_the_file_run() {
    let kinesis = Kinesis::start();
    let dynamo = Dynamo::start();
    let items = scan_items(100_000);
    dynamo.create_table("Accounts", "U", "B");
    dynamo.put_items("Accounts", &items);
    kinesis.create_stream("account-changes", 2);
    kinesis.create_stream("cds-updates", 2);
    let all_changes = changes(300, 30);
    // Most changes are in the stream before the pipeline starts, half of them in a shard
    // that was then split: its children hold the later half, readable at once, and are read
    // only after it, so each account's updates stay in order. The rest stream in while the
    // scan runs.
    let (before, after) = all_changes.split_at(all_changes.len() * 4 / 5);
    let (first, second) = before.split_at(before.len() / 2);
    for chunk in first.chunks(500) {
        kinesis.put("account-changes", chunk);
    }
    let shard = kinesis.list_shards("account-changes")[0].id.clone();
    kinesis.split_shard("account-changes", &shard);
    for chunk in second.chunks(500) {
        kinesis.put("account-changes", chunk);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let text = format!(
        "[pipeline]\nname = \"cds-aws\"\nworkers = 2\nepoch_ms = 20\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n\n\
         [sources.accounts]\ntype = \"dynamodb-scan\"\ntable = \"Accounts\"\nsegments = 8\nendpoint = \"{dyn}\"\n\n\
         [sources.account_changes]\ntype = \"kinesis\"\nstream = \"account-changes\"\nendpoint = \"{kin}\"\n\
         format = \"dynamodb-stream\"\nshard_refresh_ms = 200\n\n\
         [nodes.cds]\ntype = \"cds\"\nchanges = \"account_changes\"\nsnapshot = \"accounts\"\n\n\
         [sinks.cds_updates]\ntype = \"kinesis\"\nstream = \"cds-updates\"\nendpoint = \"{kin}\"\n\
         input = \"cds.cds_updates\"\nmode = \"append\"\nformat = \"cds-update\"\n\n\
         [sinks.directory]\ntype = \"file\"\npath = \"out/directory.jsonl\"\ninput = \"cds.directory\"\nmode = \"upsert\"\n\n\
         [sinks.accounts_by_uuid]\ntype = \"file\"\npath = \"out/accounts_by_uuid.jsonl\"\ninput = \"cds.accounts_by_uuid\"\nmode = \"upsert\"\n",
        dyn = dynamo.endpoint(),
        kin = kinesis.endpoint(),
    );
    std::fs::write(d.join("pipeline.toml"), text).expect("write");
    let mut run = spawn(d);
    for chunk in after.chunks(100) {
        kinesis.put("account-changes", chunk);
    }
    // The last change is in once its account's final removal shows in accounts_by_uuid.
    let oracle = file_run(&items, &all_changes);
    let want_accounts = table(&oracle.path().join("out/accounts_by_uuid.jsonl"));
    wait_until(120, "the pipeline to catch up", || {
        table(&d.join("out/accounts_by_uuid.jsonl")) == want_accounts
    });
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill");
    let status = run.wait().expect("wait");
    let log = std::fs::read_to_string(d.join("run.log")).unwrap_or_default();
    assert!(status.success(), "{log}");

    assert_eq!(
        table(&d.join("out/directory.jsonl")),
        table(&oracle.path().join("out/directory.jsonl")),
        "the directory equals the file run's"
    );
    // cds_updates in Kinesis: the same updates as the file run wrote, each account's in order.
    let written: Vec<Value> = kinesis
        .read_all("cds-updates")
        .iter()
        .map(|r| serde_json::from_slice(&r.data).expect("a cds update"))
        .collect();
    let want: Vec<Value> = common::read_jsonl(&oracle.path().join("out/cds_updates.jsonl"));
    assert_eq!(written.len(), want.len(), "as many updates as the file run");
    assert_eq!(numbers_by_account(&written), numbers_by_account(&want));
    assert!(
        log.contains("read ") && records_read(&log) == (items.len() + all_changes.len()) as u64,
        "every item and change read once: {log}"
    );
}

#[test]
fn an_interrupted_scan_resumes_and_reads_each_item_once() {
    let dynamo = Dynamo::start();
    let items = scan_items(60_000);
    dynamo.create_table("Accounts", "U", "B");
    dynamo.put_items("Accounts", &items);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("changes.jsonl"), "").expect("changes");
    let text = format!(
        "[pipeline]\nname = \"backfill\"\nworkers = 2\nepoch_ms = 20\ncheckpoint_dir = \"state\"\n\
         checkpoint_interval_ms = 200\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n\n\
         [sources.accounts]\ntype = \"dynamodb-scan\"\ntable = \"Accounts\"\nsegments = 8\npage_size = 200\n\
         endpoint = \"{}\"\n\n\
         [sources.account_changes]\ntype = \"file\"\npath = \"changes.jsonl\"\nformat = \"dynamodb-stream\"\n\n\
         [nodes.cds]\ntype = \"cds\"\nchanges = \"account_changes\"\nsnapshot = \"accounts\"\n\n\
         [sinks.accounts_by_uuid]\ntype = \"file\"\npath = \"out/accounts_by_uuid.jsonl\"\ninput = \"cds.accounts_by_uuid\"\nmode = \"upsert\"\n",
        dynamo.endpoint()
    );
    std::fs::write(d.join("pipeline.toml"), text).expect("write");
    // Stopped mid-scan: a clean stop checkpoints every segment's last key.
    let mut run = spawn(d);
    wait_until(60, "some items", || {
        std::fs::metadata(d.join("out/accounts_by_uuid.jsonl")).is_ok_and(|m| m.len() > 0)
    });
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill");
    assert!(run.wait().expect("wait").success());
    let first_log = std::fs::read_to_string(d.join("run.log")).unwrap_or_default();
    let first = records_read(&first_log);
    assert!(
        first > 0 && first < items.len() as u64,
        "stopped mid-scan after {first} items"
    );
    let second_log = run_to_end(d);
    let second = records_read(&second_log);
    assert_eq!(
        first + second,
        items.len() as u64,
        "each item read once over both runs:\n{first_log}\n{second_log}"
    );
    assert_eq!(table(&d.join("out/accounts_by_uuid.jsonl")).len(), items.len());
}

/// Starts the throttling proxy of `tests/clients` in front of `target_port`.
fn throttle_proxy(target_port: u16, every: u32, operations: &str, count: &Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new("python3")
        .arg(common::root().join("tests/clients/throttle_proxy.py"))
        .args([
            &port.to_string(),
            &target_port.to_string(),
            &every.to_string(),
            operations,
        ])
        .arg(count)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    wait_until(20, "the proxy", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

#[test]
fn throttled_reads_and_writes_are_retried_and_lose_nothing() {
    let kinesis = Kinesis::start();
    kinesis.create_stream("in", 2);
    kinesis.create_stream("out", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let count = d.join("throttled.txt");
    let (mut proxy, port) = throttle_proxy(kinesis.port(), 3, "GetRecords,PutRecords", &count);
    let records: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("k{}", i % 50), format!("{{\"n\":{i},\"k\":\"k{}\"}}", i % 50)))
        .collect();
    for chunk in records.chunks(500) {
        kinesis.put("in", chunk);
    }
    let text = format!(
        "[pipeline]\nname = \"throttled\"\nepoch_ms = 20\n\n\
         [sources.events]\ntype = \"kinesis\"\nstream = \"in\"\nendpoint = \"http://127.0.0.1:{port}\"\nbounded = true\n\n\
         [nodes.evens]\ntype = \"filter\"\ninput = \"events\"\nexpr = 'n % 2 == 0'\n\n\
         [sinks.out]\ntype = \"kinesis\"\nstream = \"out\"\nendpoint = \"http://127.0.0.1:{port}\"\ninput = \"evens\"\nmode = \"append\"\n"
    );
    std::fs::write(d.join("pipeline.toml"), text).expect("write");
    run_to_end(d);
    drop(proxy.stdin.take());
    let _ = proxy.wait();
    let throttled: u64 = std::fs::read_to_string(&count)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "the proxy throttled some requests");
    let mut got: Vec<i64> = kinesis
        .read_all("out")
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.data).expect("json")["n"]
                .as_i64()
                .expect("n")
        })
        .collect();
    got.sort_unstable();
    let want: Vec<i64> = (0..3000).filter(|n| n % 2 == 0).collect();
    assert_eq!(got, want, "every even record once, throttled {throttled} times");
}
