//! The Kinesis source against kinesalite: bounded reads, resumes, splits, trimmed positions.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_connector_kinesis::KinesisSource;
use sluice_runtime::source::{Position, ReadState, Source, SourceError};
use sluice_runtime::spec::{KinesisSourceSpec, KinesisStart, TrimmedPolicy};
use support::{Kinesis, read_all};

const PATIENCE: Duration = Duration::from_secs(60);

fn spec(stream: &str, start: KinesisStart, on_trimmed: TrimmedPolicy) -> KinesisSourceSpec {
    KinesisSourceSpec {
        stream: stream.to_owned(),
        aws: Default::default(),
        start,
        on_trimmed,
        bounded: true,
        shard_refresh_ms: 0,
    }
}

fn source(k: &Kinesis, spec: &KinesisSourceSpec) -> KinesisSource {
    KinesisSource::with_sdk_config(spec, "test", &k.sdk_config()).expect("a source")
}

/// `n` records: key `k{i % keys}`, data `{"k":…,"i":i}`.
fn records(from: usize, n: usize, keys: usize) -> Vec<(String, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let key = format!("k{}", i % keys);
            let data = serde_json::json!({"k": key, "i": i}).to_string().into_bytes();
            (key, data)
        })
        .collect()
}

/// The `i` of each record, per partition key, in read order.
fn per_key(read: &support::ReadAll) -> BTreeMap<String, Vec<u64>> {
    let mut keys: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &read.records {
        let key = String::from_utf8(r.record.key.clone().unwrap_or_default()).expect("a text key");
        let v: serde_json::Value =
            serde_json::from_slice(r.record.payload.as_deref().unwrap_or_default()).expect("JSON data");
        keys.entry(key).or_default().push(v["i"].as_u64().expect("an index"));
    }
    keys
}

#[test]
fn a_bounded_read_returns_every_record_in_shard_order_and_resumes_after_it() {
    let k = Kinesis::start();
    k.create_stream("two", 2);
    k.put("two", &records(0, 600, 23));
    let source = source(&k, &spec("two", KinesisStart::TrimHorizon, TrimmedPolicy::Fail));
    let read = read_all(&source, &BTreeMap::new(), PATIENCE);
    assert_eq!(read.records.len(), 600);
    let keys = per_key(&read);
    assert_eq!(keys.len(), 23);
    for (key, is) in &keys {
        assert!(is.windows(2).all(|w| w[0] < w[1]), "{key}: {is:?}");
    }
    let mut all: Vec<u64> = keys.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..600).collect::<Vec<u64>>());
    // Ordinals increase within a shard: they order records and name them in dead letters.
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let offsets: Vec<u64> = read
            .records
            .iter()
            .filter(|r| r.shard == shard)
            .map(|r| r.record.offset)
            .collect();
        assert!(!offsets.is_empty(), "{shard} got records");
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{shard}: {offsets:?}");
    }
    // Open shards that caught up keep their sequence numbers, and the lag was seen.
    assert_eq!(read.finished.len(), 2);
    assert!(read.finished.iter().all(|(_, p)| matches!(p, Position::Sequence(_))));
    assert!(source.caught_up());

    // Resuming from the final positions reads only what came after them.
    k.put("two", &records(600, 50, 23));
    let from: BTreeMap<String, Position> = read.finished.into_iter().collect();
    let again = read_all(&source, &from, PATIENCE);
    let mut is: Vec<u64> = per_key(&again).values().flatten().copied().collect();
    is.sort_unstable();
    assert_eq!(is, (600..650).collect::<Vec<u64>>());
}

#[test]
fn a_resume_position_in_the_middle_of_a_shard_reads_what_follows_it() {
    let k = Kinesis::start();
    k.create_stream("one", 1);
    k.put("one", &records(0, 100, 5));
    let source = source(&k, &spec("one", KinesisStart::TrimHorizon, TrimmedPolicy::Fail));
    let mut reader = source
        .open(&source.discover().expect("discover")[0], &Position::Start)
        .expect("open");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while out.len() < 40 {
        assert!(std::time::Instant::now() < deadline);
        let max = 40 - out.len();
        reader.poll(&mut out, max).expect("poll");
        std::thread::sleep(Duration::from_millis(5));
    }
    let position = reader.position();
    drop(reader);
    assert!(matches!(position, Position::Sequence(_)), "{position:?}");
    let from = BTreeMap::from([("shardId-000000000000".to_owned(), position)]);
    let rest = read_all(&source, &from, PATIENCE);
    let mut is: Vec<u64> = per_key(&rest).values().flatten().copied().collect();
    is.sort_unstable();
    assert_eq!(is, (40..100).collect::<Vec<u64>>());
}

