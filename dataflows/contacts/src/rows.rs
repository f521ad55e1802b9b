//! The outputs' rows: each output is a typed projection of a resolved [`Client`], rendered
//! as a derived row whose key is a map of the key fields and whose value repeats them.

use std::sync::Arc;

use sluice_runtime::value::ValueMap;
use sluice_runtime::{Row, Value};

use crate::event::Str;
use crate::graph::Client;

fn s(v: &Str) -> Value {
    Value::Str(Arc::clone(v))
}

fn opt(v: Option<&Str>) -> Value {
    v.map_or(Value::Null, s)
}

fn client_key(client_id: &Str) -> Value {
    Value::map([("client_id", s(client_id))])
}

fn app_client_key(app_code: &Str, client_id: &Str) -> Value {
    Value::map([("app_code", s(app_code)), ("client_id", s(client_id))])
}

fn app_contact_key(app_code: &Str, contact_id: &Str) -> Value {
    Value::map([("app_code", s(app_code)), ("contact_id", s(contact_id))])
}

/// `client_state`: everything known about a client.
pub(crate) fn client_state(c: &Client) -> Row {
    let v = &c.view;
    let field = v.field.as_ref();
    Row::derived(
        client_key(&v.client_id),
        Value::map([
            ("client_id", s(&v.client_id)),
            ("app_code", s(&v.app_code)),
            (
                "properties",
                Value::Map(v.properties.as_ref().map_or_else(Arc::default, Arc::clone)),
            ),
            ("push_token", opt(v.push_token())),
            ("contact_field_id", field.map_or(Value::Null, |f| Value::Int(f.id))),
            ("contact_field_value", opt(field.map(|f| &f.value))),
            ("is_anonymous", field.map_or(Value::Null, |f| Value::Bool(f.anonymous))),
            (
                "should_update_suite_contact_fields",
                field.map_or(Value::Null, |f| Value::Bool(f.suite)),
            ),
            ("contact_id", opt(c.contact_id())),
            ("ts", Value::from(v.ts)),
        ]),
    )
}

/// `devices`: `(app_code, client_id, push_token, contact_id)`.
pub(crate) type Device = (Str, Str, Option<Str>, Option<Str>);

pub(crate) fn device(c: &Client) -> Option<Device> {
    let v = &c.view;
    Some((
        Arc::clone(&v.app_code),
        Arc::clone(&v.client_id),
        v.push_token().cloned(),
        c.contact_id().cloned(),
    ))
}

pub(crate) fn device_row((app, client, push, contact): Device) -> Row {
    Row::derived(
        app_client_key(&app, &client),
        Value::map([
            ("app_code", s(&app)),
            ("client_id", s(&client)),
            ("push_token", opt(push.as_ref())),
            ("contact_id", opt(contact.as_ref())),
        ]),
    )
}

/// `resolved_contacts`: `(app_code, client_id, (contact_id, anonymous) or unresolved)`.
pub(crate) type Resolution = (Str, Str, Option<(Str, bool)>);

pub(crate) fn resolution(c: &Client) -> Option<Resolution> {
    let v = &c.view;
    let field = v.field.as_ref()?;
    Some((
        Arc::clone(&v.app_code),
        Arc::clone(&v.client_id),
        c.contact_id().map(|id| (Arc::clone(id), field.anonymous)),
    ))
}

pub(crate) fn resolution_row((app, client, contact): Resolution) -> Row {
    let mut val = vec![("app_code", s(&app)), ("client_id", s(&client))];
    match contact {
        Some((id, anonymous)) => {
            val.push(("contact_id", s(&id)));
            val.push(("anonymous", Value::Bool(anonymous)));
        }
        None => val.push(("unresolved", Value::Bool(true))),
    }
    Row::derived(app_client_key(&app, &client), Value::map(val))
}

/// `client_state_client_updates`: `(client_id, app_code, properties)`.
pub(crate) type ClientUpdate = (Str, Str, Arc<ValueMap>);

pub(crate) fn client_update(c: &Client) -> Option<ClientUpdate> {
    let v = &c.view;
    Some((
        Arc::clone(&v.client_id),
        Arc::clone(&v.app_code),
        Arc::clone(v.properties.as_ref()?),
    ))
}

pub(crate) fn client_update_row((client, app, properties): ClientUpdate) -> Row {
    update_row(&client, &app, "properties", Value::Map(properties))
}

/// A row of an update stream: keyed by client, `client_id`, `app_code` and one more field.
fn update_row(client: &Str, app: &Str, field: &'static str, value: Value) -> Row {
    Row::derived(
        client_key(client),
        Value::map([("client_id", s(client)), ("app_code", s(app)), (field, value)]),
    )
}

/// `client_state_push_token_updates`: `(client_id, app_code, push_token)`.
pub(crate) type PushUpdate = (Str, Str, Option<Str>);

pub(crate) fn push_update(c: &Client) -> Option<PushUpdate> {
    let v = &c.view;
    Some((Arc::clone(&v.client_id), Arc::clone(&v.app_code), v.push.clone()?))
}

pub(crate) fn push_update_row((client, app, push): PushUpdate) -> Row {
    update_row(&client, &app, "push_token", opt(push.as_ref()))
}

/// `client_state_contact_updates`: `(client_id, app_code, contact_id)`.
pub(crate) type ContactUpdate = (Str, Str, Str);

pub(crate) fn contact_update(c: &Client) -> Option<ContactUpdate> {
    let v = &c.view;
    Some((
        Arc::clone(&v.client_id),
        Arc::clone(&v.app_code),
        Arc::clone(c.contact_id()?),
    ))
}

pub(crate) fn contact_update_row((client, app, contact): ContactUpdate) -> Row {
    update_row(&client, &app, "contact_id", s(&contact))
}

/// `suite_contact_updates`: `(client_id, app_code, contact_id, field id, field value)`.
pub(crate) type SuiteUpdate = (Str, Str, Str, i64, Str);

pub(crate) fn suite_update(c: &Client) -> Option<SuiteUpdate> {
    let v = &c.view;
    let field = v.field.as_ref().filter(|f| f.suite)?;
    Some((
        Arc::clone(&v.client_id),
        Arc::clone(&v.app_code),
        Arc::clone(c.contact_id()?),
        field.id,
        Arc::clone(&field.value),
    ))
}

pub(crate) fn suite_update_row((client, app, contact, field_id, value): SuiteUpdate) -> Row {
    Row::derived(
        client_key(&client),
        Value::map([
            ("client_id", s(&client)),
            ("app_code", s(&app)),
            ("contact_id", s(&contact)),
            ("contact_field_id", Value::Int(field_id)),
            ("contact_field_value", s(&value)),
        ]),
    )
}

/// `contact_references`: the sorted client ids of a contact.
pub(crate) fn references_row(((app, contact), clients): ((Str, Str), Vec<Str>)) -> Row {
    Row::derived(
        app_contact_key(&app, &contact),
        Value::map([
            ("app_code", s(&app)),
            ("contact_id", s(&contact)),
            ("client_ids", Value::list(clients.iter().map(s))),
        ]),
    )
}

/// `anonymous_contacts_created`: an anonymous contact in use without a mapping.
pub(crate) fn created_row((app, contact, field_id, value): (Str, Str, i64, Str)) -> Row {
    Row::derived(
        app_contact_key(&app, &contact),
        Value::map([
            ("app_code", s(&app)),
            ("contact_id", s(&contact)),
            ("contact_field_id", Value::Int(field_id)),
            ("contact_field_value", s(&value)),
        ]),
    )
}
