//! The only code that knows byte offsets of the pool's on-disk structures: the device
//! label (header + JSON pool config), the uberblock, and the space map block.
//! Specified in docs/format/pool-label.md; keep the two in step.
//!
//! Invariants: decoding checks magic, then version, then checksum, then every length and
//! geometry field before using it; corrupt bytes give [`SpaError::Corrupt`], never a panic.
//! All integers are little endian.
//! Never: no I/O here; callers read and write the bytes.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::error::SpaError;
use super::limits::{
    CONFIG_AREA_BYTES, LABEL_BYTES, SECTOR_BYTES, UBERBLOCK_RING_OFFSET, UBERBLOCK_SLOTS,
    UBERBLOCK_SLOT_BYTES,
};
use crate::store::{Dva, MAX_ROOT_BYTES};

/// Magic of a device label.
pub const LABEL_MAGIC: &[u8; 8] = b"CSTORLB1";
/// Magic of an uberblock.
pub const UBERBLOCK_MAGIC: &[u8; 8] = b"CSTORUB1";
/// Magic of a space map block.
pub const SPACE_MAP_MAGIC: &[u8; 8] = b"CSTORSM1";
/// Label format version this build writes and reads.
pub const LABEL_VERSION: u32 = 1;
/// Uberblock format version.
pub const UBERBLOCK_VERSION: u32 = 1;
/// Space map format version.
pub const SPACE_MAP_VERSION: u32 = 1;

/// Label header bytes before the JSON config.
pub const LABEL_HEADER_BYTES: usize = 64;
const LH_VERSION: usize = 8;
const LH_HEADER_LEN: usize = 12;
const LH_PAYLOAD_LEN: usize = 16;
const LH_POOL_GUID: usize = 24;
const LH_DEVICE_GUID: usize = 32;
const LH_GENERATION: usize = 40;
const LH_VDEV: usize = 48;
const LH_CHILD: usize = 52;
const LH_CHECKSUM: usize = 56;
const _: () = assert!(LH_CHECKSUM + 8 == LABEL_HEADER_BYTES);

/// Uberblock field offsets.
const UB_VERSION: usize = 8;
const UB_ROOT_LEN: usize = 12;
const UB_TXG: usize = 16;
const UB_POOL_GUID: usize = 24;
const UB_TIMESTAMP: usize = 32;
const UB_GENERATION: usize = 40;
const UB_SM_VDEV: usize = 48;
const UB_SM_CHAIN: usize = 52;
const UB_SM_OFFSET: usize = 56;
const UB_SM_ASIZE: usize = 64;
const UB_SM_PSIZE: usize = 72;
const UB_SM_CHECKSUM: usize = 80;
const UB_ROOT: usize = 88;
const UB_CHECKSUM: usize = UB_ROOT + MAX_ROOT_BYTES;
const UB_BYTES: usize = UB_CHECKSUM + 8;
const _: () = assert!(UB_BYTES as u64 <= UBERBLOCK_SLOT_BYTES);

/// Space map block header bytes.
pub const SM_HEADER_BYTES: usize = 64;
/// Bytes per space map record.
pub const SM_RECORD_BYTES: usize = 24;
const SM_VERSION: usize = 8;
const SM_FLAGS: usize = 12;
const SM_TXG: usize = 16;
const SM_COUNT: usize = 24;
const SM_PREV: usize = 32;
/// Space map flag: this block starts a condensed base (replay starts from empty here).
pub const SM_FLAG_BASE_START: u32 = 1;

/// Byte offsets of the four labels on a device of `size_bytes`.
pub fn label_offsets(size_bytes: u64) -> [u64; 4] {
    // Callers only pass devices of at least MIN_DEVICE_BYTES; saturate anyway so a tiny
    // device can never underflow (its back labels then alias the front ones).
    let base = (size_bytes / LABEL_BYTES * LABEL_BYTES).max(4 * LABEL_BYTES);
    [0, LABEL_BYTES, base - 2 * LABEL_BYTES, base - LABEL_BYTES]
}

/// Bytes of the data region on a device of `size_bytes` (between front and back labels).
pub fn data_region_bytes(size_bytes: u64) -> u64 {
    let base = size_bytes / LABEL_BYTES * LABEL_BYTES;
    base.saturating_sub(4 * LABEL_BYTES)
}

