//! Helpers for dataflow tests: reading captured `(record, time, diff)` updates back as the
//! collection they add up to at a time. Used by the dataflow crates' test harnesses.

use std::collections::BTreeMap;

use crate::record::{DeadLetter, Diff, Row, Time};

/// A keyed output's contents: key JSON → value JSON.
pub type Upserts = BTreeMap<String, String>;

/// The records with a non-zero count once every update at or before `at` is added up.
pub fn accumulate<D: Ord + Clone>(updates: &[(D, Time, Diff)], at: Time) -> BTreeMap<D, Diff> {
    let mut acc: BTreeMap<D, Diff> = BTreeMap::new();
    for (record, _, diff) in updates.iter().filter(|u| u.1 <= at) {
        *acc.entry(record.clone()).or_insert(0) += diff;
    }
    acc.retain(|_, d| *d != 0);
    acc
}

/// The contents of keyed output `name` at `at`.
///
/// # Panics
/// If the output is not a proper collection of derived rows: a row held other than once,
/// a row with a position, or two rows for one key.
pub fn upserts_at(updates: &[(Row, Time, Diff)], at: Time, name: &str) -> Upserts {
    let mut out = Upserts::new();
    for (row, d) in accumulate(updates, at) {
        assert_eq!(d, 1, "{name} holds {row:?} {d} times at {at}");
        assert!(row.pos.is_none(), "{name}: derived rows carry no position");
        let key = row.key.to_json_string();
        let prev = out.insert(key.clone(), row.val.to_json_string());
        assert!(prev.is_none(), "{name} has two rows for key {key} at {at}");
    }
    out
}

/// The dead letters present at `at`, sorted, each as many times as present.
///
/// # Panics
/// If a dead letter was retracted more often than it was inserted.
pub fn dead_letters_at(errors: &[(DeadLetter, Time, Diff)], at: Time) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    for (letter, d) in accumulate(errors, at) {
        let n = usize::try_from(d).unwrap_or_else(|_| panic!("dead letter {letter:?} retracted more than inserted"));
        out.extend(std::iter::repeat_n(letter, n));
    }
    out
}
