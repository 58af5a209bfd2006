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
//! processes serving them are stopped. Read-only loop devices of read-only block
//! publishes are over the same LUN file, so they go with the attach's own. Never: touches
//! a FUSE mount or loop device outside the state dir (another user's `cstor initiator
//! attach` is not ours).
//!
//! [`take_down`] is the final stop of a node (`cstor up` stopping): every attach under
//! the state dir is taken down, live ones included.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_initiator::blockdev;

use super::state::{StateDir, Via};
use super::{attach, host, iscsiadm, publish, Children, Inner};
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
    leftovers(&root, &kept)?;
    Ok(())
}

/// Takes down what no record in `kept` holds under the FUSE root `root`: FUSE mounts
/// (source `cstor-initiator`), loop devices over files there, and attach processes
/// serving directories there (SIGTERM; their pids are returned).
fn leftovers(root: &Path, kept: &HashSet<PathBuf>) -> Result<Vec<u32>, Error> {
    let mounts = host::mounts().map_err(|e| Error::io("reading the mount table", e))?;
    for m in mounts {
        if m.source == "cstor-initiator"
            && m.mount_point.starts_with(root)
            && !kept.contains(&m.mount_point)
        {
            tracing::warn!(dir = %m.mount_point.display(), "FUSE mount of no live record: taken down");
            attach::clean_dead(&m.mount_point, &[]);
        }
    }
    for (dev, backing) in host::loops() {
        let dir = backing.parent().map(PathBuf::from).unwrap_or_default();
        if backing.starts_with(root) && !kept.contains(&dir) {
            tracing::warn!(dev = %dev.display(), backing = %backing.display(), "loop device of no live record: detached");
            attach::clean_dead(&dir, &[]);
            let _ = blockdev::detach_loop(&dev);
        }
    }
    let mut stopped = Vec::new();
    for (pid, dir) in host::attach_pids_under(root) {
        if !kept.contains(&host::normal(&dir)) {
            tracing::warn!(pid, dir = %dir.display(), "attach process of no live record: SIGTERM");
            if let Ok(p) = i32::try_from(pid) {
                // SAFETY: kill(2) on a pid whose command line is an attach under our
                // state dir.
                unsafe { libc::kill(p, libc::SIGTERM) };
                stopped.push(pid);
            }
        }
    }
    Ok(stopped)
}

/// [`take_down`] for a plugin whose parent died (`cstor csi --take-down-when-orphaned`):
/// the node's targets are stopping at the same moment, so an attach can no longer write
/// what the filesystems above it still hold, and the unmounts and loop detaches, which
/// flush, would wait on its I/O queue (up to the replacement timeout). So each live
/// userspace attach process is SIGKILLed first: its FUSE connection aborts, the pending
/// I/O fails at once, and the teardown runs as after a dead attach.
pub fn take_down_orphaned(state_dir: &Path) -> Vec<String> {
    let state = StateDir::new(state_dir.to_owned());
    let mut said = Vec::new();
    let children = Children::default();
    for r in state.all().unwrap_or_default() {
        if r.via != Via::Userspace || !host::attach_alive(r.pid, &r.fuse_dir) {
            continue;
        }
        attach::signal(r.pid, libc::SIGKILL);
        attach::wait_gone(r.pid, &r.fuse_dir, STRAY_WAIT, &children);
        said.push(format!(
            "volume {}: attach process {} killed (its target is going away)",
            r.volume_id, r.pid
        ));
    }
    said.extend(take_down(state_dir));
    said
}

/// How long [`take_down`] waits for stray attach processes after SIGTERM.
const STRAY_WAIT: Duration = Duration::from_secs(10);

/// Takes down every attach of the node plugin whose state dir is `state_dir`, for good:
/// the final stop of a node (`cstor up`'s stop), not a plugin restart (which must keep
/// them). Per record: its target paths and staging path unmounted lazily (their users
/// lose them), the loop devices over its LUN file detached (read-only ones too), its
/// FUSE mount unmounted, so its attach process logs out and exits (SIGTERM, then
/// SIGKILL past the bounds); an open-iscsi session is logged out. Then whatever no
/// record names under the state dir, as the start-up sweep does. The records stay, as
/// after a dead attach: the next NodeStageVolume attaches again. Returns one line per
/// volume (and per failure) saying what was done; a plugin must not be running on
/// `state_dir` meanwhile.
pub fn take_down(state_dir: &Path) -> Vec<String> {
    let state = StateDir::new(state_dir.to_owned());
    let mut said = Vec::new();
    if !state.root().exists() {
        return said;
    }
    let records = match state.all() {
        Ok(r) => r,
        Err(e) => {
            said.push(format!("reading the volume records: {e}"));
            Vec::new()
        }
    };
    let children = Children::default();
    for r in records {
        let mut paths: Vec<PathBuf> = r.published.keys().cloned().collect();
        paths.push(r.staging_path.clone());
        let unmounted: Vec<String> = paths
            .iter()
            .filter(|p| host::mount_at(p).ok().flatten().is_some())
            .filter(|p| blockdev::unmount_lazy(p).is_ok())
            .map(|p| p.display().to_string())
            .collect();
        let unmounted = if unmounted.is_empty() {
            "nothing mounted".to_owned()
        } else {
            format!("unmounted {} (lazily)", unmounted.join(", "))
        };
        let done = match r.via {
            Via::Iscsiadm => {
                let loops = publish::ro_loops_of(&r);
                for dev in &loops {
                    let _ = blockdev::detach_loop(dev);
                }
                iscsiadm::detach_session(&r.target)
                    .map(|()| format!("{unmounted}, logged out of {}", r.target.iqn))
            }
            Via::Userspace => {
                let loops: Vec<String> =
                    host::loops_backed_by(&r.fuse_dir.join(cstor_initiator::LUN_FILE))
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect();
                let loops = if loops.is_empty() {
                    "no loop device".to_owned()
                } else {
                    format!("detached {}", loops.join(", "))
                };
                let fuse = host::mount_at(&r.fuse_dir).ok().flatten().is_some();
                let res = if host::attach_alive(r.pid, &r.fuse_dir) {
                    attach::detach(r.pid, &r.fuse_dir, &children)
                        .map(|()| format!("attach process {} stopped", r.pid))
                } else {
                    attach::clean_dead(&r.fuse_dir, &[]);
                    Ok(format!("attach process {} was gone", r.pid))
                };
                let fuse = if fuse {
                    format!(", unmounted the FUSE mount {}", r.fuse_dir.display())
                } else {
                    String::new()
                };
                res.map(|p| format!("{unmounted}, {loops}{fuse}, {p}"))
            }
        };
        said.push(match done {
            Ok(d) => format!("volume {}: {d}", r.volume_id),
            Err(e) => format!("volume {}: taking its attach down: {e}", r.volume_id),
        });
    }
    let root = host::normal(&state.attach_root());
    match leftovers(&root, &HashSet::new()) {
        Ok(pids) => {
            let t0 = Instant::now();
            for pid in pids {
                while host::attach_pids_under(&root)
                    .iter()
                    .any(|(p, _)| *p == pid)
                    && t0.elapsed() < STRAY_WAIT
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if host::attach_pids_under(&root)
                    .iter()
                    .any(|(p, _)| *p == pid)
                {
                    if let Ok(p) = i32::try_from(pid) {
                        // SAFETY: kill(2) on an attach process under our state dir
                        // that ignored SIGTERM.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
                said.push(format!("stray attach process {pid} stopped"));
            }
        }
        Err(e) => said.push(format!("sweeping the attach directory: {e}")),
    }
    said
}
