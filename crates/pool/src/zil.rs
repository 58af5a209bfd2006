//! Intent-log block and record format (spec: docs/format/intent-log.md).
//!
//! Owns: encoding/decoding of log blocks; the chain logic lives in `engine`.
//! Invariants: a log block is self-checksummed (xxh3-128 over the whole block with the
//! checksum field zeroed) and names its chain id and sequence number, so a stale block
//! from an older chain or position at the pre-allocated next address is rejected and
//! ends the chain.
//! Never: accept a record whose lengths run past the block.

use crate::error::{PoolError, Result};
use crate::store::{Dva, SECTOR_SIZE};

/// Log block magic: "CSTORZIL".
pub const LOG_MAGIC: u64 = u64::from_le_bytes(*b"CSTORZIL");
/// Log format version.
pub const LOG_VERSION: u32 = 1;
/// Log block header size.
pub const LOG_HEADER_BYTES: usize = 80;
/// Record header size.
pub const REC_HEADER_BYTES: usize = 48;

const REC_WRITE: u8 = 1;
const REC_UNMAP: u8 = 2;
const REC_EPOCH: u8 = 3;
const REC_CURSOR: u8 = 4;
const REC_CHECKPOINT: u8 = 5;

/// A volume record set through the log (durable at the flush, before a commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VolSet {
    /// The volume's epoch (in the io field).
    Epoch(u64),
    /// The catch-up cursor (the record's data; `data: None` clears it).
    Cursor,
    /// The volume's checkpoint (in the io field): written without a flush of its own, so
    /// it is durable with the log block that carries it, after every record before it.
    Checkpoint(u64),
}

/// One logged operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogRecord {
    pub vol_guid: u64,
    pub txg: u64,
    pub offset: u64,
    /// Write data; `None` for an UNMAP of `unmap_len` bytes.
    pub data: Option<std::sync::Arc<Vec<u8>>>,
    pub unmap_len: u64,
    pub io_number: Option<u64>,
    /// Not a write: a volume record ([`VolSet`]).
    pub set: Option<VolSet>,
}

impl LogRecord {
    pub(crate) fn len(&self) -> u64 {
        self.data
            .as_ref()
            .map_or(self.unmap_len, |d| d.len() as u64)
    }
    /// Bytes of data the record holds in memory (counted as dirty data).
    pub(crate) fn mem_bytes(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.len() as u64)
    }
    pub(crate) fn encoded_len(&self) -> usize {
        REC_HEADER_BYTES + self.data.as_ref().map_or(0, |d| d.len())
    }
}

/// A decoded log block.
#[derive(Debug)]
pub(crate) struct LogBlock {
    pub next: Dva,
    pub next_psize: u32,
    pub records: Vec<LogRecord>,
}

/// Encode a log block of `psize` bytes.
pub(crate) fn encode_block(
    chain_id: u64,
    seq: u64,
    next: Dva,
    next_psize: u32,
    records: &[LogRecord],
    psize: u32,
) -> Vec<u8> {
    let mut b = vec![0u8; psize as usize];
    b[0..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(LOG_HEADER_BYTES as u32).to_le_bytes());
    b[16..24].copy_from_slice(&chain_id.to_le_bytes());
    b[24..32].copy_from_slice(&seq.to_le_bytes());
    b[32..36].copy_from_slice(&next.vdev.to_le_bytes());
    b[36..44].copy_from_slice(&next.offset.to_le_bytes());
    b[44..52].copy_from_slice(&next.asize.to_le_bytes());
    b[52..56].copy_from_slice(&next_psize.to_le_bytes());
    b[56..60].copy_from_slice(&(records.len() as u32).to_le_bytes());
    let mut pos = LOG_HEADER_BYTES;
    for r in records {
        let (kind, io, flag) = match (&r.set, &r.data) {
            (Some(VolSet::Epoch(e)), _) => (REC_EPOCH, *e, 1),
            (Some(VolSet::Cursor), d) => (REC_CURSOR, 0, u8::from(d.is_some())),
            (Some(VolSet::Checkpoint(c)), _) => (REC_CHECKPOINT, *c, 1),
            (None, Some(_)) => (REC_WRITE, r.io_number.unwrap_or(0), 0),
            (None, None) => (REC_UNMAP, r.io_number.unwrap_or(0), 0),
        };
        b[pos] = kind;
        b[pos + 8..pos + 16].copy_from_slice(&r.vol_guid.to_le_bytes());
        b[pos + 16..pos + 24].copy_from_slice(&r.txg.to_le_bytes());
        b[pos + 24..pos + 32].copy_from_slice(&r.offset.to_le_bytes());
        b[pos + 32..pos + 40].copy_from_slice(&r.len().to_le_bytes());
        b[pos + 40..pos + 48].copy_from_slice(&io.to_le_bytes());
        b[pos + 1] = if r.set.is_some() {
            flag
        } else {
            u8::from(r.io_number.is_some())
        };
        pos += REC_HEADER_BYTES;
        if let Some(d) = &r.data {
            b[pos..pos + d.len()].copy_from_slice(d);
            pos += d.len();
        }
    }
    assert!(pos <= psize as usize, "log records overflow the block");
    b[60..64].copy_from_slice(&((pos - LOG_HEADER_BYTES) as u32).to_le_bytes());
    let c = xxhash_rust::xxh3::xxh3_128(&b).to_le_bytes();
    b[64..80].copy_from_slice(&c);
    b
}

