//! A local pool volume as an iSCSI LUN: the adapter from the blocking engine's
//! [`VolumeHandle`] to the target's async [`BlockBackend`] seam.
//!
//! Invariants: every engine call that may wait runs on a blocking thread (never on the
//! async runtime): writes and UNMAPs on the volume's writer thread
//! ([`crate::volume_writer`]), in the LU's dispatch order, then (FUA, crash-safe and
//! write-through modes) their wait for the intent log on a blocking thread; reads and
//! flushes on blocking threads; only cached reads run on the LU's task. A write with FUA
//! returns only after the engine's `flush` (intent log) made it durable.
//! Errors map once, here, from [`PoolError`] to [`BackendError`], which the target maps to
//! sense data.
//! Settlement (cstor_iscsi::backend): a modifying call whose command was cancelled (abort,
//! deadline) before the writer thread took it up is refused with `NotStarted` and never
//! reaches the engine; one that began runs to the end (its log wait included). The io number the target passes in
//! `ctx.io` goes to the engine unchanged; `next_io` is where the volume's sequence is
//! handed out (`VolumeHandle::next_io`, branch s3-pool).

use std::sync::Arc;

use bytes::Bytes;
use cstor_iscsi::backend::{BackendError, BackendFuture, BackendIdentity, BlockBackend, IoCtx};
use cstor_iscsi::{ReservationStore, StoreError};
use cstor_pool::{Pool, PoolError, VolumeHandle, WriteMode};

use crate::host::OpenPool;
use crate::volume_writer::{VolumeWriter, WriteOp, WriteReply};

/// Whatever keeps a pool engine open for a served volume: a hosted [`OpenPool`], or in
/// tests a bare engine over test devices.
pub trait EngineHolder: Send + Sync + std::fmt::Debug + 'static {
    /// The engine.
    fn engine(&self) -> &Pool;
}

impl EngineHolder for OpenPool {
    fn engine(&self) -> &Pool {
        OpenPool::engine(self)
    }
}

impl EngineHolder for Pool {
    fn engine(&self) -> &Pool {
        self
    }
}

/// A pool volume served as a LUN.
#[derive(Debug)]
pub struct PoolVolumeBackend {
    pool: Arc<dyn EngineHolder>,
    name: String,
    volume: VolumeHandle,
    writer: VolumeWriter,
    identity: BackendIdentity,
}

impl PoolVolumeBackend {
    /// Serve volume `name` of `pool`.
    pub fn new(pool: Arc<dyn EngineHolder>, name: &str) -> Result<PoolVolumeBackend, PoolError> {
        let volume = pool.engine().volume(name)?;
        // Pool and volume guids together: stable across restarts and unique per volume,
        // so VPD 0x83 names the same LUN after the target restarts.
        let pool_guid = pool.engine().guid();
        let vol_guid = volume.guid();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&pool_guid.to_le_bytes());
        id[8..].copy_from_slice(&vol_guid.to_le_bytes());
        let identity = BackendIdentity {
            id,
            serial: format!("{vol_guid:016x}"),
        };
        Ok(PoolVolumeBackend {
            pool,
            name: name.to_owned(),
            writer: VolumeWriter::new(volume.clone()),
            volume,
            identity,
        })
    }

    fn engine(&self) -> &Pool {
        self.pool.engine()
    }

    /// The reservation store of this volume (its properties), for APTPL.
    pub fn reservation_store(&self) -> VolumeReservationStore {
        VolumeReservationStore {
            pool: self.pool.clone(),
            volume: self.name.clone(),
        }
    }
}

fn map_err(offset: u64, e: PoolError) -> BackendError {
    match e {
        PoolError::OutOfRange {
            offset, len, size, ..
        } => BackendError::OutOfRange {
            offset,
            len,
            size_bytes: size,
        },
        PoolError::ReadOnly { .. } => BackendError::ReadOnly,
        PoolError::NoSpace => BackendError::NoSpace,
        other => BackendError::Medium {
            offset,
            source: std::io::Error::other(other),
        },
    }
}

