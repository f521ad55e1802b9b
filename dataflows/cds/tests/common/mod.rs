//! A test harness for the cds dataflow: builds items and change records as the formats
//! decode them, feeds them in rounds (one time each) on any number of workers, and captures
//! every output's updates.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::input::Input;
use sluice_cds::{Wanted, cds};
use sluice_runtime::testing;
use sluice_runtime::value::uuid_text;
use sluice_runtime::{DeadLetter, Diff, Pos, Row, Time, Value};
use timely::dataflow::ProbeHandle;

/// Output indexes, in the order of `sluice_cds::OUTPUTS`.
pub const UPDATES: usize = 0;
/// See [`UPDATES`].
pub const ACCOUNTS: usize = 1;
/// See [`UPDATES`].
pub const DIRECTORY: usize = 2;

/// A test account item: attributes as a `dynamodb-item` decodes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// `U`: the uuid of [`uuid`]`(n)`.
    pub u: u8,
    /// `P`.
    pub p: String,
    /// `C` (`None`: absent).
    pub c: Option<bool>,
    /// `PNI` (`None`: absent).
    pub pni: Option<u8>,
    /// `UAK` (`None`: absent).
    pub uak: Option<u8>,
    /// `V`.
    pub v: u64,
    /// `D` (`None`: absent).
    pub d: Option<String>,
    /// Whether `pni` and `uak` travel in the `D` blob instead of as attributes.
    pub in_blob: bool,
}

impl Item {
    /// An account with all attributes set.
    pub fn new(u: u8, p: &str, c: bool, v: u64) -> Item {
        Item {
            u,
            p: p.to_owned(),
            c: Some(c),
            pni: Some(u.wrapping_add(100)),
            uak: Some(u.wrapping_add(200)),
            v,
            d: Some(format!("{{\"v\":{v}}}")),
            in_blob: false,
        }
    }

    /// The item as a decoded `Value`.
    pub fn value(&self) -> Value {
        let mut m: Vec<(&str, Value)> = vec![
            ("U", bytes(&uuid(self.u))),
            ("P", Value::str(self.p.as_str())),
            ("V", Value::from(self.v)),
        ];
        if let Some(c) = self.c {
            m.push(("C", Value::Bool(c)));
        }
        if self.in_blob {
            let blob = serde_json::json!({
                "v": self.v,
                "pni": self.pni.map(|p| uuid_text(&pni(p))),
                "uak": self.uak.map(|k| b64(&uak(k))),
            });
            m.push(("D", bytes(blob.to_string().as_bytes())));
        } else {
            if let Some(p) = self.pni {
                m.push(("PNI", bytes(&pni(p))));
            }
            if let Some(k) = self.uak {
                m.push(("UAK", bytes(&uak(k))));
            }
            if let Some(d) = &self.d {
                m.push(("D", bytes(d.as_bytes())));
            }
        }
        Value::map(m)
    }

    /// The same item at version `v`.
    pub fn at(&self, v: u64) -> Item {
        Item {
            v,
            d: Some(format!("{{\"v\":{v}}}")),
            ..self.clone()
        }
    }
}

/// Raw bytes as a value.
pub fn bytes(b: &[u8]) -> Value {
    Value::Bytes(Arc::from(b))
}

/// The uuid of account `n`.
pub fn uuid(n: u8) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[0] = 0xa0;
    u[15] = n;
    u
}

/// The PNI value `n`.
pub fn pni(n: u8) -> [u8; 16] {
    [n; 16]
}

/// The UAK value `n`.
pub fn uak(n: u8) -> Vec<u8> {
    vec![n; 16]
}

/// The uuid text of account `n`.
pub fn uuid_of(n: u8) -> String {
    uuid_text(&uuid(n))
}

/// A change record as `dynamodb-stream` decodes it.
pub fn record(event: &str, old: Option<&Item>, new: Option<&Item>, time_ms: u64, seq: u64) -> Value {
    Value::map([
        ("eventName", Value::str(event)),
        ("old", old.map_or(Value::Null, Item::value)),
        ("new", new.map_or(Value::Null, Item::value)),
        ("approximateCreationTime", Value::from(time_ms)),
        ("sequenceNumber", Value::str(seq.to_string())),
    ])
}

/// An INSERT.
pub fn insert(new: &Item, t: u64) -> Value {
    record("INSERT", None, Some(new), t, t)
}

/// A MODIFY.
pub fn modify(old: &Item, new: &Item, t: u64) -> Value {
    record("MODIFY", Some(old), Some(new), t, t)
}

/// A REMOVE.
pub fn remove(old: &Item, t: u64) -> Value {
    record("REMOVE", Some(old), None, t, t)
}

/// One time's input.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Change records.
    pub changes: Vec<Value>,
    /// Scanned items.
    pub scan: Vec<Value>,
}

impl Round {
    /// A round of changes only.
    pub fn changes(changes: Vec<Value>) -> Round {
        Round {
            changes,
            scan: Vec::new(),
        }
    }

