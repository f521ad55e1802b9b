//! The Kinesis sink against kinesalite, read back with the Kinesis source.

#[path = "../../../connectors/kinesis/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_connector_kinesis::KinesisSource;
use sluice_runtime::record::{Diff, Pos, Row};
use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::spec::{KinesisSinkSpec, KinesisSourceSpec, KinesisStart, SinkMode, TrimmedPolicy};
use sluice_runtime::value::Value;
use sluice_sink_kinesis::KinesisSink;
use support::{Kinesis, read_all};

const PATIENCE: Duration = Duration::from_secs(60);

fn sink(k: &Kinesis, stream: &str, mode: SinkMode) -> KinesisSink {
    let spec = KinesisSinkSpec {
        stream: stream.to_owned(),
        aws: Default::default(),
    };
    KinesisSink::with_sdk_config(&spec, mode, None, &k.sdk_config()).expect("a sink")
}

fn source(k: &Kinesis, stream: &str) -> KinesisSource {
    let spec = KinesisSourceSpec {
        stream: stream.to_owned(),
        aws: Default::default(),
        start: KinesisStart::TrimHorizon,
        on_trimmed: TrimmedPolicy::Fail,
        bounded: true,
        shard_refresh_ms: 0,
    };
    KinesisSource::with_sdk_config(&spec, "test", &k.sdk_config()).expect("a source")
}

fn event(i: u64) -> Row {
    let key = Value::from(format!("user-{}", i % 41));
    let val = Value::map([("user", key.clone()), ("n", Value::from(i))]);
    Row {
        key,
        val,
        pos: Pos {
            source: 0,
            partition: 0,
            offset: i,
        },
    }
}

#[test]
fn a_thousand_records_over_two_shards_are_read_back_in_per_key_order() {
    let k = Kinesis::start();
    k.create_stream("out", 2);
    let mut s = sink(&k, "out", SinkMode::Append);
    // Ten times of 100 records; within a time the sink restores source order.
    for t in 0..10u64 {
        let mut updates: Vec<(Row, Diff)> = (t * 100..(t + 1) * 100).map(|i| (event(i), 1)).collect();
        updates.reverse();
        s.write(t + 1, &updates).expect("write");
        s.commit(Some(t + 2)).expect("commit");
    }
    s.commit(None).expect("final commit");
    assert_eq!(s.durable(), None, "everything is durable at the end");

    let read = read_all(&source(&k, "out"), &BTreeMap::new(), PATIENCE);
    assert_eq!(read.records.len(), 1000);
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut shards = BTreeMap::<String, usize>::new();
    for r in &read.records {
        let key = String::from_utf8(r.record.key.clone().unwrap_or_default()).expect("a text key");
        let v: serde_json::Value =
            serde_json::from_slice(r.record.payload.as_deref().unwrap_or_default()).expect("JSON data");
        assert_eq!(
            key,
            format!("\"{}\"", v["user"].as_str().unwrap_or_default()),
            "the row key's JSON"
        );
        per_key
            .entry(key)
            .or_default()
            .push(v["n"].as_u64().unwrap_or(u64::MAX));
        *shards.entry(r.shard.clone()).or_default() += 1;
    }
    assert_eq!(shards.len(), 2, "both shards got records: {shards:?}");
    let mut all: Vec<u64> = Vec::new();
    for (key, ns) in &per_key {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{key}: {ns:?}");
        all.extend(ns);
    }
    all.sort_unstable();
    assert_eq!(all, (0..1000).collect::<Vec<u64>>());
}

#[test]
fn upsert_deletions_are_read_back_as_tombstones() {
    let k = Kinesis::start();
    k.create_stream("table", 1);
    let mut s = sink(&k, "table", SinkMode::Upsert);
    let a = Row::derived(Value::from("a"), Value::map([("v", Value::from(1u64))]));
    s.write(1, &[(a.clone(), 1)]).expect("write");
    s.write(2, &[(a, -1)]).expect("write");
    s.commit(None).expect("commit");
    let read = read_all(&source(&k, "table"), &BTreeMap::new(), PATIENCE);
    let got: Vec<_> = read
        .records
        .iter()
        .map(|r| (r.record.key.clone(), r.record.payload.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(b"\"a\"".to_vec()), Some(br#"{"v":1}"#.to_vec())),
            (Some(b"\"a\"".to_vec()), None),
        ]
    );
}

#[test]
fn a_missing_stream_fails_the_sink() {
    let k = Kinesis::start();
    let mut s = sink(&k, "absent", SinkMode::Append);
    s.write(1, &[(event(1), 1)]).expect("write is asynchronous");
    match s.commit(None) {
        Err(SinkError::Io(m)) => assert!(m.contains("absent"), "{m}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(s.write(2, &[(event(2), 1)]).is_err(), "a failed sink stays failed");
}
