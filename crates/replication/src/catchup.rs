//! Catch-up and readmission of a Stale or New member (design §2.7).
//!
//! The target relays: it opens the member's session at X0 (from then on the member gets
//! every write), waits until every io below X0 completed, lists the source's blocks with
//! io > B and the member's suspect blocks with io in (B, X0), and copies their union from
//! the source to the member with the apply rule (`local io < X0 or incoming io > local`),
//! persisting a cursor `B:offset:X0` on the member as it goes (a resumed walk re-lists,
//! below the cursor, only the member's blocks written from the first session's X0 on). When the walk ends and the
//! member acked every live write sent to it, it flushes, records C, and the target CASes
//! it Current.
//!
//! Invariants: a member is readmitted only by a recorded CAS (S6) after a completed walk;
//! any failed live write to it aborts the catch-up (it stays Stale). Sends pause only for
//! the switch (while its outstanding writes drain, bounded by T_evict).
//!
//! Source blocks carry their exact io (the pool's `read_with_io`); a source that cannot
//! tell them tags them X0-1, which the apply rule treats as pre-session content.
//! Sub-block live writes: the member lists blocks they left partly stale (server
//! `Partial`); those are re-copied (merged on the member) after the walk and once more
//! with writes paused before readmission, which needs an empty list.
//! Missed snapshots are replayed (snapshot.rs) before the member joins the send set.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::client::ReplicaConn;
use crate::error::{ReplicaError, StoreError, VolumeError};
use crate::membership::{unix_now, Member, MemberState};
use crate::volume::{Progress, ReplicatedVolume, SessionStats, Target};
use crate::wire::{self, Op, Range, Role};

const CHUNK: u64 = 1 << 20;
const CURSOR_EVERY: u64 = 8 << 20;

/// Every CHANGED range of `conn` with io in (since, until].
pub(crate) async fn list_changed(
    conn: &ReplicaConn,
    since: u64,
    until: u64,
    t: Duration,
) -> Result<Vec<Range>, ReplicaError> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let body = wire::enc_u64s(&[since, until, from, 65_536]);
        let b = conn.call(Op::Changed, body, t).await?;
        let page = wire::dec_ranges(b).map_err(|e| ReplicaError::Failed {
            addr: conn.addr().into(),
            status: wire::Status::Invalid,
            msg: e.to_string(),
        })?;
        let Some(last) = page.last().copied() else {
            return Ok(out);
        };
        let full = page.len() >= 65_536;
        out.extend(page);
        if !full {
            return Ok(out);
        }
        from = last.offset + last.len;
    }
}

/// `B:offset[:X0]`.
fn parse_cursor(c: &str) -> Option<(u64, u64, Option<u64>)> {
    let mut it = c.split(':');
    let b = it.next()?.parse().ok()?;
    let o = it.next()?.parse().ok()?;
    let x = match it.next() {
        Some(x) => Some(x.parse().ok()?),
        None => None,
    };
    Some((b, o, x))
}

