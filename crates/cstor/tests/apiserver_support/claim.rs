//! The seed's `postgres-data` claim used as a pod uses it, for the end-to-end tests
//! against `cstor up` (csi_attach, target_move): the claim and its xfs StorageClass,
//! `cstor attach|detach`, files of known content and their check, and `xfs_repair -n`
//! through the target's portal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::seed::{count, seed_yaml};
use super::up::Up;

/// The seed's 3-replica StorageClass (with fstype xfs) and its `postgres-data` claim at
/// 1Gi in namespace `database`, applied.
pub fn apply_claim(up: &Up) {
    // xfs: this machine's sandbox lacks CAP_SYS_RESOURCE, without which the kernel does
    // not grow a mounted ext4 (xfs_growfs needs only CAP_SYS_ADMIN).
    let sc = seed_yaml("name: cstor-csi-3-replicas").replace(
        "parameters:\n",
        "parameters:\n  csi.storage.k8s.io/fstype: xfs\n",
    );
    let pvc = seed_yaml("name: postgres-data")
        .split("\n---\n")
        .find(|d| d.contains("kind: PersistentVolumeClaim"))
        .unwrap()
        .replace("storage: 50Gi", "storage: 1Gi");
    up.kubectl(&["create", "namespace", "database"]);
    for (name, y) in [("sc.yaml", sc.as_str()), ("pvc.yaml", pvc.as_str())] {
        let f = up.dir.join(name);
        std::fs::write(&f, y).unwrap();
        let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(ok, "apply {name}: {out}");
    }
}

pub fn cstor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cstor")
}

pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// `cstor attach|detach postgres-data -n database --node NODE [--mount DIR]`.
pub fn attach(up: &Up, node: &str, mount: Option<&Path>) -> Output {
    let dir = up.dir.display().to_string();
    let mut args = vec![
        if mount.is_some() { "attach" } else { "detach" },
        "postgres-data",
        "-n",
        "database",
        "--node",
        node,
        "--dir",
        &dir,
    ];
    let m = mount.map(|m| m.display().to_string());
    if let Some(m) = &m {
        args.extend(["--mount", m]);
    }
    cstor(&args)
}

/// Detaches on drop, so a failing test leaves no mount, loop device or FUSE file behind.
pub struct Attached<'a> {
    pub up: &'a Up,
    pub node: String,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let out = attach(self.up, &self.node, None);
        if !out.status.success() {
            eprintln!("cleanup detach on {}: {}", self.node, text(&out));
        }
    }
}

/// Files of pseudo-random content, named by their index; returns their digests.
pub fn write_files(dir: &Path, from: usize, n: usize) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for i in from..from + n {
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let data: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = dir.join(format!("file-{i}"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        out.push((p, digest(&data)));
    }
    out
}

pub fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn check_files(files: &[(PathBuf, u64)]) {
    for (p, d) in files {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert_eq!(digest(&data), *d, "{} changed", p.display());
    }
}

/// Size of the filesystem mounted at `dir`, bytes.
pub fn fs_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=size"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// `xfs_repair -n` of the volume, reached through its target's portal with the userspace
/// initiator and a loop device (the volume is detached everywhere).
pub fn fsck_through_portal(up: &Up, work: &Path) {
    let (_, cv) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[0].spec.iqn} {.items[0].spec.targetPortal}",
    ]);
    let parts: Vec<&str> = cv.split_whitespace().collect();
    let [iqn, portal] = parts[..] else {
        panic!("CV iqn/portal: {cv:?}");
    };
    // Detached just now: the target admits other initiators again within a pass of its
    // agent (its ACL follows ControllerPublish), and SendTargets lists it to us once it
    // does. Logging in before would be refused.
    let t0 = std::time::Instant::now();
    loop {
        let d = cstor(&["initiator", "discover", "--portal", portal]);
        if d.status.success() && String::from_utf8_lossy(&d.stdout).contains(iqn) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the target did not admit other initiators after the detach: {}",
            text(&d)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fdir = work.join("fsck-lun");
    std::fs::create_dir_all(&fdir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(["initiator", "attach", "--portal", portal, "--target", iqn])
        .arg("--file-dir")
        .arg(&fdir)
        .arg("--loop")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut dev = None;
    for _ in 0..2 {
        if let Some(Ok(l)) = lines.next() {
            if let Some(d) = l.strip_prefix("loop ") {
                dev = Some(d.trim().to_owned());
            }
        }
    }
    let dev = dev.expect("the initiator printed its loop device");
    let fsck = Command::new("xfs_repair")
        .args(["-n", &dev])
        .output()
        .unwrap();
    let detach = cstor(&[
        "initiator",
        "detach",
        "--file-dir",
        &fdir.display().to_string(),
    ]);
    let _ = child.wait();
    assert!(fsck.status.success(), "fsck: {}", text(&fsck));
    assert!(detach.status.success(), "{}", text(&detach));
}

pub fn target_node(up: &Up) -> String {
    let (_, n) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[0].metadata.labels.cstor\\.openebs\\.io/target-node}",
    ]);
    assert!(n.starts_with("node-"), "target node: {n:?}");
    n
}

pub fn wait_healthy(up: &Up, limit: Duration) {
    up.wait_for(
        "the volume Healthy with 3 Healthy replicas",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 4,
        limit,
    );
}

/// Whether anything is mounted at `dir`.
pub fn blockdev_mounted(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(canon.to_str().unwrap_or_default()))
}
