//! The acceptance scenarios of spec/contacts.md, one test each, the other rules, and the
//! decoding of both inputs.

mod common;

use common::{
    CLIENT_STATE, CLIENT_UPDATES, CONTACT_UPDATES, CREATED, Changes, DEVICES, N, PUSH_UPDATES, REFERENCES, RESOLVED,
    Round, SUITE_UPDATES, change_pos, json, run,
};
use serde_json::json;
use sluice_contacts::{Body, ClientChange, ContactField, DecodeError, Mapping, anonymous_contact_id};
use sluice_runtime::{Pos, Value};

fn client(id: &str, app: &str, properties: serde_json::Value, ts: u64) -> String {
    json!({"type": "client", "client_id": id, "app_code": app, "properties": properties, "ts": ts}).to_string()
}

fn push(id: &str, app: &str, token: Option<&str>, ts: u64) -> String {
    json!({"type": "push-token", "client_id": id, "app_code": app, "push_token": token, "ts": ts}).to_string()
}

fn field(id: &str, app: &str, value: &str, anonymous: bool, suite: bool, ts: u64) -> String {
    json!({"type": "contact-field", "client_id": id, "app_code": app, "contact_field_id": 3,
           "contact_field_value": value, "is_anonymous": anonymous,
           "should_update_suite_contact_fields": suite, "ts": ts})
    .to_string()
}

fn mismatch(id: &str, old: &str, new: &str, ts: u64) -> String {
    json!({"type": "app-code-mismatch", "client_id": id, "old_app_code": old, "new_app_code": new, "ts": ts})
        .to_string()
}

fn mapping(app: &str, value: &str, contact: &str) -> String {
    json!({"app_code": app, "contact_field_id": 3, "contact_field_value": value, "contact_id": contact}).to_string()
}

fn app_client(app: &str, id: &str) -> String {
    json(json!({"app_code": app, "client_id": id}))
}

fn client_key(id: &str) -> String {
    json(json!({"client_id": id}))
}

fn device(app: &str, id: &str, token: Option<&str>, contact: Option<&str>) -> String {
    json(json!({"app_code": app, "client_id": id, "push_token": token, "contact_id": contact}))
}

fn resolved(app: &str, id: &str, contact: &str, anonymous: bool) -> String {
    json(json!({"app_code": app, "client_id": id, "contact_id": contact, "anonymous": anonymous}))
}

fn unresolved(app: &str, id: &str) -> String {
    json(json!({"app_code": app, "client_id": id, "unresolved": true}))
}

/// A changelog entry.
fn change(key: String, val: serde_json::Value, diff: isize) -> (String, String, isize) {
    (key, json(val), diff)
}

fn sorted(mut changes: Changes) -> Changes {
    changes.sort();
    changes
}

