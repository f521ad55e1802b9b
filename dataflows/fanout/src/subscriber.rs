//! Subscribers: reading the subscriber table's rows, and the problems that reject one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_expr::Expr;
use sluice_runtime::{Row, Value};

/// A subscriber row, read and checked (its filter compiles).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subscriber {
    /// Its id (the upsert key).
    pub id: Arc<str>,
    /// The topic it listens to.
    pub topic: Arc<str>,
    /// Its filter as written (CEL or Python-style; empty matches everything).
    pub filter: Arc<str>,
    /// The URL deliveries go to, with `:name` placeholders.
    pub target_url: Arc<str>,
    /// The key deliveries are signed with, if any.
    pub secret: Option<Arc<str>>,
}

/// What a subscriber row is, once read.
pub enum Read {
    /// A usable subscriber.
    Subscriber(Subscriber),
    /// A row marked `"deleted": true`: no subscriber.
    Deleted,
    /// A row that cannot be used, with its id (from the key if the value lacks one) and why.
    Rejected(Value, String),
}

impl Subscriber {
    /// Reads a row of the subscriber table, compiling its filter to check it.
    pub fn read(row: &Row) -> Read {
        let id = match (row.val.get("id"), row.key.get("id")) {
            (Some(v @ Value::Str(_)), _) | (_, Some(v)) => v.clone(),
            _ => row.key.clone(),
        };
        match Subscriber::from_value(&row.val) {
            Ok(Some(s)) => Read::Subscriber(s),
            Ok(None) => Read::Deleted,
            Err(reason) => Read::Rejected(id, reason),
        }
    }

    fn from_value(val: &Value) -> Result<Option<Subscriber>, String> {
        if val.as_map().is_none() {
            return Err(format!("a subscriber is a JSON object, not {}", val.type_name()));
        }
        if val.get("deleted").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let text = |name: &str, required: bool| match val.get(name) {
            Some(Value::Str(s)) if !s.is_empty() || !required => Ok(Some(Arc::clone(s))),
            None | Some(Value::Null) if !required => Ok(None),
            Some(Value::Str(_)) | None | Some(Value::Null) => Err(format!("`{name}` is missing or empty")),
            Some(other) => Err(format!("`{name}` must be a string, not {}", other.type_name())),
        };
        let id = text("id", true)?.unwrap_or_default();
        let topic = text("topic", true)?.unwrap_or_default();
        let target_url = text("target_url", true)?.unwrap_or_default();
        if !(target_url.starts_with("http://") || target_url.starts_with("https://")) {
            return Err(format!("`target_url` `{target_url}` is not an http:// or https:// URL"));
        }
        let filter = text("filter", false)?.unwrap_or_default();
        let secret = text("secret", false)?.filter(|s| !s.is_empty());
        Expr::compile_filter(&filter).map_err(|e| format!("the filter does not compile: {e}"))?;
        Ok(Some(Subscriber {
            id,
            topic,
            filter,
            target_url,
            secret,
        }))
    }
}
