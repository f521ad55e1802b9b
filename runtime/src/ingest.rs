//! Turning raw records into rows: decoding (format) and the envelope's key handling.
//!
//! Decoders are supplied by the wiring ([`Decode`]), so formats live with the connectors
//! and the engine knows none of them but JSON. A decoder may also **drop** a record it can
//! prove irrelevant to every reader of the source (a filter pushed down into decoding), so
//! that records which would be thrown away anyway never become rows.

use std::sync::Arc;

use crate::record::{DeadLetter, Pos, key_from_fields};
use crate::spec::Envelope;
use crate::value::Value;

/// Decodes a record's payload bytes into a value.
pub trait Decode: Send + Sync {
    /// The value of `bytes`; `Ok(None)` drops the record (it cannot matter to any reader);
    /// `Err` is the reason it is dead-lettered.
    ///
    /// A dropped record is not a tombstone: tombstones are records without a payload, and
    /// never reach the decoder. Decoders of upsert sources never drop.
    fn decode(&self, bytes: &[u8]) -> Result<Option<Value>, String>;
}

/// The `json` format: one JSON object (or `null`, a tombstone) per record.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonDecoder;

impl Decode for JsonDecoder {
    fn decode(&self, bytes: &[u8]) -> Result<Option<Value>, String> {
        decode_json_object(bytes).map(Some)
    }
}

/// Decodes one JSON object (or `null`), the shape every JSON record and key must have.
pub fn decode_json_object(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let value = Value::from_json_str(text).map_err(|e| e.to_string())?;
    if matches!(value, Value::Map(_) | Value::Null) {
        Ok(value)
    } else {
        Err(format!("expected a JSON object, found {}", value.type_name()))
    }
}

/// The key of a record keyed by its message key: the JSON value it holds, or else its text.
///
/// Kafka keys are often bare strings (`user-17`) rather than JSON; both are accepted so a
/// topic keyed by a JSON producer and one keyed by a plain-string producer both work.
pub fn decode_message_key(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("message key is not UTF-8: {e}"))?;
    Ok(Value::from_json_str(text).unwrap_or_else(|_| Value::from(text)))
}

/// What one raw record became.
#[derive(Clone, Debug, PartialEq)]
pub enum Ingested {
    /// An event (append envelope): a row to insert.
    Event {
        /// The row key (`Null` when the source has no key).
        key: Value,
        /// The record.
        val: Value,
    },
    /// A new value for a key (upsert envelope); `None` is a tombstone.
    Upsert {
        /// The key.
        key: Value,
        /// The new value, or `None` to delete.
        val: Option<Value>,
    },
    /// The record was rejected.
    Dead(DeadLetter),
    /// The decoder dropped the record: no reader of the source needs it.
    Dropped,
}

/// Decodes and keys raw records for one source.
#[derive(Clone)]
pub struct Ingester {
    decoder: Arc<dyn Decode>,
    envelope: Envelope,
    stage: Arc<str>,
}

impl Ingester {
    /// An ingester for the source named `source` with its decoder and envelope.
    pub fn new(source: &str, decoder: Arc<dyn Decode>, envelope: Envelope) -> Self {
        Ingester {
            decoder,
            envelope,
            stage: Arc::from(format!("source {source}")),
        }
    }

