//! Small durable per-volume records for replication (replication-design.md §2.3, §2.4,
//! §5): checkpoint, epoch, catch-up cursor, the clean-shutdown marker and boot id; and the
//! flush point (the highest io below which every acknowledged write is stable).
//!
//! Owns: the records' acknowledged values and the per-volume list of writes not yet
//! stable. Invariants:
//! - The checkpoint reaches the directory in the txg it was set in, with every write
//!   applied before the call, and is reported only once that root is durable: it never
//!   claims data not on disk. It is also an intent-log record (no flush of its own), so
//!   a replay after a crash restores the latest one whose block reached the device, with
//!   every write logged before it: a replica killed between commits comes back with a
//!   checkpoint seconds fresher than its last commit, and a catch-up re-sends only what
//!   it may really lack (bench/replication.sh, incremental rebuild).
//! - An epoch or cursor is in a flushed intent-log record before its setter returns (no
//!   txg commit); the value is in the volume's directory record from the moment the log
//!   record is pushed, so a commit that trims the log record carries it. Replay applies
//!   them (an epoch never goes down).
//! - A write is stable once a log flush covered its record or its txg's commit is
//!   durable; both are prefixes of a volume's writes in push order, so the unstable ones
//!   are a queue popped from the front.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::zil::VolSet;

/// Largest catch-up cursor ([`VolumeHandle::set_cursor`]).
pub const MAX_CURSOR_BYTES: usize = 4096;

/// A volume's durable records, as [`VolumeHandle::records`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecords {
    /// The durable checkpoint: every write with io up to it that was applied before the
    /// [`VolumeHandle::set_checkpoint`] call is in a durable tree.
    pub checkpoint: u64,
    /// Highest epoch stored.
    pub epoch: u64,
    /// Catch-up cursor.
    pub cursor: Option<Vec<u8>>,
    /// The pool was last closed by [`Pool::close`] (its last commit said so).
    pub last_shutdown_clean: bool,
    /// The boot id differs from the one the previous open recorded (or either is unknown).
    pub boot_id_changed: bool,
    /// `!last_shutdown_clean && boot_id_changed`: an OS crash or power loss may have
    /// dropped acknowledged writes that were not stable (a process crash alone loses
    /// nothing: the page cache survives).
    pub lost_tail: bool,
}

/// Acknowledged record values of a volume.
#[derive(Debug, Default)]
pub(crate) struct Acked {
    pub(crate) checkpoint: u64,
    pub(crate) epoch: u64,
    pub(crate) cursor: Option<Vec<u8>>,
}

impl Acked {
    pub(crate) fn of(rec: &VolRec) -> Acked {
        Acked {
            checkpoint: rec.checkpoint,
            epoch: rec.epoch,
            cursor: rec.cursor.as_deref().and_then(from_hex),
        }
    }
}

/// What the open found of the previous shutdown and boot.
#[derive(Debug, Default)]
pub(crate) struct Boot {
    pub(crate) last_shutdown_clean: bool,
    pub(crate) boot_id_changed: bool,
    /// This boot's id, recorded by every commit.
    pub(crate) this_boot: Option<String>,
}

