//! Running one pipeline over several processes: timely's cluster mode, and what the
//! processes tell each other beside the dataflow (docs/decisions.md, "Scale-out over
//! processes").
//!
//! Every process builds the same dataflow with the same global worker indices, so records
//! reach their worker over timely's connections as they reach it across threads. What the
//! workers of one process share in memory — finished partitions, sink frontiers, the
//! checkpoint in progress, a stop or a failure — is what the processes must tell each
//! other. Each process queues such events in its [`Outbox`]; its workers send them over a
//! small control dataflow to the first worker of every other process (or of process 0, the
//! leader, for checkpoint parts), which applies them to its process's state.
//!
//! Process 0 leads: its worker 0 starts checkpoints, and it assembles and writes them.
//! Before worker 0 lets the dataflow pass a checkpoint's frontier it waits until every
//! other process has acknowledged the request, so no operator of another process can pass
//! the frontier before it knows to cut its state there.
//!
//! Failure is fail-stop: a process that dies closes its connections, timely's network
//! threads poison the channels of every other process, their workers fail, and every
//! process exits with an error. A restart of all processes resumes from the last
//! checkpoint.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::record::Time;
use crate::recovery::Positions;

/// Where this process stands in a cluster of processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This process's index, from 0.
    pub process: usize,
    /// Every process's `host:port`, by index: where timely's processes connect to each other.
    pub addresses: Vec<String>,
    /// How long to wait for every other process to connect before giving up.
    pub form_within: Duration,
}

/// How long processes wait for each other by default: long enough for a scheduler to start
/// them one by one, short enough that a missing one is reported.
pub const FORM_WITHIN: Duration = Duration::from_secs(120);

/// The text of a panic's payload (empty when it is neither a `&str` nor a `String`).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Whether a panic is timely's fail-stop after a lost process: its network threads panic
/// when a connection breaks and poison every channel, then the workers panic on their next
/// receive, and the guard joining the network threads panics in turn.
pub fn lost_peer(panic_text: &str) -> bool {
    [
        "timely communication error",
        "MergeQueue poisoned",
        "Send thread panic",
        "Recv thread panic",
    ]
    .iter()
    .any(|m| panic_text.contains(m))
}

/// Why a cluster description cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    /// The hostfile could not be read.
    #[error("cannot read the hostfile {path}: {error}")]
    Read {
        /// The hostfile.
        path: String,
        /// The I/O error.
        error: String,
    },
    /// The hostfile, process count or index do not agree.
    #[error("{0}")]
    Invalid(String),
}

