//! A test harness for the delivery dataflow: feeds JSON reports in batches (one time each),
//! captures every output's updates, and renders upsert outputs as `key JSON → value JSON`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use sluice_delivery::{DeliveryConfig, delivery};
use sluice_runtime::testing;
use sluice_runtime::{DeadLetter, Diff, Pos, Row, Time, Value};
use timely::dataflow::ProbeHandle;

/// Every update of every output, with times, and the state sizes at the end.
#[derive(Default, Debug)]
pub struct Captured {
    /// Updates of `unsubscribes`, `token_replacements`, `error_stats`, `alerts`, in that order.
    pub outputs: [Vec<(Row, Time, Diff)>; 4],
    /// Dead letters.
    pub errors: Vec<(DeadLetter, Time, Diff)>,
    /// Summed over workers: tokens, windows, apps, error keys.
    pub state: [usize; 4],
}

pub use sluice_runtime::testing::Upserts;

impl Captured {
    /// The contents of output `index` through time `at`, checking it is a proper upsert
    /// (every row present once, at most one row per key).
    pub fn upserts_at(&self, index: usize, at: Time) -> Upserts {
        testing::upserts_at(&self.outputs[index], at, &format!("output {index}"))
    }

    /// The final contents of output `index`.
    pub fn upserts(&self, index: usize) -> Upserts {
        self.upserts_at(index, Time::MAX)
    }

    /// The dead letters, in position order.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        testing::dead_letters_at(&self.errors, Time::MAX)
    }
}

/// Output indexes for [`Captured::upserts`].
pub const UNSUBSCRIBES: usize = 0;
/// See [`UNSUBSCRIBES`].
pub const REPLACEMENTS: usize = 1;
/// See [`UNSUBSCRIBES`].
pub const ERROR_STATS: usize = 2;
/// See [`UNSUBSCRIBES`].
pub const ALERTS: usize = 3;

/// The defaults, with the built-in table.
pub fn config() -> DeliveryConfig {
    DeliveryConfig::new(None, None, None, None).expect("default config")
}

/// Runs the dataflow on `workers` workers; batch `i` enters at time `i + 1`. Report `j` of
/// batch `i` has position `{source: 0, partition: i, offset: j}`.
pub fn run(config: &DeliveryConfig, batches: &[Vec<String>], workers: usize) -> Captured {
    let config = config.clone();
    let batches = batches.to_vec();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let captured = Rc::new(RefCell::new(Captured::default()));
        let probe = ProbeHandle::new();
        let (mut input, state) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, reports) = scope.new_collection::<Row, Diff>();
            let out = delivery(reports, &config, "delivery");
            let outputs = [out.unsubscribes, out.token_replacements, out.error_stats, out.alerts];
            for (i, rows) in outputs.into_iter().enumerate() {
                let sink = Rc::clone(&captured);
                rows.inspect(move |u| sink.borrow_mut().outputs[i].push(u.clone()))
                    .probe_with(&probe);
            }
            let sink = Rc::clone(&captured);
            out.errors
                .inspect(move |u| sink.borrow_mut().errors.push(u.clone()))
                .probe_with(&probe);
            (input, out.state)
        });
        for (i, batch) in batches.iter().enumerate() {
            let time = i as Time + 1;
            input.advance_to(time);
            for (j, json) in batch.iter().enumerate() {
                if j % peers == index {
                    let val = Value::from_json_str(json).expect("test reports are JSON");
                    let pos = Pos {
                        source: 0,
                        partition: i as u32,
                        offset: j as u64,
                    };
                    input.insert(Row {
                        key: Value::Null,
                        val,
                        pos,
                    });
                }
            }
            input.advance_to(time + 1);
            input.flush();
            // Each time's output must complete while the input is still open.
            let deadline = Instant::now() + Duration::from_secs(60);
            while probe.less_equal(&time) {
                assert!(Instant::now() < deadline, "outputs never passed time {time}");
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
        drop(input);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let mut captured = captured.take();
        captured.state = [state.tokens(), state.windows(), state.apps(), state.error_keys()];
        captured
    })
    .expect("timely starts");
    let mut all = Captured::default();
    for part in guards.join() {
        let part = part.expect("worker ran");
        for (mine, theirs) in all.outputs.iter_mut().zip(part.outputs) {
            mine.extend(theirs);
        }
        all.errors.extend(part.errors);
        for (mine, theirs) in all.state.iter_mut().zip(part.state) {
            *mine += theirs;
        }
    }
    all
}

/// JSON as the outputs render it (sorted keys, compact).
pub fn json(value: serde_json::Value) -> String {
    Value::from_json_str(&value.to_string())
        .expect("valid json")
        .to_json_string()
}
