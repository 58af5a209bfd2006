//! The durability model: per-file overlays of unsynced 4 KiB sectors over the backing
//! files, the power gate, injected faults and the cut itself. Knows nothing of FUSE.
//!
//! Owns: every [`FileState`] (one per inode with open handles or unsynced sectors), the
//! [`Gate`] and the [`Faults`].
//! Invariants:
//! - The backing file holds exactly the durable state; a file's bytes as seen through the
//!   mount are its backing bytes with its overlay sectors laid on top.
//! - An overlay sector is always a whole 4 KiB sector (old bytes merged in when a write
//!   covers it partly), so a cut keeps or drops whole sectors, never a torn one.
//! - Every data op holds the gate shared for its whole body; a cut takes it exclusively,
//!   so it waits for ops in flight and no op runs while the cut resolves overlays.
//! - A handle opened before a cut belongs to an older power epoch and fails with EIO
//!   forever, even after power-on: the process that held it is dead on real hardware.
//!
//! Lock order: gate → a file's overlay → faults / nodes (leaf locks).
//! Never: fsync the backing files (the machine under the model never loses power; the
//! backing file *is* the platter), or let an op start while the power is off.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

/// Bytes per sector of the model: the unit a cut keeps or drops atomically.
pub const SECTOR: u64 = 4096;
const SECTOR_USIZE: usize = SECTOR as usize;

/// How often a stalled op looks whether the power went off meanwhile.
const STALL_POLL: Duration = Duration::from_millis(2);

/// Power state shared by every op.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Power is off: every op fails with EIO.
    pub(crate) off: bool,
    /// Bumped by every cut; handles carry the epoch they were opened in.
    pub(crate) epoch: u64,
}

/// One unsynced sector.
#[derive(Debug)]
struct Sector {
    data: Box<[u8]>,
    /// Its write-back failed (an injected fsync error): still readable, as Linux keeps the
    /// page cached but clean, yet it never becomes durable and always vanishes at a cut.
    doomed: bool,
}

/// Unsynced sectors of one file, by sector index.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    sectors: BTreeMap<u64, Sector>,
}

/// One backing inode as served through the mount.
#[derive(Debug)]
pub(crate) struct FileState {
    pub(crate) ino: u64,
    /// The backing file, opened read-write (read-only if that was refused).
    pub(crate) file: File,
    pub(crate) overlay: RwLock<Overlay>,
    /// Open handles of the current epoch.
    pub(crate) open_handles: AtomicU64,
}

/// An open file handle.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub(crate) file: Arc<FileState>,
    pub(crate) epoch: u64,
    /// Opened with O_SYNC or O_DSYNC: writes are durable when they return.
    pub(crate) sync: bool,
}

#[derive(Debug)]
struct FsyncFault {
    file: Option<PathBuf>,
    remaining: u64,
}

#[derive(Debug)]
struct ReadFault {
    file: PathBuf,
    start: u64,
    end: u64,
}

#[derive(Debug)]
struct Stall {
    file: Option<PathBuf>,
    until: Instant,
}

/// Injected faults, matched by the file's path relative to the mount root.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fsync: Vec<FsyncFault>,
    reads: Vec<ReadFault>,
    stalls: Vec<Stall>,
}

/// What a cut did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// The seed that decided which sectors survived.
    pub seed: u64,
    /// Unsynced sectors made durable by the cut (they happened to reach the platter).
    pub survived: u64,
    /// Unsynced sectors lost.
    pub lost: u64,
    /// Files that had unsynced sectors.
    pub files: u64,
}

/// Counters for tests and reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) writes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_faults: AtomicU64,
    pub(crate) read_faults: AtomicU64,
    pub(crate) cuts: AtomicU64,
}

/// The shared state of one mount.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) gate: RwLock<Gate>,
    /// Mirrors `gate.off` for stalled ops, which poll it without taking the gate.
    off_flag: AtomicBool,
    /// Live inodes of the current epoch, by FUSE inode number.
    pub(crate) files: Mutex<std::collections::HashMap<u64, Arc<FileState>>>,
    faults: Mutex<Faults>,
    pub(crate) counters: Counters,
}

/// An op's hold on the power: the gate, shared, for the op's whole body.
pub(crate) type PowerGuard<'a> = RwLockReadGuard<'a, Gate>;

