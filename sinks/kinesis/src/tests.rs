//! Unit tests of the pure parts; the service is exercised against kinesalite in `tests/`.

use sluice_runtime::record::Pos;

use super::*;

fn row(key: Value, val: Value) -> Row {
    Row::derived(key, val)
}

fn obj(pairs: &[(&str, Value)]) -> Value {
    Value::map(pairs.iter().map(|(k, v)| (*k, v.clone())))
}

/// Every batch the sink handed over, as (partition key, data as text).
fn drain(rx: &mut mpsc::Receiver<Batch>) -> Vec<Vec<(String, String)>> {
    let mut batches = Vec::new();
    while let Ok(b) = rx.try_recv() {
        batches.push(
            b.entries()
                .iter()
                .map(|e| (e.key.clone(), String::from_utf8_lossy(&e.data).into_owned()))
                .collect(),
        );
    }
    batches
}

#[test]
fn the_partition_key_is_the_formats_else_the_row_keys_json_else_a_hash_of_the_data() {
    let key = obj(&[("id", Value::from("a"))]);
    assert_eq!(partition_key(Some("uuid-1".to_owned()), &key, b"x"), "uuid-1");
    assert_eq!(partition_key(Some(String::new()), &key, b"x"), r#"{"id":"a"}"#);
    assert_eq!(partition_key(None, &Value::Int(7), b"x"), "7");
    let unkeyed = partition_key(None, &Value::Null, b"some data");
    assert_eq!(unkeyed.len(), 64);
    assert_eq!(unkeyed, partition_key(None, &Value::Null, b"some data"));
    assert_ne!(unkeyed, partition_key(None, &Value::Null, b"other data"));
}

#[test]
fn a_partition_key_over_256_characters_is_hashed() {
    let exactly = "é".repeat(256);
    assert_eq!(partition_key(Some(exactly.clone()), &Value::Null, b""), exactly);
    let long = "k".repeat(257);
    let hashed = partition_key(Some(long.clone()), &Value::Null, b"");
    assert_eq!(hashed.len(), 64);
    assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(hashed, partition_key(Some(long), &Value::Null, b"other"));
}

#[test]
fn batches_hold_at_most_500_records_and_5_mib() {
    let mut b = Batch::default();
    for i in 0..MAX_RECORDS {
        assert!(b.fits(10), "record {i}");
        b.push(Entry {
            key: "k".to_owned(),
            data: vec![0; 9],
        });
    }
    assert!(!b.fits(1));
    let mut b = Batch::default();
    let mib = Entry {
        key: "k".to_owned(),
        data: vec![0; MAX_RECORD_BYTES - 1],
    };
    for _ in 0..5 {
        assert!(b.fits(mib.size()));
        b.push(mib.clone());
    }
    assert!(!b.fits(1), "5 MiB is full");
    let mut small = Batch::default();
    small.push(Entry {
        key: "k".to_owned(),
        data: vec![],
    });
    assert!(!b.can_take(&small));
    let mut other = Batch::default();
    other.push(mib.clone());
    assert!(other.can_take(&small));
    other.append(small);
    assert_eq!(other.entries().len(), 2);
}

#[test]
fn retries_cover_failed_records_and_later_records_of_their_keys() {
    let keys = ["a", "b", "a", "c", "b", "a"];
    let failed = [false, true, false, false, false, false];
    assert_eq!(to_retry(&keys, &failed), vec![1, 4]);
    let failed = [true, false, false, true, false, false];
    assert_eq!(to_retry(&keys, &failed), vec![0, 2, 3, 5]);
    assert_eq!(to_retry(&keys, &[false; 6]), Vec::<usize>::new());
}

#[test]
fn append_records_are_batched_in_source_order_and_sent_on_commit() {
    let (mut sink, mut rx) = KinesisSink::with_channel("s", SinkMode::Append, None);
    let updates: Vec<(Row, Diff)> = (0..1100u64)
        .rev()
        .map(|i| {
            let mut r = row(Value::Null, obj(&[("n", Value::from(i))]));
            r.pos = Pos {
                source: 0,
                partition: 0,
                offset: i,
            };
            (r, 1)
        })
        .collect();
    sink.write(1, &updates).expect("written");
    // Two full batches went out; the rest waits for the commit.
    assert_eq!(drain(&mut rx).iter().map(Vec::len).collect::<Vec<_>>(), vec![500, 500]);
    sink.commit(Some(2)).expect("committed");
    let last = drain(&mut rx);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].len(), 100);
    assert_eq!(last[0][0].1, r#"{"n":1000}"#);
    assert_eq!(last[0][0].0.len(), 64, "unkeyed rows get a hash of their data");
    assert_eq!(sink.durable(), Some(0), "nothing taken yet");
    sink.shared.update(|p| p.acked = 2);
    assert_eq!(sink.durable(), Some(0), "the third batch is not taken");
    sink.shared.update(|p| p.acked = 3);
    assert_eq!(sink.durable(), Some(2));
}

