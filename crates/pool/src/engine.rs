//! The pool engine: volumes, snapshots, clones, transaction groups and the intent log over
//! a [`BlockStore`] (spec: docs/format/block-tree.md, docs/format/intent-log.md).
//!
//! Owns: all live block-tree state. Locks, always taken in this order:
//! `commit` (one txg commit or directory change at a time) → `txg` (writers hold it shared
//! while dirtying, a commit takes it exclusively to close the open txg) → a volume's `meta`
//! → its `state` (dirty blocks, size) → its `tree` (root pointer; readers hold it shared
//! for the whole lookup, so blocks a commit frees cannot be reused under them) → `logw`
//! (the log chain) → `log` (pending records).
//! Invariants:
//! - A write lands in the open txg's dirty map of its volume before it returns; a commit
//!   writes dirty data bottom-up, then the directory, then hands the root to
//!   `BlockStore::sync`: nothing is reachable from a durable root before it is written.
//!   A commit keeps up to [`COMMIT_WRITES_IN_FLIGHT`] block writes in flight, and waits
//!   for all of them before a volume's new root is published, before a directory op and
//!   before the uberblock.
//! - `flush` returns only after every earlier write is in a durable log block or a durable
//!   root; log records are replayed in order on open, only those of txgs after the root.
//! - A block killed in txg T is freed only if born after the newest snapshot (or a clone's
//!   origin); otherwise a snapshot still holds it. Snapshot destroy frees exactly the
//!   blocks born after the previous snapshot that the next one does not share.
//! - Writes never read the device: a partial write to a block not yet dirty is a sector
//!   overlay resolved at commit; an UNMAP of whole blocks is a free range applied per
//!   subtree at commit (a dirty block of the same txg is always newer than a range).
//! - Writes are refused (read-only) once allocated plus twice the dirty data reaches the
//!   fill threshold, so every acknowledged write fits in its commit.
//! - A failed store write or sync latches the pool failed (fail-stop): later calls get
//!   [`PoolError::Closed`] until it is reopened, so memory never diverges silently from disk.
//!
//! Never: overwrite a block in place; return bytes whose checksum did not match.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::bp::{
    self, checksum, decode_indirect, decode_payload, encode_indirect, encode_payload, BlockKind,
    Bp, Compression, BPS_PER_INDIRECT,
};
use crate::cache::{BlockCache, Cached, Key};
use crate::dir::{DirRec, LogHead, Root, SnapRec, VolRec, DIR_VERSION};
use crate::error::{PoolError, Result};
use crate::limits::*;
use crate::store::{AllocClass, BlockStore, Dva, StoreError, Verify, WriteWait, SECTOR_SIZE};
use crate::zil::{self, LogRecord};

/// The callback of [`Pool::visit_live_blocks`]: address, stored size, and a check of the
/// block's bytes.
pub type BlockVisitor<'a> = &'a mut dyn FnMut(Dva, u32, Verify<'_>) -> Result<()>;

/// A directory change run inside a commit, after the data phase, with the txg.
type DirOp<'a> = &'a mut dyn FnMut(&PoolInner, u64) -> Result<()>;

/// Old bytes of blocks under partial writes, by block id, with the pointer they came from.
type Prefetched = std::collections::HashMap<u64, (Bp, Vec<u8>)>;

/// Chunks of each directory segment by the xxh3-128 of its bytes.
type DirSegments = std::collections::HashMap<u128, Vec<Bp>>;

/// Options of an open pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Bytes of decompressed blocks kept in memory.
    pub cache_bytes: u64,
    /// Dirty data above which writers wait for a txg commit.
    pub dirty_max_bytes: u64,
    /// Time between background txg commits.
    pub txg_interval: Duration,
    /// Start a background commit thread (tests may drive commits by hand).
    pub background_commit: bool,
    /// Fill percentage at which the pool turns read-only (used at create; stored).
    pub ro_threshold_pct: u8,
    /// Default compression of new volumes (used at create; stored).
    pub compression: Compression,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            dirty_max_bytes: DEFAULT_DIRTY_MAX_BYTES,
            txg_interval: Duration::from_millis(DEFAULT_TXG_INTERVAL_MS),
            background_commit: true,
            ro_threshold_pct: DEFAULT_RO_THRESHOLD_PCT,
            compression: Compression::Lz4,
        }
    }
}

/// A volume as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Guid.
    pub guid: u64,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Compression of new blocks.
    pub compression: Compression,
    /// Bytes freed if the volume and its snapshots were destroyed.
    pub used: u64,
    /// Bytes stored for the volume's current contents (shared or not).
    pub referenced: u64,
    /// Logical / stored bytes of the current data.
    pub compression_ratio: f64,
    /// Snapshot names, oldest first.
    pub snapshots: Vec<String>,
    /// `volume@snapshot` this volume was cloned from.
    pub origin: Option<String>,
    /// Largest io number in the committed tree.
    pub io_number_max: u64,
}

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    /// Snapshot name (without the volume).
    pub name: String,
    /// Guid (kept by send/recv).
    pub guid: u64,
    /// Txg it was taken in.
    pub txg: u64,
    /// Volume size when taken.
    pub size: u64,
    /// Bytes its contents reference.
    pub referenced: u64,
    /// Bytes only it holds (freed by destroying it).
    pub used: u64,
    /// Bytes written between the previous snapshot and it.
    pub written: u64,
    /// Volumes cloned from it.
    pub clones: Vec<String>,
}

/// Pool space in user terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpace {
    /// Usable capacity.
    pub size: u64,
    /// Allocated.
    pub allocated: u64,
    /// Free.
    pub free: u64,
    /// Writes refused (fill threshold).
    pub read_only: bool,
    /// Fill threshold in percent.
    pub ro_threshold_pct: u8,
}

/// A byte range whose blocks carry io numbers above the asked one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangedRange {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Largest io number in the range.
    pub io_number_max: u64,
}

/// What a traversal visited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraverseStats {
    /// Blocks visited.
    pub blocks: u64,
    /// Allocated bytes of the visited blocks.
    pub bytes_visited: u64,
    /// Allocated bytes of the pool (the 100 % mark for progress).
    pub allocated_bytes: u64,
}

/// Blocks `first..end` freed with io number `io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FreeRange {
    first: u64,
    end: u64,
    io: u64,
}

fn range_covers(frees: &[FreeRange], blk: u64) -> Option<u64> {
    frees
        .iter()
        .rev()
        .find(|f| f.first <= blk && blk < f.end)
        .map(|f| f.io)
}

/// Sectors (512 bytes) per block at most: 128 KiB / 512.
const MAX_SECTORS: usize = (MAX_BLOCK_BYTES as usize) / (IO_ALIGN_BYTES as usize);
const _: () = assert!(MAX_SECTORS == 256);

/// A dirty block of the open or syncing txg.
#[derive(Clone, Debug)]
pub(crate) enum Dirty {
    /// The whole block.
    Data { data: Arc<Vec<u8>>, io: u64 },
    /// All zeros (UNMAP, or a zero write).
    Hole { io: u64 },
    /// Some 512-byte sectors (bit set in `valid`) over the block's older contents, which
    /// are read only when the block is read or committed: a partial write never waits for
    /// a device read.
    Partial {
        data: Arc<Vec<u8>>,
        valid: [u64; MAX_SECTORS / 64],
        io: u64,
    },
}

fn sectors_set(valid: &mut [u64; MAX_SECTORS / 64], first: usize, count: usize) {
    for s in first..first + count {
        valid[s / 64] |= 1 << (s % 64);
    }
}

fn all_sectors(valid: &[u64; MAX_SECTORS / 64], sectors: usize) -> bool {
    (0..sectors).all(|s| valid[s / 64] & (1 << (s % 64)) != 0)
}

/// Lay the valid sectors of an overlay over `base`.
fn overlay(base: &mut [u8], data: &[u8], valid: &[u64; MAX_SECTORS / 64]) {
    let sec = IO_ALIGN_BYTES as usize;
    for (i, chunk) in base.chunks_mut(sec).enumerate() {
        if valid[i / 64] & (1 << (i % 64)) != 0 {
            chunk.copy_from_slice(&data[i * sec..(i + 1) * sec]);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct VolState {
    open: BTreeMap<u64, Dirty>,
    syncing: Arc<BTreeMap<u64, Dirty>>,
    /// Property changes of the open txg, then of the syncing one: committed in the txg
    /// they were made in, with that txg's data.
    open_props: Vec<(String, String)>,
    syncing_props: Vec<(String, String)>,
    /// Whole-block ranges UNMAPped in the open txg, then in the syncing one: applied
    /// to the tree per subtree at commit, so freeing a huge range costs what it frees.
    /// A dirty block of the same txg is newer than any range (an UNMAP drops the dirty
    /// blocks it covers).
    open_frees: Vec<FreeRange>,
    syncing_frees: Arc<Vec<FreeRange>>,
    size: u64,
    destroyed: bool,
}

#[derive(Debug)]
pub(crate) struct Volume {
    pub(crate) guid: u64,
    pub(crate) name: String,
    pub(crate) block_size: u32,
    pub(crate) levels: u8,
    pub(crate) compression: Compression,
    pub(crate) meta: Mutex<VolRec>,
    pub(crate) state: Mutex<VolState>,
    pub(crate) tree: RwLock<Bp>,
}

impl Volume {
    fn from_rec(rec: VolRec) -> Arc<Volume> {
        Arc::new(Volume {
            guid: rec.guid,
            name: rec.name.clone(),
            block_size: rec.block_size,
            levels: rec.levels,
            compression: rec.compression,
            state: Mutex::new(VolState {
                size: rec.size,
                ..VolState::default()
            }),
            tree: RwLock::new(rec.root),
            meta: Mutex::new(rec),
        })
    }
}

fn prev_snap_txg(rec: &VolRec) -> u64 {
    rec.snapshots
        .last()
        .map_or(rec.origin_txg, |s| s.txg.max(rec.origin_txg))
}

/// Tree height for a block size: enough levels of 256-way indirects for the largest volume.
pub(crate) fn levels_for(block_size: u32) -> u8 {
    let blocks = MAX_VOLUME_BYTES / u64::from(block_size);
    let mut levels = 1u8;
    let mut span = BPS_PER_INDIRECT as u64;
    while span < blocks {
        span *= BPS_PER_INDIRECT as u64;
        levels += 1;
    }
    levels
}

/// Data blocks under one pointer at `level` (level 0 is a data block).
pub(crate) fn span_blocks(level: u8) -> u64 {
    (BPS_PER_INDIRECT as u64).pow(u32::from(level))
}

#[derive(Debug, Default)]
struct LogPending {
    records: Vec<LogRecord>,
    bytes: u64,
}

#[derive(Debug)]
struct LogBlockInfo {
    dva: Dva,
    psize: u32,
    max_txg: u64,
}

#[derive(Debug, Default)]
struct LogWriter {
    chain_id: u64,
    seq: u64,
    blocks: VecDeque<LogBlockInfo>,
    /// Pre-allocated address (and psize) of the next block; the last written block (or
    /// the root, when the chain is empty) points at it.
    next: Option<(Dva, u32)>,
    /// Txg the next block was allocated in: it is freed no earlier than that.
    next_alloc_txg: u64,
    head_seq: u64,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Directory blocks of the last commit (chunks, then the index).
    dir_blocks: Vec<Bp>,
    /// Chunks of each directory segment of the last commit, by xxh3-128 of the
    /// segment's bytes: an unchanged segment keeps its blocks.
    dir_segments: DirSegments,
    last_txg: u64,
}

#[derive(Debug, Default)]
struct Background {
    stop: bool,
    kick: bool,
}

#[derive(Debug)]
pub(crate) struct PoolInner {
    pub(crate) store: Arc<dyn BlockStore>,
    opts: PoolOptions,
    cache: BlockCache,
    pool_guid: u64,
    ro_threshold_pct: AtomicU64,
    default_compression: Mutex<Compression>,
    commit: Mutex<CommitState>,
    txg: RwLock<u64>,
    vols: RwLock<BTreeMap<String, Arc<Volume>>>,
    dirty_bytes: AtomicU64,
    log: Mutex<LogPending>,
    logw: Mutex<LogWriter>,
    failed: Mutex<Option<String>>,
    closed: AtomicBool,
    /// Directory changes (properties, threshold) not yet committed.
    meta_dirty: AtomicBool,
    bg: Mutex<Background>,
    bg_cv: Condvar,
    /// Block writes of the running commit still in flight, oldest first: checksums,
    /// compression and allocation of the next blocks overlap them. A commit waits for
    /// all of them before anything can reach a new block (a volume's new root, a
    /// directory op, the uberblock), so the crash model is that of synchronous writes.
    inflight: Mutex<Inflight>,
}

#[derive(Default)]
struct Inflight(VecDeque<WriteWait>);

impl std::fmt::Debug for Inflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} writes in flight", self.0.len())
    }
}

