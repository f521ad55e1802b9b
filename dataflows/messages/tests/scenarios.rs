//! The acceptance scenarios of spec/messages.md and the rules of its validation table.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;
use sluice_runtime::sink::Sink;
use sluice_runtime::{Time, Value, testing};
use sluice_served::{Cursor, Entry, ServedView, ViewConfig};

fn send(r: &str, user: &str, to: &str, text: &str, files: &[&str]) -> String {
    json!({"op": "send", "request_id": r, "user": user, "to": to, "text": text, "files": files}).to_string()
}

fn edit(r: &str, user: &str, id: &str, if_match: u64, text: &str) -> String {
    json!({"op": "edit", "request_id": r, "user": user, "message_id": id, "if_match": if_match, "text": text})
        .to_string()
}

fn mark_read(r: &str, user: &str, id: &str, if_match: u64, read: bool) -> String {
    json!({"op": "mark_read", "request_id": r, "user": user, "message_id": id, "if_match": if_match, "read": read})
        .to_string()
}

fn delete(r: &str, user: &str, id: &str, if_match: u64) -> String {
    json!({"op": "delete", "request_id": r, "user": user, "message_id": id, "if_match": if_match}).to_string()
}

const F1: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
const F2: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

fn message(c: &Captured, id: &str) -> serde_json::Value {
    let key = json!({ "id": id }).to_string();
    let text = c
        .upserts(MESSAGES)
        .get(&key)
        .cloned()
        .unwrap_or_else(|| panic!("no message {id}"));
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn send_creates_a_message_in_both_feeds() {
    let c = run(&[vec![send("r1", "ann", " bob ", "hi", &[F1])]], 1);
    assert_eq!(c.outcome("r1"), "accepted");
    let id = id(0, 0);
    assert_eq!(
        c.events(ACCEPTED),
        vec![json!({"request_id": "r1", "id": id, "timestamp": ts(0, 0)}).to_string()]
    );
    assert_eq!(
        message(&c, &id),
        json!({"id": id, "from": "ann", "to": "bob", "created": 1, "edited": null, "read": false,
               "text": "hi", "files": [F1], "deleted": false, "timestamp": ts(0, 0)})
    );
    let feed = c.upserts_at(FEED, Time::MAX);
    let entry = json!({"id": id, "timestamp": ts(0, 0), "from": "ann", "to": "bob", "created": 1,
                       "edited": null, "read": false, "text": "hi", "files": [F1]})
    .to_string();
    assert_eq!(feed.len(), 2);
    assert_eq!(feed[&json!({"user": "ann", "id": id}).to_string()], entry);
    assert_eq!(feed[&json!({"user": "bob", "id": id}).to_string()], entry);
    assert_eq!(
        c.upserts_at(FILE_USAGE, Time::MAX)
            .values()
            .cloned()
            .collect::<Vec<_>>(),
        vec![json!({"file_id": F1, "count": 1}).to_string()]
    );
    assert_eq!(
        c.events(FILE_USAGE_EVENTS),
        vec![json!({"fileId": F1, "inUse": true}).to_string()]
    );
}

#[test]
fn a_message_to_oneself_appears_once_in_the_feed() {
    let c = run(&[vec![send("r1", "ann", "ann", "note", &[])]], 1);
    let feed = c.upserts_at(FEED, Time::MAX);
    assert_eq!(feed.len(), 1);
    assert!(feed.contains_key(&json!({"user": "ann", "id": id(0, 0)}).to_string()));
}

#[test]
fn an_invalid_send_lists_every_reason() {
    let c = run(&[vec![send("r1", "ann", "  ", "", &["short"])]], 1);
    let rejected = c.events_by_key(REJECTIONS, &json!({"request_id": "r1"}).to_string());
    let rejected: serde_json::Value = serde_json::from_str(&rejected[0].to_json_string()).expect("JSON");
    assert_eq!(rejected["code"], "invalid");
    assert_eq!(
        rejected["reasons"],
        json!([
            "file id `short` is not 24 characters",
            "`to` is empty",
            "the message has neither text nor files"
        ])
    );
    assert!(c.upserts(MESSAGES).is_empty());
    // Files alone are content enough.
    let c = run(&[vec![send("r2", "ann", "bob", "", &[F1])]], 1);
    assert_eq!(c.outcome("r2"), "accepted");
}

#[test]
fn stale_gone_and_not_modified() {
    let m = id(0, 0);
    let rounds = vec![
        vec![send("s", "ann", "bob", "hi", &[F1])],
        vec![
            edit("stale", "ann", &m, ts(0, 0) - 1, "changed"),
            edit("same", "ann", &m, ts(0, 0), "hi"),
            edit("ok", "ann", &m, ts(0, 0), "hello"),
        ],
        vec![delete("del", "bob", &m, ts(1, 2))],
        vec![
            edit("gone", "ann", &m, ts(2, 0), "again"),
            edit("gone-stale", "ann", &m, 1, "again"),
        ],
    ];
    let c = run(&rounds, 1);
    assert_eq!(c.outcome("stale"), "stale");
    assert_eq!(c.outcome("same"), "not-modified");
    assert_eq!(c.outcome("ok"), "accepted");
    assert_eq!(c.outcome("del"), "accepted");
    assert_eq!(c.outcome("gone"), "gone");
    assert_eq!(c.outcome("gone-stale"), "gone", "gone beats a stale timestamp");
    // After the stale and same-text edits the message is unchanged: still the send's version.
    let after_round_two = c.upserts_at(MESSAGES, 2);
    let version: serde_json::Value =
        serde_json::from_str(&after_round_two[&json!({"id": m}).to_string()]).expect("JSON");
    assert_eq!(version["text"], "hello");
    assert_eq!(version["timestamp"], ts(1, 2), "not-modified takes no timestamp");
    assert_eq!(version["edited"], 2);
    // The deletion is a tombstone in both feeds, later than anything a client saw before.
    let deleted = json!({"id": m, "timestamp": ts(2, 0), "deleted": true}).to_string();
    let feed = c.upserts_at(FEED, Time::MAX);
    assert_eq!(feed[&json!({"user": "ann", "id": m}).to_string()], deleted);
    assert_eq!(feed[&json!({"user": "bob", "id": m}).to_string()], deleted);
    assert!(ts(2, 0) > ts(1, 2));
    // Its file is no longer used.
    assert!(c.upserts_at(FILE_USAGE, Time::MAX).is_empty());
    assert_eq!(
        c.events_at(FILE_USAGE_EVENTS, 3),
        vec![json!({"fileId": F1, "inUse": false}).to_string()]
    );
}

#[test]
fn not_found_and_forbidden() {
    let m = id(0, 0);
    let rounds = vec![
        vec![send("s", "ann", "bob", "hi", &[])],
        vec![
            edit("unknown", "ann", "000000000000000000000000", 1, "x"),
            edit("stranger", "eve", &m, ts(0, 0), "x"),
            delete("stranger-delete", "eve", &m, ts(0, 0)),
            edit("receiver-edits", "bob", &m, ts(0, 0), "x"),
            mark_read("sender-reads", "ann", &m, ts(0, 0), true),
            edit("empty", "ann", &m, ts(0, 0), ""),
            mark_read("read", "bob", &m, ts(0, 0), true),
            mark_read("read-again", "bob", &m, ts(1, 6), true),
        ],
    ];
    let c = run(&rounds, 1);
    assert_eq!(c.outcome("unknown"), "not-found");
    assert_eq!(c.outcome("stranger"), "not-found");
    assert_eq!(c.outcome("stranger-delete"), "not-found");
    assert_eq!(c.outcome("receiver-edits"), "forbidden");
    assert_eq!(c.outcome("sender-reads"), "forbidden");
    assert_eq!(c.outcome("empty"), "invalid");
    assert_eq!(c.outcome("read"), "accepted");
    assert_eq!(c.outcome("read-again"), "not-modified");
    assert_eq!(message(&c, &m)["read"], true);
}

#[test]
fn an_empty_edit_of_a_message_with_files_is_allowed() {
    let m = id(0, 0);
    let rounds = vec![
        vec![send("s", "ann", "bob", "caption", &[F1])],
        vec![edit("e", "ann", &m, ts(0, 0), "")],
    ];
    let c = run(&rounds, 1);
    assert_eq!(c.outcome("e"), "accepted");
    assert_eq!(message(&c, &m)["text"], "");
}

#[test]
fn ops_of_one_epoch_apply_in_position_order() {
    // The edit knows the send's timestamp: it is derived, so it can be relied on.
    let m = id(0, 0);
    let rounds = vec![vec![
        send("s", "ann", "bob", "hi", &[]),
        edit("e", "ann", &m, ts(0, 0), "edited"),
        mark_read("r", "bob", &m, ts(0, 1), true),
    ]];
    let c = run(&rounds, 2);
    assert_eq!(c.outcome("e"), "accepted");
    assert_eq!(c.outcome("r"), "accepted");
    let msg = message(&c, &m);
    assert_eq!(
        (msg["text"].clone(), msg["read"].clone()),
        (json!("edited"), json!(true))
    );
    assert_eq!(msg["timestamp"], ts(0, 2));
    // One net change per epoch: the message appears once in its time's output.
    let inserted: Vec<_> = c.outputs[MESSAGES].iter().filter(|u| u.2 > 0).collect();
    assert_eq!(inserted.len(), 1);
}

#[test]
fn file_usage_counts_live_messages_and_reports_transitions() {
    let (a, b) = (id(0, 0), id(0, 1));
    let rounds = vec![
        vec![
            send("a", "ann", "bob", "", &[F1, F2, F1]),
            send("b", "bob", "ann", "x", &[F1]),
        ],
        vec![delete("da", "ann", &a, ts(0, 0))],
        vec![delete("db", "ann", &b, ts(0, 1))],
    ];
    let c = run(&rounds, 2);
    let usage = |at| c.upserts_at(FILE_USAGE, at).values().cloned().collect::<Vec<_>>();
    assert_eq!(
        usage(1),
        vec![
            json!({"file_id": F1, "count": 2}).to_string(),
            json!({"file_id": F2, "count": 1}).to_string()
        ]
    );
    assert_eq!(usage(2), vec![json!({"file_id": F1, "count": 1}).to_string()]);
    assert!(usage(3).is_empty());
    assert_eq!(
        c.events_at(FILE_USAGE_EVENTS, 1),
        vec![
            json!({"fileId": F1, "inUse": true}).to_string(),
            json!({"fileId": F2, "inUse": true}).to_string()
        ]
    );
    assert_eq!(
        c.events_at(FILE_USAGE_EVENTS, 2),
        vec![json!({"fileId": F2, "inUse": false}).to_string()]
    );
    assert_eq!(
        c.events_at(FILE_USAGE_EVENTS, 3),
        vec![json!({"fileId": F1, "inUse": false}).to_string()]
    );
}

#[test]
fn records_that_are_not_ops_are_dead_letters_and_bad_fields_are_invalid() {
    let rounds = vec![vec![
        json!({"op": "send", "user": "ann", "to": "bob", "text": "no request id"}).to_string(),
        json!([1, 2]).to_string(),
        json!({"op": "shout", "request_id": "u", "user": "ann"}).to_string(),
        json!({"op": "edit", "request_id": "t", "user": "ann", "message_id": 7, "if_match": "x", "text": 1})
            .to_string(),
        send("ok", "ann", "bob", "hi", &[]),
    ]];
    let c = run(&rounds, 1);
    let dead = c.dead_letters();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| &*d.stage == "node messages"));
    assert!(dead.iter().any(|d| d.reason.contains("`request_id` is missing")));
    assert!(dead.iter().any(|d| d.reason.contains("not list")));
    assert_eq!(c.outcome("u"), "invalid");
    let t = &c.events_by_key(REJECTIONS, &json!({"request_id": "t"}).to_string())[0];
    assert_eq!(t.get("reasons").and_then(|r| r.as_list()).map(|r| r.len()), Some(3));
    // Every op was ranked, the dead ones too: the send is the fifth op of the epoch.
    assert_eq!(message(&c, &id(0, 4))["timestamp"], ts(0, 4));
}

