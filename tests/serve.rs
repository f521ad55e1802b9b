//! Served views, end to end: `sluice run` serving the cds directory over
//! `org.signal.AccountStreamService`, the messages feed over gRPC and HTTP, and any served
//! output over `sluice.v1.Views/Subscribe`, driven by an independent client (Python grpcio
//! with stubs generated from `proto/`) and curl. These are spec/cds.md's and
//! spec/messages.md's acceptance scenarios for the services.

mod common;
mod serve_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::accounts;
use serde_json::Value;
use serve_support::{Running, Serving, TOKEN_KEY, append, client, free_port, get, get_trusting, metric, wait_for};

const CDS_SECRET: &str = "cds-secret";

/// The cds pipeline serving its directory, reading `scan.jsonl` and `changes.jsonl` as they grow.
fn cds_pipeline(dir: &Path, grpc: u16, http: u16, extra_server: &str, retention_ms: u64) {
    let text = format!(
        "[pipeline]\nname = \"cds-serve\"\nworkers = 2\nepoch_ms = 20\ncheckpoint_dir = \"state\"\n\
         checkpoint_interval_ms = 200\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n\n\
         [sources.accounts]\ntype = \"file\"\npath = \"scan.jsonl\"\nformat = \"dynamodb-item\"\nfollow = true\npoll_ms = 10\n\n\
         [sources.changes]\ntype = \"file\"\npath = \"changes.jsonl\"\nformat = \"dynamodb-stream\"\nfollow = true\npoll_ms = 10\n\n\
         [nodes.cds]\ntype = \"cds\"\nchanges = \"changes\"\nsnapshot = \"accounts\"\n\n\
         [sinks.directory]\ntype = \"served\"\ninput = \"cds.directory\"\nmode = \"upsert\"\nretention_ms = {retention_ms}\n\n\
         [server]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\ntoken_key = \"{TOKEN_KEY}\"\n{extra_server}\n\
         [server.account_stream]\nview = \"directory\"\nauth_token = \"{CDS_SECRET}\"\n"
    );
    std::fs::write(dir.join("pipeline.toml"), text).expect("write pipeline");
    for f in ["scan.jsonl", "changes.jsonl"] {
        if !dir.join(f).exists() {
            std::fs::write(dir.join(f), "").expect("input");
        }
    }
}

fn e164(n: u64) -> String {
    format!("+1555{n:07}")
}

/// spec/cds.md's snapshot table: 11 discoverable with keys, 12 not discoverable, 13
/// discoverable without keys, 14 without `C`, and 21, which a shard ending at 21 leaves out.
fn snapshot_table() -> Vec<String> {
    [
        accounts::item(11, 1, &e164(11), Some(true), Some(11)),
        accounts::item(12, 1, &e164(12), Some(false), Some(12)),
        accounts::item(13, 1, &e164(13), Some(true), None),
        accounts::item(14, 1, &e164(14), None, Some(14)),
        accounts::item(21, 1, &e164(21), Some(true), Some(21)),
    ]
    .iter()
    .map(Value::to_string)
    .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The records of every message, as e164 → aci hex ("" = removed), in order of arrival.
fn records(lines: &[Value]) -> BTreeMap<i64, String> {
    let mut state = BTreeMap::new();
    for line in lines {
        for r in line["records"].as_array().into_iter().flatten() {
            state.insert(
                r["e164"].as_i64().expect("e164"),
                r["aci"].as_str().unwrap_or("").to_owned(),
            );
        }
    }
    state
}

fn last_token(lines: &[Value]) -> String {
    lines
        .iter()
        .rev()
        .find_map(|l| l["token"].as_str().filter(|t| !t.is_empty()))
        .expect("a continuation token")
        .to_owned()
}

fn error_of(lines: &[Value]) -> Option<(String, String)> {
    let last = lines.last()?;
    Some((
        last["error"].as_str()?.to_owned(),
        last["details"].as_str().unwrap_or("").to_owned(),
    ))
}

/// A fresh client's view of the directory, up to `dataset_current`.
fn fresh(grpc: &str, shard: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "accounts",
        "--addr",
        grpc,
        "--auth",
        CDS_SECRET,
        "--until-current",
        "--timeout",
        "60",
    ];
    args.extend_from_slice(shard);
    client(&args)
}

