//! What a delivery is: the request a webhook sink sends for one event and one subscriber.
//!
//! Everything here is a pure function of the event and the subscriber, so a replay builds
//! byte-identical deliveries with the same ids.

use std::fmt::Write as _;
use std::sync::Arc;

use sluice_runtime::{Pos, Time, Value};

/// The request description of an event (`data`), read and checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Upper-cased `http_method`, `POST` when absent.
    pub method: Arc<str>,
    /// `headers`: names and string values.
    pub headers: Vec<(Arc<str>, Arc<str>)>,
    /// The JSON of `body`, `{}` when absent: the exact bytes sent (and signed).
    pub body: Arc<str>,
    /// `query_params`, in key order.
    pub query: Vec<(Arc<str>, Value)>,
    /// `path_params`.
    pub path: Value,
}

/// Why an event's request description is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A part has the wrong type.
    #[error("`data.{field}` must be {expected}, not {found}")]
    Type {
        /// The part.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A header value is not a string.
    #[error("header `{0}` must have a string value")]
    Header(String),
    /// The method is not an HTTP token.
    #[error("`data.http_method` `{0}` is not an HTTP method")]
    Method(String),
}

impl Request {
    /// Reads the request description of an event's `data` (which must be an object).
    pub fn from_data(data: &Value) -> Result<Request, RequestError> {
        let part = |field: &'static str, expected: &'static str| -> Result<Option<&Value>, RequestError> {
            match data.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v @ Value::Map(_)) if expected == "an object" => Ok(Some(v)),
                Some(v @ Value::Str(_)) if expected == "a string" => Ok(Some(v)),
                Some(v) => Err(RequestError::Type {
                    field,
                    expected,
                    found: v.type_name(),
                }),
            }
        };
        let method = match part("http_method", "a string")?.and_then(Value::as_str) {
            None => Arc::from("POST"),
            Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => Arc::from(m.to_ascii_uppercase()),
            Some(m) => return Err(RequestError::Method(m.to_owned())),
        };
        let mut headers = Vec::new();
        if let Some(map) = part("headers", "an object")?.and_then(Value::as_map) {
            for (name, value) in map {
                match value {
                    Value::Str(s) => headers.push((Arc::clone(name), Arc::clone(s))),
                    _ => return Err(RequestError::Header(name.to_string())),
                }
            }
        }
        let body = match data.get("body") {
            None | Some(Value::Null) => Arc::from("{}"),
            Some(body) => Arc::from(body.to_json_string()),
        };
        let query = part("query_params", "an object")?
            .and_then(Value::as_map)
            .map(|m| m.iter().map(|(k, v)| (Arc::clone(k), v.clone())).collect())
            .unwrap_or_default();
        let path = part("path_params", "an object")?.cloned().unwrap_or(Value::Null);
        Ok(Request {
            method,
            headers,
            body,
            query,
            path,
        })
    }
}

/// The id of the delivery of the event at `pos` to `subscriber`: stable across replays and
/// restarts, so it serves as the idempotency key and the webhook id. 32 hexadecimal digits of
/// a 128-bit FNV-1a hash (a fixed, documented function: ids must not change between builds).
///
/// An event without a position (derived upstream) is identified by its time and content.
pub fn delivery_id(pos: Pos, time: Time, event: &Value, subscriber: &str) -> String {
    let mut h = Fnv128::new();
    if pos.is_none() {
        h.write(b"t");
        h.write(&time.to_be_bytes());
        h.write(event.to_json_string().as_bytes());
    } else {
        h.write(b"p");
        h.write(&pos.source.to_be_bytes());
        h.write(&pos.partition.to_be_bytes());
        h.write(&pos.offset.to_be_bytes());
    }
    h.write(&(subscriber.len() as u64).to_be_bytes());
    h.write(subscriber.as_bytes());
    format!("{:032x}", h.0)
}

struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Fnv128 {
        Fnv128(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u128::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

/// The final URL: every whole `:name` placeholder of `target`'s path replaced by
/// `path_params.name` (percent-encoded; numbers and booleans as their JSON text), then the
/// query parameters appended. A placeholder with no parameter is left as it is.
pub fn url(target: &str, path_params: &Value, query: &[(Arc<str>, Value)]) -> String {
    // Only the path is substituted: `:8080` and `user:pass@` are not placeholders.
    let authority_start = target.find("://").map_or(0, |i| i + 3);
    let path_start = target[authority_start..]
        .find(['/', '?', '#'])
        .map_or(target.len(), |i| authority_start + i);
    let (head, rest) = target.split_at(path_start);
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (path, tail) = rest.split_at(path_end);
    let (existing_query, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };

    let mut out = String::with_capacity(target.len() + 16);
    out.push_str(head);
    let mut chars = path.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != ':' {
            out.push(c);
            continue;
        }
        let name_len = path[i + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(path.len() - i - 1);
        let name = &path[i + 1..i + 1 + name_len];
        match path_params.get(name).filter(|_| !name.is_empty()).and_then(param_text) {
            Some(value) => {
                encode_into(&mut out, &value, PATH_SAFE);
                for _ in 0..name.chars().count() {
                    chars.next();
                }
            }
            None => out.push(':'),
        }
    }

    let mut pairs = String::new();
    for (name, value) in query {
        let values: Vec<String> = match value {
            Value::List(items) => items.iter().filter_map(param_text).collect(),
            other => param_text(other).into_iter().collect(),
        };
        for v in values {
            if !pairs.is_empty() {
                pairs.push('&');
            }
            encode_into(&mut pairs, name, QUERY_SAFE);
            pairs.push('=');
            encode_into(&mut pairs, &v, QUERY_SAFE);
        }
    }
    out.push_str(existing_query);
    if !pairs.is_empty() {
        if existing_query.is_empty() {
            out.push('?');
        } else if !existing_query.ends_with(['?', '&']) {
            out.push('&');
        }
        out.push_str(&pairs);
    }
    out.push_str(fragment);
    out
}

/// A parameter as URL text: strings as they are, numbers and booleans as JSON; null, lists
/// and objects have none.
fn param_text(value: &Value) -> Option<String> {
    match value {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Bool(_) => Some(value.to_json_string()),
        _ => None,
    }
}

/// Characters left as they are in a path segment (RFC 3986 unreserved plus sub-delims that
/// are harmless in a segment).
const PATH_SAFE: &[u8] = b"-._~!$&'()*+,;=:@";
/// Characters left as they are in a query name or value.
const QUERY_SAFE: &[u8] = b"-._~!$'()*,;:@/?";

fn encode_into(out: &mut String, text: &str, safe: &[u8]) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || safe.contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The headers sent: the event's, without the ones sluice sets, plus `Content-Type` and
/// `Idempotency-Key`. Names compare case-insensitively; the event's spelling is kept.
pub fn headers(request: &Request, delivery_id: &Arc<str>) -> Value {
    thread_local! {
        // Per thread, as the row's field names: a shared `Arc` would be contended.
        static OURS: [Arc<str>; 3] = [Arc::from("Content-Type"), Arc::from("Idempotency-Key"), Arc::from("application/json")];
    }
    let [content_type, idempotency_key, json] = OURS.with(|o| o.clone());
    let ours = ["content-type", "idempotency-key"];
    let mut headers: Vec<(Arc<str>, Value)> = request
        .headers
        .iter()
        .filter(|(name, _)| !ours.iter().any(|o| name.eq_ignore_ascii_case(o)))
        .map(|(name, value)| (Arc::clone(name), Value::Str(Arc::clone(value))))
        .collect();
    headers.push((content_type, Value::Str(json)));
    headers.push((idempotency_key, Value::Str(Arc::clone(delivery_id))));
    Value::map(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        Value::from_json_str(json).expect("JSON")
    }

    fn q(json: &str) -> Vec<(Arc<str>, Value)> {
        v(json)
            .as_map()
            .map(|m| m.iter().map(|(k, v)| (Arc::clone(k), v.clone())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn whole_placeholder_names_are_replaced() {
        let params = v(r#"{"id": "1", "idx": 2}"#);
        assert_eq!(url("https://h/a/:id/:idx", &params, &[]), "https://h/a/1/2");
        assert_eq!(url("https://h/:idx-:id", &params, &[]), "https://h/2-1");
        assert_eq!(
            url("https://h/:id_x/:missing", &params, &[]),
            "https://h/:id_x/:missing"
        );
    }

    #[test]
    fn ports_credentials_and_schemes_are_not_placeholders() {
        let params = v(r#"{"8080": "x", "pass": "p", "https": "s", "id": "a b/c"}"#);
        assert_eq!(
            url("https://u:pass@h:8080/x/:id", &params, &[]),
            "https://u:pass@h:8080/x/a%20b%2Fc"
        );
    }

    #[test]
    fn query_parameters_are_appended_encoded() {
        let query = q(r#"{"b": "x y", "a": [1, "z&"], "n": null}"#);
        assert_eq!(url("http://h/p", &Value::Null, &query), "http://h/p?a=1&a=z%26&b=x%20y");
        assert_eq!(
            url("http://h/p?k=1#f", &Value::Null, &query),
            "http://h/p?k=1&a=1&a=z%26&b=x%20y#f"
        );
        assert_eq!(url("http://h/p?", &Value::Null, &q(r#"{"a": 1}"#)), "http://h/p?a=1");
        assert_eq!(url("http://h/p", &Value::Null, &[]), "http://h/p");
    }

    #[test]
    fn requests_are_read_with_defaults_and_checked() {
        let r = Request::from_data(&v(r#"{"http_method": "put", "headers": {"X-A": "1"}}"#)).expect("valid");
        assert_eq!(&*r.method, "PUT");
        assert_eq!(&*r.body, "{}");
        let r = Request::from_data(&v(r#"{"body": {"b": 1, "a": [true]}}"#)).expect("valid");
        assert_eq!((&*r.method, &*r.body), ("POST", r#"{"a":[true],"b":1}"#));
        assert_eq!(
            Request::from_data(&v(r#"{"headers": {"X": 1}}"#)),
            Err(RequestError::Header("X".into()))
        );
        assert!(Request::from_data(&v(r#"{"http_method": "GET /x"}"#)).is_err());
        assert!(Request::from_data(&v(r#"{"query_params": [1]}"#)).is_err());
    }

    #[test]
    fn sluice_sets_content_type_and_the_idempotency_key() {
        let r = Request::from_data(&v(
            r#"{"headers": {"content-type": "text/plain", "X-A": "1", "idempotency-key": "mine"}}"#,
        ))
        .expect("valid");
        assert_eq!(
            headers(&r, &Arc::from("k1")).to_json_string(),
            r#"{"Content-Type":"application/json","Idempotency-Key":"k1","X-A":"1"}"#
        );
    }

    #[test]
    fn the_hash_is_fnv_1a_128() {
        let mut h = Fnv128::new();
        h.write(b"a");
        assert_eq!(format!("{:032x}", h.0), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn delivery_ids_depend_on_position_and_subscriber_only() {
        let pos = Pos {
            source: 0,
            partition: 1,
            offset: 7,
        };
        let event = v(r#"{"topic": "t"}"#);
        let a = delivery_id(pos, 5, &event, "s1");
        assert_eq!(a.len(), 32);
        assert_eq!(
            a,
            delivery_id(pos, 99, &v("{}"), "s1"),
            "a replay at another time keeps the id"
        );
        assert_ne!(a, delivery_id(pos, 5, &event, "s2"));
        assert_ne!(a, delivery_id(Pos { offset: 8, ..pos }, 5, &event, "s1"));
        // Pinned: the function must not change between builds.
        assert_eq!(a, "1012762f8331d51f6bc0c403806b4d3b");
        assert_eq!(
            delivery_id(Pos::NONE, 1, &event, "s"),
            delivery_id(Pos::NONE, 1, &event, "s")
        );
        assert_ne!(
            delivery_id(Pos::NONE, 1, &event, "s"),
            delivery_id(Pos::NONE, 2, &event, "s")
        );
    }
}