/// A pool: the engine the CLI, the iSCSI adapter and the replica layer use. Thread-safe
/// and blocking; clone [`VolumeHandle`]s freely across threads.
#[derive(Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// One volume of an open pool.
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    pool: Arc<PoolInner>,
    vol: Arc<Volume>,
}

fn random_u64() -> u64 {
    let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
    (a ^ b).max(1)
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(PoolError::Invalid(format!(
            "{what} name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(PoolError::Invalid(format!(
            "{what} name '{name}' has the character '{c}' (allowed: letters, digits, - _ . :)"
        )));
    }
    Ok(())
}

fn check_block_size(bs: u32) -> Result<()> {
    if !bs.is_power_of_two() || !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&bs) {
        return Err(PoolError::Invalid(format!(
            "block size {bs} must be a power of two from {MIN_BLOCK_BYTES} to {MAX_BLOCK_BYTES}"
        )));
    }
    Ok(())
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(IO_ALIGN_BYTES) || size > MAX_VOLUME_BYTES {
        return Err(PoolError::Invalid(format!(
            "volume size {size} must be a non-zero multiple of {IO_ALIGN_BYTES} up to {MAX_VOLUME_BYTES}"
        )));
    }
    Ok(())
}

fn ratio(lsize: u64, psize: u64) -> f64 {
    if psize == 0 {
        1.0
    } else {
        lsize as f64 / psize as f64
    }
}

impl Pool {
    /// Create a new pool's block tree on an empty store and commit its first txg.
    pub fn create(store: Arc<dyn BlockStore>, opts: PoolOptions) -> Result<Pool> {
        if store.last_root().is_some() {
            return Err(PoolError::Exists {
                name: "pool root (the store already holds a pool)".into(),
            });
        }
        if opts.ro_threshold_pct == 0 || opts.ro_threshold_pct > 100 {
            return Err(PoolError::Invalid(format!(
                "read-only threshold {} must be 1..=100 %",
                opts.ro_threshold_pct
            )));
        }
        let inner = Arc::new(PoolInner::new(store, opts.clone(), random_u64(), 1));
        {
            let mut cs = inner.commit.lock();
            inner.commit_locked(&mut cs, None)?;
        }
        Ok(Pool::start(inner))
    }

    /// Open a pool's block tree from the store's newest root and replay its intent log.
    pub fn open(store: Arc<dyn BlockStore>, opts: PoolOptions) -> Result<Pool> {
        let (txg, bytes) = store.last_root().ok_or_else(|| PoolError::Corrupt {
            what: "pool root",
            reason: "the store holds no root (not a created pool)".into(),
        })?;
        let root = Root::decode(&bytes)?;
        if root.txg != txg {
            return Err(PoolError::Corrupt {
                what: "pool root",
                reason: format!("root txg {} in uberblock of txg {txg}", root.txg),
            });
        }
        let inner = Arc::new(PoolInner::new(store, opts, root.pool_guid, txg + 1));
        let dir = inner.read_directory(&root.dir)?;
        inner
            .ro_threshold_pct
            .store(u64::from(dir.ro_threshold_pct), Ordering::Relaxed);
        *inner.default_compression.lock() = dir.compression;
        {
            let mut vols = inner.vols.write();
            for v in dir.volumes {
                vols.insert(v.name.clone(), Volume::from_rec(v));
            }
        }
        {
            let mut cs = inner.commit.lock();
            let (blocks, segments) = inner.dir_layout(&root.dir)?;
            cs.dir_blocks = blocks;
            cs.dir_segments = segments;
            cs.last_txg = txg;
        }
        inner.replay(&root)?;
        inner.cleanup_receiving()?;
        Ok(Pool::start(inner))
    }

    fn start(inner: Arc<PoolInner>) -> Pool {
        let thread = if inner.opts.background_commit {
            let p = inner.clone();
            Some(std::thread::spawn(move || p.background()))
        } else {
            None
        };
        Pool {
            inner,
            thread: Mutex::new(thread),
        }
    }

    /// Pool guid.
    pub fn guid(&self) -> u64 {
        self.inner.pool_guid
    }

