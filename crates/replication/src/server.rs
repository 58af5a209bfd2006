//! The replica server (`cstor replica serve`): serves the volumes of one pool to targets
//! over the replica protocol (docs/format/replica-protocol.md).
//!
//! Owns: one entry per opened volume with its session generation; per connection, the
//! handshake, the session and the ordering of overlapping writes.
//!
//! Invariants:
//! - A connection must pass HELLO (same version) and, with a key, AUTH before anything.
//! - OPEN with an epoch below the stored one (or equal with another instance) is answered
//!   FENCED with the stored epoch; a higher one is made durable before the reply, and every
//!   other session of the volume is dropped: its pending replies are never sent, and its
//!   later requests get NOT_OPEN (the generation is re-checked before apply and before
//!   each reply).
//! - Writes and UNMAPs of one connection are applied in arrival order by its lane (the
//!   target sends them in io order, so the higher io wins per block on every replica),
//!   in batches of what arrived meanwhile, each batch settled once (group commit).
//! - A write is acknowledged only after its batch is crash-safe in the pool's intent log
//!   (in write-through mode: stable, the log flushed).
//!
//! Never: block the runtime (pool calls run on blocking threads).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::auth::{self, AuthKey, CLIENT_LABEL, SERVER_LABEL};
use crate::error::WireError;
use crate::store::{status_of, PoolAccess, ReplicaVolume};
use crate::wire::{self, Frame, Op, OpenReply, OpenReq, Role, Status, VERSION};

/// Read buffer of a connection after the handshake.
const READ_BUF: usize = 256 << 10;

/// Page size of CHANGED replies (ranges).
const CHANGED_PAGE_MAX: usize = 65_536;

/// A replica server over one pool.
#[derive(Debug, Clone)]
pub struct ReplicaServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<dyn PoolAccess>,
    key: Option<AuthKey>,
    replica_id: String,
    vols: Mutex<HashMap<String, Arc<VolEntry>>>,
    /// Raised by [`ReplicaServer::stop`]: every connection ends.
    stop: watch::Sender<bool>,
    /// TLS required on every connection (tls.rs), when set.
    tls: std::sync::OnceLock<crate::tls::ReplicaTlsServer>,
}

#[derive(Debug)]
struct VolEntry {
    vol: ReplicaVolume,
    /// Generation of the session allowed to apply and reply.
    gen: AtomicU64,
    /// Writes hold it shared across their generation check and pool apply; an OPEN
    /// takes it exclusively to bump `gen`, so once an OPEN is answered no write of an
    /// older session can still land (a target re-opening a member after an outage
    /// reconciles what it lists then, and nothing may change under the listing).
    apply_gate: parking_lot::RwLock<()>,
    /// The last shutdown was unclean and the boot id changed (computed at first open by
    /// this process; cleared once a target records a checkpoint).
    lost_tail: AtomicBool,
    /// Highest io acknowledged by this process.
    acked_max: AtomicU64,
    /// Highest io known stable (acknowledged before a completed flush).
    flush_point: AtomicU64,
    epoch: Mutex<(u64, String)>,
}

/// Per-connection session state after OPEN.
struct Session {
    entry: Arc<VolEntry>,
    gen: u64,
    epoch: u64,
    /// Catch-up sessions (role Stale or New) only: the blocks live writes covered in part.
    partial: Option<Mutex<Partial>>,
}

/// Sub-block live writes during a catch-up (design §2.7; docs/replication.md).
///
/// A live write of part of a block into a block that still holds pre-session content
/// (local io below the session's first live io) leaves the block's other bytes stale,
/// yet raises its io above any catch-up copy read before that write reached the source,
/// so the apply rule alone would skip the copy. Such a block is recorded here with the
/// bytes live writes wrote; the catch-up copy of it is then merged: a copy at least as
/// new as every live write the block got (`io >= local`) is taken whole, an older one
/// only for the bytes no live write covered, keeping the local io. Either way the result
/// is what the source holds after every write up to the local io, so per block the
/// higher io still wins (S1-S3 unchanged: no acknowledged byte is replaced by older data,
/// and the member is not readmitted while a block is listed: the target re-copies every
/// listed block with writes paused before the switch).
struct Partial {
    /// Io of the first live write of the session (0 until one arrived); writes arrive in
    /// io order, so every later one is higher and every pre-session block is lower.
    live_min: u64,
    /// Block index -> bitmap (one bit per byte) of what live writes wrote.
    blocks: HashMap<u64, Vec<u64>>,
}

