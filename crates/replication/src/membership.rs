//! The membership record (design §2.2) and the [`MembershipStore`] it lives behind: a
//! file in the target's `--state-dir` here ([`FileStore`]), the CStorVolume status later.
//!
//! Invariants: a change counts only after `cas` returned `Ok`, or a later `read` shows
//! it (an `Unavailable` CAS has an unknown outcome). Only the target holding `epoch`
//! writes, plus the offline force CLI. The file store keeps a version counter under an
//! exclusive flock and replaces the file by write-temp, fsync, rename, fsync-directory, so
//! a crash leaves the old or the new record, never a mix (docs/format/membership-file.md).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A replica's state in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Holds every acknowledged write; required for completion; may serve and source.
    Current,
    /// Evicted at `stale_since_io`; catches up before readmission.
    Stale,
    /// No usable history; full copy.
    New,
}

/// One member of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Replica id (the slot).
    pub id: String,
    /// Replica volume guid (the instance).
    pub guid: String,
    /// Replica address ADDR:PORT.
    pub address: String,
    /// Current / Stale / New.
    pub state: MemberState,
    /// First io the member may lack (Stale).
    pub stale_since_io: u64,
    /// Why it is not Current.
    pub reason: String,
    /// Unix seconds of the last change.
    pub at: u64,
    /// Epoch of the last change.
    pub epoch: u64,
}

/// The holder of the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Target instance id (random per process).
    pub instance: String,
    /// Process id on its node.
    pub pid: u32,
    /// Node (host name).
    pub node: String,
}

/// Audit entry of an operator force-promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forced {
    /// Who (user@host).
    pub by: String,
    /// Unix seconds.
    pub at: u64,
    /// Member id promoted.
    pub member: String,
}

/// The durable membership record of one replicated volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Generation of the owning target instance.
    pub epoch: u64,
    /// Owner of the epoch (None: released).
    pub holder: Option<Holder>,
    /// Unix seconds of the holder's last renewal.
    pub renew_time: u64,
    /// The previous holder drained, synced and released.
    pub clean_shutdown: bool,
    /// Largest io number any holder may assign.
    pub io_reserved: u64,
    /// Volume size, bytes (0: not yet set).
    pub size: u64,
    /// Replication factor.
    pub rf: u32,
    /// Desired replication factor.
    pub drf: u32,
    /// Consistency factor (cStor compatibility; acts only with strict).
    pub cf: u32,
    /// Fewest Current replicas the target may shrink to (default 1).
    pub min_current: u32,
    /// Members.
    pub members: Vec<Member>,
    /// SCSI persistent-reservation state (opaque to this crate).
    pub pr: Option<String>,
    /// Last force-promotion.
    pub forced: Option<Forced>,
    /// Snapshots of the volume, oldest first: each is on every Current replica at its io
    /// cut; a Stale or New member gets the ones it lacks during catch-up. Left out of the
    /// serialized record when empty, so records written before the field still verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotRec>,
}

/// A snapshot of the replicated volume in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRec {
    /// Name (the pool snapshot name on every replica).
    pub name: String,
    /// The io cut: the snapshot holds exactly the writes with io below it.
    pub io: u64,
    /// Volume size when taken, bytes.
    pub size: u64,
    /// Unix seconds.
    pub at: u64,
}

impl Record {
    /// The member with `id`.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The member with `id`, mutable.
    pub fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// Ids of Current members.
    pub fn current_ids(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Current)
            .map(|m| m.id.clone())
            .collect()
    }
}

/// Version of a stored record (0: nothing stored yet).
pub type Version = u64;

/// Outcome of a compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Stored, now at this version.
    Ok(Version),
    /// The stored version differs: re-read and retry.
    Conflict,
}

/// Where the record lives. Calls may block (the caller runs them on a blocking thread).
pub trait MembershipStore: Send + Sync + std::fmt::Debug + 'static {
    /// The record and its version (a default record at version 0 when none is stored).
    fn read(&self) -> Result<(Record, Version), StoreError>;
    /// Replaces the record if it is still at `v`.
    fn cas(&self, v: Version, r: &Record) -> Result<Cas, StoreError>;
}

/// The record in a directory: `membership.json` plus `membership.lock`.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

const FILE_MAGIC: &str = "cstor-membership";
const FILE_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    magic: String,
    format: u32,
    version: Version,
    /// CRC32C of the compact JSON of `record`.
    checksum: u32,
    record: Record,
}

struct Flock(File);

