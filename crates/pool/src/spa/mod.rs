//! The storage pool allocator (spa): devices, raid groups (stripe, mirror, raidz,
//! raidz2), labels, the uberblock ring, allocation and its persistence, device health.
//!
//! Owns: every byte on the pool's devices outside the blocks it stores for the block-tree
//! layer, which it treats as opaque. Layout: docs/format/pool-label.md.
//! Invariants: see [`crate::store`]; in short, copy-on-write blocks at fresh allocations,
//! frees reusable only after their txg is durable, reads verified by the caller's checksum,
//! every device I/O bounded by a timeout, failed writes/flushes latch a device faulted.
//! Never: interprets block contents; blocks a caller beyond the I/O timeout per device
//! request; knows of volumes, iSCSI or replication.

pub mod alloc;
pub mod device;
pub mod error;
pub mod format;
pub mod leaf;
pub mod limits;
pub mod pool;
pub mod raidz;
pub mod testdev;
pub mod vdev;

pub use device::{Device, FileDevice};
pub use error::SpaError;
pub use pool::{
    open_paths, DeviceStatus, GroupKind, GroupSpec, GroupStatus, PoolStatus, Spa, SpaOptions,
};
pub use vdev::Health;
