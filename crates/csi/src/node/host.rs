//! What the node service reads from the host: the mount table (parsed by
//! `cstor_initiator::blockdev`, the one mountinfo parser),
//! loop devices and their backing files (/sys/block/loopN), and whether a pid is a live
//! attach process (/proc/PID).
//!
//! Invariants: nothing here changes the host; a dead FUSE mount (its process gone) is
//! never stat'ed (that answers ENOTCONN), paths are compared as strings instead.

use std::path::{Path, PathBuf};

pub use cstor_initiator::blockdev::MountEntry;

/// The mount table.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    cstor_initiator::blockdev::mount_table()
}

/// `p` made absolute without touching a possibly dead mount below it: the parent is
/// canonicalized, the last component kept.
pub fn normal(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => d
            .canonicalize()
            .map(|d| d.join(n))
            .unwrap_or_else(|_| p.to_owned()),
        _ => p.to_owned(),
    }
}

/// The topmost mount at `p`, if `p` is a mount point.
pub fn mount_at(p: &Path) -> std::io::Result<Option<MountEntry>> {
    let p = normal(p);
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == p))
}

/// major:minor of a device node.
pub fn dev_of(node: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(node)?.rdev();
    Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// Mount points of the filesystem on block device `node` (every bind of it too).
pub fn mounts_of_device(node: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dev = dev_of(node)?;
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.dev == dev)
        .map(|m| m.mount_point)
        .collect())
}

/// Loop devices whose backing file is `file` (compared as paths, from sysfs: works on a
/// dead FUSE file that losetup could not stat).
pub fn loops_backed_by(file: &Path) -> Vec<PathBuf> {
    let want = normal(file);
    loops()
        .into_iter()
        .filter(|(_, b)| *b == want)
        .map(|(d, _)| d)
        .collect()
}

/// Every loop device with its backing file.
pub fn loops() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let b = b.trim_end_matches('\n');
        let b = b.strip_suffix(" (deleted)").unwrap_or(b);
        out.push((PathBuf::from("/dev").join(&name), PathBuf::from(b)));
    }
    out.sort();
    out
}

/// Size in bytes of block device `node` (from sysfs).
pub fn device_bytes(node: &Path) -> std::io::Result<u64> {
    let name = node
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let s = std::fs::read_to_string(Path::new("/sys/class/block").join(name).join("size"))?;
    s.trim()
        .parse::<u64>()
        .map(|sectors| sectors * 512)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))
}

/// Whether `pid` is a running (not zombie) `cstor initiator attach` serving `fuse_dir`:
/// a reused pid runs something else and does not count.
pub fn attach_alive(pid: u32, fuse_dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    if matches!(state, None | Some("Z" | "X" | "x")) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = fuse_dir.as_os_str().as_encoded_bytes();
    args.contains(&b"attach".as_slice()) && args.contains(&dir)
}

/// Pids of running attach processes whose FUSE directory is under `root`.
pub fn attach_pids_under(root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let root = root.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(i) = args.iter().position(|a| *a == b"--file-dir") else {
            continue;
        };
        if let Some(dir) = args.get(i + 1).filter(|d| d.starts_with(root)) {
            let dir = PathBuf::from(String::from_utf8_lossy(dir).into_owned());
            if args.contains(&b"attach".as_slice()) && attach_alive(pid, &dir) {
                out.push((pid, dir));
            }
        }
    }
    out
}

/// CAP_SYS_RESOURCE (capabilities(7)).
pub(crate) const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has capability `cap` in its effective set (from
/// /proc/self/status; false when that cannot be read).
pub(crate) fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1u64 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_or_foreign_pid_is_not_an_attach() {
        // Our own pid runs a test binary, not `attach` for this directory.
        assert!(!attach_alive(std::process::id(), Path::new("/nowhere")));
        assert!(!attach_alive(0, Path::new("/nowhere")));
    }
}