impl Flock {
    fn take(path: &Path) -> Result<Flock, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(StoreError::Unavailable(format!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(Flock(f))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl FileStore {
    /// A store in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        Ok(FileStore { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("membership.json")
    }

    fn read_unlocked(&self) -> Result<(Record, Version), StoreError> {
        let path = self.path();
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Record::default(), 0))
            }
            Err(e) => return Err(StoreError::Unavailable(format!("{}: {e}", path.display()))),
        };
        let d: OnDisk = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        if d.magic != FILE_MAGIC {
            return Err(StoreError::Corrupt(format!(
                "{}: bad magic",
                path.display()
            )));
        }
        if d.format != FILE_FORMAT {
            return Err(StoreError::Corrupt(format!(
                "{}: format {} (this build reads {FILE_FORMAT})",
                path.display(),
                d.format
            )));
        }
        let body = serde_json::to_vec(&d.record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if crc32c::crc32c(&body) != d.checksum {
            return Err(StoreError::Corrupt(format!(
                "{}: checksum mismatch",
                path.display()
            )));
        }
        Ok((d.record, d.version))
    }
}

impl MembershipStore for FileStore {
    fn read(&self) -> Result<(Record, Version), StoreError> {
        let _l = Flock::take(&self.dir.join("membership.lock"))?;
        self.read_unlocked()
    }

    fn cas(&self, v: Version, r: &Record) -> Result<Cas, StoreError> {
        let _l = Flock::take(&self.dir.join("membership.lock"))?;
        let (_, cur) = self.read_unlocked()?;
        if cur != v {
            return Ok(Cas::Conflict);
        }
        let body = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let d = OnDisk {
            magic: FILE_MAGIC.into(),
            format: FILE_FORMAT,
            version: v + 1,
            checksum: crc32c::crc32c(&body),
            record: r.clone(),
        };
        let text = serde_json::to_vec_pretty(&d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tmp = self.dir.join("membership.json.tmp");
        let un = |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", tmp.display()));
        let mut f = File::create(&tmp).map_err(un)?;
        f.write_all(&text).map_err(un)?;
        f.sync_all().map_err(un)?;
        drop(f);
        std::fs::rename(&tmp, self.path()).map_err(un)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(un)?;
        Ok(Cas::Ok(v + 1))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_cas_versions_conflicts_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(d.path()).unwrap();
        let (r, v) = s.read().unwrap();
        assert_eq!((r.epoch, v), (0, 0));
        let mut r2 = r.clone();
        r2.epoch = 1;
        assert_eq!(s.cas(0, &r2).unwrap(), Cas::Ok(1));
        // A stale version loses.
        assert_eq!(s.cas(0, &r2).unwrap(), Cas::Conflict);
        let (r3, v3) = FileStore::new(d.path()).unwrap().read().unwrap();
        assert_eq!((r3.epoch, v3), (1, 1));
        // A flipped byte in the record is caught by the checksum.
        let p = d.path().join("membership.json");
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, t.replace("\"epoch\": 1", "\"epoch\": 2")).unwrap();
        assert!(matches!(s.read(), Err(StoreError::Corrupt(_))));
    }
}

/// SCSI persistent-reservation state kept in the record's `pr` field (design §2.9), so
/// reservations survive target restarts and moves. Only the epoch holder writes it.
#[derive(Debug, Clone)]
pub struct RecordReservations {
    store: std::sync::Arc<dyn MembershipStore>,
    epoch: u64,
}

impl RecordReservations {
    /// The reservation store of the target instance holding `epoch`.
    pub fn new(store: std::sync::Arc<dyn MembershipStore>, epoch: u64) -> RecordReservations {
        RecordReservations { store, epoch }
    }
}

fn pr_err(e: StoreError) -> cstor_iscsi::StoreError {
    cstor_iscsi::StoreError::Io(std::io::Error::other(e.to_string()))
}

impl cstor_iscsi::ReservationStore for RecordReservations {
    fn load(&self) -> Result<Option<Vec<u8>>, cstor_iscsi::StoreError> {
        let (r, _) = self.store.read().map_err(pr_err)?;
        Ok(r.pr.as_deref().and_then(crate::wire::unhex))
    }

    fn compare_and_swap(
        &self,
        expected: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<(), cstor_iscsi::StoreError> {
        loop {
            let (mut r, v) = self.store.read().map_err(pr_err)?;
            if r.epoch != self.epoch {
                return Err(cstor_iscsi::StoreError::Io(std::io::Error::other(
                    "fenced: another target instance holds the volume",
                )));
            }
            let cur = r.pr.as_deref().and_then(crate::wire::unhex);
            if cur.as_deref() != expected {
                return Err(cstor_iscsi::StoreError::Conflict);
            }
            r.pr = next.map(crate::wire::hex);
            match self.store.cas(v, &r).map_err(pr_err)? {
                Cas::Ok(_) => return Ok(()),
                // Another field changed (the volume's own CAS): retry on the new version.
                Cas::Conflict => continue,
            }
        }
    }
}
