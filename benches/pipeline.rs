//! Throughput and peak memory of `sluice run` on the shared benchmark workloads.
//!
//! Run by hand (not in CI), from the repository root, with `../shared/bench` beside it:
//!
//! ```text
//! cargo bench --bench pipeline                       # delivery and generic filter, 1 M records, 1 and 2 workers
//! cargo bench --bench pipeline -- --n 200000 --workers 1,2,4 --workload delivery
//! cargo bench --bench pipeline -- --workload cds-filter,cds,contacts
//! cargo bench --bench pipeline -- --workload fanout,messages
//! cargo bench --bench pipeline -- --workload contacts --workers 2 --processes 1,2   # 2 workers as 1 or 2 processes
//! ```
//!
//! Each measurement is a separate `sluice run` process (so peak memory is that run's own),
//! on a workload written once by `../shared/bench/gen.py` into a temporary directory.
//! Records/s is records read over wall time including start-up and the final flush.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{between, generator, list};

struct Args {
    n: u64,
    workers: Vec<usize>,
    /// Processes to spread the workers over (a cluster on 127.0.0.1).
    processes: Vec<usize>,
    workloads: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 1_000_000,
        workers: vec![1, 2],
        processes: vec![1],
        workloads: vec!["delivery".into(), "filter".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => args.n = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.n),
            "--workers" => args.workers = list(it.next()).unwrap_or(args.workers),
            "--workload" => args.workloads = list(it.next()).unwrap_or(args.workloads),
            "--processes" => args.processes = list(it.next()).unwrap_or(args.processes),
            // cargo bench passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    args
}

/// The `gen.py` workload a benchmark workload reads.
fn data_set(workload: &str) -> &'static str {
    match workload {
        "cds" | "cds-filter" => "cds",
        "contacts" => "contacts",
        "fanout" | "fanout-file" => "fanout",
        "messages" => "messages",
        _ => "delivery",
    }
}

fn file_sink(name: &str, input: &str, mode: &str, extra: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"file\"\npath = \"OUT/{name}.jsonl\"\ninput = \"{input}\"\nmode = \"{mode}\"\n{extra}\n"
    )
}

fn file_source(name: &str, file: &str, extra: &str) -> String {
    format!("[sources.{name}]\ntype = \"file\"\npath = \"DATA/{file}\"\n{extra}\n")
}

fn pipeline(workload: &str, data: &Path, out: &Path) -> String {
    let dead = "[dead_letters]\ntype = \"file\"\npath = \"OUT/dead-letters.jsonl\"\n\n".to_owned();
    let graph = match workload {
        "delivery" => {
            file_source("reports", "delivery-reports.jsonl", "")
                + "[nodes.delivery]\ntype = \"delivery\"\ninput = \"reports\"\n\n"
                + &file_sink("unsubscribes", "delivery.unsubscribes", "upsert", "")
                + &file_sink("error_stats", "delivery.error_stats", "upsert", "")
                + &file_sink("alerts", "delivery.alerts", "upsert", "")
        }
        "cds-filter" => {
            file_source("changes", "account-changes.jsonl", "format = \"dynamodb-stream\"")
                + "[nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\n\n"
                + &file_sink("updates", "cds.cds_updates", "append", "format = \"cds-update\"")
        }
        "cds" => {
            file_source("accounts", "accounts-scan.jsonl", "format = \"dynamodb-item\"")
                + &file_source("changes", "account-changes.jsonl", "format = \"dynamodb-stream\"")
                + "[nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\nsnapshot = \"accounts\"\n\n"
                + &file_sink("updates", "cds.cds_updates", "append", "format = \"cds-update\"")
                + &file_sink("accounts", "cds.accounts_by_uuid", "upsert", "")
                + &file_sink("directory", "cds.directory", "upsert", "")
        }
        "contacts" => {
            file_source("changes", "client-changes.jsonl", "")
                + &file_source(
                    "contact_data",
                    "contact-data.jsonl",
                    "envelope = \"upsert\"\nkey = [\"app_code\", \"contact_field_id\", \"contact_field_value\"]",
                )
                + "[nodes.contacts]\ntype = \"contacts\"\nchanges = \"changes\"\ncontact_data = \"contact_data\"\n\n"
                + &contacts_sinks()
        }
        "fanout" | "fanout-file" => {
            let deliveries = if workload == "fanout" {
                "[sinks.deliveries]\ntype = \"discard\"\ninput = \"hub.deliveries\"\nmode = \"append\"\n\n".to_owned()
            } else {
                file_sink("deliveries", "hub.deliveries", "append", "")
            };
            file_source(
                "subscribers",
                "subscribers.jsonl",
                "envelope = \"upsert\"\nkey = [\"id\"]",
            ) + &file_source("events", "events.jsonl", "start_after = [\"subscribers\"]")
                + "[nodes.hub]\ntype = \"fanout\"\nsubscribers = \"subscribers\"\nevents = \"events\"\n\n"
                + &deliveries
                + &file_sink("subscriber_errors", "hub.subscriber_errors", "upsert", "")
        }
        "messages" => {
            let mut graph = file_source("ops", "message-ops.jsonl", "")
                + "[nodes.timeline]\ntype = \"messages\"\nops = \"ops\"\n\n";
            for (output, mode) in [
                ("messages", "upsert"),
                ("feed", "upsert"),
                ("accepted", "append"),
                ("rejections", "append"),
                ("file_usage", "upsert"),
                ("file_usage_events", "append"),
            ] {
                graph += &file_sink(output, &format!("timeline.{output}"), mode, "");
            }
            graph
        }
        _ => {
            file_source("reports", "delivery-reports.jsonl", "")
                + "[nodes.v1_errors]\ntype = \"filter\"\ninput = \"reports\"\nexpr = 'status == \"error\" && protocol == \"fcm-v1\"'\n\n"
                + &file_sink("errors", "v1_errors", "append", "")
        }
    };
    (dead + &graph)
        .replace("OUT", &out.to_string_lossy())
        .replace("DATA", &data.to_string_lossy())
}

