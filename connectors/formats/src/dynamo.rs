//! DynamoDB-typed attribute values (`{"S": "…"}`, `{"N": "…"}`, …) into plain values, from
//! record text (through the scanner) or from JSON that is already a [`Value`].

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine as _;
use sluice_runtime::Value;
use sluice_runtime::value::ValueMap;

use crate::FormatError;
use crate::scan::{Cursor, MAX_DEPTH, RawStr};

/// An attribute path for error messages (`D`, `M.x`, `L[2]`), rendered only when reporting.
#[derive(Clone, Copy)]
pub(crate) enum Path<'p> {
    /// A value with no name (given to [`crate::attribute_value`] on its own).
    Root,
    /// A member of an item or of a map attribute.
    Member(&'p Path<'p>, &'p str),
    /// An element of a list or set.
    Element(&'p Path<'p>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Member(Path::Root, name) => write!(f, "{name}"),
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

const NOT_TYPED: &str = "expected a typed value such as {\"S\": \"…\"}";
const NO_TAG: &str = "a typed value needs one type tag, it has none";
const TAGS: &str = "a typed value needs one type tag, it has several";
const TOO_DEEP: &str = "nested too deeply";

fn wrong_type(tag: &str, expected: &str) -> String {
    format!("{tag} value must be {expected}")
}

/// Reads one typed value at the cursor; `depth` counts the JSON levels around it.
pub(crate) fn typed(cursor: &mut Cursor<'_>, path: &Path<'_>, depth: usize) -> Result<Value, FormatError> {
    if cursor.peek() != Some(b'{') {
        return Err(attribute_error(path, NOT_TYPED));
    }
    if depth >= MAX_DEPTH {
        return Err(attribute_error(path, TOO_DEEP));
    }
    if !cursor.open_object()? {
        return Err(attribute_error(path, NO_TAG));
    }
    let tag = cursor.key()?;
    let value = tagged(cursor, tag, path, depth + 1)?;
    if cursor.next_member()? {
        return Err(attribute_error(path, TAGS));
    }
    Ok(value)
}

fn tagged(cursor: &mut Cursor<'_>, tag: RawStr<'_>, path: &Path<'_>, depth: usize) -> Result<Value, FormatError> {
    let tag = tag.decode()?;
    Ok(match &*tag {
        "S" => Value::Str(string(cursor, path, "S")?),
        "N" => number(&string(cursor, path, "N")?, path)?,
        "B" => Value::Bytes(binary(&string(cursor, path, "B")?, path)?),
        "BOOL" => Value::Bool(
            cursor
                .boolean()
                .map_err(|_| attribute_error(path, wrong_type("BOOL", "true or false")))?,
        ),
        // DynamoDB only writes `true`; `false` carries no other meaning, so it is null too.
        "NULL" => {
            cursor
                .boolean()
                .map_err(|_| attribute_error(path, wrong_type("NULL", "true")))?;
            Value::Null
        }
        "M" => {
            if cursor.peek() != Some(b'{') {
                return Err(attribute_error(path, wrong_type("M", "an object")));
            }
            Value::Map(Arc::new(map(cursor, path, depth)?))
        }
        "L" => list(cursor, path, "L", depth, |cursor, path| typed(cursor, path, depth + 1))?,
        "SS" => list(cursor, path, "SS", depth, |cursor, path| {
            Ok(Value::Str(string(cursor, path, "SS")?))
        })?,
        "NS" => list(cursor, path, "NS", depth, |cursor, path| {
            number(&string(cursor, path, "NS")?, path)
        })?,
        "BS" => list(cursor, path, "BS", depth, |cursor, path| {
            Ok(Value::Bytes(binary(&string(cursor, path, "BS")?, path)?))
        })?,
        other => return Err(attribute_error(path, format!("unknown type tag {other:?}"))),
    })
}

/// Reads an object of attribute name → typed value (an item, an image, or an `M`) whose
/// `{` is next; `depth` counts the JSON levels around it.
pub(crate) fn map(cursor: &mut Cursor<'_>, path: &Path<'_>, depth: usize) -> Result<ValueMap, FormatError> {
    let mut out = ValueMap::new();
    if depth >= MAX_DEPTH {
        return Err(attribute_error(path, TOO_DEEP));
    }
    if !cursor.open_object()? {
        return Ok(out);
    }
    loop {
        let name = name(cursor.key()?, path)?;
        let member = Path::Member(path, &name);
        let value = typed(cursor, &member, depth + 1)?;
        insert(&mut out, &name, value, &member)?;
        if !cursor.next_member()? {
            return Ok(out);
        }
    }
}

/// Adds an attribute to a map; a name given twice is an error, as DynamoDB never writes one.
pub(crate) fn insert(out: &mut ValueMap, name: &str, value: Value, path: &Path<'_>) -> Result<(), FormatError> {
    match out.insert(intern(name), value) {
        None => Ok(()),
        Some(_) => Err(attribute_error(path, "appears twice")),
    }
}

fn list(
    cursor: &mut Cursor<'_>,
    path: &Path<'_>,
    tag: &str,
    depth: usize,
    mut element: impl FnMut(&mut Cursor<'_>, &Path<'_>) -> Result<Value, FormatError>,
) -> Result<Value, FormatError> {
    if cursor.peek() != Some(b'[') {
        return Err(attribute_error(path, wrong_type(tag, "an array")));
    }
    if depth >= MAX_DEPTH {
        return Err(attribute_error(path, TOO_DEEP));
    }
    let mut out = Vec::new();
    if cursor.open_array()? {
        loop {
            out.push(element(cursor, &Path::Element(path, out.len()))?);
            if !cursor.next_element()? {
                break;
            }
        }
    }
    Ok(Value::List(Arc::from(out)))
}

fn string(cursor: &mut Cursor<'_>, path: &Path<'_>, tag: &str) -> Result<Arc<str>, FormatError> {
    if cursor.peek() != Some(b'"') {
        return Err(attribute_error(path, wrong_type(tag, "a string")));
    }
    let text = cursor
        .string()?
        .decode()
        .map_err(|e| attribute_error(path, format!("{tag} value: {e}")))?;
    Ok(Arc::from(text))
}

/// Decodes a member name, naming the map it is in when it has a bad escape.
fn name<'t>(raw: RawStr<'t>, path: &Path<'_>) -> Result<std::borrow::Cow<'t, str>, FormatError> {
    raw.decode().map_err(|e| match path {
        Path::Root => e,
        _ => attribute_error(path, format!("a member name: {e}")),
    })
}

/// A DynamoDB number: an integer that fits `i64` (or `u64`) stays exact; anything else is a
/// float, which keeps about 16 of DynamoDB's up to 38 significant digits.
pub(crate) fn number(text: &str, path: &Path<'_>) -> Result<Value, FormatError> {
    let bad = || attribute_error(path, format!("N value {text:?} is not a number"));
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if body.is_empty() {
        return Err(bad());
    }
    if body.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Ok(Value::UInt(u));
        }
    } else if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        // Rust's float parser also takes `inf`, `NaN` and the like, which are not numbers here.
        return Err(bad());
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::from(f)),
        _ => Err(bad()),
    }
}

