//! The replica's view of its pool: [`ReplicaVolume`] wraps one pool volume and is the only
//! code of this crate that calls the pool, so switching to new pool primitives touches
//! this file alone.
//!
//! Durable per-volume replication records are the pool's volume records
//! (`VolumeHandle::records`): the epoch (`set_epoch`, durable before it returns through a
//! flushed intent-log record), checkpoint C (`set_checkpoint`, committed with the next txg
//! together with every write applied before the call), the catch-up cursor (`set_cursor`,
//! durable before it returns), and `lost_tail` from the pool's clean-shutdown marker and
//! boot id. Per-block io numbers come with reads (`read_with_io`); the flush point is the
//! pool's (`flush_point`). Only the target instance id of the stored epoch is a volume
//! property (committed before the epoch is raised): it only tells a same-epoch reconnect of one
//! instance from misuse, since epochs are unique per instance by the record's CAS.

use std::sync::Arc;

use cstor_pool::{Pool, PoolError, VolumeHandle, WriteMode};

use crate::wire::Range;

/// Block size of replica volumes this server creates: the catch-up apply unit.
pub const REPLICA_BLOCK: u32 = 4096;

const P_INSTANCE: &str = "cstor.repl.instance";

/// Access to the pool a replica server serves (a bare pool in tests, a hosted pool in the
/// binary).
pub trait PoolAccess: Send + Sync + std::fmt::Debug + 'static {
    /// The pool engine.
    fn pool(&self) -> &Pool;
}

impl PoolAccess for Pool {
    fn pool(&self) -> &Pool {
        self
    }
}

/// The durable replication records of a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Highest epoch seen.
    pub epoch: u64,
    /// Target instance of that epoch.
    pub instance: String,
    /// Checkpoint C.
    pub checkpoint: u64,
    /// Catch-up cursor.
    pub cursor: Option<String>,
    /// The last shutdown was unclean and the boot id changed.
    pub lost_tail: bool,
}

/// One replica volume of the served pool.
#[derive(Debug, Clone)]
pub struct ReplicaVolume {
    pool: Arc<dyn PoolAccess>,
    vol: VolumeHandle,
}

impl ReplicaVolume {
    /// Opens volume `name`, creating it (thin, [`REPLICA_BLOCK`] blocks) at `size` when
    /// missing. Returns whether it was created.
    pub fn open_or_create(
        pool: Arc<dyn PoolAccess>,
        name: &str,
        size: u64,
    ) -> Result<(ReplicaVolume, bool), PoolError> {
        let p = pool.pool();
        let (vol, created) = match p.volume(name) {
            Ok(v) => (v, false),
            Err(PoolError::UnknownVolume { .. }) => (
                p.create_volume(name, size, Some(REPLICA_BLOCK), None)?,
                true,
            ),
            Err(e) => return Err(e),
        };
        Ok((ReplicaVolume { pool, vol }, created))
    }

    /// Grows the volume to `size` (a smaller size is refused by the pool).
    pub fn resize(&self, size: u64) -> Result<(), PoolError> {
        if size == self.vol.size() {
            return Ok(());
        }
        self.pool.pool().resize(self.vol.name(), size)
    }

    /// Opens an existing volume.
    pub fn open(pool: Arc<dyn PoolAccess>, name: &str) -> Result<ReplicaVolume, PoolError> {
        let vol = pool.pool().volume(name)?;
        Ok(ReplicaVolume { pool, vol })
    }

    fn p(&self) -> &Pool {
        self.pool.pool()
    }

    /// Volume guid.
    pub fn guid(&self) -> u64 {
        self.vol.guid()
    }

    /// Size, bytes.
    pub fn size(&self) -> u64 {
        self.vol.size()
    }

    /// Block size, bytes.
    pub fn block_size(&self) -> u32 {
        self.vol.block_size()
    }

