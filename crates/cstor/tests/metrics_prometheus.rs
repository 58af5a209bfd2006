//! A real Prometheus (Debian's package) pointed at `cstor up`'s DIR/prometheus/: the
//! written prometheus.yml loads the seed's built-in rules without errors; the
//! monitoring CRDs are served without installing anything, and the seed's
//! PrometheusRule applied with kubectl (its `for:` shortened to 2 s, its expressions the
//! seed's) replaces the built-in rules once Prometheus reloads; the file_sd targets.json
//! follows the ServiceMonitors: the seed's one standing in, then the seed's applied
//! verbatim (its 30 s interval), then with `interval: 1s`, each node agent's endpoint
//! with the operator's labels (`job` = the Service, `service`, `endpoint`, `pod`,
//! `namespace`) plus `node`, scraped `up` at that interval. Then,
//! queried through Prometheus' HTTP API against what kubectl shows: the pools'
//! `openebs_pool_status` (Online 1) and capacity by `pool_name`; a 2-replica claim's
//! volume series (Healthy 3, labels `pv`, `namespace`, `pvc` from the claim) and replicas
//! (Healthy 1); the typed counters and histogram grown by the I/O qemu-io did; a
//! replica's node stopped makes the target's host export that member 0 and the seed's
//! `CStorVolumeReplicaDegraded` fire, resolved once the node is back and caught up; the
//! target moved to the other node keeps one series per volume with the same labels; that
//! node's agent killed and restarted by `cstor up` in place: the same pool and volume
//! series (same labels) get samples again, Healthy.
//! Every process (Prometheus, `cstor up` and its children) is stopped on failure too.

mod apiserver_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::up::Up;
use apiserver_support::{free_port, have_kubectl, required};

/// Prometheus, killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so `cstor up` stops its children; then make sure.
        // SAFETY: signalling a child this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from Prometheus' HTTP API; the JSON body.
fn get(addr: &str, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (_, json) = body.split_once("\r\n\r\n")?;
    serde_json::from_str(json).ok()
}

