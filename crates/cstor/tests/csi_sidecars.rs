//! The embedded CSI sidecars of `cstor up` (`cstor sidecars`, docs/csi.md § Sidecars):
//! a claim is provisioned through the driver's CreateVolume, expanded through
//! ControllerExpandVolume and reclaimed through DeleteVolume, and with the sidecars
//! stopped nothing provisions it (the controller no longer does). VolumeSnapshots are
//! bound by the embedded snapshot controller and taken through CreateSnapshot (with the
//! sidecars stopped a VolumeSnapshot stays unbound and no CStorSnapshot appears), and
//! deleted through DeleteSnapshot under deletionPolicy Delete, kept under Retain.
//! Two `cstor sidecars --leader-election` against one API server: only the holder of the
//! Leases acts; killed, the other takes every Lease over and acts.

mod apiserver_support;

use std::time::{Duration, Instant};

use apiserver_support::seed::seed_yaml;
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, kubectl_server, required, ApiServer};

/// `cstor up` with the seed's stripe pools, namespace `database` and the seed's
/// 3-replica class applied; the seed's claim at 1Gi, not applied yet.
fn up_with_class() -> (Up, String) {
    let up = Up::start(3, "256M");
    up.seed_stripe_pools(Duration::from_secs(90));
    up.kubectl(&["create", "namespace", "database"]);
    up.apply("sc.yaml", &seed_yaml("name: cstor-csi-3-replicas"));
    let pvc = seed_yaml("name: postgres-data")
        .split("\n---\n")
        .find(|d| d.contains("kind: PersistentVolumeClaim"))
        .unwrap()
        .replace("storage: 50Gi", "storage: 1Gi");
    (up, pvc)
}

