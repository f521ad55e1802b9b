//! The sluice engine: values, pipeline specs, planning, timely execution, and the contracts
//! that sources and sinks implement.

pub mod arrangements;
pub mod checkpoint;
pub mod cluster;
pub mod envelope;
pub mod exec;
pub mod ingest;
pub mod log_limit;
pub mod metrics;
pub mod operators;
pub mod progress;
pub mod record;
pub mod recovery;
pub mod sink;
pub mod source;
pub mod spec;
pub mod testing;
pub mod value;

pub use record::{DeadLetter, DeadLetters, Diff, Pos, Row, Rows, Time};
pub use value::Value;