    /// Reads into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        self.vol.read(offset, buf)
    }

    /// Reads whole blocks with the io of each (always `Some` since the pool has
    /// `read_with_io`).
    pub fn read_with_io(&self, offset: u64, buf: &mut [u8]) -> Result<Option<Vec<u64>>, PoolError> {
        self.vol.read_with_io(offset, buf).map(Some)
    }

    /// Highest io such that every write at or below it this volume acknowledged is stable.
    pub fn flush_point(&self) -> u64 {
        self.vol.flush_point()
    }

    /// Writes with the target's io.
    pub fn write(&self, offset: u64, data: &[u8], io: u64) -> Result<(), PoolError> {
        self.vol.write(offset, data, Some(io))
    }

    /// UNMAP with the target's io.
    pub fn unmap(&self, offset: u64, len: u64, io: u64) -> Result<(), PoolError> {
        self.vol.unmap(offset, len, Some(io))
    }

    /// [`ReplicaVolume::write`] without waiting for its log record: acknowledge it only
    /// after [`ReplicaVolume::settle_writes`] returned (group commit).
    pub fn write_unsettled(&self, offset: u64, data: &[u8], io: u64) -> Result<(), PoolError> {
        self.vol.write_unsettled(offset, data, Some(io))
    }

    /// [`ReplicaVolume::unmap`] without waiting for its log record (as
    /// [`ReplicaVolume::write_unsettled`]).
    pub fn unmap_unsettled(&self, offset: u64, len: u64, io: u64) -> Result<(), PoolError> {
        self.vol.unmap_unsettled(offset, len, Some(io))
    }

    /// Makes every earlier write and UNMAP as safe as the write mode asks (crash-safe, or
    /// stable in write-through mode): one log write (and flush) for all of them.
    pub fn settle_writes(&self) -> Result<(), PoolError> {
        self.vol.settle_writes()
    }

    /// Makes every earlier write stable.
    pub fn flush(&self) -> Result<(), PoolError> {
        self.vol.flush()
    }

    /// Crash-safe (`false`) or write-through (`true`) acks.
    pub fn set_write_through(&self, on: bool) {
        self.vol.set_write_mode(if on {
            WriteMode::WriteThrough
        } else {
            WriteMode::CrashSafe
        });
    }

    /// The catch-up apply rule for one whole block.
    pub fn apply_block_if(
        &self,
        offset: u64,
        data: &[u8],
        io: u64,
        x0: u64,
    ) -> Result<bool, PoolError> {
        self.vol.apply_block_if(offset, data, io, x0)
    }

    /// [`ReplicaVolume::apply_block_if`] of a batch: acknowledge none of them before
    /// [`ReplicaVolume::settle_applies`] returned.
    pub fn apply_block_if_unsettled(
        &self,
        offset: u64,
        data: &[u8],
        io: u64,
        x0: u64,
    ) -> Result<bool, PoolError> {
        self.vol.apply_block_if_unsettled(offset, data, io, x0)
    }

    /// Makes a batch of applies as safe as a write (one log write for all of them).
    pub fn settle_applies(&self) -> Result<(), PoolError> {
        self.vol.settle_applies()
    }

    /// Up to `max` ranges with io in `(since, until]`, starting at byte `from`.
    pub fn changed(
        &self,
        since: u64,
        until: u64,
        from: u64,
        max: usize,
    ) -> Result<Vec<Range>, PoolError> {
        let name = self.vol.name();
        page(from, max, |f| {
            self.p()
                .changed_between(name, since, Some(until), &mut |c| {
                    f(c.offset, c.len, c.io_number_max)
                })
        })
    }

    /// Highest io the volume holds (at least `checkpoint`).
    pub fn max_io(&self, checkpoint: u64) -> Result<u64, PoolError> {
        let mut m = checkpoint;
        self.p()
            .changed_between(self.vol.name(), checkpoint, None, &mut |c| {
                m = m.max(c.io_number_max);
                Ok(())
            })?;
        Ok(m)
    }

    /// The durable records.
    pub fn records(&self) -> Result<Records, PoolError> {
        let r = self.vol.records();
        Ok(Records {
            epoch: r.epoch,
            instance: self
                .p()
                .property(self.vol.name(), P_INSTANCE)?
                .unwrap_or_default(),
            checkpoint: r.checkpoint,
            cursor: r
                .cursor
                .and_then(|c| String::from_utf8(c).ok())
                .filter(|c| !c.is_empty()),
            lost_tail: r.lost_tail,
        })
    }

    /// Persists the epoch and its instance: both durable when it returns (a lower epoch
    /// is refused by the pool). The instance property is committed (a txg) before the
    /// epoch is raised: were it left to the next txg, a replica killed in between would
    /// come back with the new epoch but the old instance and fence the very target that
    /// set it. OPENs with a new epoch are rare (a target start), so the commit is cheap.
    pub fn set_epoch(&self, epoch: u64, instance: &str) -> Result<(), PoolError> {
        let name = self.vol.name();
        if self.p().property(name, P_INSTANCE)?.as_deref() != Some(instance) {
            self.p().set_property(name, P_INSTANCE, instance)?;
            self.p().sync()?;
        }
        self.vol.set_epoch(epoch)
    }

    /// Sets checkpoint C: durable with the next txg, together with every write applied
    /// before the call.
    pub fn set_checkpoint(&self, c: u64) -> Result<(), PoolError> {
        self.vol.set_checkpoint(c)
    }

    /// Persists (or clears) the catch-up cursor; durable when it returns.
    pub fn set_cursor(&self, cursor: Option<&str>) -> Result<(), PoolError> {
        self.vol.set_cursor(cursor.map(str::as_bytes))
    }

    /// Takes snapshot `name` at io cut `cut` (the caller made sure every write below the
    /// cut was applied and none above it was). An existing snapshot of that name at the
    /// same cut is kept (a retried request); one at another cut is an orphan of a failed
    /// attempt the target never recorded, and is replaced.
    pub fn snapshot_at(&self, name: &str, cut: u64) -> Result<(), PoolError> {
        let vol = self.vol.name();
        if let Some(s) = self.snapshots()?.into_iter().find(|s| s.name == name) {
            if s.io_cut == Some(cut) {
                return Ok(());
            }
            self.p().destroy_snapshot(vol, name)?;
        }
        self.p().snapshot_at_io(vol, name, cut)
    }

    /// The volume's snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<crate::wire::SnapInfo>, PoolError> {
        Ok(self
            .p()
            .list_snapshots(self.vol.name())?
            .into_iter()
            .map(|s| crate::wire::SnapInfo {
                name: s.name,
                io_cut: s.io_cut,
                size: s.size,
                referenced: s.referenced,
                used: s.used,
                clones: s.clones,
            })
            .collect())
    }

    /// Destroys snapshot `name`; a missing one is not an error (deletes are retried on
    /// replicas that missed them).
    pub fn delete_snapshot(&self, name: &str) -> Result<(), PoolError> {
        match self.p().destroy_snapshot(self.vol.name(), name) {
            Err(PoolError::UnknownSnapshot { .. }) => Ok(()),
            r => r,
        }
    }

    /// Clones snapshot `snap` into the new pool volume `clone`; returns its guid and size.
    /// A volume `clone` that already is a clone of this snapshot is returned as is (a
    /// retried request).
    pub fn clone_snapshot(&self, snap: &str, clone: &str) -> Result<(u64, u64), PoolError> {
        let p = self.p();
        let info = self.snapshots()?.into_iter().find(|s| s.name == snap);
        if let Some(s) = &info {
            if s.clones.iter().any(|c| c == clone) {
                let v = p.volume(clone)?;
                return Ok((v.guid(), v.size()));
            }
        }
        let v = p.clone_snapshot(self.vol.name(), snap, clone)?;
        Ok((v.guid(), v.size()))
    }

    /// Up to `max` runs of blocks of snapshot `snap` with one io each in `(since, until]`,
    /// from byte `from` (holes included: an UNMAP is a run too).
    pub fn snap_blocks(
        &self,
        snap: &str,
        since: u64,
        until: u64,
        from: u64,
        max: usize,
    ) -> Result<Vec<Range>, PoolError> {
        let target = format!("{}@{snap}", self.vol.name());
        page(from, max, |f| {
            self.p()
                .block_ios_between(&target, since, Some(until), &mut |b| {
                    f(b.offset, b.len, b.io)
                })
        })
    }

    /// Reads a range of snapshot `snap`.
    pub fn read_snapshot(&self, snap: &str, offset: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        self.p().read_snapshot(self.vol.name(), snap, offset, buf)
    }

    /// Commits a txg now (the checkpoint set before it becomes durable).
    pub fn commit(&self) -> Result<(), PoolError> {
        self.p().sync().map(|_| ())
    }
}

