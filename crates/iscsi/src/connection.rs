//! One iSCSI connection (and, with one connection per session, its session) in full
//! feature phase: CmdSN window, concurrent command execution, R2T/Data-Out, Data-In,
//! task management, NOP-In keep-alive, text (SendTargets) and logout.
//!
//! Owns: the socket. One reader loop (this task) decodes PDUs and spawns a task per SCSI
//! command; one writer task owns the write half and stamps StatSN/ExpCmdSN/MaxCmdSN in
//! send order. Invariants: at most `limits::CMD_WINDOW` commands in flight (MaxCmdSN only
//! advances when a command completes); while the buffer budget (the session's or the
//! process's) is below `limits::WINDOW_LOW_WATER_BYTES` free, completions do not advance
//! MaxCmdSN either: the window closes before any command can find the budget full and
//! get TASK SET FULL, and the withheld slots reopen (announced by a NOP-In) once the
//! budget is back above the mark; a command's data-out buffer is at most
//! `limits::MAX_TRANSFER_BYTES`; an aborted command issues no backend write after its
//! abort was seen and sends nothing, or TASK ABORTED when another I_T nexus aborted it
//! (TAS=1, task.rs); every task is in its LU's registry so task management from any
//! session reaches it; when the session ends, every command task has finished (bounded
//! by `limits::TASK_DRAIN_TIMEOUT`) before the session is reported done; data queued for
//! the socket holds its buffer budget until written, and a socket that takes no data for
//! `limits::WRITE_TIMEOUT` ends the connection.
//! Never: let one session's bad input affect another; block the reader on a backend call.

use crate::be;
use crate::limits;
use crate::login::{self, LoginOutcome, Negotiated, SessionKind};
use crate::pdu::{self, op, reject, OutPdu, Pdu, StatSn, NO_TAG};
use crate::scsi::{self, nexus_id, NexusId, ScsiReply};
use crate::sense::{self, ScsiError};
use crate::server::LoginSlot;
use crate::target::{self, Server, SessionHandle, Target};
use crate::task::Task;
use crate::text;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Serial number comparison (RFC 1982), as CmdSN uses.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

#[derive(Debug)]
struct TaskEntry {
    task: Arc<Task>,
    data_tx: Option<mpsc::Sender<Pdu>>,
}

/// The CmdSN window, shared with the writer which stamps it into every PDU.
#[derive(Debug)]
struct Window {
    exp_cmd_sn: AtomicU32,
    max_cmd_sn: AtomicU32,
}

/// PDUs for the writer, with the buffer budget their data holds: released only once the
/// bytes are on the socket, so a client that does not read cannot grow memory.
#[derive(Debug)]
struct Batch {
    pdus: Vec<OutPdu>,
    hold: Vec<Pinned>,
}

/// Budget held by queued output until it is written (kept only to be dropped then).
#[derive(Debug)]
#[allow(dead_code)]
enum Pinned {
    /// Echoed NOP data.
    Echo(OwnedSemaphorePermit),
    /// A command's data.
    Data(Budget),
}

/// A command's data budget: the session's and the process's permits. Releasing it may
/// let sessions whose window closed on a low budget reopen it.
#[derive(Debug)]
struct Budget {
    permits: Vec<OwnedSemaphorePermit>,
    server: Arc<Server>,
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.permits.clear();
        self.server.budget_released();
    }
}

/// State shared by the reader and command tasks.
#[derive(Debug)]
struct Session {
    target: Option<Arc<Target>>,
    nexus: NexusId,
    params: Negotiated,
    out: mpsc::Sender<Batch>,
    win: Arc<Window>,
    tasks: Mutex<HashMap<u32, TaskEntry>>,
    next_ttt: AtomicU32,
    portal: SocketAddr,
    server: Arc<Server>,
    tsih: u16,
    shutdown: Arc<Notify>,
    /// Data buffer budget in KiB (limits::SESSION_BUFFER_BYTES).
    buffers: Arc<Semaphore>,
    /// Echoed NOP data queued for the writer, in KiB (limits::NOP_ECHO_BUFFER_BYTES).
    echo: Arc<Semaphore>,
    /// The unsent rest of a long text response.
    text_pending: Mutex<Option<TextPending>>,
    /// Window slots of completed commands not yet given back (the budget was low).
    withheld: AtomicU32,
}

impl Session {
    async fn send(&self, pdus: Vec<OutPdu>) {
        self.send_held(pdus, Vec::new()).await;
    }

    /// Sends `pdus`, keeping `hold` until the writer has written them.
    async fn send_held(&self, pdus: Vec<OutPdu>, hold: Vec<Pinned>) {
        // A closed writer means the connection is going away; the reader notices.
        let _ = self.out.send(Batch { pdus, hold }).await;
    }

    fn ttt(&self) -> u32 {
        loop {
            let t = self.next_ttt.fetch_add(1, Ordering::Relaxed);
            if t != NO_TAG {
                return t;
            }
        }
    }

    /// A non-immediate command finished: open the window by one, or (the budget is low)
    /// keep its slot until the budget recovers.
    fn complete_cmd(&self) {
        if self.budget_low() {
            if self.withheld.fetch_add(1, Ordering::AcqRel) == 0 {
                self.server.window_starved(1);
            }
        } else {
            let back = self.take_withheld();
            self.win.max_cmd_sn.fetch_add(1 + back, Ordering::AcqRel);
        }
    }

    fn take_withheld(&self) -> u32 {
        let n = self.withheld.swap(0, Ordering::AcqRel);
        if n > 0 {
            self.server.window_starved(-1);
        }
        n
    }