/// Check a block's self-checksum, chain id and sequence number (the `verify` of a read).
pub(crate) fn block_valid(b: &[u8], chain_id: u64, seq: u64) -> bool {
    if b.len() < LOG_HEADER_BYTES || !b.len().is_multiple_of(SECTOR_SIZE as usize) {
        return false;
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    if u64_at(0) != LOG_MAGIC || u64_at(16) != chain_id || u64_at(24) != seq {
        return false;
    }
    let mut copy = b.to_vec();
    copy[64..80].fill(0);
    xxhash_rust::xxh3::xxh3_128(&copy).to_le_bytes() == b[64..80]
}

/// Decode a block that passed [`block_valid`].
pub(crate) fn decode_block(b: &[u8]) -> Result<LogBlock> {
    let corrupt = |reason: String| PoolError::Corrupt {
        what: "intent log block",
        reason,
    };
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32_at(8);
    if version != LOG_VERSION {
        return Err(PoolError::UnsupportedVersion {
            what: "intent log block",
            version,
            supported: LOG_VERSION,
        });
    }
    let next = Dva {
        vdev: u32_at(32),
        offset: u64_at(36),
        asize: u64_at(44),
    };
    let next_psize = u32_at(52);
    let n = u32_at(56) as usize;
    let used = u32_at(60) as usize;
    if LOG_HEADER_BYTES + used > b.len() {
        return Err(corrupt(format!("used {used} past block end")));
    }
    let end = LOG_HEADER_BYTES + used;
    let mut pos = LOG_HEADER_BYTES;
    let mut records = Vec::with_capacity(n.min(used / REC_HEADER_BYTES + 1));
    for _ in 0..n {
        if pos + REC_HEADER_BYTES > end {
            return Err(corrupt("record header past end".into()));
        }
        let kind = b[pos];
        let has_io = b[pos + 1] != 0;
        let len = u64_at(pos + 32);
        let io = u64_at(pos + 40);
        let mut r = LogRecord {
            vol_guid: u64_at(pos + 8),
            txg: u64_at(pos + 16),
            offset: u64_at(pos + 24),
            data: None,
            unmap_len: 0,
            io_number: has_io.then_some(io),
            set: None,
        };
        pos += REC_HEADER_BYTES;
        let data_len = |pos: usize| -> Result<usize> {
            let len = usize::try_from(len).map_err(|_| corrupt("length".into()))?;
            if len > end - pos {
                return Err(corrupt(format!("record of {len} bytes past end")));
            }
            Ok(len)
        };
        match kind {
            REC_WRITE => {
                let len = usize::try_from(len).map_err(|_| corrupt("length".into()))?;
                if len > end - pos {
                    return Err(corrupt(format!("write record of {len} bytes past end")));
                }
                r.data = Some(std::sync::Arc::new(b[pos..pos + len].to_vec()));
                pos += len;
            }
            REC_UNMAP => r.unmap_len = len,
            REC_EPOCH => {
                r.io_number = None;
                r.set = Some(VolSet::Epoch(io));
            }
            REC_CHECKPOINT => {
                r.io_number = None;
                r.set = Some(VolSet::Checkpoint(io));
            }
            REC_CURSOR => {
                let n = data_len(pos)?;
                r.io_number = None;
                r.set = Some(VolSet::Cursor);
                if has_io {
                    r.data = Some(std::sync::Arc::new(b[pos..pos + n].to_vec()));
                }
                pos += n;
            }
            k => return Err(corrupt(format!("unknown record kind {k}"))),
        }
        records.push(r);
    }
    Ok(LogBlock {
        next,
        next_psize,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_block_round_trips_and_rejects_stale() {
        let recs = vec![
            LogRecord {
                vol_guid: 1,
                txg: 4,
                offset: 512,
                data: Some(std::sync::Arc::new(vec![7u8; 1024])),
                unmap_len: 0,
                io_number: Some(9),
                set: None,
            },
            LogRecord {
                vol_guid: 1,
                txg: 4,
                offset: 8192,
                data: None,
                unmap_len: 4096,
                io_number: None,
                set: None,
            },
            LogRecord {
                vol_guid: 2,
                txg: 4,
                offset: 0,
                data: None,
                unmap_len: 0,
                io_number: None,
                set: Some(VolSet::Epoch(12)),
            },
            LogRecord {
                vol_guid: 2,
                txg: 4,
                offset: 0,
                data: Some(std::sync::Arc::new(b"cursor".to_vec())),
                unmap_len: 0,
                io_number: None,
                set: Some(VolSet::Cursor),
            },
            LogRecord {
                vol_guid: 2,
                txg: 4,
                offset: 0,
                data: None,
                unmap_len: 0,
                io_number: None,
                set: Some(VolSet::Cursor),
            },
        ];
        let next = Dva {
            vdev: 0,
            offset: 40960,
            asize: 4096,
        };
        let b = encode_block(11, 3, next, 4096, &recs, 4096);
        assert!(block_valid(&b, 11, 3));
        assert!(!block_valid(&b, 11, 4));
        assert!(!block_valid(&b, 12, 3));
        let d = decode_block(&b).unwrap();
        assert_eq!(d.records, recs);
        assert_eq!(d.next, next);
        let mut torn = b.clone();
        torn[4000] ^= 1;
        assert!(!block_valid(&torn, 11, 3));
    }

    #[test]
    fn decode_of_checksummed_garbage_never_panics() {
        let mut x: u64 = 0x1234_5678;
        for round in 0..2000 {
            let mut b = vec![0u8; 4096];
            for byte in b.iter_mut().skip(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = if round % 2 == 0 {
                    x as u8
                } else {
                    (x % 3) as u8
                };
            }
            b[0..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
            b[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
            // Small counts and lengths so the record loop is exercised, not just refused.
            b[56..60].copy_from_slice(&((x % 9) as u32).to_le_bytes());
            b[60..64].copy_from_slice(&((x % 5000) as u32).to_le_bytes());
            let _ = decode_block(&b);
        }
    }
}