/// Byte offset of uberblock slot for `txg` inside a label at `label_offset`.
pub fn uberblock_offset(label_offset: u64, txg: u64) -> u64 {
    label_offset + UBERBLOCK_RING_OFFSET + (txg % UBERBLOCK_SLOTS) * UBERBLOCK_SLOT_BYTES
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The kind of a top-level vdev as stored in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VdevKindConfig {
    /// One disk of a stripe group.
    Disk,
    /// An n-way mirror.
    Mirror,
    /// Single parity raidz.
    Raidz1,
    /// Double parity raidz.
    Raidz2,
}

/// One device of a top-level vdev, as the config remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildConfig {
    /// Device guid (also in its label header).
    pub guid: u64,
    /// Last known path.
    pub path: String,
    /// True while the device is being resilvered after a replace (untrusted for reads).
    #[serde(default)]
    pub resilvering: bool,
    /// The device this one replaces, kept (read in its place) until the replace finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<ReplacedDevice>,
}

/// A device being replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedDevice {
    /// Its guid.
    pub guid: u64,
    /// Its last known path.
    pub path: String,
}

/// One top-level vdev in the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdevConfig {
    /// Index used in [`Dva::vdev`].
    pub id: u32,
    /// Kind.
    pub kind: VdevKindConfig,
    /// Display group (the disks of one `stripe` group share it).
    pub group: u32,
    /// True for the write-cache (intent log) group.
    pub log: bool,
    /// Allocatable bytes in the vdev's address space (raw, parity included).
    pub asize: u64,
    /// Devices, in column order.
    pub children: Vec<ChildConfig>,
}

/// The whole pool config, stored as JSON in every label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Pool guid.
    pub guid: u64,
    /// Incremented at each config rewrite; import takes the highest valid one.
    pub generation: u64,
    /// Creation time, seconds since the epoch.
    pub created_unix_secs: u64,
    /// Host that created the pool.
    pub created_host: String,
    /// Top-level vdevs, index = id.
    pub vdevs: Vec<VdevConfig>,
}

/// A decoded label header and its config.
#[derive(Clone, Debug)]
pub struct Label {
    /// Pool guid.
    pub pool_guid: u64,
    /// This device's guid.
    pub device_guid: u64,
    /// Config generation.
    pub generation: u64,
    /// The top-level vdev this device belongs to.
    pub vdev: u32,
    /// Its column index there.
    pub child: u32,
    /// The pool config.
    pub config: PoolConfig,
}

/// Encode a label config area (sector-padded).
pub fn encode_label(label: &Label) -> Result<Vec<u8>, SpaError> {
    let payload = serde_json::to_vec(&label.config)
        .map_err(|e| SpaError::InvalidState(format!("cannot encode pool config: {e}")))?;
    if payload.len() > CONFIG_AREA_BYTES as usize - LABEL_HEADER_BYTES {
        return Err(SpaError::InvalidLayout(format!(
            "pool config of {} bytes is too large",
            payload.len()
        )));
    }
    let total = (LABEL_HEADER_BYTES + payload.len()).div_ceil(SECTOR_BYTES as usize)
        * SECTOR_BYTES as usize;
    let mut b = vec![0u8; total];
    b[..8].copy_from_slice(LABEL_MAGIC);
    put32(&mut b, LH_VERSION, LABEL_VERSION);
    put32(&mut b, LH_HEADER_LEN, LABEL_HEADER_BYTES as u32);
    put32(&mut b, LH_PAYLOAD_LEN, payload.len() as u32);
    put64(&mut b, LH_POOL_GUID, label.pool_guid);
    put64(&mut b, LH_DEVICE_GUID, label.device_guid);
    put64(&mut b, LH_GENERATION, label.generation);
    put32(&mut b, LH_VDEV, label.vdev);
    put32(&mut b, LH_CHILD, label.child);
    b[LABEL_HEADER_BYTES..LABEL_HEADER_BYTES + payload.len()].copy_from_slice(&payload);
    let sum = label_checksum(&b[..LH_CHECKSUM], &payload);
    put64(&mut b, LH_CHECKSUM, sum);
    Ok(b)
}

