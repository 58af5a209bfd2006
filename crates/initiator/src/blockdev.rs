//! Block-device plumbing on top of the LUN file: loop devices (`losetup`), signature
//! detection (`blkid`), making a filesystem only on a blank device, mount and unmount.
//!
//! Owns: nothing long-lived; [`LoopDevice`] detaches its device when dropped unless
//! [`LoopDevice::keep`] was called. Invariants: `make_fs_if_blank` never formats a device
//! on which blkid finds any signature (a filesystem, a partition table, RAID metadata);
//! every external tool's failure is an error carrying its stderr.
//! Never: run a tool through a shell (arguments are passed as they are).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tool failed or could not be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The program could not be started (not installed?).
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// Program.
        tool: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with an error.
    #[error("{tool} {args} failed ({status}): {stderr}")]
    Failed {
        /// Program.
        tool: String,
        /// Its arguments.
        args: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Sys {
        /// Operation.
        what: &'static str,
        /// Path it was applied to.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The tool printed something we cannot use.
    #[error("{tool}: unexpected output {output:?}")]
    Output {
        /// Program.
        tool: String,
        /// What it printed.
        output: String,
    },
}

/// Runs `tool args`, returning stdout; `ok_codes` lists exit codes besides 0 that are
/// answers rather than failures (blkid's 2: nothing found).
fn run(tool: &str, args: &[&str], ok_codes: &[i32]) -> Result<(i32, String), ToolError> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: tool.to_owned(),
            source,
        })?;
    let code = out.status.code().unwrap_or(-1);
    if out.status.success() || ok_codes.contains(&code) {
        return Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    Err(ToolError::Failed {
        tool: tool.to_owned(),
        args: args.join(" "),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn path_str(p: &Path) -> Result<&str, ToolError> {
    p.to_str().ok_or_else(|| ToolError::Sys {
        what: "non-UTF-8 path",
        path: p.to_owned(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })
}

/// A loop device over a file; detached on drop unless kept.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    keep: bool,
}

impl LoopDevice {
    /// `losetup --find --show --direct-io=on FILE`: a free loop device over `file`,
    /// bypassing the page cache of the file (the LUN file caches nothing anyway). Falls
    /// back to buffered I/O where direct I/O is refused.
    pub fn attach(file: &Path) -> Result<LoopDevice, ToolError> {
        LoopDevice::attach_as(file, false)
    }

    /// [`LoopDevice::attach`] with `--read-only`: a device the kernel refuses every write
    /// to (EPERM), whatever the mount or the opener asks; what a read-only raw block
    /// publish hands out.
    pub fn attach_read_only(file: &Path) -> Result<LoopDevice, ToolError> {
        LoopDevice::attach_as(file, true)
    }

    fn attach_as(file: &Path, read_only: bool) -> Result<LoopDevice, ToolError> {
        let f = path_str(file)?;
        let ro: &[&str] = if read_only { &["--read-only"] } else { &[] };
        let args = |direct: bool| -> Vec<&str> {
            let mut a = vec!["--find", "--show"];
            a.extend_from_slice(ro);
            if direct {
                a.push("--direct-io=on");
            }
            a.push(f);
            a
        };
        let (_, out) = match run("losetup", &args(true), &[]) {
            Ok(r) => r,
            Err(ToolError::Failed { .. }) => run("losetup", &args(false), &[])?,
            Err(e) => return Err(e),
        };
        let dev = out.trim();
        if !dev.starts_with("/dev/") {
            return Err(ToolError::Output {
                tool: "losetup".into(),
                output: out,
            });
        }
        Ok(LoopDevice {
            path: PathBuf::from(dev),
            keep: false,
        })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the backing file's size (`losetup -c`), after the LUN grew.
    pub fn refresh_size(&self) -> Result<(), ToolError> {
        run("losetup", &["-c", path_str(&self.path)?], &[]).map(|_| ())
    }

    /// Leaves the device attached when this value is dropped.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }

    /// Detaches the device now.
    pub fn detach(mut self) -> Result<(), ToolError> {
        self.keep = true;
        detach_loop(&self.path)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.keep {
            let _ = detach_loop(&self.path);
        }
    }
}

/// `losetup -d DEV`.
pub fn detach_loop(dev: &Path) -> Result<(), ToolError> {
    run("losetup", &["-d", path_str(dev)?], &[]).map(|_| ())
}

/// Loop devices whose backing file is `file` (`losetup -j`).
pub fn loops_of(file: &Path) -> Result<Vec<PathBuf>, ToolError> {
    let (_, out) = run("losetup", &["-j", path_str(file)?, "-O", "NAME", "-n"], &[])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("/dev/"))
        .map(PathBuf::from)
        .collect())
}

/// The signature blkid finds on `dev` (`ext4`, `xfs`, `dos` for a partition table...), or
/// `None` for a blank device. Probes the device itself (`-p`), never blkid's cache.
pub fn signature(dev: &Path) -> Result<Option<String>, ToolError> {
    let d = path_str(dev)?;
    let (code, out) = run("blkid", &["-p", "-o", "export", d], &[2])?;
    if code == 2 {
        return Ok(None);
    }
    let mut found = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("TYPE=") {
            return Ok(Some(v.to_owned()));
        }
        if let Some(v) = line.strip_prefix("PTTYPE=") {
            found = Some(v.to_owned());
        }
    }
    // blkid found something without a TYPE (e.g. only a partition table type).
    Ok(found.or_else(|| Some("unknown".to_owned())))
}

/// Makes a filesystem of `fstype` (ext4 or xfs) on `dev` only if blkid finds no
/// signature; returns whether it made one, or the signature found.
pub fn make_fs_if_blank(dev: &Path, fstype: &str) -> Result<Result<(), String>, ToolError> {
    if let Some(sig) = signature(dev)? {
        return Ok(Err(sig));
    }
    let d = path_str(dev)?;
    match fstype {
        "ext4" => run("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", d], &[])?,
        "xfs" => run("mkfs.xfs", &["-q", "-K", d], &[])?,
        other => {
            return Err(ToolError::Output {
                tool: "mkfs".into(),
                output: format!("unsupported filesystem type {other}"),
            })
        }
    };
    Ok(Ok(()))
}

