//! The acceptance scenarios of spec/cds.md that concern the dataflow, and the filter rules,
//! the decisions and the dead letters of the crate documentation.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    ACCOUNTS, DIRECTORY, Item, Round, UPDATES, b64, change_pos, insert, json, modify, pni, record, remove, run,
    run_wanted, scan_pos, uak, update, uuid, uuid_of,
};
use serde_json::json;
use sluice_cds::Wanted;
use sluice_runtime::Value;

fn uuid_key(n: u8) -> String {
    json(json!({ "uuid": uuid_of(n) }))
}

fn e164_key(p: &str) -> String {
    json(json!({ "e164": p }))
}

/// The directory value of an item.
fn entry(item: &Item) -> String {
    json(json!({
        "e164": item.p,
        "aci": b64(&uuid(item.u)),
        "pni": item.pni.map(|p| b64(&pni(p))),
        "uak": item.uak.map(|k| b64(&uak(k))),
    }))
}

fn account(item: &Item, version: u64) -> String {
    json(json!({
        "uuid": uuid_of(item.u),
        "e164": item.p,
        "discoverable": item.c.unwrap_or(false),
        "pni": item.pni.map(|p| b64(&pni(p))),
        "uak": item.uak.map(|k| b64(&uak(k))),
        "version": version,
    }))
}

#[test]
fn a_number_change_removes_the_old_number_then_publishes_the_new_one() {
    let a = Item::new(1, "+15550000001", true, 1);
    let b = Item {
        p: "+15550000002".to_owned(),
        ..a.at(2)
    };
    let out = run(
        &[
            Round::changes(vec![insert(&a, 10)]),
            Round::changes(vec![modify(&a, &b, 20)]),
        ],
        1,
    );
    let updates = out.updates();
    assert_eq!(
        updates,
        vec![
            (change_pos(0, 0), uuid_key(1), update(&a, true)),
            (change_pos(1, 0), uuid_key(1), update(&a, false)),
            (change_pos(1, 0), uuid_key(1), update(&b, true)),
        ],
        "remove +A, then upsert +B, in that order"
    );
    let directory = out.upserts(DIRECTORY);
    assert_eq!(directory.len(), 1);
    assert_eq!(directory.get(&e164_key("+15550000002")), Some(&entry(&b)));
    assert_eq!(out.upserts(ACCOUNTS).get(&uuid_key(1)), Some(&account(&b, 2)));
}

#[test]
fn a_change_of_only_the_version_updates_no_output() {
    let a = Item::new(1, "+15550000001", true, 1);
    let a2 = Item {
        d: Some("{\"other\":1}".to_owned()),
        ..a.at(2)
    };
    let out = run(
        &[Round::scan(vec![a.clone()]), Round::changes(vec![modify(&a, &a2, 10)])],
        2,
    );
    for index in [UPDATES, ACCOUNTS, DIRECTORY] {
        assert_eq!(
            out.changes_at(index, 2),
            vec![],
            "output {index} changed at the V-only change"
        );
    }
    assert_eq!(out.upserts(ACCOUNTS).get(&uuid_key(1)), Some(&account(&a, 1)));
    assert!(out.dead_letters().is_empty());
}

#[test]
fn the_snapshot_directory_holds_the_discoverable_accounts() {
    let items = [
        Item::new(11, "+15550000011", true, 1),
        Item::new(12, "+15550000012", false, 1),
        // PNI and UAK from the blob.
        Item {
            pni: Some(113),
            uak: Some(213),
            in_blob: true,
            ..Item::new(13, "+15550000013", true, 3)
        },
        Item {
            c: None,
            ..Item::new(14, "+15550000014", true, 1)
        },
        Item::new(21, "+15550000021", true, 1),
    ];
    let out = run(&[Round::scan(items.to_vec())], 1);
    let directory = out.upserts(DIRECTORY);
    let expected: Vec<(String, String)> = [&items[0], &items[2], &items[4]]
        .into_iter()
        .map(|i| (e164_key(&i.p), entry(i)))
        .collect();
    assert_eq!(
        directory.into_iter().collect::<Vec<_>>(),
        expected,
        "12 is not discoverable, 14 has no C"
    );
    assert_eq!(out.upserts(ACCOUNTS).len(), 5, "every account is in accounts_by_uuid");
    assert_eq!(out.updates(), vec![], "a scan publishes no cds updates");
}

