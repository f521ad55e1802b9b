//! The table file source: a whole table in one file, re-read when it changes.
//!
//! ```text
//!  file ──stat (len, mtime, inode)──▶ changed? ──read whole──▶ parse ──diff vs emitted──▶ queue
//!                                                                                  │
//!        RawRecord { payload: row JSON }  (new or changed key) ◀──────────── poll(max)
//!        RawRecord { payload: None, key: {"id":…} }  (key gone)
//! ```
//!
//! Made for small, hand-edited tables such as the fanout hub's subscriber list, which must
//! change without a restart. It feeds an **upsert** source keyed by the same key fields, and
//! its records are JSON whatever the file's format (decode them as `json`).
//!
//! **Whole-file reload.** A table file is edited anywhere, not appended to, so there is no
//! byte position to resume from: on each poll the reader checks the file's length,
//! modification time and identity (inode and change time on Unix), and when any changed it
//! reads and parses the whole file. A file whose modification time is within a second of
//! when it was last read is read again even when nothing seems changed, because a second
//! edit within the timestamp's granularity would look the same ("racy" timestamps, as git
//! calls them); past that second an unchanged stamp means an unchanged file.
//!
//! **Formats.** JSON lines: every non-blank line is a row, a JSON object. TOML: every table
//! of every top-level array of tables (`[[subscriber]]`) is a row; nested tables, inline
//! tables and arrays become JSON objects and lists, datetimes their TOML text. Other
//! top-level keys (a `[subscriber]` table, a table of tables keyed by id) are not rows and
//! are ignored with a warning, to keep one way of writing a table.
//!
//! **Changes by diff.** The reader remembers, for every key it emitted, a 64-bit hash of the
//! row's canonical JSON. A reload emits the row (its canonical JSON) for every key that is
//! new or whose hash changed, and a tombstone (no payload, the key fields as a JSON object
//! in `key`, e.g. `{"id":"billing"}`) for every key no longer in the file; unchanged rows
//! emit nothing. Rows also carry their key in `key`, so the source works keyed by fields or
//! by message key. A key written twice in one file keeps its **last** row.
//!
//! **Bad rows.** A line that is not a JSON object, or a row without a key field, is passed
//! through as a payload of its bytes so the runtime dead-letters it with the reason; it is
//! not remembered, and it is passed on once per run while it stays in the file.
//!
//! **Parse failures keep the old table.** A TOML file that does not parse, a file that is
//! missing for a moment (editors that save by renaming a new file over the old), or a file
//! that cannot be read keeps the previous table: a half-written save must not unsubscribe
//! everyone. A file that looks half-written (TOML that does not parse, or JSON lines whose
//! last line is unterminated and malformed) and changed within the last second is read again
//! at the next poll; a file that changes while it is read is read again at once. A writer
//! that truncates and rewrites in place can still be caught between the two, with a shorter
//! table as a result (repaired at the next reload): save by rename to avoid it.
//!
//! **Records and positions.** The native position, [`Position::Table`], is the emitted table
//! itself: a sorted list of `[key JSON, hash as a decimal string]` pairs. Resuming from a
//! checkpointed position re-reads the file and emits only the differences, including
//! tombstones for rows deleted while the pipeline was down; [`Position::Start`] is the empty
//! table, so everything is new. A row's or tombstone's offset is an ordinal that increases
//! with every record the reader emits, because the upsert envelope applies the records of
//! one time in offset order: a key changed twice within one epoch must keep its last value.
//! A bad row's offset is its line number (of the `[[…]]` header in TOML), which its dead
//! letter reports as `line`.
//!
//! **Delivery guarantee.** After every poll the emitted table and the position agree, so a
//! resumed reader emits exactly the changes the restored pipeline has not seen; changes
//! that cancel out while the pipeline is down (a row removed and put back) are not emitted.

mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sluice_runtime::Value;
use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError};

use crate::io_error;

/// How long after its modification time a file's stamp is trusted to reflect its content.
const SETTLE: Duration = Duration::from_secs(1);

/// Reads of a file that keeps changing while read, per poll, before waiting for the next.
const READ_ATTEMPTS: usize = 3;

/// How a table file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// One JSON object per line.
    JsonLines,
    /// Arrays of tables (`[[subscriber]]`), every table a row.
    Toml,
}

