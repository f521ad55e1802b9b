//! Checkpoint storage: parts written first, then one manifest that names them with their
//! sizes and checksums, so a checkpoint is either complete and verified or ignored.
//!
//! ```text
//!  ckpt-00000001700000000000/positions     ┐ parts, written and made durable first
//!  ckpt-00000001700000000000/state.upsert  ┘
//!  MANIFEST-00000001700000000000.json        the commit point: written atomically, last
//! ```
//!
//! A checkpoint is taken at a frontier `T` (an epoch): it holds what the pipeline derived
//! from the input read before `T` (docs/decisions.md, "Checkpoints"). Loading takes the
//! newest manifest whose parts all verify; a torn or corrupted checkpoint (a part missing,
//! shorter, or with a flipped byte; a manifest that does not parse) is skipped with a
//! warning and the one before it is used, never loaded.
//!
//! Storage is behind [`CheckpointStore`], whose one write operation is an atomic, durable
//! `put` of a whole object: what an object store offers, and what [`LocalDir`] does with a
//! temporary file, `fsync` and `rename`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::Time;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed (disk full, permissions, network).
    #[error("checkpoint store: {0}")]
    Store(String),
    /// What was read is not a valid checkpoint.
    #[error("invalid checkpoint {name}: {reason}")]
    Invalid {
        /// The object that is wrong.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where checkpoints are kept: flat names to whole objects.
pub trait CheckpointStore: Send + Sync {
    /// Stores `bytes` under `name`, atomically (a reader sees all of it or nothing) and
    /// durably (it survives a crash once this returns).
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError>;
    /// The bytes stored under `name`.
    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError>;
    /// Every stored name that starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, CheckpointError>;
    /// Removes `name` (absent is not an error).
    fn delete(&self, name: &str) -> Result<(), CheckpointError>;
}

/// A [`CheckpointStore`] in a local directory; names with `/` are subdirectories.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> CheckpointError {
    CheckpointError::Store(format!("{what} {}: {e}", path.display()))
}

/// Directories created for checkpoints: readable by their owner only (on Unix), since the
/// state they hold includes secrets (subscribers' signing secrets, pending webhook deliveries).
fn private_dir_builder() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}

/// Checkpoint files, created or truncated: readable by their owner only (on Unix), as their
/// directories.
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Makes a directory entry (a new or renamed file) durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

impl CheckpointStore for LocalDir {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        private_dir_builder()
            .create(&dir)
            .map_err(|e| io("creating", &dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
        ));
        let mut file = private_file_options().open(&tmp).map_err(|e| io("creating", &tmp, e))?;
        file.write_all(bytes).map_err(|e| io("writing", &tmp, e))?;
        file.sync_all().map_err(|e| io("syncing", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
        sync_dir(&dir)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.path(name);
        std::fs::read(&path).map_err(|e| io("reading", &path, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, CheckpointError> {
        // Prefixes name a file or a directory's files: `MANIFEST-` or `ckpt-000…/`.
        let (dir, start) = match prefix.rsplit_once('/') {
            Some((dir, start)) => (self.root.join(dir), start),
            None => (self.root.clone(), prefix),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir, e)),
        };
        let base = prefix
            .rsplit_once('/')
            .map(|(d, _)| format!("{d}/"))
            .unwrap_or_default();
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(start) && !n.starts_with('.'))
            .map(|n| format!("{base}{n}"))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<(), CheckpointError> {
        let path = self.path(name);
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("deleting", &path, e)),
            _ => Ok(()),
        }
    }
}

/// The manifest format's version; a manifest of another version is not loaded.
const VERSION: u32 = 1;
const MANIFEST_PREFIX: &str = "MANIFEST-";

/// The commit record of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    /// The checkpoint's frontier: it holds what was derived from input read before it.
    frontier: Time,
    /// The pipeline it belongs to; another pipeline's checkpoint is never loaded.
    pipeline: String,
    parts: Vec<PartEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PartEntry {
    name: String,
    bytes: u64,
    crc32: u32,
}

/// Frontiers are zero-padded so names sort in time order.
fn manifest_name(frontier: Time) -> String {
    format!("{MANIFEST_PREFIX}{frontier:020}.json")
}

fn part_object(frontier: Time, part: &str) -> String {
    format!("ckpt-{frontier:020}/{part}")
}

/// A checkpoint as loaded: its frontier and its verified parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The frontier it was taken at.
    pub frontier: Time,
    /// Each part's bytes by part name.
    pub parts: BTreeMap<String, Vec<u8>>,
}

