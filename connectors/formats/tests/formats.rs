//! The formats against hand-written records and seeded random items.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_formats::{
    FormatError, StreamRecordRef, decode_cds_update, decode_item, decode_stream_record, encode_cds_update,
};
use sluice_runtime::Value;
use sluice_runtime::value::base64_encode;

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(Arc::from(b))
}

fn item(text: &str) -> Result<Value, String> {
    decode_item(text.as_bytes()).map_err(|e| e.to_string())
}

#[test]
fn every_attribute_type_decodes() {
    let text = r#"{"s":{"S":"a\"b\\c\u00e9\ud83d\ude00"},"n":{"N":"-12"},"big":{"N":"18446744073709551615"},
        "f":{"N":"1.5e3"},"b":{"B":"AAEC"},"t":{"BOOL":true},"z":{"NULL":true},
        "m":{"M":{"k\u0041":{"L":[{"N":"1"},{"S":"x"}]}}},"ss":{"SS":["b","a"]},"ns":{"NS":["2","1.5"]},
        "bs":{"BS":["AA==","AQ=="]},"long":{"N":"12345678901234567890123456789012345678"}}"#;
    let v = item(text).unwrap();
    assert_eq!(v.get("s"), Some(&Value::str("a\"b\\c\u{e9}\u{1f600}")));
    assert_eq!(v.get("n"), Some(&Value::Int(-12)));
    assert_eq!(v.get("big"), Some(&Value::UInt(u64::MAX)));
    assert_eq!(v.get("f"), Some(&Value::from(1500.0)));
    assert_eq!(v.get("b"), Some(&bytes(&[0, 1, 2])));
    assert_eq!(v.get("t"), Some(&Value::Bool(true)));
    assert_eq!(v.get("z"), Some(&Value::Null));
    assert_eq!(
        v.get_path(&["m", "kA"]),
        Some(&Value::list([Value::Int(1), Value::str("x")])),
        "map keys are unescaped"
    );
    assert_eq!(v.get("ss"), Some(&Value::list([Value::str("b"), Value::str("a")])));
    assert_eq!(v.get("ns"), Some(&Value::list([Value::Int(2), Value::from(1.5)])));
    assert_eq!(v.get("bs"), Some(&Value::list([bytes(&[0]), bytes(&[1])])));
    assert_eq!(v.get("long"), Some(&Value::from(1.2345678901234568e37)));
}

