//! The copy manager of one logical unit: EXTENDED COPY (LID1, SPC-4 §6.4) with
//! identification target descriptors (E4h) and block-to-block segment descriptors (02h),
//! and RECEIVE COPY RESULTS (SPC-4 §6.18): COPY STATUS and OPERATING PARAMETERS.
//!
//! Owns: the parsing of an EXTENDED COPY parameter list into a `CopyPlan` (a pure
//! function, so every bad input is unit tested), and the per-LU `CopyTable` of running
//! and held copies (inside `LuState`, keyed by I_T nexus and list identifier).
//! Invariants: every length in the parameter list is checked against the bytes actually
//! received and against limits.rs before it is used; every segment's targets are
//! resolved and its ranges checked before the first byte is written; data moves through
//! the backend in chunks of at most `XCOPY_CHUNK_BYTES`, each written like a WRITE (under
//! the shared write gate of the LU written), so COMPARE AND WRITE stays atomic against
//! copies. A copy target is an LU of this process (an identification descriptor naming
//! its NAA or T10 designator as VPD 0x83 reports them, 512-byte blocks): this LU or
//! another target's, reached only where the initiator port's own reservations there
//! allow; any other is UNREACHABLE COPY TARGET.
//! Never: hold the state mutex across an await; write before the whole list is valid.
//! Cancellation: dropping the command mid-copy leaves the copied prefix written (as a
//! cancelled WRITE would) and removes its running entry (a drop guard).

use super::{check_range, Access, Cdb, CmdResult, LogicalUnit, NexusId, BLOCK_SIZE};
use crate::backend::Cancel;
use crate::be;
use crate::limits;
use crate::sense::ScsiError;
use bytes::Bytes;
use std::sync::Arc;

const BS: u64 = BLOCK_SIZE as u64;
/// Parameter list header bytes before the target descriptor list.
const HEADER_LEN: usize = 16;
/// Identification target descriptor (E4h) length.
const IDENT_DESC_LEN: usize = 32;
/// Block-to-block segment descriptor (02h) length, and its DESCRIPTOR LENGTH field.
const B2B_DESC_LEN: usize = 28;
const B2B_DESCRIPTOR_LENGTH: u16 = 0x18;
const IDENT_TARGET_TYPE: u8 = 0xe4;
const B2B_SEGMENT_TYPE: u8 = 0x02;
/// CSCD descriptor ID naming the LU that holds the copy manager (SPC-4), usable in a
/// segment descriptor instead of a target descriptor index.
const THIS_LU_CSCD_ID: u16 = 0xf800;
/// Designator length an identification descriptor can carry (bytes 8..28).
const MAX_DESIGNATOR_LEN: usize = 20;

/// ASCQs of ASC 26h for descriptor errors, and of ASC 08h for copy targets.
const TOO_MANY_TARGETS: u8 = 0x06;
const UNSUPPORTED_TARGET_TYPE: u8 = 0x07;
const TOO_MANY_SEGMENTS: u8 = 0x08;
const UNSUPPORTED_SEGMENT_TYPE: u8 = 0x09;

/// RECEIVE COPY RESULTS service actions.
const SA_COPY_STATUS: u8 = 0x00;
const SA_OPERATING_PARAMETERS: u8 = 0x03;

/// What the copy manager keeps about a copy after it ends (LIST ID USAGE field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListIdUsage {
    /// 00b: status held for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: list identifier unique while running, nothing held afterwards.
    Discard,
    /// 11b: no list identifier (must be zero).
    NoListId,
}

/// An identification (E4h) target descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetDescriptor {
    /// Designation descriptor: code set, association, designator type and value.
    pub code_set: u8,
    pub association: u8,
    pub designator_type: u8,
    pub designator: Vec<u8>,
    /// DISK BLOCK LENGTH of the block device type specific parameters.
    pub block_len: u32,
}

/// A block-to-block (02h) segment descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub src: u16,
    pub dst: u16,
    pub blocks: u64,
    pub src_lba: u64,
    pub dst_lba: u64,
}

/// A parsed, length-checked EXTENDED COPY parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyPlan {
    pub list_id: u8,
    pub usage: ListIdUsage,
    pub targets: Vec<TargetDescriptor>,
    pub segments: Vec<Segment>,
}

/// A field pointer into the parameter list (lists are bounded well below 64 KiB).
fn ptr(at: usize) -> u16 {
    u16::try_from(at).unwrap_or(u16::MAX)
}