impl TableFormat {
    /// The format a file name implies: `.toml` (any case) is TOML, anything else JSON lines.
    pub fn from_path(path: impl AsRef<Path>) -> TableFormat {
        match path.as_ref().extension() {
            Some(ext) if ext.eq_ignore_ascii_case("toml") => TableFormat::Toml,
            _ => TableFormat::JsonLines,
        }
    }
}

/// A source reading a whole table from one file, re-read when it changes.
#[derive(Clone, Debug)]
pub struct TableFileSource {
    path: PathBuf,
    format: TableFormat,
    key_fields: Vec<String>,
    poll_ms: u64,
}

impl TableFileSource {
    /// A table of `path` in `format`, keyed by `key_fields` (dotted paths, as in the upsert
    /// envelope's key), whose file is checked for changes at most every `poll_ms`.
    pub fn new(
        path: impl Into<PathBuf>,
        format: TableFormat,
        key_fields: Vec<String>,
        poll_ms: u64,
    ) -> TableFileSource {
        TableFileSource {
            path: path.into(),
            format,
            key_fields,
            poll_ms,
        }
    }

    fn partition_id(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Source for TableFileSource {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        if self.key_fields.is_empty() {
            return Err(SourceError::Config(format!(
                "the table file `{}` needs key fields: rows are told apart by their key",
                self.path.display()
            )));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(SourceError::Config(format!(
                    "`{}` is not a regular file",
                    self.path.display()
                )));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(SourceError::Config(format!(
                    "`{}` does not exist (relative paths are resolved against the pipeline file's directory)",
                    self.path.display()
                )));
            }
            Err(e) => return Err(io_error(&self.path, e)),
        }
        Ok(vec![PartitionInfo {
            id: self.partition_id(),
            parents: Vec::new(),
        }])
    }

    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        if partition.id != self.partition_id() {
            return Err(SourceError::Config(format!(
                "the table file `{}` has no partition `{}`",
                self.path.display(),
                partition.id
            )));
        }
        let emitted = match from {
            Position::Start => BTreeMap::new(),
            Position::Table(table) => decode_position(table)?,
            other => {
                return Err(SourceError::Config(format!(
                    "a table file cannot resume from {other}; expected a table position"
                )));
            }
        };
        Ok(Box::new(TableReader::new(self, emitted)))
    }

    fn bounded(&self) -> bool {
        // Watched for changes for as long as the pipeline runs.
        false
    }

    fn offset_label(&self) -> &'static str {
        // Only bad rows reach dead letters, and their offset is their line number.
        "line"
    }
}

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode and change time on Unix: a file renamed over the old one, or rewritten with
    /// its modification time put back (`cp -p`), differs here.
    identity: (u64, i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let identity = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        #[cfg(not(unix))]
        let identity = (0, 0, 0);
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            identity,
        }
    }

    /// Whether the file was modified less than [`SETTLE`] before `at` (or its time is unknown).
    fn recent_at(&self, at: SystemTime) -> bool {
        match self.modified {
            // A modification time in the future is not "recent": waiting would never end.
            Some(m) => at.duration_since(m).is_ok_and(|d| d < SETTLE),
            None => true,
        }
    }
}

/// One change waiting to be emitted.
#[derive(Debug)]
enum Change {
    /// A new or changed row.
    Upsert { key: String, hash: u64, json: Vec<u8> },
    /// A key no longer in the file.
    Delete { key: String },
    /// A bad row, to be dead-lettered; `hash` of its bytes.
    Reject { line: u64, hash: u64, bytes: Vec<u8> },
}

/// Reads one table file.
struct TableReader {
    path: PathBuf,
    format: TableFormat,
    keys: Vec<Vec<String>>,
    poll_every: Duration,
    last_check: Option<Instant>,
    /// Key JSON → hash of every row emitted and not deleted since.
    emitted: BTreeMap<String, u64>,
    /// `emitted` as a position, rebuilt when it changes (positions are asked for often).
    position: Position,
    /// The difference between `emitted` and the file as last read, not yet emitted.
    queue: VecDeque<Change>,
    /// The stamp of the file as last used, and when it was taken.
    seen: Option<(Stamp, SystemTime)>,
    /// Hashes of bad rows passed on while they stayed in the file: not passed on again.
    reported: HashSet<u64>,
    /// Offset of the last row or tombstone emitted.
    ordinal: u64,
}