impl ClusterSpec {
    /// Process `process` of `processes`, with addresses from a hostfile's text: one
    /// `host:port` per line, in process order; blank lines and `#` comments are skipped.
    pub fn parse(hostfile: &str, text: &str, processes: usize, process: usize) -> Result<ClusterSpec, ClusterError> {
        let addresses: Vec<String> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if processes == 0 {
            return Err(ClusterError::Invalid("--processes must be at least 1".to_owned()));
        }
        if process >= processes {
            return Err(ClusterError::Invalid(format!(
                "--process {process} is out of range: processes are numbered 0 to {}",
                processes - 1
            )));
        }
        if addresses.len() < processes {
            return Err(ClusterError::Invalid(format!(
                "{hostfile}: {} address(es) for {processes} processes; one `host:port` line per process",
                addresses.len()
            )));
        }
        for (i, a) in addresses.iter().enumerate() {
            let port = a
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then(|| port.parse::<u16>().ok()).flatten());
            if port.is_none() {
                return Err(ClusterError::Invalid(format!(
                    "{hostfile}: address {} (`{a}`) is not `host:port`",
                    i + 1
                )));
            }
        }
        Ok(ClusterSpec {
            process,
            addresses: addresses.into_iter().take(processes).collect(),
            form_within: FORM_WITHIN,
        })
    }

    /// Reads a hostfile and describes process `process` of `processes`.
    pub fn from_hostfile(
        path: &std::path::Path,
        processes: usize,
        process: usize,
    ) -> Result<ClusterSpec, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Read {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        ClusterSpec::parse(&path.display().to_string(), &text, processes, process)
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.addresses.len()
    }

    /// Connects this process to every other one: it listens on its own address, connects to
    /// the processes before it and accepts the ones after it, as timely expects. Each side
    /// checks the other runs the same pipeline with as many processes and workers, restarted
    /// from the same checkpoint (`restored`: its frontier, 0 for none), and listed the same
    /// partitions (`listed`: a digest of their ids). Returns
    /// one stream per process in order, `None` at this process's place.
    ///
    /// Gives up after [`form_within`](ClusterSpec::form_within), naming the processes
    /// still missing, or when `stop` is set.
    pub fn connect(
        &self,
        pipeline: &str,
        (threads, restored, listed): (usize, Time, u64),
        stop: &AtomicBool,
    ) -> Result<Vec<Option<TcpStream>>, ClusterError> {
        let me = Hello {
            process: self.process as u64,
            processes: self.processes() as u64,
            threads: threads as u64,
            restored,
            listed,
            pipeline: pipeline.to_owned(),
        };
        let address = self.addresses.get(self.process).ok_or_else(|| {
            ClusterError::Invalid(format!(
                "process {} of {} has no address",
                self.process,
                self.processes()
            ))
        })?;
        let listener = TcpListener::bind(address)
            .map_err(|e| ClusterError::Invalid(format!("process {} cannot listen on {address}: {e}", self.process)))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ClusterError::Invalid(format!("listening on {address}: {e}")))?;
        let deadline = Instant::now() + self.form_within;
        let mut streams: Vec<Option<TcpStream>> = (0..self.processes()).map(|_| None).collect();
        let mut logged = Instant::now();
        loop {
            let missing: Vec<usize> = (0..self.processes())
                .filter(|p| *p != self.process && streams[*p].is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            if stop.load(Ordering::SeqCst) {
                return Err(ClusterError::Invalid(
                    "stopped while the cluster was forming".to_owned(),
                ));
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = missing
                    .iter()
                    .map(|p| format!("process {p} at {}", self.addresses[*p]))
                    .collect();
                return Err(ClusterError::Invalid(format!(
                    "the cluster did not form within {} s: no connection with {}",
                    self.form_within.as_secs(),
                    names.join(", ")
                )));
            }
            if logged.elapsed() >= Duration::from_secs(5) {
                logged = Instant::now();
                tracing::info!(process = self.process, missing = ?missing, "waiting for the other processes of the cluster");
            }
            // The processes before this one listen for it.
            for p in missing.iter().copied().filter(|p| *p < self.process) {
                if let Ok(stream) = TcpStream::connect(&self.addresses[p]) {
                    let stream = handshake(stream, &me, Some(p), deadline)?;
                    streams[p] = Some(stream);
                }
            }
            // The ones after it connect to it.
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let stream_hello = read_hello(&stream, deadline)?;
                    let p = stream_hello.process as usize;
                    check(&me, &stream_hello, None)?;
                    if p <= self.process || streams[p].is_some() {
                        return Err(ClusterError::Invalid(format!(
                            "process {p} connected to process {} twice or out of order; is the same --process given to two processes?",
                            self.process
                        )));
                    }
                    write_hello(&stream, &me)?;
                    streams[p] = Some(stream);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ClusterError::Invalid(format!("accepting on {address}: {e}"))),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for s in streams.iter().flatten() {
            s.set_nodelay(true)
                .and_then(|()| s.set_read_timeout(None))
                .map_err(|e| ClusterError::Invalid(format!("configuring a cluster connection: {e}")))?;
        }
        Ok(streams)
    }
}

/// What two processes tell each other when they connect.
#[derive(Debug, PartialEq, Eq)]
struct Hello {
    process: u64,
    processes: u64,
    threads: u64,
    restored: Time,
    listed: u64,
    pipeline: String,
}

/// The first bytes of a sluice cluster connection, so a stray connection is told apart.
const MAGIC: &[u8; 8] = b"sluice\x00\x01";