/// Parses an EXTENDED COPY (LID1) parameter list; `Ok(None)` for an empty list, which
/// SPC-4 defines as a no-op.
pub(crate) fn parse(p: &[u8]) -> Result<Option<CopyPlan>, ScsiError> {
    if p.is_empty() {
        return Ok(None);
    }
    if p.len() < HEADER_LEN {
        return Err(ScsiError::param_list_length());
    }
    let list_id = p[0];
    let usage = match (p[1] >> 3) & 0x03 {
        0 => ListIdUsage::Hold,
        2 => ListIdUsage::Discard,
        3 => ListIdUsage::NoListId,
        _ => return Err(ScsiError::invalid_param_bit(1, 4)),
    };
    if usage == ListIdUsage::NoListId && list_id != 0 {
        return Err(ScsiError::invalid_param_field(0));
    }
    let tdl = usize::from(be::u16_at(p, 2));
    let sdl = be::u32_at(p, 8);
    if be::u32_at(p, 12) != 0 {
        // No segment type we support carries inline data (MAXIMUM INLINE DATA LENGTH 0).
        return Err(ScsiError::invalid_param_field(12));
    }
    if tdl as u64 + u64::from(sdl) > u64::from(limits::XCOPY_MAX_DESCRIPTOR_LIST_BYTES) {
        return Err(ScsiError::param_list_length());
    }
    // Bounded by the check above.
    let sdl = sdl as usize;
    let end = HEADER_LEN + tdl + sdl;
    if end > p.len() {
        return Err(ScsiError::param_list_length());
    }
    let targets = parse_targets(&p[HEADER_LEN..HEADER_LEN + tdl])?;
    let segments = parse_segments(&p[HEADER_LEN + tdl..end], HEADER_LEN + tdl)?;
    Ok(Some(CopyPlan {
        list_id,
        usage,
        targets,
        segments,
    }))
}

fn parse_targets(list: &[u8]) -> Result<Vec<TargetDescriptor>, ScsiError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < list.len() {
        let pos = HEADER_LEN + at;
        if out.len() >= usize::from(limits::XCOPY_MAX_TARGET_DESCRIPTORS) {
            return Err(ScsiError::copy_descriptor(TOO_MANY_TARGETS, ptr(pos)));
        }
        if list[at] != IDENT_TARGET_TYPE {
            return Err(ScsiError::copy_descriptor(
                UNSUPPORTED_TARGET_TYPE,
                ptr(pos),
            ));
        }
        let Some(d) = list.get(at..at + IDENT_DESC_LEN) else {
            // TARGET DESCRIPTOR LIST LENGTH ends inside a descriptor.
            return Err(ScsiError::invalid_param_field(2));
        };
        // Byte 1 bits 7-5 (LU ID TYPE, NUL) are obsolete in SPC-4, which we claim in
        // INQUIRY, so they are ignored: the designator alone names the copy target.
        if d[1] & 0x1f != 0 {
            // Peripheral device type: only block devices (00h).
            return Err(ScsiError::invalid_param_bit(ptr(pos + 1), 4));
        }
        let len = usize::from(d[7]);
        if len > MAX_DESIGNATOR_LEN {
            return Err(ScsiError::invalid_param_field(ptr(pos + 7)));
        }
        out.push(TargetDescriptor {
            code_set: d[4] & 0x0f,
            association: (d[5] >> 4) & 0x03,
            designator_type: d[5] & 0x0f,
            designator: d[8..8 + len].to_vec(),
            block_len: be::u24_at(d, 29),
        });
        at += IDENT_DESC_LEN;
    }
    Ok(out)
}

fn parse_segments(list: &[u8], base: usize) -> Result<Vec<Segment>, ScsiError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < list.len() {
        let pos = base + at;
        if out.len() >= usize::from(limits::XCOPY_MAX_SEGMENT_DESCRIPTORS) {
            return Err(ScsiError::copy_descriptor(TOO_MANY_SEGMENTS, ptr(pos)));
        }
        if list[at] != B2B_SEGMENT_TYPE {
            return Err(ScsiError::copy_descriptor(
                UNSUPPORTED_SEGMENT_TYPE,
                ptr(pos),
            ));
        }
        let Some(d) = list.get(at..at + B2B_DESC_LEN) else {
            // SEGMENT DESCRIPTOR LIST LENGTH ends inside a descriptor.
            return Err(ScsiError::invalid_param_field(8));
        };
        if be::u16_at(d, 2) != B2B_DESCRIPTOR_LENGTH {
            return Err(ScsiError::invalid_param_field(ptr(pos + 2)));
        }
        let blocks = u64::from(be::u16_at(d, 10));
        if blocks * BS > u64::from(limits::XCOPY_MAX_SEGMENT_BYTES) {
            return Err(ScsiError::invalid_param_field(ptr(pos + 10)));
        }
        out.push(Segment {
            src: be::u16_at(d, 4),
            dst: be::u16_at(d, 6),
            blocks,
            src_lba: be::u64_at(d, 12),
            dst_lba: be::u64_at(d, 20),
        });
        at += B2B_DESC_LEN;
    }
    Ok(out)
}

