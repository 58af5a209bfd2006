//! The seed's pool maintenance (docs/seeds/how-to-build-cstor-pools.md "Pool Maintenance
//! Operations") through `cstor up` and kubectl, on pools that hold a volume's data:
//! - the seed's stripe CSPC, "Adding Devices to an Existing Pool": a block device appended
//!   to the stripe raid group of the pool holding a 1-replica volume's replica; the pool's
//!   capacity grows, the data written before reads back and new data goes in;
//! - replacing a device of the stripe pool is refused with an event, nothing changed (no
//!   redundancy to rebuild from);
//! - the seed's mirror CSPC (its worker-02 pool): a new mirror raid group added (capacity
//!   grows), then "Replacing a Failed Disk": a disk whose BlockDevice went Inactive (its
//!   file deleted) is swapped for another in the CSPC; the node agent replaces it in the
//!   pool and resilvers the live data, the CSPI shows DiskReplacement and ends ONLINE, the
//!   old device's claim is released, and the volume's data reads back through its portal;
//! - the claim deleted (reclaim Delete): its replica's volume goes from the pool.

mod apiserver_support;

use std::process::Command;
use std::time::Duration;

use apiserver_support::seed::{count, pool_volumes, qemu_io, seed_yaml};
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

/// Node `node`'s BlockDevices as (name, path), in disk order (disk-1.img, disk-2.img, ...).
fn disks(up: &Up, node: &str, n: usize) -> Vec<(String, String)> {
    let out = up.wait_for(
        "every disk of the node as a BlockDevice",
        &[
            "get",
            "bd",
            "-n",
            "openebs",
            "-l",
            &format!("kubernetes.io/hostname={node}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.path}{\"\\n\"}{end}",
        ],
        |v| v.lines().count() == n,
        Duration::from_secs(60),
    );
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort_by_key(|(_, p)| {
        p.rsplit("disk-")
            .next()
            .and_then(|s| s.trim_end_matches(".img").parse::<u32>().ok())
            .unwrap_or(0)
    });
    v
}

fn apply(up: &Up, file: &str, yaml: &str) {
    let f = up.dir.join(file);
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply {file}: {out}\n{yaml}");
}

fn json_patch(up: &Up, kind: &str, name: &str, patch: &str) -> (bool, String) {
    up.kubectl(&[
        "patch",
        kind,
        name,
        "-n",
        "openebs",
        "--type=json",
        "-p",
        patch,
    ])
}

/// The seed's 1-replica StorageClass, on `cspc`, named `name`.
fn one_replica_class(name: &str, cspc: &str) -> String {
    seed_yaml("name: cstor-csi-1-replica")
        .split("\n---\n")
        .next()
        .unwrap()
        .replace("name: cstor-csi-1-replica", &format!("name: {name}"))
        .replace(
            "cstorPoolCluster: cstor-pool-stripe",
            &format!("cstorPoolCluster: {cspc}"),
        )
}

/// A claim of class `class` in `default`, waited for Bound: (iqn, portal, cspi of its replica).
fn volume(up: &Up, claim: &str, class: &str) -> (String, String, String) {
    let pvc = format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {claim}\nspec:\n  storageClassName: {class}\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n"
    );
    apply(up, &format!("{claim}.yaml"), &pvc);
    let long = Duration::from_secs(90);
    let pv = up.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            claim,
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        long,
    );
    let pv = pv.split_whitespace().nth(1).unwrap().to_string();
    up.wait_for(
        "the volume Healthy",
        &["get", "cv", &pv, "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 1,
        long,
    );
    let (_, cv) = up.kubectl(&[
        "get",
        "cv",
        &pv,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.iqn} {.spec.targetPortal}",
    ]);
    let (_, cspi) = up.kubectl(&[
        "get",
        "cvr",
        "-n",
        "openebs",
        "-l",
        &format!("openebs.io/persistent-volume={pv}"),
        "-o",
        "jsonpath={.items[0].metadata.labels.openebs\\.io/cstor-pool-instance}",
    ]);
    let (iqn, portal) = cv.split_once(' ').expect("CV iqn and portal");
    (iqn.to_string(), portal.to_string(), cspi)
}

fn cspi_field(up: &Up, cspi: &str, path: &str) -> String {
    up.kubectl(&[
        "get",
        "cspi",
        cspi,
        "-n",
        "openebs",
        "-o",
        &format!("jsonpath={path}"),
    ])
    .1
}

