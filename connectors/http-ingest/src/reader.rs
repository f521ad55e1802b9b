//! Reading one partition's log from a position, never past its durable end.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use sluice_runtime::source::{Lag, PartitionReader, Position, RawRecord, ReadState, SourceError};

use crate::commit::{Committed, read_committed};
use crate::log::{PartitionLog, list_segments, read_base, segment_path};

/// How much of a segment one read takes.
const CHUNK: usize = 256 * 1024;

/// Reads the lines of one partition's log, crossing from segment to segment.
pub(crate) struct LogReader {
    log: Arc<PartitionLog>,
    /// The segment being read.
    file: File,
    /// Global offset of the next byte `file` returns.
    file_at: u64,
    /// Bytes read from `file` and not yet returned start at `head`.
    buf: Vec<u8>,
    head: usize,
    /// Global offset after the last line returned.
    byte: u64,
    /// Lines up to `byte`.
    line: u64,
}

impl LogReader {
    /// A reader resuming at `from` (`Start`: the committed position, else the oldest line).
    pub(crate) fn open(log: Arc<PartitionLog>, from: &Position) -> Result<LogReader, SourceError> {
        let (byte, line) = match from {
            Position::Start => start_position(&log)?,
            Position::Line { byte, line } => (*byte, *line),
            other => {
                return Err(SourceError::Config(format!(
                    "an http-ingest source cannot resume from {other}; expected a line position"
                )));
            }
        };
        let end = log.durable.end();
        if byte > end {
            return Err(SourceError::Config(format!(
                "partition {}: byte {byte} is past the end of the log in {} ({end} bytes); was the log directory replaced?",
                log.id,
                log.dir.display()
            )));
        }
        let starts = list_segments(&log.dir).map_err(|e| transient(&log, e))?;
        let missing = |oldest: Option<&u64>| {
            SourceError::Config(format!(
                "partition {}: cannot resume at byte {byte} (line {line}): the segment holding it was deleted from {} \
                 (the oldest left starts at byte {}); events before the committed position are gone",
                log.id,
                log.dir.display(),
                oldest.map_or_else(|| "-".to_owned(), u64::to_string),
            ))
        };
        let start = *starts
            .iter()
            .rev()
            .find(|&&s| s <= byte)
            .ok_or_else(|| missing(starts.first()))?;
        let mut file = match File::open(segment_path(&log.dir, start)) {
            Ok(file) => file,
            // Deleted by a commit between the listing and now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(None)),
            Err(e) => return Err(transient(&log, e)),
        };
        file.seek(SeekFrom::Start(byte - start))
            .map_err(|e| transient(&log, e))?;
        Ok(LogReader {
            log,
            file,
            file_at: byte,
            buf: Vec::new(),
            head: 0,
            byte,
            line,
        })
    }

    /// Reads more of the log, up to `end`, into the buffer; moves to the next segment at the
    /// end of this one.
    fn fill(&mut self, end: u64) -> Result<(), SourceError> {
        self.buf.drain(..self.head);
        self.head = 0;
        let kept = self.buf.len();
        // Never past the durable end: bytes after it may be a batch whose fsync has not
        // returned, and may yet be cut.
        let want = usize::try_from(end - self.file_at).map_or(CHUNK, |n| n.min(CHUNK));
        self.buf.resize(kept + want, 0);
        let read = loop {
            match self.file.read(&mut self.buf[kept..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.buf.truncate(kept + *read.as_ref().unwrap_or(&0));
        let n = read.map_err(|e| transient(&self.log, e))?;
        if n > 0 {
            self.file_at += n as u64;
            return Ok(());
        }
        // The end of a segment below the durable end: the next segment starts right here
        // (segments are rolled between batches, so always at a line boundary).
        if kept > 0 {
            // Damage no retry repairs.
            return Err(SourceError::Config(format!(
                "partition {}: the log is damaged: a segment ends inside a line at byte {} of {}",
                self.log.id,
                self.file_at,
                self.log.dir.display()
            )));
        }
        self.file = File::open(segment_path(&self.log.dir, self.file_at)).map_err(|e| transient(&self.log, e))?;
        Ok(())
    }
}

impl PartitionReader for LogReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        let end = self.log.durable.end();
        let mut produced = 0;
        while produced < max {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.head..]) {
                let line = &self.buf[self.head..self.head + i];
                self.line += 1;
                out.push(RawRecord {
                    offset: self.line,
                    key: None,
                    payload: Some(line.to_vec()),
                });
                self.head += i + 1;
                self.byte += i as u64 + 1;
                produced += 1;
            } else if self.file_at < end {
                self.fill(end)?;
            } else {
                break;
            }
        }
        Ok(if produced > 0 { ReadState::More } else { ReadState::Idle })
    }

    fn position(&self) -> Position {
        Position::Line {
            byte: self.byte,
            line: self.line,
        }
    }

    fn commit(&mut self, position: &Position, last: bool) -> Result<(), SourceError> {
        let committed = match position {
            Position::Start => return Ok(()),
            Position::Line { byte, line } => Committed {
                byte: *byte,
                line: *line,
            },
            other => {
                return Err(SourceError::Config(format!(
                    "an http-ingest source cannot commit {other}; expected a line position"
                )));
            }
        };
        if committed.byte > self.log.durable.end() {
            return Err(SourceError::Config(format!(
                "partition {}: cannot commit byte {}, past the end of the log",
                self.log.id, committed.byte
            )));
        }
        self.log.committer.commit(committed, last)
    }

    /// The bytes between the last line returned and the log's durable end: what a reader may
    /// read next (lines past the durable end are not readable yet). Both are in memory.
    fn lag(&self) -> Option<Lag> {
        Some(Lag::Bytes(self.log.durable.end().saturating_sub(self.byte)))
    }
}

/// Where `Position::Start` resumes: the committed position, else the oldest segment's start.
fn start_position(log: &PartitionLog) -> Result<(u64, u64), SourceError> {
    if let Some(c) = read_committed(&log.dir)? {
        return Ok((c.byte, c.line));
    }
    // A commit may delete the oldest segment between listing and reading its line count.
    for _ in 0..3 {
        let starts = list_segments(&log.dir).map_err(|e| transient(log, e))?;
        let Some(&first) = starts.first() else {
            break;
        };
        match read_base(&log.dir, first) {
            Ok(line) => return Ok((first, line)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && first == 0 => return Ok((0, 0)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(transient(log, e)),
        }
    }
    Err(SourceError::Config(format!(
        "partition {}: the oldest segment in {} has no line count",
        log.id,
        log.dir.display()
    )))
}

fn transient(log: &PartitionLog, e: io::Error) -> SourceError {
    SourceError::Transient(format!("partition {} ({}): {e}", log.id, log.dir.display()))
}