#[test]
fn claims_are_provisioned_expanded_and_reclaimed_through_the_driver() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let t0 = Instant::now();
    let (up, pvc) = up_with_class();
    let long = Duration::from_secs(90);
    let apply = |name: &str, y: &str| up.apply(name, y);

    // The sidecars stopped (SIGSTOP: `cstor up` sees it alive and does not restart it):
    // the claim stays Pending and no CVC is made; the controller does not provision.
    let pid = up.sidecars_pid();
    // SAFETY: signalling a process of this test's own `cstor up`.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    apply("pvc.yaml", &pvc);
    std::thread::sleep(Duration::from_secs(6));
    let phase = up.get(&[
        "get",
        "pvc",
        "-n",
        "database",
        "postgres-data",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    let cvcs = up.get(&["get", "cvc", "-n", "openebs", "-o", "name"]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(phase, "Pending");
    assert!(
        !cvcs.contains("pvc-"),
        "a CVC without the provisioner: {cvcs}"
    );

    // Resumed: CreateVolume (the driver's CVC records the CSI name), the PV as the
    // external-provisioner writes it, bound by the PV controller.
    let v = up.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            "-n",
            "database",
            "postgres-data",
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        long,
    );
    let pv = v.split_whitespace().nth(1).unwrap().to_owned();
    let made = up.get(&["get", "pv", &pv, "-o", "jsonpath={.metadata.annotations.pv\\.kubernetes\\.io/provisioned-by} {.metadata.finalizers} {.spec.csi.volumeAttributes.storage\\.kubernetes\\.io/csiProvisionerIdentity}"]);
    assert!(
        made.starts_with("cstor.csi.openebs.io ")
            && made.contains("external-provisioner.volume.kubernetes.io/finalizer")
            && made.ends_with("-cstor.csi.openebs.io"),
        "{made}"
    );
    let csi_name = up.get(&[
        "get",
        "cvc",
        "-n",
        "openebs",
        &pv,
        "-o",
        "jsonpath={.metadata.annotations.cstor\\.csi\\.openebs\\.io/name}",
    ]);
    assert_eq!(csi_name, pv, "the CVC was made by CreateVolume");
    let events = up.get(&[
        "get",
        "events",
        "-n",
        "database",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("ProvisioningSucceeded: Successfully provisioned volume"),
        "{events}"
    );

    // Expansion through ControllerExpandVolume: published nowhere, so the claim's
    // capacity follows at once (no node expansion needed).
    let (ok, out) = up.kubectl(&[
        "patch",
        "pvc",
        "-n",
        "database",
        "postgres-data",
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
    ]);
    assert!(ok, "{out}");
    up.wait_for(
        "PV, claim and CVC at 2Gi",
        &["get", "pv", &pv, "-o", "jsonpath={.spec.capacity.storage}"],
        |v| {
            v == "2Gi"
                && up.get(&[
                    "get",
                    "pvc",
                    "-n",
                    "database",
                    "postgres-data",
                    "-o",
                    "jsonpath={.status.capacity.storage}",
                ]) == "2Gi"
                && up.get(&[
                    "get",
                    "cvc",
                    "-n",
                    "openebs",
                    &pv,
                    "-o",
                    "jsonpath={.status.capacity.storage}",
                ]) == "2Gi"
        },
        long,
    );
    let events = up.get(&[
        "get",
        "events",
        "-n",
        "database",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("Resizing") && events.contains("VolumeResizeSuccessful"),
        "{events}"
    );

    // Reclaim: the claim deleted, DeleteVolume, then the PV goes (finalizer off).
    let (ok, out) = up.kubectl(&[
        "delete",
        "pvc",
        "-n",
        "database",
        "postgres-data",
        "--wait=false",
    ]);
    assert!(ok, "{out}");
    up.wait_for(
        "PV and CVC gone",
        &["get", "pv,cvc", "-A", "-o", "name"],
        |v| !v.contains("pvc-"),
        long,
    );
    eprintln!("csi_sidecars: {:?}", t0.elapsed());
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process of this test's own `cstor up`.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn snapshots_are_bound_taken_and_deleted_through_the_driver() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let t0 = Instant::now();
    let (up, pvc) = up_with_class();
    let long = Duration::from_secs(90);
    let apply = |name: &str, y: &str| up.apply(name, y);
    apply("pvc.yaml", &pvc);
    let classes = |policy: &str| {
        format!(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata:\n  name: snap-{}\ndriver: cstor.csi.openebs.io\ndeletionPolicy: {policy}\n",
            policy.to_lowercase()
        )
    };
    apply("delete-class.yaml", &classes("Delete"));
    apply("retain-class.yaml", &classes("Retain"));
    let snapshot = |name: &str, class: &str| {
        format!(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: {name}\n  namespace: database\nspec:\n  volumeSnapshotClassName: {class}\n  source:\n    persistentVolumeClaimName: postgres-data\n"
        )
    };
    let v = up.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            "-n",
            "database",
            "postgres-data",
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        long,
    );
    let pv = v.split_whitespace().nth(1).unwrap().to_owned();
    up.wait_for(
        "the volume Healthy",
        &["get", "cv", "-n", "openebs", &pv, "--no-headers"],
        |v| v.contains(" Healthy"),
        long,
    );

    // The sidecars stopped: the snapshot stays unbound and not ready, and nothing makes
    // a CStorSnapshot or a content (the controller no longer does).
    let pid = up.sidecars_pid();
    signal(pid, libc::SIGSTOP);
    apply("vs1.yaml", &snapshot("daily", "snap-delete"));
    std::thread::sleep(Duration::from_secs(6));
    let st = up.get(&[
        "get",
        "volumesnapshot",
        "-n",
        "database",
        "daily",
        "-o",
        "jsonpath={.status.readyToUse}/{.status.boundVolumeSnapshotContentName}",
    ]);
    let csnaps = up.get(&["get", "cstorsnapshot", "-n", "openebs", "-o", "name"]);
    let contents = up.get(&["get", "volumesnapshotcontent", "-o", "name"]);
    signal(pid, libc::SIGCONT);
    assert_eq!(st, "/", "a status without the snapshot controller");
    assert!(
        csnaps.is_empty(),
        "a CStorSnapshot without the sidecars: {csnaps}"
    );
    assert!(
        contents.is_empty(),
        "a content without the sidecars: {contents}"
    );

    // Resumed: bound, taken through CreateSnapshot, ready with its restore size.
    let v = up.wait_for(
        "the snapshot readyToUse",
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "daily",
            "-o",
            "jsonpath={.status.readyToUse} {.status.restoreSize} {.status.boundVolumeSnapshotContentName} {.metadata.uid} {.metadata.finalizers}",
        ],
        |v| v.starts_with("true "),
        long,
    );
    let f: Vec<&str> = v.split_whitespace().collect();
    let (size, content, uid) = (f[1], f[2], f[3]);
    assert_eq!(size, "1Gi", "{v}");
    assert_eq!(content, format!("snapcontent-{uid}"));
    assert!(
        v.contains("volumesnapshot-as-source-protection")
            && v.contains("volumesnapshot-bound-protection"),
        "{v}"
    );
    let c = up.get(&[
            "get",
            "volumesnapshotcontent",
            content,
            "-o",
            "jsonpath={.spec.source.volumeHandle} {.status.snapshotHandle} {.status.readyToUse} {.status.restoreSize} {.metadata.finalizers}",
        ],
    );
    assert!(
        c.starts_with(&format!("{pv} {pv}@snapshot-{uid} true 1073741824 "))
            && c.contains("volumesnapshotcontent-bound-protection"),
        "{c}"
    );
    let csnap = format!("snapshot-{uid}");
    let made_by = up.get(&[
        "get",
        "cstorsnapshot",
        "-n",
        "openebs",
        &csnap,
        "-o",
        "jsonpath={.status.phase} {.metadata.annotations.cstor\\.csi\\.openebs\\.io/snapshot-name}",
    ]);
    assert_eq!(made_by, format!("Ready {csnap}"), "made by CreateSnapshot");
    up.wait_for(
        "the claim's snapshot finalizer gone once the snapshot is ready",
        &[
            "get",
            "pvc",
            "-n",
            "database",
            "postgres-data",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ],
        |v| !v.contains("pvc-as-source-protection"),
        Duration::from_secs(10),
    );

    // A Retain snapshot, taken the same way.
    apply("vs2.yaml", &snapshot("kept", "snap-retain"));
    let v = up.wait_for(
        "the Retain snapshot readyToUse",
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "kept",
            "-o",
            "jsonpath={.status.readyToUse} {.status.boundVolumeSnapshotContentName} {.metadata.uid}",
        ],
        |v| v.starts_with("true "),
        long,
    );
    let kept_content = v.split_whitespace().nth(1).unwrap().to_owned();
    let kept_csnap = format!("snapshot-{}", v.split_whitespace().nth(2).unwrap());

    // Delete under Delete: the content and the CStorSnapshot go, then the snapshot.
    let (ok, out) = up.kubectl(&[
        "delete",
        "volumesnapshot",
        "-n",
        "database",
        "daily",
        "--wait=false",
    ]);
    assert!(ok, "{out}");
    up.wait_for(
        "the Delete snapshot, its content and its CStorSnapshot gone",
        &[
            "get",
            "volumesnapshot,volumesnapshotcontent,cstorsnapshot",
            "-A",
            "-o",
            "name",
        ],
        |v| !v.contains(content) && !v.contains(&format!("/{csnap}")) && !v.contains("/daily"),
        long,
    );
    // Delete under Retain: the snapshot goes, its content and CStorSnapshot stay.
    let (ok, out) = up.kubectl(&["delete", "volumesnapshot", "-n", "database", "kept"]);
    assert!(ok, "{out}");
    let c = up.get(&[
        "get",
        "volumesnapshotcontent",
        &kept_content,
        "-o",
        "jsonpath={.spec.deletionPolicy} {.status.readyToUse} {.status.snapshotHandle}",
    ]);
    assert_eq!(c, format!("Retain true {pv}@{kept_csnap}"));
    let left = up.get(&["get", "cstorsnapshot", "-n", "openebs", "-o", "name"]);
    assert!(left.contains(&kept_csnap), "{left}");
    eprintln!("csi_sidecars snapshots: {:?}", t0.elapsed());
}