    /// Whether less than the low-water mark of budget is free (this session's or the
    /// process's): the window then stops opening.
    fn budget_low(&self) -> bool {
        let low = (limits::WINDOW_LOW_WATER_BYTES / 1024) as usize;
        self.buffers.available_permits() < low || self.server.buffer_budget_low()
    }

    /// Gives back withheld window slots if the budget recovered; true if it did.
    fn reopen_window(&self) -> bool {
        if self.withheld.load(Ordering::Acquire) == 0 || self.budget_low() {
            return false;
        }
        let back = self.take_withheld();
        self.win.max_cmd_sn.fetch_add(back, Ordering::AcqRel);
        back > 0
    }

    fn reject(&self, req: &Pdu, reason: u8) -> OutPdu {
        let mut r = OutPdu::new(op::REJECT, 0x80, StatSn::Advance);
        r.bhs[2] = reason;
        r.set_u32(16, NO_TAG);
        r.data = Bytes::copy_from_slice(&req.bhs);
        r
    }

    /// Aborts this session's tasks matching `pred` (by ITT and task) and waits, bounded,
    /// until they have ended; false if some did not end in time.
    async fn abort_tasks(&self, pred: impl Fn(u32, &Task) -> bool) -> bool {
        let victims: Vec<Arc<Task>> = {
            let tasks = self.tasks.lock();
            tasks
                .iter()
                .filter(|(itt, e)| pred(**itt, &e.task))
                .map(|(_, e)| {
                    e.task.abort(false);
                    e.task.clone()
                })
                .collect()
        };
        let mut all = true;
        for t in victims {
            all &= t.ended(limits::TASK_DRAIN_TIMEOUT).await;
        }
        all
    }

    /// Waits (bounded) for every running task to finish on its own.
    async fn drain_tasks(&self) {
        let waits: Vec<Arc<Task>> = self.tasks.lock().values().map(|e| e.task.clone()).collect();
        for t in waits {
            t.ended(limits::TASK_DRAIN_TIMEOUT).await;
        }
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(stream: TcpStream, server: Arc<Server>, slot: LoginSlot) {
    let peer = stream.peer_addr().ok();
    let Ok(portal) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let login = tokio::time::timeout(
        limits::LOGIN_TIMEOUT,
        login::login(&mut rd, &mut wr, &server),
    );
    let outcome = tokio::select! {
        r = login => r,
        _ = slot.evicted.notified() => {
            tracing::info!(?peer, "login evicted by newer logins from the same address");
            return;
        }
    };
    drop(slot);
    let outcome = match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            tracing::info!(?peer, error = %e, "login failed");
            return;
        }
        Err(_) => {
            tracing::info!(?peer, "login timed out");
            return;
        }
    };
    full_feature(rd, wr, server, portal, outcome).await;
}

async fn full_feature(
    mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: BufWriter<OwnedWriteHalf>,
    server: Arc<Server>,
    portal: SocketAddr,
    o: LoginOutcome,
) {
    let nexus = nexus_id(&o.initiator, &o.isid);
    let target = match &o.kind {
        SessionKind::Normal(t) => Some(t.clone()),
        SessionKind::Discovery => None,
    };
    let shutdown = Arc::new(Notify::new());
    let request_logout = Arc::new(Notify::new());
    let (done_tx, done_rx) = watch::channel(false);
    if let Some(t) = &target {
        let handle = SessionHandle {
            tsih: o.tsih,
            shutdown: shutdown.clone(),
            request_logout: request_logout.clone(),
            done: done_rx,
        };
        let old = t
            .sessions
            .lock()
            .insert((o.initiator.clone(), o.isid), handle);
        if let Some(old) = old {
            // Session reinstatement: the old session and all its commands end first, so
            // none of them can write after the new session starts.
            tracing::info!(nexus = %nexus, "reinstating session");
            target::wait_session_end(old).await;
        }
        t.lu.attach_nexus(&nexus);
        // A redirect set after this login passed its check but before the session was
        // registered found no session to ask to log out: ask here, so none is missed
        // (both sides take the sessions lock, so one of them sees the other).
        if t.redirect().is_some() {
            request_logout.notify_one();
        }
        // Likewise an ACL narrowed meanwhile: this initiator is no longer allowed.
        if !t.allows(&o.initiator) {
            shutdown.notify_one();
        }
        // And CHAP secrets set meanwhile that this login did not prove.
        if t.chap().is_some_and(|c| o.chap.as_ref() != Some(&c)) {
            shutdown.notify_one();
        }
    }
    let (out_tx, out_rx) = mpsc::channel(limits::WRITER_QUEUE);
    let win = Arc::new(Window {
        exp_cmd_sn: AtomicU32::new(o.cmd_sn),
        max_cmd_sn: AtomicU32::new(o.cmd_sn.wrapping_add(limits::CMD_WINDOW - 1)),
    });
    let sess = Arc::new(Session {
        target: target.clone(),
        nexus: nexus.clone(),
        params: o.params,
        out: out_tx,
        win: win.clone(),
        tasks: Mutex::new(HashMap::new()),
        next_ttt: AtomicU32::new(1),
        portal,
        server,
        tsih: o.tsih,
        shutdown: shutdown.clone(),
        buffers: Arc::new(Semaphore::new(
            (limits::SESSION_BUFFER_BYTES / 1024) as usize,
        )),
        echo: Arc::new(Semaphore::new(
            (limits::NOP_ECHO_BUFFER_BYTES / 1024) as usize,
        )),
        text_pending: Mutex::new(None),
        withheld: AtomicU32::new(0),
    });
    // Login flushed its last response, so nothing is left in the buffer.
    let wr = wr.into_inner();
    let mut writer = tokio::spawn(writer(wr, out_rx, win, o.params.digests, o.stat_sn));
    let reason = reader_loop(&mut rd, &sess, &shutdown, &request_logout, &mut writer).await;
    tracing::debug!(nexus = %nexus, reason, "connection ending");
    sess.abort_tasks(|_, _| true).await;
    if let Some(t) = &target {
        t.lu.detach_nexus(&nexus);
        let mut sessions = t.sessions.lock();
        let key = (o.initiator.clone(), o.isid);
        if sessions.get(&key).is_some_and(|h| h.tsih == o.tsih) {
            sessions.remove(&key);
        }
    }
    drop(sess);
    // A writer that ended already was polled to completion by the reader: not again.
    if reason != WRITER_ENDED {
        let _ = tokio::time::timeout(limits::TASK_DRAIN_TIMEOUT, &mut writer).await;
    }
    writer.abort();
    done_tx.send_replace(true);
}

