//! The expression language of pipelines: CEL, compiled once at validation and evaluated
//! over records.
//!
//! **Bindings.** An expression sees each top-level field of the record as a variable
//! (`status == "error" && spam`), the whole record as `record`, and the row key as `key`.
//! `record` and `key` win over fields of the same name; such fields stay reachable as
//! `record.key` / `record["record"]`.
//!
//! **Speed.** Only the variables an expression references are converted to CEL values for
//! each record, so `status == "error"` on a record with fifty fields converts one string.
//! Each evaluation runs in a child scope of a root context built once per [`Evaluator`].
//!
//! **Threads.** [`Expr`] is `Send + Sync` and cheap to clone (the compiled program is
//! shared); each worker makes its own [`Evaluator`], because a CEL context is not `Sync`.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program};
use sluice_runtime::value::{F64, Value, ValueMap};

/// A compiled expression.
#[derive(Clone, Debug)]
pub struct Expr {
    program: Arc<Program>,
    source: Arc<str>,
    /// The top-level variables the expression reads, other than `record` and `key`.
    fields: Arc<[Arc<str>]>,
    uses_record: bool,
    uses_key: bool,
}

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at line {line}, column {column} of the expression)")]
pub struct ExprError {
    /// What is wrong.
    pub message: String,
    /// 1-based line inside the expression.
    pub line: usize,
    /// 1-based column inside the expression.
    pub column: usize,
}

/// Why evaluating an expression on a record failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

impl Expr {
    /// Compiles CEL `source`.
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        let program = Program::compile(source).map_err(|e| {
            let first = e.errors.first();
            ExprError {
                message: first.map_or_else(|| e.to_string(), |p| p.msg.clone()),
                line: first.map_or(1, |p| p.pos.0.max(1) as usize),
                column: first.map_or(1, |p| p.pos.1.max(0) as usize + 1),
            }
        })?;
        let variables: BTreeSet<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let fields = variables
            .iter()
            .filter(|v| *v != "record" && *v != "key")
            .map(|v| Arc::from(v.as_str()))
            .collect();
        Ok(Expr {
            uses_record: variables.contains("record"),
            uses_key: variables.contains("key"),
            fields,
            program: Arc::new(program),
            source: source.into(),
        })
    }

    /// The expression's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// An evaluator for this expression, for one thread.
    pub fn evaluator(&self) -> Evaluator {
        Evaluator {
            expr: self.clone(),
            root: Context::default(),
        }
    }
}

/// Evaluates one expression on records; one per worker thread.
pub struct Evaluator {
    expr: Expr,
    root: Context<'static, 'static>,
}

impl Evaluator {
    /// Evaluates the expression on a record with its key.
    pub fn eval(&self, record: &Value, key: &Value) -> Result<Value, EvalError> {
        let mut ctx = self.root.new_inner_scope();
        for field in self.expr.fields.iter() {
            // A field the record lacks stays unbound: CEL reports it as an undeclared
            // reference, which callers treat as "no match" or a dead letter.
            if let Some(v) = record.get(field) {
                ctx.add_variable_from_value(&**field, to_cel(v));
            }
        }
        if self.expr.uses_record {
            ctx.add_variable_from_value("record", to_cel(record));
        }
        if self.expr.uses_key {
            ctx.add_variable_from_value("key", to_cel(key));
        }
        let result = self.expr.program.execute(&ctx).map_err(|e| EvalError(e.to_string()))?;
        from_cel(&result)
    }

    /// Evaluates a condition; a result that is not a boolean is an error.
    pub fn eval_bool(&self, record: &Value, key: &Value) -> Result<bool, EvalError> {
        match self.eval(record, key)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "the condition gave {}, not a boolean",
                other.type_name()
            ))),
        }
    }
}

/// Converts a record value to a CEL value.
pub fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Int(i) => cel::Value::Int(*i),
        Value::UInt(u) => cel::Value::UInt(*u),
        Value::Float(F64(f)) => cel::Value::Float(*f),
        Value::Str(s) => cel::Value::String(Arc::new(s.to_string())),
        Value::Bytes(b) => cel::Value::Bytes(Arc::new(b.to_vec())),
        Value::List(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Map(m) => cel::Value::Map(Map {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.to_string())), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

/// Converts a CEL result to a record value; map keys become strings.
pub fn from_cel(v: &cel::Value) -> Result<Value, EvalError> {
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::Int(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => Value::Float(F64(*f)),
        cel::Value::String(s) => Value::Str(Arc::from(s.as_str())),
        cel::Value::Bytes(b) => Value::Bytes(Arc::from(b.as_slice())),
        cel::Value::List(items) => Value::List(items.iter().map(from_cel).collect::<Result<_, _>>()?),
        cel::Value::Map(m) => {
            let mut out = ValueMap::new();
            for (k, v) in m.map.iter() {
                let key: Arc<str> = match k {
                    Key::String(s) => Arc::from(s.as_str()),
                    Key::Int(i) => Arc::from(i.to_string()),
                    Key::Uint(u) => Arc::from(u.to_string()),
                    Key::Bool(b) => Arc::from(b.to_string()),
                };
                out.insert(key, from_cel(v)?);
            }
            Value::Map(Arc::new(out))
        }
        other => return Err(EvalError(format!("the result {other:?} has no record form"))),
    })
}

#[cfg(test)]
mod tests;
