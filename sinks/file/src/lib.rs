//! The `file` and `stdout` sinks: JSON lines, one per update, in one of three modes.
//!
//! ```text
//!  rows of a closed time, sorted ──▶ encode per mode ──▶ buffered writer ──commit──▶ flush (+fsync for files)
//! ```
//!
//! **Encoding.** Each line is one JSON object:
//! - `upsert`: `{"key": K, "value": V}` for a key's new value at a time, and
//!   `{"key": K, "value": null}` (a tombstone) when its value was retracted with no
//!   replacement. A key given several values at once (not a function of the key) writes
//!   each of them.
//! - `changelog`: `{"time": T, "diff": D, "key": K, "value": V}` for every update, `key`
//!   omitted when the collection is not keyed.
//! - `append`: the record value itself, or its encoding when the sink has a `format` other
//!   than `json`. A time's records are written in the order of their source positions
//!   (derived records last), so events keep their input order. Retractions are not written
//!   (the planner rejects append mode on collections that retract, except outputs whose rows
//!   are events to their consumer).
//!
//! **Delivery guarantee.** Lines are written in time order and flushed at every frontier
//! advance; a file is also `fsync`ed then, so everything before the committed frontier
//! survives a crash. Without checkpoints a file sink truncates its file at start: a run
//! writes the whole output of that run. With checkpoints, [`Sink::checkpoint`] records the
//! file's length after the times before the checkpoint, and a restart
//! ([`JsonLinesSink::resume`]) cuts the file back to it before writing on, so every line is
//! written exactly once across crashes. Standard output cannot be cut back: it is
//! at-least-once.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use sluice_runtime::record::{Diff, Row, Time};
use sluice_runtime::sink::{Encode, Record, Sink, SinkError, for_each_record};
use sluice_runtime::spec::SinkMode;
use sluice_runtime::value::{Json, Value};

/// A JSON-lines sink writing to any `Write` (a file or standard output).
pub struct JsonLinesSink<W: Write> {
    out: BufWriter<W>,
    mode: SinkMode,
    sync: Option<File>,
    durable: Option<Option<Time>>,
    /// An upsert line being made.
    line: Vec<u8>,
    encoder: Option<Arc<dyn Encode>>,
    /// Bytes written so far (the file's length once flushed).
    written: u64,
}

impl JsonLinesSink<File> {
    /// A sink that (re)creates the file at `path`.
    pub fn create(path: &Path, mode: SinkMode) -> Result<Self, SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| SinkError::Config(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let file =
            File::create(path).map_err(|e| SinkError::Config(format!("cannot create {}: {e}", path.display())))?;
        let sync = file
            .try_clone()
            .map_err(|e| SinkError::Io(format!("{}: {e}", path.display())))?;
        let mut sink = JsonLinesSink::new(file, mode);
        sink.sync = Some(sync);
        Ok(sink)
    }
}

impl JsonLinesSink<File> {
    /// A sink that continues the file at `path` from a checkpoint: what the file holds past
    /// `resume` (the length [`Sink::checkpoint`] returned) was written after the checkpoint
    /// and is cut off, so the restarted run writes it exactly once.
    pub fn resume(path: &Path, mode: SinkMode, resume: &[u8]) -> Result<Self, SinkError> {
        let len: u64 = std::str::from_utf8(resume)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                SinkError::Config(format!("{}: the checkpoint's position is not a length", path.display()))
            })?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| SinkError::Config(format!("cannot reopen {}: {e}", path.display())))?;
        let actual = file.metadata().map_err(io)?.len();
        if actual < len {
            return Err(SinkError::Config(format!(
                "{} has {actual} bytes but the checkpoint says {len} were durable; it was changed or lost",
                path.display()
            )));
        }
        file.set_len(len).map_err(io)?;
        file.sync_data().map_err(io)?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len)).map_err(io)?;
        let sync = file.try_clone().map_err(io)?;
        let mut sink = JsonLinesSink::new(file, mode);
        sink.sync = Some(sync);
        sink.written = len;
        Ok(sink)
    }
}

impl JsonLinesSink<std::io::Stdout> {
    /// A sink writing to standard output.
    pub fn stdout(mode: SinkMode) -> Self {
        JsonLinesSink::new(std::io::stdout(), mode)
    }
}

impl<W: Write> JsonLinesSink<W> {
    /// A sink over any writer.
    pub fn new(out: W, mode: SinkMode) -> Self {
        JsonLinesSink {
            out: BufWriter::with_capacity(256 * 1024, out),
            mode,
            sync: None,
            durable: None,
            line: Vec::with_capacity(256),
            encoder: None,
            written: 0,
        }
    }

    /// Writes append-mode records with `encoder` instead of as JSON values (`None`: as JSON).
    pub fn with_encoder(mut self, encoder: Option<Arc<dyn Encode>>) -> Self {
        self.encoder = encoder;
        self
    }

    /// Writes `record` as one line: in upsert mode `{"key": K, "value": V}` (a tombstone's
    /// value null), in the others its payload.
    fn write_line(&mut self, record: Record<'_>) -> Result<(), SinkError> {
        let payload = record.payload.unwrap_or(b"null");
        let line: &[u8] = if self.mode == SinkMode::Upsert {
            self.line.clear();
            self.line.extend_from_slice(b"{\"key\":");
            serde_json::to_writer(&mut self.line, &Json(record.key.unwrap_or(&Value::Null))).map_err(io)?;
            self.line.extend_from_slice(b",\"value\":");
            self.line.extend_from_slice(payload);
            self.line.push(b'}');
            &self.line
        } else {
            payload
        };
        self.out.write_all(line).map_err(io)?;
        self.out.write_all(b"\n").map_err(io)?;
        self.written += line.len() as u64 + 1;
        Ok(())
    }
}

