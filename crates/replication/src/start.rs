//! Target start and restart recovery (design §2.8): fence every member with the new
//! epoch, gather, pick the source (intact Current replica with the highest maxIo),
//! reconcile the Current replicas after an unclean stop, record the demotions, serve.
//!
//! Invariants: nothing is served before [`ReplicatedVolume::ready`] reports a phase
//! other than Init; a Stale or New member never enters the send set as Current here; an
//! empty record over replicas holding data is refused without `accept_data_loss`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::ReplicaConn;
use crate::error::{ReplicaError, VolumeError};
use crate::membership::{unix_now, Member, MemberState};
use crate::volume::{join_all, Phase, ReplicatedVolume, SessionStats, Target};
use crate::wire::{self, Op, OpenReply, OpenReq, Role};

impl ReplicatedVolume {
    /// Connects and OPENs one replica with our epoch.
    pub(crate) async fn open_replica(
        &self,
        address: &str,
        role: Role,
        x0: u64,
    ) -> Result<(Arc<ReplicaConn>, OpenReply), ReplicaError> {
        let cfg = &self.inner.cfg;
        let conn = ReplicaConn::connect_with(
            address,
            cfg.key.as_ref(),
            cfg.tls.as_ref(),
            cfg.t_evict.max(Duration::from_secs(2)),
            crate::wire::VERSION,
        )
        .await?;
        let req = OpenReq {
            volume: cfg.name.clone(),
            size: self.size(),
            epoch: self.inner.epoch,
            instance: self.inner.instance.clone(),
            role,
            x0,
        };
        let r = conn.open(&req, Duration::from_secs(10)).await;
        if let Err(ReplicaError::Fenced { stored, .. }) = &r {
            self.fence(*stored);
        }
        Ok((conn, r?))
    }

