//! The target's connection to one replica: handshake, pipelined requests matched to
//! replies by id, and typed failures.
//!
//! Owns: the socket (a reader task and a writer task) and the table of pending requests.
//! Invariants: every pending request is answered exactly once: by its reply, by
//! [`ReplicaError::Disconnected`] when the connection ends, or by a timeout of its caller
//! (which removes it). A reply carrying an epoch above ours, or FENCED, yields
//! [`ReplicaError::Fenced`]. Requests are written in the order `call` is entered.
//! Cancellation: dropping a `call` future forgets its reply; the request may still apply.
//! A request whose caller timed out stays in a table of late requests until its reply
//! comes: a late reply that is not OK, or a connection that ends with late requests
//! unanswered, marks the connection tainted. [`ReplicaConn::answered_all`] (no late
//! request left, never tainted, open) is what lets a target cancel an eviction of a
//! member that was only slow (design §2.6: "if the member answers everything first").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, AuthKey, CLIENT_LABEL, SERVER_LABEL};
use crate::error::ReplicaError;
use crate::tls::{server_name, ReplicaTlsClient};
use crate::wire::{self, Frame, Op, OpenReply, OpenReq, Status, VERSION};

type Reply = Result<Frame, ReplicaError>;

/// A connection to one replica.
#[derive(Debug)]
pub struct ReplicaConn {
    addr: String,
    tx: mpsc::UnboundedSender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    epoch: AtomicU64,
    closed: AtomicBool,
    close_why: Mutex<String>,
    inflight: AtomicUsize,
    /// Requests whose caller timed out, by id, still waiting for their reply.
    late: Mutex<HashMap<u64, Op>>,
    /// A reply was not OK (MEDIUM of a read aside), or late requests were never answered.
    tainted: AtomicBool,
}

impl ReplicaConn {
    /// Connects and runs the handshake (version check, then AUTH when the replica asks).
    pub async fn connect(
        addr: &str,
        key: Option<&AuthKey>,
        timeout: Duration,
    ) -> Result<Arc<ReplicaConn>, ReplicaError> {
        Self::connect_as(addr, key, timeout, VERSION).await
    }

    /// [`ReplicaConn::connect`] announcing protocol `version` (tests of the refusal).
    pub async fn connect_as(
        addr: &str,
        key: Option<&AuthKey>,
        timeout: Duration,
        version: u16,
    ) -> Result<Arc<ReplicaConn>, ReplicaError> {
        Self::connect_with(addr, key, None, timeout, version).await
    }

