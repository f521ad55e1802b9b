//! The contact-discovery view of an account item, read from its DynamoDB attributes.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_runtime::Value;
use sluice_runtime::value::{ValueMap, parse_uuid_text, uuid_text};

/// Shared bytes, as values hold them.
type Bytes = Arc<[u8]>;

/// What contact discovery sees of one account: (`uuid`, `e164`, `discoverable`, `pni`, `uak`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct View {
    /// The account UUID (ACI), attribute `U`.
    pub uuid: [u8; 16],
    /// The E.164 phone number, attribute `P`.
    pub e164: Arc<str>,
    /// Whether the account is canonically discoverable, attribute `C` (missing means false).
    pub discoverable: bool,
    /// The phone-number identity: attribute `PNI`, else `pni` of the `D` blob.
    pub pni: Option<Arc<[u8]>>,
    /// The unidentified-access key: attribute `UAK`, else `uak` of the `D` blob.
    pub uak: Option<Arc<[u8]>>,
}

/// Why an item has no contact-discovery view.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The image is not a map of attributes.
    #[error("the item is a {0}, not a map of attributes")]
    NotAnItem(&'static str),
    /// A required attribute is absent.
    #[error("the item has no attribute {0}")]
    Missing(&'static str),
    /// An attribute has the wrong type or an invalid value.
    #[error("attribute {attribute}: {problem}")]
    Invalid {
        /// The attribute (`D.pni` for a field of the blob).
        attribute: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(attribute: &'static str, problem: impl Into<String>) -> ViewError {
    ViewError::Invalid {
        attribute,
        problem: problem.into(),
    }
}

impl View {
    /// Reads the view of a decoded item (a map of attribute name to value).
    ///
    /// `U` (16 bytes) and `P` (E.164) are required; `C` must be a boolean when present;
    /// `PNI` must be 16 bytes. The `D` blob is parsed only when `PNI` or `UAK` is absent,
    /// and then must be a JSON object whose `pni` (UUID text) and `uak` (base64) are
    /// strings, null or absent.
    pub fn from_image(image: &Value) -> Result<View, ViewError> {
        let item = attributes(image)?;
        let uuid = match item.get("U") {
            None | Some(Value::Null) => return Err(ViewError::Missing("U")),
            Some(Value::Bytes(b)) => <[u8; 16]>::try_from(&b[..])
                .map_err(|_| invalid("U", format!("the account UUID has {} bytes, not 16", b.len())))?,
            Some(other) => return Err(invalid("U", format!("expected bytes (B), got {}", other.type_name()))),
        };
        let e164 = match item.get("P") {
            None | Some(Value::Null) => return Err(ViewError::Missing("P")),
            Some(Value::Str(s)) if is_e164(s) => Arc::clone(s),
            Some(Value::Str(s)) => {
                return Err(invalid(
                    "P",
                    format!("{s:?} is not an E.164 number (+ and 1-15 digits)"),
                ));
            }
            Some(other) => {
                return Err(invalid(
                    "P",
                    format!("expected a string (S), got {}", other.type_name()),
                ));
            }
        };
        let discoverable = match item.get("C") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(
                    "C",
                    format!("expected a boolean (BOOL), got {}", other.type_name()),
                ));
            }
        };
        let mut pni = match item.get("PNI") {
            None | Some(Value::Null) => None,
            Some(Value::Bytes(b)) if b.len() == 16 => Some(Arc::clone(b)),
            Some(Value::Bytes(b)) => return Err(invalid("PNI", format!("has {} bytes, not 16", b.len()))),
            Some(other) => return Err(invalid("PNI", format!("expected bytes (B), got {}", other.type_name()))),
        };
        let mut uak = match item.get("UAK") {
            None | Some(Value::Null) => None,
            Some(Value::Bytes(b)) => Some(Arc::clone(b)),
            Some(other) => return Err(invalid("UAK", format!("expected bytes (B), got {}", other.type_name()))),
        };
        if pni.is_none() || uak.is_none() {
            let (blob_pni, blob_uak) = from_blob(item.get("D"))?;
            pni = pni.or(blob_pni);
            uak = uak.or(blob_uak);
        }
        Ok(View {
            uuid,
            e164,
            discoverable,
            pni,
            uak,
        })
    }

    /// The same view with its number no longer discoverable: how a removal is published.
    pub fn removal(&self) -> View {
        View {
            discoverable: false,
            ..self.clone()
        }
    }

    /// The account UUID as canonical lowercase 8-4-4-4-12 text.
    pub fn uuid_text(&self) -> String {
        uuid_text(&self.uuid)
    }
}

/// The item version, attribute `V` (a number; missing means 0).
pub fn image_version(image: &Value) -> Result<u64, ViewError> {
    match attributes(image)?.get("V") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Int(v)) => u64::try_from(*v).map_err(|_| invalid("V", format!("version {v} is negative"))),
        Some(Value::UInt(v)) => Ok(*v),
        Some(other) => Err(invalid(
            "V",
            format!("expected an integer (N), got {}", other.type_name()),
        )),
    }
}

fn attributes(image: &Value) -> Result<&ValueMap, ViewError> {
    image.as_map().ok_or(ViewError::NotAnItem(image.type_name()))
}

