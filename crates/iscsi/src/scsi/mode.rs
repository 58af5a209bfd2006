//! MODE SENSE and MODE SELECT (6 and 10): read-write error recovery, caching, control and
//! informational exceptions pages.
//!
//! Invariants: only WCE (caching) and SWP (control) are changeable; a MODE SELECT that
//! changes anything else is refused whole, before any change applies.

use super::{Cdb, CmdResult, LogicalUnit, ModeState, BLOCK_SIZE};
use crate::be;
use crate::sense::ScsiError;
use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

fn page(code: u8, pc: Pc, m: ModeState) -> Option<Vec<u8>> {
    let mut p = match code {
        0x01 => vec![0u8; 12],
        0x08 => vec![0u8; 20],
        0x0a => vec![0u8; 12],
        0x1c => vec![0u8; 12],
        _ => return None,
    };
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    match (code, pc) {
        (0x08, Pc::Changeable) => p[2] = 0x04,
        (0x08, Pc::Current) => p[2] = if m.wce { 0x04 } else { 0 },
        (0x08, Pc::Default) => p[2] = 0x04,
        (0x0a, Pc::Changeable) => p[4] = 0x08,
        (0x0a, Pc::Current) | (0x0a, Pc::Default) => {
            p[3] = 0x10; // unrestricted reordering
            p[5] = 0x40; // TAS
            if pc == Pc::Current && m.swp {
                p[4] = 0x08;
            }
        }
        _ => {}
    }
    Some(p)
}

const ALL_PAGES: [u8; 4] = [0x01, 0x08, 0x0a, 0x1c];

impl LogicalUnit {
    pub(super) fn mode_sense(&self, c: &[u8]) -> CmdResult {
        let ten = c[0] == 0x5a;
        let dbd = c[1] & 0x08 != 0;
        let llbaa = ten && c[1] & 0x10 != 0;
        let pc = match c[2] >> 6 {
            0 => Pc::Current,
            1 => Pc::Changeable,
            2 => Pc::Default,
            _ => return Err(ScsiError::saving_not_supported()),
        };
        let code = c[2] & 0x3f;
        let subpage = c[3];
        let alloc = if ten {
            usize::from(be::u16_at(c, 7))
        } else {
            usize::from(c[4])
        };
        let m = self.state.lock().mode;
        let mut pages = Vec::new();
        if code == 0x3f {
            if subpage != 0 && subpage != 0xff {
                return Err(ScsiError::invalid_cdb_field(3));
            }
            for p in ALL_PAGES {
                pages.extend(page(p, pc, m).unwrap_or_default());
            }
        } else {
            if subpage != 0 {
                return Err(ScsiError::invalid_cdb_field(3));
            }
            pages = page(code, pc, m).ok_or(ScsiError::invalid_cdb_field(2))?;
        }
        let write_protected = m.swp || self.backend.read_only();
        let dev_specific = 0x10 | if write_protected { 0x80 } else { 0 }; // DPOFUA, WP
        let blocks = self.capacity_blocks();
        let mut bd = Vec::new();
        if !dbd {
            if llbaa {
                bd = vec![0u8; 16];
                be::put_u64(&mut bd, 0, blocks);
                be::put_u32(&mut bd, 12, BLOCK_SIZE);
            } else {
                bd = vec![0u8; 8];
                be::put_u32(&mut bd, 0, u32::try_from(blocks).unwrap_or(u32::MAX));
                be::put_u24(&mut bd, 5, BLOCK_SIZE);
            }
        }
        let mut v;
        if ten {
            v = vec![0u8; 8];
            v[3] = dev_specific;
            v[4] = u8::from(llbaa && !dbd);
            be::put_u16(&mut v, 6, bd.len() as u16);
            v.extend_from_slice(&bd);
            v.extend_from_slice(&pages);
            let len = (v.len() - 2) as u16;
            be::put_u16(&mut v, 0, len);
        } else {
            v = vec![0u8; 4];
            v[2] = dev_specific;
            v[3] = bd.len() as u8;
            v.extend_from_slice(&bd);
            v.extend_from_slice(&pages);
            v[0] = (v.len() - 1).min(255) as u8;
        }
        v.truncate(alloc);
        Ok(Bytes::from(v))
    }

    pub(super) fn mode_select(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        let ten = c[0] == 0x55;
        if c[1] & 0x01 != 0 {
            return Err(ScsiError::saving_not_supported());
        }
        let len = if ten {
            usize::from(be::u16_at(c, 7))
        } else {
            usize::from(c[4])
        };
        if len == 0 {
            return Ok(Bytes::new());
        }
        let data = &cmd.data_out[..len.min(cmd.data_out.len())];
        let hdr = if ten { 8 } else { 4 };
        if data.len() < hdr {
            return Err(ScsiError::param_list_length());
        }
        let bd_len = if ten {
            usize::from(be::u16_at(data, 6))
        } else {
            usize::from(data[3])
        };
        let mut at = hdr + bd_len;
        if at > data.len() {
            return Err(ScsiError::param_list_length());
        }
        let mut new = self.state.lock().mode;
        while at < data.len() {
            if data.len() - at < 2 {
                return Err(ScsiError::param_list_length());
            }
            let code = data[at] & 0x3f;
            let plen = usize::from(data[at + 1]) + 2;
            if at + plen > data.len() {
                return Err(ScsiError::param_list_length());
            }
            let p = &data[at..at + plen];
            let Some(cur) = page(code, Pc::Current, new) else {
                return Err(ScsiError::invalid_param_field(at as u16));
            };
            let changeable = page(code, Pc::Changeable, new).unwrap_or_default();
            if plen != cur.len() {
                return Err(ScsiError::invalid_param_field(at as u16 + 1));
            }
            for i in 2..plen {
                if (p[i] ^ cur[i]) & !changeable[i] != 0 {
                    return Err(ScsiError::invalid_param_field((at + i) as u16));
                }
            }
            match code {
                0x08 => new.wce = p[2] & 0x04 != 0,
                0x0a => new.swp = p[4] & 0x08 != 0,
                _ => {}
            }
            at += plen;
        }
        let mut st = self.state.lock();
        let changed = st.mode.swp != new.swp || st.mode.wce != new.wce;
        st.mode = new;
        if changed {
            Self::raise_ua(&mut st, Some(cmd.nexus), 0x2a, 0x01);
        }
        Ok(Bytes::new())
    }
}
