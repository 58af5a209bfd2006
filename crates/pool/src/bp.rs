//! Block pointers and block payloads: the only code that knows their byte layout
//! (spec: docs/format/block-tree.md).
//!
//! Owns: encoding/decoding of the 64-byte block pointer, payload compression and the
//! xxh3-128 checksum of the stored bytes.
//! Invariants: a pointer's checksum covers exactly the `psize` bytes stored at its DVA, so
//! a lost, misdirected, stale or rotten block fails verification; a hole has `psize == 0`
//! and no DVA; decoding checks every field's bounds before use.
//! Never: return payload bytes that did not pass the checksum in the parent pointer.

use crate::error::{PoolError, Result};
use crate::limits::{INDIRECT_BYTES, MAX_BLOCK_BYTES};
use crate::store::{Dva, SECTOR_SIZE};

/// Encoded size of a block pointer.
pub const BP_BYTES: usize = 64;
/// Pointers in one indirect block.
pub const BPS_PER_INDIRECT: usize = INDIRECT_BYTES as usize / BP_BYTES;
const _: () = assert!(BPS_PER_INDIRECT == 256);
const _: () = assert!((INDIRECT_BYTES as usize).is_multiple_of(BP_BYTES));

// Field offsets, chained (docs/format/block-tree.md "Block pointer").
const OFF_VDEV: usize = 0;
const OFF_OFFSET: usize = OFF_VDEV + 4;
const OFF_ASIZE: usize = OFF_OFFSET + 8;
const OFF_LSIZE: usize = OFF_ASIZE + 8;
const OFF_PSIZE: usize = OFF_LSIZE + 4;
const OFF_COMP: usize = OFF_PSIZE + 4;
const OFF_KIND: usize = OFF_COMP + 1;
const OFF_LEVEL: usize = OFF_KIND + 1;
const OFF_FLAGS: usize = OFF_LEVEL + 1;
const OFF_BIRTH: usize = OFF_FLAGS + 1;
const OFF_IO: usize = OFF_BIRTH + 8;
const OFF_CKSUM: usize = OFF_IO + 8;
const OFF_END: usize = OFF_CKSUM + 16;
const _: () = assert!(OFF_END == BP_BYTES);

/// Compression of a block's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    Off,
    /// lz4 block format (the default, as cStor).
    Lz4,
    /// zstd level 3.
    Zstd,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::Off => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::Off),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Compression::Off),
            "lz4" | "on" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(PoolError::Invalid(format!(
                "unknown compression '{other}' (expected off, lz4 or zstd)"
            ))),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Off => "off",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// What a block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Volume data.
    Data,
    /// Indirect block: [`BPS_PER_INDIRECT`] block pointers.
    Indirect,
    /// A chunk of the serialized object directory.
    DirChunk,
    /// The index of directory chunks (block pointers).
    DirIndex,
}

impl BlockKind {
    fn code(self) -> u8 {
        match self {
            BlockKind::Data => 1,
            BlockKind::Indirect => 2,
            BlockKind::DirChunk => 3,
            BlockKind::DirIndex => 4,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(BlockKind::Data),
            2 => Some(BlockKind::Indirect),
            3 => Some(BlockKind::DirChunk),
            4 => Some(BlockKind::DirIndex),
            _ => None,
        }
    }
}

/// A block pointer: where a block lives, how to check and decode it, and its txg and io
/// number metadata. A hole (never written, unmapped, or all zeros) has `psize == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bp {
    /// Address (zero for a hole).
    pub dva: Dva,
    /// Logical (decompressed) size in bytes.
    pub lsize: u32,
    /// Stored size in bytes, a multiple of the sector size; 0 for a hole.
    pub psize: u32,
    /// Payload compression.
    pub comp: Option<Compression>,
    /// Block kind (`None` for the never-written hole).
    pub kind: Option<BlockKind>,
    /// Tree level: 0 for data, n for an indirect over level n-1.
    pub level: u8,
    /// Txg in which the block (or the hole) was made; 0 for never written.
    pub birth: u64,
    /// Largest io number in the subtree (data: the io number of the write).
    pub io_max: u64,
    /// xxh3-128 of the `psize` stored bytes.
    pub cksum: [u8; 16],
}

// Derived in spirit; kept here so the seam file (store.rs) stays untouched.
#[allow(clippy::derivable_impls)]
impl Default for Dva {
    fn default() -> Self {
        Dva {
            vdev: 0,
            offset: 0,
            asize: 0,
        }
    }
}

impl Bp {
    /// A hole made in txg `birth` (an UNMAP or zero write), carrying an io number.
    pub fn hole(birth: u64, io_max: u64, level: u8) -> Bp {
        Bp {
            birth,
            io_max,
            level,
            ..Bp::default()
        }
    }

    /// True when no block is stored.
    pub fn is_hole(&self) -> bool {
        self.psize == 0
    }