/// Largest read served on the LU's task without a blocking-thread hop (see `read`):
/// small reads gain the hop's cost, large ones lose parallelism.
const INLINE_MAX_BYTES: u32 = 32 * 1024;

/// Awaits a write or UNMAP queued on the volume's writer thread, then waits as the
/// command asks for its log record: FUA flushes the intent log (covering every earlier
/// write), crash-safe and write-through modes settle it (`VolumeHandle::settle_writes`),
/// on a blocking thread; both group-commit with the other waiters in the engine.
async fn queued(
    vol: VolumeHandle,
    offset: u64,
    fua: bool,
    reply: tokio::sync::oneshot::Receiver<WriteReply>,
) -> Result<(), BackendError> {
    match reply.await {
        Ok(Some(r)) => r.map_err(|e| map_err(offset, e))?,
        Ok(None) => return Err(BackendError::NotStarted),
        // The writer thread could not start, or died (a panic, maybe in this job's engine
        // call): a failure, never `NotStarted`, which would promise nothing was written.
        Err(_) => {
            return Err(BackendError::Other(std::io::Error::other(
                "the volume's writer thread is gone",
            )))
        }
    }
    if fua {
        blocking(offset, move || vol.flush()).await
    } else if vol.write_mode() != WriteMode::Buffered {
        blocking(offset, move || vol.settle_writes()).await
    } else {
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    offset: u64,
    f: impl FnOnce() -> Result<T, PoolError> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| map_err(offset, e)),
        Err(join) => Err(BackendError::Other(std::io::Error::other(join))),
    }
}

impl BlockBackend for PoolVolumeBackend {
    fn identity(&self) -> &BackendIdentity {
        &self.identity
    }

    fn size_bytes(&self) -> u64 {
        self.volume.size()
    }

    fn read_only(&self) -> bool {
        self.engine().space().read_only
    }

    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<cstor_iscsi::BackendEvent>> {
        // Raised by the admin socket of the pool (a resize), crate::events.
        Some(crate::events::subscribe(self.engine().guid(), &self.name))
    }

    fn next_io(&self) -> Option<u64> {
        // The volume's own sequence, drawn in the LU's dispatch order on an async thread,
        // so it must not wait for a commit: when the durable reservation is used up (the
        // pool extends it at half use, so only after open or a stall) the call draws its
        // number on its blocking thread instead (`own_io`), out of dispatch order for
        // that one call, never reused.
        self.volume.try_next_io()
    }

    fn read(&self, _ctx: &IoCtx, offset: u64, len: u32) -> BackendFuture<'_, Bytes> {
        let vol = self.volume.clone();
        // Cached data (dirty layers, the block cache, the page cache of the devices) is
        // served on this task: a hop to a blocking thread and back cost more than the
        // read itself (issue 9 item 10). Only small reads: a large one inline holds the
        // connection's task for its checksums and copies while other queued commands
        // could run on other cores (measured: 128 KiB reads at QD8 fell to 0.6x of the
        // blocking path). A read that must wait for a device goes to a blocking thread.
        if len <= INLINE_MAX_BYTES {
            let mut buf = vec![0u8; len as usize];
            match vol.read_nowait(offset, &mut buf) {
                Ok(true) => return Box::pin(std::future::ready(Ok(Bytes::from(buf)))),
                Ok(false) => {}
                Err(e) => return Box::pin(std::future::ready(Err(map_err(offset, e)))),
            }
        }
        Box::pin(blocking(offset, move || {
            vol.read_vec(offset, len as usize).map(Bytes::from)
        }))
    }

    fn write(&self, ctx: &IoCtx, offset: u64, data: Bytes) -> BackendFuture<'_, ()> {
        // Queued here, not in the future: this call runs in the LU's dispatch order, and
        // the writer applies its queue in that order (see `crate::volume_writer` for why
        // a writer thread and not a blocking-thread hop per write; served inline on the
        // LU's task, with `VolumeHandle::write_nowait`, 4 KiB random writes at QD16
        // measured 0.4-0.6x of a hop: the task stops reading the next PDUs while it
        // copies).
        let reply = self.writer.submit(ctx, WriteOp::Write { offset, data });
        Box::pin(queued(self.volume.clone(), offset, ctx.fua, reply))
    }

    fn flush(&self, _ctx: &IoCtx) -> BackendFuture<'_, ()> {
        let vol = self.volume.clone();
        Box::pin(blocking(0, move || vol.flush()))
    }

    fn unmap(&self, ctx: &IoCtx, offset: u64, len: u64) -> BackendFuture<'_, ()> {
        let reply = self.writer.submit(ctx, WriteOp::Unmap { offset, len });
        Box::pin(queued(self.volume.clone(), offset, ctx.fua, reply))
    }
}

