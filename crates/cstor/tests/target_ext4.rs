//! A real filesystem through the target without a kernel initiator
//! (../shared/reference/harness.md §3): iSCSI LUN → qemu-nbd → nbdfuse → loop → ext4.
//! mkfs, write files, unmount, then e2fsck and debugfs on the target's backing file prove
//! the bytes landed intact. Needs root, /dev/fuse, qemu-nbd (qemu-utils +
//! qemu-block-extra), nbdfuse (nbdfuse package), losetup, e2fsprogs; skips otherwise, and
//! fails instead when env `CI` is set.

mod target_common;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;
use target_common::*;

const T: Duration = Duration::from_secs(120);

/// Undo actions run in reverse order on drop, so a failing test leaves no mount behind.
#[derive(Default)]
struct Undo(Vec<Box<dyn FnOnce()>>);
impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

fn kill_on_drop(undo: &mut Undo, mut c: Child) {
    undo.0.push(Box::new(move || {
        let _ = c.kill();
        let _ = c.wait();
    }));
}

/// Whether this host can run the chain; prints why not.
fn chain_available() -> bool {
    if !unsafe_is_root() {
        unavailable("needs root for loop devices and mounts");
        return false;
    }
    for (tool, pkg) in [
        ("qemu-nbd", "qemu-utils + qemu-block-extra"),
        ("nbdfuse", "nbdfuse"),
        ("losetup", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
    ] {
        if !have(tool, pkg) {
            return false;
        }
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        unavailable("/dev/fuse missing");
        return false;
    }
    true
}

/// Makes ext4 on LUN 0 of `iqn` at `addr` through qemu-nbd → nbdfuse → loop, writes a
/// 4 MiB file and a small one, reads them back through the mount, and tears it all down.
fn make_and_use_ext4(dir: &Path, addr: &str, iqn: &str) {
    let mut undo = Undo::default();
    let sock = dir.join("nbd.sock");
    // nbdfuse opens one connection (-C 1): qemu-nbd advertises multi-conn and nbdfuse
    // would otherwise open four, blocking forever on a server that accepts fewer.
    let nbd = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "lun", "-k"])
        .arg(&sock)
        .args(["-t", "-e", "2", "--cache=none"])
        .arg(format!("iscsi://{addr}/{iqn}/0"))
        .spawn()
        .unwrap();
    kill_on_drop(&mut undo, nbd);
    assert!(
        wait_for(Duration::from_secs(20), || sock.exists()),
        "qemu-nbd socket"
    );
    let fusedir = dir.join("fuse");
    std::fs::create_dir(&fusedir).unwrap();
    let disk = fusedir.join("disk");
    let fuse = Command::new("nbdfuse")
        .args(["-C", "1"])
        .arg(&disk)
        .arg(format!("nbd+unix:///lun?socket={}", sock.display()))
        .spawn()
        .unwrap();
    let fd = fusedir.clone();
    undo.0.push(Box::new(move || {
        let _ = Command::new("fusermount3").arg("-u").arg(&fd).status();
    }));
    kill_on_drop(&mut undo, fuse);
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::metadata(&disk)
            .map(|m| m.len() > 0)
            .unwrap_or(false)),
        "nbdfuse disk did not appear"
    );
    let (ok, out) = run(
        Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(&disk),
        T,
    );
    assert!(ok, "losetup: {out}");
    let dev = out.trim().to_owned();
    let d = dev.clone();
    undo.0.push(Box::new(move || {
        let _ = Command::new("losetup").args(["-d", &d]).status();
    }));
    let (ok, out) = run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]), T);
    assert!(ok, "mkfs: {out}");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (ok, out) = run(Command::new("mount").arg(&dev).arg(&mnt), T);
    assert!(ok, "mount: {out}");
    let m = mnt.clone();
    undo.0.push(Box::new(move || {
        let _ = Command::new("umount").arg(&m).status();
    }));
    let payload = payload();
    std::fs::write(mnt.join("data.bin"), &payload).unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::write(mnt.join("dir/hello.txt"), b"hello from cstor\n").unwrap();
    let (ok, out) = run(Command::new("sync").arg("-f").arg(mnt.join("data.bin")), T);
    assert!(ok, "sync: {out}");
    assert_eq!(std::fs::read(mnt.join("data.bin")).unwrap(), payload);
    // Unmount, detach, unmount FUSE (nbdfuse exits), stop qemu-nbd: in reverse order.
    drop(undo);
}

fn payload() -> Vec<u8> {
    (0..4 << 20).map(|i: u32| (i % 253) as u8).collect()
}

/// e2fsck and debugfs on an image of the LUN prove the bytes landed intact.
fn check_image(img: &Path) {
    let (ok, out) = run(Command::new("e2fsck").arg("-fn").arg(img), T);
    assert!(ok, "e2fsck: {out}");
    let (ok, out) = run(
        Command::new("debugfs")
            .args(["-R", "cat /dir/hello.txt"])
            .arg(img),
        T,
    );
    assert!(ok && out.contains("hello from cstor"), "debugfs: {out}");
    let dumped = img.with_extension("data");
    let (ok, out) = run(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /data.bin {}", dumped.display()))
            .arg(img),
        T,
    );
    assert!(ok, "debugfs dump: {out}");
    assert!(
        std::fs::read(&dumped).unwrap() == payload(),
        "data.bin differs"
    );
}

#[test]
fn ext4_on_a_file_target() {
    if !chain_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let iqn = "iqn.2024-01.io.cstor.test:ext4";
    let s = serve_file(iqn, &img, "256M", &[]);
    make_and_use_ext4(dir.path(), &s.addr, iqn);
    drop(s);
    check_image(&img);
}

/// The first single-node data path end to end: ext4 on a raidz pool volume, then the
/// volume read back with `cstor volume read` after the target stopped, and a clean scrub.
#[test]
fn ext4_on_a_pool_volume_target() {
    if !chain_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let cstor = |args: &[&str]| {
        let (ok, out) = run(
            Command::new(env!("CARGO_BIN_EXE_cstor"))
                .env("CSTOR_HOME", &home)
                .args(args),
            T,
        );
        assert!(ok, "cstor {args:?}: {out}");
        out
    };
    let mut disks = Vec::new();
    for i in 0..3 {
        let p = dir.path().join(format!("d{i}.img"));
        std::fs::File::create(&p)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        disks.push(p.to_str().unwrap().to_owned());
    }
    let mut create = vec!["pool", "create", "ep", "raidz"];
    create.extend(disks.iter().map(String::as_str));
    cstor(&create);
    cstor(&["volume", "create", "ep/fs", "--size", "256M"]);
    let iqn = "iqn.2024-01.io.cstor.test:ext4-pool";
    let s = serve_in_home(&home, &["--iqn", iqn, "--volume", "ep/fs"]);
    make_and_use_ext4(dir.path(), &s.addr, iqn);
    drop(s);
    let img = dir.path().join("vol.img");
    cstor(&["volume", "read", "ep/fs", "--output", img.to_str().unwrap()]);
    check_image(&img);
    cstor(&["pool", "scrub", "ep", "--wait"]);
    let status = cstor(&["pool", "status", "ep", "-o", "json"]);
    assert!(status.contains("\"ONLINE\""), "{status}");
}

fn unsafe_is_root() -> bool {
    // The effective uid, read from /proc so no unsafe code is needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