fn label_checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(header);
    h.update(payload);
    h.digest()
}

/// Decode a label config area read from `path` at `offset`.
pub fn decode_label(b: &[u8], path: &str, offset: u64) -> Result<Label, SpaError> {
    let corrupt = |reason: String| SpaError::Corrupt {
        path: path.to_owned(),
        what: "label",
        offset,
        reason,
    };
    if b.len() < LABEL_HEADER_BYTES || &b[..8] != LABEL_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let version = u32_at(b, LH_VERSION);
    if version != LABEL_VERSION {
        return Err(SpaError::UnsupportedVersion {
            path: path.to_owned(),
            what: "label",
            found: version,
            supported: LABEL_VERSION,
        });
    }
    if u32_at(b, LH_HEADER_LEN) as usize != LABEL_HEADER_BYTES {
        return Err(corrupt("bad header length".into()));
    }
    let len = u32_at(b, LH_PAYLOAD_LEN) as usize;
    if len > b.len() - LABEL_HEADER_BYTES {
        return Err(corrupt(format!(
            "payload length {len} beyond the config area"
        )));
    }
    let payload = &b[LABEL_HEADER_BYTES..LABEL_HEADER_BYTES + len];
    if label_checksum(&b[..LH_CHECKSUM], payload) != u64_at(b, LH_CHECKSUM) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let config: PoolConfig =
        serde_json::from_slice(payload).map_err(|e| corrupt(format!("config: {e}")))?;
    let label = Label {
        pool_guid: u64_at(b, LH_POOL_GUID),
        device_guid: u64_at(b, LH_DEVICE_GUID),
        generation: u64_at(b, LH_GENERATION),
        vdev: u32_at(b, LH_VDEV),
        child: u32_at(b, LH_CHILD),
        config,
    };
    validate_config(&label).map_err(corrupt)?;
    Ok(label)
}

/// Geometry checks on a decoded config before anything uses it.
fn validate_config(l: &Label) -> Result<(), String> {
    let c = &l.config;
    if c.guid != l.pool_guid || c.generation != l.generation {
        return Err("header and config disagree".into());
    }
    if c.vdevs.is_empty() || c.vdevs.len() > super::limits::MAX_VDEVS {
        return Err(format!("{} vdevs", c.vdevs.len()));
    }
    for (i, v) in c.vdevs.iter().enumerate() {
        if v.id as usize != i {
            return Err(format!("vdev {i} has id {}", v.id));
        }
        let n = v.children.len();
        let ok = match v.kind {
            VdevKindConfig::Disk => n == 1,
            VdevKindConfig::Mirror => (2..=super::limits::MAX_GROUP_DEVICES).contains(&n),
            VdevKindConfig::Raidz1 => (3..=super::limits::MAX_GROUP_DEVICES).contains(&n),
            VdevKindConfig::Raidz2 => (4..=super::limits::MAX_GROUP_DEVICES).contains(&n),
        };
        if !ok {
            return Err(format!("vdev {i} of kind {:?} has {n} devices", v.kind));
        }
        if v.asize == 0 || !v.asize.is_multiple_of(SECTOR_BYTES) || v.asize > (1u64 << 62) {
            return Err(format!("vdev {i} has bad size {}", v.asize));
        }
    }
    let v = c
        .vdevs
        .get(l.vdev as usize)
        .ok_or("label's vdev index out of range")?;
    let ch = v
        .children
        .get(l.child as usize)
        .ok_or("label's child index out of range")?;
    if ch.guid != l.device_guid {
        return Err("label's device guid is not in its config slot".into());
    }
    Ok(())
}

/// Pointer to a space map block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmPtr {
    /// Where (asize included).
    pub dva: Dva,
    /// Block bytes.
    pub psize: u32,
    /// xxh3-64 of the block.
    pub checksum: u64,
}

impl Default for SmPtr {
    fn default() -> Self {
        SmPtr {
            dva: Dva {
                vdev: 0,
                offset: 0,
                asize: 0,
            },
            psize: 0,
            checksum: 0,
        }
    }
}

impl SmPtr {
    /// True for "no block".
    pub fn is_null(&self) -> bool {
        self.psize == 0
    }
}

