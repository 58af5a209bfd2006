//! A replacement replica end to end: `cstor up` with four nodes and a 5 s
//! `--replica-replace-grace`, the seed's stripe pools on nodes 1-3 and its 3-replica
//! claim, data written through the target's portal, a fourth pool added on node-4 (the
//! seed's CSPC edit), then a replica's node (not the target's) stopped.
//!
//! Shown: past the grace the controller places a new replica on node-4's pool (Event
//! ReplicaReplaced), the target removes the lost one from its membership and rebuilds the
//! new one (its CVR turns Healthy), the lost CVR is deleted, the volume is Healthy with 3
//! Healthy replicas again, and the data reads back through the portal.

mod apiserver_support;

use std::process::Command;
use std::time::{Duration, Instant};

use apiserver_support::claim::wait_healthy;
use apiserver_support::seed::{count, qemu_io};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

#[test]
fn a_replica_on_a_lost_node_is_replaced_on_another_pool_and_rebuilt() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    let t_test = Instant::now();
    let up = Up::start_with(4, "256M", &["--replica-replace-grace", "5s"]);
    let long = Duration::from_secs(90);
    up.seed_stripe_pools(long);
    apiserver_support::claim::apply_claim(&up);
    wait_healthy(&up, long);
    let (_, cv) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[0].spec.iqn} {.items[0].spec.targetPortal} {.items[0].metadata.labels.cstor\\.openebs\\.io/target-node}",
    ]);
    let parts: Vec<&str> = cv.split_whitespace().collect();
    let [iqn, portal, target] = parts[..] else {
        panic!("CV iqn/portal/target-node: {cv:?}");
    };
    let (ok, out) = qemu_io(
        portal,
        iqn,
        &["write -P 0x5a 0 16M", "write -P 0xa5 16M 4M"],
    );
    assert!(ok, "write: {out}");

    // The seed's way to add a pool: a fourth entry in the CSPC, on node-4's device.
    let bd = up.block_device("node-4", long);
    let patch = format!(
        r#"[{{"op":"add","path":"/spec/pools/-","value":{{"nodeSelector":{{"kubernetes.io/hostname":"node-4"}},"dataRaidGroups":[{{"blockDevices":[{{"blockDeviceName":"{bd}"}}]}}],"poolConfig":{{"dataRaidGroupType":"stripe"}}}}}}]"#
    );
    let (ok, out) = up.kubectl(&[
        "patch",
        "cspc",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "--type",
        "json",
        "-p",
        &patch,
    ]);
    assert!(ok, "add a pool: {out}");
    up.wait_for(
        "4 CSPIs ONLINE",
        &["get", "cspi", "-n", "openebs", "--no-headers"],
        |v| count(v, "ONLINE") == 4,
        long,
    );

    let lose = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| *n != target)
        .unwrap();
    let cspi_of = |node: &str| {
        let (ok, v) = up.kubectl(&[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-l",
            &format!("kubernetes.io/hostname={node}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]);
        assert!(ok && !v.trim().is_empty(), "CSPI of {node}: {v}");
        v.trim().to_owned()
    };
    let lost_pool = cspi_of(lose);
    let (ok, lost_cvr) = up.kubectl(&[
        "get",
        "cvr",
        "-n",
        "openebs",
        "-l",
        &format!("openebs.io/cstor-pool-instance={lost_pool}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let lost_cvr = lost_cvr.trim().to_owned();
    assert!(
        ok && !lost_cvr.is_empty(),
        "the lost node's CVR: {lost_cvr}"
    );
    let t0 = Instant::now();
    up.node("stop", lose);
    let events = up.wait_for(
        "a replacement replica placed",
        &["get", "events", "-n", "openebs"],
        |v| v.contains("ReplicaReplaced"),
        Duration::from_secs(60),
    );
    assert!(events.contains("with a new one on"), "{events}");
    let placed = t0.elapsed();
    let new_pool = cspi_of("node-4");
    up.wait_for(
        "the new replica rebuilt and the lost CVR deleted",
        &[
            "get",
            "cvr",
            "-n",
            "openebs",
            "-o",
            "jsonpath={range .items[*]}{.metadata.labels.openebs\\.io/cstor-pool-instance} {.status.phase}{\"\\n\"}{end}",
        ],
        |v| {
            count(v, "Healthy") == 3
                && v.lines().count() == 3
                && v.contains(&format!("{new_pool} Healthy"))
                && !v.contains(&lost_pool)
        },
        long,
    );
    let rebuilt = t0.elapsed();
    let (ok, gone) = up.kubectl(&["get", "cvr", "-n", "openebs", &lost_cvr]);
    assert!(!ok && gone.contains("NotFound"), "{gone}");
    wait_healthy(&up, long);
    let (ok, out) = qemu_io(portal, iqn, &["read -P 0x5a 0 16M", "read -P 0xa5 16M 4M"]);
    assert!(
        ok && !out.contains("Pattern verification failed"),
        "read: {out}"
    );
    eprintln!(
        "replacement placed {placed:?} after the node loss, rebuilt and lost CVR gone by {rebuilt:?}; test took {:?}",
        t_test.elapsed()
    );
    up.node("start", lose);
}
