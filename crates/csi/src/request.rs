//! What a CSI request asks for, checked and turned into the driver's own terms: volume
//! names, StorageClass parameters, capacity ranges, volume capabilities, topology and
//! list tokens. Pure functions; the services call them before any API call, so a bad
//! request never reaches the API server.

use std::collections::HashMap;

use cstor_api::names::value;
use md5::{Digest, Md5};

use crate::limits::{DEFAULT_SIZE_BYTES, MAX_SIZE_BYTES, NAME_MAX, SIZE_STEP_BYTES};
use crate::pb::volume_capability::access_mode::Mode;
use crate::pb::volume_capability::AccessType;
use crate::pb::{CapacityRange, VolumeCapability};
use crate::Error;

/// StorageClass parameter with the filesystem (ext4 or xfs).
pub const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";
/// StorageClass parameter turning REMOUNT on or off for the class's volumes (`"true"`,
/// `"false"`): cStor has only the node plugin's `REMOUNT` environment variable, so the
/// parameter takes its name, in the lower case of the other parameters.
pub const REMOUNT_PARAMETER: &str = "remount";
/// Prefix of the parameters the Kubernetes sidecars add (claim name, namespace...).
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";
/// Filesystems the node service can make.
pub const FILESYSTEMS: [&str; 2] = ["ext4", "xfs"];

/// The StorageClass parameters of a volume, as the seeds write them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// `cstorPoolCluster`: the CSPC holding the replicas.
    pub cspc: String,
    /// `replicaCount`, 1..=5 (default 1, as cStor).
    pub replica_count: i32,
    /// `cstorVolumePolicy`, when given.
    pub policy: Option<String>,
    /// `csi.storage.k8s.io/fstype`, when given.
    pub fs_type: Option<String>,
    /// `remount`, when given: REMOUNT for the volume (the node plugin's default
    /// otherwise, on).
    pub remount: Option<bool>,
}

/// Checks the parameters: `cas-type: cstor` and `cstorPoolCluster` are required, every
/// other key must be one of ours or a sidecar's, so a misspelt key is refused rather
/// than silently ignored.
pub fn params(map: &HashMap<String, String>) -> Result<Params, Error> {
    for key in map.keys() {
        let known = [
            value::SC_PARAM_CAS_TYPE,
            value::SC_PARAM_CSPC,
            value::SC_PARAM_REPLICA_COUNT,
            value::SC_PARAM_VOLUME_POLICY,
            REMOUNT_PARAMETER,
        ]
        .contains(&key.as_str())
            || key.starts_with(SIDECAR_PREFIX);
        if !known {
            return Err(Error::invalid(
                format!("parameters.{key}"),
                "unknown parameter (known: cas-type, cstorPoolCluster, replicaCount, cstorVolumePolicy, remount, csi.storage.k8s.io/fstype)",
            ));
        }
    }
    match map.get(value::SC_PARAM_CAS_TYPE).map(String::as_str) {
        Some(value::CAS_TYPE_CSTOR) => {}
        other => {
            return Err(Error::invalid(
                "parameters.cas-type",
                format!("must be \"cstor\", not {other:?}"),
            ))
        }
    }
    let cspc = map
        .get(value::SC_PARAM_CSPC)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid("parameters.cstorPoolCluster", "is required"))?;
    if !dns_label(cspc) {
        return Err(Error::invalid(
            "parameters.cstorPoolCluster",
            format!("{cspc:?} is not a valid object name"),
        ));
    }
    let rc = map
        .get(value::SC_PARAM_REPLICA_COUNT)
        .map_or("1", String::as_str);
    let replica_count: i32 = rc
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=5).contains(n))
        .ok_or_else(|| {
            Error::invalid(
                "parameters.replicaCount",
                format!("{rc:?} must be a number from 1 to 5"),
            )
        })?;
    let policy = map
        .get(value::SC_PARAM_VOLUME_POLICY)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(p) = &policy {
        if !dns_label(p) {
            return Err(Error::invalid(
                "parameters.cstorVolumePolicy",
                format!("{p:?} is not a valid object name"),
            ));
        }
    }
    let fs_type = map.get(FSTYPE_PARAMETER).map(|s| s.trim().to_owned());
    if let Some(fs) = &fs_type {
        if !FILESYSTEMS.contains(&fs.as_str()) {
            return Err(Error::invalid(
                format!("parameters.{FSTYPE_PARAMETER}"),
                format!("{fs:?}: only ext4 and xfs are supported"),
            ));
        }
    }
    let remount = match map.get(REMOUNT_PARAMETER).map(|s| s.trim()) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return Err(Error::invalid(
                format!("parameters.{REMOUNT_PARAMETER}"),
                format!("{v:?} must be \"true\" or \"false\""),
            ))
        }
    };
    Ok(Params {
        cspc: cspc.to_owned(),
        replica_count,
        policy,
        fs_type,
        remount,
    })
}

