//! Membership changes besides eviction and readmission (design §2.10): add a replica,
//! remove one, and the offline force-promotion.
//!
//! - Add: the replica is OPENed (to learn its id and guid), recorded New by CAS with
//!   rf = members, then the catch-up loop gives it a full copy and CASes it Current.
//! - Remove: one CAS drops the member (rf = members); refused if it is the only Current
//!   one or fewer than max(1, minCurrent) Current replicas would remain. With one Current
//!   replica left it switches to write-through, as after an eviction.
//! - Force-current offline ([`force_current`], no target serving), with
//!   `accept_data_loss`, only while the takeover gate (§2.8 step 1) finds no live holder;
//!   bumps the epoch (any target still running with the old one is fenced), marks the
//!   member Current and writes the `forced` audit entry.
//! - Force-current online ([`ReplicatedVolume::force_current`]): the running target
//!   itself, only while it serves nothing (still gathering at start, or every Current
//!   replica away): one CAS marks the member Current, demotes the other Current members
//!   to Stale from the forced one's staleSinceIo (so everything it may lack is suspect
//!   on them and rebuilt from it), and writes `forced`; the start loop or the re-open
//!   loop (rejoin.rs) then serves from it. The epoch stays: this instance is the holder.
//!
//! Invariants: every change is one CAS of the epoch holder (force: of the CLI with the
//! gate passed), made under the volume's membership lock, so it never races an eviction
//! or readmission.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::VolumeError;
use crate::membership::{unix_now, Cas, Forced, Member, MemberState, MembershipStore, Record};
use crate::volume::{cas_store, host_name, pid_alive, read_store, ReplicatedVolume, Target};
use crate::wire::{self, Op, Role};

impl ReplicatedVolume {
    /// Adds the replica at `address` as a New member; it becomes Current after its full
    /// copy (watch `status`). Refused if the address or its replica id is a member.
    pub async fn add_replica(&self, address: &str) -> Result<Member, VolumeError> {
        let inner = &self.inner;
        let _g = inner.evict.lock().await;
        if self.is_fenced() {
            return Err(VolumeError::Fenced {
                record: 0,
                ours: inner.epoch,
            });
        }
        let rec = self.record();
        if rec.members.iter().any(|m| m.address == address) {
            return Err(VolumeError::Refused(format!(
                "{address} is a member already"
            )));
        }
        let x0 = inner.seq.lock().next;
        let (conn, open) = self.open_replica(address, Role::New, x0).await?;
        conn.close("identity probe of an added replica");
        if let Some(m) = rec.member(&open.id) {
            return Err(VolumeError::Refused(format!(
                "replica id {} at {address} is a member already (at {})",
                open.id, m.address
            )));
        }
        let m = Member {
            id: open.id.clone(),
            guid: open.guid.clone(),
            address: address.to_string(),
            state: MemberState::New,
            stale_since_io: 0,
            reason: "added".into(),
            at: unix_now(),
            epoch: inner.epoch,
        };
        let m2 = m.clone();
        self.change_record(move |r| {
            r.members.push(m2.clone());
            r.rf = r.members.len() as u32;
            r.drf = r.drf.max(r.rf);
            Ok(())
        })
        .await?;
        inner.added.lock().push(address.to_string());
        drop(_g);
        self.refresh_phase();
        tracing::info!(volume = %inner.cfg.name, replica = %m.id, address, "replica added (New)");
        Ok(m)
    }

    /// Removes member `id` (any state). Refused for the only Current replica, or when
    /// fewer than max(1, minCurrent) Current replicas would remain.
    pub async fn remove_replica(&self, id: &str) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let _g = inner.evict.lock().await;
        let (rec, m) = self.record_and_member(id)?;
        if m.state == MemberState::Current {
            let left = rec.current_ids().len() - 1;
            let min = rec.min_current.max(1) as usize;
            if left == 0 {
                return Err(VolumeError::Refused(format!(
                    "{id} is the only Current replica"
                )));
            }
            if left < min {
                return Err(VolumeError::Refused(format!(
                    "removing {id} would leave {left} Current replicas (minimum {min})"
                )));
            }
        }
        let idc = id.to_string();
        self.change_record(move |r| {
            r.members.retain(|x| x.id != idc);
            r.rf = r.members.len() as u32;
            r.drf = r.drf.min(r.rf);
            Ok(())
        })
        .await?;
        inner.added.lock().retain(|a| *a != m.address);
        let (gone, single) = {
            let mut q = inner.seq.lock();
            let gone: Vec<Target> = q.targets.iter().filter(|t| t.id == id).cloned().collect();
            q.targets.retain(|t| t.id != id);
            let cur: Vec<Target> = q.targets.iter().filter(|t| t.current).cloned().collect();
            let single =
                (cur.len() == 1 && m.state == MemberState::Current).then(|| cur[0].clone());
            if single.is_some() {
                q.wt_from = q.max_sent + 1;
            }
            (gone, single)
        };
        for t in gone {
            t.stats
                .failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            t.conn.close("removed from the volume");
        }
        if let Some(t) = single {
            // Single-copy write-through; the flush covers writes acked before it.
            let r = t
                .conn
                .call(Op::SetMode, wire::enc_u64s(&[1]), inner.cfg.t_evict)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "switching the last Current replica to write-through");
            } else if let Err(e) = t
                .conn
                .call(Op::Flush, Bytes::new(), inner.cfg.t_evict)
                .await
            {
                tracing::warn!(error = %e, "flush after switching to write-through");
            }
        }
        drop(_g);
        self.refresh_phase();
        tracing::info!(volume = %inner.cfg.name, replica = id, "replica removed");
        Ok(())
    }
}