fn boot_id(opts: &PoolOptions) -> Option<String> {
    opts.boot_id.clone().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

impl Boot {
    /// A new pool has no tail to lose.
    pub(crate) fn new_pool(opts: &PoolOptions) -> Boot {
        Boot {
            last_shutdown_clean: true,
            boot_id_changed: false,
            this_boot: boot_id(opts),
        }
    }

    /// From the directory the open read; an unknown boot id counts as changed.
    pub(crate) fn at_open(opts: &PoolOptions, dir: &DirRec) -> Boot {
        let this_boot = boot_id(opts);
        let changed = match (&this_boot, &dir.boot_id) {
            (Some(a), Some(b)) => a != b,
            _ => true,
        };
        Boot {
            last_shutdown_clean: dir.clean_shutdown,
            boot_id_changed: changed,
            this_boot,
        }
    }
}

/// Writes of a volume that are not yet stable, in push order: (log sequence, txg, io).
/// Log sequence `u64::MAX`: not logged (stable only with its txg).
#[derive(Debug, Default)]
pub(crate) struct Stability {
    queue: VecDeque<(u64, u64, u64)>,
    /// The io numbers in `queue`, counted.
    ios: BTreeMap<u64, u32>,
    /// Highest io of a write known stable.
    stable_max: u64,
}

impl Stability {
    pub(crate) fn new(stable_max: u64) -> Stability {
        Stability {
            stable_max,
            ..Stability::default()
        }
    }

    /// Pop the writes made stable by log flushes up to `durable_seq` or commits up to
    /// `committed_txg`.
    fn settle(&mut self, durable_seq: u64, committed_txg: u64) {
        while let Some(&(seq, txg, io)) = self.queue.front() {
            if seq > durable_seq && txg > committed_txg {
                break;
            }
            self.queue.pop_front();
            if let Some(n) = self.ios.get_mut(&io) {
                *n -= 1;
                if *n == 0 {
                    self.ios.remove(&io);
                }
            }
            self.stable_max = self.stable_max.max(io);
        }
    }

    fn flush_point(&self) -> u64 {
        match self.ios.keys().next() {
            Some(&lowest) => lowest.saturating_sub(1),
            None => self.stable_max,
        }
    }
}

impl PoolInner {
    pub(super) fn flush_point_of(&self, v: &Volume) -> u64 {
        let durable = self.durable_seq.load(Ordering::SeqCst);
        let committed = self.last_committed.load(Ordering::SeqCst);
        let mut s = v.stab.lock();
        s.settle(durable, committed);
        s.flush_point()
    }
}

impl Volume {
    /// A write or UNMAP carrying `io` was put in txg `txg` (and pushed to the log as push
    /// `seq`). Called under the volume's state lock, so pushes are in order. Pops what
    /// became stable first, so the queue holds at most the writes not yet stable.
    pub(crate) fn note_unstable(&self, pool: &PoolInner, io: Option<u64>, seq: u64, txg: u64) {
        let Some(io) = io else { return };
        let durable = pool.durable_seq.load(Ordering::SeqCst);
        let committed = pool.last_committed.load(Ordering::SeqCst);
        let mut s = self.stab.lock();
        s.settle(durable, committed);
        s.queue.push_back((seq, txg, io));
        *s.ios.entry(io).or_insert(0) += 1;
    }
}

fn to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 0xf)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

impl VolumeHandle {
    /// Highest n such that every write or UNMAP with io <= n that this volume
    /// acknowledged is stable (survives power loss): in a flushed log block or a durable
    /// tree. A [`WriteMode::CrashSafe`] write is acknowledged before it is stable; a
    /// [`WriteMode::WriteThrough`] one only after. Writes without an io number are not
    /// counted. At open it covers what survived: the tree's io maximum and the writes
    /// replayed from the intent log (the replay's commit makes them stable); what an
    /// earlier open acknowledged and a power cut dropped is what
    /// [`VolumeRecords::lost_tail`] warns of.
    pub fn flush_point(&self) -> u64 {
        self.pool.flush_point_of(&self.vol)
    }

    /// The volume's durable records and what the open found of the last shutdown.
    pub fn records(&self) -> VolumeRecords {
        let a = self.vol.records.lock();
        let b = self.pool.boot.lock();
        VolumeRecords {
            checkpoint: a.checkpoint,
            epoch: a.epoch,
            cursor: a.cursor.clone(),
            last_shutdown_clean: b.last_shutdown_clean,
            boot_id_changed: b.boot_id_changed,
            lost_tail: !b.last_shutdown_clean && b.boot_id_changed,
        }
    }

