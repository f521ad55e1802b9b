//! Request bodies to log lines: the `/publish` envelope, the data object, the written line.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Standard base64, padded or not.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// URL-safe base64, padded or not.
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A body that is not an acceptable event (`400`, with this as the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadEvent(pub(crate) String);

/// The topic and the data (validated JSON object text, as published) of a `/publish` body.
#[derive(Debug)]
pub(crate) struct Published<'a> {
    pub(crate) topic: Cow<'a, str>,
    pub(crate) data: Vec<u8>,
}

/// Parses `{"Topic": "...", "Payload": "<base64 of a JSON object>"}`, keys in any case.
pub(crate) fn parse_publish(body: &[u8]) -> Result<Published<'_>, BadEvent> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let envelope = de
        .deserialize_any(EnvelopeVisitor)
        .and_then(|e| de.end().map(|()| e))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => BadEvent(e.to_string()),
            _ => BadEvent(format!("the body is not JSON: {e}")),
        })?;
    let topic = envelope.topic.ok_or_else(|| BadEvent("the body has no Topic".into()))?;
    if topic.is_empty() {
        return Err(BadEvent("Topic is empty".into()));
    }
    let payload = envelope
        .payload
        .ok_or_else(|| BadEvent("the body has no Payload".into()))?;
    // `-` and `_` occur only in the URL-safe alphabet, `+` and `/` only in the standard one.
    let engine = if payload.contains(['-', '_']) {
        &URL_SAFE
    } else {
        &STANDARD
    };
    let data = engine
        .decode(payload.as_bytes())
        .map_err(|e| BadEvent(format!("Payload is not base64: {e}")))?;
    check_object(&data).map_err(|e| BadEvent(format!("Payload {e}")))?;
    Ok(Published { topic, data })
}

/// Checks that `data` is one JSON object (UTF-8, nothing after it); the reason otherwise.
pub(crate) fn check_object(data: &[u8]) -> Result<(), String> {
    // serde_json does not check the UTF-8 of strings it skips; the log must hold only UTF-8.
    let text = std::str::from_utf8(data).map_err(|e| format!("is not UTF-8: {e}"))?;
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| format!("is not JSON: {e}"))?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') => Ok(()),
        Some(b'[') => Err("must be a JSON object, not an array".into()),
        _ => Err("must be a JSON object".into()),
    }
}

/// The log line `{"topic":T,"data":D}\n` for `data`, a JSON object checked by
/// [`check_object`], written without its insignificant whitespace and otherwise as sent.
pub(crate) fn event_line(topic: &str, data: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = Vec::with_capacity(topic.len() + data.len() + 24);
    line.extend_from_slice(b"{\"topic\":");
    serde_json::to_writer(&mut line, topic)?;
    line.extend_from_slice(b",\"data\":");
    minify_into(&mut line, data);
    line.extend_from_slice(b"}\n");
    Ok(line)
}

/// Appends valid JSON `json` to `out` without whitespace between tokens, so a pretty-printed
/// object stays on one line; key order, numbers and escapes are kept exactly.
fn minify_into(out: &mut Vec<u8>, json: &[u8]) {
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        if b == b'"' {
            // Copy the whole string: find its closing quote, skipping escaped characters.
            let mut j = i + 1;
            while j < json.len() {
                match memchr::memchr2(b'"', b'\\', &json[j..]) {
                    Some(k) if json[j + k] == b'\\' => j += k + 2,
                    Some(k) => {
                        j += k + 1;
                        break;
                    }
                    None => j = json.len(),
                }
            }
            let close = j.min(json.len());
            out.extend_from_slice(&json[i..close]);
            i = close;
        } else {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                out.push(b);
            }
            i += 1;
        }
    }
}

/// The fields of a `/publish` body.
struct Envelope<'a> {
    topic: Option<Cow<'a, str>>,
    payload: Option<Cow<'a, str>>,
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with Topic and Payload")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope {
            topic: None,
            payload: None,
        };
        while let Some(key) = map.next_key_seed(Text("a key"))? {
            let (slot, name) = if key.eq_ignore_ascii_case("topic") {
                (&mut envelope.topic, "Topic")
            } else if key.eq_ignore_ascii_case("payload") {
                (&mut envelope.payload, "Payload")
            } else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if slot.is_some() {
                // Keys match in any case, so `topic` and `Topic` would be two answers to one
                // question: refuse rather than pick one.
                return Err(de::Error::custom(format_args!(
                    "the body has {name} twice (keys are matched case-insensitively)"
                )));
            }
            *slot = Some(map.next_value_seed(Text(name))?);
        }
        Ok(envelope)
    }
}

