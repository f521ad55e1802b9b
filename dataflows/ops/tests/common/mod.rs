//! Harnesses that check an operator on seeded random inserts and retractions:
//!
//! * [`check`] compares its incremental output at every time with a from-scratch
//!   recomputation on the accumulated input (the differential reference-test pattern);
//! * [`check_workers`] runs it on 1, 2 and 4 worker threads, each feeding a deterministic
//!   share of the same input, and requires identical outputs (and the oracle's at the end).

#![allow(dead_code)]

pub mod cases;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::{Input, InputSession};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_runtime::{DeadLetters, Diff, Pos, Row, Rows, Time, Value};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

/// A multiset of rows.
pub type Bag = BTreeMap<Row, Diff>;

/// What an operator under test produced: rows and, if it can fail, dead letters.
pub struct Out<'s> {
    /// The output rows.
    pub rows: Rows<'s>,
    /// Dead letters, if the operator has them.
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

/// A table: keyed rows inserted and retracted.
pub const TABLE: Gen = Gen {
    retractions: true,
    keyed: true,
};
/// Events: keyed rows, only inserted.
pub const EVENTS: Gen = Gen {
    retractions: false,
    keyed: true,
};

/// The updates of one time, and the accumulated inputs after them.
pub struct Round {
    /// Updates to the left input.
    pub left: Vec<(Row, Diff)>,
    /// Updates to the right input.
    pub right: Vec<(Row, Diff)>,
    /// The left input after this time.
    pub left_bag: Bag,
    /// The right input after this time.
    pub right_bag: Bag,
}

/// A random record: `n` is usually an integer, sometimes a float (a half, so sums stay exact)
/// and sometimes missing, so failure paths run too.
fn record(rng: &mut SmallRng, id: u64) -> Value {
    let mut fields = vec![
        ("id", Value::from(id)),
        ("s", Value::from(["x", "y", "z"][rng.random_range(0..3)])),
    ];
    match rng.random_range(0..10) {
        0 => {}
        1 => fields.push(("n", Value::from(rng.random_range(0..20) as f64 + 0.5))),
        _ => fields.push(("n", Value::Int(rng.random_range(0..20)))),
    }
    Value::map(fields)
}

/// One time's random updates to an input whose current contents are `present`.
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
        let update = if retract {
            let i = rng.random_range(0..present.len());
            present.keys().nth(i).cloned().map(|row| (row, -1))
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
            Some((row, n))
        };
        if let Some((row, d)) = update {
            add(present, row.clone(), d);
            updates.push((row, d));
        }
    }
    updates
}

/// The random input of a test: `rounds` times of updates to two inputs.
pub fn history(seed: u64, rounds: u64, shape: Gen) -> Vec<Round> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut lbag, mut rbag) = (Bag::new(), Bag::new());
    let mut next_id = 0;
    (0..rounds)
        .map(|_| {
            let left = random_updates(&mut rng, shape, &mut lbag, &mut next_id, 0);
            let right = random_updates(&mut rng, shape, &mut rbag, &mut next_id, 1);
            Round {
                left,
                right,
                left_bag: lbag.clone(),
                right_bag: rbag.clone(),
            }
        })
        .collect()
}

/// Output updates as the harness collects them: rows, and dead letters as rows
/// (`key` = reason, `val` = raw JSON).
type Updates = Vec<(Row, Time, Diff)>;

/// The two input sessions of a dataflow under test and the probe on its outputs.
type Harness = (
    InputSession<Time, Row, Diff>,
    InputSession<Time, Row, Diff>,
    ProbeHandle<Time>,
);

/// Builds `build` in a dataflow on `worker`, sending its output updates to `rows` and `dead`.
fn build_on<B, F>(worker: &mut Worker, build: &B, mut rows: F, mut dead: F) -> Harness
where
    B: for<'s> Fn(Rows<'s>, Rows<'s>) -> Out<'s>,
    F: FnMut(&(Row, Time, Diff)) + 'static,
{
    let probe = ProbeHandle::new();
    let (left, right) = worker.dataflow::<Time, _, _>(|scope| {
        let (left, l) = scope.new_collection::<Row, Diff>();
        let (right, r) = scope.new_collection::<Row, Diff>();
        let out = build(l, r);
        out.rows.inspect(move |u| rows(u)).probe_with(&probe);
        if let Some(letters) = out.dead {
            letters
                .map(|d| Row {
                    key: Value::str(d.reason),
                    val: Value::str(d.raw),
                    pos: d.pos,
                })
                .inspect(move |u| dead(u))
                .probe_with(&probe);
        }
        (left, right)
    });
    (left, right, probe)
}

