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
//! node is lost, and its consistency checks pass afterwards. Targets and replicas speak
//! TLS (`cstor up --replica-tls`): a plain connection to a replica port is refused, and
//! the rebuilds after each node loss run over TLS.

mod apiserver_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::claim::{
    apply_claim, attach, blockdev_mounted, check_files, fs_bytes, fsck_through_portal, target_node,
    text, wait_healthy, write_files, Attached,
};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

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

/// Every pool's replica port (the CSPI's endpoint annotation) answers a plain-TCP
/// target that it requires TLS: the Healthy replicas were reached over TLS.
fn plain_replica_connections_are_refused(up: &Up) {
    let eps = up.get(&[
        "get",
        "cspi",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[*].metadata.annotations.cstor\\.openebs\\.io/replica-endpoint}",
    ]);
    let eps: Vec<&str> = eps.split_whitespace().collect();
    assert_eq!(eps.len(), 3, "replica endpoints: {eps:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for ep in eps {
        let r = rt.block_on(cstor_replication::client::ReplicaConn::connect(
            ep,
            None,
            Duration::from_secs(5),
        ));
        match r {
            Err(cstor_replication::ReplicaError::AuthFailed { why, .. }) => {
                assert!(why.contains("requires TLS"), "{ep}: {why}")
            }
            Err(e) => panic!("{ep}: a plain connection failed otherwise: {e}"),
            Ok(_) => panic!("{ep}: a plain connection was served"),
        }
    }
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
    let up = Up::start_with(3, "1G", &["--replica-tls"]);
    let long = Duration::from_secs(120);
    up.seed_stripe_pools(long);
    apply_claim(&up);
    wait_healthy(&up, long);
    plain_replica_connections_are_refused(&up);
    let tnode = target_node(&up);
    // The replica's node to lose: not the target's (a target move is target_move.rs').
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
        node: "node-1".into(),
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