#[test]
fn an_app_code_switch_moves_the_device_with_its_token_and_re_resolves_the_contact() {
    let rounds = vec![
        Round {
            changes: vec![
                client("c1", "A", json!({"os": "android"}), 1),
                push("c1", "A", Some("P"), 2),
                field("c1", "A", "ana@example.com", false, true, 3),
            ],
            contact_data: [
                mapping("A", "ana@example.com", "C-100"),
                mapping("B", "ana@example.com", "C-200"),
            ]
            .into_iter()
            .map(|m| (m.clone(), m, 1))
            .collect(),
            ..Round::default()
        },
        // A request under app B: the client's latest change now carries B.
        Round::changes(vec![client("c1", "B", json!({"app_version": "1.3"}), 4)]),
    ];
    let out = run(&rounds, 1);
    assert_eq!(
        out.upserts_at(DEVICES, 1),
        [(app_client("A", "c1"), device("A", "c1", Some("P"), Some("C-100")))].into()
    );
    assert_eq!(
        out.changes_at(DEVICES, 2),
        sorted(vec![
            change(
                app_client("A", "c1"),
                json!({"app_code": "A", "client_id": "c1", "push_token": "P", "contact_id": "C-100"}),
                -1
            ),
            change(
                app_client("B", "c1"),
                json!({"app_code": "B", "client_id": "c1", "push_token": "P", "contact_id": "C-200"}),
                1
            ),
        ])
    );
    assert_eq!(
        out.changes_at(RESOLVED, 2),
        sorted(vec![
            change(
                app_client("A", "c1"),
                json!({"app_code": "A", "client_id": "c1", "contact_id": "C-100", "anonymous": false}),
                -1
            ),
            change(
                app_client("B", "c1"),
                json!({"app_code": "B", "client_id": "c1", "contact_id": "C-200", "anonymous": false}),
                1
            ),
        ])
    );
    let refs = |app: &str, contact: &str| json(json!({"app_code": app, "contact_id": contact}));
    assert_eq!(
        out.upserts(REFERENCES),
        [(
            refs("B", "C-200"),
            json(json!({"app_code": "B", "contact_id": "C-200", "client_ids": ["c1"]}))
        )]
        .into()
    );
    // The update streams re-publish the client under the new code, once each.
    assert_eq!(
        out.changes_at(PUSH_UPDATES, 2),
        vec![
            change(
                client_key("c1"),
                json!({"client_id": "c1", "app_code": "A", "push_token": "P"}),
                -1
            ),
            change(
                client_key("c1"),
                json!({"client_id": "c1", "app_code": "B", "push_token": "P"}),
                1
            ),
        ]
    );
    assert_eq!(
        out.changes_at(CONTACT_UPDATES, 2),
        vec![
            change(
                client_key("c1"),
                json!({"client_id": "c1", "app_code": "A", "contact_id": "C-100"}),
                -1
            ),
            change(
                client_key("c1"),
                json!({"client_id": "c1", "app_code": "B", "contact_id": "C-200"}),
                1
            ),
        ]
    );
    assert_eq!(
        out.upserts(SUITE_UPDATES),
        [(
            client_key("c1"),
            json(json!({"client_id": "c1", "app_code": "B", "contact_id": "C-200",
                        "contact_field_id": 3, "contact_field_value": "ana@example.com"}))
        )]
        .into()
    );
    assert_eq!(
        out.upserts(CLIENT_STATE)[&client_key("c1")],
        json(
            json!({"client_id": "c1", "app_code": "B", "properties": {"os": "android", "app_version": "1.3"},
                    "push_token": "P", "contact_field_id": 3, "contact_field_value": "ana@example.com",
                    "is_anonymous": false, "should_update_suite_contact_fields": true, "contact_id": "C-200",
                    "ts": 4})
        )
    );
}

#[test]
fn an_app_code_mismatch_moves_the_client_too() {
    let rounds = vec![
        Round::changes(vec![push("c1", "A", Some("P"), 1)]),
        Round::changes(vec![mismatch("c1", "A", "B", 2)]),
    ];
    let out = run(&rounds, 1);
    assert_eq!(
        out.upserts(DEVICES),
        [(app_client("B", "c1"), device("B", "c1", Some("P"), None))].into()
    );
}

#[test]
fn a_late_mapping_resolves_the_client_with_one_contact_update() {
    let rounds = vec![
        Round::changes(vec![field("c2", "A", "bo@example.com", false, false, 10)]),
        Round::mappings(vec![mapping("A", "bo@example.com", "C-7")]),
    ];
    let out = run(&rounds, 1);
    assert_eq!(
        out.upserts_at(RESOLVED, 1),
        [(app_client("A", "c2"), unresolved("A", "c2"))].into()
    );
    assert!(out.upserts_at(CONTACT_UPDATES, 1).is_empty());
    assert_eq!(
        out.upserts_at(DEVICES, 1),
        [(app_client("A", "c2"), device("A", "c2", None, None))].into()
    );
    assert_eq!(
        out.upserts(RESOLVED),
        [(app_client("A", "c2"), resolved("A", "c2", "C-7", false))].into()
    );
    assert_eq!(
        out.changes_at(CONTACT_UPDATES, 2),
        vec![change(
            client_key("c2"),
            json!({"client_id": "c2", "app_code": "A", "contact_id": "C-7"}),
            1
        )]
    );
    assert_eq!(
        out.upserts(DEVICES),
        [(app_client("A", "c2"), device("A", "c2", None, Some("C-7")))].into()
    );
    // Identified fields never create anonymous contacts, and no suite update was asked for.
    assert!(out.outputs[CREATED].is_empty());
    assert!(out.outputs[SUITE_UPDATES].is_empty());
}

