//! Record formats: DynamoDB JSON (change records and scanned items) and `cds-update`.
//!
//! The decoders turn one record's bytes into a [`Value`]; the engine's sources call them
//! through the binary's wiring, and the Kinesis and DynamoDB connectors will call the same
//! functions, so a record decodes identically from a file or a stream.
//!
//! **DynamoDB attributes** are single-tag objects and become plain values: `S` → string,
//! `N` → `Int` when the text is an integer that fits `i64`, `UInt` when it only fits `u64`,
//! else a float; DynamoDB allows 38 significant digits and an `f64` keeps about 16, so the
//! rest are lost (and a number beyond the `f64` range is an error). A leading `+`, leading
//! zeros, `.5` and `5.` are read as Rust reads them; `inf`, `NaN` and hex are not numbers.
//! `B` → bytes (standard base64 with padding, canonical), `BOOL`, `NULL` → null (`false`
//! is taken too), `M` → map, `L` → list, and the sets `SS`,
//! `NS`, `BS` → lists in their given order. Anything else (an unknown tag, none or several
//! tags, a wrong JSON type inside) is an error naming the attribute path (`D`, `M.x`,
//! `L[2]`). An attribute name given twice in one item or map is an error too: DynamoDB never
//! writes one, and keeping either would be a guess. [`attribute_value`] does the same for a
//! typed value that is already a [`Value`].
//!
//! **`dynamodb-item`** ([`decode_item`]): an object of attribute name → typed value, or the
//! same wrapped as `{"Item": {…}}` (a `GetItem` response, or the AWS CLI's output). The two
//! readings never both succeed, so an item with a single attribute called `Item` still works.
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
//! `ApproximateCreationDateTimePrecision` says `MICROSECOND` (truncated to the millisecond),
//! as seconds when below 10¹¹ (DynamoDB Streams gives seconds with a fraction; rounded to the
//! nearest millisecond), else as milliseconds (Kinesis; a fraction is dropped). A negative
//! time is an error. Other fields, at the top and inside `dynamodb`, are checked for syntax
//! and ignored; a field the decoder reads given twice is an error.
//!
//! The parser behind it, [`StreamRecordRef`], checks the syntax of the whole record (and that
//! it holds nothing after its object) but builds nothing until asked: [`ImageRef::raw`] hands
//! out an attribute's typed JSON as written, so a caller can compare attributes of the two
//! images without decoding them (of an attribute written twice, `raw` finds the first; only
//! decoding notices the duplicate). Base64, numbers and type tags inside images are checked
//! only when decoded, so an attribute never read is never judged. An [`ImageRef`] is `Copy`:
//! a fixed table of where the first 16 attributes are (within 64 KiB of the image's start);
//! later ones are found by scanning the rest of the image again. Strings are skipped a word
//! at a time, then with `memchr`; escape sequences are checked, but control characters inside
//! strings are accepted, as most producers' parsers do. Nesting is limited to 128 levels
//! everywhere, so hostile input cannot exhaust the stack.
//!
//! Decoded attribute names are shared through a small per-thread cache, so records of one
//! table do not each allocate their names.
//!
//! **`cds-update`** ([`encode_cds_update`], [`decode_cds_update`]): the contact-discovery
//! update `{"e164","uuid","canonicallyDiscoverable","pni","uak"}` exactly as the original
//! filter wrote it to Kinesis, with the uuid text ([`uuid_text`]) as partition key. Encoding
//! requires all five fields (`pni` and `uak` may be null); decoding ignores unknown keys and
//! reads a missing `canonicallyDiscoverable` as false and a missing `pni` or `uak` as null.

mod cds_update;
mod dynamo;
mod scan;
mod stream;

use std::sync::Arc;

use sluice_runtime::Value;

pub use cds_update::{cds_update_partition_key, decode_cds_update, encode_cds_update};
pub use sluice_runtime::value::{parse_uuid_text, uuid_text};
pub use stream::{ImageRef, StreamRecordRef};

