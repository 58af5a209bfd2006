//! The SCSI block commands the initiator issues (SBC-3, SPC-4): CDB builders and the
//! parsers of what they return.
//!
//! Invariants: parsers check lengths before reading any field and answer `None` on short
//! data; CDBs are always 16 bytes (shorter CDBs zero-padded, as the BHS carries them).

use crate::be;

/// SCSI status codes (SAM-5 §5.3).
pub(crate) mod status {
    pub(crate) const GOOD: u8 = 0x00;
    pub(crate) const CHECK_CONDITION: u8 = 0x02;
    pub(crate) const BUSY: u8 = 0x08;
    pub(crate) const RESERVATION_CONFLICT: u8 = 0x18;
    pub(crate) const TASK_SET_FULL: u8 = 0x28;
}

pub(crate) type Cdb = [u8; 16];

pub(crate) fn test_unit_ready() -> Cdb {
    [0u8; 16]
}

pub(crate) fn read16(lba: u64, blocks: u32) -> Cdb {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    be::put_u64(&mut c, 2, lba);
    be::put_u32(&mut c, 10, blocks);
    c
}

pub(crate) fn write16(lba: u64, blocks: u32) -> Cdb {
    let mut c = read16(lba, blocks);
    c[0] = 0x8a;
    c
}

/// SYNCHRONIZE CACHE(16) of the whole medium (LBA 0, 0 blocks).
pub(crate) fn synchronize_cache16() -> Cdb {
    let mut c = [0u8; 16];
    c[0] = 0x91;
    c
}

pub(crate) const READ_CAPACITY16_LEN: u32 = 32;

pub(crate) fn read_capacity16() -> Cdb {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    be::put_u32(&mut c, 10, READ_CAPACITY16_LEN);
    c
}

pub(crate) const VPD_LEN: u16 = 64;

/// INQUIRY of the Block Limits VPD page (B0h).
pub(crate) fn inquiry_block_limits() -> Cdb {
    let mut c = [0u8; 16];
    c[0] = 0x12;
    c[1] = 0x01;
    c[2] = 0xb0;
    be::put_u16(&mut c, 3, VPD_LEN);
    c
}

/// UNMAP with its parameter list for one range.
pub(crate) fn unmap(lba: u64, blocks: u32) -> (Cdb, Vec<u8>) {
    let mut p = vec![0u8; 24];
    be::put_u16(&mut p, 0, 22);
    be::put_u16(&mut p, 2, 16);
    be::put_u64(&mut p, 8, lba);
    be::put_u32(&mut p, 16, blocks);
    let mut c = [0u8; 16];
    c[0] = 0x42;
    be::put_u16(&mut c, 7, p.len() as u16);
    (c, p)
}

/// Size of the LUN as READ CAPACITY(16) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks.
    pub blocks: u64,
    /// Bytes per logical block.
    pub block_size: u32,
    /// Logical block provisioning (thin): UNMAP may be offered.
    pub thin: bool,
}

impl Capacity {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }

    pub(crate) fn parse(d: &[u8]) -> Option<Capacity> {
        if d.len() < 15 {
            return None;
        }
        let block_size = be::u32_at(d, 8);
        if !(512..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
            return None;
        }
        Some(Capacity {
            blocks: be::u64_at(d, 0).checked_add(1)?,
            block_size,
            thin: d[14] & 0x80 != 0,
        })
    }
}

/// What the Block Limits VPD page says (0 means no limit reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BlockLimits {
    pub(crate) max_transfer_blocks: u32,
    pub(crate) max_unmap_blocks: u32,
    pub(crate) max_unmap_descriptors: u32,
}

impl BlockLimits {
    pub(crate) fn parse(d: &[u8]) -> Option<BlockLimits> {
        if d.len() < 28 || d[1] != 0xb0 {
            return None;
        }
        Some(BlockLimits {
            max_transfer_blocks: be::u32_at(d, 8),
            max_unmap_blocks: be::u32_at(d, 20),
            max_unmap_descriptors: be::u32_at(d, 24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_and_parsers() {
        let c = read16(0x0102_0304_0506_0708, 9);
        assert_eq!(c[0], 0x88);
        assert_eq!(&c[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&c[10..14], &[0, 0, 0, 9]);
        assert_eq!(write16(0, 1)[0], 0x8a);
        let mut d = [0u8; 32];
        d[7] = 0xff; // last LBA 255
        d[10] = 0x02; // 512-byte blocks
        d[14] = 0x80;
        let cap = Capacity::parse(&d).unwrap();
        assert_eq!((cap.blocks, cap.block_size, cap.thin), (256, 512, true));
        assert_eq!(cap.bytes(), 256 * 512);
        d[10] = 0x03; // 768: not a power of two
        assert_eq!(Capacity::parse(&d), None);
        assert_eq!(Capacity::parse(&d[..10]), None);
        let (c, p) = unmap(5, 3);
        assert_eq!((c[0], c[8]), (0x42, 24));
        assert_eq!((p[1], p[3], p[15], p[19]), (22, 16, 5, 3));
    }
}
