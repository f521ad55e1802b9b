//! DynamoDB change records, parsed lazily: [`StreamRecordRef::parse`] checks the syntax of
//! the whole record and finds its parts; values are built only for what is read.

use std::borrow::Cow;
use std::sync::Arc;

use sluice_runtime::Value;
use sluice_runtime::value::ValueMap;

use crate::FormatError;
use crate::dynamo::{self, Path};
use crate::scan::Cursor;

/// A change record as Kinesis Data Streams for DynamoDB (or DynamoDB Streams) delivers it,
/// borrowed from its text.
#[derive(Clone, Debug)]
pub struct StreamRecordRef<'a> {
    event_name: &'static str,
    event_id: Option<Cow<'a, str>>,
    table_name: Option<Cow<'a, str>>,
    keys: Option<ImageRef<'a>>,
    old: Option<ImageRef<'a>>,
    new: Option<ImageRef<'a>>,
    sequence_number: Option<Cow<'a, str>>,
    approximate_creation_ms: Option<u64>,
}

/// An item image of a change record: each attribute's typed value as raw text.
#[derive(Clone, Debug, Default)]
pub struct ImageRef<'a> {
    attributes: Vec<(Cow<'a, str>, &'a str)>,
}

/// `ApproximateCreationDateTime` before it is normalised.
struct RawTime<'a> {
    number: &'a str,
    micros: bool,
}

impl<'a> StreamRecordRef<'a> {
    /// Parses a record: the whole text must be one valid JSON object with a known
    /// `eventName` and a `dynamodb` object; unknown fields are skipped.
    pub fn parse(bytes: &'a [u8]) -> Result<StreamRecordRef<'a>, FormatError> {
        let text = std::str::from_utf8(bytes).map_err(|e| FormatError::Utf8(e.valid_up_to()))?;
        let mut cursor = Cursor::new(text);
        let mut event_name = None;
        let mut event_id = None;
        let mut table_name = None;
        let mut dynamodb = None;
        cursor.object(|cursor, key| {
            if key.is("eventName") {
                let name = optional_string(cursor)?.unwrap_or(Cow::Borrowed("null"));
                event_name = Some(match &*name {
                    "INSERT" => "INSERT",
                    "MODIFY" => "MODIFY",
                    "REMOVE" => "REMOVE",
                    other => return Err(FormatError::EventName(other.to_owned())),
                });
            } else if key.is("eventID") {
                event_id = optional_string(cursor)?;
            } else if key.is("tableName") {
                table_name = optional_string(cursor)?;
            } else if key.is("dynamodb") {
                dynamodb = Some(Dynamodb::parse(cursor)?);
            } else {
                cursor.skip()?;
            }
            Ok(())
        })?;
        cursor.end()?;
        let event_name = event_name.ok_or(FormatError::Missing("eventName"))?;
        let dynamodb = dynamodb.ok_or(FormatError::Missing("dynamodb"))?;
        let approximate_creation_ms = dynamodb.time.map(|t| t.millis()).transpose()?;
        Ok(StreamRecordRef {
            event_name,
            event_id,
            table_name,
            keys: dynamodb.keys,
            old: dynamodb.old,
            new: dynamodb.new,
            sequence_number: dynamodb.sequence_number,
            approximate_creation_ms,
        })
    }

    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub fn event_name(&self) -> &'static str {
        self.event_name
    }

    /// The item before the change (`OldImage`), if the record carries it.
    pub fn old_image(&self) -> Option<&ImageRef<'a>> {
        self.old.as_ref()
    }

    /// The item after the change (`NewImage`), if the record carries it.
    pub fn new_image(&self) -> Option<&ImageRef<'a>> {
        self.new.as_ref()
    }

    /// The whole record as a value (see the crate documentation for its shape).
    pub fn to_value(&self) -> Result<Value, FormatError> {
        self.build(None)
    }

    /// As [`to_value`](Self::to_value), with only the named attributes in `old` and `new`.
    pub fn to_value_projected(&self, attributes: &[&str]) -> Result<Value, FormatError> {
        self.build(Some(attributes))
    }

    fn build(&self, only: Option<&[&str]>) -> Result<Value, FormatError> {
        let text = |s: &Option<Cow<'a, str>>| s.as_deref().map_or(Value::Null, Value::str);
        let image = |i: &Option<ImageRef<'a>>, only: Option<&[&str]>| -> Result<Value, FormatError> {
            match i {
                None => Ok(Value::Null),
                Some(i) => Ok(Value::Map(Arc::new(i.build(only)?))),
            }
        };
        Ok(Value::map([
            ("eventName", Value::str(self.event_name)),
            ("eventID", text(&self.event_id)),
            ("tableName", text(&self.table_name)),
            ("keys", image(&self.keys, None)?),
            ("old", image(&self.old, only)?),
            ("new", image(&self.new, only)?),
            ("sequenceNumber", text(&self.sequence_number)),
            (
                "approximateCreationTime",
                self.approximate_creation_ms.map_or(Value::Null, Value::from),
            ),
        ]))
    }
}