/// Names longer than this are not interned: long names are rarely repeated attribute names.
const INTERN_MAX_LEN: usize = 32;
/// Slots of the name cache (a power of two).
const INTERN_SLOTS: usize = 256;

thread_local! {
    /// Recently seen attribute names, so records of one table share their name strings
    /// instead of allocating each name per record. A name that collides with another
    /// simply replaces it: the cache only saves work, it never decides anything.
    static NAMES: RefCell<Vec<Option<Arc<str>>>> = RefCell::new(vec![None; INTERN_SLOTS]);
}

/// A shared string equal to `name`.
pub(crate) fn intern(name: &str) -> Arc<str> {
    let bytes = name.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Arc::from(name);
    };
    if bytes.len() > INTERN_MAX_LEN {
        return Arc::from(name);
    }
    let slot = (bytes.len() * 31 + usize::from(first) * 7 + usize::from(last) * 3) % INTERN_SLOTS;
    NAMES.with_borrow_mut(|names| match names.get_mut(slot) {
        Some(Some(cached)) if **cached == *name => Arc::clone(cached),
        Some(entry) => Arc::clone(entry.insert(Arc::from(name))),
        None => Arc::from(name),
    })
}

thread_local! {
    /// Decoding space reused across values, so a `B` costs one allocation (the result).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Standard base64 with padding, as DynamoDB writes `B` values.
pub(crate) fn binary(text: &str, path: &Path<'_>) -> Result<Arc<[u8]>, FormatError> {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(text, buf)
            .map_err(|e| attribute_error(path, format!("B value is not base64: {e}")))?;
        let out = Arc::from(&buf[..]);
        // One huge blob should not pin its memory to the thread for good.
        if buf.capacity() > 1 << 16 {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

/// Decodes a typed value that is already natural JSON (`{"S": "x"}` as a map).
pub(crate) fn from_value(typed: &Value, path: &Path<'_>, depth: usize) -> Result<Value, FormatError> {
    let Value::Map(tags) = typed else {
        return Err(attribute_error(path, NOT_TYPED));
    };
    if depth >= MAX_DEPTH {
        return Err(attribute_error(path, TOO_DEEP));
    }
    let mut entries = tags.iter();
    let (tag, inner) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        (None, _) => return Err(attribute_error(path, NO_TAG)),
        (Some(_), Some(_)) => return Err(attribute_error(path, TAGS)),
    };
    let text = |tag: &str, v: &Value| match v {
        Value::Str(s) => Ok(Arc::clone(s)),
        _ => Err(attribute_error(path, wrong_type(tag, "a string"))),
    };
    let items = |tag: &str| match inner {
        Value::List(items) => Ok(items),
        _ => Err(attribute_error(path, wrong_type(tag, "an array"))),
    };
    let elements = |tag: &str, f: &dyn Fn(&Value, &Path<'_>) -> Result<Value, FormatError>| {
        let out: Result<Vec<Value>, FormatError> = items(tag)?
            .iter()
            .enumerate()
            .map(|(i, v)| f(v, &Path::Element(path, i)))
            .collect();
        Ok::<_, FormatError>(Value::List(Arc::from(out?)))
    };
    Ok(match &**tag {
        "S" => Value::Str(text("S", inner)?),
        "N" => number(&text("N", inner)?, path)?,
        "B" => Value::Bytes(binary(&text("B", inner)?, path)?),
        "BOOL" => match inner {
            Value::Bool(b) => Value::Bool(*b),
            _ => return Err(attribute_error(path, wrong_type("BOOL", "true or false"))),
        },
        "NULL" => match inner {
            Value::Bool(_) => Value::Null,
            _ => return Err(attribute_error(path, wrong_type("NULL", "true"))),
        },
        "M" => {
            let Value::Map(members) = inner else {
                return Err(attribute_error(path, wrong_type("M", "an object")));
            };
            let mut out = ValueMap::new();
            for (name, typed) in members.iter() {
                let value = from_value(typed, &Path::Member(path, name), depth + 1)?;
                out.insert(Arc::clone(name), value);
            }
            Value::Map(Arc::new(out))
        }
        "L" => elements("L", &|v, path| from_value(v, path, depth + 1))?,
        "SS" => elements("SS", &|v, path| match v {
            Value::Str(s) => Ok(Value::Str(Arc::clone(s))),
            _ => Err(attribute_error(path, wrong_type("SS", "a string"))),
        })?,
        "NS" => elements("NS", &|v, path| match v {
            Value::Str(s) => number(s, path),
            _ => Err(attribute_error(path, wrong_type("NS", "a string"))),
        })?,
        "BS" => elements("BS", &|v, path| match v {
            Value::Str(s) => binary(s, path).map(Value::Bytes),
            _ => Err(attribute_error(path, wrong_type("BS", "a string"))),
        })?,
        other => return Err(attribute_error(path, format!("unknown type tag {other:?}"))),
    })
}
