//! Send and receive streams of snapshots (spec: docs/format/send-stream.md).
//!
//! Owns: the stream byte layout and its validation.
//! Invariants: every record's checksum is chained to the previous one's (a dropped,
//! reordered or altered record breaks the chain) and the END record carries the record
//! count; a stream is applied to a hidden receive temporary and only becomes visible when
//! END validated, so a truncated or corrupt stream changes nothing.
//! Never: trust a stream field before its checksum passed and its bounds were checked.

use std::io::{Read, Write};

use crate::bp::{Bp, Compression};
use crate::dir::VolRec;
use crate::engine::{levels_for, span_blocks, Pool, PoolInner, VolumeHandle};
use crate::error::{PoolError, Result};
use crate::limits::{
    IO_ALIGN_BYTES, MAX_BLOCK_BYTES, MAX_NAME_BYTES, MAX_STREAM_RECORD_BYTES, MAX_VOLUME_BYTES,
    MIN_BLOCK_BYTES,
};

/// Stream magic: "CSTORSND".
pub const STREAM_MAGIC: u64 = u64::from_le_bytes(*b"CSTORSND");
/// Stream format version.
pub const STREAM_VERSION: u32 = 1;
const HEADER_BYTES: usize = 80;
const REC_BYTES: usize = 40;
const FLAG_INCREMENTAL: u32 = 1;
const REC_WRITE: u8 = 1;
const REC_FREE: u8 = 2;
const REC_END: u8 = 3;

/// What a send or receive moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Records (WRITE and FREE).
    pub records: u64,
    /// Data bytes in WRITE records.
    pub data_bytes: u64,
}

#[derive(Debug)]
struct Header {
    flags: u32,
    volume_guid: u64,
    to_guid: u64,
    from_guid: u64,
    to_txg: u64,
    block_size: u32,
    compression: Compression,
    size: u64,
    snap_name: String,
}

fn comp_code(c: Compression) -> u8 {
    match c {
        Compression::Off => 0,
        Compression::Lz4 => 1,
        Compression::Zstd => 2,
    }
}

fn encode_header(h: &Header) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_BYTES];
    b[0..8].copy_from_slice(&STREAM_MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&STREAM_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.flags.to_le_bytes());
    b[16..24].copy_from_slice(&h.volume_guid.to_le_bytes());
    b[24..32].copy_from_slice(&h.to_guid.to_le_bytes());
    b[32..40].copy_from_slice(&h.from_guid.to_le_bytes());
    b[40..48].copy_from_slice(&h.to_txg.to_le_bytes());
    b[48..52].copy_from_slice(&h.block_size.to_le_bytes());
    b[52] = comp_code(h.compression);
    b[56..64].copy_from_slice(&h.size.to_le_bytes());
    b[64..68].copy_from_slice(&(h.snap_name.len() as u32).to_le_bytes());
    b.extend_from_slice(h.snap_name.as_bytes());
    let mut hashed = b[..72].to_vec();
    hashed.extend_from_slice(h.snap_name.as_bytes());
    let c = xxhash_rust::xxh3::xxh3_64(&hashed);
    b[72..80].copy_from_slice(&c.to_le_bytes());
    b
}

fn corrupt(reason: impl Into<String>) -> PoolError {
    PoolError::Corrupt {
        what: "send stream",
        reason: reason.into(),
    }
}

fn read_exact(input: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("stream is truncated")
        } else {
            PoolError::StreamIo(e)
        }
    })
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn decode_header(input: &mut dyn Read) -> Result<Header> {
    let mut b = [0u8; HEADER_BYTES];
    read_exact(input, &mut b)?;
    if u64_at(&b, 0) != STREAM_MAGIC {
        return Err(corrupt("bad magic (not a cstor send stream)"));
    }
    let version = u32_at(&b, 8);
    if version != STREAM_VERSION {
        return Err(PoolError::UnsupportedVersion {
            what: "send stream",
            version,
            supported: STREAM_VERSION,
        });
    }
    let name_len = u32_at(&b, 64) as usize;
    if name_len == 0 || name_len > MAX_NAME_BYTES {
        return Err(corrupt(format!("snapshot name length {name_len}")));
    }
    let mut name = vec![0u8; name_len];
    read_exact(input, &mut name)?;
    let mut hashed = b[..72].to_vec();
    hashed.extend_from_slice(&name);
    if xxhash_rust::xxh3::xxh3_64(&hashed) != u64_at(&b, 72) {
        return Err(corrupt("header checksum mismatch"));
    }
    let snap_name = String::from_utf8(name).map_err(|_| corrupt("snapshot name not UTF-8"))?;
    let block_size = u32_at(&b, 48);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&block_size) {
        return Err(corrupt(format!("block size {block_size}")));
    }
    let compression = match b[52] {
        0 => Compression::Off,
        1 => Compression::Lz4,
        2 => Compression::Zstd,
        c => return Err(corrupt(format!("compression {c}"))),
    };
    let size = u64_at(&b, 56);
    if size == 0 || !size.is_multiple_of(IO_ALIGN_BYTES) || size > MAX_VOLUME_BYTES {
        return Err(corrupt(format!("volume size {size}")));
    }
    Ok(Header {
        flags: u32_at(&b, 12),
        volume_guid: u64_at(&b, 16),
        to_guid: u64_at(&b, 24),
        from_guid: u64_at(&b, 32),
        to_txg: u64_at(&b, 40),
        block_size,
        compression,
        size,
        snap_name,
    })
}

