//! Every bound the storage pool allocator keeps, with why each value.

use std::time::Duration;

use crate::store::SECTOR_SIZE;

/// Sector size as u64, for offset arithmetic.
pub const SECTOR_BYTES: u64 = SECTOR_SIZE as u64;

/// Default bound on one device I/O: a device that has not answered by then is treated as
/// hung and faulted so that redundancy serves; long enough for a busy spinning disk.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Worker threads per device: enough to keep a disk's queue busy while a mirror or raidz
/// writes all its columns at once, few enough for 2-core machines.
pub const WORKERS_PER_DEVICE: usize = 4;

/// How long a waiter for a device reply spins before it parks: covers a quick page-cache
/// hit without burning a core on a slow disk. Device threads never spin: an idle one is
/// parked and costs nothing. Why 5 and not 20 us: on 2 cores shared by a target, three
/// replica servers and the initiator, the spinner held the core the device thread needed
/// (Leaf::wait was 5 % of all CPU); a 3-replica volume's 4 KiB random writes at QD16 went
/// from 7.1-7.8k to 8.5k IOPS, and a pool volume's QD16 random writes and reads did no worse.
pub const SPIN_WAIT: Duration = Duration::from_micros(5);

/// Read errors after which a device is faulted: a few bad sectors are repaired from
/// redundancy, a dying device stops slowing every read down.
pub const READ_ERRORS_MAX: u64 = 64;

/// Largest vectored device request a batch of block reads or writes merges pieces into:
/// 1 MiB, as a sequential 1 MiB volume I/O, big enough that the syscall and the hand-off
/// to a device thread are a small share of it.
pub const RUN_BYTES_MAX: u64 = 1 << 20;
/// Most pieces in one vectored request (far below the kernel's IOV_MAX of 1024).
pub const RUN_PIECES_MAX: usize = 256;

/// Requests queued per device before submitters wait: bounds memory held by in-flight
/// buffers (a request holds at most one block, or a run of at most [`RUN_BYTES_MAX`]).
pub const DEVICE_QUEUE_DEPTH: usize = 64;

/// Largest block the pool stores (psize): ZFS's 16 MiB cap, far above the 128 KiB volume
/// block maximum, so space map blocks fit too.
pub const MAX_BLOCK_BYTES: u32 = 16 * 1024 * 1024;

/// Bytes reserved at the start of each device before the data region: two labels.
pub const FRONT_RESERVE_BYTES: u64 = 2 * LABEL_BYTES;

/// Bytes reserved at the end of each device: two labels.
pub const BACK_RESERVE_BYTES: u64 = 2 * LABEL_BYTES;

/// One label: a config area and an uberblock ring (docs/format/pool-label.md).
pub const LABEL_BYTES: u64 = 1024 * 1024;

/// Config area at the start of each label; the JSON config is far smaller even for
/// pools of hundreds of disks.
pub const CONFIG_AREA_BYTES: u64 = 256 * 1024;

/// Uberblock slots per ring: 128 as ZFS, so a damaged recent slot still leaves many older.
pub const UBERBLOCK_SLOTS: u64 = 128;

/// One uberblock slot: a whole sector so that writing one never tears a neighbour.
pub const UBERBLOCK_SLOT_BYTES: u64 = SECTOR_BYTES;

/// Offset of the uberblock ring inside a label.
pub const UBERBLOCK_RING_OFFSET: u64 = LABEL_BYTES - UBERBLOCK_SLOTS * UBERBLOCK_SLOT_BYTES;

/// Smallest usable device: 4 MiB of labels plus 12 MiB of data; small enough for
/// in-memory crash tests, large enough that labels are a minor share.
pub const MIN_DEVICE_BYTES: u64 = 16 * 1024 * 1024;

/// Most top-level vdevs in one pool: bounds the config size and per-txg work.
pub const MAX_VDEVS: usize = 256;

/// Most devices in one raid group (mirror width or raidz columns).
pub const MAX_GROUP_DEVICES: usize = 32;

/// Space map chain blocks before the allocator state is condensed into a new base: bounds
/// import time (each block is one read) while a txg writes only its own changes.
pub const SPACE_MAP_CHAIN_MAX: u32 = 64;

/// Largest space map block written at once.
pub const SPACE_MAP_BLOCK_BYTES: u32 = 1024 * 1024;

/// Space map blocks one condensed base may span: bounds import memory and time (about
/// 2.8 million extents).
pub const SPACE_MAP_BASE_BLOCKS_MAX: u32 = 64;

/// Fraction (1/N) of each vdev kept back from Data/Metadata/Log allocations, so that sync
/// can always write the allocator state on a nearly full pool.
pub const SLOP_SHIFT: u32 = 6;

/// How long opening a device waits for another holder of its lock to let go before
/// reporting it busy: covers a spawned child that still shares our descriptors until it
/// execs, yet a real second opener is refused within a second.
pub const LOCK_WAIT: Duration = Duration::from_millis(750);

/// Poll interval while waiting for a device lock.
pub const LOCK_POLL: Duration = Duration::from_millis(10);

/// Deadline for devices' worker threads to finish when a pool closes.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(UBERBLOCK_RING_OFFSET >= CONFIG_AREA_BYTES);
const _: () = assert!(LABEL_BYTES.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(MIN_DEVICE_BYTES > FRONT_RESERVE_BYTES + BACK_RESERVE_BYTES);
const _: () = assert!(SPACE_MAP_BLOCK_BYTES <= MAX_BLOCK_BYTES);
