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

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sluice_runtime::source::{PartitionInfo, PartitionReader, Position, RawRecord, ReadState, Source, SourceError};

/// A file source over a path or glob.
#[derive(Clone, Debug)]
pub struct FileSource {
    pattern: String,
    follow: bool,
}

impl FileSource {
    /// A source reading the files that match `pattern` (a path or glob), tailing them if `follow`.
    pub fn new(pattern: impl Into<String>, follow: bool) -> Self {
        FileSource {
            pattern: pattern.into(),
            follow,
        }
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
        Ok(files
            .into_iter()
            .map(|p| PartitionInfo {
                id: p.to_string_lossy().into_owned(),
                parents: Vec::new(),
            })
            .collect())
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
        let reader = FileReader::open(Path::new(&partition.id), byte, line, self.follow)?;
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
