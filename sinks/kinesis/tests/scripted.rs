//! The Kinesis sink against a scripted service: partial failures and refused records.

#[path = "../../../connectors/kinesis/tests/fake/mod.rs"]
mod fake;

use fake::{Fake, error, ok};
use serde_json::json;
use sluice_runtime::record::{Diff, Row};
use sluice_runtime::sink::{Sink, SinkError};
use sluice_runtime::spec::{KinesisSinkSpec, SinkMode};
use sluice_runtime::value::Value;
use sluice_sink_kinesis::KinesisSink;

fn sink(fake: &Fake) -> KinesisSink {
    let spec = KinesisSinkSpec {
        stream: "out".to_owned(),
        aws: Default::default(),
    };
    KinesisSink::with_sdk_config(&spec, SinkMode::Changelog, None, &fake.sdk()).expect("a sink")
}

fn update(key: &str, v: u64) -> (Row, Diff) {
    (Row::derived(Value::from(key), Value::from(v)), 1)
}

/// The partition keys and `value`s of each `PutRecords` request.
fn puts(fake: &Fake) -> Vec<Vec<(String, u64)>> {
    fake.requests()
        .iter()
        .filter(|(op, _)| op == "PutRecords")
        .map(|(_, body)| {
            body["Records"]
                .as_array()
                .map(|records| {
                    records
                        .iter()
                        .map(|r| {
                            let key = r["PartitionKey"].as_str().unwrap_or_default().to_owned();
                            (key, value_of(r["Data"].as_str().unwrap_or_default()))
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// The `value` of a changelog record's base64 data (numbers only, so a tiny decoder does).
fn value_of(b64: &str) -> u64 {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut bytes = Vec::new();
    for c in b64.bytes().filter(|c| *c != b'=') {
        let Some(d) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        bits = (bits << 6) | d as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            bytes.push((bits >> n) as u8);
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON data");
    v["value"].as_u64().expect("a number")
}

#[test]
fn failed_entries_are_retried_with_the_later_records_of_their_keys() {
    let fake = Fake::start(vec![
        ok(json!({"FailedRecordCount": 1, "Records": [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard"},
            {"SequenceNumber": "2", "ShardId": "shardId-000000000000"},
            {"SequenceNumber": "3", "ShardId": "shardId-000000000000"},
            {"SequenceNumber": "4", "ShardId": "shardId-000000000001"},
        ]})),
        ok(json!({"FailedRecordCount": 0, "Records": [
            {"SequenceNumber": "5", "ShardId": "shardId-000000000000"},
            {"SequenceNumber": "6", "ShardId": "shardId-000000000000"},
        ]})),
    ]);
    let mut s = sink(&fake);
    s.write(1, &[update("a", 1), update("b", 2), update("a", 3), update("c", 4)])
        .expect("write");
    s.commit(None).expect("everything taken in the end");
    assert_eq!(s.durable(), None);
    let a = "\"a\"".to_owned();
    assert_eq!(
        puts(&fake),
        vec![
            vec![
                (a.clone(), 1),
                ("\"b\"".to_owned(), 2),
                (a.clone(), 3),
                ("\"c\"".to_owned(), 4)
            ],
            // `a`'s second record was taken, but goes again after its first.
            vec![(a.clone(), 1), (a, 3)],
        ]
    );
}

#[test]
fn a_record_refused_for_good_fails_the_sink_naming_its_key() {
    let fake = Fake::start(vec![ok(json!({"FailedRecordCount": 1, "Records": [
        {"ErrorCode": "KMSAccessDeniedException", "ErrorMessage": "no access to the key"},
    ]}))]);
    let mut s = sink(&fake);
    s.write(1, &[update("secret", 1)]).expect("write");
    match s.commit(None) {
        Err(SinkError::Io(m)) => assert!(m.contains("\"secret\"") && m.contains("KMSAccessDenied"), "{m}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn a_throttled_request_is_sent_again() {
    let fake = Fake::start(vec![
        error("ProvisionedThroughputExceededException", "slow down"),
        ok(json!({"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "shardId-000000000000"}]})),
    ]);
    let mut s = sink(&fake);
    s.write(1, &[update("k", 7)]).expect("write");
    s.commit(Some(2)).expect("commit");
    s.commit(None).expect("final commit");
    assert_eq!(puts(&fake).len(), 2);
    assert_eq!(fake.left(), 0);
}
