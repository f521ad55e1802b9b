//! File source: JSON lines from files or globs, optionally tailed.
