//! Identification and capacity commands: INQUIRY and its VPD pages, READ CAPACITY 10/16,
//! REPORT LUNS, REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS,
//! READ DEFECT DATA.
//!
//! Invariants: VPD 0x80/0x83 are derived only from the backend identity and the target
//! name, so they are stable across restarts. Never: allocate from an allocation length
//! (responses are built at their natural size, then truncated).

use super::{CmdResult, LogicalUnit, BLOCK_SIZE};
use crate::be;
use crate::limits;
use crate::sense::ScsiError;
use bytes::Bytes;

const VENDOR: &[u8; 8] = b"CSTOR   ";
const PRODUCT: &[u8; 16] = b"VOLUME          ";
const REVISION: &[u8; 4] = b"0001";

fn truncate(mut v: Vec<u8>, alloc: usize) -> CmdResult {
    v.truncate(alloc);
    Ok(Bytes::from(v))
}

impl LogicalUnit {
    pub(super) fn inquiry(&self, c: &[u8]) -> CmdResult {
        let evpd = c[1] & 0x01 != 0;
        let page = c[2];
        let alloc = usize::from(be::u16_at(c, 3));
        if c[1] & 0xfe != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        if !evpd {
            if page != 0 {
                return Err(ScsiError::invalid_cdb_field(2));
            }
            return truncate(self.standard_inquiry(), alloc);
        }
        let body = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2],
            0x80 => {
                let mut s = self.backend.identity().serial.clone().into_bytes();
                s.truncate(32);
                s
            }
            0x83 => self.device_identification(),
            0x8f => super::xcopy::third_party_copy_vpd(),
            0xb0 => block_limits(self.phys_exponent),
            0xb1 => {
                let mut v = vec![0u8; 60];
                be::put_u16(&mut v, 0, 1); // non-rotating medium
                v
            }
            0xb2 => {
                // LBPU, LBPWS, LBPWS10, LBPRZ; thin provisioned.
                vec![0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]
            }
            _ => return Err(ScsiError::invalid_cdb_field(2)),
        };
        let mut v = vec![0u8, page, 0, 0];
        be::put_u16(&mut v, 2, body.len() as u16);
        v.extend_from_slice(&body);
        truncate(v, alloc)
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let mut v = vec![0u8; 96];
        v[0] = 0x00; // direct access block device, connected
        v[2] = 0x06; // SPC-4
        v[3] = 0x10 | 0x02; // HISUP, response data format 2
        v[4] = (v.len() - 5) as u8;
        v[7] = 0x02; // CMDQUE
        v[8..16].copy_from_slice(VENDOR);
        v[16..32].copy_from_slice(PRODUCT);
        v[32..36].copy_from_slice(REVISION);
        // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
        for (i, d) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
            be::put_u16(&mut v, 58 + 2 * i, *d);
        }
        v
    }

    fn device_identification(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (code_set, kind, value) in self.lu_designators() {
            designator(&mut out, code_set, kind, 0x00, &value);
        }
        // Target port: relative port 1 and target port group 1 (one portal group).
        designator(&mut out, 0x51, 0x04, 0x90, &[0, 0, 0, 1]);
        designator(&mut out, 0x51, 0x05, 0x90, &[0, 0, 0, 1]);
        designator(
            &mut out,
            0x53,
            0x08,
            0x90,
            &name_string(&format!("{},t,0x0001", self.target_name)),
        );
        designator(&mut out, 0x53, 0x08, 0xa0, &name_string(&self.target_name));
        out
    }

    /// The logical unit's own designators (code set, designator type, value), as VPD
    /// 0x83 reports them and EXTENDED COPY target descriptors name them.
    pub(super) fn lu_designators(&self) -> [(u8, u8, Vec<u8>); 2] {
        let ident = self.backend.identity();
        // NAA IEEE Registered Extended (6h): the OUI field is left zero (no IEEE company
        // id is registered); the 124 remaining bits come from the volume identity.
        let mut naa = ident.id.to_vec();
        naa[0] = 0x60 | (naa[0] & 0x0f);
        let mut t10 = VENDOR.to_vec();
        t10.extend_from_slice(ident.serial.as_bytes());
        [(0x01, 0x03, naa), (0x02, 0x01, t10)]
    }

    pub(super) fn read_capacity10(&self, c: &[u8]) -> CmdResult {
        let pmi = c[8] & 0x01 != 0;
        if !pmi && be::u32_at(c, 2) != 0 {
            return Err(ScsiError::invalid_cdb_field(2));
        }
        let last = self.capacity_blocks().saturating_sub(1);
        let mut v = vec![0u8; 8];
        be::put_u32(&mut v, 0, u32::try_from(last).unwrap_or(u32::MAX));
        be::put_u32(&mut v, 4, BLOCK_SIZE);
        Ok(Bytes::from(v))
    }

    pub(super) fn read_capacity16(&self, c: &[u8]) -> CmdResult {
        let alloc = be::u32_at(c, 10) as usize;
        let mut v = vec![0u8; 32];
        be::put_u64(&mut v, 0, self.capacity_blocks().saturating_sub(1));
        be::put_u32(&mut v, 8, BLOCK_SIZE);
        v[13] = self.phys_exponent;
        v[14] = 0x80 | 0x40; // LBPME, LBPRZ
        truncate(v, alloc)
    }

    pub(super) fn report_luns(&self, c: &[u8]) -> CmdResult {
        let alloc = be::u32_at(c, 6) as usize;
        if alloc < 16 {
            return Err(ScsiError::invalid_cdb_field(6));
        }
        if c[2] > 2 && !matches!(c[2], 0x10..=0x12) {
            return Err(ScsiError::invalid_cdb_field(2));
        }
        let mut v = vec![0u8; 16];
        be::put_u32(&mut v, 0, 8);
        truncate(v, alloc)
    }
}