    /// Store the highest epoch seen: durable before it returns (a flushed intent-log
    /// record, no txg commit). An epoch below the stored one is refused
    /// ([`PoolError::EpochBelowStored`]); the same one returns at once.
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        let _gate = self.vol.record_gate.lock();
        self.pool.check_usable()?;
        let stored = self.vol.records.lock().epoch;
        if epoch < stored {
            return Err(PoolError::EpochBelowStored {
                volume: self.vol.name.clone(),
                stored,
                asked: epoch,
            });
        }
        if epoch == stored {
            return Ok(());
        }
        self.log_record(VolSet::Epoch(epoch), None, |m| m.epoch = m.epoch.max(epoch))?;
        self.vol.records.lock().epoch = epoch;
        Ok(())
    }

    /// Store the catch-up cursor (at most [`MAX_CURSOR_BYTES`]; None clears it): durable
    /// before it returns, as [`VolumeHandle::set_epoch`].
    pub fn set_cursor(&self, cursor: Option<&[u8]>) -> Result<()> {
        if cursor.is_some_and(|c| c.len() > MAX_CURSOR_BYTES) {
            return Err(PoolError::Invalid(format!(
                "a catch-up cursor is at most {MAX_CURSOR_BYTES} bytes"
            )));
        }
        let _gate = self.vol.record_gate.lock();
        self.pool.check_usable()?;
        let hex = cursor.map(to_hex);
        self.log_record(VolSet::Cursor, cursor.map(|c| Arc::new(c.to_vec())), |m| {
            m.cursor = hex.clone()
        })?;
        self.vol.records.lock().cursor = cursor.map(<[u8]>::to_vec);
        Ok(())
    }

    /// Set the checkpoint: committed with the next txg together with every write applied
    /// before the call, and reported by [`VolumeHandle::records`] once that commit is
    /// durable (background, or [`Pool::sync`]).
    pub fn set_checkpoint(&self, checkpoint: u64) -> Result<()> {
        self.pool.check_usable()?;
        let txg_guard = self.pool.txg.read();
        let mut st = self.vol.state.lock();
        if st.destroyed {
            return Err(PoolError::UnknownVolume {
                name: self.vol.name.clone(),
            });
        }
        st.open_checkpoint = Some(checkpoint);
        self.pool.meta_dirty.store(true, Ordering::SeqCst);
        // Behind every write applied before this call in the log's order: the log block
        // that carries it is written after theirs (replay stops at the first missing one).
        let mut l = self.pool.log.lock();
        l.records.push(LogRecord {
            vol_guid: self.vol.guid,
            txg: *txg_guard,
            offset: 0,
            data: None,
            unmap_len: 0,
            io_number: None,
            set: Some(VolSet::Checkpoint(checkpoint)),
        });
        l.pushed += 1;
        Ok(())
    }

    /// Put a volume record in the directory record (`apply`) and the intent log in the
    /// open txg, then flush the log.
    fn log_record(
        &self,
        set: VolSet,
        data: Option<Arc<Vec<u8>>>,
        apply: impl FnOnce(&mut VolRec),
    ) -> Result<()> {
        let p = &self.pool;
        {
            let txg_guard = p.txg.read();
            let txg = *txg_guard;
            let mut meta = self.vol.meta.lock();
            if self.vol.state.lock().destroyed {
                return Err(PoolError::UnknownVolume {
                    name: self.vol.name.clone(),
                });
            }
            // In the directory record from now on: a commit that closes this txg (and so
            // drops the log record) writes it.
            apply(&mut meta);
            p.meta_dirty.store(true, Ordering::SeqCst);
            // Counted as the log's (and dirty) bytes like a write's data: the commit that
            // drops the record and the flush that writes it release them.
            let len = data.as_ref().map_or(0, |d| d.len() as u64);
            p.dirty_bytes.fetch_add(len, Ordering::SeqCst);
            let mut l = p.log.lock();
            l.bytes += len;
            l.records.push(LogRecord {
                vol_guid: self.vol.guid,
                txg,
                offset: 0,
                data,
                unmap_len: 0,
                io_number: None,
                set: Some(set),
            });
            l.pushed += 1;
        }
        p.log_sync(true)
    }

    /// Apply a volume record found by the log replay.
    pub(super) fn replay_set(&self, set: &VolSet, data: Option<&[u8]>) {
        let mut meta = self.vol.meta.lock();
        let mut acked = self.vol.records.lock();
        match set {
            VolSet::Epoch(e) => {
                meta.epoch = meta.epoch.max(*e);
                acked.epoch = meta.epoch;
            }
            VolSet::Cursor => {
                meta.cursor = data.map(to_hex);
                acked.cursor = data.map(<[u8]>::to_vec);
            }
            VolSet::Checkpoint(c) => {
                // Committed with the replayed writes by the replay's commit.
                drop((meta, acked));
                self.vol.state.lock().open_checkpoint = Some(*c);
                self.pool.meta_dirty.store(true, Ordering::SeqCst);
                return;
            }
        }
        self.pool.meta_dirty.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stability_is_a_prefix_and_the_flush_point_the_lowest_unstable_io_minus_one() {
        let mut s = Stability::new(3);
        assert_eq!(s.flush_point(), 3);
        // Pushes: io 7 (seq 1, txg 5), io 5 (seq 2, txg 5), io 9 (not logged, txg 6).
        for (seq, txg, io) in [(1, 5, 7), (2, 5, 5), (u64::MAX, 6, 9)] {
            s.queue.push_back((seq, txg, io));
            *s.ios.entry(io).or_insert(0) += 1;
        }
        assert_eq!(s.flush_point(), 4);
        s.settle(1, 0);
        assert_eq!(s.flush_point(), 4, "io 5 still unstable");
        s.settle(2, 0);
        assert_eq!(s.flush_point(), 8, "io 9 waits for its txg");
        s.settle(u64::MAX - 1, 5);
        assert_eq!(s.flush_point(), 8);
        s.settle(0, 6);
        assert_eq!(s.flush_point(), 9);
    }

    #[test]
    fn cursor_hex_round_trips() {
        let b: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&b)), Some(b));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