/// The parts of the `dynamodb` object the format reads.
#[derive(Default)]
struct Dynamodb<'a> {
    keys: Option<ImageRef<'a>>,
    old: Option<ImageRef<'a>>,
    new: Option<ImageRef<'a>>,
    sequence_number: Option<Cow<'a, str>>,
    time: Option<RawTime<'a>>,
}

impl<'a> Dynamodb<'a> {
    fn parse(cursor: &mut Cursor<'a>) -> Result<Dynamodb<'a>, FormatError> {
        if cursor.peek() != Some(b'{') {
            return Err(FormatError::NotAnObject("dynamodb"));
        }
        let mut out = Dynamodb::default();
        let mut micros = false;
        let mut time = None;
        cursor.object(|cursor, key| {
            if key.is("NewImage") {
                out.new = ImageRef::parse(cursor, "NewImage")?;
            } else if key.is("OldImage") {
                out.old = ImageRef::parse(cursor, "OldImage")?;
            } else if key.is("Keys") {
                out.keys = ImageRef::parse(cursor, "Keys")?;
            } else if key.is("SequenceNumber") {
                out.sequence_number = optional_string(cursor)?;
            } else if key.is("ApproximateCreationDateTime") {
                if !cursor.null()? {
                    if !matches!(cursor.peek(), Some(b'-' | b'0'..=b'9')) {
                        return Err(FormatError::Time("not a number".to_owned()));
                    }
                    time = Some(cursor.number()?);
                }
            } else if key.is("ApproximateCreationDateTimePrecision") {
                micros = optional_string(cursor)?.is_some_and(|p| p == "MICROSECOND");
            } else {
                cursor.skip()?;
            }
            Ok(())
        })?;
        out.time = time.map(|number| RawTime { number, micros });
        Ok(out)
    }
}

impl RawTime<'_> {
    /// Milliseconds since the epoch: microseconds when the record says so, seconds (as the
    /// DynamoDB Streams API gives them) when the value is below 10¹¹, else milliseconds.
    fn millis(&self) -> Result<u64, FormatError> {
        let value: f64 = self
            .number
            .parse()
            .map_err(|_| FormatError::Time(format!("{:?} is not a number", self.number)))?;
        if !(value >= 0.0 && value.is_finite()) {
            return Err(FormatError::Time(format!("{} is negative", self.number)));
        }
        let ms = if self.micros {
            value / 1000.0
        } else if value < 1e11 {
            (value * 1000.0).round()
        } else {
            value
        };
        Ok(ms as u64)
    }
}

impl<'a> ImageRef<'a> {
    /// Reads an image object (or `null`), recording each attribute's raw typed text.
    fn parse(cursor: &mut Cursor<'a>, field: &'static str) -> Result<Option<ImageRef<'a>>, FormatError> {
        if cursor.null()? {
            return Ok(None);
        }
        if cursor.peek() != Some(b'{') {
            return Err(FormatError::NotAnObject(field));
        }
        let mut attributes = Vec::with_capacity(8);
        cursor.object(|cursor, name| {
            attributes.push((name.decode()?, cursor.skip()?));
            Ok(())
        })?;
        Ok(Some(ImageRef { attributes }))
    }

    /// The raw JSON text of an attribute's typed value, as it appears in the record.
    pub fn raw(&self, attribute: &str) -> Option<&'a str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == attribute)
            .map(|(_, raw)| *raw)
    }

    /// An attribute's value, or `None` when the image lacks it.
    pub fn get(&self, attribute: &str) -> Result<Option<Value>, FormatError> {
        self.raw(attribute)
            .map(|raw| dynamo::typed(&mut Cursor::new(raw), &Path::Attribute(attribute)))
            .transpose()
    }

    /// The whole image as a map of attribute name → value.
    pub fn to_value(&self) -> Result<Value, FormatError> {
        Ok(Value::Map(Arc::new(self.build(None)?)))
    }

    fn build(&self, only: Option<&[&str]>) -> Result<ValueMap, FormatError> {
        let mut out = ValueMap::new();
        for (name, raw) in &self.attributes {
            if only.is_some_and(|only| !only.contains(&&**name)) {
                continue;
            }
            let value = dynamo::typed(&mut Cursor::new(raw), &Path::Attribute(name))?;
            out.entry(Arc::from(&**name)).or_insert(value);
        }
        Ok(out)
    }
}

fn optional_string<'a>(cursor: &mut Cursor<'a>) -> Result<Option<Cow<'a, str>>, FormatError> {
    if cursor.null()? {
        return Ok(None);
    }
    Ok(Some(cursor.raw_string()?.decode()?))
}
