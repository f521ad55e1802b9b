//! DynamoDB-typed attributes and `dynamodb-item` records.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sluice_formats::{FormatError, attribute_value, decode_item};
use sluice_runtime::Value;

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(Arc::from(b))
}

fn item(text: &str) -> Result<Value, String> {
    decode_item(text.as_bytes()).map_err(|e| e.to_string())
}

/// The value of a single attribute `a` written as `typed`.
fn one(typed: &str) -> Result<Value, String> {
    item(&format!(r#"{{"a":{typed}}}"#)).map(|v| v.get("a").cloned().unwrap_or_default())
}

#[test]
fn every_scalar_type_decodes() {
    assert_eq!(one(r#"{"S":"text"}"#), Ok(Value::str("text")));
    assert_eq!(one(r#"{"S":""}"#), Ok(Value::str("")));
    assert_eq!(one(r#"{"B":"AAEC/w=="}"#), Ok(bytes(&[0, 1, 2, 255])));
    assert_eq!(one(r#"{"B":""}"#), Ok(bytes(&[])));
    assert_eq!(one(r#"{"BOOL":true}"#), Ok(Value::Bool(true)));
    assert_eq!(one(r#"{"BOOL":false}"#), Ok(Value::Bool(false)));
    assert_eq!(one(r#"{"NULL":true}"#), Ok(Value::Null));
}

#[test]
fn numbers_keep_integers_exact_and_the_rest_as_floats() {
    assert_eq!(one(r#"{"N":"123"}"#), Ok(Value::Int(123)));
    assert_eq!(one(r#"{"N":"-42"}"#), Ok(Value::Int(-42)));
    assert_eq!(one(r#"{"N":"0"}"#), Ok(Value::Int(0)));
    assert_eq!(one(r#"{"N":"9223372036854775807"}"#), Ok(Value::Int(i64::MAX)));
    assert_eq!(one(r#"{"N":"-9223372036854775808"}"#), Ok(Value::Int(i64::MIN)));
    assert_eq!(one(r#"{"N":"9223372036854775808"}"#), Ok(Value::UInt(1 << 63)));
    assert_eq!(one(r#"{"N":"18446744073709551615"}"#), Ok(Value::UInt(u64::MAX)));
    assert_eq!(
        one(r#"{"N":"18446744073709551616"}"#),
        Ok(Value::from(18446744073709551616.0))
    );
    assert_eq!(
        one(r#"{"N":"-9223372036854775809"}"#),
        Ok(Value::from(-9223372036854775809.0))
    );
    assert_eq!(one(r#"{"N":"1.5"}"#), Ok(Value::from(1.5)));
    assert_eq!(one(r#"{"N":"-0.25"}"#), Ok(Value::from(-0.25)));
    assert_eq!(
        one(r#"{"N":"1.0"}"#),
        Ok(Value::from(1.0)),
        "a decimal point makes a float"
    );
    assert_eq!(one(r#"{"N":"1.5e3"}"#), Ok(Value::from(1500.0)));
    assert_eq!(one(r#"{"N":"2E-2"}"#), Ok(Value::from(0.02)));
    assert_eq!(one(r#"{"N":"1e+2"}"#), Ok(Value::from(100.0)));
    // 38 significant digits, DynamoDB's limit: kept as the nearest f64.
    assert_eq!(
        one(r#"{"N":"12345678901234567890123456789012345678"}"#),
        Ok(Value::from(1.2345678901234568e37))
    );
    assert_eq!(
        one(r#"{"N":"0.12345678901234567890123456789012345678"}"#),
        Ok(Value::from(0.12345678901234568))
    );
}

#[test]
fn invalid_numbers_are_errors_naming_the_attribute() {
    for text in [
        "abc", "", "-", "1.2.3", "1e", "inf", "NaN", "infinity", "0x10", "1e999", " 1", "1,000", "--1",
    ] {
        let err = one(&format!(r#"{{"N":"{text}"}}"#)).unwrap_err();
        assert_eq!(err, format!("attribute \"a\": N value {text:?} is not a number"));
    }
    assert_eq!(
        item(r#"{"V":{"N":"abc"}}"#).unwrap_err(),
        r#"attribute "V": N value "abc" is not a number"#
    );
}

#[test]
fn maps_lists_and_sets_nest() {
    let v = one(r#"{"M":{"x":{"N":"1"},"y":{"L":[{"S":"a"},{"M":{}},{"L":[]},{"NULL":true}]}}}"#).unwrap();
    assert_eq!(
        v,
        Value::map([
            ("x", Value::Int(1)),
            (
                "y",
                Value::list([Value::str("a"), Value::map::<&str>([]), Value::list([]), Value::Null])
            ),
        ])
    );
    assert_eq!(
        one(r#"{"SS":["b","a","b"]}"#),
        Ok(Value::list([Value::str("b"), Value::str("a"), Value::str("b")])),
        "sets keep their order as given"
    );
    assert_eq!(
        one(r#"{"NS":["2","-1.5","18446744073709551615"]}"#),
        Ok(Value::list([Value::Int(2), Value::from(-1.5), Value::UInt(u64::MAX)]))
    );
    assert_eq!(
        one(r#"{"BS":["AA==","AQI="]}"#),
        Ok(Value::list([bytes(&[0]), bytes(&[1, 2])]))
    );
    assert_eq!(one(r#"{"SS":[]}"#), Ok(Value::list([])));
}

#[test]
fn string_escapes_decode_in_values_and_in_names() {
    assert_eq!(
        one(r#"{"S":"q\" b\\ s\/ \b\f\n\r\t \u0041\u00e9\u4e2d \ud83d\ude00 raw é😀"}"#),
        Ok(Value::str("q\" b\\ s/ \u{8}\u{c}\n\r\t Aé中 😀 raw é😀"))
    );
    let v = item(r#"{"n\u0041me\"\ud83d\ude00":{"M":{"k\\ey\n":{"S":"x"}}}}"#).unwrap();
    assert_eq!(
        v,
        Value::map([("nAme\"😀", Value::map([("k\\ey\n", Value::str("x"))]))])
    );
    assert_eq!(one(r#"{"SS":["\u0031"]}"#), Ok(Value::list([Value::str("1")])));
    assert_eq!(
        one(r#"{"N":"\u0031\u0032"}"#),
        Ok(Value::Int(12)),
        "escapes are decoded before the number"
    );
}

#[test]
fn bad_escapes_are_errors() {
    assert_eq!(
        one(r#"{"S":"\ud800"}"#).unwrap_err(),
        "attribute \"a\": S value: invalid string escape: a high surrogate must be followed by a low one"
    );
    assert_eq!(
        one(r#"{"S":"\ud800\u0041"}"#).unwrap_err(),
        "attribute \"a\": S value: invalid string escape: a high surrogate must be followed by a low one"
    );
    assert_eq!(
        one(r#"{"S":"\udc00"}"#).unwrap_err(),
        "attribute \"a\": S value: invalid string escape: a lone low surrogate"
    );
    assert_eq!(
        item(r#"{"a":{"S":"\q"}}"#).unwrap_err(),
        "invalid JSON at byte 11: expected a valid escape sequence"
    );
    assert_eq!(
        item(r#"{"a":{"S":"\u12G4"}}"#).unwrap_err(),
        "invalid JSON at byte 11: expected four hex digits after \\u"
    );
    assert_eq!(
        item(r#"{"M":{"M":{"\ud800":{"S":"x"}}}}"#).unwrap_err(),
        "attribute \"M\": a member name: invalid string escape: a high surrogate must be followed by a low one"
    );
}

#[test]
fn bad_attributes_name_the_attribute_path_and_the_problem() {
    let cases = [
        (r#"{"U":{"B":"!!"}}"#, "attribute \"U\": B value is not base64"),
        (r#"{"U":{"B":"AAE"}}"#, "attribute \"U\": B value is not base64"),
        (
            r#"{"U":{"BS":["AA==","A"]}}"#,
            "attribute \"U[1]\": B value is not base64",
        ),
        (r#"{"D":{"Q":"1"}}"#, "attribute \"D\": unknown type tag \"Q\""),
        (r#"{"D":{"s":"1"}}"#, "attribute \"D\": unknown type tag \"s\""),
        (
            r#"{"D":{"S":"a","N":"1"}}"#,
            "attribute \"D\": a typed value needs one type tag, it has several",
        ),
        (
            r#"{"D":{}}"#,
            "attribute \"D\": a typed value needs one type tag, it has none",
        ),
        (
            r#"{"D":"plain"}"#,
            "attribute \"D\": expected a typed value such as {\"S\": \"…\"}",
        ),
        (r#"{"D":null}"#, "attribute \"D\": expected a typed value"),
        (r#"{"D":{"S":1}}"#, "attribute \"D\": S value must be a string"),
        (r#"{"D":{"N":1}}"#, "attribute \"D\": N value must be a string"),
        (
            r#"{"D":{"BOOL":"yes"}}"#,
            "attribute \"D\": BOOL value must be true or false",
        ),
        (r#"{"D":{"NULL":1}}"#, "attribute \"D\": NULL value must be true"),
        (r#"{"D":{"M":[]}}"#, "attribute \"D\": M value must be an object"),
        (r#"{"D":{"L":{}}}"#, "attribute \"D\": L value must be an array"),
        (r#"{"D":{"SS":[1]}}"#, "attribute \"D[0]\": SS value must be a string"),
        (r#"{"D":{"NS":"1"}}"#, "attribute \"D\": NS value must be an array"),
        (
            r#"{"M":{"M":{"x":{"S":1}}}}"#,
            "attribute \"M.x\": S value must be a string",
        ),
        (
            r#"{"M":{"M":{"a":{"L":[{"S":"x"},{"N":"y"}]}}}}"#,
            "attribute \"M.a[1]\": N value \"y\" is not a number",
        ),
        (r#"{"D":{"S":"a"},"D":{"S":"b"}}"#, "attribute \"D\": appears twice"),
        (
            r#"{"M":{"M":{"k":{"S":"a"},"k":{"S":"b"}}}}"#,
            "attribute \"M.k\": appears twice",
        ),
    ];
    for (text, reason) in cases {
        let err = item(text).unwrap_err();
        assert!(err.starts_with(reason), "{text}: {err:?} should start with {reason:?}");
    }
}

#[test]
fn items_must_be_one_json_object() {
    let cases = [
        ("[1]", "an item must be an object"),
        ("\"x\"", "an item must be an object"),
        ("", "an item must be an object"),
        (
            r#"{"a":{"S":"x"}} x"#,
            "invalid JSON at byte 16: expected the end of the record",
        ),
        (
            r#"{"a":{"S":"x"}}{}"#,
            "invalid JSON at byte 15: expected the end of the record",
        ),
        (r#"{"a":{"S":"x"},}"#, "invalid JSON at byte 15: expected a string"),
        (r#"{"a" {"S":"x"}}"#, "invalid JSON at byte 5: expected ':'"),
        (r#"{"a":{"S":"x"}"#, "invalid JSON at byte 14: expected ',' or '}'"),
        (
            r#"{"a":{"S":"x}}"#,
            "invalid JSON at byte 14: expected the end of a string",
        ),
    ];
    for (text, reason) in cases {
        assert_eq!(item(text).unwrap_err(), reason, "{text}");
    }
    assert_eq!(decode_item(b"{\"a\":{\"S\":\"\xff\"}}"), Err(FormatError::Utf8(11)));
    assert_eq!(
        item(" \n{ } \t"),
        Ok(Value::map::<&str>([])),
        "whitespace around is fine"
    );
}

#[test]
fn an_item_may_be_wrapped_and_an_attribute_may_be_called_item() {
    let wrapped = item(r#" { "Item" : {"U":{"S":"u"},"V":{"N":"1"}} } "#).unwrap();
    assert_eq!(wrapped, Value::map([("U", Value::str("u")), ("V", Value::Int(1))]));
    assert_eq!(item(r#"{"Item":{}}"#).unwrap(), Value::map::<&str>([]));
    let attribute = item(r#"{"Item":{"M":{"a":{"S":"x"}}}}"#).unwrap();
    assert_eq!(attribute, Value::map([("Item", Value::map([("a", Value::str("x"))]))]));
    assert_eq!(
        item(r#"{"Item":{"S":"x"}}"#).unwrap(),
        Value::map([("Item", Value::str("x"))])
    );
    // An error inside a wrapper names the inner attribute; inside an attribute, `Item`.
    assert_eq!(
        item(r#"{"Item":{"U":{"Q":"x"},"V":{"N":"1"}}}"#).unwrap_err(),
        "attribute \"U\": unknown type tag \"Q\""
    );
    assert_eq!(
        item(r#"{"Item":{"N":"x"}}"#).unwrap_err(),
        "attribute \"Item\": N value \"x\" is not a number"
    );
    // Two keys is no wrapper, and trailing garbage is not forgiven by one.
    assert!(item(r#"{"Item":{"U":{"S":"u"}},"X":{"S":"x"}}"#).is_err());
    assert!(item(r#"{"Item":{"U":{"S":"u"}}} x"#).is_err());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 5000;
    let text = format!(
        r#"{{"a":{}{{"NULL":true}}{}}}"#,
        r#"{"L":["#.repeat(depth),
        "]}".repeat(depth)
    );
    let err = item(&text).unwrap_err();
    assert!(err.contains("nested too deeply"), "{err}");
    let text = format!(
        r#"{{"a":{}{{"NULL":true}}{}}}"#,
        r#"{"L":["#.repeat(30),
        "]}".repeat(30)
    );
    assert!(item(&text).is_ok(), "modest nesting is fine");
}

#[test]
fn attribute_value_decodes_typed_json_that_is_already_a_value() {
    let typed = |json: &str| attribute_value(&Value::from_json_str(json).unwrap()).map_err(|e| e.to_string());
    assert_eq!(typed(r#"{"S":"x"}"#), Ok(Value::str("x")));
    assert_eq!(typed(r#"{"N":"-7"}"#), Ok(Value::Int(-7)));
    assert_eq!(typed(r#"{"N":"18446744073709551615"}"#), Ok(Value::UInt(u64::MAX)));
    assert_eq!(typed(r#"{"N":"2.5"}"#), Ok(Value::from(2.5)));
    assert_eq!(typed(r#"{"B":"AAE="}"#), Ok(bytes(&[0, 1])));
    assert_eq!(typed(r#"{"BOOL":false}"#), Ok(Value::Bool(false)));
    assert_eq!(typed(r#"{"NULL":true}"#), Ok(Value::Null));
    assert_eq!(
        typed(r#"{"M":{"a":{"L":[{"N":"1"},{"SS":["s"]},{"NS":["1.5"]},{"BS":["AA=="]}]}}}"#),
        Ok(Value::map([(
            "a",
            Value::list([
                Value::Int(1),
                Value::list([Value::str("s")]),
                Value::list([Value::from(1.5)]),
                Value::list([bytes(&[0])]),
            ])
        )]))
    );
    assert_eq!(
        typed(r#"{"N":"x"}"#),
        Err("typed value: N value \"x\" is not a number".to_owned())
    );
    assert!(
        typed(r#"{"M":{"a":{"L":[{"B":"!"}]}}}"#)
            .unwrap_err()
            .starts_with("attribute \"a[0]\": B value is not base64")
    );
    assert_eq!(
        typed(r#"{"Q":"x"}"#),
        Err("typed value: unknown type tag \"Q\"".to_owned())
    );
    assert_eq!(
        typed(r#"{}"#),
        Err("typed value: a typed value needs one type tag, it has none".to_owned())
    );
    assert_eq!(
        typed(r#"{"S":"x","N":"1"}"#),
        Err("typed value: a typed value needs one type tag, it has several".to_owned())
    );
    assert_eq!(
        typed(r#""x""#),
        Err("typed value: expected a typed value such as {\"S\": \"…\"}".to_owned())
    );
    assert_eq!(
        typed(r#"{"S":1}"#),
        Err("typed value: S value must be a string".to_owned())
    );
}
