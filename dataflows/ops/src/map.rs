//! `map`: replaces each record by the value of an expression.

use sluice_expr::Expr;
use sluice_runtime::{DeadLetter, DeadLetters, Row, Rows};

use crate::dead_letter;

/// Replaces each row's value by `expr`'s result, keeping its key and position.
///
/// A row the expression fails on is dead-lettered with the reason: unlike a filter, a map
/// that cannot produce a record would silently lose it. Expressions are deterministic, so a
/// retraction maps to exactly the row its insertion mapped to.
pub fn map<'s>(rows: Rows<'s>, expr: &Expr, name: &str) -> (Rows<'s>, DeadLetters<'s>) {
    let evaluator = expr.evaluator();
    let name = name.to_owned();
    let results = rows.map(move |row| -> Result<Row, DeadLetter> {
        match evaluator.eval(&row.val, &row.key) {
            Ok(val) => Ok(Row { val, ..row }),
            Err(e) => Err(dead_letter(&name, &row, format!("map failed: {e}"))),
        }
    });
    split(results)
}

/// Splits results into the rows and the dead letters.
pub(crate) fn split<'s>(
    results: differential_dataflow::VecCollection<
        's,
        sluice_runtime::Time,
        Result<Row, DeadLetter>,
        sluice_runtime::Diff,
    >,
) -> (Rows<'s>, DeadLetters<'s>) {
    let ok = results.clone().flat_map(Result::ok);
    let err = results.flat_map(Result::err);
    (ok, err)
}
