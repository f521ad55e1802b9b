//! `Value`: the JSON-like record type of the generic operators and schemaless payloads.
//!
//! A `Value` is totally ordered and hashable so it can live in differential collections and
//! arrangements, and cheap to clone: strings, lists and maps sit behind `Arc`s, so cloning a
//! record to send it down two branches of a graph copies a pointer, not the payload.
//!
//! Two encodings exist on purpose. The derived `serde` implementation is the wire format timely
//! uses to move records between workers (bincode needs a tagged, non-self-describing form). JSON
//! goes through [`Value::from_json_str`] and [`Value::to_json_string`], which map to and from
//! natural JSON losslessly: integers stay integers (`1` and `1.0` are different values, as
//! they are in the source text), and object keys are kept in sorted order.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The map type inside a [`Value::Map`]: keys in sorted order, so output is deterministic.
pub type ValueMap = BTreeMap<Arc<str>, Value>;

/// A JSON-like value, ordered and hashable, with shared (cheap to clone) contents.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Value {
    /// JSON `null`; also the key of unkeyed records.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer (JSON integers that fit in `i64`).
    Int(i64),
    /// An unsigned integer larger than `i64::MAX`; smaller ones are always `Int`.
    UInt(u64),
    /// A floating-point number, totally ordered by [`f64::total_cmp`].
    Float(F64),
    /// A string.
    Str(Arc<str>),
    /// Raw bytes (not produced by JSON; used by binary formats such as DynamoDB `B`).
    Bytes(Arc<[u8]>),
    /// An ordered list.
    List(Arc<[Value]>),
    /// A map with string keys, sorted.
    Map(Arc<ValueMap>),
}

/// An `f64` with a total order, equality and hash, so it can be part of a [`Value`].
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// Why a piece of text is not a JSON value.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON: {0}")]
pub struct JsonError(#[from] serde_json::Error);

impl Value {
    /// Parses one JSON document into a `Value`.
    pub fn from_json_str(text: &str) -> Result<Value, JsonError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = JsonSeed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    /// Renders the value as compact JSON (bytes as base64 strings).
    pub fn to_json_string(&self) -> String {
        // Serialising a `Json` wrapper cannot fail: every variant has a JSON form and map keys
        // are strings.
        serde_json::to_string(&Json(self)).unwrap_or_else(|_| "null".to_owned())
    }

    /// A string value.
    pub fn str(s: impl Into<Arc<str>>) -> Value {
        Value::Str(s.into())
    }

    /// A map value from `(key, value)` pairs.
    pub fn map<K: Into<Arc<str>>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(Arc::new(entries.into_iter().map(|(k, v)| (k.into(), v)).collect()))
    }

    /// A list value.
    pub fn list(items: impl IntoIterator<Item = Value>) -> Value {
        Value::List(items.into_iter().collect())
    }

    /// The field `name` of a map, or `None` for a missing field or a non-map value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(name),
            _ => None,
        }
    }

    /// Follows a path of field names through nested maps.
    pub fn get_path<'a>(&'a self, path: &[impl AsRef<str>]) -> Option<&'a Value> {
        path.iter().try_fold(self, |v, name| v.get(name.as_ref()))
    }

    /// The string inside a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside an `Int` (or a `UInt`/`Float` that holds an exact `i64`).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            Value::Float(F64(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            _ => None,
        }
    }

    /// The number as an `f64`, for any numeric variant.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(F64(f)) => Some(*f),
            _ => None,
        }
    }

    /// The boolean inside a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The map inside a `Map`.
    pub fn as_map(&self) -> Option<&ValueMap> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The items of a `List`.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// Whether the value is `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The JSON type name, for error messages ("expected string, found number").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "object",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s.into())
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u64> for Value {
    fn from(u: u64) -> Self {
        match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(u),
        }
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(F64(f))
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

/// Serialises a [`Value`] as natural JSON (the derived impl is the tagged wire form).
pub struct Json<'a>(pub &'a Value);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(F64(f)) if f.is_finite() => s.serialize_f64(*f),
            // JSON has no NaN or infinity; null is what serde_json writes for them too.
            Value::Float(_) => s.serialize_unit(),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_str(&base64_encode(b)),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(&Json(item))?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m.iter() {
                    map.serialize_entry(&**k, &Json(v))?;
                }
                map.end()
            }
        }
    }
}

/// Standard base64 (with padding), used to render `Bytes` as JSON strings.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A UUID as canonical lowercase 8-4-4-4-12 text.
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Parses 8-4-4-4-12 UUID text (either case).
pub fn parse_uuid_text(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let mut hex = bytes.iter().filter(|&&b| b != b'-');
    let mut out = [0u8; 16];
    for byte in &mut out {
        let hi = char::from(*hex.next()?).to_digit(16)?;
        let lo = char::from(*hex.next()?).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Deserialises natural JSON straight into a [`Value`], without an intermediate tree.
struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::from(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(F64(f)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.into()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s.into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Value::List(items.into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = ValueMap::new();
        while let Some(key) = access.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = access.next_value_seed(JsonSeed)?;
            // A repeated key keeps its last value, as most JSON parsers do.
            map.insert(intern(&key), value);
        }
        Ok(Value::Map(Arc::new(map)))
    }
}

/// Field names seen by this thread, so records of one shape share their key strings.
const INTERN_MAX_KEYS: usize = 4096;
const INTERN_MAX_LEN: usize = 64;

thread_local! {
    static KEYS: std::cell::RefCell<std::collections::HashMap<Box<str>, Arc<str>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A shared string for an object key: the same allocation for every record that uses it.
///
/// JSON records repeat their field names; without this every record paid one allocation
/// per field. The table is bounded, so maps keyed by ids (unbounded key sets) only fill it
/// once and then bypass it.
fn intern(key: &str) -> Arc<str> {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(shared) = keys.get(key) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(key);
        if keys.len() < INTERN_MAX_KEYS && key.len() <= INTERN_MAX_LEN {
            keys.insert(key.into(), shared.clone());
        }
        shared
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_round_trips() {
        let uuid: [u8; 16] = std::array::from_fn(|i| u8::try_from(i).unwrap_or(0) * 17);
        let text = uuid_text(&uuid);
        assert_eq!(text, "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(parse_uuid_text(&text), Some(uuid));
        assert_eq!(parse_uuid_text(&text.to_uppercase()), Some(uuid));
        assert_eq!(parse_uuid_text("00112233-4455-6677-8899-aabbccddeef"), None);
        assert_eq!(parse_uuid_text("00112233x4455-6677-8899-aabbccddeeff"), None);
        assert_eq!(parse_uuid_text("g0112233-4455-6677-8899-aabbccddeeff"), None);
    }

    #[test]
    fn json_round_trip_is_lossless() {
        let text = r#"{"a":1,"b":1.5,"c":"x","d":[true,null,{"e":18446744073709551615}],"f":-3}"#;
        let v = Value::from_json_str(text).expect("valid json");
        assert_eq!(v.to_json_string(), text);
        assert_eq!(v.get_path(&["d"]).and_then(Value::as_list).map(<[_]>::len), Some(3));
        assert_eq!(Value::from_json_str("1").ok(), Some(Value::Int(1)));
        assert_ne!(Value::from_json_str("1.0").ok(), Some(Value::Int(1)));
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(Value::from_json_str("{\"a\":").is_err());
        assert!(Value::from_json_str("{} trailing").is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn floats_are_totally_ordered() {
        let mut v = [Value::from(2.0), Value::from(f64::NAN), Value::from(-1.0)];
        v.sort();
        assert_eq!(v[0], Value::from(-1.0));
    }
}
