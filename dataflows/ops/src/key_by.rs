//! `key_by`: sets each row's key from fields of its record, or from an expression.

use sluice_expr::Expr;
use sluice_runtime::record::key_from_fields;
use sluice_runtime::{DeadLetters, Row, Rows, Value};

use crate::{dead_letter, stage};
use sluice_runtime::operators::named::split_named;

/// Where a row's new key comes from.
#[derive(Clone, Debug)]
pub enum KeySpec {
    /// Field paths: the key is the map `{"a.b": value, …}` of the dotted paths to their
    /// values, even for one field (the engine's key format, the one sources produce).
    Fields(Vec<Vec<String>>),
    /// An expression over the record (and its current key): the key is its value as is, so
    /// `user.id` gives a scalar key and `{"app": app}` a map.
    Expr(Expr),
}

impl From<&[Vec<String>]> for KeySpec {
    fn from(fields: &[Vec<String>]) -> Self {
        KeySpec::Fields(fields.to_vec())
    }
}

impl From<&Vec<Vec<String>>> for KeySpec {
    fn from(fields: &Vec<Vec<String>>) -> Self {
        KeySpec::Fields(fields.clone())
    }
}

impl From<Vec<Vec<String>>> for KeySpec {
    fn from(fields: Vec<Vec<String>>) -> Self {
        KeySpec::Fields(fields)
    }
}

impl From<&Expr> for KeySpec {
    fn from(expr: &Expr) -> Self {
        KeySpec::Expr(expr.clone())
    }
}

impl From<&KeySpec> for KeySpec {
    fn from(spec: &KeySpec) -> Self {
        spec.clone()
    }
}

impl KeySpec {
    /// The key of `row`, or why it has none.
    fn key_of(&self, row: &Row) -> Result<Value, String> {
        match self {
            KeySpec::Fields(fields) => key_from_fields(&row.val, fields),
            KeySpec::Expr(expr) => match expr.eval(&row.val, &row.key) {
                // `Null` is the key of unkeyed rows; a keyed collection must not contain it.
                Ok(Value::Null) => Err("the key expression gave null".to_owned()),
                Ok(key) => Ok(key),
                Err(e) => Err(format!("the key expression failed: {e}")),
            },
        }
    }
}

/// Sets the key of each row from `key` (field paths or an expression; see [`KeySpec`]).
///
/// A row missing a key field (or null there), or on which the key expression fails or gives
/// null, is dead-lettered with the reason.
pub fn key_by<'s>(rows: Rows<'s>, key: impl Into<KeySpec>, name: &str) -> (Rows<'s>, DeadLetters<'s>) {
    let spec = key.into();
    let stage = stage(name);
    split_named(rows, &format!("KeyBy: {name}"), move |row: Row| {
        match spec.key_of(&row) {
            Ok(key) => Ok(Row { key, ..row }),
            Err(reason) => Err(dead_letter(&stage, &row, reason)),
        }
    })
}