#[test]
fn a_change_made_while_the_scan_runs_is_neither_lost_nor_reverted() {
    let v1 = Item::new(1, "+15550000001", true, 1);
    let v2 = Item {
        p: "+15550000009".to_owned(),
        ..v1.at(2)
    };
    // The scan read the item before the change, but delivers it after the change.
    let late_scan = run(
        &[
            Round::changes(vec![modify(&v1, &v2, 50)]),
            Round::scan(vec![v1.clone()]),
        ],
        1,
    );
    // The scan read the item after the change, and delivers it first.
    let early_scan = run(
        &[
            Round::scan(vec![v2.clone()]),
            Round::changes(vec![modify(&v1, &v2, 50)]),
        ],
        1,
    );
    // The scan read the item after the change, and delivers it after the change.
    let late_new_scan = run(
        &[
            Round::changes(vec![modify(&v1, &v2, 50)]),
            Round::scan(vec![v2.clone()]),
        ],
        1,
    );
    for out in [&late_scan, &early_scan, &late_new_scan] {
        assert_eq!(out.upserts(ACCOUNTS).get(&uuid_key(1)), Some(&account(&v2, 2)));
        let directory = out.upserts(DIRECTORY);
        assert_eq!(directory.len(), 1, "{directory:?}");
        assert_eq!(directory.get(&e164_key("+15550000009")), Some(&entry(&v2)));
    }
    assert_eq!(
        late_scan.changes_at(ACCOUNTS, 2),
        vec![],
        "the stale scanned item changes nothing"
    );
}

#[test]
fn a_late_removal_by_the_old_owner_never_deletes_the_new_owners_number() {
    let u1 = Item::new(1, "+1555000000A".replace('A', "1").as_str(), true, 1);
    let a = u1.p.clone();
    let u2 = Item {
        p: "+15550000002".to_owned(),
        ..u1.at(2)
    };
    let v1 = Item::new(5, "+15550000005", true, 1);
    let v2 = Item {
        p: a.clone(),
        ..v1.at(2)
    };
    let scan = Round::scan(vec![u1.clone(), v1.clone()]);
    // U gives up +A at time 100, V takes it at time 200; V's change is delivered first.
    let out = run(
        &[
            scan,
            Round::changes(vec![modify(&v1, &v2, 200)]),
            Round::changes(vec![modify(&u1, &u2, 100)]),
        ],
        2,
    );
    for t in 2..=3 {
        let directory = out.upserts_at(DIRECTORY, t);
        assert_eq!(
            directory.get(&e164_key(&a)),
            Some(&entry(&v2)),
            "at time {t}: +A belongs to V"
        );
    }
    let directory = out.upserts(DIRECTORY);
    assert_eq!(directory.get(&e164_key("+15550000002")), Some(&entry(&u2)));
    assert_eq!(directory.len(), 2);
    // The filter still publishes what the original did: U's removal of +A, then +B.
    let last: Vec<String> = out
        .updates()
        .into_iter()
        .filter(|u| u.0 == change_pos(2, 0))
        .map(|u| u.2)
        .collect();
    assert_eq!(last, vec![update(&u1, false), update(&u2, true)]);
}

#[test]
fn the_most_recent_claim_of_a_number_wins_while_both_accounts_claim_it() {
    // V takes +A before U's change (giving +A up) has arrived: both accounts claim +A.
    let u = Item::new(1, "+15550000001", true, 1);
    let v1 = Item::new(2, "+15550000002", true, 1);
    let v2 = Item {
        p: u.p.clone(),
        ..v1.at(2)
    };
    let out = run(
        &[
            Round::changes(vec![insert(&u, 10), insert(&v1, 20)]),
            Round::changes(vec![modify(&v1, &v2, 30)]),
        ],
        1,
    );
    assert_eq!(out.upserts(DIRECTORY).get(&e164_key(&u.p)), Some(&entry(&v2)));
    assert_eq!(out.upserts(ACCOUNTS).len(), 2);
    // A newer claim by a non-discoverable account hides the number.
    let hidden = Item {
        c: Some(false),
        ..v2.at(3)
    };
    let out = run(
        &[Round::changes(vec![
            insert(&u, 10),
            insert(&v1, 20),
            modify(&v1, &hidden, 30),
        ])],
        1,
    );
    assert_eq!(out.upserts(DIRECTORY).get(&e164_key(&u.p)), None);
}

#[test]
fn inserts_removes_and_view_changes_follow_the_filter_rules() {
    let a = Item::new(1, "+15550000001", true, 1);
    let new_pni = Item {
        pni: Some(7),
        ..a.at(2)
    };
    let hidden = Item {
        c: Some(false),
        ..new_pni.at(3)
    };
    let out = run(
        &[
            Round::changes(vec![insert(&a, 1)]),
            Round::changes(vec![modify(&a, &new_pni, 2)]),
            Round::changes(vec![modify(&new_pni, &hidden, 3)]),
            Round::changes(vec![remove(&hidden, 4)]),
        ],
        1,
    );
    let values: Vec<String> = out.updates().into_iter().map(|u| u.2).collect();
    assert_eq!(
        values,
        vec![
            update(&a, true),
            update(&new_pni, true),
            update(&hidden, false),
            update(&hidden, false)
        ]
    );
    assert_eq!(
        out.upserts_at(DIRECTORY, 2).get(&e164_key(&a.p)),
        Some(&entry(&new_pni))
    );
    assert_eq!(out.upserts_at(DIRECTORY, 3), Default::default(), "not discoverable");
    assert_eq!(
        out.upserts_at(ACCOUNTS, 3).get(&uuid_key(1)),
        Some(&account(&hidden, 3))
    );
    assert_eq!(out.upserts(ACCOUNTS), Default::default(), "removed");
}

