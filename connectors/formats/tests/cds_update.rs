//! The `cds-update` format and the UUID text helpers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_formats::{decode_cds_update, encode_cds_update, parse_uuid_text, uuid_text};
use sluice_runtime::Value;

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(Arc::from(b))
}

const UUID: [u8; 16] = [0, 0, 0, 11, 0, 0, 64, 0, 128, 0, 0, 0, 0, 0, 0, 11];
const PNI: [u8; 16] = [
    0x50, 0x0b, 0x50, 0x0b, 0x50, 0x0b, 0x50, 0x0b, 0x50, 0x0b, 0x50, 0x0b, 0x50, 0x0b, 0x50, 0x0b,
];

fn update(e164: &str, discoverable: bool, pni: Option<&[u8]>, uak: Option<&[u8]>) -> Value {
    Value::map([
        ("e164", Value::str(e164)),
        ("uuid", bytes(&UUID)),
        ("canonicallyDiscoverable", Value::Bool(discoverable)),
        ("pni", pni.map_or(Value::Null, bytes)),
        ("uak", uak.map_or(Value::Null, bytes)),
    ])
}

fn encode_text(v: &Value) -> Result<(String, String), String> {
    encode_cds_update(v)
        .map(|(key, out)| (key, String::from_utf8(out).unwrap()))
        .map_err(|e| e.to_string())
}

