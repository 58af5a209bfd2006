//! REMOUNT (cStor's option, on by default): a background thread over the staged
//! filesystems. After a path outage longer than the replacement timeout the kernel
//! sees I/O errors: ext4 (staged with `errors=remount-ro`) turns read-only, xfs shuts
//! down (every access EIO). The monitor notices (mountinfo `ro`, or EIO from a stat of
//! the mount), waits until the volume's path is healthy again, and brings the filesystem
//! back read-write: `mount -o remount,rw` when the kernel allows it, else (and always for
//! xfs) it unmounts the target binds and the staging mount, checks the filesystem
//! (`e2fsck -p`; `xfs_repair` only when the mount fails), mounts it again and binds the
//! target paths again. docs/csi.md "REMOUNT" says what this kernel allows.
//!
//! Invariants: a volume is repaired only while the monitor holds its claim (no CSI call
//! runs on it meanwhile), only when it was staged read-write, and only once its path
//! answers again: the attach runs, a read of the LUN succeeds within [`PROBE`] and the
//! session is not fenced off (another node holds the volume then, and remounting would
//! only fail again). A repair that cannot finish puts the mounts back (read-only when
//! the check failed), so the staging and target paths keep meaning the volume; it is
//! tried again after [`RETRY`]. Every step is logged with the volume id.
//! Never: `xfs_repair -L` (it throws the log away), a lazy unmount (a filesystem still
//! in use elsewhere would then be checked while mounted).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cstor_initiator::blockdev::{self, MountEntry};

use super::state::{Access, VolumeState};
use super::{attach, claim, host, publish, stage, Inner};
use crate::Error;

/// volume_context key (a PV's volumeAttributes): `"false"` turns REMOUNT off for the
/// volume, `"true"` (the default) keeps it on.
pub const CONTEXT_KEY: &str = crate::view::REMOUNT_KEY;

/// How often the staged mounts are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Bound of the read that tells the path answers again.
const PROBE: Duration = Duration::from_secs(3);
/// Wait after a failed repair before the next attempt.
const RETRY: Duration = Duration::from_secs(10);

/// REMOUNT for a volume staged with `ctx` (INVALID_ARGUMENT for a value other than
/// true or false).
pub(super) fn of_context(ctx: &HashMap<String, String>) -> Result<bool, Error> {
    match ctx.get(CONTEXT_KEY).map(|v| v.trim()) {
        None | Some("" | "true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(Error::invalid(
            format!("volume_context.{CONTEXT_KEY}"),
            format!("{v:?} is neither true nor false"),
        )),
    }
}

/// Starts the monitor; it ends when the node service is dropped.
pub(super) fn spawn(inner: Weak<Inner>) {
    let started = std::thread::Builder::new()
        .name("remount".to_owned())
        .spawn(move || {
            let mut watched = HashMap::new();
            loop {
                std::thread::sleep(TICK);
                let Some(inner) = inner.upgrade() else { return };
                tick(&inner, &mut watched);
            }
        });
    match started {
        Ok(_) => tracing::info!(
            "REMOUNT is on: a staged filesystem the kernel makes read-only is remounted read-write once its volume is healthy again"
        ),
        Err(e) => tracing::error!("the REMOUNT monitor could not start: {e}"),
    }
}

/// A volume whose filesystem needs REMOUNT.
struct Watch {
    since: Instant,
    /// The last reason logged for waiting (logged again only when it changes).
    waiting: Option<String>,
    next_try: Instant,
}

/// Whether `st` was staged read-write (a read-only staging is never remounted).
fn staged_rw(st: &VolumeState) -> bool {
    !st.mount_flags.iter().any(|f| f == "ro")
}

/// Whether the filesystem mounted at `path` was shut down (xfs after a metadata write
/// error answers EIO to every access, its mount still `rw`).
pub(super) fn shut_down(path: &Path) -> bool {
    std::fs::metadata(path).is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
}

/// Whether the kernel stopped writes to the filesystem of `m`: `ro`, or ext4's
/// superblock flags `emergency_ro` (what `errors=remount-ro` sets on Linux 6.18, the
/// mount itself staying `rw`) or `shutdown`.
pub(super) fn stopped(m: &MountEntry) -> bool {
    m.read_only()
        || m.super_options
            .split(',')
            .any(|o| o == "emergency_ro" || o == "shutdown")
}

/// What is wrong with the staging mount `m` of `st`, if REMOUNT has to act.
fn broken(st: &VolumeState, m: &MountEntry) -> Option<&'static str> {
    if !staged_rw(st) {
        None
    } else if stopped(m) {
        Some("read-only (the kernel stopped writes to it after I/O errors)")
    } else if shut_down(&m.mount_point) {
        Some("shut down (every access fails with EIO)")
    } else {
        None
    }
}

