//! Persistent reservations (SPC-4 §5.13, PERSISTENT RESERVE IN/OUT), SPC-2 RESERVE and
//! RELEASE, and the APTPL file that keeps persistent reservations across restarts.
//!
//! Owns: `PrState` inside the LU state mutex. Invariants: the generation grows on every
//! registration change; a reservation of an all-registrants type exists only while at
//! least one registration does; with APTPL set, the reservation store (docs/format/aptpl.md) is
//! swapped after each change and before it is applied or the command completes.
//! Never: do file I/O while holding the LU state mutex.

use super::{Access, Cdb, CmdResult, LogicalUnit, LuState, NexusId};
use crate::be;
use crate::limits;
use crate::reservation_store::{ReservationStore, StoreError};
use crate::sense::ScsiError;
use bytes::Bytes;
use std::sync::Arc;

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

fn valid_type(t: u8) -> bool {
    matches!(t, WE | EA | WE_RO | EA_RO | WE_AR | EA_AR)
}

fn all_registrants(t: u8) -> bool {
    matches!(t, WE_AR | EA_AR)
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    pub nexus: NexusId,
    pub key: u64,
}

/// The persistent reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub holder: NexusId,
    pub kind: u8,
}

/// Registrations and reservation of one LU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
    pub aptpl: bool,
}

impl PrState {
    fn key_of(&self, n: &NexusId) -> Option<u64> {
        self.regs.iter().find(|r| &r.nexus == n).map(|r| r.key)
    }

    fn is_holder(&self, n: &NexusId) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.kind) => self.key_of(n).is_some(),
            Some(r) => &r.holder == n,
            None => false,
        }
    }

    /// Whether a command of class `access` from `n` conflicts with the reservation.
    pub(crate) fn conflicts(&self, n: &NexusId, access: Access) -> bool {
        let Some(res) = &self.res else { return false };
        if access == Access::Always || self.is_holder(n) {
            return false;
        }
        let registered = self.key_of(n).is_some();
        match (res.kind, access) {
            (WE, Access::Read) => false,
            (WE, _) => true,
            (EA, _) => true,
            (WE_RO | WE_AR, Access::Read) => false,
            (WE_RO | WE_AR, _) => !registered,
            _ => !registered,
        }
    }
}

/// Errors loading the APTPL file; the target refuses to start rather than silently
/// forgetting reservations that fence other hosts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AptplError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid APTPL file.
    #[error("{path}: corrupt APTPL file: {reason}")]
    Corrupt {
        /// File.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

const MAGIC: &[u8; 8] = b"CSTORPR\0";
const VERSION: u32 = 1;

/// Encodes the state (docs/format/aptpl.md).
fn encode(pr: &PrState) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&pr.generation.to_le_bytes());
    let (kind, holder) = match &pr.res {
        Some(r) => (
            r.kind,
            pr.regs
                .iter()
                .position(|g| g.nexus == r.holder)
                .map_or(u32::MAX, |i| i as u32),
        ),
        None => (0, u32::MAX),
    };
    p.push(kind);
    p.extend_from_slice(&holder.to_le_bytes());
    p.extend_from_slice(&(pr.regs.len() as u32).to_le_bytes());
    for r in &pr.regs {
        p.extend_from_slice(&r.key.to_le_bytes());
        p.extend_from_slice(&(r.nexus.len() as u16).to_le_bytes());
        p.extend_from_slice(r.nexus.as_bytes());
    }
    let mut out = Vec::with_capacity(p.len() + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&p);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Some(u64::from_le_bytes(a))
    }
}

