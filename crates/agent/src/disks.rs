//! Block device discovery (NDM's job in cStor) and the node's BlockDevice objects.
//!
//! A device is offered when it is a regular file given with `--disk`, or a block device
//! (given, or found under /sys/block: loop devices with a backing file and whole disks)
//! that has no holders, no partitions, is not mounted and that `blkid -p` does not
//! identify (no filesystem, partition table or foreign RAID signature). The checks apply
//! to devices seen for the first time only: once a BlockDevice exists it stays until
//! its device disappears, when it turns Inactive (and Active again when it returns).
//! Names are `blockdevice-<md5(node:path)>`, stable across restarts.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use cstor_api::v1alpha1::BlockDevice;
use kube::api::{Api, ListParams};
use md5::{Digest, Md5};
use serde_json::json;

use crate::error::{AgentError, Result};
use crate::kubeapi::{create_if_missing, merge_status};
use crate::{Ctx, HOSTNAME_LABEL, NAMESPACE};

/// A device found on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Canonical path.
    pub path: PathBuf,
    /// Size, bytes.
    pub size: u64,
    /// NDM's device type: `sparse` (a file), `loop` or `disk`.
    pub device_type: &'static str,
    /// Logical sector size.
    pub logical_sector: u32,
    /// Physical sector size.
    pub physical_sector: u32,
}

/// The BlockDevice name of `path` on `node`.
pub fn bd_name(node: &str, path: &Path) -> String {
    let mut h = Md5::new();
    h.update(node.as_bytes());
    h.update(b":");
    h.update(path.as_os_str().as_encoded_bytes());
    let d = h.finalize();
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("blockdevice-{hex}")
}

fn sys_block_dir(dev: &str) -> Option<PathBuf> {
    let p = Path::new("/sys/class/block").join(dev);
    p.exists().then_some(p)
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Why a first-seen block device is not offered, or None when it may be.
fn refuse_block(path: &Path, dev: &str) -> Option<String> {
    let sys = sys_block_dir(dev)?;
    if std::fs::read_dir(sys.join("holders")).is_ok_and(|mut d| d.next().is_some()) {
        return Some("has holders".into());
    }
    let has_partition = std::fs::read_dir(&sys).is_ok_and(|d| {
        d.flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(dev) && e.path().join("partition").exists()
        })
    });
    if has_partition {
        return Some("has partitions".into());
    }
    if sys.join("partition").exists() {
        return Some("is a partition".into());
    }
    let dev_path = format!("/dev/{dev}");
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let canon = path.to_string_lossy();
        if mounts.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|s| s == dev_path || s == canon || s.starts_with(&dev_path))
        }) {
            return Some("is mounted".into());
        }
    }
    blkid_refuses(path)
}

/// `blkid -p` exits 0 when it identifies a signature, 2 when it finds none.
fn blkid_refuses(path: &Path) -> Option<String> {
    match std::process::Command::new("blkid")
        .arg("-p")
        .arg("-o")
        .arg("export")
        .arg(path)
        .output()
    {
        Ok(o) if o.status.success() => {
            let what = String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("TYPE=")
                        .or_else(|| l.strip_prefix("PTTYPE="))
                })
                .unwrap_or("a signature")
                .to_string();
            Some(format!("blkid identifies {what}"))
        }
        Ok(_) => None,
        // No blkid: the pool layer's own refusal to overwrite filesystems still holds.
        Err(_) => None,
    }
}

/// Looks at one path: Ok(None) when it does not exist (any more).
pub fn probe(path: &Path, first_seen: bool) -> Result<Option<Found>, String> {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&canon).map_err(|e| e.to_string())?;
    let ft = meta.file_type();
    if ft.is_file() {
        if first_seen {
            if let Some(why) = blkid_refuses(&canon) {
                return Err(why);
            }
        }
        return Ok(Some(Found {
            path: canon,
            size: meta.len(),
            device_type: "sparse",
            logical_sector: 512,
            physical_sector: 4096,
        }));
    }
    if !ft.is_block_device() {
        return Err("neither a regular file nor a block device".into());
    }
    let dev = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if first_seen {
        if let Some(why) = refuse_block(&canon, &dev) {
            return Err(why);
        }
    }
    let sys = sys_block_dir(&dev).ok_or_else(|| format!("/sys/class/block/{dev} missing"))?;
    let sectors = read_u64(&sys.join("size")).unwrap_or(0);
    let q = sys.join("queue");
    Ok(Some(Found {
        path: canon,
        size: sectors * 512,
        device_type: if dev.starts_with("loop") {
            "loop"
        } else {
            "disk"
        },
        logical_sector: read_u64(&q.join("logical_block_size")).unwrap_or(512) as u32,
        physical_sector: read_u64(&q.join("physical_block_size")).unwrap_or(512) as u32,
    }))
}