/// Persistent reservations of a pool volume kept as volume properties, so they move with
/// the pool (issue 9 item 4). The state is hex in up to `PR_MAX_CHUNKS` properties of one
/// of two slots (`cstor.pr.a.N`, `cstor.pr.b.N`); `cstor.pr` names the live slot and its
/// chunk count and is written last, and the whole is committed (`Pool::sync`) before the
/// swap returns, so a crash leaves either the old state or the new one.
#[derive(Debug)]
pub struct VolumeReservationStore {
    pool: Arc<dyn EngineHolder>,
    volume: String,
}

/// Property naming the live slot: `<a|b>:<chunks>`.
const PR_KEY: &str = "cstor.pr";
/// Chunks per slot; with 1 KiB properties, 3 KiB of state (a dozen registrations).
const PR_MAX_CHUNKS: usize = 6;
/// Hex characters per chunk (the pool's property value limit).
const PR_CHUNK_CHARS: usize = 1024;

impl VolumeReservationStore {
    /// The store of volume `volume` of `pool`.
    pub fn new(pool: Arc<dyn EngineHolder>, volume: &str) -> Self {
        VolumeReservationStore {
            pool,
            volume: volume.to_owned(),
        }
    }

    fn prop(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.pool
            .engine()
            .property(&self.volume, key)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.pool
            .engine()
            .set_property(&self.volume, key, value)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl ReservationStore for VolumeReservationStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(head) = self.prop(PR_KEY)?.filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let bad = || {
            StoreError::Io(std::io::Error::other(format!(
                "bad {PR_KEY} property {head:?}"
            )))
        };
        let (slot, n) = head.split_once(':').ok_or_else(bad)?;
        let n: usize = n.parse().map_err(|_| bad())?;
        if !matches!(slot, "a" | "b") || n > PR_MAX_CHUNKS {
            return Err(bad());
        }
        let mut hex = String::new();
        for i in 0..n {
            hex.push_str(
                &self
                    .prop(&format!("{PR_KEY}.{slot}.{i}"))?
                    .ok_or_else(bad)?,
            );
        }
        unhex(&hex).map(Some).ok_or_else(bad)
    }

    fn compare_and_swap(
        &self,
        expected: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        if self.load()?.as_deref() != expected {
            return Err(StoreError::Conflict);
        }
        let head = match next {
            None => String::new(),
            Some(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let chunks: Vec<&str> = hex
                    .as_bytes()
                    .chunks(PR_CHUNK_CHARS)
                    .map(|c| std::str::from_utf8(c).unwrap_or_default())
                    .collect();
                if chunks.len() > PR_MAX_CHUNKS {
                    return Err(StoreError::TooLarge(bytes.len()));
                }
                let live = self.prop(PR_KEY)?.unwrap_or_default();
                let slot = if live.starts_with('a') { "b" } else { "a" };
                for (i, c) in chunks.iter().enumerate() {
                    self.set(&format!("{PR_KEY}.{slot}.{i}"), c)?;
                }
                format!("{slot}:{}", chunks.len())
            }
        };
        self.set(PR_KEY, &head)?;
        self.pool
            .engine()
            .sync()
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        Ok(())
    }
}
