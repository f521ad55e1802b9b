//! The `file` source: JSON lines from one file or a glob of files.
//!
//! ```text
//!  path/glob ──discover──▶ one partition per file (sorted) ──▶ workers (assign)
//!                                   │
//!                        reader: BufRead lines ──▶ RawRecord { offset: line number }
//! ```
//!
//! **Partitions.** Each file matching the path or glob is a partition, identified by its
//! path; files are spread over workers. A glob that matches nothing is a configuration
//! error for a bounded source (nothing to read is almost always a typo) and an empty start
//! for a followed one (files may appear later; discovery runs again).
//!
//! **Chunks.** With chunking on (bounded append sources; see `with_chunks`), a file larger
//! than the chunk size becomes several partitions `path@start-end`, read in parallel by
//! different workers. A line belongs to the chunk its first byte lies in, and keeps its line
//! number in the whole file. Upsert sources never chunk: one key's records must apply in
//! file order, which parallel chunks would not keep.
//!
//! **Records and positions.** A record is one non-blank line. Its ordinal is its 1-based
//! line number, which dead letters report. The native position is the byte offset after
//! the last complete line together with the line count, so a reader can resume exactly.
//!
//! **Follow.** With `follow = true` a reader at the end of its file reports `Idle` and
//! tries again later; a trailing line without a newline is held back until its newline
//! arrives, because it may still be being written. If the file shrinks below the read
//! position (truncated or replaced), reading restarts at its beginning, with a warning.
//! Without `follow`, the last line is read even without a newline and the partition
//! finishes at end of file.
//!
//! **Delivery guarantee.** Every complete line is read exactly once per run from the
//! position the reader was opened at; resuming from a checkpointed position neither skips
//! nor repeats lines.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError};

/// Files above this size are read as several chunks when chunking is on.
pub const CHUNK_BYTES: u64 = 32 * 1024 * 1024;

/// A file source over a path or glob.
#[derive(Debug)]
pub struct FileSource {
    pattern: String,
    follow: bool,
    chunk_bytes: Option<u64>,
    /// Byte range of every chunk partition, by partition id.
    chunks: Mutex<HashMap<String, Chunk>>,
}

#[derive(Clone, Debug)]
struct Chunk {
    path: PathBuf,
    start: u64,
    end: u64,
}

impl FileSource {
    /// A source reading the files that match `pattern` (a path or glob), tailing them if `follow`.
    pub fn new(pattern: impl Into<String>, follow: bool) -> Self {
        FileSource {
            pattern: pattern.into(),
            follow,
            chunk_bytes: None,
            chunks: Mutex::default(),
        }
    }

    /// Splits files larger than `bytes` into chunks read in parallel (bounded sources only;
    /// a followed file grows and is always one partition).
    pub fn with_chunks(mut self, bytes: u64) -> Self {
        self.chunk_bytes = (!self.follow && bytes > 0).then_some(bytes);
        self
    }

    fn is_glob(&self) -> bool {
        self.pattern.contains(['*', '?', '['])
    }
}

impl Source for FileSource {
    fn discover(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        let mut files: Vec<PathBuf> = if self.is_glob() {
            let paths = glob::glob(&self.pattern)
                .map_err(|e| SourceError::Config(format!("`{}` is not a valid glob: {e}", self.pattern)))?;
            paths.filter_map(Result::ok).filter(|p| p.is_file()).collect()
        } else {
            let p = PathBuf::from(&self.pattern);
            if p.is_file() {
                vec![p]
            } else if self.follow && !p.exists() {
                Vec::new()
            } else if p.exists() {
                return Err(SourceError::Config(format!("`{}` is not a regular file", self.pattern)));
            } else {
                return Err(SourceError::Config(format!("`{}` does not exist", self.pattern)));
            }
        };
        files.sort();
        if files.is_empty() && !self.follow {
            return Err(SourceError::Config(format!(
                "no file matches `{}`; check the path (relative paths are resolved against the pipeline file's directory)",
                self.pattern
            )));
        }
        let mut parts = Vec::new();
        let mut chunks = self
            .chunks
            .lock()
            .map_err(|_| SourceError::Config("chunk table poisoned".into()))?;
        for path in files {
            let name = path.to_string_lossy().into_owned();
            let size = std::fs::metadata(&path).map_err(|e| io_error(&path, e))?.len();
            match self.chunk_bytes {
                Some(chunk) if size > chunk => {
                    for start in (0..size).step_by(chunk as usize) {
                        let end = (start + chunk).min(size);
                        let id = format!("{name}@{start}-{end}");
                        chunks.insert(
                            id.clone(),
                            Chunk {
                                path: path.clone(),
                                start,
                                end,
                            },
                        );
                        parts.push(PartitionInfo {
                            id,
                            parents: Vec::new(),
                        });
                    }
                }
                _ => parts.push(PartitionInfo {
                    id: name,
                    parents: Vec::new(),
                }),
            }
        }
        Ok(parts)
    }