#[test]
fn upsert_writes_values_and_empty_tombstones() {
    let (mut sink, mut rx) = KinesisSink::with_channel("s", SinkMode::Upsert, None);
    let a = Value::from("a");
    let b = Value::from("b");
    let updates = vec![
        (row(a.clone(), obj(&[("v", Value::from(1u64))])), -1),
        (row(a.clone(), obj(&[("v", Value::from(2u64))])), 1),
        (row(b.clone(), obj(&[("v", Value::from(3u64))])), -1),
    ];
    sink.write(5, &updates).expect("written");
    sink.commit(Some(6)).expect("committed");
    assert_eq!(
        drain(&mut rx),
        vec![vec![
            (r#""a""#.to_owned(), r#"{"v":2}"#.to_owned()),
            (r#""b""#.to_owned(), String::new()),
        ]]
    );
}

#[test]
fn changelog_records_carry_time_diff_key_and_value() {
    let (mut sink, mut rx) = KinesisSink::with_channel("s", SinkMode::Changelog, None);
    let updates = vec![(
        row(obj(&[("id", Value::from("a"))]), obj(&[("v", Value::from(1u64))])),
        -1,
    )];
    sink.write(7, &updates).expect("written");
    sink.commit(Some(8)).expect("committed");
    assert_eq!(
        drain(&mut rx),
        vec![vec![(
            r#"{"id":"a"}"#.to_owned(),
            r#"{"time":7,"diff":-1,"key":{"id":"a"},"value":{"v":1}}"#.to_owned()
        )]]
    );
}

struct Upper;

impl Encode for Upper {
    fn encode(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(row.val.to_json_string().to_uppercase().as_bytes());
        Ok(())
    }

    fn partition_key(&self, row: &Row) -> Option<String> {
        row.val
            .get("uuid")
            .map(|u| u.to_json_string().trim_matches('"').to_owned())
    }
}

#[test]
fn append_uses_the_formats_encoding_and_partition_key() {
    let (mut sink, mut rx) = KinesisSink::with_channel("s", SinkMode::Append, Some(Arc::new(Upper)));
    let updates = vec![
        (row(Value::from("k"), obj(&[("uuid", Value::from("u-1"))])), 2),
        (row(Value::from("k"), obj(&[("x", Value::from("y"))])), 1),
    ];
    sink.write(1, &updates).expect("written");
    sink.commit(Some(2)).expect("committed");
    let sent = drain(&mut rx);
    assert_eq!(
        sent,
        vec![vec![
            ("u-1".to_owned(), r#"{"UUID":"U-1"}"#.to_owned()),
            ("u-1".to_owned(), r#"{"UUID":"U-1"}"#.to_owned()),
            (r#""k""#.to_owned(), r#"{"X":"Y"}"#.to_owned()),
        ]]
    );
}

#[test]
fn a_record_over_1_mib_fails_the_sink_naming_its_key() {
    let (mut sink, _rx) = KinesisSink::with_channel("s", SinkMode::Upsert, None);
    let big = Value::from("x".repeat(MAX_RECORD_BYTES));
    match sink.write(1, &[(row(Value::from("big-key"), big), 1)]) {
        Err(SinkError::Io(m)) => assert!(m.contains("big-key"), "{m}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn a_failure_of_the_task_fails_the_next_write() {
    let (mut sink, _rx) = KinesisSink::with_channel("s", SinkMode::Upsert, None);
    sink.shared
        .update(|p| p.failure = Some("refused: AccessDenied".to_owned()));
    match sink.write(1, &[]) {
        Err(SinkError::Io(m)) => assert_eq!(m, "refused: AccessDenied"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}