    /// Create a thin volume. `block_size` defaults to [`DEFAULT_BLOCK_BYTES`],
    /// `compression` to the pool's.
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: Option<u32>,
        compression: Option<Compression>,
    ) -> Result<VolumeHandle> {
        check_name(name, "volume")?;
        check_size(size_bytes)?;
        let bs = block_size.unwrap_or(DEFAULT_BLOCK_BYTES);
        check_block_size(bs)?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        {
            let vols = p.vols.read();
            if vols.contains_key(name) {
                return Err(PoolError::Exists { name: name.into() });
            }
            if vols.len() >= MAX_VOLUMES {
                return Err(PoolError::Invalid(format!(
                    "pool holds the maximum of {MAX_VOLUMES} volumes"
                )));
            }
        }
        let comp = compression.unwrap_or(*p.default_compression.lock());
        let rec = VolRec::empty(
            name.into(),
            random_u64(),
            size_bytes,
            bs,
            levels_for(bs),
            comp,
        );
        self.add_volume(&mut cs, rec)
    }

    fn add_volume(&self, cs: &mut CommitState, mut rec: VolRec) -> Result<VolumeHandle> {
        let p = &self.inner;
        rec.created_txg = *p.txg.read();
        let vol = Volume::from_rec(rec);
        p.vols.write().insert(vol.name.clone(), vol.clone());
        p.commit_locked(cs, None)?;
        Ok(VolumeHandle {
            pool: p.clone(),
            vol,
        })
    }

    /// A handle to a volume.
    pub fn volume(&self, name: &str) -> Result<VolumeHandle> {
        let vol = self.inner.vol(name)?;
        Ok(VolumeHandle {
            pool: self.inner.clone(),
            vol,
        })
    }

    /// Every volume (receives in progress excluded), by name.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let vols: Vec<Arc<Volume>> = self.inner.vols.read().values().cloned().collect();
        // Receives in progress are not volumes yet: a bad stream must leave no trace.
        vols.iter()
            .filter(|v| !v.name.contains('%') && !v.meta.lock().receiving)
            .map(|v| self.inner.volume_info(v))
            .collect()
    }

    /// One volume's info.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let v = self.inner.vol(name)?;
        Ok(self.inner.volume_info(&v))
    }

    /// A volume's snapshots, oldest first, with the space each alone holds.
    pub fn list_snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> {
        let p = &self.inner;
        let _cs = p.commit.lock();
        let v = p.vol(volume)?;
        let meta = v.meta.lock().clone();
        let head = *v.tree.read();
        let mut out = Vec::with_capacity(meta.snapshots.len());
        for (i, s) in meta.snapshots.iter().enumerate() {
            let prev_txg = if i == 0 {
                meta.origin_txg
            } else {
                meta.snapshots[i - 1].txg
            };
            let next_root = meta.snapshots.get(i + 1).map_or(head, |n| n.root);
            let used = p.diff_free(&v, s.root, next_root, v.levels, prev_txg, None)?;
            let mut written = 0;
            p.walk(
                &s.root,
                v.levels,
                0,
                &mut |bp| bp.birth > prev_txg,
                &mut |_, bp| {
                    written += u64::from(bp.psize);
                    Ok(())
                },
            )?;
            out.push(SnapshotInfo {
                name: s.name.clone(),
                guid: s.guid,
                txg: s.txg,
                size: s.size,
                referenced: s.referenced,
                used,
                written,
                clones: p.clones_of(s.guid),
            });
        }
        Ok(out)
    }

    /// Read from a snapshot (offset and length multiples of 512, within its size).
    pub fn read_snapshot(
        &self,
        volume: &str,
        snap: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let p = &self.inner;
        p.check_usable()?;
        let v = p.vol(volume)?;
        let s = p.find_snap(&v, snap)?;
        let len = buf.len() as u64;
        if !offset.is_multiple_of(IO_ALIGN_BYTES) || !len.is_multiple_of(IO_ALIGN_BYTES) {
            return Err(PoolError::Unaligned {
                offset,
                len,
                align: IO_ALIGN_BYTES,
            });
        }
        if offset.checked_add(len).is_none_or(|e| e > s.size) {
            return Err(PoolError::OutOfRange {
                volume: format!("{volume}@{snap}"),
                offset,
                len,
                size: s.size,
            });
        }
        let bs = u64::from(v.block_size);
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let (blk, in_blk) = (abs / bs, abs % bs);
            let n = (bs - in_blk).min(len - pos);
            let dst = &mut buf[pos as usize..(pos + n) as usize];
            // Snapshot blocks are never freed while the snapshot exists, and a destroy
            // needs the commit lock, which readers of the directory do not block.
            let bp = p.lookup(&s.root, v.levels, blk)?;
            if bp.is_hole() {
                dst.fill(0);
            } else {
                let d = p.read_data(&bp)?;
                dst.copy_from_slice(&d[in_blk as usize..(in_blk + n) as usize]);
            }
            pos += n;
        }
        Ok(())
    }

    /// Take a snapshot of a volume (instant: one txg commit).
    pub fn snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        check_name(snap, "snapshot")?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        {
            let meta = v.meta.lock();
            if meta.snapshots.iter().any(|s| s.name == snap) {
                return Err(PoolError::Exists {
                    name: format!("{volume}@{snap}"),
                });
            }
        }
        if p.snapshot_count() >= MAX_SNAPSHOTS {
            return Err(PoolError::Invalid(format!(
                "pool holds the maximum of {MAX_SNAPSHOTS} snapshots"
            )));
        }
        let snap = snap.to_string();
        p.commit_locked(
            &mut cs,
            Some(&mut |_p: &PoolInner, txg: u64| {
                let mut meta = v.meta.lock();
                let rec = meta.snapshot_now(snap.clone(), random_u64(), txg);
                meta.snapshots.push(rec);
                Ok(())
            }),
        )?;
        Ok(())
    }

    /// Create a writable clone `new_volume` of `volume@snap`.
    pub fn clone_snapshot(
        &self,
        volume: &str,
        snap: &str,
        new_volume: &str,
    ) -> Result<VolumeHandle> {
        check_name(new_volume, "volume")?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        if p.vols.read().contains_key(new_volume) {
            return Err(PoolError::Exists {
                name: new_volume.into(),
            });
        }
        let s = p.find_snap(&v, snap)?;
        let meta = v.meta.lock().clone();
        let rec = VolRec::clone_of(new_volume.into(), random_u64(), s.size, &meta, &s);
        self.add_volume(&mut cs, rec)
    }

    /// Roll a volume back to its newest snapshot (newer snapshots must be destroyed first,
    /// or use [`Pool::rollback_destroying_newer`]).
    pub fn rollback(&self, volume: &str, snap: &str) -> Result<()> {
        self.rollback_inner(volume, snap, false).map(|_| ())
    }

    /// Roll a volume back to any of its snapshots, destroying the newer ones in the same
    /// txg (so a crash leaves either all of them and the old head, or none and the
    /// rolled-back head). Refused when a newer snapshot has clones. Returns the names of
    /// the destroyed snapshots, newest first.
    pub fn rollback_destroying_newer(&self, volume: &str, snap: &str) -> Result<Vec<String>> {
        self.rollback_inner(volume, snap, true)
    }

    fn rollback_inner(&self, volume: &str, snap: &str, destroy_newer: bool) -> Result<Vec<String>> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        let s = p.find_snap(&v, snap)?;
        let mut newer: Vec<SnapRec> = v
            .meta
            .lock()
            .snapshots
            .iter()
            .filter(|x| x.txg > s.txg)
            .cloned()
            .collect();
        newer.sort_by_key(|x| std::cmp::Reverse(x.txg));
        let names: Vec<String> = newer.iter().map(|x| x.name.clone()).collect();
        if !newer.is_empty() && !destroy_newer {
            return Err(PoolError::Busy(format!(
                "cannot roll back {volume} to @{snap}: newer snapshots exist: {} (destroy them first, or roll back with --destroy-newer)",
                names.join(", ")
            )));
        }
        for x in &newer {
            let clones = p.clones_of(x.guid);
            if !clones.is_empty() {
                return Err(PoolError::Busy(format!(
                    "cannot roll back {volume} to @{snap}: newer snapshot @{} has clones: {} (destroy them first)",
                    x.name,
                    clones.join(", ")
                )));
            }
        }
        p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                // Newest first: each destroy then sees the head as its successor.
                for x in &newer {
                    p.destroy_snapshot_op(&v, x.guid, txg)?;
                }
                p.rollback_op(&v, &s, txg)
            }),
        )?;
        Ok(names)
    }

    /// Destroy a volume and its snapshots (refused when a snapshot has clones).
    pub fn destroy_volume(&self, name: &str) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(name)?;
        self.destroy_volume_locked(&mut cs, &v)
    }

    fn destroy_volume_locked(&self, cs: &mut CommitState, v: &Arc<Volume>) -> Result<()> {
        let p = &self.inner;
        let snaps = v.meta.lock().snapshots.clone();
        for s in &snaps {
            let clones = p.clones_of(s.guid);
            if !clones.is_empty() {
                return Err(PoolError::Busy(format!(
                    "cannot destroy {}: snapshot @{} has clones: {} (destroy them first)",
                    v.name,
                    s.name,
                    clones.join(", ")
                )));
            }
        }
        p.commit_locked(
            cs,
            Some(&mut |p: &PoolInner, txg: u64| p.destroy_volume_op(v, txg)),
        )?;
        Ok(())
    }

    /// Destroy one snapshot, freeing the space only it held (refused when it has clones).
    pub fn destroy_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        let s = p.find_snap(&v, snap)?;
        let clones = p.clones_of(s.guid);
        if !clones.is_empty() {
            return Err(PoolError::Busy(format!(
                "cannot destroy {volume}@{snap}: it has clones: {} (destroy them first)",
                clones.join(", ")
            )));
        }
        p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| p.destroy_snapshot_op(&v, s.guid, txg)),
        )?;
        Ok(())
    }

    /// Grow a volume online (shrinking is refused).
    pub fn resize(&self, volume: &str, new_size: u64) -> Result<()> {
        check_size(new_size)?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        let size = v.state.lock().size;
        if new_size < size {
            return Err(PoolError::Invalid(format!(
                "cannot shrink {volume} from {size} to {new_size} bytes (shrinking loses data)"
            )));
        }
        v.state.lock().size = new_size;
        v.meta.lock().size = new_size;
        p.commit_locked(&mut cs, None)?;
        Ok(())
    }

    /// Set a small property stored with a volume (replica id, volume guid, checkpoint io
    /// number...). Durable with the next txg commit (background, or [`Pool::sync`]); a
    /// commit holds it together with all data written before the call.
    pub fn set_property(&self, volume: &str, key: &str, value: &str) -> Result<()> {
        if key.is_empty() || key.len() > MAX_PROPERTY_BYTES || value.len() > MAX_PROPERTY_BYTES {
            return Err(PoolError::Invalid(format!(
                "property key must be 1..={MAX_PROPERTY_BYTES} bytes, value at most {MAX_PROPERTY_BYTES}"
            )));
        }
        let v = self.inner.vol(volume)?;
        let _txg = self.inner.txg.read();
        let count = {
            let meta = v.meta.lock();
            meta.properties.len() + usize::from(!meta.properties.contains_key(key))
        };
        if count > MAX_PROPERTIES {
            return Err(PoolError::Invalid(format!(
                "volume holds the maximum of {MAX_PROPERTIES} properties"
            )));
        }
        v.state.lock().open_props.push((key.into(), value.into()));
        self.inner.meta_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// A property of a volume.
    pub fn property(&self, volume: &str, key: &str) -> Result<Option<String>> {
        let v = self.inner.vol(volume)?;
        {
            let st = v.state.lock();
            let pending = st
                .open_props
                .iter()
                .rev()
                .chain(st.syncing_props.iter().rev());
            if let Some((_, val)) = pending.into_iter().find(|(k, _)| k == key) {
                return Ok(Some(val.clone()));
            }
        }
        let meta = v.meta.lock();
        Ok(meta.properties.get(key).cloned())
    }

    /// Ranges of `target` (`vol` or `vol@snap`) whose io number is above `since`, in
    /// offset order, merged; subtrees whose max io number is not above are skipped.
    pub fn changed_since(
        &self,
        target: &str,
        since: u64,
        f: &mut dyn FnMut(ChangedRange) -> Result<()>,
    ) -> Result<()> {
        let p = &self.inner;
        let (v, root, size) = match target.split_once('@') {
            Some((vol, snap)) => {
                let v = p.vol(vol)?;
                let s = p.find_snap(&v, snap)?;
                (v, s.root, s.size)
            }
            None => {
                let v = p.vol(target)?;
                if p.has_dirty(&v) {
                    self.sync()?;
                }
                let root = *v.tree.read();
                let size = v.state.lock().size;
                (v, root, size)
            }
        };
        let bs = u64::from(v.block_size);
        let mut cur: Option<ChangedRange> = None;
        p.walk(
            &root,
            v.levels,
            0,
            &mut |bp| bp.io_max > since,
            &mut |blk, bp| {
                let offset = blk * bs;
                if offset >= size {
                    return Ok(());
                }
                let len = (span_blocks(bp.level) * bs).min(size - offset);
                match cur.as_mut() {
                    Some(c) if c.offset + c.len == offset => {
                        c.len += len;
                        c.io_number_max = c.io_number_max.max(bp.io_max);
                    }
                    _ => {
                        if let Some(c) = cur.take() {
                            f(c)?;
                        }
                        cur = Some(ChangedRange {
                            offset,
                            len,
                            io_number_max: bp.io_max,
                        });
                    }
                }
                Ok(())
            },
        )?;
        if let Some(c) = cur {
            f(c)?;
        }
        Ok(())
    }

    /// [`Pool::changed_since`] collected.
    pub fn changed_since_vec(&self, target: &str, since: u64) -> Result<Vec<ChangedRange>> {
        let mut out = Vec::new();
        self.changed_since(target, since, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// Commit a txg now; returns its number.
    pub fn sync(&self) -> Result<u64> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        p.commit_locked(&mut cs, None)
    }

    /// Make every earlier write of every volume durable (intent log, no txg commit).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Pool space and read-only state.
    pub fn space(&self) -> PoolSpace {
        let s = self.inner.store.space();
        PoolSpace {
            size: s.size_bytes,
            allocated: s.allocated_bytes,
            free: s.free_bytes,
            read_only: self.inner.over_threshold(),
            ro_threshold_pct: self.inner.ro_threshold_pct.load(Ordering::Relaxed) as u8,
        }
    }

    /// Change the read-only threshold (committed with the next txg).
    pub fn set_ro_threshold(&self, pct: u8) -> Result<()> {
        if pct == 0 || pct > 100 {
            return Err(PoolError::Invalid(format!(
                "read-only threshold {pct} must be 1..=100 %"
            )));
        }
        self.inner
            .ro_threshold_pct
            .store(u64::from(pct), Ordering::Relaxed);
        self.inner.meta_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Allocated bytes outside volume trees: the object directory and the intent log
    /// (with its pre-allocated next block). With the volumes' `used`, this adds up to the
    /// pool's allocated bytes after a commit; tests check that.
    pub fn metadata_bytes(&self) -> u64 {
        let cs = self.inner.commit.lock();
        let dir: u64 = cs.dir_blocks.iter().map(|b| b.dva.asize).sum();
        let w = self.inner.logw.lock();
        let log: u64 = w.blocks.iter().map(|b| b.dva.asize).sum();
        dir + log + w.next.map_or(0, |n| n.0.asize)
    }

    /// Dirty (not yet committed) bytes now: data blocks, log copies, free ranges.
    pub fn dirty_bytes(&self) -> u64 {
        self.inner.dirty_bytes.load(Ordering::SeqCst)
    }

    /// Bytes held by the block cache now.
    pub fn cache_bytes(&self) -> u64 {
        self.inner.cache.bytes()
    }

    /// Visit every live block pointer (directory, every volume head and snapshot, intent
    /// log) once, with a check of the block's bytes, for scrub and resilver.
    pub fn visit_live_blocks(&self, f: BlockVisitor<'_>) -> Result<TraverseStats> {
        self.inner.visit_live_blocks(f)
    }

    /// Commit, stop the background thread and close the pool.
    pub fn close(self) -> Result<()> {
        self.stop_thread();
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        p.commit_locked(&mut cs, None)?;
        p.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn stop_thread(&self) {
        {
            let mut bg = self.inner.bg.lock();
            bg.stop = true;
        }
        self.inner.bg_cv.notify_all();
        if let Some(t) = self.thread.lock().take() {
            // A panicked commit thread already latched nothing more we could do here.
            let _ = t.join();
        }
    }

    /// Send a snapshot (full, or incremental from `from`) as a stream.
    pub fn send(
        &self,
        volume: &str,
        snap: &str,
        from: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::send::StreamStats> {
        crate::send::send(&self.inner, volume, snap, from, out)
    }

    /// Receive a stream into `volume` (new for a full stream; existing, at the `from`
    /// snapshot and unchanged since, for an incremental one). A bad stream changes nothing.
    pub fn recv(
        &self,
        volume: &str,
        input: &mut dyn std::io::Read,
    ) -> Result<crate::send::StreamStats> {
        crate::send::recv(self, volume, input)
    }

    pub(crate) fn inner(&self) -> &Arc<PoolInner> {
        &self.inner
    }

    /// True when the volume's head differs from its newest snapshot (commits first).
    pub(crate) fn volume_changed_since_snapshot(&self, h: &VolumeHandle) -> Result<bool> {
        if self.inner.has_dirty(&h.vol) {
            self.sync()?;
        }
        let meta = h.vol.meta.lock();
        Ok(meta.snapshots.last().is_none_or(|s| s.root != meta.root))
    }

    /// Create a receive temporary (hidden name) or a received volume.
    pub(crate) fn create_recv_volume(&self, rec: VolRec) -> Result<VolumeHandle> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        if p.vols.read().contains_key(&rec.name) {
            return Err(PoolError::Exists { name: rec.name });
        }
        self.add_volume(&mut cs, rec)
    }

    /// Finish a full receive: snapshot it and clear the receiving flag.
    pub(crate) fn finish_recv(
        &self,
        tmp: &VolumeHandle,
        target: Option<&VolumeHandle>,
        snap_name: &str,
        snap_guid: u64,
    ) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let tv = tmp.vol.clone();
        let target = target.map(|t| t.vol.clone());
        let snap_name = snap_name.to_string();
        p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                let dst = match &target {
                    Some(t) => {
                        p.promote_recv(&tv, t)?;
                        t.clone()
                    }
                    None => tv.clone(),
                };
                let mut meta = dst.meta.lock();
                meta.receiving = false;
                let rec = meta.snapshot_now(snap_name.clone(), snap_guid, txg);
                meta.snapshots.push(rec);
                Ok(())
            }),
        )?;
        Ok(())
    }

    /// Drop a failed receive's temporary volume.
    pub(crate) fn abort_recv(&self, tmp: &VolumeHandle) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        self.destroy_volume_locked(&mut cs, &tmp.vol)
    }
}

impl Drop for Pool {
    /// Stops the commit thread and commits what is dirty (best effort: a pool whose
    /// device is gone just stops; flushed writes are in the log either way).
    fn drop(&mut self) {
        self.stop_thread();
        let p = &self.inner;
        if p.check_usable().is_ok() {
            let mut cs = p.commit.lock();
            let _ = p.commit_locked(&mut cs, None);
            p.closed.store(true, Ordering::SeqCst);
        }
    }
}