fn tick(inner: &Arc<Inner>, watched: &mut HashMap<String, Watch>) {
    let records = match inner.state.all() {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("REMOUNT: reading the records: {e}");
            return;
        }
    };
    watched.retain(|id, _| records.iter().any(|r| &r.volume_id == id));
    for st in records {
        let id = st.volume_id.clone();
        if !st.remount || st.access != Access::Mount || !st.staged {
            watched.remove(&id);
            continue;
        }
        // Not mounted at all: the next NodeStageVolume mounts it.
        let Ok(Some(m)) = host::mount_at(&st.staging_path) else {
            continue;
        };
        let Some(why) = broken(&st, &m) else {
            if watched.remove(&id).is_some() {
                tracing::info!(volume = %id, "REMOUNT: the filesystem at {} is read-write again", st.staging_path.display());
            }
            continue;
        };
        let now = Instant::now();
        let w = watched.entry(id.clone()).or_insert_with(|| {
            tracing::warn!(volume = %id, "REMOUNT: the filesystem at {} is {why}; it is remounted read-write once the volume is healthy again", st.staging_path.display());
            Watch {
                since: now,
                waiting: None,
                next_try: now,
            }
        });
        if now < w.next_try {
            continue;
        }
        if let Err(why) = healthy(inner, &st) {
            if w.waiting.as_deref() != Some(why.as_str()) {
                tracing::info!(volume = %id, "REMOUNT waits: {why}");
                w.waiting = Some(why);
            }
            continue;
        }
        // A CSI call on the volume runs: the next tick looks again.
        let Ok(held) = claim(inner, &id) else {
            continue;
        };
        // The record as it is now that nothing else changes it.
        let st = match inner.state.load(&id) {
            Ok(Some(s)) if s.staged => s,
            _ => continue,
        };
        tracing::info!(volume = %id, "REMOUNT: the volume answers again; remounting {} read-write", st.staging_path.display());
        match repair(&st) {
            Ok(how) => {
                tracing::info!(volume = %id, after = ?w.since.elapsed(), "REMOUNT: the filesystem at {} is read-write again ({how})", st.staging_path.display());
                watched.remove(&id);
            }
            Err(e) => {
                tracing::warn!(volume = %id, "REMOUNT failed: {e}; next attempt in {RETRY:?}");
                w.next_try = Instant::now() + RETRY;
            }
        }
        drop(held);
    }
}

/// Ok once the volume's path answers again; else what it waits for.
fn healthy(inner: &Inner, st: &VolumeState) -> Result<(), String> {
    if !attach::alive(st) {
        return Err("its attach is gone (the next NodeStageVolume attaches again)".to_owned());
    }
    attach::probe(st, PROBE).map_err(|why| format!("the path is not healthy yet: {why}"))?;
    let log = std::fs::read_to_string(inner.state.log(&st.volume_id)).unwrap_or_default();
    if log.contains(cstor_initiator::FENCED_MESSAGE) {
        return Err(
            "another node preempted this node's reservation key (fenced off): not remounted"
                .to_owned(),
        );
    }
    Ok(())
}

/// Brings the staging mount (and the binds of its publishes) back read-write; how.
fn repair(st: &VolumeState) -> Result<String, String> {
    let fstype = st.fstype.as_deref().unwrap_or("ext4");
    let staging = &st.staging_path;
    if fstype == "ext4" {
        match blockdev::mount(&st.loop_device, staging, None, &["remount", "rw"]) {
            Ok(())
                if !host::mount_at(staging)
                    .ok()
                    .flatten()
                    .is_some_and(|m| stopped(&m)) =>
            {
                return Ok("mount -o remount,rw".to_owned());
            }
            Ok(()) => {
                tracing::info!(volume = %st.volume_id, "remount,rw left the filesystem read-only; unmounting and checking it")
            }
            Err(e) => {
                tracing::info!(volume = %st.volume_id, "the kernel refused remount,rw ({e}); unmounting and checking it")
            }
        }
    }
    cycle(st, fstype)
}

/// The publishes of `st` mounted now, in order.
fn binds(st: &VolumeState) -> Vec<(PathBuf, bool)> {
    st.published
        .iter()
        .filter(|(t, _)| host::mount_at(t).ok().flatten().is_some())
        .map(|(t, p)| (t.clone(), p.readonly))
        .collect()
}

fn rebind(st: &VolumeState, undone: &[(PathBuf, bool)]) -> Result<(), String> {
    for (t, ro) in undone {
        publish::bind(&st.volume_id, &st.staging_path, t, *ro)
            .map_err(|e| format!("binding {} again: {e}", t.display()))?;
    }
    Ok(())
}

