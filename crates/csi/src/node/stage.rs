//! NodeStageVolume and NodeUnstageVolume.
//!
//! Stage: attach (open-iscsi where [`iscsiadm::choose`] says so, else a detached
//! `cstor initiator attach --loop` process), then for mount access make ext4 or xfs
//! only where blkid finds no signature and mount it at the staging path (ext4 with
//! `errors=remount-ro`, which REMOUNT undoes once the path is back). A repeat finds the
//! record and does only what is missing; a record whose attach died is cleaned and
//! attached again (the retry a CO makes after a node problem). Unstage: the staging
//! mount, the loop device, the FUSE mount (the attach process logs out and exits) or
//! the open-iscsi session, the record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cstor_initiator::blockdev;

use super::state::{Access, Target, Via, VolumeState};
use super::{attach, blocking, claim, host, iscsiadm, remount, required, Inner};
use crate::pb::volume_capability::AccessType;
use crate::pb::{
    NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse, VolumeCapability,
};
use crate::request;
use crate::Error;

/// What a capability asks of the staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Want {
    pub(super) access: Access,
    pub(super) fstype: Option<String>,
    pub(super) flags: Vec<String>,
}

impl Want {
    /// Checks `cap` (present, supported) and reads it.
    pub(super) fn of(cap: Option<&VolumeCapability>) -> Result<Want, Error> {
        let cap = cap.ok_or_else(|| Error::invalid("volume_capability", "is required"))?;
        if let Some(why) = request::unsupported(cap) {
            return Err(Error::invalid("volume_capability", why));
        }
        Ok(match &cap.access_type {
            Some(AccessType::Mount(m)) => Want {
                access: Access::Mount,
                fstype: Some(if m.fs_type.is_empty() {
                    "ext4".to_owned()
                } else {
                    m.fs_type.clone()
                }),
                flags: m.mount_flags.clone(),
            },
            _ => Want {
                access: Access::Block,
                fstype: None,
                flags: Vec::new(),
            },
        })
    }

    fn differs(&self, st: &VolumeState) -> Option<String> {
        if self.access != st.access {
            return Some(format!("staged for {:?} access", st.access));
        }
        if self.fstype != st.fstype {
            return Some(format!("staged with filesystem {:?}", st.fstype));
        }
        if self.flags != st.mount_flags {
            return Some(format!("staged with mount flags {:?}", st.mount_flags));
        }
        None
    }
}

pub(super) async fn stage(
    inner: &Arc<Inner>,
    req: NodeStageVolumeRequest,
) -> Result<NodeStageVolumeResponse, Error> {
    required("volume_id", &req.volume_id)?;
    required("staging_target_path", &req.staging_target_path)?;
    let want = Want::of(req.volume_capability.as_ref())?;
    // The PV's nodeStageSecretRef: the CHAP credentials of the login.
    let chap = cstor_api::chap::Credentials::from_map(&req.secrets)
        .map_err(|why| Error::invalid("secrets", why))?;
    let from_context = attach::target_from_context(&req.publish_context)?;
    let remount = remount::of_context(&req.volume_context)?;
    let claim = claim(inner, &req.volume_id)?;
    let recorded = inner.state.load(&req.volume_id)?;
    // A CO without ControllerPublishVolume passes no publish_context: the CStorVolume
    // names the target.
    let target = match (from_context, recorded) {
        (Some(t), _) => t,
        (None, Some(r)) => r.target,
        (None, None) => {
            let spec = inner.cluster.volume_spec(&req.volume_id).await?;
            attach::target_from_cv(&req.volume_id, &spec)?
        }
    };
    let volume = req.volume_id.clone();
    let staging = PathBuf::from(&req.staging_target_path);
    blocking(claim, move |inner| {
        stage_now(inner, &volume, &staging, &want, target, chap, remount)
    })
    .await?;
    Ok(NodeStageVolumeResponse {})
}

