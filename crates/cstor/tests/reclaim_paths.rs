//! What deleting claims and volumes leaves behind, through `cstor up` and kubectl, with
//! the seed's stripe pools and classes (docs/seeds/how-to-build-cstor-pools.md), in one
//! run:
//! - reclaim policy Retain (`cstor-csi-retain`): the claim deleted, the PV turns Released
//!   and the CStorVolumeConfig, CStorVolume, its CVRs and their pool volumes stay with the
//!   data (read back through the portal); the PV deleted then by hand goes alone, as
//!   external-provisioner does it (Retain never calls DeleteVolume): the volume still
//!   serves its data; deleting its CVC is how the administrator reclaims it (the replica
//!   data is destroyed on every pool);
//! - a restore with fewer replicas than its source (`cstor-csi-1-replica` from a snapshot
//!   of a 3-replica volume): one CVR, one member, the clone made on that replica's pool
//!   only, and it reads the snapshot's data;
//! - the source deleted while the restore lives: its replica data goes from the pools the
//!   restore does not use (ReplicaDataDestroyed) and is kept where the restore's clone
//!   depends on it (ReplicaDataKept, crates/agent/src/reclaim.rs), the restore still
//!   reads; the restore deleted, its clone goes and then the source's data with it.

mod apiserver_support;

use std::process::Command;
use std::time::{Duration, Instant};

use apiserver_support::seed::{bound_pv, healthy_target, pool_volumes, qemu_io, seed_yaml};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

const LONG: Duration = Duration::from_secs(60);

