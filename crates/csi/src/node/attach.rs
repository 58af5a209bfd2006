//! The userspace attach of a volume: a `cstor initiator attach ... --loop` process of its
//! own (a new session, so it outlives the plugin: a plugin restart must not take the
//! volumes of running pods down), the loop device it sets up over its FUSE file, and
//! their teardown.
//!
//! Invariants: a started attach either reported both its `attached ...` and
//! `loop /dev/loopN` lines within [`ATTACH_WAIT`] or was killed and its leftovers
//! removed; teardown goes top-down (filesystems on the loop device, the loop device,
//! the FUSE mount) and ends with the process gone. [`alive`] and [`probe`] answer for
//! either attach method (open-iscsi's in [`super::iscsiadm`]).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cstor_initiator::blockdev;

use super::host;
use super::state::{Target, Via, VolumeState};
use crate::Error;

/// How long a new attach may take to log in and set up its loop device (the
/// initiator's login timeout is 15 s).
pub const ATTACH_WAIT: Duration = Duration::from_secs(30);
/// How long a busy unmount (a loop device letting go of the file) is retried.
const BUSY_WAIT: Duration = Duration::from_secs(10);
/// How long the attach process gets to log out after its FUSE mount went away, and
/// again after SIGTERM, before SIGKILL.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// publish_context keys (ControllerPublishVolume's answer).
pub const KEY_IQN: &str = "iqn";
/// `HOST:PORT`.
pub const KEY_PORTAL: &str = "portal";
/// Comma-separated `HOST:PORT`s the target may move to.
pub const KEY_PORTALS: &str = "portals";
/// Logical unit, default 0.
pub const KEY_LUN: &str = "lun";

/// The SCSI-3 persistent reservation key of a node (docs/csi.md "Fencing"): the first 8
/// bytes, big-endian, of MD5(`cstor.csi.openebs.io/reservation-key/` + the node id in
/// lower case), 1 if that is 0 (0 is not a key). The same node always has the same key,
/// so its own re-stage after a restart finds its key and is idempotent; distinct nodes
/// collide with probability 2^-64.
pub fn reservation_key(node_id: &str) -> u64 {
    use md5::{Digest, Md5};
    let d = Md5::digest(
        format!(
            "cstor.csi.openebs.io/reservation-key/{}",
            node_id.to_ascii_lowercase()
        )
        .as_bytes(),
    );
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // A wire-format key (SPC-4 keys are 8-byte big-endian fields), not an on-disk one.
    #[allow(clippy::big_endian_bytes)]
    let k = u64::from_be_bytes(b);
    k.max(1)
}

/// How this node logs in to a target and what it holds there.
#[derive(Debug, Clone)]
pub struct Login {
    /// Our initiator name (what the target's ACL lists).
    pub initiator_name: String,
    /// Our persistent reservation key ([`reservation_key`]).
    pub pr_key: u64,
    /// The volume's CHAP credentials (NodeStageVolume's `secrets`).
    pub chap: Option<cstor_api::chap::Credentials>,
}

/// Writes `secret` to a new file `path` readable by its owner only (0600), for the
/// attach process to read: a secret never goes on a command line, where every user
/// sees it.
fn secret_file(path: &Path, secret: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Removes the secret files of an attach once its process read them (or failed).
struct SecretFiles(Vec<PathBuf>);

impl Drop for SecretFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The target named by a publish_context, if it names one.
pub fn target_from_context(ctx: &HashMap<String, String>) -> Result<Option<Target>, Error> {
    let iqn = ctx.get(KEY_IQN).filter(|s| !s.is_empty());
    let portal = ctx.get(KEY_PORTAL).filter(|s| !s.is_empty());
    let (iqn, portal) = match (iqn, portal) {
        (None, None) => return Ok(None),
        (Some(i), Some(p)) => (i, p),
        _ => {
            return Err(Error::invalid(
                "publish_context",
                "names a target with both `iqn` and `portal` (HOST:PORT), or neither",
            ))
        }
    };
    let lun = match ctx.get(KEY_LUN).map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse::<u64>()
            .map_err(|_| Error::invalid("publish_context.lun", format!("{l:?} is not a LUN")))?,
    };
    check_portal(portal)?;
    let alternates: Vec<String> = ctx
        .get(KEY_PORTALS)
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for p in &alternates {
        check_portal(p)?;
    }
    Ok(Some(Target {
        iqn: iqn.clone(),
        portal: portal.clone(),
        alternates,
        lun,
    }))
}