#[test]
fn a_deleted_mapping_unresolves_the_client_again() {
    let m = mapping("A", "bo@example.com", "C-7");
    let rounds = vec![
        Round {
            changes: vec![field("c2", "A", "bo@example.com", false, false, 10)],
            contact_data: vec![(m.clone(), m.clone(), 1)],
            ..Round::default()
        },
        Round {
            contact_data: vec![(m.clone(), m, -1)],
            ..Round::default()
        },
    ];
    let out = run(&rounds, 1);
    assert_eq!(
        out.upserts_at(RESOLVED, 1),
        [(app_client("A", "c2"), resolved("A", "c2", "C-7", false))].into()
    );
    assert_eq!(
        out.upserts(RESOLVED),
        [(app_client("A", "c2"), unresolved("A", "c2"))].into()
    );
    assert!(out.upserts(CONTACT_UPDATES).is_empty());
    assert!(out.upserts(REFERENCES).is_empty());
}

/// The reported field bug: after switches the push went to the old app only.
#[test]
fn after_any_sequence_of_app_code_switches_a_client_has_one_device_under_its_current_app() {
    let apps = ["A", "B", "C", "D"];
    // Switches at ts 10, 20, …; the push token was set at ts 5. Delivered in a scrambled
    // order, one or two per time, so some switches arrive stale.
    let mut events: Vec<(u64, String)> = vec![(5, push("c1", "A", Some("P"), 5))];
    for (n, ts) in (10..=120).step_by(10).enumerate() {
        let (old, new) = (apps[n % 4], apps[(n * 3 + 1) % 4]);
        let event = if n % 3 == 0 {
            client("c1", new, json!({}), ts)
        } else {
            mismatch("c1", old, new, ts)
        };
        events.push((ts, event));
    }
    let order = [3, 0, 7, 1, 12, 5, 2, 9, 4, 11, 6, 10, 8];
    let rounds: Vec<Round> = order
        .chunks(2)
        .map(|chunk| Round::changes(chunk.iter().map(|&i| events[i].1.clone()).collect()))
        .collect();
    let out = run(&rounds, 2);
    let mut seen: Vec<usize> = Vec::new();
    for (t, chunk) in order.chunks(2).enumerate() {
        seen.extend(chunk);
        let latest = seen.iter().map(|&i| events[i].0).max().unwrap_or_default();
        let latest_event: serde_json::Value = serde_json::from_str(
            &events
                .iter()
                .find(|(ts, _)| *ts == latest)
                .map(|(_, e)| e.clone())
                .unwrap_or_default(),
        )
        .expect("json");
        let app = latest_event
            .get("new_app_code")
            .or(latest_event.get("app_code"))
            .and_then(|a| a.as_str())
            .unwrap_or_default()
            .to_owned();
        let devices = out.upserts_at(DEVICES, t as u64 + 1);
        let token = seen.contains(&0).then_some("P");
        assert_eq!(
            devices,
            [(app_client(&app, "c1"), device(&app, "c1", token, None))].into(),
            "time {}",
            t + 1
        );
    }
}

#[test]
fn replaying_the_input_creates_no_second_anonymous_contact_and_changes_nothing() {
    let events = vec![
        push("c3", "A", Some("tok-c3"), 5),
        field("c3", "A", "visitor-7f3a", true, false, 6),
        // A second client with the same anonymous field shares the contact.
        field("c4", "A", "visitor-7f3a", true, false, 7),
    ];
    let rounds = vec![Round::changes(events.clone()), Round::changes(events)];
    let out = run(&rounds, 2);
    let id = anonymous_contact_id("A", 3, "visitor-7f3a");
    let created_key = json(json!({"app_code": "A", "contact_id": id}));
    let created: Vec<_> = out.outputs[CREATED].iter().filter(|u| u.2 > 0).collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(
        out.upserts(CREATED),
        [(
            created_key,
            json(json!({"app_code": "A", "contact_id": id, "contact_field_id": 3,
                        "contact_field_value": "visitor-7f3a"}))
        )]
        .into()
    );
    for index in 0..N {
        assert!(out.changes_at(index, 2).is_empty(), "output {index} changed on replay");
    }
    assert_eq!(
        out.upserts(RESOLVED)[&app_client("A", "c3")],
        resolved("A", "c3", &id, true)
    );
    assert_eq!(
        out.upserts(REFERENCES)[&json(json!({"app_code": "A", "contact_id": id}))],
        json(json!({"app_code": "A", "contact_id": id, "client_ids": ["c3", "c4"]}))
    );
}