struct RecordWriter<'a> {
    out: &'a mut dyn Write,
    chain: u64,
    stats: StreamStats,
}

impl RecordWriter<'_> {
    fn record(
        &mut self,
        kind: u8,
        offset: u64,
        length: u64,
        io: u64,
        payload: &[u8],
    ) -> Result<()> {
        let mut h = [0u8; REC_BYTES];
        h[0] = kind;
        h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        h[16..24].copy_from_slice(&length.to_le_bytes());
        h[24..32].copy_from_slice(&io.to_le_bytes());
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(self.chain);
        hasher.update(&h[..32]);
        hasher.update(payload);
        let c = hasher.digest();
        h[32..40].copy_from_slice(&c.to_le_bytes());
        self.chain = c;
        self.out.write_all(&h).map_err(PoolError::StreamIo)?;
        self.out.write_all(payload).map_err(PoolError::StreamIo)?;
        if kind != REC_END {
            self.stats.records += 1;
            self.stats.data_bytes += payload.len() as u64;
        }
        Ok(())
    }
}

pub(crate) fn send(
    p: &PoolInner,
    volume: &str,
    snap: &str,
    from: Option<&str>,
    out: &mut dyn Write,
) -> Result<StreamStats> {
    // Held for the whole stream: the snapshots may be destroyed while it is sent.
    let _hold = p.hold_roots();
    let v = p.vol(volume)?;
    let meta = v.meta.lock().clone();
    let find = |name: &str| {
        meta.snapshots
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| PoolError::UnknownSnapshot {
                volume: volume.into(),
                snapshot: name.into(),
            })
    };
    let to = find(snap)?;
    let from = from.map(find).transpose()?;
    if let Some(f) = &from {
        if f.txg >= to.txg {
            return Err(PoolError::Invalid(format!(
                "incremental source @{} is not older than @{}",
                f.name, to.name
            )));
        }
    }
    let from_txg = from.as_ref().map_or(0, |f| f.txg);
    let header = Header {
        flags: if from.is_some() { FLAG_INCREMENTAL } else { 0 },
        volume_guid: v.guid,
        to_guid: to.guid,
        from_guid: from.as_ref().map_or(0, |f| f.guid),
        to_txg: to.txg,
        block_size: v.block_size,
        compression: v.compression,
        size: to.size,
        snap_name: to.name.clone(),
    };
    let hb = encode_header(&header);
    let mut w = RecordWriter {
        out,
        chain: xxhash_rust::xxh3::xxh3_64(&hb),
        stats: StreamStats::default(),
    };
    w.out.write_all(&hb).map_err(PoolError::StreamIo)?;
    let bs = u64::from(v.block_size);
    let incremental = from.is_some();
    p.walk(
        &to.root,
        v.levels,
        0,
        &mut |bp: &Bp| bp.birth > from_txg,
        &mut |blk, bp| {
            let offset = blk * bs;
            if offset >= to.size {
                return Ok(());
            }
            if bp.is_hole() {
                if incremental {
                    let len = (span_blocks(bp.level) * bs).min(to.size - offset);
                    w.record(REC_FREE, offset, len, bp.io_max, &[])?;
                }
                return Ok(());
            }
            let data = p.read_data(bp)?;
            let len = (data.len() as u64).min(to.size - offset);
            w.record(REC_WRITE, offset, len, bp.io_max, &data[..len as usize])
        },
    )?;
    let count = w.stats.records;
    w.record(REC_END, 0, count, 0, &[])?;
    w.out.flush().map_err(PoolError::StreamIo)?;
    Ok(w.stats)
}

