//! Unit tests of the pure parts; the service is exercised against kinesalite in `tests/`.

use super::*;

fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>) -> (String, Option<String>, Option<String>) {
    (id.to_owned(), parent.map(str::to_owned), adjacent.map(str::to_owned))
}

fn part(id: &str, parents: &[&str]) -> PartitionInfo {
    PartitionInfo {
        id: id.to_owned(),
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
    }
}

#[test]
fn partitions_name_both_parents_of_a_merge_and_sort_children_after_them() {
    let listed = [
        shard(
            "shardId-000000000002",
            Some("shardId-000000000000"),
            Some("shardId-000000000001"),
        ),
        shard("shardId-000000000001", None, None),
        shard("shardId-000000000000", None, None),
    ];
    assert_eq!(
        partitions(&listed),
        vec![
            part("shardId-000000000000", &[]),
            part("shardId-000000000001", &[]),
            part(
                "shardId-000000000002",
                &["shardId-000000000000", "shardId-000000000001"]
            ),
        ]
    );
}

#[test]
fn parents_no_longer_listed_are_dropped() {
    // shardId-0 expired past retention; its children of a split must not wait for it.
    let listed = [
        shard("shardId-000000000001", Some("shardId-000000000000"), None),
        shard("shardId-000000000002", Some("shardId-000000000000"), None),
        shard(
            "shardId-000000000003",
            Some("shardId-000000000001"),
            Some("shardId-000000000000"),
        ),
    ];
    assert_eq!(
        partitions(&listed),
        vec![
            part("shardId-000000000001", &[]),
            part("shardId-000000000002", &[]),
            part("shardId-000000000003", &["shardId-000000000001"]),
        ]
    );
}

fn record(seq: &str, key: &str, data: &[u8]) -> Record {
    Record {
        sequence: seq.to_owned(),
        offset: sequence::ordinal(seq),
        key: key.to_owned(),
        data: data.to_vec(),
    }
}

/// A reader fed by the returned sender instead of a task.
fn fed_reader(from: Position) -> (KinesisReader, mpsc::Sender<Event>) {
    let (tx, rx) = mpsc::channel(8);
    let reader = KinesisReader {
        shard: "shardId-000000000000".to_owned(),
        rx: Some(rx),
        page: VecDeque::new(),
        position: from,
        end: None,
        failure: None,
        task: None,
        lag: None,
    };
    (reader, tx)
}

#[test]
fn a_reader_returns_pages_in_order_and_ends_at_a_closed_shard() {
    let (mut reader, tx) = fed_reader(Position::Sequence("5".to_owned()));
    let mut out = Vec::new();
    assert_eq!(
        reader.poll(&mut out, 10).ok(),
        Some(ReadState::Waiting),
        "no answer yet: not caught up"
    );
    assert_eq!(reader.position(), Position::Sequence("5".to_owned()));
    for event in [
        Event::Page(vec![record("7", "a", b"{}"), record("9", "b", b"")]),
        Event::Page(vec![record("12", "a", b"[]")]),
        Event::Closed,
    ] {
        assert!(tx.try_send(event).is_ok());
    }
    assert_eq!(reader.poll(&mut out, 2).ok(), Some(ReadState::More));
    assert_eq!(reader.position(), Position::Sequence("9".to_owned()));
    assert_eq!(
        out,
        vec![
            RawRecord {
                offset: 7,
                key: Some(b"a".to_vec()),
                payload: Some(b"{}".to_vec()),
            },
            // Empty data is a tombstone.
            RawRecord {
                offset: 9,
                key: Some(b"b".to_vec()),
                payload: None,
            },
        ]
    );
    out.clear();
    assert_eq!(reader.poll(&mut out, 10).ok(), Some(ReadState::Finished));
    assert_eq!(out.len(), 1);
    assert_eq!(reader.position(), Position::End);
}

#[test]
fn a_bounded_reader_that_caught_up_keeps_its_sequence_number() {
    let (mut reader, tx) = fed_reader(Position::Start);
    assert!(tx.try_send(Event::Page(vec![record("3", "k", b"1")])).is_ok());
    assert!(tx.try_send(Event::CaughtUp).is_ok());
    let mut out = Vec::new();
    assert_eq!(reader.poll(&mut out, 10).ok(), Some(ReadState::Finished));
    assert_eq!(reader.position(), Position::Sequence("3".to_owned()));
}