fn wait_until<T>(what: &str, limit: Duration, dir: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > limit {
            let up = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
            let prom = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("{what}: not after {limit:?}\n--- up.log\n{up}\n--- prometheus.log\n{prom}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The scrape URLs of the active targets that are `up`, with their `node` label.
fn active_up(addr: &str) -> Option<Vec<(String, String)>> {
    let v = get(addr, "/api/v1/targets?state=active")?;
    let list = v["data"]["activeTargets"].as_array()?;
    Some(
        list.iter()
            .filter(|t| t["health"] == "up" && t["labels"]["job"] == JOB)
            .map(|t| {
                (
                    t["labels"]["node"].as_str().unwrap_or("").to_string(),
                    t["scrapeUrl"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's vector: (labels, value) per series; None until Prometheus answers.
fn query(addr: &str, q: &str) -> Option<Vec<(serde_json::Value, f64)>> {
    let v = get(addr, &format!("/api/v1/query?query={}", encode(q)))?;
    (v["status"] == "success").then_some(())?;
    v["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
        .collect()
}

/// The active alerts named `name` in `state` (pending, firing).
fn alerts(addr: &str, name: &str, state: &str) -> Option<Vec<serde_json::Value>> {
    let v = get(addr, "/api/v1/alerts")?;
    Some(
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == state)
            .cloned()
            .collect(),
    )
}

const SEED: &str = include_str!("../../../docs/seeds/how-to-build-cstor-pools.md");

/// The `job` of the seed's ServiceMonitor's targets: the name of the Service it selects.
const JOB: &str = "cstor-pool-metrics";

/// The seed's ```yaml block holding `kind`.
fn seed_yaml(kind: &str) -> &'static str {
    SEED.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(&format!("kind: {kind}")))
        .unwrap_or_else(|| panic!("the seed's {kind}"))
}

/// targets.json once it holds `n` groups whose `__scrape_interval__` is `interval`.
fn targets_json(dir: &Path, n: usize, interval: &str) -> serde_json::Value {
    let path = dir.join("prometheus").join("targets.json");
    wait_until(
        &format!("targets.json: {n} targets at {interval}"),
        Duration::from_secs(30),
        dir,
        || {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            let list = v.as_array()?;
            (list.len() == n
                && list
                    .iter()
                    .all(|t| t["labels"]["__scrape_interval__"] == interval))
            .then_some(v)
        },
    )
}

/// The pid of `node`'s agent (`cstor node --name NODE`) under `dir`, from /proc.
fn agent_pid(dir: &Path, node: &str) -> Option<i32> {
    let home = dir.join("nodes").join(node).join("home");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let hit = args.get(1) == Some(&&b"node"[..])
            && args
                .windows(2)
                .any(|w| w[0] == b"--name" && w[1] == node.as_bytes())
            && args
                .windows(2)
                .any(|w| w[0] == b"--home" && w[1] == home.as_os_str().as_encoded_bytes());
        hit.then_some(pid)
    })
}

/// The seed's PrometheusRule (its ```yaml block) with every `for:` shortened to 2 s, so
/// an alert fires within a test; the expressions stay the seed's (checked).
fn seed_rule_fast() -> String {
    let out: String = seed_yaml("PrometheusRule")
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 2s\n", &l[..l.len() - l.trim_start().len()]),
            None => format!("{l}\n"),
        })
        .collect();
    for expr in [
        "expr: openebs_pool_status != 1",
        "expr: openebs_pool_used_capacity_percent > 80",
        "expr: openebs_volume_replica_status != 1",
    ] {
        assert!(out.contains(expr), "{expr} not in the rules: {out}");
    }
    assert_eq!(out.matches("for: 2s").count(), 3, "{out}");
    out
}

/// The seed's three alerts as Prometheus evaluates them, once all are loaded healthy:
/// (name, `for` in seconds).
fn loaded_rules(addr: &str) -> Option<Vec<(String, f64)>> {
    let v = get(addr, "/api/v1/rules")?;
    let rules: Vec<&serde_json::Value> = v["data"]["groups"]
        .as_array()?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let mut out: Vec<(String, f64)> = rules
        .iter()
        .filter(|r| r["health"] == "ok")
        .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["duration"].as_f64()?)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    (names
        == [
            "CStorPoolCapacityHigh",
            "CStorPoolDegraded",
            "CStorVolumeReplicaDegraded",
        ]
        && out.len() == rules.len())
    .then_some(out)
}

/// qemu-io that must succeed.
fn qemu_io(portal: &str, iqn: &str, cmds: &[&str]) -> String {
    let (ok, text) = apiserver_support::seed::qemu_io(portal, iqn, cmds);
    assert!(ok, "qemu-io {cmds:?}: {text}");
    text
}

const CSPC: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorPoolCluster
metadata: {name: cstor-pool-stripe, namespace: openebs}
spec:
  pools:
  - nodeSelector: {kubernetes.io/hostname: node-1}
    dataRaidGroups: [{blockDevices: [{blockDeviceName: BD1}]}]
    poolConfig: {dataRaidGroupType: stripe}
  - nodeSelector: {kubernetes.io/hostname: node-2}
    dataRaidGroups: [{blockDevices: [{blockDeviceName: BD2}]}]
    poolConfig: {dataRaidGroupType: stripe}
";

const CLAIM: &str = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: cstor-csi-2-replicas}
provisioner: cstor.csi.openebs.io
parameters: {cas-type: cstor, cstorPoolCluster: cstor-pool-stripe, replicaCount: \"2\"}
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: orders, namespace: shop}
spec:
  storageClassName: cstor-csi-2-replicas
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
";

fn count(out: &str, word: &str) -> usize {
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == word))
        .count()
}