fn write_hello(mut stream: &TcpStream, hello: &Hello) -> Result<(), ClusterError> {
    let mut bytes = MAGIC.to_vec();
    for n in [
        hello.process,
        hello.processes,
        hello.threads,
        hello.restored,
        hello.listed,
        hello.pipeline.len() as u64,
    ] {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    bytes.extend_from_slice(hello.pipeline.as_bytes());
    stream
        .write_all(&bytes)
        .map_err(|e| ClusterError::Invalid(format!("greeting another process: {e}")))
}

fn read_hello(mut stream: &TcpStream, deadline: Instant) -> Result<Hello, ClusterError> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let bad = |e: std::io::Error| {
        ClusterError::Invalid(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "another process closed the connection while greeting: it refused this one (see its log: the \
             pipeline, --processes, --workers or the checkpoint differ)"
                .to_owned()
        } else {
            format!("reading another process's greeting: {e}")
        })
    };
    stream.set_read_timeout(Some(wait)).map_err(bad)?;
    let mut head = [0u8; 8 + 6 * 8];
    stream.read_exact(&mut head).map_err(bad)?;
    if &head[..8] != MAGIC {
        return Err(ClusterError::Invalid(
            "a connection that is not from a sluice process of this cluster".to_owned(),
        ));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&head[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(w)
    };
    let len = word(5);
    if len > 4096 {
        return Err(ClusterError::Invalid(
            "a greeting with an implausible pipeline name".to_owned(),
        ));
    }
    let mut name = vec![0u8; len as usize];
    stream.read_exact(&mut name).map_err(bad)?;
    Ok(Hello {
        process: word(0),
        processes: word(1),
        threads: word(2),
        restored: word(3),
        listed: word(4),
        pipeline: String::from_utf8_lossy(&name).into_owned(),
    })
}

/// Refuses a peer that runs something else; `expected` is the index it must have, if known.
fn check(me: &Hello, peer: &Hello, expected: Option<usize>) -> Result<(), ClusterError> {
    if let Some(p) = expected.filter(|p| *p as u64 != peer.process) {
        return Err(ClusterError::Invalid(format!(
            "the process at the address of process {p} says it is process {}",
            peer.process
        )));
    }
    if peer.processes != me.processes || peer.threads != me.threads || peer.pipeline != me.pipeline {
        return Err(ClusterError::Invalid(format!(
            "process {} runs pipeline `{}` as one of {} processes with {} workers each; this process (process {}) runs `{}` as one of {} with {}: every process needs the same pipeline, --processes and --workers",
            peer.process,
            peer.pipeline,
            peer.processes,
            peer.threads,
            me.process,
            me.pipeline,
            me.processes,
            me.threads
        )));
    }
    if peer.restored != me.restored {
        return Err(ClusterError::Invalid(format!(
            "process {} restarts from the checkpoint at {} and this process (process {}) from the one at {} (0: none): every process must see the same checkpoint directory",
            peer.process, peer.restored, me.process, me.restored
        )));
    }
    if peer.listed != me.listed {
        return Err(ClusterError::Invalid(format!(
            "process {} lists other partitions than this process (process {}): partitions are assigned by their place in the first listing, so every process must see the same files, topics and shards; if one appeared while the processes started, start them again",
            peer.process, me.process
        )));
    }
    if peer.process >= me.processes || peer.process == me.process {
        return Err(ClusterError::Invalid(format!(
            "process {} connected, but this process is process {} of {}",
            peer.process, me.process, me.processes
        )));
    }
    Ok(())
}

/// Greets a process this one connected to and checks its answer.
fn handshake(
    stream: TcpStream,
    me: &Hello,
    expected: Option<usize>,
    deadline: Instant,
) -> Result<TcpStream, ClusterError> {
    write_hello(&stream, me)?;
    let peer = read_hello(&stream, deadline)?;
    check(me, &peer, expected)?;
    Ok(stream)
}

