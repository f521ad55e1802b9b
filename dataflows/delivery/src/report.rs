//! Delivery reports: the JSON event decoded into a typed [`Report`], with its error code.
//!
//! Decoding is strict about the fields the rules read (a report without `app`, `push_token`,
//! `ts`, a known `protocol` or `status` cannot be placed, so it is dead-lettered with the
//! reason) and lenient about everything else: unknown fields and unknown error codes pass.
//!
//! The error code of a failed delivery is, in order:
//! 1. `error_code`, a string (the legacy protocol's vocabulary, e.g. `NotRegistered`);
//! 2. else, from the `error` object as FCM HTTP v1 returns it: the `errorCode` of the
//!    `details` entry whose `@type` ends in `fcm.v1.FcmError`, else the top-level `status`
//!    (e.g. `PERMISSION_DENIED`), else the numeric HTTP `code` rendered `HTTP_<code>`
//!    (e.g. `HTTP_401`, which is how a legacy 401 without a body is classified).
//!
//! Either protocol may use either form: the vocabularies are interleaved during the
//! migration, so the decoder does not insist that legacy reports use `error_code`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_runtime::Value;

/// The `@type` suffix of the FCM v1 error detail that carries `errorCode`.
const FCM_ERROR_TYPE: &str = "fcm.v1.FcmError";
/// The `@type` suffix of the google.rpc detail that lists field violations.
const BAD_REQUEST_TYPE: &str = "google.rpc.BadRequest";
/// The field a violation must name to be about the token.
const TOKEN_FIELD: &str = "message.token";
/// The message FCM gives for a malformed token (matched case-insensitively).
const INVALID_TOKEN_MESSAGE: &str = "not a valid fcm registration token";

/// The push protocol that produced a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// The legacy FCM HTTP protocol (`fcm-legacy`).
    Legacy,
    /// FCM HTTP v1 (`fcm-v1`).
    V1,
}

impl Protocol {
    /// Every protocol, in table order.
    pub const ALL: [Protocol; 2] = [Protocol::Legacy, Protocol::V1];

    /// The protocol's name in reports and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Legacy => "fcm-legacy",
            Protocol::V1 => "fcm-v1",
        }
    }

    /// The protocol with this name, if any.
    pub fn parse(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// What the error object says beyond its code, for the table's `when` conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Facts {
    /// The error is about the token: a `BadRequest` field violation on `message.token`, or
    /// the message "not a valid FCM registration token".
    pub token_field_violation: bool,
    /// The error carries an `fcm.v1.FcmError` detail.
    pub fcm_error: bool,
}

/// How a delivery went.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Delivered (`status: ok`), with the canonical replacement token a legacy success may
    /// carry (`registration_id`; ignored for v1, which has none).
    Delivered {
        /// The token to use instead of this one, if the provider named one.
        replacement: Option<Arc<str>>,
    },
    /// Not delivered (`status: error`).
    Failed {
        /// The error code, as described in the module documentation.
        code: Arc<str>,
        /// Evidence for the table's conditions.
        facts: Facts,
    },
}

/// One delivery report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Report {
    /// The Firebase app id.
    pub app: Arc<str>,
    /// The device token the message was sent to.
    pub push_token: Arc<str>,
    /// The protocol that produced the report.
    pub protocol: Protocol,
    /// When the provider answered, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// Whether the message was classified as spam.
    pub spam: bool,
    /// The message's id (empty when the report has none); breaks ties between equal `ts`.
    pub message_id: Arc<str>,
    /// How the delivery went.
    pub outcome: Outcome,
}

/// Why a report could not be decoded; the text is the dead letter's `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The event is not a JSON object.
    #[error("a delivery report must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A required field is absent or null.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        found: String,
    },
    /// `app` or `push_token` is the empty string.
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    /// `protocol` is not a known protocol.
    #[error("unknown protocol `{0}`; expected `fcm-legacy` or `fcm-v1`")]
    UnknownProtocol(String),
    /// `status` is neither `ok` nor `error`.
    #[error("unknown status `{0}`; expected `ok` or `error`")]
    UnknownStatus(String),
    /// A failed delivery without any error information.
    #[error("an error report needs `error_code` or an `error` object")]
    NoError,
    /// An `error` object without any code in it.
    #[error("field `error` has no FcmError `errorCode`, no `status` and no numeric `code`")]
    NoCode,
}