#[test]
fn a_mapping_with_the_generated_id_changes_nothing_downstream_and_another_id_wins() {
    let id = anonymous_contact_id("A", 3, "visitor-1");
    let same = mapping("A", "visitor-1", &id);
    let other = mapping("A", "visitor-1", "C-9");
    let rounds = vec![
        Round::changes(vec![field("c3", "A", "visitor-1", true, true, 6)]),
        Round::mappings(vec![same.clone()]),
        Round {
            contact_data: vec![(same.clone(), same, -1), (other.clone(), other, 1)],
            ..Round::default()
        },
    ];
    let out = run(&rounds, 1);
    assert_eq!(out.upserts_at(CREATED, 1).len(), 1);
    // The contact-data service recorded the anonymous contact: nothing moves, and the
    // contact, created once, is not retracted (an append sink could not unsay it anyway).
    for index in 0..N {
        assert!(out.changes_at(index, 2).is_empty(), "output {index} changed");
    }
    assert_eq!(out.upserts(CREATED).len(), 1, "created stays created");
    assert_eq!(
        out.upserts(RESOLVED)[&app_client("A", "c3")],
        resolved("A", "c3", "C-9", true)
    );
    assert_eq!(
        out.changes_at(SUITE_UPDATES, 3),
        sorted(vec![
            change(
                client_key("c3"),
                json!({"client_id": "c3", "app_code": "A", "contact_id": id, "contact_field_id": 3,
                       "contact_field_value": "visitor-1"}),
                -1
            ),
            change(
                client_key("c3"),
                json!({"client_id": "c3", "app_code": "A", "contact_id": "C-9", "contact_field_id": 3,
                       "contact_field_value": "visitor-1"}),
                1
            ),
        ])
    );
}

#[test]
fn an_older_contact_field_changes_nothing() {
    let rounds = vec![
        Round {
            changes: vec![field("c1", "A", "new@example.com", false, true, 20)],
            contact_data: [
                mapping("A", "new@example.com", "C-new"),
                mapping("A", "old@example.com", "C-old"),
            ]
            .into_iter()
            .map(|m| (m.clone(), m, 1))
            .collect(),
            ..Round::default()
        },
        Round::changes(vec![field("c1", "A", "old@example.com", false, true, 10)]),
    ];
    let out = run(&rounds, 1);
    for index in 0..N {
        assert!(out.changes_at(index, 2).is_empty(), "output {index} changed");
    }
    assert_eq!(
        out.upserts(RESOLVED)[&app_client("A", "c1")],
        resolved("A", "c1", "C-new", false)
    );
}

#[test]
fn stale_changes_never_win_and_properties_merge_per_property() {
    let rounds = vec![
        Round::changes(vec![
            client("c1", "A", json!({"os": "ios", "lang": "en"}), 10),
            push("c1", "A", Some("new"), 10),
        ]),
        Round::changes(vec![
            // Older: loses `os` to ts 10 but is the only one to set `model`.
            client("c1", "A", json!({"os": "android", "model": "x"}), 5),
            push("c1", "A", Some("stale"), 9),
            // Newer: wins `lang` only.
            client("c1", "A", json!({"lang": "de"}), 11),
        ]),
    ];
    let out = run(&rounds, 1);
    assert_eq!(
        out.upserts(CLIENT_UPDATES)[&client_key("c1")],
        json(json!({"client_id": "c1", "app_code": "A", "properties": {"os": "ios", "lang": "de", "model": "x"}}))
    );
    assert!(out.changes_at(PUSH_UPDATES, 2).is_empty());
    assert_eq!(
        out.upserts(DEVICES)[&app_client("A", "c1")],
        device("A", "c1", Some("new"), None)
    );
}

#[test]
fn equal_ts_is_decided_by_the_change_not_by_arrival() {
    let a = push("c1", "A", Some("t-a"), 10);
    let b = push("c1", "A", Some("t-b"), 10);
    let m = mismatch("c1", "A", "B", 10);
    let one = run(
        &[
            Round::changes(vec![a.clone()]),
            Round::changes(vec![m.clone(), b.clone()]),
        ],
        1,
    );
    let other = run(&[Round::changes(vec![b, m]), Round::changes(vec![a])], 2);
    for index in 0..N {
        assert_eq!(one.upserts(index), other.upserts(index), "output {index}");
    }
    // The larger token wins the tie, the mismatch wins the app code.
    assert_eq!(
        one.upserts(DEVICES),
        [(app_client("B", "c1"), device("B", "c1", Some("t-b"), None))].into()
    );
}

