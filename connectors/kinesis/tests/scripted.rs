//! The Kinesis source against a scripted service: what kinesalite never does (throttling,
//! expired iterators, trimmed positions).

mod fake;

use std::time::{Duration, Instant};

use fake::{Fake, error, ok};
use serde_json::json;
use sluice_connector_kinesis::KinesisSource;
use sluice_runtime::source::{
    Lag, PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError,
};
use sluice_runtime::spec::{KinesisSourceSpec, KinesisStart, TrimmedPolicy};

fn source(fake: &Fake, on_trimmed: TrimmedPolicy) -> KinesisSource {
    let spec = KinesisSourceSpec {
        stream: "s".to_owned(),
        aws: Default::default(),
        start: KinesisStart::TrimHorizon,
        on_trimmed,
        bounded: false,
        shard_refresh_ms: 0,
    };
    KinesisSource::with_sdk_config(&spec, "test", &fake.sdk()).expect("a source")
}

fn shard0() -> PartitionInfo {
    PartitionInfo {
        id: "shardId-000000000000".to_owned(),
        parents: Vec::new(),
    }
}

/// A `GetRecords` record: data `{}` in base64.
fn record(seq: &str, key: &str) -> serde_json::Value {
    json!({"SequenceNumber": seq, "Data": "e30=", "PartitionKey": key, "ApproximateArrivalTimestamp": 1.7e9})
}

/// Polls until the reader finishes or fails.
fn drain(reader: &mut dyn PartitionReader) -> (Vec<RawRecord>, Result<ReadState, SourceError>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the reader neither finished nor failed");
        match reader.poll(&mut out, 100) {
            Ok(ReadState::Finished) => return (out, Ok(ReadState::Finished)),
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// The operations requested, with their iterator type or iterator.
fn calls(fake: &Fake) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|(op, body)| match op.as_str() {
            "GetShardIterator" => format!(
                "{op} {} {}",
                body["ShardIteratorType"].as_str().unwrap_or_default(),
                body["StartingSequenceNumber"].as_str().unwrap_or_default()
            )
            .trim_end()
            .to_owned(),
            "GetRecords" => format!("{op} {}", body["ShardIterator"].as_str().unwrap_or_default()),
            _ => op.clone(),
        })
        .collect()
}

#[test]
fn throttling_is_retried_and_an_expired_iterator_renewed_after_the_last_record() {
    let fake = Fake::start(vec![
        ok(json!({"ShardIterator": "it-1"})),
        error("ProvisionedThroughputExceededException", "Rate exceeded for shard"),
        ok(
            json!({"Records": [record("11", "a"), record("12", "b")], "NextShardIterator": "it-2", "MillisBehindLatest": 1500}),
        ),
        error("ExpiredIteratorException", "Iterator expired"),
        ok(json!({"ShardIterator": "it-3"})),
        ok(json!({"Records": [], "MillisBehindLatest": 0})),
    ]);
    let source = source(&fake, TrimmedPolicy::Fail);
    let mut reader = source.open(&shard0(), &Position::Start).expect("open");
    let (records, end) = drain(reader.as_mut());
    assert!(matches!(end, Ok(ReadState::Finished)), "{end:?}");
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![11, 12]);
    assert_eq!(records[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(reader.position(), Position::End, "closed and read to its end");
    assert_eq!(
        calls(&fake),
        vec![
            "GetShardIterator TRIM_HORIZON",
            "GetRecords it-1",
            "GetRecords it-1",
            "GetRecords it-2",
            "GetShardIterator AFTER_SEQUENCE_NUMBER 12",
            "GetRecords it-3",
        ]
    );
}

#[test]
fn a_resume_position_before_the_oldest_retained_record_is_trimmed() {
    let script = || {
        vec![
            // The check: the service takes the sequence number…
            ok(json!({"ShardIterator": "after-5"})),
            // …but the oldest retained record comes after it.
            ok(json!({"ShardIterator": "horizon"})),
            ok(json!({"Records": [record("9", "a")], "NextShardIterator": "h-2", "MillisBehindLatest": 10})),
        ]
    };
    let fake = Fake::start(script());
    let mut reader = source(&fake, TrimmedPolicy::Fail)
        .open(&shard0(), &Position::Sequence("5".to_owned()))
        .expect("open");
    match drain(reader.as_mut()) {
        (records, Err(SourceError::Config(m))) => {
            assert!(records.is_empty());
            assert!(m.contains("shardId-000000000000") && m.contains(" 5 "), "{m}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }

    let mut oldest = script();
    oldest.extend([
        ok(json!({"ShardIterator": "from-horizon"})),
        ok(json!({"Records": [record("9", "a")], "MillisBehindLatest": 0})),
    ]);
    let fake = Fake::start(oldest);
    let mut reader = source(&fake, TrimmedPolicy::Oldest)
        .open(&shard0(), &Position::Sequence("5".to_owned()))
        .expect("open");
    let (records, end) = drain(reader.as_mut());
    assert!(matches!(end, Ok(ReadState::Finished)), "{end:?}");
    assert_eq!(records.len(), 1);
    assert_eq!(calls(&fake)[3], "GetShardIterator TRIM_HORIZON");
}

#[test]
fn a_retained_resume_position_is_resumed_after() {
    let fake = Fake::start(vec![
        ok(json!({"ShardIterator": "after-5"})),
        ok(json!({"ShardIterator": "horizon"})),
        ok(json!({"Records": [record("3", "a")], "NextShardIterator": "h-2", "MillisBehindLatest": 10})),
        ok(json!({"ShardIterator": "after-5-again"})),
        ok(json!({"Records": [record("6", "a")], "MillisBehindLatest": 0})),
    ]);
    let mut reader = source(&fake, TrimmedPolicy::Fail)
        .open(&shard0(), &Position::Sequence("5".to_owned()))
        .expect("open");
    let (records, end) = drain(reader.as_mut());
    assert!(matches!(end, Ok(ReadState::Finished)), "{end:?}");
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![6]);
    assert_eq!(calls(&fake)[3], "GetShardIterator AFTER_SEQUENCE_NUMBER 5");
}

#[test]
fn access_denied_fails_the_reader() {
    let fake = Fake::start(vec![error("AccessDeniedException", "not allowed")]);
    let mut reader = source(&fake, TrimmedPolicy::Fail)
        .open(&shard0(), &Position::Start)
        .expect("open");
    match drain(reader.as_mut()) {
        (_, Err(SourceError::Config(m))) => assert!(m.contains("not allowed"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn a_reader_reports_the_millis_behind_latest_of_its_last_get_records() {
    // After the one page, the script runs out: the service fails, the task retries, and the
    // page's answer stays the last.
    let fake = Fake::start(vec![
        ok(json!({"ShardIterator": "it-1"})),
        ok(
            json!({"Records": [record("11", "a"), record("12", "b")], "NextShardIterator": "it-2", "MillisBehindLatest": 1500}),
        ),
    ]);
    let source = source(&fake, TrimmedPolicy::Fail);
    let mut reader = source.open(&shard0(), &Position::Start).expect("open");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < 2 {
        assert!(Instant::now() < deadline, "the page never came");
        let state = reader.poll(&mut out, 100).expect("poll");
        assert_ne!(state, ReadState::Idle, "1500 ms behind is not caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reader.lag(), Some(Lag::Millis(1500)));
}
