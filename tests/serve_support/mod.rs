//! Running a serving pipeline and talking to it from outside: the Python grpcio client of
//! `tests/clients` (installed by `scripts/services`) and curl.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::root;

/// The token key every test pipeline signs with.
pub const TOKEN_KEY: &str = "test-token-key-0123456789";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The Python with grpcio: `$SLUICE_PYTHON`, else where `scripts/services` installs it.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SLUICE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/grpc/bin/python"));
    assert!(
        path.exists(),
        "the gRPC test client's Python is not installed at {}: run scripts/services (scripts/test does)",
        path.display()
    );
    path
}

fn client_command(args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command
        .arg(root().join("tests/clients/sluice_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Runs the gRPC client to its end and returns the JSON lines it printed.
pub fn client(args: &[&str]) -> Vec<serde_json::Value> {
    let out = client_command(args)
        .stdout(Stdio::piped())
        .output()
        .expect("run the gRPC client");
    assert!(out.status.success(), "client {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("client printed {l:?}: {e}")))
        .collect()
}

/// A gRPC client running in the background.
pub struct Running {
    child: Child,
}

impl Running {
    /// Starts the client with `args`.
    pub fn start(args: &[&str]) -> Running {
        let child = client_command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC client");
        Running { child }
    }

    /// Waits for the client to end and returns its lines.
    pub fn finish(mut self) -> Vec<serde_json::Value> {
        let stdout = self.child.stdout.take().expect("stdout");
        let lines: Vec<serde_json::Value> = BufReader::new(stdout)
            .lines()
            .map(|l| {
                let l = l.expect("line");
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("client printed {l:?}: {e}"))
            })
            .collect();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "client failed: {status:?}");
        lines
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP response as curl saw it.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// `GET url` with curl, with extra headers.
pub fn get(url: &str, headers: &[&str]) -> Response {
    get_trusting(url, headers, None)
}

/// As [`get`], trusting only the certificate `ca` (PEM) for an `https://` URL.
pub fn get_trusting(url: &str, headers: &[&str], ca: Option<&Path>) -> Response {
    let body = tempfile::NamedTempFile::new().expect("temp file");
    let mut command = Command::new("curl");
    command
        .args(["-s", "-o"])
        .arg(body.path())
        .args(["-w", "%{http_code} %{content_type}", "--max-time", "20"]);
    if let Some(ca) = ca {
        command.arg("--cacert").arg(ca);
    }
    for h in headers {
        command.args(["-H", h]);
    }
    let out = command.arg(url).output().expect("run curl");
    let meta = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, content_type) = meta.split_once(' ').unwrap_or((meta.as_str(), ""));
    Response {
        status: status.parse().unwrap_or(0),
        content_type: content_type.to_owned(),
        body: std::fs::read_to_string(body.path()).unwrap_or_default(),
    }
}

/// The samples of a scrape of an admin endpoint's `/metrics`, as `name{labels}` → value.
pub fn scrape(admin: &str) -> std::collections::BTreeMap<String, f64> {
    get(&format!("{admin}/metrics"), &[])
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A `sluice run` of `dir/pipeline.toml` that serves views.
pub struct Serving {
    child: Option<Child>,
    /// The pipeline's directory.
    pub dir: PathBuf,
    /// The gRPC address, `127.0.0.1:PORT`.
    pub grpc: String,
    /// The HTTP base URL.
    pub http: String,
}

impl Serving {
    /// Starts the pipeline in `dir`, whose `[server]` listens on `grpc` and `http` ports,
    /// and waits until `/health` answers.
    pub fn start(dir: &Path, grpc_port: u16, http_port: u16) -> Serving {
        Serving::start_with(dir, grpc_port, http_port, &[])
    }

    /// As [`Serving::start`], with more arguments to `sluice run`.
    pub fn start_with(dir: &Path, grpc_port: u16, http_port: u16, args: &[&str]) -> Serving {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet", "pipeline.toml"])
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        let serving = Serving {
            child: Some(child),
            dir: dir.to_path_buf(),
            grpc: format!("127.0.0.1:{grpc_port}"),
            http: format!("http://127.0.0.1:{http_port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", grpc_port)).is_err()
            || get(&format!("{}/health", serving.http), &[]).status != 200
        {
            assert!(Instant::now() < deadline, "the server did not come up within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        serving
    }

    /// SIGTERM, then a clean exit within 30 s.
    pub fn stop(mut self) {
        if let Some(child) = self.child.take() {
            crate::common::stop_cleanly(child);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of the first sample of metric `name` (any labels) at an admin endpoint.
pub fn metric(admin: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{");
    get(&format!("{admin}/metrics"), &[])
        .body
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Appends lines to a file.
pub fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open input");
    for l in lines {
        writeln!(f, "{l}").expect("append");
    }
}

/// Waits until `check` holds, polling every 50 ms, for at most `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The frontier of the newest checkpoint in `dir` (from its manifests' names), if any.
pub fn newest_checkpoint(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("MANIFEST-")?.strip_suffix(".json")?.parse().ok()
        })
        .max()
}
