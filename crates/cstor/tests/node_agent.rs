//! `cstor node` end to end against `cstor apiserver`, with kubectl and qemu-io: three node
//! agents on their own loopback addresses register Nodes, heartbeat Leases and publish
//! their disks as BlockDevices (one turns Inactive when its file goes); CSPIs created
//! with kubectl (as the controller would) become ONLINE pools with replica endpoints;
//! a CStorVolume placed on node-1 with three CVRs becomes a Healthy replicated target
//! whose portal serves data that reads back; killing node-3's agent makes the volume
//! Degraded and its CVR Offline, and restarting it brings both back to Healthy with the
//! data intact; SIGTERM stops every agent cleanly.

mod apiserver_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::{free_port, have_kubectl, required, ApiServer};

/// A `cstor node` process, killed on drop.
struct Agent {
    name: String,
    ip: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn start(
        name: &str,
        ip: &str,
        kubeconfig: &Path,
        disks: &[PathBuf],
        home: &Path,
        log: &Path,
    ) -> Agent {
        let mut args = vec![
            "node".to_string(),
            "--name".into(),
            name.into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--address".into(),
            ip.into(),
            "--home".into(),
            home.display().to_string(),
            "--resync".into(),
            "1".into(),
        ];
        for d in disks {
            args.push("--disk".into());
            args.push(d.display().to_string());
        }
        let mut a = Agent {
            name: name.into(),
            ip: ip.into(),
            args,
            log: log.to_path_buf(),
            child: None,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(&self.args)
            .env("RUST_LOG", "cstor_agent=info,cstor_replication=info")
            .env("CSTOR_CACHE_SIZE", "16M")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cstor node");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns whether it exited 0 within `within`.
    fn term(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if let Some(s) = c.try_wait().unwrap() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn get(s: &ApiServer, args: &[&str]) -> String {
    let out = s.kubectl(args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `kubectl get ... -o jsonpath=PATH` until `ok` holds.
fn wait_for(
    s: &ApiServer,
    what: &str,
    args: &[&str],
    ok: impl Fn(&str) -> bool,
    limit: Duration,
    logs: &[(String, PathBuf)],
) -> String {
    let t0 = Instant::now();
    loop {
        let v = get(s, args);
        if ok(&v) {
            return v;
        }
        if t0.elapsed() > limit {
            let mut tail = String::new();
            for (name, log) in logs {
                let l = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = l.lines().collect();
                let from = lines.len().saturating_sub(30);
                tail += &format!("\n--- {} ---\n{}", name, lines[from..].join("\n"));
            }
            panic!("{what}: still {v:?} after {limit:?}{tail}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn apply(s: &ApiServer, dir: &Path, name: &str, yaml: &str) {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).unwrap();
    s.ok(&["apply", "-f", &f.display().to_string()]);
}

fn qemu_io(portal: &str, iqn: &str, cmds: &[&str]) -> std::process::Output {
    let mut c = Command::new("timeout");
    c.arg("60").arg("qemu-io").args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(format!("iscsi://{portal}/{iqn}/0"));
    c.output().expect("run qemu-io")
}

fn subnet() -> String {
    // A /24 of 127/8 of our own, so portals on :3260 do not meet another test's.
    let n = std::process::id() ^ (free_port() as u32);
    format!("127.{}.{}", 10 + n % 200, 1 + (n / 200) % 250)
}

#[test]
fn agents_serve_pools_replicas_and_a_target() {
    let have_qemu_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !required(have_kubectl() && have_qemu_io, "kubectl or qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = ApiServer::start(&d.join("api"), free_port());
    let kc = s.kubeconfig();
    s.ok(&["create", "namespace", "openebs"]);
    s.ok(&[
        "-n",
        "openebs",
        "create",
        "secret",
        "generic",
        "cstor-replica-auth",
        "--from-literal=key=0123456789abcdef0123456789abcdef",
    ]);
    let net = subnet();
    let mut agents = Vec::new();
    for i in 1..=3 {
        let nd = d.join(format!("node-{i}"));
        std::fs::create_dir_all(&nd).unwrap();
        let mut disks = Vec::new();
        for k in 0..if i == 1 { 2 } else { 1 } {
            let p = nd.join(format!("disk{k}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(256 << 20)
                .unwrap();
            disks.push(p);
        }
        agents.push(Agent::start(
            &format!("node-{i}"),
            &format!("{net}.{}", i + 1),
            &kc,
            &disks,
            &nd.join("home"),
            &d.join(format!("node-{i}.log")),
        ));
    }
    let all: Vec<(String, PathBuf)> = agents
        .iter()
        .map(|a| (a.name.clone(), a.log.clone()))
        .collect();
    let long = Duration::from_secs(90);

    // 1. Nodes, Leases, BlockDevices with the seed's columns.
    for a in &agents {
        wait_for(
            &s,
            "node address",
            &[
                "get",
                "node",
                &a.name,
                "-o",
                "jsonpath={.status.addresses[0].address}",
            ],
            |v| v == a.ip,
            long,
            &all,
        );
        wait_for(
            &s,
            "lease",
            &[
                "-n",
                "openebs",
                "get",
                "lease",
                &format!("cstor-node-{}", a.name),
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            |v| v == a.name,
            long,
            &all,
        );
    }
    let bds = |node: &str| {
        get(
            &s,
            &[
                "-n",
                "openebs",
                "get",
                "bd",
                "-l",
                &format!("kubernetes.io/hostname={node}"),
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
    };
    wait_for(
        &s,
        "node-1 bds",
        &[
            "-n",
            "openebs",
            "get",
            "bd",
            "-l",
            "kubernetes.io/hostname=node-1",
            "-o",
            "jsonpath={.items[*].status.state}",
        ],
        |v| v == "Active Active",
        long,
        &all,
    );
    for n in ["node-2", "node-3"] {
        wait_for(
            &s,
            "bds",
            &[
                "-n",
                "openebs",
                "get",
                "bd",
                "-l",
                &format!("kubernetes.io/hostname={n}"),
                "-o",
                "jsonpath={.items[*].status.claimState}",
            ],
            |v| v == "Unclaimed",
            long,
            &all,
        );
    }
    let table = s.ok(&["-n", "openebs", "get", "bd"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "NODENAME", "SIZE", "CLAIMSTATE", "STATUS", "AGE"],
        "{table}"
    );
    assert!(table.contains("268435456"), "{table}");
    // The second disk of node-1 goes away: its BlockDevice turns Inactive.
    let disk1 = std::fs::canonicalize(d.join("node-1/disk1.img")).unwrap();
    let bd_of = |node: &str, path: &Path| {
        get(
            &s,
            &[
                "-n",
                "openebs",
                "get",
                "bd",
                "-l",
                &format!("kubernetes.io/hostname={node}"),
                "-o",
                &format!(
                    "jsonpath={{.items[?(@.spec.path==\"{}\")].metadata.name}}",
                    path.display()
                ),
            ],
        )
    };
    let gone_bd = bd_of("node-1", &disk1);
    assert!(!gone_bd.is_empty());
    std::fs::remove_file(&disk1).unwrap();
    wait_for(
        &s,
        "inactive bd",
        &[
            "-n",
            "openebs",
            "get",
            "bd",
            &gone_bd,
            "-o",
            "jsonpath={.status.state}",
        ],
        |v| v == "Inactive",
        long,
        &all,
    );

    // 2. One stripe CSPI per node, as the controller would write them.
    for i in 1..=3 {
        let node = format!("node-{i}");
        let disk0 = std::fs::canonicalize(d.join(format!("{node}/disk0.img"))).unwrap();
        let bd = bd_of(&node, &disk0);
        assert!(!bd.is_empty(), "{}", bds(&node));
        apply(
            &s,
            d,
            &format!("cspi-{i}"),
            &format!(
                "apiVersion: cstor.openebs.io/v1
kind: CStorPoolInstance
metadata:
  name: pool-{node}
  namespace: openebs
  labels:
    kubernetes.io/hostname: {node}
    openebs.io/cstor-pool-cluster: pool
spec:
  hostName: {node}
  nodeSelector:
    kubernetes.io/hostname: {node}
  poolConfig:
    dataRaidGroupType: stripe
  dataRaidGroups:
  - blockDevices:
    - blockDeviceName: {bd}
"
            ),
        );
    }
    for i in 1..=3 {
        let cspi = format!("pool-node-{i}");
        wait_for(
            &s,
            "cspi online",
            &[
                "-n",
                "openebs",
                "get",
                "cspi",
                &cspi,
                "-o",
                "jsonpath={.status.phase}",
            ],
            |v| v == "ONLINE",
            long,
            &all,
        );
        let ep = wait_for(
            &s,
            "endpoint",
            &[
                "-n",
                "openebs",
                "get",
                "cspi",
                &cspi,
                "-o",
                "jsonpath={.metadata.annotations.cstor\\.openebs\\.io/replica-endpoint}",
            ],
            |v| !v.is_empty(),
            long,
            &all,
        );
        assert!(ep.starts_with(&format!("{net}.{}:", i + 1)), "{ep}");
    }
    let cspis = s.ok(&["-n", "openebs", "get", "cspi"]);
    assert!(
        cspis.contains("ONLINE") && cspis.contains("false"),
        "{cspis}"
    );

    // 3-4. A volume on the three pools, its target on node-1.
    let t1 = format!("{net}.2");
    apply(
        &s,
        d,
        "cv",
        &format!(
            "apiVersion: cstor.openebs.io/v1
kind: CStorVolume
metadata:
  name: pvc-1
  namespace: openebs
  labels:
    cstor.openebs.io/target-node: node-1
    openebs.io/persistent-volume: pvc-1
spec:
  capacity: 64Mi
  targetIP: {t1}
  targetPort: \"3260\"
  targetPortal: {t1}:3260
  iqn: iqn.2016-09.com.openebs.cstor:pvc-1
  replicationFactor: 3
  consistencyFactor: 2
  desiredReplicationFactor: 3
"
        ),
    );
    for i in 1..=3 {
        apply(
            &s,
            d,
            &format!("cvr-{i}"),
            &format!(
                "apiVersion: cstor.openebs.io/v1
kind: CStorVolumeReplica
metadata:
  name: pvc-1-pool-node-{i}
  namespace: openebs
  labels:
    openebs.io/persistent-volume: pvc-1
    openebs.io/cstor-pool-instance: pool-node-{i}
spec:
  targetIP: {t1}
  capacity: 64Mi
"
            ),
        );
    }
    let cv_phase = [
        "-n",
        "openebs",
        "get",
        "cv",
        "pvc-1",
        "-o",
        "jsonpath={.status.phase}",
    ];
    wait_for(&s, "cv healthy", &cv_phase, |v| v == "Healthy", long, &all);
    let cvr_phases = [
        "-n",
        "openebs",
        "get",
        "cvr",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ];
    wait_for(
        &s,
        "cvrs healthy",
        &cvr_phases,
        |v| v == "Healthy Healthy Healthy",
        long,
        &all,
    );
    wait_for(
        &s,
        "provisioned replicas",
        &[
            "-n",
            "openebs",
            "get",
            "cspi",
            "-o",
            "jsonpath={.items[*].status.provisionedReplicas}",
        ],
        |v| v == "1 1 1",
        long,
        &all,
    );
    let known = get(
        &s,
        &[
            "-n",
            "openebs",
            "get",
            "cv",
            "pvc-1",
            "-o",
            "jsonpath={.status.replicaDetails.knownReplicas}",
        ],
    );
    assert_eq!(
        known.matches(':').count(),
        3,
        "three known replicas: {known}"
    );
    let rec = get(
        &s,
        &[
            "-n",
            "openebs",
            "get",
            "cv",
            "pvc-1",
            "-o",
            "jsonpath={.status.replication.magic} {.status.replication.record.epoch}",
        ],
    );
    assert!(rec.starts_with("cstor-membership "), "{rec}");
    assert_eq!(
        get(
            &s,
            &[
                "-n",
                "openebs",
                "get",
                "cv",
                "pvc-1",
                "-o",
                "jsonpath={.status.capacity}"
            ]
        ),
        "64Mi"
    );
    let portal = format!("{t1}:3260");
    let iqn = "iqn.2016-09.com.openebs.cstor:pvc-1";
    let w = qemu_io(&portal, iqn, &["write -P 0x5a 0 1M", "read -P 0x5a 0 1M"]);
    assert!(
        w.status.success() && !String::from_utf8_lossy(&w.stdout).contains("failed"),
        "qemu-io: {}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    // The replicas report what they hold (cStor's USED and ALLOCATED columns): the MiB
    // written, not the volume's 64 MiB size.
    wait_for(
        &s,
        "cvr capacity",
        &[
            "-n",
            "openebs",
            "get",
            "cvr",
            "-o",
            "jsonpath={range .items[*]}{.status.capacity.used} {.status.capacity.total}{\"\\n\"}{end}",
        ],
        |v| {
            let rows: Vec<&str> = v.lines().collect();
            rows.len() == 3
                && rows.iter().all(|r| {
                    r.split(' ').all(|q| {
                        cstor_api::quantity::parse_bytes(q)
                            .is_ok_and(|b| (1 << 20..32 << 20).contains(&b))
                    })
                })
        },
        long,
        &all,
    );

    // Losing node-3's agent: Degraded, its CVR Offline; back: Healthy, data intact.
    agents[2].kill9();
    // Writes make the target notice the lost replica at once.
    let _ = qemu_io(&portal, iqn, &["write -P 0x6b 1M 64k"]);
    wait_for(
        &s,
        "cv degraded",
        &cv_phase,
        |v| v == "Degraded",
        long,
        &all,
    );
    wait_for(
        &s,
        "cvr offline",
        &[
            "-n",
            "openebs",
            "get",
            "cvr",
            "pvc-1-pool-node-3",
            "-o",
            "jsonpath={.status.phase}",
        ],
        |v| v != "Healthy",
        long,
        &all,
    );
    agents[2].spawn();
    wait_for(
        &s,
        "cv healthy again",
        &cv_phase,
        |v| v == "Healthy",
        Duration::from_secs(120),
        &all,
    );
    wait_for(
        &s,
        "cvrs healthy again",
        &cvr_phases,
        |v| v == "Healthy Healthy Healthy",
        long,
        &all,
    );
    let r = qemu_io(&portal, iqn, &["read -P 0x5a 0 1M", "read -P 0x6b 1M 64k"]);
    assert!(
        r.status.success() && !String::from_utf8_lossy(&r.stdout).contains("failed"),
        "qemu-io: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );

    // SIGTERM: every agent stops cleanly (targets first), and the record says so.
    for a in agents.iter_mut() {
        assert!(
            a.term(Duration::from_secs(40)),
            "{} did not stop cleanly",
            a.name
        );
    }
    let clean = get(
        &s,
        &[
            "-n",
            "openebs",
            "get",
            "cv",
            "pvc-1",
            "-o",
            "jsonpath={.status.replication.record.clean_shutdown}",
        ],
    );
    assert_eq!(clean, "true");
}

/// The failure table's "CAS 409: a controller updated spec concurrently" on the store the
/// agents use (the CStorVolume's status): a spec edit between the target's read and its
/// CAS moves the resourceVersion, the CAS answers Conflict, the retry on a fresh read
/// stores the record, and both the edit and the record are in the object.
#[test]
fn membership_cas_after_a_concurrent_spec_edit_conflicts_then_keeps_both() {
    use cstor_replication::membership::{Cas, MembershipStore};
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ApiServer::start(&dir.path().join("data"), free_port());
    s.ok(&["create", "namespace", "openebs"]);
    apply(
        &s,
        dir.path(),
        "cv-cas",
        "apiVersion: cstor.openebs.io/v1
kind: CStorVolume
metadata:
  name: pvc-cas
  namespace: openebs
spec:
  capacity: 64Mi
  targetIP: 127.0.0.1
  targetPort: \"3260\"
  targetPortal: 127.0.0.1:3260
  iqn: iqn.2016-09.com.openebs.cstor:pvc-cas
  replicationFactor: 3
  consistencyFactor: 2
  desiredReplicationFactor: 3
",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let client = rt.block_on(async {
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(cfg).unwrap()
    });
    let store = cstor_agent::store::KubeStore::new(client, "pvc-cas", rt.handle().clone());
    let (mut rec, v0) = store.read().unwrap();
    assert_eq!(v0, 0, "no record yet");
    rec.epoch = 1;
    rec.rf = 3;
    let v1 = match store.cas(0, &rec).unwrap() {
        Cas::Ok(v) => v,
        Cas::Conflict => panic!("first CAS conflicted"),
    };
    // The user's edit (the alpha seed's `kubectl edit cstorvolume`).
    s.ok(&[
        "-n",
        "openebs",
        "patch",
        "cstorvolume",
        "pvc-cas",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"desiredReplicationFactor":2}}"#,
    ]);
    let mut next = rec.clone();
    next.epoch = 2;
    assert_eq!(store.cas(v1, &next).unwrap(), Cas::Conflict);
    let (fresh, v2) = store.read().unwrap();
    assert_eq!(fresh, rec, "the edit changed the record");
    assert!(v2 != v1);
    assert!(matches!(store.cas(v2, &next).unwrap(), Cas::Ok(_)));
    let out = get(
        &s,
        &[
            "-n",
            "openebs",
            "get",
            "cstorvolume",
            "pvc-cas",
            "-o",
            "jsonpath={.spec.desiredReplicationFactor} {.status.replication.record.epoch}",
        ],
    );
    assert_eq!(out.trim(), "2 2", "both the edit and the record");
    drop(rt);
}