    fn open(&self, partition: &PartitionInfo, from: &Position) -> Result<Box<dyn PartitionReader>, SourceError> {
        let (byte, line) = match from {
            Position::Start => (0, 0),
            Position::Line { byte, line } => (*byte, *line),
            other => {
                return Err(SourceError::Config(format!(
                    "a file source cannot resume from {other}; expected a line position"
                )));
            }
        };
        let chunk = self.chunks.lock().ok().and_then(|c| c.get(&partition.id).cloned());
        let reader = match chunk {
            None => FileReader::open(Path::new(&partition.id), byte, line, self.follow)?,
            Some(c) if matches!(from, Position::Start) => FileReader::open_chunk(&c.path, c.start, c.end)?,
            Some(c) => {
                let mut r = FileReader::open(&c.path, byte, line, false)?;
                r.end = Some(c.end);
                r
            }
        };
        Ok(Box::new(reader))
    }

    fn bounded(&self) -> bool {
        !self.follow
    }

    fn offset_label(&self) -> &'static str {
        "line"
    }
}

/// Reads lines of one file from a position.
struct FileReader {
    path: PathBuf,
    reader: BufReader<File>,
    byte: u64,
    line: u64,
    follow: bool,
    pending: Vec<u8>,
    /// For a chunk: lines starting at or after this byte belong to the next chunk.
    end: Option<u64>,
}

impl FileReader {
    fn open(path: &Path, byte: u64, line: u64, follow: bool) -> Result<Self, SourceError> {
        let mut file = File::open(path).map_err(|e| io_error(path, e))?;
        file.seek(SeekFrom::Start(byte)).map_err(|e| io_error(path, e))?;
        Ok(FileReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(256 * 1024, file),
            byte,
            line,
            follow,
            pending: Vec::new(),
            end: None,
        })
    }

    /// A reader of the lines whose first byte lies in `[start, end)`, numbered as in the
    /// whole file.
    fn open_chunk(path: &Path, start: u64, end: u64) -> Result<Self, SourceError> {
        if start == 0 {
            let mut r = FileReader::open(path, 0, 0, false)?;
            r.end = Some(end);
            return Ok(r);
        }
        // The line that crosses `start` belongs to the previous chunk: skip to the byte after
        // the first newline at or after `start - 1`, counting the newlines before it.
        let mut r = FileReader::open(path, start - 1, 0, false)?;
        let mut skipped = Vec::new();
        let n = r
            .reader
            .read_until(b'\n', &mut skipped)
            .map_err(|e| io_error(path, e))?;
        let first = start - 1 + n as u64;
        let mut counter = BufReader::with_capacity(256 * 1024, File::open(path).map_err(|e| io_error(path, e))?);
        let (mut remaining, mut lines) = (first, 0u64);
        while remaining > 0 {
            let buf = counter.fill_buf().map_err(|e| io_error(path, e))?;
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min(remaining as usize);
            lines += buf[..take].iter().filter(|&&b| b == b'\n').count() as u64;
            counter.consume(take);
            remaining -= take as u64;
        }
        r.byte = first;
        r.line = lines;
        r.end = Some(end);
        Ok(r)
    }

    /// Reopens from the start when the file shrank below what was read.
    fn check_truncation(&mut self) -> Result<(), SourceError> {
        let len = std::fs::metadata(&self.path)
            .map_err(|e| io_error(&self.path, e))?
            .len();
        if len < self.byte {
            tracing::warn!(file = %self.path.display(), "file shrank below the read position; reading it again from the start");
            *self = FileReader::open(&self.path, 0, 0, self.follow)?;
        }
        Ok(())
    }
}

impl PartitionReader for FileReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        let mut produced = 0;
        while produced < max {
            if self.end.is_some_and(|end| self.byte >= end) {
                return Ok(ReadState::Finished);
            }
            let n = self
                .reader
                .read_until(b'\n', &mut self.pending)
                .map_err(|e| io_error(&self.path, e))?;
            let complete = self.pending.last() == Some(&b'\n');
            if n == 0 || !complete {
                // End of file for now. A partial last line is data only once it is complete, or
                // when nothing will ever be appended.
                if self.pending.is_empty() || self.follow {
                    if self.follow {
                        self.check_truncation()?;
                        return Ok(if produced > 0 { ReadState::More } else { ReadState::Idle });
                    }
                    return Ok(ReadState::Finished);
                }
            }
            let len = self.pending.len() as u64;
            self.line += 1;
            self.byte += len;
            let mut text = std::mem::take(&mut self.pending);
            while matches!(text.last(), Some(b'\n' | b'\r')) {
                text.pop();
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push(RawRecord {
                offset: self.line,
                key: None,
                payload: Some(text),
            });
            produced += 1;
        }
        Ok(ReadState::More)
    }

    fn position(&self) -> Position {
        Position::Line {
            byte: self.byte,
            line: self.line,
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> SourceError {
    SourceError::Transient(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