/// RECEIVE COPY RESULTS OPERATING PARAMETERS: the limits `parse` and `extended_copy`
/// enforce.
fn operating_parameters() -> Vec<u8> {
    let types = [B2B_SEGMENT_TYPE, IDENT_TARGET_TYPE];
    let mut v = vec![0u8; 44];
    v[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
    be::put_u16(&mut v, 8, limits::XCOPY_MAX_TARGET_DESCRIPTORS);
    be::put_u16(&mut v, 10, limits::XCOPY_MAX_SEGMENT_DESCRIPTORS);
    be::put_u32(&mut v, 12, limits::XCOPY_MAX_DESCRIPTOR_LIST_BYTES);
    be::put_u32(&mut v, 16, limits::XCOPY_MAX_SEGMENT_BYTES);
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    be::put_u16(&mut v, 34, limits::XCOPY_MAX_CONCURRENT);
    v[36] = u8::try_from(limits::XCOPY_MAX_CONCURRENT).unwrap_or(u8::MAX);
    v[37] = BLOCK_SIZE.trailing_zeros() as u8; // DATA SEGMENT GRANULARITY (log2)
    v[43] = types.len() as u8;
    v.extend_from_slice(&types);
    let avail = (v.len() - 4) as u32;
    be::put_u32(&mut v, 0, avail);
    v
}

/// Appends a third-party copy descriptor, padded to a multiple of four bytes (SPC-4
/// §7.8.17).
fn tpc_descriptor(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    let padded = body.len().next_multiple_of(4);
    let mut d = vec![0u8; 4 + padded];
    be::put_u16(&mut d, 0, kind);
    be::put_u16(&mut d, 2, padded as u16);
    d[4..4 + body.len()].copy_from_slice(body);
    out.extend_from_slice(&d);
}

/// The body of VPD page 0x8F (Third-party Copy) for a LID1 copy manager: supported
/// commands, parameter data, supported descriptors, supported CSCD descriptor IDs
/// (none beyond list indexes) and general copy operations, all from limits.rs.
pub(super) fn third_party_copy_vpd() -> Vec<u8> {
    let mut out = Vec::new();
    // Supported Commands: EXTENDED COPY(LID1); RECEIVE COPY RESULTS COPY STATUS and
    // OPERATING PARAMETERS.
    let commands = [
        0x83,
        1,
        0x00,
        0x84,
        2,
        SA_COPY_STATUS,
        SA_OPERATING_PARAMETERS,
    ];
    let mut body = vec![commands.len() as u8];
    body.extend_from_slice(&commands);
    tpc_descriptor(&mut out, 0x0001, &body);
    // Parameter Data.
    let mut body = vec![0u8; 28];
    be::put_u16(&mut body, 4, limits::XCOPY_MAX_TARGET_DESCRIPTORS);
    be::put_u16(&mut body, 6, limits::XCOPY_MAX_SEGMENT_DESCRIPTORS);
    be::put_u32(&mut body, 8, limits::XCOPY_MAX_DESCRIPTOR_LIST_BYTES);
    tpc_descriptor(&mut out, 0x0004, &body);
    // Supported Descriptors.
    tpc_descriptor(&mut out, 0x0008, &[2, B2B_SEGMENT_TYPE, IDENT_TARGET_TYPE]);
    // Supported CSCD Descriptor IDs: F800h (this LU) besides list indexes.
    let mut body = vec![0, 2, 0, 0];
    be::put_u16(&mut body, 2, THIS_LU_CSCD_ID);
    tpc_descriptor(&mut out, 0x000c, &body);
    // General Copy Operations.
    let mut body = vec![0u8; 32];
    be::put_u32(&mut body, 0, u32::from(limits::XCOPY_MAX_CONCURRENT));
    be::put_u32(&mut body, 4, u32::from(limits::XCOPY_MAX_CONCURRENT));
    be::put_u32(&mut body, 8, limits::XCOPY_MAX_SEGMENT_BYTES);
    body[12] = BLOCK_SIZE.trailing_zeros() as u8;
    tpc_descriptor(&mut out, 0x8001, &body);
    out
}

/// State of one copy in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    Running,
    Done { ok: bool },
}

#[derive(Debug)]
struct CopyEntry {
    serial: u64,
    nexus: NexusId,
    /// `None` for LIST ID USAGE 11b.
    list_id: Option<u8>,
    hold: bool,
    state: CopyState,
    segments_done: u16,
    bytes_done: u64,
}

/// Running copies and held results of one LU; bounded by `XCOPY_MAX_CONCURRENT` running
/// and `XCOPY_MAX_HELD_RESULTS` held (oldest dropped first).
#[derive(Debug, Default)]
pub(crate) struct CopyTable {
    entries: Vec<CopyEntry>,
    next_serial: u64,
}

