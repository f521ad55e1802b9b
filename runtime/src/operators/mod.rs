//! Timely/differential operators the engine and the dataflows share.

pub mod fold;
pub mod named;