#[test]
fn a_failure_comes_after_the_records_before_it() {
    let (mut reader, tx) = fed_reader(Position::Start);
    assert!(tx.try_send(Event::Page(vec![record("3", "k", b"1")])).is_ok());
    assert!(tx.try_send(Event::Failed("trimmed".to_owned())).is_ok());
    let mut out = Vec::new();
    assert_eq!(reader.poll(&mut out, 10).ok(), Some(ReadState::More));
    assert_eq!(out.len(), 1);
    match reader.poll(&mut out, 10) {
        Err(SourceError::Config(m)) => assert_eq!(m, "trimmed"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn a_reader_whose_task_vanished_fails() {
    let (mut reader, tx) = fed_reader(Position::Start);
    drop(tx);
    let mut out = Vec::new();
    assert!(matches!(reader.poll(&mut out, 10), Err(SourceError::Config(_))));
}

fn offline_source(start: KinesisStart) -> KinesisSource {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let spec = KinesisSourceSpec {
        stream: "s".to_owned(),
        aws: Default::default(),
        start,
        on_trimmed: sluice_runtime::spec::TrimmedPolicy::Fail,
        bounded: true,
        shard_refresh_ms: 1000,
    };
    KinesisSource::with_sdk_config(&spec, "test", &sdk).expect("a source")
}

#[test]
fn a_shard_read_to_its_end_before_is_finished_at_once() {
    let source = offline_source(KinesisStart::TrimHorizon);
    let mut reader = source
        .open(&part("shardId-000000000000", &[]), &Position::End)
        .expect("a reader");
    let mut out = Vec::new();
    assert_eq!(reader.poll(&mut out, 10).ok(), Some(ReadState::Finished));
    assert_eq!(reader.position(), Position::End);
    assert!(matches!(
        source.open(&part("shardId-000000000000", &[]), &Position::Offset(3)),
        Err(SourceError::Config(_))
    ));
}

#[test]
fn dead_letters_name_the_shard_and_the_sequence_index() {
    let source = offline_source(KinesisStart::Latest);
    assert_eq!(source.offset_label(), "sequence_index");
    assert_eq!(
        source.coordinates(&part("shardId-000000000004", &[])),
        vec![("shard", Value::from("shardId-000000000004"))]
    );
}

#[test]
fn lag_is_caught_up_only_when_every_open_shard_answered_zero() {
    let source = offline_source(KinesisStart::Latest);
    assert!(!source.caught_up());
    source.lag.open("a");
    source.lag.open("b");
    source.lag.set("a", Some(0));
    assert!(!source.caught_up(), "b has not answered");
    source.lag.set("b", Some(1500));
    assert!(!source.caught_up());
    assert_eq!(
        source.lag(),
        BTreeMap::from([("a".to_owned(), 0), ("b".to_owned(), 1500)])
    );
    source.lag.set("b", Some(0));
    assert!(source.caught_up());
    source.lag.close("b");
    assert_eq!(source.lag(), BTreeMap::from([("a".to_owned(), 0)]));
}

#[test]
fn an_empty_stream_name_is_a_configuration_error() {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let spec = KinesisSourceSpec {
        stream: " ".to_owned(),
        aws: Default::default(),
        start: KinesisStart::Latest,
        on_trimmed: sluice_runtime::spec::TrimmedPolicy::Fail,
        bounded: false,
        shard_refresh_ms: 1000,
    };
    assert!(matches!(
        KinesisSource::with_sdk_config(&spec, "t", &sdk),
        Err(SourceError::Config(_))
    ));
}

#[test]
fn a_reader_reports_the_last_millis_behind_latest_of_its_shard() {
    let lags = Arc::new(ShardLags::default());
    let (mut reader, _tx) = fed_reader(Position::Start);
    reader.lag = Some(lags.clone());
    let shard = reader.shard.clone();
    lags.open(&shard);
    assert_eq!(reader.lag(), None, "no answer yet");
    lags.set(&shard, Some(1500));
    lags.set("shardId-000000000001", Some(9));
    assert_eq!(reader.lag(), Some(Lag::Millis(1500)), "its own shard's");
    lags.set(&shard, Some(0));
    assert_eq!(reader.lag(), Some(Lag::Millis(0)));
    lags.set(&shard, Some(-3));
    assert_eq!(reader.lag(), Some(Lag::Millis(0)), "never negative");
    lags.close(&shard);
    assert_eq!(reader.lag(), None, "the task ended");
}