fn decode(b: &[u8]) -> Result<PrState, &'static str> {
    if b.len() < 20 || &b[..8] != MAGIC {
        return Err("bad magic");
    }
    let mut r = Reader { b, at: 8 };
    let version = r.u32().ok_or("short")?;
    if version != VERSION {
        return Err("unknown version");
    }
    let len = r.u32().ok_or("short")? as usize;
    if b.len() != 16 + len + 4 {
        return Err("length mismatch");
    }
    let crc = u32::from_le_bytes([b[16 + len], b[17 + len], b[18 + len], b[19 + len]]);
    if crc != crc32c::crc32c(&b[..16 + len]) {
        return Err("checksum mismatch");
    }
    let generation = r.u32().ok_or("short")?;
    let kind = r.u8().ok_or("short")?;
    let holder = r.u32().ok_or("short")?;
    let count = r.u32().ok_or("short")? as usize;
    if count > limits::MAX_PR_REGISTRATIONS {
        return Err("too many registrations");
    }
    let mut regs = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.u64().ok_or("short")?;
        let n = usize::from(r.u16().ok_or("short")?);
        let name = std::str::from_utf8(r.take(n).ok_or("short")?).map_err(|_| "name not UTF-8")?;
        regs.push(Registration {
            nexus: Arc::from(name),
            key,
        });
    }
    let res = match kind {
        0 => None,
        k if valid_type(k) => {
            let holder = regs
                .get(holder as usize)
                .ok_or("holder index out of range")?;
            Some(Reservation {
                holder: holder.nexus.clone(),
                kind: k,
            })
        }
        _ => return Err("bad reservation type"),
    };
    Ok(PrState {
        generation,
        regs,
        res,
        aptpl: true,
    })
}

/// Loads persisted reservations from `store`; nothing stored means none. Returns the
/// state and the stored bytes (what the next compare-and-swap expects).
pub(crate) fn load_aptpl(
    store: &dyn ReservationStore,
) -> Result<(PrState, Option<Vec<u8>>), AptplError> {
    match store.load() {
        Ok(Some(b)) => match decode(&b) {
            Ok(pr) => Ok((pr, Some(b))),
            Err(reason) => Err(AptplError::Corrupt {
                path: format!("{store:?}"),
                reason,
            }),
        },
        Ok(None) => Ok((PrState::default(), None)),
        Err(e) => Err(AptplError::Io {
            path: format!("{store:?}"),
            source: std::io::Error::other(e),
        }),
    }
}

/// iSCSI TransportID (SPC-4 §7.6.4.6) of a nexus id, padded to a multiple of 4.
fn transport_id(n: &str) -> Vec<u8> {
    let mut name = n.as_bytes().to_vec();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut v = vec![0x45, 0, 0, 0]; // format 01b, protocol iSCSI (5)
    be::put_u16(&mut v, 2, name.len() as u16);
    v.extend_from_slice(&name);
    v
}

