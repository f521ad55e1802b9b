//! The dataflow against a from-scratch computation of spec/cds.md, on seeded random account
//! histories: inserts, number moves between accounts, discoverability and key changes,
//! version-only changes, removals and re-inserts, PNI/UAK in attributes or in the `D` blob,
//! scanned items taken at random points of the history, duplicates and bad records. The
//! records are delivered in random order over many times and the outputs compared with the
//! oracle at every time; then the same input runs on 2 and 4 workers and must agree.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{
    ACCOUNTS, Captured, DIRECTORY, Item, Round, b64, change_pos, insert, json, pni, run, uak, update, uuid, uuid_of,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sluice_runtime::{Pos, Time, Value};

const UUIDS: u8 = 6;
const NUMBERS: [&str; 5] = [
    "+15550000001",
    "+15550000002",
    "+15550000003",
    "+15550000004",
    "+15550000005",
];

/// A generated input: a change record or a scanned item, and what the oracle knows of it.
#[derive(Clone, Debug)]
enum Input {
    Change {
        event: &'static str,
        old: Option<Item>,
        new: Option<Item>,
        time: u64,
    },
    Scanned(Item),
    /// A record the dataflow must dead-letter.
    Bad(Value),
}

impl Input {
    fn value(&self) -> Value {
        match self {
            Input::Change { event, old, new, time } => common::record(event, old.as_ref(), new.as_ref(), *time, *time),
            Input::Scanned(item) => item.value(),
            Input::Bad(v) => v.clone(),
        }
    }
}

/// A random account history over a few uuids and numbers; every write is a change record,
/// and some moments are also captured as scanned items.
fn history(rng: &mut SmallRng, steps: usize) -> Vec<Input> {
    let mut table: BTreeMap<u8, Item> = BTreeMap::new();
    let mut versions: BTreeMap<u8, u64> = BTreeMap::new();
    let mut out = Vec::new();
    let mut clock = 1000;
    for _ in 0..steps {
        // Ties in time happen; the sequence number (= time here) then ties too, and the uuid decides.
        clock += rng.random_range(0..3);
        let u = rng.random_range(1..=UUIDS);
        let v = versions.get(&u).copied().unwrap_or(0) + 1;
        versions.insert(u, v);
        let current = table.get(&u).cloned();
        let change = match current {
            None => {
                let item = Item {
                    p: NUMBERS[rng.random_range(0..NUMBERS.len())].to_owned(),
                    c: [Some(true), Some(false), None][rng.random_range(0..3)],
                    pni: rng.random_bool(0.8).then(|| rng.random_range(0..3)),
                    uak: rng.random_bool(0.8).then(|| rng.random_range(0..3)),
                    in_blob: rng.random_bool(0.3),
                    ..Item::new(u, "+1", true, v)
                };
                table.insert(u, item.clone());
                Input::Change {
                    event: "INSERT",
                    old: None,
                    new: Some(item),
                    time: clock,
                }
            }
            Some(old) => {
                let mut new = old.at(v);
                match rng.random_range(0..7) {
                    0 => new.p = NUMBERS[rng.random_range(0..NUMBERS.len())].to_owned(),
                    1 => new.c = [Some(true), Some(false), None][rng.random_range(0..3)],
                    2 => new.pni = rng.random_bool(0.8).then(|| rng.random_range(0..3)),
                    3 => new.uak = rng.random_bool(0.8).then(|| rng.random_range(0..3)),
                    4 => new.in_blob = !new.in_blob,
                    5 => {} // only V (and D) change
                    _ => {
                        table.remove(&u);
                        out.push(Input::Change {
                            event: "REMOVE",
                            old: Some(old),
                            new: None,
                            time: clock,
                        });
                        continue;
                    }
                }
                table.insert(u, new.clone());
                Input::Change {
                    event: "MODIFY",
                    old: Some(old),
                    new: Some(new),
                    time: clock,
                }
            }
        };
        out.push(change);
        if rng.random_bool(0.25)
            && let Some(item) = table.values().nth(rng.random_range(0..table.len().max(1)))
        {
            out.push(Input::Scanned(item.clone()));
        }
        if rng.random_bool(0.05) {
            let bad = Item {
                p: "555".to_owned(),
                ..Item::new(u, "+1", true, v)
            };
            out.push(Input::Bad(insert(&bad, clock)));
        }
        if rng.random_bool(0.1)
            && let Some(last) = out.last().cloned()
        {
            out.push(last);
        }
    }
    out
}

