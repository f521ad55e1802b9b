//! `filter`: keeps the rows for which a condition holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_expr::Expr;
use sluice_runtime::Rows;

use sluice_runtime::operators::named;

/// Keeps rows where `expr` evaluates to `true`; as [`filter_named`], named `"filter"`.
pub fn filter<'s>(rows: Rows<'s>, expr: &Expr, errors: Arc<AtomicU64>) -> Rows<'s> {
    filter_named(rows, expr, errors, "filter")
}

/// Keeps rows where `expr` evaluates to `true`, in an operator named after node `name`.
///
/// An evaluation error (a missing field, a type mismatch, a non-boolean result) is "no
/// match", never a failure: a filter is a question asked of every record, and a record it
/// does not apply to is simply not selected. Each row inserted that the condition fails on
/// is counted in `errors` (shared by every worker, so the run can report the total);
/// retractions are evaluated too, so that they drop exactly the rows their insertions
/// dropped, but are not counted again.
pub fn filter_named<'s>(rows: Rows<'s>, expr: &Expr, errors: Arc<AtomicU64>, name: &str) -> Rows<'s> {
    let expr = expr.clone();
    named::filter_named(rows, &format!("Filter: {name}"), move |row, diff| {
        expr.eval_bool(&row.val, &row.key).unwrap_or_else(|_| {
            // Retractions are not new failures; insertions count with their multiplicity.
            errors.fetch_add(u64::try_from(diff).unwrap_or(0), Ordering::Relaxed);
            false
        })
    })
}