impl LogicalUnit {
    pub(super) fn persistent_reserve_in(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        let alloc = usize::from(be::u16_at(c, 7));
        let st = self.state.lock();
        let pr = &st.pr;
        let mut v = vec![0u8; 8];
        match c[1] & 0x1f {
            0 => {
                be::put_u32(&mut v, 0, pr.generation);
                for r in &pr.regs {
                    v.extend_from_slice(&r.key.to_be_bytes_wire());
                }
                let len = (v.len() - 8) as u32;
                be::put_u32(&mut v, 4, len);
            }
            1 => {
                be::put_u32(&mut v, 0, pr.generation);
                if let Some(res) = &pr.res {
                    let mut d = [0u8; 16];
                    let key = if all_registrants(res.kind) {
                        0
                    } else {
                        pr.key_of(&res.holder).unwrap_or(0)
                    };
                    be::put_u64(&mut d, 0, key);
                    d[13] = res.kind;
                    v.extend_from_slice(&d);
                }
                let len = (v.len() - 8) as u32;
                be::put_u32(&mut v, 4, len);
            }
            2 => {
                v = vec![0u8; 8];
                be::put_u16(&mut v, 0, 8);
                v[2] = 0x10 | 0x04 | 0x01; // CRH, ATP_C, PTPL_C
                v[3] = 0x80 | u8::from(pr.aptpl); // TMV, PTPL_A
                v[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WE_AR EA_RO WE_RO EA WE
                v[5] = 0x01; // EA_AR
            }
            3 => {
                be::put_u32(&mut v, 0, pr.generation);
                for r in &pr.regs {
                    let mut d = vec![0u8; 24];
                    be::put_u64(&mut d, 0, r.key);
                    d[12] = 0x02; // ALL_TG_PT: one target port
                    if let Some(res) = &pr.res {
                        if all_registrants(res.kind) || res.holder == r.nexus {
                            d[12] |= 0x01;
                            d[13] = res.kind;
                        }
                    }
                    be::put_u16(&mut d, 18, 1);
                    let tid = transport_id(&r.nexus);
                    be::put_u32(&mut d, 20, tid.len() as u32);
                    d.extend_from_slice(&tid);
                    v.extend_from_slice(&d);
                }
                let len = (v.len() - 8) as u32;
                be::put_u32(&mut v, 4, len);
            }
            _ => return Err(ScsiError::invalid_cdb_field(1)),
        }
        v.truncate(alloc);
        Ok(Bytes::from(v))
    }

    /// PERSISTENT RESERVE OUT, one at a time per LU. The change is computed on a copy
    /// and applied only after the APTPL store confirmed it, so a failed save changes
    /// nothing; PREEMPT AND ABORT then aborts the preempted nexuses' tasks in every
    /// session (TASK ABORTED, TAS=1) and completes only after they ended.
    pub(super) async fn persistent_reserve_out(&self, cmd: &Cdb<'_>) -> CmdResult {
        let _serial = self.pr_serial.lock().await;
        let mut fenced = Vec::new();
        let (scratch, persist) = {
            let st = self.state.lock();
            let mut scratch = LuState {
                pr: st.pr.clone(),
                spc2_holder: st.spc2_holder.clone(),
                ua: st.ua.keys().map(|k| (k.clone(), Vec::new())).collect(),
                mode: st.mode,
                reported_size: st.reported_size,
                copies: Default::default(),
            };
            pr_out(&mut scratch, cmd, &mut fenced)?;
            let persist =
                scratch.pr.aptpl != st.pr.aptpl || (scratch.pr.aptpl && scratch.pr != st.pr);
            (scratch, persist)
        };
        if persist {
            if let Some(store) = self.pr_store.clone() {
                let next = scratch.pr.aptpl.then(|| encode(&scratch.pr));
                let expected = self.pr_stored.lock().clone();
                let r = tokio::task::spawn_blocking(move || {
                    store
                        .compare_and_swap(expected.as_deref(), next.as_deref())
                        .map(|()| next)
                })
                .await;
                match r {
                    Ok(Ok(next)) => *self.pr_stored.lock() = next,
                    Ok(Err(StoreError::TooLarge(_))) => {
                        return Err(ScsiError::insufficient_registration_resources());
                    }
                    other => {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            _ => "store task failed".to_owned(),
                        };
                        tracing::error!(target_name = %self.target_name, error = %why, "saving reservations failed; nothing changed");
                        return Err(ScsiError::internal());
                    }
                }
            }
        }
        {
            let mut st = self.state.lock();
            st.pr = scratch.pr;
            for (n, q) in scratch.ua {
                for (asc, ascq) in q {
                    if st.ua.contains_key(&n) {
                        LogicalUnit::raise_ua_for(&mut st, &n, asc, ascq);
                    }
                }
            }
        }
        if !fenced.is_empty() {
            let all = self
                .tasks
                .abort_where(
                    |t| fenced.contains(&t.nexus),
                    cmd.nexus,
                    true,
                    limits::TMF_WAIT,
                )
                .await;
            if !all {
                tracing::warn!(target_name = %self.target_name, "preempted tasks did not end in time");
            }
        }
        Ok(Bytes::new())
    }

    pub(super) fn reserve_spc2(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        if c[0] == 0x56 && c[1] & 0x12 != 0 {
            return Err(ScsiError::invalid_cdb_field(1)); // 3RDPTY / LONGID
        }
        let mut st = self.state.lock();
        if !st.pr.regs.is_empty() || st.pr.res.is_some() {
            return Err(ScsiError::reservation_conflict());
        }
        match &st.spc2_holder {
            Some(h) if h != cmd.nexus => Err(ScsiError::reservation_conflict()),
            _ => {
                st.spc2_holder = Some(cmd.nexus.clone());
                Ok(Bytes::new())
            }
        }
    }

