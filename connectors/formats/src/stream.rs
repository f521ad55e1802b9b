//! DynamoDB change records, parsed lazily: [`StreamRecordRef::parse`] checks the syntax of
//! the whole record and finds its parts; values are built only for what is read.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use sluice_runtime::Value;
use sluice_runtime::value::ValueMap;

use crate::FormatError;
use crate::dynamo::{self, Path};
use crate::scan::{Cursor, RawStr};

/// How many attributes of an image [`ImageRef`] indexes; later ones are found by scanning
/// the image's remaining text again. Account items have 7.
const INDEXED: usize = 16;

/// A change record as Kinesis Data Streams for DynamoDB (or DynamoDB Streams) delivers it,
/// borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct StreamRecordRef<'a> {
    event_name: &'static str,
    event_id: Option<RawStr<'a>>,
    table_name: Option<RawStr<'a>>,
    sequence_number: Option<RawStr<'a>>,
    approximate_creation_ms: Option<i64>,
    keys: Option<ImageRef<'a>>,
    old: Option<ImageRef<'a>>,
    new: Option<ImageRef<'a>>,
}

/// An item image (or the `Keys`) of a change record: where each attribute's typed value is
/// in the record's text. Copying one copies a small fixed table, never the text.
#[derive(Clone, Copy)]
pub struct ImageRef<'a> {
    /// The image's object, from `{` to `}`; offsets below are relative to it.
    text: &'a str,
    /// How many entries of `spans` are filled.
    len: u8,
    /// Bit `i` is set when name `i` contains escapes (so it must be decoded to compare).
    escaped: u16,
    /// Where the first attribute that is not in `spans` starts, if any is not.
    rest: Option<usize>,
    /// Per attribute: start and end of its name (inside the quotes), start and end of its
    /// typed value. `u16` keeps the table small; an attribute past 64 KiB goes to `rest`.
    spans: [[u16; 4]; INDEXED],
}

/// The fields of a record as they are found; each `Option` says whether the field was seen.
#[derive(Default)]
struct Found<'a> {
    event_name: Option<&'static str>,
    event_id: Option<Option<RawStr<'a>>>,
    table_name: Option<Option<RawStr<'a>>>,
    dynamodb: bool,
    keys: Option<Option<ImageRef<'a>>>,
    old: Option<Option<ImageRef<'a>>>,
    new: Option<Option<ImageRef<'a>>>,
    sequence_number: Option<Option<RawStr<'a>>>,
    time: Option<Option<&'a str>>,
    micros: Option<bool>,
}