pub(crate) fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Model {
    pub(crate) fn new() -> Model {
        Model {
            gate: RwLock::new(Gate {
                off: false,
                epoch: 0,
            }),
            off_flag: AtomicBool::new(false),
            files: Mutex::new(Default::default()),
            faults: Mutex::new(Faults::default()),
            counters: Counters::default(),
        }
    }

    /// Enter an op: wait out any stall on `path`, then hold the power on (EIO if off).
    pub(crate) fn enter(&self, path: Option<&Path>) -> io::Result<PowerGuard<'_>> {
        self.wait_stalls(path)?;
        let g = self.gate.read();
        if g.off {
            return Err(eio());
        }
        Ok(g)
    }

    /// Enter an op on an open handle: as [`Model::enter`], and the handle must be of the
    /// current power epoch.
    pub(crate) fn enter_handle(
        &self,
        h: &Handle,
        path: Option<&Path>,
    ) -> io::Result<PowerGuard<'_>> {
        let g = self.enter(path)?;
        if g.epoch != h.epoch {
            return Err(eio());
        }
        Ok(g)
    }

    fn wait_stalls(&self, path: Option<&Path>) -> io::Result<()> {
        loop {
            let until = {
                let mut f = self.faults.lock();
                let now = Instant::now();
                f.stalls.retain(|s| s.until > now);
                f.stalls
                    .iter()
                    .filter(|s| s.file.is_none() || s.file.as_deref() == path)
                    .map(|s| s.until)
                    .max()
            };
            let Some(until) = until else { return Ok(()) };
            if self.off_flag.load(Ordering::SeqCst) {
                return Err(eio());
            }
            let now = Instant::now();
            if until <= now {
                return Ok(());
            }
            std::thread::sleep((until - now).min(STALL_POLL));
        }
    }

    /// The live state of inode `ino`, opening its backing file at `backing` if needed.
    pub(crate) fn file_state(&self, ino: u64, backing: &Path) -> io::Result<Arc<FileState>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(&ino) {
            return Ok(f.clone());
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(backing)
        {
            Ok(f) => f,
            Err(_) => File::open(backing)?,
        };
        let st = Arc::new(FileState {
            ino,
            file,
            overlay: RwLock::new(Overlay::default()),
            open_handles: AtomicU64::new(0),
        });
        files.insert(ino, st.clone());
        Ok(st)
    }

    /// The live state of `ino` if it has one (open handles or unsynced sectors).
    pub(crate) fn existing(&self, ino: u64) -> Option<Arc<FileState>> {
        self.files.lock().get(&ino).cloned()
    }

    /// Forget `f` once nothing refers to it: no open handle and no unsynced sector.
    pub(crate) fn maybe_forget(&self, f: &Arc<FileState>) {
        let mut files = self.files.lock();
        let idle = f.open_handles.load(Ordering::SeqCst) == 0 && f.overlay.read().is_empty();
        if idle && files.get(&f.ino).is_some_and(|cur| Arc::ptr_eq(cur, f)) {
            files.remove(&f.ino);
        }
    }

    // ---- data ops (caller holds a PowerGuard) ----

    /// Read up to `size` bytes at `offset`: backing bytes with the overlay on top.
    pub(crate) fn read(
        &self,
        f: &FileState,
        path: Option<&Path>,
        offset: u64,
        size: u32,
    ) -> io::Result<Vec<u8>> {
        if let Some(p) = path {
            let end = offset.saturating_add(u64::from(size));
            let faults = self.faults.lock();
            if faults
                .reads
                .iter()
                .any(|r| r.file == p && r.start < end && offset < r.end)
            {
                self.counters.read_faults.fetch_add(1, Ordering::Relaxed);
                return Err(eio());
            }
        }
        let ov = f.overlay.read();
        let len = f.file.metadata()?.len();
        if offset >= len {
            return Ok(Vec::new());
        }
        let n = (u64::from(size)).min(len - offset) as usize;
        let mut buf = vec![0u8; n];
        read_full(&f.file, &mut buf, offset)?;
        let end = offset + n as u64;
        for (&idx, s) in ov.sectors.range(offset / SECTOR..end.div_ceil(SECTOR)) {
            let s_start = idx * SECTOR;
            let from = s_start.max(offset);
            let to = (s_start + SECTOR).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&s.data[(from - s_start) as usize..(to - s_start) as usize]);
        }
        Ok(buf)
    }

    /// Write `data` at `offset`: into the overlay, or straight to the backing file for a
    /// synchronous handle. A write past the end grows the file at once (size changes are
    /// durable when they happen; see the crate docs).
    pub(crate) fn write(&self, h: &Handle, offset: u64, data: &[u8]) -> io::Result<()> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if data.is_empty() {
            return Ok(());
        }
        let f = &h.file;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut ov = f.overlay.write();
        let len = f.file.metadata()?.len();
        if end > len {
            f.file.set_len(end)?;
        }
        let first = offset / SECTOR;
        let last = (end - 1) / SECTOR;
        for idx in first..=last {
            let s_start = idx * SECTOR;
            let from = s_start.max(offset);
            let to = (s_start + SECTOR).min(end);
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            let whole = from == s_start && to == s_start + SECTOR;
            let mut sector = match ov.sectors.remove(&idx) {
                Some(s) => s.data,
                None if whole => vec![0u8; SECTOR_USIZE].into_boxed_slice(),
                None => {
                    let mut b = vec![0u8; SECTOR_USIZE].into_boxed_slice();
                    read_full(&f.file, &mut b, s_start)?;
                    b
                }
            };
            sector[(from - s_start) as usize..(to - s_start) as usize].copy_from_slice(src);
            if h.sync {
                let file_len = len.max(end);
                write_clipped(&f.file, &sector, s_start, file_len)?;
            } else {
                ov.sectors.insert(
                    idx,
                    Sector {
                        data: sector,
                        doomed: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// fsync/fdatasync: make the file's overlay durable, or fail with an injected EIO
    /// (then the overlay stays readable but is doomed, as Linux marks the pages clean).
    pub(crate) fn fsync(&self, f: &FileState, path: Option<&Path>) -> io::Result<()> {
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut ov = f.overlay.write();
        if self.take_fsync_fault(path) {
            self.counters.fsync_faults.fetch_add(1, Ordering::Relaxed);
            for s in ov.sectors.values_mut() {
                s.doomed = true;
            }
            return Err(eio());
        }
        let len = f.file.metadata()?.len();
        let keep: BTreeMap<u64, Sector> = BTreeMap::new();
        let all = std::mem::replace(&mut ov.sectors, keep);
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut result = Ok(());
        for (idx, s) in all {
            if s.doomed {
                ov.sectors.insert(idx, s);
                continue;
            }
            let at = idx * SECTOR;
            if !run.is_empty() && run_start + run.len() as u64 != at {
                if result.is_ok() {
                    result = write_clipped(&f.file, &run, run_start, len);
                }
                run.clear();
            }
            if run.is_empty() {
                run_start = at;
            }
            run.extend_from_slice(&s.data);
        }
        if !run.is_empty() && result.is_ok() {
            result = write_clipped(&f.file, &run, run_start, len);
        }
        result
    }

    /// Truncate or extend to `size` (durable at once); drop overlay bytes past it.
    pub(crate) fn set_len(&self, f: &FileState, size: u64) -> io::Result<()> {
        let mut ov = f.overlay.write();
        f.file.set_len(size)?;
        ov.sectors.retain(|&idx, _| idx * SECTOR < size);
        let tail = size % SECTOR;
        if tail != 0 {
            if let Some(s) = ov.sectors.get_mut(&(size / SECTOR)) {
                s.data[tail as usize..].fill(0);
            }
        }
        Ok(())
    }

    /// fallocate, applied to the backing file at once; a range it zeroes is zeroed in
    /// the overlay too.
    pub(crate) fn fallocate(
        &self,
        f: &FileState,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> io::Result<()> {
        let mut ov = f.overlay.write();
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(&f.file, flags, offset, len)?;
        let zeroes = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if zeroes && len > 0 {
            let end = offset.saturating_add(len);
            let idxs: Vec<u64> = ov
                .sectors
                .range(offset / SECTOR..end.div_ceil(SECTOR))
                .map(|(&i, _)| i)
                .collect();
            for idx in idxs {
                let s_start = idx * SECTOR;
                let from = s_start.max(offset);
                let to = (s_start + SECTOR).min(end);
                if from == s_start && to == s_start + SECTOR {
                    ov.sectors.remove(&idx);
                } else if let Some(s) = ov.sectors.get_mut(&idx) {
                    s.data[(from - s_start) as usize..(to - s_start) as usize].fill(0);
                }
            }
        }
        Ok(())
    }

    fn take_fsync_fault(&self, path: Option<&Path>) -> bool {
        let mut faults = self.faults.lock();
        let hit = faults
            .fsync
            .iter_mut()
            .find(|x| x.remaining > 0 && (x.file.is_none() || x.file.as_deref() == path));
        match hit {
            Some(x) => {
                x.remaining -= 1;
                faults.fsync.retain(|x| x.remaining > 0);
                true
            }
            None => false,
        }
    }

    // ---- control ----

    /// Turn the power off. `name_of` names an inode for the seeded choice (its path at
    /// the cut), so the same seed over the same unsynced state gives the same survivors.
    pub(crate) fn cut(
        &self,
        seed: u64,
        survive_per_mille: u16,
        name_of: &dyn Fn(u64) -> String,
    ) -> CutReport {
        // Stalled ops give up at once instead of finishing their stall first.
        self.off_flag.store(true, Ordering::SeqCst);
        let mut g = self.gate.write();
        let mut report = CutReport {
            seed,
            ..CutReport::default()
        };
        if g.off {
            return report;
        }
        g.off = true;
        g.epoch += 1;
        self.counters.cuts.fetch_add(1, Ordering::Relaxed);
        let files: Vec<Arc<FileState>> = self.files.lock().drain().map(|(_, f)| f).collect();
        for f in files {
            let mut ov = f.overlay.write();
            if ov.sectors.is_empty() {
                continue;
            }
            report.files += 1;
            let name = name_of(f.ino);
            let len = f.file.metadata().map(|m| m.len()).unwrap_or(0);
            for (idx, s) in std::mem::take(&mut ov.sectors) {
                let keep = !s.doomed
                    && sector_draw(seed, &name, idx) % 1000 < u64::from(survive_per_mille);
                if keep && write_clipped(&f.file, &s.data, idx * SECTOR, len).is_ok() {
                    report.survived += 1;
                } else {
                    report.lost += 1;
                }
            }
        }
        report
    }

    /// Turn the power back on: ops are served again over the surviving state.
    pub(crate) fn power_on(&self) {
        let mut g = self.gate.write();
        g.off = false;
        self.off_flag.store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_off(&self) -> bool {
        self.gate.read().off
    }

    pub(crate) fn fail_fsyncs(&self, file: Option<PathBuf>, count: u64) {
        if count > 0 {
            self.faults.lock().fsync.push(FsyncFault {
                file,
                remaining: count,
            });
        }
    }

    pub(crate) fn fail_reads(&self, file: PathBuf, start: u64, end: u64) {
        self.faults
            .lock()
            .reads
            .push(ReadFault { file, start, end });
    }

    pub(crate) fn stall(&self, file: Option<PathBuf>, for_: Duration) {
        self.faults.lock().stalls.push(Stall {
            file,
            until: Instant::now() + for_,
        });
    }

    pub(crate) fn clear_faults(&self) {
        *self.faults.lock() = Faults::default();
    }

    /// Unsynced sectors held now, over all files.
    pub(crate) fn unsynced_sectors(&self) -> u64 {
        let files: Vec<Arc<FileState>> = self.files.lock().values().cloned().collect();
        files
            .iter()
            .map(|f| f.overlay.read().sectors.len() as u64)
            .sum()
    }
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.sectors.is_empty()
    }
}

/// The seeded draw for one sector: a hash of seed, file name and sector index, so one
/// sector's fate does not depend on which other sectors happen to be unsynced.
fn sector_draw(seed: u64, name: &str, idx: u64) -> u64 {
    let mut h = splitmix(seed ^ 0x7077_6572_6375_7421);
    for chunk in name.as_bytes().chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = splitmix(h ^ u64::from_le_bytes(w));
    }
    splitmix(h ^ idx)
}

/// One SplitMix64 step of `x`.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// pread until `buf` is full or EOF; bytes past EOF read as zeros.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// pwrite `data` at `offset`, never past `len` (a sector may hang over the file's end).
fn write_clipped(file: &File, data: &[u8], offset: u64, len: u64) -> io::Result<()> {
    if offset >= len {
        return Ok(());
    }
    let n = (data.len() as u64).min(len - offset) as usize;
    file.write_all_at(&data[..n], offset)
}
