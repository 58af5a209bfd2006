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
//!
//! Files: `api.rs` (the public [`Pool`] calls), `volume.rs` (volume I/O into the open
//! txg), `blocks.rs` (block I/O, lookups, walks), `commit.rs` (txg commit), `directory.rs`
//! (object directory and directory operations), `intent_log.rs` (flush, chain trim,
//! background commits, throttle), `replay.rs` (log replay at open), `scan.rs` (scrub
//! traversal). The types and their locks are declared here.

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

mod api;
mod blocks;
mod commit;
mod directory;
mod intent_log;
mod records;
mod replay;
mod scan;
mod stream;
mod volume;
mod walk;

pub use records::VolumeRecords;
pub use stream::{BlockStream, StreamBlock};
pub use walk::BlockIo;

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
    /// At open, when an intent-log block cannot be read (a device error, not the chain's
    /// end): drop the log from that block on and open anyway, reporting what was dropped
    /// ([`Pool::log_tail_dropped`]), instead of refusing ([`PoolError::LogUnreadable`]).
    /// Like `zpool import -m`: flushed writes in the dropped tail are lost.
    pub discard_log_tail: bool,
    /// This boot's id, compared at open with the one the last open recorded (for
    /// [`VolumeRecords::lost_tail`]). None: read /proc/sys/kernel/random/boot_id (tests
    /// set it to simulate a reboot).
    pub boot_id: Option<String>,
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
            discard_log_tail: false,
            boot_id: None,
        }
    }
}

/// The intent-log tail an open dropped ([`PoolOptions::discard_log_tail`]): the first
/// block that could not be read; it and every later block of the chain were not replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedLogTail {
    /// Sequence number of the unreadable block in its chain.
    pub seq: u64,
    /// Its address.
    pub dva: Dva,
    /// Log blocks replayed before it.
    pub blocks_replayed: u64,
    /// The read error.
    pub reason: String,
}

impl std::fmt::Display for DroppedLogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dropped the intent log from block {} (vdev {} offset {}) on, after replaying {} blocks: {}",
            self.seq, self.dva.vdev, self.dva.offset, self.blocks_replayed, self.reason
        )
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
    /// Durable checkpoint ([`VolumeHandle::set_checkpoint`]).
    pub checkpoint: u64,
    /// Highest epoch stored ([`VolumeHandle::set_epoch`]).
    pub epoch: u64,
    /// [`VolumeHandle::flush_point`] now.
    pub flush_point: u64,
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
    /// The io cut it was taken at ([`Pool::snapshot_at_io`]), if any.
    pub io_cut: Option<u64>,
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
    /// A checkpoint set in the open txg, then in the syncing one: committed in the txg it
    /// was set in, with every write applied before it.
    open_checkpoint: Option<u64>,
    syncing_checkpoint: Option<u64>,
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
    /// The io number sequence (a leaf lock: nothing is taken while it is held).
    pub(crate) io: Mutex<IoSeq>,
    /// [`WriteMode`] as a number (in memory only; a replica sets it per session).
    pub(crate) write_mode: std::sync::atomic::AtomicU8,
    /// Serializes [`VolumeHandle::set_epoch`] and [`VolumeHandle::set_cursor`] calls, held
    /// across their log flush (taken before every other lock; nothing else takes it).
    pub(crate) record_gate: Mutex<()>,
    /// The records' acknowledged values (a leaf lock).
    pub(crate) records: Mutex<records::Acked>,
    /// Writes not yet stable, for [`VolumeHandle::flush_point`] (a leaf lock).
    pub(crate) stab: Mutex<records::Stability>,
}

/// When a volume's write or UNMAP returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// In memory (the open txg); durable after the next flush or commit.
    #[default]
    Buffered,
    /// After its intent-log record reached the device through a completed write call
    /// (not flushed): a process crash after the return loses nothing, a power cut may.
    /// Concurrent writers share log writes (group commit). A replica's ack means this.
    CrashSafe,
    /// After its log record is flushed (durable): for a volume left with one copy.
    /// Concurrent writers share the log write and flush (group commit).
    WriteThrough,
}

