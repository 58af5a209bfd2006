//! Eviction (design §2.6): a Current member that errs, disconnects or lags beyond
//! T_evict leaves the Current set by a recorded CAS, after a flush barrier on the
//! survivors, before any write completes without it; a catching-up member that fails
//! only leaves the send set.
//!
//! Invariants: an eviction below max(1, minCurrent) survivors is refused (IO stays held,
//! then BUSY; unreachable members raise `away`, rejoin.rs); while the store is
//! unreachable the eviction keeps retrying with IO held up to T_hold, and is cancelled
//! for a member whose connection then answered every request it was sent OK (late
//! replies included, client.rs `answered_all`) and a new flush: it holds every write,
//! so the writes complete with it, as if it had never been slow.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{ReplicaError, StoreError, VolumeError};
use crate::membership::{unix_now, MemberState};
use crate::volume::{join_all, ReplicatedVolume, Target};
use crate::wire::{self, Op};

impl ReplicatedVolume {
    /// A member's request failed: a Current one is evicted; a catching-up one leaves
    /// the send set (its catch-up restarts later).
    pub(crate) async fn member_failed(&self, t: &Target, e: &ReplicaError) -> bool {
        if let ReplicaError::Fenced { stored, .. } = e {
            self.fence(*stored);
            return false;
        }
        if t.current {
            self.evict(&t.id, &e.to_string()).await.is_ok()
        } else {
            self.end_catch_up(t, "catch-up session failed");
            true
        }
    }

    /// Ends catching-up member `t`'s session: it leaves the send set and its catch-up
    /// restarts later from its own checkpoint.
    pub(crate) fn end_catch_up(&self, t: &Target, why: &str) {
        t.stats.failed.store(true, Ordering::SeqCst);
        self.inner
            .seq
            .lock()
            .targets
            .retain(|x| !Arc::ptr_eq(&x.conn, &t.conn));
        t.conn.close(why);
    }