/// Unmount, check, mount again, bind again.
fn cycle(st: &VolumeState, fstype: &str) -> Result<String, String> {
    let staging = &st.staging_path;
    let all = binds(st);
    let mut undone = Vec::new();
    for (t, ro) in &all {
        if let Err(e) = blockdev::unmount(t) {
            rebind(st, &undone)?;
            return Err(format!(
                "unmounting {}: {e} (a process holds files open there; it is retried)",
                t.display()
            ));
        }
        undone.push((t.clone(), *ro));
    }
    if let Err(e) = blockdev::unmount(staging) {
        rebind(st, &undone)?;
        return Err(format!(
            "unmounting {}: {e} (a process holds files open there; it is retried)",
            staging.display()
        ));
    }
    let checked = check(&st.loop_device, fstype);
    if let Err(why) = &checked {
        tracing::error!(volume = %st.volume_id, "{why}: mounting it read-only again; the filesystem needs a manual check");
    }
    let ro = checked.is_err();
    let mounted = stage::mount_device(st, ro).or_else(|e| {
        if fstype != "xfs" {
            return Err(e.to_string());
        }
        tracing::warn!(volume = %st.volume_id, "mounting xfs after its shutdown failed ({e}); running xfs_repair");
        run("xfs_repair", &[&st.loop_device.display().to_string()])?;
        stage::mount_device(st, false).map_err(|e| e.to_string())
    });
    let rebound = rebind(st, &undone);
    mounted.map_err(|e| format!("mounting {} again: {e}", staging.display()))?;
    rebound?;
    let how = checked?;
    if host::mount_at(staging)
        .ok()
        .flatten()
        .is_none_or(|m| stopped(&m))
    {
        return Err(format!("{} is still read-only", staging.display()));
    }
    Ok(format!(
        "unmounted, {how}, mounted again and {} target path(s) bound again",
        undone.len()
    ))
}

/// Checks the unmounted filesystem on `dev`; what was done, or why it is not clean.
fn check(dev: &Path, fstype: &str) -> Result<String, String> {
    if fstype == "xfs" {
        // xfs replays its log when it mounts; xfs_repair only when that fails.
        return Ok("xfs log replayed by the mount".to_owned());
    }
    let d = dev.display().to_string();
    let out = Command::new("e2fsck")
        .args(["-p", &d])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running e2fsck: {e}"))?;
    // e2fsck(8): 1 errors corrected, 2 corrected and a reboot would be wise; 4 and up
    // left uncorrected or failed.
    match out.status.code() {
        Some(0) => Ok("e2fsck -p found it clean".to_owned()),
        Some(c @ (1 | 2)) => Ok(format!(
            "e2fsck -p corrected it (exit {c}): {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        c => Err(format!(
            "e2fsck -p {d} failed (exit {c:?}): {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {tool}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{tool} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(options: &str, super_options: &str) -> MountEntry {
        MountEntry {
            dev: "7:0".into(),
            mount_point: PathBuf::from("/"),
            options: options.into(),
            fstype: "ext4".into(),
            source: "/dev/loop0".into(),
            super_options: super_options.into(),
        }
    }

    #[test]
    fn the_volume_context_turns_remount_off() {
        let ctx = |v: &str| HashMap::from([(CONTEXT_KEY.to_owned(), v.to_owned())]);
        assert!(of_context(&HashMap::new()).unwrap());
        assert!(of_context(&ctx("true")).unwrap());
        assert!(!of_context(&ctx("false")).unwrap());
        assert!(of_context(&ctx("no")).is_err());
    }

    #[test]
    fn only_a_read_write_staging_the_kernel_made_read_only_is_broken() {
        let mut st: VolumeState = serde_json::from_value(serde_json::json!({
            "volume_id": "v", "target": {"iqn": "i", "portal": "h:1", "lun": 0},
            "pid": 1, "fuse_dir": "/f", "loop_device": "/dev/loop0", "staging_path": "/",
            "access": "mount", "fstype": "ext4", "mount_flags": [], "staged": true,
            "published": {}
        }))
        .unwrap();
        assert!(broken(&st, &entry("rw,relatime", "rw,errors=remount-ro")).is_none());
        let why = broken(&st, &entry("rw,relatime", "ro,errors=remount-ro")).unwrap();
        assert!(why.contains("read-only"), "{why}");
        let why = broken(
            &st,
            &entry("rw,relatime", "rw,errors=remount-ro,emergency_ro"),
        );
        assert!(
            why.is_some(),
            "Linux 6.18's ext4 flags it, the mount stays rw"
        );
        st.mount_flags = vec!["ro".into()];
        assert!(
            broken(&st, &entry("ro", "ro")).is_none(),
            "staged read-only"
        );
    }
}