    /// Start-up: fence, gather, pick the source, reconcile, record, serve (§2.8).
    pub(crate) async fn recover(&self, prev_clean: bool, lease_wait: bool) {
        let inner = &self.inner;
        let started = Instant::now();
        let mut first_fenced: Option<Instant> = None;
        loop {
            if self.is_fenced() || inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            match self
                .try_recover(prev_clean, lease_wait, &mut first_fenced, started)
                .await
            {
                Ok(true) => break,
                Ok(false) => {}
                Err(VolumeError::Fenced { .. }) => return,
                Err(VolumeError::Refused(m)) => {
                    tracing::error!(volume = %inner.cfg.name, "start refused: {m}");
                    *inner.refused.lock() = Some(m);
                    inner.state.lock().phase = Phase::Offline;
                    inner.ready_wake.notify_waiters();
                    return;
                }
                Err(e) => tracing::warn!(volume = %inner.cfg.name, error = %e, "start: retrying"),
            }
            {
                let mut s = inner.state.lock();
                if started.elapsed() > inner.cfg.gather_bound() && s.phase == Phase::Init {
                    s.phase = Phase::Offline;
                    inner.ready_wake.notify_waiters();
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        inner.start_info.lock().took = started.elapsed();
        self.set_phase();
        let me = self.clone();
        let t = tokio::spawn(async move { me.ping_loop().await });
        inner.tasks.lock().push(t);
        let me = self.clone();
        let t = tokio::spawn(async move { crate::catchup::catchup_loop(me).await });
        inner.tasks.lock().push(t);
    }

    /// One gather round; Ok(true) once serving.
    async fn try_recover(
        &self,
        prev_clean: bool,
        lease_wait: bool,
        first_fenced: &mut Option<Instant>,
        started: Instant,
    ) -> Result<bool, VolumeError> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let rec = inner.state.lock().record.clone();
        let x0 = inner.seq.lock().next;
        let role_of = |addr: &str| {
            rec.members
                .iter()
                .find(|m| m.address == addr)
                .map_or(Role::New, |m| match m.state {
                    MemberState::Current => Role::Current,
                    MemberState::Stale => Role::Stale,
                    MemberState::New => Role::New,
                })
        };
        let opens = cfg.replicas.iter().map(|a| {
            let role = role_of(a);
            async move { (a.clone(), self.open_replica(a, role, x0).await) }
        });
        let results = join_all(opens).await;
        if self.is_fenced() {
            return Err(VolumeError::Fenced {
                record: 0,
                ours: inner.epoch,
            });
        }
        let mut answered: Vec<(String, Arc<ReplicaConn>, OpenReply)> = Vec::new();
        for (a, r) in results {
            match r {
                Ok((c, o)) => answered.push((a, c, o)),
                Err(
                    e @ (ReplicaError::VersionMismatch { .. } | ReplicaError::AuthFailed { .. }),
                ) => {
                    tracing::error!(error = %e, "replica refused");
                }
                Err(e) => tracing::warn!(error = %e, "replica not reachable"),
            }
        }
        if !answered.is_empty() && first_fenced.is_none() {
            *first_fenced = Some(Instant::now());
        }
        let close_all = |answered: &[(String, Arc<ReplicaConn>, OpenReply)]| {
            for (_, c, _) in answered {
                c.close("gather round ended");
            }
        };
        // A brand-new record: the answering replicas become its members.
        if rec.members.is_empty() {
            if answered.is_empty() {
                return Ok(false);
            }
            let holds_data = answered
                .iter()
                .any(|(_, _, o)| !o.created && (o.max_io > 0 || o.checkpoint > 0));
            if holds_data && !cfg.accept_data_loss {
                close_all(&answered);
                return Err(VolumeError::Refused(
                    "the membership record is empty but replicas already hold data of this volume (give --accept-data-loss to start over them)".into(),
                ));
            }
            if answered.len() < cfg.replicas.len() && started.elapsed() < cfg.gather_bound() {
                close_all(&answered);
                return Ok(false);
            }
            let now = unix_now();
            let epoch = inner.epoch;
            let members: Vec<Member> = cfg
                .replicas
                .iter()
                .map(|a| match answered.iter().find(|(x, _, _)| x == a) {
                    Some((_, _, o)) => Member {
                        id: o.id.clone(),
                        guid: o.guid.clone(),
                        address: a.clone(),
                        // Over old data (accepted loss) every copy but one must be rebuilt.
                        state: MemberState::Current,
                        stale_since_io: 0,
                        reason: String::new(),
                        at: now,
                        epoch,
                    },
                    None => Member {
                        id: format!("unknown@{a}"),
                        guid: String::new(),
                        address: a.clone(),
                        state: MemberState::New,
                        stale_since_io: 0,
                        reason: "not reachable at creation".into(),
                        at: now,
                        epoch,
                    },
                })
                .collect();
            let mut members = members;
            if holds_data {
                // Keep the copy with the highest io Current; the others get a full copy.
                let best = answered
                    .iter()
                    .max_by_key(|(_, _, o)| o.max_io)
                    .map(|(a, _, _)| a.clone());
                for m in &mut members {
                    if Some(&m.address) != best.as_ref() && m.state == MemberState::Current {
                        m.state = MemberState::New;
                        m.reason = "start over existing data (accepted loss)".into();
                    }
                }
            }
            self.change_record(|r| {
                r.members = members.clone();
                r.rf = members.len() as u32;
                Ok(())
            })
            .await?;
            self.install(answered, 0).await;
            return Ok(true);
        }
        // Existing record: classify the answers.
        let mut intact: Vec<(String, Arc<ReplicaConn>, OpenReply)> = Vec::new();
        let mut lost: Vec<(String, Arc<ReplicaConn>, OpenReply)> = Vec::new();
        let mut others: Vec<(String, Arc<ReplicaConn>, OpenReply)> = Vec::new();
        for (a, c, o) in answered {
            match rec.member(&o.id) {
                Some(m) if m.state == MemberState::Current && m.guid == o.guid => {
                    if o.lost_tail {
                        lost.push((a, c, o));
                    } else {
                        intact.push((a, c, o));
                    }
                }
                _ => others.push((a, c, o)),
            }
        }
        let current_n = rec.current_ids().len();
        if intact.is_empty() && !lost.is_empty() && lost.len() == current_n {
            // Whole-volume power loss (S1): the highest flush point is the source.
            intact = std::mem::take(&mut lost);
        }
        let all_current_answered = intact.len() + lost.len() == current_n;
        if intact.is_empty() || (!all_current_answered && started.elapsed() < cfg.gather_bound()) {
            close_all(&intact);
            close_all(&lost);
            close_all(&others);
            return Ok(false);
        }
        let mut waited = Duration::ZERO;
        if lease_wait {
            if let Some(t0) = first_fenced {
                let wait = cfg.lease_wait();
                let left = wait.saturating_sub(t0.elapsed());
                waited = left;
                tokio::time::sleep(left).await;
            }
        }
        // Source: the intact Current replica with the highest maxIo.
        intact.sort_by_key(|(_, _, o)| std::cmp::Reverse(o.max_io));
        let reconciled = if prev_clean {
            None
        } else {
            Some(self.reconcile(&intact).await?)
        };
        {
            let mut si = inner.start_info.lock();
            si.lease_wait = waited;
            si.reconciled_bytes = reconciled;
        }
        // Survivors stable before anyone is demoted (the flush barrier).
        for (_, c, _) in &intact {
            c.call(Op::Flush, Bytes::new(), cfg.t_evict).await?;
        }
        let intact_ids: Vec<String> = intact.iter().map(|(_, _, o)| o.id.clone()).collect();
        let io_base = inner.seq.lock().next;
        let lost_f: Vec<(String, u64)> = lost
            .iter()
            .map(|(_, _, o)| (o.id.clone(), o.flush_point))
            .collect();
        let seen: Vec<(String, String, String)> = intact
            .iter()
            .chain(lost.iter())
            .chain(others.iter())
            .map(|(a, _, o)| (a.clone(), o.id.clone(), o.guid.clone()))
            .collect();
        let epoch = inner.epoch;
        self.change_record(|r| {
            let now = unix_now();
            for m in r.members.iter_mut() {
                if m.state == MemberState::Current && !intact_ids.contains(&m.id) {
                    m.state = MemberState::Stale;
                    m.stale_since_io = match lost_f.iter().find(|(id, _)| *id == m.id) {
                        Some((_, f)) => f + 1,
                        None => io_base,
                    };
                    m.reason = if lost_f.iter().any(|(id, _)| *id == m.id) {
                        "lost its unflushed tail".into()
                    } else {
                        "not reachable at target start".into()
                    };
                    m.at = now;
                    m.epoch = epoch;
                }
            }
            for (a, id, guid) in &seen {
                match r.members.iter_mut().find(|m| m.id == *id) {
                    Some(m) => {
                        m.address = a.clone();
                        if m.guid != *guid {
                            m.guid = guid.clone();
                            m.state = MemberState::New;
                            m.reason = "new replica instance (guid changed)".into();
                            m.at = now;
                            m.epoch = epoch;
                        }
                    }
                    None => {
                        // A placeholder for an address unreachable at creation is replaced.
                        r.members
                            .retain(|m| !(m.address == *a && m.guid.is_empty()));
                        r.members.push(Member {
                            id: id.clone(),
                            guid: guid.clone(),
                            address: a.clone(),
                            state: MemberState::New,
                            stale_since_io: 0,
                            reason: "new member".into(),
                            at: now,
                            epoch,
                        });
                    }
                }
            }
            Ok(())
        })
        .await?;
        close_all(&lost);
        close_all(&others);
        self.install(intact, 0).await;
        Ok(true)
    }

    /// Puts the Current replicas into the send set and sets single-copy write-through.
    async fn install(&self, current: Vec<(String, Arc<ReplicaConn>, OpenReply)>, _x: u64) {
        let rec = self.inner.state.lock().record.clone();
        let mut q_targets = Vec::new();
        for (a, c, o) in current {
            if rec
                .member(&o.id)
                .is_some_and(|m| m.state == MemberState::Current)
            {
                q_targets.push(Target {
                    address: a.clone(),
                    id: o.id.clone(),
                    conn: c,
                    current: true,
                    stats: Arc::new(SessionStats {
                        answered_ms: self.now_ms().into(),
                        ..SessionStats::opened_at(self.now_ms())
                    }),
                    block_size: u64::from(o.block_size.max(512)),
                });
            } else {
                c.close("not Current");
            }
            self.inner.state.lock().ids.push((a, o.id));
        }
        if q_targets.len() == 1 {
            let _ = q_targets[0]
                .conn
                .call(Op::SetMode, wire::enc_u64s(&[1]), self.inner.cfg.t_evict)
                .await;
        }
        self.inner.seq.lock().targets = q_targets;
        // A member forced Current while the start gathered is Current like any other now.
        *self.inner.forced.lock() = None;
    }

    /// Makes the intact Current replicas identical (§2.8 step 6): every block changed
    /// above L = min C on any of them is rewritten from the source as a new write.
    pub(crate) async fn reconcile(
        &self,
        intact: &[(String, Arc<ReplicaConn>, OpenReply)],
    ) -> Result<u64, VolumeError> {
        if intact.len() < 2 {
            return Ok(0);
        }
        let t = self.inner.cfg.t_evict * 5;
        let l = intact
            .iter()
            .map(|(_, _, o)| o.checkpoint)
            .min()
            .unwrap_or(0);
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (_, c, _) in intact {
            for r in crate::catchup::list_changed(c, l, u64::MAX, t).await? {
                ranges.push((r.offset, r.offset + r.len));
            }
        }
        let ranges = crate::catchup::union(ranges);
        let src = &intact[0].1;
        let mut bytes = 0u64;
        for (s, e) in ranges {
            let mut off = s;
            while off < e {
                let n = (e - off).min(1 << 20);
                let data = src.call(Op::Read, wire::enc_u64s(&[off, n]), t).await?;
                let io = {
                    let mut q = self.inner.seq.lock();
                    let io = q.next;
                    q.next += 1;
                    q.max_sent = io;
                    io
                };
                for (_, c, _) in intact {
                    c.call(Op::Write, wire::enc_write(off, io, &data), t)
                        .await?;
                }
                bytes += n;
                off += n;
            }
        }
        tracing::info!(volume = %self.inner.cfg.name, bytes, "reconciled Current replicas");
        Ok(bytes)
    }
}
