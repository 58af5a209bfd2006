//! One iSCSI connection in full feature phase (error recovery level 0): command tagging,
//! the CmdSN window, immediate and unsolicited data, R2T-solicited Data-Out, Data-In,
//! NOP-In answers and our own NOP-Out keep-alive.
//!
//! Owns: the socket. The write half sits behind an async mutex together with the next
//! CmdSN, so CmdSNs go out on the wire in order and a command's PDUs are never
//! interleaved with another command's. The reader task owns the read half and routes each
//! PDU by its initiator task tag to the waiting command.
//! Invariants: a command is sent only while its CmdSN is within MaxCmdSN; the reader
//! never waits on the write half (a NOP-Out answer is sent from its own task), so a
//! blocked socket write cannot stop responses from being read; once the connection is
//! dead every registered and every later command fails with `Failure::Lost`.
//! Cancellation: a command future dropped mid-way unregisters its tag; a late response is
//! discarded; data the target solicited from it is never sent (the target times it out).

use crate::be;
use crate::login::{self, Chap, Kind, LoggedIn, Offer, Outcome, Params, OUR_MAX_RECV_DATA};
use crate::scsi::Cdb;
use bytes::{Bytes, BytesMut};
use cstor_iscsi::pdu::{self, op, OutPdu, Pdu, Segments, StatSn, NO_TAG};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Idle time after which we ping the target with a NOP-Out (open-iscsi: 5 s).
const NOP_OUT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence after a ping after which the connection is taken for dead (open-iscsi: 5 s;
/// longer here because a loaded two-core test machine can stall a process for seconds).
const NOP_OUT_TIMEOUT: Duration = Duration::from_secs(15);

/// Serial number arithmetic (RFC 1982), as CmdSN and StatSN use.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// A SCSI command to run.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) cdb: Cdb,
    /// Bytes expected from the target (reads).
    pub(crate) read_len: u32,
    /// Bytes sent to the target (writes).
    pub(crate) data: Bytes,
}

/// What the target answered.
#[derive(Debug)]
pub(crate) struct Reply {
    /// iSCSI response code (0: command completed at target).
    pub(crate) response: u8,
    pub(crate) status: u8,
    pub(crate) sense: Bytes,
    pub(crate) data: BytesMut,
}

/// Why a command got no answer on this connection.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection ended (or was dead already): the command may be re-issued.
    Lost(String),
    /// No answer within the command timeout: the connection is to be dropped.
    Timeout,
    /// The target rejected the PDU or broke the protocol for it.
    Protocol(String),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    max_cmd_sn: u32,
    dead: bool,
}

#[derive(Debug, Default)]
struct Tasks {
    map: HashMap<u32, mpsc::UnboundedSender<Pdu>>,
    dead: bool,
    why: String,
}

#[derive(Debug)]
struct Writer {
    half: OwnedWriteHalf,
    cmd_sn: u32,
    segs: Segments,
}

#[derive(Debug)]
struct Shared {
    params: Params,
    lun: u64,
    writer: tokio::sync::Mutex<Writer>,
    tasks: Mutex<Tasks>,
    next_itt: AtomicU32,
    exp_stat_sn: AtomicU32,
    window: watch::Sender<Window>,
}

/// A logged-in connection; dropping it stops its reader and closes the socket.
#[derive(Debug)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
    /// The portal this connection reached (after redirects).
    pub(crate) addr: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connects to `addr` and logs in; `Err(Ok(to))` means redirected to `to`.
pub(crate) async fn connect(
    addr: &str,
    target: &str,
    initiator: &str,
    chap: Option<&Chap>,
    isid: [u8; 6],
    offer: Offer,
    lun: u64,
) -> Result<Result<Conn, String>, crate::Error> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| crate::Error::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let li = match login::login(
        &mut stream,
        Kind::Normal(target),
        initiator,
        chap,
        isid,
        offer,
    )
    .await?
    {
        Outcome::Done(li) => li,
        Outcome::Redirect(to) => return Ok(Err(to)),
    };
    Ok(Ok(Conn::start(stream, li, lun, addr.to_owned())))
}

