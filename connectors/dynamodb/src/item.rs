//! DynamoDB attribute values as typed JSON: items become the `dynamodb-item` records the
//! formats crate decodes, and keys become [`Value`]s that a checkpoint can hold and a resumed
//! scan can turn back into an `ExclusiveStartKey`.
//!
//! Typed JSON is what DynamoDB's own API and the AWS CLI write: every value is an object
//! with one type tag, `{"S": "…"}`, `{"N": "12.5"}` (numbers stay strings, so none of their
//! 38 digits is lost here), `{"B": "<base64>"}`, `{"BOOL": true}`, `{"NULL": true}`,
//! `{"M": {…}}`, `{"L": […]}`, `{"SS": […]}`, `{"NS": […]}`, `{"BS": […]}`. Attribute names
//! are written in sorted order, so one item always gives the same bytes.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use sluice_runtime::value::{Value, ValueMap};

/// An item, or a key, as the SDK gives it: attribute name → value.
pub type Item = HashMap<String, AttributeValue>;

/// Why a [`Value`] is not a typed key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct KeyError {
    /// Where: the attribute name (empty for the key itself).
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// The tag written for a value of a type this SDK version does not know: the `dynamodb-item`
/// decoder rejects it, so the item becomes a dead letter naming the attribute instead of
/// failing the whole scan.
const UNKNOWN_TAG: &str = "UNKNOWN";

/// The item as typed JSON bytes, leaving out the attributes named in `skip` (top level only).
pub fn item_json(item: &Item, skip: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_map(item, skip, &mut out);
    out
}

fn write_map(map: &Item, skip: &[String], out: &mut Vec<u8>) {
    let mut names: Vec<&String> = map.keys().filter(|k| !skip.contains(k)).collect();
    names.sort_unstable();
    out.push(b'{');
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(name, out);
        out.push(b':');
        if let Some(value) = map.get(name) {
            write_attr(value, out);
        }
    }
    out.push(b'}');
}

fn write_attr(value: &AttributeValue, out: &mut Vec<u8>) {
    let open = |tag: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\":");
    };
    match value {
        AttributeValue::S(s) => {
            open("S", out);
            write_str(s, out);
        }
        AttributeValue::N(n) => {
            open("N", out);
            write_str(n, out);
        }
        AttributeValue::B(b) => {
            open("B", out);
            write_base64(b, out);
        }
        AttributeValue::Bool(b) => {
            open("BOOL", out);
            out.extend_from_slice(if *b { b"true" } else { b"false" });
        }
        AttributeValue::Null(b) => {
            open("NULL", out);
            out.extend_from_slice(if *b { b"true" } else { b"false" });
        }
        AttributeValue::M(m) => {
            open("M", out);
            write_map(m, &[], out);
        }
        AttributeValue::L(items) => {
            open("L", out);
            write_array(items, out, write_attr);
        }
        AttributeValue::Ss(items) => {
            open("SS", out);
            write_array(items, out, |s, out| write_str(s, out));
        }
        AttributeValue::Ns(items) => {
            open("NS", out);
            write_array(items, out, |s, out| write_str(s, out));
        }
        AttributeValue::Bs(items) => {
            open("BS", out);
            write_array(items, out, write_base64);
        }
        _ => {
            open(UNKNOWN_TAG, out);
            out.extend_from_slice(b"null");
        }
    }
    out.push(b'}');
}

fn write_array<T>(items: &[T], out: &mut Vec<u8>, mut each: impl FnMut(&T, &mut Vec<u8>)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(item, out);
    }
    out.push(b']');
}

