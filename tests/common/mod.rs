//! Helpers shared by the end-to-end tests: golden files and running the `sluice` binary.

#![allow(dead_code)]

pub mod accounts;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (the tests' working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the golden file `tests/golden/<name>`; with `UPDATE_GOLDEN=1`
/// rewrites the file instead, so a reviewer sees the change in the diff.
pub fn assert_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create golden dir");
        }
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("missing golden file {} ({e}); run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

/// Runs the `sluice` binary with `args` in the repository root.
pub fn sluice(args: &[&str]) -> Output {
    sluice_in(&root(), args)
}

/// Runs the `sluice` binary with `args` in `dir` (where a default dead-letter file lands).
pub fn sluice_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice")
}

/// Reads a JSON-lines file into values.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Folds upsert-mode lines (`{"key", "value"}`) into the final state: key → value, with
/// tombstones removing keys. Sorted by key text, for comparisons.
pub fn final_upsert_state(lines: &[serde_json::Value]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut state = std::collections::BTreeMap::new();
    for line in lines {
        let key = line["key"].to_string();
        match &line["value"] {
            serde_json::Value::Null => {
                state.remove(&key);
            }
            v => {
                state.insert(key, v.clone());
            }
        }
    }
    state
}

/// Sends SIGTERM to a `sluice run` and asserts it exits cleanly within 30 s.
pub fn stop_cleanly(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            assert!(exit.success(), "exit status {exit:?}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sluice did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Writes `dir/hosts.txt` for a cluster of `n` processes on 127.0.0.1, at ports free a
/// moment ago (all bound at once, so they differ, and released for the processes).
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let lines: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("address").to_string())
        .collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write hostfile");
    path
}

/// Waits up to `limit` for `child` to exit; its exit status, or `None` if it still runs.
pub fn exits_within(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}