impl Conn {
    fn start(stream: TcpStream, li: LoggedIn, lun: u64, addr: String) -> Conn {
        let (rd, wr) = stream.into_split();
        let (window, _) = watch::channel(Window {
            max_cmd_sn: li.max_cmd_sn,
            dead: false,
        });
        let shared = Arc::new(Shared {
            params: li.params,
            lun,
            writer: tokio::sync::Mutex::new(Writer {
                half: wr,
                cmd_sn: li.cmd_sn,
                segs: Segments::default(),
            }),
            tasks: Mutex::new(Tasks::default()),
            next_itt: AtomicU32::new(1),
            exp_stat_sn: AtomicU32::new(li.exp_stat_sn),
            window,
        });
        let reader = tokio::spawn(reader(
            shared.clone(),
            BufReader::with_capacity(256 * 1024, rd),
        ));
        Conn {
            shared,
            reader,
            addr,
        }
    }

    /// Whether the connection has ended.
    pub(crate) fn is_dead(&self) -> bool {
        self.shared.tasks.lock().dead
    }

    /// Resolves to true once the connection is dead, to false if it is dropped first.
    pub(crate) fn dead_signal(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let mut rx = self.shared.window.subscribe();
        async move {
            loop {
                if rx.borrow_and_update().dead {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        }
    }

    /// Ends the connection: every command on it fails with `Lost`.
    pub(crate) fn kill(&self, why: &str) {
        self.shared.kill(why);
    }

    /// Runs one command to its response, or fails within `timeout`.
    pub(crate) async fn exec(&self, cmd: &Command, timeout: Duration) -> Result<Reply, Failure> {
        let s = &self.shared;
        let (itt, mut rx) = s.register()?;
        let _unregister = Unregister { shared: s, itt };
        let run = async {
            s.send_command(itt, cmd).await?;
            s.await_reply(cmd, &mut rx).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Logs out (closing the session) and waits briefly for the answer.
    pub(crate) async fn logout(&self) {
        let s = &self.shared;
        let Ok((itt, mut rx)) = s.register() else {
            return;
        };
        let _unregister = Unregister { shared: s, itt };
        let sent = async {
            let mut w = s.writer.lock().await;
            let mut p = OutPdu::new(op::LOGOUT | 0x40, 0x80, StatSn::None);
            p.set_u32(16, itt)
                .set_u32(24, w.cmd_sn)
                .set_u32(28, s.exp_stat_sn.load(Ordering::Acquire));
            s.write(&mut w, vec![p]).await
        };
        if sent.await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        }
        s.kill("logged out");
    }
}

struct Unregister<'a> {
    shared: &'a Shared,
    itt: u32,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.shared.tasks.lock().map.remove(&self.itt);
    }
}

impl Shared {
    fn kill(&self, why: &str) {
        {
            let mut t = self.tasks.lock();
            if !t.dead {
                tracing::info!(reason = why, "iSCSI connection ended");
                t.why = why.to_owned();
            }
            t.dead = true;
            t.map.clear();
        }
        self.window.send_modify(|w| w.dead = true);
    }

    fn register(&self) -> Result<(u32, mpsc::UnboundedReceiver<Pdu>), Failure> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut t = self.tasks.lock();
        if t.dead {
            return Err(Failure::Lost(t.why.clone()));
        }
        loop {
            let itt = self.next_itt.fetch_add(1, Ordering::Relaxed);
            if itt != NO_TAG && !t.map.contains_key(&itt) {
                t.map.insert(itt, tx);
                return Ok((itt, rx));
            }
        }
    }

    /// Writes PDUs (ExpStatSN stamped now) in one batch; a failed write kills the connection.
    async fn write(&self, w: &mut Writer, pdus: Vec<OutPdu>) -> Result<(), Failure> {
        let exp = self.exp_stat_sn.load(Ordering::Acquire);
        for mut p in pdus {
            // Every initiator PDU carries ExpStatSN at 28 (Data-Out included).
            p.set_u32(28, exp);
            w.segs.push(&mut p, self.params.digests);
        }
        let Writer { half, segs, .. } = w;
        if let Err(e) = segs.write_all(half).await {
            *segs = Segments::default();
            let why = format!("socket write: {e}");
            self.kill(&why);
            return Err(Failure::Lost(why));
        }
        Ok(())
    }

    /// Data-Out PDUs for `data[from..to]`, each within the target's segment limit.
    fn data_out(&self, itt: u32, ttt: u32, data: &Bytes, from: usize, to: usize) -> Vec<OutPdu> {
        let seg = (self.params.max_xmit_data as usize).max(512);
        let mut out = Vec::new();
        let mut off = from;
        let mut data_sn = 0u32;
        while off < to {
            let len = (to - off).min(seg);
            let mut p = OutPdu::new(op::DATA_OUT, 0, StatSn::None);
            if off + len == to {
                p.bhs[1] = 0x80;
            }
            p.set_lun(self.lun)
                .set_u32(16, itt)
                .set_u32(20, ttt)
                .set_u32(36, data_sn)
                .set_u32(40, off as u32);
            p.data = data.slice(off..off + len);
            out.push(p);
            off += len;
            data_sn += 1;
        }
        out
    }

