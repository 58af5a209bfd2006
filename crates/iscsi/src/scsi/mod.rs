//! The SCSI block device (SPC-4/SBC-3) of one logical unit: command decoding and
//! execution over a `BlockBackend`.
//!
//! Owns: per-LU state (persistent and SPC-2 reservations, pending unit attentions per
//! I_T nexus, mode parameters, the capacity last reported) under one mutex held only for
//! short, non-blocking sections; the write gate that makes COMPARE AND WRITE atomic.
//! Invariants: every range is checked against the current capacity before the backend is
//! called; errors become sense data only through sense.rs.
//! Settlement (backend.rs): every backend call is awaited until the backend settles it,
//! never dropped, so a command answered with an error cannot change the medium later. At
//! the call's deadline (the LU's I/O timeout) the command's cancel signal is raised: a
//! backend refuses unstarted work (`NotStarted`, answered BUSY) and finishes started work.
//! While any call is unsettled past `settle_bound`, the LU answers NOT READY (becoming
//! ready) to new commands, so initiators back off instead of piling on. Modifying calls
//! take their io number from the backend under `dispatch_order`, so numbers follow the
//! order in which calls are issued and a retry always gets a higher one.
//! Never: hold the state mutex across an await; trust a length in a CDB or parameter
//! list before checking it against the data actually received; drop a backend future.

mod hold;
mod inquiry;
mod io;
mod mode;
pub(crate) mod pr;
pub(crate) mod xcopy;

use crate::backend::{BackendFuture, BlockBackend, Cancel, IoCtx};
use crate::counters::Counters;
use crate::sense::{self, ScsiError, Sense};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Logical block size in bytes.
pub const BLOCK_SIZE: u32 = 512;
/// Default logical blocks per physical block, as a power of two (4 KiB physical).
pub const PHYS_EXPONENT: u8 = 3;

/// Identifies an I_T nexus: the initiator port name `<iqn>,i,0x<isid>` (RFC 7143 §4.4),
/// as persistent reservations and unit attentions key on it.
pub type NexusId = Arc<str>;

/// Builds the nexus id of an initiator name and ISID.
pub fn nexus_id(initiator: &str, isid: &[u8; 6]) -> NexusId {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    Arc::from(format!("{initiator},i,0x{hex}"))
}

/// Pending unit attentions kept per nexus; older ones are dropped beyond this (SPC-4
/// allows reporting only the most recent when the queue overflows).
const MAX_PENDING_UA: usize = 8;

/// The reply to one command.
#[derive(Debug, Clone)]
pub struct ScsiReply {
    /// SCSI status.
    pub status: u8,
    /// Sense for CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data-in the command produced, before truncation to the expected transfer length.
    pub data: Bytes,
    /// Data-out bytes the CDB asked for, for residual accounting on writes.
    pub data_out_wanted: Option<u32>,
}

impl ScsiReply {
    fn good(data: Bytes) -> Self {
        ScsiReply {
            status: sense::status::GOOD,
            sense: None,
            data,
            data_out_wanted: None,
        }
    }
    fn error(e: ScsiError) -> Self {
        ScsiReply {
            status: e.status,
            sense: e.sense,
            data: Bytes::new(),
            data_out_wanted: None,
        }
    }
}

/// One command as the SCSI layer sees it.
#[derive(Debug)]
pub struct Cdb<'a> {
    /// The CDB bytes (at least 16; longer with an extended CDB).
    pub bytes: &'a [u8],
    /// Data-out received for it (already bounded by the iSCSI layer).
    pub data_out: Bytes,
    /// The I_T nexus it came from.
    pub nexus: &'a NexusId,
    /// Raised when the command is aborted; backend calls made for it see it.
    pub cancel: Cancel,
}

pub(crate) type CmdResult = Result<Bytes, ScsiError>;

/// Mode parameters a MODE SELECT can change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModeState {
    /// Software write protect (control mode page).
    pub swp: bool,
    /// Write cache enable (caching mode page).
    pub wce: bool,
}

#[derive(Debug)]
pub(crate) struct LuState {
    pub pr: pr::PrState,
    /// SPC-2 RESERVE holder.
    pub spc2_holder: Option<NexusId>,
    pub ua: HashMap<NexusId, Vec<(u8, u8)>>,
    pub mode: ModeState,
    pub reported_size: u64,
    pub copies: xcopy::CopyTable,
}

