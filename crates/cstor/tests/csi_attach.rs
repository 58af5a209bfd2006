//! A claim used as a pod uses it, end to end: `cstor up` with three nodes, the seed's
//! stripe pools, its 3-replica StorageClass and its `postgres-data` claim (at 1Gi instead
//! of 50Gi: the disks are sparse files of this machine), then `cstor attach` on node-1 —
//! the VolumeAttachment, ControllerPublishVolume, NodeStageVolume (the userspace initiator
//! through the target's portal, mkfs, mount) and NodePublishVolume — as the
//! attach-detach controller, the external-attacher and the kubelet do it.
//!
//! Shown: files written while a replica's node is lost read back after a detach and a
//! new attach, and xfs_repair -n finds the filesystem clean; a second node's attach is refused
//! while node-1 holds the volume; an expanded claim's filesystem grows online; and
//! PostgreSQL (Debian's) initialised on the mounted volume runs pgbench while a replica's
//! node is lost, and its consistency checks pass afterwards.

mod apiserver_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::seed::{count, seed_yaml};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn cstor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cstor")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// `cstor attach|detach postgres-data -n database --node NODE [--mount DIR]`.
fn attach(up: &Up, node: &str, mount: Option<&Path>) -> Output {
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
struct Attached<'a> {
    up: &'a Up,
    node: &'static str,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let out = attach(self.up, self.node, None);
        if !out.status.success() {
            eprintln!("cleanup detach on {}: {}", self.node, text(&out));
        }
    }
}

