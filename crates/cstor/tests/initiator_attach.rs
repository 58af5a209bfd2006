//! End to end through the userspace attach path: `cstor initiator attach` serves a pool
//! volume's LUN as DIR/lun through FUSE; a loop device, ext4 (made only on a blank
//! device), a mount, files written and synced; unmount, `cstor initiator detach`; attach
//! again, no mkfs (blkid finds ext4), files intact, `e2fsck -fn` clean; SIGTERM detaches
//! with the loop device still set up. Needs root, /dev/fuse, losetup, mkfs.ext4, e2fsck.

mod initiator_support;
mod target_common;

use cstor_initiator::blockdev::{self, LoopDevice};
use initiator_support::{free_addr, is_root, pattern, Pool, INI};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use target_common::{have, wait_for};

const IQN: &str = "iqn.2026-12.io.cstor.test:ini-attach";

/// A running `cstor initiator attach`; on drop everything stacked on its file is torn
/// down (even when the test failed half-way) and the process is killed.
struct Attached {
    child: Child,
    dir: PathBuf,
    mnt: PathBuf,
}

impl Attached {
    fn start(addr: &str, dir: &Path, mnt: &Path) -> Attached {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["initiator", "attach", "--portal", addr, "--target", IQN])
            .args(["--initiator-name", INI, "--file-dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cstor initiator attach");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let a = Attached {
            child,
            dir: dir.to_owned(),
            mnt: mnt.to_owned(),
        };
        assert!(line.starts_with("attached "), "attach failed: {line:?}");
        a
    }

    fn file(&self) -> PathBuf {
        self.dir.join("lun")
    }

    /// Waits for the process to exit by itself; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        assert!(
            wait_for(Duration::from_secs(30), || {
                status = self.child.try_wait().ok().flatten();
                status.is_some()
            }),
            "attach process did not exit"
        );
        status.expect("exit status")
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = blockdev::unmount_lazy(&self.mnt);
        if let Ok(loops) = blockdev::loops_of(&self.file()) {
            for l in loops {
                let _ = blockdev::detach_loop(&l);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Not mounted any more in the clean case: then this fails harmlessly.
        let _ = blockdev::unmount_lazy(&self.dir);
    }
}

fn files() -> Vec<(String, Vec<u8>)> {
    (0..6u64)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pattern(((i as usize) + 1) * 700_000, 40 + i),
            )
        })
        .collect()
}

#[test]
fn attach_mkfs_mount_detach_reattach_files_intact_fsck_clean() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set: this test needs root"
        );
        eprintln!("SKIPPED: needs root (FUSE mount, loop devices)");
        return;
    }
    if !(have("losetup", "mount")
        && have("mkfs.ext4", "e2fsprogs")
        && have("e2fsck", "e2fsprogs")
        && have("blkid", "util-linux"))
    {
        return;
    }
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "128M"]);
    let addr = free_addr();
    let _target = pool.serve(&addr, &["--iqn", IQN, "--volume", "ip/v"]);
    let dir = pool.path("lun-dir");
    let mnt = pool.path("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();

    // First attach: blank LUN, so ext4 is made.
    let mut a = Attached::start(&addr, &dir, &mnt);
    assert_eq!(std::fs::metadata(a.file()).unwrap().len(), 128 << 20);
    let lo = LoopDevice::attach(&a.file()).expect("losetup");
    assert_eq!(
        blockdev::make_fs_if_blank(lo.path(), "ext4").unwrap(),
        Ok(())
    );
    blockdev::mount(lo.path(), &mnt, Some("ext4"), &[]).expect("mount");
    for (name, data) in files() {
        std::fs::write(mnt.join(&name), &data).unwrap();
    }
    std::fs::create_dir(mnt.join("sub")).unwrap();
    std::fs::write(mnt.join("sub/small"), b"hello through iSCSI").unwrap();
    let ok = Command::new("sync")
        .arg("-f")
        .arg(mnt.join("sub/small"))
        .status()
        .unwrap();
    assert!(ok.success());
    blockdev::unmount(&mnt).expect("umount");
    lo.detach().expect("losetup -d");
    let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(["initiator", "detach", "--file-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "detach: {out:?}");
    assert!(
        a.wait_exit().success(),
        "attach did not exit cleanly after detach"
    );
    assert!(!blockdev::is_lun_mount(&dir));
    drop(a);

    // Second attach: the signature is found, nothing is formatted, the files are there.
    let mut a = Attached::start(&addr, &dir, &mnt);
    let lo = LoopDevice::attach(&a.file()).expect("losetup");
    assert_eq!(
        blockdev::make_fs_if_blank(lo.path(), "ext4").unwrap(),
        Err("ext4".to_owned())
    );
    blockdev::mount(lo.path(), &mnt, Some("ext4"), &["ro"]).expect("mount");
    for (name, data) in files() {
        assert!(
            std::fs::read(mnt.join(&name)).unwrap() == data,
            "{name} differs"
        );
    }
    assert_eq!(
        std::fs::read(mnt.join("sub/small")).unwrap(),
        b"hello through iSCSI"
    );
    blockdev::unmount(&mnt).expect("umount");
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(lo.path())
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");
    // SIGTERM with the loop device still attached: the attach process takes it down too.
    let dev = lo.keep();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGTERM) };
    assert!(
        a.wait_exit().success(),
        "attach did not exit cleanly on SIGTERM"
    );
    assert!(!blockdev::is_lun_mount(&dir), "FUSE mount left behind");
    let name = dev
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_owned();
    let backing = PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
    assert!(
        !name.is_empty() && !backing.exists(),
        "loop device {dev:?} left attached"
    );
}
