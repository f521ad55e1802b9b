//! The graph of the cds dataflow.
//!
//! ```text
//! changes ─ decode ─┬─ filter (rules 1-5) ─ cds_updates             (stateless, no exchange)
//!                   └─ relevant changes ─┐
//! snapshot ─ decode ─────────────────────┴─ fold per uuid, max (V, removed, stamp)
//!                                            ├─ accounts_by_uuid
//!                                            └─ claims by e164 ─ reduce: max (stamp, uuid) ─ directory
//! ```
//!
//! State: one entry per uuid ever seen (tombstones included) in the fold, and one claim per
//! current account in the directory's reduce; nothing grows with the number of changes.

use std::sync::Arc;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use sluice_runtime::operators::fold::KeyedFold;
use sluice_runtime::operators::named::{Coll, concat_named, flat_map_named, map_named, split_where_named};
use sluice_runtime::recovery::StateRegistry;
use sluice_runtime::{DeadLetter, Diff, Pos, Row, Rows, Value};
use timely::dataflow::operators::generic::operator::empty;

use crate::change::{Change, Event, Image, Stamp};
use crate::view::View;
use crate::{CdsOutputs, Wanted};
use sluice_runtime::value::uuid_text;

/// One fact about an account, ordered so that the latest is the largest: by item version,
/// a removal after the version it removes, then by when it happened and by content (ties
/// between equal versions are resolved the same way whatever the arrival order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Fact {
    version: u64,
    removed: bool,
    stamp: Stamp,
    view: Option<View>,
}

/// A current account: its latest view, version and when that view was written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Account {
    version: u64,
    stamp: Stamp,
    view: View,
}

/// An account's claim of a number; the largest claim of a number wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Claim {
    stamp: Stamp,
    uuid: [u8; 16],
    discoverable: bool,
    pni: Option<Arc<[u8]>>,
    uak: Option<Arc<[u8]>>,
}

pub(crate) fn build<'s>(
    changes: Rows<'s>,
    snapshot: Option<Rows<'s>>,
    wanted: &Wanted,
    name: &str,
    state: &mut StateRegistry,
) -> CdsOutputs<'s> {
    let scope = changes.inner.scope();
    let stage: Arc<str> = Arc::from(format!("node {name}"));

    // Changes are events: a retraction (there are none from an append source) is ignored.
    let change_stage = Arc::clone(&stage);
    let (changes, change_errors) = split_where_named(
        changes,
        &format!("{name}: decode changes"),
        |diff| diff > 0,
        move |row: Row| match Change::from_record(&row.val) {
            Ok(change) => Ok((row.pos, change)),
            Err(e) => Err(DeadLetter::for_row(&row, &change_stage, e)),
        },
    );
    // Rule 5 drops a change from every output, so it is dropped here, before anything else.
    let relevant = flat_map_named(changes, &format!("{name}: filter"), |(pos, change): (Pos, Change)| {
        let updates = change.updates();
        (!updates.is_empty()).then_some((pos, change, updates))
    });

    let cds_updates = if wanted.cds_updates {
        flat_map_named(
            relevant.clone(),
            &format!("{name}: cds_updates"),
            |(pos, _, updates): (Pos, Change, Vec<View>)| updates.into_iter().map(move |view| update_row(&view, pos)),
        )
    } else {
        empty(scope).as_collection()
    };

    let mut errors = vec![change_errors];
    let mut facts = vec![flat_map_named(
        relevant,
        &format!("{name}: account facts"),
        |(_, change, _): (Pos, Change, Vec<View>)| change_facts(change),
    )];
    if let Some(snapshot) = snapshot {
        let scan_stage = Arc::clone(&stage);
        let (items, item_errors) = split_where_named(
            snapshot,
            &format!("{name}: decode scanned items"),
            |diff| diff > 0,
            move |row: Row| match Image::from_item(&row.val) {
                Ok(image) => Ok(put(image, Stamp::SCAN)),
                Err(e) => Err(DeadLetter::for_row(&row, &scan_stage, e)),
            },
        );
        facts.push(items);
        errors.push(item_errors);
    }
    let errors = concat_named(scope, errors, &format!("{name}: errors"));

    let (accounts_by_uuid, directory) = if wanted.accounts_by_uuid || wanted.directory {
        let facts = concat_named(scope, facts, &format!("{name}: facts"));
        let accounts: Coll<'s, ([u8; 16], Account)> = facts
            .keyed_fold_checkpointed(
                &format!("{name}: latest version per uuid"),
                |_uuid, latest: &mut Option<Fact>, fact: Fact| {
                    if latest.as_ref().is_none_or(|l| fact > *l) {
                        *latest = Some(fact);
                    }
                },
                |uuid, latest| {
                    let view = latest.view.clone().filter(|_| !latest.removed)?;
                    Some((
                        *uuid,
                        Account {
                            version: latest.version,
                            stamp: latest.stamp,
                            view,
                        },
                    ))
                },
                &state.fold(&format!("{name}.accounts")),
            )
            .0;
        let by_uuid = if wanted.accounts_by_uuid {
            map_named(
                accounts.clone(),
                &format!("{name}: accounts_by_uuid"),
                |(_, account): ([u8; 16], Account)| account_row(&account),
            )
        } else {
            empty(scope).as_collection()
        };
        let directory = if wanted.directory {
            directory(accounts, name)
        } else {
            empty(scope).as_collection()
        };
        (by_uuid, directory)
    } else {
        (empty(scope).as_collection(), empty(scope).as_collection())
    };

    CdsOutputs {
        cds_updates,
        accounts_by_uuid,
        directory,
        errors,
    }
}