    /// Encode to the 64-byte little-endian layout.
    pub fn encode(&self, out: &mut [u8]) {
        assert_eq!(out.len(), BP_BYTES, "block pointer slot size");
        out[OFF_VDEV..OFF_OFFSET].copy_from_slice(&self.dva.vdev.to_le_bytes());
        out[OFF_OFFSET..OFF_ASIZE].copy_from_slice(&self.dva.offset.to_le_bytes());
        out[OFF_ASIZE..OFF_LSIZE].copy_from_slice(&self.dva.asize.to_le_bytes());
        out[OFF_LSIZE..OFF_PSIZE].copy_from_slice(&self.lsize.to_le_bytes());
        out[OFF_PSIZE..OFF_COMP].copy_from_slice(&self.psize.to_le_bytes());
        out[OFF_COMP] = self.comp.map_or(0xff, Compression::code);
        out[OFF_KIND] = self.kind.map_or(0, BlockKind::code);
        out[OFF_LEVEL] = self.level;
        out[OFF_FLAGS] = 0;
        out[OFF_BIRTH..OFF_IO].copy_from_slice(&self.birth.to_le_bytes());
        out[OFF_IO..OFF_CKSUM].copy_from_slice(&self.io_max.to_le_bytes());
        out[OFF_CKSUM..OFF_END].copy_from_slice(&self.cksum);
    }

    /// Encode to a new array.
    pub fn to_bytes(&self) -> [u8; BP_BYTES] {
        let mut b = [0u8; BP_BYTES];
        self.encode(&mut b);
        b
    }

    /// Decode and bound-check a pointer.
    pub fn decode(b: &[u8]) -> Result<Bp> {
        let corrupt = |reason: String| PoolError::Corrupt {
            what: "block pointer",
            reason,
        };
        if b.len() != BP_BYTES {
            return Err(corrupt(format!("length {} != {BP_BYTES}", b.len())));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let psize = u32_at(OFF_PSIZE);
        let lsize = u32_at(OFF_LSIZE);
        let mut cksum = [0u8; 16];
        cksum.copy_from_slice(&b[OFF_CKSUM..OFF_END]);
        let bp = Bp {
            dva: Dva {
                vdev: u32_at(OFF_VDEV),
                offset: u64_at(OFF_OFFSET),
                asize: u64_at(OFF_ASIZE),
            },
            lsize,
            psize,
            comp: Compression::from_code(b[OFF_COMP]),
            kind: BlockKind::from_code(b[OFF_KIND]),
            level: b[OFF_LEVEL],
            birth: u64_at(OFF_BIRTH),
            io_max: u64_at(OFF_IO),
            cksum,
        };
        if bp.is_hole() {
            return Ok(bp);
        }
        if bp.kind.is_none() {
            return Err(corrupt(format!("unknown kind {}", b[OFF_KIND])));
        }
        if bp.comp.is_none() {
            return Err(corrupt(format!("unknown compression {}", b[OFF_COMP])));
        }
        if psize % SECTOR_SIZE != 0 || psize > MAX_BLOCK_BYTES + SECTOR_SIZE {
            return Err(corrupt(format!("psize {psize}")));
        }
        if lsize == 0 || lsize > MAX_BLOCK_BYTES {
            return Err(corrupt(format!("lsize {lsize}")));
        }
        if !bp.dva.offset.is_multiple_of(u64::from(SECTOR_SIZE)) || bp.dva.asize < u64::from(psize)
        {
            return Err(corrupt(format!(
                "address {}:{} asize {}",
                bp.dva.vdev, bp.dva.offset, bp.dva.asize
            )));
        }
        Ok(bp)
    }
}

/// Checksum of stored bytes.
pub fn checksum(data: &[u8]) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(data).to_le_bytes()
}

fn round_up_sector(n: usize) -> usize {
    n.div_ceil(SECTOR_SIZE as usize) * SECTOR_SIZE as usize
}

/// A block ready to be written: stored bytes and the fields of its pointer.
#[derive(Debug)]
pub struct Encoded {
    /// Bytes to store (`psize` of them).
    pub bytes: Vec<u8>,
    /// Compression used.
    pub comp: Compression,
    /// Checksum of `bytes`.
    pub cksum: [u8; 16],
}

/// Compress a logical block when that saves at least one sector; pad to sectors.
pub fn encode_payload(logical: &[u8], want: Compression) -> Encoded {
    let raw_psize = round_up_sector(logical.len());
    let compressed = match want {
        Compression::Off => None,
        Compression::Lz4 => Some(lz4_flex::block::compress(logical)),
        Compression::Zstd => zstd::bulk::compress(logical, 3).ok(),
    };
    let (bytes, comp) = match compressed {
        Some(c) if round_up_sector(c.len() + 4) + (SECTOR_SIZE as usize) <= raw_psize => {
            let mut out = Vec::with_capacity(round_up_sector(c.len() + 4));
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
            out.resize(round_up_sector(out.len()), 0);
            (out, want)
        }
        _ => {
            let mut out = logical.to_vec();
            out.resize(raw_psize, 0);
            (out, Compression::Off)
        }
    };
    let cksum = checksum(&bytes);
    Encoded { bytes, comp, cksum }
}