fn pvc(name: &str, class: &str, source: Option<&str>) -> String {
    let data_source = source
        .map(|s| {
            format!(
                "  dataSource:\n    name: {s}\n    kind: VolumeSnapshot\n    apiGroup: snapshot.storage.k8s.io\n"
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n  namespace: database\n\
         spec:\n  storageClassName: {class}\n{data_source}  accessModes: [ReadWriteOnce]\n  \
         resources:\n    requests:\n      storage: 1Gi\n"
    )
}

/// The pool instances holding a CVR of `pv`, sorted.
fn pools_of(up: &Up, pv: &str) -> Vec<String> {
    let out = up.get(&[
        "get",
        "cvr",
        "-n",
        "openebs",
        "-l",
        &format!("openebs.io/persistent-volume={pv}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.openebs\\.io/cstor-pool-instance}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// Every pool instance with its node, sorted by name.
fn cspis(up: &Up) -> Vec<(String, String)> {
    let out = up.get(&[
        "get",
        "cspi",
        "-n",
        "openebs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.labels.kubernetes\\.io/hostname}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    v.sort();
    v
}

/// The pools (of `all`) whose volumes include `volume`.
fn pools_holding(up: &Up, all: &[(String, String)], volume: &str) -> Vec<String> {
    all.iter()
        .filter(|(c, n)| pool_volumes(up, n, c).iter().any(|v| v == volume))
        .map(|(c, _)| c.clone())
        .collect()
}

/// The pool instances' Events as `cspi|reason|message` lines.
fn pool_events(up: &Up) -> String {
    up.get(&[
        "get",
        "events",
        "-n",
        "openebs",
        "-o",
        "jsonpath={range .items[?(@.involvedObject.kind==\"CStorPoolInstance\")]}{.involvedObject.name}|{.reason}|{.message}{\"\\n\"}{end}",
    ])
}

/// Waits until pool `cspi` recorded `reason` about pool volume `volume`.
fn wait_event(up: &Up, cspi: &str, reason: &str, volume: &str) {
    let t0 = Instant::now();
    loop {
        let ev = pool_events(up);
        let hit = ev.lines().any(|l| {
            l.starts_with(&format!("{cspi}|{reason}|")) && l.contains(&format!("volume {volume} "))
        });
        if hit {
            return;
        }
        assert!(
            t0.elapsed() < LONG,
            "no {reason} for {volume} on {cspi}:\n{ev}\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn delete(up: &Up, what: &[&str]) {
    let mut args = vec!["delete"];
    args.extend_from_slice(what);
    args.push("--wait=false");
    let (ok, out) = up.kubectl(&args);
    assert!(ok, "delete {what:?}: {out}");
}

#[test]
fn retained_volumes_keep_their_data_and_restores_keep_the_source_data_they_need() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    let t0 = Instant::now();
    let up = Up::start(3, "256M");
    up.seed_stripe_pools(LONG);
    let all = cspis(&up);
    assert_eq!(all.len(), 3, "{all:?}");
    up.kubectl(&["create", "namespace", "database"]);
    up.apply("sc3.yaml", &seed_yaml("name: cstor-csi-3-replicas"));
    // The seed's block with the 1-replica and the Retain classes.
    up.apply("sc-more.yaml", &seed_yaml("name: cstor-csi-retain"));
    up.apply("kept.yaml", &pvc("kept", "cstor-csi-retain", None));
    up.apply("source.yaml", &pvc("source", "cstor-csi-3-replicas", None));
    let kept = bound_pv(&up, "kept", LONG);
    let source = bound_pv(&up, "source", LONG);
    let (kiqn, kportal) = healthy_target(&up, &kept, 3, LONG);
    let (siqn, sportal) = healthy_target(&up, &source, 3, LONG);
    let (ok, out) = qemu_io(&kportal, &kiqn, &["write -P 0x4b 0 2M"]);
    assert!(ok, "write the kept volume: {out}\n{}", up.log());
    let (ok, out) = qemu_io(&sportal, &siqn, &["write -P 0x5a 0 2M"]);
    assert!(ok, "write the source: {out}\n{}", up.log());
    up.apply("vsclass.yaml", &seed_yaml("kind: VolumeSnapshotClass"));
    let snap = seed_yaml("kind: VolumeSnapshot\n")
        .replace("postgres-snapshot-daily", "source-snap")
        .replace(
            "persistentVolumeClaimName: postgres-data",
            "persistentVolumeClaimName: source",
        );
    up.apply("snap.yaml", &snap);

    // Retain: the claim deleted, the PV is Released and the volume keeps serving its data.
    delete(&up, &["pvc", "-n", "database", "kept"]);
    up.wait_for(
        "the Retain PV Released",
        &["get", "pv", &kept, "-o", "jsonpath={.status.phase}"],
        |v| v == "Released",
        LONG,
    );
    let left = up.get(&["get", "cvc,cv,cvr", "-n", "openebs", "-o", "name"]);
    assert_eq!(left.matches(&kept).count(), 5, "CVC, CV, 3 CVRs: {left}");
    let (ok, out) = qemu_io(&kportal, &kiqn, &["read -P 0x4b 0 2M"]);
    assert!(ok, "the released volume's data: {out}");

    // A restore with one replica from a snapshot of the 3-replica source.
    up.wait_for(
        "the snapshot readyToUse",
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "source-snap",
            "-o",
            "jsonpath={.status.readyToUse}",
        ],
        |v| v == "true",
        LONG,
    );
    up.apply(
        "restored.yaml",
        &pvc("restored", "cstor-csi-1-replica", Some("source-snap")),
    );
    let restored = bound_pv(&up, "restored", LONG);
    let (riqn, rportal) = healthy_target(&up, &restored, 1, LONG);
    let rpool = pools_of(&up, &restored);
    assert_eq!(rpool.len(), 1, "{rpool:?}");
    let rpool = rpool[0].clone();
    assert!(
        pools_of(&up, &source).contains(&rpool),
        "placed on a source pool"
    );
    let members = up.get(&[
        "get",
        "cv",
        &restored,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.status.replication.record.members[*].state}",
    ]);
    assert_eq!(members, "Current", "one member");
    assert_eq!(
        pools_holding(&up, &all, &restored),
        vec![rpool.clone()],
        "the clone only where the restore's replica is"
    );
    let (ok, out) = qemu_io(&rportal, &riqn, &["read -P 0x5a 0 2M"]);
    assert!(
        ok,
        "the restore holds the snapshot's data: {out}\n{}",
        up.log()
    );

    // The Retain PV deleted by hand: it goes alone, the volume and its data stay.
    delete(&up, &["pv", &kept]);
    up.wait_for(
        "the Retain PV gone",
        &["get", "pv", "-o", "name"],
        |v| !v.contains(&kept),
        LONG,
    );
    let left = up.get(&["get", "cvc,cv,cvr", "-n", "openebs", "-o", "name"]);
    assert_eq!(left.matches(&kept).count(), 5, "CVC, CV, 3 CVRs: {left}");

    // The source deleted (reclaim Delete): its data goes except under the clone.
    delete(&up, &["pvc", "-n", "database", "source"]);
    for (c, _) in &all {
        if *c == rpool {
            wait_event(&up, c, "ReplicaDataKept", &source);
        } else {
            wait_event(&up, c, "ReplicaDataDestroyed", &source);
        }
    }
    assert_eq!(pools_holding(&up, &all, &source), vec![rpool.clone()]);
    let (ok, out) = qemu_io(&rportal, &riqn, &["read -P 0x5a 0 2M"]);
    assert!(ok, "the restore without its source: {out}");
    let (ok, out) = qemu_io(&kportal, &kiqn, &["read -P 0x4b 0 2M"]);
    assert!(ok, "the retained volume without its PV: {out}");

    // The restore deleted: its clone goes, then the source's data under it; the
    // retained volume's CVC deleted by the administrator: its data goes everywhere.
    delete(&up, &["pvc", "-n", "database", "restored"]);
    delete(&up, &["cvc", "-n", "openebs", &kept]);
    wait_event(&up, &rpool, "ReplicaDataDestroyed", &restored);
    wait_event(&up, &rpool, "ReplicaDataDestroyed", &source);
    for (c, _) in &all {
        wait_event(&up, c, "ReplicaDataDestroyed", &kept);
    }
    for (c, n) in &all {
        let v = pool_volumes(&up, n, c);
        assert!(v.is_empty(), "{c} still holds {v:?}");
    }
    eprintln!("reclaim_paths: {:?}", t0.elapsed());
}