/// Block devices of this machine worth looking at when no `--disk` is given: loop
/// devices with a backing file and whole disks.
pub fn scan_system() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = if name.starts_with("loop") {
            e.path().join("loop/backing_file").exists()
        } else {
            ["sd", "vd", "xvd", "hd", "nvme"]
                .iter()
                .any(|p| name.starts_with(p))
                && read_u64(&e.path().join("size")).unwrap_or(0) > 0
        };
        if keep {
            out.push(PathBuf::from("/dev").join(name));
        }
    }
    out.sort();
    out
}

/// Keeps the node's BlockDevices in step with its devices.
#[derive(Debug, Default)]
pub struct Disks {
    /// Refusals already logged, so each is said once.
    told: BTreeMap<PathBuf, String>,
}

impl Disks {
    /// One pass: create BlockDevices of new devices, flip Active/Inactive on the others.
    pub async fn sync(&mut self, ctx: &Ctx) -> Result<()> {
        let api: Api<BlockDevice> = Api::namespaced(ctx.client.clone(), NAMESPACE);
        let node = &ctx.cfg.name;
        let existing = api
            .list(&ListParams::default().labels(&format!("{HOSTNAME_LABEL}={node}")))
            .await?;
        let mut known: BTreeMap<String, BlockDevice> = existing
            .items
            .into_iter()
            .filter_map(|b| b.metadata.name.clone().map(|n| (n, b)))
            .collect();
        let candidates = if ctx.cfg.disks.is_empty() {
            scan_system()
        } else {
            ctx.cfg.disks.clone()
        };
        for path in candidates {
            let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let name = bd_name(node, &canon);
            let first_seen = !known.contains_key(&name);
            match probe(&path, first_seen) {
                Ok(Some(found)) => {
                    self.told.remove(&path);
                    let bd = known.remove(&name);
                    self.publish(&api, node, &name, &found, bd).await?;
                }
                Ok(None) => {}
                Err(why) => {
                    if self.told.get(&path) != Some(&why) {
                        tracing::info!(device = %path.display(), %why, "device not offered");
                        self.told.insert(path.clone(), why);
                    }
                }
            }
        }
        // What is left was not found this pass: its device is gone.
        for (name, bd) in known {
            let state = bd.status.as_ref().and_then(|s| s.state);
            let gone = bd
                .spec
                .path
                .as_deref()
                .is_none_or(|p| !Path::new(p).exists());
            if gone && state != Some(cstor_api::v1alpha1::BlockDeviceState::Inactive) {
                tracing::warn!(blockdevice = %name, "device disappeared: Inactive");
                merge_status(&api, &name, json!({"state": "Inactive"})).await?;
            }
        }
        Ok(())
    }

    async fn publish(
        &self,
        api: &Api<BlockDevice>,
        node: &str,
        name: &str,
        f: &Found,
        existing: Option<BlockDevice>,
    ) -> Result<()> {
        let path = f.path.to_string_lossy().into_owned();
        if existing.is_none() {
            let bd: BlockDevice = serde_json::from_value(json!({
                "apiVersion": "openebs.io/v1alpha1", "kind": "BlockDevice",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
                    HOSTNAME_LABEL: node,
                    "ndm.io/blockdevice-type": "blockdevice",
                    "ndm.io/managed": "true",
                }},
                "spec": {
                    "nodeAttributes": {"nodeName": node},
                    "path": path,
                    "capacity": {"storage": f.size, "logicalSectorSize": f.logical_sector,
                                 "physicalSectorSize": f.physical_sector},
                    "details": {"deviceType": f.device_type, "driveType": "Unknown",
                                "logicalBlockSize": f.logical_sector,
                                "physicalBlockSize": f.physical_sector},
                    "devlinks": [{"kind": "by-path", "links": [path]}],
                    "partitioned": "No",
                    "filesystem": {},
                },
            }))
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
            create_if_missing(api, &bd).await?;
            tracing::info!(blockdevice = %name, device = %path, size = f.size, "block device found");
        }
        let status = existing.as_ref().and_then(|b| b.status.clone());
        let active = status.as_ref().and_then(|s| s.state)
            == Some(cstor_api::v1alpha1::BlockDeviceState::Active);
        if !active || status.as_ref().and_then(|s| s.claim_state).is_none() {
            let claim = status
                .and_then(|s| s.claim_state)
                .map(|c| serde_json::to_value(c).unwrap_or(json!("Unclaimed")))
                .unwrap_or(json!("Unclaimed"));
            merge_status(api, name, json!({"state": "Active", "claimState": claim})).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_per_node() {
        let a = bd_name("n1", Path::new("/d/disk0"));
        assert_eq!(a, bd_name("n1", Path::new("/d/disk0")));
        assert_ne!(a, bd_name("n2", Path::new("/d/disk0")));
        assert!(a.starts_with("blockdevice-") && a.len() == 12 + 32);
    }

    #[test]
    fn probes_files_and_refuses_others() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk");
        std::fs::File::create(&f).unwrap().set_len(1 << 20).unwrap();
        let found = probe(&f, true).unwrap().unwrap();
        assert_eq!((found.size, found.device_type), (1 << 20, "sparse"));
        assert_eq!(probe(&d.path().join("missing"), true), Ok(None));
        assert!(probe(d.path(), true).is_err(), "a directory is no device");
    }
}
