//! The FUSE side: a passthrough file system over the backing directory that routes file
//! data through the [`Model`] and applies metadata ops to the backing directory at once.
//!
//! Owns: the inode table (FUSE inode → path relative to the backing root) and the open
//! handle table.
//! Invariants: FUSE inode numbers are the backing inode numbers, with the backing root and
//! inode 1 swapped (FUSE reserves 1 for the root), so the mapping is a bijection; every
//! reply asks the kernel to cache nothing (zero TTLs, `FOPEN_DIRECT_IO`), so every read
//! and write of a process reaches the model.
//! Never: reply to a data op after the power went off with anything but EIO, or hold a
//! leaf lock (nodes, handles) while waiting on the gate.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;

use crate::model::{Handle, Model};

/// Nothing is cached by the kernel: attributes and names are asked for every time.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// The file system handed to fuser.
#[derive(Debug)]
pub(crate) struct PowerFs {
    pub(crate) shared: Arc<Shared>,
}

/// State shared between the FUSE threads and the control handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) model: Model,
    backing: PathBuf,
    root_st_ino: u64,
    /// FUSE inode → path relative to the backing root ("" for the root).
    nodes: Mutex<HashMap<u64, PathBuf>>,
    handles: Mutex<HashMap<u64, OpenHandle>>,
    next_fh: AtomicU64,
}

#[derive(Debug, Clone)]
struct OpenHandle {
    h: Handle,
    /// The file's path when it was opened: what faults are matched against.
    path: PathBuf,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn rx(e: rustix::io::Errno) -> io::Error {
    e.into()
}

impl Shared {
    pub(crate) fn new(backing: PathBuf) -> io::Result<Shared> {
        let root_st_ino = std::fs::metadata(&backing)?.ino();
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, PathBuf::new());
        Ok(Shared {
            model: Model::new(),
            backing,
            root_st_ino,
            nodes: Mutex::new(nodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_st_ino {
            ROOT
        } else if st_ino == ROOT {
            self.root_st_ino
        } else {
            st_ino
        }
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.nodes.lock().get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    /// The name an inode is known by, for the seeded cut (its path now, else its number).
    pub(crate) fn name_of(&self, ino: u64) -> String {
        match self.nodes.lock().get(&ino) {
            Some(p) => p.to_string_lossy().into_owned(),
            None => format!("#{ino}"),
        }
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel(parent)?.join(name))
    }

    fn attr(&self, m: &std::fs::Metadata) -> FileAttr {
        let kind = FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile);
        let time = |s: i64, ns: i64| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, ns.clamp(0, 999_999_999) as u32)
            } else {
                UNIX_EPOCH
            }
        };
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.len(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// lstat `rel` and remember it as its inode's path.
    fn register(&self, rel: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.abs(&rel)).map_err(errno)?;
        let attr = self.attr(&m);
        self.nodes.lock().insert(attr.ino.0, rel);
        Ok(attr)
    }