/// Whether `s` is a DNS-1123 label (what a volume name must be: it is also a label value).
pub fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The volume id (CVC name) for a CreateVolume name: the name itself when it is a DNS-1123
/// label, else `csi-<md5 of the name>`, so any name the CO picks maps to one id, always
/// the same one (idempotency by name).
pub fn volume_id(name: &str) -> Result<String, Error> {
    if name.is_empty() {
        return Err(Error::invalid("name", "is required"));
    }
    if dns_label(name) {
        return Ok(name.to_owned());
    }
    let digest = Md5::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("csi-{hex}"))
}

/// Checks a volume id given to an RPC: required; Ok(None) when it cannot name any volume
/// of ours (so the caller answers "not found" without asking the API server).
pub fn existing_id(id: &str) -> Result<Option<&str>, Error> {
    if id.is_empty() {
        return Err(Error::invalid("volume_id", "is required"));
    }
    Ok(dns_label(id).then_some(id))
}

fn round_up(bytes: u64) -> Option<u64> {
    bytes
        .checked_add(SIZE_STEP_BYTES - 1)
        .map(|b| b / SIZE_STEP_BYTES * SIZE_STEP_BYTES)
}

/// The size of a new volume for a capacity range: the smallest multiple of
/// [`SIZE_STEP_BYTES`] at or above `required_bytes` (default 1 GiB), within `limit_bytes`.
pub fn size_for(range: Option<&CapacityRange>) -> Result<u64, Error> {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    let out = |why: &str| Error::OutOfRange {
        required_bytes: required,
        limit_bytes: limit,
        why: why.to_owned(),
    };
    if required < 0 || limit < 0 {
        return Err(Error::invalid(
            "capacity_range",
            "required_bytes and limit_bytes must not be negative",
        ));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && limit < required {
        return Err(out("limit_bytes is below required_bytes"));
    }
    let size = if required == 0 {
        let cap = if limit == 0 {
            DEFAULT_SIZE_BYTES
        } else {
            limit / SIZE_STEP_BYTES * SIZE_STEP_BYTES
        };
        DEFAULT_SIZE_BYTES.min(cap)
    } else {
        round_up(required).ok_or_else(|| out("too large"))?
    };
    if size == 0 {
        return Err(out(
            "volumes are sized in whole MiB; the limit is below 1 MiB",
        ));
    }
    if limit > 0 && size > limit {
        return Err(out(
            "volumes are sized in whole MiB and no multiple of 1 MiB lies in the range",
        ));
    }
    if size > MAX_SIZE_BYTES {
        return Err(out("the largest volume is 64 TiB"));
    }
    debug_assert!(size.is_multiple_of(SIZE_STEP_BYTES) && size >= required);
    Ok(size)
}

/// Whether a volume of `size_bytes` satisfies `range` (for an existing volume).
pub fn fits(size_bytes: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    let required = u64::try_from(r.required_bytes).unwrap_or(0);
    let limit = u64::try_from(r.limit_bytes).unwrap_or(0);
    size_bytes >= required && (limit == 0 || size_bytes <= limit)
}

/// Why the driver cannot serve `cap`, or None when it can: block or mount access, a
/// single-node access mode (the volume is one iSCSI LUN that one node attaches), and for
/// mounts ext4 or xfs.
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    match &cap.access_type {
        None => return Some("access_type (block or mount) is required".to_owned()),
        Some(AccessType::Block(_)) => {}
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && !FILESYSTEMS.contains(&m.fs_type.as_str()) {
                return Some(format!(
                    "filesystem {:?} is not supported (ext4 or xfs)",
                    m.fs_type
                ));
            }
        }
    }
    let Some(mode) = cap.access_mode.as_ref() else {
        return Some("access_mode is required".to_owned());
    };
    match Mode::try_from(mode.mode) {
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => None,
        Ok(Mode::Unknown) => Some("access_mode.mode is required".to_owned()),
        Ok(m) => Some(format!(
            "access mode {} is not supported: a volume is attached by one node at a time",
            m.as_str_name()
        )),
        Err(_) => Some(format!("access mode {} is not known", mode.mode)),
    }
}

