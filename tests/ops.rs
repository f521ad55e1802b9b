//! Operating a run: the admin endpoint's metrics checked against a known input, health and
//! readiness, and JSON logs.

mod common;
mod hub_support;
mod serve_support;

use std::path::Path;
use std::process::{Command, Stdio};

use hub_support::Receiver;
use serve_support::{free_port, get, scrape, wait_for};

#[test]
fn metrics_account_for_every_record_and_lag_reaches_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut lines: Vec<String> = (0..90).map(|i| format!(r#"{{"id": {i}, "v": {}}}"#, i * 2)).collect();
    for i in 0..10 {
        lines.insert(i * 9, format!("not json {i}"));
    }
    std::fs::write(d.join("events.jsonl"), lines.join("\n") + "\n").expect("input");
    std::fs::write(
        d.join("pipeline.toml"),
        "[pipeline]\nname = \"ops\"\nworkers = 2\nepoch_ms = 20\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"dead.jsonl\"\n\n\
         [sources.events]\ntype = \"file\"\npath = \"events.jsonl\"\nfollow = true\npoll_ms = 10\n\n\
         [nodes.big]\ntype = \"filter\"\ninput = \"events\"\nexpr = \"v >= 100\"\n\n\
         [sinks.all]\ntype = \"file\"\npath = \"all.jsonl\"\ninput = \"events\"\nmode = \"append\"\n\n\
         [sinks.big]\ntype = \"file\"\npath = \"big.jsonl\"\ninput = \"big\"\nmode = \"append\"\n",
    )
    .expect("pipeline");
    let (child, admin) = run_with_admin(d);
    wait_for(30, "the admin endpoint", || {
        get(&format!("{admin}/healthz"), &[]).status == 200
    });
    wait_for(30, "readiness", || get(&format!("{admin}/readyz"), &[]).status == 200);
    let p = "pipeline=\"ops\"";
    let records_in = format!("sluice_records_in_total{{{p},source=\"events\"}}");
    let all = format!("sluice_updates_out_total{{{p},sink=\"all\"}}");
    wait_for(30, "every record counted", || {
        let m = scrape(&admin);
        m.get(&records_in) == Some(&100.0) && m.get(&all) == Some(&90.0)
    });
    // The file's partition (its path as the pipeline names it), in bytes left to read.
    let lag = format!("sluice_source_lag{{{p},source=\"events\",partition=\"events.jsonl\",unit=\"bytes\"}}");
    wait_for(30, "lag 0", || scrape(&admin).get(&lag) == Some(&0.0));
    let m = scrape(&admin);
    let dead = m[&format!("sluice_dead_letters_total{{{p},stage=\"source events\"}}")];
    // Records in = records out + dead-lettered, for a sink that takes every good record.
    assert_eq!(m[&records_in], m[&all] + dead, "{m:?}");
    assert_eq!(dead, 10.0);
    assert_eq!(
        m[&format!("sluice_updates_out_total{{{p},sink=\"dead_letters\"}}")],
        10.0
    );
    // 40 of the 90 have v >= 100.
    assert_eq!(m[&format!("sluice_updates_out_total{{{p},sink=\"big\"}}")], 40.0);
    assert_eq!(m[&format!("sluice_ready{{{p}}}")], 1.0);
    let bytes: usize = lines.iter().map(String::len).sum();
    assert_eq!(
        m[&format!("sluice_bytes_in_total{{{p},source=\"events\"}}")],
        bytes as f64,
        "every line's bytes, without its newline"
    );
    let rss = m[&format!("sluice_process_resident_bytes{{{p}}}")];
    let peak = m[&format!("sluice_process_peak_resident_bytes{{{p}}}")];
    assert!(rss > 1e6 && rss <= peak, "{rss} {peak}");
    assert!(m[&format!("sluice_output_delay_seconds{{{p},sink=\"all\"}}")] < 30.0);
    stop(child);
}

#[test]
fn metrics_count_the_updates_each_arrangement_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // One row per key on both sides and no updates: each side's arrangement holds exactly one
    // update per row, however its batches were merged.
    let customers = |from: usize, to: usize| -> Vec<String> {
        (from..to)
            .map(|i| format!(r#"{{"customer": "c{i}", "name": "n{i}"}}"#))
            .collect()
    };
    let accounts: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"customer": "c{}", "plan": "p{i}"}}"#, i * 2))
        .collect();
    serve_support::append(&d.join("customers.jsonl"), &customers(0, 40));
    serve_support::append(&d.join("accounts.jsonl"), &accounts);
    std::fs::write(
        d.join("pipeline.toml"),
        "[pipeline]\nname = \"arr\"\nworkers = 2\nepoch_ms = 20\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"dead.jsonl\"\n\n\
         [sources.customers]\ntype = \"file\"\npath = \"customers.jsonl\"\nfollow = true\npoll_ms = 10\n\
         envelope = \"upsert\"\nkey = [\"customer\"]\n\n\
         [sources.accounts]\ntype = \"file\"\npath = \"accounts.jsonl\"\nfollow = true\npoll_ms = 10\n\
         envelope = \"upsert\"\nkey = [\"customer\"]\n\n\
         [nodes.joined]\ntype = \"join\"\nleft = \"accounts\"\nright = \"customers\"\nkind = \"inner\"\n\n\
         [sinks.joined]\ntype = \"file\"\npath = \"joined.jsonl\"\ninput = \"joined\"\nmode = \"upsert\"\n",
    )
    .expect("pipeline");
    let (child, admin) = run_with_admin(d);
    wait_for(30, "readiness", || get(&format!("{admin}/readyz"), &[]).status == 200);
    let p = "pipeline=\"arr\"";
    let records = |name: &str| format!("sluice_arrangement_records{{{p},arrangement=\"{name}\"}}");
    let pending = |name: &str| format!("sluice_arrangement_pending_records{{{p},arrangement=\"{name}\"}}");
    let (left, right) = (records("Join left: joined"), records("Join right: joined"));
    // Accounts of c0, c2, .., c58 meet customers c0..c39.
    let joined = format!("sluice_updates_out_total{{{p},sink=\"joined\"}}");
    wait_for(30, "both sides arranged", || {
        let m = scrape(&admin);
        m.get(&left) == Some(&30.0) && m.get(&right) == Some(&40.0) && m.get(&joined) == Some(&20.0)
    });
    // Epochs keep passing (and empty batches keep merging) without changing what is held.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let m = scrape(&admin);
    assert_eq!((m[&left], m[&right]), (30.0, 40.0), "{m:?}");
    for name in ["Join left: joined", "Join right: joined"] {
        assert_eq!(m.get(&pending(name)).copied().unwrap_or(0.0), 0.0, "{m:?}");
    }
    let arrangements: Vec<_> = m
        .iter()
        .filter(|(series, _)| series.starts_with("sluice_arrangement_records{"))
        .collect();
    assert!(arrangements.iter().all(|(_, n)| **n >= 0.0), "{arrangements:?}");

    // New rows reach the arrangement while the run goes on.
    serve_support::append(&d.join("customers.jsonl"), &customers(40, 50));
    wait_for(30, "the new customers arranged", || {
        let m = scrape(&admin);
        m.get(&right) == Some(&50.0) && m.get(&joined) == Some(&25.0)
    });
    assert_eq!(scrape(&admin)[&left], 30.0);
    stop(child);
}

