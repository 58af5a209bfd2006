//! End-to-end test of `cstor controller` against `cstor apiserver` with the real kubectl:
//! the seeds' YAML (read verbatim from docs/seeds/how-to-build-cstor-pools.md) applied,
//! the node agents simulated by writing Nodes, BlockDevices and CSPI/CV/CVR/CStorSnapshot
//! status with kubectl. Two controllers run; only the Lease holder acts, and the standby
//! takes over when the leader is killed. Fails without kubectl when CI is set.

mod apiserver_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::{kubectl_server, ApiServer};

/// Generous: the machine is loaded while tests run.
const WAIT: Duration = Duration::from_secs(90);

struct Controller(Option<Child>);

impl Controller {
    fn start(s: &ApiServer, identity: &str, log: &Path) -> Controller {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["controller", "--kubeconfig"])
            .arg(s.kubeconfig())
            .args([
                "--identity",
                identity,
                "--lease-duration",
                "3",
                "--interval-ms",
                "250",
                // No CSI driver runs here: the controller provisions claims itself.
                "--provision-without-csi",
            ])
            .env("RUST_LOG", "cstor_controller=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cstor controller");
        Controller(Some(child))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The YAML block of a seed that starts with the comment line `first`.
fn seed_block(seed: &str, first: &str) -> String {
    let path = format!("{}/../../docs/seeds/{seed}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(&format!("```yaml\n{first}\n"))
        .unwrap_or_else(|| panic!("{first} not in {path}"));
    let body = &text[start + "```yaml\n".len()..];
    body[..body.find("```").unwrap()].to_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Polls `f` until it returns Some, or panics with `what` and the last state.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(t) => return t,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; last: {last}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Waits until claim `ns/pvc` is Bound; returns its volume's name.
fn bound_volume(s: &ApiServer, ns: &str, pvc: &str, what: &str) -> String {
    wait_for(what, || {
        let t = get(
            s,
            &[
                "-n",
                ns,
                "get",
                "pvc",
                pvc,
                "-o",
                "jsonpath={.status.phase} {.spec.volumeName}",
            ],
        );
        match t.split_once(' ') {
            Some(("Bound", pv)) => Ok(pv.to_owned()),
            _ => Err(t),
        }
    })
}

fn get(s: &ApiServer, args: &[&str]) -> String {
    let out = s.kubectl(args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_patch(s: &ApiServer, kind: &str, name: &str, patch: &str) {
    s.ok(&[
        "patch",
        kind,
        name,
        "-n",
        "openebs",
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    ]);
}

/// What node agents do first: a Node with an InternalIP and a BlockDevice per disk.
fn register_node(s: &ApiServer, dir: &Path, node: &str, ip: &str, disks: &[&str]) {
    let mut y = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    kubernetes.io/hostname: {node}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    );
    for d in disks {
        y.push_str(&format!(
            "---\napiVersion: openebs.io/v1alpha1\nkind: BlockDevice\nmetadata:\n  name: {d}\n  namespace: openebs\n  labels:\n    kubernetes.io/hostname: {node}\nspec:\n  nodeAttributes:\n    nodeName: {node}\n  path: /dev/{d}\n  capacity:\n    storage: 536870912000\n"
        ));
    }
    s.ok(&["apply", "-f", &write(dir, &format!("{node}.yaml"), &y)]);
    // Node status is not a subresource write here: apply it through status.
    s.ok(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            "{{\"status\":{{\"addresses\":[{{\"type\":\"InternalIP\",\"address\":\"{ip}\"}}]}}}}"
        ),
    ]);
    for d in disks {
        status_patch(
            s,
            "blockdevice",
            d,
            r#"{"status":{"claimState":"Unclaimed","state":"Active"}}"#,
        );
    }
}

fn lines_with<'a>(table: &'a str, needle: &str) -> Vec<&'a str> {
    table.lines().filter(|l| l.contains(needle)).collect()
}

