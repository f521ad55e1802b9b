//! `map`: replaces each record by the value of an expression.

use sluice_expr::Expr;
use sluice_runtime::{DeadLetters, Row, Rows};

use crate::{dead_letter, stage};
use sluice_runtime::operators::named::split_named;

/// Replaces each row's value by `expr`'s result, keeping its key and position.
///
/// A row the expression fails on is dead-lettered with the reason: unlike a filter, a map
/// that cannot produce a record would silently lose it. Expressions are deterministic, so a
/// retraction maps to exactly the row its insertion mapped to.
pub fn map<'s>(rows: Rows<'s>, expr: &Expr, name: &str) -> (Rows<'s>, DeadLetters<'s>) {
    let expr = expr.clone();
    let stage = stage(name);
    split_named(rows, &format!("Map: {name}"), move |row: Row| {
        match expr.eval(&row.val, &row.key) {
            Ok(val) => Ok(Row { val, ..row }),
            Err(e) => Err(dead_letter(&stage, &row, format!("map failed: {e}"))),
        }
    })
}
