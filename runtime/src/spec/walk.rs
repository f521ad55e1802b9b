//! A checked walk over a TOML document that records every problem instead of stopping.
//!
//! serde stops at the first error and forgets where values were; users fixing a pipeline
//! want the whole list with positions. The walker reads values with their spans, resolves
//! `${VAR}` from the environment, and appends a [`Problem`] for each thing that is wrong.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike};

use super::{Loc, Problem, Spanned};

/// Walks one document, collecting problems.
pub(crate) struct Walker<'a> {
    file: PathBuf,
    line_starts: Vec<usize>,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Every problem found so far.
    pub problems: Vec<Problem>,
}

impl<'a> Walker<'a> {
    /// A walker over `text`, read from `file`, resolving variables with `env`.
    pub fn new(file: &Path, text: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Walker {
            file: file.to_path_buf(),
            line_starts,
            text,
            env,
            problems: Vec::new(),
        }
    }

    /// The 1-based line and column of a byte offset.
    pub fn loc(&self, offset: usize) -> Loc {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        Loc { line, col }
    }

    fn loc_of(&self, span: Option<Range<usize>>) -> Option<Loc> {
        span.map(|s| self.loc(s.start))
    }

    /// Records a problem at a span.
    pub fn problem(&mut self, span: Option<Range<usize>>, path: &str, message: impl Into<String>) {
        let loc = self.loc_of(span);
        self.problems.push(Problem {
            file: self.file.clone(),
            loc,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Records a problem at a known location.
    pub fn problem_at(&mut self, loc: Loc, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            loc: Some(loc),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// The location of a key inside a table (falling back to its value, then the table).
    pub fn key_loc(&self, table: &dyn TableLike, key: &str) -> Option<Loc> {
        let span = table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| table.get(key).and_then(Item::span));
        self.loc_of(span)
    }

    /// Reports every key of `table` not in `allowed`, suggesting the nearest allowed one.
    pub fn deny_unknown(&mut self, table: &dyn TableLike, path: &str, allowed: &[&str]) {
        let unknown: Vec<String> = table
            .iter()
            .map(|(k, _)| k.to_owned())
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        for key in unknown {
            let hint = nearest(&key, allowed)
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_else(|| format!("; expected one of: {}", allowed.join(", ")));
            let loc = self.key_loc(table, &key);
            self.problems.push(Problem {
                file: self.file.clone(),
                loc,
                path: join(path, &key),
                message: format!("unknown key `{key}`{hint}"),
            });
        }
    }

    /// A sub-table (or inline table) at `key`, reporting a wrong type.
    pub fn table<'t>(&mut self, parent: &'t dyn TableLike, key: &str, path: &str) -> Option<&'t dyn TableLike> {
        let item = parent.get(key)?;
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.problem(
                    item.span(),
                    &join(path, key),
                    format!("expected a table, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A string at `key` with `${VAR}` resolved; `None` if absent or wrong (reported).
    pub fn string(&mut self, table: &dyn TableLike, key: &str, path: &str) -> Option<Spanned<String>> {
        let item = table.get(key)?;
        let path = join(path, key);
        let span = item.span();
        match item.as_str() {
            Some(raw) => {
                let loc = self.loc_of(span.clone()).unwrap_or_default();
                match interpolate(raw, self.env) {
                    Ok(value) => Some(Spanned { value, loc, path }),
                    Err(message) => {
                        self.problem(span, &path, message);
                        None
                    }
                }
            }
            None => {
                self.problem(span, &path, format!("expected a string, found {}", type_name(item)));
                None
            }
        }
    }

    /// A boolean at `key`.
    pub fn bool(&mut self, table: &dyn TableLike, key: &str, path: &str) -> Option<Spanned<bool>> {
        let item = table.get(key)?;
        let loc = self.loc_of(item.span()).unwrap_or_default();
        match item.as_bool() {
            Some(value) => Some(Spanned {
                value,
                loc,
                path: join(path, key),
            }),
            None => {
                self.problem(
                    item.span(),
                    &join(path, key),
                    format!("expected true or false, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A non-negative integer at `key`, within `range`.
    pub fn uint(
        &mut self,
        table: &dyn TableLike,
        key: &str,
        path: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<Spanned<u64>> {
        let item = table.get(key)?;
        let loc = self.loc_of(item.span()).unwrap_or_default();
        let path = join(path, key);
        match item.as_integer() {
            Some(i) if i >= 0 && range.contains(&(i as u64)) => Some(Spanned {
                value: i as u64,
                loc,
                path,
            }),
            Some(i) => {
                self.problem(
                    item.span(),
                    &path,
                    format!("{i} is out of range: expected {} to {}", range.start(), range.end()),
                );
                None
            }
            None => {
                self.problem(
                    item.span(),
                    &path,
                    format!("expected an integer, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A number (integer or float) at `key`, within `[min, max]`.
    pub fn float(&mut self, table: &dyn TableLike, key: &str, path: &str, min: f64, max: f64) -> Option<Spanned<f64>> {
        let item = table.get(key)?;
        let loc = self.loc_of(item.span()).unwrap_or_default();
        let path = join(path, key);
        let value = item.as_float().or_else(|| item.as_integer().map(|i| i as f64));
        match value {
            Some(f) if (min..=max).contains(&f) => Some(Spanned { value: f, loc, path }),
            Some(f) => {
                self.problem(
                    item.span(),
                    &path,
                    format!("{f} is out of range: expected {min} to {max}"),
                );
                None
            }
            None => {
                self.problem(
                    item.span(),
                    &path,
                    format!("expected a number, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A list of strings at `key` (a single string is accepted as a list of one).
    pub fn string_list(
        &mut self,
        table: &dyn TableLike,
        key: &str,
        path: &str,
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let item = table.get(key)?;
        let path = join(path, key);
        let loc = self.loc_of(item.span()).unwrap_or_default();
        if let Some(s) = item.as_str() {
            let value = vec![Spanned {
                value: s.to_owned(),
                loc,
                path: path.clone(),
            }];
            return Some(Spanned { value, loc, path });
        }
        let Some(array) = item.as_array() else {
            self.problem(
                item.span(),
                &path,
                format!("expected a list of strings, found {}", type_name(item)),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in array.iter().enumerate() {
            let elem_path = format!("{path}[{i}]");
            match v.as_str() {
                Some(s) => match interpolate(s, self.env) {
                    Ok(value) => out.push(Spanned {
                        value,
                        loc: self.loc_of(v.span()).unwrap_or(loc),
                        path: elem_path,
                    }),
                    Err(message) => {
                        self.problem(v.span(), &elem_path, message);
                        ok = false;
                    }
                },
                None => {
                    self.problem(
                        v.span(),
                        &elem_path,
                        format!("expected a string, found {}", v.type_name()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(Spanned { value: out, loc, path })
    }
}

/// Joins a key onto a dotted path.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => v.type_name(),
        Item::Table(_) => "table",
        Item::ArrayOfTables(_) => "array of tables",
    }
}

/// Replaces `${NAME}` by the environment variable `NAME`; `$${` writes a literal `${`.
///
/// A missing variable is an error rather than an empty string: an empty broker list or
/// secret would fail later and far from its cause.
pub(crate) fn interpolate(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !raw.contains('$') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err("unterminated `${`: write `${NAME}`, or `$${` for a literal".to_owned());
            };
            let name = &tail[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("`${{{name}}}` is not a valid variable name"));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The allowed word closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn nearest<'w>(word: &str, allowed: &[&'w str]) -> Option<&'w str> {
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOME_DIR").then(|| "/h".to_owned())
    }

    #[test]
    fn interpolates_and_escapes() {
        assert_eq!(interpolate("a${HOME_DIR}b", &env).as_deref(), Ok("a/hb"));
        assert_eq!(interpolate("$${HOME_DIR}", &env).as_deref(), Ok("${HOME_DIR}"));
        assert_eq!(interpolate("cost $5", &env).as_deref(), Ok("cost $5"));
        assert!(interpolate("${MISSING}", &env).is_err());
        assert!(interpolate("${HOME_DIR", &env).is_err());
        assert!(interpolate("${1X}", &env).is_err());
    }

    #[test]
    fn suggests_near_keys_only() {
        assert_eq!(nearest("inptu", &["input", "expr"]), Some("input"));
        assert_eq!(nearest("zzzzzz", &["input", "expr"]), None);
    }
}