/// A decoded uberblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uberblock {
    /// Txg it commits.
    pub txg: u64,
    /// Pool guid.
    pub pool_guid: u64,
    /// Write time, seconds since the epoch.
    pub timestamp: u64,
    /// Config generation in force.
    pub config_generation: u64,
    /// Head of the space map chain.
    pub space_map: SmPtr,
    /// Blocks in the chain.
    pub chain_len: u32,
    /// The block-tree layer's root.
    pub root: Vec<u8>,
}

/// Encode an uberblock into one slot.
pub fn encode_uberblock(ub: &Uberblock) -> Vec<u8> {
    assert!(ub.root.len() <= MAX_ROOT_BYTES);
    let mut b = vec![0u8; UBERBLOCK_SLOT_BYTES as usize];
    b[..8].copy_from_slice(UBERBLOCK_MAGIC);
    put32(&mut b, UB_VERSION, UBERBLOCK_VERSION);
    put32(&mut b, UB_ROOT_LEN, ub.root.len() as u32);
    put64(&mut b, UB_TXG, ub.txg);
    put64(&mut b, UB_POOL_GUID, ub.pool_guid);
    put64(&mut b, UB_TIMESTAMP, ub.timestamp);
    put64(&mut b, UB_GENERATION, ub.config_generation);
    put32(&mut b, UB_SM_VDEV, ub.space_map.dva.vdev);
    put32(&mut b, UB_SM_CHAIN, ub.chain_len);
    put64(&mut b, UB_SM_OFFSET, ub.space_map.dva.offset);
    put64(&mut b, UB_SM_ASIZE, ub.space_map.dva.asize);
    put32(&mut b, UB_SM_PSIZE, ub.space_map.psize);
    put64(&mut b, UB_SM_CHECKSUM, ub.space_map.checksum);
    b[UB_ROOT..UB_ROOT + ub.root.len()].copy_from_slice(&ub.root);
    let sum = xxh3_64(&b[..UB_CHECKSUM]);
    put64(&mut b, UB_CHECKSUM, sum);
    b
}

/// Decode one uberblock slot; `None` for an empty slot.
pub fn decode_uberblock(b: &[u8], path: &str, offset: u64) -> Result<Option<Uberblock>, SpaError> {
    let corrupt = |reason: &str| SpaError::Corrupt {
        path: path.to_owned(),
        what: "uberblock",
        offset,
        reason: reason.to_owned(),
    };
    if b.len() < UB_BYTES {
        return Err(corrupt("short slot"));
    }
    if b[..UB_BYTES].iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if &b[..8] != UBERBLOCK_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = u32_at(b, UB_VERSION);
    if version != UBERBLOCK_VERSION {
        return Err(SpaError::UnsupportedVersion {
            path: path.to_owned(),
            what: "uberblock",
            found: version,
            supported: UBERBLOCK_VERSION,
        });
    }
    if xxh3_64(&b[..UB_CHECKSUM]) != u64_at(b, UB_CHECKSUM) {
        return Err(corrupt("checksum mismatch"));
    }
    let root_len = u32_at(b, UB_ROOT_LEN) as usize;
    if root_len > MAX_ROOT_BYTES {
        return Err(corrupt("root length beyond maximum"));
    }
    let psize = u32_at(b, UB_SM_PSIZE);
    if !psize.is_multiple_of(SECTOR_BYTES as u32) || psize > super::limits::MAX_BLOCK_BYTES {
        return Err(corrupt("bad space map size"));
    }
    Ok(Some(Uberblock {
        txg: u64_at(b, UB_TXG),
        pool_guid: u64_at(b, UB_POOL_GUID),
        timestamp: u64_at(b, UB_TIMESTAMP),
        config_generation: u64_at(b, UB_GENERATION),
        space_map: SmPtr {
            dva: Dva {
                vdev: u32_at(b, UB_SM_VDEV),
                offset: u64_at(b, UB_SM_OFFSET),
                asize: u64_at(b, UB_SM_ASIZE),
            },
            psize,
            checksum: u64_at(b, UB_SM_CHECKSUM),
        },
        chain_len: u32_at(b, UB_SM_CHAIN),
        root: b[UB_ROOT..UB_ROOT + root_len].to_vec(),
    }))
}

