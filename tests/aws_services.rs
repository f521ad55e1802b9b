//! The Kinesis and DynamoDB test services start and do what the tests rely on (see
//! docs/aws-test-services.md): streams, records, resharding, tables and parallel scans.

use sluice_testkit::aws as aws_support;

use std::collections::BTreeSet;

use aws_support::{Dynamo, Kinesis};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;

#[test]
fn kinesis_stream_records_and_resharding() {
    let kinesis = Kinesis::start();
    assert!(kinesis.endpoint().starts_with("http://127.0.0.1:"));
    kinesis.create_stream("smoke", 2);
    let shards = kinesis.list_shards("smoke");
    assert_eq!(shards.len(), 2);
    assert!(shards.iter().all(|s| s.is_open() && s.parent.is_none()));

    let records: Vec<(String, String)> = (0..10).map(|i| (format!("key-{i}"), format!("value-{i}"))).collect();
    let puts = kinesis.put("smoke", &records);
    assert_eq!(puts.len(), 10);

    let read = kinesis.read_all("smoke");
    let mut got: Vec<(String, String)> = read
        .iter()
        .map(|r| {
            (
                r.partition_key.clone(),
                String::from_utf8(r.data.clone()).expect("utf-8"),
            )
        })
        .collect();
    got.sort();
    let mut want = records.clone();
    want.sort();
    assert_eq!(got, want);
    // Each record comes back from the shard and with the sequence number PutRecords reported.
    for r in &read {
        let i: usize = r.partition_key["key-".len()..].parse().expect("an index");
        assert_eq!(
            (&r.shard_id, &r.sequence_number),
            (&puts[i].shard_id, &puts[i].sequence_number)
        );
    }

    let parent = shards[0].id.clone();
    let (low, high) = kinesis.split_shard("smoke", &parent);
    assert_eq!(low.parent.as_deref(), Some(parent.as_str()));
    assert_eq!(high.parent.as_deref(), Some(parent.as_str()));
    assert_eq!(low.hash_keys.0, shards[0].hash_keys.0);
    assert_eq!(low.hash_keys.1 + 1, high.hash_keys.0);
    assert_eq!(high.hash_keys.1, shards[0].hash_keys.1);
    let after = kinesis.list_shards("smoke");
    assert_eq!(after.len(), 4);
    assert!(!after.iter().find(|s| s.id == parent).expect("the parent").is_open());

    // The children merge back into one shard naming both as parents.
    let merged = kinesis.merge_shards("smoke", &low.id, &high.id);
    assert_eq!(merged.parent.as_deref(), Some(low.id.as_str()));
    assert_eq!(merged.adjacent_parent.as_deref(), Some(high.id.as_str()));
    assert_eq!(merged.hash_keys, shards[0].hash_keys);

    // The parent's records stay readable after it closed.
    let parent_records = kinesis.read_shard("smoke", &parent);
    assert_eq!(
        parent_records.len(),
        puts.iter().filter(|p| p.shard_id == parent).count()
    );
}

#[test]
fn dynamodb_table_writes_and_parallel_scan() {
    let dynamo = Dynamo::start();
    assert!(dynamo.endpoint().starts_with("http://127.0.0.1:"));
    dynamo.create_table("accounts", "U", "B");
    let items: Vec<_> = (0u32..100)
        .map(|i| {
            json!({
                "U": { "B": BASE64.encode(i.to_be_bytes()) },
                "V": { "N": i.to_string() },
                "name": { "S": format!("account {i}") },
            })
        })
        .collect();
    dynamo.put_items("accounts", &items);

    let mut seen = BTreeSet::new();
    let mut total = 0;
    for segment in 0..4 {
        let part = dynamo.scan_segment("accounts", segment, 4);
        total += part.len();
        for item in part {
            assert!(seen.insert(item["U"]["B"].as_str().expect("a binary key").to_string()));
            let i: u32 = item["V"]["N"].as_str().expect("a number").parse().expect("an integer");
            assert_eq!(item, items[i as usize]);
        }
    }
    assert_eq!(total, 100);
    assert_eq!(seen.len(), 100);
    assert_eq!(dynamo.scan("accounts").len(), 100);
}