fn io(e: impl std::fmt::Display) -> SinkError {
    SinkError::Io(e.to_string())
}

impl<W: Write> Sink for JsonLinesSink<W> {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        // A handle of its own: `write_line` borrows the whole sink.
        let encoder = self.encoder.clone();
        for_each_record(self.mode, encoder.as_deref(), time, updates, |record| {
            self.write_line(record)
        })
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.out.flush().map_err(io)?;
        if let Some(file) = &self.sync {
            file.sync_data().map_err(io)?;
        }
        self.durable = Some(frontier);
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        // Before the first commit nothing is durable: the frontier is the start of time.
        self.durable.unwrap_or(Some(0))
    }

    fn checkpoint(&mut self, _frontier: Time) -> Result<Option<Vec<u8>>, SinkError> {
        // Standard output cannot be cut back: it is written again after a restart.
        let Some(file) = &self.sync else {
            return Ok(None);
        };
        self.out.flush().map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(Some(self.written.to_string().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::record::Pos;

    fn row(key: &str, val: i64) -> Row {
        Row {
            key: Value::map([("id", Value::from(key))]),
            val: Value::map([("v", Value::Int(val))]),
            pos: Pos::NONE,
        }
    }

    fn written(mode: SinkMode, batches: &[(Time, Vec<(Row, Diff)>)]) -> String {
        let mut buf = Vec::new();
        {
            let mut sink = JsonLinesSink::new(&mut buf, mode);
            for (t, updates) in batches {
                sink.write(*t, updates).expect("write");
            }
            sink.commit(None).expect("commit");
        }
        String::from_utf8(buf).expect("utf8")
    }

    #[test]
    fn upsert_writes_new_values_and_tombstones() {
        let out = written(
            SinkMode::Upsert,
            &[
                (1, vec![(row("a", 1), 1)]),
                (2, vec![(row("a", 1), -1), (row("a", 2), 1), (row("b", 5), -1)]),
            ],
        );
        assert_eq!(
            out,
            "{\"key\":{\"id\":\"a\"},\"value\":{\"v\":1}}\n{\"key\":{\"id\":\"a\"},\"value\":{\"v\":2}}\n{\"key\":{\"id\":\"b\"},\"value\":null}\n"
        );
    }

    #[test]
    fn changelog_writes_every_diff_with_time() {
        let out = written(SinkMode::Changelog, &[(7, vec![(row("a", 1), -1)])]);
        assert_eq!(
            out,
            "{\"time\":7,\"diff\":-1,\"key\":{\"id\":\"a\"},\"value\":{\"v\":1}}\n"
        );
    }

    #[test]
    fn append_writes_values_with_multiplicity() {
        let out = written(SinkMode::Append, &[(1, vec![(row("a", 1), 2)])]);
        assert_eq!(out, "{\"v\":1}\n{\"v\":1}\n");
    }

    fn at(key: &str, val: i64, offset: u64) -> Row {
        Row {
            pos: Pos {
                source: 0,
                partition: 0,
                offset,
            },
            ..row(key, val)
        }
    }

    #[test]
    fn append_keeps_source_order_within_a_time() {
        // Sorted by row the order would be a, b, c; by position it is c, a, b, then derived rows.
        let updates = vec![
            (at("a", 1, 5), 1),
            (row("b", 0), 1),
            (at("b", 2, 9), 1),
            (at("c", 3, 2), 1),
        ];
        let out = written(SinkMode::Append, &[(1, updates)]);
        assert_eq!(out, "{\"v\":3}\n{\"v\":1}\n{\"v\":2}\n{\"v\":0}\n");
    }

    struct Upper;
    impl Encode for Upper {
        fn encode(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), String> {
            out.extend_from_slice(row.key.to_json_string().to_uppercase().as_bytes());
            Ok(())
        }
    }

    #[test]
    fn append_uses_the_encoder() {
        let mut buf = Vec::new();
        {
            let mut sink = JsonLinesSink::new(&mut buf, SinkMode::Append).with_encoder(Some(Arc::new(Upper)));
            sink.write(1, &[(row("a", 1), 1), (row("b", 1), -1)]).expect("write");
            sink.commit(None).expect("commit");
        }
        assert_eq!(String::from_utf8(buf).expect("utf8"), "{\"ID\":\"A\"}\n");
    }

    #[test]
    fn a_resumed_file_drops_what_came_after_its_checkpoint_and_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let mut sink = JsonLinesSink::create(&path, SinkMode::Append).expect("create");
        sink.write(1, &[(row("a", 1), 1)]).expect("write");
        let position = sink.checkpoint(1).expect("checkpoint").expect("a file has a position");
        // Written after the checkpoint, then the process dies.
        sink.write(2, &[(row("b", 2), 1)]).expect("write");
        sink.commit(Some(3)).expect("commit");
        drop(sink);

        let mut resumed = JsonLinesSink::resume(&path, SinkMode::Append, &position).expect("resume");
        resumed.write(2, &[(row("c", 3), 1)]).expect("write");
        resumed.commit(None).expect("commit");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"v\":1}\n{\"v\":3}\n",
            "the line written after the checkpoint is gone, the new one follows"
        );
        // A file shorter than its checkpoint says was durable is refused.
        std::fs::write(&path, "").expect("truncate");
        assert!(JsonLinesSink::resume(&path, SinkMode::Append, &position).is_err());
    }
}
