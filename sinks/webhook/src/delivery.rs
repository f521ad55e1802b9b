//! A delivery: the request one row describes, how far its sending got, and its dead letter.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use sluice_runtime::{Row, Value};

use crate::sign::signing_key;

/// The fields of a delivery row that make its request (what the fanout dataflow builds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The delivery id: the key, the `Idempotency-Key` and the `webhook-id`.
    pub id: Arc<str>,
    /// The subscriber's id.
    pub subscriber: Arc<str>,
    /// The event's topic.
    pub topic: Arc<str>,
    /// The HTTP method, upper-case.
    pub method: Arc<str>,
    /// The final URL, query included.
    pub url: Arc<str>,
    /// Header names and values, as given.
    pub headers: Vec<(Arc<str>, Arc<str>)>,
    /// The exact bytes to send (and sign).
    pub body: Arc<str>,
    /// The subscriber's signing secret, if it has one.
    pub secret: Option<Arc<str>>,
}

/// How far sending a delivery has got; kept in checkpoints so that counts continue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Attempts started.
    pub attempts: u32,
    /// Wall-clock milliseconds of the first attempt.
    pub first_attempt_ms: Option<u64>,
    /// Wall-clock milliseconds of the latest attempt.
    pub last_attempt_ms: Option<u64>,
    /// The status of the latest response, if an attempt got one.
    pub last_status: Option<u16>,
    /// What went wrong last.
    pub last_error: Option<String>,
}

