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

/// An output update of the upsert fold.
type UpsertUpdate = ((u8, u32), Time, Diff);

/// Feeds `events` from time `from` on (in time order) into an upsert fold with checkpoint
/// hooks, restored from `restore`; `stepwise` steps the dataflow past every time, otherwise
/// the frontier jumps from the start to the end in one go. Returns the output updates and
/// the cut taken at `cut_at`, if any.
fn run_checkpointed(
    worker: &mut Worker,
    events: &[(Time, u8, Upsert)],
    (from, stepwise): (Time, bool),
    requests: &super::CutRequests,
    restore: Option<(Time, Vec<(u8, u32)>)>,
    cut_at: Time,
) -> (Vec<UpsertUpdate>, Option<super::SavedState<u8, u32>>) {
    let (index, peers) = (worker.index(), worker.peers());
    let captured = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&captured);
    let hooks = super::FoldCheckpoint::new(requests.clone(), restore);
    let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, events) = scope.new_collection::<(u8, Upsert), Diff>();
        let (out, _) = events.keyed_fold_checkpointed(
            "Test upsert",
            |_k, state: &mut Option<u32>, (_pos, value)| *state = value,
            |k, v| Some((*k, *v)),
            &hooks,
        );
        let (probe, _) = out.inspect(move |u| sink.borrow_mut().push(*u)).probe();
        (input, probe)
    });
    let last = events.iter().map(|e| e.0).max().unwrap_or(0);
    input.advance_to(from);
    for time in from..=last {
        input.advance_to(time);
        for (_, (_, k, e)) in events
            .iter()
            .enumerate()
            .filter(|(i, e)| e.0 == time && i % peers == index)
        {
            input.insert((*k, *e));
        }
        if stepwise {
            input.advance_to(time + 1);
            input.flush();
            step_past(worker, &probe, time);
        }
    }
    drop(input);
    while !probe.done() {
        worker.step();
    }
    let cut = hooks.take(cut_at);
    (captured.take(), cut)
}

/// The upsert fold's state after every event before `at`: key → value.
fn upsert_state(events: &[(Time, u8, Upsert)], at: Time) -> Vec<(u8, u32)> {
    upsert_oracle(events, at.saturating_sub(1)).into_keys().collect()
}

#[test]
fn a_cut_is_the_state_at_its_frontier_and_a_restored_fold_continues_exactly() {
    use std::sync::{Arc, Mutex};
    for (seed, workers, stepwise) in [(1, 1, true), (2, 1, false), (3, 3, true), (4, 3, false), (5, 2, false)] {
        let events = upsert_events(seed);
        let cut_at: Time = 15;
        // The uninterrupted run, cut at 15 on the way.
        let requests = super::CutRequests::default();
        requests.request(cut_at);
        let (full, cuts) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let (e, r, f, c) = (events.clone(), requests.clone(), full.clone(), cuts.clone());
        timely::execute(timely::Config::process(workers), move |w| {
            let (updates, cut) = run_checkpointed(w, &e, (1, stepwise), &r, None, cut_at);
            f.lock().expect("lock").extend(updates);
            c.lock().expect("lock").extend(cut.expect("every worker cut at 15"));
        })
        .expect("run");
        let mut cut = cuts.lock().expect("lock").clone();
        cut.sort();
        assert_eq!(
            cut,
            upsert_state(&events, cut_at),
            "seed {seed}: the cut is the state before 15"
        );

        // A fresh run restored from the cut (whole, on every worker), fed the rest.
        let rest: Vec<_> = events.iter().filter(|e| e.0 >= cut_at).cloned().collect();
        let resumed = Arc::new(Mutex::new(Vec::new()));
        let (r2, cut2) = (resumed.clone(), cut.clone());
        timely::execute(timely::Config::process(workers), move |w| {
            let requests = super::CutRequests::default();
            let restore = Some((cut_at, cut2.clone()));
            let (updates, _) = run_checkpointed(w, &rest, (cut_at, stepwise), &requests, restore, 0);
            r2.lock().expect("lock").extend(updates);
        })
        .expect("run");
        let (full, resumed) = (
            full.lock().expect("lock").clone(),
            resumed.lock().expect("lock").clone(),
        );
        for t in cut_at..=31 {
            assert_eq!(
                accumulate(&resumed, t),
                accumulate(&full, t),
                "seed {seed}, {workers} workers: the restored run differs at time {t}"
            );
        }
        assert!(resumed.iter().all(|u| u.1 >= cut_at), "nothing before the restore time");
    }
}
