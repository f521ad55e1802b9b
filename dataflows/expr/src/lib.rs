//! The expression language of pipelines: CEL, compiled once at validation and evaluated
//! over records.
//!
//! **Bindings.** An expression sees each top-level field of the record as a variable
//! (`status == "error" && spam`), the whole record as `record`, and the row key as `key`.
//! `record` and `key` win over fields of the same name; such fields stay reachable as
//! `record.key` / `record["record"]`, as do fields whose names are not CEL identifiers
//! (`record["content-type"]`). A field also shadows a CEL type name it happens to share
//! (`int`, `string`), which only matters to `type(x) == int`.
//!
//! **Unknown names.** Which fields a record has is only known per record, so a name that is
//! neither a field nor a function cannot be rejected at compile time; evaluating it is an
//! [`EvalError::Unknown`] naming it. [`Expr::variables`] lists the names an expression reads,
//! for a validator that knows the schema.
//!
//! **Library.** The CEL standard library plus the `strings` (`lowerAscii`, `split`, …),
//! `math` (`math.greatest`, …) and `lists` extensions, and two functions of ours that
//! Python-style filters need: `truthy(x)` (Python truthiness) and `py_in(a, b)` (Python's
//! `in`). `matches` (regular expressions) and timestamps are not enabled. A call of a
//! function the library does not have is a compile error, not a failure on every record.
//!
//! **Python-style filters.** [`Expr::compile_filter`] also accepts the expressions of the
//! publish/subscribe hub that the fanout dataflow replaces, translated to CEL by
//! [`translate_python`] (a parser for a small, safe subset: see the `python` module).
//!
//! **Speed.** Variables are resolved on demand from the record, without building a context
//! of all its fields: a dotted name such as `data.body.x` is looked up as a path and only the
//! value at its end is converted to CEL, and strings are lent to CEL, not copied. Binding
//! every referenced field up front instead converted all of `data` for `data.body.x`, some
//! thirty times slower on a record with a nested map (`tests::eval_speed` measures it).
//!
//! **Threads.** [`Expr`] is `Send + Sync` and cheap to clone: one compiled program and one
//! root context are shared behind an `Arc` by every worker that evaluates it; each evaluation
//! only adds a child scope on its own stack.

mod convert;
mod python;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program};
use sluice_runtime::Value;

pub use convert::{from_cel, to_cel};
pub use python::translate_python;

/// Functions sluice adds to CEL (for Python-style filters; any expression may call them).
const OUR_FUNCTIONS: &[&str] = &["truthy", "py_in"];

/// Namespaces of the library's functions (`math.greatest`, `optional.of`).
const NAMESPACES: &[&str] = &["math", "optional", "lists", "strings", "sets", "base64"];

/// Macros the parser expands; they are not functions of the environment.
const MACROS: &[&str] = &["has", "all", "exists", "exists_one", "map", "filter"];

/// A compiled expression, shareable between threads.
#[derive(Clone)]
pub struct Expr {
    inner: Arc<Compiled>,
}

struct Compiled {
    program: Program,
    /// The library, built once per expression; evaluations add a scope below it.
    root: Context<'static, 'static>,
    source: Box<str>,
    variables: Box<[Box<str>]>,
}

/// Where in an expression a compile error is, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line within the expression.
    pub line: usize,
    /// The column within the line, in characters.
    pub column: usize,
}

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ExprError {
    /// What is wrong.
    pub message: String,
    /// Where, if the parser said.
    pub position: Option<Position>,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "{} (at line {}, column {} of the expression)",
                self.message, p.line, p.column
            ),
            None => f.write_str(&self.message),
        }
    }
}

/// Why evaluating an expression on a record failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A name that is neither a field of the record nor a function.
    #[error("`{0}` is neither a field of the record nor a function")]
    Unknown(String),
    /// A field or map key that is absent.
    #[error("no field or key `{0}`")]
    NoSuchKey(String),
    /// Any other failure CEL reports (a type mismatch, a division by zero, …).
    #[error("{0}")]
    Failed(String),
    /// A condition whose result is not a boolean.
    #[error("the condition gave a {0}, not a boolean")]
    NotBool(&'static str),
    /// A result with no record form (a function, an unknown type).
    #[error("the result has no record form: {0}")]
    Unrepresentable(String),
    /// A result map with two keys that read the same as strings (`{1: a, "1": b}`).
    #[error("the result map has two keys that both read `{0}` as strings")]
    DuplicateKey(String),
    /// The CEL interpreter panicked (a bug of the `cel` crate); the record is not at fault.
    #[error("the expression engine failed: {0}")]
    Panicked(String),
}

impl From<ExecutionError> for EvalError {
    fn from(e: ExecutionError) -> Self {
        match e {
            ExecutionError::UndeclaredReference(name) => EvalError::Unknown(name.to_string()),
            ExecutionError::NoSuchKey(name) => EvalError::NoSuchKey(name.to_string()),
            other => EvalError::Failed(other.to_string()),
        }
    }
}

/// The environment every expression compiles and runs in, built once per process.
fn env() -> Result<Arc<Env>, ExprError> {
    static ENV: OnceLock<Result<Arc<Env>, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .and_then(|()| env.add_extension(cel::extensions::math))
            .and_then(|()| env.add_extension(cel::extensions::lists))
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(env))
    })
    .clone()
    .map_err(|e| ExprError {
        message: format!("the expression library failed to load: {e}"),
        position: None,
    })
}

