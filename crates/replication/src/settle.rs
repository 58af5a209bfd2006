//! Settling writes that failed after being sent, so checkpoints advance again.
//!
//! A write the initiator was told failed (BUSY after a refused eviction, the store
//! unreachable past T_hold, ...) may have reached some Current replicas and not others.
//! Until they agree on its blocks no checkpoint may cover its io (`Seq::checkpoint`), or
//! a later catch-up from that checkpoint would not list the block as suspect. Before this
//! module the checkpoint then stayed held for the life of the instance, so every later
//! catch-up restarted from that point and re-sent everything written since.
//!
//! Settling one failed write: read its blocks with their io from every Current replica,
//! and send each replica that holds an older version the newest one by APPLY with
//! `x0 = io + 1` (read.rs `apply_not_newer`), which never replaces a block a newer live
//! write reached first. Afterwards every Current replica holds, per block, the version of
//! the highest io any of them had: the failed write's data or an older acknowledged one;
//! both are allowed for a write never acknowledged, and a later acknowledged write is
//! never undone. Catching-up sessions may hold a failed write too: they are ended first
//! and restart from their own checkpoint, which the held checkpoint kept below it, so
//! their copy of the block is listed as suspect and replaced.
//!
//! Invariants: runs under the `evict` lock (no membership change in between) and only
//! while no Current member is away; a member failing a step is handled after the lock is
//! released (evict takes it); a failed write leaves `Seq::failed` only once settled.

use std::sync::atomic::Ordering;

use crate::error::ReplicaError;
use crate::read::{apply_not_newer, read_blocks, REPAIR_CHUNK};
use crate::volume::{ReplicatedVolume, Target};

/// A failed write or UNMAP larger than this is not re-read: it pins the checkpoint until
/// the next start reconciles (an UNMAP of a whole volume would be re-read whole).
pub(crate) const MAX_SETTLE_BYTES: u64 = 64 << 20;

impl ReplicatedVolume {
    /// Settles the failed writes recorded so far (module docs); a no-op when there are
    /// none or a membership change is in progress (the next ping tick retries).
    pub(crate) async fn settle_failed(&self) {
        let inner = &self.inner;
        if inner.seq.lock().failed.is_empty() {
            return;
        }
        let Ok(guard) = inner.evict.try_lock() else {
            return;
        };
        if self.is_away() || self.is_fenced() || inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (failed, current, catching_up) = {
            let q = inner.seq.lock();
            let failed: Vec<(u64, (u64, u64))> = q.failed.iter().map(|(k, v)| (*k, *v)).collect();
            let (cur, other): (Vec<Target>, Vec<Target>) =
                q.targets.iter().cloned().partition(|t| t.current);
            (failed, cur, other)
        };
        if current.is_empty() || current.iter().any(|t| t.conn.is_closed()) {
            return;
        }
        for t in &catching_up {
            self.end_catch_up(
                t,
                "a write failed half-way; the catch-up restarts to re-check it",
            );
        }
        let mut settled = Vec::new();
        let mut failure: Option<(Target, ReplicaError)> = None;
        'writes: for (io, (offset, len)) in failed {
            if let Err(f) = self.settle_range(&current, offset, len).await {
                failure = Some(f);
                break 'writes;
            }
            settled.push(io);
        }
        {
            let mut q = inner.seq.lock();
            for io in &settled {
                q.failed.remove(io);
            }
        }
        drop(guard);
        if !settled.is_empty() {
            tracing::info!(volume = %inner.cfg.name, writes = settled.len(),
                "failed writes settled on every Current replica; checkpoints advance again");
        }
        if let Some((t, e)) = failure {
            tracing::warn!(replica = %t.id, error = %e, "settling a failed write");
            self.member_failed(&t, &e).await;
        }
    }

    /// Makes every replica of `current` agree on the blocks of `[offset, offset + len)`.
    async fn settle_range(
        &self,
        current: &[Target],
        offset: u64,
        len: u64,
    ) -> Result<(), (Target, ReplicaError)> {
        let t = self.inner.cfg.t_evict;
        let bs = current[0].block_size.max(512);
        if let Some(odd) = current.iter().find(|c| c.block_size.max(512) != bs) {
            let e = ReplicaError::Failed {
                addr: odd.address.clone(),
                status: crate::wire::Status::Invalid,
                msg: format!("block size {} differs from {bs}", odd.block_size),
            };
            return Err((odd.clone(), e));
        }
        let size = self.size();
        let start = offset / bs * bs;
        let end = (offset + len.max(1))
            .div_ceil(bs)
            .saturating_mul(bs)
            .min(size);
        let mut off = start;
        while off < end {
            let n = (end - off).min(REPAIR_CHUNK / bs * bs);
            let reads = current
                .iter()
                .map(|c| async move { (c, read_blocks(c, off, n, t).await) });
            let mut copies = Vec::with_capacity(current.len());
            for (c, r) in crate::volume::join_all(reads).await {
                match r {
                    Ok(x) => copies.push(x),
                    Err(e) => return Err((c.clone(), e)),
                }
            }
            let blocks = (n / bs) as usize;
            for (ci, c) in current.iter().enumerate() {
                let mut want: Vec<(u64, u64)> = Vec::new();
                let mut data: Vec<u8> = Vec::new();
                for k in 0..blocks {
                    // The newest version any Current replica holds.
                    let (src, io) = copies
                        .iter()
                        .enumerate()
                        .map(|(i, (ios, _))| (i, ios[k]))
                        .max_by_key(|(_, io)| *io)
                        .unwrap_or((ci, 0));
                    if io > copies[ci].0[k] {
                        want.push((off + k as u64 * bs, io));
                        let b = k * bs as usize;
                        data.extend_from_slice(&copies[src].1[b..b + bs as usize]);
                    }
                }
                if !want.is_empty() {
                    apply_not_newer(c, &want, &data, t)
                        .await
                        .map_err(|e| (c.clone(), e))?;
                }
            }
            off += n;
        }
        Ok(())
    }
}