    async fn send_command(&self, itt: u32, cmd: &Command) -> Result<(), Failure> {
        let p = self.params;
        let write = !cmd.data.is_empty();
        let len = cmd.data.len();
        let imm = if write && p.immediate_data {
            len.min(p.first_burst as usize)
                .min(p.max_xmit_data as usize)
        } else {
            0
        };
        let unsolicited_end = if write && !p.initial_r2t {
            len.min(p.first_burst as usize).max(imm)
        } else {
            imm
        };
        let mut flags = 0x01; // simple task attribute
        if unsolicited_end == imm {
            flags |= 0x80;
        }
        if cmd.read_len > 0 {
            flags |= 0x40;
        }
        if write {
            flags |= 0x20;
        }
        let edtl = if write { len as u32 } else { cmd.read_len };
        let mut window = self.window.subscribe();
        loop {
            let mut w = self.writer.lock().await;
            let win = *window.borrow_and_update();
            if win.dead {
                return Err(Failure::Lost(self.tasks.lock().why.clone()));
            }
            if sn_le(w.cmd_sn, win.max_cmd_sn) {
                let mut c = OutPdu::new(op::SCSI_CMD, flags, StatSn::None);
                c.set_lun(self.lun)
                    .set_u32(16, itt)
                    .set_u32(20, edtl)
                    .set_u32(24, w.cmd_sn);
                c.bhs[32..48].copy_from_slice(&cmd.cdb);
                c.data = cmd.data.slice(..imm);
                let mut pdus = vec![c];
                pdus.extend(self.data_out(itt, NO_TAG, &cmd.data, imm, unsolicited_end));
                self.write(&mut w, pdus).await?;
                w.cmd_sn = w.cmd_sn.wrapping_add(1);
                return Ok(());
            }
            drop(w);
            // The window is closed: wait for a PDU that moves MaxCmdSN (or the end).
            if window.changed().await.is_err() {
                return Err(Failure::Lost("connection gone".into()));
            }
        }
    }

    async fn await_reply(
        &self,
        cmd: &Command,
        rx: &mut mpsc::UnboundedReceiver<Pdu>,
    ) -> Result<Reply, Failure> {
        let mut buf = BytesMut::zeroed(cmd.read_len as usize);
        loop {
            let Some(p) = rx.recv().await else {
                return Err(Failure::Lost(self.tasks.lock().why.clone()));
            };
            match p.opcode() {
                op::R2T => {
                    let (ttt, off, len) = (p.u32_at(20), p.u32_at(40), p.u32_at(44));
                    let (from, to) = (off as usize, off as usize + len as usize);
                    if len == 0 || to > cmd.data.len() {
                        return Err(Failure::Protocol(format!(
                            "R2T for bytes {from}..{to} of a {}-byte write",
                            cmd.data.len()
                        )));
                    }
                    let pdus = self.data_out(p.itt(), ttt, &cmd.data, from, to);
                    let mut w = self.writer.lock().await;
                    self.write(&mut w, pdus).await?;
                }
                op::DATA_IN => {
                    let off = p.u32_at(40) as usize;
                    let end = off + p.data.len();
                    if end > buf.len() {
                        return Err(Failure::Protocol(format!(
                            "Data-In for bytes {off}..{end} of a {}-byte read",
                            buf.len()
                        )));
                    }
                    buf[off..end].copy_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        return Ok(Reply {
                            response: 0,
                            status: p.bhs[3],
                            sense: Bytes::new(),
                            data: buf,
                        });
                    }
                }
                op::SCSI_RSP => {
                    let mut sense = Bytes::new();
                    if p.data.len() >= 2 {
                        let n = usize::from(be::u16_at(&p.data, 0));
                        sense = p.data.slice(2..(2 + n).min(p.data.len()));
                    }
                    return Ok(Reply {
                        response: p.bhs[2],
                        status: p.bhs[3],
                        sense,
                        data: buf,
                    });
                }
                op::REJECT => {
                    return Err(Failure::Protocol(format!(
                        "target rejected the command (reason {:#04x})",
                        p.bhs[2]
                    )));
                }
                other => tracing::debug!(opcode = other, "unexpected PDU for a command"),
            }
        }
    }

    /// Takes the target's ExpCmdSN/MaxCmdSN and StatSN from a PDU.
    fn note_sequence(&self, p: &Pdu) {
        let (exp, max) = (p.u32_at(28), p.u32_at(32));
        // RFC 7143 §4.2.2.1: a MaxCmdSN below ExpCmdSN - 1 is invalid and ignored.
        if !sn_lt(max, exp.wrapping_sub(1)) {
            self.window.send_if_modified(|w| {
                if sn_lt(w.max_cmd_sn, max) {
                    w.max_cmd_sn = max;
                    true
                } else {
                    false
                }
            });
        }
        let has_status = match p.opcode() {
            op::DATA_IN => p.bhs[1] & 0x01 != 0,
            op::NOP_IN => p.itt() != NO_TAG,
            op::R2T => false,
            _ => true,
        };
        if has_status {
            let next = p.u32_at(24).wrapping_add(1);
            let _ = self
                .exp_stat_sn
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    sn_lt(cur, next).then_some(next)
                });
        }
    }

    fn route(&self, itt: u32, p: Pdu) {
        if let Some(tx) = self.tasks.lock().map.get(&itt) {
            let _ = tx.send(p);
        }
    }
}

