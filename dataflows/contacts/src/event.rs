//! The inputs, decoded: client changes ([`ClientChange`]) and contact-data mappings
//! ([`Mapping`]).
//!
//! Decoding is strict about what the rules read (an event without `client_id`, `ts`, a
//! known `type` or its type's fields cannot be applied, so it is dead-lettered with the
//! reason) and lenient about the rest: unknown fields pass, `properties` may be absent (no
//! property changes), and the optional flags `is_anonymous` and
//! `should_update_suite_contact_fields` default to `false` when absent or null.
//! `old_app_code` is not read by the rules, but if present it must be a string.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_runtime::Value;
use sluice_runtime::value::ValueMap;

/// Shared strings, as they come out of decoded `Value`s.
pub(crate) type Str = Arc<str>;

/// The change types of `client_changes`, in the order they are listed in errors.
pub const CHANGE_TYPES: [&str; 4] = ["client", "push-token", "contact-field", "app-code-mismatch"];

/// One event of `client_changes`: which client, and what changed when.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientChange {
    /// The client the change is about.
    pub client_id: Str,
    /// The change.
    pub change: Change,
}

/// A change of one client, ordered by `ts` and then by its body (see [`Body`]), so that
/// "the latest change" never depends on arrival order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Change {
    /// The producer's time in milliseconds (the request order).
    pub ts: u64,
    /// What changed.
    pub body: Body,
}

/// What a change says. At equal `ts` the variant order breaks ties (a mismatch beats a
/// contact field, which beats a push token, which beats a client event), then the fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Body {
    /// `type = client`: direct properties of the client.
    Client {
        /// The app code the request came with.
        app_code: Str,
        /// The properties the event sets (an empty map when it has none).
        properties: Arc<ValueMap>,
    },
    /// `type = push-token`: the client's push token, or `None` to clear it.
    PushToken {
        /// The app code the request came with.
        app_code: Str,
        /// The new token; `None` clears it.
        push_token: Option<Str>,
    },
    /// `type = contact-field`: the field that identifies the client's contact.
    ContactField(ContactField),
    /// `type = app-code-mismatch`: the client now lives under `new_app_code`.
    AppCodeMismatch {
        /// The app code the client moves to.
        new_app_code: Str,
    },
}

/// A `contact-field` change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContactField {
    /// The app code the request came with.
    pub app_code: Str,
    /// The contact field's id (`contact_field_id`).
    pub field_id: i64,
    /// The contact field's value (`contact_field_value`).
    pub value: Str,
    /// Whether the contact is anonymous (`is_anonymous`, default `false`).
    pub is_anonymous: bool,
    /// Whether the suite's contact fields follow it (`should_update_suite_contact_fields`,
    /// default `false`).
    pub should_update_suite_contact_fields: bool,
}

impl Body {
    /// The app code the client lives under after this change.
    pub fn app_code(&self) -> &Str {
        match self {
            Body::Client { app_code, .. } | Body::PushToken { app_code, .. } => app_code,
            Body::ContactField(f) => &f.app_code,
            Body::AppCodeMismatch { new_app_code } => new_app_code,
        }
    }
}

/// One row of `contact_data`: (`app_code`, `contact_field_id`, `contact_field_value`) →
/// `contact_id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mapping {
    /// The app code the mapping belongs to.
    pub app_code: Str,
    /// The contact field's id.
    pub field_id: i64,
    /// The contact field's value.
    pub value: Str,
    /// The contact the field identifies.
    pub contact_id: Str,
}

/// Why an input record could not be decoded; the text is the dead letter's `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is not a JSON object.
    #[error("{what} must be a JSON object, found {found}")]
    NotAnObject {
        /// What the record should be ("a client change", "a contact-data row").
        what: &'static str,
        /// The JSON type it was.
        found: &'static str,
    },
    /// A required field is absent (or null where null has no meaning).
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// The JSON type it was.
        found: &'static str,
    },
    /// An identifier is the empty string.
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    /// `type` is not one of [`CHANGE_TYPES`].
    #[error("unknown type `{0}`; expected `client`, `push-token`, `contact-field` or `app-code-mismatch`")]
    UnknownType(String),
}

