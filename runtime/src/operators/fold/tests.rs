//! Tests of the keyed fold: the incremental output at every time against a from-scratch
//! oracle on seeded random events, through both inputs and on several workers.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::VecCollection;
use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use timely::dataflow::operators::vec::input::Handle;
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::worker::Worker;

use super::KeyedFold;
use crate::record::{Diff, Time};

/// An event of the upsert test: its position (arrival order) and the new value or a tombstone.
type Upsert = (u32, Option<u32>);
/// An event of the max test: the field to maximise and a payload that rides along.
type Reading = (u32, u32);
/// A dataflow under test: events in, output collection out.
type Build<E, O> = for<'s> fn(VecCollection<'s, Time, (u8, E), Diff>) -> VecCollection<'s, Time, O, Diff>;

/// Random events `(time, key, event)`, several per time and key, for times `1..=times`.
fn random_events<E>(seed: u64, times: u64, mut event: impl FnMut(&mut SmallRng, u32) -> E) -> Vec<(Time, u8, E)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut pos = 0u32;
    for time in 1..=times {
        for _ in 0..rng.random_range(0..12) {
            pos += 1;
            out.push((time, rng.random_range(0..6u8), event(&mut rng, pos)));
        }
    }
    out
}

fn upsert_events(seed: u64) -> Vec<(Time, u8, Upsert)> {
    random_events(seed, 30, |rng, pos| {
        (pos, rng.random_bool(0.75).then(|| rng.random_range(0..4u32)))
    })
}

fn reading_events(seed: u64) -> Vec<(Time, u8, Reading)> {
    random_events(seed, 30, |rng, _| {
        (rng.random_range(0..50u32), rng.random_range(0..3u32))
    })
}

/// Upsert: each event replaces the key's value; a tombstone forgets the key.
fn upsert<'s>(events: VecCollection<'s, Time, (u8, Upsert), Diff>) -> VecCollection<'s, Time, (u8, u32), Diff> {
    events.keyed_fold_named(
        "Test upsert",
        |_k, state: &mut Option<u32>, (_pos, value)| *state = value,
        |k, v| Some((*k, *v)),
    )
}

/// Max by field: the reading with the largest field per key (ties: the larger payload), shown
/// only for keys whose max is even, so `render` returning `None` is exercised too.
fn max_even<'s>(events: VecCollection<'s, Time, (u8, Reading), Diff>) -> VecCollection<'s, Time, (u8, Reading), Diff> {
    events.keyed_fold_named(
        "Test max",
        |_k, state: &mut Option<Reading>, r| {
            if state.is_none_or(|s| r > s) {
                *state = Some(r);
            }
        },
        |k, r| (r.0 % 2 == 0).then_some((*k, *r)),
    )
}

/// The upsert oracle: for each key, the value of its event with the largest `(time, pos)`.
fn upsert_oracle(events: &[(Time, u8, Upsert)], at: Time) -> BTreeMap<(u8, u32), Diff> {
    let mut latest: BTreeMap<u8, (Time, u32, Option<u32>)> = BTreeMap::new();
    for &(t, k, (pos, v)) in events.iter().filter(|e| e.0 <= at) {
        if latest.get(&k).is_none_or(|&(lt, lp, _)| (t, pos) > (lt, lp)) {
            latest.insert(k, (t, pos, v));
        }
    }
    latest
        .into_iter()
        .filter_map(|(k, (_, _, v))| v.map(|v| ((k, v), 1)))
        .collect()
}

/// The max oracle: the largest reading per key so far, if its field is even.
fn max_oracle(events: &[(Time, u8, Reading)], at: Time) -> BTreeMap<(u8, Reading), Diff> {
    let mut max: BTreeMap<u8, Reading> = BTreeMap::new();
    for &(_, k, r) in events.iter().filter(|e| e.0 <= at) {
        let m = max.entry(k).or_insert(r);
        *m = (*m).max(r);
    }
    max.into_iter()
        .filter(|(_, r)| r.0 % 2 == 0)
        .map(|(k, r)| ((k, r), 1))
        .collect()
}

/// The output accumulated through time `at`, without zero entries.
fn accumulate<O: Ord + Clone>(updates: &[(O, Time, Diff)], at: Time) -> BTreeMap<O, Diff> {
    let mut acc = BTreeMap::new();
    for (o, _, d) in updates.iter().filter(|u| u.1 <= at) {
        *acc.entry(o.clone()).or_insert(0) += d;
    }
    acc.retain(|_, d| *d != 0);
    acc
}

/// Steps `worker` until `probe` has passed `time`, failing if it does not get there.
fn step_past(worker: &mut Worker, probe: &ProbeHandle<Time>, time: Time) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if !probe.less_equal(&time) {
            return;
        }
        worker.step_or_park(Some(std::time::Duration::from_millis(1)));
    }
    panic!("the output frontier never passed time {time}");
}

