//! NodePublishVolume and NodeUnpublishVolume: bind mounts of the staging mount (mount
//! access, read-only on request) or of the loop device node onto a file (block access)
//! at the target path, recorded in the volume's record. A read-only block publish binds
//! a read-only loop device of its own (`losetup --read-only` over the same LUN file):
//! a bind cannot make a device node refuse writes, the device can.
//!
//! Invariants: a target path holds at most one publish; a repeat with the same
//! capability and readonly is OK, a different one ALREADY_EXISTS; unpublish removes
//! what publish created (the mount, the directory or file, the read-only loop device).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cstor_initiator::blockdev;

use super::stage::Want;
use super::state::{Access, Published, Via, VolumeState};
use super::{blocking, claim, host, required, Inner};
use crate::pb::{
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeUnpublishVolumeRequest,
    NodeUnpublishVolumeResponse,
};
use crate::Error;

pub(super) async fn publish(
    inner: &Arc<Inner>,
    req: NodePublishVolumeRequest,
) -> Result<NodePublishVolumeResponse, Error> {
    required("volume_id", &req.volume_id)?;
    required("staging_target_path", &req.staging_target_path)?;
    required("target_path", &req.target_path)?;
    let want = Want::of(req.volume_capability.as_ref())?;
    let claim = claim(inner, &req.volume_id)?;
    let volume = req.volume_id.clone();
    let staging = PathBuf::from(&req.staging_target_path);
    let target = PathBuf::from(&req.target_path);
    let readonly = req.readonly;
    blocking(claim, move |inner| {
        publish_now(inner, &volume, &staging, &target, &want, readonly)
    })
    .await?;
    Ok(NodePublishVolumeResponse {})
}

fn publish_now(
    inner: &Arc<Inner>,
    volume: &str,
    staging: &Path,
    target: &Path,
    want: &Want,
    readonly: bool,
) -> Result<(), Error> {
    let not_staged = |why: String| Error::Precondition {
        volume: volume.to_owned(),
        why,
    };
    let mut st = inner
        .state
        .load(volume)?
        .ok_or_else(|| not_staged("not staged on this node".to_owned()))?;
    if !st.staged {
        return Err(not_staged("its staging did not finish".to_owned()));
    }
    if st.staging_path != host::normal(staging) {
        return Err(not_staged(format!(
            "staged at {}, not {}",
            st.staging_path.display(),
            staging.display()
        )));
    }
    if !super::attach::alive(&st) {
        return Err(not_staged(
            "its attach process is gone: stage it again".to_owned(),
        ));
    }
    if want.access != st.access {
        return Err(Error::invalid(
            "volume_capability",
            format!(
                "asks for {:?} access; the volume is staged for {:?}",
                want.access, st.access
            ),
        ));
    }
    if let Some(d) = target.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }
    let target = host::normal(target);
    let mounted = host::mount_at(&target).map_err(|e| Error::io("reading the mount table", e))?;
    if let Some(p) = st.published.get(&target) {
        if p.readonly != readonly {
            return Err(Error::Incompatible {
                volume: volume.to_owned(),
                why: format!(
                    "published at {} with readonly={}",
                    target.display(),
                    p.readonly
                ),
            });
        }
        if mounted.is_some() {
            return Ok(());
        }
    } else if let Some(m) = &mounted {
        return Err(Error::Incompatible {
            volume: volume.to_owned(),
            why: format!(
                "{} is already a mount point ({} from {})",
                target.display(),
                m.fstype,
                m.source
            ),
        });
    }
    let io = |what: String| move |e| Error::io(what, e);
    let mut ro_loop = None;
    let source = match st.access {
        Access::Mount => {
            std::fs::create_dir_all(&target)
                .map_err(io(format!("creating {}", target.display())))?;
            st.staging_path.clone()
        }
        Access::Block => {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&target)
                .map_err(io(format!("creating {}", target.display())))?;
            if readonly {
                // A read-only bind does not stop writes through a device node (the
                // kernel checks a mount's read-only flag for files, not devices): the
                // device itself must refuse them. A repeat whose bind went away reuses
                // the loop device it recorded.
                let recorded = st
                    .published
                    .get(&target)
                    .and_then(|p| p.loop_device.clone())
                    .filter(|d| ro_loops_of(&st).contains(d));
                let dev = match recorded {
                    Some(d) => d,
                    None => read_only_loop(volume, &st)?,
                };
                ro_loop = Some(dev.clone());
                dev
            } else {
                st.loop_device.clone()
            }
        }
    };
    if let Err(e) = bind(volume, &source, &target, readonly) {
        if let Some(dev) = &ro_loop {
            let _ = blockdev::detach_loop(dev);
        }
        return Err(e);
    }
    st.published.insert(
        target,
        Published {
            readonly,
            loop_device: ro_loop,
        },
    );
    inner.state.save(&st)
}

