//! A test harness for the fanout dataflow: feeds subscriber changes and events in rounds (one
//! time each), captures the outputs, and reads them back.

#![allow(dead_code)]

use std::sync::Arc;

use differential_dataflow::input::Input;
use sluice_fanout::{Counters, fanout};
use sluice_runtime::testing::{self, Upserts};
use sluice_runtime::{DeadLetter, Diff, Pos, Row, Time, Value};
use timely::dataflow::ProbeHandle;

/// Output indexes, in the order of `OUTPUTS`.
pub const DELIVERIES: usize = 0;
/// See [`DELIVERIES`].
pub const SUBSCRIBER_ERRORS: usize = 1;

/// One time's input.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Subscriber rows inserted (`+1`) or retracted (`-1`), as value JSON (keyed by `id`).
    pub subscribers: Vec<(String, Diff)>,
    /// Event JSON.
    pub events: Vec<String>,
}

/// The position of event `j` of round `i`.
pub fn event_pos(i: usize, j: usize) -> Pos {
    Pos {
        source: 1,
        partition: (j % 2) as u32,
        offset: (i * 100_000 + j) as u64,
    }
}

/// Every update of every output, and the counters.
#[derive(Debug, Default)]
pub struct Captured {
    /// Updates of each output.
    pub outputs: Vec<Vec<(Row, Time, Diff)>>,
    /// Dead letters.
    pub errors: Vec<(DeadLetter, Time, Diff)>,
    /// Events matched, deliveries made, filter errors.
    pub counts: (u64, u64, u64),
}

impl Captured {
    /// The deliveries made at exactly `at`, as sorted value JSON.
    pub fn deliveries_at(&self, at: Time) -> Vec<String> {
        let mut out: Vec<String> = self.outputs[DELIVERIES]
            .iter()
            .filter(|u| u.1 == at)
            .map(|(row, _, d)| {
                assert_eq!(*d, 1, "a delivery is inserted once: {row:?}");
                row.val.to_json_string()
            })
            .collect();
        out.sort();
        out
    }

    /// Every delivery, as parsed values, sorted by JSON.
    pub fn deliveries(&self) -> Vec<Value> {
        let mut out: Vec<(String, Value)> = self.outputs[DELIVERIES]
            .iter()
            .map(|(row, _, d)| {
                assert_eq!(*d, 1, "a delivery is inserted once: {row:?}");
                (row.val.to_json_string(), row.val.clone())
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The subscriber errors at `at`.
    pub fn subscriber_errors_at(&self, at: Time) -> Upserts {
        testing::upserts_at(&self.outputs[SUBSCRIBER_ERRORS], at, "subscriber_errors")
    }

    /// The final dead letters.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        testing::dead_letters_at(&self.errors, Time::MAX)
    }
}

/// Parses JSON.
pub fn parse(json: &str) -> Value {
    Value::from_json_str(json).expect("test JSON")
}

/// The subscriber row of value JSON `json`, keyed by its `id`.
pub fn subscriber_row(json: &str) -> Row {
    let val = parse(json);
    let id = val.get("id").cloned().unwrap_or(Value::Null);
    Row::derived(Value::map([("id", id)]), val)
}

/// Runs the dataflow on `workers` workers; round `i` enters at time `i + 1`. Worker `w` feeds
/// the inputs at indexes `w, w + workers, …`.
pub fn run(rounds: &[Round], workers: usize) -> Captured {
    let rounds = rounds.to_vec();
    let counters = Arc::new(Counters::default());
    let shared = Arc::clone(&counters);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let counters = Arc::clone(&shared);
        let (mut subs, mut events, captured) = worker.dataflow::<Time, _, _>(|scope| {
            let (subs_in, subs) = scope.new_collection::<Row, Diff>();
            let (events_in, events) = scope.new_collection::<Row, Diff>();
            let (outputs, errors) = fanout(subs, events, counters, "fanout").split();
            (subs_in, events_in, testing::capture(outputs, errors, &probe))
        });
        for (i, round) in rounds.iter().enumerate() {
            let time = i as Time + 1;
            subs.advance_to(time);
            events.advance_to(time);
            for (j, (json, diff)) in round.subscribers.iter().enumerate() {
                if j % peers == index {
                    subs.update(subscriber_row(json), *diff);
                }
            }
            for (j, json) in round.events.iter().enumerate() {
                if j % peers == index {
                    events.insert(Row {
                        key: Value::Null,
                        val: parse(json),
                        pos: event_pos(i, j),
                    });
                }
            }
            subs.advance_to(time + 1);
            events.advance_to(time + 1);
            subs.flush();
            events.flush();
            testing::step_past(worker, &probe, time);
        }
        drop((subs, events));
        testing::step_to_end(worker, &probe);
        std::mem::take(&mut *captured.borrow_mut())
    })
    .expect("timely runs");
    let mut all = testing::Updates::default();
    for result in guards.join() {
        all.absorb(result.expect("worker finishes"));
    }
    use std::sync::atomic::Ordering::Relaxed;
    Captured {
        outputs: all.outputs,
        errors: all.errors,
        counts: (
            counters.events.load(Relaxed),
            counters.deliveries.load(Relaxed),
            counters.filter_errors.load(Relaxed),
        ),
    }
}