/// Runs `build` on this worker's share of `events` (fed through a differential input, in a
/// shuffled order within each time), advancing one time at a time and checking that the
/// output frontier follows. Returns the output updates this worker saw.
fn run_collection<E, O>(worker: &mut Worker, events: &[(Time, u8, E)], build: Build<E, O>) -> Vec<(O, Time, Diff)>
where
    E: differential_dataflow::ExchangeData,
    O: differential_dataflow::Data + Send,
{
    let (index, peers) = (worker.index(), worker.peers());
    let captured = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&captured);
    let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, events) = scope.new_collection::<(u8, E), Diff>();
        let (probe, _) = build(events)
            .inspect_batch(|stamp, updates| {
                // Outputs must travel under a capability for their own time.
                assert!(
                    updates.iter().all(|u| stamp.least() == Some(&u.1)),
                    "output at a wrong time"
                );
            })
            .inspect(move |u| sink.borrow_mut().push(u.clone()))
            .probe();
        (input, probe)
    });
    let mut rng = SmallRng::seed_from_u64(index as u64);
    let last = events.iter().map(|e| e.0).max().unwrap_or(0);
    for time in 1..=last {
        let mut mine: Vec<_> = events
            .iter()
            .enumerate()
            .filter(|(i, e)| e.0 == time && i % peers == index)
            .collect();
        // Arrival order within a time must not matter.
        for i in (1..mine.len()).rev() {
            mine.swap(i, rng.random_range(0..=i));
        }
        input.advance_to(time);
        for (_, (_, k, e)) in mine {
            input.insert((*k, e.clone()));
        }
        input.advance_to(time + 1);
        input.flush();
        step_past(worker, &probe, time);
    }
    drop(input);
    while !probe.done() {
        worker.step();
    }
    captured.take()
}

#[test]
fn upsert_matches_oracle_at_every_time() {
    for seed in 0..8 {
        let events = upsert_events(seed);
        let probe_events = events.clone();
        let updates = timely::execute_directly(move |w| run_collection(w, &probe_events, upsert));
        for t in 0..=31 {
            assert_eq!(
                accumulate(&updates, t),
                upsert_oracle(&events, t),
                "seed {seed}, time {t}"
            );
        }
    }
}

#[test]
fn max_by_field_matches_oracle_at_every_time() {
    for seed in 0..8 {
        let events = reading_events(seed);
        let probe_events = events.clone();
        let updates = timely::execute_directly(move |w| run_collection(w, &probe_events, max_even));
        for t in 0..=31 {
            assert_eq!(accumulate(&updates, t), max_oracle(&events, t), "seed {seed}, time {t}");
        }
    }
}

#[test]
fn several_workers_give_the_same_result() {
    for workers in [2, 4] {
        let events = upsert_events(42);
        let shared = events.clone();
        let guards = timely::execute(timely::Config::process(workers), move |w| {
            run_collection(w, &shared, upsert)
        })
        .expect("timely starts");
        let updates: Vec<_> = guards.join().into_iter().flat_map(|r| r.expect("worker ran")).collect();
        for t in 0..=31 {
            assert_eq!(
                accumulate(&updates, t),
                upsert_oracle(&events, t),
                "{workers} workers, time {t}"
            );
        }

        let events = reading_events(43);
        let shared = events.clone();
        let guards = timely::execute(timely::Config::process(workers), move |w| {
            run_collection(w, &shared, max_even)
        })
        .expect("timely starts");
        let updates: Vec<_> = guards.join().into_iter().flat_map(|r| r.expect("worker ran")).collect();
        assert_eq!(
            accumulate(&updates, Time::MAX),
            max_oracle(&events, Time::MAX),
            "{workers} workers"
        );
    }
}

#[test]
fn stream_input_folds_at_message_times_and_completes() {
    let events = upsert_events(7);
    let fed = events.clone();
    let (updates, sizes) = timely::execute_directly(move |worker| {
        let captured = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&captured);
        let (mut input, probe, state) = worker.dataflow::<Time, _, _>(|scope| {
            let mut input = Handle::<Time, (u8, Upsert)>::new();
            let stream: StreamVec<'_, Time, (u8, Upsert)> = input.to_stream(scope);
            let (out, state) = stream.keyed_fold_core(
                "Test stream upsert",
                |_k, state: &mut Option<u32>, (_pos, v): Upsert| *state = v,
                |k, v| Some((*k, *v)),
            );
            let (probe, _) = out.inspect(move |u| sink.borrow_mut().push(*u)).probe();
            (input, probe, state)
        });
        let mut sizes = Vec::new();
        let last = fed.iter().map(|e| e.0).max().unwrap_or(0);
        for time in 1..=last {
            input.advance_to(time);
            for (_, k, e) in fed.iter().filter(|e| e.0 == time) {
                input.send((*k, *e));
            }
            input.advance_to(time + 1);
            step_past(worker, &probe, time);
            sizes.push((time, state.len(), state.snapshot()));
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
        (captured.take(), sizes)
    });
    for t in 0..=31 {
        assert_eq!(accumulate(&updates, t), upsert_oracle(&events, t), "time {t}");
    }
    // The state holds exactly the keys with a value: tombstones forget.
    for (t, len, snapshot) in sizes {
        let oracle = upsert_oracle(&events, t);
        assert_eq!(len, oracle.len(), "time {t}");
        let as_rows: BTreeMap<(u8, u32), Diff> = snapshot.into_iter().map(|kv| (kv, 1)).collect();
        assert_eq!(as_rows, oracle, "time {t}");
    }
}

#[test]
fn retractions_are_ignored_and_multiplicities_repeat() {
    let updates = timely::execute_directly(|worker| {
        let captured = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&captured);
        let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<(u8, ()), Diff>();
            let counts = events.keyed_fold_named(
                "Test count",
                |_k, n: &mut Option<u64>, ()| *n = Some(n.unwrap_or(0) + 1),
                |k, n| Some((*k, *n)),
            );
            let (probe, _) = counts.inspect(move |u| sink.borrow_mut().push(*u)).probe();
            (input, probe)
        });
        input.update((1, ()), 3);
        input.update((2, ()), -1);
        input.advance_to(1);
        input.flush();
        step_past(worker, &probe, 0);
        input.update((1, ()), 2);
        drop(input);
        while !probe.done() {
            worker.step();
        }
        captured.take()
    });
    assert_eq!(accumulate(&updates, 0), BTreeMap::from([((1, 3), 1)]));
    assert_eq!(accumulate(&updates, 1), BTreeMap::from([((1, 5), 1)]));
}