    /// [`ReplicaConn::connect`], over TLS when `tls` is given (tls.rs).
    pub async fn connect_with(
        addr: &str,
        key: Option<&AuthKey>,
        tls: Option<&ReplicaTlsClient>,
        timeout: Duration,
        version: u16,
    ) -> Result<Arc<ReplicaConn>, ReplicaError> {
        let disc = |why: String| ReplicaError::Disconnected {
            addr: addr.to_string(),
            why,
        };
        let sock = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| disc("connect timed out".into()))?
            .map_err(|e| disc(e.to_string()))?;
        let _ = sock.set_nodelay(true);
        let Some(tls) = tls else {
            let (rd, wr) = sock.into_split();
            return Self::handshake(addr, rd, wr, key, timeout, version).await;
        };
        let name = server_name(addr).ok_or_else(|| ReplicaError::AuthFailed {
            addr: addr.to_string(),
            why: "no host name or IP address to verify the replica's certificate against".into(),
        })?;
        let stream = tokio::time::timeout(timeout, tls.0.connect(name, sock))
            .await
            .map_err(|_| disc("TLS handshake timed out".into()))?
            .map_err(|e| ReplicaError::AuthFailed {
                addr: addr.to_string(),
                why: format!(
                    "TLS handshake failed: {e} (does the replica run with --tls-cert, signed by the --replica-ca given?)"
                ),
            })?;
        let (rd, wr) = tokio::io::split(stream);
        Self::handshake(addr, rd, wr, key, timeout, version).await
    }

    /// HELLO, AUTH when asked, then the reader and writer tasks.
    async fn handshake<R, W>(
        addr: &str,
        mut rd: R,
        mut wr: W,
        key: Option<&AuthKey>,
        timeout: Duration,
        version: u16,
    ) -> Result<Arc<ReplicaConn>, ReplicaError>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let disc = |why: String| ReplicaError::Disconnected {
            addr: addr.to_string(),
            why,
        };
        let hs = async {
            let nonce = auth::nonce();
            let hello = wire::Hello {
                nonce: wire::hex(&nonce),
                versions: vec![version],
            };
            let mut f = Frame::request(
                Op::Hello,
                0,
                0,
                Bytes::from(serde_json::to_vec(&hello).unwrap_or_default()),
            );
            f.version = version;
            wire::write_frame(&mut wr, &f)
                .await
                .map_err(|e| disc(e.to_string()))?;
            let r = wire::read_frame(&mut rd)
                .await
                .map_err(|e| disc(e.to_string()))?
                .ok_or_else(|| disc("closed during handshake".into()))?;
            if r.status == Status::AuthFailed {
                return Err(ReplicaError::AuthFailed {
                    addr: addr.to_string(),
                    why: String::from_utf8_lossy(&r.body).into_owned(),
                });
            }
            if r.status == Status::VersionMismatch {
                let theirs = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| {
                        v.get("supported")?.as_array().map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_u64())
                                .map(|x| x as u16)
                                .collect()
                        })
                    })
                    .unwrap_or_default();
                return Err(ReplicaError::VersionMismatch {
                    addr: addr.to_string(),
                    ours: version,
                    theirs,
                });
            }
            let hr: wire::HelloReply = serde_json::from_slice(&r.body)
                .map_err(|e| disc(format!("bad HELLO reply: {e}")))?;
            let server_nonce =
                wire::unhex(&hr.nonce).ok_or_else(|| disc("bad server nonce".into()))?;
            let auth_err = |why: &str| ReplicaError::AuthFailed {
                addr: addr.to_string(),
                why: why.into(),
            };
            match (hr.auth, key) {
                (false, _) => {}
                (true, None) => return Err(auth_err("the replica requires --auth-key")),
                (true, Some(k)) => {
                    let proof = wire::AuthProof {
                        mac: wire::hex(&k.prove(CLIENT_LABEL, &server_nonce, &nonce)),
                    };
                    let f = Frame::request(
                        Op::Auth,
                        0,
                        0,
                        Bytes::from(serde_json::to_vec(&proof).unwrap_or_default()),
                    );
                    wire::write_frame(&mut wr, &f)
                        .await
                        .map_err(|e| disc(e.to_string()))?;
                    let r = wire::read_frame(&mut rd)
                        .await
                        .map_err(|e| disc(e.to_string()))?
                        .ok_or_else(|| auth_err("closed: key refused"))?;
                    if r.status != Status::Ok {
                        return Err(auth_err("the replica refused our key"));
                    }
                    let p: wire::AuthProof = serde_json::from_slice(&r.body)
                        .map_err(|_| auth_err("bad proof from the replica"))?;
                    let ok = wire::unhex(&p.mac)
                        .is_some_and(|m| k.check(SERVER_LABEL, &nonce, &server_nonce, &m));
                    if !ok {
                        return Err(auth_err("the replica does not hold our key"));
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, hs)
            .await
            .map_err(|_| disc("handshake timed out".into()))??;

        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let conn = Arc::new(ReplicaConn {
            addr: addr.to_string(),
            tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            close_why: Mutex::new(String::new()),
            inflight: AtomicUsize::new(0),
            late: Mutex::new(HashMap::new()),
            tainted: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some(f) = rx.recv().await {
                buf.clear();
                f.encode(&mut buf);
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
            let _ = wr.shutdown().await;
            if let Some(c) = weak.upgrade() {
                c.fail_all("connection closed".into());
            }
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            // Replies of pipelined requests arrive together: one read syscall for many.
            let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
            let why = loop {
                match wire::read_frame(&mut rd).await {
                    Ok(Some(f)) => {
                        let Some(c) = weak.upgrade() else { return };
                        let w = {
                            let mut p = c.pending.lock();
                            match p.remove(&f.id) {
                                Some(w) => Some(w),
                                None => {
                                    c.late_reply(&f);
                                    None
                                }
                            }
                        };
                        if let Some(w) = w {
                            let _ = w.send(Ok(f));
                        }
                    }
                    Ok(None) => break "closed by the replica".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            if let Some(c) = weak.upgrade() {
                c.fail_all(why);
            }
        });
        Ok(conn)
    }

    /// A reply to a request whose caller gave up: its outcome decides whether the
    /// connection still holds everything it was sent.
    fn late_reply(&self, f: &Frame) {
        let Some(op) = self.late.lock().remove(&f.id) else {
            return;
        };
        if !reply_harmless(op, f.status) || f.epoch > self.epoch.load(Ordering::SeqCst) {
            self.tainted.store(true, Ordering::SeqCst);
        }
    }

    /// Whether every request sent on this connection was answered OK (late replies
    /// included) and it is still open: the replica holds every write it was sent.
    pub fn answered_all(&self) -> bool {
        !self.is_closed() && !self.tainted.load(Ordering::SeqCst) && self.late.lock().is_empty()
    }

    fn fail_all(&self, why: String) {
        self.closed.store(true, Ordering::SeqCst);
        {
            let mut late = self.late.lock();
            if !late.is_empty() {
                self.tainted.store(true, Ordering::SeqCst);
                late.clear();
            }
        }
        {
            let mut w = self.close_why.lock();
            if w.is_empty() {
                *w = why.clone();
            }
        }
        let all: Vec<_> = self.pending.lock().drain().collect();
        for (_, w) in all {
            let _ = w.send(Err(ReplicaError::Disconnected {
                addr: self.addr.clone(),
                why: why.clone(),
            }));
        }
    }

    /// Replica address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Requests in flight now (for least-loaded reads).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Ends the connection; pending requests fail with Disconnected.
    pub fn close(&self, why: &str) {
        self.fail_all(why.to_string());
    }

    /// OPEN the volume's session with `req.epoch`.
    pub async fn open(&self, req: &OpenReq, timeout: Duration) -> Result<OpenReply, ReplicaError> {
        self.epoch.store(req.epoch, Ordering::SeqCst);
        let body = Bytes::from(serde_json::to_vec(req).unwrap_or_default());
        let b = self.call(Op::Open, body, timeout).await?;
        serde_json::from_slice(&b).map_err(|e| ReplicaError::Failed {
            addr: self.addr.clone(),
            status: Status::Invalid,
            msg: format!("bad OPEN reply: {e}"),
        })
    }

    /// Queues a request now (so requests go out in the order of these calls) and returns
    /// the handle to wait on with [`ReplicaConn::finish`].
    pub fn start(&self, op: Op, body: Bytes) -> Result<Started, ReplicaError> {
        let (w, r) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let epoch = self.epoch.load(Ordering::SeqCst);
        {
            let mut p = self.pending.lock();
            if self.is_closed() {
                return Err(ReplicaError::Disconnected {
                    addr: self.addr.clone(),
                    why: self.close_why.lock().clone(),
                });
            }
            p.insert(id, w);
        }
        if self.tx.send(Frame::request(op, id, epoch, body)).is_err() {
            self.pending.lock().remove(&id);
            return Err(ReplicaError::Disconnected {
                addr: self.addr.clone(),
                why: "writer ended".into(),
            });
        }
        self.inflight.fetch_add(1, Ordering::SeqCst);
        Ok(Started {
            id,
            op,
            epoch,
            rx: r,
        })
    }

    /// Waits up to `timeout` (from now) for the reply of a started request.
    pub async fn finish(&self, s: Started, timeout: Duration) -> Result<Bytes, ReplicaError> {
        let mut rx = s.rx;
        let got = tokio::time::timeout(timeout, &mut rx).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        let lost = || ReplicaError::Disconnected {
            addr: self.addr.clone(),
            why: "reply lost".into(),
        };
        let reply = match got {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(lost()),
            Err(_) => {
                let mut p = self.pending.lock();
                if p.remove(&s.id).is_some() {
                    // Still unanswered: keep its id so the late reply is judged.
                    self.late.lock().insert(s.id, s.op);
                    return Err(ReplicaError::Timeout {
                        addr: self.addr.clone(),
                        ms: timeout.as_millis() as u64,
                    });
                }
                drop(p);
                // The reply came as the timer fired: it is in the channel.
                rx.try_recv().map_err(|_| lost())?
            }
        };
        let f = reply?;
        if !reply_harmless(s.op, f.status) {
            self.tainted.store(true, Ordering::SeqCst);
        }
        if f.status == Status::Fenced || (s.op != Op::Open && f.epoch > s.epoch) {
            return Err(ReplicaError::Fenced {
                addr: self.addr.clone(),
                stored: f.epoch,
                ours: s.epoch,
            });
        }
        if f.status != Status::Ok {
            return Err(ReplicaError::Failed {
                addr: self.addr.clone(),
                status: f.status,
                msg: String::from_utf8_lossy(&f.body).into_owned(),
            });
        }
        Ok(f.body)
    }

    /// Sends a request and waits up to `timeout` for its reply body.
    pub async fn call(
        &self,
        op: Op,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ReplicaError> {
        let s = self.start(op, body)?;
        self.finish(s, timeout).await
    }
}

/// Whether a reply leaves the replica holding everything it was sent: OK, or a failed
/// request that changes nothing there.
fn reply_harmless(op: Op, status: Status) -> bool {
    let read_only = matches!(
        op,
        Op::Read
            | Op::Ping
            | Op::Changed
            | Op::ReadIo
            | Op::Partial
            | Op::Snapshots
            | Op::SnapBlocks
            | Op::SnapRead
    );
    status == Status::Ok
        || (read_only && matches!(status, Status::Error | Status::Medium | Status::Invalid))
}

/// A request queued by [`ReplicaConn::start`].
#[derive(Debug)]
pub struct Started {
    id: u64,
    op: Op,
    epoch: u64,
    rx: oneshot::Receiver<Reply>,
}