/// Checks CreateVolume's capabilities (required, all supported) and returns the
/// filesystem the mount capabilities ask for, if any.
pub fn capabilities(caps: &[VolumeCapability]) -> Result<Option<String>, Error> {
    if caps.is_empty() {
        return Err(Error::invalid("volume_capabilities", "is required"));
    }
    let mut fs: Option<String> = None;
    for (i, cap) in caps.iter().enumerate() {
        if let Some(why) = unsupported(cap) {
            return Err(Error::invalid(format!("volume_capabilities[{i}]"), why));
        }
        if let Some(AccessType::Mount(m)) = &cap.access_type {
            if m.fs_type.is_empty() {
                continue;
            }
            match &fs {
                Some(f) if *f != m.fs_type => {
                    return Err(Error::invalid(
                        format!("volume_capabilities[{i}]"),
                        format!(
                            "asks for {} after {f}: one volume has one filesystem",
                            m.fs_type
                        ),
                    ))
                }
                _ => fs = Some(m.fs_type.clone()),
            }
        }
    }
    Ok(fs)
}

/// The index a ListVolumes `starting_token` names among `len` volumes: tokens are the
/// decimal index of the next entry, as handed out in `next_token`.
pub fn start_index(token: &str, len: usize) -> Result<usize, Error> {
    if token.is_empty() {
        return Ok(0);
    }
    let bad = |why: &str| Error::BadToken {
        token: token.to_owned(),
        why: why.to_owned(),
    };
    let i: usize = token
        .parse()
        .map_err(|_| bad("not a token this driver handed out"))?;
    if i > len {
        return Err(bad("past the end of the list"));
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn seed_parameters_are_accepted_and_typos_refused() {
        let p = params(&map(&[
            ("cas-type", "cstor"),
            ("cstorPoolCluster", "cstor-disk-cspc"),
            ("replicaCount", "3"),
            ("csi.storage.k8s.io/fstype", "xfs"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(p.cspc, "cstor-disk-cspc");
        assert_eq!(p.replica_count, 3);
        assert_eq!(p.fs_type.as_deref(), Some("xfs"));
        let one = params(&map(&[("cas-type", "cstor"), ("cstorPoolCluster", "c")])).unwrap();
        assert_eq!(one.replica_count, 1);
        assert_eq!(one.remount, None, "REMOUNT: the node's default");
        for (v, want) in [("true", true), ("false", false), (" false ", false)] {
            let p = params(&map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                ("remount", v),
            ]))
            .unwrap();
            assert_eq!(p.remount, Some(want), "{v:?}");
        }
        for bad in [
            map(&[("cas-type", "cstor")]),
            map(&[("cstorPoolCluster", "c")]),
            map(&[("cas-type", "jiva"), ("cstorPoolCluster", "c")]),
            map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                ("replicaCount", "6"),
            ]),
            map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                ("replicacount", "1"),
            ]),
            map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                (FSTYPE_PARAMETER, "btrfs"),
            ]),
            map(&[("cas-type", "cstor"), ("cstorPoolCluster", "C/../x")]),
            map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                ("remount", "yes"),
            ]),
            map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                ("remount", ""),
            ]),
            map(&[
                ("cas-type", "cstor"),
                ("cstorPoolCluster", "c"),
                ("REMOUNT", "true"),
            ]),
        ] {
            let e = params(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
    }

    #[test]
    fn names_map_to_one_valid_id_each() {
        assert_eq!(volume_id("pvc-1234").unwrap(), "pvc-1234");
        let a = volume_id("Sanity Volume/1").unwrap();
        assert_eq!(a, volume_id("Sanity Volume/1").unwrap());
        assert_ne!(a, volume_id("Sanity Volume/2").unwrap());
        assert!(dns_label(&a) && a.starts_with("csi-"), "{a}");
        assert!(volume_id(&"a".repeat(64)).unwrap().starts_with("csi-"));
        assert_eq!(
            volume_id("").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(existing_id("x/y").unwrap(), None);
        assert!(existing_id("").is_err());
    }

    fn range(required: i64, limit: i64) -> Option<CapacityRange> {
        Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        })
    }

    #[test]
    fn capacity_ranges_round_up_to_mib_within_the_limit() {
        const MIB: u64 = 1 << 20;
        assert_eq!(size_for(None).unwrap(), 1 << 30);
        assert_eq!(size_for(range(1, 0).as_ref()).unwrap(), MIB);
        assert_eq!(
            size_for(range(5 * MIB as i64, 5 * MIB as i64).as_ref()).unwrap(),
            5 * MIB
        );
        assert_eq!(
            size_for(range(0, 3 * MIB as i64 + 7).as_ref()).unwrap(),
            3 * MIB
        );
        for (r, l, code) in [
            (-1, 0, tonic::Code::InvalidArgument),
            (10, 5, tonic::Code::OutOfRange),
            (1, 1000, tonic::Code::OutOfRange),
            (0, 1000, tonic::Code::OutOfRange),
            (i64::MAX, 0, tonic::Code::OutOfRange),
        ] {
            assert_eq!(
                size_for(range(r, l).as_ref()).unwrap_err().code(),
                code,
                "{r} {l}"
            );
        }
        assert!(fits(5 * MIB, range(4 * MIB as i64, 0).as_ref()));
        assert!(!fits(5 * MIB, range(6 * MIB as i64, 0).as_ref()));
        assert!(!fits(5 * MIB, range(0, 4 * MIB as i64).as_ref()));
    }

    fn cap(mode: Mode, mount: Option<&str>) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(match mount {
                Some(fs) => AccessType::Mount(MountVolume {
                    fs_type: fs.to_owned(),
                    ..Default::default()
                }),
                None => AccessType::Block(BlockVolume {}),
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn capabilities_are_single_node_block_or_ext4_xfs() {
        assert_eq!(
            capabilities(&[cap(Mode::SingleNodeWriter, None)]).unwrap(),
            None
        );
        assert_eq!(
            capabilities(&[
                cap(Mode::SingleNodeWriter, Some("xfs")),
                cap(Mode::SingleNodeReaderOnly, Some(""))
            ])
            .unwrap(),
            Some("xfs".to_owned())
        );
        for bad in [
            vec![],
            vec![cap(Mode::MultiNodeMultiWriter, None)],
            vec![cap(Mode::Unknown, None)],
            vec![cap(Mode::SingleNodeWriter, Some("btrfs"))],
            vec![
                cap(Mode::SingleNodeWriter, Some("ext4")),
                cap(Mode::SingleNodeWriter, Some("xfs")),
            ],
            vec![VolumeCapability {
                access_type: None,
                access_mode: Some(AccessMode { mode: 1 }),
            }],
        ] {
            assert_eq!(
                capabilities(&bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens_are_indices_handed_out() {
        assert_eq!(start_index("", 0).unwrap(), 0);
        assert_eq!(start_index("3", 5).unwrap(), 3);
        assert_eq!(start_index("5", 5).unwrap(), 5);
        for bad in ["6", "-1", "invalid-token", "1x"] {
            assert_eq!(
                start_index(bad, 5).unwrap_err().code(),
                tonic::Code::Aborted,
                "{bad}"
            );
        }
    }
}