fn write_base64(blob: &Blob, out: &mut Vec<u8>) {
    out.push(b'"');
    let text = base64::engine::general_purpose::STANDARD.encode(blob.as_ref());
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Writes `s` as a JSON string: quotes, backslashes and control characters escaped, the
/// rest (any Unicode) as is.
fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A key (or any item) as a [`Value`] holding its typed JSON: `{"U": {"B": "<base64>"}}`.
///
/// The types are kept so that [`key_from_value`] gives back exactly the same key.
pub fn key_to_value(key: &Item) -> Value {
    let map: ValueMap = key
        .iter()
        .map(|(k, v)| (Arc::from(k.as_str()), typed_value(v)))
        .collect();
    Value::Map(Arc::new(map))
}

/// One attribute value as typed JSON in a [`Value`] (`{"N": "12"}`).
pub fn typed_value(value: &AttributeValue) -> Value {
    let tagged = |tag: &str, inner: Value| Value::map([(tag, inner)]);
    let b64 = |b: &Blob| Value::str(base64::engine::general_purpose::STANDARD.encode(b.as_ref()));
    let strs = |items: &[String]| Value::list(items.iter().map(|s| Value::str(s.as_str())));
    match value {
        AttributeValue::S(s) => tagged("S", Value::str(s.as_str())),
        AttributeValue::N(n) => tagged("N", Value::str(n.as_str())),
        AttributeValue::B(b) => tagged("B", b64(b)),
        AttributeValue::Bool(b) => tagged("BOOL", Value::Bool(*b)),
        AttributeValue::Null(b) => tagged("NULL", Value::Bool(*b)),
        AttributeValue::M(m) => tagged("M", key_to_value(m)),
        AttributeValue::L(items) => tagged("L", Value::list(items.iter().map(typed_value))),
        AttributeValue::Ss(items) => tagged("SS", strs(items)),
        AttributeValue::Ns(items) => tagged("NS", strs(items)),
        AttributeValue::Bs(items) => tagged("BS", Value::list(items.iter().map(b64))),
        _ => tagged(UNKNOWN_TAG, Value::Null),
    }
}

/// The key a [`key_to_value`] value stands for.
pub fn key_from_value(value: &Value) -> Result<Item, KeyError> {
    let Value::Map(map) = value else {
        return Err(KeyError {
            path: String::new(),
            problem: format!(
                "a key must be a map of attribute name to typed value, not {}",
                value.type_name()
            ),
        });
    };
    map.iter()
        .map(|(name, typed)| Ok((name.to_string(), attribute_from_typed(typed, name)?)))
        .collect()
}

/// The attribute value a [`typed_value`] value stands for; `path` names it in errors.
pub fn attribute_from_typed<'a>(typed: &'a Value, path: &str) -> Result<AttributeValue, KeyError> {
    let problem = |p: String| KeyError {
        path: path.to_owned(),
        problem: p,
    };
    let Some(map) = typed.as_map().filter(|m| m.len() == 1) else {
        return Err(problem(
            "expected a typed value with one type tag, such as {\"S\": \"…\"}".to_owned(),
        ));
    };
    let Some((tag, inner)) = map.iter().next() else {
        return Err(problem("a typed value needs a type tag".to_owned()));
    };
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| problem(format!("{tag} value must be a string")))
    };
    let blob = |v: &Value| {
        let text = text(v)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Blob::new)
            .map_err(|e| problem(format!("{tag} value is not base64: {e}")))
    };
    let list = |v: &'a Value| {
        v.as_list()
            .ok_or_else(|| problem(format!("{tag} value must be a list")))
    };
    let flag = |v: &Value| {
        v.as_bool()
            .ok_or_else(|| problem(format!("{tag} value must be true or false")))
    };
    Ok(match &**tag {
        "S" => AttributeValue::S(text(inner)?),
        "N" => AttributeValue::N(text(inner)?),
        "B" => AttributeValue::B(blob(inner)?),
        "BOOL" => AttributeValue::Bool(flag(inner)?),
        "NULL" => AttributeValue::Null(flag(inner)?),
        "M" => {
            let members = key_from_value(inner).map_err(|e| KeyError {
                path: join(path, &e.path),
                problem: e.problem,
            })?;
            AttributeValue::M(members)
        }
        "L" => AttributeValue::L(
            list(inner)?
                .iter()
                .enumerate()
                .map(|(i, v)| attribute_from_typed(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        "SS" => AttributeValue::Ss(list(inner)?.iter().map(text).collect::<Result<_, _>>()?),
        "NS" => AttributeValue::Ns(list(inner)?.iter().map(text).collect::<Result<_, _>>()?),
        "BS" => AttributeValue::Bs(list(inner)?.iter().map(blob).collect::<Result<_, _>>()?),
        other => return Err(problem(format!("unknown type tag {other:?}"))),
    })
}

fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_owned(),
        (false, true) => parent.to_owned(),
        (false, false) => format!("{parent}.{child}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(bytes: &[u8]) -> AttributeValue {
        AttributeValue::B(Blob::new(bytes.to_vec()))
    }

    fn item(entries: Vec<(&str, AttributeValue)>) -> Item {
        entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn decode(bytes: &[u8]) -> Value {
        match sluice_formats::decode_item(bytes) {
            Ok(v) => v,
            Err(e) => panic!("{e}: {}", String::from_utf8_lossy(bytes)),
        }
    }

    fn bytes(b: &[u8]) -> Value {
        Value::Bytes(Arc::from(b))
    }

    /// Every type, nested, with names and strings that need escaping: what the decoder
    /// makes of the bytes is the item's plain value.
    #[test]
    fn every_type_decodes_as_the_formats_crate_reads_it() {
        let uuid: Vec<u8> = (0u8..16).collect();
        let nested = item(vec![
            (
                "inner list",
                AttributeValue::L(vec![AttributeValue::N("-1.5e3".into()), AttributeValue::Null(true)]),
            ),
            ("empty", AttributeValue::M(Item::new())),
        ]);
        let it = item(vec![
            ("U", blob(&uuid)),
            ("P", AttributeValue::S("+15551234567".into())),
            ("C", AttributeValue::Bool(true)),
            ("F", AttributeValue::Bool(false)),
            ("V", AttributeValue::N("18446744073709551615".into())),
            ("Z", AttributeValue::Null(true)),
            ("E", AttributeValue::S(String::new())),
            (
                "q\"\\\n\t\u{1}é✓",
                AttributeValue::S("a\"b\\c\r\u{7f}\u{0}\u{1f}😀".into()),
            ),
            ("M", AttributeValue::M(nested)),
            (
                "L",
                AttributeValue::L(vec![
                    blob(b""),
                    AttributeValue::S("x".into()),
                    AttributeValue::L(vec![]),
                ]),
            ),
            ("SS", AttributeValue::Ss(vec!["b".into(), "a".into()])),
            ("NS", AttributeValue::Ns(vec!["1".into(), "2.5".into()])),
            (
                "BS",
                AttributeValue::Bs(vec![Blob::new(vec![0xff]), Blob::new(vec![1, 2, 3])]),
            ),
            ("D", blob(br#"{"pni":"x"}"#)),
        ]);
        let got = decode(&item_json(&it, &[]));
        let expected = Value::map([
            ("U", bytes(&uuid)),
            ("P", Value::str("+15551234567")),
            ("C", Value::Bool(true)),
            ("F", Value::Bool(false)),
            ("V", Value::UInt(u64::MAX)),
            ("Z", Value::Null),
            ("E", Value::str("")),
            ("q\"\\\n\t\u{1}é✓", Value::str("a\"b\\c\r\u{7f}\u{0}\u{1f}😀")),
            (
                "M",
                Value::map([
                    ("inner list", Value::list([Value::from(-1500.0), Value::Null])),
                    ("empty", Value::map(Vec::<(&str, Value)>::new())),
                ]),
            ),
            ("L", Value::list([bytes(b""), Value::str("x"), Value::list([])])),
            ("SS", Value::list([Value::str("b"), Value::str("a")])),
            ("NS", Value::list([Value::Int(1), Value::from(2.5)])),
            ("BS", Value::list([bytes(&[0xff]), bytes(&[1, 2, 3])])),
            ("D", bytes(br#"{"pni":"x"}"#)),
        ]);
        assert_eq!(got, expected);
    }

    #[test]
    fn output_is_sorted_compact_typed_json() {
        let it = item(vec![
            ("V", AttributeValue::N("1".into())),
            ("C", AttributeValue::Bool(true)),
            ("U", blob(&[1, 2])),
            ("P", AttributeValue::S("+1555".into())),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&item_json(&it, &[])),
            r#"{"C":{"BOOL":true},"P":{"S":"+1555"},"U":{"B":"AQI="},"V":{"N":"1"}}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&item_json(&it, &["U".to_owned(), "V".to_owned()])),
            r#"{"C":{"BOOL":true},"P":{"S":"+1555"}}"#
        );
        assert_eq!(item_json(&Item::new(), &[]), b"{}");
    }

    #[test]
    fn keys_round_trip_through_values() {
        let key = item(vec![
            ("U", blob(&[0, 1, 254, 255])),
            ("R", AttributeValue::N("-0.5".into())),
        ]);
        let value = key_to_value(&key);
        assert_eq!(value.to_json_string(), r#"{"R":{"N":"-0.5"},"U":{"B":"AAH+/w=="}}"#);
        assert_eq!(key_from_value(&value), Ok(key));
        // Every type survives, and the formats crate reads the same typed values.
        let all = item(vec![
            ("s", AttributeValue::S("x".into())),
            ("n", AttributeValue::N("7".into())),
            ("t", AttributeValue::Bool(true)),
            ("z", AttributeValue::Null(true)),
            (
                "m",
                AttributeValue::M(item(vec![("a", AttributeValue::Ss(vec!["q".into()]))])),
            ),
            (
                "l",
                AttributeValue::L(vec![
                    AttributeValue::Ns(vec!["1".into()]),
                    AttributeValue::Bs(vec![Blob::new(vec![9])]),
                ]),
            ),
        ]);
        let value = key_to_value(&all);
        assert_eq!(key_from_value(&value).as_ref(), Ok(&all));
        let plain = |name: &str| value.get(name).map(sluice_formats::attribute_value);
        assert_eq!(plain("n"), Some(Ok(Value::Int(7))));
        assert_eq!(
            plain("m"),
            Some(Ok(Value::map([("a", Value::list([Value::str("q")]))])))
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_their_path() {
        let parse = |text: &str| key_from_value(&Value::from_json_str(text).unwrap_or_default());
        assert!(parse("[1]").is_err());
        assert_eq!(parse(r#"{"U":{"B":"!!"}}"#).map_err(|e| e.path), Err("U".to_owned()));
        assert_eq!(
            parse(r#"{"U":{"S":"a","N":"1"}}"#).map_err(|e| e.path),
            Err("U".to_owned())
        );
        assert_eq!(parse(r#"{"U":{"X":"a"}}"#).map_err(|e| e.path), Err("U".to_owned()));
        assert_eq!(parse(r#"{"U":{"N":1}}"#).map_err(|e| e.path), Err("U".to_owned()));
        assert_eq!(
            parse(r#"{"U":{"M":{"a":{"L":[{"S":1}]}}}}"#).map_err(|e| e.path),
            Err("U.a[0]".to_owned())
        );
        assert_eq!(parse("{}"), Ok(Item::new()));
    }
}
