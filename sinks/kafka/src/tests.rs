//! Fast tests against librdkafka's in-process mock cluster; the real broker is exercised by
//! the end-to-end tests in `tests/kafka.rs`.

use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_runtime::record::Pos;
use sluice_runtime::value::Value;

use super::*;

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn cluster(topic: &str) -> Cluster {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(topic, 1, 1).expect("topic");
    cluster
}

fn sink(c: &Cluster, topic: &str, mode: SinkMode, timeout_ms: u64) -> KafkaSink {
    let spec = KafkaSinkSpec {
        brokers: c.bootstrap_servers(),
        topic: topic.to_owned(),
        delivery_timeout_ms: timeout_ms,
        options: Vec::new(),
    };
    KafkaSink::new(&spec, mode, None, "test").expect("sink")
}

fn row(key: i64, val: &str, offset: u64) -> Row {
    Row {
        key: Value::map([("id", Value::Int(key))]),
        val: Value::map([("v", Value::from(val))]),
        pos: Pos {
            source: 0,
            partition: 0,
            offset,
        },
    }
}

/// Every record of partition 0 of `topic` as (key, value) text, `None` for a tombstone.
fn records(c: &Cluster, topic: &str, want: usize) -> Vec<(Option<String>, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", c.bootstrap_servers())
        .set("group.id", "reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push((text(m.key()), text(m.payload())));
        }
    }
    out
}

fn pair(k: &str, v: Option<&str>) -> (Option<String>, Option<String>) {
    (Some(k.to_owned()), v.map(str::to_owned))
}

#[test]
fn upsert_writes_new_values_and_tombstones_and_becomes_durable() {
    let c = cluster("table");
    let mut s = sink(&c, "table", SinkMode::Upsert, 0);
    assert_eq!(s.durable(), Some(0));
    s.write(5, &[(row(1, "a", 0), 1), (row(2, "b", 1), 1)]).expect("write");
    // Key 1 changes value, key 2 is deleted.
    s.write(6, &[(row(1, "a", 0), -1), (row(1, "c", 2), 1), (row(2, "b", 1), -1)])
        .expect("write");
    s.commit(Some(7)).expect("commit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.durable() != Some(7) && Instant::now() < deadline {
        s.producer.poll(Duration::from_millis(20));
    }
    assert_eq!(s.durable(), Some(7));
    s.commit(None).expect("final commit");
    assert_eq!(s.durable(), None);
    assert_eq!(
        records(&c, "table", 4),
        vec![
            pair(r#"{"id":1}"#, Some(r#"{"v":"a"}"#)),
            pair(r#"{"id":2}"#, Some(r#"{"v":"b"}"#)),
            pair(r#"{"id":1}"#, Some(r#"{"v":"c"}"#)),
            pair(r#"{"id":2}"#, None),
        ]
    );
}

#[test]
fn changelog_and_append_records() {
    let c = cluster("log");
    let mut s = sink(&c, "log", SinkMode::Changelog, 0);
    s.write(9, &[(row(1, "a", 0), 1), (row(1, "b", 1), -1)]).expect("write");
    s.commit(None).expect("commit");
    assert_eq!(
        records(&c, "log", 2),
        vec![
            pair(
                r#"{"id":1}"#,
                Some(r#"{"time":9,"diff":1,"key":{"id":1},"value":{"v":"a"}}"#)
            ),
            pair(
                r#"{"id":1}"#,
                Some(r#"{"time":9,"diff":-1,"key":{"id":1},"value":{"v":"b"}}"#)
            ),
        ]
    );

    let c = cluster("events");
    let mut s = sink(&c, "events", SinkMode::Append, 0);
    let unkeyed = |val: &str, offset| Row {
        key: Value::Null,
        ..row(0, val, offset)
    };
    // Sorted by row, as the engine gives them; written in source order, twice for diff 2.
    s.write(3, &[(unkeyed("x", 5), 1), (unkeyed("y", 4), 2), (unkeyed("z", 6), -1)])
        .expect("write");
    s.commit(None).expect("commit");
    let values: Vec<Option<String>> = records(&c, "events", 3).into_iter().map(|(k, v)| k.or(v)).collect();
    assert_eq!(
        values,
        [r#"{"v":"y"}"#, r#"{"v":"y"}"#, r#"{"v":"x"}"#].map(|v| Some(v.to_owned()))
    );
}

#[test]
fn a_record_that_cannot_be_delivered_fails_the_sink() {
    let c = cluster("down");
    let mut s = sink(&c, "down", SinkMode::Upsert, 500);
    c.broker_down(1).expect("broker down");
    s.write(1, &[(row(1, "a", 0), 1)]).expect("write is queued");
    let started = Instant::now();
    let err = s.commit(None).expect_err("the record times out");
    assert!(err.to_string().contains("not delivered"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(s.durable(), Some(0), "nothing became durable");
}

#[test]
fn acknowledgements_out_of_order_advance_only_past_a_complete_prefix() {
    let mut acks = Acks::default();
    acks.ack(1);
    acks.ack(2);
    assert_eq!(acks.lowest_unacked, 0);
    acks.ack(0);
    assert_eq!(acks.lowest_unacked, 3);
    assert!(acks.ahead.is_empty());
}
