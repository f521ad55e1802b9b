//! Decoding throughput on one core: `cargo bench -p sluice-formats [-- NAME-FILTER]`
//! (`BENCH_SCALE=0.1` in the environment runs a tenth of the iterations).
//!
//! Records are shaped like the Accounts table's changes (about 1.2 KB: two images of seven
//! attributes with a 200-byte `D` blob each, only `V` and `D` changed). Each case runs over
//! 4,000 distinct records, cycled so the set stays in cache as a stream's recent input would,
//! and prints records/s and MB/s. Runs in about six seconds.

use std::hint::black_box;
use std::time::Instant;

use sluice_formats::{StreamRecordRef, decode_item, decode_stream_record};
use sluice_runtime::value::base64_encode;

/// Distinct records generated.
const DISTINCT: usize = 4_000;

/// A deterministic generator (xorshift), so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn base64(&mut self, len: usize) -> String {
        let bytes: Vec<u8> = (0..len).map(|_| self.next().to_le_bytes()[0]).collect();
        base64_encode(&bytes)
    }
}

/// An item; `keys` is the uuid, PNI and UAK (base64), the same in both images of a change.
fn image(rng: &mut Rng, keys: &[String; 3], p: &str, v: usize) -> String {
    let [u, pni, uak] = keys;
    format!(
        r#"{{"U":{{"B":"{u}"}},"P":{{"S":"{p}"}},"PNI":{{"B":"{pni}"}},"UAK":{{"B":"{uak}"}},"V":{{"N":"{v}"}},"D":{{"B":"{}"}},"C":{{"BOOL":true}}}}"#,
        rng.base64(200),
    )
}

fn record(rng: &mut Rng, i: usize) -> String {
    let keys = [rng.base64(16), rng.base64(16), rng.base64(16)];
    let p = format!("+1{:010}", rng.next() % 10_000_000_000);
    let old = image(rng, &keys, &p, i);
    let new = image(rng, &keys, &p, i + 1);
    let u = &keys[0];
    format!(
        r#"{{"eventID":"{i:032x}","eventName":"MODIFY","dynamodb":{{"ApproximateCreationDateTime":1700000000001,"Keys":{{"U":{{"B":"{u}"}}}},"NewImage":{new},"OldImage":{old},"SequenceNumber":"1000000000000000{i:05}","SizeBytes":400,"ApproximateCreationDateTimePrecision":"MILLISECOND"}},"tableName":"Accounts","recordFormat":"application/json","userIdentity":null,"eventSource":"aws:dynamodb","awsRegion":"us-east-1"}}"#
    )
}

/// Runs `one` over `iterations` records cycling through `inputs`; prints the rates.
fn report(filter: &str, name: &str, inputs: &[String], iterations: usize, one: &dyn Fn(&[u8]) -> bool) {
    if !name.contains(filter) {
        return;
    }
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let iterations = ((iterations as f64 * scale) as usize).max(1);
    let started = Instant::now();
    let mut kept = 0;
    let mut bytes = 0;
    for record in inputs.iter().cycle().take(iterations) {
        kept += usize::from(one(black_box(record.as_bytes())));
        bytes += record.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<42} {:>10.0} records/s {:>7.0} MB/s  ({iterations} records of {} B avg, {kept} kept)",
        iterations as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes / iterations,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument selects cases by name.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let records: Vec<String> = (0..DISTINCT).map(|i| record(&mut rng, i)).collect();
    let items: Vec<String> = (0..DISTINCT)
        .map(|i| {
            let keys = [rng.base64(16), rng.base64(16), rng.base64(16)];
            image(&mut rng, &keys, "+15550000000", i)
        })
        .collect();
    report(
        &filter,
        "StreamRecordRef::parse + 5 raw compares",
        &records,
        1_000_000,
        &|bytes| {
            let Ok(record) = StreamRecordRef::parse(bytes) else {
                return false;
            };
            let (Some(old), Some(new)) = (record.old_image(), record.new_image()) else {
                return false;
            };
            ["U", "P", "C", "PNI", "UAK"].iter().all(|a| old.raw(a) == new.raw(a))
        },
    );
    report(&filter, "StreamRecordRef::parse alone", &records, 1_000_000, &|bytes| {
        StreamRecordRef::parse(bytes).is_ok()
    });
    report(&filter, "decode_stream_record", &records, 200_000, &|bytes| {
        black_box(decode_stream_record(bytes)).is_ok()
    });
    report(&filter, "decode_item", &items, 400_000, &|bytes| {
        black_box(decode_item(bytes)).is_ok()
    });
}