/// One logical unit (LUN 0 of a target).
#[derive(Debug)]
pub struct LogicalUnit {
    pub(crate) backend: Arc<dyn BlockBackend>,
    pub(crate) target_name: String,
    pub(crate) state: Mutex<LuState>,
    /// Writes hold it shared; COMPARE AND WRITE holds it exclusive, which makes its
    /// read-compare-write atomic against every other write of the LU.
    write_gate: tokio::sync::RwLock<()>,
    /// Deadline of each backend call: past it the command's cancel signal is raised.
    io_timeout: Duration,
    /// A call unsettled this long after it started makes the LU NOT READY until it settles.
    settle_bound: Duration,
    /// Backend calls unsettled past `settle_bound`.
    overdue: AtomicUsize,
    /// Held while an io number is taken and its call issued (see the module docs).
    dispatch_order: Mutex<()>,
    /// Commands waiting for the backend's hold to end (hold.rs).
    holds: hold::HoldQueue,
    /// Running commands from every session (task management, PREEMPT AND ABORT).
    pub(crate) tasks: crate::task::TaskSet,
    /// PERSISTENT RESERVE OUT runs one at a time (its store write is awaited).
    pr_serial: tokio::sync::Mutex<()>,
    pub(crate) counters: Arc<Counters>,
    /// Where APTPL reservations persist, and the bytes it holds as far as this LU knows.
    pub(crate) pr_store: Option<Arc<dyn crate::reservation_store::ReservationStore>>,
    pub(crate) pr_stored: Mutex<Option<Vec<u8>>>,
    /// Logical blocks per physical block, as a power of two.
    pub(crate) phys_exponent: u8,
    /// The other LUs of this process, for EXTENDED COPY between targets.
    copy_peers: std::sync::OnceLock<std::sync::Weak<dyn xcopy::CopyPeers>>,
}

/// Command classes for reservation conflict checks (SPC-4 §5.9.1 tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, PR IN/OUT, ...).
    Always,
    /// Reads the medium.
    Read,
    /// Modifies the medium or its parameters.
    Write,
}

