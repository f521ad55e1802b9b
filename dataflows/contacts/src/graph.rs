//! The contacts dataflow itself: client changes and contact data in; client state, devices,
//! contacts and the update streams out.
//!
//! ```text
//! changes ─ decode ─┬─ errors
//!                   └─ fold per client: ClientView ─┬─ no contact field ───────────────────────────┐
//!                                                   └─ by (app, field id, value) ─┬─ ⋈ ─ mapped ──┼─ clients ─┬─ client_state, devices,
//! contact_data ─ decode ─┬─ errors                                                │   │           │           │  resolved_contacts, update streams
//!                        └─ one contact id per (app, field id, value) ────────────┼───┘           │           ├─ reduce per contact: contact_references
//!                                                                                 └─ − mapped ─────┘           └─ distinct, fold ever: anonymous_contacts_created
//!                                                            (anonymous: generated id, identified: unresolved)
//! ```
//!
//! State: the fold holds one [`ClientState`] per client; the arrangements hold one view per
//! client with a contact field, one contact id per mapping (plus the mapping rows), one entry
//! per resolved client and per contact for the references, one per anonymous contact in use,
//! and a fold entry per anonymous contact ever created. None of it grows with the number of
//! changes.

use std::sync::Arc;

use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use sluice_runtime::operators::fold::KeyedFold;
use sluice_runtime::recovery::StateRegistry;
use sluice_runtime::{DeadLetter, Diff, Row, Rows, Time};

use crate::anon::anonymous_contact_id;
use crate::event::{ClientChange, Mapping, Str};
use crate::rows;
use crate::state::{ClientState, ClientView, MappingKey};
use crate::{ContactsOutputs, ContactsState};
use sluice_runtime::operators::named::{
    Coll, concat_named, consolidate_batches_named, flat_map_named, map_named, split_named, split_where_named,
};

/// A client with its contact resolved: what every output is a projection of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Client {
    pub view: ClientView,
    pub contact: Contact,
}

/// The outcome of resolving a client's contact field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Contact {
    /// The client has no contact field.
    NoField,
    /// An identified field without a mapping.
    Unresolved,
    /// The contact id `contact_data` maps the field to.
    Mapped(Str),
    /// An anonymous field without a mapping: the generated anonymous contact id.
    Generated(Str),
}

impl Client {
    /// The resolved contact id, if any.
    pub(crate) fn contact_id(&self) -> Option<&Str> {
        match &self.contact {
            Contact::Mapped(id) | Contact::Generated(id) => Some(id),
            Contact::NoField | Contact::Unresolved => None,
        }
    }
}

