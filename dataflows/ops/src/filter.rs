//! `filter`: keeps the rows for which a condition holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_expr::Expr;
use sluice_runtime::Rows;

/// Keeps rows where `expr` evaluates to `true`.
///
/// An evaluation error (a missing field, a type mismatch, a non-boolean result) is "no
/// match", never a failure: a filter is a question asked of every record, and a record it
/// does not apply to is simply not selected. Such rows are counted in `errors`.
pub fn filter<'s>(rows: Rows<'s>, expr: &Expr, errors: Arc<AtomicU64>) -> Rows<'s> {
    let evaluator = expr.evaluator();
    rows.filter(move |row| match evaluator.eval_bool(&row.val, &row.key) {
        Ok(keep) => keep,
        Err(_) => {
            errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    })
}
