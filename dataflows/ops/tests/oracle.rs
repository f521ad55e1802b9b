//! Every generic operator against a from-scratch oracle at every time, on seeded random
//! inputs with retractions (and, for the fold paths, on event inputs).

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use common::{Bag, Gen, Out, ROUNDS, SEEDS, add, by_key, check, dead};
use sluice_expr::Expr;
use sluice_ops::{AggFunc, AggSpec, JoinKind, LatestOrder};
use sluice_runtime::{Row, Value};

const TABLE: Gen = Gen {
    retractions: true,
    keyed: true,
};
const EVENTS: Gen = Gen {
    retractions: false,
    keyed: true,
};

fn n_of(row: &Row) -> Option<i64> {
    row.val.get("n").and_then(Value::as_i64)
}

fn expr(src: &str) -> Expr {
    Expr::compile(src).expect("compiles")
}

#[test]
fn filter_matches_oracle() {
    for seed in SEEDS {
        check(
            seed,
            ROUNDS,
            TABLE,
            |l, _| Out {
                rows: sluice_ops::filter(l, &expr("n > 10"), Arc::new(AtomicU64::new(0))),
                dead: None,
            },
            |l, _| {
                let rows = l
                    .iter()
                    .filter(|(r, _)| n_of(r).is_some_and(|n| n > 10))
                    .map(|(r, n)| (r.clone(), *n))
                    .collect();
                (rows, Bag::new())
            },
        );
    }
}

