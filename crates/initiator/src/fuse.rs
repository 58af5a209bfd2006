//! A LUN exposed as one file, `lun`, in a FUSE filesystem (fuser, background threads).
//!
//! Owns: the mount. Reads, writes and fsync of the file become READ(16), WRITE(16) and
//! SYNCHRONIZE CACHE(16) on the session; the file's size is the LUN's capacity (read anew
//! on every getattr, so a grown LUN shows at once). Invariants: every open gets
//! `FOPEN_DIRECT_IO` and zero TTLs, so the kernel caches nothing and an fsync covers every
//! write that returned; a write returns only after the target answered GOOD; a write that
//! does not cover whole blocks is a read-modify-write done under an exclusive lock that
//! whole-block writes respect (shared), so two partial writes to one block never lose
//! each other. Never: block the async runtime (FUSE threads enter it with a handle).
//! Limits: one file, no truncate to another size, no mmap of the file.

use crate::session::Session;
use crate::Error;
use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::RwLock;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Name of the file that holds the LUN.
pub const LUN_FILE: &str = "lun";

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
const LUN_INO: u64 = 2;
/// FUSE worker threads: the queue depth the file can reach.
const FUSE_THREADS: usize = 8;

/// Mounting or unmounting the FUSE filesystem failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    /// Mount failed (no /dev/fuse, not root, directory missing...).
    #[error("cannot mount the LUN file system at {path}: {source}")]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Unmount failed (the file is still open, e.g. by a loop device).
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        /// Mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A mounted LUN file. Dropping it unmounts (forcibly, if the file is still in use).
#[derive(Debug)]
pub struct FuseExport {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    /// FUSE connection number, to abort a mount that cannot be unmounted cleanly.
    conn: Option<u64>,
}

struct LunFs {
    session: Session,
    rt: tokio::runtime::Handle,
    /// Whole-block writes take it shared, read-modify-writes exclusive.
    rmw: RwLock<()>,
    uid: u32,
    gid: u32,
    born: SystemTime,
}

impl std::fmt::Debug for LunFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LunFs")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn errno(e: &Error) -> Errno {
    match e {
        Error::Invalid(_) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl LunFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink, blksize) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2, 4096)
        } else {
            let cap = self.session.capacity();
            (FileType::RegularFile, 0o600, cap.bytes(), 1, cap.block_size)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.born,
            mtime: self.born,
            ctime: self.born,
            crtime: self.born,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize,
            flags: 0,
        }
    }

    fn read_bytes(&self, offset: u64, size: u32) -> Result<Vec<u8>, Error> {
        let cap = self.session.capacity();
        let total = cap.bytes();
        if offset >= total || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + u64::from(size)).min(total);
        let bs = u64::from(cap.block_size);
        let first = offset / bs;
        let last = end.div_ceil(bs);
        let mut buf = vec![0u8; ((last - first) * bs) as usize];
        self.rt.block_on(self.session.read(first, &mut buf))?;
        let from = (offset - first * bs) as usize;
        buf.truncate(from + (end - offset) as usize);
        buf.drain(..from);
        Ok(buf)
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let cap = self.session.capacity();
        let end = offset + data.len() as u64;
        if end > cap.bytes() {
            return Err(Errno::ENOSPC);
        }
        let bs = u64::from(cap.block_size);
        if offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            let _shared = self.rmw.read();
            return self
                .rt
                .block_on(self.session.write(offset / bs, data))
                .map_err(|e| self.fail("write", &e));
        }
        let _exclusive = self.rmw.write();
        let first = offset / bs;
        let last = end.div_ceil(bs);
        let mut buf = vec![0u8; ((last - first) * bs) as usize];
        self.rt
            .block_on(self.session.read(first, &mut buf))
            .map_err(|e| self.fail("read-modify-write", &e))?;
        let at = (offset - first * bs) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.rt
            .block_on(self.session.write(first, &buf))
            .map_err(|e| self.fail("read-modify-write", &e))
    }

    fn fail(&self, what: &str, e: &Error) -> Errno {
        tracing::warn!(target = %self.session.spec().target_iqn, error = %e, "{what} of the LUN file failed");
        errno(e)
    }
}

impl Filesystem for LunFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == LUN_FILE {
            reply.entry(&TTL, &self.attr(LUN_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | LUN_INO => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The LUN's size is the target's; only a no-op truncate (O_TRUNC of nothing) is
        // accepted. Times and modes are not stored.
        if ino.0 == LUN_INO && size.is_some_and(|s| s != self.session.capacity().bytes()) {
            reply.error(Errno::EPERM);
            return;
        }
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == LUN_INO {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != LUN_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        match self.read_bytes(offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(self.fail("read", &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != LUN_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        match self.write_bytes(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is no durability point; fsync is.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.rt.block_on(self.session.flush()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fsync", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (LUN_INO, FileType::RegularFile, LUN_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

impl FuseExport {
    /// Mounts a filesystem at `dir` (an existing empty directory) whose file
    /// [`LUN_FILE`] is the session's LUN. `rt` is the runtime the session runs on.
    pub fn mount(
        session: Session,
        rt: tokio::runtime::Handle,
        dir: &Path,
    ) -> Result<FuseExport, FuseError> {
        let mount_err = |source| FuseError::Mount {
            path: dir.to_owned(),
            source,
        };
        let mountpoint = dir.canonicalize().map_err(mount_err)?;
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let fs = LunFs {
            session,
            rt,
            rmw: RwLock::new(()),
            uid,
            gid,
            born: SystemTime::now(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("cstor-initiator".into()),
            fuser::MountOption::Subtype("cstor".into()),
            fuser::MountOption::RW,
            fuser::MountOption::NoAtime,
        ];
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let bg = fuser::spawn_mount(fs, &mountpoint, &config).map_err(mount_err)?;
        let conn = std::fs::metadata(&mountpoint)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .ok();
        Ok(FuseExport {
            mountpoint,
            session: Some(bg),
            conn,
        })
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The file that holds the LUN (for a loop device).
    pub fn file(&self) -> PathBuf {
        self.mountpoint.join(LUN_FILE)
    }

    /// False once the filesystem was unmounted (`umount`, `cstor initiator detach`).
    pub fn is_mounted(&self) -> bool {
        // After an outside unmount the FUSE threads may stay blocked on the device for a
        // while, so the mount table decides.
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
            && crate::blockdev::is_lun_mount(&self.mountpoint)
    }

    /// Unmounts cleanly; fails (and stays mounted) while the file is in use (a loop
    /// device on it: detach that first). The FUSE threads end on their own afterwards.
    pub fn unmount(&mut self) -> Result<(), FuseError> {
        if self.is_mounted() {
            if let Err(source) = crate::blockdev::unmount(&self.mountpoint) {
                return Err(FuseError::Unmount {
                    path: self.mountpoint.clone(),
                    source,
                });
            }
        }
        // Not joined: a thread still blocked reading the dead connection must not hold
        // up the caller; dropping the handle detaches the threads.
        self.session = None;
        Ok(())
    }
}

impl Drop for FuseExport {
    fn drop(&mut self) {
        if !self.is_mounted() {
            return;
        }
        // Abort the connection first so a file still held open (a loop device left by a
        // failed caller) cannot keep the mount busy, then detach the mount.
        if let Some(conn) = self.conn.take() {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), b"1");
        }
        if crate::blockdev::unmount(&self.mountpoint).is_err() {
            let _ = crate::blockdev::unmount_lazy(&self.mountpoint);
        }
        self.session = None;
    }
}
