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
//! nothing. Calls block (file or pool I/O): the LU runs them on a blocking thread.

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
}

impl FileReservationStore {
    /// A store at `path` (conventionally `<lun file>.pr`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileReservationStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ReservationStore for FileReservationStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn compare_and_swap(
        &self,
        expected: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        if self.load()?.as_deref() != expected {
            return Err(StoreError::Conflict);
        }
        let Some(next) = next else {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
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
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<(), io::Error>(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(written?)
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
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
