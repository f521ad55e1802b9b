//! The original hub's Python-style filters, translated to CEL.
//!
//! The hub ran `eval` on subscriber filters. Existing subscriber tables must migrate as they
//! are, so the expression subset those filters use is parsed here — and nothing more: names
//! other than `data` and `topic`, attribute access, calls other than `len` and the string
//! methods `startswith`/`endswith`, lambdas, comprehensions and every other statement-like
//! construct are refused. The parsed tree is written out as CEL:
//!
//! * `and`, `or`, `not` with Python's precedence (`not a == b` is `not (a == b)`), applied to
//!   Python truthiness: an operand that is not a comparison is wrapped in `truthy(…)`, as is
//!   the whole filter. Their value is only ever used as a condition, so they are boolean.
//! * `True`/`False`/`None` → `true`/`false`/`null`; `x is None` → `x == null`.
//! * `a < b < c` → `a < b && b < c`; `a in b` → `py_in(a, b)` (substring, list member or map
//!   key, as in Python); `len(x)` → `size(x)`; `s.startswith(t)` → `s.startsWith(t)`.
//! * `data["a"]["b"]` becomes `data.a.b` when the keys are identifiers (one path lookup,
//!   not a conversion of all of `data`), a subscript otherwise; a missing key is an
//!   evaluation error either way, which a filter counts as no match, as the hub's `KeyError`.

use std::fmt::Write as _;

use crate::{ExprError, Position};

/// Translates a Python-style filter to CEL source, or says why it is not one.
pub fn translate_python(source: &str) -> Result<String, ExprError> {
    let tokens = tokenize(source)?;
    let mut parser = Parser { tokens, at: 0, source };
    let tree = parser.or()?;
    if let Some(t) = parser.tokens.get(parser.at) {
        return Err(parser.error_at(t.start, format!("unexpected {}", t.kind.describe())));
    }
    Ok(condition(&tree))
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Number(String),
    Str(String),
    Name(String),
    Punct(&'static str),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Number(n) => format!("number {n}"),
            Kind::Str(_) => "a string".to_owned(),
            Kind::Name(n) => format!("`{n}`"),
            Kind::Punct(p) => format!("`{p}`"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    start: usize,
}

const PUNCT: &[&str] = &[
    "==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", ".", "+", "-", "*", "/", "%",
];

fn tokenize(source: &str) -> Result<Vec<Token>, ExprError> {
    let mut tokens = Vec::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let end = (i..bytes.len())
                .find(|&j| !(bytes[j].is_ascii_digit() || bytes[j] == b'.' || bytes[j] == b'_'))
                .unwrap_or(bytes.len());
            tokens.push(Token {
                kind: Kind::Number(source[i..end].replace('_', "")),
                start: i,
            });
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let end = (i..bytes.len())
                .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                .unwrap_or(bytes.len());
            tokens.push(Token {
                kind: Kind::Name(source[i..end].to_owned()),
                start: i,
            });
            i = end;
        } else if c == b'"' || c == b'\'' {
            let (text, end) = string(source, i)?;
            tokens.push(Token {
                kind: Kind::Str(text),
                start: i,
            });
            i = end;
        } else if let Some(p) = PUNCT.iter().find(|p| source[i..].starts_with(**p)) {
            tokens.push(Token {
                kind: Kind::Punct(p),
                start: i,
            });
            i += p.len();
        } else {
            let ch = source[i..].chars().next().unwrap_or('?');
            return Err(error(source, i, format!("`{ch}` is not part of a Python-style filter")));
        }
    }
    Ok(tokens)
}