impl Expr {
    /// Compiles CEL `source`; errors carry the position the parser reports.
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        let env = env()?;
        let program = env.compile(source).map_err(|e| {
            let more = e.errors.len().saturating_sub(1);
            match e.errors.first() {
                Some(first) => ExprError {
                    message: match more {
                        0 => friendly(&first.msg),
                        n => format!("{} (and {n} more)", friendly(&first.msg)),
                    },
                    position: position(first.pos),
                },
                None => ExprError {
                    message: e.to_string(),
                    position: None,
                },
            }
        })?;
        let mut root = Context::with_env(Arc::clone(&env));
        root.add_function("truthy", python::truthy)
            .and_then(|()| root.add_function("py_in", python::py_in))
            .map_err(|e| ExprError {
                message: format!("the expression library failed to load: {e}"),
                position: None,
            })?;
        // CEL resolves functions when it evaluates; an unknown one would fail on every record,
        // so it is refused here, where the pipeline file can still be fixed.
        // Operators (`_==_`) are not names; a namespaced function (`math.greatest`) is listed
        // by its last part. `add_function` refuses a name the environment already declares,
        // which is the only public way to ask whether it does.
        let declared = |name: &str| {
            let mut probe = Context::with_env(Arc::clone(&env));
            probe.add_function(name, |_: i64| 0i64).is_err()
        };
        // Sorted, so the error names the same function every time (the set is unordered).
        let references = program.references();
        let mut functions = references.functions();
        functions.sort_unstable();
        for function in functions {
            let is_name = function.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let known = !is_name
                || OUR_FUNCTIONS.contains(&function)
                || MACROS.contains(&function)
                || declared(function)
                || NAMESPACES.iter().any(|ns| declared(&format!("{ns}.{function}")));
            if !known {
                return Err(ExprError {
                    message: format!("unknown function `{function}`"),
                    position: None,
                });
            }
        }
        let mut variables: Vec<Box<str>> = program.references().variables().into_iter().map(Box::from).collect();
        variables.sort();
        Ok(Expr {
            inner: Arc::new(Compiled {
                program,
                root,
                source: source.into(),
                variables: variables.into(),
            }),
        })
    }

    /// Compiles a subscriber filter: empty matches everything; text that parses as the
    /// original hub's Python-style syntax is translated ([`translate_python`]); anything else
    /// is CEL. The error of text that is neither names both attempts.
    pub fn compile_filter(source: &str) -> Result<Expr, ExprError> {
        if source.trim().is_empty() {
            return Expr::compile("true");
        }
        match translate_python(source) {
            Ok(cel) => Expr::compile(&cel),
            Err(python) => Expr::compile(source).map_err(|cel| ExprError {
                message: format!("neither CEL ({cel}) nor the Python-style syntax ({python})"),
                position: None,
            }),
        }
    }

    /// The expression's source text.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The top-level names the expression reads, sorted: fields, `record`, `key`, type names,
    /// and the variables of its comprehensions (`x` in `l.all(x, x > 0)`).
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.inner.variables.iter().map(|v| &**v)
    }

    /// Evaluates the expression on a record with its key.
    pub fn eval(&self, record: &Value, key: &Value) -> Result<Value, EvalError> {
        let bindings = Bindings { record, key };
        let root: &Context<'_, '_> = &self.inner.root;
        let mut scope = root.new_inner_scope();
        scope.set_variable_resolver(&bindings);
        // A panic inside the interpreter must not take the pipeline down with it: the
        // evaluation only reads the shared root context, so nothing is left half-changed.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let value = cel::Value::resolve_val(self.inner.program.expression(), &scope)?;
            convert::from_val(&*value)
        }));
        result.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(EvalError::Panicked(what))
        })
    }

    /// Evaluates a condition; a result that is not a boolean is an error.
    pub fn eval_bool(&self, record: &Value, key: &Value) -> Result<bool, EvalError> {
        match self.eval(record, key)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::NotBool(other.type_name())),
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.inner.source).finish()
    }
}

/// Resolves names against one record: `record`, `key`, or a field, each possibly followed by
/// a dotted path (CEL asks for `a.b.c` before `a.b` and `a`, so a whole path is one lookup).
struct Bindings<'a> {
    record: &'a Value,
    key: &'a Value,
}

impl VariableResolver for Bindings<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let mut path = name.split('.');
        let start = match path.next()? {
            "record" => self.record,
            "key" => self.key,
            field => self.record.get(field)?,
        };
        let value = path.try_fold(start, |v, field| v.get(field))?;
        Some(CowVal::Owned(convert::to_val(value)))
    }
}

/// A parser position (1-based line and column; non-positive when unknown) as a [`Position`].
fn position((line, column): (isize, isize)) -> Option<Position> {
    Some(Position {
        line: usize::try_from(line).ok().filter(|&l| l > 0)?,
        column: usize::try_from(column).ok().filter(|&c| c > 0)?,
    })
}

/// The parser's message in words: without its generic prefix, "unexpected" for the parser's
/// "mismatched"/"extraneous input", and "a value" for the list of tokens that can start one.
fn friendly(msg: &str) -> String {
    let msg = msg.strip_prefix("Syntax error: ").unwrap_or(msg);
    let (head, expecting) = match msg.split_once(" expecting ") {
        Some((head, set)) if set.contains("IDENTIFIER") && set.contains("NUM_INT") => (head, Some("a value")),
        Some((head, "<EOF>")) => (head, Some("the end of the expression")),
        Some((head, set)) => (head, Some(set)),
        None => (msg, None),
    };
    let head = match head
        .strip_prefix("mismatched input ")
        .or_else(|| head.strip_prefix("extraneous input "))
    {
        Some("'<EOF>'") => "the expression ends too early".to_owned(),
        Some(token) => format!("unexpected {token}"),
        None => head.to_owned(),
    };
    match expecting {
        Some(what) => format!("{head}, expecting {what}"),
        None => head,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod python_tests;
