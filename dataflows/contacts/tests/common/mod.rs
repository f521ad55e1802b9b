//! A test harness for the contacts dataflow: feeds client changes and contact-data updates
//! in rounds (one time each), captures every output's updates, and renders them as
//! `key JSON → value JSON` (contents) or as consolidated per-time updates (changelogs).

#![allow(dead_code)]

use std::collections::BTreeMap;

use differential_dataflow::input::Input;
use sluice_contacts::{OUTPUTS, contacts};
use sluice_runtime::testing;
use sluice_runtime::{DeadLetter, Diff, Pos, Row, Time, Value};
use timely::dataflow::ProbeHandle;

/// Output indexes, in the order of [`OUTPUTS`].
pub const CLIENT_STATE: usize = 0;
/// See [`CLIENT_STATE`].
pub const DEVICES: usize = 1;
/// See [`CLIENT_STATE`].
pub const RESOLVED: usize = 2;
/// See [`CLIENT_STATE`].
pub const REFERENCES: usize = 3;
/// See [`CLIENT_STATE`].
pub const CREATED: usize = 4;
/// See [`CLIENT_STATE`].
pub const CLIENT_UPDATES: usize = 5;
/// See [`CLIENT_STATE`].
pub const PUSH_UPDATES: usize = 6;
/// See [`CLIENT_STATE`].
pub const CONTACT_UPDATES: usize = 7;
/// See [`CLIENT_STATE`].
pub const SUITE_UPDATES: usize = 8;
/// Number of row outputs.
pub const N: usize = 9;

/// One time's input: client-change JSON events, and contact-data updates
/// `(key JSON, value JSON, diff)`.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Client changes (inserted).
    pub changes: Vec<String>,
    /// Contact-data rows inserted (`+1`) or retracted (`-1`).
    pub contact_data: Vec<(String, String, Diff)>,
    /// Earlier changes to retract, as `(round, index)` (an append source never does this).
    pub retracted: Vec<(usize, usize)>,
}

impl Round {
    /// A round of client changes only.
    pub fn changes(changes: Vec<String>) -> Round {
        Round {
            changes,
            ..Round::default()
        }
    }

    /// A round of contact-data insertions only (each keyed by its value).
    pub fn mappings(rows: Vec<String>) -> Round {
        Round {
            contact_data: rows.into_iter().map(|r| (r.clone(), r, 1)).collect(),
            ..Round::default()
        }
    }
}

/// The position of change `j` of round `i`.
pub fn change_pos(i: usize, j: usize) -> Pos {
    Pos {
        source: 0,
        partition: i as u32,
        offset: j as u64,
    }
}

/// Every update of every output, with times, and the state size at the end.
#[derive(Default, Debug)]
pub struct Captured {
    /// Updates of each output, in the order of [`OUTPUTS`].
    pub outputs: [Vec<(Row, Time, Diff)>; N],
    /// Dead letters.
    pub errors: Vec<(DeadLetter, Time, Diff)>,
    /// Clients with state, summed over workers.
    pub clients: usize,
}

pub use sluice_runtime::testing::Upserts;

/// Consolidated updates per time: of every output, and of the dead letters.
pub type Consolidated = (Vec<BTreeMap<(Time, Row), Diff>>, BTreeMap<(Time, DeadLetter), Diff>);

/// One time's consolidated updates of an output: `(key JSON, value JSON, diff)`, sorted.
pub type Changes = Vec<(String, String, Diff)>;

impl Captured {
    /// The contents of output `index` through time `at`, checking that it is a proper
    /// collection of derived rows with at most one row per key.
    pub fn upserts_at(&self, index: usize, at: Time) -> Upserts {
        testing::upserts_at(&self.outputs[index], at, OUTPUTS[index])
    }

    /// The final contents of output `index`.
    pub fn upserts(&self, index: usize) -> Upserts {
        self.upserts_at(index, Time::MAX)
    }

