//! The classification table: error codes to categories, loaded as data.
//!
//! A table is TOML with ordered `[[rule]]` entries; the first rule whose protocol, code and
//! condition match a failed delivery gives its category, and a code no rule matches is
//! `unknown`. A new code is one more string in a rule's `codes` (or one more rule):
//!
//! ```toml
//! [[rule]]
//! protocol = "fcm-v1"                # "fcm-legacy" | "fcm-v1"; omitted: both
//! codes = ["INVALID_ARGUMENT"]       # legacy `error_code`, v1 errorCode/status, or HTTP_<n>
//! when = "token-field-violation"     # optional condition, see below
//! category = "token-dead"            # token-dead | bad-message | retry-later | sender-config | unknown
//! ```
//!
//! Conditions are a closed set of named predicates over the report's error object, so a
//! table can say what the spec says without an expression language:
//! `token-field-violation` (a `BadRequest` field violation on `message.token`, or the
//! message "not a valid FCM registration token") and `no-fcm-error` (the error carries no
//! `fcm.v1.FcmError` detail).
//!
//! Loading checks everything at once — TOML syntax, unknown keys, types, unknown protocols,
//! categories and conditions, empty or duplicate codes, and codes an earlier unconditional
//! rule already matches (a rule that can never fire) — and reports every problem with its line.
//! The built-in table is `classification.toml` next to this crate's `Cargo.toml`.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml_edit::{Document, Item, Table};

use crate::report::{Facts, Protocol};

/// The built-in classification table (spec/delivery.md).
pub const BUILTIN_TABLE: &str = include_str!("../classification.toml");

/// What a failed delivery means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Category {
    /// The token will never work again: unsubscribe it.
    TokenDead,
    /// The message was at fault: count, never unsubscribe.
    BadMessage,
    /// A transient failure: count.
    RetryLater,
    /// The sender's project or credentials are wrong: count and alert; never the token's fault.
    SenderConfig,
    /// A code the table does not know: count, change nothing.
    Unknown,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 5] = [
        Category::TokenDead,
        Category::BadMessage,
        Category::RetryLater,
        Category::SenderConfig,
        Category::Unknown,
    ];

    /// The category's name in tables and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::TokenDead => "token-dead",
            Category::BadMessage => "bad-message",
            Category::RetryLater => "retry-later",
            Category::SenderConfig => "sender-config",
            Category::Unknown => "unknown",
        }
    }

    /// The category with this name, if any.
    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A named condition a rule may require (`when = "..."`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The error is about the token (see [`Facts::token_field_violation`]).
    TokenFieldViolation,
    /// The error carries no `fcm.v1.FcmError` detail.
    NoFcmError,
}

impl Condition {
    /// Every condition.
    pub const ALL: [Condition; 2] = [Condition::TokenFieldViolation, Condition::NoFcmError];

    /// The condition's name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::TokenFieldViolation => "token-field-violation",
            Condition::NoFcmError => "no-fcm-error",
        }
    }

    fn holds(self, facts: Facts) -> bool {
        match self {
            Condition::TokenFieldViolation => facts.token_field_violation,
            Condition::NoFcmError => !facts.fcm_error,
        }
    }
}

/// One rule of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The protocol the rule applies to; `None` for both.
    pub protocol: Option<Protocol>,
    /// The codes it matches (exact, case-sensitive).
    pub codes: BTreeSet<Arc<str>>,
    /// An extra condition, if any.
    pub when: Option<Condition>,
    /// The category it gives.
    pub category: Category,
}

impl Rule {
    fn matches(&self, protocol: Protocol, code: &str, facts: Facts) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
            && self.codes.contains(code)
            && self.when.is_none_or(|c| c.holds(facts))
    }
}

/// An ordered classification table; the first matching rule wins.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    rules: Vec<Rule>,
}

/// A problem in a classification table, with the 1-based line it is on (when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableProblem {
    /// The line of the offending key or value.
    pub line: Option<usize>,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every problem found in a classification table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid classification table {origin}:{}", render_problems(.problems))]
pub struct TableError {
    /// Where the table came from (a path, or `built-in`).
    pub origin: String,
    /// The problems, in the order of the file.
    pub problems: Vec<TableProblem>,
}