async fn writer(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Batch>,
    win: Arc<Window>,
    digests: pdu::Digests,
    mut stat_sn: u32,
) {
    let mut segs = pdu::Segments::default();
    let mut held: Vec<Pinned> = Vec::new();
    while let Some(batch) = rx.recv().await {
        // Whatever is queued already goes out in one vectored write (bounded), so a busy
        // session pays one syscall for many responses and none for buffering copies.
        let mut next = Some(batch);
        let mut last = false;
        while let Some(batch) = next.take() {
            held.extend(batch.hold);
            for mut p in batch.pdus {
                let sn = match p.stat_sn {
                    StatSn::None => None,
                    StatSn::Peek => Some(stat_sn),
                    StatSn::Advance => {
                        let s = stat_sn;
                        stat_sn = stat_sn.wrapping_add(1);
                        Some(s)
                    }
                };
                let exp = win.exp_cmd_sn.load(Ordering::Acquire);
                let max = win.max_cmd_sn.load(Ordering::Acquire);
                pdu::stamp(&mut p, sn, exp, max);
                segs.push(&mut p, digests);
                if p.bhs[0] == op::LOGOUT_RSP {
                    last = true;
                    break;
                }
            }
            if last || segs.len() >= limits::WRITER_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        // A client that stops reading is dropped after the write timeout, so it cannot
        // hold the connection, its buffers and its budget forever.
        match tokio::time::timeout(limits::WRITE_TIMEOUT, segs.write_all(&mut w)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::info!("client stopped reading; dropping the connection");
                break;
            }
        }
        held.clear();
        if last {
            let _ = w.shutdown().await;
            break;
        }
    }
}

/// Why the reader ended when the writer task ended first (its handle is then spent).
const WRITER_ENDED: &str = "writer ended";

/// Reads and dispatches PDUs until the connection must end; returns why.
async fn reader_loop(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    sess: &Arc<Session>,
    shutdown: &Notify,
    request_logout: &Notify,
    writer: &mut tokio::task::JoinHandle<()>,
) -> &'static str {
    let mut ping: Option<(u32, Instant)> = None;
    let mut last_rx = Instant::now();
    // Discovery sessions end when no text request came for a while (pings do not count).
    let mut last_text = Instant::now();
    let discovery = sess.target.is_none();
    let (interval, timeout) = sess.server.keepalive();
    let mut tick = interval / 2;
    if discovery {
        tick = tick.min(sess.server.discovery_idle() / 2);
    }
    let mut ticker = tokio::time::interval(tick.max(std::time::Duration::from_millis(5)));
    let mut budget = sess.server.budget_watch();
    loop {
        let read = pdu::read_pdu(rd, sess.params.max_recv_data, sess.params.digests);
        tokio::pin!(read);
        let res = loop {
            tokio::select! {
                r = &mut read => break r,
                _ = shutdown.notified() => return "session shut down",
                _ = request_logout.notified() => {
                    // RFC 7143 §11.9.1 AsyncEvent 1: the target requests a logout within
                    // Parameter3 seconds (a planned stop or the target's removal).
                    let mut a = OutPdu::new(op::ASYNC, 0x80, StatSn::Advance);
                    a.set_u32(16, NO_TAG);
                    a.bhs[36] = 1;
                    be::put_u16(&mut a.bhs, 42, limits::LOGOUT_REQUEST_WAIT.as_secs() as u16);
                    sess.send(vec![a]).await;
                }
                _ = &mut *writer => return WRITER_ENDED,
                _ = budget.changed(), if sess.withheld.load(Ordering::Acquire) > 0 => {
                    announce_window(sess).await;
                }
                _ = ticker.tick() => {
                    // A missed budget wake-up costs at most one tick.
                    announce_window(sess).await;
                    if discovery && last_text.elapsed() >= sess.server.discovery_idle() {
                        return "idle discovery session";
                    }
                    if let Some((_, sent)) = ping {
                        if sent.elapsed() > timeout {
                            return "NOP-In ping unanswered";
                        }
                    } else if last_rx.elapsed() >= interval {
                        let ttt = sess.ttt();
                        let mut p = OutPdu::new(op::NOP_IN, 0x80, StatSn::Peek);
                        p.set_u32(16, NO_TAG).set_u32(20, ttt);
                        sess.send(vec![p]).await;
                        ping = Some((ttt, Instant::now()));
                    }
                }
            }
        };
        let pdu = match res {
            Ok(p) => p,
            Err(pdu::PduError::Closed) => return "closed by initiator",
            Err(e) => {
                tracing::info!(nexus = %sess.nexus, error = %e, "dropping connection");
                return "bad PDU";
            }
        };
        last_rx = Instant::now();
        if pdu.opcode() != op::NOP_OUT {
            last_text = last_rx;
        }
        if let Some((ttt, _)) = ping {
            if pdu.opcode() == op::NOP_OUT && pdu.u32_at(20) == ttt {
                ping = None;
                continue;
            }
        }
        if let Some(reason) = dispatch(sess, pdu).await {
            return reason;
        }
    }
}

