//! The expression language of pipelines: CEL compiled once, evaluated over records.
