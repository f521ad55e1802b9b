//! Record formats: DynamoDB JSON (change records and scanned items) and `cds-update`.
//!
//! The decoders turn one record's bytes into a [`Value`]; the engine's sources call them
//! through the binary's wiring, and the Kinesis and DynamoDB connectors will call the same
//! functions, so a record decodes identically from a file or a stream.
//!
//! **DynamoDB attributes** are single-tag objects and become plain values: `S` → string,
//! `N` → integer when the text is an integer that fits `i64` (or `u64`), else a float (which
//! keeps about 16 of DynamoDB's 38 digits), `B` → bytes (standard base64), `BOOL`, `NULL` →
//! null, `M` → map, `L` → list, and the sets `SS`, `NS`, `BS` → lists in their given order.
//! Anything else is an error naming the attribute path (`D`, `M.x`, `L[2]`).
//!
//! **`dynamodb-item`** ([`decode_item`]): an object of attribute name → typed value, or the
//! same wrapped as `{"Item": {…}}` (a `GetItem` response, or the AWS CLI's output).
//!
//! **`dynamodb-stream`** ([`decode_stream_record`]): a change record as Kinesis Data Streams
//! for DynamoDB delivers it (DynamoDB Streams records have the same fields) becomes
//!
//! ```text
//! {"eventName": "INSERT"|"MODIFY"|"REMOVE", "eventID": str|null, "tableName": str|null,
//!  "keys": map|null, "old": map|null, "new": map|null, "sequenceNumber": str|null,
//!  "approximateCreationTime": milliseconds|null}
//! ```
//!
//! `ApproximateCreationDateTime` is read as microseconds when
//! `ApproximateCreationDateTimePrecision` says `MICROSECOND`, as seconds when below 10¹¹
//! (DynamoDB Streams gives seconds, with a fraction), else as milliseconds (Kinesis).
//!
//! The parser behind it, [`StreamRecordRef`], checks the syntax of the whole record but
//! builds nothing until asked: [`ImageRef::raw`] hands out an attribute's typed JSON as
//! written, so a caller can compare attributes of the two images without decoding them.
//! Strings are skipped with `memchr`; nesting is limited to 128 levels. Control characters
//! inside strings are accepted, as most producers' parsers do.
//!
//! **`cds-update`** ([`encode_cds_update`], [`decode_cds_update`]): the contact-discovery
//! update `{"e164","uuid","canonicallyDiscoverable","pni","uak"}` exactly as the original
//! filter wrote it to Kinesis, with the uuid text as partition key.

mod cds_update;
mod dynamo;
mod scan;
mod stream;

use std::sync::Arc;

use sluice_runtime::Value;

pub use cds_update::{decode_cds_update, encode_cds_update};
pub use stream::{ImageRef, StreamRecordRef};

/// Why a record could not be decoded or encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not UTF-8.
    #[error("invalid UTF-8 at byte {0}")]
    Utf8(usize),
    /// The text is not valid JSON.
    #[error("invalid JSON at byte {at}: expected {expected}")]
    Json {
        /// Byte offset of the problem.
        at: usize,
        /// What the parser expected there.
        expected: &'static str,
    },
    /// A string has a bad escape sequence.
    #[error("invalid string escape: {0}")]
    Escape(&'static str),
    /// A typed attribute value is malformed.
    #[error("attribute {path}: {problem}")]
    Attribute {
        /// Where (`D`, `M.x`, `L[2]`).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A required field of a change record is absent.
    #[error("the change record has no {0}")]
    Missing(&'static str),
    /// A field that must be an object is not.
    #[error("{0} must be an object")]
    NotAnObject(&'static str),
    /// `eventName` is not one of the three events.
    #[error("eventName {0:?} is not INSERT, MODIFY or REMOVE")]
    EventName(String),
    /// `ApproximateCreationDateTime` is unusable.
    #[error("ApproximateCreationDateTime: {0}")]
    Time(String),
    /// A cds-update record is malformed.
    #[error("cds-update: {0}")]
    CdsUpdate(String),
}

/// Decodes a `dynamodb-item` record: a scanned item, bare or wrapped as `{"Item": {…}}`.
pub fn decode_item(bytes: &[u8]) -> Result<Value, FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|e| FormatError::Utf8(e.valid_up_to()))?;
    let mut cursor = scan::Cursor::new(text);
    if cursor.peek() != Some(b'{') {
        return Err(FormatError::NotAnObject("an item"));
    }
    // `{"Item": {...}}` is a wrapper when its value reads as an item; otherwise it is an
    // item with one attribute called `Item` (whose value is a typed value, not an item).
    let mut members = Vec::new();
    scan::Cursor::new(text).object(|cursor, key| {
        members.push((key, cursor.skip()?));
        Ok(())
    })?;
    if let [(key, inner)] = members.as_slice()
        && key.is("Item")
        && let Ok(item) = whole(inner, dynamo::item)
    {
        return Ok(Value::Map(Arc::new(item)));
    }
    whole(text, dynamo::item).map(|item| Value::Map(Arc::new(item)))
}

/// Runs `read` over all of `text`, which must hold nothing else.
fn whole<T>(text: &str, read: impl FnOnce(&mut scan::Cursor<'_>) -> Result<T, FormatError>) -> Result<T, FormatError> {
    let mut cursor = scan::Cursor::new(text);
    let value = read(&mut cursor)?;
    cursor.end()?;
    Ok(value)
}

/// Decodes a `dynamodb-stream` record (see the crate documentation for the shape).
pub fn decode_stream_record(bytes: &[u8]) -> Result<Value, FormatError> {
    StreamRecordRef::parse(bytes)?.to_value()
}