impl LogicalUnit {
    /// A logical unit over `backend`; `reservations` keeps persistent reservations across
    /// restarts when an initiator asks for APTPL.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        target_name: &str,
        io_timeout: Duration,
        counters: Arc<Counters>,
        reservations: Option<Arc<dyn crate::reservation_store::ReservationStore>>,
        phys_exponent: u8,
    ) -> Result<Self, pr::AptplError> {
        let (pr, stored) = match &reservations {
            Some(s) => pr::load_aptpl(&**s)?,
            None => (pr::PrState::default(), None),
        };
        let reported_size = backend.size_bytes();
        let backend_hold = backend.hold();
        Ok(LogicalUnit {
            backend,
            target_name: target_name.to_owned(),
            state: Mutex::new(LuState {
                pr,
                spc2_holder: None,
                ua: HashMap::new(),
                mode: ModeState {
                    swp: false,
                    wce: true,
                },
                reported_size,
                copies: xcopy::CopyTable::default(),
            }),
            write_gate: tokio::sync::RwLock::new(()),
            io_timeout: io_timeout.min(crate::limits::BACKEND_SETTLE_BOUND),
            settle_bound: crate::limits::BACKEND_SETTLE_BOUND,
            overdue: AtomicUsize::new(0),
            dispatch_order: Mutex::new(()),
            holds: hold::HoldQueue::new(backend_hold, crate::limits::HOLD_TIMEOUT),
            tasks: crate::task::TaskSet::default(),
            pr_serial: tokio::sync::Mutex::new(()),
            counters,
            pr_store: reservations,
            pr_stored: Mutex::new(stored),
            phys_exponent: phys_exponent.min(8),
            copy_peers: std::sync::OnceLock::new(),
        })
    }

    /// Sets how long a backend call may stay unsettled before the LU answers NOT READY
    /// (default `limits::BACKEND_SETTLE_BOUND`); the I/O timeout never exceeds it.
    pub fn set_settle_bound(&mut self, bound: Duration) {
        self.settle_bound = bound;
        self.io_timeout = self.io_timeout.min(bound);
    }

    /// A command arrived (called by the reader, in CmdSN order): its place in the order in
    /// which calls held by the backend go once the hold ends.
    pub(crate) fn arrived(&self, cancel: &Cancel) {
        self.holds.arrived(cancel);
    }

    /// Sets T_hold: how long a command waits for the backend's hold to end before it is
    /// answered BUSY (default `limits::HOLD_TIMEOUT`).
    pub fn set_hold_timeout(&mut self, t_hold: Duration) {
        // The backend's hold was asked for once, at creation; keep that one.
        self.holds = self.holds.with_timeout(t_hold);
    }

    /// Backend calls currently unsettled past the settle bound (the LU is NOT READY
    /// while this is above zero).
    pub fn overdue_calls(&self) -> usize {
        self.overdue.load(Ordering::Acquire)
    }

    /// Lets EXTENDED COPY reach the LUs of `peers` (set once, by the target registry).
    pub(crate) fn set_copy_peers(&self, peers: std::sync::Weak<dyn xcopy::CopyPeers>) {
        let _ = self.copy_peers.set(peers);
    }

    /// Capacity in logical blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.backend.size_bytes() / u64::from(BLOCK_SIZE)
    }

    /// Queues a unit attention for every nexus except `except`.
    pub(crate) fn raise_ua(st: &mut LuState, except: Option<&NexusId>, asc: u8, ascq: u8) {
        for (n, q) in st.ua.iter_mut() {
            if Some(n) == except {
                continue;
            }
            if q.len() >= MAX_PENDING_UA {
                q.remove(0);
            }
            q.push((asc, ascq));
        }
    }

    /// Queues a unit attention for one nexus.
    pub(crate) fn raise_ua_for(st: &mut LuState, nexus: &NexusId, asc: u8, ascq: u8) {
        let q = st.ua.entry(nexus.clone()).or_default();
        if q.len() >= MAX_PENDING_UA {
            q.remove(0);
        }
        q.push((asc, ascq));
    }

    /// Registers a nexus so it receives unit attentions (called at login).
    pub fn attach_nexus(&self, nexus: &NexusId) {
        let mut st = self.state.lock();
        st.ua.entry(nexus.clone()).or_default();
        st.copies.forget_nexus(nexus);
    }

    /// Forgets a nexus at session end: its SPC-2 reservation ends with it (I_T nexus loss).
    pub fn detach_nexus(&self, nexus: &NexusId) {
        let mut st = self.state.lock();
        st.ua.remove(nexus);
        st.copies.forget_nexus(nexus);
        if st.spc2_holder.as_ref() == Some(nexus) {
            st.spc2_holder = None;
        }
    }

    /// The backend reported a capacity change: CAPACITY DATA HAS CHANGED for every nexus.
    pub fn capacity_changed(&self) {
        let mut st = self.state.lock();
        st.reported_size = self.backend.size_bytes();
        Self::raise_ua(&mut st, None, 0x2a, 0x09);
    }

    /// LUN reset: SPC-2 reservation released, a reset unit attention for every nexus.
    pub fn reset(&self, by: &NexusId) {
        let mut st = self.state.lock();
        st.spc2_holder = None;
        Self::raise_ua(&mut st, Some(by), 0x29, 0x03);
    }

    /// Runs a command to completion.
    pub async fn execute(&self, cmd: Cdb<'_>) -> ScsiReply {
        let op = cmd.bytes[0];
        let access = access_of(cmd.bytes);
        if let Some(e) = self.gate(&cmd, op, access) {
            return ScsiReply::error(e);
        }
        let mut data_out_wanted = None;
        let result = self.dispatch(&cmd, &mut data_out_wanted).await;
        let mut reply = match result {
            Ok(data) => ScsiReply::good(data),
            Err(e) => ScsiReply::error(e),
        };
        reply.data_out_wanted = data_out_wanted;
        reply
    }

    /// Checks that run before any command: capacity change, unit attentions, reservations.
    fn gate(&self, cmd: &Cdb<'_>, op: u8, access: Access) -> Option<ScsiError> {
        let mut st = self.state.lock();
        let size = self.backend.size_bytes();
        if size != st.reported_size {
            st.reported_size = size;
            Self::raise_ua(&mut st, None, 0x2a, 0x09);
        }
        // INQUIRY, REPORT LUNS and REQUEST SENSE never report a unit attention (SAM-5).
        if !matches!(op, 0x12 | 0xa0 | 0x03) {
            if self.overdue.load(Ordering::Acquire) > 0 {
                return Some(ScsiError::becoming_ready());
            }
            if let Some(q) = st.ua.get_mut(cmd.nexus) {
                if !q.is_empty() {
                    let (asc, ascq) = q.remove(0);
                    return Some(ScsiError::unit_attention(asc, ascq));
                }
            }
        }
        if access == Access::Always {
            return None;
        }
        if let Some(holder) = &st.spc2_holder {
            if holder != cmd.nexus && !matches!(op, 0x17 | 0x57) {
                return Some(ScsiError::reservation_conflict());
            }
        }
        if st.pr.conflicts(cmd.nexus, access) {
            return Some(ScsiError::reservation_conflict());
        }
        None
    }

    async fn dispatch(&self, cmd: &Cdb<'_>, wanted: &mut Option<u32>) -> CmdResult {
        let c = cmd.bytes;
        match c[0] {
            0x00 => Ok(Bytes::new()),
            0x03 => self.request_sense(cmd),
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(cmd).await,
            0x0a | 0x2a | 0xaa | 0x8a | 0x9c => self.write(cmd, wanted).await,
            0x2e | 0xae | 0x8e => self.write(cmd, wanted).await,
            0x2f | 0xaf | 0x8f => self.verify(cmd, wanted).await,
            0x89 => self.compare_and_write(cmd, wanted).await,
            0x8b => self.or_write(cmd, wanted).await,
            0x41 | 0x93 => self.write_same(cmd, wanted).await,
            0x42 => self.unmap(cmd).await,
            0x35 | 0x91 => self.synchronize_cache(cmd).await,
            0x34 | 0x90 => self.prefetch(c),
            0x12 => self.inquiry(c),
            0x25 => self.read_capacity10(c),
            0x9e => match c[1] & 0x1f {
                0x10 => self.read_capacity16(c),
                0x12 => self.get_lba_status(cmd).await,
                _ => Err(ScsiError::invalid_cdb_field(1)),
            },
            0xa0 => self.report_luns(c),
            0xa3 => match c[1] & 0x1f {
                0x0c => inquiry::report_supported_opcodes(c),
                0x0d => inquiry::report_supported_tmf(c),
                _ => Err(ScsiError::invalid_cdb_field(1)),
            },
            0x1a | 0x5a => self.mode_sense(c),
            0x15 | 0x55 => self.mode_select(cmd),
            0x16 | 0x56 => self.reserve_spc2(cmd),
            0x17 | 0x57 => self.release_spc2(cmd),
            0x5e => self.persistent_reserve_in(cmd),
            0x5f => self.persistent_reserve_out(cmd).await,
            0x37 | 0xb7 => inquiry::read_defect_data(c),
            0x83 => self.extended_copy(cmd, wanted).await,
            0x84 => self.receive_copy_results(cmd),
            0x1b => self.start_stop_unit(c),
            0x1e => prevent_allow(c),
            _ => Err(ScsiError::invalid_opcode()),
        }
    }

    fn request_sense(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        if c[1] & 0x01 != 0 {
            // Descriptor format sense is not supported.
            return Err(ScsiError::invalid_cdb_field(1));
        }
        let alloc = usize::from(c[4]);
        let pending = {
            let mut st = self.state.lock();
            st.ua.get_mut(cmd.nexus).and_then(|q| {
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            })
        };
        let sense = match pending {
            Some((asc, ascq)) => Sense::new(sense::key::UNIT_ATTENTION, asc, ascq),
            None => Sense::new(sense::key::NO_SENSE, 0, 0),
        };
        let b = sense.to_bytes();
        Ok(Bytes::copy_from_slice(&b[..b.len().min(alloc)]))
    }

    fn start_stop_unit(&self, c: &[u8]) -> CmdResult {
        // Not removable: START/STOP has no effect, LOEJ cannot eject.
        if c[4] & 0x02 != 0 && c[4] & 0x01 == 0 {
            return Err(ScsiError::invalid_cdb_field(4));
        }
        Ok(Bytes::new())
    }

    /// A context for one backend call of a command with cancel signal `cancel`.
    fn ctx(&self, cancel: &Cancel, fua: bool) -> IoCtx {
        IoCtx {
            io: None,
            fua,
            cancel: cancel.clone(),
            deadline: Instant::now() + self.io_timeout,
        }
    }

    /// Reads the medium for a command.
    pub(crate) async fn read_medium(
        &self,
        cancel: &Cancel,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ScsiError> {
        let started = Instant::now();
        let turn = self.holds.admit(cancel).await?;
        let ctx = self.ctx(cancel, false);
        let f = self.backend.read(&ctx, offset, len);
        drop(turn);
        let data = self.settle(&ctx, f, false).await?;
        self.counters.read_latency(started.elapsed());
        Ok(data)
    }

    /// Makes completed writes stable for a command.
    pub(crate) async fn flush_medium(&self, cancel: &Cancel) -> Result<(), ScsiError> {
        let turn = self.holds.admit(cancel).await?;
        let ctx = self.ctx(cancel, false);
        let f = self.backend.flush(&ctx);
        drop(turn);
        self.settle(&ctx, f, true).await
    }

    /// Issues one modifying backend call: its io number is taken and the call made under
    /// `dispatch_order`, then it is awaited to settlement. An aborted command issues none;
    /// while the backend holds, the call waits its turn (BUSY past T_hold).
    pub(crate) async fn modify<'s, T>(
        &'s self,
        cancel: &Cancel,
        fua: bool,
        call: impl FnOnce(&'s dyn BlockBackend, &IoCtx) -> BackendFuture<'s, T>,
    ) -> Result<T, ScsiError> {
        let started = Instant::now();
        let turn = self.holds.admit(cancel).await?;
        if cancel.is_raised() {
            return Err(ScsiError::busy());
        }
        let mut ctx = self.ctx(cancel, fua);
        let f = {
            let _order = self.dispatch_order.lock();
            // The pool's VolumeHandle::next_io (s3-pool) arrives here via the adapter.
            ctx.io = self.backend.next_io();
            call(&*self.backend, &ctx)
        };
        // Issued: a command queued behind this one during a hold may go now.
        drop(turn);
        let r = self.settle(&ctx, f, true).await?;
        self.counters.write_latency(started.elapsed());
        Ok(r)
    }

    /// Awaits a backend call until it settles (never dropping it), raising the command's
    /// cancel signal at the deadline and marking the LU NOT READY while the call is
    /// unsettled past the settle bound; counts busy time.
    pub(crate) async fn settle<T>(
        &self,
        ctx: &IoCtx,
        mut f: BackendFuture<'_, T>,
        writing: bool,
    ) -> Result<T, ScsiError> {
        let started = Instant::now();
        let r = tokio::select! {
            biased;
            r = &mut f => r,
            _ = tokio::time::sleep_until(ctx.deadline.into()) => {
                // Work not started yet is refused (NotStarted, answered BUSY); work under
                // way finishes and is answered with its real outcome.
                ctx.cancel.raise();
                let bound = (started + self.settle_bound).into();
                match tokio::time::timeout_at(bound, &mut f).await {
                    Ok(r) => r,
                    Err(_) => {
                        let _overdue = Overdue::enter(&self.overdue);
                        tracing::error!(
                            target_name = %self.target_name,
                            bound = ?self.settle_bound,
                            "backend call unsettled past its bound; LU not ready until it settles"
                        );
                        f.await
                    }
                }
            }
        };
        self.counters.add_busy(started.elapsed());
        r.map_err(|e| {
            tracing::warn!(target_name = %self.target_name, error = %e, "backend call failed");
            sense::from_backend(&e, writing)
        })
    }
}