impl<'a> StreamRecordRef<'a> {
    /// Parses a record: the whole text must be one valid JSON object with a known
    /// `eventName` and a `dynamodb` object; unknown fields are checked and skipped.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let text = std::str::from_utf8(bytes).map_err(|e| FormatError::Utf8(e.valid_up_to()))?;
        let mut cursor = Cursor::new(text);
        let mut found = Found::default();
        if cursor.open_object()? {
            loop {
                // `decode` borrows the key unless it has escapes.
                let name = cursor.key()?.decode()?;
                match &*name {
                    "eventName" => {
                        once(&found.event_name, "eventName")?;
                        found.event_name = Some(event(&mut cursor)?);
                    }
                    "eventID" => {
                        once(&found.event_id, "eventID")?;
                        found.event_id = Some(optional_string(&mut cursor, "eventID")?);
                    }
                    "tableName" => {
                        once(&found.table_name, "tableName")?;
                        found.table_name = Some(optional_string(&mut cursor, "tableName")?);
                    }
                    "dynamodb" => {
                        once(&found.dynamodb.then_some(()), "dynamodb")?;
                        found.dynamodb = true;
                        dynamodb(&mut cursor, &mut found)?;
                    }
                    _ => drop(cursor.skip(1)?),
                }
                if !cursor.next_member()? {
                    break;
                }
            }
        }
        cursor.end()?;
        let event_name = found.event_name.ok_or(FormatError::Missing("eventName"))?;
        if !found.dynamodb {
            return Err(FormatError::Missing("dynamodb"));
        }
        let micros = found.micros.unwrap_or(false);
        Ok(StreamRecordRef {
            event_name,
            event_id: found.event_id.flatten(),
            table_name: found.table_name.flatten(),
            sequence_number: found.sequence_number.flatten(),
            approximate_creation_ms: found.time.flatten().map(|t| millis(t, micros)).transpose()?,
            keys: found.keys.flatten(),
            old: found.old.flatten(),
            new: found.new.flatten(),
        })
    }

    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub fn event_name(&self) -> &'a str {
        self.event_name
    }

    /// The item before the change (`OldImage`), if the record carries it.
    pub fn old_image(&self) -> Option<ImageRef<'a>> {
        self.old
    }

    /// The item after the change (`NewImage`), if the record carries it.
    pub fn new_image(&self) -> Option<ImageRef<'a>> {
        self.new
    }

    /// The whole record as a value (see the crate documentation for its shape).
    pub fn to_value(&self) -> Result<Value, FormatError> {
        self.build(None)
    }

    /// As [`to_value`](Self::to_value), with only the named attributes in `old` and `new`
    /// (`keys` and the other fields are kept whole).
    pub fn to_value_projected(&self, attributes: &[&str]) -> Result<Value, FormatError> {
        self.build(Some(attributes))
    }

    fn build(&self, only: Option<&[&str]>) -> Result<Value, FormatError> {
        let text = |s: &Option<RawStr<'a>>| -> Result<Value, FormatError> {
            Ok(match s {
                None => Value::Null,
                Some(s) => Value::Str(Arc::from(s.decode()?)),
            })
        };
        let image = |image: &Option<ImageRef<'a>>, only| -> Result<Value, FormatError> {
            Ok(match image {
                None => Value::Null,
                Some(image) => Value::Map(Arc::new(image.build(only)?)),
            })
        };
        let values = [
            Value::Str(dynamo::intern(self.event_name)),
            text(&self.event_id)?,
            text(&self.table_name)?,
            image(&self.keys, None)?,
            image(&self.old, only)?,
            image(&self.new, only)?,
            text(&self.sequence_number)?,
            self.approximate_creation_ms.map_or(Value::Null, Value::Int),
        ];
        Ok(RECORD_FIELDS.with(|names| Value::Map(Arc::new(names.iter().cloned().zip(values).collect()))))
    }
}

thread_local! {
    /// The output field names, shared by every record decoded on the thread.
    static RECORD_FIELDS: [Arc<str>; 8] = [
        "eventName",
        "eventID",
        "tableName",
        "keys",
        "old",
        "new",
        "sequenceNumber",
        "approximateCreationTime",
    ]
    .map(Arc::from);
}

/// Refuses a second occurrence of a field the parser reads: which one would count is a guess.
fn once<T>(seen: &Option<T>, field: &'static str) -> Result<(), FormatError> {
    match seen {
        None => Ok(()),
        Some(_) => Err(FormatError::Field {
            field,
            problem: "appears twice".to_owned(),
        }),
    }
}

fn event(cursor: &mut Cursor<'_>) -> Result<&'static str, FormatError> {
    if cursor.peek() != Some(b'"') {
        return Err(FormatError::Field {
            field: "eventName",
            problem: "must be a string".to_owned(),
        });
    }
    let name = cursor.string()?.decode()?;
    match &*name {
        "INSERT" => Ok("INSERT"),
        "MODIFY" => Ok("MODIFY"),
        "REMOVE" => Ok("REMOVE"),
        other => Err(FormatError::EventName(other.to_owned())),
    }
}

fn optional_string<'a>(cursor: &mut Cursor<'a>, field: &'static str) -> Result<Option<RawStr<'a>>, FormatError> {
    match cursor.peek() {
        Some(b'"') => Ok(Some(cursor.string()?)),
        Some(b'n') if cursor.null()? => Ok(None),
        _ => Err(FormatError::Field {
            field,
            problem: "must be a string or null".to_owned(),
        }),
    }
}

/// Reads the `dynamodb` object into `found`.
fn dynamodb<'a>(cursor: &mut Cursor<'a>, found: &mut Found<'a>) -> Result<(), FormatError> {
    if cursor.peek() != Some(b'{') {
        return Err(FormatError::NotAnObject("dynamodb"));
    }
    if !cursor.open_object()? {
        return Ok(());
    }
    loop {
        // `decode` borrows the key unless it has escapes.
        let name = cursor.key()?.decode()?;
        match &*name {
            "NewImage" => {
                once(&found.new, "NewImage")?;
                found.new = Some(ImageRef::parse(cursor, "NewImage")?);
            }
            "OldImage" => {
                once(&found.old, "OldImage")?;
                found.old = Some(ImageRef::parse(cursor, "OldImage")?);
            }
            "Keys" => {
                once(&found.keys, "Keys")?;
                found.keys = Some(ImageRef::parse(cursor, "Keys")?);
            }
            "SequenceNumber" => {
                once(&found.sequence_number, "SequenceNumber")?;
                found.sequence_number = Some(optional_string(cursor, "SequenceNumber")?);
            }
            "ApproximateCreationDateTime" => {
                once(&found.time, "ApproximateCreationDateTime")?;
                found.time = Some(match cursor.peek() {
                    Some(b'-' | b'0'..=b'9') => Some(cursor.number()?),
                    Some(b'n') if cursor.null()? => None,
                    _ => {
                        return Err(FormatError::Field {
                            field: "ApproximateCreationDateTime",
                            problem: "must be a number".to_owned(),
                        });
                    }
                });
            }
            "ApproximateCreationDateTimePrecision" => {
                once(&found.micros, "ApproximateCreationDateTimePrecision")?;
                let precision = optional_string(cursor, "ApproximateCreationDateTimePrecision")?;
                found.micros = Some(precision.is_some_and(|p| p.is("MICROSECOND")));
            }
            _ => drop(cursor.skip(2)?),
        }
        if !cursor.next_member()? {
            return Ok(());
        }
    }
}

