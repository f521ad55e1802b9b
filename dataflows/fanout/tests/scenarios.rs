//! The acceptance scenarios of spec/fanout.md that need no network, and the rules around them.

mod common;

use common::*;
use serde_json::json;
use sluice_runtime::{Time, Value};

fn sub(id: &str, topic: &str, filter: &str, url: &str) -> String {
    json!({"id": id, "topic": topic, "filter": filter, "target_url": url}).to_string()
}

fn event(topic: &str, data: serde_json::Value) -> String {
    json!({"topic": topic, "data": data}).to_string()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn three_subscribers_true_false_and_missing_key_make_exactly_one_delivery() {
    let rounds = vec![Round {
        subscribers: vec![
            (sub("yes", "t", "data.body.x == 1", "http://h/yes"), 1),
            (sub("no", "t", "data.body.x == 2", "http://h/no"), 1),
            (sub("missing", "t", "data.body.nope == 1", "http://h/missing"), 1),
        ],
        events: vec![event("t", json!({"body": {"x": 1}}))],
    }];
    let c = run(&rounds, 1);
    let deliveries = c.deliveries();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(field(&deliveries[0], "subscriber"), "yes");
    assert_eq!(c.counts, (1, 1, 1), "one event, one delivery, one filter error counted");
}

#[test]
fn a_subscriber_added_at_t_gets_events_from_t_on_and_none_before() {
    let rounds = vec![
        Round {
            events: vec![event("t", json!({"body": {"n": 1}}))],
            ..Round::default()
        },
        Round {
            subscribers: vec![(sub("s", "t", "", "http://h/s"), 1)],
            events: vec![event("t", json!({"body": {"n": 2}}))],
        },
        Round {
            events: vec![event("t", json!({"body": {"n": 3}}))],
            ..Round::default()
        },
    ];
    for workers in [1, 2] {
        let c = run(&rounds, workers);
        let bodies: Vec<String> = c.deliveries().iter().map(|d| field(d, "body").to_owned()).collect();
        assert_eq!(bodies, vec![r#"{"n":2}"#, r#"{"n":3}"#], "{workers} workers");
    }
}

#[test]
fn removed_and_deleted_subscribers_stop_receiving_and_changes_move_them() {
    let a = sub("a", "t", "", "http://h/a");
    let b = sub("b", "t", "", "http://h/b");
    let b_moved = sub("b", "u", "", "http://h/b");
    let rounds = vec![
        Round {
            subscribers: vec![(a.clone(), 1), (b.clone(), 1)],
            events: vec![event("t", json!({}))],
        },
        Round {
            subscribers: vec![
                (a.clone(), -1),
                (json!({"id": "a", "deleted": true}).to_string(), 1),
                (b.clone(), -1),
                (b_moved, 1),
            ],
            events: vec![event("t", json!({})), event("u", json!({}))],
        },
    ];
    let c = run(&rounds, 2);
    let at = |t: Time| -> Vec<String> {
        let mut who: Vec<String> = c
            .deliveries_at(t)
            .iter()
            .map(|d| format!("{}@{}", field(&parse(d), "subscriber"), field(&parse(d), "topic")))
            .collect();
        who.sort();
        who
    };
    assert_eq!(at(1), vec!["a@t", "b@t"]);
    assert_eq!(at(2), vec!["b@u"]);
}

#[test]
fn placeholders_are_replaced_by_whole_name_and_the_query_appended() {
    let rounds = vec![Round {
        subscribers: vec![(sub("s", "t", "", "https://hooks.example/:id/:idx/x"), 1)],
        events: vec![event(
            "t",
            json!({"path_params": {"id": "1", "idx": 2}, "query_params": {"q": "a b"}, "http_method": "put",
                   "headers": {"X-Trace": "abc", "content-type": "text/plain"}, "body": {"k": [1, 2]}}),
        )],
    }];
    let c = run(&rounds, 1);
    let d = &c.deliveries()[0];
    assert_eq!(field(d, "url"), "https://hooks.example/1/2/x?q=a%20b");
    assert_eq!(field(d, "method"), "PUT");
    assert_eq!(field(d, "body"), r#"{"k":[1,2]}"#);
    let id = field(d, "delivery_id");
    assert_eq!(
        d.get("headers").map(Value::to_json_string),
        Some(json!({"Content-Type": "application/json", "Idempotency-Key": id, "X-Trace": "abc"}).to_string())
    );
    assert!(d.get("secret").is_none());
}

#[test]
fn filters_in_the_python_style_of_the_original_hub_work() {
    let rounds = vec![Round {
        subscribers: vec![
            (
                sub(
                    "py",
                    "t",
                    r#"data["body"]["x"] == 1 and not data["body"]["muted"]"#,
                    "http://h/py",
                ),
                1,
            ),
            (sub("py-none", "t", r#"data["body"]["y"] is None"#, "http://h/none"), 1),
            (
                sub("cel", "t", "data.body.x == 1 && !data.body.muted", "http://h/cel"),
                1,
            ),
        ],
        events: vec![
            event("t", json!({"body": {"x": 1, "muted": false, "y": null}})),
            event("t", json!({"body": {"x": 1, "muted": true, "y": 1}})),
        ],
    }];
    let c = run(&rounds, 1);
    let mut subs: Vec<String> = c
        .deliveries()
        .iter()
        .map(|d| field(d, "subscriber").to_owned())
        .collect();
    subs.sort();
    assert_eq!(subs, vec!["cel", "py", "py-none"]);
}

#[test]
fn a_filter_that_does_not_compile_rejects_the_subscriber_until_it_is_fixed() {
    let bad = json!({"id": "s", "topic": "t", "filter": "__import__('os').system('x')", "target_url": "http://h/s"})
        .to_string();
    let fixed = sub("s", "t", "true", "http://h/s");
    let rounds = vec![
        Round {
            subscribers: vec![
                (bad.clone(), 1),
                (sub("ok", "t", "", "http://h/ok"), 1),
                (json!({"id": "u", "topic": "t", "target_url": "ftp://h"}).to_string(), 1),
            ],
            events: vec![event("t", json!({}))],
        },
        Round {
            subscribers: vec![(bad, -1), (fixed, 1)],
            events: vec![event("t", json!({}))],
        },
    ];
    let c = run(&rounds, 2);
    let errors = c.subscriber_errors_at(1);
    assert_eq!(errors.len(), 2);
    let s = parse(&errors[&json!({"id": "s"}).to_string()]);
    assert!(field(&s, "error").starts_with("the filter does not compile"), "{s:?}");
    let u = parse(&errors[&json!({"id": "u"}).to_string()]);
    assert!(field(&u, "error").contains("not an http:// or https:// URL"), "{u:?}");
    assert_eq!(c.subscriber_errors_at(2).len(), 1, "fixing the row clears its error");
    let who = |t| -> Vec<String> {
        let mut who: Vec<String> = c
            .deliveries_at(t)
            .iter()
            .map(|d| field(&parse(d), "subscriber").to_owned())
            .collect();
        who.sort();
        who
    };
    assert_eq!(who(1), vec!["ok"]);
    assert_eq!(who(2), vec!["ok", "s"]);
}

#[test]
fn bad_events_are_dead_letters_with_their_position() {
    let rounds = vec![Round {
        subscribers: vec![(sub("s", "t", "", "http://h/s"), 1)],
        events: vec![
            json!({"data": {}}).to_string(),
            event("t", json!({"headers": {"X": 1}})),
            event("t", json!({"body": 1})),
        ],
    }];
    let c = run(&rounds, 1);
    let dead = c.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].pos, event_pos(0, 0));
    assert!(dead[0].reason.contains("string `topic`"));
    assert_eq!(dead[1].pos, event_pos(0, 1));
    assert!(dead[1].reason.contains("header `X`"));
    assert_eq!(c.deliveries().len(), 1);
}

#[test]
fn secrets_travel_with_deliveries_for_the_sink_to_sign() {
    let rounds = vec![Round {
        subscribers: vec![(
            json!({"id": "s", "topic": "t", "target_url": "http://h", "secret": "whsec_x"}).to_string(),
            1,
        )],
        events: vec![event("t", json!({}))],
    }];
    let c = run(&rounds, 1);
    assert_eq!(field(&c.deliveries()[0], "secret"), "whsec_x");
}

#[test]
fn every_matching_delivery_is_made_once_with_ids_stable_across_runs_and_workers() {
    // 1000 events × 200 subscribers over 10 topics; half the subscribers filter on parity.
    let subscribers: Vec<(String, isize)> = (0..200)
        .map(|i| {
            let filter = if (i / 10) % 2 == 0 { "data.body.n % 2 == 0" } else { "" };
            (
                sub(
                    &format!("s{i}"),
                    &format!("t{}", i % 10),
                    filter,
                    &format!("http://h/{i}/:n"),
                ),
                1,
            )
        })
        .collect();
    let events: Vec<String> = (0..1000)
        .map(|n| {
            event(
                &format!("t{}", n % 10),
                json!({"body": {"n": n}, "path_params": {"n": n}}),
            )
        })
        .collect();
    let rounds = vec![
        Round {
            subscribers,
            events: events[..500].to_vec(),
        },
        Round {
            events: events[500..].to_vec(),
            ..Round::default()
        },
    ];
    let one = run(&rounds, 1);
    // Per topic 20 subscribers: 10 take every event, 10 the even ones.
    let expected: usize = (0..1000).map(|n| if n % 2 == 0 { 20 } else { 10 }).sum();
    assert_eq!(one.deliveries().len(), expected);
    let mut ids: Vec<String> = one
        .deliveries()
        .iter()
        .map(|d| field(d, "delivery_id").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected, "delivery ids are unique");
    for workers in [2, 3] {
        assert_eq!(
            run(&rounds, workers).deliveries(),
            one.deliveries(),
            "{workers} workers"
        );
    }
    let d = &one.deliveries()[0];
    assert!(field(d, "url").starts_with("http://h/"));
}

#[test]
fn a_late_event_does_not_see_a_subscriber_of_a_later_epoch() {
    use differential_dataflow::input::Input;
    use sluice_runtime::{Diff, Row, testing};
    use std::sync::Arc;
    use timely::dataflow::ProbeHandle;

    let deliveries = timely::execute_directly(|worker| {
        let probe = ProbeHandle::new();
        let (mut subs, mut events, captured) = worker.dataflow::<Time, _, _>(|scope| {
            let (subs_in, subs) = scope.new_collection::<Row, Diff>();
            let (events_in, events) = scope.new_collection::<Row, Diff>();
            let out = sluice_fanout::fanout(subs, events, Arc::default(), "fanout");
            let (rows, errors) = out.split();
            (subs_in, events_in, testing::capture(rows, errors, &probe))
        });
        // The subscriber table moves on to time 2 while events of time 1 are still coming.
        subs.advance_to(2);
        subs.insert(subscriber_row(&sub("s", "t", "", "http://h/s")));
        subs.advance_to(3);
        subs.flush();
        events.advance_to(1);
        events.flush();
        for _ in 0..50 {
            worker.step();
        }
        events.insert(Row {
            key: Value::Null,
            val: parse(&event("t", json!({"body": {"at": 1}}))),
            pos: event_pos(0, 0),
        });
        events.advance_to(2);
        events.insert(Row {
            key: Value::Null,
            val: parse(&event("t", json!({"body": {"at": 2}}))),
            pos: event_pos(1, 0),
        });
        events.advance_to(3);
        events.flush();
        drop((subs, events));
        testing::step_to_end(worker, &probe);
        let captured = std::mem::take(&mut captured.borrow_mut().outputs[DELIVERIES]);
        captured
            .into_iter()
            .map(|(row, t, _)| (t, field(&row.val, "body").to_owned()))
            .collect::<Vec<_>>()
    });
    assert_eq!(deliveries, vec![(2, r#"{"at":2}"#.to_owned())]);
}