/// Counts one overdue backend call for as long as it lives.
struct Overdue<'a>(&'a AtomicUsize);

impl<'a> Overdue<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Overdue(n)
    }
}

impl Drop for Overdue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn prevent_allow(c: &[u8]) -> CmdResult {
    // Not removable: PREVENT is refused, ALLOW is a no-op.
    if c[4] & 0x03 != 0 {
        return Err(ScsiError::invalid_cdb_field(4));
    }
    Ok(Bytes::new())
}

/// Reservation class of a command.
pub(crate) fn access_of(c: &[u8]) -> Access {
    match c[0] {
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 | 0x37 | 0xb7 => Access::Read,
        0x0a | 0x2a | 0xaa | 0x8a | 0x9c | 0x2e | 0xae | 0x8e | 0x89 | 0x8b | 0x41 | 0x93
        | 0x42 | 0x35 | 0x91 | 0x15 | 0x55 | 0x04 | 0x1b | 0x83 => Access::Write,
        0x9e if c[1] & 0x1f == 0x12 => Access::Read,
        0x1a | 0x5a => Access::Read,
        _ => Access::Always,
    }
}

/// Checks `lba + blocks` against the capacity.
pub(crate) fn check_range(lba: u64, blocks: u64, capacity: u64) -> Result<(), ScsiError> {
    match lba.checked_add(blocks) {
        Some(end) if end <= capacity && lba <= capacity => Ok(()),
        _ => Err(ScsiError::lba_out_of_range()),
    }
}