    /// A round of scanned items only.
    pub fn scan(items: Vec<Item>) -> Round {
        Round {
            changes: Vec::new(),
            scan: items.iter().map(Item::value).collect(),
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

/// The position of scanned item `j` of round `i`.
pub fn scan_pos(i: usize, j: usize) -> Pos {
    Pos {
        source: 1,
        partition: i as u32,
        offset: j as u64,
    }
}

/// Every update of every output, with times.
#[derive(Default, Debug)]
pub struct Captured {
    /// Updates of `cds_updates`, `accounts_by_uuid`, `directory`.
    pub outputs: [Vec<(Row, Time, Diff)>; 3],
    /// Dead letters.
    pub errors: Vec<(DeadLetter, Time, Diff)>,
}

pub use sluice_runtime::testing::Upserts;

impl Captured {
    /// The contents of keyed output `index` through time `at`, checking it holds at most one
    /// row per key.
    pub fn upserts_at(&self, index: usize, at: Time) -> Upserts {
        testing::upserts_at(&self.outputs[index], at, sluice_cds::OUTPUTS[index])
    }

    /// The final contents of keyed output `index`.
    pub fn upserts(&self, index: usize) -> Upserts {
        self.upserts_at(index, Time::MAX)
    }

    /// The `cds_updates` through time `at`, as a sink in append mode writes them: by
    /// position, then by row; each `(position, key JSON, value JSON)`.
    pub fn updates_at(&self, at: Time) -> Vec<(Pos, String, String)> {
        let mut acc: BTreeMap<(Pos, Row), Diff> = BTreeMap::new();
        for (row, _, d) in self.outputs[UPDATES].iter().filter(|u| u.1 <= at) {
            *acc.entry((row.pos, row.clone())).or_insert(0) += d;
        }
        let mut out = Vec::new();
        for ((pos, row), d) in acc {
            assert!(d >= 0, "cds_updates retracted {row:?}");
            for _ in 0..d {
                out.push((pos, row.key.to_json_string(), row.val.to_json_string()));
            }
        }
        out
    }

    /// The final `cds_updates`.
    pub fn updates(&self) -> Vec<(Pos, String, String)> {
        self.updates_at(Time::MAX)
    }

    /// Updates of output `index` at exactly time `at`, consolidated.
    pub fn changes_at(&self, index: usize, at: Time) -> Vec<(Row, Diff)> {
        let mut acc: BTreeMap<Row, Diff> = BTreeMap::new();
        for (row, _, d) in self.outputs[index].iter().filter(|u| u.1 == at) {
            *acc.entry(row.clone()).or_insert(0) += d;
        }
        acc.into_iter().filter(|(_, d)| *d != 0).collect()
    }

    /// The dead letters through time `at`, sorted.
    pub fn dead_letters_at(&self, at: Time) -> Vec<DeadLetter> {
        testing::dead_letters_at(&self.errors, at)
    }

    /// The final dead letters.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters_at(Time::MAX)
    }
}

/// Runs the dataflow with every output on `workers` workers; round `i` enters at time `i + 1`.
pub fn run(rounds: &[Round], workers: usize) -> Captured {
    run_wanted(rounds, workers, Wanted::ALL)
}

/// As [`run`], building only the `wanted` outputs.
pub fn run_wanted(rounds: &[Round], workers: usize, wanted: Wanted) -> Captured {
    let rounds = rounds.to_vec();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let (mut changes, mut scan, captured) = worker.dataflow::<Time, _, _>(|scope| {
            let (changes_in, changes) = scope.new_collection::<Row, Diff>();
            let (scan_in, scan) = scope.new_collection::<Row, Diff>();
            let out = cds(
                changes,
                Some(scan),
                &wanted,
                "cds",
                &mut sluice_runtime::recovery::StateRegistry::disabled(),
            );
            let outputs = [out.cds_updates, out.accounts_by_uuid, out.directory];
            (changes_in, scan_in, testing::capture(outputs, out.errors, &probe))
        });
        for (i, round) in rounds.iter().enumerate() {
            let time = i as Time + 1;
            changes.advance_to(time);
            scan.advance_to(time);
            for (j, val) in round.changes.iter().enumerate() {
                if j % peers == index {
                    changes.insert(Row {
                        key: Value::Null,
                        val: val.clone(),
                        pos: change_pos(i, j),
                    });
                }
            }
            for (j, val) in round.scan.iter().enumerate() {
                if j % peers == index {
                    scan.insert(Row {
                        key: Value::Null,
                        val: val.clone(),
                        pos: scan_pos(i, j),
                    });
                }
            }
            changes.advance_to(time + 1);
            scan.advance_to(time + 1);
            changes.flush();
            scan.flush();
            testing::step_past(worker, &probe, time);
        }
        drop((changes, scan));
        testing::step_to_end(worker, &probe);
        captured.take()
    })
    .expect("timely starts");
    let mut all = testing::Updates::default();
    for part in guards.join() {
        all.absorb(part.expect("worker ran"));
    }
    Captured {
        outputs: all.outputs.try_into().expect("three outputs"),
        errors: all.errors,
    }
}

/// JSON as the outputs render it (sorted keys, compact).
pub fn json(value: serde_json::Value) -> String {
    Value::from_json_str(&value.to_string()).unwrap().to_json_string()
}

/// Standard base64 of bytes, as outputs render them.
pub fn b64(b: &[u8]) -> String {
    sluice_runtime::value::base64_encode(b)
}

/// The `cds_updates` value of an item's view (`discoverable` overridden for removals).
pub fn update(item: &Item, discoverable: bool) -> String {
    json(serde_json::json!({
        "e164": item.p,
        "uuid": b64(&uuid(item.u)),
        "canonicallyDiscoverable": discoverable,
        "pni": item.pni.map(|p| b64(&pni(p))),
        "uak": item.uak.map(|k| b64(&uak(k))),
    }))
}