impl Partial {
    /// Records a live write (or UNMAP, which zeroes partial blocks) of `[off, off+len)`;
    /// `local_io` tells a block's current io. Call with the lock held across the write.
    fn note(
        &mut self,
        off: u64,
        len: u64,
        bs: u64,
        mut local_io: impl FnMut(u64) -> Result<u64, cstor_pool::PoolError>,
    ) -> Result<(), cstor_pool::PoolError> {
        let end = off.saturating_add(len);
        let mut b = off / bs;
        while b * bs < end {
            let (bstart, bend) = (b * bs, b * bs + bs);
            let (s, e) = (off.max(bstart) - bstart, end.min(bend) - bstart);
            if s == 0 && e == bs {
                // Wholly rewritten by a newer write: exact.
                self.blocks.remove(&b);
            } else {
                let known = self.blocks.contains_key(&b);
                if known || local_io(bstart)? < self.live_min {
                    let bm = self
                        .blocks
                        .entry(b)
                        .or_insert_with(|| vec![0u64; bs.div_ceil(64) as usize]);
                    for i in s..e {
                        bm[(i / 64) as usize] |= 1 << (i % 64);
                    }
                }
            }
            b += 1;
        }
        Ok(())
    }
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (Status, String)> {
    serde_json::from_slice(body).map_err(|e| (Status::Invalid, format!("bad request body: {e}")))
}

fn bit(bm: &[u64], i: usize) -> bool {
    bm.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

impl Session {
    fn live(&self) -> bool {
        self.entry.gen.load(Ordering::SeqCst) == self.gen
    }
}

impl ReplicaServer {
    /// A server for `pool`; with `key`, every connection must authenticate.
    pub fn new(pool: Arc<dyn PoolAccess>, replica_id: String, key: Option<AuthKey>) -> Self {
        ReplicaServer {
            inner: Arc::new(Inner {
                pool,
                key,
                replica_id,
                vols: Mutex::new(HashMap::new()),
                stop: watch::channel(false).0,
                tls: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Requires TLS with this certificate on every connection (call before serving; a
    /// second call is ignored).
    pub fn require_tls(&self, tls: crate::tls::ReplicaTlsServer) {
        let _ = self.inner.tls.set(tls);
    }

    /// Serves connections from `listener` until it fails.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        let mut stop = self.inner.stop.subscribe();
        loop {
            let (sock, peer) = tokio::select! {
                r = listener.accept() => r?,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            let _ = sock.set_nodelay(true);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.connection(sock).await {
                    tracing::info!(%peer, error = %e, "replica connection ended");
                }
            });
        }
    }

    /// Ends serving: the accept loop and every connection stop (their pending replies are
    /// never sent). Used for a clean stop and, in tests, to simulate a crash.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Stops serving volume `name`: every session of it ends (no later write or reply of
    /// theirs) and the server lets go of its handle, so the pool may destroy it. A later
    /// OPEN opens (or creates) it afresh.
    pub fn release(&self, name: &str) {
        let entry = self.inner.vols.lock().remove(name);
        if let Some(v) = entry {
            let _gate = v.apply_gate.write();
            v.gen.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Ends every session and flushes every opened volume (call after serving stopped;
    /// closing the pool then writes its clean-shutdown marker).
    pub fn mark_clean(&self) {
        let vols: Vec<_> = self.inner.vols.lock().values().cloned().collect();
        for v in vols {
            // Ends every session first, so no write lands after the marker.
            {
                let _gate = v.apply_gate.write();
                v.gen.fetch_add(1, Ordering::SeqCst);
            }
            if let Err(e) = v.vol.flush() {
                tracing::error!(error = %e, "marking a replica volume clean");
            }
        }
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Option<T>> {
    let h = tokio::task::spawn_blocking(f);
    async move { h.await.ok() }
}

fn err_body(msg: impl std::fmt::Display) -> Bytes {
    Bytes::from(msg.to_string().into_bytes())
}

impl Inner {
    async fn connection(self: Arc<Self>, sock: TcpStream) -> Result<(), WireError> {
        let Some(tls) = self.tls.get().cloned() else {
            let (rd, wr) = sock.into_split();
            return self.session(rd, wr).await;
        };
        // A TLS ClientHello starts with record type 22; a plain target's HELLO with the
        // frame magic. Tell the plain one why it is refused instead of failing the TLS
        // handshake on its bytes.
        let mut first = [0u8; 1];
        let n = sock.peek(&mut first).await.map_err(WireError::Io)?;
        if n == 1 && first[0] != 0x16 {
            let (mut rd, mut wr) = sock.into_split();
            if let Some(hello) = wire::read_frame(&mut rd).await? {
                let why = "this replica requires TLS (give the target --replica-ca)";
                let f = Frame::reply(&hello, Status::AuthFailed, 0, err_body(why));
                wire::write_frame(&mut wr, &f).await?;
                let _ = wr.shutdown().await;
            }
            return Ok(());
        }
        let stream = tls.0.accept(sock).await.map_err(WireError::Io)?;
        let (rd, wr) = tokio::io::split(stream);
        self.session(rd, wr).await
    }

    /// Handshake, then requests until the connection ends.
    async fn session<R, W>(self: Arc<Self>, mut rd: R, mut wr: W) -> Result<(), WireError>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Handshake, synchronously on this task.
        let Some(hello) = wire::read_frame(&mut rd).await? else {
            return Ok(());
        };
        let parsed: Option<wire::Hello> = serde_json::from_slice(&hello.body).ok();
        let speaks = parsed
            .as_ref()
            .is_some_and(|h| h.versions.contains(&VERSION));
        if hello.opcode() != Some(Op::Hello) || hello.version != VERSION || !speaks {
            let body = serde_json::json!({ "supported": [VERSION] }).to_string();
            let f = Frame::reply(&hello, Status::VersionMismatch, 0, Bytes::from(body));
            wire::write_frame(&mut wr, &f).await?;
            let _ = wr.shutdown().await;
            return Ok(());
        }
        let client_nonce = parsed
            .and_then(|h| wire::unhex(&h.nonce))
            .unwrap_or_default();
        let server_nonce = auth::nonce();
        let reply = wire::HelloReply {
            nonce: wire::hex(&server_nonce),
            auth: self.key.is_some(),
        };
        let body = Bytes::from(serde_json::to_vec(&reply).unwrap_or_default());
        wire::write_frame(&mut wr, &Frame::reply(&hello, Status::Ok, 0, body)).await?;
        if let Some(key) = &self.key {
            let Some(a) = wire::read_frame(&mut rd).await? else {
                return Ok(());
            };
            let mac = serde_json::from_slice::<wire::AuthProof>(&a.body)
                .ok()
                .and_then(|p| wire::unhex(&p.mac));
            let ok = a.opcode() == Some(Op::Auth)
                && client_nonce.len() == 32
                && mac.is_some_and(|m| key.check(CLIENT_LABEL, &server_nonce, &client_nonce, &m));
            if !ok {
                let f = Frame::reply(&a, Status::AuthFailed, 0, err_body("bad proof"));
                wire::write_frame(&mut wr, &f).await?;
                let _ = wr.shutdown().await;
                return Ok(());
            }
            let proof = wire::AuthProof {
                mac: wire::hex(&key.prove(SERVER_LABEL, &client_nonce, &server_nonce)),
            };
            let body = Bytes::from(serde_json::to_vec(&proof).unwrap_or_default());
            wire::write_frame(&mut wr, &Frame::reply(&a, Status::Ok, 0, body)).await?;
        }

        // Replies from concurrent request tasks go through one writer task.
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some(f) = rx.recv().await {
                buf.clear();
                f.encode(&mut buf);
                // Batch what is queued already into one syscall.
                while let Ok(more) = rx.try_recv() {
                    more.encode(&mut buf);
                    if buf.len() > 1 << 20 {
                        break;
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        // WRITEs and UNMAPs go through one lane per connection (see `run_lane`).
        let (lane, lane_rx) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(run_lane(lane_rx));
        let mut session: Option<Arc<Session>> = None;
        let mut stop = self.stop.subscribe();
        // Buffered after the handshake (which is strictly request-reply): the frames a
        // pipelining target sent together are read with one syscall, not two each.
        let mut rd = tokio::io::BufReader::with_capacity(READ_BUF, rd);
        let result = loop {
            let r = tokio::select! {
                r = wire::read_frame(&mut rd) => r,
                _ = stop.wait_for(|s| *s) => {
                    if let Some(s) = &session {
                        // No reply of this connection goes out after a stop.
                        s.entry.gen.fetch_add(1, Ordering::SeqCst);
                    }
                    break Ok(());
                }
            };
            let f = match r {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if let Some(s) = &session {
                if !s.live() {
                    // A newer session took the volume: this connection is done.
                    break Ok(());
                }
            }
            match f.opcode() {
                Some(Op::Open) => match self.clone().open(&f).await {
                    Ok((s, reply)) => {
                        session = Some(s);
                        let _ = tx.send(reply);
                    }
                    Err(reply) => {
                        let _ = tx.send(reply);
                    }
                },
                Some(op) => match &session {
                    None => {
                        let _ = tx.send(Frame::reply(&f, Status::NotOpen, 0, err_body("no OPEN")));
                    }
                    Some(s) => {
                        if f.epoch != s.epoch {
                            let e = s.entry.epoch.lock().0;
                            let _ = tx.send(Frame::reply(&f, Status::Fenced, e, Bytes::new()));
                            continue;
                        }
                        self.request(op, f, s.clone(), &lane, tx.clone());
                    }
                },
                None => {
                    let _ = tx.send(Frame::reply(&f, Status::Invalid, 0, err_body("opcode")));
                }
            }
        };
        drop(tx);
        let _ = writer.await;
        result
    }

    async fn open(self: Arc<Self>, f: &Frame) -> Result<(Arc<Session>, Frame), Frame> {
        let req: OpenReq = serde_json::from_slice(&f.body)
            .map_err(|e| Frame::reply(f, Status::Invalid, 0, err_body(e)))?;
        let me = self.clone();
        let name = req.volume.clone();
        let size = req.size;
        let opened = blocking(move || -> Result<(Arc<VolEntry>, bool), String> {
            let mut vols = me.vols.lock();
            if let Some(e) = vols.get(&name) {
                return Ok((e.clone(), false));
            }
            let (vol, created) = ReplicaVolume::open_or_create(me.pool.clone(), &name, size)
                .map_err(|e| e.to_string())?;
            let rec = vol.records().map_err(|e| e.to_string())?;
            let lost = !created && rec.lost_tail;
            let entry = Arc::new(VolEntry {
                vol,
                gen: AtomicU64::new(0),
                apply_gate: parking_lot::RwLock::new(()),
                lost_tail: AtomicBool::new(lost),
                acked_max: AtomicU64::new(0),
                flush_point: AtomicU64::new(0),
                epoch: Mutex::new((rec.epoch, rec.instance)),
            });
            vols.insert(name, entry.clone());
            Ok((entry, created))
        })
        .await
        .ok_or_else(|| Frame::reply(f, Status::Error, 0, err_body("open task failed")))?
        .map_err(|e| Frame::reply(f, Status::Error, 0, err_body(e)))?;
        let (entry, created) = opened;
        if entry.vol.size() < size {
            // The volume grew while this replica was away (RESIZE missed).
            let e = entry.clone();
            blocking(move || e.vol.resize(size))
                .await
                .ok_or_else(|| Frame::reply(f, Status::Error, 0, err_body("open task failed")))?
                .map_err(|e| Frame::reply(f, Status::Error, 0, err_body(e)))?;
        }
        // Epoch check and persistence under the entry's epoch lock: two OPENs race safely.
        let e2 = entry.clone();
        let (epoch, instance) = (req.epoch, req.instance.clone());
        let fenced = blocking(move || -> Result<(Option<u64>, u64), String> {
            let mut cur = e2.epoch.lock();
            let prev = cur.0;
            if epoch < cur.0 || (epoch == cur.0 && epoch != 0 && instance != cur.1) {
                return Ok((Some(cur.0), prev));
            }
            if epoch > cur.0 || instance != cur.1 {
                e2.vol
                    .set_epoch(epoch, &instance)
                    .map_err(|e| e.to_string())?;
                *cur = (epoch, instance);
            }
            // Drops every other session; from here only the new generation replies and
            // no write of an older one applies (the gate waits for those applying now).
            let _gate = e2.apply_gate.write();
            e2.gen.fetch_add(1, Ordering::SeqCst);
            Ok((None, prev))
        })
        .await
        .ok_or_else(|| Frame::reply(f, Status::Error, 0, err_body("open task failed")))?
        .map_err(|e| Frame::reply(f, Status::Error, 0, err_body(e)))?;
        let (fenced, prev_epoch) = fenced;
        if let Some(stored) = fenced {
            return Err(Frame::reply(f, Status::Fenced, stored, Bytes::new()));
        }
        let gen = entry.gen.load(Ordering::SeqCst);
        entry.vol.set_write_through(false);
        let e3 = entry.clone();
        let info = blocking(move || -> Result<OpenReply, String> {
            let rec = e3.vol.records().map_err(|e| e.to_string())?;
            let max_io = e3.vol.max_io(rec.checkpoint).map_err(|e| e.to_string())?;
            let lost = e3.lost_tail.load(Ordering::SeqCst);
            let fp = if lost {
                e3.vol.flush_point().max(rec.checkpoint)
            } else {
                max_io
            };
            Ok(OpenReply {
                id: String::new(),
                guid: format!("{:016x}", e3.vol.guid()),
                checkpoint: rec.checkpoint,
                flush_point: fp,
                lost_tail: lost,
                max_io,
                cursor: rec.cursor,
                size: e3.vol.size(),
                block_size: e3.vol.block_size(),
                created,
                prev_epoch,
            })
        })
        .await
        .ok_or_else(|| Frame::reply(f, Status::Error, 0, err_body("open task failed")))?
        .map_err(|e| Frame::reply(f, Status::Error, 0, err_body(e)))?;
        let mut info = info;
        info.id = self.replica_id.clone();
        if req.role == Role::New && !created {
            tracing::info!(volume = %req.volume, "opened as New over existing data (full copy follows)");
        }
        let body = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
        let s = Arc::new(Session {
            entry,
            gen,
            epoch: req.epoch,
            partial: (req.role != Role::Current).then(|| {
                Mutex::new(Partial {
                    live_min: 0,
                    blocks: HashMap::new(),
                })
            }),
        });
        Ok((s, Frame::reply(f, Status::Ok, req.epoch, body)))
    }

    fn request(
        &self,
        op: Op,
        f: Frame,
        s: Arc<Session>,
        lane: &mpsc::UnboundedSender<Queued>,
        tx: mpsc::UnboundedSender<Frame>,
    ) {
        let entry = s.entry.clone();
        let sess = s.clone();
        let reply_to = f.clone();
        let send = move |status: Status, body: Bytes| {
            // Dropped sessions never reply (their acks must not count).
            if s.live() {
                let _ = tx.send(Frame::reply(&reply_to, status, s.epoch, body));
            }
        };
        match op {
            Op::Write | Op::Unmap => queue_write(op, f, sess, lane, send),
            Op::Ping => {
                let body = wire::enc_u64s(&[
                    entry.acked_max.load(Ordering::SeqCst),
                    entry.flush_point.load(Ordering::SeqCst),
                ]);
                send(Status::Ok, body);
            }
            Op::SetMode => match wire::dec_u64s::<1>(f.body) {
                Ok([m]) => {
                    entry.vol.set_write_through(m == 1);
                    send(Status::Ok, Bytes::new());
                }
                Err(e) => send(Status::Invalid, err_body(e)),
            },
            _ => {
                tokio::spawn(async move {
                    let (st, body) = other_op(op, f.body, entry, sess).await;
                    send(st, body);
                });
            }
        }
    }
}

/// A WRITE or UNMAP waiting on its connection's lane.
struct Queued {
    w: W,
    sess: Arc<Session>,
    send: Box<dyn FnOnce(Status, Bytes) + Send>,
}

enum W {
    /// offset, io, data
    Write(u64, u64, Bytes),
    /// offset, length, io
    Unmap(u64, u64, u64),
}

impl W {
    /// (offset, length, io)
    fn range(&self) -> (u64, u64, u64) {
        match self {
            W::Write(o, io, d) => (*o, d.len() as u64, *io),
            W::Unmap(o, l, io) => (*o, *l, *io),
        }
    }
}

/// Most requests one lane batch applies before it settles (bounds an ack's wait).
const LANE_BATCH_MAX: usize = 256;
/// Most data bytes one lane batch applies before it settles.
const LANE_BATCH_BYTES: u64 = 8 << 20;

/// Parses a WRITE or UNMAP and queues it on the connection's lane.
fn queue_write(
    op: Op,
    f: Frame,
    sess: Arc<Session>,
    lane: &mpsc::UnboundedSender<Queued>,
    send: impl FnOnce(Status, Bytes) + Send + 'static,
) {
    let parsed = match op {
        Op::Write => wire::dec_write(f.body).map(|(o, io, d)| W::Write(o, io, d)),
        _ => wire::dec_u64s::<3>(f.body).map(|[o, l, io]| W::Unmap(o, l, io)),
    };
    let w = match parsed {
        Ok(w) => w,
        Err(e) => return send(Status::Invalid, err_body(e)),
    };
    if let Some(p) = &sess.partial {
        // In arrival (= io) order, before any later frame is parsed.
        let mut g = p.lock();
        if g.live_min == 0 {
            g.live_min = w.range().2;
        }
    }
    let q = Queued {
        w,
        sess,
        send: Box::new(send),
    };
    if let Err(mpsc::error::SendError(q)) = lane.send(q) {
        (q.send)(Status::Error, err_body("write lane ended"));
    }
}

/// A connection's lane: applies its WRITEs and UNMAPs one after another in arrival order
/// (so where ranges overlap the higher io, sent later, wins on every replica), in
/// batches of what arrived while the previous batch was applied. A batch is settled once
/// (group commit: one intent-log write, in write-through mode one device flush too)
/// before any of its requests is acknowledged, so an ack still means crash-safe, or
/// stable with one Current replica left, exactly as for a single write. The settle of a
/// batch runs beside the apply of the next ([`LANE_SETTLES`] at most): any settle that
/// returns covers every record applied before it started, so acks may go out of order.
async fn run_lane(mut rx: mpsc::UnboundedReceiver<Queued>) {
    let settles = Arc::new(tokio::sync::Semaphore::new(LANE_SETTLES));
    while let Some(first) = rx.recv().await {
        let mut bytes = first.w.range().1;
        let mut batch = vec![first];
        while batch.len() < LANE_BATCH_MAX && bytes < LANE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) => {
                    bytes += q.w.range().1;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        let mut sends = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for q in batch {
            sends.push((q.send, q.sess.entry.clone()));
            items.push((q.w, q.sess));
        }
        let Some((results, applied)) = blocking(move || apply_batch(items)).await else {
            for (send, _) in sends {
                send(Status::Error, err_body("write task failed"));
            }
            continue;
        };
        let Ok(permit) = settles.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let settled = if applied.is_empty() {
                Some(Ok(()))
            } else {
                blocking(move || {
                    applied
                        .iter()
                        .try_for_each(|e| e.vol.settle_writes())
                        .map_err(|e| (status_of(&e), e.to_string()))
                })
                .await
            };
            drop(permit);
            let settled =
                settled.unwrap_or_else(|| Err((Status::Error, "settle task failed".into())));
            for ((send, entry), r) in sends.into_iter().zip(results) {
                match (r, &settled) {
                    (Ok(Some(io)), Ok(())) => {
                        entry.acked_max.fetch_max(io, Ordering::SeqCst);
                        send(Status::Ok, Bytes::new());
                    }
                    (Ok(Some(_)), Err((st, msg))) => send(*st, err_body(msg)),
                    // A dropped session's write: never applied, never answered.
                    (Ok(None), _) => {}
                    (Err((st, msg)), _) => send(st, err_body(msg)),
                }
            }
        });
    }
}

/// Settles a lane may run at once beside its next apply.
const LANE_SETTLES: usize = 2;

/// Applies a lane batch in order without settling it; one result per request (`Ok(None)`:
/// its session was dropped, nothing applied) and the volumes that got writes, to settle
/// before any ack. Runs on a blocking thread.
#[allow(clippy::type_complexity)]
fn apply_batch(
    items: Vec<(W, Arc<Session>)>,
) -> (
    Vec<Result<Option<u64>, (Status, String)>>,
    Vec<Arc<VolEntry>>,
) {
    let mut out = Vec::with_capacity(items.len());
    let mut applied: Vec<Arc<VolEntry>> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        // A run of one volume (a connection re-OPENed on another volume changes it).
        let entry = items[i].1.entry.clone();
        let mut j = i;
        while j < items.len() && Arc::ptr_eq(&items[j].1.entry, &entry) {
            j += 1;
        }
        // Held across the generation checks and the applies, once per run (a second
        // shared lock on this thread could wait behind an OPEN's exclusive one): a dropped
        // session's writes never reach the pool once that OPEN is answered.
        let _gate = entry.apply_gate.read();
        let start = out.len();
        for (w, sess) in &items[i..j] {
            out.push(apply_one(w, sess).map_err(|e| (status_of(&e), e.to_string())));
        }
        if out[start..].iter().any(|r| matches!(r, Ok(Some(_))))
            && !applied.iter().any(|e| Arc::ptr_eq(e, &entry))
        {
            applied.push(entry.clone());
        }
        i = j;
    }
    (out, applied)
}

/// Applies one WRITE or UNMAP without settling it (the caller holds the apply gate).
fn apply_one(w: &W, sess: &Session) -> Result<Option<u64>, cstor_pool::PoolError> {
    if !sess.live() {
        return Ok(None);
    }
    let e = &sess.entry;
    let bs = u64::from(e.vol.block_size());
    let (off, len, io) = w.range();
    // A catch-up session notes sub-block writes under its lock, held across a sub-block
    // write so a merging APPLY of the block cannot interleave.
    let mut guard = sess.partial.as_ref().map(|p| p.lock());
    if let Some(g) = guard.as_mut() {
        let v = &e.vol;
        g.note(off, len, bs, |at| {
            let mut buf = vec![0u8; bs as usize];
            Ok(v.read_with_io(at, &mut buf)?
                .and_then(|ios| ios.first().copied())
                .unwrap_or(0))
        })?;
    }
    if off.is_multiple_of(bs) && len.is_multiple_of(bs) {
        // Whole blocks only: `note` unlisted them, so no merging APPLY can touch them; a
        // later sub-block write of them comes later on this lane.
        drop(guard.take());
    }
    match w {
        W::Write(o, io, d) => e.vol.write_unsettled(*o, d, *io)?,
        W::Unmap(o, l, io) => e.vol.unmap_unsettled(*o, *l, *io)?,
    }
    Ok(Some(io))
}

/// The requests that need no ordering: FLUSH, READ, CHECKPOINT, CHANGED, READ_IO, APPLY,
/// SET_CURSOR, RESIZE, PARTIAL and the snapshot requests (the target orders a SNAPSHOT
/// after every write below its cut and before any above it).
async fn other_op(op: Op, body: Bytes, e: Arc<VolEntry>, sess: Arc<Session>) -> (Status, Bytes) {
    let r = blocking(move || -> Result<Bytes, (Status, String)> {
        let pe = |x: cstor_pool::PoolError| (status_of(&x), x.to_string());
        let we = |x: WireError| (Status::Invalid, x.to_string());
        match op {
            Op::Flush => {
                let acked = e.acked_max.load(Ordering::SeqCst);
                e.vol.flush().map_err(pe)?;
                e.flush_point.fetch_max(acked, Ordering::SeqCst);
                Ok(wire::enc_u64s(&[acked.max(e.vol.flush_point())]))
            }
            Op::Read => {
                let [off, len] = wire::dec_u64s::<2>(body).map_err(we)?;
                if len > wire::MAX_BODY as u64 - 64 {
                    return Err((Status::Invalid, "read too large".into()));
                }
                let mut buf = vec![0u8; len as usize];
                e.vol.read(off, &mut buf).map_err(pe)?;
                Ok(Bytes::from(buf))
            }
            Op::Checkpoint => {
                let [c] = wire::dec_u64s::<1>(body).map_err(we)?;
                e.vol.set_checkpoint(c).map_err(pe)?;
                e.lost_tail.store(false, Ordering::SeqCst);
                Ok(Bytes::new())
            }
            Op::Changed => {
                let [since, until, from, max] = wire::dec_u64s::<4>(body).map_err(we)?;
                let max = (max as usize).clamp(1, CHANGED_PAGE_MAX);
                let r = e.vol.changed(since, until, from, max).map_err(pe)?;
                Ok(wire::enc_ranges(&r))
            }
            Op::ReadIo => {
                let [off, len] = wire::dec_u64s::<2>(body).map_err(we)?;
                let bs = u64::from(e.vol.block_size());
                if len > 16 << 20 || !off.is_multiple_of(bs) || !len.is_multiple_of(bs) {
                    return Err((
                        Status::Invalid,
                        "READ_IO needs whole blocks, <= 16 MiB".into(),
                    ));
                }
                let mut buf = vec![0u8; len as usize];
                let ios = e.vol.read_with_io(off, &mut buf).map_err(pe)?;
                let exact = ios.is_some();
                Ok(wire::enc_read_io(exact, &ios.unwrap_or_default(), &buf))
            }
            Op::Apply => {
                let (x0, blocks, data) = wire::dec_apply(body).map_err(we)?;
                let bs = e.vol.block_size() as usize;
                if data.len() != blocks.len() * bs {
                    return Err((
                        Status::Invalid,
                        "APPLY data is not one block per entry".into(),
                    ));
                }
                let mut applied = 0u64;
                for (i, (off, io)) in blocks.iter().enumerate() {
                    let d = &data[i * bs..(i + 1) * bs];
                    let mut g = sess.partial.as_ref().map(|p| p.lock());
                    let listed = g.as_mut().and_then(|g| g.blocks.remove(&(off / bs as u64)));
                    if let Some(bm) = listed {
                        // Merge (see `Partial`): whole if the copy is as new as every live
                        // write of the block, else only the bytes no live write wrote.
                        let mut local = vec![0u8; bs];
                        let lio = e
                            .vol
                            .read_with_io(*off, &mut local)
                            .map_err(pe)?
                            .and_then(|v| v.first().copied())
                            .unwrap_or(0);
                        if *io >= lio {
                            e.vol.write(*off, d, *io).map_err(pe)?;
                        } else {
                            for (j, b) in local.iter_mut().enumerate() {
                                if !bit(&bm, j) {
                                    *b = d[j];
                                }
                            }
                            e.vol.write(*off, &local, lio).map_err(pe)?;
                        }
                        applied += 1;
                    } else if e
                        .vol
                        .apply_block_if_unsettled(*off, d, *io, x0)
                        .map_err(pe)?
                    {
                        applied += 1;
                    }
                    drop(g.take());
                }
                // One log write for the chunk (not one per block) before the reply.
                e.vol.settle_applies().map_err(pe)?;
                Ok(wire::enc_u64s(&[applied]))
            }
            Op::Resize => {
                let [size] = wire::dec_u64s::<1>(body).map_err(we)?;
                e.vol.resize(size).map_err(pe)?;
                Ok(Bytes::new())
            }
            Op::Partial => {
                let [max] = wire::dec_u64s::<1>(body).map_err(we)?;
                let bs = u64::from(e.vol.block_size());
                let mut v: Vec<u64> = sess
                    .partial
                    .as_ref()
                    .map(|p| p.lock().blocks.keys().map(|b| b * bs).collect())
                    .unwrap_or_default();
                v.sort_unstable();
                v.truncate(max.min(65_536) as usize);
                Ok(wire::enc_u64s(&v))
            }
            Op::Snapshot => {
                let r: wire::SnapReq = json(&body)?;
                e.vol.snapshot_at(&r.name, r.io_cut).map_err(pe)?;
                Ok(Bytes::new())
            }
            Op::Snapshots => Ok(wire::enc_json(&e.vol.snapshots().map_err(pe)?)),
            Op::DeleteSnapshot => {
                let r: wire::SnapReq = json(&body)?;
                e.vol.delete_snapshot(&r.name).map_err(pe)?;
                Ok(Bytes::new())
            }
            Op::Clone => {
                let r: wire::CloneReq = json(&body)?;
                let (guid, size) = e.vol.clone_snapshot(&r.snapshot, &r.clone).map_err(pe)?;
                Ok(wire::enc_json(&wire::CloneReply {
                    guid: format!("{guid:016x}"),
                    size,
                }))
            }
            Op::SnapBlocks => {
                let r: wire::SnapBlocksReq = json(&body)?;
                let max = (r.max as usize).clamp(1, CHANGED_PAGE_MAX);
                let v = e
                    .vol
                    .snap_blocks(&r.snapshot, r.since, r.until, r.from, max)
                    .map_err(pe)?;
                Ok(wire::enc_ranges(&v))
            }
            Op::SnapRead => {
                let r: wire::SnapReadReq = json(&body)?;
                if r.len > 16 << 20 {
                    return Err((Status::Invalid, "SNAP_READ of more than 16 MiB".into()));
                }
                let mut buf = vec![0u8; r.len as usize];
                e.vol
                    .read_snapshot(&r.snapshot, r.offset, &mut buf)
                    .map_err(pe)?;
                Ok(Bytes::from(buf))
            }
            Op::SetCursor => {
                let c = std::str::from_utf8(&body)
                    .map_err(|_| (Status::Invalid, "cursor is not UTF-8".to_string()))?;
                e.vol.set_cursor((!c.is_empty()).then_some(c)).map_err(pe)?;
                Ok(Bytes::new())
            }
            _ => Err((Status::Invalid, format!("{op:?} not allowed here"))),
        }
    })
    .await;
    match r {
        Some(Ok(b)) => (Status::Ok, b),
        Some(Err((st, m))) => (st, err_body(m)),
        None => (Status::Error, err_body("request task failed")),
    }
}
