//! The seam between the block-tree layer (volumes, snapshots, txgs) and the storage pool
//! allocator (devices, raid groups, allocation, uberblocks).
//!
//! Owns: nothing; it is the contract. The block-tree layer decides *what* to write and
//! keeps every block's checksum in the parent's block pointer; the allocator decides *where*
//! and with what redundancy, and never interprets block contents.
//!
//! Invariants the implementations keep:
//! - A block is written once at a freshly allocated [`Dva`] and never overwritten in place
//!   (copy-on-write), so a raidz stripe never has a write hole.
//! - Space freed in txg `T` is not handed out again before txg `T` is durable (its
//!   uberblock written and flushed), so a crash always falls back to an intact tree.
//! - `read` never returns bytes that `verify` rejected; a copy or column that failed
//!   verification is rewritten from a good reconstruction and counted as a checksum error.
//! - `sync` makes every earlier `write` durable before the uberblock that points to it.

use std::fmt;

/// Size of a device sector; every allocation and device I/O is a multiple of it.
pub const SECTOR_SIZE: u32 = 4096;

/// Data virtual address: where one block lives in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dva {
    /// Index of the top-level vdev (a raid group, or one disk of a stripe) in the pool.
    pub vdev: u32,
    /// Byte offset in that vdev's allocatable space; a multiple of [`SECTOR_SIZE`].
    pub offset: u64,
    /// Bytes allocated there, parity and padding included (what `free` returns).
    pub asize: u64,
}

/// What a block is for: the allocator may place classes differently (the log class goes
/// to the write-cache group when the pool has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocClass {
    /// Volume data blocks.
    Data,
    /// Indirect blocks, directories, space maps.
    Metadata,
    /// Intent-log blocks.
    Log,
}

/// Pool space as a user sees it: usable bytes after redundancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Usable capacity in bytes.
    pub size_bytes: u64,
    /// Bytes allocated (usable-space terms).
    pub allocated_bytes: u64,
    /// Bytes free (usable-space terms).
    pub free_bytes: u64,
}

