//! Reads of the replicated volume and read repair (design rule 7).
//!
//! A read goes to the least-loaded Current replica of the send set. A replica that fails
//! it by its connection or with an error is evicted (the next one is tried); one that
//! answers MEDIUM (its pool holds the blocks but could not read their bytes: every copy
//! failed verification, or a device error) is not: the range is read from another Current
//! replica and written back to it by APPLY, then the read completes with the good bytes.
//!
//! Why APPLY and not a new write: a repair carrying a fresh io number would be sent after
//! host writes it raced with and could revert one. APPLY with `x0 = io + 1` for a copy of
//! io `io` replaces a block only while the damaged replica's io for it is not newer than
//! the copy's; a live write that reached it first (higher io) is kept, one that comes
//! after overwrites the repair as it would any block. So per block the higher io still
//! wins and no acknowledged write is undone (S1-S3).
//!
//! Invariants: a read never returns bytes a Current replica could not verify; when no
//! Current replica can read the range the read fails with a medium error (the host's
//! retry would meet the same damage), never BUSY forever.

use bytes::Bytes;
use cstor_iscsi::backend::BackendError;

use crate::error::ReplicaError;
use crate::volume::{other, Phase, ReplicatedVolume, Target};
use crate::wire::{self, Op, Status};

/// READ_IO moves at most this many bytes per request (the replica allows 16 MiB).
pub(crate) const REPAIR_CHUNK: u64 = 4 << 20;

/// Reads `n` bytes of whole blocks at `off` from `t` with the io of each block.
pub(crate) async fn read_blocks(
    t: &Target,
    off: u64,
    n: u64,
    timeout: std::time::Duration,
) -> Result<(Vec<u64>, Bytes), ReplicaError> {
    let bs = t.block_size.max(512);
    let body = t
        .conn
        .call(Op::ReadIo, wire::enc_u64s(&[off, n]), timeout)
        .await?;
    let bad = |msg: String| ReplicaError::Failed {
        addr: t.address.clone(),
        status: Status::Invalid,
        msg,
    };
    let (exact, ios, data) =
        wire::dec_read_io(body).map_err(|e| bad(format!("bad READ_IO reply: {e}")))?;
    if !exact || ios.len() as u64 * bs != n || data.len() as u64 != n {
        return Err(bad("READ_IO gave no exact io per block".into()));
    }
    Ok((ios, data))
}

/// Sends whole blocks `(offset, io)` with their bytes (`data`, one block each, in order)
/// to `dst` by APPLY with `x0 = io + 1`: each replaces the local block only while the
/// local io is not newer than the copy's (module docs). One APPLY per run of equal io
/// (a large write is one io). Returns the number of blocks applied.
pub(crate) async fn apply_not_newer(
    dst: &Target,
    blocks: &[(u64, u64)],
    data: &[u8],
    timeout: std::time::Duration,
) -> Result<u64, ReplicaError> {
    let bs = dst.block_size.max(512) as usize;
    debug_assert_eq!(blocks.len() * bs, data.len());
    let mut applied = 0u64;
    let mut i = 0usize;
    while i < blocks.len() {
        let io = blocks[i].1;
        let mut j = i + 1;
        while j < blocks.len() && blocks[j].1 == io {
            j += 1;
        }
        let body = wire::enc_apply(io.saturating_add(1), &blocks[i..j], &data[i * bs..j * bs]);
        let reply = dst.conn.call(Op::Apply, body, timeout).await?;
        applied += wire::dec_u64s::<1>(reply).map(|[a]| a).unwrap_or(0);
        i = j;
    }
    Ok(applied)
}