impl CopyTable {
    /// Forgets the finished copies of a nexus (its I_T nexus ended or logged in anew).
    pub(crate) fn forget_nexus(&mut self, nexus: &NexusId) {
        self.entries
            .retain(|e| !(e.state != CopyState::Running && &e.nexus == nexus));
    }

    fn find(&self, nexus: &NexusId, list_id: u8) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| &e.nexus == nexus && e.list_id == Some(list_id))
    }

    /// Registers a running copy, replacing a held result of the same list identifier.
    fn start(&mut self, nexus: &NexusId, plan: &CopyPlan) -> Result<u64, ScsiError> {
        let list_id = (plan.usage != ListIdUsage::NoListId).then_some(plan.list_id);
        if let Some(id) = list_id {
            if let Some(i) = self.find(nexus, id) {
                if self.entries[i].state == CopyState::Running {
                    return Err(ScsiError::operation_in_progress());
                }
                self.entries.remove(i);
            }
        }
        let running = self
            .entries
            .iter()
            .filter(|e| e.state == CopyState::Running)
            .count();
        if running >= usize::from(limits::XCOPY_MAX_CONCURRENT) {
            return Err(ScsiError::insufficient_resources());
        }
        self.next_serial += 1;
        self.entries.push(CopyEntry {
            serial: self.next_serial,
            nexus: nexus.clone(),
            list_id,
            hold: plan.usage == ListIdUsage::Hold,
            state: CopyState::Running,
            segments_done: 0,
            bytes_done: 0,
        });
        Ok(self.next_serial)
    }

    fn progress(&mut self, serial: u64, segments_done: u16, bytes_done: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.serial == serial) {
            e.segments_done = segments_done;
            e.bytes_done = bytes_done;
        }
    }

    /// Ends a copy: held for RECEIVE COPY RESULTS when its list asked for it.
    fn finish(&mut self, serial: u64, ok: Option<bool>) {
        let Some(i) = self.entries.iter().position(|e| e.serial == serial) else {
            return;
        };
        match ok {
            Some(ok) if self.entries[i].hold => self.entries[i].state = CopyState::Done { ok },
            _ => {
                self.entries.remove(i);
            }
        }
        let held = |e: &CopyEntry| e.state != CopyState::Running;
        while self.entries.iter().filter(|e| held(e)).count() > limits::XCOPY_MAX_HELD_RESULTS {
            if let Some(oldest) = self.entries.iter().position(held) {
                self.entries.remove(oldest);
            }
        }
    }

    /// COPY STATUS parameter data for a list identifier of a nexus; a finished copy's
    /// status is discarded once reported.
    fn copy_status(&mut self, nexus: &NexusId, list_id: u8) -> Option<Vec<u8>> {
        let i = self.find(nexus, list_id)?;
        let e = &self.entries[i];
        let status = match e.state {
            CopyState::Running => 0x00,
            CopyState::Done { ok: true } => 0x01,
            CopyState::Done { ok: false } => 0x02,
        };
        // TRANSFER COUNT in bytes while it fits 32 bits, else in MiB (units 02h).
        let (units, count) = match u32::try_from(e.bytes_done) {
            Ok(b) => (0u8, b),
            Err(_) => (2u8, u32::try_from(e.bytes_done >> 20).unwrap_or(u32::MAX)),
        };
        let mut v = vec![0u8; 12];
        be::put_u32(&mut v, 0, 8);
        v[4] = status;
        be::put_u16(&mut v, 5, e.segments_done);
        v[7] = units;
        be::put_u32(&mut v, 8, count);
        if e.state != CopyState::Running {
            self.entries.remove(i);
        }
        Some(v)
    }
}

/// A logical unit of another target of this process, kept alive while a copy uses it.
pub(crate) trait LuHandle: Send + Sync {
    /// The logical unit.
    fn lu(&self) -> &LogicalUnit;
}

/// The logical units of this process a copy may name as copy targets (the registry of
/// targets); held weakly by each LU so the registry and its LUs form no cycle.
pub(crate) trait CopyPeers: Send + Sync + std::fmt::Debug {
    /// The first LU `pred` accepts.
    fn find(&self, pred: &dyn Fn(&LogicalUnit) -> bool) -> Option<Arc<dyn LuHandle>>;
}

/// A resolved copy target.
enum CopyTarget {
    This,
    Peer(Arc<dyn LuHandle>),
}

impl CopyTarget {
    fn lu<'a>(&'a self, this: &'a LogicalUnit) -> &'a LogicalUnit {
        match self {
            CopyTarget::This => this,
            CopyTarget::Peer(h) => h.lu(),
        }
    }
}

