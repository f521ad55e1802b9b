//! Kafka → filter → Kafka throughput of `sluice run`, beside the raw produce and consume
//! rates of the same client (librdkafka) on the same broker: the ceiling.
//!
//! Run by hand (not in CI), from the repository root, with `../shared/bench` beside it and
//! the broker installed (`scripts/services`):
//!
//! ```text
//! cargo bench --bench kafka                          # 1 M delivery reports, 4 partitions, 1 and 2 workers
//! cargo bench --bench kafka -- --n 200000 --partitions 2 --workers 1,2,4
//! cargo bench --bench kafka -- --queue-kb 2048,8192,65536   # the source's prefetch per partition
//! ```
//!
//! The broker is Tansu with in-memory storage on a free 127.0.0.1 port, started and stopped
//! by the benchmark. The input topic is loaded by the raw producer (that load is the produce
//! ceiling), read back by a raw consumer (the consume ceiling), then each pipeline run reads
//! all of it (a bounded Kafka source) and writes the v1 errors to a fresh output topic.
//! Records/s is records read over the wall time of the `sluice run` process.

mod common;
#[path = "../tests/kafka_support/mod.rs"]
mod kafka_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{between, generator, list};
use kafka_support::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

struct Args {
    n: u64,
    partitions: u32,
    workers: Vec<usize>,
    /// librdkafka's per-partition prefetch limits to try (`queued.max.messages.kbytes`);
    /// empty: the source's default.
    queue_kb: Vec<u64>,
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 1_000_000,
        partitions: 4,
        workers: vec![1, 2],
        queue_kb: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => args.n = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.n),
            "--partitions" => args.partitions = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.partitions),
            "--workers" => args.workers = list(it.next()).unwrap_or(args.workers),
            "--queue-kb" => args.queue_kb = list(it.next()).unwrap_or(args.queue_kb),
            // cargo bench passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    args
}

/// Produces every line to `topic` (the sticky partitioner spreads batches), returning the
/// seconds until the last one is acknowledged.
fn raw_produce(brokers: &str, topic: &str, lines: &[&str]) -> f64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let started = Instant::now();
    for line in lines {
        loop {
            match producer.send(BaseRecord::<(), str>::to(topic).payload(line)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    started.elapsed().as_secs_f64()
}

/// Reads `n` records of `topic` from the start, copying each payload as the source does,
/// returning the seconds it took.
fn raw_consume(brokers: &str, topic: &str, partitions: u32, n: u64) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut read = 0;
    let mut bytes = 0usize;
    while read < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            bytes += m.payload().map(<[u8]>::to_vec).map_or(0, |p| p.len());
            read += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(bytes > 0);
    secs
}

fn pipeline(topic: &str, out: &str, queue_kb: Option<u64>) -> String {
    let options = queue_kb
        .map(|kb| format!("options = {{ \"queued.max.messages.kbytes\" = \"{kb}\" }}\n"))
        .unwrap_or_default();
    format!(
        "[pipeline]\nname = \"kafka-bench\"\n\n[dead_letters]\ntype = \"discard\"\n\n\
         [sources.reports]\ntype = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"{topic}\"\nbounded = true\n{options}\n\
         [nodes.v1_errors]\ntype = \"filter\"\ninput = \"reports\"\nexpr = 'status == \"error\" && protocol == \"fcm-v1\"'\n\n\
         [sinks.errors]\ntype = \"kafka\"\nbrokers = \"${{KAFKA_BROKERS}}\"\ntopic = \"{out}\"\ninput = \"v1_errors\"\nmode = \"append\"\n"
    )
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
    let text = std::fs::read_to_string(data.path().join("delivery-reports.jsonl")).expect("reports");
    let lines: Vec<&str> = text.lines().collect();
    let expected = lines
        .iter()
        .filter(|l| l.contains("\"status\":\"error\"") && l.contains("\"protocol\":\"fcm-v1\""))
        .count();

    let broker = Broker::start();
    broker.create_topic("reports", args.partitions);
    let produce = raw_produce(&broker.brokers, "reports", &lines);
    let consume = raw_consume(&broker.brokers, "reports", args.partitions, lines.len() as u64);
    println!(
        "{} records of {} bytes on average, {} partitions",
        lines.len(),
        text.len() / lines.len().max(1),
        args.partitions
    );
    println!(
        "raw produce (idempotent)   {:>9.0} records/s",
        lines.len() as f64 / produce
    );
    println!(
        "raw consume                {:>9.0} records/s",
        lines.len() as f64 / consume
    );

    println!("pipeline  queue KiB  workers  seconds  records/s  written  peak MiB");
    let queues: Vec<Option<u64>> = if args.queue_kb.is_empty() {
        vec![None]
    } else {
        args.queue_kb.iter().copied().map(Some).collect()
    };
    for (workers, queue_kb) in queues.iter().flat_map(|q| args.workers.iter().map(move |w| (*w, *q))) {
        let out_topic = format!("errors-{workers}-{}", queue_kb.unwrap_or(0));
        broker.create_topic(&out_topic, args.partitions);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, pipeline("reports", &out_topic, queue_kb)).expect("write pipeline");
        let started = Instant::now();
        let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--workers", &workers.to_string()])
            .arg(&file)
            .env("KAFKA_BROKERS", &broker.brokers)
            .output()
            .expect("run sluice");
        let secs = started.elapsed().as_secs_f64();
        let summary = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "sluice failed: {summary}");
        let read: u64 = between(&summary, "sluice: read ", " record")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let written: u64 = between(&summary, "wrote ", " update")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(read, lines.len() as u64, "the pipeline read every record");
        assert_eq!(written, expected as u64, "the pipeline wrote every v1 error");
        let peak = between(&summary, "peak memory ", " MiB").unwrap_or("?");
        let queue = queue_kb.map_or("default".to_owned(), |kb| kb.to_string());
        println!(
            "filter    {queue:<10} {workers:<8} {secs:<8.2} {:<10.0} {written:<8} {peak}",
            read as f64 / secs
        );
    }
}