/// What one process tells the others (or the leader) about the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// A partition was read to its end in `epoch`.
    Finished {
        /// The source's index.
        source: u32,
        /// The partition's id.
        partition: String,
        /// The epoch it ended in.
        epoch: Time,
    },
    /// A partition of an unbounded source caught up for the first time, in `epoch`.
    CaughtUp {
        /// The source's index.
        source: u32,
        /// The partition's id.
        partition: String,
        /// The epoch it caught up in.
        epoch: Time,
    },
    /// A worker stopped reading; it last read in `epoch`.
    DoneReading {
        /// Its last epoch.
        epoch: Time,
    },
    /// Worker 0 started a checkpoint at `frontier` (`last`: the run's final one).
    Start {
        /// The checkpoint's frontier.
        frontier: Time,
        /// Whether the run ends with it.
        last: bool,
    },
    /// A process has registered the checkpoint at `frontier` (to the leader).
    Ack {
        /// The checkpoint's frontier.
        frontier: Time,
    },
    /// A worker's part of the checkpoint at `frontier` (to the leader).
    Part {
        /// The checkpoint's frontier.
        frontier: Time,
        /// The worker's global index.
        worker: u32,
        /// Its partitions' positions.
        positions: Positions,
        /// Its operators' states, serialized.
        states: BTreeMap<String, Vec<u8>>,
    },
    /// A sink instance's part of the checkpoint at `frontier` (to the leader).
    SinkPart {
        /// The checkpoint's frontier.
        frontier: Time,
        /// The sink's name.
        sink: String,
        /// Its position, if it keeps one.
        position: Option<Vec<u8>>,
    },
    /// The leader wrote the checkpoint at `frontier`.
    Written {
        /// The checkpoint's frontier.
        frontier: Time,
    },
    /// A sink instance's output is durable up to `frontier` (`None`: all of it).
    Durable {
        /// The instance's slot.
        slot: u32,
        /// Its durable frontier.
        frontier: Option<Time>,
    },
    /// A sink instance saw the end of its input and committed everything.
    SinkClosed,
    /// A worker is caught up since an epoch, or (`None`) has more to read.
    WorkerCaughtUp {
        /// The worker's global index.
        worker: u32,
        /// Since when.
        since: Option<Time>,
    },
    /// The run failed.
    Failed {
        /// Why.
        message: String,
    },
    /// A stop was requested (a signal to one of the processes).
    Stop,
}

/// Who an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// Every other process.
    Others,
    /// Process 0 (nothing is sent when this is process 0).
    Leader,
}

/// The events this process has to send, and where the control dataflow delivers them.
#[derive(Debug)]
pub struct Outbox {
    process: usize,
    processes: usize,
    threads: usize,
    queue: Mutex<Vec<(To, Control)>>,
    waiting: AtomicBool,
}

impl Outbox {
    /// The outbox of process `process` of `processes`, each with `threads` workers.
    pub fn new(process: usize, processes: usize, threads: usize) -> Outbox {
        Outbox {
            process,
            processes,
            threads,
            queue: Mutex::default(),
            waiting: AtomicBool::new(false),
        }
    }

