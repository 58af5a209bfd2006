//! NodeGetVolumeStats (statvfs of the filesystem, the device size for block access, and
//! the volume's condition) and NodeExpandVolume (the loop device and the filesystem
//! follow a grown LUN, online).
//!
//! The condition is abnormal when the attach process is gone, its FUSE mount is gone,
//! one block read of the LUN file fails or does not finish within [`IO_PROBE`], or the
//! kernel made the filesystem read-only (after I/O errors).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_initiator::blockdev;

use super::state::{Access, Via, VolumeState};
use super::{attach, blocking, claim, host, required, Inner};
use crate::pb::volume_usage::Unit;
use crate::pb::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetVolumeStatsRequest,
    NodeGetVolumeStatsResponse, VolumeCondition, VolumeUsage,
};
use crate::request;
use crate::Error;

/// Bound of the one-block read that checks the volume's I/O path.
const IO_PROBE: Duration = Duration::from_secs(5);
/// How long NodeExpandVolume waits for the LUN to show the requested size.
const GROW_WAIT: Duration = Duration::from_secs(10);

/// The record of `volume` when `path` is its staging path or one of its target paths.
fn find(inner: &Arc<Inner>, volume: &str, path: &Path) -> Result<VolumeState, Error> {
    let missing = |why: &str| Error::PathNotFound {
        volume: volume.to_owned(),
        path: path.display().to_string(),
        why: why.to_owned(),
    };
    let st = inner
        .state
        .load(volume)?
        .ok_or_else(|| missing("the volume is not staged on this node"))?;
    let p = host::normal(path);
    if p != st.staging_path && !st.published.contains_key(&p) {
        return Err(missing("neither its staging path nor a target path"));
    }
    if !path.exists() && attach::alive(&st) {
        return Err(missing("the path does not exist"));
    }
    Ok(st)
}

fn condition(inner: &Inner, st: &VolumeState, path: &Path) -> VolumeCondition {
    let abnormal = |message: String| VolumeCondition {
        abnormal: true,
        message,
    };
    if !attach::alive(st) {
        return abnormal(match st.via {
            Via::Userspace => format!(
                "the attach process (pid {}) is gone; stage the volume again",
                st.pid
            ),
            Via::Iscsiadm => format!(
                "the open-iscsi session's disk {} is gone; stage the volume again",
                st.loop_device.display()
            ),
        });
    }
    if st.via == Via::Userspace && !blockdev::is_lun_mount(&st.fuse_dir) {
        return abnormal(format!("the FUSE mount {} is gone", st.fuse_dir.display()));
    }
    if let Err(why) = attach::probe(st, IO_PROBE) {
        return abnormal(why);
    }
    let remount = if inner.options.remount && st.remount {
        "; REMOUNT brings it back read-write once the volume is healthy"
    } else {
        "; REMOUNT is off for it"
    };
    if st.access == Access::Mount {
        if let Ok(Some(m)) = host::mount_at(path) {
            let published_ro = st
                .published
                .get(&host::normal(path))
                .is_some_and(|p| p.readonly);
            let asked_ro = st.mount_flags.iter().any(|f| f == "ro");
            if super::remount::stopped(&m) && !published_ro && !asked_ro {
                return abnormal(format!(
                    "the filesystem at {} is read-only (the kernel stopped writes to it after I/O errors){remount}",
                    path.display()
                ));
            }
            if super::remount::shut_down(path) {
                return abnormal(format!(
                    "the filesystem at {} was shut down (every access fails with EIO){remount}",
                    path.display()
                ));
            }
        } else {
            return abnormal(format!("{} is not mounted", path.display()));
        }
    }
    VolumeCondition {
        abnormal: false,
        message: format!("attached from {} at {}", st.target.iqn, st.target.portal),
    }
}

fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed is a valid statvfs (plain integers); `c` is NUL-terminated and
    // outlives the call, `out` is a valid pointer for its duration.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut out) };
    if r == 0 {
        Ok(out)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn usage(st: &VolumeState, path: &Path) -> Result<Vec<VolumeUsage>, Error> {
    match st.access {
        Access::Block => {
            let total = host::device_bytes(&st.loop_device)
                .map_err(|e| Error::io(format!("size of {}", st.loop_device.display()), e))?;
            Ok(vec![VolumeUsage {
                available: 0,
                total: i64_of(total),
                used: 0,
                unit: Unit::Bytes as i32,
            }])
        }
        Access::Mount => {
            let s =
                statvfs(path).map_err(|e| Error::io(format!("statvfs {}", path.display()), e))?;
            let frsize = s.f_frsize as u64;
            let blocks = s.f_blocks as u64;
            let bfree = s.f_bfree as u64;
            let files = s.f_files as u64;
            let ffree = s.f_ffree as u64;
            Ok(vec![
                VolumeUsage {
                    available: i64_of(s.f_bavail as u64 * frsize),
                    total: i64_of(blocks * frsize),
                    used: i64_of(blocks.saturating_sub(bfree) * frsize),
                    unit: Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: i64_of(s.f_favail as u64),
                    total: i64_of(files),
                    used: i64_of(files.saturating_sub(ffree)),
                    unit: Unit::Inodes as i32,
                },
            ])
        }
    }
}

pub(super) async fn stats(
    inner: &Arc<Inner>,
    req: NodeGetVolumeStatsRequest,
) -> Result<NodeGetVolumeStatsResponse, Error> {
    required("volume_id", &req.volume_id)?;
    required("volume_path", &req.volume_path)?;
    let claim = claim(inner, &req.volume_id)?;
    let volume = req.volume_id.clone();
    let path = PathBuf::from(&req.volume_path);
    blocking(claim, move |inner| {
        let st = find(inner, &volume, &path)?;
        let cond = condition(inner, &st, &path);
        // A volume whose attach is gone has no numbers to give (its path is a plain
        // directory again), only its condition.
        let usage = if !attach::alive(&st) {
            Vec::new()
        } else if cond.abnormal {
            usage(&st, &path).unwrap_or_default()
        } else {
            usage(&st, &path)?
        };
        Ok(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(cond),
        })
    })
    .await
}

