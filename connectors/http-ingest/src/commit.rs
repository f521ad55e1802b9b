//! A partition's committed position, stored off the reading thread, and the old segments it
//! lets go.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use sluice_runtime::source::SourceError;

use crate::log::{COMMITTED, list_segments, remove_segment, sync_dir};

/// A position everything before which is reflected in durable output (the `committed` file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Committed {
    /// Global byte offset of the next line to read.
    pub(crate) byte: u64,
    /// Lines before it.
    pub(crate) line: u64,
}

/// The committed position stored in `dir`, if any.
pub(crate) fn read_committed(dir: &Path) -> Result<Option<Committed>, SourceError> {
    let path = dir.join(COMMITTED);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            SourceError::Config(format!(
                "{} is damaged ({e}); delete it to read the log from its oldest segment",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::Transient(format!("{}: {e}", path.display()))),
    }
}

#[derive(Default)]
struct State {
    /// The newest position asked for and not yet taken by the thread.
    pending: Option<Committed>,
    /// Requests made, and requests whose position (or a newer one) is stored.
    requested: u64,
    done: u64,
    /// Why the last store failed.
    error: Option<String>,
    stop: bool,
    exited: bool,
}

type Slot = (Mutex<State>, Condvar);

fn lock(slot: &Slot) -> MutexGuard<'_, State> {
    // The state is plain counters; a panic elsewhere cannot leave it half-updated.
    slot.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stores committed positions on a thread of its own, so `commit` does not wait for fsyncs
/// (except the last); positions asked for while one is being stored collapse into the newest.
pub(crate) struct Committer {
    slot: Arc<Slot>,
}

impl Committer {
    /// Starts the committer of the log in `dir`.
    pub(crate) fn start(dir: PathBuf, id: &str) -> io::Result<(Committer, JoinHandle<()>)> {
        let slot: Arc<Slot> = Arc::default();
        let thread_slot = Arc::clone(&slot);
        let thread = std::thread::Builder::new()
            .name(format!("ingest-{id}-commit"))
            .spawn(move || run(&dir, &thread_slot))?;
        Ok((Committer { slot }, thread))
    }

    /// Records `position`; when `last`, waits until it is stored and reports a failure.
    pub(crate) fn commit(&self, position: Committed, last: bool) -> Result<(), SourceError> {
        let mut state = lock(&self.slot);
        if state.stop {
            return Err(SourceError::Transient("the http-ingest source is stopped".into()));
        }
        state.pending = Some(position);
        state.requested += 1;
        let mine = state.requested;
        self.slot.1.notify_all();
        if !last {
            return Ok(());
        }
        while state.done < mine && !state.exited {
            state = self.slot.1.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        match (&state.error, state.done >= mine) {
            (None, true) => Ok(()),
            (Some(e), _) => Err(SourceError::Transient(e.clone())),
            (None, false) => Err(SourceError::Transient("the http-ingest source is stopped".into())),
        }
    }

    /// Lets the thread store what is pending, then end.
    pub(crate) fn stop(&self) {
        lock(&self.slot).stop = true;
        self.slot.1.notify_all();
    }
}

fn run(dir: &Path, slot: &Slot) {
    loop {
        let mut state = lock(slot);
        while state.pending.is_none() && !state.stop {
            state = slot.1.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        let Some(position) = state.pending.take() else {
            state.exited = true;
            slot.1.notify_all();
            return;
        };
        let seq = state.requested;
        drop(state);
        let result = store(dir, position).and_then(|()| prune(dir, position.byte));
        if let Err(e) = &result {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot record the committed position");
        }
        let mut state = lock(slot);
        state.done = seq;
        state.error = result.err().map(|e| format!("{}: {e}", dir.display()));
        slot.1.notify_all();
    }
}

/// Replaces the `committed` file atomically and durably: temporary file, fsync, rename,
/// directory fsync. Segments are deleted only after this, so a crash never leaves a committed
/// position whose segment is gone.
fn store(dir: &Path, position: Committed) -> io::Result<()> {
    let tmp = dir.join(format!("{COMMITTED}.tmp"));
    let mut file = File::create(&tmp)?;
    serde_json::to_writer(&mut file, &position)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(COMMITTED))?;
    sync_dir(dir)
}

/// Deletes the segments that end at or before `byte`, except the newest of them, oldest
/// first; the newest segment never has a known end, so the active one is never deleted.
fn prune(dir: &Path, byte: u64) -> io::Result<()> {
    let starts = list_segments(dir)?;
    let passed: Vec<u64> = starts
        .windows(2)
        .take_while(|pair| pair[1] <= byte)
        .map(|pair| pair[0])
        .collect();
    // The newest passed segment stays: a restart from the checkpoint before the one that
    // allowed this commit may resume inside it.
    for &start in &passed[..passed.len().saturating_sub(1)] {
        remove_segment(dir, start)?;
        tracing::debug!(dir = %dir.display(), start, "deleted a committed log segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_one_passed_segment_and_the_active_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = |start: u64, len: usize| {
            fs::write(crate::log::segment_path(dir.path(), start), vec![b'\n'; len]).expect("segment");
            fs::write(dir.path().join(format!("{start:020}.base")), format!("{start}\n")).expect("base");
        };
        seg(0, 10);
        seg(10, 10);
        seg(20, 10);
        seg(30, 5);
        prune(dir.path(), 15).expect("prune");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![0, 10, 20, 30]);
        prune(dir.path(), 20).expect("prune");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![10, 20, 30]);
        assert!(!dir.path().join(format!("{:020}.base", 0)).exists());
        prune(dir.path(), 35).expect("prune");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![20, 30]);
    }

    #[test]
    fn store_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_committed(dir.path()).expect("read"), None);
        let position = Committed { byte: 42, line: 3 };
        store(dir.path(), position).expect("store");
        assert_eq!(read_committed(dir.path()).expect("read"), Some(position));
        fs::write(dir.path().join(COMMITTED), "{").expect("damage");
        assert!(matches!(read_committed(dir.path()), Err(SourceError::Config(_))));
    }
}