/// Ends a walk early once a page is full (the caller asks again from the last end).
const PAGE_FULL: &str = "page full";

/// Up to `max` ranges from byte `from` of a walk reporting (offset, len, io) runs in
/// offset order.
fn page(
    from: u64,
    max: usize,
    walk: impl FnOnce(&mut dyn FnMut(u64, u64, u64) -> Result<(), PoolError>) -> Result<(), PoolError>,
) -> Result<Vec<Range>, PoolError> {
    let mut out = Vec::new();
    let r = {
        let mut f = |offset: u64, len: u64, io: u64| {
            if offset + len <= from {
                return Ok(());
            }
            let start = offset.max(from);
            out.push(Range {
                offset: start,
                len: offset + len - start,
                io_max: io,
            });
            if out.len() >= max {
                return Err(PoolError::Busy(PAGE_FULL.into()));
            }
            Ok(())
        };
        walk(&mut f)
    };
    match r {
        Ok(()) => Ok(out),
        Err(PoolError::Busy(m)) if m == PAGE_FULL => Ok(out),
        Err(e) => Err(e),
    }
}

/// Maps a pool error to a reply status.
pub fn status_of(e: &PoolError) -> crate::wire::Status {
    use crate::wire::Status;
    match e {
        PoolError::NoSpace => Status::NoSpace,
        PoolError::ReadOnly { .. } => Status::ReadOnly,
        PoolError::Io(_) => Status::Medium,
        PoolError::OutOfRange { .. } | PoolError::Unaligned { .. } | PoolError::Invalid(_) => {
            Status::Invalid
        }
        _ => Status::Error,
    }
}