/// Per number, the most recent claim among the current accounts; a row if it is discoverable.
fn directory<'s>(accounts: Coll<'s, ([u8; 16], Account)>, name: &str) -> Rows<'s> {
    let claims = map_named(
        accounts,
        &format!("{name}: claims by e164"),
        |(uuid, account): ([u8; 16], Account)| {
            let View {
                e164,
                discoverable,
                pni,
                uak,
                ..
            } = account.view;
            let claim = Claim {
                stamp: account.stamp,
                uuid,
                discoverable,
                pni,
                uak,
            };
            (e164, claim)
        },
    );
    let winners = claims.reduce_named(
        &format!("{name}: most recent claim per e164"),
        |_e164, claims: &[(&Claim, Diff)], out: &mut Vec<(Claim, Diff)>| {
            // `claims` is sorted; an account holds at most one claim, so counts are 1.
            if let Some((winner, _)) = claims.iter().rev().find(|(_, n)| *n > 0)
                && winner.discoverable
            {
                out.push(((*winner).clone(), 1));
            }
        },
    );
    map_named(
        winners,
        &format!("{name}: directory"),
        |(e164, claim): (Arc<str>, Claim)| directory_row(e164, &claim),
    )
}

fn put(image: Image, stamp: Stamp) -> ([u8; 16], Fact) {
    (
        image.view.uuid,
        Fact {
            version: image.version,
            removed: false,
            stamp,
            view: Some(image.view),
        },
    )
}

fn removal(image: &Image, stamp: Stamp) -> ([u8; 16], Fact) {
    (
        image.view.uuid,
        Fact {
            version: image.version,
            removed: true,
            stamp,
            view: None,
        },
    )
}

/// What a relevant change says about accounts. A MODIFY that changes `U` (the table's hash
/// key, so only from a foreign source) removes the old account and puts the new one.
fn change_facts(change: Change) -> Vec<([u8; 16], Fact)> {
    let stamp = change.stamp;
    match (change.event, change.old, change.new) {
        (Event::Insert, _, Some(new)) => vec![put(new, stamp)],
        (Event::Remove, Some(old), _) => vec![removal(&old, stamp)],
        (Event::Modify, Some(old), Some(new)) if old.view.uuid != new.view.uuid => {
            vec![removal(&old, stamp), put(new, stamp)]
        }
        (Event::Modify, _, Some(new)) => vec![put(new, stamp)],
        _ => Vec::new(),
    }
}

fn bytes_or_null(bytes: &Option<Arc<[u8]>>) -> Value {
    bytes.as_ref().map_or(Value::Null, |b| Value::Bytes(Arc::clone(b)))
}

fn uuid_key(uuid: &[u8; 16]) -> Value {
    Value::map([("uuid", Value::str(uuid_text(uuid)))])
}

/// A `cds_updates` row: the cds-update record, keyed by the account UUID text.
fn update_row(view: &View, pos: Pos) -> Row {
    Row {
        key: uuid_key(&view.uuid),
        val: Value::map([
            ("e164", Value::Str(Arc::clone(&view.e164))),
            ("uuid", Value::Bytes(Arc::from(&view.uuid[..]))),
            ("canonicallyDiscoverable", Value::Bool(view.discoverable)),
            ("pni", bytes_or_null(&view.pni)),
            ("uak", bytes_or_null(&view.uak)),
        ]),
        pos,
    }
}

fn account_row(account: &Account) -> Row {
    let view = &account.view;
    Row::derived(
        uuid_key(&view.uuid),
        Value::map([
            ("uuid", Value::str(uuid_text(&view.uuid))),
            ("e164", Value::Str(Arc::clone(&view.e164))),
            ("discoverable", Value::Bool(view.discoverable)),
            ("pni", bytes_or_null(&view.pni)),
            ("uak", bytes_or_null(&view.uak)),
            ("version", Value::from(account.version)),
        ]),
    )
}

fn directory_row(e164: Arc<str>, claim: &Claim) -> Row {
    Row::derived(
        Value::map([("e164", Value::Str(Arc::clone(&e164)))]),
        Value::map([
            ("e164", Value::Str(e164)),
            ("aci", Value::Bytes(Arc::from(&claim.uuid[..]))),
            ("pni", bytes_or_null(&claim.pni)),
            ("uak", bytes_or_null(&claim.uak)),
        ]),
    )
}
