//! Events: a topic and the request description the subscribers' deliveries are made from.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_runtime::{Pos, Value};

use crate::request::{Request, RequestError};

/// An event, read and checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The topic it was published to.
    pub topic: Arc<str>,
    /// The whole record, which filters read (`data.body.x`).
    pub record: Value,
    /// The request its deliveries make.
    pub request: Request,
    /// Where it was read.
    pub pos: Pos,
}

/// Why a record is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The record is not an object with a string `topic` and an object `data`.
    #[error("an event is an object with a string `topic` and an object `data`")]
    Shape,
    /// `data` is not a usable request description.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl Event {
    /// Reads an event record (`{"topic", "data"}`).
    pub fn read(record: &Value, pos: Pos) -> Result<Event, EventError> {
        let topic = record.get("topic").and_then(Value::as_str).ok_or(EventError::Shape)?;
        let data = record
            .get("data")
            .filter(|d| d.as_map().is_some())
            .ok_or(EventError::Shape)?;
        Ok(Event {
            topic: Arc::from(topic),
            request: Request::from_data(data)?,
            record: record.clone(),
            pos,
        })
    }
}
