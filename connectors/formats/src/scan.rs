//! A strict, allocation-free JSON scanner over one record's text: it validates as it goes
//! and hands out spans of the text, so callers build values only for what they read.

use std::borrow::Cow;

use crate::FormatError;

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// A position in a record's text.
#[derive(Clone, Copy)]
pub(crate) struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub(crate) fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, at: 0 }
    }

    /// A syntax error at the current position.
    pub(crate) fn error(&self, expected: &'static str) -> FormatError {
        FormatError::Json { at: self.at, expected }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips whitespace and returns the next byte, if any.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes().get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `b` (after whitespace) or fails.
    pub(crate) fn expect(&mut self, b: u8, expected: &'static str) -> Result<(), FormatError> {
        if self.peek() == Some(b) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    /// Requires that only whitespace is left.
    pub(crate) fn end(&mut self) -> Result<(), FormatError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("the end of the record")),
        }
    }

    /// Consumes a string and returns its raw contents (escapes not yet decoded).
    pub(crate) fn raw_string(&mut self) -> Result<RawStr<'a>, FormatError> {
        self.expect(b'"', "a string")?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = &self.bytes()[self.at..];
            let Some(i) = memchr::memchr2(b'"', b'\\', rest) else {
                self.at = self.text.len();
                return Err(self.error("the end of a string"));
            };
            self.at += i;
            if rest[i] == b'"' {
                let raw = &self.text[start..self.at];
                self.at += 1;
                return Ok(RawStr { raw, escaped });
            }
            escaped = true;
            // A backslash and the character it escapes; `\u` digits are checked on decoding.
            self.at += 2;
            if self.at > self.text.len() {
                self.at = self.text.len();
                return Err(self.error("the end of a string"));
            }
        }
    }

    /// Consumes a number and returns its text.
    pub(crate) fn number(&mut self) -> Result<&'a str, FormatError> {
        self.peek();
        let start = self.at;
        let bytes = self.bytes();
        let mut i = start;
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = |mut i: usize| {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let int_end = digits(i);
        if int_end == i || (bytes[i] == b'0' && int_end > i + 1) {
            return Err(self.error("a number"));
        }
        i = int_end;
        if bytes.get(i) == Some(&b'.') {
            let frac_end = digits(i + 1);
            if frac_end == i + 1 {
                self.at = i + 1;
                return Err(self.error("a digit after the decimal point"));
            }
            i = frac_end;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp_end = digits(i);
            if exp_end == i {
                self.at = i;
                return Err(self.error("a digit in the exponent"));
            }
            i = exp_end;
        }
        self.at = i;
        Ok(&self.text[start..i])
    }

    /// Consumes `true`, `false` or `null`.
    fn literal(&mut self, word: &'static str) -> Result<(), FormatError> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(self.error("a JSON value"))
        }
    }

    /// Consumes a boolean.
    pub(crate) fn boolean(&mut self) -> Result<bool, FormatError> {
        match self.peek() {
            Some(b't') => self.literal("true").map(|()| true),
            Some(b'f') => self.literal("false").map(|()| false),
            _ => Err(self.error("true or false")),
        }
    }

    /// Whether the next value is `null` (consumed if so).
    pub(crate) fn null(&mut self) -> Result<bool, FormatError> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Consumes any value, checking its syntax, and returns its text.
    pub(crate) fn skip(&mut self) -> Result<&'a str, FormatError> {
        self.peek();
        let start = self.at;
        self.skip_at(0)?;
        Ok(&self.text[start..self.at])
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), FormatError> {
        if depth > MAX_DEPTH {
            return Err(self.error("less deeply nested JSON"));
        }
        match self.peek() {
            Some(b'"') => self.raw_string().map(drop),
            Some(b'{') => self.object(|cursor, _| cursor.skip_at(depth + 1)),
            Some(b'[') => self.array(|cursor| cursor.skip_at(depth + 1)),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => Err(self.error("a JSON value")),
        }
    }

    /// Consumes an object, calling `member` with each key; `member` must consume the value.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Cursor<'a>, RawStr<'a>) -> Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        self.expect(b'{', "an object")?;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            let key = self.raw_string()?;
            self.expect(b':', "':'")?;
            member(self, key)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.error("',' or '}'")),
            }
        }
    }

    /// Consumes an array, calling `element` for each element; `element` must consume it.
    pub(crate) fn array(
        &mut self,
        mut element: impl FnMut(&mut Cursor<'a>) -> Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        self.expect(b'[', "an array")?;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.error("',' or ']'")),
            }
        }
    }
}

/// The contents of a JSON string as written, between its quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawStr<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// Whether the string is `s` (exact text; an escaped spelling is decoded first).
    pub(crate) fn is(&self, s: &str) -> bool {
        if self.escaped {
            self.decode().is_ok_and(|d| d == s)
        } else {
            self.raw == s
        }
    }

    /// The string with its escapes decoded.
    pub(crate) fn decode(&self) -> Result<Cow<'a, str>, FormatError> {
        if !self.escaped {
            return Ok(Cow::Borrowed(self.raw));
        }
        let bad = |problem: &'static str| FormatError::Escape(problem);
        let mut out = String::with_capacity(self.raw.len());
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('/') => out.push('/'),
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('u') => {
                    let unit = hex4(&mut chars).ok_or(bad("\\u needs four hex digits"))?;
                    let code = if (0xD800..0xDC00).contains(&unit) {
                        if chars.next() != Some('\\') || chars.next() != Some('u') {
                            return Err(bad("a high surrogate must be followed by a low one"));
                        }
                        let low = hex4(&mut chars).ok_or(bad("\\u needs four hex digits"))?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return Err(bad("a high surrogate must be followed by a low one"));
                        }
                        0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        unit
                    };
                    out.push(char::from_u32(code).ok_or(bad("a lone low surrogate"))?);
                }
                _ => return Err(bad("an unknown escape")),
            }
        }
        Ok(Cow::Owned(out))
    }
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut n = 0;
    for _ in 0..4 {
        n = n * 16 + chars.next()?.to_digit(16)?;
    }
    Some(n)
}
