//! A test harness for the delivery dataflow: feeds JSON reports in batches (one time each),
//! captures every output's updates, and renders upsert outputs as `key JSON → value JSON`.

#![allow(dead_code)]

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
        let probe = ProbeHandle::new();
        let (mut input, captured, state) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, reports) = scope.new_collection::<Row, Diff>();
            let out = delivery(
                reports,
                &config,
                "delivery",
                &mut sluice_runtime::recovery::StateRegistry::disabled(),
            );
            let outputs = [out.unsubscribes, out.token_replacements, out.error_stats, out.alerts];
            (input, testing::capture(outputs, out.errors, &probe), out.state)
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
            testing::step_past(worker, &probe, time);
        }
        drop(input);
        testing::step_to_end(worker, &probe);
        (
            captured.take(),
            [state.tokens(), state.windows(), state.apps(), state.error_keys()],
        )
    })
    .expect("timely starts");
    let (mut all, mut state) = (testing::Updates::default(), [0; 4]);
    for part in guards.join() {
        let (updates, sizes) = part.expect("worker ran");
        all.absorb(updates);
        for (mine, theirs) in state.iter_mut().zip(sizes) {
            *mine += theirs;
        }
    }
    Captured {
        outputs: all.outputs.try_into().expect("four outputs"),
        errors: all.errors,
        state,
    }
}

/// JSON as the outputs render it (sorted keys, compact).
pub fn json(value: serde_json::Value) -> String {
    Value::from_json_str(&value.to_string())
        .expect("valid json")
        .to_json_string()
}
