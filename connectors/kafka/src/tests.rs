//! Fast tests against librdkafka's in-process mock cluster; the real broker is exercised by
//! the end-to-end tests in `tests/kafka.rs`.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::*;

fn spec(brokers: &str, topic: &str, start: KafkaStart, bounded: bool) -> KafkaSourceSpec {
    KafkaSourceSpec {
        brokers: brokers.to_owned(),
        topics: vec![topic.to_owned()],
        group_id: "test".to_owned(),
        start,
        bounded,
        options: Vec::new(),
    }
}

/// A mock cluster with `topic` of `partitions`, where partition `p` holds `per_partition`
/// records `{"p":p,"i":i}` keyed `k{i}`.
fn cluster(
    topic: &str,
    partitions: i32,
    per_partition: usize,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(topic, partitions, 1).expect("topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("producer");
    for p in 0..partitions {
        for i in 0..per_partition {
            let payload = format!(r#"{{"p":{p},"i":{i}}}"#);
            let key = format!("k{i}");
            producer
                .send(BaseRecord::to(topic).partition(p).key(&key).payload(&payload))
                .expect("enqueue");
        }
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    cluster
}

/// Reads a partition until it finishes or `want` records arrived.
fn read(reader: &mut dyn PartitionReader, want: usize) -> (Vec<RawRecord>, ReadState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    loop {
        let state = reader.poll(&mut out, 1000).expect("poll");
        if state == ReadState::Finished || out.len() >= want || Instant::now() > deadline {
            return (out, state);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn discovers_partitions_in_order_with_coordinates() {
    let c = cluster("orders", 3, 0);
    let source = KafkaSource::new(
        &spec(&c.bootstrap_servers(), "orders", KafkaStart::Earliest, false),
        "s",
    )
    .expect("source");
    let parts = source.discover().expect("discover");
    let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["orders/0", "orders/1", "orders/2"]);
    assert_eq!(
        source.coordinates(&parts[2]),
        vec![("topic", Value::from("orders")), ("partition", Value::Int(2))]
    );
}

#[test]
fn a_missing_topic_is_a_configuration_error() {
    let c = cluster("present", 1, 0);
    let source = KafkaSource::new(
        &spec(&c.bootstrap_servers(), "absent", KafkaStart::Earliest, false),
        "s",
    )
    .expect("source");
    match source.discover() {
        Err(SourceError::Config(message)) => assert!(message.contains("absent"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn bounded_reads_each_partition_to_its_end_with_keys_and_offsets() {
    let c = cluster("events", 2, 5);
    let source =
        KafkaSource::new(&spec(&c.bootstrap_servers(), "events", KafkaStart::Earliest, true), "s").expect("source");
    let parts = source.discover().expect("discover");
    for part in &parts {
        let mut reader = source.open(part, &Position::Start).expect("open");
        let (records, state) = read(reader.as_mut(), usize::MAX);
        assert_eq!(state, ReadState::Finished);
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
        assert_eq!(records[3].key.as_deref(), Some(&b"k3"[..]));
        assert_eq!(reader.position(), Position::Offset(5));
    }
}

#[test]
fn a_bounded_reader_of_an_empty_partition_finishes() {
    let c = cluster("sparse", 1, 0);
    let source =
        KafkaSource::new(&spec(&c.bootstrap_servers(), "sparse", KafkaStart::Earliest, true), "s").expect("source");
    let parts = source.discover().expect("discover");
    let mut reader = source.open(&parts[0], &Position::Start).expect("open");
    let (records, state) = read(reader.as_mut(), usize::MAX);
    assert!(records.is_empty());
    assert_eq!(state, ReadState::Finished, "no record will ever come to show the end");
}

#[test]
fn resumes_from_an_offset_and_latest_skips_what_exists() {
    let c = cluster("log", 1, 10);
    let bounded =
        KafkaSource::new(&spec(&c.bootstrap_servers(), "log", KafkaStart::Earliest, true), "s").expect("source");
    let part = &bounded.discover().expect("discover")[0];
    let mut reader = bounded.open(part, &Position::Offset(7)).expect("open");
    let (records, state) = read(reader.as_mut(), usize::MAX);
    assert_eq!(state, ReadState::Finished);
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [7, 8, 9]);

    let latest = KafkaSource::new(&spec(&c.bootstrap_servers(), "log", KafkaStart::Latest, true), "s").expect("source");
    let mut reader = latest.open(part, &Position::Start).expect("open");
    let (records, state) = read(reader.as_mut(), usize::MAX);
    assert_eq!((records.len(), state), (0, ReadState::Finished));
}

#[test]
fn partition_ids_round_trip_even_with_slashes_in_topics() {
    assert_eq!(split_id(&partition_id("a/b", 12)).ok(), Some(("a/b", 12)));
    assert!(split_id("no-partition").is_err());
}

#[test]
fn a_partition_created_while_running_is_read_from_its_start_even_with_latest() {
    let c = cluster("grows", 2, 3);
    let source =
        KafkaSource::new(&spec(&c.bootstrap_servers(), "grows", KafkaStart::Latest, true), "s").expect("source");
    let parts = source.discover().expect("discover");
    // As if partition 1 had been created after the first discovery (the mock cluster
    // cannot add partitions to a topic).
    *source.initial.lock().expect("lock") = Some(vec![partition_id("grows", 0)]);
    let mut old = source.open(&parts[0], &Position::Start).expect("open");
    let (records, state) = read(old.as_mut(), usize::MAX);
    assert_eq!(
        (records.len(), state),
        (0, ReadState::Finished),
        "latest skips what existed at start"
    );
    let mut new = source.open(&parts[1], &Position::Start).expect("open");
    let (records, state) = read(new.as_mut(), usize::MAX);
    assert_eq!(
        (records.len(), state),
        (3, ReadState::Finished),
        "a new partition is read whole"
    );
}

/// Serves the consumer's shared queue, where librdkafka's statistics arrive (readers serve it
/// as they poll), until `reader`'s lag is `want`; the last lag seen. With `poll`, the reader
/// is polled too (as the engine does), which must find nothing to read.
fn lag_until(source: &KafkaSource, reader: &mut dyn PartitionReader, want: Lag, poll: bool) -> Option<Lag> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while source.consumer.poll(Duration::from_millis(50)).is_some() {}
        if poll {
            let mut out = Vec::new();
            assert_eq!(reader.poll(&mut out, 10).ok(), Some(ReadState::Idle));
            assert!(out.is_empty());
        }
        let lag = reader.lag();
        if lag == Some(want) || Instant::now() > deadline {
            return lag;
        }
    }
}

fn produce(brokers: &str, topic: &str, n: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for i in 0..n {
        let payload = format!("{i}");
        producer
            .send(BaseRecord::<(), _>::to(topic).partition(0).payload(&payload))
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

#[test]
fn lag_counts_the_records_between_the_reader_and_the_high_watermark() {
    let c = cluster("lagging", 1, 5);
    let source = KafkaSource::new(
        &spec(&c.bootstrap_servers(), "lagging", KafkaStart::Earliest, false),
        "s",
    )
    .expect("source");
    let part = &source.discover().expect("discover")[0];
    let mut reader = source.open(part, &Position::Start).expect("open");
    assert_eq!(reader.lag(), None, "no statistics yet");
    // Fetched and queued, but not read: all five are behind.
    assert_eq!(
        lag_until(&source, reader.as_mut(), Lag::Records(5), false),
        Some(Lag::Records(5))
    );
    let (records, _) = read(reader.as_mut(), 5);
    assert_eq!(records.len(), 5);
    assert_eq!(
        reader.lag(),
        Some(Lag::Records(0)),
        "the reader's own offset counts at once"
    );
    produce(&c.bootstrap_servers(), "lagging", 3);
    assert_eq!(
        lag_until(&source, reader.as_mut(), Lag::Records(3), false),
        Some(Lag::Records(3))
    );
    read(reader.as_mut(), 3);
    assert_eq!(reader.lag(), Some(Lag::Records(0)));
}

#[test]
fn lag_before_the_first_record_starts_where_the_reader_does() {
    let c = cluster("resumed", 1, 10);
    let brokers = c.bootstrap_servers();
    let resumed = KafkaSource::new(&spec(&brokers, "resumed", KafkaStart::Earliest, false), "s").expect("source");
    let part = &resumed.discover().expect("discover")[0];
    let mut reader = resumed.open(part, &Position::Offset(7)).expect("open");
    assert_eq!(
        lag_until(&resumed, reader.as_mut(), Lag::Records(3), false),
        Some(Lag::Records(3))
    );

    let latest = KafkaSource::new(&spec(&brokers, "resumed", KafkaStart::Latest, false), "s").expect("source");
    let part = &latest.discover().expect("discover")[0];
    let mut reader = latest.open(part, &Position::Start).expect("open");
    assert_eq!(
        // Polled, as the engine polls it: that also takes the markers librdkafka queues with
        // the messages, which the statistics count as queued until then.
        lag_until(&latest, reader.as_mut(), Lag::Records(0), true),
        Some(Lag::Records(0))
    );
    produce(&brokers, "resumed", 2);
    assert_eq!(
        lag_until(&latest, reader.as_mut(), Lag::Records(2), false),
        Some(Lag::Records(2))
    );
}

#[test]
fn a_bounded_reader_has_no_lag_once_finished() {
    let c = cluster("bounded-lag", 1, 4);
    let source = KafkaSource::new(
        &spec(&c.bootstrap_servers(), "bounded-lag", KafkaStart::Earliest, true),
        "s",
    )
    .expect("source");
    let part = &source.discover().expect("discover")[0];
    let mut reader = source.open(part, &Position::Start).expect("open");
    let (records, state) = read(reader.as_mut(), usize::MAX);
    assert_eq!((records.len(), state), (4, ReadState::Finished));
    assert_eq!(reader.lag(), Some(Lag::Records(0)));
}