impl ReplicatedVolume {
    /// The record as this instance holds it and member `id` of it.
    fn record_and_member(&self, id: &str) -> Result<(Record, Member), VolumeError> {
        let rec = self.record();
        let m = rec
            .member(id)
            .cloned()
            .ok_or_else(|| VolumeError::Refused(format!("no member {id}")))?;
        Ok((rec, m))
    }

    /// Online force-promotion (module docs). Refused without `accept_data_loss`, for a
    /// member that is Current already, and while Current replicas serve the volume
    /// (forcing then would serve a copy that missed acknowledged writes).
    pub async fn force_current(
        &self,
        id: &str,
        by: &str,
        accept_data_loss: bool,
    ) -> Result<Record, VolumeError> {
        let inner = &self.inner;
        if !accept_data_loss {
            return Err(VolumeError::Refused(format!(
                "forcing {id} Current may lose acknowledged writes held only by other replicas (give --accept-data-loss)"
            )));
        }
        let _g = inner.evict.lock().await;
        let (_, m) = self.record_and_member(id)?;
        if m.state == MemberState::Current {
            return Err(VolumeError::Refused(format!("{id} is Current already")));
        }
        let serving: Vec<String> = {
            let q = inner.seq.lock();
            q.targets
                .iter()
                .filter(|t| t.current && !t.conn.is_closed())
                .map(|t| t.id.clone())
                .collect()
        };
        let phase = inner.state.lock().phase;
        if !self.is_away()
            && (!serving.is_empty()
                || phase != crate::volume::Phase::Init && phase != crate::volume::Phase::Offline)
        {
            return Err(VolumeError::Refused(format!(
                "Current replicas {serving:?} serve the volume: forcing {id} would serve a copy that missed acknowledged writes (wait for its catch-up, or remove the unreachable members)"
            )));
        }
        // Its catch-up session, if one runs, ends: it rejoins as a Current member.
        let own: Vec<Target> = inner
            .seq
            .lock()
            .targets
            .iter()
            .filter(|t| t.id == id)
            .cloned()
            .collect();
        for t in &own {
            self.end_catch_up(t, "forced Current");
        }
        // The forced copy holds every write below its staleSinceIo; above it, anything.
        // The demoted members must treat all of that as suspect.
        let since = match (m.state, m.stale_since_io) {
            (MemberState::Stale, s) if s > 0 => s,
            _ => 1,
        };
        let (idc, byc, was) = (id.to_string(), by.to_string(), m.state);
        let epoch = inner.epoch;
        let r = self
            .change_record(move |r| {
                let now = unix_now();
                for x in r.members.iter_mut() {
                    if x.id == idc {
                        x.state = MemberState::Current;
                        x.stale_since_io = 0;
                        x.reason = format!("forced Current by {byc} (was {was:?})");
                    } else if x.state == MemberState::Current {
                        x.state = MemberState::Stale;
                        x.stale_since_io = since;
                        x.reason = format!("demoted: {idc} forced Current by {byc}");
                    } else {
                        continue;
                    }
                    x.at = now;
                    x.epoch = epoch;
                }
                r.clean_shutdown = false;
                r.forced = Some(Forced {
                    by: byc.clone(),
                    at: now,
                    member: idc.clone(),
                });
                Ok(())
            })
            .await?;
        *inner.forced.lock() = Some(id.to_string());
        tracing::warn!(volume = %inner.cfg.name, member = id, by, "forced Current on the running target");
        Ok(r)
    }
}

/// Offline force-promotion (design §2.10): marks member `id` Current in the record of
/// `store`, bumps the epoch and records who did it. Refused without `accept_data_loss`,
/// and while a holder is live: its process runs on this node, or it renewed within
/// `t_takeover`.
pub async fn force_current(
    store: Arc<dyn MembershipStore>,
    id: &str,
    by: &str,
    accept_data_loss: bool,
    t_takeover: Duration,
) -> Result<Record, VolumeError> {
    if !accept_data_loss {
        return Err(VolumeError::Refused(format!(
            "forcing {id} Current may lose acknowledged writes held only by other replicas (give --accept-data-loss)"
        )));
    }
    loop {
        let (rec, ver) = read_store(&store).await?;
        let m = rec
            .member(id)
            .ok_or_else(|| VolumeError::Refused(format!("no member {id}")))?;
        if let Some(h) = &rec.holder {
            let dead_local = h.node == host_name() && !pid_alive(h.pid);
            let expired = unix_now().saturating_sub(rec.renew_time) >= t_takeover.as_secs();
            if !dead_local && !expired {
                return Err(VolumeError::Refused(format!(
                    "target instance {} (pid {} on {}) holds the volume and renewed {} s ago: stop it first",
                    h.instance,
                    h.pid,
                    h.node,
                    unix_now().saturating_sub(rec.renew_time)
                )));
            }
        }
        let was = m.state;
        let mut r = rec.clone();
        r.epoch += 1;
        r.holder = None;
        r.clean_shutdown = false;
        let now = unix_now();
        let epoch = r.epoch;
        if let Some(x) = r.member_mut(id) {
            x.state = MemberState::Current;
            x.stale_since_io = 0;
            x.reason = format!("forced Current by {by} (was {was:?})");
            x.at = now;
            x.epoch = epoch;
        }
        r.forced = Some(Forced {
            by: by.to_string(),
            at: now,
            member: id.to_string(),
        });
        match cas_store(&store, ver, &r).await? {
            Cas::Ok(_) => {
                tracing::warn!(member = id, by, epoch, "forced Current");
                return Ok(r);
            }
            Cas::Conflict => continue,
        }
    }
}