/// Feeds `history` over one worker to `build`, checking after each time that the accumulated
/// output equals `oracle(left, right)` (rows, dead letters as rendered by [`dead`]).
pub fn check<B, O>(seed: u64, rounds: u64, shape: Gen, build: B, oracle: O)
where
    B: for<'s> Fn(Rows<'s>, Rows<'s>) -> Out<'s> + Send + Sync + 'static,
    O: Fn(&Bag, &Bag) -> (Bag, Bag) + Send + Sync + 'static,
{
    let history = history(seed, rounds, shape);
    timely::execute_directly(move |worker| {
        let rows_out: Rc<RefCell<Updates>> = Rc::default();
        let dead_out: Rc<RefCell<Updates>> = Rc::default();
        let (rows_sink, dead_sink) = (rows_out.clone(), dead_out.clone());
        let (mut left, mut right, probe) = build_on(
            worker,
            &build,
            Box::new(move |u: &(Row, Time, Diff)| rows_sink.borrow_mut().push(u.clone())) as Box<dyn FnMut(&_)>,
            Box::new(move |u: &(Row, Time, Diff)| dead_sink.borrow_mut().push(u.clone())),
        );
        for (t, round) in (0..).zip(&history) {
            for (row, d) in &round.left {
                left.update(row.clone(), *d);
            }
            for (row, d) in &round.right {
                right.update(row.clone(), *d);
            }
            for input in [&mut left, &mut right] {
                input.advance_to(t + 1);
                input.flush();
            }
            worker.step_while(|| probe.less_than(&(t + 1)));
            let (want_rows, want_dead) = oracle(&round.left_bag, &round.right_bag);
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

/// Runs `build` on 1, 2 and 4 worker threads, worker `w` of `n` feeding the updates at
/// positions `w, w + n, …` of each time; requires the same consolidated output updates (rows
/// and dead letters, at every time) from each, and the oracle's contents at the end.
pub fn check_workers<B, O>(seed: u64, rounds: u64, shape: Gen, build: B, oracle: O)
where
    B: for<'s> Fn(Rows<'s>, Rows<'s>) -> Out<'s> + Send + Sync + 'static,
    O: Fn(&Bag, &Bag) -> (Bag, Bag),
{
    let history = Arc::new(history(seed, rounds, shape));
    let build = Arc::new(build);
    let mut outputs = Vec::new();
    for peers in [1, 2, 4] {
        let rows_out: Arc<Mutex<Updates>> = Arc::default();
        let dead_out: Arc<Mutex<Updates>> = Arc::default();
        let (rows_all, dead_all, history, build) = (rows_out.clone(), dead_out.clone(), history.clone(), build.clone());
        let guards = timely::execute(timely::Config::process(peers), move |worker| {
            let (me, peers) = (worker.index(), worker.peers());
            let (rows_sink, dead_sink) = (rows_all.clone(), dead_all.clone());
            let (mut left, mut right, probe) = build_on(
                worker,
                &*build,
                Box::new(move |u: &(Row, Time, Diff)| rows_sink.lock().expect("lock").push(u.clone()))
                    as Box<dyn FnMut(&_)>,
                Box::new(move |u: &(Row, Time, Diff)| dead_sink.lock().expect("lock").push(u.clone())),
            );
            for (t, round) in (0..).zip(history.iter()) {
                for (input, updates) in [(&mut left, &round.left), (&mut right, &round.right)] {
                    for (row, d) in updates.iter().skip(me).step_by(peers) {
                        input.update(row.clone(), *d);
                    }
                    input.advance_to(t + 1);
                    input.flush();
                }
                worker.step_while(|| probe.less_than(&(t + 1)));
            }
        })
        .expect("timely starts");
        for result in guards.join() {
            result.expect("worker finished");
        }
        let take = |out: &Arc<Mutex<Updates>>| consolidate(&out.lock().expect("lock"));
        outputs.push((peers, take(&rows_out), take(&dead_out)));
    }
    let (_, rows_1, dead_1) = &outputs[0];
    for (peers, rows, dead) in &outputs[1..] {
        assert_eq!(rows, rows_1, "rows on {peers} workers differ from 1 (seed {seed})");
        assert_eq!(
            dead, dead_1,
            "dead letters on {peers} workers differ from 1 (seed {seed})"
        );
    }
    if let Some(last) = history.last() {
        let (want_rows, want_dead) = oracle(&last.left_bag, &last.right_bag);
        assert_eq!(
            contents(rows_1),
            want_rows,
            "final rows differ from the oracle (seed {seed})"
        );
        assert_eq!(
            contents(dead_1),
            want_dead,
            "final dead letters differ from the oracle (seed {seed})"
        );
    }
}

/// Updates consolidated per `(time, row)`, without the ones that cancel out.
fn consolidate(updates: &[(Row, Time, Diff)]) -> BTreeMap<(Time, Row), Diff> {
    let mut out = BTreeMap::new();
    for (row, time, diff) in updates {
        *out.entry((*time, row.clone())).or_default() += diff;
    }
    out.retain(|_, d| *d != 0);
    out
}

/// The multiset consolidated updates add up to.
fn contents(updates: &BTreeMap<(Time, Row), Diff>) -> Bag {
    let mut bag = Bag::new();
    for ((_, row), diff) in updates {
        add(&mut bag, row.clone(), *diff);
    }
    bag
}

/// The multiset of output updates at times `<= t`.
fn accumulate(updates: &[(Row, Time, Diff)], t: Time) -> Bag {
    let mut bag = Bag::new();
    for (row, time, diff) in updates {
        if *time <= t {
            add(&mut bag, row.clone(), *diff);
        }
    }
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

/// A dead letter row as the harness renders it.
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
/// The seeds of the worker-count tests (each runs three dataflows).
pub const WORKER_SEEDS: std::ops::Range<u64> = 100..102;
