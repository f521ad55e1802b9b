//! The cds dataflow: the contact-discovery change filter, accounts by uuid and the e164
//! directory (spec/cds.md).
//!
//! [`cds`] takes the account change records (append-only rows whose `val` is a decoded
//! `dynamodb-stream` record: `eventName`, `old`, `new`, `approximateCreationTime`,
//! `sequenceNumber`) and optionally a table scan (append-only rows whose `val` is a decoded
//! `dynamodb-item`), and maintains three outputs:
//!
//! | output | key | value | kind |
//! |---|---|---|---|
//! | `cds_updates` | `uuid` (text) | `e164`, `uuid` (16 bytes), `canonicallyDiscoverable`, `pni`, `uak` (bytes or null) | append-only; rows carry the change's position |
//! | `accounts_by_uuid` | `uuid` (text) | `uuid` (text), `e164`, `discoverable`, `pni`, `uak`, `version` | one row per current account |
//! | `directory` | `e164` | `e164`, `aci` (16 bytes), `pni`, `uak` | one row per discoverable number |
//!
//! Decisions where the spec is silent:
//!
//! * **Rule 5 everywhere.** A change the filter drops (only `V` or other parts of `D`
//!   changed) changes no output, so `accounts_by_uuid.version` is the version of the latest
//!   change that altered the view, or of the scanned item. This is also what lets a decoder
//!   drop such changes before decoding them (see the root crate's `formats`).
//! * **Order within a record.** Rule 3's two updates share the record's position; an append
//!   sink writes rows of one position in row order, which puts the removal first whenever the
//!   new number is discoverable (`false < true`). When neither is, both are removals of two
//!   different numbers and are written in number order.
//! * **Latest version.** Per uuid the fact with the largest (`V`, removed, stamp, view) wins,
//!   where a REMOVE is a fact at the version it removes (so it beats the item it deletes, and
//!   loses to a later re-insert with a higher version) and a missing `V` is 0. Tombstones are
//!   kept, one per deleted uuid, so an older scanned item never resurrects a deleted account.
//! * **Claims.** Every current account claims its number with the stamp of the change that
//!   wrote its view (`approximateCreationTime`, then `sequenceNumber`; a scanned item is older
//!   than any change). Per number the most recent claim wins, ties broken by uuid; the number
//!   is in the directory only if the winning account is discoverable. So a late "remove +A"
//!   from the account that gave +A up never deletes the new owner's +A: its account no longer
//!   claims +A at all once its change is applied, and until then its older claim loses.
//! * **Bad input** goes to `errors` (`stage = "node <name>"`, the row's position, the reason,
//!   the decoded record as JSON) and changes nothing: a record whose event needs an image it
//!   lacks (a MODIFY needs both: the stream must carry `NEW_AND_OLD_IMAGES`), an image
//!   without `U` or `P`, a `U` or `PNI` that is not 16 bytes, a `P` that is not E.164, or a
//!   `D` blob that is needed and unreadable. See [`ChangeError`] and [`ViewError`].
//!
//! Workers: the filter runs where the record was read (no exchange); the fold is exchanged by
//! uuid and the directory by number, so outputs are the same for any number of workers.

mod change;
mod graph;
mod view;

use sluice_runtime::{DeadLetters, Rows};

pub use change::{Change, ChangeError, Event, Image, Stamp, filter};
pub use view::{View, ViewError, image_version, is_e164};

/// The names of the outputs, in the order of [`CdsOutputs`]' fields (the pipeline spec's
/// list, so validation and the dataflow cannot disagree).
pub const OUTPUTS: &[&str] = sluice_runtime::spec::CDS_OUTPUTS;

/// Which outputs a pipeline reads; the others are not built (their collections stay empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Build `cds_updates`.
    pub cds_updates: bool,
    /// Build `accounts_by_uuid`.
    pub accounts_by_uuid: bool,
    /// Build `directory`.
    pub directory: bool,
}

impl Wanted {
    /// Every output.
    pub const ALL: Wanted = Wanted {
        cds_updates: true,
        accounts_by_uuid: true,
        directory: true,
    };
}

/// The collections the cds dataflow produces (see the crate documentation for shapes).
pub struct CdsOutputs<'s> {
    /// The filtered updates, as the original function wrote them.
    pub cds_updates: Rows<'s>,
    /// The latest view of every current account, keyed by uuid.
    pub accounts_by_uuid: Rows<'s>,
    /// The discoverable numbers, keyed by e164.
    pub directory: Rows<'s>,
    /// Change records and scanned items that could not be read.
    pub errors: DeadLetters<'s>,
}

/// Builds the cds dataflow over `changes` and an optional `snapshot` (a table scan).
///
/// `name` names the operators (`"<name>: …"`) and the dead letters' stage (`"node <name>"`).
/// Its fold saves its state in checkpoints through `state`, under a name starting with `name`.
pub fn cds<'s>(
    changes: Rows<'s>,
    snapshot: Option<Rows<'s>>,
    wanted: &Wanted,
    name: &str,
    state: &mut sluice_runtime::recovery::StateRegistry,
) -> CdsOutputs<'s> {
    graph::build(changes, snapshot, wanted, name, state)
}