/// A client of the shard ending at `limit` resuming with `token`, up to `dataset_current`.
fn resume(grpc: &str, limit: &str, token: &str) -> Vec<Value> {
    client(&[
        "accounts",
        "--addr",
        grpc,
        "--auth",
        CDS_SECRET,
        "--shard-limit",
        limit,
        "--token",
        token,
        "--until-current",
        "--timeout",
        "60",
    ])
}

#[test]
fn the_account_stream_serves_snapshot_changes_and_tokens_that_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    cds_pipeline(d, grpc_port, http_port, "", 86_400_000);
    append(&d.join("scan.jsonl"), &snapshot_table());
    let serving = Serving::start(d, grpc_port, http_port);
    let grpc = serving.grpc.clone();
    let health = get(&format!("{}/health", serving.http), &[]);
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    // The scan is read before clients ask.
    wait_for(30, "the scan in the directory", || {
        records(&fresh(&grpc, &[])).len() == 3
    });

    // Auth.
    let no_auth = client(&["accounts", "--addr", &grpc, "--timeout", "20"]);
    assert_eq!(
        error_of(&no_auth),
        Some(("UNAUTHENTICATED".to_owned(), "no authorization".to_owned()))
    );
    let bad_auth = client(&["accounts", "--addr", &grpc, "--auth", "wrong", "--timeout", "20"]);
    assert_eq!(
        error_of(&bad_auth),
        Some(("UNAUTHENTICATED".to_owned(), "bad token".to_owned()))
    );

    // The snapshot of the shard [.., 21): exactly 11 and 13, after a clear_all.
    let limit = hex(&accounts::uuid(21));
    let first = fresh(&grpc, &["--shard-limit", &limit]);
    assert_eq!(first[0]["clear_all"], true, "{first:?}");
    assert!(first.iter().skip(1).all(|l| l["clear_all"] == false));
    let want: BTreeMap<i64, String> = [11u32, 13]
        .iter()
        .map(|n| (15_550_000_000 + i64::from(*n), hex(&accounts::uuid(*n))))
        .collect();
    assert_eq!(records(&first), want);
    let current = first.last().expect("lines");
    assert_eq!(current["dataset_current"], true);
    let with_keys = first
        .iter()
        .flat_map(|l| l["records"].as_array().cloned().unwrap_or_default())
        .find(|r| r["e164"] == 15_550_000_011i64)
        .expect("11");
    assert_eq!(with_keys["pni"], hex(&accounts::key_bytes(0x50, 11)));
    assert_eq!(with_keys["uak"], hex(&accounts::key_bytes(0xA0, 11)));
    // An empty shard is refused.
    let start = hex(&accounts::uuid(21));
    let bad_shard = client(&[
        "accounts",
        "--addr",
        &grpc,
        "--auth",
        CDS_SECRET,
        "--shard-start",
        &start,
        "--shard-limit",
        &start,
        "--timeout",
        "20",
    ]);
    assert_eq!(error_of(&bad_shard).map(|e| e.0).as_deref(), Some("INVALID_ARGUMENT"));
    let token = last_token(&first);

    // 1000 changes: 100 new accounts (200..300) each inserted then renumbered 9 times, and
    // account 11 moving to another number.
    let mut changes = Vec::new();
    let mut changed = BTreeSet::new();
    let mut seq = 0;
    let t0 = 1_800_000_000_000u64;
    for n in 200..300u32 {
        let mut number = e164(u64::from(n) * 100);
        seq += 1;
        let new = accounts::item(n, 1, &number, Some(true), Some(1));
        changes.push(accounts::change("INSERT", n, t0 + seq, seq, None, Some(new)).to_string());
        changed.insert(number.clone());
        for v in 2..=10u64 {
            let old = accounts::item(n, v - 1, &number, Some(true), Some(1));
            number = e164(u64::from(n) * 100 + v);
            let new = accounts::item(n, v, &number, Some(true), Some(1));
            seq += 1;
            changes.push(accounts::change("MODIFY", n, t0 + seq, seq, Some(old), Some(new)).to_string());
            changed.insert(number.clone());
        }
    }
    seq += 1;
    changes.push(
        accounts::change(
            "MODIFY",
            11,
            t0 + seq,
            seq,
            Some(accounts::item(11, 1, &e164(11), Some(true), Some(11))),
            Some(accounts::item(11, 2, &e164(111), Some(true), Some(11))),
        )
        .to_string(),
    );
    changed.extend([e164(11), e164(111)]);
    assert_eq!(changes.len(), 1001);
    append(&d.join("changes.jsonl"), &changes);
    wait_for(30, "the changes in the directory", || {
        records(&fresh(&grpc, &[])).contains_key(&15_550_000_111)
    });

    // Resuming with the token: no clear_all, no snapshot, only the changed numbers (in the
    // shard: 11's move; the new accounts 200.. are past 21, so their numbers are removals).
    let resumed = resume(&grpc, &limit, &token);
    assert!(resumed.iter().all(|l| l["clear_all"] == false), "{resumed:?}");
    let got = records(&resumed);
    let got_numbers: BTreeSet<String> = got.keys().map(|n| format!("+{n}")).collect();
    // Every number whose directory entry differs from the token's time: 11's old and new
    // numbers and the final numbers of the new accounts. Numbers an account held only in
    // between may come as removals too, if the pipeline made them final on the way.
    let mut differ: BTreeSet<String> = (200..300u64).map(|n| e164(n * 100 + 10)).collect();
    differ.extend([e164(11), e164(111)]);
    assert!(got_numbers.is_superset(&differ), "{got_numbers:?}");
    assert!(got_numbers.is_subset(&changed), "only changed numbers: {got_numbers:?}");
    assert!(
        got.iter()
            .filter(|(n, _)| !differ.contains(&format!("+{n}")))
            .all(|(_, aci)| aci.is_empty())
    );
    assert_eq!(got[&15_550_000_011], "", "11's old number is removed");
    assert_eq!(got[&15_550_000_111], hex(&accounts::uuid(11)));
    assert!(
        got.iter()
            .filter(|(n, _)| **n >= 15_550_020_000)
            .all(|(_, aci)| aci.is_empty())
    );

    // Ten clients at once see identical data.
    let clients: Vec<Running> = (0..10)
        .map(|_| {
            Running::start(&[
                "accounts",
                "--addr",
                &grpc,
                "--auth",
                CDS_SECRET,
                "--until-current",
                "--timeout",
                "60",
            ])
        })
        .collect();
    let seen: Vec<BTreeMap<i64, String>> = clients.into_iter().map(|c| records(&c.finish())).collect();
    // 11 (moved), 13, 21 and the 100 new accounts.
    assert_eq!(seen[0].len(), 103);
    assert!(seen.iter().all(|s| *s == seen[0]), "ten clients agree");

    // A forged token is refused.
    let mut forged = token.clone().into_bytes();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).expect("hex");
    let refused = client(&[
        "accounts",
        "--addr",
        &grpc,
        "--auth",
        CDS_SECRET,
        "--token",
        &forged,
        "--timeout",
        "20",
    ]);
    assert_eq!(error_of(&refused).map(|e| e.0).as_deref(), Some("INVALID_ARGUMENT"));

    // Checkpoints are taken every 200 ms while the view is served, not only at the stop.
    let state = d.join("state");
    let seen = serve_support::newest_checkpoint(&state).unwrap_or(0);
    wait_for(20, "a newer checkpoint", || {
        serve_support::newest_checkpoint(&state).is_some_and(|t| t > seen)
    });
    let seen = serve_support::newest_checkpoint(&state).unwrap_or(0);
    wait_for(20, "another checkpoint", || {
        serve_support::newest_checkpoint(&state).is_some_and(|t| t > seen)
    });

    // After a restart (from the checkpoint) the same token resumes the same way.
    serving.stop();
    let serving = Serving::start(d, grpc_port, http_port);
    let grpc = serving.grpc.clone();
    let again = resume(&grpc, &limit, &token);
    assert!(again.iter().all(|l| l["clear_all"] == false), "{again:?}");
    assert_eq!(records(&again), got);
    serving.stop();
}