#[test]
fn a_null_push_token_clears_it_and_an_identical_token_again_emits_nothing() {
    let rounds = vec![
        Round::changes(vec![push("c1", "A", Some("P"), 1)]),
        Round::changes(vec![push("c1", "A", Some("P"), 2)]),
        Round::changes(vec![push("c1", "A", None, 3)]),
    ];
    let out = run(&rounds, 1);
    assert!(out.changes_at(PUSH_UPDATES, 2).is_empty());
    assert!(out.changes_at(DEVICES, 2).is_empty());
    assert_eq!(out.changes_at(CLIENT_STATE, 2).len(), 2, "client_state's ts moved");
    assert_eq!(
        out.changes_at(PUSH_UPDATES, 3),
        vec![
            change(
                client_key("c1"),
                json!({"client_id": "c1", "app_code": "A", "push_token": "P"}),
                -1
            ),
            change(
                client_key("c1"),
                json!({"client_id": "c1", "app_code": "A", "push_token": null}),
                1
            ),
        ]
    );
    assert_eq!(
        out.upserts(DEVICES)[&app_client("A", "c1")],
        device("A", "c1", None, None)
    );
}

#[test]
fn suite_updates_follow_the_latest_field_and_its_resolution() {
    let rounds = vec![
        Round {
            changes: vec![field("c1", "A", "x@example.com", false, true, 1)],
            contact_data: [
                mapping("A", "x@example.com", "C-1"),
                mapping("A", "y@example.com", "C-2"),
            ]
            .into_iter()
            .map(|m| (m.clone(), m, 1))
            .collect(),
            ..Round::default()
        },
        Round::changes(vec![field("c1", "A", "y@example.com", false, true, 2)]),
        Round::changes(vec![field("c1", "A", "y@example.com", false, false, 3)]),
    ];
    let out = run(&rounds, 1);
    let suite = |contact: &str, value: &str| {
        json!({"client_id": "c1", "app_code": "A", "contact_id": contact, "contact_field_id": 3,
               "contact_field_value": value})
    };
    assert_eq!(
        out.changes_at(SUITE_UPDATES, 1),
        vec![change(client_key("c1"), suite("C-1", "x@example.com"), 1)]
    );
    assert_eq!(
        out.changes_at(SUITE_UPDATES, 2),
        sorted(vec![
            change(client_key("c1"), suite("C-1", "x@example.com"), -1),
            change(client_key("c1"), suite("C-2", "y@example.com"), 1),
        ])
    );
    assert!(out.upserts(SUITE_UPDATES).is_empty(), "the latest field asks for none");
    // The contact did not change at time 3: no contact update.
    assert!(out.changes_at(CONTACT_UPDATES, 3).is_empty());
}

#[test]
fn bad_input_is_dead_lettered_with_position_and_reason_and_good_input_is_unaffected() {
    let bad_changes = [
        (
            json!({"type": "client", "app_code": "A", "properties": {}, "ts": 7}),
            "missing field `client_id`",
        ),
        (
            json!({"type": "login", "client_id": "c9", "app_code": "A", "ts": 8}),
            "unknown type `login`; expected `client`, `push-token`, `contact-field` or `app-code-mismatch`",
        ),
        (
            json!({"type": "push-token", "client_id": "c9", "app_code": "A", "push_token": 5, "ts": 8}),
            "field `push_token` must be a string or null, found number",
        ),
        (
            json!({"type": "contact-field", "client_id": "c9", "app_code": "A", "contact_field_id": "3",
                   "contact_field_value": "v", "ts": 8}),
            "field `contact_field_id` must be an integer, found string",
        ),
        (
            json!({"type": "push-token", "client_id": "c9", "app_code": "A", "push_token": "t"}),
            "missing field `ts`",
        ),
        (
            json!(["not", "an", "object"]),
            "a client change must be a JSON object, found list",
        ),
    ];
    let mut changes = vec![push("c1", "A", Some("P"), 1)];
    changes.extend(bad_changes.iter().map(|(e, _)| e.to_string()));
    changes.push(push("c2", "A", Some("Q"), 1));
    let bad_row = json!({"app_code": "A", "contact_field_id": 3, "contact_field_value": "v"}).to_string();
    let rounds = vec![
        Round {
            changes,
            contact_data: vec![(bad_row.clone(), bad_row.clone(), 1)],
            ..Round::default()
        },
        Round {
            contact_data: vec![(bad_row.clone(), bad_row.clone(), -1)],
            ..Round::default()
        },
    ];
    let out = run(&rounds, 2);
    let dead: Vec<(Pos, String, String)> = out
        .dead_letters_at(1)
        .into_iter()
        .map(|d| {
            assert_eq!(&*d.stage, "node contacts");
            (d.pos, d.reason.to_string(), d.raw.to_string())
        })
        .collect();
    let mut expected: Vec<(Pos, String, String)> = bad_changes
        .iter()
        .enumerate()
        .map(|(j, (e, reason))| (change_pos(0, j + 1), (*reason).to_owned(), json(e.clone())))
        .collect();
    expected.push((
        Pos::NONE,
        "missing field `contact_id`".to_owned(),
        json(serde_json::from_str(&bad_row).expect("json")),
    ));
    expected.sort();
    assert_eq!(dead, expected);
    assert!(
        out.dead_letters().len() == bad_changes.len(),
        "the bad row's letter is retracted with it"
    );
    assert_eq!(out.upserts(DEVICES).len(), 2);
    assert_eq!(out.upserts(CLIENT_STATE).len(), 2);
}

