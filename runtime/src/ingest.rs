//! Turning raw records into rows: decoding (format) and the envelope's key handling.

use std::sync::Arc;

use crate::record::{DeadLetter, Pos, key_from_fields};
use crate::spec::{Envelope, Format};
use crate::value::Value;

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
}

/// Decodes and keys raw records for one source.
#[derive(Clone, Debug)]
pub struct Ingester {
    format: Format,
    envelope: Envelope,
    stage: Arc<str>,
}

impl Ingester {
    /// An ingester for the source named `source` with its format and envelope.
    pub fn new(source: &str, format: Format, envelope: Envelope) -> Self {
        Ingester {
            format,
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
            Some(bytes) => match self.decode(bytes) {
                Ok(v) => Some(v),
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
                let key = match &val {
                    Some(v) => key_from_fields(v, &fields.fields),
                    None => match key.map(|k| self.decode(k)) {
                        Some(Ok(k)) => Ok(k),
                        Some(Err(reason)) => Err(format!("tombstone key: {reason}")),
                        None => Err("a tombstone without a key cannot delete anything".to_owned()),
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

    fn decode(&self, bytes: &[u8]) -> Result<Value, String> {
        match self.format {
            Format::Json => {
                let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
                let value = Value::from_json_str(text).map_err(|e| e.to_string())?;
                if matches!(value, Value::Map(_) | Value::Null) {
                    Ok(value)
                } else {
                    Err(format!("expected a JSON object, found {}", value.type_name()))
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
            Format::Json,
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
            key: keys(&["id"]),
            deleted_field: Some("deleted".into()),
        };
        let ing = Ingester::new("s", Format::Json, env);
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
}
