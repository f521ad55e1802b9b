//! One partition's append-only log: its files, its recovery at start, and its group-commit
//! writer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::IngestError;
use crate::commit::Committer;

/// The most bytes one group commit writes; what is queued beyond waits for the next one.
const MAX_BATCH: usize = 4 << 20;
/// The file holding the committed position.
pub(crate) const COMMITTED: &str = "committed";
/// The suffix of a segment file.
const SEGMENT: &str = ".log";
/// The suffix of a segment's sidecar: the number of lines before the segment.
const BASE: &str = ".base";

/// The segment file starting at global byte `start`.
pub(crate) fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{SEGMENT}"))
}

fn base_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{BASE}"))
}

/// The start offset in a file name of 20 digits and `suffix`.
fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The start offsets of the segments in `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    list(dir, SEGMENT)
}

fn list(dir: &Path, suffix: &str) -> io::Result<Vec<u64>> {
    let mut starts = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(start) = entry?.file_name().to_str().and_then(|n| parse_name(n, suffix)) {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

/// The number of lines before the segment starting at `start`, from its sidecar.
pub(crate) fn read_base(dir: &Path, start: u64) -> io::Result<u64> {
    let text = fs::read_to_string(base_path(dir, start))?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad line count {text:?}: {e}")))
}

/// Makes the directory entries created or renamed in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes a segment and then its sidecar: the oldest remaining segment always keeps its
/// line count, even if this stops half-way.
pub(crate) fn remove_segment(dir: &Path, start: u64) -> io::Result<()> {
    fs::remove_file(segment_path(dir, start))?;
    match fs::remove_file(base_path(dir, start)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates an empty segment at `start` after `lines` lines, its sidecar first.
fn create_segment(dir: &Path, start: u64, lines: u64) -> io::Result<File> {
    let mut base = File::create(base_path(dir, start))?;
    base.write_all(format!("{lines}\n").as_bytes())?;
    base.sync_all()?;
    // Durable before the segment exists, so no segment is ever found without its line count.
    sync_dir(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, start))?;
    // A segment left by a roll that failed after creating it may exist already; it holds
    // nothing, since nothing is written to a segment before its directory entry is synced.
    if file.metadata()?.len() != 0 {
        return Err(io::Error::other(format!(
            "new segment {start:020}{SEGMENT} is not empty"
        )));
    }
    sync_dir(dir)?;
    Ok(file)
}

/// The durable end of a partition's log, published by its writer after every fsync.
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// Global byte offset just past the last synced line: what readers check at every poll.
    end: AtomicU64,
    /// The same end with its line count, kept together for whoever needs both.
    position: Mutex<(u64, u64)>,
}

impl Durable {
    /// The global byte offset before which everything is synced.
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// The durable end and the number of lines before it.
    pub(crate) fn position(&self) -> (u64, u64) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, end: u64, lines: u64) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = (end, lines);
        // A reader that sees this end sees every byte before it in the file: they were
        // written before the fsync that preceded this store.
        self.end.store(end, Ordering::Release);
    }
}

/// Why an append was not acknowledged (the caller answers `503`: nothing was promised).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AppendError {
    /// Writing or syncing failed.
    #[error("the log cannot be written: {0}")]
    Io(String),
    /// The source is shutting down.
    #[error("the log is shut down")]
    Stopped,
}

/// One event's line (with its newline) and where to send its line number once durable.
struct Append {
    line: Vec<u8>,
    reply: oneshot::Sender<Result<u64, AppendError>>,
    /// The endpoint's memory reservation for the line, released once it is answered.
    held: OwnedSemaphorePermit,
}

enum Msg {
    Append(Append),
    Stop,
}

/// One partition's log as the endpoint, its readers and its committer share it.
pub(crate) struct PartitionLog {
    /// The partition id, `p0`…
    pub(crate) id: String,
    /// The directory of its segments.
    pub(crate) dir: PathBuf,
    pub(crate) durable: Arc<Durable>,
    appends: mpsc::Sender<Msg>,
    pub(crate) committer: Committer,
}

impl PartitionLog {
    /// Recovers the log in `dir` and starts its writer and committer threads.
    pub(crate) fn open(
        dir: PathBuf,
        id: String,
        segment_bytes: u64,
    ) -> Result<(Arc<PartitionLog>, Vec<JoinHandle<()>>), IngestError> {
        let log_error = |source| IngestError::LogDir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(log_error)?;
        // The partition's directory entry, so a power loss right after the first acknowledged
        // publish cannot take the whole partition back.
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(log_error)?;
        }
        let durable = Arc::new(Durable::default());
        let writer = recover(&dir, segment_bytes, Arc::clone(&durable))?;
        let (appends, queue) = mpsc::channel();
        let spawn_error = |e| IngestError::Runtime(format!("cannot start the writer of {}: {e}", dir.display()));
        let write_thread = std::thread::Builder::new()
            .name(format!("ingest-{id}-write"))
            .spawn(move || writer.run(&queue))
            .map_err(spawn_error)?;
        let (committer, commit_thread) = match Committer::start(dir.clone(), &id) {
            Ok(c) => c,
            Err(e) => {
                let _ = appends.send(Msg::Stop);
                let _ = write_thread.join();
                return Err(spawn_error(e));
            }
        };
        let log = PartitionLog {
            id,
            dir,
            durable,
            appends,
            committer,
        };
        Ok((Arc::new(log), vec![write_thread, commit_thread]))
    }

    /// Appends `line` (one event and its newline) and returns its line number once it is
    /// synced to disk. `held` is released when the line is answered, even if the caller has
    /// stopped waiting.
    pub(crate) async fn append(&self, line: Vec<u8>, held: OwnedSemaphorePermit) -> Result<u64, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(Msg::Append(Append { line, reply, held }))
            .map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }

    /// Asks the writer (after what is queued) and the committer (after what is pending) to
    /// finish; their threads are the caller's to join.
    pub(crate) fn stop(&self) {
        let _ = self.appends.send(Msg::Stop);
        self.committer.stop();
    }
}

/// The writer's state: the active segment and the durable end.
struct Writer {
    dir: PathBuf,
    /// The active (newest) segment, opened for appending.
    file: File,
    /// Its synced length.
    len: u64,
    end: u64,
    lines: u64,
    segment_bytes: u64,
    durable: Arc<Durable>,
    /// Set once a failed write could not be undone: the file's tail is unknown, so line
    /// numbers could no longer be trusted.
    broken: Option<String>,
}

impl Writer {
    /// Group commit: takes everything queued (up to [`MAX_BATCH`]), writes it, syncs once and
    /// answers every request of the batch.
    fn run(mut self, queue: &mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut replies = Vec::new();
        let mut held = Vec::new();
        let mut stop = false;
        while !stop {
            match queue.recv() {
                Ok(Msg::Append(a)) => {
                    batch.extend_from_slice(&a.line);
                    replies.push(a.reply);
                    held.push(a.held);
                }
                Ok(Msg::Stop) | Err(_) => break,
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(Msg::Append(a)) => {
                        batch.extend_from_slice(&a.line);
                        replies.push(a.reply);
                        held.push(a.held);
                    }
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let written = self.write(&batch, replies.len() as u64);
            // The lines are out of the queue (the batch buffer is reused): their budget is free,
            // before the answers, so a publisher that sends again at once finds it free.
            held.clear();
            match written {
                Ok(first) => {
                    for (n, reply) in (first..).zip(replies.drain(..)) {
                        let _ = reply.send(Ok(n));
                    }
                }
                Err(error) => {
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            batch.clear();
            if batch.capacity() > 2 * MAX_BATCH {
                // One huge burst should not pin its buffer for the life of the process.
                batch.shrink_to(64 * 1024);
            }
        }
        tracing::debug!(dir = %self.dir.display(), "log writer stopped");
    }

    /// Writes and syncs `batch` of `count` lines; the number of its first line.
    fn write(&mut self, batch: &[u8], count: u64) -> Result<u64, AppendError> {
        if let Some(reason) = &self.broken {
            return Err(AppendError::Io(reason.clone()));
        }
        if self.len >= self.segment_bytes {
            self.roll()
                .map_err(|e| AppendError::Io(format!("cannot start a new segment: {e}")))?;
        }
        if let Err(e) = self.file.write_all(batch).and_then(|()| self.file.sync_data()) {
            tracing::error!(dir = %self.dir.display(), error = %e, "log write failed");
            // Cut what may have reached the file, so the next batch starts on a line boundary
            // and line numbers stay right (a full disk may have room again later).
            if let Err(undo) = self.file.set_len(self.len).and_then(|()| self.file.sync_all()) {
                let reason = format!("a failed write could not be undone ({undo}); restart to recover the log");
                tracing::error!(dir = %self.dir.display(), "{reason}");
                self.broken = Some(reason);
            }
            return Err(AppendError::Io(e.to_string()));
        }
        let first = self.lines + 1;
        self.len += batch.len() as u64;
        self.end += batch.len() as u64;
        self.lines += count;
        self.durable.publish(self.end, self.lines);
        Ok(first)
    }

    /// Closes the active segment and starts the next at the durable end.
    fn roll(&mut self) -> io::Result<()> {
        self.file = create_segment(&self.dir, self.end, self.lines)?;
        tracing::debug!(dir = %self.dir.display(), start = self.end, "new log segment");
        self.len = 0;
        Ok(())
    }
}

/// Opens the log in `dir` for writing: drops leftovers of interrupted operations, checks
/// that segments follow each other, cuts the unacknowledged tail of the newest one and
/// counts its lines, publishing the end it found to `durable`.
fn recover(dir: &Path, segment_bytes: u64, durable: Arc<Durable>) -> Result<Writer, IngestError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestError::LogDir { path, source }
    };
    let corrupt = |path: PathBuf, reason: String| IngestError::Corrupt { path, reason };
    let _ = fs::remove_file(dir.join(format!("{COMMITTED}.tmp")));
    let mut starts = list_segments(dir).map_err(io_error(dir))?;
    // A sidecar without its segment: the segment was deleted, or a roll stopped half-way.
    for start in list(dir, BASE).map_err(io_error(dir))? {
        if starts.binary_search(&start).is_err() {
            fs::remove_file(base_path(dir, start)).map_err(io_error(dir))?;
        }
    }
    if starts.is_empty() {
        create_segment(dir, 0, 0).map_err(io_error(dir))?;
        starts.push(0);
    }
    for pair in starts.windows(2) {
        let path = segment_path(dir, pair[0]);
        let len = fs::metadata(&path).map_err(io_error(&path))?.len();
        if pair[0] + len != pair[1] {
            return Err(corrupt(
                path,
                format!(
                    "holds {len} bytes but the next segment starts at byte {}; segments must follow each other",
                    pair[1]
                ),
            ));
        }
    }
    let start = starts[starts.len() - 1];
    let path = segment_path(dir, start);
    let base = match read_base(dir, start) {
        Ok(lines) => lines,
        Err(e) if e.kind() == io::ErrorKind::NotFound && start == 0 => 0,
        Err(e) => {
            return Err(corrupt(
                base_path(dir, start),
                format!("the line count of the newest segment cannot be read: {e}"),
            ));
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    let (len, lines, found) = scan_tail(&mut file).map_err(io_error(&path))?;
    if len < found {
        tracing::warn!(
            segment = %path.display(),
            bytes = found - len,
            "cutting an unacknowledged partial line off the end of the log"
        );
        file.set_len(len)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&path))?;
    } else {
        // A crash (not a power loss) leaves lines written but never synced in the page cache,
        // whole and readable: they are about to be read and committed as durable, so make
        // them so first. Otherwise a power loss now would take back lines already delivered,
        // and the next ones would reuse their line numbers (and delivery ids).
        file.sync_data().map_err(io_error(&path))?;
    }
    durable.publish(start + len, base + lines);
    Ok(Writer {
        dir: dir.to_path_buf(),
        file,
        len,
        end: start + len,
        lines: base + lines,
        segment_bytes,
        durable,
        broken: None,
    })
}

/// The length of a segment's whole lines, their count, and the file's length.
///
/// The log is written only as whole lines of JSON, which never holds a NUL byte (serde_json
/// escapes it), so a NUL can only be space a crash allocated but never filled: the line it
/// is in, and everything after, was never acknowledged and is cut with the partial line.
fn scan_tail(file: &mut File) -> io::Result<(u64, u64, u64)> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut lines, mut valid) = (0u64, 0u64, 0u64);
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        let nul = memchr::memchr(0, chunk);
        for i in memchr::memchr_iter(b'\n', &chunk[..nul.unwrap_or(n)]) {
            lines += 1;
            valid = at + i as u64 + 1;
        }
        if nul.is_some() {
            break;
        }
        at += n as u64;
    }
    let found = file.metadata()?.len();
    Ok((valid, lines, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("00000000000000001234.log", SEGMENT), Some(1234));
        assert_eq!(parse_name("00000000000000001234.base", BASE), Some(1234));
        assert_eq!(parse_name("1234.log", SEGMENT), None);
        assert_eq!(parse_name("0000000000000000123x.log", SEGMENT), None);
        assert_eq!(parse_name("00000000000000001234.log.tmp", SEGMENT), None);
        let dir = Path::new("/x");
        assert_eq!(segment_path(dir, 7), Path::new("/x/00000000000000000007.log"));
    }

    #[test]
    fn scan_cuts_partial_lines_and_nul_filled_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        for (content, expect) in [
            (&b""[..], (0, 0)),
            (b"{}\n{}\n", (6, 2)),
            (b"{}\n{}\n{\"a\"", (6, 2)),
            (b"{}\n{\0\0\0\n{}\n", (3, 1)),
            (b"\0\0\n", (0, 0)),
        ] {
            fs::write(&path, content).expect("write");
            let mut file = File::open(&path).expect("open");
            let (len, lines, found) = scan_tail(&mut file).expect("scan");
            assert_eq!((len, lines), expect, "{content:?}");
            assert_eq!(found, content.len() as u64);
        }
    }
}