impl ClientChange {
    /// Decodes a `client_changes` event.
    pub fn decode(event: &Value) -> Result<ClientChange, DecodeError> {
        if event.as_map().is_none() {
            return Err(DecodeError::NotAnObject {
                what: "a client change",
                found: event.type_name(),
            });
        }
        let kind = required_str(event, "type")?;
        let client_id = non_empty(event, "client_id")?;
        let ts = timestamp(event)?;
        let body = match &*kind {
            "client" => Body::Client {
                app_code: non_empty(event, "app_code")?,
                properties: match present(event, "properties") {
                    None => Arc::default(),
                    Some(Value::Map(m)) => Arc::clone(m),
                    Some(v) => return Err(wrong_type("properties", "an object", v)),
                },
            },
            "push-token" => Body::PushToken {
                app_code: non_empty(event, "app_code")?,
                push_token: match event.get("push_token") {
                    None => return Err(DecodeError::Missing("push_token")),
                    Some(Value::Null) => None,
                    Some(Value::Str(s)) if s.is_empty() => return Err(DecodeError::Empty("push_token")),
                    Some(Value::Str(s)) => Some(Arc::clone(s)),
                    Some(v) => return Err(wrong_type("push_token", "a string or null", v)),
                },
            },
            "contact-field" => Body::ContactField(ContactField {
                app_code: non_empty(event, "app_code")?,
                field_id: field_id(event)?,
                value: non_empty(event, "contact_field_value")?,
                is_anonymous: flag(event, "is_anonymous")?,
                should_update_suite_contact_fields: flag(event, "should_update_suite_contact_fields")?,
            }),
            "app-code-mismatch" => {
                if let Some(v) = present(event, "old_app_code").filter(|v| v.as_str().is_none()) {
                    return Err(wrong_type("old_app_code", "a string", v));
                }
                Body::AppCodeMismatch {
                    new_app_code: non_empty(event, "new_app_code")?,
                }
            }
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        };
        Ok(ClientChange {
            client_id,
            change: Change { ts, body },
        })
    }
}

impl Mapping {
    /// Decodes a `contact_data` row's value.
    pub fn decode(row: &Value) -> Result<Mapping, DecodeError> {
        if row.as_map().is_none() {
            return Err(DecodeError::NotAnObject {
                what: "a contact-data row",
                found: row.type_name(),
            });
        }
        Ok(Mapping {
            app_code: non_empty(row, "app_code")?,
            field_id: field_id(row)?,
            value: non_empty(row, "contact_field_value")?,
            contact_id: non_empty(row, "contact_id")?,
        })
    }
}

/// A field that is present and not null.
fn present<'v>(event: &'v Value, field: &str) -> Option<&'v Value> {
    event.get(field).filter(|v| !v.is_null())
}

fn required_str(event: &Value, field: &'static str) -> Result<Str, DecodeError> {
    match present(event, field) {
        None => Err(DecodeError::Missing(field)),
        Some(Value::Str(s)) => Ok(Arc::clone(s)),
        Some(v) => Err(wrong_type(field, "a string", v)),
    }
}

fn non_empty(event: &Value, field: &'static str) -> Result<Str, DecodeError> {
    let s = required_str(event, field)?;
    if s.is_empty() {
        Err(DecodeError::Empty(field))
    } else {
        Ok(s)
    }
}

fn timestamp(event: &Value) -> Result<u64, DecodeError> {
    match present(event, "ts") {
        None => Err(DecodeError::Missing("ts")),
        Some(Value::UInt(u)) => Ok(*u),
        Some(v) => v
            .as_i64()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| wrong_type("ts", "a non-negative integer (milliseconds)", v)),
    }
}

fn field_id(event: &Value) -> Result<i64, DecodeError> {
    match present(event, "contact_field_id") {
        None => Err(DecodeError::Missing("contact_field_id")),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| wrong_type("contact_field_id", "an integer", v)),
    }
}

fn flag(event: &Value, field: &'static str) -> Result<bool, DecodeError> {
    match present(event, field) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| wrong_type(field, "a boolean", v)),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value) -> DecodeError {
    DecodeError::WrongType {
        field,
        expected,
        found: found.type_name(),
    }
}
