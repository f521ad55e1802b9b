//! A strict JSON scanner over one record's text: it validates as it goes and hands out spans
//! of the text, so callers build values only for what they read. It never allocates.

use std::borrow::Cow;

use crate::FormatError;

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// Strings are scanned eight bytes at a time for this long before handing over to `memchr`:
/// most keys, tags and values are a few bytes long, and a `memchr` call costs more than
/// the whole string for them.
const SHORT: usize = 16;

/// The offset of the first quote or backslash in `bytes` from `i` on.
#[inline(always)]
fn find_quote_or_backslash(bytes: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let swar_end = i + SHORT;
    while i < swar_end {
        let Some(chunk) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) else {
            let tail = bytes.get(i..)?;
            return tail.iter().position(|&b| b == b'"' || b == b'\\').map(|j| i + j);
        };
        let word = u64::from_le_bytes(*chunk);
        let quotes = word ^ (ONES * u64::from(b'"'));
        let backslashes = word ^ (ONES * u64::from(b'\\'));
        // The zero-byte test: its lowest set bit marks the first zero byte exactly (higher
        // bits may be false alarms, which the lowest-bit search never looks at).
        let found = ((quotes.wrapping_sub(ONES) & !quotes) | (backslashes.wrapping_sub(ONES) & !backslashes)) & HIGHS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', bytes.get(i..)?).map(|j| i + j)
}

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

    /// A cursor at byte `at` of `text` (a position an earlier scan stopped at).
    pub(crate) fn at(text: &'a str, at: usize) -> Cursor<'a> {
        Cursor { text, at }
    }

    /// The text being scanned.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// The current byte offset.
    pub(crate) fn pos(&self) -> usize {
        self.at
    }

    /// A syntax error at the current position.
    pub(crate) fn error(&self, expected: &'static str) -> FormatError {
        FormatError::Json { at: self.at, expected }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips whitespace and returns the next byte, if any.
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let bytes = self.bytes();
        while let Some(&b) = bytes.get(self.at) {
            if b > b' ' || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `b` (after whitespace) or fails.
    #[inline(always)]
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

    /// Consumes a string and returns its contents as written (escapes checked, not decoded).
    #[inline(always)]
    pub(crate) fn string(&mut self) -> Result<RawStr<'a>, FormatError> {
        self.expect(b'"', "a string")?;
        let start = self.at;
        let bytes = self.bytes();
        // The common case, kept small enough to inline: no escapes before the closing quote.
        if let Some(j) = find_quote_or_backslash(bytes, start)
            && bytes.get(j) == Some(&b'"')
            && let Some(raw) = self.text.get(start..j)
        {
            self.at = j + 1;
            return Ok(RawStr { raw, escaped: false });
        }
        self.escaped_string(start)
    }

    /// The rest of [`string`](Self::string): a string with escapes, or an unterminated one.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, start: usize) -> Result<RawStr<'a>, FormatError> {
        let bytes = self.bytes();
        let mut i = start;
        loop {
            let Some(j) = find_quote_or_backslash(bytes, i) else {
                self.at = bytes.len();
                return Err(self.error("the end of a string"));
            };
            if bytes.get(j) == Some(&b'"') {
                self.at = j + 1;
                // Both ends sit next to an ASCII quote, so they are character boundaries.
                let raw = self.text.get(start..j).ok_or_else(|| self.error("a string"))?;
                return Ok(RawStr { raw, escaped: true });
            }
            i = j + self.escape_len(j)?;
        }
    }

    /// The length of the escape sequence whose backslash is at `j`, if it is a valid one.
    fn escape_len(&mut self, j: usize) -> Result<usize, FormatError> {
        let bytes = self.bytes();
        match bytes.get(j + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(2),
            Some(b'u') => match bytes.get(j + 2..j + 6) {
                Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => Ok(6),
                Some(_) => {
                    self.at = j;
                    Err(self.error("four hex digits after \\u"))
                }
                None => {
                    self.at = bytes.len();
                    Err(self.error("the end of a string"))
                }
            },
            Some(_) => {
                self.at = j;
                Err(self.error("a valid escape sequence"))
            }
            None => {
                self.at = bytes.len();
                Err(self.error("the end of a string"))
            }
        }
    }

    /// Consumes an object key and the `:` after it.
    #[inline(always)]
    pub(crate) fn key(&mut self) -> Result<RawStr<'a>, FormatError> {
        let key = self.string()?;
        self.expect(b':', "':'")?;
        Ok(key)
    }

    /// Consumes a number and returns its text.
    pub(crate) fn number(&mut self) -> Result<&'a str, FormatError> {
        self.peek();
        let start = self.at;
        let bytes = self.bytes();
        let digits = |mut i: usize| {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = start;
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_end = digits(i);
        if int_end == i || (bytes.get(i) == Some(&b'0') && int_end > i + 1) {
            self.at = i;
            return Err(self.error("a number"));
        }
        i = int_end;
        if bytes.get(i) == Some(&b'.') {
            let frac_end = digits(i + 1);
            if frac_end == i + 1 {
                self.at = frac_end;
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
        self.text.get(start..i).ok_or_else(|| self.error("a number"))
    }

    /// Consumes `word` (`true`, `false` or `null`).
    fn literal(&mut self, word: &'static str) -> Result<(), FormatError> {
        if self
            .bytes()
            .get(self.at..)
            .is_some_and(|rest| rest.starts_with(word.as_bytes()))
        {
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

    /// Consumes a value of the form `{"tag": scalar}` (a string without escapes, `true`,
    /// `false` or `null`), as most DynamoDB-typed values are, in one straight pass; `false`
    /// (with the cursor anywhere) when the value is not of that form.
    #[inline(always)]
    pub(crate) fn simple_tagged(&mut self) -> bool {
        let bytes = self.bytes();
        if self.peek() != Some(b'{') {
            return false;
        }
        self.at += 1;
        if self.peek() != Some(b'"') {
            return false;
        }
        let Some(end) = find_quote_or_backslash(bytes, self.at + 1) else {
            return false;
        };
        if bytes.get(end) != Some(&b'"') {
            return false;
        }
        self.at = end + 1;
        if self.peek() != Some(b':') {
            return false;
        }
        self.at += 1;
        match self.peek() {
            Some(b'"') => {
                let Some(end) = find_quote_or_backslash(bytes, self.at + 1) else {
                    return false;
                };
                if bytes.get(end) != Some(&b'"') {
                    return false;
                }
                self.at = end + 1;
            }
            Some(b't') if bytes.get(self.at..self.at + 4) == Some(b"true") => self.at += 4,
            Some(b'f') if bytes.get(self.at..self.at + 5) == Some(b"false") => self.at += 5,
            Some(b'n') if bytes.get(self.at..self.at + 4) == Some(b"null") => self.at += 4,
            _ => return false,
        }
        if self.peek() != Some(b'}') {
            return false;
        }
        self.at += 1;
        true
    }

    /// Consumes an object member `"name":{"tag":scalar}` written compactly (no whitespace,
    /// no escapes in the name or tag, a scalar as in [`simple_tagged`](Self::simple_tagged)),
    /// as DynamoDB and Kinesis write images, returning where the name's closing quote and
    /// the value are; `None` (cursor unmoved) for anything else.
    #[inline(always)]
    pub(crate) fn compact_member(&mut self) -> Option<(usize, usize)> {
        let bytes = self.bytes();
        if bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        let name_end = find_quote_or_backslash(bytes, self.at + 1)?;
        if bytes.get(name_end..name_end + 4)? != b"\":{\"" {
            return None;
        }
        let tag_end = find_quote_or_backslash(bytes, name_end + 4)?;
        if bytes.get(tag_end..tag_end + 2)? != b"\":" {
            return None;
        }
        let value = tag_end + 2;
        let end = match bytes.get(value)? {
            b'"' => {
                let end = find_quote_or_backslash(bytes, value + 1)?;
                if bytes.get(end) != Some(&b'"') {
                    return None;
                }
                end + 1
            }
            b't' if bytes.get(value..value + 4) == Some(b"true") => value + 4,
            b'f' if bytes.get(value..value + 5) == Some(b"false") => value + 5,
            b'n' if bytes.get(value..value + 4) == Some(b"null") => value + 4,
            _ => return None,
        };
        if bytes.get(end) != Some(&b'}') {
            return None;
        }
        self.at = end + 1;
        Some((name_end, name_end + 2))
    }

    /// Consumes any value nested `depth` levels deep, checking its syntax; returns its text.
    pub(crate) fn skip(&mut self, depth: usize) -> Result<&'a str, FormatError> {
        self.peek();
        let start = self.at;
        self.skip_at(depth)?;
        self.text.get(start..self.at).ok_or_else(|| self.error("a JSON value"))
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), FormatError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(open @ (b'{' | b'[')) => {
                if depth >= MAX_DEPTH {
                    return Err(self.error("less deeply nested JSON"));
                }
                if open == b'{' {
                    if self.open_object()? {
                        loop {
                            self.key()?;
                            self.skip_at(depth + 1)?;
                            if !self.next_member()? {
                                break;
                            }
                        }
                    }
                } else if self.open_array()? {
                    loop {
                        self.skip_at(depth + 1)?;
                        if !self.next_element()? {
                            break;
                        }
                    }
                }
                Ok(())
            }
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => Err(self.error("a JSON value")),
        }
    }

    /// Consumes `{`; whether a member follows (if not, the closing `}` is consumed too).
    #[inline]
    pub(crate) fn open_object(&mut self) -> Result<bool, FormatError> {
        self.expect(b'{', "an object")?;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// After a member: consumes `,` (another member follows: `true`) or `}` (`false`).
    #[inline]
    pub(crate) fn next_member(&mut self) -> Result<bool, FormatError> {
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(b'}') => {
                self.at += 1;
                Ok(false)
            }
            _ => Err(self.error("',' or '}'")),
        }
    }

    /// Consumes `[`; whether an element follows (if not, the closing `]` is consumed too).
    pub(crate) fn open_array(&mut self) -> Result<bool, FormatError> {
        self.expect(b'[', "an array")?;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// After an element: consumes `,` (another element follows: `true`) or `]` (`false`).
    pub(crate) fn next_element(&mut self) -> Result<bool, FormatError> {
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(b']') => {
                self.at += 1;
                Ok(false)
            }
            _ => Err(self.error("',' or ']'")),
        }
    }
}

