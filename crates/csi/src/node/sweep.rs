//! The start-up sweep: what dead attaches left under `--state-dir` is removed before
//! the plugin serves; what live attaches serve is kept, so a plugin restart does not
//! disturb staged volumes.
//!
//! Kept: a record whose attach process runs and whose FUSE mount is there. Cleaned
//! (lazily: the filesystems below are unreachable): for a record whose process died,
//! the mounts of its loop device (staging and target paths), the loop device and the
//! FUSE mount; the record itself stays, so NodeStageVolume attaches again and
//! NodeUnstageVolume still finds what to undo. FUSE mounts (source `cstor-initiator`)
//! and loop devices under `attach/` that no live record holds are taken down, and attach
//! processes serving them are stopped. Never: touches a FUSE mount or loop device
//! outside the state dir (another user's `cstor initiator attach` is not ours).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use cstor_initiator::blockdev;

use super::state::Via;
use super::{attach, host, Inner};
use crate::Error;

pub(super) fn sweep(inner: &Arc<Inner>) -> Result<(), Error> {
    if !inner.state.root().exists() {
        return Ok(());
    }
    let root = host::normal(&inner.state.attach_root());
    let mut kept: HashSet<PathBuf> = HashSet::new();
    for r in inner.state.all()? {
        let dir = host::normal(&r.fuse_dir);
        if r.via == Via::Iscsiadm {
            // The kernel's session outlives the plugin; a lost one is NodeStage's to redo.
            tracing::info!(volume = %r.volume_id, attached = attach::alive(&r), "staged volume of an open-iscsi session kept");
            continue;
        }
        if host::attach_alive(r.pid, &r.fuse_dir) && blockdev::is_lun_mount(&r.fuse_dir) {
            tracing::info!(volume = %r.volume_id, pid = r.pid, "staged volume kept: its attach process runs");
            kept.insert(dir);
            continue;
        }
        tracing::warn!(volume = %r.volume_id, pid = r.pid, "the attach process of a staged volume is gone: cleaning its mounts; the next NodeStageVolume attaches again");
        let mut stale: Vec<PathBuf> = r.published.keys().cloned().collect();
        stale.push(r.staging_path.clone());
        attach::clean_dead(&r.fuse_dir, &stale);
    }
    let mounts = host::mounts().map_err(|e| Error::io("reading the mount table", e))?;
    for m in mounts {
        if m.source == "cstor-initiator"
            && m.mount_point.starts_with(&root)
            && !kept.contains(&m.mount_point)
        {
            tracing::warn!(dir = %m.mount_point.display(), "FUSE mount of no live record: taken down");
            attach::clean_dead(&m.mount_point, &[]);
        }
    }
    for (dev, backing) in host::loops() {
        let dir = backing.parent().map(PathBuf::from).unwrap_or_default();
        if backing.starts_with(&root) && !kept.contains(&dir) {
            tracing::warn!(dev = %dev.display(), backing = %backing.display(), "loop device of no live record: detached");
            attach::clean_dead(&dir, &[]);
            let _ = blockdev::detach_loop(&dev);
        }
    }
    for (pid, dir) in host::attach_pids_under(&root) {
        if !kept.contains(&host::normal(&dir)) {
            tracing::warn!(pid, dir = %dir.display(), "attach process of no live record: SIGTERM");
            if let Ok(p) = i32::try_from(pid) {
                // SAFETY: kill(2) on a pid whose command line is an attach under our
                // state dir.
                unsafe { libc::kill(p, libc::SIGTERM) };
            }
        }
    }
    Ok(())
}
