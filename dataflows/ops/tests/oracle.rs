//! Every generic operator against a from-scratch oracle at every time, on seeded random
//! inputs with retractions (and, for the fold paths, on event inputs).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::cases::{self, Build, Oracle};
use common::{EVENTS, Gen, ROUNDS, SEEDS, TABLE, check, history};
use sluice_ops::JoinKind;
use sluice_runtime::Value;

/// Checks `build` against `oracle` on every seed.
fn each_seed<B: Build>(shape: Gen, build: B, oracle: Oracle) {
    for seed in SEEDS {
        check(seed, ROUNDS, shape, build.clone(), oracle);
    }
}

#[test]
fn filter_matches_oracle() {
    each_seed(TABLE, cases::filter(Arc::default()), cases::filter_oracle);
}

#[test]
fn filter_counts_the_inserted_rows_it_cannot_evaluate() {
    for seed in SEEDS {
        let errors = Arc::new(AtomicU64::new(0));
        check(seed, ROUNDS, TABLE, cases::filter(errors.clone()), cases::filter_oracle);
        let want: isize = history(seed, ROUNDS, TABLE)
            .iter()
            .flat_map(|round| &round.left)
            .filter(|(row, d)| *d > 0 && row.val.get("n").is_none())
            .map(|(_, d)| d)
            .sum();
        assert_eq!(errors.load(Ordering::Relaxed), want as u64, "seed {seed}");
    }
}

#[test]
fn map_matches_oracle_and_dead_letters_failures() {
    each_seed(TABLE, cases::map(), cases::map_oracle);
}

#[test]
fn key_by_fields_matches_oracle() {
    let unkeyed = Gen {
        retractions: true,
        keyed: false,
    };
    each_seed(unkeyed, cases::key_by_fields(), cases::key_by_fields_oracle);
}

#[test]
fn key_by_expression_matches_oracle() {
    each_seed(TABLE, cases::key_by_expr(), cases::key_by_expr_oracle);
}

#[test]
fn count_matches_oracle_on_tables_and_events() {
    each_seed(TABLE, cases::count(), cases::count_oracle);
    each_seed(EVENTS, cases::count(), cases::count_oracle);
}

#[test]
fn aggregate_matches_oracle_by_reduce_and_by_fold() {
    each_seed(TABLE, cases::aggregate(false), cases::aggregate_oracle);
    each_seed(EVENTS, cases::aggregate(true), cases::aggregate_oracle);
    // The reduce path is exact on events too.
    each_seed(EVENTS, cases::aggregate(false), cases::aggregate_oracle);
}

#[test]
fn latest_by_field_matches_oracle_by_reduce_and_by_fold() {
    each_seed(TABLE, cases::latest_by_field(false), cases::latest_by_field_oracle);
    each_seed(EVENTS, cases::latest_by_field(true), cases::latest_by_field_oracle);
}

#[test]
fn latest_by_arrival_keeps_the_last_event_per_key() {
    each_seed(EVENTS, cases::latest_by_arrival(), cases::latest_by_arrival_oracle);
}

#[test]
fn inner_join_matches_oracle() {
    each_seed(TABLE, cases::join(JoinKind::Inner), cases::inner_join_oracle);
}

#[test]
fn left_join_matches_oracle_and_retracts_null_rows() {
    each_seed(TABLE, cases::join(JoinKind::Left), cases::left_join_oracle);
}

#[test]
fn union_is_the_sum_of_its_inputs() {
    each_seed(TABLE, cases::union(), cases::union_oracle);
}

#[test]
fn the_generated_input_exercises_what_the_oracles_check() {
    // Guards the tests above against a generator that stopped producing the cases they need.
    let rounds: Vec<_> = SEEDS.flat_map(|seed| history(seed, ROUNDS, TABLE)).collect();
    let updates = || rounds.iter().flat_map(|r| r.left.iter().chain(&r.right));
    assert!(updates().any(|(_, d)| *d < 0), "retractions");
    assert!(updates().any(|(_, d)| *d > 1), "multiplicities");
    assert!(updates().any(|(r, _)| r.val.get("n").is_none()), "missing fields");
    assert!(
        updates().any(|(r, _)| matches!(r.val.get("n"), Some(Value::Float(_)))),
        "floats"
    );
}
