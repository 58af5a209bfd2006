//! Limits of the block-tree layer, one line each on why the value was chosen.
//!
//! Never: scatter a bound elsewhere; every queue, buffer and size of this layer is here.

/// Smallest volume block size: one device sector, so no block is smaller than an I/O.
pub const MIN_BLOCK_BYTES: u32 = 4096;
/// Largest volume block size: as ZFS's default record cap; bigger blocks make 4 KiB
/// random writes rewrite too much.
pub const MAX_BLOCK_BYTES: u32 = 128 * 1024;
/// Default volume block size: 16 KiB keeps random 4 KiB writes at 4x amplification while a
/// raidz group of up to 5 disks still stores a block as whole data columns plus parity.
pub const DEFAULT_BLOCK_BYTES: u32 = 16 * 1024;
/// Largest volume: 64 TiB, the promise; fixes the tree height per block size.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// Volume offsets and lengths must be multiples of a SCSI logical block.
pub const IO_ALIGN_BYTES: u64 = 512;
/// Logical size of an indirect block: 256 block pointers, so 4 levels cover 64 TiB of
/// 16 KiB blocks and a sparse indirect compresses to almost nothing.
pub const INDIRECT_BYTES: u32 = 16 * 1024;
/// Largest single read or write call: bounds the memory one request pins.
pub const MAX_IO_BYTES: u64 = 64 << 20;
/// Longest volume or snapshot name: fits a Kubernetes PV name plus a suffix.
pub const MAX_NAME_BYTES: usize = 255;
/// Most volumes in one pool: 10x the 1,000 the issue asks for, and the directory stays a
/// few MiB.
pub const MAX_VOLUMES: usize = 10_000;
/// Most snapshots per pool.
pub const MAX_SNAPSHOTS: usize = 50_000;
/// Largest logical chunk of the serialized object directory.
pub const DIR_CHUNK_BYTES: usize = 128 * 1024;
/// Most directory chunks (the chunk index is one block of pointers): 256 MiB directory.
pub const MAX_DIR_CHUNKS: usize = (MAX_BLOCK_BYTES as usize) / crate::bp::BP_BYTES;
/// Default cache of decompressed blocks: enough for the top indirect levels of many
/// volumes and a working set, small enough for a pod.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;
/// Default bound on dirty (not yet committed) data: writers wait above it, so memory stays
/// bounded whatever the write rate.
pub const DEFAULT_DIRTY_MAX_BYTES: u64 = 64 << 20;
/// Multiple of the dirty bound at which writers of every volume wait, also those within
/// their share of it (see `throttle_vol`): above what volumes within their shares can
/// reach together with one over its share, so they never wait on another's commit.
pub const DIRTY_HARD_FACTOR: u64 = 4;
/// Default time between background txg commits: bounds the work a crash loses to the log
/// and how long freed space waits.
pub const DEFAULT_TXG_INTERVAL_MS: u64 = 5_000;
/// Largest intent-log block: one flush of many writes takes few blocks, and a torn block
/// loses at most this much unacknowledged data.
pub const MAX_LOG_BLOCK_BYTES: u32 = 128 * 1024;
/// Most log blocks in one chain: above this a txg commit is forced, so replay is bounded.
pub const MAX_LOG_CHAIN_BLOCKS: u64 = 4096;
/// Default fill threshold above which the pool turns read-only (as cStor's
/// roThresholdLimit).
pub const DEFAULT_RO_THRESHOLD_PCT: u8 = 85;
/// Share of the pool (per mille) kept back for destroy and UNMAP on a full pool: they
/// allocate metadata to free data.
pub const RESERVED_PER_MILLE: u64 = 16;
/// Longest property key/value stored with a volume.
pub const MAX_PROPERTY_BYTES: usize = 1024;
/// Most properties per volume.
pub const MAX_PROPERTIES: usize = 64;
/// Largest send-stream record payload: one block.
pub const MAX_STREAM_RECORD_BYTES: u32 = MAX_BLOCK_BYTES;
/// Largest UNMAP range handled as one free range (and one log record): big enough that
/// discarding a whole 64 TiB volume is a few thousand ranges, small enough per commit.
pub const MAX_UNMAP_CHUNK_BYTES: u64 = 16 << 30;
/// A directory segment ends after a volume whose guid is a multiple of this (about 64
/// volumes per segment), so segment boundaries do not move when other volumes change and
/// a commit rewrites only the segments that did.
pub const DIR_SEGMENT_GUID_MOD: u64 = 64;
/// A directory segment also ends once this large (a chunk is at most 128 KiB).
pub const DIR_SEGMENT_BYTES: usize = 96 * 1024;
/// Longest time a live-block scan (scrub, resilver) holds the commit lock before letting a
/// commit run: writers never wait on a scrub for longer.
pub const SCAN_SLICE: std::time::Duration = std::time::Duration::from_millis(50);
/// Dirty-data charge of one UNMAP free range (its memory and commit work), so a storm of
/// small UNMAPs still triggers commits.
pub const FREE_RANGE_CHARGE_BYTES: u64 = 4096;
/// Block-write runs a commit keeps in flight: enough to keep a few devices' queues busy
/// while the commit thread compresses and checksums the next blocks; bounds the memory
/// pinned (at most this many runs of up to [`COMMIT_RUN_BYTES`]).
pub const COMMIT_WRITES_IN_FLIGHT: usize = 32;
/// Largest run of blocks a commit starts as one batch (on one group): 1 MiB, the run the
/// store merges neighbours into one vectored device write; the runs in flight pin at most
/// [`COMMIT_WRITES_IN_FLIGHT`] times this (most of it shared with the dirty data).
pub const COMMIT_RUN_BYTES: u64 = 1 << 20;
/// Blocks from which a volume read counts as streaming and leaves the data blocks it read
/// out of the block cache (see `blocks_contents`): 128 KiB of 16 KiB blocks; smaller
/// reads are the random ones the cache is for.
pub const STREAM_READ_BLOCKS: usize = 8;
/// Old blocks under partial writes a commit reads in one batch (a random 4 KiB write into
/// a bigger block needs the old block): neighbours merge into one request and the rest are
/// all in flight at once; the batch bounds the requests queued before the first wait.
pub const COMMIT_PREFETCH_BATCH: usize = 256;
/// io numbers a volume reserves durably at a time ([`crate::VolumeHandle::next_io`]): one
/// commit per million modifying commands; a restart skips at most this many numbers.
pub const IO_RESERVE_CHUNK: u64 = 1 << 20;
/// Rounds [`crate::VolumeHandle::next_io`] waits for a reservation to become durable
/// before it gives up (each round runs a commit).
pub const IO_RESERVE_ROUNDS: u32 = 4;
/// Log records are split across log blocks only at volume offsets that are multiples of
/// this: the unit a power cut never tears (as a 4 KiB-sector disk).
pub const LOG_SPLIT_BYTES: u64 = 4096;
/// Blocks a block stream ([`crate::Pool::stream_blocks`]) lists per batch: each batch
/// walks under its own root hold, so a long stream never keeps freed space for long.
pub const STREAM_BATCH_BLOCKS: usize = 256;
/// Data bytes a block stream reads per batch (bounds its memory).
pub const STREAM_BATCH_BYTES: u64 = 8 << 20;
/// Rate-limit charge of a hole entry in a block stream (its frame's cost on the wire).
pub const STREAM_HOLE_CHARGE_BYTES: u64 = 64;