#[test]
fn bad_attributes_name_the_attribute_and_the_problem() {
    let cases = [
        (r#"{"V":{"N":"abc"}}"#, "attribute V: N value \"abc\" is not a number"),
        (r#"{"V":{"N":"inf"}}"#, "attribute V: N value \"inf\" is not a number"),
        (r#"{"V":{"N":""}}"#, "attribute V: N value \"\" is not a number"),
        (r#"{"U":{"B":"!!"}}"#, "attribute U: B value is not base64"),
        (r#"{"X":{"Q":"1"}}"#, "attribute X: unknown type tag \"Q\""),
        (
            r#"{"X":{"S":"a","N":"1"}}"#,
            "attribute X: a typed value has exactly one type tag",
        ),
        (
            r#"{"X":{}}"#,
            "attribute X: a typed value has exactly one type tag, got none",
        ),
        (r#"{"X":"plain"}"#, "attribute X: expected a typed value"),
        (r#"{"X":{"S":1}}"#, "attribute X: expected a string"),
        (r#"{"X":{"BOOL":"yes"}}"#, "attribute X: BOOL must be true or false"),
        (
            r#"{"M":{"M":{"a":{"L":[{"S":"x"},{"N":"y"}]}}}}"#,
            "attribute M.a[1]: N value \"y\" is not a number",
        ),
        (r#"{"X":{"S":"\q"}}"#, "invalid string escape: an unknown escape"),
        (
            r#"{"X":{"S":"\ud800"}}"#,
            "invalid string escape: a high surrogate must be followed by a low one",
        ),
        (r#"[1]"#, "an item must be an object"),
        (
            r#"{"X":{"S":"a"}} x"#,
            "invalid JSON at byte 16: expected the end of the record",
        ),
    ];
    for (text, reason) in cases {
        let err = item(text).err().unwrap_or_default();
        assert!(err.starts_with(reason), "{text}: {err:?} should start with {reason:?}");
    }
}

#[test]
fn an_item_may_be_wrapped_and_an_attribute_may_be_called_item() {
    let wrapped = item(r#"{"Item":{"U":{"S":"u"}}}"#).unwrap();
    assert_eq!(wrapped, Value::map([("U", Value::str("u"))]));
    let attribute = item(r#"{"Item":{"M":{"a":{"S":"x"}}}}"#).unwrap();
    assert_eq!(attribute, Value::map([("Item", Value::map([("a", Value::str("x"))]))]));
    let attribute = item(r#"{"Item":{"S":"x"}}"#).unwrap();
    assert_eq!(attribute, Value::map([("Item", Value::str("x"))]));
}

const MODIFY: &str = r#"{"eventID":"e1","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000001000,
 "Keys":{"U":{"B":"AAE="}},"SequenceNumber":"4965","SizeBytes":300,
 "OldImage":{"U":{"B":"AAE="},"V":{"N":"1"},"P":{"S":"+1555"}},
 "NewImage":{"U":{"B":"AAE="},"V":{"N":"2"},"P" : { "S" : "+1555" }}},
 "tableName":"Accounts","recordFormat":"application/json","userIdentity":null,
 "extra":{"nested":["a\"]}",{"b":[1,2.5e-3,true,false,null]}]}}"#;

#[test]
fn a_change_record_decodes_with_its_images_and_time() {
    let v = decode_stream_record(MODIFY.as_bytes()).unwrap();
    let expected = Value::map([
        ("eventName", Value::str("MODIFY")),
        ("eventID", Value::str("e1")),
        ("tableName", Value::str("Accounts")),
        ("keys", Value::map([("U", bytes(&[0, 1]))])),
        (
            "old",
            Value::map([("U", bytes(&[0, 1])), ("V", Value::Int(1)), ("P", Value::str("+1555"))]),
        ),
        (
            "new",
            Value::map([("U", bytes(&[0, 1])), ("V", Value::Int(2)), ("P", Value::str("+1555"))]),
        ),
        ("sequenceNumber", Value::str("4965")),
        ("approximateCreationTime", Value::Int(1_700_000_001_000)),
    ]);
    assert_eq!(v, expected);
    let record = StreamRecordRef::parse(MODIFY.as_bytes()).unwrap();
    assert_eq!(record.event_name(), "MODIFY");
    let (old, new) = (record.old_image().unwrap(), record.new_image().unwrap());
    assert_eq!(old.raw("U"), Some(r#"{"B":"AAE="}"#));
    assert_eq!(old.raw("U"), new.raw("U"));
    assert_ne!(old.raw("V"), new.raw("V"));
    assert_eq!(new.raw("P"), Some(r#"{ "S" : "+1555" }"#), "raw is the text as written");
    assert_ne!(
        old.raw("P"),
        new.raw("P"),
        "so different spacing is a different raw text"
    );
    assert_eq!(new.get("P").unwrap(), Some(Value::str("+1555")));
    assert_eq!(new.get("Q").unwrap(), None);
    let projected = record.to_value_projected(&["P"]).unwrap();
    assert_eq!(projected.get("new"), Some(&Value::map([("P", Value::str("+1555"))])));
    assert_eq!(projected.get("keys"), expected.get("keys"), "keys are not projected");
    assert_eq!(projected.get("eventID"), Some(&Value::str("e1")));
}

fn record(event: &str, dynamodb: &str) -> String {
    format!(r#"{{"eventName":"{event}","dynamodb":{{{dynamodb}}}}}"#)
}

#[test]
fn inserts_removes_and_times_in_every_unit() {
    let insert = decode_stream_record(record("INSERT", r#""NewImage":{"a":{"S":"x"}}"#).as_bytes()).unwrap();
    assert_eq!(insert.get("old"), Some(&Value::Null));
    assert_eq!(insert.get("approximateCreationTime"), Some(&Value::Null));
    assert_eq!(insert.get("eventID"), Some(&Value::Null));
    let remove = decode_stream_record(record("REMOVE", r#""OldImage":{"a":{"S":"x"}}"#).as_bytes()).unwrap();
    assert_eq!(remove.get("new"), Some(&Value::Null));
    let time = |dynamodb: &str| {
        decode_stream_record(record("INSERT", dynamodb).as_bytes())
            .map(|v| v.get("approximateCreationTime").cloned())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001123"#),
        Ok(Some(Value::Int(1_700_000_001_123)))
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001.123"#),
        Ok(Some(Value::Int(1_700_000_001_123)))
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001123456,"ApproximateCreationDateTimePrecision":"MICROSECOND""#),
        Ok(Some(Value::Int(1_700_000_001_123)))
    );
    assert!(time(r#""ApproximateCreationDateTime":"soon""#).is_err());
    assert!(time(r#""ApproximateCreationDateTime":-5"#).is_err());
}

#[test]
fn bad_change_records_are_errors() {
    let cases = [
        (
            record("UPSERT", ""),
            "eventName \"UPSERT\" is not INSERT, MODIFY or REMOVE",
        ),
        (
            r#"{"eventName":"INSERT"}"#.to_owned(),
            "the change record has no dynamodb",
        ),
        (r#"{"dynamodb":{}}"#.to_owned(), "the change record has no eventName"),
        (
            r#"{"eventName":"INSERT","dynamodb":[]}"#.to_owned(),
            "dynamodb must be an object",
        ),
        (record("INSERT", r#""NewImage":"x""#), "NewImage must be an object"),
        (format!("{} {{}}", record("INSERT", "")), "invalid JSON at byte"),
        ("\u{fffd}".to_owned() + "x", "invalid JSON at byte 0"),
    ];
    for (text, reason) in cases {
        let err = decode_stream_record(text.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with(reason), "{text}: {err:?} should start with {reason:?}");
    }
    assert_eq!(decode_stream_record(b"{\xff}").err(), Some(FormatError::Utf8(1)));
}

#[test]
fn every_truncation_of_a_record_is_an_error_and_never_a_panic() {
    for end in 0..MODIFY.len() {
        let Some(prefix) = MODIFY.get(..end) else { continue };
        if prefix.trim_end().len() < MODIFY.trim_end().len() {
            assert!(
                decode_stream_record(prefix.as_bytes()).is_err(),
                "prefix of {end} bytes decoded"
            );
            assert!(
                StreamRecordRef::parse(prefix.as_bytes()).is_err(),
                "prefix of {end} bytes parsed"
            );
        }
    }
    // Nor does any single corrupted byte panic.
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..2000 {
        let mut bytes = MODIFY.as_bytes().to_vec();
        let i = rng.random_range(0..bytes.len());
        bytes[i] = rng.random();
        let _ = decode_stream_record(&bytes);
        let _ = decode_item(&bytes);
    }
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!(
        r#"{{"eventName":"INSERT","dynamodb":{{}},"x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let err = decode_stream_record(deep.as_bytes())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("less deeply nested JSON"), "{err}");
}

/// A random typed attribute value and the plain value it must decode to.
fn random_attribute(rng: &mut SmallRng, depth: usize) -> (String, Value) {
    let ws = |rng: &mut SmallRng| [" ", "", "\n", "\t"][rng.random_range(0..4)].to_owned();
    let (tag, json, value) = match rng.random_range(0..if depth > 2 { 5 } else { 8 }) {
        0 => {
            let s: String = (0..rng.random_range(0..6))
                .map(|_| ['a', '"', '\\', 'é', '😀', '\n', '/'][rng.random_range(0..7)])
                .collect();
            ("S", serde_json::to_string(&s).unwrap(), Value::str(s))
        }
        1 => {
            let n: i64 = rng.random_range(-1_000_000..1_000_000);
            ("N", format!("\"{n}\""), Value::Int(n))
        }
        2 => {
            let b: Vec<u8> = (0..rng.random_range(0..20)).map(|_| rng.random()).collect();
            ("B", format!("\"{}\"", base64_encode(&b)), bytes(&b))
        }
        3 => {
            let b = rng.random_bool(0.5);
            ("BOOL", b.to_string(), Value::Bool(b))
        }
        4 => ("NULL", "true".to_owned(), Value::Null),
        5 => {
            let mut text = Vec::new();
            let mut map = Vec::new();
            for i in 0..rng.random_range(0..4) {
                let (json, value) = random_attribute(rng, depth + 1);
                text.push(format!("\"k{i}\"{}:{}{json}", ws(rng), ws(rng)));
                map.push((format!("k{i}"), value));
            }
            ("M", format!("{{{}}}", text.join(",")), Value::map(map))
        }
        6 => {
            let (texts, values): (Vec<String>, Vec<Value>) = (0..rng.random_range(0..4))
                .map(|_| random_attribute(rng, depth + 1))
                .unzip();
            (
                "L",
                format!("[{}]", texts.join(&format!(",{}", ws(rng)))),
                Value::list(values),
            )
        }
        _ => {
            let items: Vec<String> = (0..rng.random_range(0..4)).map(|i| format!("s{i}")).collect();
            let json = serde_json::to_string(&items).unwrap();
            ("SS", json, Value::list(items.into_iter().map(Value::str)))
        }
    };
    (
        format!("{{{}\"{tag}\"{}:{}{json}{}}}", ws(rng), ws(rng), ws(rng), ws(rng)),
        value,
    )
}

fn random_item(rng: &mut SmallRng) -> (String, Value) {
    let mut text = Vec::new();
    let mut map = Vec::new();
    for i in 0..rng.random_range(0..6) {
        let (json, value) = random_attribute(rng, 0);
        text.push(format!("\"a{i}\": {json}"));
        map.push((format!("a{i}"), value));
    }
    (format!("{{{}}}", text.join(" , ")), Value::map(map))
}

#[test]
fn random_items_decode_to_their_values_in_items_and_in_change_records() {
    let mut rng = SmallRng::seed_from_u64(42);
    for case in 0..2000 {
        let (old_text, old) = random_item(&mut rng);
        let (new_text, new) = random_item(&mut rng);
        assert_eq!(
            decode_item(old_text.as_bytes()).ok(),
            Some(old.clone()),
            "case {case}: {old_text}"
        );
        let text = format!(
            r#"{{ "eventName" : "MODIFY", "dynamodb" : {{ "OldImage" : {old_text}, "NewImage":{new_text}, "SequenceNumber":"{case}" }} }}"#
        );
        let decoded = decode_stream_record(text.as_bytes()).unwrap_or_else(|e| panic!("case {case}: {e}: {text}"));
        assert_eq!(decoded.get("old"), Some(&old), "case {case}");
        assert_eq!(decoded.get("new"), Some(&new), "case {case}");
        let record = StreamRecordRef::parse(text.as_bytes()).unwrap();
        assert_eq!(record.to_value().ok(), Some(decoded));
        let image = record.new_image().unwrap();
        for (name, value) in new.as_map().unwrap() {
            assert_eq!(image.get(name).ok(), Some(Some(value.clone())), "case {case}: {name}");
        }
    }
}

fn update(pni: Option<&[u8]>, uak: Option<&[u8]>, discoverable: bool) -> Value {
    Value::map([
        ("e164", Value::str("+15550000011")),
        ("uuid", bytes(&[0, 0, 0, 11, 0, 0, 64, 0, 128, 0, 0, 0, 0, 0, 0, 11])),
        ("canonicallyDiscoverable", Value::Bool(discoverable)),
        ("pni", pni.map_or(Value::Null, bytes)),
        ("uak", uak.map_or(Value::Null, bytes)),
    ])
}

#[test]
fn cds_updates_encode_exactly_as_the_original_and_round_trip() {
    let v = update(Some(&[1; 16]), None, true);
    let (key, out) = encode_cds_update(&v).unwrap();
    assert_eq!(key, "0000000b-0000-4000-8000-00000000000b");
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        r#"{"e164":"+15550000011","uuid":"AAAACwAAQACAAAAAAAAACw==","canonicallyDiscoverable":true,"pni":"AQEBAQEBAQEBAQEBAQEBAQ==","uak":null}"#
    );
    assert_eq!(decode_cds_update(&out).ok(), Some(v));
    let v = update(None, Some(&[9, 9]), false);
    assert_eq!(decode_cds_update(&encode_cds_update(&v).unwrap().1).ok(), Some(v));
    // Any key order; a missing flag is false and missing keys null.
    let other = br#"{"uuid":"AAAACwAAQACAAAAAAAAACw==","e164":"+15550000011","extra":1}"#;
    assert_eq!(decode_cds_update(other).ok(), Some(update(None, None, false)));
}

#[test]
fn bad_cds_updates_are_errors() {
    let encode = |v: Value| encode_cds_update(&v).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        encode(Value::map([("e164", Value::Int(1))])),
        "cds-update: e164 must be a string"
    );
    assert_eq!(
        encode(Value::map([("e164", Value::str("+1")), ("uuid", bytes(&[1]))])),
        "cds-update: uuid must be 16 bytes"
    );
    let decode = |s: &str| {
        decode_cds_update(s.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        decode(r#"{"uuid":"AAAACwAAQACAAAAAAAAACw=="}"#),
        "cds-update: e164 must be a string"
    );
    assert_eq!(
        decode(r#"{"e164":"+1","uuid":"AAE="}"#),
        "cds-update: uuid must be 16 bytes"
    );
    assert!(decode(r#"{"e164":"+1","uuid":"!!"}"#).starts_with("cds-update: uuid is not base64"));
    assert!(decode("nope").starts_with("cds-update: not JSON"));
    assert_eq!(
        decode(r#"{"e164":"+1","uuid":"AAAACwAAQACAAAAAAAAACw==","canonicallyDiscoverable":"yes"}"#),
        "cds-update: canonicallyDiscoverable must be a boolean"
    );
}
