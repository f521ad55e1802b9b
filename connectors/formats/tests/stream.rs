//! `dynamodb-stream` change records: the decoded shape, the lazy parser, and bad input.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_formats::{FormatError, StreamRecordRef, decode_item, decode_stream_record};
use sluice_runtime::Value;

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(Arc::from(b))
}

fn decode(text: &str) -> Result<Value, String> {
    decode_stream_record(text.as_bytes()).map_err(|e| e.to_string())
}

/// A MODIFY as Kinesis Data Streams for DynamoDB delivers it, with extra fields to ignore.
const MODIFY: &str = r#"{"eventID":"0001","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000001000,"Keys":{"U":{"B":"AAE="}},"SequenceNumber":"49650000000000000001","SizeBytes":300,"OldImage":{"U":{"B":"AAE="},"V":{"N":"1"},"P":{"S":"+1555"},"C":{"BOOL":true}},"NewImage":{"U":{"B":"AAE="},"V":{"N":"2"},"P" : { "S" : "+1555" },"C":{"BOOL":true}},"ApproximateCreationDateTimePrecision":"MILLISECOND"},"tableName":"Accounts","recordFormat":"application/json","eventSource":"aws:dynamodb","awsRegion":"us-east-1","userIdentity":null,"extra":{"nested":["a\"]}\\",{"b":[1,-2.5e-3,true,false,null,{}]},[]],"s":"}"}}"#;

fn modify_value() -> Value {
    Value::map([
        ("eventName", Value::str("MODIFY")),
        ("eventID", Value::str("0001")),
        ("tableName", Value::str("Accounts")),
        ("keys", Value::map([("U", bytes(&[0, 1]))])),
        (
            "old",
            Value::map([
                ("U", bytes(&[0, 1])),
                ("V", Value::Int(1)),
                ("P", Value::str("+1555")),
                ("C", Value::Bool(true)),
            ]),
        ),
        (
            "new",
            Value::map([
                ("U", bytes(&[0, 1])),
                ("V", Value::Int(2)),
                ("P", Value::str("+1555")),
                ("C", Value::Bool(true)),
            ]),
        ),
        ("sequenceNumber", Value::str("49650000000000000001")),
        ("approximateCreationTime", Value::Int(1_700_000_001_000)),
    ])
}

