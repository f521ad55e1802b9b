//! A real Kafka-protocol broker for tests and benchmarks: Tansu, installed by
//! `scripts/services`, started on a free 127.0.0.1 port and stopped (by its PID) on drop.
//!
//! A broker can sit behind a [`Proxy`] that it advertises as its address, so a test can cut
//! every client connection and refuse new ones — what clients see when a broker restarts —
//! without losing the broker's in-memory topics.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// The Tansu binary: `$SLUICE_TANSU`, else where `scripts/services` installs it.
pub fn tansu() -> PathBuf {
    let path = std::env::var_os("SLUICE_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/kafka/bin/tansu"));
    assert!(
        path.exists(),
        "the Kafka-protocol broker is not installed at {}: run scripts/services (scripts/test does)",
        path.display()
    );
    path
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A record to produce: partition, key, payload (`None`: a tombstone).
pub type Produce = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// A running broker, stopped on drop.
pub struct Broker {
    child: Child,
    /// The port the broker itself listens on.
    pub port: u16,
    /// The address clients use (the proxy's, when there is one).
    pub brokers: String,
    proxy: Option<Proxy>,
}

impl Broker {
    /// A broker that clients reach directly.
    pub fn start() -> Broker {
        let port = free_port();
        Broker::spawn(port, port, None)
    }

    /// A broker that clients reach through a proxy the test can cut.
    pub fn start_behind_proxy() -> Broker {
        let (port, front) = (free_port(), free_port());
        let proxy = Proxy::start(front, port);
        Broker::spawn(port, front, Some(proxy))
    }

    fn spawn(port: u16, advertised: u16, proxy: Option<Proxy>) -> Broker {
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_listening(port);
        Broker {
            child,
            port,
            brokers: format!("127.0.0.1:{advertised}"),
            proxy,
        }
    }

    /// The proxy in front of the broker, if it was started behind one.
    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("a broker started behind a proxy")
    }

    /// Creates `topic` with `partitions` (through the broker's own port).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new(tansu())
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create");
        assert!(status.success(), "creating topic {topic} failed");
    }

    /// Produces `records` as (partition, key, payload) and waits until all are acknowledged.
    pub fn produce(&self, topic: &str, records: &[Produce]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for (partition, key, payload) in records {
            loop {
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(*partition);
                if let Some(k) = key {
                    record = record.key(k.as_slice());
                }
                if let Some(p) = payload {
                    record = record.payload(p.as_slice());
                }
                match producer.send(record) {
                    Ok(()) => break,
                    Err(_) => producer.poll(Duration::from_millis(10)),
                }
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("flush the test producer");
    }

    /// Every record of `topic` up to its current end, per partition in offset order.
    ///
    /// The end is where reading goes quiet past the listed high watermark: Tansu 0.6 answers
    /// ListOffsets with the last batch's base offset + 1, so that watermark alone falls short.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let consumer = self.consumer("sluice-test-reader");
        let mut out = Vec::new();
        for p in self.partitions(&consumer, topic) {
            let (low, listed_high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            if listed_high <= low {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(low)).expect("tpl");
            consumer.assign(&tpl).expect("assign");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut next = low;
            let mut last_message = Instant::now();
            while next < listed_high || last_message.elapsed() < Duration::from_millis(500) {
                assert!(Instant::now() < deadline, "reading {topic}/{p} timed out at {next}");
                if let Some(m) = consumer.poll(Duration::from_millis(50)) {
                    let m = m.expect("message");
                    last_message = Instant::now();
                    next = m.offset() + 1;
                    out.push(Record {
                        partition: p,
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    });
                }
            }
        }
        out
    }

    /// Waits until any partition of `topic` holds a record (without the idle wait of
    /// [`Broker::read_all`], to act at once on a run's first output).
    pub fn wait_first(&self, topic: &str, within: Duration) {
        let consumer = self.consumer("sluice-test-probe");
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions(&consumer, topic) {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + within;
        while !matches!(consumer.poll(Duration::from_millis(10)), Some(Ok(_))) {
            assert!(Instant::now() < deadline, "nothing reached {topic}");
        }
    }

    fn partitions(&self, consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        metadata.topics()[0].partitions().iter().map(|p| p.id()).collect()
    }

    /// Per partition of `topic`: the group's committed offset (`None` if none) and the
    /// partition's end (the offset after its last record).
    pub fn lag(&self, topic: &str, group: &str) -> Vec<(Option<i64>, i64)> {
        let records = self.read_all(topic);
        let consumer = self.consumer(group);
        let mut tpl = TopicPartitionList::new();
        let partitions = self.partitions(&consumer, topic);
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        let out = partitions
            .iter()
            .map(|&p| {
                let end = records.iter().filter(|r| r.partition == p).map(|r| r.offset + 1).max();
                let offset = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => Some(n),
                    _ => None,
                };
                (offset, end.unwrap_or(0))
            })
            .collect();
        // Dropping a consumer after `committed_offsets` can hang inside librdkafka (see
        // TOOLING.md); a test process ends soon, so it is left to the exit.
        std::mem::forget(consumer);
        out
    }

    fn consumer(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record read back from a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key as text.
    pub key: Option<String>,
    /// Its value as text; `None` for a tombstone.
    pub value: Option<String>,
}

/// A TCP forwarder from `front` to a broker port that can be cut and restored.
pub struct Proxy {
    front: u16,
    back: u16,
    up: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    listener: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Proxy {
    fn start(front: u16, back: u16) -> Proxy {
        let proxy = Proxy {
            front,
            back,
            up: Arc::new(AtomicBool::new(false)),
            streams: Arc::default(),
            listener: Mutex::new(None),
        };
        proxy.restore();
        proxy
    }

    /// Closes every connection and refuses new ones, as a stopped broker does.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.front));
        if let Some(handle) = self.listener.lock().expect("lock").take() {
            let _ = handle.join();
        }
        for s in self.streams.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port, as a restarted broker does.
    pub fn restore(&self) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.front)) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.up.store(true, Ordering::SeqCst);
        let (up, streams, back) = (self.up.clone(), self.streams.clone(), self.back);
        let handle = std::thread::spawn(move || {
            for client in listener.incoming() {
                if !up.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", back)) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
                let mut s = streams.lock().expect("lock");
                s.push(client);
                s.push(server);
            }
        });
        *self.listener.lock().expect("lock") = Some(handle);
    }
}