    fn handle(&self, fh: FileHandle) -> Result<OpenHandle, Errno> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Runs `f` on the open handle `fh` inside its power epoch, so every handle operation
    /// fails with EIO once the power is cut under it.
    fn in_handle<T>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&OpenHandle) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let h = self.handle(fh)?;
        let _g = self
            .model
            .enter_handle(&h.h, Some(&h.path))
            .map_err(errno)?;
        f(&h)
    }

    /// Open a handle in power epoch `epoch`, read from the caller's guard: taking the
    /// gate again here would deadlock behind a cut waiting for it.
    fn open_handle(&self, ino: u64, rel: PathBuf, flags: i32, epoch: u64) -> Result<u64, Errno> {
        let file = self.model.file_state(ino, &self.abs(&rel)).map_err(errno)?;
        file.open_handles.fetch_add(1, Ordering::SeqCst);
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let h = Handle {
            file,
            epoch,
            sync: flags & (libc::O_SYNC | libc::O_DSYNC) != 0,
        };
        self.handles.lock().insert(fh, OpenHandle { h, path: rel });
        Ok(fh)
    }

    /// After `rel` lost a name: forget an inode nobody can reach any more.
    fn unlinked(&self, ino: u64, rel: &Path) {
        let mut nodes = self.nodes.lock();
        if nodes.get(&ino).map(PathBuf::as_path) == Some(rel) {
            nodes.remove(&ino);
        }
        drop(nodes);
        if let Some(f) = self.model.existing(ino) {
            if f.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true)
                && f.open_handles.load(Ordering::SeqCst) == 0
            {
                // Unsynced data of a file with no name and no opener can never be read.
                let _ = self.model.set_len(&f, 0);
                self.model.maybe_forget(&f);
            }
        }
    }

    fn rename_nodes(&self, from: &Path, to: &Path, exchange: bool) {
        let mut nodes = self.nodes.lock();
        let swap = |p: &Path, a: &Path, b: &Path| p.strip_prefix(a).ok().map(|r| b.join(r));
        for p in nodes.values_mut() {
            let new = match swap(p, from, to) {
                Some(n) => Some(n),
                None if exchange => swap(p, to, from),
                None => None,
            };
            if let Some(n) = new {
                *p = n;
            }
        }
    }
}

fn time_spec(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()) as _,
            }
        }
    }
}

impl PowerFs {
    fn s(&self) -> &Shared {
        &self.shared
    }

