//! The block-backend seam: what the iSCSI frontend needs from whatever stores a LUN's
//! bytes (a file, a local pool volume, a replicated volume).
//!
//! Owns: the trait, the per-command context ([`IoCtx`]) and the typed errors. The SCSI
//! layer maps these errors to sense data in exactly one place (sense.rs).
//!
//! Invariants an implementation must keep:
//! - `read`/`write`/`unmap` ranges are checked by the caller against `size_bytes()` and are
//!   multiples of 512 bytes; a completed `write` with `ctx.fua` and a completed `flush` are
//!   on stable storage.
//! - **Settlement.** The target never drops a returned future: it awaits every call until
//!   the backend settles it, because a command answered with an error must never change
//!   the medium afterwards. A backend settles every call it accepted within
//!   `limits::BACKEND_SETTLE_BOUND` (10 s; the pool faults a hung device inside it).
//!   When `ctx.cancel` is raised (the command was aborted or passed `ctx.deadline`), a call
//!   that has not touched the medium yet should return [`BackendError::NotStarted`]; one
//!   already under way completes normally. `NotStarted` is a promise: nothing of the call
//!   reaches the medium, ever. The target answers it with BUSY (the initiator retries).
//!   A call still unsettled past the bound makes the LU answer NOT READY to new commands
//!   until it settles.
//! - **io numbers.** A backend that orders modifying calls (the pool, a replicated volume)
//!   hands out numbers from `next_io`; the LU calls it in its dispatch order, immediately
//!   before the call it is for, and passes the number in `ctx.io`.
//!
//! - **Holds.** A backend that cannot complete commands for a while (a replica membership
//!   change being recorded, startup recovery) raises its [`Hold`]: the LU then dispatches
//!   no new call to it, queues commands for up to T_hold (`limits::HOLD_TIMEOUT`, 4 s by
//!   default) and answers those still waiting then with BUSY. Calls already issued are the
//!   backend's to settle as usual.
//! - **Events.** A backend raises [`BackendEvent`]s on the channel `events` returns:
//!   `CapacityChanged` becomes a unit attention on every I_T nexus of the LU, `Stopping`
//!   asks every session of the target to log out.
//!
//! Never: block the async runtime inside a returned future (blocking engines hop to a
//! blocking thread, as the file backend does).

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// The future every backend method returns: boxed so the trait stays object safe
/// (`Arc<dyn BlockBackend>`) for file, pool and replicated backends alike.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// A cancel signal shared by a command and the backend calls made for it. Raised once
/// (abort, session end or deadline) and never lowered. Cloning shares the signal.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    raised: AtomicBool,
    wake: Notify,
    /// The command's place in its LU's arrival order (0: none), for the hold queue.
    order: std::sync::atomic::AtomicU64,
}

impl Cancel {
    /// A signal that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal and wakes every waiter.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::Release);
        self.0.wake.notify_waiters();
    }

    /// Records the command's arrival order at its LU (taken by the reader, in CmdSN order).
    pub(crate) fn set_order(&self, n: u64) {
        self.0.order.store(n, Ordering::Relaxed);
    }

    /// The arrival order set by `set_order`, if any.
    pub(crate) fn order(&self) -> Option<u64> {
        Some(self.0.order.load(Ordering::Relaxed)).filter(|n| *n != 0)
    }

    /// Whether the signal is raised.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::Acquire)
    }

    /// Completes when the signal is raised (at once if it already is).
    pub async fn raised(&self) {
        loop {
            let wait = self.0.wake.notified();
            tokio::pin!(wait);
            // Registered before the check, so a raise in between is not missed.
            wait.as_mut().enable();
            if self.is_raised() {
                return;
            }
            wait.await;
        }
    }
}

