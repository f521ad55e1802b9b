//! File and stdout sinks: JSON lines in upsert, changelog or append mode.