/// Why a row cannot be sent; the row goes straight to the dead letters with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotADelivery {
    /// A required field is missing or not a string.
    #[error("not a delivery: field `{0}` is missing or not a string")]
    Field(&'static str),
    /// The URL does not parse or is not http(s).
    #[error("not a delivery: {0}")]
    Url(String),
    /// The method is not an HTTP token.
    #[error("not a delivery: `{0}` is not an HTTP method")]
    Method(String),
    /// A header name or value cannot be sent.
    #[error("not a delivery: header `{0}` cannot be sent")]
    Header(String),
    /// `headers` is there but not a map of strings.
    #[error("not a delivery: `headers` must be an object of strings")]
    Headers,
    /// The secret cannot sign.
    #[error("not a delivery: {0}")]
    Secret(#[from] crate::sign::BadSecret),
}

/// Headers an event may not set: they frame the message or steer the connection, which the
/// HTTP client does from the real body and URL. Sent as given, a `Content-Length` shorter
/// than the body truncates it (and breaks its signature), a `Host` reaches another virtual
/// host behind the subscriber's server, and `Transfer-Encoding` desynchronises the two
/// ends. They are dropped; every other header is sent as given.
const CONNECTION_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The first segment of `url`'s path that is `.` or `..` as the URL standard reads them
/// (`%2e` for a dot, in any case), if any.
fn dot_segment(url: &str) -> Option<&str> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let path = &rest[rest.find('/').unwrap_or(rest.len())..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    // Every spelling the URL standard reads as `.` or `..`, compared without allocating: this
    // runs for every delivery.
    const DOT_SEGMENTS: [&str; 6] = [".", "%2e", "..", ".%2e", "%2e.", "%2e%2e"];
    // Backslashes separate segments too in http(s) URLs.
    path.split(['/', '\\'])
        .find(|segment| DOT_SEGMENTS.iter().any(|d| segment.eq_ignore_ascii_case(d)))
}

impl Delivery {
    /// Reads a delivery row's value.
    pub fn from_row(row: &Row) -> Result<Delivery, NotADelivery> {
        let val = &row.val;
        let text = |name: &'static str| match val.get(name) {
            Some(Value::Str(s)) => Ok(Arc::clone(s)),
            _ => Err(NotADelivery::Field(name)),
        };
        let optional = |name: &'static str| match val.get(name) {
            Some(Value::Str(s)) => Ok(Some(Arc::clone(s))),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(NotADelivery::Field(name)),
        };
        let mut headers = Vec::new();
        match val.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Map(map)) => {
                for (name, value) in map.iter() {
                    let Value::Str(value) = value else {
                        return Err(NotADelivery::Headers);
                    };
                    headers.push((Arc::clone(name), Arc::clone(value)));
                }
            }
            Some(_) => return Err(NotADelivery::Headers),
        }
        Ok(Delivery {
            id: text("delivery_id")?,
            subscriber: optional("subscriber")?.unwrap_or_else(|| Arc::from("")),
            topic: optional("topic")?.unwrap_or_else(|| Arc::from("")),
            method: optional("method")?.unwrap_or_else(|| Arc::from("POST")),
            url: text("url")?,
            headers,
            body: optional("body")?.unwrap_or_else(|| Arc::from("")),
            secret: optional("secret")?,
        })
    }

    /// The parts of the request, parsed once for every attempt.
    pub fn prepare(&self) -> Result<Prepared, NotADelivery> {
        if let Some(segment) = dot_segment(&self.url) {
            // The URL parser would remove it with the segment before: a path parameter of `..`
            // would send the request outside the path the subscriber registered.
            return Err(NotADelivery::Url(format!(
                "url `{}` has a `{segment}` path segment, which would leave the subscriber's path",
                self.url
            )));
        }
        let url = Url::parse(&self.url).map_err(|e| NotADelivery::Url(format!("url `{}`: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotADelivery::Url(format!("url `{}` is not http or https", self.url)));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| NotADelivery::Url(format!("url `{}` has no host", self.url)))?;
        let port = url.port_or_known_default().unwrap_or(0);
        // The subscriber is the unit a slow receiver must not hold back others by: several
        // subscribers may share a host (one service, a path per tenant). Rows without one
        // count by scheme, host and port.
        let target = if self.subscriber.is_empty() {
            Arc::from(format!("{}://{host}:{port}", url.scheme()))
        } else {
            Arc::from(format!("subscriber:{}", self.subscriber))
        };
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|_| NotADelivery::Method(self.method.to_string()))?;
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 3);
        for (name, value) in &self.headers {
            if CONNECTION_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                continue;
            }
            let bad = || NotADelivery::Header(name.to_string());
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(value).map_err(|_| bad())?;
            headers.append(name, value);
        }
        // Receivers deduplicate by it; the fanout dataflow sets it, other producers may not.
        // The id is sent as a header (`webhook-id` too): check it can be, once.
        let id = HeaderValue::from_str(&self.id).map_err(|_| NotADelivery::Header("Idempotency-Key".into()))?;
        let idempotency_key = HeaderName::from_static("idempotency-key");
        if !headers.contains_key(&idempotency_key) {
            headers.insert(idempotency_key, id);
        }
        let key = self.secret.as_deref().map(signing_key).transpose()?;
        Ok(Prepared {
            delivery: self.clone(),
            method,
            url,
            target,
            headers,
            key,
        })
    }

    /// The dead letter of this delivery: where it was going and what happened, never the
    /// secret, the body or the headers (they may carry credentials or personal data).
    pub fn dead_letter(&self, progress: &Progress, now_ms: u64) -> Row {
        dead_letter_row(
            [
                ("delivery_id", Value::Str(Arc::clone(&self.id))),
                ("subscriber", Value::Str(Arc::clone(&self.subscriber))),
                ("topic", Value::Str(Arc::clone(&self.topic))),
                ("method", Value::Str(Arc::clone(&self.method))),
                ("url", Value::Str(Arc::clone(&self.url))),
            ],
            &Value::Str(Arc::clone(&self.id)),
            progress,
            now_ms,
        )
    }
}

/// The dead letter of a row that is not a delivery: what of it can be named, and why.
pub fn invalid_dead_letter(row: &Row, error: &NotADelivery, now_ms: u64) -> Row {
    let field = |name: &str| match row.val.get(name) {
        Some(v @ Value::Str(_)) => v.clone(),
        _ => Value::Null,
    };
    let progress = Progress {
        last_error: Some(error.to_string()),
        ..Progress::default()
    };
    let id = field("delivery_id");
    dead_letter_row(
        [
            ("delivery_id", id.clone()),
            ("subscriber", field("subscriber")),
            ("topic", field("topic")),
            ("method", field("method")),
            ("url", field("url")),
        ],
        &id,
        &progress,
        now_ms,
    )
}

fn dead_letter_row(fields: [(&str, Value); 5], id: &Value, progress: &Progress, now_ms: u64) -> Row {
    let ms = |t: Option<u64>| Value::from(t.unwrap_or(now_ms));
    let mut val: Vec<(&str, Value)> = fields.into();
    val.extend([
        ("attempts", Value::from(u64::from(progress.attempts))),
        (
            "last_status",
            progress.last_status.map_or(Value::Null, |s| Value::from(u64::from(s))),
        ),
        ("last_error", Value::str(progress.last_error.as_deref().unwrap_or(""))),
        ("first_attempt_ms", ms(progress.first_attempt_ms)),
        ("last_attempt_ms", ms(progress.last_attempt_ms)),
    ]);
    Row::derived(Value::map([("delivery_id", id.clone())]), Value::map(val))
}

