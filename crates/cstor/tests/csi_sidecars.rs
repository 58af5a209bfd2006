//! The embedded CSI sidecars of `cstor up` (`cstor sidecars`, docs/csi.md § Sidecars):
//! a claim is provisioned through the driver's CreateVolume, expanded through
//! ControllerExpandVolume and reclaimed through DeleteVolume, and with the sidecars
//! stopped nothing provisions it (the controller no longer does). VolumeSnapshots are
//! bound by the embedded snapshot controller and taken through CreateSnapshot (with the
//! sidecars stopped a VolumeSnapshot stays unbound and no CStorSnapshot appears), and
//! deleted through DeleteSnapshot under deletionPolicy Delete, kept under Retain.

mod apiserver_support;

use std::time::{Duration, Instant};

use apiserver_support::seed::seed_yaml;
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

/// The pid of this `cstor up`'s sidecars process (its arguments name this run's dir).
fn sidecars_pid(up: &Up) -> i32 {
    let socket = up.dir.join("csi").join("controller.sock");
    let want = format!("unix://{}", socket.display());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("sidecars") && args.contains(&want) {
            return pid;
        }
    }
    panic!("no sidecars process for {want}\n{}", up.log());
}

fn get(up: &Up, args: &[&str]) -> String {
    up.kubectl(args).1.trim().to_owned()
}

/// Writes `yaml` to `name` in the run's dir and applies it.
fn apply(up: &Up, name: &str, yaml: &str) {
    let f = up.dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply {name}: {out}");
}

/// `cstor up` with the seed's stripe pools, namespace `database` and the seed's
/// 3-replica class applied; the seed's claim at 1Gi, not applied yet.
fn up_with_class() -> (Up, String) {
    let up = Up::start(3, "256M");
    up.seed_stripe_pools(Duration::from_secs(90));
    up.kubectl(&["create", "namespace", "database"]);
    apply(&up, "sc.yaml", &seed_yaml("name: cstor-csi-3-replicas"));
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
    let apply = |name: &str, y: &str| apply(&up, name, y);

    // The sidecars stopped (SIGSTOP: `cstor up` sees it alive and does not restart it):
    // the claim stays Pending and no CVC is made; the controller does not provision.
    let pid = sidecars_pid(&up);
    // SAFETY: signalling a process of this test's own `cstor up`.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    apply("pvc.yaml", &pvc);
    std::thread::sleep(Duration::from_secs(6));
    let phase = get(
        &up,
        &[
            "get",
            "pvc",
            "-n",
            "database",
            "postgres-data",
            "-o",
            "jsonpath={.status.phase}",
        ],
    );
    let cvcs = get(&up, &["get", "cvc", "-n", "openebs", "-o", "name"]);
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
    let made = get(&up, &["get", "pv", &pv, "-o", "jsonpath={.metadata.annotations.pv\\.kubernetes\\.io/provisioned-by} {.metadata.finalizers} {.spec.csi.volumeAttributes.storage\\.kubernetes\\.io/csiProvisionerIdentity}"]);
    assert!(
        made.starts_with("cstor.csi.openebs.io ")
            && made.contains("external-provisioner.volume.kubernetes.io/finalizer")
            && made.ends_with("-cstor.csi.openebs.io"),
        "{made}"
    );
    let csi_name = get(
        &up,
        &[
            "get",
            "cvc",
            "-n",
            "openebs",
            &pv,
            "-o",
            "jsonpath={.metadata.annotations.cstor\\.csi\\.openebs\\.io/name}",
        ],
    );
    assert_eq!(csi_name, pv, "the CVC was made by CreateVolume");
    let events = get(
        &up,
        &[
            "get",
            "events",
            "-n",
            "database",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ],
    );
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
                && get(
                    &up,
                    &[
                        "get",
                        "pvc",
                        "-n",
                        "database",
                        "postgres-data",
                        "-o",
                        "jsonpath={.status.capacity.storage}",
                    ],
                ) == "2Gi"
                && get(
                    &up,
                    &[
                        "get",
                        "cvc",
                        "-n",
                        "openebs",
                        &pv,
                        "-o",
                        "jsonpath={.status.capacity.storage}",
                    ],
                ) == "2Gi"
        },
        long,
    );
    let events = get(
        &up,
        &[
            "get",
            "events",
            "-n",
            "database",
            "-o",
            "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
        ],
    );
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
    let apply = |name: &str, y: &str| apply(&up, name, y);
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
    let pid = sidecars_pid(&up);
    signal(pid, libc::SIGSTOP);
    apply("vs1.yaml", &snapshot("daily", "snap-delete"));
    std::thread::sleep(Duration::from_secs(6));
    let st = get(
        &up,
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "daily",
            "-o",
            "jsonpath={.status.readyToUse}/{.status.boundVolumeSnapshotContentName}",
        ],
    );
    let csnaps = get(
        &up,
        &["get", "cstorsnapshot", "-n", "openebs", "-o", "name"],
    );
    let contents = get(&up, &["get", "volumesnapshotcontent", "-o", "name"]);
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
    let c = get(
        &up,
        &[
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
    let made_by = get(
        &up,
        &[
            "get",
            "cstorsnapshot",
            "-n",
            "openebs",
            &csnap,
            "-o",
            "jsonpath={.status.phase} {.metadata.annotations.cstor\\.csi\\.openebs\\.io/snapshot-name}",
        ],
    );
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
    let c = get(
        &up,
        &[
            "get",
            "volumesnapshotcontent",
            &kept_content,
            "-o",
            "jsonpath={.spec.deletionPolicy} {.status.readyToUse} {.status.snapshotHandle}",
        ],
    );
    assert_eq!(c, format!("Retain true {pv}@{kept_csnap}"));
    let left = get(
        &up,
        &["get", "cstorsnapshot", "-n", "openebs", "-o", "name"],
    );
    assert!(left.contains(&kept_csnap), "{left}");
    eprintln!("csi_sidecars snapshots: {:?}", t0.elapsed());
}
