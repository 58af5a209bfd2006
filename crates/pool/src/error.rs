//! Errors of the block-tree layer (volumes, snapshots, txgs, intent log, streams).
//!
//! Never: flatten a store error into a string; it is kept as the `#[source]`.

use crate::store::StoreError;

/// Errors of [`crate::Pool`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No volume of that name.
    #[error("volume '{name}' does not exist")]
    UnknownVolume {
        /// Volume name.
        name: String,
    },
    /// No snapshot of that name on the volume.
    #[error("snapshot '{volume}@{snapshot}' does not exist")]
    UnknownSnapshot {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        snapshot: String,
    },
    /// A volume or snapshot of that name exists already.
    #[error("'{name}' already exists")]
    Exists {
        /// Full name.
        name: String,
    },
    /// Range beyond the end of the volume.
    #[error("range {offset}+{len} is beyond the end of volume '{volume}' ({size} bytes)")]
    OutOfRange {
        /// Volume name.
        volume: String,
        /// Byte offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// Offset or length not a multiple of 512 bytes.
    #[error("offset {offset} or length {len} is not a multiple of {align} bytes")]
    Unaligned {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Required alignment.
        align: u64,
    },
    /// Invalid argument (name, size, block size, option).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The pool is read-only (fill threshold reached, or opened read-only).
    #[error("pool is read-only: {reason}")]
    ReadOnly {
        /// Why.
        reason: String,
    },
    /// The pool has no room for the operation.
    #[error("pool is out of space")]
    NoSpace,
    /// Refused because other objects depend on the target.
    #[error("{0}")]
    Busy(String),
    /// On-disk bytes that fail validation (bad magic, version, checksum or geometry).
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// Which structure.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An unknown on-disk or stream format version.
    #[error("unsupported {what} version {version}: this build reads up to version {supported}; it was written by a newer cstor (upgrade cstor to open it)")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// Version found.
        version: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A block could not be read or written (every copy failed verification, device
    /// error). Reads never return wrong data: they fail with this.
    #[error("I/O error: {0}")]
    Io(#[source] StoreError),
    /// An intent-log block could not be read at open (a device error: the chain goes on
    /// past it, so replaying around it would silently drop flushed writes).
    #[error("intent log block {seq} at vdev {} offset {} cannot be read: {source}; the pool was not opened (import with --discard-log-tail to drop the log from this block on and lose the flushed writes it holds)", dva.vdev, dva.offset)]
    LogUnreadable {
        /// Sequence number of the block in its chain.
        seq: u64,
        /// Its address.
        dva: crate::store::Dva,
        /// The read error (names the device where the store knows it).
        #[source]
        source: StoreError,
    },
    /// [`crate::VolumeHandle::set_epoch`] with an epoch below the stored one (a fenced,
    /// older target).
    #[error("volume '{volume}': epoch {asked} is below the stored epoch {stored}")]
    EpochBelowStored {
        /// Volume name.
        volume: String,
        /// The epoch stored.
        stored: u64,
        /// The epoch asked for.
        asked: u64,
    },
    /// Reading or writing a send stream failed.
    #[error("stream I/O: {0}")]
    StreamIo(#[source] std::io::Error),
    /// The pool was closed, or a previous commit failed (fail-stop until reopen).
    #[error("pool is closed or failed: {0}")]
    Closed(String),
}

impl From<StoreError> for PoolError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSpace { .. } => PoolError::NoSpace,
            other => PoolError::Io(other),
        }
    }
}

/// Result of pool operations.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