/// The view the spec reads from an item.
fn view(item: &Item) -> (u8, String, bool, Option<u8>, Option<u8>) {
    (item.u, item.p.clone(), item.c.unwrap_or(false), item.pni, item.uak)
}

/// The filter, from the spec's words.
fn published(input: &Input) -> Vec<(Item, bool)> {
    let Input::Change { event, old, new, .. } = input else {
        return Vec::new();
    };
    match (*event, old, new) {
        ("INSERT", _, Some(new)) => vec![(new.clone(), new.c.unwrap_or(false))],
        ("REMOVE", Some(old), _) => vec![(old.clone(), false)],
        ("MODIFY", Some(old), Some(new)) if old.p != new.p => {
            vec![(old.clone(), false), (new.clone(), new.c.unwrap_or(false))]
        }
        ("MODIFY", Some(old), Some(new)) if view(old) != view(new) => vec![(new.clone(), new.c.unwrap_or(false))],
        _ => Vec::new(),
    }
}

/// What the outputs must hold once `received` (with positions) has arrived.
struct Expected {
    updates: Vec<(Pos, String, String)>,
    accounts: BTreeMap<String, String>,
    directory: BTreeMap<String, String>,
    dead: Vec<Pos>,
}

fn oracle(received: &[(Pos, Input)]) -> Expected {
    let mut updates = Vec::new();
    // Per uuid: the latest fact as (version, removed, time, item or none).
    let mut latest: BTreeMap<u8, (u64, bool, u64, Option<Item>)> = BTreeMap::new();
    let mut dead = Vec::new();
    let mut consider = |u: u8, fact: (u64, bool, u64, Option<Item>)| {
        let entry = latest.entry(u).or_insert_with(|| fact.clone());
        if (fact.0, fact.1, fact.2) > (entry.0, entry.1, entry.2) {
            *entry = fact;
        }
    };
    for (pos, input) in received {
        match input {
            Input::Bad(_) => dead.push(*pos),
            Input::Scanned(item) => consider(item.u, (item.v, false, 0, Some(item.clone()))),
            Input::Change { event, old, new, time } => {
                let out = published(input);
                if out.is_empty() {
                    continue; // rule 5: no output at all
                }
                for (item, discoverable) in out {
                    updates.push((
                        *pos,
                        json(json!({ "uuid": uuid_of(item.u) })),
                        update(&item, discoverable),
                    ));
                }
                match *event {
                    "REMOVE" => {
                        let old = old.as_ref().unwrap();
                        consider(old.u, (old.v, true, *time, None));
                    }
                    _ => {
                        let new = new.as_ref().unwrap();
                        consider(new.u, (new.v, false, *time, Some(new.clone())));
                    }
                }
            }
        }
    }
    updates.sort();
    dead.sort();
    let mut accounts = BTreeMap::new();
    let mut claims: BTreeMap<String, ((u64, u8), Item)> = BTreeMap::new();
    for (u, (version, _, time, item)) in &latest {
        let Some(item) = item else { continue };
        accounts.insert(
            json(json!({ "uuid": uuid_of(*u) })),
            json(json!({
                "uuid": uuid_of(*u),
                "e164": item.p,
                "discoverable": item.c.unwrap_or(false),
                "pni": item.pni.map(|p| b64(&pni(p))),
                "uak": item.uak.map(|k| b64(&uak(k))),
                "version": version,
            })),
        );
        let claim = ((*time, *u), item.clone());
        let entry = claims.entry(item.p.clone()).or_insert_with(|| claim.clone());
        if claim.0 > entry.0 {
            *entry = claim;
        }
    }
    let directory = claims
        .into_iter()
        .filter(|(_, (_, item))| item.c == Some(true))
        .map(|(p, (_, item))| {
            (
                json(json!({ "e164": p })),
                json(json!({
                    "e164": p,
                    "aci": b64(&uuid(item.u)),
                    "pni": item.pni.map(|x| b64(&pni(x))),
                    "uak": item.uak.map(|k| b64(&uak(k))),
                })),
            )
        })
        .collect();
    Expected {
        updates,
        accounts,
        directory,
        dead,
    }
}

