//! DynamoDB-typed attribute values (`{"S": "…"}`, `{"N": "…"}`, …) into plain values.

use std::sync::Arc;

use base64::Engine as _;
use sluice_runtime::Value;
use sluice_runtime::value::ValueMap;

use crate::FormatError;
use crate::scan::{Cursor, RawStr};

/// An attribute path for error messages (`D`, `M.x`, `L[2]`), built only when reporting.
#[derive(Clone, Copy)]
pub(crate) enum Path<'p> {
    /// A top-level attribute.
    Attribute(&'p str),
    /// A member of a map attribute.
    Member(&'p Path<'p>, &'p str),
    /// An element of a list or set.
    Element(&'p Path<'p>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Attribute(name) => write!(f, "{name}"),
            Path::Member(parent, name) => write!(f, "{parent}.{name}"),
            Path::Element(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn attribute_error(path: &Path<'_>, problem: impl Into<String>) -> FormatError {
    FormatError::Attribute {
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// Reads one typed value at the cursor.
pub(crate) fn typed(cursor: &mut Cursor<'_>, path: &Path<'_>) -> Result<Value, FormatError> {
    if cursor.peek() != Some(b'{') {
        return Err(attribute_error(path, "expected a typed value such as {\"S\": \"…\"}"));
    }
    let mut value = None;
    cursor.object(|cursor, tag| {
        if value.is_some() {
            return Err(attribute_error(path, "a typed value has exactly one type tag"));
        }
        value = Some(tagged(cursor, tag, path)?);
        Ok(())
    })?;
    value.ok_or_else(|| attribute_error(path, "a typed value has exactly one type tag, got none"))
}

fn tagged(cursor: &mut Cursor<'_>, tag: RawStr<'_>, path: &Path<'_>) -> Result<Value, FormatError> {
    let tag = tag.decode()?;
    Ok(match &*tag {
        "S" => Value::Str(Arc::from(string(cursor, path)?)),
        "N" => number(&string(cursor, path)?, path)?,
        "B" => Value::Bytes(binary(&string(cursor, path)?, path)?),
        "BOOL" => Value::Bool(
            cursor
                .boolean()
                .map_err(|_| attribute_error(path, "BOOL must be true or false"))?,
        ),
        "NULL" => {
            cursor
                .boolean()
                .map_err(|_| attribute_error(path, "NULL must be true"))?;
            Value::Null
        }
        "M" => Value::Map(Arc::new(map(cursor, path)?)),
        "L" => list(cursor, path, typed)?,
        "SS" => list(cursor, path, |cursor, path| {
            Ok(Value::Str(Arc::from(string(cursor, path)?)))
        })?,
        "NS" => list(cursor, path, |cursor, path| number(&string(cursor, path)?, path))?,
        "BS" => list(cursor, path, |cursor, path| {
            Ok(Value::Bytes(binary(&string(cursor, path)?, path)?))
        })?,
        other => return Err(attribute_error(path, format!("unknown type tag {other:?}"))),
    })
}

/// Reads a map of attribute name → typed value (an item, an image, or an `M`).
pub(crate) fn map(cursor: &mut Cursor<'_>, path: &Path<'_>) -> Result<ValueMap, FormatError> {
    let mut out = ValueMap::new();
    if cursor.peek() != Some(b'{') {
        return Err(attribute_error(path, "expected a map of attributes"));
    }
    cursor.object(|cursor, name| {
        let name = name.decode()?;
        let value = typed(cursor, &Path::Member(path, &name))?;
        out.insert(Arc::from(&*name), value);
        Ok(())
    })?;
    Ok(out)
}

/// Reads a top-level item: attribute name → typed value, errors naming the attribute.
pub(crate) fn item(cursor: &mut Cursor<'_>) -> Result<ValueMap, FormatError> {
    let mut out = ValueMap::new();
    cursor.object(|cursor, name| {
        let name = name.decode()?;
        let value = typed(cursor, &Path::Attribute(&name))?;
        out.insert(Arc::from(&*name), value);
        Ok(())
    })?;
    Ok(out)
}

fn list(
    cursor: &mut Cursor<'_>,
    path: &Path<'_>,
    mut element: impl FnMut(&mut Cursor<'_>, &Path<'_>) -> Result<Value, FormatError>,
) -> Result<Value, FormatError> {
    if cursor.peek() != Some(b'[') {
        return Err(attribute_error(path, "expected a list"));
    }
    let mut out = Vec::new();
    cursor.array(|cursor| {
        let value = element(cursor, &Path::Element(path, out.len()))?;
        out.push(value);
        Ok(())
    })?;
    Ok(Value::List(Arc::from(out)))
}

fn string(cursor: &mut Cursor<'_>, path: &Path<'_>) -> Result<String, FormatError> {
    if cursor.peek() != Some(b'"') {
        return Err(attribute_error(path, "expected a string"));
    }
    Ok(cursor.raw_string()?.decode()?.into_owned())
}

/// A DynamoDB number: an integer that fits `i64` (or `u64`) stays exact; anything else is a
/// float, which loses digits past about 16 (DynamoDB allows 38).
pub(crate) fn number(text: &str, path: &Path<'_>) -> Result<Value, FormatError> {
    let bad = || attribute_error(path, format!("N value {text:?} is not a number"));
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return Err(bad());
    }
    if body.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Ok(Value::UInt(u));
        }
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::from(f)),
        _ => Err(bad()),
    }
}

fn binary(text: &str, path: &Path<'_>) -> Result<Arc<[u8]>, FormatError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Arc::from)
        .map_err(|e| attribute_error(path, format!("B value is not base64: {e}")))
}