/// Builds the dataflow; see [`crate::contacts`].
pub(crate) fn build<'s>(
    changes: Rows<'s>,
    contact_data: Rows<'s>,
    name: &str,
    state: &mut StateRegistry,
) -> ContactsOutputs<'s> {
    let scope = changes.scope();
    let stage: Str = Arc::from(format!("node {name}"));

    // Client changes are events: a retraction is not a change (and the planner wires append
    // sources here), so only insertions are decoded.
    let change_stage = Arc::clone(&stage);
    let (changes, change_errors) = split_where_named(
        changes,
        &format!("{name}: decode client changes"),
        |diff| diff > 0,
        move |row: Row| match ClientChange::decode(&row.val) {
            Ok(c) => Ok((c.client_id, c.change)),
            Err(e) => Err(DeadLetter::for_row(&row, &change_stage, e)),
        },
    );
    let (views, clients_state) = changes.keyed_fold_checkpointed(
        &format!("{name}: state per client"),
        |_client, state, change| ClientState::apply(state, change),
        |client, state| Some(state.view(client)),
        &state.fold(&format!("{name}.clients")),
    );

    // Contact data is a table: its retractions remove mappings (and the dead letters of bad
    // rows).
    let (mappings, mapping_errors) = split_named(
        contact_data,
        &format!("{name}: decode contact data"),
        move |row: Row| match Mapping::decode(&row.val) {
            Ok(m) => Ok(((m.app_code, m.field_id, m.value), m.contact_id)),
            Err(e) => Err(DeadLetter::for_row(&row, &stage, e)),
        },
    );
    // One contact id per contact field, the smallest, should two rows map the same field.
    let contact_ids = mappings.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<MappingKey, Str, Time, Diff>>(
        &format!("{name}: contact id per contact field"),
        |_field, ids: &[(&Str, Diff)], out: &mut Vec<(Str, Diff)>| {
            if let Some((id, _)) = ids.iter().find(|(_, n)| *n > 0) {
                out.push((Arc::clone(id), 1));
            }
        },
    );

    // Resolution: clients with a field, by the field under their current app code, joined
    // with the mappings; the rest are unresolved, or anonymous with a generated id.
    let (with_field, without_field) = split_named(
        views,
        &format!("{name}: clients with a contact field"),
        |view: ClientView| match view.mapping_key() {
            Some(key) => Ok((key, view)),
            None => Err(view),
        },
    );
    let without_field = map_named(
        without_field,
        &format!("{name}: clients without a contact field"),
        |view| Client {
            view,
            contact: Contact::NoField,
        },
    );
    let by_field = with_field.arrange_by_key_named(&format!("{name}: clients by contact field"));
    let mapped = by_field
        .clone()
        .join_core(contact_ids, |_field: &MappingKey, view: &ClientView, id: &Str| {
            Some((view.clone(), Arc::clone(id)))
        });
    let mapped_views = map_named(mapped.clone(), &format!("{name}: mapped clients"), |(view, _)| view).negate();
    let pending = concat_named(
        scope,
        vec![
            by_field.as_collection(|_, view: &ClientView| view.clone()),
            mapped_views,
        ],
        &format!("{name}: clients without a mapping"),
    );
    let unmapped = flat_map_named(
        consolidate_batches_named(pending, &format!("{name}: cancel mapped clients")),
        &format!("{name}: resolve without a mapping"),
        |view: ClientView| {
            let contact = match &view.field {
                Some(f) if f.anonymous => {
                    Contact::Generated(Arc::from(anonymous_contact_id(&view.app_code, f.id, &f.value)))
                }
                _ => Contact::Unresolved,
            };
            Some(Client { view, contact })
        },
    );
    let mapped = map_named(mapped, &format!("{name}: resolve by mapping"), |(view, id)| Client {
        view,
        contact: Contact::Mapped(id),
    });
    let clients = concat_named(
        scope,
        vec![without_field, mapped, unmapped],
        &format!("{name}: clients"),
    );

    let client_state = map_named(clients.clone(), &format!("{name}: client_state"), |c| {
        rows::client_state(&c)
    });
    let devices = output(&clients, name, "devices", rows::device, rows::device_row);
    let resolved_contacts = output(
        &clients,
        name,
        "resolved_contacts",
        rows::resolution,
        rows::resolution_row,
    );
    let client_updates = output(
        &clients,
        name,
        "client updates",
        rows::client_update,
        rows::client_update_row,
    );
    let push_token_updates = output(
        &clients,
        name,
        "push token updates",
        rows::push_update,
        rows::push_update_row,
    );
    let contact_updates = output(
        &clients,
        name,
        "contact updates",
        rows::contact_update,
        rows::contact_update_row,
    );
    let suite_updates = output(
        &clients,
        name,
        "suite contact updates",
        rows::suite_update,
        rows::suite_update_row,
    );

    let references = flat_map_named(clients.clone(), &format!("{name}: contact references"), |c: Client| {
        let id = c.contact_id()?;
        Some(((Arc::clone(&c.view.app_code), Arc::clone(id)), c.view.client_id))
    })
    .reduce_named(
        &format!("{name}: client ids per contact"),
        |_contact, clients: &[(&Str, Diff)], out: &mut Vec<(Vec<Str>, Diff)>| {
            // `clients` is sorted by client id.
            let ids: Vec<Str> = clients
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(id, _)| Arc::clone(id))
                .collect();
            if !ids.is_empty() {
                out.push((ids, 1));
            }
        },
    );
    let contact_references = map_named(references, &format!("{name}: contact_references"), rows::references_row);

    // An id is created the first time an anonymous client without a mapping uses it, and
    // stays created: a fold of "ever in use" (checkpointed, so a restart creates nothing
    // again) emits each id once, however often it leaves the set in use and comes back.
    let in_use = flat_map_named(clients, &format!("{name}: anonymous contacts"), |c: Client| {
        let Contact::Generated(id) = c.contact else {
            return None;
        };
        let field = c.view.field?;
        Some(((c.view.app_code, id), (field.id, field.value)))
    })
    // The set in use, consolidated at each time: the raw updates carry transient insertions
    // (a generated id and its retraction when the mapping is joined at the same time), which
    // the fold would take for creations.
    .threshold_named(&format!("{name}: anonymous contacts in use"), |_, n: &Diff| {
        Diff::from(*n > 0)
    });
    let (created, _) = in_use.keyed_fold_checkpointed(
        &format!("{name}: anonymous contacts created"),
        |_, created: &mut Option<(i64, Str)>, field: (i64, Str)| {
            created.get_or_insert(field);
        },
        |(app, id): &(Str, Str), (field_id, value): &(i64, Str)| {
            Some(rows::created_row((
                Arc::clone(app),
                Arc::clone(id),
                *field_id,
                Arc::clone(value),
            )))
        },
        &state.fold(&format!("{name}.anonymous_created")),
    );
    let anonymous_contacts_created = created;

    ContactsOutputs {
        client_state,
        devices,
        resolved_contacts,
        contact_references,
        anonymous_contacts_created,
        client_state_client_updates: client_updates,
        client_state_push_token_updates: push_token_updates,
        client_state_contact_updates: contact_updates,
        suite_contact_updates: suite_updates,
        errors: concat_named(scope, vec![change_errors, mapping_errors], &format!("{name}: errors")),
        state: ContactsState { clients: clients_state },
    }
}

/// One output: each client's projection `P` (cheap, typed), pairs that cancel removed, then
/// rendered as rows.
fn output<'s, P: differential_dataflow::Data>(
    clients: &Coll<'s, Client>,
    name: &str,
    what: &str,
    project: fn(&Client) -> Option<P>,
    row: fn(P) -> Row,
) -> Rows<'s> {
    let projected = flat_map_named(clients.clone(), &format!("{name}: {what}"), move |c: Client| {
        project(&c)
    });
    let changed = consolidate_batches_named(projected, &format!("{name}: changed {what}"));
    map_named(changed, &format!("{name}: {what} rows"), row)
}