/// A `cstor sidecars --leader-election` process as `identity`, killed on drop.
struct Sidecars(std::process::Child);

impl Sidecars {
    /// Lease 4 s, renew deadline 3 s, retry 500 ms; no driver behind the socket (every
    /// call answers UNAVAILABLE, which the attacher records after its finalizer).
    fn start(s: &ApiServer, dir: &std::path::Path, identity: &str) -> Sidecars {
        let log = std::fs::File::create(dir.join(format!("{identity}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["sidecars", "--csi-endpoint"])
            .arg(format!("unix://{}", dir.join("no-driver.sock").display()))
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args(["--interval", "200ms", "--leader-election"])
            .args(["--leader-election-namespace", "default"])
            .args(["--leader-election-identity", identity])
            .args(["--leader-election-lease-duration", "4s"])
            .args(["--leader-election-renew-deadline", "3s"])
            .args(["--leader-election-retry-period", "500ms"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Sidecars(child)
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VolumeAttachment of this driver on node-1 for PV `pv`.
fn volume_attachment(name: &str) -> String {
    format!(
        "apiVersion: storage.k8s.io/v1\nkind: VolumeAttachment\nmetadata:\n  name: {name}\n\
         spec:\n  attacher: cstor.csi.openebs.io\n  nodeName: node-1\n  source:\n    \
         persistentVolumeName: pv-1\n"
    )
}

#[test]
fn two_sidecars_with_leader_election_only_the_lease_holder_acts_and_a_standby_takes_over() {
    let Some((dir, s)) = kubectl_server() else {
        return;
    };
    let t0 = Instant::now();
    let apply = |name: &str, yaml: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, yaml).unwrap();
        s.ok(&["apply", "-f", &f.display().to_string()]);
    };
    let holders = || {
        s.ok(&[
            "get",
            "lease",
            "-n",
            "default",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity} {end}",
        ])
    };
    let wait = |what: &str, limit: Duration, ok: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < limit, "{what}: not after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        t.elapsed()
    };
    let leases = [
        "cstor-csi-openebs-io",
        "external-attacher-leader-cstor-csi-openebs-io",
        "external-resizer-cstor-csi-openebs-io",
        "external-snapshotter-leader-cstor-csi-openebs-io",
        "snapshot-controller-leader",
    ];
    let all_held_by = |who: &str| {
        let h = holders();
        leases.iter().all(|l| h.contains(&format!("{l}={who} ")))
    };
    let mut a = Sidecars::start(&s, dir.path(), "sidecars-a");
    wait("a holds every Lease", Duration::from_secs(20), &|| {
        all_held_by("sidecars-a")
    });
    let _b = Sidecars::start(&s, dir.path(), "sidecars-b");
    apply(
        "pv.yaml",
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: pv-1\nspec:\n  \
         capacity:\n    storage: 1Gi\n  accessModes: [ReadWriteOnce]\n  csi:\n    \
         driver: cstor.csi.openebs.io\n    volumeHandle: pv-1\n",
    );
    apply(
        "csinode.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: CSINode\nmetadata:\n  name: node-1\nspec:\n  \
         drivers:\n  - name: cstor.csi.openebs.io\n    nodeID: node-1\n",
    );
    let finalizers = |va: &str| {
        s.ok(&[
            "get",
            "volumeattachment",
            va,
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
    };
    // The holder acts: the attacher's finalizer, then the failed publish recorded.
    apply("va1.yaml", &volume_attachment("va-1"));
    wait("a takes va-1", Duration::from_secs(20), &|| {
        finalizers("va-1").contains("external-attacher/cstor-csi-openebs-io")
    });
    // b stays a standby while a renews (two lease durations).
    std::thread::sleep(Duration::from_secs(8));
    assert!(all_held_by("sidecars-a"), "{}", holders());

    // a killed: nobody acts until b may take the Leases over, then b does.
    let _ = a.0.kill();
    let _ = a.0.wait();
    let killed = Instant::now();
    apply("va2.yaml", &volume_attachment("va-2"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        finalizers("va-2"),
        "",
        "nobody acts before the Lease expires"
    );
    wait("b takes va-2", Duration::from_secs(20), &|| {
        finalizers("va-2").contains("external-attacher/cstor-csi-openebs-io")
    });
    let took = killed.elapsed();
    wait("b holds every Lease", Duration::from_secs(5), &|| {
        all_held_by("sidecars-b")
    });
    let transitions = s.ok(&[
        "get",
        "lease",
        "-n",
        "default",
        "snapshot-controller-leader",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert_eq!(transitions, "1");
    // Takeover: within a lease duration of a's last renewal, plus b's retry period and
    // one pass.
    assert!(took < Duration::from_secs(7), "took over after {took:?}");
    eprintln!(
        "csi_sidecars leader election: taken over {took:?} after the kill; {:?} in all",
        t0.elapsed()
    );
}
