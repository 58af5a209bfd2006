//! Snapshots of a replicated volume (design §2.3, §2.7, §4): take, list, delete, clone,
//! and the missed-snapshot part of a catch-up.
//!
//! A snapshot is drawn as an io number, the cut n: writes below n complete first, writes
//! above it wait in the sequencer (`Seq::cut`) until every Current replica took pool
//! snapshot `snapshot_at_io(n)`, so every replica's snapshot holds exactly the writes
//! below n. Then the record lists it (`Record::snapshots`). Catch-up sessions open while
//! a snapshot is taken are ended (their member cannot hold the cut yet); they restart and
//! replay it.
//!
//! Missed snapshots (a Stale or New member lacks recorded snapshots): before the member
//! joins the send set, for each missing snapshot in cut order over base b, the member's
//! blocks with io above b and the source snapshot's blocks with io in (b, cut) are set
//! to the source snapshot's version (UNMAPs included: zeros become holes at the commit),
//! then the member takes the snapshot at the same cut and b becomes cut - 1; the live
//! catch-up then runs from that base. Deleted snapshots are destroyed on the member.
//!
//! Invariants: a snapshot is recorded only after every Current replica holds it; a
//! member is readmitted only if it holds every snapshot recorded when its replay ran
//! (one it cannot take is reported and left out, never faked), and a snapshot recorded
//! later ended its catch-up session. A delete is refused while a replica has clones of
//! it. A clone is a new replicated volume whose replicas are pool clones on the same
//! replicas, recorded Current with io numbers reserved above the cut.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::catchup::{list_changed, union};
use crate::client::ReplicaConn;
use crate::error::{ReplicaError, VolumeError};
use crate::membership::{unix_now, Cas, Member, MemberState, MembershipStore, Record, SnapshotRec};
use crate::volume::{cas_store, join_all, read_store, Phase, ReplicatedVolume, Target};
use crate::wire::{self, Op};

/// A snapshot as `cstor target snapshots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// Name.
    pub name: String,
    /// io cut.
    pub io: u64,
    /// Volume size when taken.
    pub size: u64,
    /// Unix seconds.
    pub at: u64,
    /// Ids of the connected replicas holding it at this cut.
    pub replicas: Vec<String>,
}

/// Bytes per SNAP_READ during a replay.
const CHUNK: u64 = 1 << 20;

/// Checks a snapshot or volume name given to a replicated target.
pub fn check_name(name: &str, what: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Refused(format!(
            "bad {what} name {name:?}: 1 to 128 of A-Z a-z 0-9 - _ . :"
        )))
    }
}

fn refused(id: &str, e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Refused(format!("replica {id}: {e}"))
}

/// The snapshots `conn`'s replica holds.
async fn list_on(conn: &ReplicaConn, t: Duration) -> Result<Vec<wire::SnapInfo>, ReplicaError> {
    let b = conn.call(Op::Snapshots, Bytes::new(), t).await?;
    serde_json::from_slice(&b).map_err(|e| ReplicaError::Failed {
        addr: conn.addr().into(),
        status: wire::Status::Invalid,
        msg: format!("bad SNAPSHOTS reply: {e}"),
    })
}

async fn delete_on(conn: &ReplicaConn, name: &str, t: Duration) -> Result<(), ReplicaError> {
    let req = wire::SnapReq {
        name: name.into(),
        io_cut: 0,
    };
    conn.call(Op::DeleteSnapshot, wire::enc_json(&req), t)
        .await
        .map(|_| ())
}

/// Clears the snapshot cut (and wakes the writes waiting above it) however the snapshot
/// ends.
struct CutGuard<'a>(&'a ReplicatedVolume);

impl Drop for CutGuard<'_> {
    fn drop(&mut self) {
        self.0.inner.seq.lock().cut = None;
        self.0.inner_wake();
    }
}

