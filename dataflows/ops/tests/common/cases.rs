//! Each operator under test, built on the harness's inputs, with its from-scratch oracle.
//!
//! The records are `{"id", "s", "n"?}` with `n` an integer, a float or missing; keys are
//! `{"k": 0..5}`. Builders take the left input (and the right, for `join` and `union`);
//! oracles take the accumulated inputs and give the expected rows and dead letters.

use sluice_runtime::recovery::StateRegistry;
use std::cmp::Ordering;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sluice_expr::Expr;
use sluice_ops::order::compare;
use sluice_ops::{AggFunc, AggSpec, JoinKind, LatestOrder};
use sluice_runtime::{Row, Rows, Value};

use super::{Bag, Out, add, by_key, dead};

/// A builder of the operator under test.
pub trait Build: for<'s> Fn(Rows<'s>, Rows<'s>) -> Out<'s> + Clone + Send + Sync + 'static {}
impl<B: for<'s> Fn(Rows<'s>, Rows<'s>) -> Out<'s> + Clone + Send + Sync + 'static> Build for B {}

/// An oracle: expected (rows, dead letters) from the accumulated (left, right) inputs.
pub type Oracle = fn(&Bag, &Bag) -> (Bag, Bag);

fn expr(src: &str) -> Expr {
    Expr::compile(src).expect("compiles")
}

fn n_of(row: &Row) -> Option<&Value> {
    row.val.get("n")
}

/// `filter(n > 10)`, counting evaluation errors in `errors`.
pub fn filter(errors: Arc<AtomicU64>) -> impl Build {
    let e = expr("n > 10");
    move |l, _| Out {
        rows: sluice_ops::filter_named(l, &e, errors.clone(), "f"),
        dead: None,
    }
}

pub fn filter_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let rows = l
        .iter()
        .filter(|(r, _)| n_of(r).and_then(Value::as_f64).is_some_and(|n| n > 10.0))
        .map(|(r, n)| (r.clone(), *n))
        .collect();
    (rows, Bag::new())
}

/// `map({"twice": n + n, "s": s})`.
pub fn map() -> impl Build {
    let e = expr(r#"{"twice": n + n, "s": s}"#);
    move |l, _| {
        let (rows, dead) = sluice_ops::map(l, &e, "m");
        Out { rows, dead: Some(dead) }
    }
}

pub fn map_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let (mut rows, mut dead_letters) = (Bag::new(), Bag::new());
    for (r, n) in l {
        let twice = match n_of(r) {
            Some(Value::Int(v)) => Value::Int(v * 2),
            Some(v) => Value::from(v.as_f64().unwrap_or_default() * 2.0),
            None => {
                let reason = "map failed: `n` is neither a field of the record nor a function";
                add(&mut dead_letters, dead(reason, r), *n);
                continue;
            }
        };
        let s = r.val.get("s").cloned().unwrap_or_default();
        let val = Value::map([("twice", twice), ("s", s)]);
        add(&mut rows, Row { val, ..r.clone() }, *n);
    }
    (rows, dead_letters)
}

/// `key_by(["n"])`.
pub fn key_by_fields() -> impl Build {
    move |l, _| {
        let (rows, dead) = sluice_ops::key_by(l, &[vec!["n".to_owned()]][..], "kb");
        Out { rows, dead: Some(dead) }
    }
}

pub fn key_by_fields_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    key_by_oracle(l, |v| Value::map([("n", v.clone())]), "missing key field `n`")
}

/// `key_by(n)`, an expression.
pub fn key_by_expr() -> impl Build {
    let e = expr("n");
    move |l, _| {
        let (rows, dead) = sluice_ops::key_by(l, &e, "kb");
        Out { rows, dead: Some(dead) }
    }
}

pub fn key_by_expr_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let reason = "the key expression failed: `n` is neither a field of the record nor a function";
    key_by_oracle(l, Value::clone, reason)
}

fn key_by_oracle(l: &Bag, key: impl Fn(&Value) -> Value, missing: &str) -> (Bag, Bag) {
    let (mut rows, mut dead_letters) = (Bag::new(), Bag::new());
    for (r, n) in l {
        match n_of(r) {
            Some(v) => add(
                &mut rows,
                Row {
                    key: key(v),
                    ..r.clone()
                },
                *n,
            ),
            None => add(&mut dead_letters, dead(missing, r), *n),
        }
    }
    (rows, dead_letters)
}

/// `count`.
pub fn count() -> impl Build {
    move |l, _| Out {
        rows: sluice_ops::count(l, "c"),
        dead: None,
    }
}

pub fn count_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let rows = by_key(l)
        .into_iter()
        .map(|(k, rows)| {
            let c: isize = rows.iter().map(|(_, n)| n).sum();
            (Row::derived(k, Value::map([("count", Value::Int(c as i64))])), 1)
        })
        .collect();
    (rows, Bag::new())
}

fn agg_specs() -> Vec<AggSpec> {
    let field = Some(vec!["n".to_owned()]);
    let spec = |name: &str, func| AggSpec {
        name: name.into(),
        func,
        field: field.clone(),
    };
    vec![
        AggSpec {
            name: "count".into(),
            func: AggFunc::Count,
            field: None,
        },
        spec("sum", AggFunc::Sum),
        spec("min", AggFunc::Min),
        spec("max", AggFunc::Max),
    ]
}