/// Writes and reads the checkpoints of one pipeline in a store.
pub struct Checkpoints<S: CheckpointStore> {
    store: S,
    pipeline: String,
}

impl<S: CheckpointStore> Checkpoints<S> {
    /// The checkpoints of `pipeline` in `store`.
    pub fn new(store: S, pipeline: &str) -> Self {
        Checkpoints {
            store,
            pipeline: pipeline.to_owned(),
        }
    }

    /// Writes a checkpoint at `frontier`: every part, then the manifest that commits them.
    /// A crash before the manifest is stored leaves the previous checkpoint in force.
    pub fn write(&self, frontier: Time, parts: &[(String, Vec<u8>)]) -> Result<(), CheckpointError> {
        let mut entries = Vec::with_capacity(parts.len());
        for (name, bytes) in parts {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(CheckpointError::Store(format!(
                    "`{name}` cannot name a checkpoint part"
                )));
            }
            self.store.put(&part_object(frontier, name), bytes)?;
            entries.push(PartEntry {
                name: name.clone(),
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
            });
        }
        let manifest = Manifest {
            version: VERSION,
            frontier,
            pipeline: self.pipeline.clone(),
            parts: entries,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Store(e.to_string()))?;
        self.store.put(&manifest_name(frontier), &text)
    }

    /// The newest checkpoint whose manifest and parts all verify, or `None` if there is
    /// none. Each newer one that does not verify is reported with a warning and skipped.
    pub fn load_latest(&self) -> Result<Option<Loaded>, CheckpointError> {
        self.load_latest_as(Ok)
    }

    /// As [`Checkpoints::load_latest`], decoding each candidate with `decode`: one whose parts
    /// verify but do not decode (another format) is skipped the same way.
    pub fn load_latest_as<T>(
        &self,
        decode: impl Fn(Loaded) -> Result<T, CheckpointError>,
    ) -> Result<Option<T>, CheckpointError> {
        let mut manifests = self.store.list(MANIFEST_PREFIX)?;
        manifests.reverse();
        for name in manifests {
            match self.load(&name).and_then(&decode) {
                Ok(loaded) => return Ok(Some(loaded)),
                Err(CheckpointError::Invalid { name, reason }) => {
                    tracing::warn!(checkpoint = %name, %reason, "skipping a checkpoint that does not verify");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn load(&self, manifest_name: &str) -> Result<Loaded, CheckpointError> {
        let invalid = |name: &str, reason: String| CheckpointError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let bytes = self.store.get(manifest_name)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid(manifest_name, format!("unreadable manifest: {e}")))?;
        if manifest.version != VERSION {
            return Err(invalid(manifest_name, format!("format version {}", manifest.version)));
        }
        if manifest.pipeline != self.pipeline {
            return Err(invalid(
                manifest_name,
                format!("it belongs to pipeline `{}`", manifest.pipeline),
            ));
        }
        let mut parts = BTreeMap::new();
        for entry in &manifest.parts {
            let object = part_object(manifest.frontier, &entry.name);
            let bytes = match self.store.get(&object) {
                Ok(bytes) => bytes,
                Err(CheckpointError::Store(e)) => return Err(invalid(&object, format!("missing part: {e}"))),
                Err(e) => return Err(e),
            };
            if bytes.len() as u64 != entry.bytes {
                return Err(invalid(
                    &object,
                    format!("{} bytes, the manifest says {}", bytes.len(), entry.bytes),
                ));
            }
            if crc32fast::hash(&bytes) != entry.crc32 {
                return Err(invalid(&object, "checksum mismatch".to_owned()));
            }
            parts.insert(entry.name.clone(), bytes);
        }
        Ok(Loaded {
            frontier: manifest.frontier,
            parts,
        })
    }

    /// Deletes all but the newest `keep` checkpoints (manifests first, so a checkpoint is
    /// never listed without its parts), and parts no manifest names (a write that crashed).
    pub fn prune(&self, keep: usize) -> Result<(), CheckpointError> {
        let manifests = self.store.list(MANIFEST_PREFIX)?;
        let old = manifests.len().saturating_sub(keep);
        for name in &manifests[..old] {
            self.store.delete(name)?;
        }
        let live: Vec<String> = manifests[old..]
            .iter()
            .filter_map(|m| {
                m.strip_prefix(MANIFEST_PREFIX)?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect();
        let newest = live.last().cloned();
        for dir in self.store.list("ckpt-")? {
            let frontier = dir.trim_start_matches("ckpt-").to_owned();
            // Parts newer than every manifest may be a checkpoint being written right now.
            let in_progress = newest.as_ref().is_none_or(|n| frontier > *n);
            if !live.contains(&frontier) && !in_progress {
                self.store.delete(&dir)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(tag: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("positions".to_owned(), format!("positions {tag}").into_bytes()),
            ("state.upsert".to_owned(), vec![tag.len() as u8; 1000]),
        ]
    }

    fn setup() -> (tempfile::TempDir, Checkpoints<LocalDir>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = Checkpoints::new(LocalDir::new(dir.path()), "p");
        (dir, checkpoints)
    }

    #[test]
    fn the_newest_complete_checkpoint_is_loaded() {
        let (_dir, c) = setup();
        assert_eq!(c.load_latest().expect("load"), None);
        c.write(100, &parts("a")).expect("write");
        c.write(200, &parts("bb")).expect("write");
        let loaded = c.load_latest().expect("load").expect("a checkpoint");
        assert_eq!(loaded.frontier, 200);
        assert_eq!(
            loaded.parts.get("positions").map(Vec::as_slice),
            Some(&b"positions bb"[..])
        );
    }

    #[cfg(unix)]
    #[test]
    fn checkpoints_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state");
        let c = Checkpoints::new(LocalDir::new(&root), "p");
        c.write(100, &parts("a")).expect("write");
        let mut checked = 0;
        let mut stack = vec![root];
        while let Some(path) = stack.pop() {
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
            if path.is_dir() {
                assert_eq!(mode, 0o700, "{}", path.display());
                stack.extend(
                    std::fs::read_dir(&path)
                        .expect("list")
                        .map(|e| e.expect("entry").path()),
                );
            } else {
                assert_eq!(mode, 0o600, "{}", path.display());
            }
            checked += 1;
        }
        // The root, the parts' directory, two parts and the manifest.
        assert_eq!(checked, 5);
    }

    fn damage(dir: &Path, object: &str, how: impl FnOnce(&mut Vec<u8>)) {
        let path = dir.join(object);
        let mut bytes = std::fs::read(&path).expect("read");
        how(&mut bytes);
        std::fs::write(&path, bytes).expect("write");
    }

    #[test]
    fn a_truncated_or_flipped_part_falls_back_to_the_previous_checkpoint() {
        for how in ["truncate", "flip", "remove", "manifest"] {
            let (dir, c) = setup();
            c.write(100, &parts("a")).expect("write");
            c.write(200, &parts("bb")).expect("write");
            let part = dir.path().join(part_object(200, "state.upsert"));
            match how {
                "truncate" => damage(dir.path(), &part_object(200, "state.upsert"), |b| b.truncate(500)),
                "flip" => damage(dir.path(), &part_object(200, "state.upsert"), |b| b[321] ^= 0x10),
                "remove" => std::fs::remove_file(&part).expect("remove"),
                _ => damage(dir.path(), &manifest_name(200), |b| b.truncate(b.len() / 2)),
            }
            let loaded = c.load_latest().expect("load").expect("a checkpoint");
            assert_eq!(loaded.frontier, 100, "after a damaged part ({how})");
            assert_eq!(loaded.parts.get("state.upsert").map(Vec::len), Some(1000));
        }
    }

    #[test]
    fn parts_without_a_manifest_are_never_loaded_and_pruning_keeps_the_newest() {
        let (dir, c) = setup();
        for t in [100, 200, 300] {
            c.write(t, &parts("x")).expect("write");
        }
        // A crash between the parts and the manifest of 400, and a leftover of 50.
        let store = LocalDir::new(dir.path());
        store.put(&part_object(400, "positions"), b"torn").expect("put");
        store.put(&part_object(50, "positions"), b"old").expect("put");
        assert_eq!(c.load_latest().expect("load").map(|l| l.frontier), Some(300));
        c.prune(2).expect("prune");
        assert_eq!(
            store.list(MANIFEST_PREFIX).expect("list"),
            vec![manifest_name(200), manifest_name(300)]
        );
        let dirs = store.list("ckpt-").expect("list");
        assert_eq!(
            dirs,
            vec![
                format!("ckpt-{:020}", 200),
                format!("ckpt-{:020}", 300),
                format!("ckpt-{:020}", 400)
            ],
            "the old and the orphaned parts are gone, the one being written is kept"
        );
        assert_eq!(c.load_latest().expect("load").map(|l| l.frontier), Some(300));
    }

    #[test]
    fn another_pipelines_checkpoint_is_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        Checkpoints::new(LocalDir::new(dir.path()), "other")
            .write(100, &parts("a"))
            .expect("write");
        let mine = Checkpoints::new(LocalDir::new(dir.path()), "mine");
        assert_eq!(mine.load_latest().expect("load"), None);
    }
}