/// Splits the inputs, shuffled, into rounds of random size.
fn deliver(rng: &mut SmallRng, mut inputs: Vec<Input>) -> (Vec<Round>, Vec<Vec<(Pos, Input)>>) {
    inputs.shuffle(rng);
    let mut rounds = Vec::new();
    let mut received = Vec::new();
    let mut rest = &inputs[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(8));
        let (now, later) = rest.split_at(n);
        rest = later;
        let i = rounds.len();
        let mut round = Round::default();
        let mut got = Vec::new();
        for input in now {
            // Scanned items come from their own source; everything else is a change record.
            if let Input::Scanned(_) = input {
                got.push((common::scan_pos(i, round.scan.len()), input.clone()));
                round.scan.push(input.value());
            } else {
                got.push((change_pos(i, round.changes.len()), input.clone()));
                round.changes.push(input.value());
            }
        }
        rounds.push(round);
        received.push(got);
    }
    (rounds, received)
}

fn check(out: &Captured, received: &[Vec<(Pos, Input)>], seed: u64) {
    let mut so_far = Vec::new();
    for (i, got) in received.iter().enumerate() {
        so_far.extend(got.iter().cloned());
        let at = i as Time + 1;
        let expected = oracle(&so_far);
        let mut updates = out.updates_at(at);
        updates.sort();
        assert_eq!(updates, expected.updates, "seed {seed}: cds_updates at time {at}");
        assert_eq!(
            out.upserts_at(ACCOUNTS, at),
            expected.accounts,
            "seed {seed}: accounts_by_uuid at time {at}"
        );
        assert_eq!(
            out.upserts_at(DIRECTORY, at),
            expected.directory,
            "seed {seed}: directory at time {at}"
        );
        let dead: Vec<Pos> = out.dead_letters_at(at).iter().map(|l| l.pos).collect();
        assert_eq!(dead, expected.dead, "seed {seed}: dead letters at time {at}");
    }
}

#[test]
fn the_outputs_equal_the_spec_at_every_time() {
    for seed in 0..40 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let inputs = history(&mut rng, 60);
        let (rounds, received) = deliver(&mut rng, inputs);
        let out = run(&rounds, 1);
        check(&out, &received, seed);
    }
}

#[test]
fn the_final_accounts_are_the_table_whatever_the_order() {
    // Delivered complete, in any order, the merge of scan and changes is the table's end state.
    for seed in 100..110 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let inputs = history(&mut rng, 80);
        let mut table: BTreeMap<u8, Option<Item>> = BTreeMap::new();
        for input in &inputs {
            if let Input::Change { old, new, .. } = input {
                match new {
                    Some(new) => table.insert(new.u, Some(new.clone())),
                    None => table.insert(old.as_ref().unwrap().u, None),
                };
            }
        }
        let (rounds, _) = deliver(&mut rng, inputs);
        let out = run(&rounds, 2);
        let accounts = out.upserts(ACCOUNTS);
        let views: BTreeMap<String, String> = accounts
            .into_iter()
            .map(|(k, v)| {
                let mut v: serde_json::Value = serde_json::from_str(&v).unwrap();
                // The version is that of the last change that altered the view (rule 5).
                v.as_object_mut().unwrap().remove("version");
                (k, v.to_string())
            })
            .collect();
        let expected: BTreeMap<String, String> = table
            .into_iter()
            .filter_map(|(u, item)| item.map(|item| (u, item)))
            .map(|(u, item)| {
                let v = json!({
                    "uuid": uuid_of(u),
                    "e164": item.p,
                    "discoverable": item.c.unwrap_or(false),
                    "pni": item.pni.map(|p| b64(&pni(p))),
                    "uak": item.uak.map(|k| b64(&uak(k))),
                });
                (
                    json(json!({ "uuid": uuid_of(u) })),
                    serde_json::from_str::<serde_json::Value>(&json(v)).unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(views, expected, "seed {seed}");
    }
}

#[test]
fn one_two_and_four_workers_agree() {
    for seed in 200..206 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let inputs = history(&mut rng, 80);
        let (rounds, received) = deliver(&mut rng, inputs);
        let one = run(&rounds, 1);
        for workers in [2, 4] {
            let many = run(&rounds, workers);
            check(&many, &received, seed);
            for index in [ACCOUNTS, DIRECTORY] {
                for t in 1..=rounds.len() as Time {
                    assert_eq!(
                        one.upserts_at(index, t),
                        many.upserts_at(index, t),
                        "seed {seed}, {workers} workers"
                    );
                }
            }
        }
    }
}