#[test]
fn with_tls_both_servers_serve_only_clients_that_trust_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    let tls = common::root().join("connectors/http-ingest/tests/fixtures/tls");
    let (cert, other) = (tls.join("cert-a.pem"), tls.join("cert-b.pem"));
    let server_tls = format!(
        "tls = {{ cert = '{}', key = '{}' }}\n",
        cert.display(),
        tls.join("key-a.pem").display()
    );
    cds_pipeline(d, grpc_port, http_port, &server_tls, 86_400_000);
    append(&d.join("scan.jsonl"), &snapshot_table());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "pipeline.toml"])
        .current_dir(d)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn sluice");
    let https = format!("https://127.0.0.1:{http_port}");
    wait_for(30, "the HTTPS health endpoint", || {
        get_trusting(&format!("{https}/health"), &[], Some(&cert)).status == 200
    });
    let grpc = format!("127.0.0.1:{grpc_port}");
    let accounts = |ca: Option<&std::path::Path>| {
        let ca = ca.map(|c| c.display().to_string());
        let mut args = vec!["accounts", "--addr", &grpc, "--auth", CDS_SECRET, "--until-current"];
        args.extend(["--timeout", "20"]);
        if let Some(ca) = &ca {
            args.extend(["--ca", ca]);
        }
        client(&args)
    };
    // gRPC over TLS: the same directory a plain client would get.
    wait_for(30, "the scan in the directory", || {
        records(&accounts(Some(&cert))).len() == 3
    });
    let want: BTreeMap<i64, String> = [11u32, 13, 21]
        .iter()
        .map(|n| (15_550_000_000 + i64::from(*n), hex(&accounts::uuid(*n))))
        .collect();
    assert_eq!(records(&accounts(Some(&cert))), want);

    // A plain-text client, or one that trusts another certificate, gets nothing.
    for refused in [accounts(None), accounts(Some(&other))] {
        assert_eq!(
            error_of(&refused).map(|e| e.0),
            Some("UNAVAILABLE".to_owned()),
            "{refused:?}"
        );
        assert!(records(&refused).is_empty());
    }
    assert_eq!(get(&format!("http://127.0.0.1:{http_port}/health"), &[]).status, 0);
    assert_eq!(get_trusting(&format!("{https}/health"), &[], Some(&other)).status, 0);
    assert!(child.try_wait().expect("wait").is_none(), "sluice exited early");
    common::stop_cleanly(child);
}

