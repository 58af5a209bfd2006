//! Snapshot and restore through `cstor up` with real node agents, with the seed's own
//! YAML (docs/seeds/how-to-build-cstor-pools.md: stripe pools, the 3-replica class, the
//! PostgreSQL claim, the snapshot class, the daily VolumeSnapshot and the restored
//! claim). A pattern written through the volume's iSCSI portal is in the snapshot: the
//! VolumeSnapshot turns readyToUse once the target's agent took it, the volume is
//! overwritten, and the claim restored from the snapshot reads the ORIGINAL pattern
//! through its own target while the source reads the new one. A snapshot with a restore
//! made from it refuses deletion (Event, finalizer kept); a second one without clones is
//! deleted: the VolumeSnapshot, the CStorSnapshot and the replicated snapshot all go.
//! All of it through the CSI interface: the embedded snapshot controller binds the
//! VolumeSnapshot to a VolumeSnapshotContent, the snapshotter's CreateSnapshot makes the
//! CStorSnapshot, the provisioner's CreateVolume from the content's snapshotHandle makes
//! the restore, DeleteSnapshot deletes (`cstor sidecars`; the controller does none of it).

mod apiserver_support;

use std::process::Command;
use std::time::{Duration, Instant};

use apiserver_support::seed::{bound_pv, healthy_target, qemu_io, seed_yaml};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

fn apply(up: &Up, name: &str, yaml: &str) {
    let f = up.dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply {name}: {out}\n{yaml}");
}

/// The replicated snapshots the source's membership record lists.
fn recorded_snapshots(up: &Up, pv: &str) -> String {
    up.kubectl(&[
        "get",
        "cv",
        pv,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.status.replication.record.snapshots[*].name}",
    ])
    .1
}

fn snapshot_yaml(name: &str) -> String {
    seed_yaml("kind: VolumeSnapshot\n").replace("postgres-snapshot-daily", name)
}