#[test]
fn updates_encode_exactly_as_the_original_function_wrote_them() {
    let (key, text) = encode_text(&update("+15550000011", true, Some(&PNI), None)).unwrap();
    assert_eq!(key, "0000000b-0000-4000-8000-00000000000b");
    let alone = sluice_formats::cds_update_partition_key(&update("+15550000011", true, Some(&PNI), None));
    assert_eq!(
        alone.ok().as_deref(),
        Some(key.as_str()),
        "the key alone is the encoder's key"
    );
    assert_eq!(
        text,
        r#"{"e164":"+15550000011","uuid":"AAAACwAAQACAAAAAAAAACw==","canonicallyDiscoverable":true,"pni":"UAtQC1ALUAtQC1ALUAtQCw==","uak":null}"#
    );
    let (_, text) = encode_text(&update("+15550000011", false, None, Some(&[1, 2]))).unwrap();
    assert_eq!(
        text,
        r#"{"e164":"+15550000011","uuid":"AAAACwAAQACAAAAAAAAACw==","canonicallyDiscoverable":false,"pni":null,"uak":"AQI="}"#
    );
    // The e164 is escaped as JSON, whatever it holds.
    let (_, text) = encode_text(&update("+1\"\\\n\u{1}é", false, None, None)).unwrap();
    assert!(text.starts_with(r#"{"e164":"+1\"\\\n\u0001é","uuid""#), "{text}");
    // Extra fields of the value do not leak into the record.
    let mut extra = update("+1", true, None, None).as_map().unwrap().clone();
    extra.insert(Arc::from("other"), Value::Int(1));
    let (_, text) = encode_text(&Value::Map(Arc::new(extra))).unwrap();
    assert!(!text.contains("other"), "{text}");
}

#[test]
fn updates_round_trip() {
    let mut rng = SmallRng::seed_from_u64(3);
    let optional = |rng: &mut SmallRng| {
        rng.random_bool(0.5)
            .then(|| (0..rng.random_range(0..33)).map(|_| rng.random()).collect::<Vec<u8>>())
    };
    for _ in 0..500 {
        let e164 = format!("+{}", rng.random_range(1..999_999_999_999_999u64));
        let (pni, uak) = (optional(&mut rng), optional(&mut rng));
        let v = update(&e164, rng.random_bool(0.5), pni.as_deref(), uak.as_deref());
        let (key, out) = encode_cds_update(&v).unwrap();
        assert_eq!(key, uuid_text(&UUID));
        assert_eq!(decode_cds_update(&out).ok(), Some(v));
    }
    let odd = update("+1\"\\\n\u{1}é😀", true, Some(&[]), None);
    assert_eq!(decode_cds_update(&encode_cds_update(&odd).unwrap().1).ok(), Some(odd));
}

#[test]
fn decoding_accepts_any_order_unknown_keys_and_absent_optional_fields() {
    let text = br#" {"uak":null,"extra":{"x":[1]},"uuid":"AAAACwAAQACAAAAAAAAACw==","e164":"+15550000011"} "#;
    assert_eq!(
        decode_cds_update(text).ok(),
        Some(update("+15550000011", false, None, None))
    );
    let text = br#"{"e164":"+1","uuid":"AAAACwAAQACAAAAAAAAACw==","pni":"UAtQC1ALUAtQC1ALUAtQCw==","canonicallyDiscoverable":true}"#;
    assert_eq!(decode_cds_update(text).ok(), Some(update("+1", true, Some(&PNI), None)));
}

#[test]
fn bad_updates_are_errors() {
    let encode = |v: Value| encode_text(&v).unwrap_err();
    let with = |field: &str, value: Value| {
        let mut map = update("+1", true, None, None).as_map().unwrap().clone();
        map.insert(Arc::from(field), value);
        Value::Map(Arc::new(map))
    };
    let without = |field: &str| {
        let mut map = update("+1", true, None, None).as_map().unwrap().clone();
        map.remove(field);
        Value::Map(Arc::new(map))
    };
    assert_eq!(encode(Value::Null), "cds-update: an update must be a map, not null");
    assert_eq!(encode(with("e164", Value::Int(1))), "cds-update: e164 must be a string");
    assert_eq!(encode(without("e164")), "cds-update: e164 is missing");
    assert_eq!(
        encode(with("uuid", bytes(&[1; 15]))),
        "cds-update: uuid must be 16 bytes, not 15"
    );
    assert_eq!(
        encode(with("uuid", bytes(&[1; 17]))),
        "cds-update: uuid must be 16 bytes, not 17"
    );
    assert_eq!(
        encode(with("uuid", Value::str("0000000b-0000-4000-8000-00000000000b"))),
        "cds-update: uuid must be bytes"
    );
    assert_eq!(encode(without("uuid")), "cds-update: uuid is missing");
    assert_eq!(
        encode(with("canonicallyDiscoverable", Value::Null)),
        "cds-update: canonicallyDiscoverable must be a boolean"
    );
    assert_eq!(
        encode(without("canonicallyDiscoverable")),
        "cds-update: canonicallyDiscoverable is missing"
    );
    assert_eq!(
        encode(with("pni", Value::str("x"))),
        "cds-update: pni must be bytes or null"
    );
    assert_eq!(encode(without("uak")), "cds-update: uak is missing");

    let decode = |s: &str| decode_cds_update(s.as_bytes()).unwrap_err().to_string();
    assert_eq!(
        decode(r#"{"uuid":"AAAACwAAQACAAAAAAAAACw=="}"#),
        "cds-update: e164 is missing"
    );
    assert_eq!(
        decode(r#"{"e164":1,"uuid":"AAAACwAAQACAAAAAAAAACw=="}"#),
        "cds-update: e164 must be a string"
    );
    assert_eq!(decode(r#"{"e164":"+1"}"#), "cds-update: uuid is missing");
    assert_eq!(
        decode(r#"{"e164":"+1","uuid":null}"#),
        "cds-update: uuid must be a base64 string"
    );
    assert_eq!(
        decode(r#"{"e164":"+1","uuid":"AAE="}"#),
        "cds-update: uuid must be 16 bytes, not 2"
    );
    assert!(decode(r#"{"e164":"+1","uuid":"!!"}"#).starts_with("cds-update: uuid is not base64"));
    assert!(
        decode(r#"{"e164":"+1","uuid":"AAAACwAAQACAAAAAAAAACw==","pni":"AA"}"#)
            .starts_with("cds-update: pni is not base64")
    );
    assert_eq!(
        decode(r#"{"e164":"+1","uuid":"AAAACwAAQACAAAAAAAAACw==","uak":7}"#),
        "cds-update: uak must be a base64 string"
    );
    assert_eq!(
        decode(r#"{"e164":"+1","uuid":"AAAACwAAQACAAAAAAAAACw==","canonicallyDiscoverable":"yes"}"#),
        "cds-update: canonicallyDiscoverable must be a boolean"
    );
    assert_eq!(decode("[1]"), "cds-update: an update must be a JSON object");
    assert!(decode("nope").starts_with("cds-update: not JSON"));
    assert!(decode(r#"{"e164":"+1","uuid":"AAAACwAAQACAAAAAAAAACw=="} x"#).starts_with("cds-update: not JSON"));
    assert_eq!(
        decode_cds_update(b"{\"e164\":\"\xff\"}").unwrap_err().to_string(),
        "invalid UTF-8 at byte 9"
    );
}

#[test]
fn uuid_text_is_canonical_lowercase_and_parses_back() {
    let counting: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(uuid_text(&counting), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    assert_eq!(uuid_text(&[0xff; 16]), "ffffffff-ffff-ffff-ffff-ffffffffffff");
    assert_eq!(parse_uuid_text("00010203-0405-0607-0809-0a0b0c0d0e0f"), Some(counting));
    assert_eq!(
        parse_uuid_text("FFFFFFFF-FFFF-FFFF-ffff-FfFfFfFfFfFf"),
        Some([0xff; 16])
    );
    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..200 {
        let uuid: [u8; 16] = rng.random();
        assert_eq!(parse_uuid_text(&uuid_text(&uuid)), Some(uuid));
        assert_eq!(parse_uuid_text(&uuid_text(&uuid).to_uppercase()), Some(uuid));
    }
    for bad in [
        "",
        "00010203040506070809 0a0b0c0d0e0f",
        "000102030405060708090a0b0c0d0e0f",
        "00010203-0405-0607-0809-0a0b0c0d0e0",
        "00010203-0405-0607-0809-0a0b0c0d0e0f0",
        "0001020-30405-0607-0809-0a0b0c0d0e0f",
        "00010203-0405-0607-0809-0a0b0c0d0e0g",
        "00010203-0405-0607-0809-0a0b0c0d0e-f",
        "+0010203-0405-0607-0809-0a0b0c0d0e0f",
        "{0010203-0405-0607-0809-0a0b0c0d0e0f}",
        "0001020é-0405-0607-0809-0a0b0c0d0e0f",
    ] {
        assert_eq!(parse_uuid_text(bad), None, "{bad}");
    }
}