#[test]
fn a_token_older_than_the_kept_removals_gets_a_fresh_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    cds_pipeline(d, grpc_port, http_port, "", 300);
    append(&d.join("scan.jsonl"), &snapshot_table());
    let serving = Serving::start(d, grpc_port, http_port);
    let grpc = serving.grpc.clone();
    wait_for(30, "the scan in the directory", || {
        records(&fresh(&grpc, &[])).len() == 3
    });
    let token = last_token(&fresh(&grpc, &[]));
    // 13 is removed; its tombstone is dropped 300 ms later, past the token.
    let removal = accounts::change(
        "REMOVE",
        13,
        1_800_000_000_000,
        1,
        Some(accounts::item(13, 1, &e164(13), Some(true), None)),
        None,
    );
    append(&d.join("changes.jsonl"), &[removal.to_string()]);
    wait_for(30, "the removal", || records(&fresh(&grpc, &[])).len() == 2);
    std::thread::sleep(Duration::from_millis(1000));
    let reset = client(&[
        "accounts",
        "--addr",
        &grpc,
        "--auth",
        CDS_SECRET,
        "--token",
        &token,
        "--until-current",
        "--timeout",
        "60",
    ]);
    assert_eq!(reset[0]["clear_all"], true, "{reset:?}");
    let want: BTreeMap<i64, String> = [11u32, 21]
        .iter()
        .map(|n| (15_550_000_000 + i64::from(*n), hex(&accounts::uuid(*n))))
        .collect();
    assert_eq!(records(&reset), want);
    serving.stop();
}