/// [`decode_payload`] taking the stored bytes: an uncompressed block is returned as is
/// (truncated to its logical size), without a copy.
pub fn decode_payload_owned(bp: &Bp, mut stored: Vec<u8>) -> Result<Vec<u8>> {
    if bp.comp == Some(Compression::Off) && stored.len() >= bp.lsize as usize {
        stored.truncate(bp.lsize as usize);
        return Ok(stored);
    }
    decode_payload(bp, &stored)
}

/// Decode verified stored bytes to the logical block of `bp.lsize` bytes.
pub fn decode_payload(bp: &Bp, stored: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |reason: String| PoolError::Corrupt {
        what: "block payload",
        reason,
    };
    let lsize = bp.lsize as usize;
    match bp.comp {
        Some(Compression::Off) => {
            if stored.len() < lsize {
                return Err(corrupt(format!("{} bytes < lsize {lsize}", stored.len())));
            }
            Ok(stored[..lsize].to_vec())
        }
        Some(c) => {
            if stored.len() < 4 {
                return Err(corrupt("short compressed block".into()));
            }
            let clen = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]) as usize;
            if clen > stored.len() - 4 {
                return Err(corrupt(format!("compressed length {clen}")));
            }
            let src = &stored[4..4 + clen];
            let out = match c {
                Compression::Lz4 => {
                    let mut out = vec![0u8; lsize];
                    let n = lz4_flex::block::decompress_into(src, &mut out)
                        .map_err(|e| corrupt(format!("lz4: {e}")))?;
                    out.truncate(n);
                    out
                }
                Compression::Zstd => {
                    zstd::bulk::decompress(src, lsize).map_err(|e| corrupt(format!("zstd: {e}")))?
                }
                Compression::Off => unreachable!("handled above"),
            };
            if out.len() != lsize {
                return Err(corrupt(format!(
                    "decompressed {} != lsize {lsize}",
                    out.len()
                )));
            }
            Ok(out)
        }
        None => Err(corrupt("unknown compression".into())),
    }
}

/// Decode an indirect block's pointers.
pub fn decode_indirect(logical: &[u8]) -> Result<Vec<Bp>> {
    if logical.len() != INDIRECT_BYTES as usize {
        return Err(PoolError::Corrupt {
            what: "indirect block",
            reason: format!("length {}", logical.len()),
        });
    }
    logical.chunks_exact(BP_BYTES).map(Bp::decode).collect()
}

/// Encode an indirect block.
pub fn encode_indirect(bps: &[Bp]) -> Vec<u8> {
    assert_eq!(bps.len(), BPS_PER_INDIRECT, "indirect block fan-out");
    let mut out = vec![0u8; INDIRECT_BYTES as usize];
    for (bp, slot) in bps.iter().zip(out.chunks_exact_mut(BP_BYTES)) {
        bp.encode(slot);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bp_round_trips_and_golden_layout() {
        let bp = Bp {
            dva: Dva {
                vdev: 1,
                offset: 8192,
                asize: 12288,
            },
            lsize: 16384,
            psize: 8192,
            comp: Some(Compression::Lz4),
            kind: Some(BlockKind::Data),
            level: 0,
            birth: 7,
            io_max: 42,
            cksum: [9; 16],
        };
        let b = bp.to_bytes();
        assert_eq!(&b[0..4], &1u32.to_le_bytes());
        assert_eq!(&b[4..12], &8192u64.to_le_bytes());
        assert_eq!(b[28], 1);
        assert_eq!(b[29], 1);
        assert_eq!(&b[32..40], &7u64.to_le_bytes());
        assert_eq!(&b[40..48], &42u64.to_le_bytes());
        assert_eq!(Bp::decode(&b).unwrap(), bp);
    }

    #[test]
    fn corrupt_bp_is_an_error_not_a_panic() {
        let mut b = [0xffu8; BP_BYTES];
        b[24..28].copy_from_slice(&4096u32.to_le_bytes());
        assert!(Bp::decode(&b).is_err());
        assert!(Bp::decode(&b[..10]).is_err());
    }

    #[test]
    fn compression_only_when_it_saves_a_sector() {
        let zeros = vec![0u8; 16384];
        let e = encode_payload(&zeros, Compression::Lz4);
        assert_eq!(e.comp, Compression::Lz4);
        assert_eq!(e.bytes.len(), 4096);
        let mut x: u64 = 1;
        let random: Vec<u8> = (0..16384)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for c in [Compression::Lz4, Compression::Zstd, Compression::Off] {
            let e = encode_payload(&random, c);
            assert_eq!(e.comp, Compression::Off);
            assert_eq!(e.bytes.len(), 16384);
        }
        let e = encode_payload(&zeros, Compression::Zstd);
        let bp = Bp {
            lsize: 16384,
            psize: e.bytes.len() as u32,
            comp: Some(e.comp),
            ..Bp::default()
        };
        assert_eq!(decode_payload(&bp, &e.bytes).unwrap(), zeros);
    }
}