#[test]
fn logs_are_json_lines_with_log_format_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "--log-format",
            "json",
            "run",
            "--quiet",
            "examples/fanout/pipeline.toml",
        ])
        .current_dir(common::root())
        .env("RUST_LOG", "info")
        .output()
        .expect("run sluice");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// Kills the child if the test fails before stopping it.
struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `sluice run` of `dir/pipeline.toml` with the admin endpoint on a free port: the guard
/// that kills it, and the endpoint's base URL.
fn run_with_admin(dir: &Path) -> (Guard, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--quiet",
            "--admin",
            &format!("127.0.0.1:{port}"),
            "pipeline.toml",
        ])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice");
    (Guard(Some(child)), format!("http://127.0.0.1:{port}"))
}

fn stop(mut guard: Guard) {
    if let Some(child) = guard.0.take() {
        common::stop_cleanly(child);
    }
}

#[test]
fn each_process_of_a_cluster_reports_its_own_reads_and_is_ready_once_all_are_caught_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // Four files, one per worker of two processes of two; one bad line in each.
    for f in 0..4 {
        let mut lines: Vec<String> = (0..24).map(|i| format!(r#"{{"id": "{f}-{i}", "v": {i}}}"#)).collect();
        lines.insert(5, "not json".to_owned());
        std::fs::write(d.join(format!("events-{f}.jsonl")), lines.join("\n") + "\n").expect("input");
    }
    std::fs::write(
        d.join("pipeline.toml"),
        format!(
            "[pipeline]\nname = \"ops\"\nworkers = 2\nepoch_ms = 20\n\n\
             [dead_letters]\ntype = \"file\"\npath = \"dead.jsonl\"\n\n\
             [sources.events]\ntype = \"file\"\npath = \"events-*.jsonl\"\nfollow = true\npoll_ms = 10\n\
             envelope = \"upsert\"\nkey = [\"id\"]\n\n\
             [sinks.all]\ntype = \"file\"\npath = \"all.jsonl\"\ninput = \"events\"\nmode = \"upsert\"\n\n\
             [sinks.view]\ntype = \"served\"\ninput = \"events\"\nmode = \"upsert\"\n\n\
             [server]\nhttp = \"127.0.0.1:{}\"\ntoken_key = \"a-test-token-key-of-32-bytes!!!!\"\n",
            free_port()
        ),
    )
    .expect("pipeline");
    common::hostfile(d, 2);
    let admins: Vec<String> = (0..2).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    let mut processes: Vec<Guard> = (0..2)
        .map(|i| {
            let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args([
                    "run",
                    "--quiet",
                    "pipeline.toml",
                    "--processes",
                    "2",
                    "--hostfile",
                    "hosts.txt",
                ])
                .args(["--process", &i.to_string(), "--admin", &admins[i][7..]])
                .current_dir(d)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn sluice");
            Guard(Some(child))
        })
        .collect();
    // Process 1 holds no served view, but its readiness waits for every worker of the
    // cluster to be caught up, as process 0's does: it hears of the others' reports.
    for admin in &admins {
        wait_for(60, "readiness", || get(&format!("{admin}/readyz"), &[]).status == 200);
    }
    let p = "pipeline=\"ops\"";
    let records_in = format!("sluice_records_in_total{{{p},source=\"events\"}}");
    wait_for(30, "every record read", || {
        admins
            .iter()
            .map(|a| scrape(a).get(&records_in).copied().unwrap_or(0.0))
            .sum::<f64>()
            == 100.0
    });
    for admin in &admins {
        assert_eq!(scrape(admin)[&records_in], 50.0, "each process reads its two files");
    }
    // The sinks write in process 0.
    let all = format!("sluice_updates_out_total{{{p},sink=\"all\"}}");
    wait_for(30, "every update written", || {
        scrape(&admins[0]).get(&all) == Some(&96.0)
    });
    let dead = format!("sluice_updates_out_total{{{p},sink=\"dead_letters\"}}");
    assert_eq!(scrape(&admins[0])[&dead], 4.0);
    assert_eq!(scrape(&admins[1]).get(&all), None, "process 1 writes no sink");
    // A stop sent to process 1 stops the cluster.
    let leader = processes.remove(0);
    stop(processes.remove(0));
    let mut leader = leader;
    let child = leader.0.as_mut().expect("process 0");
    let status = common::exits_within(child, std::time::Duration::from_secs(30))
        .expect("process 0 stops within 30 s of process 1");
    assert!(status.success(), "process 0: {status:?}");
}

#[test]
fn fanout_and_filter_nodes_count_what_they_could_not_evaluate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // Four events carry a numeric total, two a text one, four none: `a`'s filter cannot be
    // evaluated on six (a type error or a missing key, spec/fanout.md: no match, counted).
    let events: Vec<String> = (0..10)
        .map(|i| {
            let body = match i {
                0..4 => format!(r#"{{"total": {}}}"#, [50, 150, 200, 10][i]),
                4..6 => r#"{"total": "lots"}"#.to_owned(),
                _ => format!(r#"{{"n": {i}}}"#),
            };
            format!(r#"{{"topic": "t", "data": {{"body": {body}}}}}"#)
        })
        .collect();
    std::fs::write(d.join("events.jsonl"), events.join("\n") + "\n").expect("events");
    // `a` is answered 200, `b` 404: each delivery ends at once, as a success or a dead letter.
    let receiver = Receiver::start();
    let b = &receiver.base;
    std::fs::write(
        d.join("subscribers.jsonl"),
        format!(
            "{{\"id\": \"a\", \"topic\": \"t\", \"filter\": \"data.body.total >= 100\", \"target_url\": \"{b}/ok/a\"}}\n\
             {{\"id\": \"b\", \"topic\": \"t\", \"filter\": \"\", \"target_url\": \"{b}/gone/b\"}}\n"
        ),
    )
    .expect("subscribers");
    std::fs::write(
        d.join("pipeline.toml"),
        "[pipeline]\nname = \"ops\"\nworkers = 2\nepoch_ms = 20\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"dead.jsonl\"\n\n\
         [sources.subscribers]\ntype = \"file\"\npath = \"subscribers.jsonl\"\nfollow = true\npoll_ms = 10\n\
         envelope = \"upsert\"\nkey = [\"id\"]\n\n\
         [sources.events]\ntype = \"file\"\npath = \"events.jsonl\"\nfollow = true\npoll_ms = 10\n\
         start_after = [\"subscribers\"]\n\n\
         [nodes.hub]\ntype = \"fanout\"\nsubscribers = \"subscribers\"\nevents = \"events\"\n\n\
         [nodes.big]\ntype = \"filter\"\ninput = \"events\"\nexpr = \"data.body.total >= 100\"\n\n\
         [sinks.deliveries]\ntype = \"file\"\npath = \"deliveries.jsonl\"\ninput = \"hub.deliveries\"\nmode = \"append\"\n\n\
         [sinks.hooks]\ntype = \"webhook\"\ninput = \"hub.deliveries\"\nmode = \"append\"\n\
         allow_private_targets = true\nmax_attempts = 1\n\n\
         [sinks.hooks.dead_letters]\ntype = \"file\"\npath = \"failed.jsonl\"\n\n\
         [sinks.big]\ntype = \"file\"\npath = \"big.jsonl\"\ninput = \"big\"\nmode = \"append\"\n",
    )
    .expect("pipeline");
    let (child, admin) = run_with_admin(d);
    let p = "pipeline=\"ops\"";
    let series = |name: &str, node: &str| format!("{name}{{{p},node=\"{node}\"}}");
    let hooks = |name: &str| format!("{name}{{{p},sink=\"hooks\"}}");
    wait_for(30, "every event matched and every delivery resolved", || {
        let m = scrape(&admin);
        m.get(&series("sluice_fanout_events_total", "hub")) == Some(&10.0)
            && m.get(&hooks("sluice_webhook_delivery_seconds_count")) == Some(&12.0)
    });
    let m = scrape(&admin);
    // `b` takes all ten, `a` the two of 100 or more.
    assert_eq!(m[&series("sluice_fanout_deliveries_total", "hub")], 12.0, "{m:?}");
    assert_eq!(m[&series("sluice_fanout_filter_errors_total", "hub")], 6.0, "{m:?}");
    assert_eq!(m[&series("sluice_filter_errors_total", "big")], 6.0, "{m:?}");
    // One request per delivery, each timed; each delivery timed once, success or dead letter.
    assert_eq!(m[&hooks("sluice_webhook_successes_total")], 2.0, "{m:?}");
    assert_eq!(m[&hooks("sluice_webhook_dead_letters_total")], 10.0, "{m:?}");
    assert_eq!(m[&hooks("sluice_webhook_attempts_total")], 12.0, "{m:?}");
    for h in ["sluice_webhook_attempt_seconds", "sluice_webhook_delivery_seconds"] {
        let bucket = |le: &str| m[&format!("{h}_bucket{{{p},sink=\"hooks\",le=\"{le}\"}}")];
        assert_eq!(m[&hooks(&format!("{h}_count"))], 12.0, "{h}: {m:?}");
        assert_eq!(bucket("+Inf"), 12.0, "{h}: {m:?}");
        // Cumulative: no bucket holds more than the next one up.
        let les: Vec<f64> = sluice_runtime::metrics::LATENCY_BUCKETS
            .iter()
            .map(|le| bucket(&le.to_string()))
            .chain([bucket("+Inf")])
            .collect();
        assert!(les.windows(2).all(|w| w[0] <= w[1]), "{h}: {les:?}");
        assert!(m[&hooks(&format!("{h}_sum"))] > 0.0, "{h}: {m:?}");
    }
    assert_eq!(receiver.count(), 12);
    stop(child);
}
