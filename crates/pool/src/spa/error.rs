//! Typed errors of the storage pool allocator, with device and offset context, and their
//! single mapping into [`crate::store::StoreError`].

use std::io;

use crate::store::{Dva, StoreError};

/// Errors of the storage pool allocator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpaError {
    /// An OS error on one device.
    #[error("{path}: {op} at offset {offset}: {source}")]
    DeviceIo {
        /// Device path.
        path: String,
        /// Operation (read, write, flush, open).
        op: &'static str,
        /// Byte offset on the device.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A device did not answer within the I/O timeout; it is now faulted.
    #[error("{path}: {op} at offset {offset} timed out after {timeout_ms} ms")]
    DeviceTimeout {
        /// Device path.
        path: String,
        /// Operation.
        op: &'static str,
        /// Byte offset.
        offset: u64,
        /// The timeout.
        timeout_ms: u64,
    },
    /// A device is faulted (an earlier write or flush failed, or it hung) and takes no I/O
    /// until the pool is imported again.
    #[error("{path}: device is faulted: {reason}")]
    DeviceFaulted {
        /// Device path.
        path: String,
        /// Why it was faulted.
        reason: String,
    },
    /// Another process (or this one) has the device open in a pool.
    #[error("{path}: device is in use by another pool process")]
    DeviceBusy {
        /// Device path.
        path: String,
    },
    /// The device holds something that create would destroy.
    #[error("{path}: device holds {what}; use force to overwrite it")]
    DeviceHasData {
        /// Device path.
        path: String,
        /// What was found (a pool label, an ext4 filesystem, a GPT partition table ...).
        what: String,
    },
    /// The device is too small for a pool.
    #[error("{path}: device is {size_bytes} bytes, smaller than the minimum {min_bytes}")]
    DeviceTooSmall {
        /// Device path.
        path: String,
        /// Its size.
        size_bytes: u64,
        /// The minimum.
        min_bytes: u64,
    },
    /// The requested layout is not valid.
    #[error("invalid pool layout: {0}")]
    InvalidLayout(String),
    /// On-disk bytes failed validation.
    #[error("{path}: corrupt {what} at offset {offset}: {reason}")]
    Corrupt {
        /// Device path (or "pool" for blocks read through redundancy).
        path: String,
        /// What structure.
        what: &'static str,
        /// Byte offset.
        offset: u64,
        /// Which check failed.
        reason: String,
    },
    /// An unknown on-disk format version.
    #[error("{path}: {what} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        /// Device path.
        path: String,
        /// What structure.
        what: &'static str,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// No device given carries a label of the named pool.
    #[error("no pool named {name} found on the given devices{detail}")]
    PoolNotFound {
        /// Pool name.
        name: String,
        /// What was found instead.
        detail: String,
    },
    /// A device carries a label of another pool.
    #[error("{path}: device belongs to pool {other_pool} (guid {other_guid:#x}), not {name}")]
    ForeignDevice {
        /// Device path.
        path: String,
        /// Pool being imported.
        name: String,
        /// The pool it belongs to.
        other_pool: String,
        /// Its guid.
        other_guid: u64,
    },
    /// The pool cannot serve I/O: too many devices lost.
    #[error("pool {name} is FAULTED: {reason}")]
    PoolFaulted {
        /// Pool name.
        name: String,
        /// Which groups and devices.
        reason: String,
    },
    /// A block could not be read from any copy or reconstruction.
    #[error("unrecoverable block at vdev {} offset {}: {reason}", dva.vdev, dva.offset)]
    Unrecoverable {
        /// The block.
        dva: Dva,
        /// Device errors met.
        reason: String,
    },
    /// Every copy or reconstruction was read and none verified (see
    /// [`crate::store::StoreError::NoValidCopy`]).
    #[error("no copy of the block at vdev {} offset {} passes verification", dva.vdev, dva.offset)]
    NoValidCopy {
        /// The block.
        dva: Dva,
    },
    /// A block could not be written with the redundancy it needs.
    #[error("write failed at vdev {} offset {}: {reason}", dva.vdev, dva.offset)]
    WriteFailed {
        /// The block.
        dva: Dva,
        /// Device errors met.
        reason: String,
    },
    /// No vdev has room.
    #[error("pool is out of space (wanted {wanted_bytes} bytes)")]
    NoSpace {
        /// Bytes asked for.
        wanted_bytes: u64,
    },
    /// An address outside any vdev.
    #[error("invalid block address vdev {} offset {} size {}", dva.vdev, dva.offset, dva.asize)]
    InvalidAddress {
        /// The address.
        dva: Dva,
    },
    /// A caller broke the txg protocol (e.g. sync of a txg not above the last).
    #[error("txg {txg} is not after the last synced txg {last}")]
    TxgOrder {
        /// Txg asked for.
        txg: u64,
        /// Last synced txg.
        last: u64,
    },
    /// Root bytes larger than the uberblock can carry.
    #[error("root of {len} bytes exceeds the uberblock maximum {max}")]
    RootTooLarge {
        /// Given length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A named device is not part of the pool.
    #[error("device {0} is not part of the pool")]
    NoSuchDevice(String),
    /// The operation does not fit the pool's current state.
    #[error("{0}")]
    InvalidState(String),
}

impl SpaError {
    pub(crate) fn io(path: &str, op: &'static str, offset: u64, source: io::Error) -> Self {
        SpaError::DeviceIo {
            path: path.to_owned(),
            op,
            offset,
            source,
        }
    }
}

impl From<SpaError> for StoreError {
    fn from(e: SpaError) -> Self {
        match e {
            SpaError::NoSpace { wanted_bytes } => StoreError::NoSpace { wanted_bytes },
            SpaError::Unrecoverable { dva, reason } => StoreError::Unrecoverable { dva, reason },
            SpaError::NoValidCopy { dva } => StoreError::NoValidCopy { dva },
            SpaError::WriteFailed { dva, reason } => StoreError::WriteFailed { dva, reason },
            SpaError::InvalidAddress { dva } => StoreError::InvalidAddress { dva },
            SpaError::PoolFaulted { name, reason } => {
                StoreError::Faulted(format!("pool {name}: {reason}"))
            }
            SpaError::DeviceIo {
                path,
                op,
                offset,
                source,
            } => StoreError::Io {
                context: format!("{path}: {op} at offset {offset}"),
                source,
            },
            other => StoreError::Io {
                context: other.to_string(),
                source: io::Error::other("storage pool allocator error"),
            },
        }
    }
}