fn contacts_sinks() -> String {
    let upserts = ["client_state", "devices", "resolved_contacts", "contact_references"];
    let changelogs = [
        "client_state_client_updates",
        "client_state_push_token_updates",
        "client_state_contact_updates",
        "suite_contact_updates",
    ];
    let mut out = String::new();
    for o in upserts {
        out += &file_sink(o, &format!("contacts.{o}"), "upsert", "");
    }
    for o in changelogs {
        out += &file_sink(o, &format!("contacts.{o}"), "changelog", "");
    }
    out + &file_sink("created", "contacts.anonymous_contacts_created", "append", "")
}

fn main() {
    let args = parse_args();
    let Some(script) = generator() else {
        eprintln!("../shared/bench/gen.py not found beside the repository; nothing to measure");
        return;
    };
    let mut sets: Vec<&str> = args.workloads.iter().map(|w| data_set(w)).collect();
    sets.dedup();
    let data = tempfile::tempdir().expect("tempdir");
    for set in sets {
        let status = Command::new("python3")
            .arg(&script)
            .args([set, "--n", &args.n.to_string(), "--out"])
            .arg(data.path())
            .status()
            .expect("run gen.py");
        assert!(status.success(), "gen.py failed");
    }

    println!("workload    records   workers  processes  seconds  records/s  written/s  peak MiB");
    for workload in &args.workloads {
        for &workers in &args.workers {
            for &processes in args.processes.iter().filter(|p| workers.is_multiple_of(**p)) {
                measure(workload, data.path(), (workers, processes), args.n);
            }
        }
    }
}

/// Runs `workload` once with `workers` spread over `processes` processes and prints a row.
fn measure(workload: &str, data: &Path, (workers, processes): (usize, usize), n: u64) {
    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("pipeline.toml");
    std::fs::write(&file, pipeline(workload, data, out.path())).expect("write pipeline");
    let hosts = out.path().join("hosts.txt");
    let ports: Vec<std::net::TcpListener> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let lines: Vec<String> = ports
        .iter()
        .map(|l| l.local_addr().expect("address").to_string())
        .collect();
    std::fs::write(&hosts, lines.join("\n")).expect("write hostfile");
    drop(ports);
    let started = Instant::now();
    let runs: Vec<std::process::Child> = (0..processes)
        .map(|i| {
            let mut run = Command::new(env!("CARGO_BIN_EXE_sluice"));
            run.args(["run", "--workers", &(workers / processes).to_string()]);
            if processes > 1 {
                run.args(["--processes", &processes.to_string(), "--process", &i.to_string()]);
                run.arg("--hostfile").arg(&hosts);
            }
            run.arg(&file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run sluice")
        })
        .collect();
    let (mut read, mut written, mut peak) = (0u64, 0u64, 0f64);
    for run in runs {
        let run = run.wait_with_output().expect("wait for sluice");
        let summary = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "sluice failed: {summary}");
        // Every record read counts (scan items and mappings too), as the summary reports;
        // each process reads its own partitions, and process 0 writes every sink.
        read += between(&summary, "sluice: read ", " record")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // Updates written to every sink (deliveries, for fanout).
        written += between(&summary, "wrote ", " update")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        peak = peak.max(
            between(&summary, "peak memory ", " MiB")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0.0),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let read = if read == 0 { n } else { read };
    println!(
        "{workload:<11} {read:<9} {workers:<8} {processes:<10} {secs:<8.2} {:<10.0} {:<10.0} {peak:.1}",
        read as f64 / secs,
        written as f64 / secs
    );
}
