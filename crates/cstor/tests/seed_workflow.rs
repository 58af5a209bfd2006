//! The seed's workflow (docs/seeds/how-to-build-cstor-pools.md) through `cstor up`, with
//! the seed's own YAML: the stripe CStorPoolCluster (its block device names and hostnames
//! replaced by this machine's), the 3-replica StorageClass and the PostgreSQL claim; the
//! pools go ONLINE, the claim binds, the volume turns Healthy with three Healthy replicas,
//! takes writes through its iSCSI portal (the largest transfer too), stays writable while
//! a replica's node is down, catches that replica up when it returns, and reads back.
//!
//! And the alpha seed's day-2 steps (docs/seeds/alpha-features-cstor-csi.md) on real node
//! agents: its v1alpha1 CStorPoolCluster and StorageClass, a claim expanded from 5Gi to
//! 9Gi online (the target serves the new size), and the replica scale-down by editing the
//! CStorVolume, applied by the running target; then a scale-up through the CVC's
//! replicaPoolInfo, whose new replica is rebuilt. Data written first reads back throughout.

mod apiserver_support;

use std::process::Command;
use std::time::Duration;

use apiserver_support::seed::{count, qemu_io, seed_yaml, target_of};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

const ALPHA_SEED: &str = include_str!("../../../docs/seeds/alpha-features-cstor-csi.md");

/// The alpha seed's example that starts with `start` and ends before `end`.
fn alpha_block(start: &str, end: &str) -> String {
    let from = ALPHA_SEED
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in the alpha seed"));
    let rest = &ALPHA_SEED[from..];
    let to = rest.find(end).unwrap_or(rest.len());
    rest[..to].to_string()
}

#[test]
fn seed_stripe_pool_3_replica_claim_survives_a_node_loss() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    let up = Up::start(3, "256M");
    let long = Duration::from_secs(90);
    // Each node's one BlockDevice replaces the seed's placeholder for worker-0N.
    up.seed_stripe_pools(long);
    let (_, cspc_row) = up.kubectl(&["get", "cspc", "-n", "openebs"]);
    assert!(
        cspc_row.contains("HEALTHYINSTANCES") && cspc_row.contains("cstor-pool-stripe"),
        "{cspc_row}"
    );

    let sc = seed_yaml("name: cstor-csi-3-replicas");
    let pvc = seed_yaml("name: postgres-data")
        .split("\n---\n")
        .find(|d| d.contains("kind: PersistentVolumeClaim"))
        .unwrap()
        .to_string();
    for (name, y) in [("sc.yaml", sc), ("pvc.yaml", pvc)] {
        let f = up.dir.join(name);
        std::fs::write(&f, y).unwrap();
        if name == "pvc.yaml" {
            up.kubectl(&["create", "namespace", "database"]);
        }
        let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(ok, "apply {name}: {out}");
    }
    up.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            "-n",
            "database",
            "postgres-data",
            "-o",
            "jsonpath={.status.phase}",
        ],
        |v| v == "Bound",
        long,
    );
    up.wait_for(
        "the volume Healthy with 3 Healthy replicas",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 4,
        long,
    );
    let (_, cv) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[0].spec.iqn} {.items[0].spec.targetPortal} {.items[0].metadata.labels.cstor\\.openebs\\.io/target-node}",
    ]);
    let parts: Vec<&str> = cv.split_whitespace().collect();
    let [iqn, portal, target_node] = parts[..] else {
        panic!("CV iqn/portal/target-node: {cv:?}");
    };
    // 64 MiB in one command: qemu splits it at the target's 32 MiB transfer limit, which
    // once exceeded the replica wire's frame bound and dropped every replica at once.
    let (ok, out) = qemu_io(portal, iqn, &["write -P 0xab 0 64M"]);
    assert!(ok, "write before the node loss: {out}\n{}", up.log());

    let down = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| *n != target_node)
        .unwrap();
    up.node("stop", down);
    let (ok, out) = qemu_io(portal, iqn, &["write -P 0xcd 64M 8M"]);
    assert!(ok, "write with {down} down: {out}\n{}", up.log());
    up.wait_for(
        "the volume Degraded",
        &["get", "cv", "-n", "openebs", "--no-headers"],
        |v| count(v, "Degraded") == 1,
        long,
    );
    up.node("start", down);
    up.wait_for(
        "the volume Healthy again with 3 Healthy replicas",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 4,
        long,
    );
    let (ok, out) = qemu_io(portal, iqn, &["read -P 0xab 0 64M", "read -P 0xcd 64M 8M"]);
    assert!(ok, "read back: {out}");
}