/// Ends a copy's entry when the command finishes or is dropped mid-copy (then with no
/// outcome, so nothing is held).
struct RunningCopy<'a> {
    lu: &'a LogicalUnit,
    serial: u64,
    outcome: Option<bool>,
}

impl Drop for RunningCopy<'_> {
    fn drop(&mut self) {
        self.lu
            .state
            .lock()
            .copies
            .finish(self.serial, self.outcome);
    }
}

impl LogicalUnit {
    /// EXTENDED COPY (83h/00h).
    pub(super) async fn extended_copy(&self, cmd: &Cdb<'_>, wanted: &mut Option<u32>) -> CmdResult {
        let c = cmd.bytes;
        let len = be::u32_at(c, 10);
        *wanted = Some(len);
        if c[1] & 0x1f != 0 {
            // Only LID1 EXTENDED COPY; LID4 (service action 01h) is not built.
            return Err(ScsiError::invalid_cdb_field(1));
        }
        let received = cmd.data_out.len().min(len as usize);
        let Some(plan) = parse(&cmd.data_out[..received])? else {
            return Ok(Bytes::new());
        };
        let serial = self.state.lock().copies.start(cmd.nexus, &plan)?;
        let mut guard = RunningCopy {
            lu: self,
            serial,
            outcome: None,
        };
        let result = self.run_copy(&plan, cmd.nexus, &cmd.cancel, serial).await;
        // A failed copy is held too, as "completed with errors" (COPY STATUS 02h).
        guard.outcome = Some(result.is_ok());
        drop(guard);
        result.map(|()| Bytes::new())
    }

    /// Whether a target descriptor names this LU.
    fn is_named_by(&self, t: &TargetDescriptor) -> bool {
        t.association == 0
            && t.block_len == BLOCK_SIZE
            && self.lu_designators().iter().any(|(code_set, kind, value)| {
                *code_set == t.code_set && *kind == t.designator_type && *value == t.designator
            })
    }

    /// The LU a target descriptor names: this one, or another LU of this process.
    fn resolve(&self, t: &TargetDescriptor) -> Option<CopyTarget> {
        if self.is_named_by(t) {
            return Some(CopyTarget::This);
        }
        let peers = self.copy_peers.get()?.upgrade()?;
        peers.find(&|lu| lu.is_named_by(t)).map(CopyTarget::Peer)
    }

    /// Whether `nexus` may access this LU as `access` under its reservations: the copy
    /// manager reaches another LU only where the initiator port itself could.
    fn copy_access_allowed(&self, nexus: &NexusId, access: Access) -> bool {
        let st = self.state.lock();
        if st.spc2_holder.as_ref().is_some_and(|h| h != nexus) {
            return false;
        }
        !st.pr.conflicts(nexus, access)
    }

    /// Resolves and checks every segment, then copies them in order.
    async fn run_copy(
        &self,
        plan: &CopyPlan,
        nexus: &NexusId,
        cancel: &Cancel,
        serial: u64,
    ) -> Result<(), ScsiError> {
        let targets: Vec<Option<CopyTarget>> =
            plan.targets.iter().map(|t| self.resolve(t)).collect();
        let mut steps = Vec::with_capacity(plan.segments.len());
        for (i, s) in plan.segments.iter().enumerate() {
            let seg = u32::try_from(i).unwrap_or(u32::MAX);
            let target = |idx: u16| match targets.get(usize::from(idx)) {
                _ if idx == THIS_LU_CSCD_ID => Ok(self),
                Some(Some(t)) => Ok(t.lu(self)),
                _ => Err(ScsiError::copy_aborted(0x08, 0x04, seg)),
            };
            let (src, dst) = (target(s.src)?, target(s.dst)?);
            if check_range(s.src_lba, s.blocks, src.capacity_blocks()).is_err()
                || check_range(s.dst_lba, s.blocks, dst.capacity_blocks()).is_err()
            {
                return Err(ScsiError::copy_aborted(0x00, 0x00, seg));
            }
            // This LU's reservations were checked by the command gate.
            let allowed = |lu: &LogicalUnit, access| {
                std::ptr::eq(lu, self) || lu.copy_access_allowed(nexus, access)
            };
            if !allowed(src, Access::Read) || !allowed(dst, Access::Write) {
                return Err(ScsiError::reservation_conflict());
            }
            dst.writable()?;
            steps.push((src, dst, s));
        }
        let mut bytes_done = 0u64;
        for (i, (src, dst, s)) in steps.into_iter().enumerate() {
            let done = u16::try_from(i).unwrap_or(u16::MAX);
            copy_segment(cancel, src, dst, s, |bytes| {
                bytes_done += bytes;
                self.state.lock().copies.progress(serial, done, bytes_done);
            })
            .await?;
            let done = u16::try_from(i + 1).unwrap_or(u16::MAX);
            self.state.lock().copies.progress(serial, done, bytes_done);
        }
        Ok(())
    }