/// What the pool managers do: every CSPI of `cspc` ONLINE with capacity.
fn pools_online(s: &ApiServer, cspc: &str, count: usize) -> Vec<String> {
    let names = wait_for(&format!("CSPIs of {cspc}"), || {
        let out = get(
            s,
            &[
                "get",
                "cspi",
                "-n",
                "openebs",
                "-l",
                &format!("openebs.io/cstor-pool-cluster={cspc}"),
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        );
        let names: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        if names.len() < count {
            Err(out)
        } else {
            Ok(names)
        }
    });
    for n in &names {
        status_patch(
            s,
            "cspi",
            n,
            r#"{"status":{"phase":"ONLINE","readOnly":false,"provisionedReplicas":0,"healthyReplicas":0,"capacity":{"used":"1Gi","free":"499Gi","total":"500Gi"}}}"#,
        );
    }
    names
}

fn setup() -> Option<(tempfile::TempDir, ApiServer)> {
    kubectl_server()
}

#[test]
fn controller_drives_the_seed_workflow() {
    let Some((dir, s)) = setup() else { return };
    let d = dir.path();
    s.ok(&["create", "namespace", "openebs"]);
    register_node(
        &s,
        d,
        "worker-01",
        "127.0.0.2",
        &[
            "blockdevice-1a2b3c4d-5e6f-7g8h-9i0j-k1l2m3n4",
            "blockdevice-2b3c4d5e-6f7g-8h9i-0j1k-l2m3n4o5",
            "blockdevice-aaa111",
            "blockdevice-bbb222",
            "blockdevice-ccc333",
        ],
    );
    register_node(
        &s,
        d,
        "worker-02",
        "127.0.0.3",
        &[
            "blockdevice-3c4d5e6f-7g8h-9i0j-1k2l-m3n4o5p6",
            "blockdevice-4d5e6f7g-8h9i-0j1k-2l3m-n4o5p6q7",
            "blockdevice-ddd444",
            "blockdevice-eee555",
            "blockdevice-fff666",
        ],
    );
    register_node(
        &s,
        d,
        "worker-03",
        "127.0.0.4",
        &[
            "blockdevice-5e6f7g8h-9i0j-1k2l-3m4n-o5p6q7r8",
            "blockdevice-6f7g8h9i-0j1k-2l3m-4n5o-p6q7r8s9",
        ],
    );

    let mut one = Controller::start(&s, "ctrl-one", &d.join("ctrl-one.log"));
    let mut two = Controller::start(&s, "ctrl-two", &d.join("ctrl-two.log"));
    let leader = wait_for("a lease holder", || {
        let h = get(
            &s,
            &[
                "get",
                "lease",
                "cstor-controller",
                "-n",
                "openebs",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        if h.is_empty() {
            Err(h)
        } else {
            Ok(h)
        }
    });

    // Pools: the seed's stripe CSPC, verbatim.
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "cspc-stripe.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# cspc-stripe.yaml"),
        ),
    ]);
    let stripe = pools_online(&s, "cstor-pool-stripe", 3);
    assert_eq!(stripe.len(), 3, "{stripe:?}");
    let table = wait_for("CSPC healthy", || {
        let t = get(&s, &["-n", "openebs", "get", "cspc,cspi"]);
        let row = lines_with(&t, "cstorpoolcluster.cstor.openebs.io/cstor-pool-stripe").join("");
        if row.split_whitespace().take(4).collect::<Vec<_>>()[1..] == ["3", "3", "3"] {
            Ok(t)
        } else {
            Err(t)
        }
    });
    assert!(
        table.contains("HOSTNAME")
            && table.contains("PROVISIONEDREPLICAS")
            && table.contains("worker-02"),
        "{table}"
    );
    let bds = get(&s, &["get", "blockdevices", "-n", "openebs"]);
    assert_eq!(lines_with(&bds, "Claimed").len(), 3, "{bds}");
    assert!(
        bds.lines().next().unwrap().split_whitespace().eq([
            "NAME",
            "NODENAME",
            "SIZE",
            "CLAIMSTATE",
            "STATUS",
            "AGE"
        ]),
        "{bds}"
    );

    // A bad CSPC (a device on another node) is refused with the reason.
    let bad = "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolCluster\nmetadata:\n  name: bad\n  namespace: openebs\nspec:\n  pools:\n  - nodeSelector:\n      kubernetes.io/hostname: worker-03\n    dataRaidGroups:\n    - blockDevices:\n      - blockDeviceName: blockdevice-aaa111\n    poolConfig:\n      dataRaidGroupType: stripe\n";
    s.ok(&["apply", "-f", &write(d, "bad.yaml", bad)]);
    wait_for("the refusal event", || {
        let t = get(&s, &["describe", "cspc", "bad", "-n", "openebs"]);
        if t.contains("FailedValidation")
            && t.contains("on node worker-01, the pool on node worker-03")
        {
            Ok(())
        } else {
            Err(t)
        }
    });
    assert!(get(
        &s,
        &[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-l",
            "openebs.io/cstor-pool-cluster=bad",
            "-o",
            "name"
        ]
    )
    .trim()
    .is_empty());
    s.ok(&["delete", "cspc", "bad", "-n", "openebs"]);

    // The raidz CSPC (two pools), verbatim; a 3-replica class on it stays Pending.
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "cspc-raidz.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# cspc-raidz.yaml"),
        ),
    ]);
    assert_eq!(pools_online(&s, "cstor-pool-raidz", 2).len(), 2);

    // Provisioning: the seed's class and claim, verbatim.
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "sc.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# storageclass-cstor.yaml"),
        ),
    ]);
    s.ok(&["create", "namespace", "database"]);
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "postgres.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# postgres-cstor.yaml"),
        ),
    ]);
    let pv = bound_volume(&s, "database", "postgres-data", "the claim bound");
    let describe = get(&s, &["-n", "database", "describe", "pvc", "postgres-data"]);
    assert!(
        describe.contains("Waiting for CVC to be bound")
            && describe.contains("Successfully provisioned volume"),
        "{describe}"
    );
    let cvrs = get(
        &s,
        &[
            "get",
            "cvr",
            "-n",
            "openebs",
            "-l",
            &format!("openebs.io/persistent-volume={pv}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.replicaid}{\"\\n\"}{end}",
        ],
    );
    let cvrs: Vec<(String, String)> = cvrs
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(cvrs.len(), 3, "{cvrs:?}");
    for p in &stripe {
        assert!(
            cvrs.iter().any(|(n, _)| *n == format!("{pv}-{p}")),
            "a replica on each stripe pool: {cvrs:?}"
        );
    }
    let cv = get(&s, &["get", "cstorvolume", pv.as_str(), "-n", "openebs", "-o", "jsonpath={.spec.iqn} {.spec.targetPortal} {.spec.replicationFactor} {.spec.consistencyFactor} {.metadata.labels.cstor\\.openebs\\.io/target-node}"]);
    let f: Vec<&str> = cv.split_whitespace().collect();
    assert_eq!(f[0], format!("iqn.2016-09.com.openebs.cstor:{pv}"));
    assert!(
        f[1].starts_with("127.0.0.") && f[1].ends_with(":3260"),
        "{cv}"
    );
    assert_eq!(&f[2..4], ["3", "2"]);
    assert!(f[4].starts_with("worker-0"));
    // The controller's next pass after the CV exists says why it is not ready yet.
    wait_for("the VolumeNotReady event on the claim", || {
        let d = get(&s, &["describe", "pvc", "postgres-data", "-n", "database"]);
        if d.contains("Volume is not ready: Replicas yet to connect to controller") {
            Ok(())
        } else {
            Err(d)
        }
    });
    // The agent: target Healthy with all three replicas in its membership.
    let ids: Vec<String> = cvrs
        .iter()
        .map(|(_, id)| format!("\"{id}\":\"0\""))
        .collect();
    status_patch(&s, "cstorvolume", &pv, &format!("{{\"status\":{{\"phase\":\"Healthy\",\"capacity\":\"50Gi\",\"replicaDetails\":{{\"knownReplicas\":{{{}}}}}}}}}", ids.join(",")));
    for (n, _) in &cvrs {
        status_patch(&s, "cvr", n, r#"{"status":{"phase":"Healthy"}}"#);
    }
    let vols = get(&s, &["get", "cstorvolume", "-n", "openebs"]);
    assert!(
        lines_with(&vols, &pv)[0].contains("Healthy") && vols.contains("CAPACITY"),
        "{vols}"
    );

    // More replicas than healthy pools: Pending, with the reason on the claim.
    let sc3 = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: raidz-3\nprovisioner: cstor.csi.openebs.io\nparameters:\n  cas-type: cstor\n  cstorPoolCluster: cstor-pool-raidz\n  replicaCount: \"3\"\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: too-many\n  namespace: database\nspec:\n  storageClassName: raidz-3\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n";
    s.ok(&["apply", "-f", &write(d, "too-many.yaml", sc3)]);
    wait_for("the placement failure event", || {
        let t = get(&s, &["describe", "pvc", "too-many", "-n", "database"]);
        if t.contains("ProvisioningFailed") && t.contains("3 replica(s) asked for but only 2") {
            Ok(())
        } else {
            Err(t)
        }
    });
    assert!(get(&s, &["get", "pvc", "too-many", "-n", "database"]).contains("Pending"));
    s.ok(&["delete", "pvc", "too-many", "-n", "database"]);

    // Leader election: kill the leader; the standby takes the lease over and carries on.
    let (dead, standby) = if leader == "ctrl-one" {
        (&mut one, "ctrl-two")
    } else {
        (&mut two, "ctrl-one")
    };
    dead.kill();
    wait_for("the standby to lead", || {
        let h = get(
            &s,
            &[
                "get",
                "lease",
                "cstor-controller",
                "-n",
                "openebs",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        if h == standby {
            Ok(())
        } else {
            Err(h)
        }
    });

    // Snapshot and restore, the seed's YAML verbatim.
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "vsclass.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# snapshotclass-cstor.yaml"),
        ),
    ]);
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "vs.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# snapshot-postgres.yaml"),
        ),
    ]);
    let snap = wait_for("the CStorSnapshot", || {
        let t = get(
            &s,
            &[
                "get",
                "cstorsnapshot",
                "-n",
                "openebs",
                "-o",
                "jsonpath={.items[0].metadata.name} {.items[0].spec.volumeName}",
            ],
        );
        match t.split_once(' ') {
            Some((n, v)) if v == pv => Ok(n.to_owned()),
            _ => Err(t),
        }
    });
    assert!(get(
        &s,
        &[
            "get",
            "volumesnapshot",
            "-n",
            "database",
            "-o",
            "jsonpath={.items[0].status.readyToUse}"
        ]
    )
    .contains("false"));
    // The agent hosting the target took it.
    status_patch(
        &s,
        "cstorsnapshot",
        &snap,
        r#"{"status":{"phase":"Ready","readyToUse":true,"io":42,"restoreSize":"50Gi","creationTime":"2026-12-02T06:00:00Z"}}"#,
    );
    wait_for("readyToUse", || {
        let t = get(
            &s,
            &[
                "get",
                "volumesnapshot",
                "postgres-snapshot-daily",
                "-n",
                "database",
                "-o",
                "jsonpath={.status.readyToUse} {.status.boundVolumeSnapshotContentName}",
            ],
        );
        if t.starts_with("true snapcontent-") {
            Ok(())
        } else {
            Err(t)
        }
    });
    assert!(get(
        &s,
        &[
            "get",
            "volumesnapshotcontent",
            "-o",
            "jsonpath={.items[0].status.snapshotHandle}"
        ]
    )
    .contains(&format!("{pv}@{snap}")));
    s.ok(&[
        "apply",
        "-f",
        &write(
            d,
            "restore.yaml",
            &seed_block("how-to-build-cstor-pools.md", "# pvc-from-snapshot.yaml"),
        ),
    ]);
    let restored = bound_volume(&s, "database", "postgres-restored", "the restore bound");
    let src = get(
        &s,
        &[
            "get",
            "cvc",
            restored.as_str(),
            "-n",
            "openebs",
            "-o",
            "jsonpath={.spec.cstorVolumeSource}",
        ],
    );
    assert_eq!(src, format!("{pv}@{snap}"));
    let clones = get(
        &s,
        &[
            "get",
            "cvr",
            "-n",
            "openebs",
            "-l",
            &format!("openebs.io/persistent-volume={restored},openebs.io/cloned=true"),
            "-o",
            "name",
        ],
    );
    assert_eq!(clones.lines().count(), 3, "{clones}");

    // Online expansion: the seed's patch.
    s.ok(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"100Gi"}}}}"#,
    ]);
    wait_for("CV spec capacity", || {
        let t = get(
            &s,
            &[
                "get",
                "cstorvolume",
                pv.as_str(),
                "-n",
                "openebs",
                "-o",
                "jsonpath={.spec.capacity}",
            ],
        );
        if t == "100Gi" {
            Ok(())
        } else {
            Err(t)
        }
    });
    status_patch(&s, "cstorvolume", &pv, r#"{"status":{"capacity":"100Gi"}}"#);
    wait_for("PVC capacity", || {
        let t = get(
            &s,
            &[
                "get",
                "pvc",
                "postgres-data",
                "-n",
                "database",
                "-o",
                "jsonpath={.status.capacity.storage}",
            ],
        );
        if t == "100Gi" {
            Ok(())
        } else {
            Err(t)
        }
    });

    // Scale down per the alpha seed: drop one id from spec.knownReplicas, drf 3 -> 2.
    let (gone_cvr, gone_id) = cvrs[0].clone();
    s.ok(&["patch", "cstorvolume", pv.as_str(), "-n", "openebs", "--type=merge", "-p", &format!("{{\"spec\":{{\"desiredReplicationFactor\":2,\"replicaDetails\":{{\"knownReplicas\":{{\"{gone_id}\":null}}}}}}}}")]);
    // The target applies it.
    let left: Vec<String> = cvrs[1..]
        .iter()
        .map(|(_, id)| format!("\"{id}\":\"0\""))
        .collect();
    s.ok(&[
        "patch",
        "cstorvolume",
        pv.as_str(),
        "-n",
        "openebs",
        "--subresource=status",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/status/replicaDetails"}]"#,
    ]);
    status_patch(
        &s,
        "cstorvolume",
        &pv,
        &format!(
            "{{\"status\":{{\"replicaDetails\":{{\"knownReplicas\":{{{}}}}}}}}}",
            left.join(",")
        ),
    );
    status_patch(&s, "cvr", &gone_cvr, r#"{"status":{"phase":"Offline"}}"#);
    wait_for("replicationFactor 2 and the event", || {
        let rf = get(
            &s,
            &[
                "get",
                "cstorvolume",
                pv.as_str(),
                "-n",
                "openebs",
                "-o",
                "jsonpath={.spec.replicationFactor}",
            ],
        );
        let t = get(
            &s,
            &["describe", "cstorvolume", pv.as_str(), "-n", "openebs"],
        );
        if rf == "2" && t.contains("Successfully updated the desiredReplicationFactor to 2") {
            Ok(())
        } else {
            Err(format!("rf {rf}: {t}"))
        }
    });
    s.ok(&["delete", "cvr", gone_cvr.as_str(), "-n", "openebs"]);
    wait_for("poolInfo of 2", || {
        let t = get(
            &s,
            &[
                "get",
                "cvc",
                pv.as_str(),
                "-n",
                "openebs",
                "-o",
                "jsonpath={.status.poolInfo}",
            ],
        );
        if t.matches("cstor-pool-stripe").count() == 2 {
            Ok(())
        } else {
            Err(t)
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        get(
            &s,
            &[
                "get",
                "cvr",
                gone_cvr.as_str(),
                "-n",
                "openebs",
                "-o",
                "name"
            ]
        )
        .trim()
        .is_empty(),
        "not recreated"
    );

    // Deleting the CSPC while volumes use it is refused with the reason.
    s.ok(&[
        "delete",
        "cspc",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "--wait=false",
    ]);
    wait_for("the deletion refusal", || {
        let t = get(
            &s,
            &["describe", "cspc", "cstor-pool-stripe", "-n", "openebs"],
        );
        if t.contains("DeletionRefused") && t.contains(&pv) {
            Ok(())
        } else {
            Err(t)
        }
    });
    assert_eq!(
        get(
            &s,
            &[
                "get",
                "cspi",
                "-n",
                "openebs",
                "-l",
                "openebs.io/cstor-pool-cluster=cstor-pool-stripe",
                "-o",
                "name"
            ]
        )
        .lines()
        .count(),
        3
    );

    // Deleting the claims (reclaim Delete) removes PV, CVC, CV and CVRs; then the CSPC goes.
    s.ok(&[
        "delete",
        "pvc",
        "postgres-data",
        "postgres-restored",
        "-n",
        "database",
        "--wait=false",
    ]);
    wait_for("volumes gone", || {
        let t = get(&s, &["get", "pv,cvc,cv,cvr", "-A", "-o", "name"]);
        if t.trim().is_empty() {
            Ok(())
        } else {
            Err(t)
        }
    });
    wait_for("the CSPC and its pools gone", || {
        let t = get(&s, &["get", "cspc,cspi,bdc", "-n", "openebs", "-o", "name"]);
        if !t.contains("cstor-pool-stripe")
            && t.lines()
                .filter(|l| l.contains("cstorpoolinstance"))
                .count()
                == 2
        {
            Ok(())
        } else {
            Err(t)
        }
    });
    wait_for("devices released", || {
        let t = get(&s, &["get", "blockdevices", "-n", "openebs"]);
        if lines_with(&t, "Claimed").len() == 6 {
            Ok(())
        } else {
            Err(t)
        }
    });
}
