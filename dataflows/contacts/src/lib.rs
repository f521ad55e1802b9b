//! The contacts dataflow: client state, contact resolution and contact-id writer outputs
//! (spec/contacts.md).
//!
//! [`contacts`] takes the client changes (append-only rows whose `val` is a JSON change)
//! and the contact-data mapping (an upsert collection, so it retracts), decodes both into
//! typed records ([`ClientChange`], [`Mapping`]), and maintains nine outputs. Every output is
//! an incrementally maintained collection — a function of the input accumulated so far — with
//! at most one row per key; sinks write them as upserts or changelogs. Keys are maps of the
//! key fields, values repeat the key fields, rows carry no position:
//!
//! | output | key | value |
//! |---|---|---|
//! | `client_state` | `client_id` | `client_id`, `app_code`, `properties` (merged; `{}` if none), `push_token`, `contact_field_id`, `contact_field_value`, `is_anonymous`, `should_update_suite_contact_fields` (the four null without a contact field), `contact_id` (null unless resolved), `ts` (of the latest change) |
//! | `devices` | `app_code`, `client_id` | `app_code`, `client_id`, `push_token` (null if none), `contact_id` (null unless resolved) |
//! | `resolved_contacts` | `app_code`, `client_id` | `app_code`, `client_id`, and `contact_id`, `anonymous` (the field's `is_anonymous`) — or `unresolved: true` |
//! | `contact_references` | `app_code`, `contact_id` | `app_code`, `contact_id`, `client_ids` (sorted) |
//! | `anonymous_contacts_created` | `app_code`, `contact_id` | `app_code`, `contact_id`, `contact_field_id`, `contact_field_value` |
//! | `client_state_client_updates` | `client_id` | `client_id`, `app_code`, `properties` |
//! | `client_state_push_token_updates` | `client_id` | `client_id`, `app_code`, `push_token` (null once cleared) |
//! | `client_state_contact_updates` | `client_id` | `client_id`, `app_code`, `contact_id` |
//! | `suite_contact_updates` | `client_id` | `client_id`, `app_code`, `contact_id`, `contact_field_id`, `contact_field_value` |
//!
//! Which clients have a row: every client with a valid change in `client_state` and
//! `devices` (under its current app code); clients with a contact field in
//! `resolved_contacts`; clients that sent a `client` change in the client updates, a
//! `push-token` change in the push-token updates; resolved clients in the contact updates,
//! and in the suite updates when their latest field has
//! `should_update_suite_contact_fields = true`.
//!
//! **Update streams.** The four `*_updates` outputs are collections keyed by client id, so
//! their changelog *is* the stream of updates the old workers published: a change of the
//! value is `-old +new`, an identical value again emits nothing, and they carry the app code,
//! so an app code switch re-publishes the client, its push token and its contact under the
//! new code (the "set under the new code" half of the change-client-app-code worker).
//!
//! Decisions where the spec is silent:
//!
//! * **Order.** A client's changes are ordered by `ts`, then by the change itself (at equal
//!   `ts` an `app-code-mismatch` beats a `contact-field`, which beats a `push-token`, which
//!   beats a `client` change; then the fields decide), never by arrival. Each part of the
//!   state is the latest change of its kind in that order: the current app code (latest
//!   change of any type), each property (latest `client` change that sets it), the push
//!   token (latest `push-token`; null clears it) and the contact field (latest
//!   `contact-field`). So a stale change never wins, duplicates change nothing, and the
//!   outputs depend neither on arrival order, nor on how the input is split into times, nor
//!   on the number of workers.
//! * **Properties.** A property set to `null` keeps the value `null` (it is not deleted);
//!   a `client` change without `properties` sets none.
//! * **App code switch.** Everything of a client lives under its current app code: a switch
//!   retracts its rows under the old code and inserts them under the new one. The push token
//!   and the contact field carry over, and the field is resolved again against the mappings
//!   of the new code.
//! * **Resolution.** The contact of a client is the `contact_id` mapped from its latest
//!   field under its current app code. Without a mapping an identified client is
//!   `unresolved` (and resolves by itself when a mapping arrives), and an anonymous one gets
//!   the deterministic id of [`anonymous_contact_id`] (`anon-` + 32 hex digits of SHA-256).
//!   A mapping always wins: if it arrives with the generated id nothing changes downstream;
//!   if it arrives with another id the client moves to that one. Outputs are a function of
//!   the input, so replays and reorders agree. If two `contact_data` rows map the same field
//!   (possible only when the source is keyed otherwise), the smallest `contact_id` is used.
//! * **Anonymous contacts created** holds every generated id that some anonymous client
//!   without a mapping has used: one row however many clients share the id, however often
//!   the input is replayed and however often the id falls out of use (its mapping arrives,
//!   its clients move) and comes back. Rows are only ever inserted, so an append sink writes
//!   each id once; the set is checkpointed, so a restart creates nothing again. Which ids
//!   get created depends on arrival: a field read before its mapping creates one, a field
//!   read with it does not.
//! * **Bad input** goes to `errors` as a dead letter (`stage = "node <name>"`, the row's
//!   position, the reason naming the field, the row's JSON) and changes nothing else; see
//!   [`DecodeError`]. Retractions of client changes are ignored (changes are events);
//!   retractions of `contact_data` rows are honoured, and retract their dead letters.
//!
//! Memory: the per-client state is folded ([`KeyedFold`]), one [`ClientState`]-sized entry
//! per client, and everything joined or reduced is per client or per mapping, so nothing
//! grows with the number of changes.
//!
//! [`KeyedFold`]: sluice_runtime::operators::fold::KeyedFold
//! [`ClientState`]: ContactsState