    /// The changelog entries of output `index` at exactly time `at`, consolidated as a sink
    /// receives them.
    pub fn changes_at(&self, index: usize, at: Time) -> Changes {
        let mut acc: BTreeMap<(String, String), Diff> = BTreeMap::new();
        for (row, _, d) in self.outputs[index].iter().filter(|u| u.1 == at) {
            *acc.entry((row.key.to_json_string(), row.val.to_json_string()))
                .or_insert(0) += d;
        }
        acc.into_iter()
            .filter(|(_, d)| *d != 0)
            .map(|((k, v), d)| (k, v, d))
            .collect()
    }

    /// Every output's consolidated updates per time, and the dead letters': for comparing
    /// runs.
    pub fn consolidated(&self) -> Consolidated {
        let rows = self
            .outputs
            .iter()
            .map(|updates| {
                let mut acc = BTreeMap::new();
                for (row, t, d) in updates {
                    *acc.entry((*t, row.clone())).or_insert(0) += d;
                }
                acc.retain(|_, d| *d != 0);
                acc
            })
            .collect();
        let mut dead = BTreeMap::new();
        for (letter, t, d) in &self.errors {
            *dead.entry((*t, letter.clone())).or_insert(0) += d;
        }
        dead.retain(|_, d| *d != 0);
        (rows, dead)
    }

    /// The dead letters present through time `at`, sorted, each as many times as present.
    pub fn dead_letters_at(&self, at: Time) -> Vec<DeadLetter> {
        testing::dead_letters_at(&self.errors, at)
    }

    /// The final dead letters.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters_at(Time::MAX)
    }
}

/// Runs the dataflow on `workers` workers; round `i` enters at time `i + 1`. Change `j` of
/// round `i` has position [`change_pos`]`(i, j)`; contact-data rows have none (they are an
/// upsert's derived rows). Worker `w` feeds the updates at indexes `w, w + workers, …`.
pub fn run(rounds: &[Round], workers: usize) -> Captured {
    let rounds = rounds.to_vec();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let (mut changes, mut contact_data, captured, state) = worker.dataflow::<Time, _, _>(|scope| {
            let (changes_in, changes) = scope.new_collection::<Row, Diff>();
            let (data_in, contact_data) = scope.new_collection::<Row, Diff>();
            let (outputs, errors, state) = contacts(
                changes,
                contact_data,
                "contacts",
                &mut sluice_runtime::recovery::StateRegistry::disabled(),
            )
            .split();
            (changes_in, data_in, testing::capture(outputs, errors, &probe), state)
        });
        for (i, round) in rounds.iter().enumerate() {
            let time = i as Time + 1;
            changes.advance_to(time);
            contact_data.advance_to(time);
            for (j, json) in round.changes.iter().enumerate() {
                if j % peers == index {
                    changes.insert(Row {
                        key: Value::Null,
                        val: parse(json),
                        pos: change_pos(i, j),
                    });
                }
            }
            for (n, &(i, j)) in round.retracted.iter().enumerate() {
                if n % peers == index {
                    changes.update(
                        Row {
                            key: Value::Null,
                            val: parse(&rounds[i].changes[j]),
                            pos: change_pos(i, j),
                        },
                        -1,
                    );
                }
            }
            for (j, (key, val, diff)) in round.contact_data.iter().enumerate() {
                if j % peers == index {
                    contact_data.update(Row::derived(parse(key), parse(val)), *diff);
                }
            }
            changes.advance_to(time + 1);
            contact_data.advance_to(time + 1);
            changes.flush();
            contact_data.flush();
            testing::step_past(worker, &probe, time);
        }
        drop((changes, contact_data));
        testing::step_to_end(worker, &probe);
        (captured.take(), state.clients())
    })
    .expect("timely starts");
    let (mut all, mut clients) = (testing::Updates::default(), 0);
    for part in guards.join() {
        let (updates, n) = part.expect("worker ran");
        all.absorb(updates);
        clients += n;
    }
    Captured {
        outputs: all.outputs.try_into().expect("nine outputs"),
        errors: all.errors,
        clients,
    }
}

fn parse(json: &str) -> Value {
    Value::from_json_str(json).expect("test input is JSON")
}

/// JSON as the outputs render it (sorted keys, compact).
pub fn json(value: serde_json::Value) -> String {
    Value::from_json_str(&value.to_string())
        .expect("valid json")
        .to_json_string()
}