fn record(event: &str, dynamodb: &str) -> String {
    format!(r#"{{"eventName":"{event}","dynamodb":{{{dynamodb}}}}}"#)
}

#[test]
fn a_modify_decodes_to_the_documented_shape() {
    assert_eq!(decode(MODIFY), Ok(modify_value()));
    let parsed = StreamRecordRef::parse(MODIFY.as_bytes()).unwrap();
    assert_eq!(parsed.event_name(), "MODIFY");
    assert_eq!(parsed.to_value().unwrap(), modify_value());
}

#[test]
fn inserts_and_removes_carry_one_image() {
    let insert = record("INSERT", r#""NewImage":{"a":{"S":"x"}}"#);
    let v = decode(&insert).unwrap();
    assert_eq!(v.get("old"), Some(&Value::Null));
    assert_eq!(v.get("new"), Some(&Value::map([("a", Value::str("x"))])));
    let parsed = StreamRecordRef::parse(insert.as_bytes()).unwrap();
    assert_eq!(parsed.event_name(), "INSERT");
    assert!(parsed.old_image().is_none());
    assert!(parsed.new_image().is_some());

    let remove = record("REMOVE", r#""OldImage":{"a":{"S":"x"}},"NewImage":null"#);
    let v = decode(&remove).unwrap();
    assert_eq!(v.get("new"), Some(&Value::Null));
    assert_eq!(v.get("old"), Some(&Value::map([("a", Value::str("x"))])));
    let parsed = StreamRecordRef::parse(remove.as_bytes()).unwrap();
    assert_eq!(parsed.event_name(), "REMOVE");
    assert!(parsed.new_image().is_none());
}

#[test]
fn absent_fields_are_null() {
    let v = decode(&record("INSERT", "")).unwrap();
    assert_eq!(
        v,
        Value::map([
            ("eventName", Value::str("INSERT")),
            ("eventID", Value::Null),
            ("tableName", Value::Null),
            ("keys", Value::Null),
            ("old", Value::Null),
            ("new", Value::Null),
            ("sequenceNumber", Value::Null),
            ("approximateCreationTime", Value::Null),
        ])
    );
    let v = decode(r#"{"eventName":"INSERT","eventID":null,"tableName":null,"dynamodb":{"SequenceNumber":null,"ApproximateCreationDateTime":null,"Keys":null}}"#).unwrap();
    assert_eq!(v, decode(&record("INSERT", "")).unwrap());
}

#[test]
fn creation_time_becomes_milliseconds_in_every_unit() {
    let time = |dynamodb: &str| {
        decode(&record("INSERT", dynamodb)).map(|v| v.get("approximateCreationTime").cloned().unwrap_or_default())
    };
    let ms = |n: i64| Ok(Value::Int(n));
    // Kinesis: milliseconds.
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001123"#),
        ms(1_700_000_001_123)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001123.9"#),
        ms(1_700_000_001_123)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1.700000001123e12"#),
        ms(1_700_000_001_123)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001123,"ApproximateCreationDateTimePrecision":"MILLISECOND""#),
        ms(1_700_000_001_123)
    );
    // DynamoDB Streams: seconds, with a fraction, in any notation.
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001.123"#),
        ms(1_700_000_001_123)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001.1236"#),
        ms(1_700_000_001_124)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001"#),
        ms(1_700_000_001_000)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1.700000001E9"#),
        ms(1_700_000_001_000)
    );
    assert_eq!(time(r#""ApproximateCreationDateTime":0"#), ms(0));
    // Microseconds when the record says so, whichever field comes first.
    assert_eq!(
        time(r#""ApproximateCreationDateTime":1700000001123456,"ApproximateCreationDateTimePrecision":"MICROSECOND""#),
        ms(1_700_000_001_123)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTimePrecision":"MICROSECOND","ApproximateCreationDateTime":1700000001123999"#),
        ms(1_700_000_001_123)
    );
    assert_eq!(
        time(r#""ApproximateCreationDateTimePrecision":"MICROSECOND""#),
        Ok(Value::Null)
    );
    let bad = |dynamodb: &str, reason: &str| {
        assert_eq!(time(dynamodb).unwrap_err(), reason, "{dynamodb}");
    };
    bad(
        r#""ApproximateCreationDateTime":"soon""#,
        "ApproximateCreationDateTime: must be a number",
    );
    bad(
        r#""ApproximateCreationDateTime":true"#,
        "ApproximateCreationDateTime: must be a number",
    );
    bad(
        r#""ApproximateCreationDateTime":-5"#,
        "ApproximateCreationDateTime: -5 is negative",
    );
    bad(
        r#""ApproximateCreationDateTime":1e300"#,
        "ApproximateCreationDateTime: 1e300 is out of range",
    );
    bad(
        r#""ApproximateCreationDateTime":18446744073709551615"#,
        "ApproximateCreationDateTime: 18446744073709551615 is out of range",
    );
    bad(
        r#""ApproximateCreationDateTime":01"#,
        "invalid JSON at byte 64: expected a number",
    );
}

#[test]
fn bad_change_records_are_errors() {
    let cases = [
        (
            record("UPSERT", ""),
            "eventName \"UPSERT\" is not INSERT, MODIFY or REMOVE",
        ),
        (
            record("insert", ""),
            "eventName \"insert\" is not INSERT, MODIFY or REMOVE",
        ),
        (
            r#"{"eventName":1,"dynamodb":{}}"#.to_owned(),
            "eventName: must be a string",
        ),
        (r#"{"eventName":"INSERT"}"#.to_owned(), "missing dynamodb"),
        (r#"{"dynamodb":{}}"#.to_owned(), "missing eventName"),
        (r#"{}"#.to_owned(), "missing eventName"),
        (
            r#"{"eventName":"INSERT","dynamodb":[]}"#.to_owned(),
            "dynamodb must be an object",
        ),
        (
            r#"{"eventName":"INSERT","dynamodb":null}"#.to_owned(),
            "dynamodb must be an object",
        ),
        (record("INSERT", r#""NewImage":"x""#), "NewImage must be an object"),
        (record("INSERT", r#""OldImage":[]"#), "OldImage must be an object"),
        (record("INSERT", r#""Keys":1"#), "Keys must be an object"),
        (
            record("INSERT", r#""SequenceNumber":1"#),
            "SequenceNumber: must be a string or null",
        ),
        (
            r#"{"eventName":"INSERT","eventID":7,"dynamodb":{}}"#.to_owned(),
            "eventID: must be a string or null",
        ),
        (
            r#"{"eventName":"INSERT","eventName":"INSERT","dynamodb":{}}"#.to_owned(),
            "eventName: appears twice",
        ),
        (
            record("INSERT", r#""NewImage":{},"NewImage":{}"#),
            "NewImage: appears twice",
        ),
        (
            format!("{} {{}}", record("INSERT", "")),
            "invalid JSON at byte 37: expected the end of the record",
        ),
        (
            format!("{}x", record("INSERT", "")),
            "invalid JSON at byte 36: expected the end of the record",
        ),
        ("[]".to_owned(), "invalid JSON at byte 0: expected an object"),
        ("".to_owned(), "invalid JSON at byte 0: expected an object"),
        (
            r#"{"eventName":"INSERT","dynamodb":{},}"#.to_owned(),
            "invalid JSON at byte 36: expected a string",
        ),
        (
            r#"{"eventName":"INSERT" "dynamodb":{}}"#.to_owned(),
            "invalid JSON at byte 22: expected ',' or '}'",
        ),
        (
            r#"{"eventName":"INSERT","dynamodb":{},"x":tru}"#.to_owned(),
            "invalid JSON at byte 40: expected a JSON value",
        ),
        (
            r#"{"eventName":"INSERT","dynamodb":{},"x":[1,]}"#.to_owned(),
            "invalid JSON at byte 43: expected a JSON value",
        ),
        (
            r#"{"eventName":"INSERT","dynamodb":{},"x":"\x"}"#.to_owned(),
            "invalid JSON at byte 41: expected a valid escape sequence",
        ),
    ];
    for (text, reason) in cases {
        assert_eq!(decode(&text).unwrap_err(), reason, "{text}");
        assert_eq!(
            StreamRecordRef::parse(text.as_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(reason.to_owned()),
            "{text}"
        );
    }
    assert_eq!(
        decode_stream_record(b"{\"eventName\":\"\xff\"}").unwrap_err(),
        FormatError::Utf8(14)
    );
    // Garbage inside an attribute is found when the attribute is decoded.
    let bad_number = record("INSERT", r#""NewImage":{"V":{"N":"x"}}"#);
    let parsed = StreamRecordRef::parse(bad_number.as_bytes()).unwrap();
    assert_eq!(
        parsed.to_value().unwrap_err().to_string(),
        "attribute \"V\": N value \"x\" is not a number"
    );
    assert_eq!(
        decode(&bad_number).unwrap_err(),
        "attribute \"V\": N value \"x\" is not a number"
    );
}

#[test]
fn every_truncation_is_an_error_and_never_a_panic() {
    for text in [
        MODIFY,
        &record("INSERT", r#""NewImage":{"a":{"M":{"b":{"L":[{"S":"\u0041\""}]}}}}"#),
    ] {
        for end in 0..text.len() {
            let prefix = &text.as_bytes()[..end];
            assert!(
                StreamRecordRef::parse(prefix).is_err(),
                "a prefix of {end} bytes parsed"
            );
            assert!(decode_stream_record(prefix).is_err(), "a prefix of {end} bytes decoded");
        }
    }
    // Nor does any corrupted byte panic.
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..5000 {
        let mut corrupt = MODIFY.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..corrupt.len());
            corrupt[i] = *b"{}[]\":,\\ntfu0-.e \xc3"
                .get(rng.random_range(0..20))
                .unwrap_or(&rng.random());
        }
        if let Ok(parsed) = StreamRecordRef::parse(&corrupt) {
            let _ = parsed.to_value();
            assert_eq!(parsed.to_value().ok(), decode_stream_record(&corrupt).ok());
        }
        let _ = decode_item(&corrupt);
    }
}

#[test]
fn whitespace_between_tokens_is_accepted() {
    let spaced = " \n{ \"eventName\" :\t\"MODIFY\" , \"eventID\":\"0001\", \"tableName\" : \"Accounts\" ,\r\n\"dynamodb\" : { \"Keys\" : { \"U\" : { \"B\" : \"AAE=\" } } , \"OldImage\" : { \"U\" : { \"B\" : \"AAE=\" } , \"V\" : { \"N\" : \"1\" } , \"P\" : { \"S\" : \"+1555\" } , \"C\" : { \"BOOL\" : true } } , \"NewImage\" : { \"U\" : {\"B\":\"AAE=\"} , \"V\" : {\"N\":\"2\"}, \"P\":{\"S\":\"+1555\"}, \"C\" : {\"BOOL\" : true } } , \"SequenceNumber\" : \"49650000000000000001\" , \"ApproximateCreationDateTime\" : 1700000001000 } } \n ";
    assert_eq!(decode(spaced), Ok(modify_value()));
}

#[test]
fn unknown_fields_are_checked_and_ignored_at_both_levels() {
    let text = r#"{"awsRegion":"us-east-1","eventVersion":"1.1","weird\"key":{"a":["}","\"",{"b":{"c":[[[]]]}}]},"n":-0.0e+0,"eventName":"REMOVE","dynamodb":{"StreamViewType":"NEW_AND_OLD_IMAGES","SizeBytes":12,"x":{"OldImage":"not this one"},"OldImage":{"a":{"S":"x"}},"y":[{"NewImage":1}]},"eventSourceARN":"arn:aws:dynamodb:us-east-1:1:table/A/stream/2024","tail":"\\"}"#;
    let v = decode(text).unwrap();
    assert_eq!(v.get("old"), Some(&Value::map([("a", Value::str("x"))])));
    assert_eq!(v.get("new"), Some(&Value::Null));
    assert_eq!(v.get("eventName"), Some(&Value::str("REMOVE")));
    // An escaped spelling of a field name is the field.
    let escaped = r#"{"event\u004eame":"INSERT","dynamo\u0064b":{"NewImage":{"a":{"N":"1"}}}}"#;
    assert_eq!(
        decode(escaped).unwrap().get("new"),
        Some(&Value::map([("a", Value::Int(1))]))
    );
    // Syntax errors in ignored fields are still errors.
    let bad = r#"{"eventName":"INSERT","dynamodb":{"x":{"a":1,}}}"#;
    assert!(decode(bad).is_err());
    let deep = format!(
        r#"{{"eventName":"INSERT","dynamodb":{{}},"x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_eq!(
        decode(&deep).unwrap_err(),
        "invalid JSON at byte 167: expected less deeply nested JSON"
    );
}

#[test]
fn raw_is_the_exact_typed_text() {
    let parsed = StreamRecordRef::parse(MODIFY.as_bytes()).unwrap();
    let (old, new) = (parsed.old_image().unwrap(), parsed.new_image().unwrap());
    assert_eq!(old.raw("U"), Some(r#"{"B":"AAE="}"#));
    assert_eq!(old.raw("P"), Some(r#"{"S":"+1555"}"#));
    assert_eq!(
        new.raw("P"),
        Some(r#"{ "S" : "+1555" }"#),
        "as written, spaces included"
    );
    assert_eq!(old.raw("C"), Some(r#"{"BOOL":true}"#));
    assert_eq!(old.raw("Q"), None);
    assert_eq!(old.raw("u"), None, "names are case-sensitive");
    assert_eq!(old.raw("U"), new.raw("U"));
    assert_eq!(old.raw("C"), new.raw("C"));
    assert_ne!(old.raw("V"), new.raw("V"));
    assert_ne!(old.raw("P"), new.raw("P"), "different spacing is different text");
    assert_eq!(new.get("P").unwrap(), Some(Value::str("+1555")));
    assert_eq!(new.get("V").unwrap(), Some(Value::Int(2)));
    assert_eq!(new.get("Q").unwrap(), None);
    assert_eq!(old.to_value().unwrap(), modify_value().get("old").cloned().unwrap());
    // Every raw text is a slice of the record itself.
    let record_range = MODIFY.as_bytes().as_ptr_range();
    assert!(record_range.contains(&old.raw("U").unwrap().as_ptr()));
}

#[test]
fn raw_finds_escaped_names_and_nested_values() {
    let text = record(
        "INSERT",
        r#""NewImage":{"P\u0031":{"S":"a"},"M":{"M":{"x":{"L":[{"N":"1"}]}}},"Q\"":{"SS":["\""]}}"#,
    );
    let parsed = StreamRecordRef::parse(text.as_bytes()).unwrap();
    let image = parsed.new_image().unwrap();
    assert_eq!(image.raw("P1"), Some(r#"{"S":"a"}"#));
    assert_eq!(image.raw("P\\u0031"), None);
    assert_eq!(image.raw("M"), Some(r#"{"M":{"x":{"L":[{"N":"1"}]}}}"#));
    assert_eq!(image.raw("Q\""), Some(r#"{"SS":["\""]}"#));
    assert_eq!(image.get("Q\"").unwrap(), Some(Value::list([Value::str("\"")])));
}

#[test]
fn images_with_many_attributes_are_read_whole() {
    let attributes: Vec<String> = (0..40).map(|i| format!(r#""a{i}":{{"N":"{i}"}}"#)).collect();
    let image = format!("{{{}}}", attributes.join(","));
    let text = record("MODIFY", &format!(r#""OldImage":{image},"NewImage":{image}"#));
    let parsed = StreamRecordRef::parse(text.as_bytes()).unwrap();
    let (old, new) = (parsed.old_image().unwrap(), parsed.new_image().unwrap());
    for i in 0..40 {
        let name = format!("a{i}");
        assert_eq!(old.raw(&name), Some(format!(r#"{{"N":"{i}"}}"#).as_str()), "{name}");
        assert_eq!(old.raw(&name), new.raw(&name));
        assert_eq!(new.get(&name).unwrap(), Some(Value::Int(i)));
    }
    assert_eq!(old.raw("a40"), None);
    assert_eq!(old.to_value().unwrap(), decode_item(image.as_bytes()).unwrap());
    let projected = parsed.to_value_projected(&["a3", "a39"]).unwrap();
    assert_eq!(
        projected.get("old"),
        Some(&Value::map([("a3", Value::Int(3)), ("a39", Value::Int(39))]))
    );
}

#[test]
fn attributes_past_64_kib_are_found_too() {
    let big = "x".repeat(70_000);
    let image = format!(r#"{{"a":{{"S":"{big}"}},"b":{{"N":"1"}},"c":{{"S":"c"}}}}"#);
    let text = record("INSERT", &format!(r#""NewImage":{image}"#));
    let parsed = StreamRecordRef::parse(text.as_bytes()).unwrap();
    let new = parsed.new_image().unwrap();
    assert_eq!(new.raw("b"), Some(r#"{"N":"1"}"#));
    assert_eq!(new.raw("c"), Some(r#"{"S":"c"}"#));
    assert_eq!(new.get("a").unwrap(), Some(Value::str(big.as_str())));
    assert_eq!(new.to_value().unwrap(), decode_item(image.as_bytes()).unwrap());
}

#[test]
fn projection_keeps_only_the_named_attributes_of_the_images() {
    let parsed = StreamRecordRef::parse(MODIFY.as_bytes()).unwrap();
    let projected = parsed.to_value_projected(&["U", "P"]).unwrap();
    let full = modify_value();
    let keep = |image: &str| {
        let map = full.get(image).unwrap().as_map().unwrap();
        Value::map(
            map.iter()
                .filter(|(k, _)| ["U", "P"].contains(&&***k))
                .map(|(k, v)| (Arc::clone(k), v.clone())),
        )
    };
    assert_eq!(projected.get("old"), Some(&keep("old")));
    assert_eq!(projected.get("new"), Some(&keep("new")));
    assert_eq!(projected.get("old").unwrap().as_map().unwrap().len(), 2);
    for field in [
        "eventName",
        "eventID",
        "tableName",
        "keys",
        "sequenceNumber",
        "approximateCreationTime",
    ] {
        assert_eq!(projected.get(field), full.get(field), "{field} is unchanged");
    }
    // A garbage attribute outside the projection is not decoded, so it is no error.
    let text = record("INSERT", r#""NewImage":{"U":{"S":"u"},"X":{"N":"nope"}}"#);
    let parsed = StreamRecordRef::parse(text.as_bytes()).unwrap();
    assert_eq!(
        parsed.to_value_projected(&["U"]).unwrap().get("new"),
        Some(&Value::map([("U", Value::str("u"))]))
    );
    assert!(parsed.to_value().is_err());
    assert_eq!(
        parsed.to_value_projected(&[]).unwrap().get("new"),
        Some(&Value::map::<&str>([]))
    );
}

/// The engine's lazy `cds` decoder uses the images like this; it must keep compiling.
#[test]
fn images_work_as_the_engine_uses_them() {
    fn unchanged(old: &sluice_formats::ImageRef<'_>, new: &sluice_formats::ImageRef<'_>) -> bool {
        ["U", "C"].into_iter().all(|a| old.raw(a) == new.raw(a))
            && matches!(old.get("U"), Ok(Some(Value::Bytes(b))) if b.len() == 2)
    }
    let parsed = StreamRecordRef::parse(MODIFY.as_bytes()).unwrap();
    let (old, new) = (parsed.old_image(), parsed.new_image());
    assert!(parsed.event_name() == "MODIFY" && matches!((&old, &new), (Some(o), Some(n)) if unchanged(o, n)));
    let missing_pni = [&old, &new]
        .into_iter()
        .flatten()
        .any(|image| image.raw("PNI").is_none());
    assert!(missing_pni);
    const ATTRIBUTES: &[&str] = &["U", "V"];
    let projected = parsed.to_value_projected(ATTRIBUTES).unwrap();
    assert_eq!(projected.get("new").and_then(|n| n.get("V")), Some(&Value::Int(2)));
}