fn bytes(q: &str) -> f64 {
    let (n, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let m = match unit {
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    n.parse::<f64>().unwrap_or(0.0) * m
}

/// Waits for the CSPI's total capacity above `than` and its PoolExpansion condition.
fn wait_grown(up: &Up, cspi: &str, than: &str) -> String {
    let long = Duration::from_secs(60);
    up.wait_for(
        "the pool's capacity grown",
        &[
            "get",
            "cspi",
            cspi,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.capacity.total}",
        ],
        |v| bytes(v) > bytes(than) * 1.5,
        long,
    );
    up.wait_for(
        "condition PoolExpansion successful",
        &[
            "get",
            "cspi",
            cspi,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PoolExpansion\")].reason}",
        ],
        |v| v == "PoolExpansionSuccessful",
        long,
    )
}

#[test]
fn seed_pool_maintenance_adds_devices_and_raid_groups_and_replaces_a_failed_disk() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    // disk-1: stripe; disk-2: appended to a stripe pool; disk-3/4: mirror; disk-5/6: the
    // added mirror group; disk-7: the replacement.
    let up = Up::start_disks(3, 7, "256M", &[]);
    let long = Duration::from_secs(90);
    let nodes = ["node-1", "node-2", "node-3"];
    let bds: Vec<Vec<(String, String)>> = nodes.iter().map(|n| disks(&up, n, 7)).collect();

    // The seed's stripe CSPC, disk-1 of node i for worker-0i.
    let mut cspc = seed_yaml("name: cstor-pool-stripe");
    let placeholders: Vec<String> = cspc
        .split("blockDeviceName: \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect();
    for (i, old) in placeholders.iter().enumerate() {
        cspc = cspc
            .replace(old.as_str(), &bds[i][0].0)
            .replace(&format!("worker-0{}", i + 1), nodes[i]);
    }
    apply(&up, "stripe.yaml", &cspc);
    up.wait_for(
        "3 CSPIs ONLINE",
        &["get", "cspi", "-n", "openebs", "--no-headers"],
        |v| count(v, "ONLINE") == 3,
        long,
    );
    apply(
        &up,
        "sc1.yaml",
        &one_replica_class("stripe-1", "cstor-pool-stripe"),
    );
    let (iqn, portal, cspi) = volume(&up, "on-stripe", "stripe-1");
    let (ok, out) = qemu_io(&portal, &iqn, &["write -P 0xab 0 16M"]);
    assert!(ok, "write: {out}\n{}", up.log());

    // "Adding Devices to an Existing Pool": disk-2 appended to the stripe group of the
    // pool that holds the replica.
    let node = cspi_field(&up, &cspi, "{.spec.hostName}");
    let i = nodes.iter().position(|n| *n == node).expect("replica node");
    let before = cspi_field(&up, &cspi, "{.status.capacity.total}");
    let patch = format!(
        r#"[{{"op":"add","path":"/spec/pools/{i}/dataRaidGroups/0/blockDevices/-","value":{{"blockDeviceName":"{}"}}}}]"#,
        bds[i][1].0
    );
    let (ok, out) = json_patch(&up, "cspc", "cstor-pool-stripe", &patch);
    assert!(ok, "append a device: {out}");
    wait_grown(&up, &cspi, &before);
    let (ok, out) = qemu_io(
        &portal,
        &iqn,
        &[
            "read -P 0xab 0 16M",
            "write -P 0xcd 16M 64M",
            "read -P 0xcd 16M 64M",
        ],
    );
    assert!(ok, "I/O on the grown stripe pool: {out}\n{}", up.log());
    up.wait_for(
        "the appended device claimed",
        &[
            "get",
            "bd",
            &bds[i][1].0,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.claimState}",
        ],
        |v| v == "Claimed",
        long,
    );

    // Replacing a device of a stripe pool is refused: nothing could rebuild it.
    let j = (i + 1) % 3;
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/pools/{j}/dataRaidGroups/0/blockDevices/0/blockDeviceName","value":"{}"}}]"#,
        bds[j][6].0
    );
    let (ok, out) = json_patch(&up, "cspc", "cstor-pool-stripe", &patch);
    assert!(ok, "{out}");
    up.wait_for(
        "the stripe replace refused",
        &[
            "get",
            "events",
            "-n",
            "openebs",
            "--field-selector",
            "involvedObject.name=cstor-pool-stripe,reason=FailedValidation",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        |v| v.contains("cannot be removed or replaced"),
        long,
    );
    let (_, claim) = up.kubectl(&[
        "get",
        "bd",
        &bds[j][0].0,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.status.claimState}",
    ]);
    assert_eq!(
        claim, "Claimed",
        "the refused edit released the stripe device"
    );
    let patch = patch.replace(&bds[j][6].0, &bds[j][0].0);
    let (ok, out) = json_patch(&up, "cspc", "cstor-pool-stripe", &patch);
    assert!(ok, "undo: {out}");

    // The seed's mirror CSPC, its worker-02 pool on node-2's disk-3 and disk-4.
    let mirror = seed_yaml("name: cstor-pool-mirror");
    let (head, rest) = mirror.split_at(mirror.find("    - nodeSelector:").unwrap());
    let second = rest
        .split("    - nodeSelector:")
        .find(|p| p.contains("worker-02"))
        .unwrap();
    let names: Vec<&str> = second
        .split("blockDeviceName: \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    let n2 = &bds[1];
    let doc = format!("{head}    - nodeSelector:{second}")
        .replace("worker-02", "node-2")
        .replace(names[0], &n2[2].0)
        .replace(names[1], &n2[3].0);
    apply(&up, "mirror.yaml", &doc);
    let mcspi = up.wait_for(
        "the mirror CSPI ONLINE",
        &[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-l",
            "openebs.io/cstor-pool-cluster=cstor-pool-mirror",
            "-o",
            "jsonpath={.items[0].metadata.name} {.items[0].status.phase}",
        ],
        |v| v.ends_with(" ONLINE"),
        long,
    );
    let mcspi = mcspi.split_whitespace().next().unwrap().to_string();
    apply(
        &up,
        "sc2.yaml",
        &one_replica_class("mirror-1", "cstor-pool-mirror"),
    );
    let (iqn, portal, on) = volume(&up, "on-mirror", "mirror-1");
    assert_eq!(on, mcspi);
    let (ok, out) = qemu_io(&portal, &iqn, &["write -P 0x5a 0 96M"]);
    assert!(ok, "write on the mirror: {out}\n{}", up.log());

    // A new mirror raid group of disk-5 and disk-6.
    let before = cspi_field(&up, &mcspi, "{.status.capacity.total}");
    let patch = format!(
        r#"[{{"op":"add","path":"/spec/pools/0/dataRaidGroups/-","value":{{"blockDevices":[{{"blockDeviceName":"{}"}},{{"blockDeviceName":"{}"}}]}}}}]"#,
        n2[4].0, n2[5].0
    );
    let (ok, out) = json_patch(&up, "cspc", "cstor-pool-mirror", &patch);
    assert!(ok, "add a raid group: {out}");
    wait_grown(&up, &mcspi, &before);

    // "Replacing a Failed Disk": disk-3's file goes, its BlockDevice turns Inactive (the
    // seed's `grep -v Active`), and the CSPC names disk-7 in its place.
    std::fs::remove_file(&n2[2].1).unwrap();
    up.wait_for(
        "the failed disk's BlockDevice Inactive",
        &[
            "get",
            "bd",
            &n2[2].0,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.state}",
        ],
        |v| v == "Inactive",
        long,
    );
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/pools/0/dataRaidGroups/0/blockDevices/0/blockDeviceName","value":"{}"}}]"#,
        n2[6].0
    );
    let (ok, out) = json_patch(&up, "cspc", "cstor-pool-mirror", &patch);
    assert!(ok, "replace the failed disk: {out}");
    up.wait_for(
        "the replacement resilvered",
        &[
            "get",
            "cspi",
            &mcspi,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"DiskReplacement\")].reason} {.status.phase}",
        ],
        |v| v == "BlockDeviceReplacementSucceeded ONLINE",
        long,
    );
    let (_, events) = up.kubectl(&[
        "get",
        "events",
        "-n",
        "openebs",
        "--field-selector",
        &format!("involvedObject.name={mcspi}"),
    ]);
    assert!(
        events.contains("BlockDeviceReplacementInprogress")
            && events.contains(&format!(
                "Resilvering blockdevice {} replacing {}",
                n2[6].0, n2[2].0
            )),
        "{events}"
    );
    up.wait_for(
        "the failed disk released, its replacement claimed",
        &[
            "get",
            "bd",
            &n2[2].0,
            &n2[6].0,
            "-n",
            "openebs",
            "-o",
            "jsonpath={.items[*].status.claimState}",
        ],
        |v| v == "Released Claimed",
        long,
    );
    let (ok, out) = qemu_io(&portal, &iqn, &["read -P 0x5a 0 96M"]);
    assert!(ok, "read back after the replacement: {out}\n{}", up.log());

    // Reclaim Delete: the claim deleted, its replica's pool volume goes from the pool.
    assert_eq!(pool_volumes(&up, "node-2", &mcspi).len(), 1);
    let (ok, out) = up.kubectl(&["delete", "pvc", "on-mirror"]);
    assert!(ok, "{out}");
    let t0 = std::time::Instant::now();
    while !pool_volumes(&up, "node-2", &mcspi).is_empty() {
        assert!(
            t0.elapsed() < long,
            "pool volume left after the claim's delete\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
