//! What sluice's tests and benchmarks share to drive real servers: kinesalite and dynalite
//! started on free 127.0.0.1 ports and stopped by their PID, with SDK clients and blocking
//! helpers. A dev-dependency only: it panics with the reason instead of returning errors,
//! since a harness that cannot start its server has nothing to recover.

pub mod aws;

use std::net::TcpListener;
use std::path::PathBuf;

/// The repository root, where `scripts/` and `.tools/` are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A 127.0.0.1 port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