/// Files of pseudo-random content, named by their index; returns their digests.
fn write_files(dir: &Path, from: usize, n: usize) -> Vec<(PathBuf, u64)> {
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

fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn check_files(files: &[(PathBuf, u64)]) {
    for (p, d) in files {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert_eq!(digest(&data), *d, "{} changed", p.display());
    }
}

/// Size of the filesystem mounted at `dir`, bytes.
fn fs_bytes(dir: &Path) -> u64 {
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
fn fsck_through_portal(up: &Up, work: &Path) {
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

fn target_node(up: &Up) -> String {
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

fn wait_healthy(up: &Up, limit: Duration) {
    up.wait_for(
        "the volume Healthy with 3 Healthy replicas",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 4,
        limit,
    );
}

/// Runs a PostgreSQL binary as the postgres user.
fn pg(bin: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/{bin}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser")
}

fn psql(port: &str, sql: &str) -> String {
    let o = pg(
        "psql",
        &["-h", "/tmp", "-p", port, "-At", "-d", "bench", "-c", sql],
    );
    assert!(o.status.success(), "psql {sql}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn attached_claim_survives_a_node_loss_grows_online_and_runs_postgres() {
    let have_pg = Path::new(PG_BIN).join("initdb").exists();
    let have_xfs = Command::new("mkfs.xfs").arg("-V").output().is_ok();
    if !required(
        have_kubectl() && have_pg && have_xfs,
        "kubectl, postgresql-15 or xfsprogs",
    ) {
        return;
    }
    let up = Up::start(3, "1G");
    let long = Duration::from_secs(120);
    up.seed_stripe_pools(long);
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
    wait_healthy(&up, long);
    let tnode = target_node(&up);
    // The replica's node to lose: not the target's (that is a target move, not built).
    let down = ["node-3", "node-2"]
        .into_iter()
        .find(|n| *n != tnode)
        .unwrap();

    // Attach on node-1 and write while a replica's node is lost.
    let work = up.dir.join("work");
    let mnt = work.join("mnt");
    let t0 = Instant::now();
    let out = attach(&up, "node-1", Some(&mnt));
    assert!(out.status.success(), "attach: {}\n{}", text(&out), up.log());
    let guard = Attached {
        up: &up,
        node: "node-1",
    };
    eprintln!("attached in {:?}: {}", t0.elapsed(), text(&out));
    let (ok, va) = up.kubectl(&[
        "get",
        "volumeattachment",
        "-o",
        "jsonpath={.items[0].spec.nodeName} {.items[0].status.attached} {.items[0].status.attachmentMetadata.iqn}",
    ]);
    assert!(ok && va.starts_with("node-1 true iqn."), "{va}");
    let mut files = write_files(&mnt, 0, 8);
    let writer = {
        let mnt = mnt.clone();
        std::thread::spawn(move || write_files(&mnt, 8, 24))
    };
    std::thread::sleep(Duration::from_millis(300));
    up.node("stop", down);
    files.extend(
        writer
            .join()
            .expect("writes go on while a replica's node is down"),
    );
    check_files(&files);

    // A second node is refused while node-1 holds the volume.
    let other = work.join("other");
    let refused = attach(&up, "node-2", Some(&other));
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("published to node node-1"),
        "{}",
        text(&refused)
    );
    let d2 = attach(&up, "node-2", None);
    assert!(
        d2.status.success(),
        "detach of a refused attach: {}",
        text(&d2)
    );

    // Detach, bring the node back, attach again: the files are intact; fsck is clean.
    let out = attach(&up, "node-1", None);
    assert!(out.status.success(), "detach: {}", text(&out));
    assert!(
        !blockdev_mounted(&mnt),
        "{} still mounted after detach",
        mnt.display()
    );
    up.node("start", down);
    wait_healthy(&up, long);
    fsck_through_portal(&up, &work);
    let out = attach(&up, "node-1", Some(&mnt));
    assert!(out.status.success(), "attach again: {}", text(&out));
    check_files(&files);
    let again = attach(&up, "node-1", Some(&mnt));
    assert!(
        again.status.success(),
        "a repeated attach: {}",
        text(&again)
    );

    // Expansion: the claim grows, the filesystem follows on the next attach (as the
    // kubelet's node expansion).
    let before = fs_bytes(&mnt);
    let (ok, out) = up.kubectl(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
    ]);
    assert!(ok, "patch pvc: {out}");
    up.wait_for(
        "the PV at 2Gi",
        &[
            "get",
            "pv",
            "-o",
            "jsonpath={.items[0].spec.capacity.storage}",
        ],
        |v| v == "2Gi",
        long,
    );
    let out = attach(&up, "node-1", Some(&mnt));
    assert!(
        out.status.success(),
        "attach after expansion: {}",
        text(&out)
    );
    let after = fs_bytes(&mnt);
    assert!(
        after > before + (800 << 20),
        "filesystem {before} -> {after} bytes"
    );
    check_files(&files);

    // PostgreSQL on the volume: pgbench while a replica's node is lost, then its checks.
    // The postgres user must reach the mount through the test's private temp dirs.
    let tmp = up.dir.parent().unwrap();
    for d in [tmp, up.dir.as_path(), work.as_path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let data = mnt.join("pgdata");
    std::fs::create_dir_all(&data).unwrap();
    assert!(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let datas = data.display().to_string();
    let o = pg(
        "initdb",
        &["-D", &datas, "--data-checksums", "-U", "postgres"],
    );
    assert!(o.status.success(), "initdb: {}", text(&o));
    let port = apiserver_support::free_port().to_string();
    let opts = format!("-p {port} -k /tmp -c listen_addresses=''");
    let log = work.join("pg.log");
    std::fs::write(&log, "").unwrap();
    let _ = Command::new("chown").arg("postgres").arg(&log).status();
    let o = pg(
        "pg_ctl",
        &[
            "-D",
            &datas,
            "-o",
            &opts,
            "-l",
            &log.display().to_string(),
            "-w",
            "start",
        ],
    );
    assert!(o.status.success(), "pg_ctl start: {}", text(&o));
    let pg_guard = Postgres {
        data: datas.clone(),
    };
    let o = pg("createdb", &["-h", "/tmp", "-p", &port, "bench"]);
    assert!(o.status.success(), "createdb: {}", text(&o));
    let o = pg(
        "pgbench",
        &["-h", "/tmp", "-p", &port, "-i", "-s", "4", "bench"],
    );
    assert!(o.status.success(), "pgbench -i: {}", text(&o));
    let secs: u64 = std::env::var("CSTOR_PGBENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let bench = {
        let port = port.clone();
        std::thread::spawn(move || {
            pg(
                "pgbench",
                &[
                    "-h",
                    "/tmp",
                    "-p",
                    &port,
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    &secs.to_string(),
                    "bench",
                ],
            )
        })
    };
    std::thread::sleep(Duration::from_secs(secs / 3));
    up.node("stop", down);
    let o = bench.join().unwrap();
    assert!(o.status.success(), "pgbench: {}", text(&o));
    let report = text(&o);
    eprintln!("{report}");
    assert!(report.contains("tps = "), "{report}");
    // TPC-B's invariants: every transaction's delta is in the history and in each
    // table's balance sum.
    let hist = psql(&port, "select coalesce(sum(delta),0) from pgbench_history");
    for (table, col) in [
        ("pgbench_accounts", "abalance"),
        ("pgbench_tellers", "tbalance"),
        ("pgbench_branches", "bbalance"),
    ] {
        let sum = psql(&port, &format!("select sum({col}) from {table}"));
        assert_eq!(sum, hist, "{table} balance vs history");
    }
    let o = pg(
        "pg_amcheck",
        &[
            "-h",
            "/tmp",
            "-p",
            &port,
            "--install-missing",
            "-d",
            "bench",
        ],
    );
    assert!(o.status.success(), "pg_amcheck: {}", text(&o));
    drop(pg_guard);
    up.node("start", down);
    drop(guard);
    assert!(!blockdev_mounted(&mnt));
}

/// A PostgreSQL server on the volume, stopped on drop (before the volume is detached).
struct Postgres {
    data: String,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let o = pg("pg_ctl", &["-D", &self.data, "-m", "fast", "-w", "stop"]);
        if !o.status.success() {
            eprintln!("pg_ctl stop: {}", text(&o));
        }
    }
}

/// Whether anything is mounted at `dir`.
fn blockdev_mounted(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(canon.to_str().unwrap_or_default()))
}