pub(super) async fn expand(
    inner: &Arc<Inner>,
    req: NodeExpandVolumeRequest,
) -> Result<NodeExpandVolumeResponse, Error> {
    required("volume_id", &req.volume_id)?;
    required("volume_path", &req.volume_path)?;
    if let Some(cap) = &req.volume_capability {
        if let Some(why) = request::unsupported(cap) {
            return Err(Error::invalid("volume_capability", why));
        }
    }
    let required_bytes = match &req.capacity_range {
        Some(r) if r.required_bytes < 0 || r.limit_bytes < 0 => {
            return Err(Error::invalid("capacity_range", "negative bytes"))
        }
        Some(r) => r.required_bytes as u64,
        None => 0,
    };
    let limit_bytes = req
        .capacity_range
        .as_ref()
        .map_or(0, |r| r.limit_bytes as u64);
    let claim = claim(inner, &req.volume_id)?;
    let volume = req.volume_id.clone();
    let path = PathBuf::from(&req.volume_path);
    blocking(claim, move |inner| {
        let st = find(inner, &volume, &path)?;
        let bytes = grow(&volume, &st, required_bytes)?;
        if limit_bytes != 0 && bytes > limit_bytes {
            return Err(Error::OutOfRange {
                required_bytes: required_bytes as i64,
                limit_bytes: limit_bytes as i64,
                why: format!("the volume is {bytes} bytes"),
            });
        }
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: i64_of(bytes),
        })
    })
    .await
}

fn run(tool: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {tool}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::NodeState {
        volume: String::new(),
        why: format!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// Brings the LUN file, the loop device and the filesystem to the LUN's size; the
/// device's size after it.
fn grow(volume: &str, st: &VolumeState, required_bytes: u64) -> Result<u64, Error> {
    if !attach::alive(st) {
        return Err(Error::Precondition {
            volume: volume.to_owned(),
            why: "its attach is gone: stage it again".to_owned(),
        });
    }
    if st.via == Via::Iscsiadm {
        // The kernel reads the capacity again on a rescan of the session.
        super::iscsiadm::rescan(&st.target)?;
    }
    // One read makes a pending CAPACITY DATA HAS CHANGED reach the attach process, which
    // then reads the capacity again; the file's size follows.
    let t0 = Instant::now();
    let lun = loop {
        let lun = attach::probe(st, IO_PROBE).map_err(|why| Error::NodeState {
            volume: volume.to_owned(),
            why,
        })?;
        if lun >= required_bytes || t0.elapsed() > GROW_WAIT {
            break lun;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if lun < required_bytes {
        return Err(Error::Pending {
            volume: volume.to_owned(),
            what: format!("the LUN is {lun} bytes, below the {required_bytes} asked for; retry once the target grew"),
        });
    }
    let dev_io = |e| Error::io(format!("size of {}", st.loop_device.display()), e);
    if st.via == Via::Userspace && host::device_bytes(&st.loop_device).map_err(dev_io)? < lun {
        // LoopDevice::refresh_size's `losetup -c`, on a device this process did not set up.
        run("losetup", &["-c", &st.loop_device.display().to_string()])?;
    }
    // The read-only loop devices of read-only block publishes follow as well.
    for ro in super::publish::ro_loops_of(st) {
        if host::device_bytes(&ro).map_err(dev_io)? < lun {
            run("losetup", &["-c", &ro.display().to_string()])?;
        }
    }
    let dev = host::device_bytes(&st.loop_device).map_err(dev_io)?;
    if st.access == Access::Mount {
        grow_filesystem(volume, st)?;
    }
    Ok(dev)
}

/// Grows the mounted filesystem at the staging path to its device's size (a no-op when
/// it fills it already).
pub(super) fn grow_filesystem(volume: &str, st: &VolumeState) -> Result<(), Error> {
    match st.fstype.as_deref() {
        Some("xfs") => run("xfs_growfs", &[&st.staging_path.display().to_string()]),
        _ => {
            // The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE (resize2fs
            // would say only "Permission denied"); some sandboxes drop it.
            if !host::has_capability(host::CAP_SYS_RESOURCE) {
                return Err(Error::Precondition {
                    volume: volume.to_owned(),
                    why: "growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this node plugin lacks (the device has grown; give the plugin that capability)".to_owned(),
                });
            }
            run("resize2fs", &[&st.loop_device.display().to_string()])
        }
    }
}