/// Errors of the block store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No raid group has room for the block.
    #[error("pool is out of space (wanted {wanted_bytes} bytes)")]
    NoSpace {
        /// Bytes that were asked for.
        wanted_bytes: u64,
    },
    /// Every copy or reconstruction of the block failed verification or could not be read.
    #[error("unrecoverable block at vdev {} offset {}: {reason}", dva.vdev, dva.offset)]
    Unrecoverable {
        /// The block.
        dva: Dva,
        /// Why (the device errors met on the way).
        reason: String,
    },
    /// Every copy (or every reconstruction the redundancy allows) was read and none
    /// passed `verify`: what is there is not the block asked for (never written, torn,
    /// overwritten, or rotten on every copy). Unlike [`StoreError::Unrecoverable`], no
    /// device error stands in the way, so a probe of a block that may never have been
    /// written (the intent log's next block) may take this as "not there".
    #[error("no copy of the block at vdev {} offset {} passes verification", dva.vdev, dva.offset)]
    NoValidCopy {
        /// The block.
        dva: Dva,
    },
    /// A write could not be made with the redundancy the pool needs.
    #[error("write failed at vdev {} offset {}: {reason}", dva.vdev, dva.offset)]
    WriteFailed {
        /// The block.
        dva: Dva,
        /// Why.
        reason: String,
    },
    /// The pool has lost more devices than its redundancy allows.
    #[error("pool is FAULTED: {0}")]
    Faulted(String),
    /// An address outside any vdev (a corrupt block pointer, never a valid allocation).
    #[error("invalid block address vdev {} offset {} size {}", dva.vdev, dva.offset, dva.asize)]
    InvalidAddress {
        /// The address.
        dva: Dva,
    },
    /// Device I/O error with context.
    #[error("{context}: {source}")]
    Io {
        /// Device and operation.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A checksum check supplied by the caller, who keeps the expected checksum in the
/// parent's block pointer.
pub type Verify<'a> = &'a (dyn Fn(&[u8]) -> bool + Sync);

/// The wait for a write started by [`BlockStore::write_start`].
pub type WriteWait = Box<dyn FnOnce() -> Result<(), StoreError> + Send>;

/// Blocking block storage with redundancy, as the block-tree layer sees the pool.
pub trait BlockStore: Send + Sync + fmt::Debug {
    /// Usable space now.
    fn space(&self) -> SpaceStats;

    /// Allocated size for a block of `psize_bytes` (a multiple of [`SECTOR_SIZE`]) on a
    /// vdev: parity and padding included. Used for accounting before allocation.
    fn asize(&self, vdev: u32, psize_bytes: u32) -> u64;

    /// Reserve room for a block of `psize_bytes` (a multiple of [`SECTOR_SIZE`]) in open
    /// txg `txg`.
    fn alloc(&self, psize_bytes: u32, class: AllocClass, txg: u64) -> Result<Dva, StoreError>;

    /// Return a block's space in open txg `txg`; reusable once `txg` is durable.
    fn free(&self, dva: Dva, txg: u64);

    /// Write a block (with its redundancy) at a fresh allocation. `data.len()` is the
    /// block's psize, a multiple of [`SECTOR_SIZE`].
    fn write(&self, dva: Dva, data: &[u8]) -> Result<(), StoreError>;

    /// Start writing a block as [`BlockStore::write`] does, sharing its bytes (never
    /// changed while shared), and return the wait for its result: a commit keeps several
    /// writes in flight. The write is complete (for `flush` and `sync`) only once the wait
    /// returned. The default writes synchronously.
    fn write_start(
        &self,
        dva: Dva,
        data: std::sync::Arc<Vec<u8>>,
    ) -> Result<WriteWait, StoreError> {
        self.write(dva, &data)?;
        Ok(Box::new(|| Ok(())))
    }

    /// Start writing several blocks as [`BlockStore::write_start`] does, with one wait
    /// for all: a store may merge blocks that lie next to each other into one device
    /// request. The default starts them one by one.
    fn write_start_many(
        &self,
        blocks: Vec<(Dva, std::sync::Arc<Vec<u8>>)>,
    ) -> Result<WriteWait, StoreError> {
        let mut waits = Vec::with_capacity(blocks.len());
        for (dva, data) in blocks {
            match self.write_start(dva, data) {
                Ok(w) => waits.push(w),
                Err(e) => {
                    // No write of the batch outlives the error.
                    for w in waits {
                        let _ = w();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Box::new(move || {
            let mut first = Ok(());
            for w in waits {
                if let (Err(e), Ok(())) = (w(), &first) {
                    first = Err(e);
                }
            }
            first
        }))
    }

    /// The stored bytes of several blocks, read the cheapest way the store knows (one
    /// copy, neighbouring blocks in one request, all requests in flight at once),
    /// *unverified* and without healing; `None` where that way failed. The caller checks
    /// every block against its pointer and reads the ones that fail, or are `None`,
    /// through [`BlockStore::read`]. The default reads nothing this way.
    fn read_unverified(&self, reqs: &[(Dva, u32)]) -> Vec<Option<Vec<u8>>> {
        vec![None; reqs.len()]
    }

    /// [`BlockStore::read_unverified`] limited to what needs no device I/O (bytes in the
    /// page cache): never waits for a device, so an async thread may call it. `None`
    /// where a device would have to be read. The default reads nothing this way.
    fn read_cached(&self, reqs: &[(Dva, u32)]) -> Vec<Option<Vec<u8>>> {
        vec![None; reqs.len()]
    }

    /// Read a block of `psize_bytes`, trying every copy and reconstruction until `verify`
    /// accepts; heals the copies that did not.
    fn read(&self, dva: Dva, psize_bytes: u32, verify: Verify<'_>) -> Result<Vec<u8>, StoreError>;

    /// Make every completed `write` durable (the intent log's flush).
    fn flush(&self) -> Result<(), StoreError>;

    /// Commit txg `txg`: make all writes durable, persist allocator state, then write the
    /// uberblock that points at `root` (at most [`MAX_ROOT_BYTES`]) and make it durable.
    fn sync(&self, txg: u64, root: &[u8]) -> Result<(), StoreError>;

    /// The txg and root of the newest valid uberblock found at open (None for a new pool).
    fn last_root(&self) -> Option<(u64, Vec<u8>)>;

    /// Mark a block as allocated in open txg `txg` although the allocation that made it
    /// may never have been made durable: the intent log's replay claims the log blocks it
    /// finds after a crash so that no allocation overwrites them before the replayed data
    /// is committed; they are freed again in that txg. An error other than the default's
    /// means "allocated already" (a durable allocation) and the caller frees it too.
    /// The default returns an `Io` error of kind `Unsupported`: the caller then never
    /// frees the blocks (a possible leak, never a block in use twice).
    fn claim(&self, dva: Dva, txg: u64) -> Result<(), StoreError> {
        let _ = txg;
        Err(StoreError::Io {
            context: format!("claim of vdev {} offset {}", dva.vdev, dva.offset),
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        })
    }
}

/// Largest root the uberblock carries (a few block pointers).
pub const MAX_ROOT_BYTES: usize = 1024;
