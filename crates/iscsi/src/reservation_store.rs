//! Where a logical unit's persistent reservations live across restarts (APTPL): a store
//! with load and compare-and-swap, so the state an initiator sees changes only after the
//! store confirmed it, and a second writer (another target instance) is detected instead
//! of silently overwritten.
//!
//! Owns: the trait and the file store (`<file>.pr`, docs/format/aptpl.md). Other stores
//! live with their layer: a pool volume property (cstor-node), the replicated volume's
//! membership record (replication).
//! Invariants: the bytes are the aptpl.md encoding (magic, version, checksum), opaque here;
//! `compare_and_swap` either replaces exactly `expected` with `next` durably, or changes
//! nothing, also against other processes: the file store compares and replaces under an
//! exclusive `flock` of `<path>.lock` (the state file itself is replaced by rename, so a
//! lock on it would guard a stale inode). Calls block (file or pool I/O): the LU runs
//! them on a blocking thread.

use std::io;
use std::path::{Path, PathBuf};

/// Why a store refused or failed a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stored state is not what this LU last saw (another writer changed it).
    #[error("reservation state changed underneath (compare-and-swap failed)")]
    Conflict,
    /// The state does not fit the store.
    #[error("reservation state too large for the store ({0} bytes)")]
    TooLarge(usize),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A durable home for one LU's persistent reservation state.
pub trait ReservationStore: Send + Sync + std::fmt::Debug + 'static {
    /// The stored state, `None` when nothing is stored.
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the stored state with `next` (`None` removes it) if it still is
    /// `expected`; durable when it returns Ok.
    fn compare_and_swap(
        &self,
        expected: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<(), StoreError>;
}

/// The state in a file next to a file-backed LUN: written to a unique temp file, fsynced,
/// renamed over, and the directory fsynced.
#[derive(Debug, Clone)]
pub struct FileReservationStore {
    path: PathBuf,
    /// A file of an older name holding the same encoding, moved to `path` on first use.
    legacy: Option<PathBuf>,
}

impl FileReservationStore {
    /// A store at `path` (conventionally `<lun file>.pr`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileReservationStore {
            path: path.into(),
            legacy: None,
        }
    }

    /// Also reads `old` (the `<lun file>.aptpl` of earlier versions, same encoding) when
    /// `path` does not exist: it is renamed to `path` once, under the lock, so the state
    /// moves over exactly once and the old name is gone afterwards.
    pub fn migrating_from(mut self, old: impl Into<PathBuf>) -> Self {
        self.legacy = Some(old.into());
        self
    }

    /// Takes the store's cross-process lock (released when the file is dropped).
    fn lock(&self) -> io::Result<std::fs::File> {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_file_name(name))?;
        f.lock()?;
        Ok(f)
    }

    /// Reads the state; the caller holds the lock.
    fn read_locked(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => return Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let Some(old) = &self.legacy else {
            return Ok(None);
        };
        match std::fs::read(old) {
            Ok(b) => {
                std::fs::rename(old, &self.path)?;
                sync_dir(&self.path)?;
                tracing::info!(from = %old.display(), to = %self.path.display(), "moved APTPL state to its new name");
                Ok(Some(b))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ReservationStore for FileReservationStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let _lock = self.lock()?;
        self.read_locked()
    }

    fn compare_and_swap(
        &self,
        expected: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        // Compare and replace under the lock: another process's swap in between is
        // seen as a conflict, never silently overwritten.
        let _lock = self.lock()?;
        if self.read_locked()?.as_deref() != expected {
            return Err(StoreError::Conflict);
        }
        let Some(next) = next else {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(sync_dir(&self.path)?),
            };
        };
        // A temp name unique per process and save, so no two saves ever share one.
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = self.path.with_file_name(name);
        let written = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(next)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&self.path)?;
            Ok::<(), io::Error>(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(written?)
    }
}

/// Makes a rename or removal in the directory of `path` durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_swaps_only_what_it_expects() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileReservationStore::new(dir.path().join("lun.img.pr"));
        assert_eq!(s.load().unwrap(), None);
        s.compare_and_swap(None, Some(b"one")).unwrap();
        assert!(matches!(
            s.compare_and_swap(None, Some(b"two")),
            Err(StoreError::Conflict)
        ));
        s.compare_and_swap(Some(b"one"), Some(b"two")).unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"two"[..]));
        s.compare_and_swap(Some(b"two"), None).unwrap();
        assert_eq!(s.load().unwrap(), None);
        // No temp files are left behind (only the lock file).
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lun.img.pr.lock"]);
    }

    #[test]
    fn an_old_aptpl_file_moves_to_the_new_name_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("lun.img.aptpl");
        std::fs::write(&old, b"state").unwrap();
        let s = FileReservationStore::new(dir.path().join("lun.img.pr")).migrating_from(&old);
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"state"[..]));
        assert!(!old.exists(), "moved, not copied");
        assert_eq!(std::fs::read(s.path()).unwrap(), b"state");
        // A later old file (a downgrade's leftovers) does not override the new one.
        std::fs::write(&old, b"stale").unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"state"[..]));
    }

    /// Two processes (this test re-run as a child) race compare-and-swap increments of
    /// one counter: every increment must land exactly once. Without the cross-process
    /// lock, two read-compare-rename sequences interleave and increments are lost.
    #[test]
    fn compare_and_swap_is_atomic_across_processes() {
        const ROUNDS: u32 = 100;
        let child_dir = std::env::var_os("CSTOR_PR_RACE_DIR");
        let tmp = tempfile::tempdir().unwrap();
        let dir = match &child_dir {
            Some(d) => PathBuf::from(d),
            None => tmp.path().to_owned(),
        };
        let s = FileReservationStore::new(dir.join("lun.img.pr"));
        let bump = || {
            let mut done = 0;
            while done < ROUNDS {
                let cur = s.load().unwrap();
                let n: u32 = cur
                    .as_deref()
                    .map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
                let next = (n + 1).to_string();
                match s.compare_and_swap(cur.as_deref(), Some(next.as_bytes())) {
                    Ok(()) => done += 1,
                    Err(StoreError::Conflict) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        };
        if child_dir.is_some() {
            bump();
            return;
        }
        let me = std::env::current_exe().unwrap();
        let child = std::process::Command::new(me)
            .args([
                "--exact",
                "reservation_store::tests::compare_and_swap_is_atomic_across_processes",
                "--test-threads=1",
            ])
            .env("CSTOR_PR_RACE_DIR", &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        /// Stops the racing process even when this one panics.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reap(child);
        bump();
        let status = child.0.wait().unwrap();
        assert!(status.success(), "the racing process failed");
        let total = std::fs::read_to_string(s.path()).unwrap();
        assert_eq!(
            total,
            (2 * ROUNDS).to_string(),
            "every swap landed exactly once"
        );
    }
}