impl Report {
    /// Decodes a report from its JSON event.
    pub fn decode(event: &Value) -> Result<Report, DecodeError> {
        if event.as_map().is_none() {
            return Err(DecodeError::NotAnObject(event.type_name()));
        }
        let app = non_empty(event, "app")?;
        let push_token = non_empty(event, "push_token")?;
        let protocol_name = required_str(event, "protocol")?;
        let protocol =
            Protocol::parse(&protocol_name).ok_or_else(|| DecodeError::UnknownProtocol(protocol_name.to_string()))?;
        let ts = match event.get("ts").filter(|v| !v.is_null()) {
            None => return Err(DecodeError::Missing("ts")),
            Some(v) => v
                .as_i64()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| wrong_type("ts", "a non-negative integer (milliseconds)", v))?,
        };
        let spam = match present(event, "spam") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| wrong_type("spam", "a boolean", v))?,
        };
        let message_id = optional_str(event, "message_id")?.unwrap_or_else(|| Arc::from(""));
        let status = required_str(event, "status")?;
        let outcome = match &*status {
            "ok" => Outcome::Delivered {
                replacement: match protocol {
                    Protocol::Legacy => {
                        optional_str(event, "registration_id")?.filter(|r| !r.is_empty() && *r != push_token)
                    }
                    Protocol::V1 => None,
                },
            },
            "error" => failure(event)?,
            other => return Err(DecodeError::UnknownStatus(other.to_owned())),
        };
        Ok(Report {
            app,
            push_token,
            protocol,
            ts,
            spam,
            message_id,
            outcome,
        })
    }

    /// The error code, for failed deliveries.
    pub fn code(&self) -> Option<&Arc<str>> {
        match &self.outcome {
            Outcome::Failed { code, .. } => Some(code),
            Outcome::Delivered { .. } => None,
        }
    }
}

/// The code and facts of a failed delivery.
fn failure(event: &Value) -> Result<Outcome, DecodeError> {
    let error = present(event, "error");
    let facts = match error {
        Some(e) if e.as_map().is_some() => facts(e)?,
        Some(e) => return Err(wrong_type("error", "an object", e)),
        None => Facts::default(),
    };
    let code = match (optional_str(event, "error_code")?, error) {
        (Some(code), _) => code,
        (None, Some(error)) => v1_code(error)?,
        (None, None) => return Err(DecodeError::NoError),
    };
    Ok(Outcome::Failed { code, facts })
}

/// The code of an FCM v1 error object: FcmError `errorCode`, else `status`, else `HTTP_<code>`.
fn v1_code(error: &Value) -> Result<Arc<str>, DecodeError> {
    let from_detail = details(error)?
        .iter()
        .find(|d| type_ends_with(d, FCM_ERROR_TYPE))
        .and_then(|d| d.get("errorCode"))
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    if let Some(code) = from_detail {
        return Ok(Arc::from(code));
    }
    if let Some(status) = error.get("status").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        return Ok(Arc::from(status));
    }
    match error.get("code").and_then(Value::as_i64) {
        Some(http) => Ok(Arc::from(format!("HTTP_{http}"))),
        None => Err(DecodeError::NoCode),
    }
}

/// The evidence the table's conditions look at.
fn facts(error: &Value) -> Result<Facts, DecodeError> {
    let details = details(error)?;
    let violation = details.iter().filter(|d| type_ends_with(d, BAD_REQUEST_TYPE)).any(|d| {
        d.get("fieldViolations").and_then(Value::as_list).is_some_and(|vs| {
            vs.iter()
                .any(|v| v.get("field").and_then(Value::as_str) == Some(TOKEN_FIELD))
        })
    });
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .is_some_and(|m| m.to_ascii_lowercase().contains(INVALID_TOKEN_MESSAGE));
    Ok(Facts {
        token_field_violation: violation || message,
        fcm_error: details.iter().any(|d| type_ends_with(d, FCM_ERROR_TYPE)),
    })
}

/// The `details` list of an error object (empty when absent).
fn details(error: &Value) -> Result<&[Value], DecodeError> {
    match error.get("details").filter(|d| !d.is_null()) {
        None => Ok(&[]),
        Some(d) => d.as_list().ok_or_else(|| wrong_type("error.details", "a list", d)),
    }
}

fn type_ends_with(detail: &Value, suffix: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(suffix))
}

/// A field that is present and not null.
fn present<'v>(event: &'v Value, field: &str) -> Option<&'v Value> {
    event.get(field).filter(|v| !v.is_null())
}

fn required_str(event: &Value, field: &'static str) -> Result<Arc<str>, DecodeError> {
    optional_str(event, field)?.ok_or(DecodeError::Missing(field))
}

fn non_empty(event: &Value, field: &'static str) -> Result<Arc<str>, DecodeError> {
    let s = required_str(event, field)?;
    if s.is_empty() {
        Err(DecodeError::Empty(field))
    } else {
        Ok(s)
    }
}