/// A JSON string named for error messages, borrowed from the body when it has no escapes.
struct Text(&'static str);

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as a string", self.0)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD as PADDED, URL_SAFE_NO_PAD};
    use serde_json::json;

    use super::*;

    fn body(topic: &str, data: &str) -> Vec<u8> {
        json!({"Topic": topic, "Payload": PADDED.encode(data)})
            .to_string()
            .into_bytes()
    }

    fn reason(body: &[u8]) -> String {
        match parse_publish(body) {
            Ok(p) => panic!("accepted {p:?}"),
            Err(BadEvent(reason)) => reason,
        }
    }

    #[test]
    fn envelopes_in_any_case_and_base64_flavour() {
        let sent = body("orders", r#"{"body": {"x": 1}}"#);
        let p = parse_publish(&sent).expect("valid");
        assert_eq!(p.topic, "orders");
        assert_eq!(p.data, br#"{"body": {"x": 1}}"#);
        let data = r#"{"k":"??>>"}"#; // encodes to `+`/`/` in the standard alphabet
        for payload in [PADDED.encode(data), URL_SAFE_NO_PAD.encode(data), STANDARD.encode(data)] {
            let body = json!({"topic": "t", "PAYLOAD": payload}).to_string();
            assert_eq!(parse_publish(body.as_bytes()).expect("valid").data, data.as_bytes());
        }
        let extra = json!({"tOpIc": "t", "payload": PADDED.encode("{}"), "other": [1]}).to_string();
        assert_eq!(parse_publish(extra.as_bytes()).expect("valid").topic, "t");
    }

    #[test]
    fn refusals_say_why() {
        assert!(reason(b"{\"Topic\": ").contains("not JSON"));
        assert!(reason(b"[1]").contains("a JSON object with Topic and Payload"));
        assert!(reason(br#"{"Payload": "e30="}"#).contains("no Topic"));
        assert!(reason(br#"{"Topic": "", "Payload": "e30="}"#).contains("empty"));
        assert!(reason(br#"{"Topic": 5, "Payload": "e30="}"#).contains("expected Topic as a string"));
        assert!(reason(br#"{"Topic": "t"}"#).contains("no Payload"));
        assert!(reason(br#"{"Topic": "t", "topic": "u", "Payload": "e30="}"#).contains("Topic twice"));
        assert!(reason(br#"{"Topic": "t", "Payload": "e30=", "PAYLOAD": "e30="}"#).contains("Payload twice"));
        assert!(reason(br#"{"Topic": "t", "Payload": "not base64!"}"#).contains("not base64"));
        assert!(reason(&body("t", "[1, 2]")).contains("not an array"));
        assert!(reason(&body("t", "\"text\"")).contains("must be a JSON object"));
        assert!(reason(&body("t", "{\"a\": 1} x")).contains("not JSON"));
        let invalid_utf8 = json!({"Topic": "t", "Payload": PADDED.encode(b"{\"a\": \"\xff\"}")}).to_string();
        assert!(reason(invalid_utf8.as_bytes()).contains("UTF-8"));
    }

    #[test]
    fn lines_are_compact_and_keep_the_data_as_sent() {
        let data = b"{\n  \"z\": 1.50,\n  \"a\": \"x \\\" y\\\\\",\t\"n\": [1, 2]\r\n}";
        check_object(data).expect("object");
        let line = event_line("top\"ic", data).expect("line");
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "{\"topic\":\"top\\\"ic\",\"data\":{\"z\":1.50,\"a\":\"x \\\" y\\\\\",\"n\":[1,2]}}\n"
        );
        let line = event_line("t", br#"{"s": " spaced  \\"}"#).expect("line");
        let parsed: serde_json::Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(parsed, json!({"topic": "t", "data": {"s": " spaced  \\"}}));
    }
}
