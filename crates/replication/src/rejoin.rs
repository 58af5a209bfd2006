//! Whole-set outage: every Current replica (or, with `strict`, too many of them to keep
//! minCurrent) is unreachable at once, so no eviction can be recorded (design §2.6 step
//! 3) and no write may complete. Design §2.6 ends such a wait when "the member answers
//! everything first: cancel the eviction"; this module is that path.
//!
//! Owns: the [`Outage`] (raised by `evict` when it is refused over unreachable members)
//! and the task that re-opens the Current members with backoff.
//!
//! Invariants:
//! - While `away` is raised nothing is sent to any replica as a write, every IO answers
//!   BUSY, and the LU holds new commands (T_hold, then BUSY): no write is acknowledged
//!   without every Current replica, and no write failed to the initiator is sent again.
//! - Re-opening uses this instance's epoch: a member that stores a higher one answers
//!   FENCED and this instance stops. Each OPEN drops the member's older sessions and
//!   waits for their writes in progress (server `apply_gate`), so what it lists after the
//!   OPEN cannot change under it.
//! - A member counts as Current again only if it is *intact*: same id and guid as the
//!   record, no lost tail, and its stored epoch before the OPEN is ours (it was opened by
//!   this instance and kept that state; a lower one means its pool went back in time).
//! - Before IO resumes, the intact members are reconciled (every block changed above
//!   their lowest checkpoint is rewritten from the one with the highest maxIo), because
//!   writes failed in the outage may have reached some of them only; and every Current
//!   member not intact is demoted by a recorded CAS after a flush barrier on the intact
//!   ones (S6). Fewer than max(1, minCurrent) intact: keep waiting; a member that never
//!   answers is demoted after T_gather once enough others are back (failure table §4).
//!
//! Cancellation: the task is in `Inner::tasks` (aborted on stop or crash); dropping it
//! drops the LU hold. A round's connections that do not become the send set are closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::ReplicaConn;
use crate::error::VolumeError;
use crate::membership::{unix_now, MemberState};
use crate::volume::{read_store, ReplicatedVolume, SessionStats, Target};
use crate::wire::{self, Op, OpenReply, Role};

/// Longest wait between two re-open rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An outage in progress.
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    /// First io the away members may lack (the lowest unfinished io when it began).
    since: u64,
    /// When it began (T_gather for members that never answer runs from here).
    at: Instant,
}

type Opened = (String, Arc<ReplicaConn>, OpenReply);

impl ReplicatedVolume {
    /// Whether member `t` looks unreachable (as opposed to answering with errors): its
    /// connection closed, or nothing sent to it in the last T_evict was answered.
    pub(crate) fn unreachable(&self, t: &Target) -> bool {
        let silent = self
            .now_ms()
            .saturating_sub(t.stats.answered_ms.load(Ordering::SeqCst));
        t.conn.is_closed() || silent >= self.inner.cfg.t_evict.as_millis() as u64
    }

