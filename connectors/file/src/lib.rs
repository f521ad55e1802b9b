//! The `file` source: JSON lines from one file or a glob of files; and the table file source
//! ([`TableFileSource`], in [`table`]): a whole table in one file, re-read when it changes.
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

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_runtime::source::{
    Lag, PartitionInfo, PartitionReader, Position, Progress, ProgressUnit, RawRecord, ReadState, Source, SourceError,
};

pub mod table;

pub use table::{TableFileSource, TableFormat};

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
    /// Where each chunk's first line starts, per file: computed once, on the first open of
    /// one of its chunks.
    starts: Mutex<HashMap<PathBuf, Arc<Mutex<Option<ChunkStarts>>>>>,
}

/// For each chunk start byte of a file: the byte its first line starts at and the number of
/// lines before it.
type ChunkStarts = BTreeMap<u64, (u64, u64)>;

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
            starts: Mutex::default(),
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

    /// Where the first line of the chunk starting at `start` begins, and its line count.
    ///
    /// One pass over the file finds this for all its chunks, so a file of `k` chunks is
    /// scanned once, not `k` times from its beginning; other workers wait for that pass.
    fn chunk_start(&self, path: &Path, start: u64) -> Result<(u64, u64), SourceError> {
        let poisoned = || SourceError::Config("chunk table poisoned".into());
        // The table's lock is held only to find the file's entry; the scan holds the file's
        // own lock, so opening chunks of other files does not wait for it.
        let entry = Arc::clone(
            self.starts
                .lock()
                .map_err(|_| poisoned())?
                .entry(path.to_path_buf())
                .or_default(),
        );
        let mut table = entry.lock().map_err(|_| poisoned())?;
        if table.is_none() {
            let bounds: Vec<u64> = self
                .chunks
                .lock()
                .map_err(|_| poisoned())?
                .values()
                .filter(|c| c.path == path && c.start > 0)
                .map(|c| c.start)
                .collect();
            *table = Some(scan_chunk_starts(path, bounds)?);
        }
        table
            .as_ref()
            .and_then(|t| t.get(&start))
            .copied()
            .ok_or_else(|| SourceError::Config(format!("{}: no chunk starts at byte {start}", path.display())))
    }
}

/// For each start `s` (> 0): the byte after the first newline at or after `s - 1` (the line
/// crossing `s` belongs to the previous chunk) and the newlines before that byte.
fn scan_chunk_starts(path: &Path, mut bounds: Vec<u64>) -> Result<ChunkStarts, SourceError> {
    bounds.sort_unstable();
    let mut pending = bounds.into_iter().peekable();
    let mut out = ChunkStarts::new();
    let mut reader = BufReader::with_capacity(1024 * 1024, File::open(path).map_err(|e| io_error(path, e))?);
    let (mut at, mut lines) = (0u64, 0u64);
    while pending.peek().is_some() {
        let buf = reader.fill_buf().map_err(|e| io_error(path, e))?;
        if buf.is_empty() {
            break;
        }
        for i in memchr::memchr_iter(b'\n', buf) {
            let newline = at + i as u64;
            lines += 1;
            while let Some(start) = pending.next_if(|&s| s - 1 <= newline) {
                out.insert(start, (newline + 1, lines));
            }
        }
        let n = buf.len();
        at += n as u64;
        reader.consume(n);
    }
    // Starts after the last newline: their chunks hold no line of their own.
    for start in pending {
        out.insert(start, (at, lines));
    }
    Ok(out)
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
            Some(c) if matches!(from, Position::Start) => {
                let (byte, line) = if c.start == 0 {
                    (0, 0)
                } else {
                    self.chunk_start(&c.path, c.start)?
                };
                let mut r = FileReader::open(&c.path, byte, line, false)?;
                r.start = c.start;
                r.end = Some(c.end);
                r
            }
            Some(c) => {
                let mut r = FileReader::open(&c.path, byte, line, false)?;
                r.start = c.start;
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
    /// For a chunk: where it starts (progress counts from here; 0 for a whole file).
    start: u64,
    /// For a chunk: lines starting at or after this byte belong to the next chunk.
    end: Option<u64>,
    /// The file's size when it was opened: what a bounded read has to get through.
    size: Option<u64>,
}

impl FileReader {
    fn open(path: &Path, byte: u64, line: u64, follow: bool) -> Result<Self, SourceError> {
        let mut file = File::open(path).map_err(|e| io_error(path, e))?;
        file.seek(SeekFrom::Start(byte)).map_err(|e| io_error(path, e))?;
        let size = file.metadata().ok().map(|m| m.len());
        Ok(FileReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(256 * 1024, file),
            byte,
            line,
            follow,
            pending: Vec::new(),
            start: 0,
            end: None,
            size,
        })
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
            let mut len = self.pending.len();
            while len > 0 && matches!(self.pending[len - 1], b'\n' | b'\r') {
                len -= 1;
            }
            // One exact copy per line; `pending` keeps its capacity, so lines are not read
            // into a buffer that grows from nothing every time.
            let text = self.pending[..len].to_vec();
            self.pending.clear();
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

    /// The bytes between the read position and the end of the file (of the chunk, for a
    /// chunk), from an `fstat` of the open file: no read, and the file being read even after
    /// its path was replaced. `None` if that fails.
    fn lag(&self) -> Option<Lag> {
        let len = self.reader.get_ref().metadata().ok()?.len();
        let end = self.end.map_or(len, |end| end.min(len));
        Some(Lag::Bytes(end.saturating_sub(self.byte)))
    }

    /// Bytes read of the file's size at open (of the chunk, for a chunk); `None` for a
    /// followed file, which has no end to be a share of. Nothing is asked of the OS.
    fn progress(&self) -> Option<Progress> {
        if self.follow {
            return None;
        }
        let end = self
            .end
            .map_or(self.size?, |end| self.size.map_or(end, |size| end.min(size)));
        let total = end.saturating_sub(self.start);
        Some(Progress {
            // A chunk's last line may end past the chunk.
            done: self.byte.saturating_sub(self.start).min(total),
            total,
            unit: ProgressUnit::Bytes,
        })
    }
}

fn io_error(path: &Path, e: std::io::Error) -> SourceError {
    SourceError::Transient(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
