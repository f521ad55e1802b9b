//! One client's state, folded from its changes, and the view of it the rest of the graph
//! reads.
//!
//! Every part of the state is "the latest by `(ts, event)`" of some subset of the client's
//! changes, so the fold is a join-semilattice: applying changes in any order, any number of
//! times, gives the same state. That is what makes the outputs independent of arrival order,
//! of how the input is split into times, and of duplicates.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_runtime::value::ValueMap;

use crate::event::{Body, Change, ContactField, Str};

/// `(app_code, contact_field_id, contact_field_value)`: what a contact field is looked up by.
pub(crate) type MappingKey = (Str, i64, Str);

/// A client's folded state: bounded by its number of properties, never by its changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClientState {
    /// The latest change of any type: gives the current app code and the client's `ts`.
    latest: Change,
    /// Merged properties, if the client has sent any `client` change.
    properties: Option<Properties>,
    /// The latest `push-token` change: `(ts, app_code, token)`.
    push: Option<(u64, Str, Option<Str>)>,
    /// The latest `contact-field` change.
    field: Option<(u64, ContactField)>,
}

/// Properties merged per property: each is the value of the latest `client` change that set
/// it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Properties {
    merged: Arc<ValueMap>,
    /// For each property, the change that set it, as `(ts, app_code, properties)`: the
    /// order of `client` changes, so equal `ts` are decided as for any other change.
    setters: BTreeMap<Str, (u64, Str, Arc<ValueMap>)>,
}

impl ClientState {
    /// Applies one change to a client's state (`None` before its first change).
    pub(crate) fn apply(state: &mut Option<ClientState>, change: Change) {
        let s = state.get_or_insert_with(|| ClientState {
            latest: change.clone(),
            properties: None,
            push: None,
            field: None,
        });
        let ts = change.ts;
        match &change.body {
            Body::Client { app_code, properties } => {
                let props = s.properties.get_or_insert_with(Properties::default);
                for (name, value) in properties.iter() {
                    let newer = props
                        .setters
                        .get(name)
                        .is_none_or(|old| (old.0, &old.1, &old.2) < (ts, app_code, properties));
                    if newer {
                        props
                            .setters
                            .insert(Arc::clone(name), (ts, Arc::clone(app_code), Arc::clone(properties)));
                        Arc::make_mut(&mut props.merged).insert(Arc::clone(name), value.clone());
                    }
                }
            }
            Body::PushToken { app_code, push_token } => {
                if s.push
                    .as_ref()
                    .is_none_or(|old| (old.0, &old.1, &old.2) < (ts, app_code, push_token))
                {
                    s.push = Some((ts, Arc::clone(app_code), push_token.clone()));
                }
            }
            Body::ContactField(field) => {
                if s.field.as_ref().is_none_or(|old| (old.0, &old.1) < (ts, field)) {
                    s.field = Some((ts, field.clone()));
                }
            }
            Body::AppCodeMismatch { .. } => {}
        }
        if change > s.latest {
            s.latest = change;
        }
    }

    /// What the rest of the graph sees of the client.
    pub(crate) fn view(&self, client_id: &Str) -> ClientView {
        ClientView {
            client_id: Arc::clone(client_id),
            app_code: Arc::clone(self.latest.body.app_code()),
            ts: self.latest.ts,
            properties: self.properties.as_ref().map(|p| Arc::clone(&p.merged)),
            push: self.push.as_ref().map(|(_, _, token)| token.clone()),
            field: self.field.as_ref().map(|(_, f)| FieldView {
                id: f.field_id,
                value: Arc::clone(&f.value),
                anonymous: f.is_anonymous,
                suite: f.should_update_suite_contact_fields,
            }),
        }
    }
}

/// A client as the outputs need it: everything but the contact, which is resolved against
/// `contact_data` downstream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct ClientView {
    pub client_id: Str,
    /// The current app code: that of the latest change.
    pub app_code: Str,
    /// The `ts` of the latest change.
    pub ts: u64,
    /// Merged properties; `None` if the client never sent a `client` change.
    pub properties: Option<Arc<ValueMap>>,
    /// `None` if the client never sent a `push-token` change, `Some(None)` if it cleared it.
    pub push: Option<Option<Str>>,
    /// The latest contact field.
    pub field: Option<FieldView>,
}

/// The latest contact field of a client.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct FieldView {
    pub id: i64,
    pub value: Str,
    pub anonymous: bool,
    pub suite: bool,
}

impl ClientView {
    /// The key the client's contact is resolved by: its contact field under its *current*
    /// app code (the field carries over when the app code changes).
    pub(crate) fn mapping_key(&self) -> Option<MappingKey> {
        let f = self.field.as_ref()?;
        Some((Arc::clone(&self.app_code), f.id, Arc::clone(&f.value)))
    }

    /// The push token, if the client has one.
    pub(crate) fn push_token(&self) -> Option<&Str> {
        self.push.as_ref().and_then(Option::as_ref)
    }
}