impl TableReader {
    fn new(source: &TableFileSource, emitted: BTreeMap<String, u64>) -> TableReader {
        TableReader {
            path: source.path.clone(),
            format: source.format,
            keys: source
                .key_fields
                .iter()
                .map(|f| f.split('.').map(str::to_owned).collect())
                .collect(),
            poll_every: Duration::from_millis(source.poll_ms),
            last_check: None,
            position: encode_position(&emitted),
            emitted,
            queue: VecDeque::new(),
            seen: None,
            reported: HashSet::new(),
            ordinal: 0,
        }
    }

    /// The file's stamp, or `None` when it is missing (for now: keep the table).
    fn stat(&self) -> Result<Option<Stamp>, SourceError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(Some(Stamp::of(&meta))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::debug!(file = %self.path.display(), "table file is missing; keeping the previous table");
                Ok(None)
            }
            Err(e) => Err(io_error(&self.path, e)),
        }
    }

    /// The whole file with the stamp it had throughout the read, or `None` when it went
    /// missing or kept changing while read.
    fn read_stable(&self, mut before: Stamp) -> Result<Option<(Stamp, Vec<u8>)>, SourceError> {
        for _ in 0..READ_ATTEMPTS {
            let bytes = match std::fs::read(&self.path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error(&self.path, e)),
            };
            let Some(after) = self.stat()? else {
                return Ok(None);
            };
            if after == before && bytes.len() as u64 == after.len {
                return Ok(Some((after, bytes)));
            }
            before = after;
        }
        tracing::debug!(file = %self.path.display(), "table file kept changing while read; reading it at the next poll");
        Ok(None)
    }

    /// Checks the file and, when it changed, queues its differences from what was emitted.
    fn refresh(&mut self) -> Result<(), SourceError> {
        let now = Instant::now();
        if self.last_check.is_some_and(|t| now.duration_since(t) < self.poll_every) {
            return Ok(());
        }
        self.last_check = Some(now);
        let Some(stamp) = self.stat()? else {
            return Ok(());
        };
        if let Some((seen, at)) = self.seen
            && seen == stamp
            && !seen.recent_at(at)
        {
            return Ok(());
        }
        // Taken before reading: a write after it changes the stamp or falls in the window.
        let read_at = SystemTime::now();
        let Some((stamp, bytes)) = self.read_stable(stamp)? else {
            return Ok(());
        };
        // Warnings about this version of the file were given when it was first read.
        let first_read = self.seen.is_none_or(|(seen, _)| seen != stamp);
        let parsed = match self.format {
            TableFormat::JsonLines => Ok(parse::json_lines(&bytes, &self.keys)),
            TableFormat::Toml => parse::toml(&bytes, &self.keys),
        };
        let half_written = match &parsed {
            Ok(table) => table.unterminated_reject,
            Err(_) => true,
        };
        if half_written && stamp.recent_at(read_at) {
            tracing::debug!(file = %self.path.display(), "table file looks half-written; reading it again at the next poll");
            return Ok(());
        }
        self.seen = Some((stamp, read_at));
        let table = match parsed {
            Ok(table) => table,
            Err(error) => {
                if first_read {
                    tracing::warn!(file = %self.path.display(), %error, "table file does not parse; keeping the previous table");
                }
                return Ok(());
            }
        };
        if first_read {
            for name in &table.ignored {
                tracing::warn!(
                    file = %self.path.display(), key = %name,
                    "top-level key is not an array of tables (`[[{name}]]`); its content is not part of the table"
                );
            }
        }
        self.queue = self.diff(table);
        Ok(())
    }

    /// The changes that turn the emitted table into `table`: bad rows and new or changed
    /// rows in file order, then tombstones in key order.
    fn diff(&mut self, table: parse::ParsedTable) -> VecDeque<Change> {
        let rejected: Vec<(u64, parse::Rejected)> = table
            .rejected
            .into_iter()
            .map(|r| (sluice_runtime::source::stable_hash(&r.bytes), r))
            .collect();
        // A bad row fixed (or removed) and written again is passed on again.
        let present: HashSet<u64> = rejected.iter().map(|(hash, _)| *hash).collect();
        self.reported.retain(|h| present.contains(h));
        let mut changes: Vec<(u64, Change)> = rejected
            .into_iter()
            .filter(|(hash, _)| !self.reported.contains(hash))
            .map(|(hash, r)| {
                (
                    r.line,
                    Change::Reject {
                        line: r.line,
                        hash,
                        bytes: r.bytes,
                    },
                )
            })
            .collect();
        let deleted: Vec<Change> = self
            .emitted
            .keys()
            .filter(|k| !table.rows.contains_key(*k))
            .map(|k| Change::Delete { key: k.clone() })
            .collect();
        for (key, row) in table.rows {
            if self.emitted.get(&key) != Some(&row.hash) {
                let change = Change::Upsert {
                    key,
                    hash: row.hash,
                    json: row.json,
                };
                changes.push((row.line, change));
            }
        }
        changes.sort_by_key(|(line, _)| *line);
        changes.into_iter().map(|(_, c)| c).chain(deleted).collect()
    }

    /// Emits up to `max` queued changes, remembering each as emitted; returns how many.
    fn drain(&mut self, out: &mut Vec<RawRecord>, max: usize) -> usize {
        let mut n = 0;
        let mut changed = false;
        while n < max {
            let Some(change) = self.queue.pop_front() else {
                break;
            };
            match change {
                Change::Upsert { key, hash, json } => {
                    self.ordinal += 1;
                    out.push(RawRecord {
                        offset: self.ordinal,
                        key: Some(key.clone().into_bytes()),
                        payload: Some(json),
                    });
                    self.emitted.insert(key, hash);
                    changed = true;
                }
                Change::Delete { key } => {
                    self.ordinal += 1;
                    self.emitted.remove(&key);
                    out.push(RawRecord {
                        offset: self.ordinal,
                        key: Some(key.into_bytes()),
                        payload: None,
                    });
                    changed = true;
                }
                Change::Reject { line, hash, bytes } => {
                    self.reported.insert(hash);
                    out.push(RawRecord {
                        offset: line,
                        key: None,
                        payload: Some(bytes),
                    });
                }
            }
            n += 1;
        }
        if changed {
            self.position = encode_position(&self.emitted);
        }
        n
    }
}

