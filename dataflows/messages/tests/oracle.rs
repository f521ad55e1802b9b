//! Seeded random ops against a sequential model: at every time, every output equals what
//! applying the ops one by one in (epoch, position) order gives, for 1, 2 and 4 workers.
//!
//! The model shares the crate's decision function (the validation table is tested rule by
//! rule in `scenarios.rs`); what it checks is everything around it: numbering across
//! partitions and workers, routing by message, one net change per epoch, the feed, file
//! usage and its transition events.

mod common;

use common::model::generate;
use common::*;
use sluice_runtime::{Time, Value};

#[test]
fn outputs_equal_the_sequential_model_at_every_time() {
    for seed in 0..6 {
        let (input, expected) = generate(seed, 8);
        for workers in [1, 2, 4] {
            let c = run(&input, workers);
            assert!(c.dead_letters().is_empty());
            for i in 0..input.len() {
                let at = i as Time + 1;
                let ctx = format!("seed {seed}, {workers} workers, time {at}");
                assert_eq!(c.upserts_at(MESSAGES, at), expected.messages[i], "messages, {ctx}");
                assert_eq!(c.upserts_at(FEED, at), expected.feed[i], "feed, {ctx}");
                assert_eq!(
                    c.upserts_at(FILE_USAGE, at),
                    expected.file_usage[i],
                    "file_usage, {ctx}"
                );
                assert_eq!(c.events_at(ACCEPTED, at), expected.accepted[i], "accepted, {ctx}");
                assert_eq!(c.events_at(REJECTIONS, at), expected.rejections[i], "rejections, {ctx}");
                assert_eq!(
                    c.events_at(FILE_USAGE_EVENTS, at),
                    expected.file_events[i],
                    "file events, {ctx}"
                );
            }
        }
    }
}

#[test]
fn the_model_exercises_every_outcome() {
    let (_, expected) = generate(1, 8);
    let all: Vec<Value> = expected.rejections.iter().flatten().map(|r| parse(r)).collect();
    for code in ["invalid", "not-found", "forbidden", "gone", "stale", "not-modified"] {
        assert!(
            all.iter().any(|r| r.get("code").and_then(Value::as_str) == Some(code)),
            "no `{code}` among the generated ops"
        );
    }
    assert!(expected.accepted.iter().flatten().count() > 20);
}
