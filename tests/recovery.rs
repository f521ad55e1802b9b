//! Checkpoints and exact recovery of the `sluice` binary: a pipeline killed with SIGKILL at
//! random points and restarted each time ends with the outputs of one uninterrupted run —
//! nothing lost, nothing written twice — and a clean stop and restart continue exactly.
//!
//! The pipeline is the shape checkpoints cover today (docs/decisions.md, "Checkpoints"):
//! an event stream filtered to a file, and an upsert table written as upserts and as a
//! changelog, all from followed files.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{final_upsert_state, read_jsonl};
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
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice")
}

/// SIGTERM, then a clean exit within 30 s.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            assert!(exit.success(), "exit status {exit:?}");
            return;
        }
        assert!(Instant::now() < deadline, "sluice did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
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
    let run = spawn(d);
    wait_evens(d, 1000);
    // The table's last change is in by the time a later event is.
    append(&d.join("events.jsonl"), &events(2001..2003));
    wait_evens(d, 1001);
    stop(run);
    assert_eq!(outputs(d), uninterrupted(d));
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_doubles_nothing() {
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pipeline.toml"), pipeline(true, true)).expect("write");
    std::fs::write(d.join("events.jsonl"), "").expect("write");
    std::fs::write(d.join("table.jsonl"), "").expect("write");

    // Input keeps arriving while the pipeline is killed and restarted: 40 rounds of 500
    // events and 10 table changes (updates and deletes over 50 keys).
    let mut next = 0u64;
    let mut feed = |rng: &mut SmallRng| {
        append(&d.join("events.jsonl"), &events(next..next + 500));
        next += 500;
        let changes: Vec<String> = (0..10)
            .map(|_| {
                let id = rng.random_range(0..50u32);
                if rng.random_bool(0.2) {
                    format!("{{\"id\":{id},\"deleted\":true}}")
                } else {
                    format!("{{\"id\":{id},\"v\":{}}}", rng.random_range(0..1000u32))
                }
            })
            .collect();
        append(&d.join("table.jsonl"), &changes);
    };

    let kills = 20;
    let mut kill_points = Vec::new();
    let mut round = 0;
    for _ in 0..kills {
        let mut run = spawn(d);
        let alive = Duration::from_millis(rng.random_range(50..600));
        let started = Instant::now();
        while started.elapsed() < alive {
            if round < 40 {
                feed(&mut rng);
                round += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
        }
        run.kill().expect("SIGKILL");
        run.wait().expect("reap");
        kill_points.push(alive.as_millis());
    }
    while round < 40 {
        feed(&mut rng);
        round += 1;
    }
    // A last run that finishes the input, then a clean stop once it has written the last
    // event (appended only now, so no killed run can have written it).
    let run = spawn(d);
    append(&d.join("events.jsonl"), &events(20_000..20_002));
    let last = d.join("out/evens.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&last).is_ok_and(|t| t.ends_with("{\"n\":20000}\n")) {
        assert!(Instant::now() < deadline, "the last event never reached the output");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(run);

    let (got, want) = (outputs(d), uninterrupted(d));
    eprintln!(
        "seed {seed:#x}: {kills} SIGKILLs after {kill_points:?} ms of running; {} evens, {} table keys, {} changelog entries",
        got.evens.len(),
        got.table.len(),
        got.changelog.len()
    );
    let mut unique = got.evens.clone();
    unique.sort_unstable();
    unique.dedup();
    let doubled = got.evens.len() - unique.len();
    let lost = want.evens.iter().filter(|n| unique.binary_search(n).is_err()).count();
    eprintln!("{lost} events lost, {doubled} written twice");
    assert_eq!((lost, doubled), (0, 0), "events lost and written twice");
    let first_difference = got.evens.iter().zip(&want.evens).position(|(g, w)| g != w);
    assert_eq!(first_difference, None, "the evens differ in order");
    assert_eq!(got.table, want.table, "the final table");
    assert_eq!(
        got.changelog, want.changelog,
        "the changelog, consolidated: no change lost or doubled"
    );
}
