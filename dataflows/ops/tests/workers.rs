//! Every generic operator gives the same output on 1, 2 and 4 worker threads, each worker
//! feeding a deterministic share of the same random input.

mod common;

use std::sync::Arc;

use common::cases::{self, Build, Oracle};
use common::{EVENTS, Gen, ROUNDS, TABLE, WORKER_SEEDS, check_workers};
use sluice_ops::JoinKind;

fn each_seed<B: Build>(shape: Gen, build: B, oracle: Oracle) {
    for seed in WORKER_SEEDS {
        check_workers(seed, ROUNDS, shape, build.clone(), oracle);
    }
}

#[test]
fn filter_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::filter(Arc::default()), cases::filter_oracle);
}

#[test]
fn map_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::map(), cases::map_oracle);
}

#[test]
fn key_by_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::key_by_expr(), cases::key_by_expr_oracle);
}

#[test]
fn count_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::count(), cases::count_oracle);
}

#[test]
fn aggregate_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::aggregate(false), cases::aggregate_oracle);
    each_seed(EVENTS, cases::aggregate(true), cases::aggregate_oracle);
}

#[test]
fn latest_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::latest_by_field(false), cases::latest_by_field_oracle);
    each_seed(EVENTS, cases::latest_by_field(true), cases::latest_by_field_oracle);
    each_seed(EVENTS, cases::latest_by_arrival(), cases::latest_by_arrival_oracle);
}

#[test]
fn joins_are_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::join(JoinKind::Inner), cases::inner_join_oracle);
    each_seed(TABLE, cases::join(JoinKind::Left), cases::left_join_oracle);
}

#[test]
fn union_is_the_same_on_any_number_of_workers() {
    each_seed(TABLE, cases::union(), cases::union_oracle);
}
