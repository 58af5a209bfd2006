//! The seed's workflow (docs/seeds/how-to-build-cstor-pools.md) through `cstor up`, with
//! the seed's own YAML: the stripe CStorPoolCluster (its block device names and hostnames
//! replaced by this machine's), the 3-replica StorageClass and the PostgreSQL claim; the
//! pools go ONLINE, the claim binds, the volume turns Healthy with three Healthy replicas,
//! takes writes through its iSCSI portal (the largest transfer too), stays writable while
//! a replica's node is down, catches that replica up when it returns, and reads back.

mod apiserver_support;

use std::process::Command;
use std::time::Duration;

use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

const SEED: &str = include_str!("../../../docs/seeds/how-to-build-cstor-pools.md");

/// The seed's ```yaml block that contains `needle`.
fn seed_yaml(needle: &str) -> String {
    SEED.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("no yaml block with {needle:?} in the seed"))
        .to_string()
}

fn qemu_io(portal: &str, iqn: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.arg("60").arg("qemu-io").args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(format!("iscsi://{portal}/{iqn}/0"));
    let out = c.output().expect("run qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io exits 0 even when a command fails; its failures say so.
    let failed = text.contains("failed") || text.contains("Pattern verification");
    (out.status.success() && !failed, text)
}

fn count(out: &str, word: &str) -> usize {
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == word))
        .count()
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
    let mut cspc = seed_yaml("name: cstor-pool-stripe");
    let placeholders: Vec<String> = cspc
        .split("blockDeviceName: \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect();
    assert_eq!(placeholders.len(), 3, "the seed's stripe CSPC changed");
    for (i, old) in placeholders.iter().enumerate() {
        let node = format!("node-{}", i + 1);
        let bd = up.wait_for(
            "a BlockDevice per node",
            &[
                "get",
                "bd",
                "-n",
                "openebs",
                "-l",
                &format!("kubernetes.io/hostname={node}"),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            |v| v.starts_with("blockdevice-"),
            long,
        );
        cspc = cspc
            .replace(old.as_str(), &bd)
            .replace(&format!("worker-0{}", i + 1), &node);
    }
    let f = up.dir.join("cspc.yaml");
    std::fs::write(&f, &cspc).unwrap();
    let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply cspc: {out}");
    up.wait_for(
        "3 CSPIs ONLINE",
        &["get", "cspi", "-n", "openebs", "--no-headers"],
        |v| count(v, "ONLINE") == 3,
        long,
    );
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