pub(crate) fn recv(pool: &Pool, volume: &str, input: &mut dyn Read) -> Result<StreamStats> {
    let header = decode_header(input)?;
    let p = pool.inner();
    let incremental = header.flags & FLAG_INCREMENTAL != 0;
    let target = if incremental {
        let t = pool.volume(volume)?;
        let meta = t.volume().meta.lock().clone();
        let Some(last) = meta.snapshots.last() else {
            return Err(PoolError::Invalid(format!(
                "{volume} has no snapshot; an incremental stream needs its source snapshot"
            )));
        };
        if last.guid != header.from_guid {
            return Err(PoolError::Invalid(format!(
                "{volume}'s newest snapshot @{} is not the stream's source (guid {:#x})",
                last.name, header.from_guid
            )));
        }
        if meta.snapshots.iter().any(|s| s.name == header.snap_name) {
            return Err(PoolError::Exists {
                name: format!("{volume}@{}", header.snap_name),
            });
        }
        if pool.volume_changed_since_snapshot(&t)? {
            return Err(PoolError::Busy(format!(
                "{volume} was written after @{}; roll it back before receiving",
                last.name
            )));
        }
        Some((t, last.clone(), meta))
    } else {
        if p.volume_exists(volume) {
            return Err(PoolError::Exists {
                name: volume.into(),
            });
        }
        None
    };
    let rec = match &target {
        Some((t, from, meta)) => VolRec {
            receiving: true,
            ..VolRec::clone_of(
                format!("{volume}%recv"),
                header.volume_guid ^ t.guid(),
                header.size.max(from.size),
                meta,
                from,
            )
        },
        None => VolRec {
            receiving: true,
            ..VolRec::empty(
                volume.into(),
                header.volume_guid ^ header.to_guid,
                header.size,
                header.block_size,
                levels_for(header.block_size),
                header.compression,
            )
        },
    };
    if let Some((_, _, meta)) = &target {
        if meta.block_size != header.block_size {
            return Err(corrupt(format!(
                "stream block size {} differs from the volume's {}",
                header.block_size, meta.block_size
            )));
        }
    }
    let tmp = pool.create_recv_volume(rec)?;
    let hb = encode_header(&header);
    match apply_records(&tmp, input, xxhash_rust::xxh3::xxh3_64(&hb)) {
        Ok(stats) => {
            pool.finish_recv(
                &tmp,
                target.as_ref().map(|t| &t.0),
                &header.snap_name,
                header.to_guid,
            )?;
            Ok(stats)
        }
        Err(e) => {
            pool.abort_recv(&tmp)?;
            Err(e)
        }
    }
}

fn apply_records(tmp: &VolumeHandle, input: &mut dyn Read, mut chain: u64) -> Result<StreamStats> {
    let mut stats = StreamStats::default();
    let size = tmp.size();
    loop {
        let mut h = [0u8; REC_BYTES];
        read_exact(input, &mut h)?;
        let plen = u32_at(&h, 4);
        if plen > MAX_STREAM_RECORD_BYTES {
            return Err(corrupt(format!("record payload of {plen} bytes")));
        }
        let mut payload = vec![0u8; plen as usize];
        read_exact(input, &mut payload)?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(chain);
        hasher.update(&h[..32]);
        hasher.update(&payload);
        let c = hasher.digest();
        if c != u64_at(&h, 32) {
            return Err(corrupt(format!(
                "record {} checksum mismatch",
                stats.records
            )));
        }
        chain = c;
        let offset = u64_at(&h, 8);
        let length = u64_at(&h, 16);
        let io = u64_at(&h, 24);
        match h[0] {
            REC_WRITE => {
                if length != u64::from(plen) {
                    return Err(corrupt("WRITE length differs from its payload"));
                }
                tmp.write_recv(offset, &payload, io)?;
                stats.records += 1;
                stats.data_bytes += length;
            }
            REC_FREE => {
                if offset.checked_add(length).is_none_or(|e| e > size) {
                    return Err(corrupt(format!("FREE {offset}+{length} beyond the volume")));
                }
                tmp.unmap_recv(offset, length, io)?;
                stats.records += 1;
            }
            REC_END => {
                if length != stats.records {
                    return Err(corrupt(format!(
                        "END counts {length} records, {} received",
                        stats.records
                    )));
                }
                return Ok(stats);
            }
            k => return Err(corrupt(format!("unknown record kind {k}"))),
        }
    }
}