/// One allocator change in a space map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmRecord {
    /// Top-level vdev.
    pub vdev: u32,
    /// True for an allocation, false for a free.
    pub alloc: bool,
    /// Byte offset in the vdev.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A decoded space map block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmBlock {
    /// Flags ([`SM_FLAG_BASE_START`]).
    pub flags: u32,
    /// Txg that wrote it.
    pub txg: u64,
    /// Previous block in the chain (null at the start).
    pub prev: SmPtr,
    /// Changes, applied in order.
    pub records: Vec<SmRecord>,
}

/// Records that fit in a block of `psize` bytes.
pub fn sm_capacity(psize: u32) -> usize {
    (psize as usize - SM_HEADER_BYTES) / SM_RECORD_BYTES
}

/// Encode a space map block of exactly `psize` bytes.
pub fn encode_sm_block(blk: &SmBlock, psize: u32) -> Vec<u8> {
    assert!(blk.records.len() <= sm_capacity(psize));
    let mut b = vec![0u8; psize as usize];
    b[..8].copy_from_slice(SPACE_MAP_MAGIC);
    put32(&mut b, SM_VERSION, SPACE_MAP_VERSION);
    put32(&mut b, SM_FLAGS, blk.flags);
    put64(&mut b, SM_TXG, blk.txg);
    put32(&mut b, SM_COUNT, blk.records.len() as u32);
    put32(&mut b, SM_PREV, blk.prev.dva.vdev);
    put32(&mut b, SM_PREV + 4, blk.prev.psize);
    put64(&mut b, SM_PREV + 8, blk.prev.dva.offset);
    put64(&mut b, SM_PREV + 16, blk.prev.dva.asize);
    put64(&mut b, SM_PREV + 24, blk.prev.checksum);
    for (i, r) in blk.records.iter().enumerate() {
        let o = SM_HEADER_BYTES + i * SM_RECORD_BYTES;
        put32(&mut b, o, r.vdev);
        put32(&mut b, o + 4, if r.alloc { 1 } else { 2 });
        put64(&mut b, o + 8, r.offset);
        put64(&mut b, o + 16, r.len);
    }
    b
}