fn stage_now(
    inner: &Arc<Inner>,
    volume: &str,
    staging: &Path,
    want: &Want,
    target: Target,
    chap: Option<cstor_api::chap::Credentials>,
    remount: bool,
) -> Result<(), Error> {
    inner.children.reap();
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
    let staging = host::normal(staging);
    let mut st = match inner.state.load(volume)? {
        Some(s) => {
            if s.staging_path != staging {
                return Err(Error::Incompatible {
                    volume: volume.to_owned(),
                    why: format!("it is staged at {}", s.staging_path.display()),
                });
            }
            if let Some(why) = want.differs(&s) {
                return Err(Error::Incompatible {
                    volume: volume.to_owned(),
                    why,
                });
            }
            let file = s.fuse_dir.join(cstor_initiator::LUN_FILE);
            let alive = attach::alive(&s);
            let whole =
                s.via == Via::Iscsiadm || host::loops_backed_by(&file).contains(&s.loop_device);
            if alive && whole {
                s
            } else if s.via == Via::Iscsiadm {
                tracing::warn!(
                    volume,
                    "the open-iscsi session of a staged volume is gone; logging in again"
                );
                let stale: Vec<PathBuf> = s.published.keys().cloned().collect();
                lazy_unmount(&stale, &s.staging_path);
                detach_ro_loops(&s);
                iscsiadm::detach_session(&s.target)?;
                fresh(inner, volume, &staging, want, target, chap, remount)?
            } else {
                tracing::warn!(
                    volume,
                    pid = s.pid,
                    alive,
                    "attach of a staged volume is gone or broken; attaching again"
                );
                if alive {
                    attach::detach(s.pid, &s.fuse_dir, &inner.children)?;
                }
                let mut stale: Vec<PathBuf> = s.published.keys().cloned().collect();
                stale.push(s.staging_path.clone());
                attach::clean_dead(&s.fuse_dir, &stale);
                fresh(inner, volume, &staging, want, target, chap, remount)?
            }
        }
        None => fresh(inner, volume, &staging, want, target, chap, remount)?,
    };
    if st.remount != remount {
        st.remount = remount;
        inner.state.save(&st)?;
    }
    if st.access == Access::Mount && mount_staging(volume, &st)? {
        // A volume expanded while staged nowhere (ControllerExpandVolume then says no
        // node expansion is needed): its filesystem grows to the LUN here, as it is
        // mounted. Not fatal: the volume works at its old size, and NodeExpandVolume
        // tries again.
        if let Err(e) = super::stats::grow_filesystem(volume, &st) {
            tracing::warn!(volume, "growing the filesystem to the volume's size: {e}");
        }
    }
    if !st.staged {
        st.staged = true;
        inner.state.save(&st)?;
    }
    Ok(())
}

/// A new attach, recorded (not yet staged) before anything is mounted on it.
fn fresh(
    inner: &Arc<Inner>,
    volume: &str,
    staging: &Path,
    want: &Want,
    target: Target,
    chap: Option<cstor_api::chap::Credentials>,
    remount: bool,
) -> Result<VolumeState, Error> {
    let (via, why) = iscsiadm::choose(inner.options.attach_method, volume)?;
    tracing::info!(volume, "NodeStageVolume: {why}");
    inner.state.create()?;
    let (pid, dir, device) = match via {
        Via::Iscsiadm => {
            let dev = iscsiadm::attach(
                volume,
                &target,
                &inner.login(),
                chap.as_ref(),
                inner.options.replacement_timeout,
            )?;
            (0, PathBuf::new(), dev)
        }
        Via::Userspace => {
            let dir = inner.state.fuse_dir(volume);
            // A FUSE mount left at our directory by an attach no record knows of.
            attach::clean_dead(&dir, &[]);
            let login = attach::Login {
                chap,
                ..inner.login()
            };
            let started = attach::start(
                volume,
                &inner.exe,
                &target,
                &login,
                &dir,
                &inner.state.log(volume),
                inner.options.replacement_timeout,
            )?;
            let pid = started.child.id();
            inner.children.add(started.child);
            tracing::info!(volume, pid, loop_device = %started.loop_device.display(), "attached");
            (pid, dir, started.loop_device)
        }
    };
    let st = VolumeState {
        volume_id: volume.to_owned(),
        target,
        via,
        pid,
        fuse_dir: dir.clone(),
        loop_device: device,
        staging_path: staging.to_owned(),
        access: want.access,
        fstype: want.fstype.clone(),
        mount_flags: want.flags.clone(),
        staged: false,
        published: Default::default(),
        remount,
    };
    if let Err(e) = inner.state.save(&st) {
        let _ = match via {
            Via::Iscsiadm => iscsiadm::detach_session(&st.target),
            Via::Userspace => attach::detach(pid, &dir, &inner.children),
        };
        return Err(e);
    }
    Ok(st)
}

/// Detaches the read-only loop devices of read-only block publishes over an open-iscsi
/// disk (a userspace attach's go with the loop devices over its LUN file).
fn detach_ro_loops(st: &VolumeState) {
    for dev in super::publish::ro_loops_of(st) {
        let _ = blockdev::detach_loop(&dev);
    }
}

/// Lazily unmounts what is left of a lost attach (the filesystem below is unreachable).
fn lazy_unmount(publishes: &[PathBuf], staging: &Path) {
    for m in publishes.iter().chain([&staging.to_path_buf()]) {
        if host::mount_at(m).ok().flatten().is_some() {
            let _ = blockdev::unmount_lazy(m);
        }
    }
}

