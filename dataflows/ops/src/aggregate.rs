//! `aggregate`: count, sum, min and max per key.

use std::sync::Arc;

use sluice_runtime::operators::fold::KeyedFold;
use sluice_runtime::recovery::StateRegistry;
pub use sluice_runtime::spec::AggFunc;
use sluice_runtime::{DeadLetters, Row, Rows, Value};

use crate::order::compare;
use crate::{dead_letter, stage};
use sluice_runtime::operators::named::{map_named, split_named};

/// One aggregate: output field `name` = `func` over `field`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggSpec {
    /// The output field.
    pub name: String,
    /// The function.
    pub func: AggFunc,
    /// The field path aggregated (unused by `Count`).
    pub field: Option<Vec<String>>,
}

/// Per key, a map of the named aggregates over the key's rows (a derived row per key).
///
/// A row that lacks an aggregated field (or has null there), or whose field is not a number
/// for `sum`, is dead-lettered with the reason and left out of every aggregate of its key,
/// rather than skipped by one of them: a sum that silently ignores records is wrong without
/// saying so. `sum` is an integer while every input is one and the total fits, a float
/// otherwise; `min` and `max` compare numbers by value ([`order::compare`](crate::order::compare))
/// and accept any other value too.
///
/// On event collections (`append_only`) a keyed fold keeps one accumulator per key, so memory
/// follows the number of keys. Otherwise a `reduce` recomputes a key's aggregates from its
/// present rows whenever they change, exact under retractions.
///
/// On events, its fold saves its state in checkpoints through `state`, under `name`.
pub fn aggregate<'s>(
    rows: Rows<'s>,
    specs: &[AggSpec],
    append_only: bool,
    name: &str,
    state: &mut StateRegistry,
) -> (Rows<'s>, DeadLetters<'s>) {
    let specs: Arc<[AggSpec]> = specs.into();
    let (ok, dead) = {
        let specs = specs.clone();
        let stage = stage(name);
        split_named(
            rows,
            &format!("Aggregate inputs: {name}"),
            move |row: Row| match inputs_of(&specs, &row.val) {
                Ok(inputs) => Ok((row.key, Value::List(inputs.into()))),
                Err(reason) => Err(dead_letter(&stage, &row, reason)),
            },
        )
    };
    let op_name = format!("Aggregate: {name}");
    let out = if append_only {
        let render_specs = specs.clone();
        ok.keyed_fold_checkpointed(
            &op_name,
            move |_k, acc: &mut Option<Vec<Acc>>, inputs: Value| {
                let accs = acc.get_or_insert_with(|| specs.iter().map(|s| Acc::new(s.func)).collect());
                for (a, v) in accs.iter_mut().zip(inputs.as_list().unwrap_or_default()) {
                    a.add(v, 1);
                }
            },
            move |k, accs| Some(Row::derived(k.clone(), render(&render_specs, accs))),
            &state.fold(name),
        )
        .0
    } else {
        let aggregates = ok.reduce_named(
            &op_name,
            move |_key, input: &[(&Value, isize)], output: &mut Vec<(Value, isize)>| {
                let mut accs: Vec<Acc> = specs.iter().map(|s| Acc::new(s.func)).collect();
                let mut present = false;
                for (inputs, n) in input.iter().filter(|(_, n)| *n > 0) {
                    present = true;
                    for (a, v) in accs.iter_mut().zip(inputs.as_list().unwrap_or_default()) {
                        a.add(v, *n);
                    }
                }
                if present {
                    output.push((render(&specs, &accs), 1));
                }
            },
        );
        map_named(aggregates, &format!("Aggregate rows: {name}"), |(key, val)| {
            Row::derived(key, val)
        })
    };
    (out, dead)
}

/// The values each aggregate reads from a record, in spec order.
fn inputs_of(specs: &[AggSpec], record: &Value) -> Result<Vec<Value>, String> {
    specs
        .iter()
        .map(|s| match (&s.field, s.func) {
            (_, AggFunc::Count) | (None, _) => Ok(Value::Null),
            (Some(path), func) => {
                let field = path.join(".");
                match record.get_path(path) {
                    None | Some(Value::Null) => Err(format!("missing field `{field}` for aggregate `{}`", s.name)),
                    Some(v) if func == AggFunc::Sum && v.as_f64().is_none() => Err(format!(
                        "field `{field}` is a {}, and `{}` sums numbers",
                        v.type_name(),
                        s.name
                    )),
                    Some(v) => Ok(v.clone()),
                }
            }
        })
        .collect()
}

/// One aggregate's running value.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Acc {
    Count(i64),
    Sum { int: Option<i64>, float: f64 },
    Min(Option<Value>),
    Max(Option<Value>),
}

impl Acc {
    fn new(func: AggFunc) -> Acc {
        match func {
            AggFunc::Count => Acc::Count(0),
            AggFunc::Sum => Acc::Sum {
                int: Some(0),
                float: 0.0,
            },
            AggFunc::Min => Acc::Min(None),
            AggFunc::Max => Acc::Max(None),
        }
    }

    /// Adds a value `n` times (`n > 0`; the reduce path only sees present rows).
    fn add(&mut self, v: &Value, n: isize) {
        let n64 = n as i64;
        match self {
            Acc::Count(c) => *c += n64,
            Acc::Sum { int, float } => {
                let f = v.as_f64().unwrap_or(0.0);
                *float += f * n as f64;
                *int = match (*int, v) {
                    (Some(total), Value::Int(i)) => i.checked_mul(n64).and_then(|x| total.checked_add(x)),
                    _ => None,
                };
            }
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|cur| compare(v, cur).is_lt()) {
                    *m = Some(v.clone());
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|cur| compare(v, cur).is_gt()) {
                    *m = Some(v.clone());
                }
            }
        }
    }

    fn value(&self) -> Value {
        match self {
            Acc::Count(c) => Value::Int(*c),
            Acc::Sum { int: Some(i), .. } => Value::Int(*i),
            Acc::Sum { float, .. } => Value::from(*float),
            Acc::Min(m) | Acc::Max(m) => m.clone().unwrap_or(Value::Null),
        }
    }
}

fn render(specs: &[AggSpec], accs: &[Acc]) -> Value {
    Value::map(specs.iter().zip(accs).map(|(s, a)| (s.name.as_str(), a.value())))
}