#[test]
fn children_of_a_split_are_read_after_their_parent_in_per_key_order() {
    let k = Kinesis::start();
    k.create_stream("split", 1);
    k.put("split", &records(0, 300, 17));
    k.split_shard("split", "shardId-000000000000");
    k.put("split", &records(300, 300, 17));
    let shards = k.list_shards("split");
    assert_eq!(shards.len(), 3, "{shards:?}");
    assert!(!shards[0].is_open(), "the parent is closed");

    let source = source(&k, &spec("split", KinesisStart::TrimHorizon, TrimmedPolicy::Fail));
    let parts = source.discover().expect("discover");
    assert_eq!(parts[1].parents, vec!["shardId-000000000000".to_owned()]);
    assert_eq!(parts[2].parents, vec!["shardId-000000000000".to_owned()]);

    let read = read_all(&source, &BTreeMap::new(), PATIENCE);
    assert_eq!(read.records.len(), 600);
    // The parent finished before either child opened, and ended at `End`.
    assert_eq!(read.opened[0], "shardId-000000000000");
    assert_eq!(read.finished[0], ("shardId-000000000000".to_owned(), Position::End));
    assert!(
        read.records
            .iter()
            .filter(|r| r.shard != "shardId-000000000000")
            .all(|r| r.opened_before == 3)
    );
    // Per key, records come in the order they were written, across the split.
    let keys = per_key(&read);
    for (key, is) in &keys {
        assert!(is.windows(2).all(|w| w[0] < w[1]), "{key}: {is:?}");
        assert!(is.iter().any(|i| *i >= 300), "{key} has records after the split");
    }
    // Resuming a parent read to its end reads nothing of it again.
    let from = BTreeMap::from([("shardId-000000000000".to_owned(), Position::End)]);
    let children = read_all(&source, &from, PATIENCE);
    assert_eq!(children.records.len(), 300);
}

#[test]
fn a_resume_position_the_service_refuses_fails_or_restarts_from_the_oldest_record() {
    let k = Kinesis::start();
    k.create_stream("trim", 2);
    k.put("trim", &records(0, 200, 11));
    // A sequence number of the other shard: kinesalite refuses it as it refuses a trimmed one.
    let s = source(&k, &spec("trim", KinesisStart::TrimHorizon, TrimmedPolicy::Fail));
    let first = read_all(&s, &BTreeMap::new(), PATIENCE);
    let foreign = first
        .finished
        .iter()
        .find(|(id, _)| id == "shardId-000000000001")
        .map(|(_, p)| p.clone())
        .expect("shard 1's position");
    let parts = s.discover().expect("discover");
    let mut reader = s.open(&parts[0], &foreign).expect("open");
    let deadline = std::time::Instant::now() + PATIENCE;
    let error = loop {
        assert!(std::time::Instant::now() < deadline, "no failure");
        match reader.poll(&mut Vec::new(), 100) {
            Ok(ReadState::Idle | ReadState::Waiting | ReadState::More) => std::thread::sleep(Duration::from_millis(5)),
            Ok(ReadState::Finished) => panic!("finished instead of failing"),
            Err(e) => break e,
        }
    };
    match error {
        SourceError::Config(m) => assert!(m.contains("shardId-000000000000") && m.contains("on_trimmed"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }

    let oldest = source(&k, &spec("trim", KinesisStart::TrimHorizon, TrimmedPolicy::Oldest));
    let from = BTreeMap::from([("shardId-000000000000".to_owned(), foreign)]);
    let read = read_all(&oldest, &from, PATIENCE);
    let shard0 = first
        .records
        .iter()
        .filter(|r| r.shard == "shardId-000000000000")
        .count();
    let again = read
        .records
        .iter()
        .filter(|r| r.shard == "shardId-000000000000")
        .count();
    assert_eq!(again, shard0, "shard 0 is read again from its oldest record");
}

#[test]
fn latest_reads_only_what_is_written_after_the_shard_opened() {
    let k = Kinesis::start();
    k.create_stream("latest", 1);
    k.put("latest", &records(0, 10, 3));
    let s = source(&k, &spec("latest", KinesisStart::Latest, TrimmedPolicy::Fail));
    let read = read_all(&s, &BTreeMap::new(), PATIENCE);
    assert!(read.records.is_empty(), "{:?}", read.records);
}

#[test]
fn a_missing_stream_is_a_configuration_error() {
    let k = Kinesis::start();
    let s = source(&k, &spec("nope", KinesisStart::TrimHorizon, TrimmedPolicy::Fail));
    match s.discover() {
        Err(SourceError::Config(m)) => assert!(m.contains("nope"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn an_unreachable_service_is_transient() {
    let k = Kinesis::start();
    let sdk = k.sdk_config().into_builder().endpoint_url("http://127.0.0.1:9").build();
    let s = KinesisSource::with_sdk_config(
        &spec("two", KinesisStart::TrimHorizon, TrimmedPolicy::Fail),
        "test",
        &sdk,
    )
    .expect("a source");
    assert!(matches!(s.discover(), Err(SourceError::Transient(_))));
}