use dynamo::Path;
use scan::Cursor;

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
    /// A string's `\u` escapes do not form a character.
    #[error("invalid string escape: {0}")]
    Escape(&'static str),
    /// A typed attribute value is malformed.
    #[error("{}: {problem}", attribute_label(path))]
    Attribute {
        /// Where (`D`, `M.x`, `L[2]`; empty for a value given on its own).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A required field of a change record is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field that must be an object is not.
    #[error("{0} must be an object")]
    NotAnObject(&'static str),
    /// `eventName` is not one of the three events.
    #[error("eventName {0:?} is not INSERT, MODIFY or REMOVE")]
    EventName(String),
    /// Another field of a change record is unusable.
    #[error("{field}: {problem}")]
    Field {
        /// The field as the record names it.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A cds-update record is malformed.
    #[error("cds-update: {0}")]
    CdsUpdate(String),
}

fn attribute_label(path: &str) -> String {
    if path.is_empty() {
        "typed value".to_owned()
    } else {
        format!("attribute {path:?}")
    }
}

/// Decodes a `dynamodb-item` record: a scanned item, bare or wrapped as `{"Item": {…}}`.
pub fn decode_item(bytes: &[u8]) -> Result<Value, FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|e| FormatError::Utf8(e.valid_up_to()))?;
    let bare = match item(text, 0) {
        Ok(item) => return Ok(item),
        Err(e @ (FormatError::Utf8(_) | FormatError::Json { .. } | FormatError::NotAnObject(_))) => return Err(e),
        Err(e) => e,
    };
    // Only a failed bare reading can be a wrapper (the two never both succeed).
    let Some((inner_at, inner_is_one_tag)) = wrapper(text) else {
        return Err(bare);
    };
    let mut cursor = Cursor::at(text, inner_at);
    match dynamo::map(&mut cursor, &Path::Root, 1) {
        Ok(map) => Ok(Value::Map(Arc::new(map))),
        // `{"Item": {"N": "x"}}` reads best as an attribute `Item`, `{"Item": {"U": …}}` as
        // a wrapper: report the reading the writer most likely meant.
        Err(_) if inner_is_one_tag => Err(bare),
        Err(inner) => Err(inner),
    }
}

/// Reads `text` as one item and nothing else.
fn item(text: &str, at: usize) -> Result<Value, FormatError> {
    let mut cursor = Cursor::at(text, at);
    if cursor.peek() != Some(b'{') {
        return Err(FormatError::NotAnObject("an item"));
    }
    let map = dynamo::map(&mut cursor, &Path::Root, 0)?;
    cursor.end()?;
    Ok(Value::Map(Arc::new(map)))
}

/// If `text` is `{"Item": {…}}`: where the inner object starts, and whether it has a single
/// member named like a type tag.
fn wrapper(text: &str) -> Option<(usize, bool)> {
    let mut cursor = Cursor::new(text);
    if !cursor.open_object().ok()? || !cursor.key().ok()?.is("Item") || cursor.peek() != Some(b'{') {
        return None;
    }
    let inner_at = cursor.pos();
    let mut inner = cursor;
    cursor.skip(1).ok()?;
    if cursor.next_member().ok()? || cursor.end().is_err() {
        return None;
    }
    let one_tag = inner.open_object().ok()?
        && matches!(
            &*inner.key().ok()?.decode().ok()?,
            "S" | "N" | "B" | "BOOL" | "NULL" | "M" | "L" | "SS" | "NS" | "BS"
        )
        && inner.skip(2).is_ok()
        && inner.next_member().ok() == Some(false);
    Some((inner_at, one_tag))
}

/// Decodes a `dynamodb-stream` record (see the crate documentation for the shape).
pub fn decode_stream_record(bytes: &[u8]) -> Result<Value, FormatError> {
    StreamRecordRef::parse(bytes)?.to_value()
}

/// Decodes one DynamoDB-typed attribute value that is already natural JSON, such as the
/// map `{"N": "12"}`, into its plain value (`12`).
pub fn attribute_value(typed: &Value) -> Result<Value, FormatError> {
    dynamo::from_value(typed, &Path::Root, 0)
}