    pub(super) fn release_spc2(&self, cmd: &Cdb<'_>) -> CmdResult {
        let mut st = self.state.lock();
        if st.pr.res.is_some() {
            return Err(ScsiError::reservation_conflict());
        }
        if st.spc2_holder.as_ref() == Some(cmd.nexus) {
            st.spc2_holder = None;
        }
        Ok(Bytes::new())
    }
}

/// Big-endian bytes of a key for the wire (PR keys are 8-byte big-endian fields).
trait WireKey {
    fn to_be_bytes_wire(&self) -> [u8; 8];
}
impl WireKey for u64 {
    fn to_be_bytes_wire(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        be::put_u64(&mut b, 0, *self);
        b
    }
}

fn pr_out(st: &mut LuState, cmd: &Cdb<'_>, fenced: &mut Vec<NexusId>) -> Result<(), ScsiError> {
    let c = cmd.bytes;
    let sa = c[1] & 0x1f;
    let scope = c[2] >> 4;
    let kind = c[2] & 0x0f;
    let len = be::u32_at(c, 5) as usize;
    if sa == 7 {
        return register_and_move(st, cmd, len, scope, kind);
    }
    if sa > 7 {
        return Err(ScsiError::invalid_cdb_field(1));
    }
    if len != 24 {
        return Err(ScsiError::param_list_length());
    }
    if cmd.data_out.len() < 24 {
        return Err(ScsiError::param_list_length());
    }
    let p = &cmd.data_out[..24];
    let key = be::u64_at(p, 0);
    let sa_key = be::u64_at(p, 8);
    let spec_i_pt = p[20] & 0x08 != 0;
    let aptpl = p[20] & 0x01 != 0;
    if spec_i_pt {
        return Err(ScsiError::invalid_param_field(20));
    }
    let n = cmd.nexus;
    let pr = &mut st.pr;
    let mine = pr.key_of(n);
    match sa {
        0 | 6 => {
            if sa == 0 && mine.unwrap_or(0) != key {
                return Err(ScsiError::reservation_conflict());
            }
            match mine {
                None if sa_key == 0 => {}
                None => {
                    if pr.regs.len() >= limits::MAX_PR_REGISTRATIONS {
                        return Err(ScsiError::insufficient_registration_resources());
                    }
                    pr.regs.push(Registration {
                        nexus: n.clone(),
                        key: sa_key,
                    });
                    pr.generation = pr.generation.wrapping_add(1);
                }
                Some(_) if sa_key == 0 => unregister(st, n),
                Some(_) => {
                    if let Some(r) = pr.regs.iter_mut().find(|r| &r.nexus == n) {
                        r.key = sa_key;
                    }
                    pr.generation = pr.generation.wrapping_add(1);
                }
            }
            st.pr.aptpl = aptpl;
            Ok(())
        }
        1 => {
            if mine != Some(key) {
                return Err(ScsiError::reservation_conflict());
            }
            if scope != 0 || !valid_type(kind) {
                return Err(ScsiError::invalid_cdb_field(2));
            }
            match &pr.res {
                Some(r) if pr.is_holder(n) && r.kind == kind => Ok(()),
                Some(_) => Err(ScsiError::reservation_conflict()),
                None => {
                    pr.res = Some(Reservation {
                        holder: n.clone(),
                        kind,
                    });
                    Ok(())
                }
            }
        }
        2 => {
            if mine != Some(key) {
                return Err(ScsiError::reservation_conflict());
            }
            let Some(res) = pr.res.clone() else {
                return Ok(());
            };
            if !pr.is_holder(n) {
                return Ok(());
            }
            if scope != 0 || res.kind != kind {
                return Err(ScsiError::invalid_release());
            }
            pr.res = None;
            if matches!(res.kind, WE_RO | EA_RO | WE_AR | EA_AR) {
                release_ua(st, n);
            }
            Ok(())
        }
        3 => {
            if mine != Some(key) {
                return Err(ScsiError::reservation_conflict());
            }
            let others: Vec<NexusId> = pr
                .regs
                .iter()
                .map(|r| r.nexus.clone())
                .filter(|x| x != n)
                .collect();
            pr.regs.clear();
            pr.res = None;
            pr.generation = pr.generation.wrapping_add(1);
            for o in others {
                LogicalUnit::raise_ua_for(st, &o, 0x2a, 0x03);
            }
            Ok(())
        }
        _ => {
            let removed = preempt(st, n, mine, key, sa_key, scope, kind)?;
            if sa == 5 {
                *fenced = removed;
            }
            Ok(())
        }
    }
}

