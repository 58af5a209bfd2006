//! cstor-powercut: a FUSE file system for tests that loses power on command.
//!
//! [`PowerCut::mount`] serves a backing directory at a mount point (in-process, fuser
//! background threads). Any process's real file I/O runs unchanged on files inside the
//! mount (the pool's file devices, redb files, `<file>.pr` temp+rename stores), while the
//! layer keeps the durability model of a disk with a volatile write cache:
//!
//! - **Data writes are volatile.** `write`/`pwrite` land in a per-file overlay of whole
//!   4 KiB sectors held in memory over the backing file (a partial write merges the old
//!   bytes into its sector). Reads see the overlay: page-cache semantics.
//! - **fsync and fdatasync** make that file's overlay durable (written to the backing
//!   file). Files opened with `O_SYNC` or `O_DSYNC` write through: durable on return.
//! - **Metadata is durable at once** (the simplest safe choice, stated so nobody relies
//!   on more): create, mkdir, mknod, symlink, unlink, rmdir, rename, chmod/chown/utimes,
//!   truncate (setattr size, `O_TRUNC`), fallocate (a punched or zeroed range is zeroed in
//!   the overlay too), and a write that extends a file grows it at once (the grown range
//!   reads as zeros after a cut unless its sectors were synced or survived). `fsyncdir` is
//!   accepted and does nothing more. So a temp file renamed over a store without an fsync
//!   of its data may come back with the new name and zeroed or partly old sectors — as on
//!   ext4 without `auto_da_alloc`, the harsh but legal case. Hard links are refused
//!   (EPERM); renames that replace or exchange names are supported.
//! - **No kernel caching hides the model:** every open gets `FOPEN_DIRECT_IO` and every
//!   reply zero attribute and entry TTLs, so each read and write reaches the layer.
//!   (Shared writable `mmap` of a file in the mount is refused by the kernel for direct
//!   I/O files; none of our stores map files.)
//!
//! [`Control::cut`] turns the power off at any moment: ops already running finish first,
//! then every op fails with **EIO** (it does not block, so killed or surviving processes
//! never hang); then each unsynced sector independently survives or vanishes, decided by
//! a hash of the seed, the file's path and the sector index (so the same seed over the
//! same unsynced state gives the same result, and a sector is never torn). Handles opened
//! before a cut fail with EIO forever, even after [`Control::power_on`]: on real hardware
//! the process that held them died with the power, so a stale writer left in a test can
//! never land bytes after the cut. `close` (release) is always served.
//!
//! Faults: [`Control::fail_next_fsync`] fails the next fsync of one file (or any file)
//! with EIO; like Linux, the failed write-back leaves the file's unsynced sectors readable
//! but marks them clean, so they never become durable (a later fsync succeeds without
//! them) and always vanish at the next cut — unless rewritten, which makes the whole
//! sector dirty again. [`Control::fail_reads`] fails reads overlapping a byte range of a
//! file; [`Control::stall`] makes ops on a file (or all) wait for a while before they
//! start (a cut during a stall fails them at once). Faults name files by their path
//! relative to the mount root, as it was when the file was opened.
//!
//! Owns: the mount (unmounted on drop, even with files still open in it: the connection
//! is aborted first) and the model state. Invariants: see `model`. Limits: the backing
//! files are never fsynced (the host does not lose power; the backing file is the
//! platter); the model has no reordering of metadata against data, no torn metadata and
//! no lost directory entries; the atomic unit is a 4 KiB sector (as a 4Kn disk or the
//! page cache writes back), so a write is never torn within an aligned 4 KiB; a large
//! `pwrite` the kernel splits into several FUSE requests (above 128 KiB or so) may be cut
//! between them, still whole per sector. FUSE requests are served by a few threads, so
//! more stalled ops at once than threads stall the whole mount.
//!
//! [`units`] holds the checker the scenario tests share: generation-tagged 4 KiB units
//! and the old-or-new, nothing-flushed-lost, never-torn promise after an import.
//!
//! Failures must be replayable: tests draw cut seeds from [`seed_base`], which reads
//! [`SEED_ENV`] (`CSTOR_POWERCUT_SEED`), and print the seed in every failure message.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod fs;
mod model;
pub mod units;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use model::{CutReport, SECTOR};