/// `aggregate(count, sum(n), min(n), max(n))`, by fold on events or by reduce.
pub fn aggregate(append_only: bool) -> impl Build {
    move |l, _| {
        let (rows, dead) = sluice_ops::aggregate(l, &agg_specs(), append_only, "a", &mut StateRegistry::disabled());
        Out { rows, dead: Some(dead) }
    }
}

pub fn aggregate_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let mut dead_letters = Bag::new();
    let mut rows = Bag::new();
    for (key, group) in by_key(l) {
        let mut present = Vec::new();
        for (r, n) in group {
            match n_of(&r) {
                Some(v) => present.push((v.clone(), n)),
                None => add(&mut dead_letters, dead("missing field `n` for aggregate `sum`", &r), n),
            }
        }
        if present.is_empty() {
            continue;
        }
        let count: isize = present.iter().map(|(_, n)| n).sum();
        let sum = if present.iter().all(|(v, _)| matches!(v, Value::Int(_))) {
            Value::Int(
                present
                    .iter()
                    .map(|(v, n)| v.as_i64().unwrap_or_default() * *n as i64)
                    .sum(),
            )
        } else {
            Value::from(
                present
                    .iter()
                    .map(|(v, n)| v.as_f64().unwrap_or_default() * *n as f64)
                    .sum::<f64>(),
            )
        };
        let values = || present.iter().map(|(v, _)| v.clone());
        let min = values().min_by(compare).unwrap_or_default();
        let max = values().max_by(compare).unwrap_or_default();
        let val = Value::map([
            ("count", Value::Int(count as i64)),
            ("sum", sum),
            ("min", min),
            ("max", max),
        ]);
        add(&mut rows, Row::derived(key, val), 1);
    }
    (rows, dead_letters)
}

/// `latest` by the field `n`, by fold on events or by reduce.
pub fn latest_by_field(append_only: bool) -> impl Build {
    move |l, _| Out {
        rows: sluice_ops::latest(
            l,
            LatestOrder::Field(vec!["n".into()]),
            append_only,
            "l",
            &mut StateRegistry::disabled(),
        ),
        dead: None,
    }
}

/// Per key, the row with the greatest (n or null, whole record), numbers by value.
pub fn latest_by_field_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let order =
        |a: &(Value, Value), b: &(Value, Value)| -> Ordering { compare(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)) };
    let rows = by_key(l)
        .into_iter()
        .filter_map(|(key, group)| {
            group
                .into_iter()
                .map(|(r, _)| (n_of(&r).cloned().unwrap_or(Value::Null), r.val))
                .max_by(order)
                .map(|(_, val)| (Row::derived(key, val), 1))
        })
        .collect();
    (rows, Bag::new())
}

/// `latest` by arrival (events only).
pub fn latest_by_arrival() -> impl Build {
    move |l, _| Out {
        rows: sluice_ops::latest(l, LatestOrder::Arrival, true, "l", &mut StateRegistry::disabled()),
        dead: None,
    }
}

/// Events get increasing offsets in insertion order, and later times come later: per key,
/// the row with the greatest position.
pub fn latest_by_arrival_oracle(l: &Bag, _: &Bag) -> (Bag, Bag) {
    let rows = by_key(l)
        .into_iter()
        .filter_map(|(key, group)| {
            group
                .into_iter()
                .max_by_key(|(r, _)| r.pos)
                .map(|(r, _)| (Row::derived(key, r.val), 1))
        })
        .collect();
    (rows, Bag::new())
}

/// `join` of the two inputs.
pub fn join(kind: JoinKind) -> impl Build {
    move |l, r| Out {
        rows: sluice_ops::join(l, r, kind, "j"),
        dead: None,
    }
}

pub fn inner_join_oracle(l: &Bag, r: &Bag) -> (Bag, Bag) {
    (join_oracle(l, r, JoinKind::Inner), Bag::new())
}

pub fn left_join_oracle(l: &Bag, r: &Bag) -> (Bag, Bag) {
    (join_oracle(l, r, JoinKind::Left), Bag::new())
}

fn join_oracle(l: &Bag, r: &Bag, kind: JoinKind) -> Bag {
    let mut out = Bag::new();
    for (lrow, ln) in l {
        let joined = |right: Value| Row {
            key: lrow.key.clone(),
            val: Value::map([("left", lrow.val.clone()), ("right", right)]),
            pos: lrow.pos,
        };
        let matches: Vec<_> = r.iter().filter(|(rrow, _)| rrow.key == lrow.key).collect();
        for (rrow, rn) in &matches {
            add(&mut out, joined(rrow.val.clone()), ln * *rn);
        }
        if matches.is_empty() && kind == JoinKind::Left {
            add(&mut out, joined(Value::Null), *ln);
        }
    }
    out
}

/// `union` of the two inputs.
pub fn union() -> impl Build {
    move |l, r| {
        let scope = l.scope();
        Out {
            rows: sluice_ops::union_named(scope, vec![l, r], "u"),
            dead: None,
        }
    }
}

pub fn union_oracle(l: &Bag, r: &Bag) -> (Bag, Bag) {
    let mut out = l.clone();
    for (row, n) in r {
        add(&mut out, row.clone(), *n);
    }
    (out, Bag::new())
}
