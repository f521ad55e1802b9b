//! Conversions between record [`Value`]s and CEL values.
//!
//! Record → CEL is total: every `Value` has a CEL form, and strings and bytes are lent to CEL
//! rather than copied. CEL → record fails only for what records cannot hold: functions,
//! unknown opaque types, and maps whose keys collide once made strings. Map keys become
//! strings (`1` → `"1"`, `true` → `"true"`), since record maps are keyed by strings; a type
//! value becomes its name, an absent optional `null` and a present one its value.
//!
//! Round trips: `Value` → CEL → `Value` is the identity. CEL → `Value` → CEL is too, except
//! that a `uint` that fits an `int` comes back as an `int` (records keep one representation of
//! each integer) and non-string map keys come back as strings.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional, CelString, CelType,
    CelUInt, Kind,
};
use cel::common::value::Val;
use sluice_runtime::Value;
use sluice_runtime::value::{F64, ValueMap};

use crate::EvalError;

/// A record value as a CEL value that borrows its strings and bytes.
pub(crate) fn to_val<'v>(v: &'v Value) -> Box<dyn Val + 'v> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Int(i) => Box::new(CelInt::from(*i)),
        Value::UInt(u) => Box::new(CelUInt::from(*u)),
        Value::Float(F64(f)) => Box::new(CelDouble::from(*f)),
        Value::Str(s) => Box::new(CelString::from(&**s)),
        Value::Bytes(b) => Box::new(CelBytes::from(&**b)),
        Value::List(items) => Box::new(CelList::from(items.iter().map(to_val).collect::<Vec<_>>())),
        Value::Map(m) => Box::new(CelMap::from(
            m.iter()
                .map(|(k, v)| (CelMapKey::from(&**k), to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// A CEL value as a record value.
pub(crate) fn from_val(v: &dyn Val) -> Result<Value, EvalError> {
    Ok(match v.get_type().kind() {
        Kind::NullType => Value::Null,
        Kind::Boolean => Value::Bool(*built_in::<CelBool>(v)?.inner()),
        Kind::Int => Value::Int(*built_in::<CelInt>(v)?.inner()),
        Kind::UInt => Value::from(*built_in::<CelUInt>(v)?.inner()),
        Kind::Double => Value::from(*built_in::<CelDouble>(v)?.inner()),
        Kind::String => Value::Str(Arc::from(built_in::<CelString>(v)?.inner())),
        Kind::Bytes => Value::Bytes(Arc::from(built_in::<CelBytes>(v)?.inner())),
        Kind::Type => Value::str(built_in::<CelType>(v)?.name()),
        Kind::List => Value::List(
            built_in::<CelList>(v)?
                .inner()
                .iter()
                .map(|item| from_val(item.as_ref()))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Map => {
            let mut out = ValueMap::new();
            for (k, item) in built_in::<CelMap>(v)?.inner().iter() {
                let name = key_string(k);
                // CEL maps are unordered: were colliding keys allowed, which value a record
                // got would change from run to run.
                if out.contains_key(name.as_str()) {
                    return Err(EvalError::DuplicateKey(name));
                }
                out.insert(Arc::from(name), from_val(item.as_ref())?);
            }
            Value::Map(Arc::new(out))
        }
        _ => match v.downcast_ref::<CelOptional>() {
            Some(opt) => opt.option().map_or(Ok(Value::Null), from_val)?,
            None => return Err(unrepresentable(v)),
        },
    })
}

/// A map key as the string a record map keys it by.
fn key_string(k: &CelMapKey<'_>) -> String {
    match k {
        CelMapKey::String(s) => s.inner().to_owned(),
        CelMapKey::Int(i) => i.inner().to_string(),
        CelMapKey::UInt(u) => u.inner().to_string(),
        CelMapKey::Bool(b) => b.inner().to_string(),
    }
}

/// `v` as the built-in type its kind names.
fn built_in<'b, 'v, T: cel::common::value::FromVal<'b, 'v>>(v: &'b (dyn Val + 'v)) -> Result<&'b T, EvalError> {
    v.downcast_ref::<T>().ok_or_else(|| unrepresentable(v))
}

fn unrepresentable(v: &dyn Val) -> EvalError {
    EvalError::Unrepresentable(format!("a value of type `{}`", v.get_type().name()))
}

/// Converts a record value to an owned CEL value.
pub fn to_cel(v: &Value) -> cel::Value {
    // Every value `to_val` makes is a built-in with a `cel::Value` form.
    cel::Value::try_from(to_val(v).as_ref()).unwrap_or(cel::Value::Null)
}

/// Converts an owned CEL value to a record value; see the module doc for what fails.
pub fn from_cel(v: &cel::Value) -> Result<Value, EvalError> {
    let val: Box<dyn Val> = v
        .clone()
        .try_into()
        .map_err(|e: cel::ExecutionError| EvalError::Unrepresentable(e.to_string()))?;
    from_val(val.as_ref())
}