/// `ApproximateCreationDateTime` in milliseconds since the epoch: microseconds when the
/// record says so, seconds (as the DynamoDB Streams API gives them, with a fraction) below
/// 10¹¹, else milliseconds.
fn millis(number: &str, micros: bool) -> Result<i64, FormatError> {
    let bad = |problem: String| FormatError::Field {
        field: "ApproximateCreationDateTime",
        problem,
    };
    if number.starts_with('-') {
        return Err(bad(format!("{number} is negative")));
    }
    // Integers are exact; only seconds with a fraction (or an exponent) go through f64.
    if let Ok(n) = number.parse::<u64>() {
        let ms = if micros {
            n / 1000
        } else if n < 100_000_000_000 {
            n * 1000
        } else {
            n
        };
        return i64::try_from(ms).map_err(|_| bad(format!("{number} is out of range")));
    }
    let value: f64 = number.parse().map_err(|_| bad(format!("{number} is not a number")))?;
    let ms = if micros {
        (value / 1000.0).trunc()
    } else if value < 1e11 {
        (value * 1000.0).round()
    } else {
        value.trunc()
    };
    if (0.0..9.0e18).contains(&ms) {
        // In range and integral, so the conversion is exact.
        Ok(ms as i64)
    } else {
        Err(bad(format!("{number} is out of range")))
    }
}