/// Mounts the volume's device at its staging path with the stage's flags, plus
/// `errors=remount-ro` for ext4 unless they name an `errors=` behaviour (the kernel
/// default may be `continue`, which would write on over I/O errors), and `ro` when
/// asked (REMOUNT after a failed check).
pub(super) fn mount_device(st: &VolumeState, ro: bool) -> Result<(), Error> {
    let fstype = st.fstype.as_deref().unwrap_or("ext4");
    let mut flags: Vec<&str> = st.mount_flags.iter().map(String::as_str).collect();
    if fstype == "ext4" && !flags.iter().any(|f| f.starts_with("errors=")) {
        flags.push("errors=remount-ro");
    }
    if ro {
        flags.push("ro");
    }
    blockdev::mount(&st.loop_device, &st.staging_path, Some(fstype), &flags).map_err(|e| {
        Error::tool(
            format!(
                "mounting {} at {}",
                st.loop_device.display(),
                st.staging_path.display()
            ),
            e,
        )
    })
}

/// Mounts the volume's filesystem (made if blank) at its staging path; true when it was
/// mounted now, false when it was mounted already.
fn mount_staging(volume: &str, st: &VolumeState) -> Result<bool, Error> {
    let fstype = st.fstype.as_deref().unwrap_or("ext4");
    let staging = &st.staging_path;
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
    let dev = host::dev_of(&st.loop_device)
        .map_err(|e| Error::io(format!("stat {}", st.loop_device.display()), e))?;
    match host::mount_at(staging).map_err(|e| Error::io("reading the mount table", e))? {
        Some(m) if m.dev == dev => return Ok(false),
        Some(m) => {
            return Err(Error::NodeState {
                volume: volume.to_owned(),
                why: format!(
                    "{} is already a mount point of {} ({})",
                    staging.display(),
                    m.source,
                    m.fstype
                ),
            })
        }
        None => {}
    }
    match blockdev::make_fs_if_blank(&st.loop_device, fstype).map_err(|e| {
        Error::tool(
            format!("making {fstype} on {}", st.loop_device.display()),
            e,
        )
    })? {
        Ok(()) => tracing::info!(volume, fstype, "made a filesystem on the blank volume"),
        Err(sig) if sig == fstype => {}
        Err(sig) => {
            return Err(Error::NodeState {
                volume: volume.to_owned(),
                why: format!("the volume holds {sig}, not {fstype}; it is left as it is"),
            })
        }
    }
    mount_device(st, false)?;
    Ok(true)
}

pub(super) async fn unstage(
    inner: &Arc<Inner>,
    req: NodeUnstageVolumeRequest,
) -> Result<NodeUnstageVolumeResponse, Error> {
    required("volume_id", &req.volume_id)?;
    required("staging_target_path", &req.staging_target_path)?;
    let claim = claim(inner, &req.volume_id)?;
    let volume = req.volume_id.clone();
    let staging = PathBuf::from(&req.staging_target_path);
    blocking(claim, move |inner| unstage_now(inner, &volume, &staging)).await?;
    Ok(NodeUnstageVolumeResponse {})
}

fn unstage_now(inner: &Arc<Inner>, volume: &str, staging: &Path) -> Result<(), Error> {
    inner.children.reap();
    let Some(st) = inner.state.load(volume)? else {
        return Ok(());
    };
    if st.staging_path != host::normal(staging) {
        return Err(Error::invalid(
            "staging_target_path",
            format!(
                "volume {volume} is staged at {}, not {}",
                st.staging_path.display(),
                staging.display()
            ),
        ));
    }
    let alive = attach::alive(&st);
    if alive || st.via == Via::Iscsiadm {
        let held: Vec<String> = st
            .published
            .keys()
            .filter(|p| host::mount_at(p).ok().flatten().is_some())
            .map(|p| p.display().to_string())
            .collect();
        if !held.is_empty() {
            return Err(Error::Precondition {
                volume: volume.to_owned(),
                why: format!("still published at {}: unpublish first", held.join(", ")),
            });
        }
    }
    if st.via == Via::Iscsiadm {
        let stale: Vec<PathBuf> = st.published.keys().cloned().collect();
        if host::mount_at(&st.staging_path).ok().flatten().is_some() {
            blockdev::unmount(&st.staging_path)
                .map_err(|e| Error::io(format!("unmounting {}", st.staging_path.display()), e))?;
        }
        lazy_unmount(&stale, &st.staging_path);
        detach_ro_loops(&st);
        iscsiadm::detach_session(&st.target)?;
    } else if alive {
        attach::detach(st.pid, &st.fuse_dir, &inner.children)?;
    } else {
        let mut stale: Vec<PathBuf> = st.published.keys().cloned().collect();
        stale.push(st.staging_path.clone());
        attach::clean_dead(&st.fuse_dir, &stale);
        let _ = std::fs::remove_dir(&st.fuse_dir);
    }
    inner.state.remove(volume)?;
    tracing::info!(volume, "unstaged");
    Ok(())
}