/// Reopens withheld window slots if the budget recovered, and tells the initiator with a
/// NOP-In that wants no reply (RFC 7143 §11.19: TTT 0xffffffff), since no response may
/// be on its way to carry the new MaxCmdSN.
async fn announce_window(sess: &Session) {
    if sess.reopen_window() {
        let mut p = OutPdu::new(op::NOP_IN, 0x80, StatSn::Peek);
        p.set_u32(16, NO_TAG).set_u32(20, NO_TAG);
        sess.send(vec![p]).await;
    }
}

/// Checks a non-immediate PDU's CmdSN; false means: outside the window, ignore it.
fn accept_cmd_sn(sess: &Session, p: &Pdu) -> bool {
    if p.immediate() {
        return true;
    }
    let sn = p.u32_at(24);
    let exp = sess.win.exp_cmd_sn.load(Ordering::Acquire);
    let max = sess.win.max_cmd_sn.load(Ordering::Acquire);
    if sn_lt(sn, exp) || sn_lt(max, sn) {
        tracing::debug!(sn, exp, max, "CmdSN outside the window, ignored");
        return false;
    }
    sess.win
        .exp_cmd_sn
        .store(sn.wrapping_add(1), Ordering::Release);
    true
}

async fn dispatch(sess: &Arc<Session>, p: Pdu) -> Option<&'static str> {
    match p.opcode() {
        op::SCSI_CMD => {
            if !accept_cmd_sn(sess, &p) {
                return None;
            }
            scsi_command(sess, p).await;
        }
        op::DATA_OUT => {
            let tx = sess
                .tasks
                .lock()
                .get(&p.itt())
                .and_then(|e| e.data_tx.clone());
            if let Some(tx) = tx {
                let _ = tx.send(p).await;
            }
        }
        op::NOP_OUT => {
            if !accept_cmd_sn(sess, &p) {
                return None;
            }
            if !p.immediate() {
                sess.complete_cmd();
            }
            if p.itt() != NO_TAG {
                // Echoed data waits for budget (the reader stops reading meanwhile), so a
                // client that pings without reading pins at most the echo budget.
                let kib = (p.data.len() as u32).div_ceil(1024);
                let Ok(hold) = sess.echo.clone().acquire_many_owned(kib).await else {
                    return Some("closed");
                };
                let mut r = OutPdu::new(op::NOP_IN, 0x80, StatSn::Advance);
                r.set_lun(p.lun()).set_u32(16, p.itt()).set_u32(20, NO_TAG);
                r.data = p.data.clone();
                sess.send_held(vec![r], vec![Pinned::Echo(hold)]).await;
            }
        }
        op::TASK_MGMT => {
            if !accept_cmd_sn(sess, &p) {
                return None;
            }
            let s = sess.clone();
            tokio::spawn(async move { task_management(&s, p).await });
        }
        op::TEXT => {
            if !accept_cmd_sn(sess, &p) {
                return None;
            }
            if !p.immediate() {
                sess.complete_cmd();
            }
            text_request(sess, &p).await;
        }
        op::LOGOUT => {
            if !accept_cmd_sn(sess, &p) {
                return None;
            }
            // Data-Out will not come for a session logging out: those commands are
            // aborted now rather than after the Data-Out timeout; the rest finish.
            sess.abort_tasks(|_, t| t.collecting.load(Ordering::Acquire))
                .await;
            sess.drain_tasks().await;
            if !p.immediate() {
                sess.complete_cmd();
            }
            let mut r = OutPdu::new(op::LOGOUT_RSP, 0x80, StatSn::Advance);
            r.set_u32(16, p.itt());
            // Only closing the session or this connection is offered (ERL 0).
            r.bhs[2] = if p.bhs[1] & 0x7f <= 1 { 0 } else { 2 };
            sess.send(vec![r]).await;
            return Some("logout");
        }
        op::SNACK => {
            let r = sess.reject(&p, reject::SNACK);
            sess.send(vec![r]).await;
        }
        _ => {
            let r = sess.reject(&p, reject::CMD_NOT_SUPPORTED);
            sess.send(vec![r]).await;
        }
    }
    None
}

/// The command fields the reader needs.
#[derive(Debug, Clone)]
struct CmdHeader {
    itt: u32,
    lun: u64,
    edtl: u32,
    read: bool,
    write: bool,
    final_bit: bool,
    immediate: bool,
    cdb: Vec<u8>,
}

