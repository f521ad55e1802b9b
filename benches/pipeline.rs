//! Throughput and peak memory of `sluice run` on the shared benchmark workloads.
//!
//! Run by hand (not in CI), from the repository root, with `../shared/bench` beside it:
//!
//! ```text
//! cargo bench --bench pipeline                       # delivery and generic filter, 1 M records, 1 and 2 workers
//! cargo bench --bench pipeline -- --n 200000 --workers 1,2,4 --workload delivery
//! ```
//!
//! Each measurement is a separate `sluice run` process (so peak memory is that run's own),
//! on a workload written once by `../shared/bench/gen.py` into a temporary directory.
//! Records/s is records read over wall time including start-up and the final flush.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Args {
    n: u64,
    workers: Vec<usize>,
    workloads: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 1_000_000,
        workers: vec![1, 2],
        workloads: vec!["delivery".into(), "filter".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => args.n = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.n),
            "--workers" => {
                if let Some(v) = it.next() {
                    args.workers = v.split(',').filter_map(|w| w.parse().ok()).collect();
                }
            }
            "--workload" => {
                if let Some(v) = it.next() {
                    args.workloads = v.split(',').map(str::to_owned).collect();
                }
            }
            // cargo bench passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    args
}

fn generator() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.parent()?.join("shared/bench/gen.py");
    script.exists().then_some(script)
}

fn pipeline(workload: &str, data: &Path, out: &Path) -> String {
    let reports = data.join("delivery-reports.jsonl");
    let common = format!(
        "[dead_letters]\ntype = \"file\"\npath = \"{}\"\n\n[sources.reports]\ntype = \"file\"\npath = \"{}\"\n\n",
        out.join("dead-letters.jsonl").display(),
        reports.display()
    );
    let graph = match workload {
        "delivery" => "[nodes.delivery]\ntype = \"delivery\"\ninput = \"reports\"\n\n\
             [sinks.unsubscribes]\ntype = \"file\"\npath = \"OUT/unsubscribes.jsonl\"\ninput = \"delivery.unsubscribes\"\nmode = \"upsert\"\n\n\
             [sinks.error_stats]\ntype = \"file\"\npath = \"OUT/error_stats.jsonl\"\ninput = \"delivery.error_stats\"\nmode = \"upsert\"\n\n\
             [sinks.alerts]\ntype = \"file\"\npath = \"OUT/alerts.jsonl\"\ninput = \"delivery.alerts\"\nmode = \"upsert\"\n"
            .to_owned(),
        _ => "[nodes.v1_errors]\ntype = \"filter\"\ninput = \"reports\"\nexpr = 'status == \"error\" && protocol == \"fcm-v1\"'\n\n\
             [sinks.errors]\ntype = \"file\"\npath = \"OUT/errors.jsonl\"\ninput = \"v1_errors\"\nmode = \"append\"\n"
            .to_owned(),
    };
    common + &graph.replace("OUT", &out.to_string_lossy())
}

fn main() {
    let args = parse_args();
    let Some(script) = generator() else {
        eprintln!("../shared/bench/gen.py not found beside the repository; nothing to measure");
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let status = Command::new("python3")
        .arg(&script)
        .args(["delivery", "--n", &args.n.to_string(), "--out"])
        .arg(data.path())
        .status()
        .expect("run gen.py");
    assert!(status.success(), "gen.py failed");

    println!("workload  records   workers  seconds  records/s  peak MiB");
    for workload in &args.workloads {
        for &workers in &args.workers {
            let out = tempfile::tempdir().expect("tempdir");
            let file = out.path().join("pipeline.toml");
            std::fs::write(&file, pipeline(workload, data.path(), out.path())).expect("write pipeline");
            let started = Instant::now();
            let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["run", "--workers", &workers.to_string()])
                .arg(&file)
                .output()
                .expect("run sluice");
            let secs = started.elapsed().as_secs_f64();
            let summary = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "sluice failed: {summary}");
            let peak = summary
                .split("peak memory ")
                .nth(1)
                .and_then(|s| s.split(" MiB").next())
                .unwrap_or("?")
                .to_owned();
            println!(
                "{workload:<9} {:<9} {workers:<8} {secs:<8.2} {:<10.0} {peak}",
                args.n,
                args.n as f64 / secs
            );
        }
    }
}