#[test]
fn alpha_seed_expansion_and_replica_scale_down_on_a_running_target() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    // The seed's CSPC has overProvisioning false: the pools must hold the 9Gi the claim
    // grows to (sparse files, nearly nothing is written).
    let up = Up::start(3, "12G");
    let long = Duration::from_secs(90);
    // The seed's one-pool CSPC, its pool repeated for each node with that node's device.
    let cspc = alpha_block(
        "apiVersion: openebs.io/v1alpha1\nkind: CStorPoolCluster",
        "</div>",
    );
    let (head, pool) = cspc.split_at(cspc.find("  - nodeSelector:").expect("seed CSPC pools"));
    let mut doc = head.to_string();
    for i in 1..=3 {
        let node = format!("node-{i}");
        let bd = up.block_device(&node, long);
        doc += &pool
            .replace("gke-ranjith-csi-default-pool-a9a13f27-6qv1", &node)
            .replace("blockdevice-936911c5c9b0218ed59e64009cc83c8f", &bd);
    }
    // The seed's StorageClass, with 3 replicas ("specify the desired replicaCount").
    let sc = alpha_block("kind: StorageClass\napiVersion: storage.k8s.io/v1\nmetadata:\n  name: openebs-csi-cstor-disk", "```")
        .replace("replicaCount: \"1\"", "replicaCount: \"3\"");
    // The claim the seed's busybox example makes, at the expansion section's 5Gi.
    let pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: demo-csivol-claim\nspec:\n  storageClassName: openebs-csi-cstor-disk\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 5Gi\n";
    for (name, y) in [
        ("cspc.yaml", doc.as_str()),
        ("sc.yaml", sc.as_str()),
        ("pvc.yaml", pvc),
    ] {
        let f = up.dir.join(name);
        std::fs::write(&f, y).unwrap();
        let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(ok, "apply {name}: {out}\n{y}");
        if name == "cspc.yaml" {
            up.wait_for(
                "3 CSPIs ONLINE",
                &["get", "cspi", "-n", "openebs", "--no-headers"],
                |v| count(v, "ONLINE") == 3,
                long,
            );
        }
    }
    let pv = up.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            "demo-csivol-claim",
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        long,
    );
    let pv = pv.split_whitespace().nth(1).unwrap().to_string();
    let by_pv = format!("openebs.io/persistent-volume={pv}");
    up.wait_for(
        "the volume Healthy with 3 Healthy replicas",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 4,
        long,
    );
    let (iqn, portal) = target_of(&up, &pv);
    let (iqn, portal) = (iqn.as_str(), portal.as_str());
    let (ok, out) = qemu_io(portal, iqn, &["write -P 0xa1 0 4M"]);
    assert!(ok, "first write: {out}\n{}", up.log());

    // Expansion: the seed edits the claim's storage to 9Gi (a patch here: edit is
    // interactive); the claim's capacity follows and the target serves 9Gi.
    let (ok, out) = up.kubectl(&[
        "patch",
        "pvc",
        "demo-csivol-claim",
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"9Gi"}}}}"#,
    ]);
    assert!(ok, "expand: {out}");
    up.wait_for(
        "the claim's capacity 9Gi",
        &["get", "pvc", "demo-csivol-claim", "--no-headers"],
        |v| v.split_whitespace().any(|w| w == "9Gi"),
        long,
    );
    let (ok, out) = qemu_io(
        portal,
        iqn,
        &[
            "write -P 0xb2 8G 1M",
            "read -P 0xb2 8G 1M",
            "read -P 0xa1 0 4M",
        ],
    );
    assert!(ok, "past the old end after expansion: {out}\n{}", up.log());

    // Scale down as the seed: one CVR's replicaid out of spec.knownReplicas, drf 3 -> 2.
    let cvrs = up.wait_for(
        "3 CVRs",
        &[
            "get",
            "cvr",
            "-n",
            "openebs",
            "-l",
            &by_pv,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.replicaid}{\"\\n\"}{end}",
        ],
        |v| v.lines().count() == 3,
        long,
    );
    let (gone_cvr, gone_id) = cvrs.lines().next().and_then(|l| l.split_once(' ')).unwrap();
    let patch = format!(
        r#"{{"spec":{{"desiredReplicationFactor":2,"replicaDetails":{{"knownReplicas":{{"{gone_id}":null}}}}}}}}"#
    );
    let (ok, out) = up.kubectl(&[
        "patch",
        "cstorvolume",
        &pv,
        "-n",
        "openebs",
        "--type=merge",
        "-p",
        &patch,
    ]);
    assert!(ok, "scale down: {out}");
    up.wait_for(
        "replicationFactor 2 with 2 known replicas",
        &[
            "get",
            "cstorvolume",
            &pv,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.spec.replicationFactor} {.status.replicaDetails.knownReplicas}",
        ],
        |v| v.starts_with("2 ") && !v.contains(gone_id) && v.matches(':').count() == 2,
        long,
    );
    let (_, described) = up.kubectl(&["describe", "cstorvolume", &pv, "-n", "openebs"]);
    assert!(
        described.contains("Successfully updated the desiredReplicationFactor to 2"),
        "{described}"
    );
    up.wait_for(
        "the removed CVR Offline",
        &[
            "get",
            "cvr",
            gone_cvr,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.phase}",
        ],
        |v| v == "Offline",
        long,
    );
    let (ok, out) = up.kubectl(&["delete", "cvr", gone_cvr, "-n", "openebs"]);
    assert!(ok, "delete the removed CVR: {out}");
    let (ok, out) = qemu_io(portal, iqn, &["write -P 0xc3 4M 4M", "read -P 0xa1 0 4M"]);
    assert!(ok, "I/O after the scale down: {out}\n{}", up.log());
    up.wait_for(
        "2 Healthy CVRs and a Healthy volume",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 3 && v.lines().count() == 3,
        long,
    );
}
