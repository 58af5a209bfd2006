//! The block-backend seam: what the iSCSI frontend needs from whatever stores a LUN's
//! bytes (a file, a local pool volume, a replicated volume).
//!
//! Owns: the trait and its typed errors. The SCSI layer maps these errors to sense data in
//! exactly one place (sense.rs).
//! Invariants an implementation must keep: `read`/`write`/`unmap` ranges are checked by the
//! caller against `size_bytes()` and are multiples of 512 bytes; a completed `write` with
//! `fua` and a completed `flush` are on stable storage; futures are `Send` and may be
//! dropped (the target bounds every call with a timeout), in which case the operation may
//! still complete later, like a cancelled `tokio::fs` write.
//! Never: block the async runtime inside a returned future (blocking engines hop to a
//! blocking thread, as the file backend does).

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

/// The future every backend method returns: boxed so the trait stays object safe
/// (`Arc<dyn BlockBackend>`) for file, pool and replicated backends alike.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// Identity of the stored volume, stable across restarts; INQUIRY VPD 0x80 and 0x83 are
/// derived from it so initiators (multipath, fencing) recognise the same LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendIdentity {
    /// 128-bit unique id (a volume guid, or a hash of a file's canonical path).
    pub id: [u8; 16],
    /// Unit serial number for VPD 0x80: printable ASCII, at most 32 characters.
    pub serial: String,
}

/// Allocation state of a range, for GET LBA STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Backed by storage.
    Mapped,
    /// Not backed (reads return zeros); unmapped or never written.
    Deallocated,
}

/// One extent of `lba_status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// State of the whole extent.
    pub state: Provisioning,
}

/// Why a backend call failed; each maps to one SCSI status and sense in sense.rs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Range beyond the end (the size shrank under the command).
    #[error("range {offset}+{len} beyond the end at {size_bytes}")]
    OutOfRange {
        /// Start, bytes.
        offset: u64,
        /// Length, bytes.
        len: u64,
        /// Current size, bytes.
        size_bytes: u64,
    },
    /// The data cannot be read or written (device error, checksum failed on every copy).
    #[error("medium error at byte {offset}")]
    Medium {
        /// Where it failed, bytes.
        offset: u64,
        /// Underlying cause.
        #[source]
        source: std::io::Error,
    },
    /// The volume is read-only (pool above its fill threshold, or opened read-only).
    #[error("volume is read-only")]
    ReadOnly,
    /// No space to allocate the write (thin provisioning exhausted).
    #[error("no space left for the write")]
    NoSpace,
    /// Temporarily unable to serve (a replica membership change is being recorded);
    /// answered with SCSI BUSY so the initiator retries.
    #[error("volume busy")]
    Busy,
    /// The call did not complete within the target's bound.
    #[error("backend call timed out")]
    Timeout,
    /// The operation is not supported by this backend.
    #[error("operation not supported by the backend")]
    Unsupported,
    /// Any other failure of the backend.
    #[error("backend failure: {0}")]
    Other(#[source] std::io::Error),
}

/// A LUN's storage. Implementations: `FileBackend` here; a pool volume and a replicated
/// volume in the layers above, through adapters.
pub trait BlockBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Stable identity for INQUIRY.
    fn identity(&self) -> &BackendIdentity;
    /// Current size in bytes; may change online (the target raises UNIT ATTENTION).
    fn size_bytes(&self) -> u64;
    /// Whether writes are refused (DATA PROTECT).
    fn read_only(&self) -> bool;
    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> BackendFuture<'_, Bytes>;
    /// Writes `data` at `offset`; with `fua` the data is stable when the future completes.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BackendFuture<'_, ()>;
    /// Makes every completed write stable.
    fn flush(&self) -> BackendFuture<'_, ()>;
    /// Frees the range; later reads return zeros.
    fn unmap(&self, offset: u64, len: u64) -> BackendFuture<'_, ()>;
    /// Writes zeros over the range, leaving it mapped (WRITE SAME of a zero block without
    /// UNMAP). The default writes zero buffers; backends with a cheaper way override it.
    fn write_zeros(&self, offset: u64, len: u64) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let chunk = 1u64 << 20;
            let zeros = Bytes::from(vec![0u8; chunk as usize]);
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(chunk);
                self.write(offset + done, zeros.slice(..n as usize), false)
                    .await?;
                done += n;
            }
            Ok(())
        })
    }
    /// Allocation state from `offset` on, at most `len` bytes covered; `None` when the
    /// backend cannot tell (everything is then reported mapped).
    fn lba_status(&self, offset: u64, len: u64) -> BackendFuture<'_, Option<Vec<Extent>>> {
        let _ = (offset, len);
        Box::pin(async { Ok(None) })
    }
}
