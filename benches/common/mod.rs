//! What the benchmarks share: the workload generator beside the repository, command-line
//! lists, and reading numbers out of `sluice run`'s summary line.

#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/bench/gen.py`, if it is beside the repository.
pub fn generator() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.parent()?.join("shared/bench/gen.py");
    script.exists().then_some(script)
}

/// A comma-separated list argument (`1,2,4`), skipping what does not parse.
pub fn list<T: std::str::FromStr>(value: Option<String>) -> Option<Vec<T>> {
    value.map(|v| v.split(',').filter_map(|w| w.parse().ok()).collect())
}

/// The text between `start` and the next `end` in `text`.
pub fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    text.split(start).nth(1)?.split(end).next()
}

pub mod procfs;
