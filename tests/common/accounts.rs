//! DynamoDB records of the Accounts table, as the cds dataflow reads them: scanned items and
//! Kinesis Data Streams for DynamoDB change records. Account `n` has the uuid
//! `000000nn-0000-4000-8000-0000000000nn`.

use base64::Engine as _;

/// Account `n`'s 16-byte uuid.
pub fn uuid(n: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[6] = 0x40;
    b[8] = 0x80;
    b[12..].copy_from_slice(&n.to_be_bytes());
    b
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Account `n`'s uuid in base64, as a DynamoDB `B` attribute holds it.
pub fn account(n: u32) -> String {
    b64(&uuid(n))
}

/// The PNI or UAK bytes of key set `key` (`0x50` for PNIs, `0xA0` for UAKs).
pub fn key_bytes(tag: u8, key: u8) -> Vec<u8> {
    [tag, key].repeat(8)
}

/// An Accounts item: uuid, version, number, `C` (absent when `None`) and, with `keys`,
/// a PNI and UAK of key set `n`.
pub fn item(n: u32, version: u64, number: &str, discoverable: Option<bool>, keys: Option<u8>) -> serde_json::Value {
    let mut item = serde_json::json!({
        "U": {"B": account(n)},
        "V": {"N": version.to_string()},
        "P": {"S": number},
        "D": {"B": b64(format!("{{\"v\":{version}}}").as_bytes())},
    });
    if let Some(c) = discoverable {
        item["C"] = serde_json::json!({"BOOL": c});
    }
    if let Some(key) = keys {
        item["PNI"] = serde_json::json!({"B": b64(&key_bytes(0x50, key))});
        item["UAK"] = serde_json::json!({"B": b64(&key_bytes(0xA0, key))});
    }
    item
}

/// A change record of the Accounts table as Kinesis Data Streams for DynamoDB delivers it.
pub fn change(
    event: &str,
    n: u32,
    time_ms: u64,
    sequence: u64,
    old: Option<serde_json::Value>,
    new: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut ddb = serde_json::json!({
        "ApproximateCreationDateTime": time_ms,
        "Keys": {"U": {"B": account(n)}},
        "SequenceNumber": (49_650_000_000_000_000_000u128 + u128::from(sequence)).to_string(),
        "SizeBytes": 300,
    });
    if let Some(old) = old {
        ddb["OldImage"] = old;
    }
    if let Some(new) = new {
        ddb["NewImage"] = new;
    }
    serde_json::json!({
        "eventID": format!("{sequence:032x}"),
        "eventName": event,
        "dynamodb": ddb,
        "tableName": "Accounts",
        "recordFormat": "application/json",
        "eventSource": "aws:dynamodb",
    })
}