/// Reads the string literal starting at `start` (a quote); returns its text and the index
/// after its closing quote.
fn string(source: &str, start: usize) -> Result<(String, usize), ExprError> {
    let quote = source[start..].chars().next().unwrap_or('"');
    let mut out = String::new();
    let mut chars = source[start + 1..].char_indices();
    while let Some((k, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, start + 1 + k + 1)),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some('\\') => out.push('\\'),
                Some('\'') => out.push('\''),
                Some('"') => out.push('"'),
                Some('u') => {
                    let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                    let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                    out.push(ch.ok_or_else(|| error(source, start, format!("bad escape `\\u{hex}`")))?);
                }
                other => {
                    return Err(error(
                        source,
                        start,
                        format!("unsupported escape `\\{}`", other.unwrap_or(' ')),
                    ));
                }
            },
            c => out.push(c),
        }
    }
    Err(error(source, start, "the string is not closed"))
}

fn error(source: &str, at: usize, message: impl Into<String>) -> ExprError {
    let before = &source[..at.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ExprError {
        message: message.into(),
        position: Some(Position { line, column }),
    }
}

/// A parsed Python expression.
#[derive(Debug, Clone)]
enum Node {
    /// A literal or a name, as CEL text; `bool` when it is a boolean literal.
    Atom(String, bool),
    Index(Box<Node>, Box<Node>),
    Method(Box<Node>, &'static str, Vec<Node>),
    Len(Box<Node>),
    List(Vec<Node>),
    Neg(Box<Node>),
    Arith(Box<Node>, &'static str, Box<Node>),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    /// A chain `a op b op c …`.
    Compare(Box<Node>, Vec<(CmpOp, Node)>),
}

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Op(&'static str),
    In,
    NotIn,
    Is,
    IsNot,
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    source: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Kind> {
        self.tokens.get(self.at).map(|t| &t.kind)
    }

    fn is_name(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Kind::Name(n)) if n == name)
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Kind::Punct(q)) if *q == p)
    }

    fn here(&self) -> usize {
        self.tokens.get(self.at).map_or(self.source.len(), |t| t.start)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> ExprError {
        error(self.source, at, message)
    }

    fn expect(&mut self, p: &'static str) -> Result<(), ExprError> {
        if self.is_punct(p) {
            self.at += 1;
            Ok(())
        } else {
            let found = self.peek().map_or("the end".to_owned(), Kind::describe);
            Err(self.error_at(self.here(), format!("expected `{p}`, found {found}")))
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let mut items = vec![self.and()?];
        while self.is_name("or") {
            self.at += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::Or(items)
        })
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut items = vec![self.not()?];
        while self.is_name("and") {
            self.at += 1;
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::And(items)
        })
    }

    fn not(&mut self) -> Result<Node, ExprError> {
        if self.is_name("not") {
            self.at += 1;
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        let first = self.sum()?;
        let mut chain = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Kind::Punct(p @ ("==" | "!=" | "<" | "<=" | ">" | ">="))) => CmpOp::Op(p),
                Some(Kind::Name(n)) if n == "in" => CmpOp::In,
                Some(Kind::Name(n)) if n == "is" => {
                    if matches!(self.tokens.get(self.at + 1).map(|t| &t.kind), Some(Kind::Name(n)) if n == "not") {
                        self.at += 1;
                        CmpOp::IsNot
                    } else {
                        CmpOp::Is
                    }
                }
                Some(Kind::Name(n))
                    if n == "not"
                        && matches!(self.tokens.get(self.at + 1).map(|t| &t.kind), Some(Kind::Name(m)) if m == "in") =>
                {
                    self.at += 1;
                    CmpOp::NotIn
                }
                _ => break,
            };
            self.at += 1;
            chain.push((op, self.sum()?));
        }
        Ok(if chain.is_empty() {
            first
        } else {
            Node::Compare(Box::new(first), chain)
        })
    }

    fn sum(&mut self) -> Result<Node, ExprError> {
        let mut left = self.term()?;
        while let Some(Kind::Punct(p @ ("+" | "-"))) = self.peek() {
            let p = *p;
            self.at += 1;
            left = Node::Arith(Box::new(left), p, Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        while let Some(Kind::Punct(p @ ("*" | "/" | "%"))) = self.peek() {
            let p = *p;
            self.at += 1;
            left = Node::Arith(Box::new(left), p, Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.is_punct("-") {
            self.at += 1;
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.atom()?;
        loop {
            if self.is_punct("[") {
                self.at += 1;
                let index = self.or()?;
                self.expect("]")?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else if self.is_punct(".") {
                let at = self.here();
                self.at += 1;
                let method = match self.peek() {
                    Some(Kind::Name(m)) if m == "startswith" => "startsWith",
                    Some(Kind::Name(m)) if m == "endswith" => "endsWith",
                    _ => {
                        return Err(self.error_at(
                            at,
                            "attribute access is not Python-style (use data[\"key\"]); only .startswith() and \
                             .endswith() are allowed",
                        ));
                    }
                };
                self.at += 1;
                let args = self.arguments()?;
                if args.len() != 1 {
                    return Err(self.error_at(at, format!("`.{method}` takes one argument")));
                }
                node = Node::Method(Box::new(node), method, args);
            } else {
                return Ok(node);
            }
        }
    }

    fn arguments(&mut self) -> Result<Vec<Node>, ExprError> {
        self.expect("(")?;
        let mut args = Vec::new();
        while !self.is_punct(")") {
            args.push(self.or()?);
            if !self.is_punct(")") {
                self.expect(",")?;
            }
        }
        self.expect(")")?;
        Ok(args)
    }

    fn atom(&mut self) -> Result<Node, ExprError> {
        let at = self.here();
        let Some(kind) = self.peek().cloned() else {
            return Err(self.error_at(at, "the filter ends too early"));
        };
        self.at += 1;
        match kind {
            Kind::Number(n) => {
                if n.parse::<f64>().is_err() {
                    return Err(self.error_at(at, format!("`{n}` is not a number")));
                }
                Ok(Node::Atom(n, false))
            }
            Kind::Str(s) => Ok(Node::Atom(cel_string(&s), false)),
            Kind::Name(n) => match n.as_str() {
                "True" => Ok(Node::Atom("true".into(), true)),
                "False" => Ok(Node::Atom("false".into(), true)),
                "None" => Ok(Node::Atom("null".into(), false)),
                "data" | "topic" => Ok(Node::Atom(n, false)),
                "len" => {
                    let mut args = self.arguments()?;
                    match (args.pop(), args.is_empty()) {
                        (Some(arg), true) => Ok(Node::Len(Box::new(arg))),
                        _ => Err(self.error_at(at, "`len` takes one argument")),
                    }
                }
                other => Err(self.error_at(
                    at,
                    format!("`{other}` is not allowed: a Python-style filter may only read `data` and `topic`"),
                )),
            },
            Kind::Punct("(") => {
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Kind::Punct("[") => {
                let mut items = Vec::new();
                while !self.is_punct("]") {
                    items.push(self.or()?);
                    if !self.is_punct("]") {
                        self.expect(",")?;
                    }
                }
                self.expect("]")?;
                Ok(Node::List(items))
            }
            other => Err(self.error_at(at, format!("unexpected {}", other.describe()))),
        }
    }
}

/// A CEL string literal of `text`.
fn cel_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a node's value is a boolean in CEL whatever its operands.
fn is_boolean(node: &Node) -> bool {
    matches!(
        node,
        Node::Atom(_, true) | Node::Not(_) | Node::And(_) | Node::Or(_) | Node::Compare(..) | Node::Method(..)
    )
}

/// The node as a CEL condition: Python truthiness unless it is boolean already.
fn condition(node: &Node) -> String {
    if is_boolean(node) {
        value(node)
    } else {
        format!("truthy({})", value(node))
    }
}

/// The node as a CEL value.
fn value(node: &Node) -> String {
    match node {
        Node::Atom(text, _) => text.clone(),
        Node::Index(base, index) => match (is_path(base), field_name(index)) {
            // `data.body.x` is looked up as one path; `data["body"]["x"]` would make CEL ask
            // for all of `data`, converted on every evaluation.
            (true, Some(field)) => format!("{}.{field}", value(base)),
            _ => format!("{}[{}]", value(base), value(index)),
        },
        Node::Method(base, method, args) => format!("{}.{method}({})", value(base), list(args)),
        Node::Len(arg) => format!("size({})", value(arg)),
        Node::List(items) => format!("[{}]", list(items)),
        Node::Neg(inner) => format!("-({})", value(inner)),
        Node::Arith(l, op, r) => format!("({} {op} {})", value(l), value(r)),
        Node::Not(inner) => format!("!({})", condition(inner)),
        Node::And(items) => join(items, " && "),
        Node::Or(items) => join(items, " || "),
        Node::Compare(first, chain) => {
            let mut parts = Vec::with_capacity(chain.len());
            let mut left = value(first);
            for (op, right) in chain {
                let right = value(right);
                parts.push(match op {
                    CmpOp::Op(op) => format!("{left} {op} {right}"),
                    CmpOp::Is => format!("{left} == {right}"),
                    CmpOp::IsNot => format!("{left} != {right}"),
                    CmpOp::In => format!("py_in({left}, {right})"),
                    CmpOp::NotIn => format!("!py_in({left}, {right})"),
                });
                left = right;
            }
            if parts.len() == 1 {
                parts.remove(0)
            } else {
                format!("({})", parts.join(" && "))
            }
        }
    }
}

/// Whether a node is a name or a chain of field selections on one (CEL resolves it as a path).
fn is_path(node: &Node) -> bool {
    match node {
        Node::Atom(text, false) => text == "data" || text == "topic",
        Node::Index(base, index) => is_path(base) && field_name(index).is_some(),
        _ => false,
    }
}

/// The key of a subscript if it can be a CEL field selection: a string literal that is an
/// identifier and not a reserved word.
fn field_name(index: &Node) -> Option<&str> {
    const RESERVED: &[&str] = &[
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
        "true",
        "false",
        "null",
    ];
    let Node::Atom(text, false) = index else { return None };
    let name = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&name))
    .then_some(name)
}

fn list(items: &[Node]) -> String {
    items.iter().map(value).collect::<Vec<_>>().join(", ")
}

fn join(items: &[Node], op: &str) -> String {
    format!("({})", items.iter().map(condition).collect::<Vec<_>>().join(op))
}

/// Python truthiness of a CEL value: `None`, `False`, zero and empty are false.
pub(crate) fn truthy(value: cel::Value) -> Result<bool, cel::ExecutionError> {
    use cel::Value as V;
    Ok(match value {
        V::Null => false,
        V::Bool(b) => b,
        V::Int(n) => n != 0,
        V::UInt(n) => n != 0,
        V::Float(f) => f != 0.0,
        V::String(s) => !s.is_empty(),
        V::Bytes(b) => !b.is_empty(),
        V::List(l) => !l.is_empty(),
        V::Map(m) => !m.map.is_empty(),
        other => {
            return Err(cel::ExecutionError::function_error(
                "truthy",
                format!("no truth value for {:?}", other.type_of()),
            ));
        }
    })
}

/// Python's `needle in haystack`: a substring, a list member or a map key.
pub(crate) fn py_in(needle: cel::Value, haystack: cel::Value) -> Result<bool, cel::ExecutionError> {
    use cel::Value as V;
    match (&needle, &haystack) {
        (V::String(n), V::String(h)) => Ok(h.contains(n.as_str())),
        (_, V::List(items)) => Ok(items.contains(&needle)),
        (V::String(s), V::Map(m)) => Ok(m.map.contains_key(&cel::objects::Key::String(s.clone()))),
        (V::Int(n), V::Map(m)) => Ok(m.map.contains_key(&cel::objects::Key::Int(*n))),
        _ => Err(cel::ExecutionError::function_error(
            "py_in",
            format!(
                "`in` needs a string, list or map on its right, not {:?}",
                haystack.type_of()
            ),
        )),
    }
}
