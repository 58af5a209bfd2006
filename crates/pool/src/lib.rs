//! cstor-pool: the storage engine a cStor pool instance runs on each node
//! (ARCHITECTURE.md decision 5).
//!
//! Layers, bottom up:
//! - `spa` (storage pool allocator): devices (vdevs), raid groups (stripe, mirror, raidz,
//!   raidz2), labels, allocation, the uberblock ring, device health. It stores opaque blocks
//!   at [`store::Dva`] addresses and knows nothing of volumes.
//! - the block-tree layer: volumes, snapshots, clones, transaction groups (txg), intent log,
//!   compression, checksums in block pointers, io numbers, send/recv, scrub traversal
//!   ([`Pool`], [`VolumeHandle`]).
//!
//! The seam between them is the [`store::BlockStore`] trait.
//!
//! Never: this crate knows nothing of iSCSI, replication or Kubernetes. It is blocking
//! code (threads, pread/pwrite); async callers run it on blocking threads.

pub mod bp;
mod cache;
pub mod dir;
mod engine;
pub mod error;
pub mod limits;
pub mod memstore;
pub mod send;
pub mod spa;
pub mod store;
mod zil;

pub use bp::Compression;
pub use engine::{
    BlockIo, BlockStream, ChangedRange, DroppedLogTail, Pool, PoolOptions, PoolSpace, SnapshotInfo,
    StreamBlock, TraverseStats, VolumeHandle, VolumeInfo, VolumeRecords, WriteMode,
};
pub use error::{PoolError, Result};
pub use send::StreamStats;