impl ReplicatedVolume {
    /// Reads `len` bytes at `offset` from a Current replica, repairing the ones that
    /// answered MEDIUM on the way.
    pub(crate) async fn read_any(&self, offset: u64, len: u32) -> Result<Bytes, BackendError> {
        let inner = &self.inner;
        let mut tried: Vec<String> = Vec::new();
        let mut damaged: Vec<(Target, String)> = Vec::new();
        loop {
            if self.is_fenced() {
                return Err(other("fenced by a newer target instance"));
            }
            if inner.state.lock().phase == Phase::Init {
                return Err(BackendError::NotStarted);
            }
            if self.is_away() || !self.lease_held().await {
                return Err(BackendError::Busy);
            }
            let pick = {
                let q = inner.seq.lock();
                q.targets
                    .iter()
                    .filter(|t| self.serves(t) && !tried.contains(&t.id) && !t.conn.is_closed())
                    .min_by_key(|t| t.conn.inflight())
                    .cloned()
            };
            let Some(t) = pick else {
                if let Some((_, why)) = damaged.first() {
                    return Err(BackendError::Medium {
                        offset,
                        source: std::io::Error::other(format!(
                            "no Current replica could read {len} bytes at {offset}: {why}"
                        )),
                    });
                }
                return Err(BackendError::Busy);
            };
            tried.push(t.id.clone());
            match t
                .conn
                .call(
                    Op::Read,
                    wire::enc_u64s(&[offset, u64::from(len)]),
                    inner.cfg.t_evict,
                )
                .await
            {
                Ok(b) if b.len() == len as usize => {
                    for (bad, why) in damaged {
                        self.repair(&t, &bad, offset, u64::from(len), &why).await;
                    }
                    return Ok(b);
                }
                Ok(_) => {}
                Err(ReplicaError::Failed {
                    status: Status::Medium,
                    msg,
                    ..
                }) => {
                    tracing::warn!(replica = %t.id, offset, len, error = %msg,
                        "replica could not read the range; reading it elsewhere to repair it");
                    damaged.push((t, msg));
                }
                Err(e) => {
                    if !self.member_failed(&t, &e).await && self.is_fenced() {
                        return Err(other("fenced by a newer target instance"));
                    }
                }
            }
        }
    }

    /// Copies the blocks covering `[offset, offset + len)` from `good` (which just read
    /// them) to `bad` by the apply rule (module docs). A replica that cannot be repaired
    /// is evicted: it holds data it cannot read, and a catch-up by io numbers would never
    /// resend those blocks.
    async fn repair(&self, good: &Target, bad: &Target, offset: u64, len: u64, why: &str) {
        let t = self.inner.cfg.t_evict;
        let r: Result<u64, ReplicaError> = async {
            if good.block_size != bad.block_size {
                return Err(ReplicaError::Failed {
                    addr: bad.address.clone(),
                    status: Status::Invalid,
                    msg: format!(
                        "block size {} differs from the source's {}",
                        bad.block_size, good.block_size
                    ),
                });
            }
            let bs = bad.block_size.max(512);
            let start = offset / bs * bs;
            let end = (offset + len).div_ceil(bs) * bs;
            let mut applied = 0u64;
            let mut off = start;
            while off < end {
                let n = (end - off).min(REPAIR_CHUNK / bs * bs);
                let (ios, data) = read_blocks(good, off, n, t).await?;
                let blocks: Vec<(u64, u64)> = ios
                    .iter()
                    .enumerate()
                    .map(|(k, io)| (off + k as u64 * bs, *io))
                    .collect();
                applied += apply_not_newer(bad, &blocks, &data, t).await?;
                off += n;
            }
            Ok(applied)
        }
        .await;
        match r {
            Ok(applied) => {
                self.inner
                    .repaired_blocks
                    .fetch_add(applied, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(replica = %bad.id, source = %good.id, offset, len, applied,
                    "read repair: blocks rewritten from another Current replica");
            }
            Err(e) => {
                tracing::warn!(replica = %bad.id, error = %e, "read repair failed");
                let failure = match e {
                    ReplicaError::Failed { addr, status, msg } if addr == good.address => {
                        // The source failed: not the damaged member's fault, but it still
                        // cannot serve these blocks.
                        ReplicaError::Failed {
                            addr: bad.address.clone(),
                            status: Status::Medium,
                            msg: format!("{why} (repair source {addr}: {status:?}: {msg})"),
                        }
                    }
                    e => e,
                };
                self.member_failed(bad, &failure).await;
            }
        }
    }
}