#[test]
fn a_stalled_client_is_cut_off_while_others_keep_receiving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    cds_pipeline(
        d,
        grpc_port,
        http_port,
        "client_buffer = 2\nstall_timeout_ms = 500",
        86_400_000,
    );
    // A snapshot of many messages (4000 records each), more than the transport buffers.
    let scan: Vec<String> = (1000..41_000u32)
        .map(|n| accounts::item(n, 1, &e164(u64::from(n)), Some(true), Some(1)).to_string())
        .collect();
    append(&d.join("scan.jsonl"), &scan);
    let admin = format!("127.0.0.1:{}", free_port());
    let serving = Serving::start_with(d, grpc_port, http_port, &["--admin", &admin]);
    let admin = format!("http://{admin}");
    let grpc = serving.grpc.clone();
    // A client connecting while the scan is read is told it is current only once the whole
    // scan is in (spec/cds.md: "the scan finished and the change sources caught up").
    let early = fresh(&grpc, &[]);
    assert_eq!(records(&early).len(), 40_000, "dataset_current before the scan was in");
    wait_for(60, "the scan in the directory", || {
        records(&fresh(&grpc, &[])).len() == 40_000
    });
    // The clients so far have gone, so the one stream counted next is the stalled one.
    wait_for(30, "the earlier streams closed", || {
        metric(&admin, "sluice_server_streams") == Some(0.0)
    });
    // None of them fell behind: the cut-off counted below is the stalled client's.
    assert_eq!(metric(&admin, "sluice_server_streams_cut_off_total"), Some(0.0));

    let stalled = Running::start(&[
        "accounts",
        "--addr",
        &grpc,
        "--auth",
        CDS_SECRET,
        "--stall-after",
        "1",
        "--stall-secs",
        "5",
        "--timeout",
        "60",
    ]);
    wait_for(30, "the stalled client's stream counted", || {
        metric(&admin, "sluice_server_streams") == Some(1.0)
    });
    // Others are served in full meanwhile, and see a change made while the first one stalls.
    let healthy = fresh(&grpc, &[]);
    assert_eq!(records(&healthy).len(), 40_000);
    let change = accounts::change(
        "INSERT",
        7,
        1_800_000_000_000,
        1,
        None,
        Some(accounts::item(7, 1, &e164(7), Some(true), Some(7))),
    );
    append(&d.join("changes.jsonl"), &[change.to_string()]);
    wait_for(30, "the change reaching another client", || {
        records(&fresh(&grpc, &[])).contains_key(&15_550_000_007)
    });
    let lines = stalled.finish();
    assert_eq!(
        error_of(&lines).map(|e| e.0).as_deref(),
        Some("RESOURCE_EXHAUSTED"),
        "the stalled client is cut off: {:?}",
        lines.last()
    );
    assert!(records(&lines).len() < 40_000, "it never got everything");
    assert_eq!(metric(&admin, "sluice_server_streams_cut_off_total"), Some(1.0));
    wait_for(30, "every stream closed", || {
        metric(&admin, "sluice_server_streams") == Some(0.0)
    });
    serving.stop();
}

#[test]
fn the_stream_gauge_counts_each_open_stream_until_its_client_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    cds_pipeline(d, grpc_port, http_port, "", 86_400_000);
    append(&d.join("scan.jsonl"), &snapshot_table());
    let admin = format!("127.0.0.1:{}", free_port());
    let serving = Serving::start_with(d, grpc_port, http_port, &["--admin", &admin]);
    let admin = format!("http://{admin}");
    let grpc = serving.grpc.clone();
    wait_for(30, "the scan in the directory", || {
        records(&fresh(&grpc, &[])).len() == 3
    });
    wait_for(30, "the readers' streams closed", || {
        metric(&admin, "sluice_server_streams") == Some(0.0)
    });
    // Clients that have read the directory and wait for changes keep their streams open.
    const N: usize = 3;
    let mut clients: Vec<Running> = (0..N)
        .map(|_| Running::start(&["accounts", "--addr", &grpc, "--auth", CDS_SECRET, "--timeout", "120"]))
        .collect();
    wait_for(60, "every stream counted", || {
        metric(&admin, "sluice_server_streams") == Some(N as f64)
    });
    // A client that goes away (killed: its connection closes) is counted out; the rest stay.
    drop(clients.pop());
    wait_for(30, "one stream fewer", || {
        metric(&admin, "sluice_server_streams") == Some((N - 1) as f64)
    });
    drop(clients);
    wait_for(30, "every stream closed", || {
        metric(&admin, "sluice_server_streams") == Some(0.0)
    });
    assert_eq!(
        metric(&admin, "sluice_server_streams_cut_off_total"),
        Some(0.0),
        "clients that keep up are never cut off"
    );
    serving.stop();
}