    /// Whether this process leads (process 0): it starts, assembles and writes checkpoints.
    pub fn leads(&self) -> bool {
        self.process == 0
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Whether a global worker index is the first worker of its process: the one that
    /// applies what other processes send.
    pub fn receives(&self, worker: usize) -> bool {
        worker.is_multiple_of(self.threads)
    }

    /// Queues an event.
    pub fn push(&self, to: To, event: Control) {
        if to == To::Leader && self.leads() {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        queue.push((to, event));
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        !self.waiting.load(Ordering::SeqCst)
    }

    /// Takes the queued events, each addressed to the global index of the worker that
    /// receives it in its process.
    pub fn drain(&self) -> Vec<(u64, Control)> {
        if !self.waiting.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        let queued = std::mem::take(&mut *self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut out = Vec::with_capacity(queued.len() * self.processes.saturating_sub(1));
        for (to, event) in queued {
            match to {
                To::Leader => out.push((0, event)),
                To::Others => {
                    for p in (0..self.processes).filter(|p| *p != self.process) {
                        out.push(((p * self.threads) as u64, event.clone()));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostfile_names_one_address_per_process() {
        let text = "# the cluster\n127.0.0.1:4000\n\n127.0.0.1:4001  # second\n127.0.0.1:4002\n";
        let spec = ClusterSpec::parse("hosts", text, 2, 1).expect("valid");
        assert_eq!(spec.addresses, ["127.0.0.1:4000", "127.0.0.1:4001"]);
        assert_eq!(spec.processes(), 2);
        assert_eq!(spec.process, 1);
    }

    #[test]
    fn a_hostfile_that_does_not_fit_is_refused_with_the_reason() {
        let short = ClusterSpec::parse("hosts", "127.0.0.1:4000\n", 2, 0);
        assert!(matches!(short, Err(ClusterError::Invalid(m)) if m.contains("1 address(es) for 2 processes")));
        let out_of_range = ClusterSpec::parse("hosts", "a:1\nb:2\n", 2, 2);
        assert!(matches!(out_of_range, Err(ClusterError::Invalid(m)) if m.contains("--process 2")));
        let no_port = ClusterSpec::parse("hosts", "a:1\nlocalhost\n", 2, 0);
        assert!(matches!(no_port, Err(ClusterError::Invalid(m)) if m.contains("address 2 (`localhost`)")));
        let bad_port = ClusterSpec::parse("hosts", "a:1\nb:99999\n", 2, 0);
        assert!(matches!(bad_port, Err(ClusterError::Invalid(_))));
    }

    #[test]
    fn a_peer_that_runs_something_else_is_refused_with_what_differs() {
        let me = Hello {
            process: 0,
            processes: 2,
            threads: 2,
            restored: 10,
            listed: 7,
            pipeline: "p".to_owned(),
        };
        let peer = |f: &dyn Fn(&mut Hello)| {
            let mut h = Hello {
                process: 1,
                pipeline: "p".to_owned(),
                ..me
            };
            f(&mut h);
            check(&me, &h, Some(1))
        };
        assert_eq!(peer(&|_| {}), Ok(()));
        let refused = |f: &dyn Fn(&mut Hello), says: &str| match peer(f) {
            Err(ClusterError::Invalid(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("{other:?}"),
        };
        refused(&|h| h.threads = 1, "with 1 workers each");
        refused(&|h| h.pipeline = "q".to_owned(), "runs pipeline `q`");
        refused(&|h| h.restored = 9, "restarts from the checkpoint at 9");
        refused(&|h| h.listed = 8, "lists other partitions");
        refused(&|h| h.process = 0, "says it is process 0");
    }

    #[test]
    fn timely_fail_stop_panics_are_told_apart_from_others() {
        let boxed: Box<dyn std::any::Any + Send> =
            Box::new(String::from("timely communication error: reading data: socket closed"));
        assert!(lost_peer(&panic_text(boxed.as_ref())));
        let poisoned: Box<dyn std::any::Any + Send> = Box::new("MergeQueue poisoned.");
        assert!(lost_peer(&panic_text(poisoned.as_ref())));
        let other: Box<dyn std::any::Any + Send> = Box::new("index out of bounds");
        assert!(!lost_peer(&panic_text(other.as_ref())));
        assert_eq!(panic_text(&7u8), "");
    }

    #[test]
    fn events_go_to_the_first_worker_of_every_other_process_or_to_the_leader() {
        let outbox = Outbox::new(1, 3, 2);
        assert!(outbox.drain().is_empty());
        outbox.push(To::Others, Control::Stop);
        outbox.push(To::Leader, Control::SinkClosed);
        let sent = outbox.drain();
        assert_eq!(sent, [(0, Control::Stop), (4, Control::Stop), (0, Control::SinkClosed)]);
        assert!(outbox.drain().is_empty(), "drained once");
        assert!(outbox.receives(2) && outbox.receives(4) && !outbox.receives(3));

        let leader = Outbox::new(0, 2, 2);
        leader.push(To::Leader, Control::SinkClosed);
        assert!(leader.drain().is_empty(), "the leader does not send to itself");
    }
}
