//! Change records and scanned items as the dataflow reads them, and the stateless filter.

use serde::{Deserialize, Serialize};
use sluice_runtime::Value;

use crate::view::{View, ViewError, image_version};

/// The kind of a DynamoDB change record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Event {
    /// A new item (only a new image).
    Insert,
    /// A changed item (both images).
    Modify,
    /// A deleted item (only an old image).
    Remove,
}

impl Event {
    /// The event of an `eventName`.
    pub fn parse(name: &str) -> Option<Event> {
        match name {
            "INSERT" => Some(Event::Insert),
            "MODIFY" => Some(Event::Modify),
            "REMOVE" => Some(Event::Remove),
            _ => None,
        }
    }
}

/// An item image: the view the dataflow reads and the item version that orders it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Image {
    /// The item version `V` (0 when absent).
    pub version: u64,
    /// The contact-discovery view.
    pub view: View,
}

impl Image {
    /// Reads an image or a scanned item.
    pub fn from_item(item: &Value) -> Result<Image, ViewError> {
        Ok(Image {
            version: image_version(item)?,
            view: View::from_image(item)?,
        })
    }
}

/// When a change happened, to order two accounts' claims of one number.
///
/// Derived `Ord` compares the approximate creation time first, then the sequence number,
/// which breaks ties within a millisecond on one shard; a scanned item is [`Stamp::SCAN`],
/// older than any change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// `approximateCreationTime` in milliseconds since the epoch (0 when absent).
    pub time_ms: u64,
    /// The record's `sequenceNumber` (0 when absent or longer than 38 digits).
    pub sequence: u128,
}

impl Stamp {
    /// The stamp of a scanned item.
    pub const SCAN: Stamp = Stamp {
        time_ms: 0,
        sequence: 0,
    };
}

/// A decoded change record whose images are valid for its event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Change {
    /// INSERT, MODIFY or REMOVE.
    pub event: Event,
    /// The old image (present for MODIFY and REMOVE).
    pub old: Option<Image>,
    /// The new image (present for INSERT and MODIFY).
    pub new: Option<Image>,
    /// When the change happened.
    pub stamp: Stamp,
}

/// Why a change record is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The record is not a map.
    #[error("a change record is a map, got {0}")]
    NotARecord(&'static str),
    /// `eventName` is missing or unknown.
    #[error("eventName {0} is not INSERT, MODIFY or REMOVE")]
    Event(String),
    /// An image the event needs is absent.
    #[error("{event} record without {image}{hint}")]
    MissingImage {
        /// The event.
        event: &'static str,
        /// `OldImage` or `NewImage`.
        image: &'static str,
        /// Advice on the stream's configuration.
        hint: &'static str,
    },
    /// An image has no valid view.
    #[error("{image}: {error}")]
    Image {
        /// `OldImage` or `NewImage`.
        image: &'static str,
        /// What is wrong with it.
        error: ViewError,
    },
    /// `approximateCreationTime` or `sequenceNumber` has the wrong type.
    #[error("{field}: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Change {
    /// Reads a decoded `dynamodb-stream` record: `eventName`, `old`, `new`,
    /// `approximateCreationTime` and `sequenceNumber` (sluice-formats' shape).
    pub fn from_record(record: &Value) -> Result<Change, ChangeError> {
        let map = record.as_map().ok_or(ChangeError::NotARecord(record.type_name()))?;
        let event = match map.get("eventName") {
            Some(Value::Str(name)) => Event::parse(name).ok_or_else(|| ChangeError::Event(format!("{name:?}")))?,
            Some(other) => return Err(ChangeError::Event(other.to_json_string())),
            None => return Err(ChangeError::Event("(missing)".to_owned())),
        };
        let image = |field: &str, image: &'static str| -> Result<Option<Image>, ChangeError> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(item) => Image::from_item(item)
                    .map(Some)
                    .map_err(|error| ChangeError::Image { image, error }),
            }
        };
        let (needs_old, needs_new, name) = match event {
            Event::Insert => (false, true, "INSERT"),
            Event::Modify => (true, true, "MODIFY"),
            Event::Remove => (true, false, "REMOVE"),
        };
        // Only the images the event uses are read: an INSERT's stray old image is not ours to judge.
        let old = if needs_old { image("old", "OldImage")? } else { None };
        let new = if needs_new { image("new", "NewImage")? } else { None };
        let hint = if event == Event::Modify {
            ": the stream must carry NEW_AND_OLD_IMAGES"
        } else {
            ""
        };
        if needs_old && old.is_none() {
            return Err(ChangeError::MissingImage {
                event: name,
                image: "OldImage",
                hint,
            });
        }
        if needs_new && new.is_none() {
            return Err(ChangeError::MissingImage {
                event: name,
                image: "NewImage",
                hint,
            });
        }
        let time_ms = match map.get("approximateCreationTime") {
            None | Some(Value::Null) => 0,
            Some(Value::Int(t)) => u64::try_from(*t).unwrap_or(0),
            Some(Value::UInt(t)) => *t,
            Some(other) => {
                return Err(ChangeError::Field {
                    field: "approximateCreationTime",
                    problem: format!("expected milliseconds, got {}", other.type_name()),
                });
            }
        };
        let sequence = match map.get("sequenceNumber") {
            None | Some(Value::Null) => 0,
            Some(Value::Str(s)) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().unwrap_or(0),
            Some(other) => {
                return Err(ChangeError::Field {
                    field: "sequenceNumber",
                    problem: format!("expected a string of digits, got {}", other.to_json_string()),
                });
            }
        };
        Ok(Change {
            event,
            old,
            new,
            stamp: Stamp { time_ms, sequence },
        })
    }

    /// The updates this change publishes (the filter of spec/cds.md).
    pub fn updates(&self) -> Vec<View> {
        filter(
            self.event,
            self.old.as_ref().map(|i| &i.view),
            self.new.as_ref().map(|i| &i.view),
        )
    }
}

/// The filter of spec/cds.md: the views a change publishes, in order.
///
/// 1. INSERT → the new view.
/// 2. REMOVE → the old view, not discoverable.
/// 3. MODIFY of the number → the old view not discoverable, then the new view.
/// 4. MODIFY of the uuid, `discoverable`, `pni` or `uak` → the new view.
/// 5. Anything else → nothing.
///
/// An image the event needs but lacks publishes nothing.
pub fn filter(event: Event, old: Option<&View>, new: Option<&View>) -> Vec<View> {
    match (event, old, new) {
        (Event::Insert, _, Some(new)) => vec![new.clone()],
        (Event::Remove, Some(old), _) => vec![old.removal()],
        (Event::Modify, Some(old), Some(new)) if old.e164 != new.e164 => vec![old.removal(), new.clone()],
        (Event::Modify, Some(old), Some(new)) if old != new => vec![new.clone()],
        _ => Vec::new(),
    }
}