#[test]
fn ids_and_timestamps_are_the_same_for_any_number_of_workers_and_on_replay() {
    let rounds: Vec<Vec<String>> = (0..4)
        .map(|i| {
            (0..30)
                .map(|j| {
                    send(
                        &format!("r{i}-{j}"),
                        &format!("u{}", j % 5),
                        &format!("u{}", j % 3),
                        "x",
                        &[],
                    )
                })
                .collect()
        })
        .collect();
    let one = run(&rounds, 1);
    for workers in [1, 2, 3] {
        let other = run(&rounds, workers);
        assert_eq!(one.events(ACCEPTED), other.events(ACCEPTED), "{workers} workers");
        assert_eq!(one.upserts_at(FEED, Time::MAX), other.upserts_at(FEED, Time::MAX));
    }
    // Unique and increasing in (epoch, position) order.
    let mut stamps: Vec<(String, i64)> = one
        .events(ACCEPTED)
        .iter()
        .map(|a| {
            let v: serde_json::Value = serde_json::from_str(a).expect("JSON");
            (
                v["request_id"].as_str().unwrap_or_default().to_owned(),
                v["timestamp"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    stamps.sort_by_key(|(r, _)| {
        let (i, j) = r[1..].split_once('-').expect("r<i>-<j>");
        (i.parse::<usize>().expect("i"), j.parse::<usize>().expect("j"))
    });
    assert!(
        stamps.windows(2).all(|w| w[0].1 < w[1].1),
        "timestamps increase: {stamps:?}"
    );
}

#[test]
fn a_later_epoch_continues_above_every_earlier_timestamp() {
    // A restart resumes at a later epoch: its first timestamp is above the largest rank of
    // every earlier epoch.
    let last_of_epoch = sluice_messages::timestamp(5, sluice_messages::MAX_OPS_PER_EPOCH - 1).expect("in range");
    let first_of_next = sluice_messages::timestamp(6, 0).expect("in range");
    assert!(first_of_next > last_of_epoch);
    assert_eq!(sluice_messages::timestamp(5, sluice_messages::MAX_OPS_PER_EPOCH), None);
    assert_eq!(sluice_messages::timestamp_epoch(first_of_next), 6);
}

#[test]
fn changes_pages_through_a_users_feed_from_final_times_only() {
    let c = run(
        &[vec![
            send("a", "ann", "bob", "1", &[]),
            send("b", "bob", "ann", "2", &[]),
            send("c", "bob", "cat", "3", &[]),
        ]],
        1,
    );
    let view = ServedView::new(ViewConfig {
        name: "feed".to_owned(),
        partition_by: Some("user".to_owned()),
        version_field: Some("timestamp".to_owned()),
        retention_ms: None,
    });
    let mut sink = view.sink(None).expect("a fresh view");
    // As the engine's sink path feeds it: each time once final, consolidated and sorted.
    let times: BTreeSet<Time> = c.outputs[FEED].iter().map(|u| u.1).collect();
    for time in times {
        let at_time: Vec<_> = c.outputs[FEED].iter().filter(|u| u.1 == time).cloned().collect();
        let updates: Vec<_> = testing::accumulate(&at_time, time).into_iter().collect();
        sink.write(time, &updates).expect("feed rows");
        sink.commit(Some(time + 1)).expect("commit");
    }
    sink.commit(None).expect("commit");

    let changes = |user: &str, after: u64, limit: usize| {
        let after = Cursor::After {
            version: after,
            key: None,
        };
        let page = view.changes(&Value::str(user), &after, limit);
        assert!(page.entries.len() <= limit, "{user}: a page of at most {limit}");
        page.entries
    };
    let versions = |entries: &[Entry]| entries.iter().map(|e| e.version).collect::<Vec<_>>();
    let page = changes("ann", 0, 1);
    assert_eq!(versions(&page), vec![ts(0, 0)]);
    assert_eq!(page[0].key.get("id").and_then(Value::as_str), Some(id(0, 0).as_str()));
    assert_eq!(versions(&changes("ann", ts(0, 0), 10)), vec![ts(0, 1)]);
    assert!(changes("ann", ts(0, 1), 50).is_empty());
    assert_eq!(versions(&changes("cat", 0, 50)), vec![ts(0, 2)]);
    assert!(
        changes("nobody", 0, 50).is_empty(),
        "a user with no messages gets an empty page"
    );

    let key = |user: &str, id: &str| Value::map([("user", Value::str(user)), ("id", Value::str(id))]);
    let cats = view
        .get(&Value::str("cat"), &key("cat", &id(0, 2)))
        .expect("cat's message");
    assert!(
        cats.value
            .is_some_and(|v| v.get("text").and_then(Value::as_str) == Some("3"))
    );
    assert!(
        view.get(&Value::str("ann"), &key("cat", &id(0, 2))).is_none()
            && view.get(&Value::str("ann"), &key("ann", &id(0, 2))).is_none(),
        "a user never sees another user's messages"
    );
    let anns = changes("ann", 0, 50);
    assert!(
        anns.iter()
            .all(|e| e.key.get("user").and_then(Value::as_str) == Some("ann")
                && e.key.get("id").and_then(Value::as_str) != Some(id(0, 2).as_str())),
        "a user never sees another user's messages: {anns:?}"
    );
}