mod anon;
mod event;
mod graph;

mod rows;
mod state;

use sluice_runtime::operators::fold::FoldState;
use sluice_runtime::{DeadLetters, Rows};

pub use anon::anonymous_contact_id;
pub use event::{Body, CHANGE_TYPES, Change, ClientChange, ContactField, DecodeError, Mapping};

/// The names of the outputs, in the order of [`ContactsOutputs`]' fields (the pipeline
/// spec's list, so validation and the dataflow cannot disagree).
pub const OUTPUTS: &[&str] = sluice_runtime::spec::CONTACTS_OUTPUTS;

/// The collections the contacts dataflow produces (see the crate documentation for shapes).
pub struct ContactsOutputs<'s> {
    /// Each client's state, keyed by `client_id`.
    pub client_state: Rows<'s>,
    /// Each client's device under its current app code, keyed by `app_code`, `client_id`.
    pub devices: Rows<'s>,
    /// Each contact field's resolution, keyed by `app_code`, `client_id`.
    pub resolved_contacts: Rows<'s>,
    /// Each contact's client ids, keyed by `app_code`, `contact_id`.
    pub contact_references: Rows<'s>,
    /// Generated anonymous contacts without a mapping, keyed by `app_code`, `contact_id`.
    pub anonymous_contacts_created: Rows<'s>,
    /// Each client's direct properties, keyed by `client_id`.
    pub client_state_client_updates: Rows<'s>,
    /// Each client's push token, keyed by `client_id`.
    pub client_state_push_token_updates: Rows<'s>,
    /// Each resolved client's contact id, keyed by `client_id`.
    pub client_state_contact_updates: Rows<'s>,
    /// The suite update of each resolved client whose field asks for one, keyed by `client_id`.
    pub suite_contact_updates: Rows<'s>,
    /// Input rows that could not be decoded.
    pub errors: DeadLetters<'s>,
    /// A handle on this worker's state, for metrics and tests.
    pub state: ContactsState,
}

impl<'s> ContactsOutputs<'s> {
    /// The row outputs in the order of [`OUTPUTS`], the dead letters and the state handle.
    pub fn split(self) -> ([Rows<'s>; 9], DeadLetters<'s>, ContactsState) {
        let rows = [
            self.client_state,
            self.devices,
            self.resolved_contacts,
            self.contact_references,
            self.anonymous_contacts_created,
            self.client_state_client_updates,
            self.client_state_push_token_updates,
            self.client_state_contact_updates,
            self.suite_contact_updates,
        ];
        (rows, self.errors, self.state)
    }
}

/// This worker's share of the dataflow's per-client state; read it between worker steps.
pub struct ContactsState {
    clients: FoldState<event::Str, state::ClientState>,
}

impl ContactsState {
    /// Clients with state on this worker.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// Builds the contacts dataflow.
///
/// `changes`: append-only rows whose `val` is a `client_changes` JSON event (any key).
/// `contact_data`: an upsert collection (it retracts) of rows whose `val` holds `app_code`,
/// `contact_field_id` (integer), `contact_field_value` and `contact_id` (strings); the row
/// key is ignored (the mapping is keyed by its value). `name` names the operators
/// (`"<name>: …"`) and the dead letters' stage (`"node <name>"`).
/// Its fold saves its state in checkpoints through `state`, under a name starting with `name`.
pub fn contacts<'s>(
    changes: Rows<'s>,
    contact_data: Rows<'s>,
    name: &str,
    state: &mut sluice_runtime::recovery::StateRegistry,
) -> ContactsOutputs<'s> {
    graph::build(changes, contact_data, name, state)
}