#[test]
fn any_served_output_can_be_subscribed_to_with_resumable_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    let text = format!(
        "[pipeline]\nname = \"subscribe\"\nepoch_ms = 20\n\n\
         [sources.table]\ntype = \"file\"\npath = \"table.jsonl\"\nfollow = true\npoll_ms = 10\n\
         envelope = \"upsert\"\nkey = [\"id\"]\ndeleted_field = \"deleted\"\n\n\
         [sinks.table]\ntype = \"served\"\ninput = \"table\"\nmode = \"upsert\"\n\n\
         [server]\ngrpc = \"127.0.0.1:{grpc_port}\"\nhttp = \"127.0.0.1:{http_port}\"\ntoken_key = \"{TOKEN_KEY}\"\n\
         subscribe_auth_token = \"views-secret\"\n"
    );
    std::fs::write(d.join("pipeline.toml"), text).expect("write");
    let row = |id: u32, v: &str| format!("{{\"id\":{id},\"v\":\"{v}\"}}");
    append(&d.join("table.jsonl"), &[row(1, "a"), row(2, "b"), row(3, "c")]);
    let serving = Serving::start(d, grpc_port, http_port);
    let grpc = serving.grpc.clone();
    let subscribe = |token: Option<&str>| {
        let mut args = vec![
            "subscribe",
            "--addr",
            &grpc,
            "--output",
            "table",
            "--auth",
            "views-secret",
            "--until-current",
            "--timeout",
            "60",
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        client(&args)
    };
    let state = |lines: &[Value]| {
        let mut state = BTreeMap::new();
        for c in lines
            .iter()
            .flat_map(|l| l["changes"].as_array().cloned().unwrap_or_default())
        {
            let key = c["key"].as_str().expect("key").to_owned();
            match c["diff"].as_i64() {
                Some(1) => state.insert(key, c["value"].as_str().expect("value").to_owned()),
                _ => state.remove(&key),
            };
        }
        state
    };
    wait_for(30, "the table", || state(&subscribe(None)).len() == 3);
    let first = subscribe(None);
    assert_eq!(first[0]["reset"], true);
    assert!(
        first
            .last()
            .is_some_and(|l| l["current"] == true && l["frontier"].as_u64() > Some(0))
    );
    let token = last_token(&first);

    append(
        &d.join("table.jsonl"),
        &[row(2, "b2"), "{\"id\":3,\"deleted\":true}".to_owned()],
    );
    wait_for(30, "the changes", || {
        !state(&subscribe(None)).contains_key("{\"id\":3}")
    });
    let resumed = subscribe(Some(&token));
    assert!(resumed.iter().all(|l| l["reset"] == false), "{resumed:?}");
    let changes: Vec<(String, i64)> = resumed
        .iter()
        .flat_map(|l| l["changes"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["key"].as_str().unwrap_or("").to_owned(),
                c["diff"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![("{\"id\":2}".to_owned(), 1), ("{\"id\":3}".to_owned(), -1)]
    );

    let unknown = client(&[
        "subscribe",
        "--addr",
        &grpc,
        "--output",
        "nope",
        "--auth",
        "views-secret",
        "--timeout",
        "20",
    ]);
    assert_eq!(error_of(&unknown).map(|e| e.0).as_deref(), Some("NOT_FOUND"));
    let no_auth = client(&["subscribe", "--addr", &grpc, "--output", "table", "--timeout", "20"]);
    assert_eq!(error_of(&no_auth).map(|e| e.0).as_deref(), Some("UNAUTHENTICATED"));
    serving.stop();
}

const JWT_SECRET: &str = "messages-jwt-secret-0123456789";

fn jwt(user: &str) -> String {
    let out = client_raw(&["jwt", "--secret", JWT_SECRET, "--sub", user]);
    out.trim().to_owned()
}

fn client_raw(args: &[&str]) -> String {
    let out = std::process::Command::new(serve_support::python())
        .arg(common::root().join("tests/clients/sluice_client.py"))
        .args(args)
        .output()
        .expect("run the client");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The final `timeline.messages` table: id → message.
fn messages_table(dir: &Path) -> BTreeMap<String, Value> {
    common::final_upsert_state(&common::read_jsonl(&dir.join("out/messages.jsonl")))
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(_, v)| (v["id"].as_str().unwrap_or("").to_owned(), v))
        .collect()
}

/// What a user's synced client must end with: id → (timestamp, deleted, text, read).
fn feed_of(table: &BTreeMap<String, Value>, user: &str) -> BTreeMap<String, (u64, bool, String, bool)> {
    table
        .iter()
        .filter(|(_, m)| m["from"] == user || m["to"] == user)
        .map(|(id, m)| {
            let deleted = m["deleted"] == true;
            let text = if deleted {
                String::new()
            } else {
                m["text"].as_str().unwrap_or("").to_owned()
            };
            let read = !deleted && m["read"] == true;
            (id.clone(), (m["timestamp"].as_u64().unwrap_or(0), deleted, text, read))
        })
        .collect()
}

/// A sync client's final state in the same shape.
fn synced(lines: &[Value]) -> BTreeMap<String, (u64, bool, String, bool)> {
    let last = lines.last().expect("lines");
    let Some(state) = last["final"].as_object() else {
        panic!("the client ended without a final state: {last}");
    };
    state
        .iter()
        .map(|(id, m)| {
            let entry = (
                m["timestamp"].as_u64().unwrap_or(0),
                m["deleted"] == true,
                m["text"].as_str().unwrap_or("").to_owned(),
                m["read"] == true,
            );
            (id.clone(), entry)
        })
        .collect()
}

#[test]
fn messages_clients_sync_to_the_same_feed_over_grpc_and_http() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (grpc_port, http_port) = (free_port(), free_port());
    let text = format!(
        "[pipeline]\nname = \"messages-serve\"\nworkers = 2\nepoch_ms = 20\n\n\
         [dead_letters]\ntype = \"file\"\npath = \"out/dead.jsonl\"\n\n\
         [sources.ops]\ntype = \"file\"\npath = \"ops.jsonl\"\nfollow = true\npoll_ms = 10\n\n\
         [nodes.timeline]\ntype = \"messages\"\nops = \"ops\"\n\n\
         [sinks.feed]\ntype = \"served\"\ninput = \"timeline.feed\"\nmode = \"upsert\"\n\
         partition_by = \"user\"\nversion_field = \"timestamp\"\n\n\
         [sinks.messages]\ntype = \"file\"\npath = \"out/messages.jsonl\"\ninput = \"timeline.messages\"\nmode = \"upsert\"\n\n\
         [server]\ngrpc = \"127.0.0.1:{grpc_port}\"\nhttp = \"127.0.0.1:{http_port}\"\ntoken_key = \"{TOKEN_KEY}\"\n\n\
         [server.messages]\nview = \"feed\"\njwt_secret = \"{JWT_SECRET}\"\n"
    );
    std::fs::write(d.join("pipeline.toml"), text).expect("write");
    std::fs::write(d.join("ops.jsonl"), "").expect("ops");
    let serving = Serving::start(d, grpc_port, http_port);
    let grpc = serving.grpc.clone();
    let ann = jwt("ann");

    // Two clients of ann sync in pages of 2 from the start while ops keep coming.
    let sync = || {
        Running::start(&[
            "sync",
            "--addr",
            &grpc,
            "--jwt",
            &ann,
            "--limit",
            "2",
            "--until-idle",
            "8",
        ])
    };
    let clients = [sync(), sync()];
    let users = ["ann", "bob", "cat"];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut sent = 0;
    for round in 0..8 {
        let sends: Vec<String> = (0..15)
            .map(|i| {
                let (from, to) = (users[rng.random_range(0..3)], users[rng.random_range(0..3)]);
                serde_json::json!({"op": "send", "request_id": format!("s-{round}-{i}"), "user": from, "to": to,
                                   "text": format!("hello {round}-{i}"), "files": []})
                .to_string()
            })
            .collect();
        sent += sends.len();
        append(&d.join("ops.jsonl"), &sends);
        wait_for(30, "the sends", || messages_table(d).len() == sent);
        let table: Vec<Value> = messages_table(d)
            .into_values()
            .filter(|m| m["deleted"] != true)
            .collect();
        let mut ops = Vec::new();
        for (i, m) in table.iter().enumerate() {
            if !rng.random_bool(0.2) {
                continue;
            }
            let (id, ts) = (m["id"].clone(), m["timestamp"].clone());
            let (from, to) = (m["from"].as_str().unwrap_or(""), m["to"].as_str().unwrap_or(""));
            let request_id = format!("c-{round}-{i}");
            ops.push(
                match rng.random_range(0..3) {
                    0 => serde_json::json!({"op": "edit", "request_id": request_id, "user": from, "message_id": id,
                                        "if_match": ts, "text": format!("edited {round}")}),
                    1 => serde_json::json!({"op": "mark_read", "request_id": request_id, "user": to, "message_id": id,
                                        "if_match": ts, "read": true}),
                    _ => serde_json::json!({"op": "delete", "request_id": request_id, "user": from, "message_id": id,
                                        "if_match": ts}),
                }
                .to_string(),
            );
        }
        append(&d.join("ops.jsonl"), &ops);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every op is in once the table stops moving.
    let mut last = BTreeMap::new();
    wait_for(30, "the last ops", || {
        let now = messages_table(d);
        let settled = now == last;
        last = now;
        settled && {
            std::thread::sleep(Duration::from_millis(500));
            messages_table(d) == last
        }
    });
    let want = feed_of(&last, "ann");
    assert!(
        want.values().any(|m| m.1) && want.values().any(|m| m.3),
        "deletes and reads happened"
    );
    for c in clients {
        assert_eq!(synced(&c.finish()), want, "a client of ann ends with ann's messages");
    }

    // A page over gRPC, and the refusals.
    let page = client(&[
        "changes", "--addr", &grpc, "--jwt", &ann, "--after", "0", "--limit", "100",
    ]);
    let got: BTreeSet<String> = page[0]["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(got, want.keys().cloned().collect());
    let too_many = client(&[
        "changes", "--addr", &grpc, "--jwt", &ann, "--after", "0", "--limit", "101",
    ]);
    assert_eq!(error_of(&too_many).map(|e| e.0).as_deref(), Some("INVALID_ARGUMENT"));
    let forged = client(&["changes", "--addr", &grpc, "--jwt", &format!("{ann}x"), "--after", "0"]);
    assert_eq!(error_of(&forged).map(|e| e.0).as_deref(), Some("UNAUTHENTICATED"));
    let watched = client(&[
        "watch",
        "--addr",
        &grpc,
        "--jwt",
        &ann,
        "--after",
        "0",
        "--messages",
        "1",
        "--timeout",
        "20",
    ]);
    assert!(
        !watched[0]["messages"].as_array().is_none_or(Vec::is_empty),
        "{watched:?}"
    );

    // The same over HTTP.
    let bearer = format!("Authorization: Bearer {ann}");
    let all = get(&format!("{}/messages?after=0&limit=100", serving.http), &[&bearer]);
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.content_type, "application/vnd.messageUpdates.v1+json");
    let body: Value = serde_json::from_str(&all.body).expect("json body");
    assert_eq!(body["total"].as_u64(), Some(want.len() as u64));
    let newest = want.values().map(|m| m.0).max().unwrap_or(0);
    let none = get(&format!("{}/messages?after={newest}", serving.http), &[&bearer]);
    assert_eq!((none.status, none.body.trim()), (200, "{\"total\":0}"));
    for bad in [
        "after=abc",
        "after=-1",
        "after=0&limit=0",
        "after=0&limit=101",
        "after=0&limit=x",
    ] {
        let r = get(&format!("{}/messages?{bad}", serving.http), &[&bearer]);
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(
            r.content_type.starts_with("text/plain") && !r.body.is_empty(),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(get(&format!("{}/messages?after=0", serving.http), &[]).status, 401);
    let other = jwt_signed_elsewhere("ann");
    let r = get(
        &format!("{}/messages?after=0", serving.http),
        &[&format!("Authorization: Bearer {other}")],
    );
    assert_eq!(r.status, 401);
    let (own, _) = want.iter().next().expect("ann has messages");
    let one = get(&format!("{}/messages/{own}", serving.http), &[&bearer]);
    assert_eq!(one.status, 200, "{one:?}");
    assert!(one.content_type.starts_with("application/json"));
    let one: Value = serde_json::from_str(&one.body).expect("json");
    assert_eq!(one["id"].as_str(), Some(own.as_str()));
    let foreign = last
        .iter()
        .find(|(_, m)| m["from"] != "ann" && m["to"] != "ann")
        .map(|(id, _)| id.clone())
        .expect("a message between bob and cat");
    assert_eq!(
        get(&format!("{}/messages/{foreign}", serving.http), &[&bearer]).status,
        404
    );
    serving.stop();
}

fn jwt_signed_elsewhere(user: &str) -> String {
    client_raw(&["jwt", "--secret", "another-secret-0123456789", "--sub", user])
        .trim()
        .to_owned()
}