fn render_problems(problems: &[TableProblem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

const RULE_KEYS: &[&str] = &["protocol", "codes", "when", "category"];

impl Classification {
    /// The built-in table.
    pub fn builtin() -> Result<Classification, TableError> {
        Classification::parse(BUILTIN_TABLE, "built-in")
    }

    /// Parses and checks a table; `origin` names it in the error.
    pub fn parse(text: &str, origin: &str) -> Result<Classification, TableError> {
        let mut reader = Reader::new(text);
        let rules = match Document::parse(text) {
            Ok(doc) => reader.rules(doc.as_table()),
            Err(e) => {
                reader.problem(e.span(), format!("not valid TOML: {}", e.message().trim()));
                Vec::new()
            }
        };
        if reader.problems.is_empty() {
            Ok(Classification { rules })
        } else {
            Err(TableError {
                origin: origin.to_owned(),
                problems: reader.problems,
            })
        }
    }

    /// The category of a failed delivery: the first matching rule's, else `unknown`.
    pub fn classify(&self, protocol: Protocol, code: &str, facts: Facts) -> Category {
        self.rules
            .iter()
            .find(|r| r.matches(protocol, code, facts))
            .map_or(Category::Unknown, |r| r.category)
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// Reads rules out of a parsed document, collecting problems with their lines.
struct Reader {
    line_starts: Vec<usize>,
    problems: Vec<TableProblem>,
}

impl Reader {
    fn new(text: &str) -> Reader {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Reader {
            line_starts,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, span: Option<Range<usize>>, message: String) {
        let line = span.map(|s| self.line_starts.partition_point(|&start| start <= s.start).max(1));
        self.problems.push(TableProblem { line, message });
    }

    fn rules(&mut self, root: &Table) -> Vec<Rule> {
        for (key, item) in root.iter() {
            if key != "rule" {
                let span = root.key(key).and_then(|k| k.span()).or_else(|| item.span());
                self.problem(
                    span,
                    format!("unknown key `{key}`; a table has only `[[rule]]` entries"),
                );
            }
        }
        let Some(item) = root.get("rule") else {
            return Vec::new();
        };
        let Some(entries) = item.as_array_of_tables() else {
            self.problem(item.span(), "`rule` must be a list of `[[rule]]` tables".to_owned());
            return Vec::new();
        };
        // Numbered as in the file, so problems name rules the way a reader counts them.
        let mut rules: Vec<(usize, Rule)> = Vec::new();
        for (index, table) in entries.iter().enumerate() {
            if let Some(rule) = self.rule(index + 1, table, &rules) {
                rules.push((index + 1, rule));
            }
        }
        rules.into_iter().map(|(_, r)| r).collect()
    }

    /// Reads rule number `n`, checking it against the `earlier` rules.
    fn rule(&mut self, n: usize, table: &Table, earlier: &[(usize, Rule)]) -> Option<Rule> {
        let at = table.span();
        let errors_before = self.problems.len();
        for (key, item) in table.iter() {
            if !RULE_KEYS.contains(&key) {
                let span = table.key(key).and_then(|k| k.span()).or_else(|| item.span());
                self.problem(
                    span,
                    format!(
                        "rule {n}: unknown key `{key}`; expected one of: {}",
                        RULE_KEYS.join(", ")
                    ),
                );
            }
        }
        let protocol = self.name(
            table,
            "protocol",
            n,
            &Protocol::ALL.map(Protocol::as_str),
            Protocol::parse,
        );
        let when = self.name(table, "when", n, &Condition::ALL.map(Condition::as_str), |s| {
            Condition::ALL.into_iter().find(|c| c.as_str() == s)
        });
        let category = match self.name(
            table,
            "category",
            n,
            &Category::ALL.map(Category::as_str),
            Category::parse,
        ) {
            Some(c) => Some(c),
            None if table.get("category").is_none() => {
                self.problem(at.clone(), format!("rule {n}: missing `category`"));
                None
            }
            None => None,
        };
        let codes = self.codes(table, n);
        if self.problems.len() > errors_before {
            return None;
        }
        let (codes, category) = (codes?, category?);
        for code in &codes {
            let shadow = earlier.iter().find(|(_, r)| {
                r.when.is_none() && r.codes.contains(code) && (r.protocol.is_none() || r.protocol == protocol)
            });
            if let Some((i, _)) = shadow {
                let span = table.get("codes").and_then(Item::span);
                self.problem(
                    span,
                    format!("rule {n}: code `{code}` is already matched by rule {i}, so this rule never applies to it"),
                );
            }
        }
        Some(Rule {
            protocol,
            codes,
            when,
            category,
        })
    }

    /// An optional string key that must be one of `allowed`.
    fn name<T>(
        &mut self,
        table: &Table,
        key: &str,
        n: usize,
        allowed: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let item = table.get(key)?;
        match item.as_str() {
            Some(s) => {
                let found = parse(s);
                if found.is_none() {
                    self.problem(
                        item.span(),
                        format!("rule {n}: unknown {key} `{s}`; expected one of: {}", allowed.join(", ")),
                    );
                }
                found
            }
            None => {
                self.problem(
                    item.span(),
                    format!("rule {n}: `{key}` must be a string, found {}", item.type_name()),
                );
                None
            }
        }
    }

    /// The required, non-empty list of distinct, non-empty code strings.
    fn codes(&mut self, table: &Table, n: usize) -> Option<BTreeSet<Arc<str>>> {
        let Some(item) = table.get("codes") else {
            self.problem(table.span(), format!("rule {n}: missing `codes`"));
            return None;
        };
        let Some(list) = item.as_array() else {
            self.problem(
                item.span(),
                format!(
                    "rule {n}: `codes` must be a list of strings, found {}",
                    item.type_name()
                ),
            );
            return None;
        };
        if list.is_empty() {
            self.problem(item.span(), format!("rule {n}: `codes` is empty"));
            return None;
        }
        let mut codes = BTreeSet::new();
        let mut ok = true;
        for value in list.iter() {
            match value.as_str() {
                Some("") => {
                    self.problem(value.span(), format!("rule {n}: a code must not be empty"));
                    ok = false;
                }
                Some(code) => {
                    if !codes.insert(Arc::from(code)) {
                        self.problem(value.span(), format!("rule {n}: code `{code}` is listed twice"));
                        ok = false;
                    }
                }
                None => {
                    self.problem(
                        value.span(),
                        format!("rule {n}: codes must be strings, found {}", value.type_name()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Classification {
        Classification::builtin().expect("the built-in table is valid")
    }

    #[test]
    fn builtin_table_follows_the_spec() {
        let t = builtin();
        let plain = Facts::default();
        let token = Facts {
            token_field_violation: true,
            fcm_error: false,
        };
        let fcm = Facts {
            token_field_violation: false,
            fcm_error: true,
        };
        use Category::*;
        use Protocol::*;
        let cases = [
            (Legacy, "NotRegistered", plain, TokenDead),
            (Legacy, "InvalidRegistration", plain, TokenDead),
            (Legacy, "MismatchSenderId", plain, TokenDead),
            (V1, "UNREGISTERED", fcm, TokenDead),
            (V1, "SENDER_ID_MISMATCH", fcm, TokenDead),
            (V1, "INVALID_ARGUMENT", token, TokenDead),
            (V1, "INVALID_ARGUMENT", plain, BadMessage),
            (Legacy, "InvalidPackageName", plain, BadMessage),
            (Legacy, "MissingRegistration", plain, BadMessage),
            (Legacy, "Unavailable", plain, RetryLater),
            (V1, "QUOTA_EXCEEDED", fcm, RetryLater),
            (V1, "INTERNAL", fcm, RetryLater),
            (Legacy, "InvalidApnsCredential", plain, SenderConfig),
            (Legacy, "HTTP_401", plain, SenderConfig),
            (V1, "THIRD_PARTY_AUTH_ERROR", fcm, SenderConfig),
            (V1, "UNAUTHENTICATED", plain, SenderConfig),
            (V1, "PERMISSION_DENIED", plain, SenderConfig),
            (V1, "PERMISSION_DENIED", fcm, Unknown),
            (V1, "UNSPECIFIED_ERROR", fcm, Unknown),
            (V1, "SOME_FUTURE_CODE", plain, Unknown),
            (Legacy, "UNREGISTERED", plain, Unknown),
        ];
        for (protocol, code, facts, category) in cases {
            assert_eq!(
                t.classify(protocol, code, facts),
                category,
                "{protocol:?} {code} {facts:?}"
            );
        }
    }

    #[test]
    fn a_new_code_is_one_line() {
        let text = format!("{BUILTIN_TABLE}\n[[rule]]\ncodes = [\"NEW_DEAD\"]\ncategory = \"token-dead\"\n");
        let t = Classification::parse(&text, "test").expect("valid");
        assert_eq!(
            t.classify(Protocol::V1, "NEW_DEAD", Facts::default()),
            Category::TokenDead
        );
        assert_eq!(
            t.classify(Protocol::Legacy, "NEW_DEAD", Facts::default()),
            Category::TokenDead
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"colour = "blue"

[[rule]]
protocol = "apns"
codes = ["A", "A", 3]
category = "token-dead"

[[rule]]
codes = []
category = "dead"
when = "sometimes"
extra = 1

[[rule]]
protocol = "fcm-v1"
codes = ["X"]

[[rule]]
codes = ["X"]
category = "unknown"

[[rule]]
protocol = "fcm-v1"
codes = ["X"]
category = "bad-message"
"#;
        let err = Classification::parse(text, "t.toml").expect_err("invalid");
        let got: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        let expected = [
            "line 1: unknown key `colour`; a table has only `[[rule]]` entries",
            "line 4: rule 1: unknown protocol `apns`; expected one of: fcm-legacy, fcm-v1",
            "line 5: rule 1: code `A` is listed twice",
            "line 5: rule 1: codes must be strings, found integer",
            "line 12: rule 2: unknown key `extra`; expected one of: protocol, codes, when, category",
            "line 11: rule 2: unknown when `sometimes`; expected one of: token-field-violation, no-fcm-error",
            "line 10: rule 2: unknown category `dead`; expected one of: token-dead, bad-message, retry-later, sender-config, unknown",
            "line 9: rule 2: `codes` is empty",
            "line 14: rule 3: missing `category`",
            "line 24: rule 5: code `X` is already matched by rule 4, so this rule never applies to it",
        ];
        assert_eq!(got, expected);
        assert!(
            err.to_string()
                .starts_with("invalid classification table t.toml:\n  line 1:")
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = Classification::parse("[[rule]]\ncodes = [\n", "t.toml").expect_err("invalid");
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].message.starts_with("not valid TOML"), "{err}");
        assert!(err.problems[0].line.is_some());
    }
}