impl ReplicatedVolume {
    fn serving(&self) -> Result<(), VolumeError> {
        if self.is_fenced() {
            return Err(VolumeError::Fenced {
                record: 0,
                ours: self.inner.epoch,
            });
        }
        match self.inner.state.lock().phase {
            Phase::Healthy | Phase::Degraded => Ok(()),
            p => Err(VolumeError::Refused(format!(
                "the volume is not serving ({p:?})"
            ))),
        }
    }

    fn current_targets(&self) -> Vec<Target> {
        self.inner
            .seq
            .lock()
            .targets
            .iter()
            .filter(|t| t.current)
            .cloned()
            .collect()
    }

    /// Takes snapshot `name` of the volume at one io cut on every Current replica and
    /// records it. Writes above the cut wait while the replicas commit it (one txg).
    pub async fn snapshot(&self, name: &str) -> Result<SnapshotRec, VolumeError> {
        check_name(name, "snapshot")?;
        let inner = &self.inner;
        let t = inner.cfg.t_evict * 5;
        self.serving()?;
        let exists = |v: &ReplicatedVolume| {
            if v.record().snapshots.iter().any(|s| s.name == name) {
                return Err(VolumeError::Refused(format!("snapshot {name} exists")));
            }
            Ok(())
        };
        exists(self)?;
        let cut = {
            let mut q = inner.seq.lock();
            if q.cut.is_some() {
                return Err(VolumeError::Refused(
                    "another snapshot is being taken: retry".into(),
                ));
            }
            if q.next > q.reserved {
                return Err(VolumeError::Refused(
                    "io numbers exhausted until the reservation is extended: retry".into(),
                ));
            }
            let n = q.next;
            q.next += 1;
            q.cut = Some(n);
            n
        };
        let _cut = CutGuard(self);
        // Every io below the cut completes (numbers drawn but never used are given up).
        let t0 = Instant::now();
        loop {
            {
                let mut q = inner.seq.lock();
                let sending = q.inflight.range(..cut).next().is_some();
                let drawn: Vec<u64> = q.issued.range(..cut).copied().collect();
                if !sending && drawn.is_empty() {
                    break;
                }
                if t0.elapsed() > t {
                    return Err(VolumeError::Refused(
                        "writes before the snapshot did not complete".into(),
                    ));
                }
                if !sending && t0.elapsed() > Duration::from_secs(1) {
                    for g in drawn {
                        q.issued.remove(&g);
                        q.expired.insert(g);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // One membership or snapshot change at a time; taken after the wait, so a write
        // below the cut that must evict a replica is not stuck behind us.
        let _g = inner.evict.lock().await;
        self.serving()?;
        exists(self)?;
        // Catching-up members cannot hold the cut yet: end their sessions (they replay
        // this snapshot when they restart).
        let catching: Vec<Target> = {
            let mut q = inner.seq.lock();
            let c = q.targets.iter().filter(|x| !x.current).cloned().collect();
            q.targets.retain(|x| x.current);
            c
        };
        for x in catching {
            x.stats
                .failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            x.conn.close("a snapshot was taken during its catch-up");
        }
        let targets = self.current_targets();
        if targets.is_empty() {
            return Err(VolumeError::Refused("no Current replica".into()));
        }
        let req = wire::enc_json(&wire::SnapReq {
            name: name.into(),
            io_cut: cut,
        });
        let calls = targets.iter().map(|x| {
            let req = req.clone();
            async move { (x, x.conn.call(Op::Snapshot, req, t).await) }
        });
        let mut failed: Option<VolumeError> = None;
        for (x, r) in join_all(calls).await {
            match r {
                Ok(_) => {}
                Err(ReplicaError::Fenced { stored, .. }) => {
                    self.fence(stored);
                    failed = Some(VolumeError::Fenced {
                        record: stored,
                        ours: inner.epoch,
                    });
                }
                Err(e) => failed = failed.or(Some(refused(&x.id, e))),
            }
        }
        let size = self.size();
        let rec = SnapshotRec {
            name: name.into(),
            io: cut,
            size,
            at: unix_now(),
        };
        let recorded = match failed {
            Some(e) => Err(e),
            None => {
                let r2 = rec.clone();
                self.change_record(move |r| {
                    r.snapshots.push(r2.clone());
                    Ok(())
                })
                .await
                .map(|_| ())
            }
        };
        if let Err(e) = recorded {
            // Not recorded: take it back where it was taken (an orphan left by a failure
            // here is replaced by a retry and destroyed by catch-up).
            for x in &targets {
                let _ = delete_on(&x.conn, name, t).await;
            }
            return Err(e);
        }
        tracing::info!(volume = %inner.cfg.name, snapshot = name, cut, "snapshot taken");
        Ok(rec)
    }

    /// The recorded snapshots, with the connected replicas holding each.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotStatus>, VolumeError> {
        let t = self.inner.cfg.t_evict * 5;
        let rec = self.record();
        let targets: Vec<Target> = self.inner.seq.lock().targets.clone();
        let lists =
            join_all(targets.iter().map(|x| async move {
                (x.id.clone(), list_on(&x.conn, t).await.unwrap_or_default())
            }))
            .await;
        Ok(rec
            .snapshots
            .iter()
            .map(|s| SnapshotStatus {
                name: s.name.clone(),
                io: s.io,
                size: s.size,
                at: s.at,
                replicas: lists
                    .iter()
                    .filter(|(_, l)| l.iter().any(|h| h.name == s.name && h.io_cut == Some(s.io)))
                    .map(|(id, _)| id.clone())
                    .collect(),
            })
            .collect())
    }

    /// Deletes snapshot `name`: out of the record, then off every connected replica;
    /// replicas away now drop it at their catch-up. Refused while a clone of it exists.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let t = inner.cfg.t_evict * 5;
        let _g = inner.evict.lock().await;
        self.serving()?;
        if !self.record().snapshots.iter().any(|s| s.name == name) {
            return Err(VolumeError::Refused(format!("no snapshot {name}")));
        }
        let targets: Vec<Target> = inner.seq.lock().targets.clone();
        for x in &targets {
            let l = list_on(&x.conn, t).await.map_err(|e| refused(&x.id, e))?;
            if let Some(s) = l.iter().find(|s| s.name == name && !s.clones.is_empty()) {
                return Err(VolumeError::Refused(format!(
                    "snapshot {name} has clones on replica {}: {} (destroy them first)",
                    x.id,
                    s.clones.join(", ")
                )));
            }
        }
        let n = name.to_string();
        self.change_record(move |r| {
            r.snapshots.retain(|s| s.name != n);
            Ok(())
        })
        .await?;
        for x in &targets {
            if let Err(e) = delete_on(&x.conn, name, t).await {
                tracing::warn!(replica = %x.id, snapshot = name, error = %e, "delete left for its catch-up");
            }
        }
        tracing::info!(volume = %inner.cfg.name, snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Clones snapshot `snap` into a new replicated volume `new_volume`: a pool clone on
    /// every Current replica, and a new record in `store` listing them Current (clean,
    /// no holder, io numbers reserved up to the cut, so the new volume's writes are
    /// above every block it inherits). Serve it with the same replicas, `--size` = the
    /// snapshot's size and the store (e.g. `--state-dir`). Returns the new record.
    pub async fn clone_snapshot(
        &self,
        snap: &str,
        new_volume: &str,
        store: Arc<dyn MembershipStore>,
    ) -> Result<Record, VolumeError> {
        self.clone_snapshot_on(snap, new_volume, store, None).await
    }

    /// [`Self::clone_snapshot`] on the replicas at `on` only (their addresses, as the
    /// volume's config names them), e.g. a restore with fewer replicas than its source:
    /// a clone on a replica the new volume does not use would be a member it never
    /// opens. Each of `on` must be a Current replica now (else Refused, nothing made).
    pub async fn clone_snapshot_on(
        &self,
        snap: &str,
        new_volume: &str,
        store: Arc<dyn MembershipStore>,
        on: Option<&[String]>,
    ) -> Result<Record, VolumeError> {
        check_name(new_volume, "volume")?;
        let inner = &self.inner;
        let t = inner.cfg.t_evict * 5;
        let _g = inner.evict.lock().await;
        self.serving()?;
        if new_volume == inner.cfg.name {
            return Err(VolumeError::Refused(
                "a clone needs a name other than its volume's".into(),
            ));
        }
        let rec = self.record();
        let s = rec
            .snapshots
            .iter()
            .find(|s| s.name == snap)
            .cloned()
            .ok_or_else(|| VolumeError::Refused(format!("no snapshot {snap}")))?;
        let (old, ver) = read_store(&store).await?;
        if !old.members.is_empty() || old.epoch != 0 {
            return Err(VolumeError::Refused(format!(
                "a membership record for {new_volume} exists already"
            )));
        }
        let req = wire::enc_json(&wire::CloneReq {
            snapshot: snap.into(),
            clone: new_volume.into(),
        });
        let mut targets = self.current_targets();
        if let Some(on) = on {
            if let Some(a) = on
                .iter()
                .find(|a| !targets.iter().any(|t| &t.address == *a))
            {
                return Err(VolumeError::Refused(format!(
                    "replica {a} is not a Current replica of {}",
                    inner.cfg.name
                )));
            }
            targets.retain(|t| on.contains(&t.address));
        }
        let mut members = Vec::new();
        for x in targets {
            let b = x
                .conn
                .call(Op::Clone, req.clone(), t)
                .await
                .map_err(|e| refused(&x.id, e))?;
            let c: wire::CloneReply = serde_json::from_slice(&b).map_err(|e| refused(&x.id, e))?;
            members.push(Member {
                id: x.id.clone(),
                guid: c.guid,
                address: x.address.clone(),
                state: MemberState::Current,
                stale_since_io: 0,
                reason: format!("clone of {}@{snap}", inner.cfg.name),
                at: unix_now(),
                epoch: 0,
            });
        }
        if members.is_empty() {
            return Err(VolumeError::Refused("no Current replica".into()));
        }
        let n = members.len() as u32;
        let new = Record {
            clean_shutdown: true,
            io_reserved: s.io,
            size: s.size,
            rf: n,
            drf: n,
            cf: rec.cf.min(n),
            min_current: rec.min_current.min(n),
            members,
            ..Record::default()
        };
        match cas_store(&store, ver, &new).await? {
            Cas::Ok(_) => {}
            Cas::Conflict => {
                return Err(VolumeError::Refused(format!(
                    "the record of {new_volume} changed meanwhile"
                )))
            }
        }
        tracing::info!(volume = %inner.cfg.name, snapshot = snap, clone = new_volume, "cloned");
        Ok(new)
    }
}

/// Before a catching-up member joins the send set: destroys the snapshots deleted while
/// it was away and rebuilds, in cut order, the recorded ones it lacks (see the module
/// doc). Returns the live catch-up's base and the names recorded when it ran.
pub(crate) async fn replay_missed(
    v: &ReplicatedVolume,
    conn: &ReplicaConn,
    base: u64,
    bs: u64,
    t: Duration,
) -> Result<(u64, Vec<String>), VolumeError> {
    let mut snaps = v.record().snapshots;
    snaps.sort_by_key(|s| s.io);
    let known: Vec<String> = snaps.iter().map(|s| s.name.clone()).collect();
    let have = list_on(conn, t).await?;
    for h in &have {
        if h.io_cut.is_some() && !known.contains(&h.name) {
            if let Err(e) = delete_on(conn, &h.name, t).await {
                tracing::warn!(replica = %conn.addr(), snapshot = %h.name, error = %e, "deleted snapshot kept");
            }
        }
    }
    let mut b = base;
    for s in snaps {
        if have
            .iter()
            .any(|h| h.name == s.name && h.io_cut == Some(s.io))
        {
            continue;
        }
        if s.io <= b + 1 {
            // It holds writes past this cut already: the pool cannot take it any more.
            tracing::warn!(replica = %conn.addr(), snapshot = %s.name, "missing snapshot at a cut the member passed: left out");
            continue;
        }
        replay_one(v, conn, &s, b, bs, t).await?;
        let req = wire::enc_json(&wire::SnapReq {
            name: s.name.clone(),
            io_cut: s.io,
        });
        conn.call(Op::Snapshot, req, t).await?;
        tracing::info!(replica = %conn.addr(), snapshot = %s.name, cut = s.io, "missed snapshot replayed");
        b = s.io - 1;
    }
    Ok((b, known))
}

/// Sets the member's blocks with io above `b` and the source snapshot's blocks with io
/// in (b, cut) to the source snapshot's version, each tagged with the snapshot's io for
/// it (`b` for a member-only block: its source version is at most `b`).
async fn replay_one(
    v: &ReplicatedVolume,
    conn: &ReplicaConn,
    s: &SnapshotRec,
    b: u64,
    bs: u64,
    t: Duration,
) -> Result<(), VolumeError> {
    let src = v
        .inner
        .seq
        .lock()
        .targets
        .iter()
        .filter(|x| x.current && !x.conn.is_closed())
        .min_by_key(|x| x.conn.inflight())
        .cloned()
        .ok_or_else(|| VolumeError::Refused("no Current replica to replay from".into()))?;
    let mut runs: Vec<wire::Range> = Vec::new();
    let mut from = 0u64;
    loop {
        let req = wire::enc_json(&wire::SnapBlocksReq {
            snapshot: s.name.clone(),
            since: b,
            until: s.io - 1,
            from,
            max: 65_536,
        });
        let page = src.conn.call(Op::SnapBlocks, req, t).await?;
        let page = wire::dec_ranges(page)
            .map_err(|e| VolumeError::Refused(format!("bad SNAP_BLOCKS reply: {e}")))?;
        let full = page.len() >= 65_536;
        if let Some(l) = page.last() {
            from = l.offset + l.len;
        }
        runs.extend(page);
        if !full {
            break;
        }
    }
    let mut ranges: Vec<(u64, u64)> = runs.iter().map(|r| (r.offset, r.offset + r.len)).collect();
    ranges.extend(
        list_changed(conn, b, u64::MAX, t)
            .await?
            .into_iter()
            .map(|r| (r.offset, r.offset + r.len)),
    );
    let io_at = |off: u64| {
        let i = runs.partition_point(|r| r.offset + r.len <= off);
        runs.get(i)
            .filter(|r| r.offset <= off)
            .map_or(b, |r| r.io_max)
    };
    for (start, end) in union(ranges) {
        let mut off = start / bs * bs;
        let end = end.min(s.size);
        while off < end {
            let n = (end - off).min(CHUNK).div_ceil(bs) * bs;
            let n = n.min(s.size - off);
            let req = wire::enc_json(&wire::SnapReadReq {
                snapshot: s.name.clone(),
                offset: off,
                len: n,
            });
            let data = src.conn.call(Op::SnapRead, req, t).await?;
            if data.len() as u64 != n {
                return Err(VolumeError::Refused("short SNAP_READ reply".into()));
            }
            let blocks: Vec<(u64, u64)> = (0..n / bs)
                .map(|i| (off + i * bs, io_at(off + i * bs)))
                .collect();
            // x0 = max: the member's version always yields (nothing live reaches it yet).
            conn.call(Op::Apply, wire::enc_apply(u64::MAX, &blocks, &data), t)
                .await?;
            off += n;
        }
    }
    Ok(())
}

/// After the member joined the send set: once no snapshot is being taken, every
/// snapshot recorded must be one its replay saw (a later one ended the session before
/// recording, unless it was taken before the join: then the member lacks it).
pub(crate) async fn check_after_join(
    v: &ReplicatedVolume,
    known: &[String],
) -> Result<(), VolumeError> {
    let _g = v.inner.evict.lock().await;
    let rec = v.record();
    match rec.snapshots.iter().find(|s| !known.contains(&s.name)) {
        Some(s) => Err(VolumeError::Refused(format!(
            "snapshot {} was taken while the member replayed snapshots: retrying",
            s.name
        ))),
        None => Ok(()),
    }
}