    /// Evicts Current member `id` (§2.6): flush barrier on the survivors, CAS to Stale,
    /// close its session; refused below max(1, minCurrent). Ok once it is not Current.
    pub(crate) async fn evict(&self, id: &str, why: &str) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let _g = inner.evict.lock().await;
        if inner.stopping.load(Ordering::SeqCst) {
            return Err(VolumeError::Refused("the target is stopping".into()));
        }
        if self.is_away() {
            return Err(VolumeError::Refused(
                "Current replicas are away; waiting for them to answer".into(),
            ));
        }
        // New commands wait in the LU while the eviction is recorded.
        let _held = inner.hold_enter();
        let start = Instant::now();
        let mut gone: Vec<String> = vec![id.to_string()];
        loop {
            let (cur, survivors, since) = {
                let q = inner.seq.lock();
                let cur: Vec<Target> = q.targets.iter().filter(|t| t.current).cloned().collect();
                let surv: Vec<Target> = cur
                    .iter()
                    .filter(|t| !gone.contains(&t.id))
                    .cloned()
                    .collect();
                let since = [q.issued.first(), q.inflight.first()]
                    .into_iter()
                    .flatten()
                    .min()
                    .copied()
                    .unwrap_or(q.next);
                (cur, surv, since)
            };
            gone.retain(|g| cur.iter().any(|t| t.id == *g));
            if gone.is_empty() {
                return Ok(());
            }
            let min = inner.cfg.min_current_n();
            if survivors.len() < min {
                // Unreachable, not erring: wait for them to answer again (rejoin.rs).
                let away = cur
                    .iter()
                    .any(|t| gone.contains(&t.id) && self.unreachable(t));
                if away {
                    self.enter_outage(since, &gone);
                }
                return Err(VolumeError::Refused(format!(
                    "evicting {gone:?} would leave {} Current replicas (minimum {min})",
                    survivors.len()
                )));
            }
            // Flush barrier: survivors' stable data covers whatever the evicted hold.
            let flushes = survivors.iter().map(|t| {
                let t = t.clone();
                async move {
                    (
                        t.id.clone(),
                        t.conn
                            .call(Op::Flush, Bytes::new(), inner.cfg.t_evict)
                            .await,
                    )
                }
            });
            let mut more = Vec::new();
            for (sid, r) in join_all(flushes).await {
                match r {
                    Ok(_) => {}
                    Err(ReplicaError::Fenced { stored, .. }) => {
                        self.fence(stored);
                        return Err(VolumeError::Fenced {
                            record: stored,
                            ours: inner.epoch,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(replica = %sid, error = %e, "flush barrier failed");
                        more.push(sid);
                    }
                }
            }
            if !more.is_empty() {
                gone.extend(more);
                continue;
            }
            // The CAS; with the store unreachable keep trying while IO is held.
            let epoch = inner.epoch;
            let why = why.to_string();
            let mut ids = gone.clone();
            let r = loop {
                let r = self
                    .change_record(|r| {
                        let now = unix_now();
                        for m in r.members.iter_mut() {
                            if ids.contains(&m.id) && m.state == MemberState::Current {
                                m.state = MemberState::Stale;
                                m.stale_since_io = since;
                                m.reason = why.clone();
                                m.at = now;
                                m.epoch = epoch;
                            }
                        }
                        Ok(())
                    })
                    .await;
                match r {
                    Err(VolumeError::Store(StoreError::Unavailable(m)))
                        if start.elapsed() < inner.cfg.t_hold =>
                    {
                        tracing::warn!("eviction waits for the store: {m}");
                        // A member that was only slow may answer first: then it holds
                        // every write it was sent and its eviction is cancelled.
                        let back = self.answering_again(&ids).await;
                        if !back.is_empty() {
                            inner
                                .evictions_cancelled
                                .fetch_add(back.len() as u64, Ordering::Relaxed);
                            tracing::warn!(volume = %inner.cfg.name, members = ?back, "eviction cancelled: the member answered every request before the store did");
                            ids.retain(|g| !back.contains(g));
                            if ids.is_empty() {
                                return Ok(());
                            }
                            continue;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    r => break r,
                }
            };
            r?;
            gone = ids;
            tracing::warn!(volume = %inner.cfg.name, members = ?gone, since, "evicted (recorded Stale)");
            let (closed, single) = {
                let mut q = inner.seq.lock();
                let closed: Vec<Target> = q
                    .targets
                    .iter()
                    .filter(|t| gone.contains(&t.id))
                    .cloned()
                    .collect();
                q.targets.retain(|t| !gone.contains(&t.id));
                let cur: Vec<Target> = q.targets.iter().filter(|t| t.current).cloned().collect();
                let single = (cur.len() == 1).then(|| cur[0].clone());
                if single.is_some() {
                    q.wt_from = q.max_sent + 1;
                }
                (closed, single)
            };
            {
                let mut ev = inner.evictions.lock();
                for t in &closed {
                    ev.push((t.address.clone(), Instant::now()));
                }
            }
            for t in closed {
                t.conn.close("evicted");
            }
            if let Some(t) = single {
                // Single-copy write-through; the flush covers writes acked before it.
                let r = t
                    .conn
                    .call(Op::SetMode, wire::enc_u64s(&[1]), inner.cfg.t_evict)
                    .await;
                let r = match r {
                    Ok(_) => {
                        t.conn
                            .call(Op::Flush, Bytes::new(), inner.cfg.t_evict)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "switching the last Current replica to write-through");
                }
            }
            drop(_g);
            self.set_phase();
            return Ok(());
        }
    }

    /// The members of `ids` whose connection answered every request it was sent OK (the
    /// ones that timed out included) and that answer a flush now: they hold every write
    /// sent to them, stable as far as they acked it.
    async fn answering_again(&self, ids: &[String]) -> Vec<String> {
        let targets: Vec<Target> = {
            let q = self.inner.seq.lock();
            q.targets
                .iter()
                .filter(|t| t.current && ids.contains(&t.id))
                .cloned()
                .collect()
        };
        let mut back = Vec::new();
        for t in targets {
            if !t.conn.answered_all() {
                continue;
            }
            let sent = self.now_ms();
            let flushed = t
                .conn
                .call(Op::Flush, Bytes::new(), self.inner.cfg.t_evict)
                .await
                .is_ok();
            if flushed && t.conn.answered_all() {
                t.stats.answered_ms.fetch_max(sent, Ordering::SeqCst);
                back.push(t.id.clone());
            }
        }
        back
    }
}