fn designator(out: &mut Vec<u8>, code_set: u8, kind: u8, assoc_piv: u8, value: &[u8]) {
    out.push(code_set);
    out.push(assoc_piv | kind);
    out.push(0);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// A SCSI name string: NUL terminated, padded to a multiple of 4 bytes.
fn name_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.truncate(251);
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn block_limits(phys_exponent: u8) -> Vec<u8> {
    let mut v = vec![0u8; 60];
    // WSNZ clear: WRITE SAME with zero blocks covers the rest of the medium.
    v[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS as u8;
    be::put_u16(&mut v, 2, 1 << phys_exponent);
    be::put_u32(&mut v, 4, limits::MAX_TRANSFER_BYTES / BLOCK_SIZE);
    be::put_u32(&mut v, 8, 128 * 1024 / BLOCK_SIZE);
    be::put_u32(&mut v, 12, limits::MAX_TRANSFER_BYTES / BLOCK_SIZE);
    be::put_u32(&mut v, 16, limits::MAX_UNMAP_BLOCKS);
    be::put_u32(&mut v, 20, limits::MAX_UNMAP_DESCRIPTORS);
    be::put_u32(&mut v, 24, 1 << phys_exponent);
    be::put_u32(&mut v, 28, 0x8000_0000); // UGAVALID, alignment 0
                                          // MAXIMUM WRITE SAME LENGTH 0: no limit (written in bounded chunks).
    be::put_u32(&mut v, 40, limits::MAX_ATOMIC_BLOCKS); // MAXIMUM ATOMIC TRANSFER LENGTH
    be::put_u32(&mut v, 44, 1); // ATOMIC ALIGNMENT
    be::put_u32(&mut v, 48, 1); // ATOMIC TRANSFER LENGTH GRANULARITY
    v
}

/// One supported command: opcode, service action, CDB length.
struct OpInfo {
    op: u8,
    sa: Option<u16>,
    len: u8,
}

const fn o(op: u8, len: u8) -> OpInfo {
    OpInfo { op, sa: None, len }
}
const fn s(op: u8, sa: u16, len: u8) -> OpInfo {
    OpInfo {
        op,
        sa: Some(sa),
        len,
    }
}

const SUPPORTED: &[OpInfo] = &[
    o(0x00, 6),
    o(0x03, 6),
    o(0x08, 6),
    o(0x0a, 6),
    o(0x12, 6),
    o(0x15, 6),
    o(0x16, 6),
    o(0x17, 6),
    o(0x1a, 6),
    o(0x1b, 6),
    o(0x1e, 6),
    o(0x25, 10),
    o(0x28, 10),
    o(0x2a, 10),
    o(0x2e, 10),
    o(0x2f, 10),
    o(0x34, 10),
    o(0x35, 10),
    o(0x37, 10),
    o(0x41, 10),
    o(0x42, 10),
    o(0x55, 10),
    o(0x56, 10),
    o(0x57, 10),
    o(0x5a, 10),
    s(0x5e, 0, 10),
    s(0x5e, 1, 10),
    s(0x5e, 2, 10),
    s(0x5e, 3, 10),
    s(0x5f, 0, 10),
    s(0x5f, 1, 10),
    s(0x5f, 2, 10),
    s(0x5f, 3, 10),
    s(0x5f, 4, 10),
    s(0x5f, 5, 10),
    s(0x5f, 6, 10),
    s(0x5f, 7, 10),
    s(0x83, 0x00, 16),
    s(0x84, 0x00, 16),
    s(0x84, 0x03, 16),
    o(0x88, 16),
    o(0x89, 16),
    o(0x8a, 16),
    o(0x8b, 16),
    o(0x8e, 16),
    o(0x8f, 16),
    o(0x90, 16),
    o(0x91, 16),
    o(0x93, 16),
    o(0x9c, 16),
    s(0x9e, 0x10, 16),
    s(0x9e, 0x12, 16),
    o(0xa0, 12),
    s(0xa3, 0x0c, 12),
    s(0xa3, 0x0d, 12),
    o(0xa8, 12),
    o(0xaa, 12),
    o(0xae, 12),
    o(0xaf, 12),
    o(0xb7, 12),
];

fn usage_bitmap(info: &OpInfo) -> Vec<u8> {
    let mut v = vec![0xffu8; usize::from(info.len)];
    v[0] = info.op;
    if let Some(sa) = info.sa {
        v[1] = (sa & 0x1f) as u8 | 0xe0;
    }
    let last = v.len() - 1;
    v[last] = 0x07;
    v
}

const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 30, 0, 0, 0, 30];

pub(super) fn report_supported_opcodes(c: &[u8]) -> CmdResult {
    let rctd = c[2] & 0x80 != 0;
    let options = c[2] & 0x07;
    let op = c[3];
    let sa = be::u16_at(c, 4);
    let alloc = be::u32_at(c, 6) as usize;
    match options {
        0 => {
            let mut v = vec![0u8; 4];
            for info in SUPPORTED {
                let mut d = [0u8; 8];
                d[0] = info.op;
                if let Some(sa) = info.sa {
                    be::put_u16(&mut d, 2, sa);
                    d[5] |= 0x01;
                }
                if rctd {
                    d[5] |= 0x02;
                }
                be::put_u16(&mut d, 6, u16::from(info.len));
                v.extend_from_slice(&d);
                if rctd {
                    v.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
                }
            }
            let len = (v.len() - 4) as u32;
            be::put_u32(&mut v, 0, len);
            truncate(v, alloc)
        }
        1..=3 => {
            let has_sa = SUPPORTED.iter().any(|i| i.op == op && i.sa.is_some());
            let found = match options {
                1 if has_sa => return Err(ScsiError::invalid_cdb_field(2)),
                1 => SUPPORTED.iter().find(|i| i.op == op),
                2 if !has_sa => return Err(ScsiError::invalid_cdb_field(2)),
                2 => SUPPORTED.iter().find(|i| i.op == op && i.sa == Some(sa)),
                _ => SUPPORTED
                    .iter()
                    .find(|i| i.op == op && (i.sa.is_none() || i.sa == Some(sa))),
            };
            let mut v = vec![0u8; 4];
            match found {
                Some(info) => {
                    v[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    let bitmap = usage_bitmap(info);
                    be::put_u16(&mut v, 2, bitmap.len() as u16);
                    v.extend_from_slice(&bitmap);
                    if rctd {
                        v.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
                    }
                }
                None => v[1] = 0x01,
            }
            truncate(v, alloc)
        }
        _ => Err(ScsiError::invalid_cdb_field(2)),
    }
}

pub(super) fn report_supported_tmf(c: &[u8]) -> CmdResult {
    let alloc = be::u32_at(c, 6) as usize;
    // ATS, ATSS, CACAS, CTSS, LURS: ABORT TASK, ABORT TASK SET, CLEAR ACA, CLEAR TASK SET,
    // LOGICAL UNIT RESET (connection.rs task_management); no QUERY TASK, no I_T NEXUS RESET.
    let v = vec![0x80 | 0x40 | 0x20 | 0x10 | 0x08, 0, 0, 0];
    truncate(v, alloc)
}

pub(super) fn read_defect_data(c: &[u8]) -> CmdResult {
    if c[0] == 0x37 {
        let alloc = usize::from(be::u16_at(c, 7));
        let v = vec![0, c[2] & 0x1f, 0, 0];
        truncate(v, alloc)
    } else {
        let alloc = be::u32_at(c, 6) as usize;
        let v = vec![0, c[1] & 0x1f, 0, 0, 0, 0, 0, 0];
        truncate(v, alloc)
    }
}