/// A backend's request that the LU hold new commands (replication design §2.6: queue up
/// to T_hold, then BUSY). Cloning shares it: the backend keeps one clone and raises or
/// releases it, the LU waits on another. Released when created.
#[derive(Debug, Clone)]
pub struct Hold(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Hold {
    fn default() -> Self {
        Hold(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Hold {
    /// A hold that is released.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the hold: from now on the LU issues no new call to the backend.
    pub fn hold(&self) {
        self.0.send_replace(true);
    }

    /// Releases it: waiting commands proceed, in the order they reached the LU.
    pub fn release(&self) {
        self.0.send_replace(false);
    }

    /// Whether it is raised.
    pub fn is_held(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when the hold is released (at once if it is).
    pub async fn released(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|held| !*held).await;
    }
}

/// Something a backend tells the target about its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendEvent {
    /// Capacity (or other READ CAPACITY data) changed: every I_T nexus of the LU gets the
    /// CAPACITY DATA HAS CHANGED unit attention (2Ah/09h).
    CapacityChanged,
    /// The volume is about to stop being served (planned stop, move, removal): every
    /// session gets the asynchronous "request logout" event.
    Stopping,
}

/// Per-command context of one backend call.
#[derive(Debug, Clone)]
pub struct IoCtx {
    /// io number of a modifying call (write, unmap, write zeros, compare and write), from
    /// [`BlockBackend::next_io`] in the LU's dispatch order; `None` for reads and flushes
    /// and for backends that keep no sequence (files).
    pub io: Option<u64>,
    /// Force unit access: the write is stable when the call completes.
    pub fua: bool,
    /// Raised when the command is aborted or passes its deadline: work not yet started
    /// should end with [`BackendError::NotStarted`].
    pub cancel: Cancel,
    /// After this instant the target raises `cancel`; a backend that queues work may
    /// refuse unstarted work past it on its own.
    pub deadline: Instant,
}

impl IoCtx {
    /// A context with no io number, no FUA, a fresh cancel signal and `deadline`.
    pub fn new(deadline: Instant) -> Self {
        IoCtx {
            io: None,
            fua: false,
            cancel: Cancel::new(),
            deadline,
        }
    }

    /// Whether work that has not started must be refused (cancelled or past the deadline).
    pub fn must_not_start(&self) -> bool {
        self.cancel.is_raised() || Instant::now() >= self.deadline
    }
}

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
    /// The call was refused before any of it reached the medium (cancelled or past its
    /// deadline), and none of it ever will: answered with BUSY.
    #[error("backend call not started")]
    NotStarted,
    /// The operation is not supported by this backend.
    #[error("operation not supported by the backend")]
    Unsupported,
    /// Any other failure of the backend.
    #[error("backend failure: {0}")]
    Other(#[source] std::io::Error),
}

/// The outcome of [`BlockBackend::compare_and_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOutcome {
    /// The medium matched and the new data was written.
    Written,
    /// The medium differed at this byte offset into the range; nothing was written.
    Miscompare(u32),
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
    /// The io number for the next modifying call, taken in the LU's dispatch order;
    /// `None` (the default) for backends without a sequence.
    fn next_io(&self) -> Option<u64> {
        None
    }
    /// The hold this backend raises when commands must wait (see the module docs); `None`
    /// (the default) for backends that never hold. Asked once, when the LU is created.
    fn hold(&self) -> Option<Hold> {
        None
    }
    /// Events of this backend (see the module docs); `None` (the default) for backends
    /// that raise none. Asked once, when the target is added.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<BackendEvent>> {
        None
    }
    /// Reads `len` bytes at `offset`.
    fn read(&self, ctx: &IoCtx, offset: u64, len: u32) -> BackendFuture<'_, Bytes>;
    /// Writes `data` at `offset`; with `ctx.fua` the data is stable when it completes.
    fn write(&self, ctx: &IoCtx, offset: u64, data: Bytes) -> BackendFuture<'_, ()>;
    /// Makes every completed write stable.
    fn flush(&self, ctx: &IoCtx) -> BackendFuture<'_, ()>;
    /// Frees the range; later reads return zeros.
    fn unmap(&self, ctx: &IoCtx, offset: u64, len: u64) -> BackendFuture<'_, ()>;
    /// Writes zeros over the range, leaving it mapped (WRITE SAME of a zero block without
    /// UNMAP). The default writes zero buffers; backends with a cheaper way override it.
    fn write_zeros(&self, ctx: &IoCtx, offset: u64, len: u64) -> BackendFuture<'_, ()> {
        let ctx = ctx.clone();
        Box::pin(async move {
            let chunk = 1u64 << 20;
            let zeros = Bytes::from(vec![0u8; chunk as usize]);
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(chunk);
                match self
                    .write(&ctx, offset + done, zeros.slice(..n as usize))
                    .await
                {
                    // Part of the range is written: "not started" would no longer be true.
                    Err(BackendError::NotStarted) if done > 0 => return Err(BackendError::Busy),
                    r => r?,
                }
                done += n;
            }
            Ok(())
        })
    }
    /// Whether `compare_and_write` is atomic on its own (against every other writer of
    /// the volume, on every replica, across failover). When false (the default) the LU
    /// runs it exclusively against its other writes, which suffices for a local backend.
    fn atomic_compare_and_write(&self) -> bool {
        false
    }
    /// COMPARE AND WRITE: if the medium at `offset` equals `compare`, writes `data` (same
    /// length) there. The default reads, compares and writes; see
    /// `atomic_compare_and_write` for who makes that atomic.
    fn compare_and_write(
        &self,
        ctx: &IoCtx,
        offset: u64,
        compare: Bytes,
        data: Bytes,
    ) -> BackendFuture<'_, CompareOutcome> {
        let ctx = ctx.clone();
        Box::pin(async move {
            let medium = self.read(&ctx, offset, compare.len() as u32).await?;
            if let Some(at) = medium.iter().zip(compare.iter()).position(|(a, b)| a != b) {
                return Ok(CompareOutcome::Miscompare(at as u32));
            }
            self.write(&ctx, offset, data).await?;
            Ok(CompareOutcome::Written)
        })
    }
    /// Allocation state from `offset` on, at most `len` bytes covered; `None` when the
    /// backend cannot tell (everything is then reported mapped).
    fn lba_status(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
    ) -> BackendFuture<'_, Option<Vec<Extent>>> {
        let _ = (ctx, offset, len);
        Box::pin(async { Ok(None) })
    }
}