    /// RECEIVE COPY RESULTS (84h): COPY STATUS and OPERATING PARAMETERS.
    pub(super) fn receive_copy_results(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        let alloc = be::u32_at(c, 10) as usize;
        let mut v = match c[1] & 0x1f {
            SA_OPERATING_PARAMETERS => operating_parameters(),
            SA_COPY_STATUS => self
                .state
                .lock()
                .copies
                .copy_status(cmd.nexus, c[2])
                .ok_or_else(|| ScsiError::invalid_cdb_field(2))?,
            _ => return Err(ScsiError::invalid_cdb_field(1)),
        };
        v.truncate(alloc);
        Ok(Bytes::from(v))
    }
}

/// Copies one segment from `src` to `dst` in bounded chunks, back to front when the
/// destination overlaps the source from above within one LU (as memmove does), so
/// overlapping copies stay correct; `progress` gets the bytes of each chunk written.
async fn copy_segment(
    cancel: &Cancel,
    src: &LogicalUnit,
    dst: &LogicalUnit,
    s: &Segment,
    mut progress: impl FnMut(u64),
) -> Result<(), ScsiError> {
    let chunk = u64::from(limits::XCOPY_CHUNK_BYTES) / BS;
    let chunks = s.blocks.div_ceil(chunk);
    let backwards =
        std::ptr::eq(src, dst) && s.dst_lba > s.src_lba && s.dst_lba < s.src_lba + s.blocks;
    for k in 0..chunks {
        let k = if backwards { chunks - 1 - k } else { k };
        let off = k * chunk;
        let n = chunk.min(s.blocks - off);
        // n * BS <= XCOPY_CHUNK_BYTES, a u32.
        let len = (n * BS) as u32;
        let data = src.read_medium(cancel, (s.src_lba + off) * BS, len).await?;
        src.counters.add_read(u64::from(len));
        dst.write_blocks(cancel, s.dst_lba + off, data, false)
            .await?;
        progress(u64::from(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::key;

    fn header(list_id: u8, usage: u8, tdl: u16, sdl: u32) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        v[0] = list_id;
        v[1] = usage << 3;
        be::put_u16(&mut v, 2, tdl);
        be::put_u32(&mut v, 8, sdl);
        v
    }

    fn ident(designator: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; IDENT_DESC_LEN];
        d[0] = IDENT_TARGET_TYPE;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = designator.len() as u8;
        d[8..8 + designator.len()].copy_from_slice(designator);
        be::put_u24(&mut d, 29, BLOCK_SIZE);
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; B2B_DESC_LEN];
        d[0] = B2B_SEGMENT_TYPE;
        be::put_u16(&mut d, 2, B2B_DESCRIPTOR_LENGTH);
        be::put_u16(&mut d, 4, src);
        be::put_u16(&mut d, 6, dst);
        be::put_u16(&mut d, 10, blocks);
        be::put_u64(&mut d, 12, src_lba);
        be::put_u64(&mut d, 20, dst_lba);
        d
    }

    fn list(targets: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
        let t: Vec<u8> = targets.concat();
        let s: Vec<u8> = segments.concat();
        let mut v = header(1, 0, t.len() as u16, s.len() as u32);
        v.extend_from_slice(&t);
        v.extend_from_slice(&s);
        v
    }

    /// Field pointer: (in CDB, byte, bit).
    type Field = Option<(bool, u16, Option<u8>)>;

    fn sense_of(e: ScsiError) -> (u8, u8, u8, Field) {
        let s = e.sense.unwrap();
        (s.key, s.asc, s.ascq, s.field)
    }

    #[test]
    fn a_valid_list_parses() {
        let p = list(&[ident(&[0x60; 16])], &[b2b(0, 0, 8, 0, 100)]);
        let plan = parse(&p).unwrap().unwrap();
        assert_eq!(plan.list_id, 1);
        assert_eq!(plan.usage, ListIdUsage::Hold);
        assert_eq!(plan.targets[0].designator, vec![0x60; 16]);
        assert_eq!(plan.targets[0].block_len, 512);
        assert_eq!(
            plan.segments,
            vec![Segment {
                src: 0,
                dst: 0,
                blocks: 8,
                src_lba: 0,
                dst_lba: 100
            }]
        );
        assert_eq!(parse(&[]).unwrap(), None, "an empty list is a no-op");
    }

    #[test]
    fn truncated_lists_are_parameter_list_length_errors() {
        let p = list(&[ident(&[1; 16])], &[b2b(0, 0, 8, 0, 100)]);
        for cut in [1, 15, 16 + 31, p.len() - 1] {
            let (k, asc, ascq, _) = sense_of(parse(&p[..cut]).unwrap_err());
            assert_eq!((k, asc, ascq), (key::ILLEGAL_REQUEST, 0x1a, 0x00), "{cut}");
        }
        // Descriptor lists longer than the maximum descriptor list length.
        let big = limits::XCOPY_MAX_DESCRIPTOR_LIST_BYTES;
        let mut h = header(1, 0, 0, big + 1);
        h.resize(HEADER_LEN + big as usize + 1, 0);
        assert_eq!(sense_of(parse(&h).unwrap_err()).1, 0x1a);
    }

    #[test]
    fn too_many_descriptors_are_refused_with_a_pointer() {
        let n = usize::from(limits::XCOPY_MAX_TARGET_DESCRIPTORS) + 1;
        let p = list(&vec![ident(&[1; 16]); n], &[b2b(0, 0, 1, 0, 1)]);
        let e = parse(&p).unwrap_err();
        let at = (HEADER_LEN + (n - 1) * IDENT_DESC_LEN) as u16;
        assert_eq!(
            sense_of(e),
            (key::ILLEGAL_REQUEST, 0x26, 0x06, Some((false, at, None)))
        );
        let n = usize::from(limits::XCOPY_MAX_SEGMENT_DESCRIPTORS) + 1;
        let p = list(&[ident(&[1; 16])], &vec![b2b(0, 0, 1, 0, 1); n]);
        assert_eq!(sense_of(parse(&p).unwrap_err()).2, 0x08);
    }

    #[test]
    fn unsupported_descriptor_types_are_named() {
        let mut fc = ident(&[1; 16]);
        fc[0] = 0xe0;
        let p = list(&[fc], &[b2b(0, 0, 1, 0, 1)]);
        assert_eq!(
            sense_of(parse(&p).unwrap_err()),
            (key::ILLEGAL_REQUEST, 0x26, 0x07, Some((false, 16, None)))
        );
        let mut stream = b2b(0, 0, 1, 0, 1);
        stream[0] = 0x03;
        let p = list(&[ident(&[1; 16])], &[stream]);
        assert_eq!(
            sense_of(parse(&p).unwrap_err()),
            (key::ILLEGAL_REQUEST, 0x26, 0x09, Some((false, 48, None)))
        );
    }

    #[test]
    fn bad_fields_are_invalid_field_in_parameter_list() {
        // LU ID TYPE and NUL are obsolete in SPC-4 and ignored; a peripheral device type
        // other than block is refused.
        let mut t = ident(&[1; 16]);
        t[1] = 0xa0;
        assert!(parse(&list(&[t.clone()], &[b2b(0, 0, 1, 0, 1)])).is_ok());
        t[1] = 0x01;
        let e = parse(&list(&[t], &[b2b(0, 0, 1, 0, 1)])).unwrap_err();
        assert_eq!(
            sense_of(e),
            (key::ILLEGAL_REQUEST, 0x26, 0x00, Some((false, 17, Some(4))))
        );
        // Designator longer than an identification descriptor holds.
        let mut t = ident(&[1; 16]);
        t[7] = 21;
        let e = parse(&list(&[t], &[])).unwrap_err();
        assert_eq!(sense_of(e).3, Some((false, 23, None)));
        // Wrong block-to-block DESCRIPTOR LENGTH.
        let mut s = b2b(0, 0, 1, 0, 1);
        s[3] = 0x14;
        let e = parse(&list(&[ident(&[1; 16])], &[s])).unwrap_err();
        assert_eq!(sense_of(e).3, Some((false, 50, None)));
        // LIST ID USAGE 01b, and 11b with a non-zero list identifier.
        let mut p = list(&[ident(&[1; 16])], &[]);
        p[1] = 0x08;
        assert_eq!(
            sense_of(parse(&p).unwrap_err()).3,
            Some((false, 1, Some(4)))
        );
        p[1] = 0x18;
        assert_eq!(sense_of(parse(&p).unwrap_err()).3, Some((false, 0, None)));
        p[0] = 0;
        assert_eq!(parse(&p).unwrap().unwrap().usage, ListIdUsage::NoListId);
        // Inline data is not supported.
        let mut p = list(&[ident(&[1; 16])], &[]);
        be::put_u32(&mut p, 12, 4);
        p.extend_from_slice(&[0; 4]);
        assert_eq!(sense_of(parse(&p).unwrap_err()).3, Some((false, 12, None)));
        // A segment longer than MAXIMUM SEGMENT LENGTH.
        let max = (limits::XCOPY_MAX_SEGMENT_BYTES / BLOCK_SIZE) as u16;
        assert!(parse(&list(&[ident(&[1; 16])], &[b2b(0, 0, max, 0, 1)])).is_ok());
        let e = parse(&list(&[ident(&[1; 16])], &[b2b(0, 0, max + 1, 0, 1)])).unwrap_err();
        assert_eq!(sense_of(e).3, Some((false, 58, None)));
        // A segment list that ends inside a descriptor.
        let mut p = list(&[ident(&[1; 16])], &[b2b(0, 0, 1, 0, 1)]);
        be::put_u32(&mut p, 8, 20);
        assert_eq!(sense_of(parse(&p).unwrap_err()).3, Some((false, 8, None)));
    }

    #[test]
    fn copy_table_holds_reports_once_and_bounds() {
        let n: NexusId = std::sync::Arc::from("iqn.x,i,0x1");
        let plan = |usage| CopyPlan {
            list_id: 7,
            usage,
            targets: vec![],
            segments: vec![],
        };
        let mut t = CopyTable::default();
        assert!(t.copy_status(&n, 7).is_none());
        let s = t.start(&n, &plan(ListIdUsage::Hold)).unwrap();
        let e = t.start(&n, &plan(ListIdUsage::Hold)).unwrap_err();
        assert_eq!(e.sense.unwrap().ascq, 0x16, "same list id while running");
        t.progress(s, 1, 4096);
        assert_eq!(t.copy_status(&n, 7).unwrap()[4], 0x00, "in progress");
        t.finish(s, Some(true));
        let st = t.copy_status(&n, 7).unwrap();
        assert_eq!(
            (st[4], be::u16_at(&st, 5), be::u32_at(&st, 8)),
            (1, 1, 4096)
        );
        assert!(t.copy_status(&n, 7).is_none(), "reported once");
        let s = t.start(&n, &plan(ListIdUsage::Discard)).unwrap();
        t.finish(s, Some(true));
        assert!(t.copy_status(&n, 7).is_none(), "discard holds nothing");
        for i in 0..limits::XCOPY_MAX_HELD_RESULTS + 10 {
            let mut p = plan(ListIdUsage::Hold);
            p.list_id = i as u8;
            let s = t.start(&n, &p).unwrap();
            t.finish(s, Some(false));
        }
        assert_eq!(t.entries.len(), limits::XCOPY_MAX_HELD_RESULTS);
        t.forget_nexus(&n);
        assert!(t.entries.is_empty());
        for _ in 0..limits::XCOPY_MAX_CONCURRENT {
            t.start(&n, &plan(ListIdUsage::NoListId)).unwrap();
        }
        let e = t.start(&n, &plan(ListIdUsage::NoListId)).unwrap_err();
        assert_eq!(e.sense.unwrap().asc, 0x55);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000, failure_persistence: None, ..Default::default()
        })]

        /// Mutated and truncated valid lists parse or fail as ILLEGAL REQUEST; never panic.
        #[test]
        fn mutated_lists_never_panic(
            flips in proptest::collection::vec((0usize..140, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..160,
        ) {
            let mut p = list(&[ident(&[1; 16]), ident(&[2; 8])], &[b2b(0, 1, 8, 0, 9), b2b(1, 0, 1, 2, 3)]);
            for (at, v) in flips {
                if let Some(b) = p.get_mut(at) {
                    *b = v;
                }
            }
            p.truncate(cut);
            if let Err(e) = parse(&p) {
                proptest::prop_assert_eq!(e.sense.unwrap().key, key::ILLEGAL_REQUEST);
            }
        }
    }

    #[test]
    fn third_party_copy_vpd_layout() {
        let v = third_party_copy_vpd();
        let mut kinds = Vec::new();
        let mut at = 0;
        while at < v.len() {
            let len = usize::from(be::u16_at(&v, at + 2));
            assert_eq!(len % 4, 0);
            kinds.push(be::u16_at(&v, at));
            if kinds.len() == 1 {
                // 84h lists service actions 00h and 03h.
                assert_eq!(&v[at + 4..at + 12], &[7, 0x83, 1, 0, 0x84, 2, 0, 3]);
            }
            at += 4 + len;
        }
        assert_eq!(at, v.len());
        assert_eq!(kinds, vec![0x0001, 0x0004, 0x0008, 0x000c, 0x8001]);
    }

    #[test]
    fn operating_parameters_layout() {
        let v = operating_parameters();
        assert_eq!(be::u32_at(&v, 0) as usize, v.len() - 4);
        assert_eq!(be::u16_at(&v, 8), limits::XCOPY_MAX_TARGET_DESCRIPTORS);
        assert_eq!(be::u16_at(&v, 10), limits::XCOPY_MAX_SEGMENT_DESCRIPTORS);
        assert_eq!(be::u32_at(&v, 12), 8 * 32 + 16 * 28);
        assert_eq!(be::u32_at(&v, 16), 16 << 20);
        assert_eq!(&v[43..], &[2, 0x02, 0xe4]);
    }
}