impl PoolInner {
    fn new(store: Arc<dyn BlockStore>, opts: PoolOptions, pool_guid: u64, txg: u64) -> Self {
        PoolInner {
            store,
            cache: BlockCache::new(opts.cache_bytes),
            pool_guid,
            ro_threshold_pct: AtomicU64::new(u64::from(opts.ro_threshold_pct)),
            default_compression: Mutex::new(opts.compression),
            opts,
            commit: Mutex::new(CommitState::default()),
            txg: RwLock::new(txg),
            vols: RwLock::new(BTreeMap::new()),
            dirty_bytes: AtomicU64::new(0),
            log: Mutex::new(LogPending::default()),
            logw: Mutex::new(LogWriter {
                chain_id: random_u64(),
                ..LogWriter::default()
            }),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            meta_dirty: AtomicBool::new(false),
            bg: Mutex::new(Background::default()),
            bg_cv: Condvar::new(),
            inflight: Mutex::new(Inflight::default()),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PoolError::Closed("pool was closed".into()));
        }
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(PoolError::Closed(format!(
                "a previous commit failed ({f}); reopen the pool"
            )));
        }
        Ok(())
    }

    /// Release dirty-data charge. Saturating: an accounting bug must not wrap the counter
    /// and leave the pool throttled or read-only forever (tests assert it returns to 0).
    fn undirty(&self, n: u64) {
        let prev = self
            .dirty_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| {
                Some(x.saturating_sub(n))
            })
            .unwrap_or(0);
        debug_assert!(prev >= n, "dirty accounting underflow: {prev} - {n}");
    }

    fn fail(&self, e: &PoolError) {
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }

    pub(crate) fn vol(&self, name: &str) -> Result<Arc<Volume>> {
        self.vols
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| PoolError::UnknownVolume { name: name.into() })
    }

    fn find_snap(&self, v: &Volume, snap: &str) -> Result<SnapRec> {
        v.meta
            .lock()
            .snapshots
            .iter()
            .find(|s| s.name == snap)
            .cloned()
            .ok_or_else(|| PoolError::UnknownSnapshot {
                volume: v.name.clone(),
                snapshot: snap.into(),
            })
    }

    pub(crate) fn volume_exists(&self, name: &str) -> bool {
        self.vols.read().contains_key(name)
    }

    fn clones_of(&self, snap_guid: u64) -> Vec<String> {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        vols.iter()
            .filter(|v| v.meta.lock().origin_snap == Some(snap_guid))
            .map(|v| v.name.clone())
            .collect()
    }

    fn snapshot_count(&self) -> usize {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        vols.iter().map(|v| v.meta.lock().snapshots.len()).sum()
    }

    fn has_dirty(&self, v: &Volume) -> bool {
        let st = v.state.lock();
        !st.open.is_empty() || !st.syncing.is_empty()
    }

    fn volume_info(&self, v: &Volume) -> VolumeInfo {
        let meta = v.meta.lock().clone();
        let origin = meta.origin_snap.and_then(|g| {
            let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
            vols.iter().find_map(|o| {
                let m = o.meta.lock();
                m.snapshots
                    .iter()
                    .find(|s| s.guid == g)
                    .map(|s| format!("{}@{}", m.name, s.name))
            })
        });
        let io_number_max = v.tree.read().io_max;
        VolumeInfo {
            name: meta.name.clone(),
            guid: meta.guid,
            size: v.state.lock().size,
            block_size: meta.block_size,
            compression: meta.compression,
            used: meta.unique + meta.snap_held,
            referenced: meta.referenced,
            compression_ratio: ratio(meta.ref_lsize, meta.ref_psize_data),
            snapshots: meta.snapshots.iter().map(|s| s.name.clone()).collect(),
            origin,
            io_number_max,
        }
    }

    /// Writes are refused: the threshold counts dirty data twice (data plus worst-case
    /// indirect blocks), so acknowledged writes always fit in their commit.
    fn over_threshold(&self) -> bool {
        self.over_threshold_with(self.dirty_bytes.load(Ordering::SeqCst).saturating_mul(2))
    }

    /// True when `pending_bytes` more allocation would cross the fill threshold or eat
    /// into the reserve kept for destroy and UNMAP.
    fn over_threshold_with(&self, pending_bytes: u64) -> bool {
        let s = self.store.space();
        if s.size_bytes == 0 {
            return true;
        }
        let pct = self.ro_threshold_pct.load(Ordering::Relaxed);
        let reserve = s.size_bytes / 1000 * RESERVED_PER_MILLE;
        let allocated = s.allocated_bytes.saturating_add(pending_bytes);
        u128::from(allocated) * 100 >= u128::from(s.size_bytes) * u128::from(pct)
            || s.free_bytes.saturating_sub(pending_bytes) <= reserve
    }

    /// Refuse a write on a full pool; near the line a commit settles the real figure
    /// (dirty data turns into allocated bytes) first.
    fn admit_write(&self) -> Result<()> {
        if self.over_threshold() {
            let mut cs = self.commit.lock();
            self.check_usable()?;
            self.commit_locked(&mut cs, None)?;
            drop(cs);
            if self.over_threshold() {
                return Err(PoolError::ReadOnly {
                    reason: format!(
                        "pool is at its {} % fill threshold; destroy snapshots or volumes, or UNMAP",
                        self.ro_threshold_pct.load(Ordering::Relaxed)
                    ),
                });
            }
        }
        Ok(())
    }

    // ---- block I/O ----

    fn verify_fn(bp: &Bp) -> impl Fn(&[u8]) -> bool + Sync + '_ {
        move |b: &[u8]| checksum(b) == bp.cksum
    }

    fn read_stored(&self, bp: &Bp) -> Result<Vec<u8>> {
        let verify = Self::verify_fn(bp);
        let stored = self.store.read(bp.dva, bp.psize, &verify)?;
        // Paired with the store's check: never decode bytes the pointer does not vouch for.
        if checksum(&stored) != bp.cksum {
            return Err(PoolError::Corrupt {
                what: "block",
                reason: format!(
                    "store returned bytes failing the checksum at vdev {} offset {}",
                    bp.dva.vdev, bp.dva.offset
                ),
            });
        }
        decode_payload(bp, &stored)
    }

    pub(crate) fn read_data(&self, bp: &Bp) -> Result<Arc<Vec<u8>>> {
        debug_assert!(!bp.is_hole());
        let key = Key::of(bp);
        if let Some(Cached::Bytes(b)) = self.cache.get(&key) {
            return Ok(b);
        }
        let data = Arc::new(self.read_stored(bp)?);
        self.cache.insert(key, Cached::Bytes(data.clone()));
        Ok(data)
    }

    pub(crate) fn read_indirect(&self, bp: &Bp) -> Result<Arc<Vec<Bp>>> {
        debug_assert!(!bp.is_hole());
        let key = Key::of(bp);
        if let Some(Cached::Bps(b)) = self.cache.get(&key) {
            return Ok(b);
        }
        if bp.kind != Some(BlockKind::Indirect) && bp.kind != Some(BlockKind::DirIndex) {
            return Err(PoolError::Corrupt {
                what: "block pointer",
                reason: format!("expected an indirect block, found {:?}", bp.kind),
            });
        }
        let bps = Arc::new(decode_indirect(&self.read_stored(bp)?)?);
        self.cache.insert(key, Cached::Bps(bps.clone()));
        Ok(bps)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_block(
        &self,
        logical: &[u8],
        comp: Compression,
        kind: BlockKind,
        level: u8,
        class: AllocClass,
        txg: u64,
        io_max: u64,
    ) -> Result<Bp> {
        let enc = encode_payload(logical, comp);
        let stored = Arc::new(enc.bytes);
        let lsize = logical.len() as u32;
        let bp = Bp {
            lsize,
            comp: Some(enc.comp),
            kind: Some(kind),
            level,
            birth: txg,
            io_max,
            cksum: enc.cksum,
            ..Bp::default()
        };
        self.write_stored(stored, bp, class)
    }

    /// A data block: stored as is when not compressed (block sizes are whole sectors),
    /// sharing the dirty block's bytes with the device write instead of copying them.
    fn write_data_block(
        &self,
        logical: &Arc<Vec<u8>>,
        comp: Compression,
        txg: u64,
        io: u64,
    ) -> Result<Bp> {
        if comp != Compression::Off || !logical.len().is_multiple_of(SECTOR_SIZE as usize) {
            return self.write_block(logical, comp, BlockKind::Data, 0, AllocClass::Data, txg, io);
        }
        let bp = Bp {
            lsize: logical.len() as u32,
            comp: Some(Compression::Off),
            kind: Some(BlockKind::Data),
            level: 0,
            birth: txg,
            io_max: io,
            cksum: checksum(logical),
            ..Bp::default()
        };
        self.write_stored(logical.clone(), bp, AllocClass::Data)
    }

    /// Allocate and start writing `stored` for pointer `bp` (all but its address and
    /// psize filled in); at most [`COMMIT_WRITES_IN_FLIGHT`] writes stay in flight.
    fn write_stored(&self, stored: Arc<Vec<u8>>, mut bp: Bp, class: AllocClass) -> Result<Bp> {
        bp.psize = stored.len() as u32;
        bp.dva = self.store.alloc(bp.psize, class, bp.birth)?;
        let wait = self.store.write_start(bp.dva, stored)?;
        let oldest = {
            let mut q = self.inflight.lock();
            q.0.push_back(wait);
            if q.0.len() > COMMIT_WRITES_IN_FLIGHT {
                q.0.pop_front()
            } else {
                None
            }
        };
        if let Some(w) = oldest {
            w()?;
        }
        Ok(bp)
    }

    fn free_block(&self, bp: &Bp, txg: u64) {
        if bp.is_hole() {
            return;
        }
        self.cache.remove(&Key::of(bp));
        self.store.free(bp.dva, txg);
    }

    /// The data pointer of block `blk` in a tree (a hole if never written).
    fn lookup(&self, root: &Bp, levels: u8, blk: u64) -> Result<Bp> {
        let mut bp = *root;
        let mut level = levels;
        while level > 0 {
            if bp.is_hole() {
                return Ok(Bp::hole(bp.birth, 0, 0));
            }
            let bps = self.read_indirect(&bp)?;
            let idx = ((blk / span_blocks(level - 1)) % BPS_PER_INDIRECT as u64) as usize;
            bp = bps[idx];
            level -= 1;
        }
        Ok(bp)
    }

    /// Current contents of block `blk` of a volume (None: zeros): the open txg's dirty
    /// block, over the syncing txg's, over the committed tree.
    fn block_contents(&self, v: &Volume, blk: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let mut overlays: Vec<(Arc<Vec<u8>>, [u64; MAX_SECTORS / 64])> = Vec::new();
        {
            let st = v.state.lock();
            let zeros = |overlays: &[(Arc<Vec<u8>>, [u64; MAX_SECTORS / 64])]| {
                if overlays.is_empty() {
                    None
                } else {
                    Some(Self::merge(None, overlays))
                }
            };
            let layers = [
                (st.open.get(&blk), &st.open_frees[..]),
                (st.syncing.get(&blk), &st.syncing_frees[..]),
            ];
            for (d, frees) in layers {
                match d {
                    Some(Dirty::Data { data, .. }) => {
                        return Ok(Some(Self::merge(Some(data.clone()), &overlays)))
                    }
                    Some(Dirty::Hole { .. }) => return Ok(zeros(&overlays)),
                    Some(Dirty::Partial { data, valid, .. }) => {
                        overlays.push((data.clone(), *valid))
                    }
                    None => {}
                }
                // A range freed in this txg lies under this txg's dirty blocks.
                if range_covers(frees, blk).is_some() {
                    return Ok(zeros(&overlays));
                }
            }
        }
        // The syncing overlay may be committed meanwhile; laying it over the new tree
        // gives the same bytes.
        let base = {
            let tree = v.tree.read();
            let bp = self.lookup(&tree, v.levels, blk)?;
            if bp.is_hole() {
                None
            } else {
                Some(self.read_data(&bp)?)
            }
        };
        if overlays.is_empty() {
            return Ok(base);
        }
        let bs = v.block_size as usize;
        let base = base.unwrap_or_else(|| Arc::new(vec![0u8; bs]));
        Ok(Some(Self::merge(Some(base), &overlays)))
    }

    /// `base` (None: zeros of the overlays' size) with overlays laid on, the last in the
    /// list first (it is the oldest).
    fn merge(
        base: Option<Arc<Vec<u8>>>,
        overlays: &[(Arc<Vec<u8>>, [u64; MAX_SECTORS / 64])],
    ) -> Arc<Vec<u8>> {
        if overlays.is_empty() {
            return base.unwrap_or_default();
        }
        let len = overlays[0].0.len();
        let mut out = base.map_or_else(|| vec![0u8; len], |b| b.to_vec());
        for (data, valid) in overlays.iter().rev() {
            overlay(&mut out, data, valid);
        }
        Arc::new(out)
    }

    // ---- walks ----

    /// Depth-first walk: `descend(bp)` decides whether a pointer is visited; `visit(blk,
    /// bp)` gets every visited data pointer and every visited hole (at any level).
    pub(crate) fn walk(
        &self,
        bp: &Bp,
        level: u8,
        first_blk: u64,
        descend: &mut dyn FnMut(&Bp) -> bool,
        visit: &mut dyn FnMut(u64, &Bp) -> Result<()>,
    ) -> Result<()> {
        if !descend(bp) {
            return Ok(());
        }
        if level == 0 || bp.is_hole() {
            let mut b = *bp;
            b.level = level;
            return visit(first_blk, &b);
        }
        let bps = self.read_indirect(bp)?;
        let span = span_blocks(level - 1);
        for (i, child) in bps.iter().enumerate() {
            self.walk(
                child,
                level - 1,
                first_blk + i as u64 * span,
                descend,
                visit,
            )?;
        }
        Ok(())
    }

    /// Walk every stored block (data and indirect) of a tree born after `after_txg`.
    fn walk_blocks(
        &self,
        bp: &Bp,
        level: u8,
        after_txg: u64,
        f: &mut dyn FnMut(&Bp) -> Result<()>,
    ) -> Result<()> {
        if bp.is_hole() || bp.birth <= after_txg {
            return Ok(());
        }
        if level > 0 {
            let bps = self.read_indirect(bp)?;
            for child in bps.iter() {
                self.walk_blocks(child, level - 1, after_txg, f)?;
            }
        }
        f(bp)
    }

    /// Blocks of tree `a` born after `after_txg` that tree `b` does not share at the same
    /// position: freed in `free_txg` when given, else only counted. Returns their bytes.
    fn diff_free(
        &self,
        v: &Volume,
        a: Bp,
        b: Bp,
        level: u8,
        after_txg: u64,
        free_txg: Option<u64>,
    ) -> Result<u64> {
        let _ = v;
        if a.is_hole() || a.birth <= after_txg || (a.dva == b.dva && a.cksum == b.cksum) {
            return Ok(0);
        }
        let mut bytes = u64::from(a.psize);
        if level > 0 {
            let ac = self.read_indirect(&a)?;
            let bc = if b.is_hole() {
                None
            } else {
                Some(self.read_indirect(&b)?)
            };
            for (i, child) in ac.iter().enumerate() {
                let other = bc.as_ref().map_or(Bp::default(), |c| c[i]);
                bytes += self.diff_free(v, *child, other, level - 1, after_txg, free_txg)?;
            }
        }
        if let Some(txg) = free_txg {
            self.free_block(&a, txg);
        }
        Ok(bytes)
    }

    // ---- commit ----

    fn commit_locked(&self, cs: &mut CommitState, op: Option<DirOp<'_>>) -> Result<u64> {
        let r = self.commit_inner(cs, op);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    /// Wait until every block write started by this commit is done; the first error.
    fn drain_writes(&self) -> Result<()> {
        let waits = std::mem::take(&mut self.inflight.lock().0);
        let mut first = Ok(());
        for w in waits {
            if let (Err(e), Ok(())) = (w(), &first) {
                first = Err(e.into());
            }
        }
        first
    }

    fn commit_inner(&self, cs: &mut CommitState, op: Option<DirOp<'_>>) -> Result<u64> {
        self.check_usable()?;
        let r = self.commit_body(cs, op);
        // On error too: no write of this commit outlives it.
        let drained = self.drain_writes();
        let txg = r?;
        drained?;
        Ok(txg)
    }

    fn commit_body(&self, cs: &mut CommitState, op: Option<DirOp<'_>>) -> Result<u64> {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        let mut synced_bytes = 0u64;
        let txg = {
            let mut t = self.txg.write();
            let txg = *t;
            *t += 1;
            for v in &vols {
                let mut st = v.state.lock();
                let open = std::mem::take(&mut st.open);
                synced_bytes += open.len() as u64 * u64::from(v.block_size);
                st.syncing = Arc::new(open);
                let props = std::mem::take(&mut st.open_props);
                st.syncing_props.extend(props);
                let frees = std::mem::take(&mut st.open_frees);
                synced_bytes += frees.len() as u64 * FREE_RANGE_CHARGE_BYTES;
                st.syncing_frees = Arc::new(frees);
            }
            txg
        };
        assert!(txg > cs.last_txg, "txg {txg} not after {}", cs.last_txg);
        for v in &vols {
            self.sync_volume(v, txg)?;
        }
        if let Some(op) = op {
            op(self, txg)?;
            self.drain_writes()?;
        }
        let dir = self.write_directory(cs, txg)?;
        self.drain_writes()?;
        let log = self.log_commit(txg)?;
        let root = Root {
            pool_guid: self.pool_guid,
            txg,
            dir,
            log,
        };
        self.store.sync(txg, &root.encode())?;
        cs.last_txg = txg;
        self.undirty(synced_bytes);
        let mut log = self.log.lock();
        let mut dropped = 0u64;
        log.records.retain(|r| {
            if r.txg <= txg {
                dropped += r.mem_bytes();
                false
            } else {
                true
            }
        });
        log.bytes -= dropped;
        self.undirty(dropped);
        Ok(txg)
    }

    fn sync_volume(&self, v: &Volume, txg: u64) -> Result<()> {
        {
            // Meta before state (lock order), so a reader never sees neither copy.
            let mut meta = v.meta.lock();
            let props = std::mem::take(&mut v.state.lock().syncing_props);
            for (k, val) in props {
                meta.properties.insert(k, val);
            }
        }
        let (syncing, frees) = {
            let st = v.state.lock();
            (st.syncing.clone(), st.syncing_frees.clone())
        };
        if syncing.is_empty() && frees.is_empty() {
            return Ok(());
        }
        let mut meta = v.meta.lock();
        let old_root = *v.tree.read();
        let dirty: Vec<(u64, &Dirty)> = syncing.iter().map(|(k, d)| (*k, d)).collect();
        let pre = self.prefetch_partials(v, &old_root, &dirty, &frees);
        let new_root = self.apply(
            v, &mut meta, old_root, v.levels, 0, &dirty, &frees, &pre, txg,
        )?;
        // Readers follow the new root as soon as it is set: its blocks must be written.
        self.drain_writes()?;
        meta.root = new_root;
        *v.tree.write() = new_root;
        drop(meta);
        let mut st = v.state.lock();
        st.syncing = Arc::new(BTreeMap::new());
        st.syncing_frees = Arc::new(Vec::new());
        Ok(())
    }

    /// Read the old blocks under partial writes (sector overlays) with several reads in
    /// flight, before the commit walks the tree one block at a time. Bounded by the dirty
    /// data (each overlay is charged a whole block). A failed read is left out: the walk
    /// reads the block again and reports the error.
    fn prefetch_partials(
        &self,
        v: &Volume,
        root: &Bp,
        dirty: &[(u64, &Dirty)],
        frees: &[FreeRange],
    ) -> Prefetched {
        let wanted: Vec<(u64, Bp)> = dirty
            .iter()
            .filter(|(b, d)| {
                matches!(d, Dirty::Partial { .. }) && range_covers(frees, *b).is_none()
            })
            .filter_map(|(b, _)| {
                let bp = self.lookup(root, v.levels, *b).ok()?;
                (!bp.is_hole()).then_some((*b, bp))
            })
            .collect();
        if wanted.len() < 2 {
            return Prefetched::new();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let out = Mutex::new(Prefetched::with_capacity(wanted.len()));
        std::thread::scope(|s| {
            for i in 0..COMMIT_READERS.min(wanted.len()) {
                // A reader that cannot start only means fewer reads in flight.
                let _ = std::thread::Builder::new()
                    .name(format!("commit-read-{i}"))
                    .spawn_scoped(s, || {
                        while let Some((b, bp)) = wanted.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let d = match self.cache.get(&Key::of(bp)) {
                                Some(Cached::Bytes(c)) => Ok(c.to_vec()),
                                _ => self.read_stored(bp),
                            };
                            if let Ok(d) = d {
                                out.lock().insert(*b, (*bp, d));
                            }
                        }
                    });
            }
        });
        out.into_inner()
    }

    fn born(meta: &mut VolRec, bp: &Bp) {
        if bp.is_hole() {
            return;
        }
        meta.referenced += u64::from(bp.psize);
        meta.unique += u64::from(bp.psize);
        if bp.level == 0 {
            meta.ref_lsize += u64::from(bp.lsize);
            meta.ref_psize_data += u64::from(bp.psize);
        }
    }

    fn kill(&self, meta: &mut VolRec, bp: &Bp, txg: u64) {
        if bp.is_hole() {
            return;
        }
        let psize = u64::from(bp.psize);
        meta.referenced -= psize;
        if bp.level == 0 {
            meta.ref_lsize -= u64::from(bp.lsize);
            meta.ref_psize_data -= psize;
        }
        if bp.birth > meta.origin_txg {
            meta.unique -= psize;
        }
        if bp.birth > prev_snap_txg(meta) {
            self.free_block(bp, txg);
        } else if bp.birth > meta.origin_txg {
            meta.snap_held += psize;
        }
    }

    /// Copy-on-write the dirty blocks `dirty` (sorted, all under `bp`) into a new subtree.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        v: &Volume,
        meta: &mut VolRec,
        bp: Bp,
        level: u8,
        first_blk: u64,
        dirty: &[(u64, &Dirty)],
        frees: &[FreeRange],
        pre: &Prefetched,
        txg: u64,
    ) -> Result<Bp> {
        assert!(level > 0, "apply is called on indirect levels");
        let mut children: Vec<Bp> = if bp.is_hole() {
            // Children inherit a hole's birth and io number: an UNMAP recorded in a
            // collapsed hole must stay visible to incremental sends and `changed_since`.
            vec![Bp::hole(bp.birth, bp.io_max, level - 1); BPS_PER_INDIRECT]
        } else {
            self.read_indirect(&bp)?.to_vec()
        };
        let span = span_blocks(level - 1);
        let node_end = first_blk.saturating_add(span * BPS_PER_INDIRECT as u64);
        // Children touched by a dirty block or a free range, in order.
        let mut touched = std::collections::BTreeSet::new();
        for (blk, _) in dirty {
            let idx = ((blk - first_blk) / span) as usize;
            assert!(idx < BPS_PER_INDIRECT, "dirty block outside its subtree");
            touched.insert(idx);
        }
        let frees: Vec<FreeRange> = frees
            .iter()
            .filter(|f| f.first < node_end && f.end > first_blk)
            .copied()
            .collect();
        for f in &frees {
            let a = (f.first.max(first_blk) - first_blk) / span;
            let b = (f.end.min(node_end) - 1 - first_blk) / span;
            touched.extend(a as usize..=b as usize);
        }
        for idx in touched {
            let c0 = first_blk + idx as u64 * span;
            let c1 = c0 + span;
            let lo = dirty.partition_point(|(b, _)| *b < c0);
            let hi = dirty.partition_point(|(b, _)| *b < c1);
            let child_dirty = &dirty[lo..hi];
            let old = children[idx];
            children[idx] = if level == 1 {
                let freed = range_covers(&frees, c0);
                match child_dirty.first() {
                    Some((b, d)) => {
                        // Only if the block is still the one prefetched (it always is: the
                        // commit lock keeps the tree still).
                        let old_bytes = pre.get(b).filter(|(p, _)| *p == old).map(|(_, d)| d);
                        self.apply_data(v, meta, old, d, old_bytes, freed.is_some(), txg)?
                    }
                    None => {
                        let io = freed.unwrap_or(0);
                        self.kill(meta, &old, txg);
                        Bp::hole(txg, io, 0)
                    }
                }
            } else {
                let whole = frees.iter().rev().find(|f| f.first <= c0 && c1 <= f.end);
                match (child_dirty.is_empty(), whole) {
                    (true, Some(f)) => {
                        self.kill_subtree(meta, &old, level - 1, txg)?;
                        Bp::hole(txg, f.io, level - 1)
                    }
                    _ => self.apply(v, meta, old, level - 1, c0, child_dirty, &frees, pre, txg)?,
                }
            };
        }
        self.kill(meta, &bp, txg);
        let io_max = children.iter().map(|c| c.io_max).max().unwrap_or(0);
        if children.iter().all(Bp::is_hole) {
            let birth = children.iter().map(|c| c.birth).max().unwrap_or(0);
            return Ok(Bp::hole(birth, io_max, level));
        }
        let new = self.write_block(
            &encode_indirect(&children),
            Compression::Lz4,
            BlockKind::Indirect,
            level,
            AllocClass::Metadata,
            txg,
            io_max,
        )?;
        self.cache
            .insert(Key::of(&new), Cached::Bps(Arc::new(children)));
        Self::born(meta, &new);
        Ok(new)
    }

    /// New pointer for one dirty data block; `freed`: an UNMAP of this txg covered it
    /// before the dirty write, so an overlay lies over zeros, not the old block.
    #[allow(clippy::too_many_arguments)]
    fn apply_data(
        &self,
        v: &Volume,
        meta: &mut VolRec,
        old: Bp,
        d: &Dirty,
        old_bytes: Option<&Vec<u8>>,
        freed: bool,
        txg: u64,
    ) -> Result<Bp> {
        let (data, io) = match d {
            Dirty::Hole { io } => (None, *io),
            Dirty::Data { data, io } => (Some(data.clone()), *io),
            Dirty::Partial { data, valid, io } => {
                // The old block is read here, in the commit, not in the write.
                let mut base = if old.is_hole() || freed {
                    vec![0u8; v.block_size as usize]
                } else if let Some(b) = old_bytes {
                    b.clone()
                } else {
                    self.read_data(&old)?.to_vec()
                };
                overlay(&mut base, data, valid);
                (Some(Arc::new(base)), *io)
            }
        };
        self.kill(meta, &old, txg);
        let new = match data {
            // A block of zeros is stored as a hole: thin, and UNMAP-equivalent.
            Some(d) if d.iter().any(|&b| b != 0) => {
                self.write_data_block(&d, v.compression, txg, io)?
            }
            _ => Bp::hole(txg, io, 0),
        };
        Self::born(meta, &new);
        Ok(new)
    }

    /// Kill every block of a subtree (freeing those no snapshot holds).
    fn kill_subtree(&self, meta: &mut VolRec, bp: &Bp, level: u8, txg: u64) -> Result<()> {
        if bp.is_hole() {
            return Ok(());
        }
        if level > 0 {
            let bps = self.read_indirect(bp)?;
            for c in bps.iter() {
                self.kill_subtree(meta, c, level - 1, txg)?;
            }
        }
        self.kill(meta, bp, txg);
        Ok(())
    }

    /// Write the object directory: a header line, then segments of volumes (JSON lines,
    /// docs/format/block-tree.md "Directory"). Segment boundaries depend on volume guids
    /// only, so a change to one volume rewrites its segment, not the whole directory.
    fn write_directory(&self, cs: &mut CommitState, txg: u64) -> Result<Bp> {
        self.meta_dirty.store(false, Ordering::SeqCst);
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        let header = DirRec {
            version: DIR_VERSION,
            pool_guid: self.pool_guid,
            ro_threshold_pct: self.ro_threshold_pct.load(Ordering::Relaxed) as u8,
            compression: *self.default_compression.lock(),
            volumes: Vec::new(),
        };
        let mut segments: Vec<Vec<u8>> = Vec::new();
        let mut line = header.to_bytes();
        line.push(b'\n');
        segments.push(line);
        let mut seg: Vec<u8> = Vec::new();
        for v in &vols {
            let rec = v.meta.lock().clone();
            seg.push(if seg.is_empty() { b'[' } else { b',' });
            seg.extend_from_slice(&serde_json::to_vec(&rec).unwrap_or_default());
            if rec.guid % DIR_SEGMENT_GUID_MOD == 0 || seg.len() >= DIR_SEGMENT_BYTES {
                seg.extend_from_slice(b"]\n");
                segments.push(std::mem::take(&mut seg));
            }
        }
        if !seg.is_empty() {
            seg.extend_from_slice(b"]\n");
            segments.push(seg);
        }
        let mut old = std::mem::take(&mut cs.dir_segments);
        let mut chunks: Vec<Bp> = Vec::new();
        for seg in &segments {
            let h = xxhash_rust::xxh3::xxh3_128(seg);
            let bps = match old.remove(&h) {
                Some(bps) => bps,
                None => {
                    let mut bps = Vec::new();
                    for c in seg.chunks(DIR_CHUNK_BYTES) {
                        bps.push(self.write_block(
                            c,
                            Compression::Lz4,
                            BlockKind::DirChunk,
                            0,
                            AllocClass::Metadata,
                            txg,
                            0,
                        )?);
                    }
                    bps
                }
            };
            chunks.extend_from_slice(&bps);
            cs.dir_segments.insert(h, bps);
        }
        if chunks.len() > MAX_DIR_CHUNKS {
            return Err(PoolError::Invalid(format!(
                "object directory of {} chunks exceeds {MAX_DIR_CHUNKS}",
                chunks.len()
            )));
        }
        let mut index_bytes = vec![0u8; chunks.len() * bp::BP_BYTES];
        for (bp, slot) in chunks
            .iter()
            .zip(index_bytes.chunks_exact_mut(bp::BP_BYTES))
        {
            bp.encode(slot);
        }
        let index = self.write_block(
            &index_bytes,
            Compression::Lz4,
            BlockKind::DirIndex,
            1,
            AllocClass::Metadata,
            txg,
            0,
        )?;
        for bps in old.into_values() {
            for b in bps {
                self.free_block(&b, txg);
            }
        }
        if let Some(old_index) = cs.dir_blocks.last() {
            self.free_block(old_index, txg);
        }
        chunks.push(index);
        cs.dir_blocks = chunks;
        Ok(index)
    }

    /// Chunk pointers of a directory index, in order.
    fn dir_chunks(&self, index: &Bp) -> Result<Vec<Bp>> {
        if index.kind != Some(BlockKind::DirIndex) {
            return Err(PoolError::Corrupt {
                what: "pool root",
                reason: "directory pointer is not a directory index".into(),
            });
        }
        let bytes = self.read_stored(index)?;
        if bytes.len() % bp::BP_BYTES != 0 || bytes.len() / bp::BP_BYTES > MAX_DIR_CHUNKS {
            return Err(PoolError::Corrupt {
                what: "object directory",
                reason: format!("index of {} bytes", bytes.len()),
            });
        }
        let bps: Vec<Bp> = bytes
            .chunks_exact(bp::BP_BYTES)
            .map(Bp::decode)
            .collect::<Result<_>>()?;
        if bps.iter().any(|b| b.kind != Some(BlockKind::DirChunk)) {
            return Err(PoolError::Corrupt {
                what: "object directory",
                reason: "chunk pointer of the wrong kind".into(),
            });
        }
        Ok(bps)
    }

    /// The directory's blocks and its segments (for reuse by the next commit).
    fn dir_layout(&self, index: &Bp) -> Result<(Vec<Bp>, DirSegments)> {
        let chunks = self.dir_chunks(index)?;
        let mut segments = std::collections::HashMap::new();
        let mut seg_bytes = Vec::new();
        let mut seg_bps = Vec::new();
        for bp in &chunks {
            let b = self.read_stored(bp)?;
            seg_bytes.extend_from_slice(&b);
            seg_bps.push(*bp);
            if b.last() == Some(&b'\n') {
                segments.insert(
                    xxhash_rust::xxh3::xxh3_128(&seg_bytes),
                    std::mem::take(&mut seg_bps),
                );
                seg_bytes.clear();
            }
        }
        let mut blocks = chunks;
        blocks.push(*index);
        Ok((blocks, segments))
    }

    fn read_directory(&self, index: &Bp) -> Result<DirRec> {
        let corrupt = |reason: String| PoolError::Corrupt {
            what: "object directory",
            reason,
        };
        let mut bytes = Vec::new();
        for bp in self.dir_chunks(index)? {
            bytes.extend_from_slice(&self.read_stored(&bp)?);
        }
        let mut lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let header = lines.next().ok_or_else(|| corrupt("empty".into()))?;
        let mut dir = DirRec::from_bytes(header)?;
        for line in lines {
            let vols: Vec<VolRec> =
                serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
            dir.volumes.extend(vols);
        }
        if dir.volumes.len() > MAX_VOLUMES {
            return Err(corrupt(format!("{} volumes", dir.volumes.len())));
        }
        for v in &dir.volumes {
            check_block_size(v.block_size)
                .map_err(|e| corrupt(format!("volume {}: {e}", v.name)))?;
            if v.levels != levels_for(v.block_size) || v.size > MAX_VOLUME_BYTES {
                return Err(corrupt(format!("volume {}: bad geometry", v.name)));
            }
        }
        Ok(dir)
    }

    // ---- directory operations (run inside a commit, after the data phase) ----

    fn rollback_op(&self, v: &Volume, s: &SnapRec, txg: u64) -> Result<()> {
        let mut meta = v.meta.lock();
        let head = meta.root;
        let mut freed = Vec::new();
        self.walk_blocks(&head, v.levels, s.txg, &mut |bp| {
            freed.push(*bp);
            Ok(())
        })?;
        for bp in &freed {
            self.free_block(bp, txg);
        }
        let back = self.diff_free(v, s.root, head, v.levels, meta.origin_txg, None)?;
        meta.snap_held = meta.snap_held.saturating_sub(back);
        meta.root = s.root;
        meta.referenced = s.referenced;
        meta.unique = s.unique_at;
        meta.ref_lsize = s.ref_lsize;
        meta.ref_psize_data = s.ref_psize_data;
        *v.tree.write() = s.root;
        Ok(())
    }

    fn destroy_snapshot_op(&self, v: &Volume, guid: u64, txg: u64) -> Result<()> {
        let mut meta = v.meta.lock();
        let Some(i) = meta.snapshots.iter().position(|s| s.guid == guid) else {
            return Ok(());
        };
        let s = meta.snapshots[i].clone();
        let prev_txg = if i == 0 {
            meta.origin_txg
        } else {
            meta.snapshots[i - 1].txg
        };
        let next_root = meta.snapshots.get(i + 1).map_or(meta.root, |n| n.root);
        let freed = self.diff_free(v, s.root, next_root, v.levels, prev_txg, Some(txg))?;
        meta.snap_held = meta.snap_held.saturating_sub(freed);
        meta.snapshots.remove(i);
        Ok(())
    }

    fn destroy_volume_op(&self, v: &Volume, txg: u64) -> Result<()> {
        {
            let mut st = v.state.lock();
            st.destroyed = true;
            let dropped = st.open.len() as u64 * u64::from(v.block_size)
                + st.open_frees.len() as u64 * FREE_RANGE_CHARGE_BYTES;
            st.open.clear();
            st.open_frees.clear();
            st.open_props.clear();
            self.undirty(dropped);
        }
        let meta = v.meta.lock().clone();
        let mut after = meta.origin_txg;
        let mut roots: Vec<Bp> = meta.snapshots.iter().map(|s| s.root).collect();
        roots.push(meta.root);
        let mut txgs: Vec<u64> = meta.snapshots.iter().map(|s| s.txg).collect();
        txgs.push(u64::MAX);
        for (root, t) in roots.iter().zip(txgs) {
            let mut freed = Vec::new();
            self.walk_blocks(root, v.levels, after, &mut |bp| {
                freed.push(*bp);
                Ok(())
            })?;
            for bp in &freed {
                self.free_block(bp, txg);
            }
            after = t;
        }
        self.vols.write().remove(&v.name);
        Ok(())
    }

    /// Move a receive temporary's tree (a clone of the target's newest snapshot) to the
    /// target's head, without freeing: the blocks change owner.
    fn promote_recv(&self, tmp: &Volume, target: &Volume) -> Result<()> {
        let t = tmp.meta.lock().clone();
        {
            let mut m = target.meta.lock();
            m.root = t.root;
            m.size = t.size;
            m.referenced = t.referenced;
            m.unique += t.unique;
            m.ref_lsize = t.ref_lsize;
            m.ref_psize_data = t.ref_psize_data;
            *target.tree.write() = t.root;
            target.state.lock().size = t.size;
        }
        tmp.state.lock().destroyed = true;
        self.vols.write().remove(&tmp.name);
        Ok(())
    }

    fn cleanup_receiving(self: &Arc<Self>) -> Result<()> {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        let leftovers: Vec<Arc<Volume>> = vols
            .into_iter()
            .filter(|v| v.meta.lock().receiving)
            .collect();
        if leftovers.is_empty() {
            return Ok(());
        }
        let mut cs = self.commit.lock();
        self.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                for v in &leftovers {
                    p.destroy_volume_op(v, txg)?;
                }
                Ok(())
            }),
        )?;
        Ok(())
    }

    // ---- intent log ----

    fn log_commit(&self, txg: u64) -> Result<LogHead> {
        let mut w = self.logw.lock();
        while let Some(front) = w.blocks.front() {
            if front.max_txg > txg {
                break;
            }
            let dva = front.dva;
            w.blocks.pop_front();
            w.head_seq += 1;
            self.store.free(dva, txg);
        }
        if w.next.is_none() {
            // Two sectors: room for one 4 KiB write record with its headers.
            let psize = 2 * SECTOR_SIZE;
            let dva = self.store.alloc(psize, AllocClass::Log, txg)?;
            w.next = Some((dva, psize));
            w.next_alloc_txg = txg;
            w.head_seq = w.seq;
        }
        let (dva, psize) = match w.blocks.front() {
            Some(b) => (b.dva, b.psize),
            None => w.next.unwrap_or_default(),
        };
        Ok(LogHead {
            chain_id: w.chain_id,
            seq: w.head_seq,
            dva,
            psize,
        })
    }

    fn flush(&self) -> Result<()> {
        self.check_usable()?;
        let r = self.flush_inner();
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn flush_inner(&self) -> Result<()> {
        let mut w = self.logw.lock();
        let (records, bytes) = {
            let mut l = self.log.lock();
            let b = l.bytes;
            l.bytes = 0;
            (std::mem::take(&mut l.records), b)
        };
        if records.is_empty() {
            // Every earlier write is covered: by a durable root, or by a log block whose
            // flush completed before it released `logw`.
            return Ok(());
        }
        self.write_log(&mut w, records)?;
        self.store.flush()?;
        self.undirty(bytes);
        if w.blocks.len() as u64 >= MAX_LOG_CHAIN_BLOCKS {
            self.kick();
        }
        Ok(())
    }

    fn write_log(&self, w: &mut LogWriter, records: Vec<LogRecord>) -> Result<()> {
        let open_txg = *self.txg.read();
        let mut queue: VecDeque<LogRecord> = records.into();
        while !queue.is_empty() {
            let (dva, psize) = match w.next {
                Some(n) => n,
                None => {
                    return Err(PoolError::Corrupt {
                        what: "intent log",
                        reason: "no pre-allocated log block (pool not committed)".into(),
                    })
                }
            };
            let cap = psize as usize - zil::LOG_HEADER_BYTES;
            let mut used = 0usize;
            let mut batch = Vec::new();
            while let Some(r) = queue.pop_front() {
                let need = r.encoded_len();
                if used + need <= cap {
                    used += need;
                    batch.push(r);
                    continue;
                }
                let room = cap - used;
                if let (Some(d), true) = (&r.data, room >= zil::REC_HEADER_BYTES + 512) {
                    let take = (room - zil::REC_HEADER_BYTES) / 512 * 512;
                    let head = LogRecord {
                        data: Some(Arc::new(d[..take].to_vec())),
                        ..r.clone()
                    };
                    let tail = LogRecord {
                        offset: r.offset + take as u64,
                        data: Some(Arc::new(d[take..].to_vec())),
                        ..r
                    };
                    used += head.encoded_len();
                    batch.push(head);
                    queue.push_front(tail);
                } else {
                    queue.push_front(r);
                }
                break;
            }
            assert!(!batch.is_empty() || used == 0, "log packing");
            let remaining: usize = queue.iter().map(LogRecord::encoded_len).sum();
            let want = if remaining > 0 { remaining } else { used } + zil::LOG_HEADER_BYTES;
            let next_psize = (want.div_ceil(SECTOR_SIZE as usize) * SECTOR_SIZE as usize)
                .clamp(SECTOR_SIZE as usize, MAX_LOG_BLOCK_BYTES as usize)
                as u32;
            let next = self.store.alloc(next_psize, AllocClass::Log, open_txg)?;
            // Freed by the commit of the newest txg among its records and its allocation.
            let max_txg = batch
                .iter()
                .map(|r| r.txg)
                .max()
                .unwrap_or(0)
                .max(w.next_alloc_txg);
            let block = zil::encode_block(w.chain_id, w.seq, next, next_psize, &batch, psize);
            self.store.write(dva, &block)?;
            w.blocks.push_back(LogBlockInfo {
                dva,
                psize,
                max_txg,
            });
            w.seq += 1;
            w.next = Some((next, next_psize));
            w.next_alloc_txg = open_txg;
        }
        Ok(())
    }

    fn replay(self: &Arc<Self>, root: &Root) -> Result<()> {
        let head = root.log;
        let mut records = Vec::new();
        let mut found: Vec<(Dva, u32)> = Vec::new();
        if head.dva.asize != 0 {
            let (mut dva, mut psize, mut seq) = (head.dva, head.psize, head.seq);
            for _ in 0..MAX_LOG_CHAIN_BLOCKS {
                if psize == 0 || psize % SECTOR_SIZE != 0 || psize > MAX_LOG_BLOCK_BYTES {
                    break;
                }
                let chain = head.chain_id;
                let s = seq;
                let verify = move |b: &[u8]| zil::block_valid(b, chain, s);
                match self.store.read(dva, psize, &verify) {
                    Ok(b) => {
                        let blk = zil::decode_block(&b)?;
                        found.push((dva, psize));
                        records.extend(blk.records);
                        dva = blk.next;
                        psize = blk.next_psize;
                        seq += 1;
                    }
                    Err(_) => break,
                }
            }
            // Blocks found are claimed (their allocation may belong to a txg that never
            // became durable) and freed in the replay txg.
            let txg = *self.txg.read();
            let mut w = self.logw.lock();
            // The pre-allocated block after the last valid one is ours too, whether or not
            // its allocation was durable (its address came from a checksummed block or
            // the root): claimed and freed with the rest.
            let trailing = (dva.asize != 0).then_some((dva, psize));
            for (dva, psize) in found.iter().copied().chain(trailing) {
                match self.store.claim(dva, txg) {
                    // Ok: claimed now; another error: allocated already (durable).
                    Ok(()) => {}
                    Err(StoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::Unsupported =>
                    {
                        // The store cannot claim: never free what might be in use.
                        continue;
                    }
                    Err(_) => {}
                }
                w.blocks.push_back(LogBlockInfo {
                    dva,
                    psize,
                    max_txg: txg,
                });
            }
        }
        let by_guid: BTreeMap<u64, Arc<Volume>> = self
            .vols
            .read()
            .values()
            .map(|v| (v.guid, v.clone()))
            .collect();
        for r in records.iter().filter(|r| r.txg > root.txg) {
            let Some(v) = by_guid.get(&r.vol_guid) else {
                continue;
            };
            let h = VolumeHandle {
                pool: self.clone(),
                vol: v.clone(),
            };
            let res = match &r.data {
                Some(d) => h.write_inner(r.offset, d, r.io_number, false),
                None => h.unmap_inner(r.offset, r.unmap_len, r.io_number, false),
            };
            match res {
                Ok(()) | Err(PoolError::OutOfRange { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut cs = self.commit.lock();
        self.commit_locked(&mut cs, None)?;
        Ok(())
    }

    fn kick(&self) {
        self.bg.lock().kick = true;
        self.bg_cv.notify_all();
    }

    fn background(self: Arc<Self>) {
        // Runs until `stop`; each round waits at most one txg interval.
        loop {
            {
                let mut bg = self.bg.lock();
                if !bg.stop && !bg.kick {
                    self.bg_cv.wait_for(&mut bg, self.opts.txg_interval);
                }
                if bg.stop {
                    return;
                }
                bg.kick = false;
            }
            let dirty = self.dirty_bytes.load(Ordering::SeqCst) > 0
                || self.meta_dirty.load(Ordering::SeqCst)
                || self.logw.lock().blocks.len() as u64 >= MAX_LOG_CHAIN_BLOCKS;
            if !dirty {
                continue;
            }
            let mut cs = self.commit.lock();
            if self.check_usable().is_err() {
                return;
            }
            if self.commit_locked(&mut cs, None).is_err() {
                return;
            }
        }
    }

    /// Wait (by committing) while dirty data is over the limit.
    fn throttle(&self, incoming: u64) -> Result<()> {
        let max = self.opts.dirty_max_bytes;
        if self.dirty_bytes.load(Ordering::SeqCst) > max / 2 {
            self.kick();
        }
        for _ in 0..8 {
            let dirty = self.dirty_bytes.load(Ordering::SeqCst);
            if dirty + incoming <= max || dirty == 0 {
                return Ok(());
            }
            let mut cs = self.commit.lock();
            self.check_usable()?;
            if self.dirty_bytes.load(Ordering::SeqCst) + incoming > max {
                self.commit_locked(&mut cs, None)?;
            }
        }
        Ok(())
    }

    /// Time-sliced traversal: the commit lock is held for at most [`SCAN_SLICE`] at a
    /// time, so commits (and the writers they unblock) go on during a long scrub. A
    /// cursor (volume name, tree txg, block id) resumes on the current trees: snapshots
    /// are immutable, and a head's blocks before the cursor that changed meanwhile are new
    /// writes, which need no scrub.
    fn visit_live_blocks(&self, f: BlockVisitor<'_>) -> Result<TraverseStats> {
        let mut stats = TraverseStats {
            allocated_bytes: self.store.space().allocated_bytes,
            ..TraverseStats::default()
        };
        {
            let cs = self.commit.lock();
            for bp in &cs.dir_blocks {
                stats.blocks += 1;
                stats.bytes_visited += bp.dva.asize;
                f(bp.dva, bp.psize, &Self::verify_fn(bp))?;
            }
            let w = self.logw.lock();
            for (i, b) in w.blocks.iter().enumerate() {
                let (chain, seq) = (w.chain_id, w.head_seq + i as u64);
                stats.blocks += 1;
                stats.bytes_visited += b.dva.asize;
                f(b.dva, b.psize, &move |x: &[u8]| {
                    zil::block_valid(x, chain, seq)
                })?;
            }
        }
        let mut visit = |bp: &Bp, stats: &mut TraverseStats| -> Result<()> {
            let verify = Self::verify_fn(bp);
            stats.blocks += 1;
            stats.bytes_visited += bp.dva.asize;
            f(bp.dva, bp.psize, &verify)
        };
        // Cursor: volume name, txg of the tree (u64::MAX for the head), first block id.
        let mut cursor: (String, u64, u64) = (String::new(), 0, 0);
        loop {
            let mut cs = self.commit.lock();
            let slice_end = std::time::Instant::now() + SCAN_SLICE;
            let vols: Vec<Arc<Volume>> = self
                .vols
                .read()
                .range(cursor.0.clone()..)
                .map(|(_, v)| v.clone())
                .collect();
            let mut paused = false;
            'vols: for v in &vols {
                if v.name != cursor.0 {
                    cursor = (v.name.clone(), 0, 0);
                }
                let meta = v.meta.lock().clone();
                let mut trees: Vec<(Bp, u64)> =
                    meta.snapshots.iter().map(|s| (s.root, s.txg)).collect();
                trees.push((*v.tree.read(), u64::MAX));
                let mut after = meta.origin_txg;
                for (root, t) in trees {
                    if t < cursor.1 {
                        after = t;
                        continue;
                    }
                    if t > cursor.1 {
                        cursor.1 = t;
                        cursor.2 = 0;
                    }
                    let mut pause_at = None;
                    self.scan_tree(
                        &root,
                        v.levels,
                        0,
                        after,
                        cursor.2,
                        &mut |blk| {
                            if std::time::Instant::now() >= slice_end {
                                pause_at = Some(blk);
                                true
                            } else {
                                false
                            }
                        },
                        &mut |bp| visit(bp, &mut stats),
                    )?;
                    if let Some(blk) = pause_at {
                        cursor.2 = blk;
                        paused = true;
                        break 'vols;
                    }
                    after = t;
                }
                // Next volume: past every tree of this one.
                cursor.1 = u64::MAX;
                cursor.2 = u64::MAX;
            }
            if !paused {
                return Ok(stats);
            }
            // Hand the lock to a waiting commit before the next slice.
            parking_lot::MutexGuard::unlock_fair(cs);
            cs = self.commit.lock();
            drop(cs);
        }
    }

    /// Post-order walk of the blocks of a tree born after `after_txg` whose position is at
    /// or after `start_blk`. `pause(blk)` is asked before each data block; when it says
    /// yes the walk stops there (that block and its ancestors not visited yet).
    #[allow(clippy::too_many_arguments)]
    fn scan_tree(
        &self,
        bp: &Bp,
        level: u8,
        first_blk: u64,
        after_txg: u64,
        start_blk: u64,
        pause: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(&Bp) -> Result<()>,
    ) -> Result<bool> {
        let end = first_blk.saturating_add(span_blocks(level));
        if bp.is_hole() || bp.birth <= after_txg || end <= start_blk {
            return Ok(false);
        }
        if level == 0 {
            if pause(first_blk) {
                return Ok(true);
            }
        } else {
            let bps = self.read_indirect(bp)?;
            let span = span_blocks(level - 1);
            for (i, child) in bps.iter().enumerate() {
                let first = first_blk + i as u64 * span;
                if self.scan_tree(child, level - 1, first, after_txg, start_blk, pause, f)? {
                    return Ok(true);
                }
            }
        }
        f(bp)?;
        Ok(false)
    }
}

impl VolumeHandle {
    /// Volume name.
    pub fn name(&self) -> &str {
        &self.vol.name
    }

    /// Volume guid.
    pub fn guid(&self) -> u64 {
        self.vol.guid
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.vol.block_size
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.vol.state.lock().size
    }

    fn check_range(&self, st: &VolState, offset: u64, len: u64) -> Result<()> {
        if st.destroyed {
            return Err(PoolError::UnknownVolume {
                name: self.vol.name.clone(),
            });
        }
        if !offset.is_multiple_of(IO_ALIGN_BYTES) || !len.is_multiple_of(IO_ALIGN_BYTES) {
            return Err(PoolError::Unaligned {
                offset,
                len,
                align: IO_ALIGN_BYTES,
            });
        }
        if len > MAX_IO_BYTES {
            return Err(PoolError::Invalid(format!(
                "I/O of {len} bytes exceeds the {MAX_IO_BYTES}-byte limit"
            )));
        }
        if offset.checked_add(len).is_none_or(|end| end > st.size) {
            return Err(PoolError::OutOfRange {
                volume: self.vol.name.clone(),
                offset,
                len,
                size: st.size,
            });
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset` (both multiples of 512). Never-written ranges
    /// read as zeros; a block failing its checksum on every copy fails the read.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let p = &self.pool;
        p.check_usable()?;
        let len = buf.len() as u64;
        let bs = u64::from(self.vol.block_size);
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, len)?;
        }
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let blk = abs / bs;
            let in_blk = abs % bs;
            let n = (bs - in_blk).min(len - pos);
            let dst = &mut buf[pos as usize..(pos + n) as usize];
            let data = p.block_contents(&self.vol, blk)?;
            match data {
                Some(d) => dst.copy_from_slice(&d[in_blk as usize..(in_blk + n) as usize]),
                None => dst.fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    /// Write `data` at `offset` (both multiples of 512), tagging its blocks with
    /// `io_number`. Durable after the next [`VolumeHandle::flush`] or txg commit.
    pub fn write(&self, offset: u64, data: &[u8], io_number: Option<u64>) -> Result<()> {
        self.pool.check_usable()?;
        self.pool.admit_write()?;
        self.write_inner(offset, data, io_number, true)
    }

    /// Dirty the part of one block at volume offset `abs` with `src` (within the block).
    /// Returns the dirty bytes added (a block newly dirty in the open txg). Never reads
    /// the device: a partial write to a block not yet dirty becomes a sector overlay.
    fn dirty_range(&self, st: &mut VolState, abs: u64, src: Option<&[u8]>, io: u64) -> u64 {
        self.dirty_range_shared(st, abs, src, io).0
    }

    /// [`Self::dirty_range`], also returning the new block's bytes when `src` replaced a
    /// whole block with data: the intent log shares them instead of copying (a later
    /// partial write copies on write, so the log keeps what this write wrote).
    fn dirty_range_shared(
        &self,
        st: &mut VolState,
        abs: u64,
        src: Option<&[u8]>,
        io: u64,
    ) -> (u64, Option<Arc<Vec<u8>>>) {
        let bs = self.vol.block_size as usize;
        let blk = abs / bs as u64;
        let in_blk = (abs % bs as u64) as usize;
        let src = src.unwrap_or_default();
        let n = src.len();
        let zero = src.iter().all(|&b| b == 0);
        let sec = IO_ALIGN_BYTES as usize;
        if n == bs {
            let (entry, shared) = if zero {
                (Dirty::Hole { io }, None)
            } else {
                let data = Arc::new(src.to_vec());
                (
                    Dirty::Data {
                        data: data.clone(),
                        io,
                    },
                    Some(data),
                )
            };
            let added = if st.open.insert(blk, entry).is_none() {
                bs as u64
            } else {
                0
            };
            return (added, shared);
        }
        let (entry, added) = match st.open.remove(&blk) {
            Some(Dirty::Data { mut data, .. }) => {
                Arc::make_mut(&mut data)[in_blk..in_blk + n].copy_from_slice(src);
                (Dirty::Data { data, io }, 0)
            }
            Some(Dirty::Hole { .. }) => {
                if zero {
                    (Dirty::Hole { io }, 0)
                } else {
                    let mut data = vec![0u8; bs];
                    data[in_blk..in_blk + n].copy_from_slice(src);
                    (
                        Dirty::Data {
                            data: Arc::new(data),
                            io,
                        },
                        0,
                    )
                }
            }
            Some(Dirty::Partial {
                mut data,
                mut valid,
                ..
            }) => {
                Arc::make_mut(&mut data)[in_blk..in_blk + n].copy_from_slice(src);
                sectors_set(&mut valid, in_blk / sec, n / sec);
                if all_sectors(&valid, bs / sec) {
                    (Dirty::Data { data, io }, 0)
                } else {
                    (Dirty::Partial { data, valid, io }, 0)
                }
            }
            None => {
                let mut data = vec![0u8; bs];
                data[in_blk..in_blk + n].copy_from_slice(src);
                let mut valid = [0u64; MAX_SECTORS / 64];
                sectors_set(&mut valid, in_blk / sec, n / sec);
                (
                    Dirty::Partial {
                        data: Arc::new(data),
                        valid,
                        io,
                    },
                    bs as u64,
                )
            }
        };
        st.open.insert(blk, entry);
        (added, None)
    }

    fn write_inner(&self, offset: u64, data: &[u8], io: Option<u64>, log: bool) -> Result<()> {
        let p = &self.pool;
        let len = data.len() as u64;
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, len)?;
        }
        let bs = u64::from(self.vol.block_size);
        p.throttle(len + bs)?;
        let txg_guard = p.txg.read();
        let txg = *txg_guard;
        let mut st = self.vol.state.lock();
        self.check_range(&st, offset, len)?;
        let mut added = 0u64;
        let mut pos = 0u64;
        // Log records: whole blocks share the dirty block's bytes; the other pieces are
        // copied, runs of them merged. Replaying them in order writes the same bytes.
        let mut records: Vec<LogRecord> = Vec::new();
        let mut copied: Option<(u64, u64)> = None;
        let record = |off: u64, d: Arc<Vec<u8>>| LogRecord {
            vol_guid: self.vol.guid,
            txg,
            offset: off,
            data: Some(d),
            unmap_len: 0,
            io_number: io,
        };
        while pos < len {
            let abs = offset + pos;
            let n = (bs - abs % bs).min(len - pos);
            let src = &data[pos as usize..(pos + n) as usize];
            let (a, shared) = self.dirty_range_shared(&mut st, abs, Some(src), io.unwrap_or(0));
            added += a;
            match shared.filter(|_| log) {
                Some(d) => {
                    if let Some((s, e)) = copied.take() {
                        records.push(record(
                            offset + s,
                            Arc::new(data[s as usize..e as usize].to_vec()),
                        ));
                    }
                    records.push(record(abs, d));
                }
                None => copied = Some((copied.map_or(pos, |c| c.0), pos + n)),
            }
            pos += n;
        }
        p.dirty_bytes.fetch_add(added, Ordering::SeqCst);
        if log {
            if let Some((s, e)) = copied {
                records.push(record(
                    offset + s,
                    Arc::new(data[s as usize..e as usize].to_vec()),
                ));
            }
            let mut l = p.log.lock();
            l.records.extend(records);
            // Counted in full even when shared: a later overwrite of the block un-shares it.
            l.bytes += len;
            p.dirty_bytes.fetch_add(len, Ordering::SeqCst);
        }
        drop(st);
        drop(txg_guard);
        Ok(())
    }

    /// Free a range (multiples of 512): whole blocks become holes (their space is freed
    /// unless a snapshot holds them), partial blocks are zeroed.
    pub fn unmap(&self, offset: u64, len: u64, io_number: Option<u64>) -> Result<()> {
        self.pool.check_usable()?;
        self.unmap_inner(offset, len, io_number, true)
    }

    fn unmap_inner(&self, offset: u64, len: u64, io: Option<u64>, log: bool) -> Result<()> {
        let p = &self.pool;
        let bs = u64::from(self.vol.block_size);
        {
            let st = self.vol.state.lock();
            if !offset.is_multiple_of(IO_ALIGN_BYTES) || !len.is_multiple_of(IO_ALIGN_BYTES) {
                return Err(PoolError::Unaligned {
                    offset,
                    len,
                    align: IO_ALIGN_BYTES,
                });
            }
            if offset.checked_add(len).is_none_or(|e| e > st.size) || st.destroyed {
                return Err(PoolError::OutOfRange {
                    volume: self.vol.name.clone(),
                    offset,
                    len,
                    size: st.size,
                });
            }
        }
        // Whole blocks become one free range per chunk; chunks keep each log record and
        // free range bounded.
        let chunk = MAX_UNMAP_CHUNK_BYTES / bs * bs;
        let mut done = 0u64;
        while done < len {
            let n = chunk.min(len - done);
            p.throttle(bs * 2)?;
            let txg_guard = p.txg.read();
            let txg = *txg_guard;
            let mut st = self.vol.state.lock();
            let start = offset + done;
            let io_n = io.unwrap_or(0);
            let first = start.div_ceil(bs);
            let end = (start + n) / bs;
            let mut added = 0u64;
            if end > first {
                // Partial blocks at either end are zeroed like a write of zeros.
                if start < first * bs {
                    let zeros = vec![0u8; (first * bs - start) as usize];
                    added += self.dirty_range(&mut st, start, Some(&zeros), io_n);
                }
                if end * bs < start + n {
                    let zeros = vec![0u8; (start + n - end * bs) as usize];
                    added += self.dirty_range(&mut st, end * bs, Some(&zeros), io_n);
                }
                let dropped: Vec<u64> = st.open.range(first..end).map(|(k, _)| *k).collect();
                for k in &dropped {
                    st.open.remove(k);
                }
                p.undirty(dropped.len() as u64 * bs);
                st.open_frees.push(FreeRange {
                    first,
                    end,
                    io: io_n,
                });
                added += FREE_RANGE_CHARGE_BYTES;
            } else {
                // Within one block (or across one boundary without a whole block).
                let mut pos = 0u64;
                while pos < n {
                    let abs = start + pos;
                    let m = (bs - abs % bs).min(n - pos);
                    let zeros = vec![0u8; m as usize];
                    added += self.dirty_range(&mut st, abs, Some(&zeros), io_n);
                    pos += m;
                }
            }
            p.dirty_bytes.fetch_add(added, Ordering::SeqCst);
            if log {
                let mut l = p.log.lock();
                l.records.push(LogRecord {
                    vol_guid: self.vol.guid,
                    txg,
                    offset: start,
                    data: None,
                    unmap_len: n,
                    io_number: io,
                });
            }
            drop(st);
            drop(txg_guard);
            done += n;
        }
        Ok(())
    }

    /// Make every earlier write durable (the whole pool's log is flushed).
    pub fn flush(&self) -> Result<()> {
        self.pool.flush()
    }

    pub(crate) fn write_recv(&self, offset: u64, data: &[u8], io: u64) -> Result<()> {
        self.write_inner(offset, data, Some(io), false)
    }

    pub(crate) fn unmap_recv(&self, offset: u64, len: u64, io: u64) -> Result<()> {
        self.unmap_inner(offset, len, Some(io), false)
    }

    pub(crate) fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Pool>();
    is::<VolumeHandle>();
    let _ = bp::BP_BYTES;
}