/// Environment variable that fixes the base seed of a test's cuts, to replay a failure.
pub const SEED_ENV: &str = "CSTOR_POWERCUT_SEED";

/// Default share of unsynced sectors that survive a cut, per mille.
pub const DEFAULT_SURVIVE_PER_MILLE: u16 = 500;

/// FUSE worker threads: enough that a stalled op does not stall the whole mount.
const FUSE_THREADS: usize = 4;

/// Errors of the power-cut layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mount could not be set up (no /dev/fuse, not root, no fusermount3, ...).
    #[error("cannot mount the power-cut file system at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory for the mount could not be made.
    #[error("{path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A mounted power-cut file system. Dropping it unmounts.
#[derive(Debug)]
pub struct PowerCut {
    control: Control,
    mountpoint: PathBuf,
    backing: PathBuf,
    /// Connection id under /sys/fs/fuse/connections, to abort it on drop.
    conn: Option<u64>,
    session: Option<fuser::BackgroundSession>,
    /// The temporary directory holding both, for [`PowerCut::mount_temp`].
    _temp: Option<tempfile::TempDir>,
}

/// Control handle of a mount: cut the power, power on, inject faults. Cheap to clone and
/// usable from any thread.
#[derive(Debug, Clone)]
pub struct Control {
    shared: Arc<fs::Shared>,
    mountpoint: Arc<PathBuf>,
}