#[test]
fn retracted_changes_are_ignored() {
    // Changes are facts: a retraction of one (which an append source never sends) neither
    // un-applies it nor fails.
    let bad = json!({"type": "push-token", "client_id": "c1", "ts": 2}).to_string();
    let rounds = vec![
        Round::changes(vec![push("c1", "A", Some("P"), 1), bad]),
        Round {
            retracted: vec![(0, 0), (0, 1)],
            ..Round::default()
        },
    ];
    let out = run(&rounds, 1);
    for index in 0..N {
        assert!(out.changes_at(index, 2).is_empty(), "output {index} changed");
    }
    assert_eq!(out.dead_letters().len(), 1, "the first report stands");
    assert_eq!(
        out.upserts(DEVICES),
        [(app_client("A", "c1"), device("A", "c1", Some("P"), None))].into()
    );
}

#[test]
fn state_is_per_client_never_per_change() {
    let rounds: Vec<Round> = (0..10u64)
        .map(|b| {
            Round::changes(
                (0..1_000u64)
                    .map(|i| {
                        let n = b * 1_000 + i;
                        let id = format!("c{}", n % 10);
                        match n % 3 {
                            0 => client(&id, "A", json!({format!("p{}", n % 4): n}), n),
                            1 => push(&id, "A", Some(&format!("t{n}")), n),
                            _ => field(&id, "A", &format!("v{}", n % 5), n % 2 == 0, false, n),
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    let out = run(&rounds, 2);
    assert_eq!(out.clients, 10);
    assert_eq!(out.upserts(DEVICES).len(), 10);
}

#[test]
fn client_changes_decode_with_defaults_and_every_type() {
    let decode = |v: serde_json::Value| ClientChange::decode(&Value::from_json_str(&v.to_string()).expect("json"));
    let c = decode(
        json!({"type": "contact-field", "client_id": "c1", "app_code": "A", "contact_field_id": 3,
                          "contact_field_value": "v", "ts": 5, "extra": [1]}),
    )
    .expect("decodes");
    assert_eq!(&*c.client_id, "c1");
    assert_eq!(c.change.ts, 5);
    assert_eq!(
        c.change.body,
        Body::ContactField(ContactField {
            app_code: "A".into(),
            field_id: 3,
            value: "v".into(),
            is_anonymous: false,
            should_update_suite_contact_fields: false,
        })
    );
    let cleared =
        decode(json!({"type": "push-token", "client_id": "c1", "app_code": "A", "push_token": null, "ts": 1}))
            .expect("decodes");
    assert_eq!(
        cleared.change.body,
        Body::PushToken {
            app_code: "A".into(),
            push_token: None
        }
    );
    let m = decode(
        json!({"type": "app-code-mismatch", "client_id": "c1", "old_app_code": "A",
                          "new_app_code": "B", "ts": 2}),
    )
    .expect("decodes");
    assert_eq!(&**m.change.body.app_code(), "B");
    let bare = decode(json!({"type": "client", "client_id": "c1", "app_code": "A", "ts": 3})).expect("decodes");
    assert!(matches!(bare.change.body, Body::Client { ref properties, .. } if properties.is_empty()));
}

#[test]
fn bad_client_changes_name_the_problem() {
    let decode = |v: serde_json::Value| {
        ClientChange::decode(&Value::from_json_str(&v.to_string()).expect("json"))
            .err()
            .map(|e| e.to_string())
    };
    let cases = [
        (json!({"client_id": "c1", "ts": 1}), "missing field `type`"),
        (
            json!({"type": "client", "client_id": "", "app_code": "A", "ts": 1}),
            "field `client_id` must not be empty",
        ),
        (
            json!({"type": "client", "client_id": 7, "app_code": "A", "ts": 1}),
            "field `client_id` must be a string, found number",
        ),
        (
            json!({"type": "client", "client_id": "c1", "app_code": "A", "ts": -1}),
            "field `ts` must be a non-negative integer (milliseconds), found number",
        ),
        (
            json!({"type": "client", "client_id": "c1", "app_code": "A", "ts": "1"}),
            "field `ts` must be a non-negative integer (milliseconds), found string",
        ),
        (
            json!({"type": "client", "client_id": "c1", "ts": 1}),
            "missing field `app_code`",
        ),
        (
            json!({"type": "client", "client_id": "c1", "app_code": "A", "properties": [1], "ts": 1}),
            "field `properties` must be an object, found list",
        ),
        (
            json!({"type": "push-token", "client_id": "c1", "app_code": "A", "ts": 1}),
            "missing field `push_token`",
        ),
        (
            json!({"type": "push-token", "client_id": "c1", "app_code": "A", "push_token": "", "ts": 1}),
            "field `push_token` must not be empty",
        ),
        (
            json!({"type": "contact-field", "client_id": "c1", "app_code": "A", "contact_field_value": "v", "ts": 1}),
            "missing field `contact_field_id`",
        ),
        (
            json!({"type": "contact-field", "client_id": "c1", "app_code": "A", "contact_field_id": 1, "ts": 1}),
            "missing field `contact_field_value`",
        ),
        (
            json!({"type": "contact-field", "client_id": "c1", "app_code": "A", "contact_field_id": 1.5, "contact_field_value": "v", "ts": 1}),
            "field `contact_field_id` must be an integer, found number",
        ),
        (
            json!({"type": "contact-field", "client_id": "c1", "app_code": "A", "contact_field_id": 1, "contact_field_value": "v", "is_anonymous": "yes", "ts": 1}),
            "field `is_anonymous` must be a boolean, found string",
        ),
        (
            json!({"type": "app-code-mismatch", "client_id": "c1", "old_app_code": "A", "ts": 1}),
            "missing field `new_app_code`",
        ),
        (
            json!({"type": "app-code-mismatch", "client_id": "c1", "old_app_code": 1, "new_app_code": "B", "ts": 1}),
            "field `old_app_code` must be a string, found number",
        ),
        (json!("text"), "a client change must be a JSON object, found string"),
    ];
    for (event, reason) in cases {
        assert_eq!(decode(event.clone()).as_deref(), Some(reason), "{event}");
    }
}

#[test]
fn contact_data_rows_decode_and_bad_ones_name_the_problem() {
    let decode = |v: serde_json::Value| Mapping::decode(&Value::from_json_str(&v.to_string()).expect("json"));
    let m = decode(json!({"app_code": "A", "contact_field_id": 3, "contact_field_value": "v", "contact_id": "C"}))
        .expect("decodes");
    assert_eq!(
        (&*m.app_code, m.field_id, &*m.value, &*m.contact_id),
        ("A", 3, "v", "C")
    );
    assert_eq!(
        decode(json!({"app_code": "A", "contact_field_id": 3, "contact_field_value": "v", "contact_id": 5})),
        Err(DecodeError::WrongType {
            field: "contact_id",
            expected: "a string",
            found: "number"
        })
    );
    assert_eq!(
        decode(json!({"contact_field_id": 3, "contact_field_value": "v", "contact_id": "C"})),
        Err(DecodeError::Missing("app_code"))
    );
    assert_eq!(
        decode(json!(null)).map_err(|e| e.to_string()),
        Err("a contact-data row must be a JSON object, found null".to_owned())
    );
}

#[test]
fn the_anonymous_id_is_a_fixed_function_of_the_field() {
    // Pinned: a change here re-keys every anonymous contact ever created.
    assert_eq!(
        anonymous_contact_id("APP1", 100, "visitor-7f3a"),
        "anon-9f70d774465835ba4051371d1b88a28d"
    );
}