/// What a read-only loop device of `st` is set up over: the attach's LUN file (so every
/// teardown of the attach, which takes down the loop devices over that file, takes it
/// down too), or the open-iscsi disk.
fn ro_loop_backing(st: &VolumeState) -> PathBuf {
    match st.via {
        Via::Userspace => st.fuse_dir.join(cstor_initiator::LUN_FILE),
        Via::Iscsiadm => st.loop_device.clone(),
    }
}

/// The loop devices over the backing of `st`'s read-only publishes, other than the
/// volume's own device.
pub(super) fn ro_loops_of(st: &VolumeState) -> Vec<PathBuf> {
    host::loops_backed_by(&ro_loop_backing(st))
        .into_iter()
        .filter(|d| *d != st.loop_device)
        .collect()
}

/// A new read-only loop device over the volume (`losetup --read-only`), checked to be
/// read-only in sysfs.
fn read_only_loop(volume: &str, st: &VolumeState) -> Result<PathBuf, Error> {
    let file = ro_loop_backing(st);
    let dev = blockdev::LoopDevice::attach_read_only(&file)
        .map_err(|e| {
            Error::tool(
                format!("setting up a read-only loop device over {}", file.display()),
                e,
            )
        })?
        .keep();
    let ro = dev
        .file_name()
        .and_then(|n| std::fs::read_to_string(Path::new("/sys/block").join(n).join("ro")).ok())
        .is_some_and(|v| v.trim() == "1");
    if !ro {
        let _ = blockdev::detach_loop(&dev);
        return Err(Error::NodeState {
            volume: volume.to_owned(),
            why: format!("the loop device {} did not become read-only", dev.display()),
        });
    }
    tracing::info!(volume, loop_device = %dev.display(), "read-only loop device for a read-only raw block publish");
    Ok(dev)
}

/// Binds `source` at `target` (read-only on request, checked in the mount table): a
/// publish, or REMOUNT binding a target path again.
pub(super) fn bind(
    volume: &str,
    source: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), Error> {
    // util-linux applies `ro` with `bind` as a bind followed by a read-only remount.
    let opts: &[&str] = if readonly { &["bind", "ro"] } else { &["bind"] };
    blockdev::mount(source, target, None, opts).map_err(|e| {
        Error::tool(
            format!("bind mounting {} at {}", source.display(), target.display()),
            e,
        )
    })?;
    if readonly {
        let ro = host::mount_at(target)
            .ok()
            .flatten()
            .is_some_and(|m| m.read_only());
        if !ro {
            let _ = blockdev::unmount(target);
            return Err(Error::NodeState {
                volume: volume.to_owned(),
                why: format!("the bind at {} did not become read-only", target.display()),
            });
        }
    }
    Ok(())
}

pub(super) async fn unpublish(
    inner: &Arc<Inner>,
    req: NodeUnpublishVolumeRequest,
) -> Result<NodeUnpublishVolumeResponse, Error> {
    required("volume_id", &req.volume_id)?;
    required("target_path", &req.target_path)?;
    let claim = claim(inner, &req.volume_id)?;
    let volume = req.volume_id.clone();
    let target = PathBuf::from(&req.target_path);
    blocking(claim, move |inner| unpublish_now(inner, &volume, &target)).await?;
    Ok(NodeUnpublishVolumeResponse {})
}

fn unpublish_now(inner: &Arc<Inner>, volume: &str, target: &Path) -> Result<(), Error> {
    let target = host::normal(target);
    let st = inner.state.load(volume)?;
    // Only a path this volume was published at is unmounted: a CO's stray call must not
    // take down someone else's mount.
    let ours = st
        .as_ref()
        .is_some_and(|s| s.published.contains_key(&target));
    if ours {
        while host::mount_at(&target)
            .map_err(|e| Error::io("reading the mount table", e))?
            .is_some()
        {
            blockdev::unmount(&target)
                .or_else(|e| {
                    // A bind over a dead attach (its process killed): detach it lazily.
                    if e.raw_os_error() == Some(libc::EBUSY) {
                        blockdev::unmount_lazy(&target)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| Error::io(format!("unmounting {}", target.display()), e))?;
        }
        let removed = if target.is_dir() {
            std::fs::remove_dir(&target)
        } else {
            std::fs::remove_file(&target)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", target.display()), e)),
        }
    }
    if let Some(mut s) = st {
        if let Some(p) = s.published.get(&target) {
            // Only a loop device still over this volume: a recorded name the kernel
            // reused for someone else's file is left alone.
            if let Some(dev) = p
                .loop_device
                .as_ref()
                .filter(|d| ro_loops_of(&s).contains(d))
            {
                blockdev::detach_loop(dev)
                    .map_err(|e| Error::tool(format!("detaching {}", dev.display()), e))?;
                tracing::info!(volume, loop_device = %dev.display(), "read-only loop device detached");
            }
            s.published.remove(&target);
            inner.state.save(&s)?;
        }
    }
    Ok(())
}