/// `pni` and `uak` of the `D` blob; absent, null or no blob at all gives `None`.
fn from_blob(blob: Option<&Value>) -> Result<(Option<Bytes>, Option<Bytes>), ViewError> {
    let bytes = match blob {
        None | Some(Value::Null) => return Ok((None, None)),
        Some(Value::Bytes(b)) => b,
        Some(other) => return Err(invalid("D", format!("expected bytes (B), got {}", other.type_name()))),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("D", "the account data blob is not UTF-8 JSON"))?;
    let data =
        Value::from_json_str(text).map_err(|e| invalid("D", format!("the account data blob is not JSON: {e}")))?;
    let Value::Map(data) = data else {
        return Err(invalid("D", "the account data blob is not a JSON object"));
    };
    let pni = match data.get("pni") {
        None | Some(Value::Null) => None,
        Some(Value::Str(s)) => Some(Arc::from(
            parse_uuid_text(s).ok_or_else(|| invalid("D.pni", format!("{s:?} is not a UUID")))?,
        )),
        Some(other) => {
            return Err(invalid(
                "D.pni",
                format!("expected a UUID string, got {}", other.type_name()),
            ));
        }
    };
    let uak = match data.get("uak") {
        None | Some(Value::Null) => None,
        Some(Value::Str(s)) => Some(Arc::from(
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| invalid("D.uak", format!("not base64: {e}")))?,
        )),
        Some(other) => {
            return Err(invalid(
                "D.uak",
                format!("expected a base64 string, got {}", other.type_name()),
            ));
        }
    };
    Ok((pni, uak))
}

/// Whether `s` is an E.164 number as contact discovery carries it: `+`, then 1 to 15
/// digits, the first not `0` (the gRPC service sends the digits as an `int64`).
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(entries: &[(&str, Value)]) -> Value {
        Value::map(entries.iter().map(|(k, v)| (*k, v.clone())))
    }

    fn bytes(b: &[u8]) -> Value {
        Value::Bytes(Arc::from(b))
    }

    #[test]
    fn e164_numbers() {
        assert!(is_e164("+15550000011"));
        assert!(is_e164("+1"));
        assert!(!is_e164("15550000011"));
        assert!(!is_e164("+"));
        assert!(!is_e164("+0123"));
        assert!(!is_e164("+1555 000"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn attributes_win_over_the_blob() {
        let blob = br#"{"pni":"00112233-4455-6677-8899-aabbccddeeff","uak":"AAEC"}"#;
        let image = item(&[
            ("U", bytes(&[1; 16])),
            ("P", Value::str("+15551")),
            ("PNI", bytes(&[2; 16])),
            ("D", bytes(blob)),
        ]);
        let view = View::from_image(&image).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(view.pni.as_deref(), Some(&[2u8; 16][..]));
        assert_eq!(view.uak.as_deref(), Some(&[0u8, 1, 2][..]));
        assert!(!view.discoverable, "a missing C means not discoverable");
    }

    #[test]
    fn bad_items_say_what_is_wrong() {
        let cases = [
            (item(&[("P", Value::str("+1"))]), "the item has no attribute U"),
            (
                item(&[("U", bytes(&[1; 15])), ("P", Value::str("+1"))]),
                "attribute U: the account UUID has 15 bytes, not 16",
            ),
            (item(&[("U", bytes(&[1; 16]))]), "the item has no attribute P"),
            (
                item(&[("U", bytes(&[1; 16])), ("P", Value::str("555"))]),
                "attribute P: \"555\" is not an E.164 number (+ and 1-15 digits)",
            ),
            (
                item(&[
                    ("U", bytes(&[1; 16])),
                    ("P", Value::str("+1")),
                    ("C", Value::str("yes")),
                ]),
                "attribute C: expected a boolean (BOOL), got string",
            ),
            (
                item(&[("U", bytes(&[1; 16])), ("P", Value::str("+1")), ("PNI", bytes(&[1; 3]))]),
                "attribute PNI: has 3 bytes, not 16",
            ),
            (
                item(&[("U", bytes(&[1; 16])), ("P", Value::str("+1")), ("D", bytes(b"{"))]),
                "attribute D: the account data blob is not JSON",
            ),
            (
                item(&[
                    ("U", bytes(&[1; 16])),
                    ("P", Value::str("+1")),
                    ("D", bytes(br#"{"pni":"x"}"#)),
                ]),
                "attribute D.pni: \"x\" is not a UUID",
            ),
            (
                item(&[
                    ("U", bytes(&[1; 16])),
                    ("P", Value::str("+1")),
                    ("D", bytes(br#"{"uak":"!!"}"#)),
                ]),
                "attribute D.uak: not base64",
            ),
            (Value::str("x"), "the item is a string, not a map of attributes"),
        ];
        for (image, reason) in cases {
            let err = View::from_image(&image)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(reason), "{err:?} should start with {reason:?}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(image_version(&item(&[])), Ok(0));
        assert_eq!(image_version(&item(&[("V", Value::Int(7))])), Ok(7));
        assert!(image_version(&item(&[("V", Value::Int(-1))])).is_err());
        assert!(image_version(&item(&[("V", Value::str("7"))])).is_err());
    }
}
