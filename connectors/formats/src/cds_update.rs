//! The `cds-update` format: the records the original contact-discovery filter wrote to
//! Kinesis, byte for byte.

use std::sync::Arc;

use base64::Engine as _;
use sluice_runtime::Value;
use sluice_runtime::value::{base64_encode, uuid_text};

use crate::FormatError;

fn problem(problem: impl Into<String>) -> FormatError {
    FormatError::CdsUpdate(problem.into())
}

/// A field of `val`, or an error saying it is missing.
fn required<'v>(val: &'v Value, name: &str) -> Result<&'v Value, FormatError> {
    val.get(name).ok_or_else(|| problem(format!("{name} is missing")))
}

/// The 16-byte account uuid of an update.
fn uuid_of(val: &Value) -> Result<[u8; 16], FormatError> {
    match required(val, "uuid")? {
        Value::Bytes(b) => {
            <[u8; 16]>::try_from(&b[..]).map_err(|_| problem(format!("uuid must be 16 bytes, not {}", b.len())))
        }
        _ => Err(problem("uuid must be bytes")),
    }
}

/// The partition key of an update, the uuid as 8-4-4-4-12 text, without encoding it.
pub fn cds_update_partition_key(val: &Value) -> Result<String, FormatError> {
    uuid_of(val).map(|uuid| uuid_text(&uuid))
}

/// Encodes an update `{e164, uuid, canonicallyDiscoverable, pni, uak}` as the original did.
///
/// That is: that field order, no spaces, bytes as standard base64 with padding, `pni` and
/// `uak` as `null` when null (all five must be present). Returns the partition key (the
/// uuid as 8-4-4-4-12 text) and the bytes.
pub fn encode_cds_update(val: &Value) -> Result<(String, Vec<u8>), FormatError> {
    if val.as_map().is_none() {
        return Err(problem(format!("an update must be a map, not {}", val.type_name())));
    }
    let Value::Str(e164) = required(val, "e164")? else {
        return Err(problem("e164 must be a string"));
    };
    let uuid = uuid_of(val)?;
    let Value::Bool(discoverable) = required(val, "canonicallyDiscoverable")? else {
        return Err(problem("canonicallyDiscoverable must be a boolean"));
    };
    let optional = |name: &str| match required(val, name)? {
        Value::Null => Ok(None),
        Value::Bytes(b) => Ok(Some(base64_encode(b))),
        _ => Err(problem(format!("{name} must be bytes or null"))),
    };
    let (pni, uak) = (optional("pni")?, optional("uak")?);
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"e164\":");
    serde_json::to_writer(&mut out, &**e164).map_err(|e| problem(e.to_string()))?;
    out.extend_from_slice(b",\"uuid\":\"");
    out.extend_from_slice(base64_encode(&uuid).as_bytes());
    out.extend_from_slice(b"\",\"canonicallyDiscoverable\":");
    out.extend_from_slice(if *discoverable { b"true" } else { b"false" });
    for (name, value) in [("pni", pni), ("uak", uak)] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Some(b64) => {
                out.push(b'"');
                out.extend_from_slice(b64.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok((uuid_text(&uuid), out))
}

/// Decodes an update written by [`encode_cds_update`] (or the original function): any key
/// order, unknown keys ignored, a missing `canonicallyDiscoverable` is false and a missing
/// `pni` or `uak` is null.
pub fn decode_cds_update(bytes: &[u8]) -> Result<Value, FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|e| FormatError::Utf8(e.valid_up_to()))?;
    let json = Value::from_json_str(text).map_err(|e| problem(format!("not JSON: {e}")))?;
    if json.as_map().is_none() {
        return Err(problem("an update must be a JSON object"));
    }
    let e164 = match required(&json, "e164")? {
        Value::Str(s) => Value::Str(Arc::clone(s)),
        _ => return Err(problem("e164 must be a string")),
    };
    let bytes_of = |name: &str| -> Result<Value, FormatError> {
        match json.get(name) {
            None | Some(Value::Null) => Ok(Value::Null),
            Some(Value::Str(s)) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map(|b| Value::Bytes(Arc::from(b)))
                .map_err(|e| problem(format!("{name} is not base64: {e}"))),
            Some(_) => Err(problem(format!("{name} must be a base64 string"))),
        }
    };
    required(&json, "uuid")?;
    let uuid = match bytes_of("uuid")? {
        Value::Bytes(b) if b.len() == 16 => Value::Bytes(b),
        Value::Bytes(b) => return Err(problem(format!("uuid must be 16 bytes, not {}", b.len()))),
        _ => return Err(problem("uuid must be a base64 string")),
    };
    let discoverable = match json.get("canonicallyDiscoverable") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(problem("canonicallyDiscoverable must be a boolean")),
    };
    Ok(Value::map([
        ("e164", e164),
        ("uuid", uuid),
        ("canonicallyDiscoverable", Value::Bool(discoverable)),
        ("pni", bytes_of("pni")?),
        ("uak", bytes_of("uak")?),
    ]))
}