impl PowerCut {
    /// Serve `backing` (an existing directory) at `mountpoint` (an existing, empty
    /// directory).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<PowerCut, Error> {
        let backing = backing.canonicalize().map_err(|source| Error::Dir {
            path: backing.to_owned(),
            source,
        })?;
        let mountpoint = mountpoint.canonicalize().map_err(|source| Error::Dir {
            path: mountpoint.to_owned(),
            source,
        })?;
        let mount_err = |source| Error::Mount {
            path: mountpoint.clone(),
            source,
        };
        let shared = Arc::new(fs::Shared::new(backing.clone()).map_err(mount_err)?);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("cstor-powercut".into()),
            fuser::MountOption::Subtype("powercut".into()),
            fuser::MountOption::RW,
            fuser::MountOption::NoAtime,
        ];
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let fsys = fs::PowerFs {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(fsys, &mountpoint, &config).map_err(mount_err)?;
        let conn = std::os::unix::fs::MetadataExt::dev(
            &std::fs::metadata(&mountpoint).map_err(mount_err)?,
        );
        Ok(PowerCut {
            control: Control {
                shared,
                mountpoint: Arc::new(mountpoint.clone()),
            },
            mountpoint,
            backing,
            conn: Some(conn),
            session: Some(session),
            _temp: None,
        })
    }

    /// Mount over a fresh temporary directory (`<tmp>/backing` served at `<tmp>/mnt`);
    /// both are removed on drop.
    pub fn mount_temp() -> Result<PowerCut, Error> {
        let temp = tempfile::Builder::new()
            .prefix("cstor-powercut")
            .tempdir()
            .map_err(|source| Error::Dir {
                path: std::env::temp_dir(),
                source,
            })?;
        let backing = temp.path().join("backing");
        let mnt = temp.path().join("mnt");
        for d in [&backing, &mnt] {
            std::fs::create_dir(d).map_err(|source| Error::Dir {
                path: d.clone(),
                source,
            })?;
        }
        let mut pc = PowerCut::mount(&backing, &mnt)?;
        pc._temp = Some(temp);
        Ok(pc)
    }

    /// Mount a temporary power-cut file system for a test. Without FUSE (no /dev/fuse,
    /// not root) it returns `None` after printing why, so the caller skips — unless the
    /// `CI` env var is set, where a missing tool must fail the test: then it panics.
    pub fn for_test(test: &str) -> Option<PowerCut> {
        match PowerCut::mount_temp() {
            Ok(pc) => Some(pc),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("{test}: the power-cut layer needs FUSE (CI is set): {e}")
            }
            Err(e) => {
                eprintln!("{test}: skipped, no FUSE here: {e}");
                None
            }
        }
    }

    /// Where the file system is mounted: put the files under test here.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (the durable state; do not write it while mounted).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// A control handle for other threads.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// See [`Control::cut`].
    pub fn cut(&self, seed: u64) -> CutReport {
        self.control.cut(seed)
    }

    /// See [`Control::power_on`].
    pub fn power_on(&self) {
        self.control.power_on()
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        // Abort the connection first: a process still holding files in the mount (a
        // child that outlived its test) would otherwise keep the unmount, and the join
        // of the FUSE threads, waiting forever.
        if let Some(conn) = self.conn.take() {
            let abort = format!("/sys/fs/fuse/connections/{conn}/abort");
            let _ = std::fs::write(abort, b"1");
        }
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                let _ =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

impl Control {
    /// Cut the power, with [`DEFAULT_SURVIVE_PER_MILLE`] of the unsynced sectors
    /// surviving. Waits for ops in flight; from then on every op fails with EIO until
    /// [`Control::power_on`], and handles opened before now fail forever. Cutting while
    /// already off does nothing (an empty report).
    pub fn cut(&self, seed: u64) -> CutReport {
        self.cut_with(seed, DEFAULT_SURVIVE_PER_MILLE)
    }

    /// [`Control::cut`] with `survive_per_mille` (0..=1000) of the unsynced sectors
    /// surviving: 0 drops every unsynced write, 1000 keeps them all.
    pub fn cut_with(&self, seed: u64, survive_per_mille: u16) -> CutReport {
        let shared = &self.shared;
        shared.model.cut(seed, survive_per_mille.min(1000), &|ino| {
            shared.name_of(ino)
        })
    }

    /// Power on: serve ops again over what survived.
    pub fn power_on(&self) {
        self.shared.model.power_on()
    }

    /// True while the power is off.
    pub fn is_off(&self) -> bool {
        self.shared.model.is_off()
    }

    /// Make the next fsync/fdatasync of `file` (a path relative to the mount root, or an
    /// absolute path inside it; `None` for any file) fail with EIO.
    pub fn fail_next_fsync(&self, file: Option<&Path>) {
        self.fail_fsyncs(file, 1)
    }

    /// Make the next `count` fsyncs of `file` (or of any file) fail with EIO.
    pub fn fail_fsyncs(&self, file: Option<&Path>, count: u64) {
        self.shared
            .model
            .fail_fsyncs(file.map(|f| self.relative(f)), count)
    }

    /// Fail every read of `file` overlapping `range` (bytes) with EIO, until
    /// [`Control::clear_faults`].
    pub fn fail_reads(&self, file: &Path, range: std::ops::Range<u64>) {
        self.shared
            .model
            .fail_reads(self.relative(file), range.start, range.end)
    }

    /// Make every op on `file` (or on any file) that starts within the next `duration`
    /// wait until it has passed.
    pub fn stall(&self, file: Option<&Path>, duration: Duration) {
        self.shared
            .model
            .stall(file.map(|f| self.relative(f)), duration)
    }

    /// Remove every injected fault.
    pub fn clear_faults(&self) {
        self.shared.model.clear_faults()
    }

    /// Unsynced sectors held now, over all files.
    pub fn unsynced_sectors(&self) -> u64 {
        self.shared.model.unsynced_sectors()
    }

    /// Counters since the mount.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.model.counters;
        Stats {
            writes: c.writes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            fsync_faults: c.fsync_faults.load(Ordering::Relaxed),
            read_faults: c.read_faults.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
        }
    }

    fn relative(&self, p: &Path) -> PathBuf {
        p.strip_prefix(self.mountpoint.as_path())
            .unwrap_or(p)
            .to_owned()
    }
}

/// Counters of a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write requests served.
    pub writes: u64,
    /// fsync/fdatasync requests served (failed ones too).
    pub fsyncs: u64,
    /// fsyncs failed by an injected fault.
    pub fsync_faults: u64,
    /// Reads failed by an injected fault.
    pub read_faults: u64,
    /// Cuts.
    pub cuts: u64,
}

/// The base seed of a test's cuts: [`SEED_ENV`] if set (decimal or 0x-hex), else
/// `default`. Print every seed derived from it in failure messages.
pub fn seed_base(default: u64) -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| parse_seed(&s))
        .unwrap_or(default)
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A small seeded generator (SplitMix64) for tests that must replay from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        model::splitmix(self.0.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }

    /// Uniform in `0..n` (`n` > 0; 0 for `n` == 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_parse() {
        assert_eq!(super::parse_seed("42"), Some(42));
        assert_eq!(super::parse_seed("0x2a"), Some(42));
        assert_eq!(super::parse_seed("x"), None);
    }
}