/// A volume's io number sequence: numbers `next..=durable` may be handed out now; a
/// reservation up to `requested` waits for the next commit (see
/// [`VolumeHandle::next_io`]).
#[derive(Debug, Default)]
pub(crate) struct IoSeq {
    /// Highest io any write or UNMAP of the volume carried so far.
    pub(crate) seen_max: u64,
    pub(crate) next: u64,
    pub(crate) durable: u64,
    pub(crate) requested: u64,
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
            io: Mutex::new(IoSeq {
                seen_max: rec.root.io_max,
                // Above every number a durable reservation or the tree knows; replayed
                // writes raise it further.
                next: rec.io_reserved.max(rec.root.io_max) + 1,
                durable: rec.io_reserved,
                requested: rec.io_reserved,
            }),
            write_mode: std::sync::atomic::AtomicU8::new(0),
            record_gate: Mutex::new(()),
            records: Mutex::new(records::Acked::of(&rec)),
            stab: Mutex::new(records::Stability::new(rec.root.io_max)),
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
    /// Pushes of records so far: a write's log sequence (see [`records::Stability`]).
    pushed: u64,
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
    /// Log blocks written (crash-safe writes) but not yet flushed: the next flush must
    /// flush the device even with no record pending.
    unflushed: bool,
    /// While a replay runs: the head (and replay floor) of the chain being replayed.
    /// Commits during the replay record it unchanged and trim nothing, so until the last
    /// record is applied a power cut replays the whole chain again.
    pinned: Option<LogHead>,
    /// Pushes (see [`LogPending::pushed`]) whose records are all in written log blocks.
    written_seq: u64,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Directory blocks of the last commit (chunks, then the index).
    dir_blocks: Vec<Bp>,
    /// Chunks of each directory segment of the last commit, by xxh3-128 of the
    /// segment's bytes: an unchanged segment keeps its blocks.
    dir_segments: DirSegments,
    last_txg: u64,
    /// The io reservation each volume's record carries in the commit being written:
    /// durable (usable by `next_io`) once its root is.
    io_written: Vec<(Arc<Volume>, u64)>,
    /// The checkpoint each volume's record carries in the commit being written: durable
    /// (reported by [`VolumeHandle::records`]) once its root is.
    checkpoint_written: Vec<(Arc<Volume>, u64)>,
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
    /// What the open's replay dropped under [`PoolOptions::discard_log_tail`].
    log_tail_dropped: Mutex<Option<DroppedLogTail>>,
    /// Readers walking a root they do not lock, and the frees held back for them.
    holds: Mutex<Holds>,
    /// Txg of the last durable commit (what a new [`RootHold`] starts after).
    last_committed: AtomicU64,
    /// An io-cut snapshot being taken: (volume guid, cut, whether no write at or above
    /// the cut was in the volume when its commit closed the open txg).
    cut: Mutex<Option<(u64, u64, Option<bool>)>>,
    /// Pushes (see [`LogPending::pushed`]) whose records are in flushed log blocks.
    durable_seq: AtomicU64,
    /// The shutdown and boot the open found (see [`VolumeRecords`]).
    boot: Mutex<records::Boot>,
    /// Set by [`Pool::close`]: its commit records a clean shutdown.
    clean_close: AtomicBool,
    /// While a replay runs: the log blocks it (and the interrupted replays before it)
    /// claimed, recorded in the directory by the commits it runs.
    log_claims: Mutex<Vec<Dva>>,
}

/// Root holds (see [`RootHold`]) and the frees they hold back.
#[derive(Debug, Default)]
struct Holds {
    /// Active holds by the first txg whose frees they hold back, with their count.
    active: BTreeMap<u64, usize>,
    /// Blocks freed in txg `.0`, not yet handed to the store.
    deferred: Vec<(u64, Dva)>,
}

/// A reader's hold on every root it can reach: blocks freed by commits from the first
/// one not yet durable when the hold was taken are handed to the store (and so become
/// reusable) only after the hold is dropped. Walks of a snapshot or a head root copied
/// out of its lock (changed ranges, snapshot reads, send) take one *before* they read the
/// root, so they never read a reused block, nor "heal" a live block with their old bytes.
/// A hold never delays a commit or a writer; it only delays the reuse of space.
pub(crate) struct RootHold<'a> {
    pool: &'a PoolInner,
    after_txg: u64,
}

impl std::fmt::Debug for RootHold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootHold(frees from txg {})", self.after_txg)
    }
}

impl Drop for RootHold<'_> {
    fn drop(&mut self) {
        let mut h = self.pool.holds.lock();
        if let Some(n) = h.active.get_mut(&self.after_txg) {
            *n -= 1;
            if *n == 0 {
                h.active.remove(&self.after_txg);
            }
        }
    }
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

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Pool>();
    is::<VolumeHandle>();
    let _ = bp::BP_BYTES;
}
