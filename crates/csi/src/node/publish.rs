//! NodePublishVolume and NodeUnpublishVolume: bind mounts of the staging mount (mount
//! access, read-only on request) or of the loop device node onto a file (block access)
//! at the target path, recorded in the volume's record.
//!
//! Invariants: a target path holds at most one publish; a repeat with the same
//! capability and readonly is OK, a different one ALREADY_EXISTS; unpublish removes
//! what publish created (the mount and the directory or file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cstor_initiator::blockdev;

use super::stage::Want;
use super::state::{Access, Published};
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
    if want.access == Access::Block && req.readonly {
        return Err(Error::invalid(
            "readonly",
            "a read-only raw block publish is not supported (a bind mount cannot make a device node read-only)",
        ));
    }
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
            st.loop_device.clone()
        }
    };
    bind(volume, &source, &target, readonly)?;
    st.published.insert(target, Published { readonly });
    inner.state.save(&st)
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
        if s.published.remove(&target).is_some() {
            inner.state.save(&s)?;
        }
    }
    Ok(())
}
