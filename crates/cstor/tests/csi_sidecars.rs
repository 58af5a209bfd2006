//! The embedded CSI sidecars of `cstor up` (`cstor sidecars`, docs/csi.md § Sidecars):
//! a claim is provisioned through the driver's CreateVolume, expanded through
//! ControllerExpandVolume and reclaimed through DeleteVolume, and with the sidecars
//! stopped nothing provisions it (the controller no longer does).

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

#[test]
fn claims_are_provisioned_expanded_and_reclaimed_through_the_driver() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let t0 = Instant::now();
    let up = Up::start(3, "256M");
    let long = Duration::from_secs(90);
    up.seed_stripe_pools(long);
    up.kubectl(&["create", "namespace", "database"]);
    let sc = seed_yaml("name: cstor-csi-3-replicas");
    let pvc = seed_yaml("name: postgres-data")
        .split("\n---\n")
        .find(|d| d.contains("kind: PersistentVolumeClaim"))
        .unwrap()
        .replace("storage: 50Gi", "storage: 1Gi");
    let apply = |name: &str, y: &str| {
        let f = up.dir.join(name);
        std::fs::write(&f, y).unwrap();
        let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(ok, "apply {name}: {out}");
    };
    apply("sc.yaml", &sc);

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
