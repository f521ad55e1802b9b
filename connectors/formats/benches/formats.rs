//! Decoding throughput on one core: `cargo bench -p sluice-formats`.
//!
//! Records are the shape `../shared/bench/gen.py cds` writes (about 1.1 KB: two images with a
//! 300-byte `D` blob each, only `V` and `D` changed); each case runs over 200,000 of them and prints records/s and MB/s.

use std::hint::black_box;
use std::time::Instant;

use sluice_formats::{StreamRecordRef, decode_item, decode_stream_record};
use sluice_runtime::value::base64_encode;

/// A deterministic record generator (xorshift), so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn base64(&mut self, len: usize) -> String {
        let bytes: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        base64_encode(&bytes)
    }
}

/// An item; `keys` is the uuid, PNI and UAK (base64), the same in both images of a change.
fn image(rng: &mut Rng, keys: &[String; 3], p: &str, v: u64) -> String {
    let [u, pni, uak] = keys;
    format!(
        r#"{{"U":{{"B":"{u}"}},"P":{{"S":"{p}"}},"PNI":{{"B":"{pni}"}},"UAK":{{"B":"{uak}"}},"V":{{"N":"{v}"}},"D":{{"B":"{}"}},"C":{{"BOOL":true}}}}"#,
        rng.base64(300),
    )
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let n = 200_000;
    let records: Vec<String> = (0..n)
        .map(|i| {
            let keys = [rng.base64(16), rng.base64(16), rng.base64(16)];
            let u = keys[0].clone();
            let p = format!("+1{:010}", rng.next() % 10_000_000_000);
            let old = image(&mut rng, &keys, &p, i);
            let new = image(&mut rng, &keys, &p, i + 1);
            format!(
                r#"{{"eventID":"{i:032x}","eventName":"MODIFY","dynamodb":{{"ApproximateCreationDateTime":1700000000001,"Keys":{{"U":{{"B":"{u}"}}}},"SequenceNumber":"1000000000000000{i:05}","SizeBytes":400,"NewImage":{new},"OldImage":{old}}},"tableName":"Accounts","recordFormat":"application/json","eventSource":"aws:dynamodb"}}"#
            )
        })
        .collect();
    let items: Vec<String> = (0..n)
        .map(|i| {
            let keys = [rng.base64(16), rng.base64(16), rng.base64(16)];
            image(&mut rng, &keys, "+15550000000", i)
        })
        .collect();
    let bytes: usize = records.iter().map(String::len).sum();
    let item_bytes: usize = items.iter().map(String::len).sum();
    let report = |name: &str, bytes: usize, run: &dyn Fn() -> usize| {
        let started = Instant::now();
        let kept = run();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:<40} {:>10.0} records/s {:>8.1} MB/s (kept {kept})",
            n as f64 / secs,
            bytes as f64 / secs / 1e6
        );
    };
    report("StreamRecordRef::parse + 5 raw compares", bytes, &|| {
        records
            .iter()
            .filter(|r| {
                let Ok(record) = StreamRecordRef::parse(r.as_bytes()) else {
                    return false;
                };
                let (Some(old), Some(new)) = (record.old_image(), record.new_image()) else {
                    return false;
                };
                ["U", "P", "C", "PNI", "UAK"].iter().all(|a| old.raw(a) == new.raw(a))
            })
            .count()
    });
    report("decode_stream_record", bytes, &|| {
        records
            .iter()
            .filter(|r| black_box(decode_stream_record(r.as_bytes())).is_ok())
            .count()
    });
    report("decode_item", item_bytes, &|| {
        items
            .iter()
            .filter(|r| black_box(decode_item(r.as_bytes())).is_ok())
            .count()
    });
}