/// The contents of a JSON string as written, between its quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawStr<'a> {
    /// The text between the quotes.
    pub(crate) raw: &'a str,
    /// Whether it contains escapes (so `raw` is not yet the string's value).
    pub(crate) escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The string with its escapes decoded; borrowed when there are none.
    #[inline]
    pub(crate) fn decode(&self) -> Result<Cow<'a, str>, FormatError> {
        if !self.escaped {
            return Ok(Cow::Borrowed(self.raw));
        }
        decode_escapes(self.raw).map(Cow::Owned)
    }

    /// Whether the decoded string is `s`.
    #[inline]
    pub(crate) fn is(&self, s: &str) -> bool {
        if self.escaped {
            self.decode().is_ok_and(|d| d == s)
        } else {
            self.raw == s
        }
    }
}

fn decode_escapes(raw: &str) -> Result<String, FormatError> {
    const PAIR: &str = "a high surrogate must be followed by a low one";
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
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
                let unit = hex4(&mut chars).ok_or(FormatError::Escape("\\u needs four hex digits"))?;
                let code = if (0xD800..0xDC00).contains(&unit) {
                    if chars.next() != Some('\\') || chars.next() != Some('u') {
                        return Err(FormatError::Escape(PAIR));
                    }
                    let low = hex4(&mut chars).ok_or(FormatError::Escape("\\u needs four hex digits"))?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(FormatError::Escape(PAIR));
                    }
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    unit
                };
                out.push(char::from_u32(code).ok_or(FormatError::Escape("a lone low surrogate"))?);
            }
            _ => return Err(FormatError::Escape("an unknown escape")),
        }
    }
    Ok(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut n = 0;
    for _ in 0..4 {
        n = n * 16 + chars.next()?.to_digit(16)?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::find_quote_or_backslash;

    /// The word-at-a-time search must agree with a plain one, whatever the neighbouring
    /// bytes (the zero-byte trick misfires above a match, which must not matter).
    #[test]
    fn the_fast_search_agrees_with_a_plain_one() {
        let mut rng = SmallRng::seed_from_u64(11);
        let interesting = [
            b'"',
            b'\\',
            b'"' ^ 0x80,
            b'\\' ^ 0x80,
            b'"' + 1,
            b'"' - 1,
            0,
            0x80,
            0xff,
            b'a',
        ];
        for _ in 0..20_000 {
            let len = rng.random_range(0..120);
            // Sparse matches reach the `memchr` part of the search, dense ones the first words.
            let density = rng.random_range(0.0..0.5);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.random_bool(density) {
                    true => interesting[rng.random_range(0..interesting.len())],
                    false => rng.random(),
                })
                .collect();
            let from = rng.random_range(0..=len);
            let plain = bytes[from..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|i| from + i);
            assert_eq!(find_quote_or_backslash(&bytes, from), plain, "{bytes:?} from {from}");
        }
    }
}