fn check_portal(portal: &str) -> Result<(), Error> {
    let ok = portal
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "portal",
            format!("{portal:?} is not HOST:PORT"),
        ))
    }
}

/// The target a CStorVolume names (spec.iqn and spec.targetPortal, or targetIP and
/// targetPort).
pub fn target_from_cv(
    volume: &str,
    spec: &cstor_api::v1::CStorVolumeSpec,
) -> Result<Target, Error> {
    let pending = |what: &str| Error::Pending {
        volume: volume.to_owned(),
        what: format!("its CStorVolume has no {what} yet"),
    };
    let iqn = spec
        .iqn
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| pending("spec.iqn"))?;
    let portal = match (&spec.target_portal, &spec.target_ip, &spec.target_port) {
        (Some(p), _, _) if !p.is_empty() => p.clone(),
        (_, Some(ip), port) if !ip.is_empty() => {
            let port = port.as_deref().filter(|p| !p.is_empty()).unwrap_or("3260");
            if ip.contains(':') && !ip.starts_with('[') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        }
        _ => return Err(pending("spec.targetPortal or spec.targetIP")),
    };
    check_portal(&portal)?;
    Ok(Target {
        iqn,
        portal,
        alternates: Vec::new(),
        lun: 0,
    })
}

/// A running attach process and the loop device it set up.
#[derive(Debug)]
pub struct Started {
    /// The process (ours until the plugin exits; reaped by [`super::Children`]).
    pub child: Child,
    /// `/dev/loopN`.
    pub loop_device: PathBuf,
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Starts `exe initiator attach` for `target` with its FUSE mount at `dir`, output to
/// `log`, and waits for its two lines.
pub fn start(
    volume: &str,
    exe: &Path,
    target: &Target,
    login: &Login,
    dir: &Path,
    log: &Path,
    replacement_timeout: Duration,
) -> Result<Started, Error> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let out = std::fs::File::create(log)
        .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["initiator", "attach", "--portal", &target.portal]);
    for p in &target.alternates {
        cmd.args(["--portal", p]);
    }
    cmd.args(["--target", &target.iqn, "--lun", &target.lun.to_string()])
        .args(["--initiator-name", &login.initiator_name])
        .args(["--pr-key", &format!("{:#018x}", login.pr_key)]);
    // The files go when this function returns: the process read them at its start.
    let mut files = SecretFiles(Vec::new());
    if let Some(c) = &login.chap {
        let f = PathBuf::from(format!("{}.chap", dir.display()));
        secret_file(&f, &c.secret)?;
        files.0.push(f.clone());
        cmd.args(["--chap-user", &c.user])
            .arg("--chap-secret-file")
            .arg(&f);
        if let Some((user, secret)) = &c.mutual {
            let f = PathBuf::from(format!("{}.chap-target", dir.display()));
            secret_file(&f, secret)?;
            files.0.push(f.clone());
            cmd.args(["--chap-target-user", user])
                .arg("--chap-target-secret-file")
                .arg(&f);
        }
    }
    cmd.arg(format!(
        "--replacement-timeout={}ms",
        replacement_timeout.as_millis()
    ))
    .args(["--loop", "--file-dir"])
    .arg(dir)
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; a
    // fresh child is never a process group leader, so it cannot fail with EPERM.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {} initiator attach", exe.display()), e))?;
    let t0 = Instant::now();
    let failed = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        clean_dead(dir, &[]);
        Error::Attach {
            volume: volume.to_owned(),
            why: format!("{why}; log: {}", tail(log)),
        }
    };
    loop {
        let text = read_log(log);
        let attached = text.lines().any(|l| l.starts_with("attached "));
        let lo = text
            .lines()
            .find_map(|l| l.strip_prefix("loop "))
            .map(|d| PathBuf::from(d.trim()));
        if let (true, Some(loop_device)) = (attached, lo) {
            return Ok(Started { child, loop_device });
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(failed(
                    &mut child,
                    format!("the attach process exited ({status})"),
                ))
            }
            Ok(None) => {}
            Err(e) => {
                return Err(failed(
                    &mut child,
                    format!("waiting for the attach process: {e}"),
                ))
            }
        }
        if t0.elapsed() > ATTACH_WAIT {
            return Err(failed(
                &mut child,
                format!("no `attached` and `loop` lines within {ATTACH_WAIT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(log: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Unmounts `dir`, retrying while busy (a just-detached loop device holds the file a
/// moment); Ok when it is not mounted.
fn unmount_retry(dir: &Path) -> Result<(), Error> {
    let end = Instant::now() + BUSY_WAIT;
    loop {
        match host::mount_at(dir) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(Error::io("reading the mount table", e)),
        }
        match blockdev::unmount(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(e) => return Err(Error::io(format!("unmounting {}", dir.display()), e)),
        }
    }
}

/// Unmounts every filesystem mounted from `dev`, then detaches it.
fn take_down_loop(dev: &Path, lazy: bool) -> Result<(), Error> {
    if let Ok(points) = host::mounts_of_device(dev) {
        for m in points.iter().rev() {
            if lazy {
                let _ = blockdev::unmount_lazy(m);
            } else {
                unmount_retry(m)?;
            }
        }
    }
    match blockdev::detach_loop(dev) {
        Ok(()) => Ok(()),
        // Gone already (detached by the attach process, autoclear).
        Err(_) if !dev.exists() || backing(dev).is_none() => Ok(()),
        Err(e) => Err(Error::tool(format!("detaching {}", dev.display()), e)),
    }
}

fn backing(dev: &Path) -> Option<String> {
    let name = dev.file_name()?;
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file")).ok()
}

/// Waits up to `limit` for `pid` to stop being an attach of `dir`.
pub(super) fn wait_gone(pid: u32, dir: &Path, limit: Duration, children: &super::Children) -> bool {
    let end = Instant::now() + limit;
    loop {
        children.reap();
        if !host::attach_alive(pid, dir) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn signal(pid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pid) {
        if p > 0 {
            // SAFETY: kill(2) on a pid we checked is our attach process.
            unsafe { libc::kill(p, sig) };
        }
    }
}

/// Detaches a live attach cleanly: the loop devices over its file (with anything
/// mounted from them), its FUSE mount, then waits for it to log out and exit (SIGTERM,
/// then SIGKILL past the bounds).
pub fn detach(pid: u32, dir: &Path, children: &super::Children) -> Result<(), Error> {
    let file = dir.join(cstor_initiator::LUN_FILE);
    for dev in host::loops_backed_by(&file) {
        take_down_loop(&dev, false)?;
    }
    unmount_retry(dir)?;
    if !wait_gone(pid, dir, EXIT_WAIT, children) {
        tracing::warn!(pid, dir = %dir.display(), "attach process did not exit after its unmount; SIGTERM");
        signal(pid, libc::SIGTERM);
        if !wait_gone(pid, dir, EXIT_WAIT, children) {
            tracing::warn!(pid, "attach process ignored SIGTERM; SIGKILL");
            signal(pid, libc::SIGKILL);
            wait_gone(pid, dir, EXIT_WAIT, children);
        }
    }
    // A dead FUSE mount (the process was killed) is only detached lazily.
    clean_dead(dir, &[]);
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Removes what a dead attach left at `dir`: the given paths and every mount of a loop
/// device over its file (lazily: the filesystem below is unreachable), those loop
/// devices, and the FUSE mount (lazily).
pub fn clean_dead(dir: &Path, mounts: &[PathBuf]) {
    for m in mounts {
        if host::mount_at(m).ok().flatten().is_some() {
            let _ = blockdev::unmount_lazy(m);
        }
    }
    let file = dir.join(cstor_initiator::LUN_FILE);
    for dev in host::loops_backed_by(&file) {
        let _ = take_down_loop(&dev, true);
    }
    if host::mount_at(dir).ok().flatten().is_some() {
        let _ = blockdev::unmount_lazy(dir);
    }
}

/// Whether the volume's attach is there: its attach process runs (userspace) or its
/// open-iscsi session's disk is (iscsiadm).
pub fn alive(st: &VolumeState) -> bool {
    match st.via {
        Via::Userspace => host::attach_alive(st.pid, &st.fuse_dir),
        Via::Iscsiadm => super::iscsiadm::attached(st),
    }
}

/// One block read through the volume's path ([`probe_io`], or the SCSI disk of an
/// open-iscsi session with O_DIRECT, past the page cache), bounded by `limit`.
pub fn probe(st: &VolumeState, limit: Duration) -> Result<u64, String> {
    match st.via {
        Via::Userspace => probe_io(&st.fuse_dir, limit),
        Via::Iscsiadm => read_one_block(st.loop_device.clone(), true, limit, "the disk"),
    }
}

/// Reads one block of the LUN file, bounded by `limit`: the I/O check of a volume, and
/// the way a pending CAPACITY DATA HAS CHANGED unit attention reaches the attach process
/// (it re-reads the capacity before answering, so the file's size follows).
pub fn probe_io(dir: &Path, limit: Duration) -> Result<u64, String> {
    read_one_block(
        dir.join(cstor_initiator::LUN_FILE),
        false,
        limit,
        "the LUN file",
    )
}

/// Reads the first 4 KiB of `file` (with O_DIRECT when `direct`); its size.
fn read_one_block(file: PathBuf, direct: bool, limit: Duration, what: &str) -> Result<u64, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let (tx, rx) = std::sync::mpsc::channel();
    // A hung read (the session waiting for a reconnect) must not hold the caller: the
    // thread is left to finish on its own.
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<u64> {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(if direct { libc::O_DIRECT } else { 0 })
                .open(&file)?;
            // O_DIRECT wants a buffer aligned to the logical block: 4 KiB inside 8 KiB.
            let mut b = vec![0u8; 8192];
            let at = (4096 - (b.as_ptr() as usize % 4096)) % 4096;
            let _ = f.read(&mut b[at..at + 4096])?;
            // A device node's size is where it ends; a file's (FUSE: fetched afresh) its length.
            if direct {
                Ok(f.seek(std::io::SeekFrom::End(0))?)
            } else {
                Ok(f.metadata()?.len())
            }
        })();
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(len)) => Ok(len),
        Ok(Err(e)) => Err(format!("I/O on {what} failed: {e}")),
        Err(_) => Err(format!("I/O on {what} did not complete within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_node_has_one_reservation_key_and_nodes_differ() {
        let a = reservation_key("node-a");
        assert_eq!(a, reservation_key("Node-A"));
        assert_ne!(a, reservation_key("node-b"));
        assert_ne!(a, 0);
    }

    #[test]
    fn a_publish_context_names_the_portal_and_where_the_target_may_move() {
        let t = target_from_context(&ctx(&[
            (KEY_IQN, "iqn.x:v"),
            (KEY_PORTAL, "10.0.0.1:3260"),
            (KEY_PORTALS, "10.0.0.2:3260, 10.0.0.3:3260,"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(t.portal, "10.0.0.1:3260");
        assert_eq!(t.alternates, ["10.0.0.2:3260", "10.0.0.3:3260"]);
        let t = target_from_context(&ctx(&[(KEY_IQN, "iqn.x:v"), (KEY_PORTAL, "h:1")]))
            .unwrap()
            .unwrap();
        assert!(t.alternates.is_empty());
        let bad = target_from_context(&ctx(&[
            (KEY_IQN, "iqn.x:v"),
            (KEY_PORTAL, "h:1"),
            (KEY_PORTALS, "h:1,nope"),
        ]));
        assert!(bad.is_err(), "{bad:?}");
    }
}