/// Decode a space map block (its checksum was verified through its pointer).
pub fn decode_sm_block(b: &[u8], offset: u64) -> Result<SmBlock, SpaError> {
    let corrupt = |reason: String| SpaError::Corrupt {
        path: "pool".into(),
        what: "space map",
        offset,
        reason,
    };
    if b.len() < SM_HEADER_BYTES || &b[..8] != SPACE_MAP_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let version = u32_at(b, SM_VERSION);
    if version != SPACE_MAP_VERSION {
        return Err(SpaError::UnsupportedVersion {
            path: "pool".into(),
            what: "space map",
            found: version,
            supported: SPACE_MAP_VERSION,
        });
    }
    let count = u32_at(b, SM_COUNT) as usize;
    if count > (b.len() - SM_HEADER_BYTES) / SM_RECORD_BYTES {
        return Err(corrupt(format!("{count} records beyond the block")));
    }
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let o = SM_HEADER_BYTES + i * SM_RECORD_BYTES;
        let kind = u32_at(b, o + 4);
        if kind != 1 && kind != 2 {
            return Err(corrupt(format!("record {i} has kind {kind}")));
        }
        records.push(SmRecord {
            vdev: u32_at(b, o),
            alloc: kind == 1,
            offset: u64_at(b, o + 8),
            len: u64_at(b, o + 16),
        });
    }
    Ok(SmBlock {
        flags: u32_at(b, SM_FLAGS),
        txg: u64_at(b, SM_TXG),
        prev: SmPtr {
            dva: Dva {
                vdev: u32_at(b, SM_PREV),
                offset: u64_at(b, SM_PREV + 8),
                asize: u64_at(b, SM_PREV + 16),
            },
            psize: u32_at(b, SM_PREV + 4),
            checksum: u64_at(b, SM_PREV + 24),
        },
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_label() -> Label {
        let config = PoolConfig {
            name: "tank".into(),
            guid: 7,
            generation: 3,
            created_unix_secs: 1,
            created_host: "h".into(),
            vdevs: vec![VdevConfig {
                id: 0,
                kind: VdevKindConfig::Mirror,
                group: 0,
                log: false,
                asize: 1 << 20,
                children: vec![
                    ChildConfig {
                        guid: 11,
                        path: "/a".into(),
                        resilvering: false,
                        replacing: None,
                    },
                    ChildConfig {
                        guid: 12,
                        path: "/b".into(),
                        resilvering: false,
                        replacing: None,
                    },
                ],
            }],
        };
        Label {
            pool_guid: 7,
            device_guid: 12,
            generation: 3,
            vdev: 0,
            child: 1,
            config,
        }
    }

    #[test]
    fn label_roundtrip_and_every_flipped_byte_is_caught() {
        let l = sample_label();
        let b = encode_label(&l).unwrap();
        let d = decode_label(&b, "x", 0).unwrap();
        assert_eq!(d.config, l.config);
        let used = LABEL_HEADER_BYTES + u32_at(&b, LH_PAYLOAD_LEN) as usize;
        for i in 0..used {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(decode_label(&c, "x", 0).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn uberblock_roundtrip_and_corruption() {
        let ub = Uberblock {
            txg: 9,
            pool_guid: 7,
            timestamp: 5,
            config_generation: 2,
            space_map: SmPtr {
                dva: Dva {
                    vdev: 1,
                    offset: 4096,
                    asize: 8192,
                },
                psize: 4096,
                checksum: 77,
            },
            chain_len: 3,
            root: vec![1, 2, 3],
        };
        let b = encode_uberblock(&ub);
        assert_eq!(decode_uberblock(&b, "x", 0).unwrap(), Some(ub));
        for i in (0..UB_BYTES).step_by(7) {
            let mut c = b.clone();
            c[i] ^= 0x80;
            assert!(
                !matches!(decode_uberblock(&c, "x", 0), Ok(Some(_))),
                "flip at {i} accepted"
            );
        }
        assert_eq!(decode_uberblock(&vec![0u8; 4096], "x", 0).unwrap(), None);
    }

    #[test]
    fn golden_uberblock_header_bytes() {
        let ub = Uberblock {
            txg: 1,
            pool_guid: 2,
            timestamp: 3,
            config_generation: 4,
            space_map: SmPtr::default(),
            chain_len: 0,
            root: vec![],
        };
        let b = encode_uberblock(&ub);
        assert_eq!(&b[..8], b"CSTORUB1");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[16..24], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..32], &[2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn sm_block_roundtrip() {
        let blk = SmBlock {
            flags: SM_FLAG_BASE_START,
            txg: 4,
            prev: SmPtr::default(),
            records: vec![
                SmRecord {
                    vdev: 2,
                    alloc: true,
                    offset: 8192,
                    len: 4096,
                },
                SmRecord {
                    vdev: 0,
                    alloc: false,
                    offset: 0,
                    len: 4096,
                },
            ],
        };
        let b = encode_sm_block(&blk, 4096);
        assert_eq!(decode_sm_block(&b, 0).unwrap(), blk);
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic_on_random_or_mutated_bytes(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..9000),
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8),
        ) {
            let _ = decode_label(&junk, "x", 0);
            let _ = decode_uberblock(&junk, "x", 0);
            let _ = decode_sm_block(&junk, 0);
            let mut l = encode_label(&sample_label()).unwrap();
            let mut u = encode_uberblock(&Uberblock { txg: 1, pool_guid: 2, timestamp: 3, config_generation: 4, space_map: SmPtr::default(), chain_len: 0, root: vec![9; 40] });
            let mut m = encode_sm_block(&SmBlock { flags: 0, txg: 1, prev: SmPtr::default(), records: vec![SmRecord { vdev: 0, alloc: true, offset: 0, len: 4096 }] }, 4096);
            for (i, v) in flips {
                let (li, ui, mi) = (i % l.len(), i % u.len(), i % m.len());
                l[li] ^= v;
                u[ui] ^= v;
                m[mi] ^= v;
            }
            let _ = decode_label(&l, "x", 0);
            let _ = decode_uberblock(&u, "x", 0);
            let _ = decode_sm_block(&m, 0);
        }
    }
}