impl PartitionReader for TableReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        // Changes left over from a reload come first; the file is looked at again once they
        // are out (a newer reload diffs against what was emitted, so nothing is lost).
        if self.queue.is_empty() {
            self.refresh()?;
        }
        let n = self.drain(out, max);
        Ok(if n > 0 || !self.queue.is_empty() {
            ReadState::More
        } else {
            ReadState::Idle
        })
    }

    fn position(&self) -> Position {
        self.position.clone()
    }
}

/// The emitted table as a position: `[[key JSON, hash as a decimal string], …]`, sorted
/// by key (decimal strings, because a `u64` does not fit every JSON reader's numbers).
fn encode_position(emitted: &BTreeMap<String, u64>) -> Position {
    Position::Table(Value::list(emitted.iter().map(|(key, hash)| {
        Value::list([Value::str(key.as_str()), Value::str(hash.to_string())])
    })))
}

/// The emitted table a position holds.
fn decode_position(table: &Value) -> Result<BTreeMap<String, u64>, SourceError> {
    let bad = |why: String| SourceError::Config(format!("a table file cannot resume from this position: {why}"));
    let rows = table.as_list().ok_or_else(|| {
        bad(format!(
            "expected a list of [key, hash] pairs, found {}",
            table.type_name()
        ))
    })?;
    let mut emitted = BTreeMap::new();
    for row in rows {
        let (key, hash) = match row.as_list() {
            Some([Value::Str(key), hash]) => (key, hash),
            _ => return Err(bad(format!("expected a [key, hash] pair, found {row}"))),
        };
        if !matches!(Value::from_json_str(key), Ok(Value::Map(_))) {
            return Err(bad(format!("the key `{key}` is not a JSON object")));
        }
        let hash = match hash {
            Value::Str(s) => s.parse::<u64>().ok(),
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::UInt(u) => Some(*u),
            _ => None,
        }
        .ok_or_else(|| bad(format!("the hash {hash} is not an unsigned 64-bit integer")))?;
        emitted.insert(key.to_string(), hash);
    }
    Ok(emitted)
}