async fn scsi_command(sess: &Arc<Session>, p: Pdu) {
    let hdr = CmdHeader {
        itt: p.itt(),
        lun: p.lun(),
        edtl: p.u32_at(20),
        read: p.bhs[1] & 0x40 != 0,
        write: p.bhs[1] & 0x20 != 0,
        final_bit: p.final_bit(),
        immediate: p.immediate(),
        cdb: {
            let mut c = p.bhs[32..48].to_vec();
            // Extended CDB AHS (type 1): its bytes follow the first 16.
            if p.ahs.len() >= 4 && p.ahs[2] == 0x01 {
                let len = usize::from(be::u16_at(&p.ahs, 0)).saturating_sub(1);
                c.extend_from_slice(&p.ahs[4..(4 + len).min(p.ahs.len())]);
            }
            c
        },
    };
    let Some(target) = sess.target.clone() else {
        // A discovery session has no logical units.
        let e = ScsiError::lun_not_supported();
        refuse(sess, &p, &hdr, reject::PROTOCOL_ERROR, e).await;
        return;
    };
    let immediate_data = p.data.clone();
    let bad_immediate = !immediate_data.is_empty()
        && (!hdr.write
            || !sess.params.immediate_data
            || immediate_data.len() as u64 > u64::from(hdr.edtl));
    if bad_immediate {
        refuse(
            sess,
            &p,
            &hdr,
            reject::PROTOCOL_ERROR,
            ScsiError::unexpected_unsolicited_data(),
        )
        .await;
        return;
    }
    if hdr.edtl > limits::MAX_TRANSFER_BYTES {
        // Above what VPD 0xB0 allows: refused before any buffer is taken for it.
        refuse(
            sess,
            &p,
            &hdr,
            reject::PROTOCOL_ERROR,
            ScsiError::invalid_cdb_field_unknown(),
        )
        .await;
        return;
    }
    // The buffer budgets (the session's and the process's) are taken by the reader,
    // never awaited: a full budget answers TASK SET FULL (the initiator retries) instead
    // of stalling Data-Out of other commands. They are held until the reply is written.
    let kib = hdr.edtl.div_ceil(1024).max(1);
    let budget = sess
        .buffers
        .clone()
        .try_acquire_many_owned(kib)
        .ok()
        .zip(sess.server.buffer_budget().try_acquire_many_owned(kib).ok());
    let Some((session_budget, global)) = budget else {
        let mut r = response_pdu(&hdr, sense::status::TASK_SET_FULL, None, 0, 0, 0);
        r.set_u32(44, 0);
        sess.send(vec![r]).await;
        if !hdr.immediate {
            sess.complete_cmd();
        }
        return;
    };
    let budget = Budget {
        permits: vec![session_budget, global],
        server: sess.server.clone(),
    };
    let needs_data = hdr.write && (immediate_data.len() as u32) < hdr.edtl;
    let (data_tx, data_rx) = if needs_data {
        let (tx, rx) = mpsc::channel(limits::DATA_OUT_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let task = Task::new(sess.nexus.clone());
    task.collecting.store(needs_data, Ordering::Release);
    let duplicate = {
        let mut tasks = sess.tasks.lock();
        let dup = tasks.contains_key(&hdr.itt);
        if !dup {
            tasks.insert(
                hdr.itt,
                TaskEntry {
                    task: task.clone(),
                    data_tx,
                },
            );
        }
        dup
    };
    if duplicate {
        // SAM-5: a task tag already in use is an overlapped command.
        refuse(
            sess,
            &p,
            &hdr,
            reject::PROTOCOL_ERROR,
            ScsiError::overlapped_commands(),
        )
        .await;
        return;
    }
    // In the LU's registry too, so task management from any session reaches it.
    let lu_id = target.lu.tasks.insert(task.clone());
    target.lu.arrived(&task.cancel);
    let s = sess.clone();
    tokio::spawn(async move {
        let pdus = run_command(&s, &target, &hdr, immediate_data, data_rx, &task).await;
        s.tasks.lock().remove(&hdr.itt);
        target.lu.tasks.remove(lu_id);
        if !hdr.immediate {
            s.complete_cmd();
        }
        match pdus {
            Some(pdus) if !task.is_aborted() => {
                s.send_held(pdus, vec![Pinned::Data(budget)]).await;
            }
            _ if task.is_aborted() && task.reports_aborted() => {
                // Aborted by another I_T nexus with TAS=1 (SAM-5 §5.6).
                let r = response_pdu(&hdr, sense::status::TASK_ABORTED, None, 0, 0, 0);
                s.send(vec![r]).await;
            }
            _ => {}
        }
        task.finish();
    });
}

/// Refuses a SCSI command PDU: a Reject, then (RFC 7143 §11.17.1: a rejected command
/// ends with a SCSI Response) CHECK CONDITION with `e`'s sense, and the CmdSN slot back.
async fn refuse(sess: &Session, p: &Pdu, hdr: &CmdHeader, reason: u8, e: ScsiError) {
    let rej = sess.reject(p, reason);
    let rsp = response_pdu(hdr, e.status, e.sense, 0, 0, 0);
    sess.send(vec![rej, rsp]).await;
    if !hdr.immediate {
        sess.complete_cmd();
    }
}

enum DataError {
    Aborted,
    Timeout,
    Protocol(&'static str),
}

/// Runs one command; `None` means send nothing (aborted).
async fn run_command(
    sess: &Session,
    target: &Target,
    hdr: &CmdHeader,
    immediate: Bytes,
    data_rx: Option<mpsc::Receiver<Pdu>>,
    task: &Task,
) -> Option<Vec<OutPdu>> {
    let mut r2t_count = 0u32;
    let data_out = match data_rx {
        None => immediate,
        Some(rx) => {
            let collected = tokio::select! {
                r = collect_data(sess, hdr, immediate, rx, &mut r2t_count) => r,
                _ = task.abort_wake.notified() => Err(DataError::Aborted),
            };
            task.collecting.store(false, Ordering::Release);
            match collected {
                Ok(d) => d,
                Err(DataError::Aborted) => return None,
                Err(DataError::Timeout) => {
                    let e = ScsiError::timeout();
                    return Some(vec![response_pdu(hdr, e.status, e.sense, 0, 0, r2t_count)]);
                }
                Err(DataError::Protocol(why)) => {
                    tracing::info!(nexus = %sess.nexus, why, "bad Data-Out");
                    let e = ScsiError::invalid_param_field(0);
                    return Some(vec![response_pdu(hdr, e.status, e.sense, 0, 0, r2t_count)]);
                }
            }
        }
    };
    if task.is_aborted() {
        return None;
    }
    let reply = if lun_index(hdr.lun) != Some(0) {
        other_lun(&hdr.cdb)
    } else {
        let cdb = scsi::Cdb {
            bytes: &hdr.cdb,
            data_out,
            nexus: &sess.nexus,
            cancel: task.cancel.clone(),
        };
        target.lu.execute(cdb).await
    };
    if task.is_aborted() {
        return None;
    }
    Some(build_reply(sess, hdr, reply, r2t_count))
}

/// LUN number of a single-level SAM LUN field, `None` for other forms.
fn lun_index(lun: u64) -> Option<u16> {
    let top = (lun >> 48) as u16;
    if lun & 0x0000_ffff_ffff_ffff != 0 {
        return None;
    }
    match top >> 14 {
        0 | 1 => Some(top & 0x3fff),
        _ => None,
    }
}

/// Commands to a LUN that does not exist: INQUIRY says so, REPORT LUNS works, the rest fail.
fn other_lun(cdb: &[u8]) -> ScsiReply {
    let (status, sense, data) = match cdb[0] {
        0x12 => {
            let mut v = vec![0u8; 36];
            v[0] = 0x7f;
            v[4] = 31;
            let alloc = usize::from(be::u16_at(cdb, 3));
            v.truncate(alloc);
            (sense::status::GOOD, None, Bytes::from(v))
        }
        0xa0 => {
            let mut v = vec![0u8; 16];
            be::put_u32(&mut v, 0, 8);
            v.truncate(be::u32_at(cdb, 6) as usize);
            (sense::status::GOOD, None, Bytes::from(v))
        }
        _ => {
            let e = ScsiError::lun_not_supported();
            (e.status, e.sense, Bytes::new())
        }
    };
    ScsiReply {
        status,
        sense,
        data,
        data_out_wanted: None,
    }
}

/// Gathers a write's data-out: immediate data, unsolicited Data-Out, then R2T bursts.
async fn collect_data(
    sess: &Session,
    hdr: &CmdHeader,
    immediate: Bytes,
    mut rx: mpsc::Receiver<Pdu>,
    r2t_count: &mut u32,
) -> Result<Bytes, DataError> {
    let p = &sess.params;
    let edtl = hdr.edtl.min(limits::MAX_TRANSFER_BYTES) as usize;
    let mut buf = BytesMut::zeroed(edtl);
    buf[..immediate.len()].copy_from_slice(&immediate);
    let mut received = immediate.len();
    // Unsolicited Data-Out follows when InitialR2T=No and the command's F bit is clear.
    if !p.initial_r2t && !hdr.final_bit {
        let limit = (p.first_burst as usize).min(edtl);
        let mut data_sn = 0u32;
        loop {
            let d = recv(&mut rx).await?;
            if d.u32_at(20) != NO_TAG {
                return Err(DataError::Protocol("solicited data before R2T"));
            }
            place(&mut buf, &d, &mut received, &mut data_sn, limit)?;
            if d.final_bit() || received >= limit {
                break;
            }
        }
    }
    // Solicited bursts, up to MaxOutstandingR2T at a time, in order.
    let mut next = received;
    let mut r2tsn = 0u32;
    let mut outstanding: Vec<(u32, usize, usize, u32)> = Vec::new(); // ttt, start, end, data_sn
    let mut cursor: HashMap<u32, usize> = HashMap::new();
    while received < edtl {
        let mut batch = Vec::new();
        while outstanding.len() < p.max_outstanding_r2t as usize && next < edtl {
            let len = (edtl - next).min(p.max_burst as usize);
            let ttt = sess.ttt();
            let mut r = OutPdu::new(op::R2T, 0x80, StatSn::Peek);
            r.set_lun(hdr.lun)
                .set_u32(16, hdr.itt)
                .set_u32(20, ttt)
                .set_u32(36, r2tsn);
            r.set_u32(40, next as u32).set_u32(44, len as u32);
            batch.push(r);
            outstanding.push((ttt, next, next + len, 0));
            cursor.insert(ttt, next);
            next += len;
            r2tsn += 1;
        }
        if !batch.is_empty() {
            *r2t_count += batch.len() as u32;
            sess.send(batch).await;
        }
        let d = recv(&mut rx).await?;
        let ttt = d.u32_at(20);
        let Some(i) = outstanding.iter().position(|o| o.0 == ttt) else {
            return Err(DataError::Protocol("Data-Out for an unknown R2T"));
        };
        let (_, _, end, ref mut data_sn) = outstanding[i];
        let at = cursor
            .get_mut(&ttt)
            .ok_or(DataError::Protocol("no cursor"))?;
        let mut got = *at;
        place(&mut buf, &d, &mut got, data_sn, end)?;
        received += got - *at;
        *at = got;
        if got >= end {
            outstanding.remove(i);
            cursor.remove(&ttt);
        }
    }
    Ok(buf.freeze())
}

async fn recv(rx: &mut mpsc::Receiver<Pdu>) -> Result<Pdu, DataError> {
    match tokio::time::timeout(limits::DATA_OUT_TIMEOUT, rx.recv()).await {
        Ok(Some(pdu)) => Ok(pdu),
        Ok(None) => Err(DataError::Aborted),
        Err(_) => Err(DataError::Timeout),
    }
}

/// Copies one Data-Out into place, checking DataSN and offset order and bounds.
fn place(
    buf: &mut [u8],
    d: &Pdu,
    at: &mut usize,
    data_sn: &mut u32,
    end: usize,
) -> Result<(), DataError> {
    if d.u32_at(36) != *data_sn {
        return Err(DataError::Protocol("DataSN out of order"));
    }
    let off = d.u32_at(40) as usize;
    if off != *at {
        return Err(DataError::Protocol("buffer offset out of order"));
    }
    let stop = off + d.data.len();
    if stop > end || stop > buf.len() {
        return Err(DataError::Protocol("data beyond the burst"));
    }
    buf[off..stop].copy_from_slice(&d.data);
    *at = stop;
    *data_sn += 1;
    Ok(())
}

fn response_pdu(
    hdr: &CmdHeader,
    status: u8,
    sense: Option<sense::Sense>,
    resid_flags: u8,
    resid: u32,
    exp_data_sn: u32,
) -> OutPdu {
    let mut r = OutPdu::new(op::SCSI_RSP, 0x80 | resid_flags, StatSn::Advance);
    r.bhs[3] = status;
    r.set_u32(16, hdr.itt)
        .set_u32(36, exp_data_sn)
        .set_u32(44, resid);
    if let Some(s) = sense {
        let b = s.to_bytes();
        let mut d = Vec::with_capacity(2 + b.len());
        d.extend_from_slice(&[0, b.len() as u8]);
        d.extend_from_slice(&b);
        r.data = Bytes::from(d);
    }
    r
}

/// Data-In PDUs and/or the SCSI response for a completed command.
fn build_reply(sess: &Session, hdr: &CmdHeader, reply: ScsiReply, r2t_count: u32) -> Vec<OutPdu> {
    let p = &sess.params;
    let read_len = if hdr.read { hdr.edtl as usize } else { 0 };
    let data = reply.data;
    let send_len = data.len().min(read_len);
    // Residuals against what the command wanted to move in its direction.
    let (flags, resid) = if hdr.read || (!hdr.write && !data.is_empty()) {
        match data.len().cmp(&read_len) {
            std::cmp::Ordering::Greater => (0x04, (data.len() - read_len) as u32),
            std::cmp::Ordering::Less if hdr.read => (0x02, (read_len - data.len()) as u32),
            _ => (0, 0),
        }
    } else if let Some(wanted) = reply.data_out_wanted {
        let edtl = if hdr.write { hdr.edtl } else { 0 };
        match wanted.cmp(&edtl) {
            std::cmp::Ordering::Greater => (0x04, wanted - edtl),
            std::cmp::Ordering::Less => (0x02, edtl - wanted),
            _ => (0, 0),
        }
    } else if hdr.write && hdr.edtl > 0 {
        (0x02, hdr.edtl)
    } else {
        (0, 0)
    };
    let good = reply.status == sense::status::GOOD && reply.sense.is_none();
    let mut out = Vec::new();
    if send_len > 0 {
        let seg = p.max_xmit_data.max(512) as usize;
        let burst = p.max_burst.max(512) as usize;
        let mut off = 0usize;
        let mut data_sn = 0u32;
        while off < send_len {
            let len = (send_len - off).min(seg).min(burst - off % burst);
            let last = off + len == send_len;
            let end_of_burst = last || (off + len).is_multiple_of(burst);
            let mut d = OutPdu::new(op::DATA_IN, 0, StatSn::None);
            if end_of_burst {
                d.bhs[1] |= 0x80;
            }
            if last && good {
                d.bhs[1] |= 0x01 | flags;
                d.bhs[3] = reply.status;
                d.stat_sn = StatSn::Advance;
                d.set_u32(44, resid);
            }
            d.set_lun(hdr.lun)
                .set_u32(16, hdr.itt)
                .set_u32(20, NO_TAG)
                .set_u32(36, data_sn)
                .set_u32(40, off as u32);
            d.data = data.slice(off..off + len);
            out.push(d);
            off += len;
            data_sn += 1;
        }
        if good {
            return out;
        }
        let n = out.len() as u32;
        out.push(response_pdu(
            hdr,
            reply.status,
            reply.sense,
            flags,
            resid,
            n,
        ));
        return out;
    }
    out.push(response_pdu(
        hdr,
        reply.status,
        reply.sense,
        flags,
        resid,
        r2t_count,
    ));
    out
}

/// Task management (RFC 7143 §11.5, SAM-5 §7). ABORT TASK and ABORT TASK SET act on this
/// session's tasks (SAM-5: the task set of the calling I_T nexus); CLEAR TASK SET and the
/// resets act on the LU's tasks from every session, the others' answered TASK ABORTED
/// (TAS=1 in the control mode page). The response goes out only after every aborted
/// task has ended; if one does not end within `limits::TMF_WAIT`, FUNCTION REJECTED.
async fn task_management(sess: &Session, p: Pdu) {
    let function = p.bhs[1] & 0x7f;
    let rtt = p.u32_at(20);
    let lun_ok = lun_index(p.lun()) == Some(0);
    let ended = |all: bool| if all { 0 } else { 255 };
    let response: u8 = match function {
        1 => {
            let found = sess.tasks.lock().contains_key(&rtt);
            if found {
                ended(sess.abort_tasks(|itt, _| itt == rtt).await)
            } else {
                // Completed already (its response is on the way) or never received.
                1
            }
        }
        2 if !lun_ok => 2,
        2 => ended(sess.abort_tasks(|_, _| true).await),
        3 => 0, // CLEAR ACA: NACA is never set, so there is no ACA to clear.
        4 | 5 if !lun_ok => 2,
        4..=7 => match &sess.target {
            Some(t) => {
                let all =
                    t.lu.tasks
                        .abort_where(|_| true, &sess.nexus, true, limits::TMF_WAIT)
                        .await;
                if function != 4 {
                    t.lu.reset(&sess.nexus);
                }
                if function == 7 {
                    end_other_sessions(sess, t).await;
                }
                ended(all)
            }
            None => 2,
        },
        8 => 4, // TASK REASSIGN needs error recovery level 2.
        _ => 5,
    };
    if !p.immediate() {
        sess.complete_cmd();
    }
    let mut r = OutPdu::new(op::TASK_MGMT_RSP, 0x80, StatSn::Advance);
    r.bhs[2] = response;
    r.set_u32(16, p.itt());
    sess.send(vec![r]).await;
    if function == 7 && response == 0 {
        // Cold reset closes this connection too, after the response went out.
        sess.shutdown.notify_one();
    }
}

/// TARGET COLD RESET ends every other session of the target (RFC 7143 §11.5.1: all
/// connections are closed); each ends only after its commands have finished.
async fn end_other_sessions(sess: &Session, t: &Target) {
    let others: Vec<SessionHandle> = t
        .sessions
        .lock()
        .values()
        .filter(|h| h.tsih != sess.tsih)
        .cloned()
        .collect();
    for h in others {
        target::wait_session_end(h).await;
    }
}

/// A text response too long for one PDU, sent a segment per initiator request.
#[derive(Debug)]
struct TextPending {
    itt: u32,
    ttt: u32,
    rest: Bytes,
}

/// Text requests: SendTargets, answered across several PDUs when the reply exceeds the
/// initiator's MaxRecvDataSegmentLength (RFC 7143 §11.10: C bit and a target transfer tag
/// the initiator echoes in an empty request for the next part, as open-iscsi does).
async fn text_request(sess: &Session, p: &Pdu) {
    let ttt = p.u32_at(20);
    let itt = p.itt();
    let pending = sess.text_pending.lock().take();
    let data = match pending {
        Some(t) if ttt != NO_TAG && t.itt == itt && t.ttt == ttt => t.rest,
        _ if ttt != NO_TAG => {
            // A continuation of nothing we sent: RFC 7143 §11.10.4 wants a reject.
            let r = sess.reject(p, reject::INVALID_PDU_FIELD);
            sess.send(vec![r]).await;
            return;
        }
        // A new request (a different ITT or TTT reserved) drops any unfinished reply.
        _ => Bytes::from(text::encode(&text_answer(sess, p))),
    };
    let seg = (sess.params.max_xmit_data as usize).max(512);
    let mut r = OutPdu::new(op::TEXT_RSP, 0x80, StatSn::Advance);
    r.set_lun(p.lun()).set_u32(16, itt).set_u32(20, NO_TAG);
    if data.len() > seg {
        let next_ttt = sess.ttt();
        r.bhs[1] = 0x40; // C: more follows; F clear.
        r.set_u32(20, next_ttt);
        r.data = data.slice(..seg);
        *sess.text_pending.lock() = Some(TextPending {
            itt,
            ttt: next_ttt,
            rest: data.slice(seg..),
        });
    } else {
        r.data = data;
    }
    sess.send(vec![r]).await;
}

/// The key=value answer to one text request.
fn text_answer(sess: &Session, p: &Pdu) -> Vec<(String, String)> {
    let pairs = text::parse(&p.data).unwrap_or_default();
    let mut out = Vec::new();
    for (k, v) in &pairs {
        if k == "SendTargets" {
            let targets: Vec<Arc<Target>> = match &sess.target {
                Some(t) => vec![t.clone()],
                None => sess.server.all_targets(),
            };
            let initiator = sess.nexus.split(",i,").next().unwrap_or("");
            for t in targets {
                if v != "All" && v != &t.iqn && !(v.is_empty() && sess.target.is_some()) {
                    continue;
                }
                if !t.allows(initiator) {
                    continue;
                }
                out.push(("TargetName".to_owned(), t.iqn.clone()));
                // A moved target is announced at its new portal only: an initiator that
                // logs in at an old one would just be redirected there.
                if let Some(to) = t.redirect() {
                    out.push(("TargetAddress".to_owned(), format!("{to},1")));
                    continue;
                }
                let portals = sess.server.portals_of(&t);
                if portals.is_empty() {
                    out.push(("TargetAddress".to_owned(), format!("{},1", sess.portal)));
                }
                for a in portals {
                    out.push(("TargetAddress".to_owned(), format!("{a},1")));
                }
            }
        } else {
            out.push((k.clone(), "NotUnderstood".to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(2, 2));
        assert!(!sn_lt(5, 1));
    }

    #[test]
    fn lun_numbers() {
        assert_eq!(lun_index(0), Some(0));
        assert_eq!(lun_index(0x0001_0000_0000_0000), Some(1));
        assert_eq!(lun_index(0x0000_0000_0000_0001), None);
    }
}