/// REGISTER AND MOVE (SPC-4 §5.13.8): the holder hands its reservation to the I_T nexus
/// named by an iSCSI TransportID (format 01b, `<name>,i,0x<isid>`), registering it with
/// the service action key; with UNREG the holder's registration ends.
fn register_and_move(
    st: &mut LuState,
    cmd: &Cdb<'_>,
    len: usize,
    scope: u8,
    kind: u8,
) -> Result<(), ScsiError> {
    let n = cmd.nexus;
    if len < 24 || cmd.data_out.len() < len {
        return Err(ScsiError::param_list_length());
    }
    let p = &cmd.data_out[..len];
    let key = be::u64_at(p, 0);
    let sa_key = be::u64_at(p, 8);
    let unreg = p[17] & 0x02 != 0;
    let aptpl = p[17] & 0x01 != 0;
    let tid_len = be::u32_at(p, 20) as usize;
    if 24 + tid_len > p.len() || tid_len < 4 {
        return Err(ScsiError::param_list_length());
    }
    let tid = &p[24..24 + tid_len];
    if st.pr.key_of(n) != Some(key) {
        return Err(ScsiError::reservation_conflict());
    }
    let Some(res) = st.pr.res.clone() else {
        return Err(ScsiError::reservation_conflict());
    };
    if &res.holder != n || all_registrants(res.kind) {
        return Err(ScsiError::reservation_conflict());
    }
    if scope != 0 || !valid_type(kind) {
        return Err(ScsiError::invalid_cdb_field(2));
    }
    if sa_key == 0 {
        return Err(ScsiError::invalid_param_field(8));
    }
    // iSCSI TransportID: byte 0 = format 01b | protocol 5, then a NUL-terminated name.
    if tid[0] != 0x45 {
        return Err(ScsiError::invalid_param_field(24));
    }
    let name_len = usize::from(be::u16_at(tid, 2)).min(tid.len() - 4);
    let name = &tid[4..4 + name_len];
    let name = name.split(|b| *b == 0).next().unwrap_or_default();
    let Ok(name) = std::str::from_utf8(name) else {
        return Err(ScsiError::invalid_param_field(28));
    };
    // Initiator names are case-normalised lower case (RFC 3722), ISIDs printed in hex.
    let dest: NexusId = Arc::from(name.to_ascii_lowercase().as_str());
    let dest = st
        .ua
        .keys()
        .find(|k| k.eq_ignore_ascii_case(&dest))
        .cloned()
        .unwrap_or(dest);
    if &dest == n {
        return Err(ScsiError::invalid_param_field(24));
    }
    let pr = &mut st.pr;
    match pr.regs.iter_mut().find(|r| r.nexus == dest) {
        Some(r) => r.key = sa_key,
        None => {
            if pr.regs.len() >= limits::MAX_PR_REGISTRATIONS {
                return Err(ScsiError::insufficient_registration_resources());
            }
            pr.regs.push(Registration {
                nexus: dest.clone(),
                key: sa_key,
            });
        }
    }
    pr.res = Some(Reservation { holder: dest, kind });
    if unreg {
        pr.regs.retain(|r| &r.nexus != n);
    }
    pr.generation = pr.generation.wrapping_add(1);
    pr.aptpl = aptpl;
    Ok(())
}