/// A delivery ready to send: its request parsed, its target and signing key.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The delivery as given.
    pub delivery: Delivery,
    /// The parsed method.
    pub method: Method,
    /// The parsed URL.
    pub url: Url,
    /// What the concurrency limit counts by: the subscriber, or else scheme, host and port.
    pub target: Arc<str>,
    /// The parsed headers.
    pub headers: HeaderMap,
    /// The HMAC key, when the delivery is signed.
    pub key: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_in_the_path_only() {
        for url in [
            "http://h/a/../b",
            "http://h/a/..",
            "http://h/./b",
            "https://h/a/%2E%2e/b",
            "http://h/a/.%2E?q=1",
            "http://h/a\\..\\b",
        ] {
            assert!(dot_segment(url).is_some(), "{url}");
        }
        for url in [
            "http://h/a/b",
            "http://h/a/...",
            "http://h/a/..b/c",
            "http://h/a/b?x=/../",
            "http://h/a#/../",
            "http://h",
            "http://h:80/v1.2/x",
        ] {
            assert_eq!(dot_segment(url), None, "{url}");
        }
    }

    fn row(fields: Vec<(&str, Value)>) -> Row {
        Row::derived(Value::Null, Value::map(fields))
    }

    fn good() -> Vec<(&'static str, Value)> {
        vec![
            ("delivery_id", Value::from("d1")),
            ("subscriber", Value::from("s1")),
            ("topic", Value::from("t")),
            ("method", Value::from("PUT")),
            ("url", Value::from("https://Example.com/hook?x=1")),
            ("headers", Value::map([("X-A", Value::from("1"))])),
            ("body", Value::from("{}")),
            ("secret", Value::from("k")),
        ]
    }

    #[test]
    fn a_delivery_row_prepares_with_its_target_and_key() {
        let d = Delivery::from_row(&row(good())).expect("delivery");
        let p = d.prepare().expect("prepared");
        assert_eq!(&*p.target, "subscriber:s1");
        let anonymous = Delivery {
            subscriber: Arc::from(""),
            ..d.clone()
        };
        assert_eq!(
            &*anonymous.prepare().expect("prepared").target,
            "https://example.com:443"
        );
        assert_eq!(p.method, Method::PUT);
        assert_eq!(p.headers.get("x-a").and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(p.key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn rows_that_are_not_deliveries_say_why() {
        let without = |name: &str| row(good().into_iter().filter(|(n, _)| *n != name).collect());
        let with = |name: &'static str, v: Value| {
            let mut f = good();
            f.retain(|(n, _)| *n != name);
            f.push((name, v));
            row(f)
        };
        let err = |r: Row| {
            Delivery::from_row(&r)
                .and_then(|d| d.prepare())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            err(without("url")),
            Some("not a delivery: field `url` is missing or not a string".into())
        );
        assert_eq!(
            err(without("delivery_id")),
            Some("not a delivery: field `delivery_id` is missing or not a string".into())
        );
        assert!(err(with("url", Value::from("ftp://x/"))).is_some_and(|e| e.contains("not http or https")));
        assert!(err(with("url", Value::from("not a url"))).is_some());
        assert!(err(with("method", Value::from("GE T"))).is_some());
        assert!(err(with("headers", Value::map([("bad name", Value::from("v"))]))).is_some());
        assert!(err(with("secret", Value::from("whsec_!!"))).is_some());
    }

    #[test]
    fn a_dead_letter_names_the_delivery_but_never_its_secret_body_or_headers() {
        let d = Delivery::from_row(&row(good())).expect("delivery");
        let progress = Progress {
            attempts: 3,
            first_attempt_ms: Some(10),
            last_attempt_ms: Some(20),
            last_status: Some(500),
            last_error: Some("HTTP 500".into()),
        };
        let dead = d.dead_letter(&progress, 99);
        assert_eq!(dead.key, Value::map([("delivery_id", Value::from("d1"))]));
        assert_eq!(
            dead.val.to_json_string(),
            r#"{"attempts":3,"delivery_id":"d1","first_attempt_ms":10,"last_attempt_ms":20,"last_error":"HTTP 500","last_status":500,"method":"PUT","subscriber":"s1","topic":"t","url":"https://Example.com/hook?x=1"}"#
        );
    }
}
