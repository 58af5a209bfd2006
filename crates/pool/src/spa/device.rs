//! Device I/O: the small [`Device`] trait every vdev leaf sits on, and its file/block
//! device implementation.
//!
//! Owns: one open file descriptor per device, locked with `flock(LOCK_EX|LOCK_NB)` for as
//! long as the pool holds it, so a second process (whatever its config dir) cannot open a
//! pool that is in use.
//! Invariants: every offset and length passed down is a multiple of [`SECTOR_BYTES`]
//! (asserted); `flush` is `fdatasync`, never retried after a failure (the caller latches
//! the device faulted).
//! Never: no caching, no retries, no interpretation of bytes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};

use super::error::SpaError;
use super::limits::{LOCK_POLL, LOCK_WAIT, SECTOR_BYTES};

/// Sector-granular blocking storage: a file, a loop device, a disk, or a test device.
pub trait Device: Send + Sync + fmt::Debug {
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset` (not durable until [`Device::flush`]).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Path (or test name) for messages and labels.
    fn path(&self) -> &str;
    /// Read `bufs` back to back from `offset` (one `preadv` on a file). Lets a reader of
    /// neighbouring blocks pay one request and one hand-off to a device thread instead of
    /// one per block. The default reads them one by one.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    /// Read `bufs` back to back from `offset` only if that needs no device I/O (the bytes
    /// are in the page cache), on the caller's thread; `None` when it would have to wait
    /// for the device, or the device cannot tell (the default). Why: a read the page
    /// cache can answer took a hand-off to a device thread and back, two scheduler
    /// round trips that cost far more than the copy (most of a 4 KiB random read of a
    /// volume). A read that may wait for the device still goes to the device threads,
    /// whose deadline keeps a hung device from blocking its caller.
    fn read_cached_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> Option<()> {
        let _ = (bufs, offset);
        None
    }
    /// [`Device::read_cached_at`] into new buffers of `lens` bytes, back to back from
    /// `offset`. The default zeroes them first; a file reads into uninitialised ones:
    /// the zeroing cost as much as the checksum on a volume's cached reads.
    fn read_cached_owned(&self, lens: &[usize], offset: u64) -> Option<Vec<Vec<u8>>> {
        let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        self.read_cached_at(&mut slices, offset)?;
        Some(bufs)
    }
    /// Write `bufs` back to back from `offset` (one `pwritev` on a file): a commit writes
    /// the blocks it allocated next to each other in one request. The default writes
    /// them one by one.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs {
            self.write_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
}

/// A regular or sparse file, loop device or whole disk, opened with pread/pwrite.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: String,
    size_bytes: u64,
}

impl FileDevice {
    /// Open `path` read-write and lock it exclusively. Fails with [`SpaError::DeviceBusy`]
    /// if another open holds the lock.
    pub fn open(path: &str) -> Result<Self, SpaError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| SpaError::io(path, "open", 0, e))?;
        lock_exclusive(&file, path)?;
        let meta = file
            .metadata()
            .map_err(|e| SpaError::io(path, "stat", 0, e))?;
        let size_bytes = if meta.file_type().is_block_device() {
            // Seeking to the end of a block device yields its size (as BLKGETSIZE64).
            file.seek(SeekFrom::End(0))
                .map_err(|e| SpaError::io(path, "size", 0, e))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(SpaError::InvalidLayout(format!(
                "{path}: not a regular file or block device"
            )));
        };
        Ok(FileDevice {
            file,
            path: path.to_owned(),
            size_bytes: size_bytes / SECTOR_BYTES * SECTOR_BYTES,
        })
    }
}

/// Take the device's exclusive lock. A holder that lets go within [`LOCK_WAIT`] is waited
/// for: a child process spawned elsewhere in this process keeps our descriptors (and so
/// the lock of a just-closed pool) until it execs.
fn lock_exclusive(file: &File, path: &str) -> Result<(), SpaError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                if std::time::Instant::now() >= deadline {
                    return Err(SpaError::DeviceBusy {
                        path: path.to_owned(),
                    });
                }
                std::thread::sleep(LOCK_POLL);
            }
            Err(e) => return Err(SpaError::io(path, "lock", 0, e.into())),
        }
    }
}

/// Runs at least this long (a commit's gathered data writes, not log blocks or
/// labels) start their writeback as soon as they are in the page cache.
const WRITEBACK_HINT_BYTES: usize = 256 * 1024;

/// Ask the kernel to start writing `len` bytes at `offset` back to the disk now, without
/// waiting. Why: a txg ends with `fdatasync`, and without the hint the whole txg's dirty
/// pages start their writeback only there, so the disk idles while the commit fills the
/// page cache and the commit idles while the disk writes (poolbench: sequential writes at
/// about half the raw file's rate, whose writeback the kernel starts in the background).
/// A hint only: durability still comes from `flush`, and a writeback error it meets is
/// reported by that `fdatasync` (`SYNC_FILE_RANGE_WRITE` alone neither waits nor consumes
/// the file's error state), so its own result is not needed.
fn start_writeback(file: &File, offset: u64, len: usize) {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: a plain syscall on an open descriptor this device owns; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn check_aligned(len: usize, offset: u64) {
    assert!(
        offset.is_multiple_of(SECTOR_BYTES),
        "device offset {offset} not sector aligned"
    );
    assert!(
        (len as u64).is_multiple_of(SECTOR_BYTES),
        "device I/O length {len} not sector aligned"
    );
}

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_aligned(buf.len(), offset);
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_aligned(buf.len(), offset);
        if offset + buf.len() as u64 > self.size_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond device end",
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_aligned(total, offset);
        let (mut done, mut first, mut skip) = (0usize, 0usize, 0usize);
        while done < total {
            // Resume after a short read: the slices left, the first one cut by `skip`.
            let mut rest: Vec<io::IoSliceMut<'_>> = Vec::with_capacity(bufs.len() - first);
            for (i, b) in bufs[first..].iter_mut().enumerate() {
                let b: &mut [u8] = b;
                rest.push(io::IoSliceMut::new(if i == 0 { &mut b[skip..] } else { b }));
            }
            let n = rustix::io::preadv(&self.file, &mut rest, offset + done as u64)
                .map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            done += n;
            let mut left = n + skip;
            while first < bufs.len() && left >= bufs[first].len() {
                left -= bufs[first].len();
                first += 1;
            }
            skip = left;
        }
        Ok(())
    }

    fn read_cached_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> Option<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_aligned(total, offset);
        let mut slices: Vec<io::IoSliceMut<'_>> =
            bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
        // RWF_NOWAIT: EAGAIN (or a short read) instead of waiting for the device; a
        // file system without support answers EOPNOTSUPP. Every such case, and any
        // error, is left to the device threads, which report and count it.
        match rustix::io::preadv2(
            &self.file,
            &mut slices,
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) if n == total => Some(()),
            _ => None,
        }
    }

    fn read_cached_owned(&self, lens: &[usize], offset: u64) -> Option<Vec<Vec<u8>>> {
        let total: usize = lens.iter().sum();
        check_aligned(total, offset);
        let off = libc::off_t::try_from(offset).ok()?;
        let count = libc::c_int::try_from(lens.len()).ok()?;
        let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&l| Vec::with_capacity(l)).collect();
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .zip(lens)
            .map(|(b, &l)| libc::iovec {
                iov_base: b.spare_capacity_mut().as_mut_ptr().cast(),
                iov_len: l,
            })
            .collect();
        // SAFETY: each iovec describes the `l` bytes of spare capacity of its own buffer
        // (`with_capacity(l)`), live and exclusively ours for the call; the kernel only
        // writes into them. The descriptor is owned by `self.file`.
        let n = unsafe {
            libc::preadv2(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                count,
                off,
                libc::RWF_NOWAIT,
            )
        };
        // RWF_NOWAIT: EAGAIN or a short read when the device would be waited for; then
        // (and on any error) the device threads read and report, as for read_cached_at.
        if usize::try_from(n).ok()? != total {
            return None;
        }
        for (b, &l) in bufs.iter_mut().zip(lens) {
            // SAFETY: the read filled every iovec in full (n == total), so the first `l`
            // bytes of each buffer are initialised, and `l` is its capacity.
            unsafe { b.set_len(l) };
        }
        Some(bufs)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_aligned(total, offset);
        if offset + total as u64 > self.size_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond device end",
            ));
        }
        let (mut done, mut first, mut skip) = (0usize, 0usize, 0usize);
        while done < total {
            let rest: Vec<io::IoSlice<'_>> = bufs[first..]
                .iter()
                .enumerate()
                .map(|(i, b)| io::IoSlice::new(if i == 0 { &b[skip..] } else { b }))
                .collect();
            let n = rustix::io::pwritev(&self.file, &rest, offset + done as u64)
                .map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            done += n;
            let mut left = n + skip;
            while first < bufs.len() && left >= bufs[first].len() {
                left -= bufs[first].len();
                first += 1;
            }
            skip = left;
        }
        if total >= WRITEBACK_HINT_BYTES {
            start_writeback(&self.file, offset, total);
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size_bytes
    }

    fn path(&self) -> &str {
        &self.path
    }
}

/// Identify what a device holds that `create` must not destroy without `force`: a pool
/// label, a filesystem, swap, or a partition table. `None` if it looks unused.
pub fn probe_existing_data(dev: &dyn Device) -> Option<String> {
    let mut head = vec![0u8; 128 * 1024];
    let len = head.len().min(dev.size() as usize) / SECTOR_BYTES as usize * SECTOR_BYTES as usize;
    if dev.read_at(&mut head[..len], 0).is_err() {
        return None;
    }
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, super::format::LABEL_MAGIC) || has_back_label(dev) {
        return Some("a cstor pool label".into());
    }
    if at(1080, &[0x53, 0xEF]) {
        return Some("an ext2/3/4 filesystem".into());
    }
    if at(0, b"XFSB") {
        return Some("an XFS filesystem".into());
    }
    if at(65600, b"_BHRfS_M") {
        return Some("a btrfs filesystem".into());
    }
    if at(4096 - 10, b"SWAPSPACE2") || at(4096 - 10, b"SWAP-SPACE") {
        return Some("a swap area".into());
    }
    if at(512, b"EFI PART") {
        return Some("a GPT partition table".into());
    }
    if at(510, &[0x55, 0xAA]) {
        return Some("an MBR partition table or boot sector".into());
    }
    None
}

/// True if either back label of a pool sits at the end of the device (its front labels
/// may have been overwritten).
fn has_back_label(dev: &dyn Device) -> bool {
    if dev.size() < 4 * super::limits::LABEL_BYTES {
        return false;
    }
    let offs = super::format::label_offsets(dev.size());
    offs[2..].iter().any(|&o| {
        let mut sector = vec![0u8; SECTOR_BYTES as usize];
        dev.read_at(&mut sector, o).is_ok() && sector.starts_with(super::format::LABEL_MAGIC)
    })
}
