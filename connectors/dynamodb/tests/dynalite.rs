//! The scan source against dynalite (a DynamoDB implementation on node, installed by
//! `scripts/services`), which sluice-testkit starts on a free 127.0.0.1 port and stops by its
//! PID on drop.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest, ScalarAttributeType,
    WriteRequest,
};
use sluice_connector_dynamodb::ScanSource;
use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError};
use sluice_runtime::spec::{AwsSpec, DynamodbScanSpec};
use sluice_runtime::value::Value;
use sluice_testkit::aws::Dynamo;

const ITEMS: u32 = 10_000;
const SEGMENTS: u32 = 8;
const PAGE: u32 = 100;

/// The 16-byte account UUID of item `i`, spread over the key space like random UUIDs.
fn uuid(i: u32) -> Vec<u8> {
    (u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
        .to_be_bytes()
        .to_vec()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    sluice_aws::runtime().block_on(f)
}

/// Creates the `Accounts` table (binary hash key `U`) and writes `ITEMS` items into it.
fn fill(client: &Client) {
    block_on(async {
        client
            .create_table()
            .table_name("Accounts")
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("U")
                    .attribute_type(ScalarAttributeType::B)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("U")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let batches: Vec<Vec<u32>> = (0..ITEMS).collect::<Vec<_>>().chunks(25).map(<[u32]>::to_vec).collect();
        // Eight writers at a time: quick, without queueing 400 requests at once.
        for group in batches.chunks(batches.len().div_ceil(8)) {
            let client = client.clone();
            let group = group.to_vec();
            tasks.spawn(async move {
                for batch in group {
                    write_batch(&client, &batch).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
}

async fn write_batch(client: &Client, ids: &[u32]) {
    let mut requests: Vec<WriteRequest> = ids
        .iter()
        .map(|&i| {
            let item: HashMap<String, AttributeValue> = [
                ("U", AttributeValue::B(Blob::new(uuid(i)))),
                ("P", AttributeValue::S(format!("+1555{i:07}"))),
                ("V", AttributeValue::N(i.to_string())),
                ("C", AttributeValue::Bool(i % 2 == 0)),
                (
                    "D",
                    AttributeValue::B(Blob::new(format!(r#"{{"n":{i}}}"#).into_bytes())),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect();
    for _ in 0..50 {
        let out = client
            .batch_write_item()
            .request_items("Accounts", requests.clone())
            .send()
            .await
            .unwrap();
        requests = out
            .unprocessed_items
            .and_then(|mut u| u.remove("Accounts"))
            .unwrap_or_default();
        if requests.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("items stayed unprocessed");
}

fn spec(table: &str, projection: Option<&str>) -> DynamodbScanSpec {
    DynamodbScanSpec {
        table: table.to_owned(),
        aws: AwsSpec::default(),
        segments: SEGMENTS,
        projection: projection.map(str::to_owned),
        page_size: Some(PAGE),
    }
}

/// Polls `reader` until it finishes or has handed out `limit` items, `max` at a time.
fn read(
    reader: &mut dyn PartitionReader,
    max: usize,
    limit: Option<usize>,
) -> Result<(Vec<RawRecord>, bool), SourceError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut all = Vec::new();
    loop {
        if limit.is_some_and(|l| all.len() >= l) {
            return Ok((all, false));
        }
        let max = limit.map_or(max, |l| max.min(l - all.len()));
        let mut out = Vec::new();
        let state = reader.poll(&mut out, max)?;
        all.extend(out);
        match state {
            ReadState::Finished => return Ok((all, true)),
            ReadState::More => {}
            ReadState::Idle | ReadState::Waiting => std::thread::sleep(Duration::from_millis(1)),
        }
        assert!(Instant::now() < deadline, "the segment did not finish in time");
    }
}

/// The `U` of a record, decoded as the `dynamodb-item` format decodes it.
fn record_uuid(record: &RawRecord) -> Vec<u8> {
    let item = sluice_formats::decode_item(record.payload.as_deref().unwrap()).unwrap();
    match item.get("U") {
        Some(Value::Bytes(b)) => b.to_vec(),
        other => panic!("no U in the item: {other:?}"),
    }
}

fn partition(n: u32) -> PartitionInfo {
    PartitionInfo {
        id: format!("segment-{n}"),
        parents: Vec::new(),
    }
}

#[test]
fn a_parallel_scan_reads_every_item_once_and_resumes_exactly() {
    let dynalite = Dynamo::start();
    // A client of its own, used on the connector's runtime as the source uses its client.
    let client = Client::new(&dynalite.sdk_config());
    fill(&client);

    // The whole table, segment by segment, 37 items per poll so polls end mid-page.
    let source = ScanSource::with_client(&spec("Accounts", None), "accounts", client.clone()).unwrap();
    let partitions = source.discover().unwrap();
    assert_eq!(partitions, (0..SEGMENTS).map(partition).collect::<Vec<_>>());
    let mut by_segment: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (n, p) in partitions.iter().enumerate() {
        let mut reader = source.open(p, &Position::Start).unwrap();
        let (records, finished) = read(reader.as_mut(), 37, None).unwrap();
        assert!(finished);
        assert_eq!(reader.position(), Position::End);
        assert_eq!(
            records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (0..records.len() as u64).collect::<Vec<_>>()
        );
        by_segment.insert(n as u32, records.iter().map(record_uuid).collect());
    }
    let all: Vec<&Vec<u8>> = by_segment.values().flatten().collect();
    let distinct: BTreeSet<&Vec<u8>> = all.iter().copied().collect();
    assert_eq!(all.len(), ITEMS as usize, "each item once");
    assert_eq!(distinct, (0..ITEMS).map(uuid).collect::<Vec<_>>().iter().collect());
    assert!(by_segment.values().all(|s| !s.is_empty()), "every segment holds items");
    let progress = source.progress();
    assert_eq!(
        (progress.segments_done, progress.segments_total, progress.items),
        (SEGMENTS, SEGMENTS, u64::from(ITEMS))
    );

    // One segment interrupted after its first page, then again in the middle of a page;
    // each time a new reader (of a new source, as after a restart) resumes from the position.
    let segment = by_segment.iter().max_by_key(|(_, s)| s.len()).map(|(n, _)| *n).unwrap();
    let expected = &by_segment[&segment];
    assert!(expected.len() > 2 * PAGE as usize, "the segment spans several pages");
    let mut got = Vec::new();
    let mut offsets = Vec::new();
    let mut position = Position::Start;
    for stop in [Some(PAGE as usize), Some(PAGE as usize / 2), None] {
        let source = ScanSource::with_client(&spec("Accounts", None), "accounts", client.clone()).unwrap();
        source.discover().unwrap();
        let mut reader = source.open(&partition(segment), &position).unwrap();
        let (records, finished) = read(reader.as_mut(), 30, stop).unwrap();
        assert_eq!(finished, stop.is_none());
        got.extend(records.iter().map(record_uuid));
        offsets.extend(records.iter().map(|r| r.offset));
        position = reader.position();
        if let Some(n) = stop {
            assert_eq!(records.len(), n);
            assert!(matches!(position, Position::ScanKey(_)), "{position}");
        }
    }
    assert_eq!(&got, expected, "nothing lost or repeated across two interruptions");
    assert_eq!(offsets, (0..expected.len() as u64).collect::<Vec<_>>());
    assert_eq!(position, Position::End);

    // A projection without the key: the key is fetched for positions but left out.
    let source = ScanSource::with_client(&spec("Accounts", Some("P, V")), "accounts", client.clone()).unwrap();
    source.discover().unwrap();
    let mut reader = source.open(&partition(0), &Position::Start).unwrap();
    let (records, _) = read(reader.as_mut(), 10, Some(10)).unwrap();
    let item = sluice_formats::decode_item(records[0].payload.as_deref().unwrap()).unwrap();
    let names: Vec<&str> = item.as_map().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(names, vec!["P", "V"]);
    assert!(matches!(reader.position(), Position::ScanKey(_)));

    // A resume key that is not this table's: DynamoDB refuses it, a configuration error.
    let bad = Position::ScanKey(Value::map([("X", Value::map([("S", Value::str("a"))]))]));
    let mut reader = source.open(&partition(0), &bad).unwrap();
    match read(reader.as_mut(), 10, None) {
        Err(SourceError::Config(m)) => assert!(m.contains("Accounts"), "{m}"),
        other => panic!(
            "expected a configuration error, got {:?}",
            other.map(|(r, f)| (r.len(), f))
        ),
    }

    // A missing table: a configuration error naming it.
    let source = ScanSource::with_client(&spec("Nope", None), "accounts", client).unwrap();
    match source.discover() {
        Err(SourceError::Config(m)) => assert!(m.contains("`Nope`"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