    /// Decodes one record found at `pos`.
    pub fn ingest(&self, pos: Pos, key: Option<&[u8]>, payload: Option<&[u8]>) -> Ingested {
        let dead = |reason: String, raw: &[u8]| {
            Ingested::Dead(DeadLetter {
                pos,
                stage: self.stage.clone(),
                reason: reason.into(),
                raw: String::from_utf8_lossy(raw).into(),
            })
        };
        let value = match payload {
            None => None,
            Some(bytes) => match self.decoder.decode(bytes) {
                Ok(Some(v)) => Some(v),
                Ok(None) => return Ingested::Dropped,
                Err(reason) => return dead(reason, bytes),
            },
        };
        let raw = payload.unwrap_or_default();
        match &self.envelope {
            Envelope::Append { key: fields } => {
                let Some(val) = value else {
                    return dead("an append source got a tombstone (null value)".to_owned(), raw);
                };
                let key = match fields {
                    None => Value::Null,
                    Some(f) => match key_from_fields(&val, &f.fields) {
                        Ok(k) => k,
                        Err(reason) => return dead(reason, raw),
                    },
                };
                Ingested::Event { key, val }
            }
            Envelope::Upsert {
                key: fields,
                deleted_field,
            } => {
                let val = value.filter(|v| !v.is_null());
                let key = match (fields, &val) {
                    (Some(fields), Some(v)) => key_from_fields(v, &fields.fields),
                    (Some(_), None) => match key.map(decode_json_object) {
                        Some(Ok(k)) => Ok(k),
                        Some(Err(reason)) => Err(format!("tombstone key: {reason}")),
                        None => Err("a tombstone without a key cannot delete anything".to_owned()),
                    },
                    (None, _) => match key {
                        Some(bytes) => decode_message_key(bytes),
                        None => Err("a record without a message key cannot be upserted by it".to_owned()),
                    },
                };
                let key = match key {
                    Ok(k) => k,
                    Err(reason) => return dead(reason, raw),
                };
                let deleted = deleted_field
                    .as_deref()
                    .is_some_and(|f| val.as_ref().and_then(|v| v.get(f)) == Some(&Value::Bool(true)));
                Ingested::Upsert {
                    key,
                    val: if deleted { None } else { val },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{KeyFields, Loc};

    fn keys(fields: &[&str]) -> KeyFields {
        KeyFields {
            fields: fields
                .iter()
                .map(|f| f.split('.').map(str::to_owned).collect())
                .collect(),
            loc: Loc::default(),
            path: String::new(),
        }
    }

    const POS: Pos = Pos {
        source: 0,
        partition: 0,
        offset: 3,
    };

    #[test]
    fn append_keys_and_rejects() {
        let ing = Ingester::new(
            "s",
            Arc::new(JsonDecoder),
            Envelope::Append {
                key: Some(keys(&["a.b"])),
            },
        );
        match ing.ingest(POS, None, Some(br#"{"a":{"b":1}}"#)) {
            Ingested::Event { key, .. } => assert_eq!(key.to_json_string(), r#"{"a.b":1}"#),
            other => panic!("unexpected {other:?}"),
        }
        match ing.ingest(POS, None, Some(br#"{"a":2}"#)) {
            Ingested::Dead(d) => {
                assert_eq!(&*d.reason, "missing key field `a.b`");
                assert_eq!(d.pos, POS);
                assert_eq!(&*d.raw, r#"{"a":2}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(ing.ingest(POS, None, Some(b"{oops")), Ingested::Dead(_)));
        assert!(matches!(ing.ingest(POS, None, Some(b"[1]")), Ingested::Dead(_)));
    }

    #[test]
    fn upsert_tombstones() {
        let env = Envelope::Upsert {
            key: Some(keys(&["id"])),
            deleted_field: Some("deleted".into()),
        };
        let ing = Ingester::new("s", Arc::new(JsonDecoder), env);
        assert!(matches!(
            ing.ingest(POS, None, Some(br#"{"id":1,"deleted":true}"#)),
            Ingested::Upsert { val: None, .. }
        ));
        assert!(matches!(
            ing.ingest(POS, None, Some(br#"{"id":1,"x":2}"#)),
            Ingested::Upsert { val: Some(_), .. }
        ));
        assert!(matches!(ing.ingest(POS, None, Some(b"null")), Ingested::Dead(_)));
        assert!(matches!(
            ing.ingest(POS, Some(br#"{"id":1}"#), None),
            Ingested::Upsert { val: None, .. }
        ));
    }

    #[test]
    fn upsert_by_message_key() {
        let env = Envelope::Upsert {
            key: None,
            deleted_field: None,
        };
        let ing = Ingester::new("s", Arc::new(JsonDecoder), env);
        let key_of = |key: &[u8], payload: Option<&[u8]>| match ing.ingest(POS, Some(key), payload) {
            Ingested::Upsert { key, val } => (key, val.is_some()),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(key_of(b"user-17", Some(b"{}")), (Value::from("user-17"), true));
        assert_eq!(
            key_of(br#"{"id":3}"#, None),
            (Value::map([("id", Value::Int(3))]), false)
        );
        assert_eq!(key_of(b"42", None), (Value::Int(42), false));
        assert!(matches!(ing.ingest(POS, None, Some(b"{}")), Ingested::Dead(_)));
        assert!(matches!(ing.ingest(POS, Some(&[0xff]), Some(b"{}")), Ingested::Dead(_)));
    }
}