/// The one series `q` returns once `ok` holds on it (labels, value), within 60 s.
fn one_series(
    addr: &str,
    dir: &Path,
    what: &str,
    q: &str,
    ok: impl Fn(&serde_json::Value, f64) -> bool,
) -> (serde_json::Value, f64) {
    wait_until(what, Duration::from_secs(60), dir, || {
        let r = query(addr, q)?;
        match &r[..] {
            [(l, v)] if ok(l, *v) => Some((l.clone(), *v)),
            _ => None,
        }
    })
}

#[test]
fn prometheus_scrapes_cstor_up_queries_pools_and_volumes_and_fires_the_seed_alert() {
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !required(
        have("prometheus") && have("qemu-io") && have_kubectl(),
        "prometheus, qemu-io or kubectl",
    ) {
        return;
    }
    let cluster = Up::start(2, "256M");
    let dir = cluster.dir.clone();
    let long = Duration::from_secs(90);
    let tmp = tempfile::tempdir().unwrap();
    let pdir = dir.join("prometheus");

    // The monitoring CRDs are served by `cstor up` itself.
    let (ok, out) = cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "--timeout=20s",
    ]);
    assert!(ok, "monitoring CRDs established: {out}");

    // No ServiceMonitor yet: the seed's stands in (30 s, its interval); applied verbatim
    // it gives the same targets; with `interval: 1s` (for the test) they follow.
    let fallback = targets_json(&dir, 2, "30s");
    let f = dir.join("servicemonitor-cstor.yaml");
    std::fs::write(&f, seed_yaml("ServiceMonitor")).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply the seed's ServiceMonitor: {out}");
    let (ok, out) = cluster.kubectl(&[
        "get",
        "servicemonitor",
        "-n",
        "openebs",
        "cstor-pool-metrics",
    ]);
    assert!(ok, "{out}");
    assert_eq!(targets_json(&dir, 2, "30s"), fallback);
    std::fs::write(
        &f,
        seed_yaml("ServiceMonitor").replace("interval: 30s", "interval: 1s"),
    )
    .unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply the ServiceMonitor at 1s: {out}");
    let targets = targets_json(&dir, 2, "1s");
    let l = &targets[0]["labels"];
    assert_eq!(l["node"], "node-1", "{targets}");
    assert_eq!(l["job"], JOB, "{targets}");
    assert_eq!(l["service"], JOB, "{targets}");
    assert_eq!(l["endpoint"], "exporter", "{targets}");
    assert_eq!(l["pod"], "cstor-node-1", "{targets}");
    assert_eq!(l["namespace"], "openebs", "{targets}");
    let node_ip = |node: &str| -> String {
        let t = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["labels"]["node"] == node)
            .unwrap();
        let a = t["targets"][0].as_str().unwrap();
        a.rsplit_once(':').unwrap().0.to_string()
    };

    // The written config, with intervals short enough for a test.
    let cfg = std::fs::read_to_string(pdir.join("prometheus.yml")).unwrap();
    let rules = pdir.join("rules");
    assert!(
        cfg.contains(&rules.join("*.yml").display().to_string()) && cfg.contains("targets.json"),
        "{cfg}"
    );
    let fast = tmp.path().join("prometheus-fast.yml");
    std::fs::write(
        &fast,
        cfg.replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s"),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let plog = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", fast.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(plog.try_clone().unwrap())
            .stderr(plog)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Before any PrometheusRule is applied: the seed's three rules, built in, loaded and
    // evaluated without errors.
    let seed = wait_until("seed rules loaded", Duration::from_secs(30), &dir, || {
        loaded_rules(&addr)
    });
    let durations: Vec<f64> = seed.iter().map(|(_, d)| *d).collect();
    assert_eq!(durations, [600.0, 300.0, 300.0], "{seed:?}");

    // The user's PrometheusRule (the seed's, `for:` shortened) applied with kubectl
    // replaces them: cstor up rewrites rules/, and Prometheus evaluates it once reloaded.
    let f = dir.join("alerts-cstor.yaml");
    std::fs::write(&f, seed_rule_fast()).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply the PrometheusRule: {out}");
    wait_until("rules/ rewritten", Duration::from_secs(30), &dir, || {
        let mut names: Vec<String> = std::fs::read_dir(&rules)
            .ok()?
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        (names == ["openebs-cstor-alerts.yml"]).then_some(())
    });
    // SAFETY: SIGHUP (reload) to the Prometheus this test started.
    unsafe { libc::kill(prom.0.id() as i32, libc::SIGHUP) };
    wait_until(
        "the applied rules evaluated",
        Duration::from_secs(30),
        &dir,
        || loaded_rules(&addr).filter(|r| r.iter().all(|(_, d)| *d == 2.0)),
    );

    // Both node agents scraped up, through file_sd, with their node label.
    let up = wait_until("both agents up", Duration::from_secs(30), &dir, || {
        active_up(&addr).filter(|l| l.len() == 2)
    });
    let mut nodes: Vec<&str> = up.iter().map(|(n, _)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"], "{up:?}");
    assert!(
        up.iter().all(|(_, u)| u.ends_with(":9500/metrics")),
        "{up:?}"
    );

    // Pools: one series per CSPI by pool_name, Online (1), capacity a percentage.
    let mut cspc = CSPC.to_string();
    for n in ["node-1", "node-2"] {
        let bd = cluster.block_device(n, long);
        cspc = cspc.replace(&format!("BD{}", &n[5..]), &bd);
    }
    let f = dir.join("cspc.yaml");
    std::fs::write(&f, &cspc).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply cspc: {out}");
    let cspis = cluster.wait_for(
        "2 CSPIs ONLINE",
        &["get", "cspi", "-n", "openebs", "--no-headers"],
        |v| count(v, "ONLINE") == 2,
        long,
    );
    let mut cspi_names: Vec<String> = cspis
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    cspi_names.sort();
    let pools = wait_until("2 pools Online", Duration::from_secs(30), &dir, || {
        let r = query(&addr, "openebs_pool_status")?;
        (r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0)).then_some(r)
    });
    let mut pool_names: Vec<String> = pools
        .iter()
        .map(|(l, _)| l["pool_name"].as_str().unwrap_or("").to_string())
        .collect();
    pool_names.sort();
    assert_eq!(pool_names, cspi_names, "{pools:?}");
    for (l, _) in &pools {
        assert_eq!(l["pool"], l["pool_name"], "{l}");
        assert_eq!(l["job"], JOB, "{l}");
        assert_eq!(l["service"], JOB, "{l}");
    }
    let used = query(&addr, "openebs_pool_used_capacity_percent").unwrap();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(
        used.iter().all(|(_, v)| (0.0..=100.0).contains(v)),
        "{used:?}"
    );
    for (l, _) in &used {
        assert!(
            cspi_names.iter().any(|c| l["pool_name"] == c.as_str()),
            "{l}"
        );
    }

    // A 2-replica claim: its volume and replica series, labelled with the claim.
    let f = dir.join("claim.yaml");
    std::fs::write(&f, CLAIM).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply claim: {out}");
    let pv = cluster.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            "-n",
            "shop",
            "orders",
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        long,
    );
    let pv = pv.split_whitespace().nth(1).unwrap().to_string();
    cluster.wait_for(
        "the volume Healthy with 2 Healthy replicas",
        &["get", "cv,cvr", "-n", "openebs", "--no-headers"],
        |v| count(v, "Healthy") == 3,
        long,
    );
    let (_, cv) = cluster.kubectl(&[
        "get",
        "cv",
        &pv,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.iqn} {.spec.targetPortal} {.metadata.labels.cstor\\.openebs\\.io/target-node}",
    ]);
    let parts: Vec<&str> = cv.split_whitespace().collect();
    let [iqn, portal, target_node] = parts[..] else {
        panic!("CV iqn/portal/target-node: {cv:?}");
    };
    let other = if target_node == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let vq = |m: &str| format!("{m}{{volume_name=\"{pv}\"}}");
    let (vl, _) = one_series(
        &addr,
        &dir,
        "the volume Healthy with its claim's labels",
        &vq("openebs_volume_status"),
        |l, v| v == 3.0 && l["pvc"] == "orders",
    );
    // The target's `namespace` (the Service's, as prometheus-operator labels it) wins
    // over the exporter's: the claim's namespace is kept as `exported_namespace`.
    assert_eq!(vl["exported_namespace"], "shop", "{vl}");
    assert_eq!(vl["namespace"], "openebs", "{vl}");
    assert_eq!(vl["pv"], pv.as_str(), "{vl}");
    assert_eq!(vl["iqn"], iqn, "{vl}");
    assert_eq!(vl["node"], target_node, "{vl}");
    let replicas = wait_until("2 replicas Healthy", Duration::from_secs(30), &dir, || {
        let r = query(&addr, &vq("openebs_volume_replica_status"))?;
        (r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0)).then_some(r)
    });
    for (l, _) in &replicas {
        assert!(l["replica"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
        assert_eq!(l["pvc"], "orders", "{l}");
        assert_eq!(l["node"], target_node, "{l}");
    }

    // I/O through the portal: the typed counters grow by at least the bytes moved.
    let sum = |m: &str| -> f64 {
        query(&addr, &vq(m))
            .and_then(|r| r.first().map(|(_, v)| *v))
            .unwrap_or(0.0)
    };
    let before: Vec<f64> = [
        "openebs_volume_write_bytes_total",
        "openebs_volume_read_bytes_total",
        "openebs_volume_writes_total",
        "openebs_volume_reads_total",
    ]
    .iter()
    .map(|m| sum(m))
    .collect();
    qemu_io(portal, iqn, &["write -P 0x5a 0 4M", "read -P 0x5a 0 4M"]);
    let mib4 = 4.0 * 1048576.0;
    wait_until(
        "the counters grown by the I/O",
        Duration::from_secs(30),
        &dir,
        || {
            let w = sum("openebs_volume_write_bytes_total") - before[0];
            let r = sum("openebs_volume_read_bytes_total") - before[1];
            let wn = sum("openebs_volume_writes_total") - before[2];
            let rn = sum("openebs_volume_reads_total") - before[3];
            let gauge = sum("openebs_total_write_bytes");
            (w >= mib4 && r >= mib4 && wn >= 1.0 && rn >= 1.0 && gauge >= mib4).then_some(())
        },
    );
    let q = format!(
        "sum(increase(openebs_volume_write_duration_seconds_count{{volume_name=\"{pv}\"}}[1m]))"
    );
    wait_until(
        "the write histogram counted",
        Duration::from_secs(10),
        &dir,
        || {
            query(&addr, &q)?
                .first()
                .filter(|(_, v)| *v > 0.0)
                .map(|_| ())
        },
    );

    // The replica's node lost: the target's host exports that member 0 and the seed's
    // alert fires for the volume.
    cluster.node("stop", other);
    let lost = one_series(
        &addr,
        &dir,
        "the lost replica exported 0",
        &format!("openebs_volume_replica_status{{volume_name=\"{pv}\"}} == 0"),
        |l, _| l["node"] == target_node,
    );
    let lost_ip = node_ip(other);
    assert!(
        lost.0["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{lost_ip}:"))),
        "{lost:?} not on {other} ({lost_ip})"
    );
    let firing = wait_until(
        "CStorVolumeReplicaDegraded firing",
        Duration::from_secs(30),
        &dir,
        || alerts(&addr, "CStorVolumeReplicaDegraded", "firing").filter(|a| !a.is_empty()),
    );
    assert_eq!(firing.len(), 1, "{firing:?}");
    let a = &firing[0];
    assert_eq!(a["labels"]["volume_name"], pv.as_str(), "{a}");
    assert_eq!(a["labels"]["replica"], lost.0["replica"], "{a}");
    assert_eq!(a["labels"]["severity"], "critical", "{a}");
    assert_eq!(
        a["annotations"]["summary"],
        format!("cStor volume replica {pv} is unhealthy"),
        "{a}"
    );

    // Back: caught up, Healthy again, and the alert resolved.
    cluster.node("start", other);
    wait_until("the alert resolved", long, &dir, || {
        let r = query(&addr, &vq("openebs_volume_replica_status"))?;
        let healthy = r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0);
        let active = get(&addr, "/api/v1/alerts")?["data"]["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["labels"]["alertname"] == "CStorVolumeReplicaDegraded");
        (healthy && !active).then_some(())
    });

    // The target moved to the other node: one series for the volume, from its new host,
    // with the same labels; the old host's went stale.
    let (ok, out) = cluster.kubectl(&[
        "label",
        "cv",
        &pv,
        "-n",
        "openebs",
        &format!("cstor.openebs.io/target-node={other}"),
        "--overwrite",
    ]);
    assert!(ok, "move the target: {out}");
    let (moved, _) = one_series(
        &addr,
        &dir,
        "the volume served Healthy from the other node",
        &vq("openebs_volume_status"),
        |l, v| v == 3.0 && l["node"] == other,
    );
    for k in ["pv", "exported_namespace", "pvc", "iqn", "volume_name"] {
        assert_eq!(moved[k], vl[k], "{k}: {moved} vs {vl}");
    }
    let r = query(&addr, &vq("openebs_volume_replica_status")).unwrap();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|(l, _)| l["node"] == other), "{r:?}");

    // Restart in place: `other`'s agent (the target's host now) killed; `cstor up`
    // restarts it, and the same series (identical labels) get samples again.
    let pool_on = |node: &str| -> (serde_json::Value, f64) {
        let r = query(&addr, "openebs_pool_status").unwrap();
        r.into_iter().find(|(l, _)| l["node"] == node).unwrap()
    };
    let (pool_labels, _) = pool_on(other);
    let pq = format!(
        "timestamp(openebs_pool_status{{pool_name=\"{}\"}})",
        pool_labels["pool_name"].as_str().unwrap()
    );
    let pid = agent_pid(&dir, other).expect("the agent's pid");
    let killed = Instant::now();
    // SAFETY: SIGKILL to a process of the `cstor up` this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let t_kill = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    cluster.wait_for(
        "the agent restarted in place",
        &[
            "get",
            "pod",
            "-n",
            "openebs",
            &format!("cstor-{other}"),
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}",
        ],
        |v| v == "1 true",
        long,
    );
    assert!(agent_pid(&dir, other).is_some_and(|p| p != pid));
    let (back, _) = one_series(
        &addr,
        &dir,
        "the volume served Healthy again after the restart",
        &format!(
            "{} and timestamp({}) > {t_kill}",
            vq("openebs_volume_status"),
            vq("openebs_volume_status")
        ),
        |_, v| v == 3.0,
    );
    assert_eq!(
        back, moved,
        "the volume's series continues with the same labels"
    );
    let r = one_series(
        &addr,
        &dir,
        "the pool sampled after the restart",
        &pq,
        |_, t| t > t_kill,
    );
    let (pool_after, _) = pool_on(other);
    assert_eq!(pool_after, pool_labels, "{r:?}");
    wait_until("2 replicas Healthy after the restart", long, &dir, || {
        let r = query(&addr, &vq("openebs_volume_replica_status"))?;
        (r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0)).then_some(())
    });
    eprintln!(
        "restart in place: series back {:?} after the kill",
        killed.elapsed()
    );

    // A stopped node leaves targets.json and Prometheus' active targets.
    cluster.node("stop", target_node);
    let left = wait_until("the node dropped", Duration::from_secs(30), &dir, || {
        let v = get(&addr, "/api/v1/targets?state=active")?;
        let l = v["data"]["activeTargets"].as_array()?.clone();
        (l.len() == 1).then_some(l)
    });
    assert_eq!(left[0]["labels"]["node"], other, "{left:?}");
}