/// Sends a NOP-Out from its own task (the reader never waits on the write half).
fn spawn_nop_out(shared: &Arc<Shared>, itt: u32, ttt: u32, lun: u64) {
    let s = shared.clone();
    tokio::spawn(async move {
        let mut w = s.writer.lock().await;
        let mut p = OutPdu::new(op::NOP_OUT | 0x40, 0x80, StatSn::None);
        p.set_lun(lun)
            .set_u32(16, itt)
            .set_u32(20, ttt)
            .set_u32(24, w.cmd_sn);
        let _ = s.write(&mut w, vec![p]).await;
    });
}

async fn reader(shared: Arc<Shared>, mut rd: BufReader<OwnedReadHalf>) {
    let why = read_loop(&shared, &mut rd).await;
    shared.kill(&why);
}

async fn read_loop(shared: &Arc<Shared>, rd: &mut BufReader<OwnedReadHalf>) -> String {
    let digests = shared.params.digests;
    let mut last_rx = Instant::now();
    let mut ping: Option<u32> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let read = pdu::read_pdu(rd, OUR_MAX_RECV_DATA, digests);
        tokio::pin!(read);
        let res = loop {
            tokio::select! {
                r = &mut read => break r,
                _ = ticker.tick() => {
                    let idle = last_rx.elapsed();
                    if ping.is_some() && idle > NOP_OUT_INTERVAL + NOP_OUT_TIMEOUT {
                        return format!("no PDU from the target for {idle:?} (NOP-Out unanswered)");
                    }
                    if ping.is_none() && idle >= NOP_OUT_INTERVAL {
                        let itt = shared.next_itt.fetch_add(1, Ordering::Relaxed);
                        spawn_nop_out(shared, itt, NO_TAG, 0);
                        ping = Some(itt);
                    }
                }
            }
        };
        let p = match res {
            Ok(p) => p,
            Err(pdu::PduError::Closed) => return "closed by the target".into(),
            Err(e) => return format!("reading a PDU: {e}"),
        };
        last_rx = Instant::now();
        shared.note_sequence(&p);
        match p.opcode() {
            op::NOP_IN => {
                if ping.is_some_and(|t| t == p.itt()) {
                    ping = None;
                } else if p.u32_at(20) != NO_TAG {
                    // The target's ping: answer it, echoing its TTT and LUN.
                    spawn_nop_out(shared, NO_TAG, p.u32_at(20), p.lun());
                }
            }
            op::SCSI_RSP
            | op::DATA_IN
            | op::R2T
            | op::TASK_MGMT_RSP
            | op::LOGOUT_RSP
            | op::TEXT_RSP => shared.route(p.itt(), p),
            op::REJECT => {
                if p.data.len() >= pdu::BHS_LEN {
                    let itt = be::u32_at(&p.data, 16);
                    shared.route(itt, p);
                }
            }
            op::ASYNC => match p.bhs[36] {
                // A SCSI async event (its unit attention also comes with the next command).
                0 => {}
                // The target asks for a logout (a planned stop or a move): this connection
                // ends and the session logs in again, re-issuing what was in flight.
                1 => return "the target requested a logout".into(),
                2 | 3 => return "the target is dropping the connection".into(),
                _ => {}
            },
            other => tracing::debug!(opcode = other, "unexpected PDU from the target"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(5, 5));
        assert!(sn_le(5, 5));
        assert!(!sn_le(3, 2));
    }
}