/// `mount [-t TYPE] [-o OPTIONS] DEV DIR`.
pub fn mount(
    dev: &Path,
    dir: &Path,
    fstype: Option<&str>,
    options: &[&str],
) -> Result<(), ToolError> {
    let mut args: Vec<&str> = Vec::new();
    if let Some(t) = fstype {
        args.extend(["-t", t]);
    }
    let opts = options.join(",");
    if !opts.is_empty() {
        args.extend(["-o", &opts]);
    }
    args.push(path_str(dev)?);
    args.push(path_str(dir)?);
    run("mount", &args, &[]).map(|_| ())
}

fn umount2(dir: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts `dir` (fails with EBUSY while it is in use).
pub fn unmount(dir: &Path) -> std::io::Result<()> {
    umount2(dir, 0)
}

/// Detaches `dir` from the namespace now, the filesystem going away once unused.
pub fn unmount_lazy(dir: &Path) -> std::io::Result<()> {
    umount2(dir, libc::MNT_DETACH)
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// major:minor of the mounted filesystem's device.
    pub dev: String,
    /// Mount point.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, ...).
    pub options: String,
    /// Filesystem type.
    pub fstype: String,
    /// Source (device path or name).
    pub source: String,
    /// Superblock options (`ro` when the kernel remounted the filesystem read-only).
    pub super_options: String,
}

impl MountEntry {
    /// Read-only, per mount or for the whole filesystem.
    pub fn read_only(&self) -> bool {
        let has_ro = |o: &str| o.split(',').any(|x| x == "ro");
        has_ro(&self.options) || has_ro(&self.super_options)
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(l: &str) -> Option<MountEntry> {
    let f: Vec<&str> = l.split(' ').collect();
    let sep = f.iter().position(|x| *x == "-")?;
    Some(MountEntry {
        dev: (*f.get(2)?).to_owned(),
        mount_point: PathBuf::from(unescape(f.get(4)?)),
        options: (*f.get(5)?).to_owned(),
        fstype: (*f.get(sep + 1)?).to_owned(),
        source: unescape(f.get(sep + 2)?),
        super_options: f.get(sep + 3).map(|s| (*s).to_owned()).unwrap_or_default(),
    })
}

/// The mount table (/proc/self/mountinfo).
pub fn mount_table() -> std::io::Result<Vec<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().filter_map(parse_line).collect())
}

/// Where `dev` (or anything with its major:minor) is mounted, from /proc/self/mountinfo.
pub fn mounts_of(dev: &Path) -> Result<Vec<PathBuf>, ToolError> {
    use std::os::unix::fs::MetadataExt;
    let sys = |what, source| ToolError::Sys {
        what,
        path: dev.to_owned(),
        source,
    };
    let rdev = std::fs::metadata(dev).map_err(|e| sys("stat", e))?.rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let want = format!("{maj}:{min}");
    Ok(mount_table()
        .map_err(|e| sys("read /proc/self/mountinfo for", e))?
        .into_iter()
        .filter(|m| m.dev == want)
        .map(|m| m.mount_point)
        .collect())
}

/// Whether `dir` is a mount point of the LUN file system (fstype `fuse`, or
/// `fuse.cstor` when mounted through fusermount3, with source `cstor-initiator`).
pub fn is_lun_mount(dir: &Path) -> bool {
    // A dead FUSE connection cannot be stat'ed (ENOTCONN): compare the path as given.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(table) = mount_table() else {
        return false;
    };
    table.iter().any(|m| {
        m.mount_point == dir
            && (m.fstype == "fuse" || m.fstype == "fuse.cstor")
            && m.source == "cstor-initiator"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let l = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext4 /dev/loop3 ro,errors=remount-ro";
        let m = parse_line(l).unwrap();
        assert_eq!(m.dev, "98:0");
        assert_eq!(m.mount_point, Path::new("/mnt/a b"));
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("ext4", "/dev/loop3")
        );
        assert!(m.read_only(), "superblock ro counts");
        let l = "40 35 0:50 / /x rw,nosuid - fuse cstor-initiator rw,user_id=0";
        let m = parse_line(l).unwrap();
        assert!(!m.read_only());
        assert_eq!(m.source, "cstor-initiator");
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/x\\"), r"/x\\");
    }
}