    /// Starts an outage (once): closes every Current session so nothing more goes out on
    /// them, holds the LU, and starts re-opening the members.
    pub(crate) fn enter_outage(&self, since: u64, members: &[String]) {
        let inner = &self.inner;
        {
            let mut o = inner.outage.lock();
            if o.is_some() || self.is_fenced() || inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            *o = Some(Outage {
                since,
                at: Instant::now(),
            });
            inner.away.store(true, Ordering::SeqCst);
        }
        tracing::error!(
            volume = %inner.cfg.name,
            away = ?members,
            since,
            "Current replicas unreachable and no eviction possible: IO held until they answer"
        );
        let current: Vec<Target> = inner
            .seq
            .lock()
            .targets
            .iter()
            .filter(|t| t.current)
            .cloned()
            .collect();
        for t in current {
            t.conn.close("Current replicas away");
        }
        self.inner_wake();
        self.refresh_phase();
        let hold = inner.hold_enter();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let _hold = hold;
            me.rejoin_loop().await;
        });
        inner.tasks.lock().push(task);
    }

    async fn rejoin_loop(&self) {
        let inner = &self.inner;
        let mut delay = inner.cfg.ping.min(Duration::from_millis(500));
        loop {
            tokio::time::sleep(delay).await;
            if self.is_fenced() || inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            match self.rejoin_round().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(VolumeError::Fenced { .. }) => return,
                Err(e) => tracing::warn!(volume = %inner.cfg.name, error = %e, "re-open round"),
            }
            if self.is_fenced() {
                return;
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// One round: re-open every Current member; Ok(true) once IO resumed.
    async fn rejoin_round(&self) -> Result<bool, VolumeError> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let Some(outage) = inner.outage.lock().clone() else {
            return Ok(true);
        };
        if let Ok((rec, _)) = read_store(&inner.store).await {
            if rec.epoch > inner.epoch {
                self.fence(rec.epoch);
                return Err(VolumeError::Fenced {
                    record: rec.epoch,
                    ours: inner.epoch,
                });
            }
        }
        // Writes sent before the outage end on their closed sessions (fast).
        let t0 = Instant::now();
        while !inner.seq.lock().inflight.is_empty() {
            if t0.elapsed() > cfg.t_evict * 2 {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rec = inner.state.lock().record.clone();
        let current: Vec<_> = rec
            .members
            .iter()
            .filter(|m| m.state == MemberState::Current)
            .cloned()
            .collect();
        let x0 = inner.seq.lock().next;
        // A stopped replica accepts TCP but never answers: bound the round.
        let bound = cfg.t_evict * 2 + Duration::from_secs(2);
        let opens = current.iter().map(|m| async move {
            let r =
                tokio::time::timeout(bound, self.open_replica(&m.address, Role::Current, x0)).await;
            (m.clone(), r)
        });
        let results = crate::volume::join_all(opens).await;
        if self.is_fenced() {
            return Err(VolumeError::Fenced {
                record: 0,
                ours: inner.epoch,
            });
        }
        let mut intact: Vec<Opened> = Vec::new();
        let mut lost: Vec<Opened> = Vec::new();
        // Answered but not usable as Current (reason).
        let mut other: Vec<(Opened, String)> = Vec::new();
        for (m, r) in results {
            let (conn, o) = match r {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::info!(replica = %m.address, error = %e, "still away");
                    continue;
                }
                Err(_) => {
                    tracing::info!(replica = %m.address, "still away (OPEN timed out)");
                    continue;
                }
            };
            let x = (m.address.clone(), conn, o);
            let forced = inner.forced.lock().as_deref() == Some(m.id.as_str());
            if forced && x.2.id == m.id && x.2.guid == m.guid {
                // Forced Current by the operator (members.rs): taken as it is.
                intact.push(x);
            } else if x.2.id != m.id || x.2.guid != m.guid {
                other.push((x, "another replica instance answered".into()));
            } else if x.2.prev_epoch != inner.epoch {
                let why = format!(
                    "came back with epoch {} (ours {}): its pool went back in time",
                    x.2.prev_epoch, inner.epoch
                );
                other.push((x, why));
            } else if x.2.lost_tail {
                lost.push(x);
            } else {
                intact.push(x);
            }
        }
        let close_all = |v: &[Opened]| {
            for (_, c, _) in v {
                c.close("re-open round ended");
            }
        };
        let close_other = |v: &[(Opened, String)]| {
            for ((_, c, _), _) in v {
                c.close("not Current");
            }
        };
        if intact.is_empty() && !lost.is_empty() && lost.len() == current.len() {
            // Every Current member lost its unflushed tail (whole-volume power loss, S1):
            // the highest flush point is the source.
            intact = std::mem::take(&mut lost);
        }
        let answered = intact.len() + lost.len() + other.len();
        let min = cfg.min_current_n();
        let wait_more = answered < current.len() && outage.at.elapsed() < cfg.t_gather;
        if intact.len() < min || wait_more {
            close_all(&intact);
            close_all(&lost);
            close_other(&other);
            return Ok(false);
        }
        let r = self.resume(outage, intact, &lost, &other).await;
        close_all(&lost);
        close_other(&other);
        r.map(|()| true)
    }

    /// Reconciles the intact members, records the demotion of the others, installs the
    /// intact ones as the Current send set and ends the outage.
    async fn resume(
        &self,
        outage: Outage,
        mut intact: Vec<Opened>,
        lost: &[Opened],
        other: &[(Opened, String)],
    ) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let fail = |intact: &[Opened]| {
            for (_, c, _) in intact {
                c.close("re-open round failed");
            }
        };
        // One membership change at a time (a readmission checks `away` under it).
        let _g = inner.evict.lock().await;
        intact.sort_by_key(|(_, _, o)| std::cmp::Reverse(o.max_io));
        // Writes failed in the outage may sit on some members only.
        let bytes = match self.reconcile(&intact).await {
            Ok(b) => b,
            Err(e) => {
                fail(&intact);
                return Err(e);
            }
        };
        // Flush barrier: the intact members' stable data covers the demoted ones.
        for (_, c, _) in &intact {
            if let Err(e) = c.call(Op::Flush, Bytes::new(), cfg.t_evict).await {
                fail(&intact);
                return Err(e.into());
            }
        }
        let intact_ids: Vec<String> = intact.iter().map(|(_, _, o)| o.id.clone()).collect();
        let demoted: Vec<String> = inner
            .state
            .lock()
            .record
            .members
            .iter()
            .filter(|m| m.state == MemberState::Current && !intact_ids.contains(&m.id))
            .map(|m| m.id.clone())
            .collect();
        if !demoted.is_empty() {
            let lost_f: Vec<(String, u64)> = lost
                .iter()
                .map(|(_, _, o)| (o.id.clone(), o.flush_point))
                .collect();
            let reasons: Vec<(String, String)> = other
                .iter()
                .map(|((_, _, o), why)| (o.id.clone(), why.clone()))
                .collect();
            let epoch = inner.epoch;
            let since = outage.since;
            let r = self
                .change_record(|r| {
                    let now = unix_now();
                    for m in r.members.iter_mut() {
                        if m.state != MemberState::Current || intact_ids.contains(&m.id) {
                            continue;
                        }
                        m.state = MemberState::Stale;
                        let f = lost_f.iter().find(|(id, _)| *id == m.id);
                        m.stale_since_io = f.map_or(since, |(_, f)| (f + 1).min(since));
                        m.reason = match (f, reasons.iter().find(|(id, _)| *id == m.id)) {
                            (Some(_), _) => "lost its unflushed tail".into(),
                            (None, Some((_, why))) => why.clone(),
                            (None, None) => "did not answer after an outage".into(),
                        };
                        m.at = now;
                        m.epoch = epoch;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                // Store unreachable (IO stays held) or fenced.
                fail(&intact);
                return Err(e);
            }
            tracing::warn!(volume = %cfg.name, members = ?demoted, since, "demoted after an outage (recorded Stale)");
            let mut ev = inner.evictions.lock();
            for m in inner.state.lock().record.members.iter() {
                if demoted.contains(&m.id) {
                    ev.push((m.address.clone(), Instant::now()));
                }
            }
        }
        if intact.len() == 1 {
            // Single-copy write-through (a fresh session starts crash-safe).
            let c = &intact[0].1;
            let r = c.call(Op::SetMode, wire::enc_u64s(&[1]), cfg.t_evict).await;
            if let Err(e) = r {
                fail(&intact);
                return Err(e.into());
            }
        }
        let now = self.now_ms();
        let fresh: Vec<Target> = intact
            .iter()
            .map(|(a, c, o)| Target {
                address: a.clone(),
                id: o.id.clone(),
                conn: c.clone(),
                current: true,
                stats: Arc::new(SessionStats {
                    answered_ms: now.into(),
                    ..SessionStats::opened_at(now)
                }),
                block_size: u64::from(o.block_size.max(512)),
            })
            .collect();
        {
            let mut q = inner.seq.lock();
            let old: Vec<Target> = q.targets.iter().filter(|t| t.current).cloned().collect();
            for t in old {
                t.conn.close("replaced after an outage");
            }
            q.targets.retain(|t| !t.current);
            q.targets.extend(fresh);
            if intact.len() == 1 {
                q.wt_from = q.max_sent + 1;
            }
        }
        {
            let mut s = inner.state.lock();
            for (a, _, o) in &intact {
                if !s.ids.iter().any(|(x, id)| x == a && *id == o.id) {
                    s.ids.push((a.clone(), o.id.clone()));
                }
            }
        }
        {
            let mut o = inner.outage.lock();
            *o = None;
            inner.away.store(false, Ordering::SeqCst);
        }
        // A forced member is Current now; from here it is checked like any other.
        *inner.forced.lock() = None;
        tracing::warn!(
            volume = %cfg.name,
            members = ?intact_ids,
            reconciled_bytes = bytes,
            after = ?outage.at.elapsed(),
            "Current replicas answered again: IO resumes"
        );
        self.inner_wake();
        self.refresh_phase();
        Ok(())
    }
}