    /// unlink and rmdir: remove `name` under `parent` with `op`, then forget its inode.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        op: fn(&std::path::Path) -> std::io::Result<()>,
    ) {
        let r = (|| {
            let rel = self.s().child(parent, name)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            let abs = self.s().abs(&rel);
            let ino = self
                .s()
                .fuse_ino(std::fs::symlink_metadata(&abs).map_err(errno)?.ino());
            op(&abs).map_err(errno)?;
            self.s().unlinked(ino, &rel);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let rel = self.s().child(parent, name)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            self.s().register(rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = (|| {
            let _g = self.s().model.enter(None).map_err(errno)?;
            let m = match fh.and_then(|fh| self.s().handle(fh).ok()) {
                Some(h) => h.h.file.file.metadata().map_err(errno)?,
                None => {
                    std::fs::symlink_metadata(self.s().abs(&self.s().rel(ino)?)).map_err(errno)?
                }
            };
            Ok(self.s().attr(&m))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let s = self.s();
            let rel = s.rel(ino)?;
            let _g = s.model.enter(Some(&rel)).map_err(errno)?;
            let abs = s.abs(&rel);
            if let Some(size) = size {
                let f = match fh.and_then(|fh| s.handle(fh).ok()) {
                    Some(h) => h.h.file,
                    None => s.model.file_state(ino.0, &abs).map_err(errno)?,
                };
                let r = s.model.set_len(&f, size);
                s.model.maybe_forget(&f);
                r.map_err(errno)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&abs, uid, gid).map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let ts = rustix::fs::Timestamps {
                    last_access: time_spec(atime),
                    last_modification: time_spec(mtime),
                };
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &abs,
                    &ts,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| errno(rx(e)))?;
            }
            let m = std::fs::symlink_metadata(&abs).map_err(errno)?;
            Ok(s.attr(&m))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = (|| {
            let rel = self.s().rel(ino)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            std::fs::read_link(self.s().abs(&rel)).map_err(errno)
        })();
        match r {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let rel = self.s().child(parent, name)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                self.s().abs(&rel),
                rustix::fs::FileType::from_raw_mode(mode),
                rustix::fs::Mode::from_raw_mode(mode & !umask & 0o7777),
                u64::from(rdev),
            )
            .map_err(|e| errno(rx(e)))?;
            self.s().register(rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let rel = self.s().child(parent, name)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(self.s().abs(&rel))
                .map_err(errno)?;
            self.s().register(rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_dir(p));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let rel = self.s().child(parent, link_name)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            std::os::unix::fs::symlink(target, self.s().abs(&rel)).map_err(errno)?;
            self.s().register(rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let s = self.s();
            let from = s.child(parent, name)?;
            let to = s.child(newparent, newname)?;
            let _g = s.model.enter(Some(&from)).map_err(errno)?;
            let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
            let replaced = std::fs::symlink_metadata(s.abs(&to))
                .ok()
                .map(|m| s.fuse_ino(m.ino()));
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                s.abs(&from),
                rustix::fs::CWD,
                s.abs(&to),
                rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
            )
            .map_err(|e| errno(rx(e)))?;
            if let (Some(ino), false) = (replaced, exchange) {
                s.unlinked(ino, &to);
            }
            s.rename_nodes(&from, &to, exchange);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let rel = self.s().rel(ino)?;
            let g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            let fh = self.s().open_handle(ino.0, rel, flags.0, g.epoch)?;
            if flags.0 & libc::O_TRUNC != 0 {
                let h = self.s().handle(FileHandle(fh))?;
                self.s().model.set_len(&h.h.file, 0).map_err(errno)?;
            }
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.s().in_handle(fh, |h| {
            self.s()
                .model
                .read(&h.h.file, Some(&h.path), offset, size)
                .map_err(errno)
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.s().in_handle(fh, |h| {
            self.s().model.write(&h.h, offset, data).map_err(errno)
        });
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is no durability point: nothing to write back.
        let r = self.s().in_handle(fh, |_| Ok(()));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Served even while the power is off: a dying process closes its files.
        if let Some(h) = self.s().handles.lock().remove(&fh.0) {
            h.h.file.open_handles.fetch_sub(1, Ordering::SeqCst);
            self.s().model.maybe_forget(&h.h.file);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.s().in_handle(fh, |h| {
            self.s()
                .model
                .fsync(&h.h.file, Some(&h.path))
                .map_err(errno)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let rel = self.s().rel(ino)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            Ok(())
        })();
        match r {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
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
        let r = (|| {
            let rel = self.s().rel(ino)?;
            let _g = self.s().model.enter(Some(&rel)).map_err(errno)?;
            let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let mut names = Vec::new();
            for e in std::fs::read_dir(self.s().abs(&rel)).map_err(errno)? {
                let e = e.map_err(errno)?;
                let Ok(m) = e.metadata() else { continue };
                let kind = FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile);
                names.push((self.s().fuse_ino(m.ino()), kind, e.file_name()));
            }
            names.sort_by(|a, b| a.2.cmp(&b.2));
            entries.extend(names);
            Ok(entries)
        })();
        match r {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are durable when they happen.
        match self.s().model.enter(None) {
            Ok(_g) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.s().backing) {
            Ok(v) => reply.statfs(
                v.f_blocks,
                v.f_bfree,
                v.f_bavail,
                v.f_files,
                v.f_ffree,
                v.f_bsize as u32,
                v.f_namemax as u32,
                v.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(rx(e))),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let s = self.s();
            let rel = s.child(parent, name)?;
            let g = s.model.enter(Some(&rel)).map_err(errno)?;
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            drop(o.open(s.abs(&rel)).map_err(errno)?);
            let attr = s.register(rel.clone())?;
            let fh = s.open_handle(attr.ino.0, rel, flags, g.epoch)?;
            if flags & libc::O_TRUNC != 0 {
                let h = s.handle(FileHandle(fh))?;
                s.model.set_len(&h.h.file, 0).map_err(errno)?;
            }
            let m = std::fs::symlink_metadata(s.abs(&s.rel(attr.ino)?)).map_err(errno)?;
            Ok((s.attr(&m), fh))
        })();
        match r {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.s().in_handle(fh, |h| {
            self.s()
                .model
                .fallocate(&h.h.file, offset, length, mode)
                .map_err(errno)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