fn optional_str(event: &Value, field: &'static str) -> Result<Option<Arc<str>>, DecodeError> {
    match present(event, field) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(Arc::clone(s))),
        Some(v) => Err(wrong_type(field, "a string", v)),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value) -> DecodeError {
    DecodeError::WrongType {
        field,
        expected,
        found: found.type_name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<Report, DecodeError> {
        Report::decode(&Value::from_json_str(json).expect("test json"))
    }

    fn code(json: &str) -> String {
        decode(json)
            .expect("decodes")
            .code()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    const BASE: &str = r#""app":"a","push_token":"t","ts":5,"status":"error""#;

    #[test]
    fn v1_code_prefers_fcm_error_then_status_then_http() {
        let fcm = r#"{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}"#;
        let with_detail =
            format!(r#"{{{BASE},"protocol":"fcm-v1","error":{{"code":404,"status":"NOT_FOUND","details":[{fcm}]}}}}"#);
        assert_eq!(code(&with_detail), "UNREGISTERED");
        let status_only =
            format!(r#"{{{BASE},"protocol":"fcm-v1","error":{{"code":403,"status":"PERMISSION_DENIED"}}}}"#);
        assert_eq!(code(&status_only), "PERMISSION_DENIED");
        let http_only = format!(r#"{{{BASE},"protocol":"fcm-legacy","error":{{"code":401}}}}"#);
        assert_eq!(code(&http_only), "HTTP_401");
        let legacy = format!(r#"{{{BASE},"protocol":"fcm-legacy","error_code":"NotRegistered"}}"#);
        assert_eq!(code(&legacy), "NotRegistered");
    }

    #[test]
    fn token_facts_are_read_from_details_and_message() {
        let violation = r#"{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"bad"}]}"#;
        let json = format!(
            r#"{{{BASE},"protocol":"fcm-v1","error":{{"status":"INVALID_ARGUMENT","details":[{violation}]}}}}"#
        );
        let Outcome::Failed { facts, .. } = decode(&json).expect("decodes").outcome else {
            panic!("failed outcome")
        };
        assert!(facts.token_field_violation && !facts.fcm_error);
        let json = format!(
            r#"{{{BASE},"protocol":"fcm-v1","error":{{"status":"INVALID_ARGUMENT","message":"The registration token is Not a valid FCM registration token"}}}}"#
        );
        let Outcome::Failed { facts, .. } = decode(&json).expect("decodes").outcome else {
            panic!("failed outcome")
        };
        assert!(facts.token_field_violation);
    }

    #[test]
    fn bad_reports_name_the_problem() {
        let cases = [
            ("[1]", "a delivery report must be a JSON object, found list"),
            (
                r#"{"app":"a","ts":1,"protocol":"fcm-v1","status":"ok"}"#,
                "missing field `push_token`",
            ),
            (
                r#"{"app":"a","push_token":7,"ts":1,"protocol":"fcm-v1","status":"ok"}"#,
                "field `push_token` must be a string, found number",
            ),
            (
                r#"{"app":"","push_token":"t","ts":1,"protocol":"fcm-v1","status":"ok"}"#,
                "field `app` must not be empty",
            ),
            (
                r#"{"app":"a","push_token":"t","ts":"1","protocol":"fcm-v1","status":"ok"}"#,
                "field `ts` must be a non-negative integer (milliseconds), found string",
            ),
            (
                r#"{"app":"a","push_token":"t","ts":1,"protocol":"apns","status":"ok"}"#,
                "unknown protocol `apns`; expected `fcm-legacy` or `fcm-v1`",
            ),
            (
                r#"{"app":"a","push_token":"t","ts":1,"protocol":"fcm-v1","status":"maybe"}"#,
                "unknown status `maybe`; expected `ok` or `error`",
            ),
            (
                r#"{"app":"a","push_token":"t","ts":1,"protocol":"fcm-v1","status":"error"}"#,
                "an error report needs `error_code` or an `error` object",
            ),
            (
                r#"{"app":"a","push_token":"t","ts":1,"protocol":"fcm-v1","status":"error","error":{"message":"x"}}"#,
                "field `error` has no FcmError `errorCode`, no `status` and no numeric `code`",
            ),
        ];
        for (json, reason) in cases {
            assert_eq!(
                decode(json).map(|_| ()).map_err(|e| e.to_string()),
                Err(reason.to_owned()),
                "{json}"
            );
        }
    }

    #[test]
    fn registration_id_is_a_legacy_replacement_only() {
        let legacy =
            r#"{"app":"a","push_token":"t","ts":1,"protocol":"fcm-legacy","status":"ok","registration_id":"n"}"#;
        assert_eq!(
            decode(legacy).expect("decodes").outcome,
            Outcome::Delivered {
                replacement: Some(Arc::from("n"))
            }
        );
        let same = r#"{"app":"a","push_token":"t","ts":1,"protocol":"fcm-legacy","status":"ok","registration_id":"t"}"#;
        assert_eq!(
            decode(same).expect("decodes").outcome,
            Outcome::Delivered { replacement: None }
        );
        let v1 = r#"{"app":"a","push_token":"t","ts":1,"protocol":"fcm-v1","status":"ok","registration_id":"n"}"#;
        assert_eq!(
            decode(v1).expect("decodes").outcome,
            Outcome::Delivered { replacement: None }
        );
    }
}