#[test]
fn seed_snapshot_is_ready_restores_its_data_and_deletes() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    let t0 = Instant::now();
    let up = Up::start(3, "256M");
    let long = Duration::from_secs(60);
    up.seed_stripe_pools(long);
    up.kubectl(&["create", "namespace", "database"]);
    apply(&up, "sc.yaml", &seed_yaml("name: cstor-csi-3-replicas"));
    let pvc = seed_yaml("name: postgres-data")
        .split("\n---\n")
        .find(|d| d.contains("kind: PersistentVolumeClaim"))
        .unwrap()
        .to_string();
    apply(&up, "pvc.yaml", &pvc);
    let pv = bound_pv(&up, "postgres-data", long);
    let (iqn, portal) = healthy_target(&up, &pv, 3, long);
    let (ok, out) = qemu_io(&portal, &iqn, &["write -P 0x5a 0 4M"]);
    assert!(ok, "write the original pattern: {out}\n{}", up.log());

    apply(&up, "class.yaml", &seed_yaml("kind: VolumeSnapshotClass"));
    apply(&up, "snap.yaml", &snapshot_yaml("postgres-snapshot-daily"));
    let vs = up.wait_for(
        "the VolumeSnapshot readyToUse",
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "postgres-snapshot-daily",
            "-o",
            "jsonpath={.status.readyToUse} {.status.restoreSize} {.metadata.uid}",
        ],
        |v| v.starts_with("true "),
        long,
    );
    let uid = vs.split_whitespace().nth(2).unwrap().to_owned();
    let csnap = format!("snapshot-{uid}");
    let (_, st) = up.kubectl(&[
        "get",
        "cstorsnapshot",
        &csnap,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.status.phase} {.status.restoreSize} {.metadata.finalizers}",
    ]);
    assert!(
        st.starts_with("Ready 50Gi") && st.contains("cstor.openebs.io/snapshot-protection"),
        "{st}"
    );
    assert!(recorded_snapshots(&up, &pv).contains(&csnap));
    let (_, via) = up.kubectl(&[
        "get",
        "cstorsnapshot",
        &csnap,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.metadata.annotations.cstor\\.csi\\.openebs\\.io/snapshot-name}",
    ]);
    assert_eq!(via, csnap, "the CStorSnapshot was made by CreateSnapshot");
    let (_, handle) = up.kubectl(&[
        "get",
        "volumesnapshotcontent",
        &format!("snapcontent-{uid}"),
        "-o",
        "jsonpath={.status.snapshotHandle}",
    ]);
    assert_eq!(handle, format!("{pv}@{csnap}"));

    // Overwritten after the snapshot: the restore must not see this.
    let (ok, out) = qemu_io(&portal, &iqn, &["write -P 0x77 0 4M"]);
    assert!(ok, "overwrite: {out}");
    apply(&up, "restore.yaml", &seed_yaml("name: postgres-restored"));
    let restored = bound_pv(&up, "postgres-restored", long);
    let (_, labels) = up.kubectl(&[
        "get",
        "cvr",
        "-n",
        "openebs",
        "-l",
        &format!("openebs.io/persistent-volume={restored},openebs.io/cloned=true"),
        "--no-headers",
    ]);
    assert_eq!(labels.lines().count(), 3, "cloned CVRs: {labels}");
    let (riqn, rportal) = healthy_target(&up, &restored, 3, long);
    let (ok, out) = qemu_io(&rportal, &riqn, &["read -P 0x5a 0 4M"]);
    assert!(
        ok,
        "the restore holds the snapshot's data: {out}\n{}",
        up.log()
    );
    let (ok, out) = qemu_io(
        &rportal,
        &riqn,
        &["write -P 0x33 4M 1M", "read -P 0x33 4M 1M"],
    );
    assert!(ok, "the restore takes writes: {out}");
    let (ok, out) = qemu_io(&portal, &iqn, &["read -P 0x77 0 4M", "read -P 0 4M 1M"]);
    assert!(ok, "the source keeps its own data: {out}");

    // A snapshot with a restore made from it: deletion waits, with the reason.
    let (ok, out) = up.kubectl(&[
        "delete",
        "volumesnapshot",
        "-n",
        "database",
        "postgres-snapshot-daily",
        "--wait=false",
    ]);
    assert!(ok, "{out}");
    up.wait_for(
        "a SnapshotDeleteFailed event",
        &[
            "get",
            "events",
            "-n",
            "openebs",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name}={.reason} {end}",
        ],
        |v| v.contains(&format!("{csnap}=SnapshotDeleteFailed")),
        long,
    );
    assert!(recorded_snapshots(&up, &pv).contains(&csnap));

    // A second snapshot, without clones: deleted everywhere.
    apply(
        &up,
        "snap2.yaml",
        &snapshot_yaml("postgres-snapshot-hourly"),
    );
    let vs2 = up.wait_for(
        "the second VolumeSnapshot readyToUse",
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "postgres-snapshot-hourly",
            "-o",
            "jsonpath={.status.readyToUse} {.metadata.uid}",
        ],
        |v| v.starts_with("true "),
        long,
    );
    let csnap2 = format!("snapshot-{}", vs2.split_whitespace().nth(1).unwrap());
    assert!(recorded_snapshots(&up, &pv).contains(&csnap2));
    let (ok, out) = up.kubectl(&[
        "delete",
        "volumesnapshot",
        "-n",
        "database",
        "postgres-snapshot-hourly",
    ]);
    assert!(ok, "{out}");
    up.wait_for(
        "the CStorSnapshot gone",
        &["get", "cstorsnapshot", "-n", "openebs", "-o", "name"],
        |v| !v.contains(&csnap2) && v.contains(&csnap),
        long,
    );
    let (_, contents) = up.kubectl(&["get", "volumesnapshotcontent", "-o", "name"]);
    assert!(
        !contents.contains(&csnap2.replace("snapshot-", "snapcontent-")),
        "{contents}"
    );
    let left = recorded_snapshots(&up, &pv);
    assert!(!left.contains(&csnap2) && left.contains(&csnap), "{left}");
    println!("snapshot and restore took {:?}", t0.elapsed());
}
