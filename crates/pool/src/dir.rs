//! The object directory (volumes, snapshots, clones, properties, space counters) and the
//! root the uberblock carries (spec: docs/format/block-tree.md "Directory", "Root").
//!
//! Owns: the serialized forms only; the live state is in `engine`.
//! Invariants: the root is fixed-size, little endian, with magic, version and checksum,
//! and every field is checked before use; the directory is JSON split in chunks whose
//! checksums live in the chunk index, whose checksum lives in the root.
//! Never: trust a decoded directory's numbers without bounds checks at the use site.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bp::{Bp, Compression, BP_BYTES};
use crate::error::{PoolError, Result};
use crate::store::Dva;

/// Directory format version this build writes; versions 1 (no io reservations), 2 (no
/// volume records) and 3 (no checkpoint records in the intent log) are still read. An
/// older build refuses version 4: it would stop at the log's checkpoint records (version
/// 3 would drop the epochs and checkpoints, version 2 the io reservations, and hand out
/// old values).
pub const DIR_VERSION: u32 = 4;

/// One snapshot as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SnapRec {
    pub name: String,
    pub guid: u64,
    pub txg: u64,
    #[serde(with = "bp_hex")]
    pub root: Bp,
    pub size: u64,
    pub referenced: u64,
    pub unique_at: u64,
    pub ref_lsize: u64,
    pub ref_psize_data: u64,
    /// Taken at an io cut: holds exactly the writes with io below it (version 2).
    #[serde(default)]
    pub io_cut: Option<u64>,
}

/// One volume as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct VolRec {
    pub name: String,
    pub guid: u64,
    pub size: u64,
    pub block_size: u32,
    pub levels: u8,
    pub compression: Compression,
    #[serde(with = "bp_hex")]
    pub root: Bp,
    pub origin_snap: Option<u64>,
    pub origin_txg: u64,
    pub referenced: u64,
    pub unique: u64,
    pub snap_held: u64,
    pub ref_lsize: u64,
    pub ref_psize_data: u64,
    pub created_txg: u64,
    pub receiving: bool,
    pub properties: BTreeMap<String, String>,
    pub snapshots: Vec<SnapRec>,
    /// Every io number up to this one may have been handed out by
    /// [`crate::VolumeHandle::next_io`]: the next open starts above it (version 2; 0 in
    /// version 1 directories).
    #[serde(default)]
    pub io_reserved: u64,
    /// Replication checkpoint: every write with io up to it is in this txg's tree
    /// (version 3; 0 before).
    #[serde(default)]
    pub checkpoint: u64,
    /// Highest epoch seen (version 3; 0 before).
    #[serde(default)]
    pub epoch: u64,
    /// Catch-up cursor, hex (version 3; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl VolRec {
    /// A new volume with no data, no origin and no snapshots.
    pub(crate) fn empty(
        name: String,
        guid: u64,
        size: u64,
        block_size: u32,
        levels: u8,
        compression: Compression,
    ) -> VolRec {
        VolRec {
            name,
            guid,
            size,
            block_size,
            levels,
            compression,
            root: Bp::default(),
            origin_snap: None,
            origin_txg: 0,
            referenced: 0,
            unique: 0,
            snap_held: 0,
            ref_lsize: 0,
            ref_psize_data: 0,
            created_txg: 0,
            receiving: false,
            properties: BTreeMap::new(),
            snapshots: Vec::new(),
            io_reserved: 0,
            checkpoint: 0,
            epoch: 0,
            cursor: None,
        }
    }

    /// A new volume whose head is `snap` of `parent` (a clone, or an incremental
    /// receive's staging volume): it shares every block of the snapshot.
    pub(crate) fn clone_of(
        name: String,
        guid: u64,
        size: u64,
        parent: &VolRec,
        snap: &SnapRec,
    ) -> VolRec {
        VolRec {
            root: snap.root,
            origin_snap: Some(snap.guid),
            origin_txg: snap.txg,
            referenced: snap.referenced,
            ref_lsize: snap.ref_lsize,
            ref_psize_data: snap.ref_psize_data,
            ..VolRec::empty(
                name,
                guid,
                size,
                parent.block_size,
                parent.levels,
                parent.compression,
            )
        }
    }

    /// The record of a snapshot of this volume's head taken at `txg`.
    pub(crate) fn snapshot_now(&self, name: String, guid: u64, txg: u64) -> SnapRec {
        SnapRec {
            name,
            guid,
            txg,
            root: self.root,
            size: self.size,
            referenced: self.referenced,
            unique_at: self.unique,
            ref_lsize: self.ref_lsize,
            ref_psize_data: self.ref_psize_data,
            io_cut: None,
        }
    }
}

