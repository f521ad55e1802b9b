//! Seeded random subscriber changes and events against a sequential model: at every time the
//! deliveries are exactly those of each event for the subscribers of its epoch, for 1, 2 and
//! 4 workers.

mod common;

use std::collections::BTreeMap;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sluice_expr::Expr;
use sluice_fanout::{Event, delivery_row};
use sluice_runtime::{Time, Value};

const TOPICS: &[&str] = &["a", "b", "c"];
const FILTERS: &[&str] = &[
    "",
    "data.body.x == 1",
    "data.body.x > 0 && data.headers.r == \"eu\"",
    "data.body.nope",
];

fn generate(seed: u64, rounds: usize) -> (Vec<Round>, Vec<Vec<String>>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut subs: BTreeMap<String, String> = BTreeMap::new();
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..rounds {
        let mut round = Round::default();
        for _ in 0..rng.random_range(0..6) {
            let id = format!("s{}", rng.random_range(0..12));
            if let Some(old) = subs.remove(&id) {
                round.subscribers.push((old, -1));
            }
            if rng.random_bool(0.75) {
                let new = json!({
                    "id": id,
                    "topic": TOPICS[rng.random_range(0..TOPICS.len())],
                    "filter": FILTERS[rng.random_range(0..FILTERS.len())],
                    "target_url": format!("http://h/{id}/:n"),
                })
                .to_string();
                subs.insert(id, new.clone());
                round.subscribers.push((new, 1));
            }
        }
        for _ in 0..rng.random_range(0..30) {
            round.events.push(
                json!({"topic": TOPICS[rng.random_range(0..TOPICS.len())], "data": {
                    "body": {"x": rng.random_range(0..3)},
                    "headers": {"r": if rng.random_bool(0.5) { "eu" } else { "us" }},
                    "path_params": {"n": rng.random_range(0..100)}}})
                .to_string(),
            );
        }
        // Events see the subscribers after this round's changes.
        let time = i as Time + 1;
        let mut made = Vec::new();
        for (j, e) in round.events.iter().enumerate() {
            let event = Event::read(&parse(e), event_pos(i, j)).expect("valid event");
            for sub in subs.values() {
                let s = parse(sub);
                let filter = s.get("filter").and_then(Value::as_str).unwrap_or_default();
                let matches = filter.is_empty()
                    || Expr::compile(filter)
                        .expect("test filters compile")
                        .eval_bool(&event.record, &Value::Null)
                        .unwrap_or(false);
                if matches && s.get("topic") == event.record.get("topic") {
                    let Some(sluice_fanout::Read::Subscriber(subscriber)) =
                        Some(sluice_fanout::Subscriber::read(&subscriber_row(sub)))
                    else {
                        panic!("test subscribers are valid")
                    };
                    made.push(delivery_row(&event, time, &subscriber).val.to_json_string());
                }
            }
        }
        made.sort();
        expected.push(made);
        input.push(round);
    }
    (input, expected)
}

#[test]
fn deliveries_equal_the_sequential_model_at_every_time() {
    for seed in 0..8 {
        let (input, expected) = generate(seed, 10);
        for workers in [1, 2, 4] {
            let c = run(&input, workers);
            for (i, want) in expected.iter().enumerate() {
                let at = i as Time + 1;
                assert_eq!(&c.deliveries_at(at), want, "seed {seed}, {workers} workers, time {at}");
            }
            assert!(c.dead_letters().is_empty());
            assert!(c.subscriber_errors_at(Time::MAX).is_empty());
        }
    }
}
