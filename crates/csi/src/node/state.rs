//! The node plugin's per-volume records in `--state-dir` (default /var/lib/cstor/csi):
//! `volumes/KEY.json` (what is attached, staged and published, with the read-only loop
//! devices of read-only raw block publishes), `attach/KEY/` (the FUSE
//! directory of the volume's `cstor initiator attach` process) and `logs/KEY.log` (that
//! process's output).
//!
//! Invariants: a record is written (to a temporary file, then renamed) before the
//! plugin answers a call that changed what it describes, so a plugin killed at any point
//! finds either the old or the new record; KEY is the volume id when it is a plain file
//! name, else `h-` and the MD5 of the id (ids come from the CO). Nothing is created
//! under the state dir before the first NodeStageVolume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How a volume is offered to its users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// A filesystem on the loop device, mounted at the staging path.
    Mount,
    /// The loop device itself.
    Block,
}

/// The iSCSI target a volume is attached from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Target name.
    pub iqn: String,
    /// HOST:PORT.
    pub portal: String,
    /// Other portals the target may move to (HOST:PORT), tried after `portal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternates: Vec<String>,
    /// Logical unit.
    pub lun: u64,
}

/// How a volume's LUN is attached to this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A `cstor initiator attach --loop` process: FUSE file and loop device.
    #[default]
    Userspace,
    /// An open-iscsi session (`iscsiadm`): the kernel's SCSI disk.
    Iscsiadm,
}

fn yes() -> bool {
    true
}

/// One NodePublishVolume that holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Read-only bind.
    pub readonly: bool,
    /// A read-only raw block publish: the read-only loop device (`losetup --read-only`
    /// over the volume's LUN file, or over the open-iscsi disk) bound at the target path;
    /// unpublish detaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_device: Option<PathBuf>,
}

/// What the plugin did for one volume on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// CSI volume id.
    pub volume_id: String,
    /// Where the LUN comes from.
    pub target: Target,
    /// How the LUN is attached (a record without it: userspace).
    #[serde(default)]
    pub via: Via,
    /// Pid of the `cstor initiator attach` process (in its own session); 0 for iscsiadm.
    pub pid: u32,
    /// Its FUSE directory (holds the file `lun`); empty for iscsiadm.
    pub fuse_dir: PathBuf,
    /// The loop device over `fuse_dir/lun`, or the SCSI disk of the open-iscsi session.
    pub loop_device: PathBuf,
    /// NodeStageVolume's staging_target_path.
    pub staging_path: PathBuf,
    /// Mount or block.
    pub access: Access,
    /// Filesystem (mount access).
    pub fstype: Option<String>,
    /// mount_flags of the staging capability.
    pub mount_flags: Vec<String>,
    /// True once the staging mount (mount access) is in place.
    pub staged: bool,
    /// Target paths of the publishes that hold.
    pub published: BTreeMap<PathBuf, Published>,
    /// REMOUNT for this volume (volume_context `cstor.openebs.io/remount`, default on;
    /// the plugin's `--remount=false` turns it off for every volume).
    #[serde(default = "yes")]
    pub remount: bool,
}

/// The plugin's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// The file-name form of a volume id.
pub fn key(volume_id: &str) -> String {
    let plain = !volume_id.is_empty()
        && volume_id.len() <= 100
        && !volume_id.starts_with('.')
        && volume_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if plain {
        return volume_id.to_owned();
    }
    let digest = Md5::digest(volume_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

impl StateDir {
    /// The state dir at `root` (not created until a volume is staged).
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record(&self, volume_id: &str) -> PathBuf {
        self.root
            .join("volumes")
            .join(format!("{}.json", key(volume_id)))
    }

    /// Where the attach process of `volume_id` mounts its FUSE filesystem.
    pub fn fuse_dir(&self, volume_id: &str) -> PathBuf {
        self.root.join("attach").join(key(volume_id))
    }

    /// The directory holding every FUSE directory.
    pub fn attach_root(&self) -> PathBuf {
        self.root.join("attach")
    }

    /// The log of the attach process of `volume_id`.
    pub fn log(&self, volume_id: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}.log", key(volume_id)))
    }

    /// Creates the directories (at the first stage).
    pub fn create(&self) -> Result<(), Error> {
        for d in ["volumes", "attach", "logs"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        Ok(())
    }

    /// The record of `volume_id`, if any.
    pub fn load(&self, volume_id: &str) -> Result<Option<VolumeState>, Error> {
        let p = self.record(volume_id);
        match std::fs::read(&p) {
            Ok(b) => parse(&p, &b).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Every record (unreadable ones are reported, not skipped).
    pub fn all(&self) -> Result<Vec<VolumeState>, Error> {
        let dir = self.root.join("volumes");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let b = std::fs::read(&p)
                    .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                out.push(parse(&p, &b)?);
            }
        }
        Ok(out)
    }

    /// Writes the record (atomically: temporary file, fsync, rename).
    pub fn save(&self, s: &VolumeState) -> Result<(), Error> {
        use std::io::Write;
        self.create()?;
        let p = self.record(&s.volume_id);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(s).map_err(|e| Error::Decode {
            what: format!("the record of volume {}", s.volume_id),
            why: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)
        };
        write().map_err(|e| Error::io(format!("writing {}", p.display()), e))
    }

    /// Removes the record (and the attach log); absent is fine.
    pub fn remove(&self, volume_id: &str) -> Result<(), Error> {
        let p = self.record(volume_id);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
        }
        let _ = std::fs::remove_file(self.log(volume_id));
        Ok(())
    }
}

fn parse(p: &Path, b: &[u8]) -> Result<VolumeState, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Decode {
        what: p.display().to_string(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_file_names() {
        assert_eq!(key("pvc-1234"), "pvc-1234");
        let k = key("a/b c");
        assert!(k.starts_with("h-") && k.len() == 34, "{k}");
        assert_ne!(key(".."), "..");
        assert_ne!(key("x/y"), key("x/z"));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("s"));
        assert!(sd.all().unwrap().is_empty(), "no dir yet: no records");
        assert_eq!(sd.load("v").unwrap(), None);
        let mut st = VolumeState {
            volume_id: "v".into(),
            target: Target {
                iqn: "iqn.x:v".into(),
                portal: "127.0.0.1:3260".into(),
                alternates: vec!["127.0.0.2:3260".into()],
                lun: 0,
            },
            via: Via::Userspace,
            pid: 42,
            fuse_dir: sd.fuse_dir("v"),
            loop_device: "/dev/loop7".into(),
            staging_path: "/st".into(),
            access: Access::Mount,
            fstype: Some("ext4".into()),
            mount_flags: vec![],
            staged: true,
            published: BTreeMap::new(),
            remount: true,
        };
        st.published.insert(
            "/t".into(),
            Published {
                readonly: true,
                loop_device: None,
            },
        );
        st.published.insert(
            "/b".into(),
            Published {
                readonly: true,
                loop_device: Some("/dev/loop9".into()),
            },
        );
        sd.save(&st).unwrap();
        assert_eq!(sd.load("v").unwrap(), Some(st.clone()));
        assert_eq!(sd.all().unwrap(), vec![st.clone()]);
        // A record of an older plugin (no `via`, no `remount`) reads as userspace, REMOUNT on.
        let mut old = serde_json::to_value(&st).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("via");
        o.remove("remount");
        let back: VolumeState = serde_json::from_value(old).unwrap();
        assert_eq!((back.via, back.remount), (Via::Userspace, true));
        sd.remove("v").unwrap();
        sd.remove("v").unwrap();
        assert_eq!(sd.load("v").unwrap(), None);
    }
}
