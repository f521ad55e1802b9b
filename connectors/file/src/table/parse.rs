//! Parsing a whole table file into keyed rows: JSON lines, or TOML arrays of tables.
//!
//! Parsing never fails because of one bad row: a row that is not a JSON object or lacks a
//! key field is set aside as [`Rejected`], for the runtime to dead-letter. Only a TOML
//! document that does not parse as a whole (or is not UTF-8) is an error, because its rows
//! cannot be told apart.

use std::collections::BTreeMap;

use sluice_runtime::Value;
use sluice_runtime::record::key_from_fields;
use sluice_runtime::value::F64;
use toml_edit::{Item, Table as TomlTable, Value as TomlValue};

/// One well-formed, keyed row of a table file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TableRow {
    /// The line the row starts on (1-based), so rows are emitted in file order.
    pub line: u64,
    /// The row as canonical JSON (sorted keys, no spaces): what is emitted and hashed, so
    /// reformatting a row is not a change.
    pub json: Vec<u8>,
    /// [`fnv1a`] of `json`.
    pub hash: u64,
}

/// A row the runtime must dead-letter: not a JSON object, or missing a key field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rejected {
    /// The line it starts on (1-based): the ordinal its dead letter reports.
    pub line: u64,
    /// The bytes handed to the runtime, whose decoder or key extraction names the fault.
    pub bytes: Vec<u8>,
}

/// A table file as parsed.
#[derive(Debug, Default)]
pub(super) struct ParsedTable {
    /// Rows by key (the key fields as a JSON object); a key seen twice keeps its last row.
    pub rows: BTreeMap<String, TableRow>,
    /// Rows set aside, in file order.
    pub rejected: Vec<Rejected>,
    /// The last line had no newline and was rejected: the file may be mid-write.
    pub unterminated_reject: bool,
    /// Top-level TOML keys that are not arrays of tables, ignored.
    pub ignored: Vec<String>,
}

/// Why a table file could not be parsed at all (the previous table is kept).
#[derive(Debug, thiserror::Error)]
pub(super) enum ParseError {
    /// A TOML file must be UTF-8 as a whole.
    #[error("not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// The TOML document does not parse.
    #[error("invalid TOML at line {line}: {message}")]
    Toml {
        /// Where the parser stopped (1-based; 0 when it did not say).
        line: u64,
        /// The parser's message.
        message: String,
    },
}

impl ParsedTable {
    /// Adds `row` found at `line`, keyed by `keys`, or rejects it (with `raw` as its bytes)
    /// when a key field is missing.
    fn add(&mut self, line: u64, row: &Value, keys: &[Vec<String>], raw: impl FnOnce() -> Vec<u8>) {
        match key_from_fields(row, keys) {
            Ok(key) => {
                let json = row.to_json_string().into_bytes();
                // A fixed hash: row hashes are kept in checkpoints and must mean the same to the next
                // build.
                let hash = sluice_runtime::source::stable_hash(&json);
                self.rows.insert(key.to_json_string(), TableRow { line, json, hash });
            }
            Err(_) => self.rejected.push(Rejected { line, bytes: raw() }),
        }
    }
}

/// Parses JSON lines: every non-blank line is one row, a JSON object.
pub(super) fn json_lines(bytes: &[u8], keys: &[Vec<String>]) -> ParsedTable {
    let bytes = without_bom(bytes);
    let mut table = ParsedTable::default();
    let mut last_line = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        last_line = line;
        let row = std::str::from_utf8(raw)
            .ok()
            .and_then(|text| Value::from_json_str(text).ok())
            .filter(|v| matches!(v, Value::Map(_)));
        match row {
            Some(row) => table.add(line, &row, keys, || raw.to_vec()),
            // The raw line, so the dead letter shows what the file holds.
            None => table.rejected.push(Rejected {
                line,
                bytes: raw.to_vec(),
            }),
        }
    }
    table.unterminated_reject =
        bytes.last() != Some(&b'\n') && table.rejected.last().is_some_and(|r| r.line == last_line);
    table
}

/// Parses TOML: every table of every top-level array of tables (`[[subscriber]]`) is a row.
///
/// Other top-level keys are ignored and listed in [`ParsedTable::ignored`]: a table keyed
/// by id (`[subscriber.billing]`) would be a second way to write the same thing, with its
/// own questions (is the id also a field?), so only arrays of tables are rows.
pub(super) fn toml(bytes: &[u8], keys: &[Vec<String>]) -> Result<ParsedTable, ParseError> {
    let text = std::str::from_utf8(without_bom(bytes))?;
    let doc = toml_edit::Document::parse(text).map_err(|e| ParseError::Toml {
        line: e.span().map_or(0, |s| line_of(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let mut table = ParsedTable::default();
    let mut index = 0;
    for (name, item) in doc.iter() {
        let Item::ArrayOfTables(rows) = item else {
            table.ignored.push(name.to_owned());
            continue;
        };
        for row in rows.iter() {
            index += 1;
            // The header's line when the parser kept spans (it does), else the row's index.
            let line = row.span().map_or(index, |s| line_of(text, s.start));
            let value = table_value(row);
            table.add(line, &value, keys, || value.to_json_string().into_bytes());
        }
    }
    Ok(table)
}

/// `bytes` without a leading UTF-8 byte order mark, which some editors write and no parser
/// of the row would accept.
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// The 1-based line holding byte `at` of `text`.
fn line_of(text: &str, at: usize) -> u64 {
    let before = text.as_bytes().get(..at).unwrap_or(text.as_bytes());
    memchr::memchr_iter(b'\n', before).count() as u64 + 1
}

fn item_value(item: &Item) -> Value {
    match item {
        Item::None => Value::Null,
        Item::Value(v) => toml_value(v),
        Item::Table(t) => table_value(t),
        Item::ArrayOfTables(a) => Value::list(a.iter().map(table_value)),
    }
}

fn table_value(table: &TomlTable) -> Value {
    Value::map(table.iter().map(|(k, v)| (k, item_value(v))))
}

/// A TOML value as JSON would hold it: datetimes as their TOML text, and the non-finite
/// floats JSON cannot hold (`nan`, `inf`) as their TOML spelling rather than `null`.
fn toml_value(value: &TomlValue) -> Value {
    match value {
        TomlValue::String(s) => Value::str(s.value().as_str()),
        TomlValue::Integer(i) => Value::Int(*i.value()),
        TomlValue::Float(f) => {
            let x = *f.value();
            if x.is_finite() {
                Value::Float(F64(x))
            } else if x.is_nan() {
                Value::str("nan")
            } else if x > 0.0 {
                Value::str("inf")
            } else {
                Value::str("-inf")
            }
        }
        TomlValue::Boolean(b) => Value::Bool(*b.value()),
        TomlValue::Datetime(d) => Value::str(d.value().to_string()),
        TomlValue::Array(a) => Value::list(a.iter().map(toml_value)),
        TomlValue::InlineTable(t) => Value::map(t.iter().map(|(k, v)| (k, toml_value(v)))),
    }
}