#[test]
fn a_removed_account_is_not_resurrected_by_an_older_scanned_item() {
    let a = Item::new(1, "+15550000001", true, 4);
    let out = run(
        &[
            Round::changes(vec![remove(&a, 10)]),
            Round::scan(vec![a.at(3), a.clone()]),
        ],
        1,
    );
    assert_eq!(out.upserts(ACCOUNTS), Default::default());
    assert_eq!(out.upserts(DIRECTORY), Default::default());
    // A re-insert with a higher version comes back.
    let again = a.at(5);
    let out = run(
        &[
            Round::changes(vec![remove(&a, 10)]),
            Round::changes(vec![insert(&again, 11)]),
        ],
        1,
    );
    assert_eq!(out.upserts(ACCOUNTS).get(&uuid_key(1)), Some(&account(&again, 5)));
}

#[test]
fn bad_records_are_dead_lettered_with_their_position_and_reason() {
    let good = Item::new(1, "+15550000001", true, 1);
    let no_p = Value::map([("U", common::bytes(&uuid(2)))]);
    let short_u = Item { u: 3, ..good.clone() }.value();
    let short_u = match short_u {
        Value::Map(m) => {
            let mut m = (*m).clone();
            m.insert("U".into(), common::bytes(&[1, 2, 3]));
            Value::Map(m.into())
        }
        other => other,
    };
    let changes = vec![
        record("UPSERT", None, Some(&good), 1, 1),
        record("MODIFY", None, Some(&good), 1, 1),
        record("REMOVE", None, None, 1, 1),
        Value::map([("eventName", Value::str("INSERT")), ("new", no_p.clone())]),
        Value::map([("eventName", Value::str("INSERT")), ("new", short_u)]),
        insert(
            &Item {
                p: "5550000001".to_owned(),
                ..good.clone()
            },
            1,
        ),
        insert(&good, 2),
    ];
    let out = run(
        &[Round {
            changes,
            scan: vec![no_p],
        }],
        2,
    );
    let letters = out.dead_letters();
    let reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                format!("{}/{}/{}", l.pos.source, l.pos.partition, l.pos.offset),
                l.reason.to_string(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "0/0/0".to_owned(),
                "eventName \"UPSERT\" is not INSERT, MODIFY or REMOVE".to_owned()
            ),
            (
                "0/0/1".to_owned(),
                "MODIFY record without OldImage: the stream must carry NEW_AND_OLD_IMAGES".to_owned()
            ),
            ("0/0/2".to_owned(), "REMOVE record without OldImage".to_owned()),
            ("0/0/3".to_owned(), "NewImage: the item has no attribute P".to_owned()),
            (
                "0/0/4".to_owned(),
                "NewImage: attribute U: the account UUID has 3 bytes, not 16".to_owned()
            ),
            (
                "0/0/5".to_owned(),
                "NewImage: attribute P: \"5550000001\" is not an E.164 number (+ and 1-15 digits)".to_owned()
            ),
            ("1/0/0".to_owned(), "the item has no attribute P".to_owned()),
        ]
    );
    assert!(letters.iter().all(|l| &*l.stage == "node cds"));
    assert_eq!(scan_pos(0, 0).source, 1);
    assert_eq!(out.upserts(ACCOUNTS).len(), 1, "the good record is applied");
    assert_eq!(out.updates().len(), 1);
}

#[test]
fn unwanted_outputs_stay_empty_and_wanted_ones_are_unchanged() {
    let a = Item::new(1, "+15550000001", true, 1);
    let b = Item {
        p: "+15550000002".to_owned(),
        ..a.at(2)
    };
    let rounds = [Round::scan(vec![a.clone()]), Round::changes(vec![modify(&a, &b, 20)])];
    let all = run(&rounds, 1);
    let only_directory = run_wanted(
        &rounds,
        1,
        Wanted {
            cds_updates: false,
            accounts_by_uuid: false,
            directory: true,
        },
    );
    assert!(only_directory.outputs[UPDATES].is_empty());
    assert!(only_directory.outputs[ACCOUNTS].is_empty());
    assert_eq!(only_directory.upserts(DIRECTORY), all.upserts(DIRECTORY));
    let only_updates = run_wanted(
        &rounds,
        1,
        Wanted {
            cds_updates: true,
            accounts_by_uuid: false,
            directory: false,
        },
    );
    assert_eq!(only_updates.updates(), all.updates());
    assert!(only_updates.outputs[DIRECTORY].is_empty());
}
