//! A harness that checks an operator's incremental output at every time against a
//! from-scratch recomputation on the accumulated input (the differential reference-test
//! pattern), on seeded random inserts and retractions.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_runtime::{DeadLetters, Diff, Pos, Row, Rows, Time, Value};
use timely::dataflow::ProbeHandle;

/// A multiset of rows.
pub type Bag = BTreeMap<Row, Diff>;

/// What an operator under test produced: rows and, if it can fail, dead letters.
pub struct Out<'s> {
    /// The output rows.
    pub rows: Rows<'s>,
    /// Dead letters, rendered as rows (`key` = reason, `val` = raw) for comparison.
    pub dead: Option<DeadLetters<'s>>,
}

/// How to generate input.
#[derive(Clone, Copy)]
pub struct Gen {
    /// Also retract rows (else inserts only: an event collection).
    pub retractions: bool,
    /// Give rows keys `{"k": 0..5}` (else `Null`).
    pub keyed: bool,
}

/// A random record: sometimes without `n`, so failure paths run too.
fn record(rng: &mut SmallRng, id: u64) -> Value {
    let mut fields = vec![
        ("id", Value::from(id)),
        ("s", Value::from(["x", "y", "z"][rng.random_range(0..3)])),
    ];
    if rng.random_range(0..10) > 0 {
        fields.push(("n", Value::Int(rng.random_range(0..20))));
    }
    Value::map(fields)
}

fn random_updates(
    rng: &mut SmallRng,
    shape: Gen,
    present: &mut Bag,
    next_id: &mut u64,
    input: u32,
) -> Vec<(Row, Diff)> {
    let mut updates = Vec::new();
    for _ in 0..rng.random_range(0..6) {
        let retract = shape.retractions && !present.is_empty() && rng.random_range(0..3) == 0;
        if retract {
            let i = rng.random_range(0..present.len());
            if let Some(row) = present.keys().nth(i).cloned() {
                updates.push((row, -1));
            }
        } else {
            *next_id += 1;
            let key = if shape.keyed {
                Value::map([("k", Value::Int(rng.random_range(0..5)))])
            } else {
                Value::Null
            };
            let row = Row {
                key,
                val: record(rng, *next_id),
                pos: Pos {
                    source: input,
                    partition: 0,
                    offset: *next_id,
                },
            };
            // Now and then insert a row twice, for multiplicities above one.
            let n = if rng.random_range(0..8) == 0 { 2 } else { 1 };
            updates.push((row, n));
        }
        for (row, d) in updates.iter().skip(updates.len() - 1) {
            let e = present.entry(row.clone()).or_default();
            *e += d;
            if *e == 0 {
                present.remove(row);
            }
        }
    }
    updates
}

/// Feeds two random inputs over `rounds` times to `build`, checking after each time that
/// the accumulated output equals `oracle(left, right)` (rows, dead letters as (reason, raw)).
pub fn check<B, O>(seed: u64, rounds: u64, shape: Gen, build: B, oracle: O)
where
    B: for<'s> Fn(Rows<'s>, Rows<'s>) -> Out<'s> + Send + Sync + 'static,
    O: Fn(&Bag, &Bag) -> (Bag, Bag) + Send + Sync + 'static,
{
    timely::execute_directly(move |worker| {
        let rows_out: Rc<RefCell<Vec<(Row, Time, Diff)>>> = Rc::default();
        let dead_out: Rc<RefCell<Vec<(Row, Time, Diff)>>> = Rc::default();
        let probe = ProbeHandle::new();
        let (mut left, mut right) = worker.dataflow::<Time, _, _>(|scope| {
            let (left, l) = scope.new_collection::<Row, Diff>();
            let (right, r) = scope.new_collection::<Row, Diff>();
            let out = build(l, r);
            let sink = rows_out.clone();
            out.rows
                .inspect(move |u| sink.borrow_mut().push(u.clone()))
                .probe_with(&probe);
            if let Some(dead) = out.dead {
                let sink = dead_out.clone();
                dead.map(|d| Row {
                    key: Value::str(d.reason),
                    val: Value::str(d.raw),
                    pos: d.pos,
                })
                .inspect(move |u| sink.borrow_mut().push(u.clone()))
                .probe_with(&probe);
            }
            (left, right)
        });
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut lbag, mut rbag) = (Bag::new(), Bag::new());
        let mut next_id = 0;
        for t in 0..rounds {
            for (row, d) in random_updates(&mut rng, shape, &mut lbag, &mut next_id, 0) {
                left.update(row, d);
            }
            for (row, d) in random_updates(&mut rng, shape, &mut rbag, &mut next_id, 1) {
                right.update(row, d);
            }
            left.advance_to(t + 1);
            right.advance_to(t + 1);
            left.flush();
            right.flush();
            worker.step_while(|| probe.less_than(&(t + 1)));
            let (want_rows, want_dead) = oracle(&lbag, &rbag);
            assert_eq!(
                accumulate(&rows_out.borrow(), t),
                want_rows,
                "rows differ at time {t} (seed {seed})"
            );
            assert_eq!(
                accumulate(&dead_out.borrow(), t),
                want_dead,
                "dead letters differ at time {t} (seed {seed})"
            );
        }
    });
}

/// The multiset of output updates at times `<= t`.
fn accumulate(updates: &[(Row, Time, Diff)], t: Time) -> Bag {
    let mut bag = Bag::new();
    for (row, time, diff) in updates {
        if *time <= t {
            *bag.entry(row.clone()).or_default() += diff;
        }
    }
    bag.retain(|_, d| *d != 0);
    bag
}

/// Adds `n` copies of `row` to `bag`.
pub fn add(bag: &mut Bag, row: Row, n: Diff) {
    let e = bag.entry(row.clone()).or_default();
    *e += n;
    if *e == 0 {
        bag.remove(&row);
    }
}

/// Dead letter rows as the harness renders them.
pub fn dead(reason: &str, row: &Row) -> Row {
    Row {
        key: Value::str(reason),
        val: Value::str(row.val.to_json_string()),
        pos: row.pos,
    }
}

/// Rows grouped by key, with multiplicities, for per-key oracles.
pub fn by_key(bag: &Bag) -> BTreeMap<Value, Vec<(Row, Diff)>> {
    let mut groups: BTreeMap<Value, Vec<(Row, Diff)>> = BTreeMap::new();
    for (row, n) in bag {
        groups.entry(row.key.clone()).or_default().push((row.clone(), *n));
    }
    groups
}

/// The seeds every oracle test runs.
pub const SEEDS: std::ops::Range<u64> = 0..6;
/// Times per run.
pub const ROUNDS: u64 = 30;