/// Sorted, merged `[start, end)` ranges.
pub(crate) fn union(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Background task: catches up every Stale/New member that is reachable, one at a time.
pub(crate) async fn catchup_loop(v: ReplicatedVolume) {
    let mut backoff: Vec<(String, Instant, Duration)> = Vec::new();
    loop {
        tokio::time::sleep(v.inner.cfg.ping).await;
        if v.is_fenced() {
            return;
        }
        if v.is_away() {
            // No source while the Current members are away.
            continue;
        }
        let rec = v.record();
        let busy: Vec<String> = v
            .inner
            .seq
            .lock()
            .targets
            .iter()
            .map(|t| t.address.clone())
            .collect();
        let todo: Vec<Member> = rec
            .members
            .iter()
            .filter(|m| m.state != MemberState::Current)
            .filter(|m| {
                v.inner.cfg.replicas.contains(&m.address)
                    || v.inner.added.lock().contains(&m.address)
            })
            .filter(|m| !busy.contains(&m.address))
            .cloned()
            .collect();
        for m in todo {
            if let Some((_, at, d)) = backoff.iter().find(|(a, _, _)| *a == m.address) {
                if at.elapsed() < *d {
                    continue;
                }
            }
            // Flap damping (design §2.6): a member evicted again soon waits longer.
            if !v.readmit_wait(&m.address).is_zero() {
                continue;
            }
            match catch_up(&v, &m).await {
                Ok(()) => backoff.retain(|(a, _, _)| *a != m.address),
                Err(e) => {
                    tracing::info!(replica = %m.address, error = %e, "catch-up not done");
                    // Flap damping: the retry delay doubles per failure (cap 5 min).
                    match backoff.iter_mut().find(|(a, _, _)| *a == m.address) {
                        Some(b) => {
                            b.1 = Instant::now();
                            b.2 = (b.2 * 2).min(Duration::from_secs(300));
                        }
                        None => backoff.push((m.address.clone(), Instant::now(), v.inner.cfg.ping)),
                    }
                }
            }
        }
    }
}

fn progress_of(v: &ReplicatedVolume, id: &str) -> Arc<Progress> {
    let mut p = v.inner.progress.lock();
    p.retain(|(x, _)| x != id);
    let n = Arc::new(Progress::default());
    p.push((id.to_string(), n.clone()));
    n
}

/// Catches up member `m` and readmits it.
pub(crate) async fn catch_up(v: &ReplicatedVolume, m: &Member) -> Result<(), VolumeError> {
    let inner = &v.inner;
    let t = inner.cfg.t_evict * 5;
    let role = if m.state == MemberState::New {
        Role::New
    } else {
        Role::Stale
    };
    let x0_hint = inner.seq.lock().next;
    let (conn, open) = v.open_replica(&m.address, role, x0_hint).await?;
    let result = async {
        // Identity: a placeholder or another instance (new guid) means a full copy.
        let mut full = m.state == MemberState::New;
        if m.guid != open.guid || m.id != open.id {
            full = true;
            let (old_id, new_id, guid, epoch) = (
                m.id.clone(),
                open.id.clone(),
                open.guid.clone(),
                inner.epoch,
            );
            v.change_record(|r| {
                if let Some(x) = r.members.iter_mut().find(|x| x.id == old_id) {
                    x.id = new_id.clone();
                    x.guid = guid.clone();
                    x.state = MemberState::New;
                    x.reason = "new replica instance".into();
                    x.at = unix_now();
                    x.epoch = epoch;
                }
                Ok(())
            })
            .await?;
        }
        let id = open.id.clone();
        let base = if full {
            0
        } else {
            let mut b = open.checkpoint.min(m.stale_since_io.saturating_sub(1));
            if open.lost_tail {
                b = b.min(open.flush_point);
            }
            b
        };
        let bs = u64::from(open.block_size.max(512));
        // Missed snapshots first, before any live write reaches the member (snapshot.rs).
        let (base, known_snaps) = crate::snapshot::replay_missed(v, &conn, base, bs, t).await?;
        let prog = progress_of(v, &id);
        prog.running.store(true, Ordering::SeqCst);
        let stats = Arc::new(SessionStats::opened_at(v.now_ms()));
        // From X0 on the member receives every write.
        let x0 = {
            let mut q = inner.seq.lock();
            let x0 = q.max_sent + 1;
            q.targets.push(Target {
                address: m.address.clone(),
                id: id.clone(),
                conn: conn.clone(),
                current: false,
                stats: stats.clone(),
                block_size: bs,
            });
            x0
        };
        crate::snapshot::check_after_join(v, &known_snaps).await?;
        // Every io below X0 is applied on the source before it is read.
        let w0 = Instant::now();
        while inner.seq.lock().watermark() + 1 < x0 {
            if w0.elapsed() > Duration::from_secs(15) {
                return Err(VolumeError::Refused(
                    "writes before X0 did not settle".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Cursor `B:offset:X0` (X0 of the session that started the walk; a cursor of
        // an older build has no X0).
        let cursor = open
            .cursor
            .as_deref()
            .and_then(parse_cursor)
            .filter(|c| c.0 == base);
        let resume = cursor.map_or(0, |c| c.1);
        let first_x0 = cursor.and_then(|c| c.2).unwrap_or(x0);
        let src = pick_source(v, &[])
            .ok_or_else(|| VolumeError::Refused("no Current replica to catch up from".into()))?;
        let mut ranges: Vec<(u64, u64)> = list_changed(&src.conn, base, u64::MAX, t)
            .await?
            .into_iter()
            .map(|r| (r.offset, r.offset + r.len))
            .filter(|(_, e)| *e > resume)
            .map(|(s, e)| (s.max(resume), e))
            .collect();
        // The member's suspect blocks (io in (B, X0)) above the cursor; below it the
        // earlier sessions copied them already, but their live writes (io from the
        // first session's X0 on) may have left sub-block writes partly stale, so those
        // are walked again. Without a recorded X0 every suspect is walked.
        let below = match cursor.and_then(|c| c.2) {
            Some(fx) => list_changed(&conn, fx.saturating_sub(1), x0.saturating_sub(1), t).await?,
            None => Vec::new(),
        };
        let have_x0 = cursor.and_then(|c| c.2).is_some();
        ranges.extend(
            list_changed(&conn, base, x0.saturating_sub(1), t)
                .await?
                .into_iter()
                .map(|r| (r.offset, r.offset + r.len))
                .filter(|(_, e)| !have_x0 || *e > resume)
                .map(|(s, e)| if have_x0 { (s.max(resume), e) } else { (s, e) }),
        );
        ranges.extend(
            below
                .into_iter()
                .map(|r| (r.offset, r.offset + r.len))
                .filter(|(s, _)| *s < resume)
                .map(|(s, e)| (s, e.min(resume))),
        );
        let ranges: Vec<(u64, u64)> = union(ranges);
        let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        prog.total.store(total, Ordering::SeqCst);
        let walk = Walk {
            v,
            member: &conn,
            stats: &stats,
            prog: &prog,
            x0,
            bs,
            t,
            cursor_prefix: format!("{base}:"),
            cursor_suffix: format!(":{first_x0}"),
        };
        walk.copy(ranges, src).await?;
        // Blocks sub-block live writes left partly stale (server `Partial`); the last
        // pass runs with writes paused in `readmit`.
        sweep_partial(v, &conn, x0, bs, t, 4).await?;
        readmit(v, &conn, &id, &stats, x0, bs).await
    }
    .await;
    if let Some(p) = inner.progress.lock().iter().find(|(x, _)| *x == open.id) {
        p.1.running.store(false, Ordering::SeqCst);
    }
    if result.is_err() {
        inner
            .seq
            .lock()
            .targets
            .retain(|x| !Arc::ptr_eq(&x.conn, &conn) || x.current);
        conn.close("catch-up ended");
    }
    result
}

/// One catch-up walk's copy: chunks of the listed ranges read from a Current source and
/// applied to the member, [`PIPELINE`] at a time so that the source's read, both wire
/// transfers and the member's apply of different chunks overlap (one chunk at a time
/// left the disk idle most of the time: 0.11x its rate in bench/replication.sh).
///
/// Chunks complete in walk order (`buffered`), so the cursor, written after a completed
/// chunk, never claims one still in flight. When the source fails, the chunks not yet
/// completed (the failed one and those in flight behind it) are copied again from the
/// next Current source; a chunk applied twice is harmless (the apply rule keeps the
/// newer io).
struct Walk<'a> {
    v: &'a ReplicatedVolume,
    member: &'a Arc<ReplicaConn>,
    stats: &'a Arc<SessionStats>,
    prog: &'a Arc<Progress>,
    x0: u64,
    bs: u64,
    t: Duration,
    cursor_prefix: String,
    cursor_suffix: String,
}

/// Chunks of one walk in flight at once.
const PIPELINE: usize = 4;

/// Why a chunk was not copied.
enum ChunkError {
    /// The source's read failed: another Current replica takes over.
    Source(ReplicaError),
    /// The walk ends.
    Walk(VolumeError),
}

impl Walk<'_> {
    /// The chunks of `ranges` (sorted, disjoint): block aligned, at most [`CHUNK`], cut at
    /// the volume's end.
    fn chunks(&self, ranges: Vec<(u64, u64)>) -> impl Iterator<Item = (u64, u64)> {
        let (bs, size) = (self.bs, self.v.size());
        ranges.into_iter().flat_map(move |(s, e)| {
            let mut off = s / bs * bs;
            std::iter::from_fn(move || {
                if off >= e {
                    return None;
                }
                let n = (e - off).min(CHUNK).div_ceil(bs) * bs;
                let n = n.min(size.saturating_sub(off));
                if n == 0 {
                    return None;
                }
                let c = (off, n);
                off += n;
                Some(c)
            })
        })
    }

    async fn copy(&self, ranges: Vec<(u64, u64)>, mut src: Target) -> Result<(), VolumeError> {
        use futures::stream::{self, StreamExt};
        let started = Instant::now();
        let rate = self.v.inner.cfg.rebuild_rate.filter(|r| *r > 0);
        let mut rest = self.chunks(ranges);
        let mut redo: Vec<(u64, u64)> = Vec::new();
        let mut since_cursor = 0u64;
        let mut tried: Vec<String> = Vec::new();
        loop {
            // Chunks taken into the pipeline and not completed yet, in walk order.
            let taken = Mutex::new(std::collections::VecDeque::new());
            let failed = {
                let source = src.conn.clone();
                let mut pipe = stream::iter(redo.drain(..).chain(&mut rest))
                    .map(|c| {
                        taken.lock().push_back(c);
                        self.chunk(source.clone(), c)
                    })
                    .buffered(PIPELINE);
                loop {
                    match pipe.next().await {
                        None => break None,
                        Some(Err(ChunkError::Walk(e))) => return Err(e),
                        Some(Err(ChunkError::Source(e))) => break Some(e),
                        Some(Ok((off, n))) => {
                            taken.lock().pop_front();
                            self.prog.done.fetch_add(n, Ordering::SeqCst);
                            self.prog.sent.fetch_add(n, Ordering::SeqCst);
                            since_cursor += n;
                            if since_cursor >= CURSOR_EVERY {
                                since_cursor = 0;
                                let c = format!(
                                    "{}{}{}",
                                    self.cursor_prefix,
                                    off + n,
                                    self.cursor_suffix
                                );
                                self.member
                                    .call(Op::SetCursor, Bytes::from(c.into_bytes()), self.t)
                                    .await?;
                            }
                            if let Some(rate) = rate {
                                let due = Duration::from_secs_f64(
                                    self.prog.done.load(Ordering::SeqCst) as f64 / rate as f64,
                                );
                                if let Some(w) = due.checked_sub(started.elapsed()) {
                                    tokio::time::sleep(w).await;
                                }
                            }
                        }
                    }
                }
            };
            let Some(err) = failed else {
                return Ok(());
            };
            // Another Current replica takes over as the source.
            tracing::warn!(error = %err, "catch-up source failed");
            redo = taken.into_inner().into_iter().collect();
            tried.push(src.id.clone());
            self.v.member_failed(&src, &err).await;
            src = pick_source(self.v, &tried)
                .ok_or_else(|| VolumeError::Refused("no Current source left".into()))?;
        }
    }

    /// Copies one chunk from `source` to the member.
    async fn chunk(
        &self,
        source: Arc<ReplicaConn>,
        (off, n): (u64, u64),
    ) -> Result<(u64, u64), ChunkError> {
        if self.stats.failed.load(Ordering::SeqCst) || self.v.is_fenced() {
            return Err(ChunkError::Walk(VolumeError::Refused(
                "member session failed".into(),
            )));
        }
        let body = source
            .call(Op::ReadIo, wire::enc_u64s(&[off, n]), self.t)
            .await
            .map_err(ChunkError::Source)?;
        let (exact, ios, data) = wire::dec_read_io(body).map_err(|e| {
            ChunkError::Walk(VolumeError::Refused(format!("bad READ_IO reply: {e}")))
        })?;
        let bs = self.bs;
        let blocks: Vec<(u64, u64)> = (0..n / bs)
            .map(|i| {
                let io = if exact {
                    ios.get(i as usize).copied().unwrap_or(0)
                } else {
                    self.x0 - 1
                };
                (off + i * bs, io)
            })
            .collect();
        self.member
            .call(Op::Apply, wire::enc_apply(self.x0, &blocks, &data), self.t)
            .await
            .map_err(|e| ChunkError::Walk(e.into()))?;
        Ok((off, n))
    }
}

/// Re-copies, from a Current source, every block the member lists as partly written by
/// live writes (PARTIAL), for at most `passes` listings; true once it lists none.
async fn sweep_partial(
    v: &ReplicatedVolume,
    conn: &Arc<ReplicaConn>,
    x0: u64,
    bs: u64,
    t: Duration,
    passes: usize,
) -> Result<bool, VolumeError> {
    for _ in 0..passes {
        let b = conn.call(Op::Partial, wire::enc_u64s(&[65_536]), t).await?;
        let offs = wire::dec_u64_list(b)
            .map_err(|e| VolumeError::Refused(format!("bad PARTIAL reply: {e}")))?;
        if offs.is_empty() {
            return Ok(true);
        }
        let src = pick_source(v, &[])
            .ok_or_else(|| VolumeError::Refused("no Current replica to copy from".into()))?;
        for off in offs {
            let body = src
                .conn
                .call(Op::ReadIo, wire::enc_u64s(&[off, bs]), t)
                .await?;
            let (exact, ios, data) = wire::dec_read_io(body)
                .map_err(|e| VolumeError::Refused(format!("bad READ_IO reply: {e}")))?;
            let io = if exact {
                ios.first().copied().unwrap_or(0)
            } else {
                x0 - 1
            };
            conn.call(Op::Apply, wire::enc_apply(x0, &[(off, io)], &data), t)
                .await?;
        }
    }
    Ok(false)
}

fn pick_source(v: &ReplicatedVolume, not: &[String]) -> Option<Target> {
    v.inner
        .seq
        .lock()
        .targets
        .iter()
        .filter(|t| v.serves(t) && !t.conn.is_closed() && !not.contains(&t.id))
        .min_by_key(|t| t.conn.inflight())
        .cloned()
}

/// The switch: drain the member's writes with sends paused, flush it, record C, CAS it
/// Current, then let it count.
async fn readmit(
    v: &ReplicatedVolume,
    conn: &Arc<ReplicaConn>,
    id: &str,
    stats: &Arc<SessionStats>,
    x0: u64,
    bs: u64,
) -> Result<(), VolumeError> {
    let inner = &v.inner;
    let t = inner.cfg.t_evict;
    let _g = inner.evict.lock().await;
    let session: Option<Target> = {
        let mut q = inner.seq.lock();
        q.paused = true;
        q.targets
            .iter()
            .find(|x| Arc::ptr_eq(&x.conn, conn))
            .cloned()
    };
    let r = async {
        let w0 = Instant::now();
        while stats.outstanding.load(Ordering::SeqCst) > 0 {
            if w0.elapsed() > t * 2 {
                return Err(VolumeError::Refused("member writes did not drain".into()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if stats.failed.load(Ordering::SeqCst) {
            return Err(VolumeError::Refused(
                "a live write to the member failed".into(),
            ));
        }
        // No write is in flight to the member now: one pass empties its list.
        if !sweep_partial(v, conn, x0, bs, inner.cfg.t_evict * 5, 3).await? {
            return Err(VolumeError::Refused(
                "partly written blocks did not settle".into(),
            ));
        }
        let c = inner.seq.lock().max_sent;
        conn.call(Op::Flush, Bytes::new(), t).await?;
        conn.call(Op::Checkpoint, wire::enc_u64s(&[c]), t).await?;
        // Clearing the cursor commits a txg: C is durable with the data it covers.
        conn.call(Op::SetCursor, Bytes::new(), t).await?;
        if v.is_away() {
            // The Current members it was caught up against are away (rejoin.rs): they
            // may be demoted or reconciled without this session.
            return Err(VolumeError::Refused("Current replicas are away".into()));
        }
        let epoch = inner.epoch;
        let idc = id.to_string();
        let r = v
            .change_record(|r| {
                if let Some(m) = r.member_mut(&idc) {
                    m.state = MemberState::Current;
                    m.stale_since_io = 0;
                    m.reason = String::new();
                    m.at = unix_now();
                    m.epoch = epoch;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(VolumeError::Store(StoreError::Unavailable(m))) => {
                // Unknown outcome: the record may already say Current. The member counts
                // for completion from now on, so a failure of it is recorded before any
                // write completes without it; it serves no read until a stored change
                // confirms it (volume.rs `change_record`).
                tracing::warn!(volume = %inner.cfg.name, replica = %id, "readmission outcome unknown, the store did not answer ({m}): Current, confirmed by the next stored change");
                inner.unconfirmed.lock().push(id.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
    .await;
    let previously_single = {
        let mut q = inner.seq.lock();
        let prev: Vec<Target> = q.targets.iter().filter(|t| t.current).cloned().collect();
        if r.is_ok() {
            let mut found = false;
            for x in q.targets.iter_mut() {
                if Arc::ptr_eq(&x.conn, conn) {
                    x.current = true;
                    x.stats.answered_ms.store(v.now_ms(), Ordering::SeqCst);
                    found = true;
                }
            }
            if let (false, Some(mut t)) = (found, session) {
                // The session ended while the CAS was under way (its failure only ended a
                // catch-up then): the record may say Current, so it goes back as a
                // Current member with its closed connection, and the next write or ping
                // evicts it by CAS before anything completes without it.
                t.current = true;
                q.targets.push(t);
            }
        }
        q.paused = false;
        (prev.len() == 1).then(|| prev[0].clone())
    };
    v.inner_wake();
    if r.is_ok() {
        tracing::info!(volume = %inner.cfg.name, replica = %id, "readmitted Current");
        if let Some(p) = previously_single {
            // Two copies again: crash-safe acks suffice.
            let _ = p.conn.call(Op::SetMode, wire::enc_u64s(&[0]), t).await;
        }
        drop(_g);
        v.refresh_phase();
    }
    r
}