/// The whole directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DirRec {
    pub version: u32,
    pub pool_guid: u64,
    pub ro_threshold_pct: u8,
    pub compression: Compression,
    pub volumes: Vec<VolRec>,
    /// The commit was a clean close's last (version 3; false before).
    #[serde(default)]
    pub clean_shutdown: bool,
    /// Boot id of the open that wrote it (version 3; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Intent-log blocks (vdev, offset, asize) a replay claimed, recorded by the commits
    /// run during that replay (version 3; empty otherwise): a later open frees those its
    /// own replay does not reach (a tail dropped with `discard_log_tail`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_claims: Vec<(u32, u64, u64)>,
}

mod bp_hex {
    use super::*;
    pub(super) fn serialize<S: serde::Serializer>(bp: &Bp, s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let b = bp.to_bytes();
        let mut out = [0u8; BP_BYTES * 2];
        for (i, x) in b.iter().enumerate() {
            out[2 * i] = HEX[usize::from(x >> 4)];
            out[2 * i + 1] = HEX[usize::from(x & 0xf)];
        }
        // Only ASCII hex digits were written.
        s.serialize_str(std::str::from_utf8(&out).unwrap_or_default())
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bp, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != BP_BYTES * 2 || !s.is_ascii() {
            return Err(serde::de::Error::custom("block pointer hex length"));
        }
        let mut b = [0u8; BP_BYTES];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16)
                .map_err(|e| serde::de::Error::custom(format!("block pointer hex: {e}")))?;
        }
        Bp::decode(&b).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

impl DirRec {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Result<DirRec> {
        let d: DirRec = serde_json::from_slice(b).map_err(|e| PoolError::Corrupt {
            what: "object directory",
            reason: e.to_string(),
        })?;
        if d.version == 0 || d.version > DIR_VERSION {
            return Err(PoolError::UnsupportedVersion {
                what: "object directory",
                version: d.version,
                supported: DIR_VERSION,
            });
        }
        Ok(d)
    }
}

/// Root magic: "CSTROOT1".
pub const ROOT_MAGIC: u64 = u64::from_le_bytes(*b"CSTROOT1");
/// Root format version this build writes. Version 1 (no replay floor) is still read.
pub const ROOT_VERSION: u32 = 2;
/// Encoded root size (version 2).
pub const ROOT_BYTES: usize = 152;
/// Encoded root size of version 1.
const ROOT_V1_BYTES: usize = 144;
const _: () = assert!(ROOT_BYTES <= crate::store::MAX_ROOT_BYTES);

/// Where the intent log chain starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogHead {
    /// Random id of the chain; every block of it carries it.
    pub chain_id: u64,
    /// Sequence number of the head block.
    pub seq: u64,
    /// Address of the head block (asize 0: no chain).
    pub dva: Dva,
    /// Stored size of the head block.
    pub psize: u32,
    /// Records of txgs after this one are replayed. It is the root's own txg, except for
    /// roots committed during a replay: those keep the floor of the root the replay
    /// started from (and its chain), so a power cut in the middle of a replay replays
    /// the whole chain again instead of skipping the records not yet applied.
    pub replay_after_txg: u64,
}

/// The root a txg commit hands to the uberblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// Pool guid.
    pub pool_guid: u64,
    /// Txg of this root.
    pub txg: u64,
    /// Pointer to the directory chunk index.
    pub dir: Bp,
    /// Intent log head.
    pub log: LogHead,
}

