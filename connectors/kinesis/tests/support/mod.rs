//! kinesalite for the Kinesis source and sink tests: started with `node scripts/kinesalite.js`
//! on a free 127.0.0.1 port, stopped by its PID on drop, with blocking helpers that set up
//! streams and a driver that reads a source the way the engine does.
//!
//! Shared by the sink's tests (`#[path]`), so it knows nothing of either crate.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use sluice_runtime::source::{PartitionInfo, Position, RawRecord, ReadState, Source};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `scripts/services` installs kinesalite: `$SLUICE_AWS_TOOLS`, else `.tools/aws`.
fn tools() -> PathBuf {
    let dir = std::env::var_os("SLUICE_AWS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/aws"));
    assert!(
        dir.join("node_modules/kinesalite/package.json").exists(),
        "kinesalite is not installed in {}: run scripts/services (scripts/test does)",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running kinesalite, killed by its PID on drop.
pub struct Kinesalite {
    child: Child,
    port: u16,
    /// Kept open: the launcher exits when its stdin closes, so a killed test leaves no server.
    _stdin: Option<ChildStdin>,
    client: aws_sdk_kinesis::Client,
}

impl Kinesalite {
    /// Starts kinesalite on a free port and waits until it listens.
    pub fn start() -> Kinesalite {
        let script = root().join("scripts/kinesalite.js");
        let tools = tools();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("node")
                .arg(&script)
                .arg(port.to_string())
                .arg(&tools)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start kinesalite with `node`");
            let stdin = child.stdin.take();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let sdk = sdk_config(port);
                    return Kinesalite {
                        child,
                        port,
                        _stdin: stdin,
                        client: aws_sdk_kinesis::Client::new(&sdk),
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    // The port was taken meanwhile: try another.
                    break;
                }
                assert!(Instant::now() < deadline, "kinesalite did not listen on port {port}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("kinesalite exited before listening, five times");
    }

    /// The SDK configuration for this server: static dummy credentials, us-east-1.
    pub fn sdk(&self) -> aws_config::SdkConfig {
        sdk_config(self.port)
    }

    /// Creates `stream` with `shards` shards and waits until it is active.
    pub fn create_stream(&self, stream: &str, shards: i32) {
        block_on(async {
            self.client
                .create_stream()
                .stream_name(stream)
                .shard_count(shards)
                .send()
                .await
                .expect("create stream");
        });
        self.wait_active(stream);
    }

    /// Waits until `stream` is active (after a creation or a split).
    pub fn wait_active(&self, stream: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = block_on(async {
                self.client
                    .describe_stream_summary()
                    .stream_name(stream)
                    .send()
                    .await
                    .expect("describe stream")
                    .stream_description_summary()
                    .map(|s| s.stream_status().clone())
            });
            if status == Some(StreamStatus::Active) {
                return;
            }
            assert!(Instant::now() < deadline, "stream {stream} is not active: {status:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Puts `records` (partition key, data) in order, 500 per request, retrying failed entries.
    pub fn put(&self, stream: &str, records: &[(String, Vec<u8>)]) {
        for chunk in records.chunks(500) {
            let mut todo: Vec<&(String, Vec<u8>)> = chunk.iter().collect();
            while !todo.is_empty() {
                let entries: Vec<PutRecordsRequestEntry> = todo
                    .iter()
                    .map(|(k, d)| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(k)
                            .data(Blob::new(d.clone()))
                            .build()
                            .expect("an entry")
                    })
                    .collect();
                let out = block_on(async {
                    self.client
                        .put_records()
                        .stream_name(stream)
                        .set_records(Some(entries))
                        .send()
                        .await
                        .expect("put records")
                });
                todo = todo
                    .into_iter()
                    .zip(out.records())
                    .filter(|(_, r)| r.error_code().is_some())
                    .map(|(e, _)| e)
                    .collect();
            }
        }
    }

    /// Splits `shard` of `stream` at the middle of the hash key range and waits until the
    /// stream is active again.
    pub fn split_in_half(&self, stream: &str, shard: &str) {
        block_on(async {
            self.client
                .split_shard()
                .stream_name(stream)
                .shard_to_split(shard)
                .new_starting_hash_key((1u128 << 127).to_string())
                .send()
                .await
                .expect("split shard");
        });
        self.wait_active(stream);
    }

    /// The shards of `stream`: (id, parent, adjacent parent, closed).
    pub fn shards(&self, stream: &str) -> Vec<(String, Option<String>, bool)> {
        block_on(async {
            self.client
                .list_shards()
                .stream_name(stream)
                .send()
                .await
                .expect("list shards")
                .shards()
                .iter()
                .map(|s| {
                    (
                        s.shard_id().to_owned(),
                        s.parent_shard_id().map(str::to_owned),
                        s.sequence_number_range()
                            .and_then(|r| r.ending_sequence_number())
                            .is_some(),
                    )
                })
                .collect()
        })
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sdk_config(port: u16) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(
            aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "static"),
        ))
        .build()
}

/// Runs `f` on the AWS runtime from a test thread.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    sluice_aws::runtime().block_on(f)
}

/// One record as the driver read it.
#[derive(Clone, Debug)]
pub struct Read {
    /// The shard it came from.
    pub shard: String,
    /// The record.
    pub record: RawRecord,
    /// How many shards had been opened when it was read.
    pub opened_before: usize,
}

/// What a bounded read of a source found.
#[derive(Debug, Default)]
pub struct ReadAll {
    /// Every record, in the order returned (round robin over the open shards).
    pub records: Vec<Read>,
    /// Shards in the order they were opened.
    pub opened: Vec<String>,
    /// Shards in the order they finished, with their final positions.
    pub finished: Vec<(String, Position)>,
}

/// Reads a bounded `source` to its end as the engine does: children only after all their
/// listed parents finished, readers polled round robin, `from` giving resume positions.
pub fn read_all(source: &dyn Source, from: &BTreeMap<String, Position>, timeout: Duration) -> ReadAll {
    let parts: Vec<PartitionInfo> = source.discover().expect("discover");
    let listed: BTreeSet<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    let mut result = ReadAll::default();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut open: Vec<(String, Box<dyn sluice_runtime::source::PartitionReader>)> = Vec::new();
    let mut waiting: Vec<&PartitionInfo> = parts.iter().collect();
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    while !(waiting.is_empty() && open.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "not finished after {timeout:?}: open {:?}",
            open.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        let (ready, still): (Vec<&PartitionInfo>, Vec<&PartitionInfo>) = waiting.into_iter().partition(|p| {
            p.parents
                .iter()
                .all(|q| !listed.contains(q.as_str()) || done.contains(q))
        });
        waiting = still;
        for p in ready {
            let start = from.get(&p.id).cloned().unwrap_or(Position::Start);
            open.push((p.id.clone(), source.open(p, &start).expect("open")));
            result.opened.push(p.id.clone());
        }
        let mut busy = false;
        let mut i = 0;
        while i < open.len() {
            buf.clear();
            let state = open[i].1.poll(&mut buf, 97).expect("poll");
            for record in buf.drain(..) {
                result.records.push(Read {
                    shard: open[i].0.clone(),
                    record,
                    opened_before: result.opened.len(),
                });
            }
            match state {
                ReadState::More => {
                    busy = true;
                    i += 1;
                }
                ReadState::Idle | ReadState::Waiting => i += 1,
                ReadState::Finished => {
                    let (shard, reader) = open.remove(i);
                    result.finished.push((shard.clone(), reader.position()));
                    done.insert(shard);
                }
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    result
}