fn release_ua(st: &mut LuState, n: &NexusId) {
    let others: Vec<NexusId> = st
        .pr
        .regs
        .iter()
        .map(|r| r.nexus.clone())
        .filter(|x| x != n)
        .collect();
    for o in others {
        LogicalUnit::raise_ua_for(st, &o, 0x2a, 0x04);
    }
}

fn unregister(st: &mut LuState, n: &NexusId) {
    let pr = &mut st.pr;
    let was_holder = pr.is_holder(n);
    pr.regs.retain(|r| &r.nexus != n);
    pr.generation = pr.generation.wrapping_add(1);
    if let Some(res) = pr.res.clone() {
        let release = if all_registrants(res.kind) {
            pr.regs.is_empty()
        } else {
            was_holder
        };
        if release {
            pr.res = None;
            if matches!(res.kind, WE_RO | EA_RO) {
                release_ua(st, n);
            }
        }
    }
}

fn preempt(
    st: &mut LuState,
    n: &NexusId,
    mine: Option<u64>,
    key: u64,
    sa_key: u64,
    scope: u8,
    kind: u8,
) -> Result<Vec<NexusId>, ScsiError> {
    if mine != Some(key) {
        return Err(ScsiError::reservation_conflict());
    }
    let pr = &mut st.pr;
    let res = pr.res.clone();
    let take_over = match &res {
        Some(r) if all_registrants(r.kind) => sa_key == 0,
        Some(r) => pr.key_of(&r.holder) == Some(sa_key),
        None => false,
    };
    if take_over {
        if scope != 0 || !valid_type(kind) {
            return Err(ScsiError::invalid_cdb_field(2));
        }
    } else if sa_key == 0 {
        return Err(ScsiError::invalid_param_field(8));
    }
    let removed: Vec<NexusId> = pr
        .regs
        .iter()
        .filter(|r| &r.nexus != n && (r.key == sa_key || (take_over && sa_key == 0)))
        .map(|r| r.nexus.clone())
        .collect();
    if removed.is_empty() && !take_over {
        return Err(ScsiError::reservation_conflict());
    }
    pr.regs.retain(|r| !removed.contains(&r.nexus));
    if take_over {
        pr.res = Some(Reservation {
            holder: n.clone(),
            kind,
        });
    }
    pr.generation = pr.generation.wrapping_add(1);
    for r in &removed {
        LogicalUnit::raise_ua_for(st, r, 0x2a, 0x05);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aptpl_round_trip_and_corruption() {
        let a: NexusId = Arc::from("iqn.a,i,0x000000000001");
        let b: NexusId = Arc::from("iqn.b,i,0x000000000002");
        let pr = PrState {
            generation: 7,
            regs: vec![
                Registration {
                    nexus: a.clone(),
                    key: 1,
                },
                Registration { nexus: b, key: 2 },
            ],
            res: Some(Reservation {
                holder: a,
                kind: WE,
            }),
            aptpl: true,
        };
        let bytes = encode(&pr);
        assert_eq!(decode(&bytes).unwrap(), pr);
        let mut bad = bytes.clone();
        bad[25] ^= 0xff;
        assert_eq!(decode(&bad), Err("checksum mismatch"));
        let mut newer = bytes;
        newer[8] = 2;
        assert_eq!(decode(&newer), Err("unknown version"));
    }

    #[test]
    fn write_exclusive_lets_others_read_only() {
        let a: NexusId = Arc::from("a");
        let b: NexusId = Arc::from("b");
        let pr = PrState {
            generation: 1,
            regs: vec![Registration {
                nexus: a.clone(),
                key: 1,
            }],
            res: Some(Reservation {
                holder: a.clone(),
                kind: WE,
            }),
            aptpl: false,
        };
        assert!(!pr.conflicts(&b, Access::Read));
        assert!(pr.conflicts(&b, Access::Write));
        assert!(!pr.conflicts(&a, Access::Write));
    }
}