impl Root {
    /// Encode (docs/format/block-tree.md "Root").
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; ROOT_BYTES];
        b[0..8].copy_from_slice(&ROOT_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&ROOT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.pool_guid.to_le_bytes());
        b[24..32].copy_from_slice(&self.txg.to_le_bytes());
        self.dir.encode(&mut b[32..96]);
        b[96..104].copy_from_slice(&self.log.chain_id.to_le_bytes());
        b[104..112].copy_from_slice(&self.log.seq.to_le_bytes());
        b[112..116].copy_from_slice(&self.log.dva.vdev.to_le_bytes());
        b[116..124].copy_from_slice(&self.log.dva.offset.to_le_bytes());
        b[124..132].copy_from_slice(&self.log.dva.asize.to_le_bytes());
        b[132..136].copy_from_slice(&self.log.psize.to_le_bytes());
        b[136..144].copy_from_slice(&self.log.replay_after_txg.to_le_bytes());
        let c = xxhash_rust::xxh3::xxh3_64(&b[..144]);
        b[144..152].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode and check magic, version, checksum (versions 1 and 2).
    pub fn decode(b: &[u8]) -> Result<Root> {
        let corrupt = |reason: String| PoolError::Corrupt {
            what: "pool root",
            reason,
        };
        if b.len() < ROOT_V1_BYTES {
            return Err(corrupt(format!("{} bytes", b.len())));
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if u64_at(0) != ROOT_MAGIC {
            return Err(corrupt("bad magic (not a cstor block-tree root)".into()));
        }
        let version = u32_at(8);
        let sum_at = match version {
            1 => 136,
            2 if b.len() >= ROOT_BYTES => 144,
            2 => return Err(corrupt(format!("{} bytes for version 2", b.len()))),
            _ => {
                return Err(PoolError::UnsupportedVersion {
                    what: "pool root",
                    version,
                    supported: ROOT_VERSION,
                })
            }
        };
        if xxhash_rust::xxh3::xxh3_64(&b[..sum_at]) != u64_at(sum_at) {
            return Err(corrupt("checksum mismatch".into()));
        }
        let txg = u64_at(24);
        let replay_after_txg = if version == 1 { txg } else { u64_at(136) };
        if replay_after_txg > txg {
            return Err(corrupt(format!(
                "replay floor {replay_after_txg} after the root's txg {txg}"
            )));
        }
        Ok(Root {
            pool_guid: u64_at(16),
            txg,
            dir: Bp::decode(&b[32..96])?,
            log: LogHead {
                chain_id: u64_at(96),
                seq: u64_at(104),
                dva: Dva {
                    vdev: u32_at(112),
                    offset: u64_at(116),
                    asize: u64_at(124),
                },
                psize: u32_at(132),
                replay_after_txg,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_round_trips_and_rejects_damage() {
        let r = Root {
            pool_guid: 5,
            txg: 9,
            dir: Bp::hole(3, 0, 0),
            log: LogHead {
                chain_id: 77,
                seq: 3,
                dva: Dva {
                    vdev: 0,
                    offset: 4096,
                    asize: 8192,
                },
                psize: 8192,
                replay_after_txg: 7,
            },
        };
        let mut b = r.encode();
        assert_eq!(Root::decode(&b).unwrap(), r);
        b[30] ^= 1;
        assert!(matches!(Root::decode(&b), Err(PoolError::Corrupt { .. })));
        let mut b = r.encode();
        b[8] = 3;
        let e = Root::decode(&b).unwrap_err();
        assert!(matches!(
            e,
            PoolError::UnsupportedVersion { version: 3, .. }
        ));
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn root_of_version_1_decodes_with_its_txg_as_replay_floor() {
        let mut b = vec![0u8; ROOT_V1_BYTES];
        b[0..8].copy_from_slice(&ROOT_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&5u64.to_le_bytes());
        b[24..32].copy_from_slice(&9u64.to_le_bytes());
        Bp::hole(3, 0, 0).encode(&mut b[32..96]);
        b[96..104].copy_from_slice(&77u64.to_le_bytes());
        let c = xxhash_rust::xxh3::xxh3_64(&b[..136]);
        b[136..144].copy_from_slice(&c.to_le_bytes());
        let r = Root::decode(&b).unwrap();
        assert_eq!((r.txg, r.log.replay_after_txg, r.log.chain_id), (9, 9, 77));
    }
}