#[test]
fn map_matches_oracle_and_dead_letters_failures() {
    for seed in SEEDS {
        check(
            seed,
            ROUNDS,
            TABLE,
            |l, _| {
                let (rows, dead) = sluice_ops::map(l, &expr(r#"{"twice": n * 2, "s": s}"#), "m");
                Out { rows, dead: Some(dead) }
            },
            |l, _| {
                let (mut rows, mut dead_letters) = (Bag::new(), Bag::new());
                for (r, n) in l {
                    match n_of(r) {
                        Some(v) => {
                            let val = Value::map([
                                ("twice", Value::Int(v * 2)),
                                ("s", r.val.get("s").cloned().unwrap_or_default()),
                            ]);
                            add(&mut rows, Row { val, ..r.clone() }, *n);
                        }
                        None => add(
                            &mut dead_letters,
                            dead("map failed: Undeclared reference to 'n'", r),
                            *n,
                        ),
                    }
                }
                (rows, dead_letters)
            },
        );
    }
}

#[test]
fn key_by_matches_oracle() {
    for seed in SEEDS {
        check(
            seed,
            ROUNDS,
            Gen {
                retractions: true,
                keyed: false,
            },
            |l, _| {
                let (rows, dead) = sluice_ops::key_by(l, &[vec!["n".to_owned()]], "kb");
                Out { rows, dead: Some(dead) }
            },
            |l, _| {
                let (mut rows, mut dead_letters) = (Bag::new(), Bag::new());
                for (r, n) in l {
                    match r.val.get("n") {
                        Some(v) => add(
                            &mut rows,
                            Row {
                                key: Value::map([("n", v.clone())]),
                                ..r.clone()
                            },
                            *n,
                        ),
                        None => add(&mut dead_letters, dead("missing key field `n`", r), *n),
                    }
                }
                (rows, dead_letters)
            },
        );
    }
}

fn count_oracle(l: &Bag) -> Bag {
    by_key(l)
        .into_iter()
        .map(|(k, rows)| {
            let c: isize = rows.iter().map(|(_, n)| n).sum();
            (Row::derived(k, Value::map([("count", Value::Int(c as i64))])), 1)
        })
        .collect()
}

#[test]
fn count_matches_oracle() {
    for (seed, shape) in SEEDS.flat_map(|s| [(s, TABLE), (s, EVENTS)]) {
        check(
            seed,
            ROUNDS,
            shape,
            |l, _| Out {
                rows: sluice_ops::count(l, "c"),
                dead: None,
            },
            |l, _| (count_oracle(l), Bag::new()),
        );
    }
}

fn agg_specs() -> Vec<AggSpec> {
    let field = Some(vec!["n".to_owned()]);
    vec![
        AggSpec {
            name: "count".into(),
            func: AggFunc::Count,
            field: None,
        },
        AggSpec {
            name: "sum".into(),
            func: AggFunc::Sum,
            field: field.clone(),
        },
        AggSpec {
            name: "min".into(),
            func: AggFunc::Min,
            field: field.clone(),
        },
        AggSpec {
            name: "max".into(),
            func: AggFunc::Max,
            field,
        },
    ]
}

fn aggregate_oracle(l: &Bag) -> (Bag, Bag) {
    let mut dead_letters = Bag::new();
    let mut rows = Bag::new();
    for (key, group) in by_key(l) {
        let mut present = Vec::new();
        for (r, n) in group {
            match n_of(&r) {
                Some(v) => present.push((v, n)),
                None => add(&mut dead_letters, dead("missing field `n` for aggregate `sum`", &r), n),
            }
        }
        if present.is_empty() {
            continue;
        }
        let count: isize = present.iter().map(|(_, n)| n).sum();
        let sum: i64 = present.iter().map(|(v, n)| v * *n as i64).sum();
        let min = present.iter().map(|(v, _)| *v).min().unwrap_or_default();
        let max = present.iter().map(|(v, _)| *v).max().unwrap_or_default();
        let val = Value::map([
            ("count", Value::Int(count as i64)),
            ("sum", Value::Int(sum)),
            ("min", Value::Int(min)),
            ("max", Value::Int(max)),
        ]);
        add(&mut rows, Row::derived(key, val), 1);
    }
    (rows, dead_letters)
}

#[test]
fn aggregate_matches_oracle_under_retractions_and_on_events() {
    for seed in SEEDS {
        // Tables take the reduce path, events the fold path.
        for (shape, append_only) in [(TABLE, false), (EVENTS, true)] {
            check(
                seed,
                ROUNDS,
                shape,
                move |l, _| {
                    let (rows, dead) = sluice_ops::aggregate(l, &agg_specs(), append_only, "a");
                    Out { rows, dead: Some(dead) }
                },
                |l, _| aggregate_oracle(l),
            );
        }
    }
}

/// Per key, the row with the greatest (n or null, whole record).
fn latest_by_n(l: &Bag) -> Bag {
    by_key(l)
        .into_iter()
        .filter_map(|(key, group)| {
            group
                .into_iter()
                .map(|(r, _)| (r.val.get("n").cloned().unwrap_or(Value::Null), r.val))
                .max()
                .map(|(_, val)| (Row::derived(key, val), 1))
        })
        .collect()
}

#[test]
fn latest_by_field_matches_oracle_under_retractions_and_on_events() {
    for seed in SEEDS {
        for (shape, append_only) in [(TABLE, false), (EVENTS, true)] {
            check(
                seed,
                ROUNDS,
                shape,
                move |l, _| Out {
                    rows: sluice_ops::latest(l, LatestOrder::Field(vec!["n".into()]), append_only, "l"),
                    dead: None,
                },
                |l, _| (latest_by_n(l), Bag::new()),
            );
        }
    }
}

#[test]
fn latest_by_arrival_keeps_the_last_event_per_key() {
    // Events get increasing offsets in insertion order, and later times come later.
    for seed in SEEDS {
        check(
            seed,
            ROUNDS,
            EVENTS,
            |l, _| Out {
                rows: sluice_ops::latest(l, LatestOrder::Arrival, true, "l"),
                dead: None,
            },
            |l, _| {
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
            },
        );
    }
}

fn join_oracle(l: &Bag, r: &Bag, kind: JoinKind) -> Bag {
    let mut out = Bag::new();
    for (lrow, ln) in l {
        let matches: Vec<_> = r.iter().filter(|(rrow, _)| rrow.key == lrow.key).collect();
        for (rrow, rn) in &matches {
            let val = Value::map([("left", lrow.val.clone()), ("right", rrow.val.clone())]);
            add(
                &mut out,
                Row {
                    key: lrow.key.clone(),
                    val,
                    pos: lrow.pos,
                },
                ln * *rn,
            );
        }
        if matches.is_empty() && kind == JoinKind::Left {
            let val = Value::map([("left", lrow.val.clone()), ("right", Value::Null)]);
            add(
                &mut out,
                Row {
                    key: lrow.key.clone(),
                    val,
                    pos: lrow.pos,
                },
                *ln,
            );
        }
    }
    out
}

#[test]
fn inner_and_left_joins_match_oracle() {
    for seed in SEEDS {
        for kind in [JoinKind::Inner, JoinKind::Left] {
            check(
                seed,
                ROUNDS,
                TABLE,
                move |l, r| Out {
                    rows: sluice_ops::join(l, r, kind, "j"),
                    dead: None,
                },
                move |l, r| (join_oracle(l, r, kind), Bag::new()),
            );
        }
    }
}

#[test]
fn union_is_the_sum_of_its_inputs() {
    for seed in SEEDS {
        check(
            seed,
            ROUNDS,
            TABLE,
            |l, r| {
                let scope = l.scope();
                Out {
                    rows: sluice_ops::union(scope, vec![l, r]),
                    dead: None,
                }
            },
            |l, r| {
                let mut out = l.clone();
                for (row, n) in r {
                    add(&mut out, row.clone(), *n);
                }
                (out, Bag::new())
            },
        );
    }
}
