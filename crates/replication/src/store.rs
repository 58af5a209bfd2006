//! The replica's view of its pool: [`ReplicaVolume`] wraps one pool volume and is the only
//! code of this crate that calls the pool, so switching to new pool primitives touches
//! this file alone.
//!
//! Durable per-volume replication records live in volume properties (committed with the
//! txg that holds every write made before the property was set):
//! - `cstor.repl.epoch` / `cstor.repl.instance`: highest epoch seen and its target
//!   instance; [`ReplicaVolume::set_epoch`] sets them and commits a txg before returning
//!   (durable across power loss; a full commit stands in for the pool's coming
//!   `set_epoch`, which avoids it).
//! - `cstor.repl.checkpoint`: checkpoint C. Set with the next txg together with every
//!   write acknowledged before the call, so it never claims data that is not on disk.
//! - `cstor.repl.cursor`: the catch-up cursor (`B:offset`), committed before returning.
//! - `cstor.repl.clean` / `cstor.repl.boot`: clean-shutdown marker and boot id, for
//!   `lostTail` (unclean last shutdown and a changed boot id).
//!
//! Not yet from the pool (s4-pool): per-block io with a read (`read_with_io`), so catch-up
//! tags source blocks with X0-1 (see catchup.rs), and a flush point kept by the pool.

use std::sync::Arc;

use cstor_pool::{Pool, PoolError, VolumeHandle, WriteMode};

use crate::wire::Range;

/// Block size of replica volumes this server creates: the catch-up apply unit.
pub const REPLICA_BLOCK: u32 = 4096;

const P_EPOCH: &str = "cstor.repl.epoch";
const P_INSTANCE: &str = "cstor.repl.instance";
const P_CHECKPOINT: &str = "cstor.repl.checkpoint";
const P_CURSOR: &str = "cstor.repl.cursor";
const P_CLEAN: &str = "cstor.repl.clean";
const P_BOOT: &str = "cstor.repl.boot";

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
    /// Last shutdown was clean.
    pub clean: bool,
    /// Boot id recorded at the last open for writing.
    pub boot: Option<String>,
}

/// One replica volume of the served pool.
#[derive(Debug, Clone)]
pub struct ReplicaVolume {
    pool: Arc<dyn PoolAccess>,
    vol: VolumeHandle,
}

/// The boot id of this OS boot (empty when unknown).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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

    /// Reads whole blocks with the io of each when the pool can tell it (`None` until the
    /// pool has `read_with_io`).
    pub fn read_with_io(&self, offset: u64, buf: &mut [u8]) -> Result<Option<Vec<u64>>, PoolError> {
        self.vol.read(offset, buf)?;
        Ok(None)
    }

    /// Writes with the target's io.
    pub fn write(&self, offset: u64, data: &[u8], io: u64) -> Result<(), PoolError> {
        self.vol.write(offset, data, Some(io))
    }

    /// UNMAP with the target's io.
    pub fn unmap(&self, offset: u64, len: u64, io: u64) -> Result<(), PoolError> {
        self.vol.unmap(offset, len, Some(io))
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

    /// Up to `max` ranges with io in `(since, until]`, starting at byte `from`.
    pub fn changed(
        &self,
        since: u64,
        until: u64,
        from: u64,
        max: usize,
    ) -> Result<Vec<Range>, PoolError> {
        let mut out = Vec::new();
        let r = self
            .p()
            .changed_between(self.vol.name(), since, Some(until), &mut |c| {
                if c.offset + c.len <= from {
                    return Ok(());
                }
                let start = c.offset.max(from);
                out.push(Range {
                    offset: start,
                    len: c.offset + c.len - start,
                    io_max: c.io_number_max,
                });
                if out.len() >= max {
                    // Ends the walk early; the caller asks again from the last range's end.
                    return Err(PoolError::Busy("page full".into()));
                }
                Ok(())
            });
        match r {
            Ok(()) => Ok(out),
            Err(PoolError::Busy(m)) if m == "page full" => Ok(out),
            Err(e) => Err(e),
        }
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

    fn prop(&self, key: &str) -> Result<Option<String>, PoolError> {
        self.p().property(self.vol.name(), key)
    }

    fn prop_u64(&self, key: &str) -> Result<u64, PoolError> {
        Ok(self
            .prop(key)?
            .and_then(|v| v.parse().ok())
            .unwrap_or_default())
    }

    /// The durable records.
    pub fn records(&self) -> Result<Records, PoolError> {
        Ok(Records {
            epoch: self.prop_u64(P_EPOCH)?,
            instance: self.prop(P_INSTANCE)?.unwrap_or_default(),
            checkpoint: self.prop_u64(P_CHECKPOINT)?,
            cursor: self.prop(P_CURSOR)?.filter(|c| !c.is_empty()),
            clean: self.prop(P_CLEAN)?.as_deref() == Some("1"),
            boot: self.prop(P_BOOT)?,
        })
    }

    /// Persists the epoch (and marks the volume open for writing on this boot): durable
    /// when it returns.
    pub fn set_epoch(&self, epoch: u64, instance: &str) -> Result<(), PoolError> {
        let name = self.vol.name();
        self.p().set_property(name, P_EPOCH, &epoch.to_string())?;
        self.p().set_property(name, P_INSTANCE, instance)?;
        self.p().set_property(name, P_CLEAN, "0")?;
        self.p().set_property(name, P_BOOT, &boot_id())?;
        self.p().sync()?;
        Ok(())
    }

    /// Sets checkpoint C: durable with the next txg, together with every write made
    /// before the call.
    pub fn set_checkpoint(&self, c: u64) -> Result<(), PoolError> {
        self.p()
            .set_property(self.vol.name(), P_CHECKPOINT, &c.to_string())
    }

    /// Sets checkpoint C and commits it now (readmission, end of catch-up).
    pub fn set_checkpoint_durable(&self, c: u64) -> Result<(), PoolError> {
        self.set_checkpoint(c)?;
        self.p().sync()?;
        Ok(())
    }

    /// Persists (or clears) the catch-up cursor; durable when it returns.
    pub fn set_cursor(&self, cursor: Option<&str>) -> Result<(), PoolError> {
        self.p()
            .set_property(self.vol.name(), P_CURSOR, cursor.unwrap_or(""))?;
        self.p().sync()?;
        Ok(())
    }

    /// Marks a clean shutdown (call after the last write, before closing the pool).
    pub fn mark_clean(&self) -> Result<(), PoolError> {
        self.p().set_property(self.vol.name(), P_CLEAN, "1")?;
        self.p().sync()?;
        Ok(())
    }
}

/// Maps a pool error to a reply status.
pub fn status_of(e: &PoolError) -> crate::wire::Status {
    use crate::wire::Status;
    match e {
        PoolError::NoSpace => Status::NoSpace,
        PoolError::ReadOnly { .. } => Status::ReadOnly,
        PoolError::OutOfRange { .. } | PoolError::Unaligned { .. } | PoolError::Invalid(_) => {
            Status::Invalid
        }
        _ => Status::Error,
    }
}