impl<'a> ImageRef<'a> {
    /// Reads an image object (or `null`), noting where each attribute's typed value is.
    fn parse(cursor: &mut Cursor<'a>, field: &'static str) -> Result<Option<ImageRef<'a>>, FormatError> {
        match cursor.peek() {
            Some(b'n') if cursor.null()? => return Ok(None),
            Some(b'{') => {}
            _ => return Err(FormatError::NotAnObject(field)),
        }
        let record = cursor.text();
        let start = cursor.pos();
        let mut image = ImageRef {
            text: "",
            len: 0,
            escaped: 0,
            rest: None,
            spans: [[0; 4]; INDEXED],
        };
        let relative = |at: usize| u16::try_from(at - start).ok();
        if cursor.open_object()? {
            loop {
                cursor.peek();
                let key_at = cursor.pos();
                let (name_end, value_at, escaped) = match cursor.compact_member() {
                    Some((name_end, value_at)) => (name_end, value_at, false),
                    None => {
                        let key = cursor.key()?;
                        cursor.peek();
                        let value_at = cursor.pos();
                        let mut fast = *cursor;
                        if fast.simple_tagged() {
                            *cursor = fast;
                        } else {
                            cursor.skip(3)?;
                        }
                        (key_at + 1 + key.raw.len(), value_at, key.escaped)
                    }
                };
                let i = usize::from(image.len);
                if image.rest.is_none() {
                    let span = [
                        relative(key_at + 1),
                        relative(name_end),
                        relative(value_at),
                        relative(cursor.pos()),
                    ];
                    match span {
                        [Some(a), Some(b), Some(c), Some(d)] if i < INDEXED => {
                            image.spans[i] = [a, b, c, d];
                            image.escaped |= u16::from(escaped) << i;
                            image.len += 1;
                        }
                        _ => image.rest = Some(key_at - start),
                    }
                }
                if !cursor.next_member()? {
                    break;
                }
            }
        }
        image.text = record.get(start..cursor.pos()).unwrap_or_default();
        Ok(Some(image))
    }

    /// The name and typed text of indexed attribute `i`.
    fn indexed(&self, i: usize) -> (RawStr<'a>, &'a str) {
        let [a, b, c, d] = self.spans[i].map(usize::from);
        let name = RawStr {
            raw: self.text.get(a..b).unwrap_or_default(),
            escaped: self.escaped & (1 << i) != 0,
        };
        (name, self.text.get(c..d).unwrap_or_default())
    }

    /// Calls `visit` with each attribute's name and typed text, in record order, until it
    /// returns `true`.
    fn visit(
        &self,
        mut visit: impl FnMut(RawStr<'a>, &'a str) -> Result<bool, FormatError>,
    ) -> Result<(), FormatError> {
        for i in 0..usize::from(self.len) {
            let (name, value) = self.indexed(i);
            if visit(name, value)? {
                return Ok(());
            }
        }
        let Some(rest) = self.rest else {
            return Ok(());
        };
        // The text was checked when parsed, so this scan cannot fail on it.
        let mut cursor = Cursor::at(self.text, rest);
        loop {
            let name = cursor.key()?;
            let value = cursor.skip(3)?;
            if visit(name, value)? || !cursor.next_member()? {
                return Ok(());
            }
        }
    }

    /// The exact JSON text of an attribute's typed value as it appears in the record (such
    /// as `{"S":"+15550000011"}`), or `None` when the image lacks the attribute. Of an
    /// attribute written twice, the first.
    pub fn raw(&self, attribute: &str) -> Option<&'a str> {
        let want = attribute.as_bytes();
        let text = self.text.as_bytes();
        let spans = self.spans.get(..usize::from(self.len)).unwrap_or_default();
        for (i, span) in spans.iter().enumerate() {
            let [a, b, c, d] = span.map(usize::from);
            let found = if self.escaped >> i & 1 != 0 {
                self.indexed(i).0.is(attribute)
            } else {
                // Lengths first: most names differ in length, and a `memcmp` call costs more
                // than comparing a few bytes.
                b - a == want.len() && text.get(a..b).is_some_and(|name| same(name, want))
            };
            if found {
                return self.text.get(c..d);
            }
        }
        self.rest?;
        let mut found = None;
        self.visit(|name, value| {
            if name.is(attribute) {
                found = Some(value);
            }
            Ok(found.is_some())
        })
        .ok()?;
        found
    }

    /// An attribute's value, or `None` when the image lacks the attribute.
    pub fn get(&self, attribute: &str) -> Result<Option<Value>, FormatError> {
        self.raw(attribute)
            .map(|raw| dynamo::typed(&mut Cursor::new(raw), &Path::Member(&Path::Root, attribute), 0))
            .transpose()
    }

    /// The whole image as a map of attribute name → value.
    pub fn to_value(&self) -> Result<Value, FormatError> {
        Ok(Value::Map(Arc::new(self.build(None)?)))
    }

    fn build(&self, only: Option<&[&str]>) -> Result<ValueMap, FormatError> {
        let mut out = ValueMap::new();
        self.visit(|name, raw| {
            let name: Cow<'_, str> = name.decode()?;
            if only.is_some_and(|only| !only.contains(&&*name)) {
                return Ok(false);
            }
            let path = Path::Member(&Path::Root, &name);
            let value = dynamo::typed(&mut Cursor::new(raw), &path, 0)?;
            dynamo::insert(&mut out, &name, value, &path)?;
            Ok(false)
        })?;
        Ok(out)
    }
}

/// Byte equality of two equally long short names, without a library call.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() > 8 {
        return a == b;
    }
    a.iter().zip(b).fold(true, |same, (x, y)| same & (x == y))
}

impl fmt::Debug for ImageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        let _ = self.visit(|name, raw| {
            map.entry(&name.raw, &raw);
            Ok(false)
        });
        map.finish()
    }
}
