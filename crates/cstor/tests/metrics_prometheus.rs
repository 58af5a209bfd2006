//! A real Prometheus (Debian's package) pointed at `cstor up`'s DIR/prometheus/: the
//! written prometheus.yml loads the seed's rules without errors, the file_sd targets.json
//! names every node agent's metrics endpoint (labels `node`, `job`) and each is scraped
//! `up`, and `cstor up node stop` removes the node from the targets Prometheus scrapes.
//! Every process (Prometheus, `cstor up` and its children) is stopped on failure too.

mod apiserver_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::up::Up;
use apiserver_support::{free_port, required};

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
            .filter(|t| t["health"] == "up" && t["labels"]["job"] == "cstor-pool")
            .map(|t| {
                (
                    t["labels"]["node"].as_str().unwrap_or("").to_string(),
                    t["scrapeUrl"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn prometheus_scrapes_cstor_up_and_loads_the_seed_rules() {
    let have = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !required(have, "prometheus") {
        return;
    }
    let cluster = Up::start(2, "64M");
    let dir = cluster.dir.clone();
    let tmp = tempfile::tempdir().unwrap();
    let pdir = dir.join("prometheus");
    let targets = wait_until("targets.json", Duration::from_secs(60), &dir, || {
        let t = std::fs::read_to_string(pdir.join("targets.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
        (v.as_array()?.len() == 2).then_some(v)
    });
    assert_eq!(targets[0]["labels"]["node"], "node-1", "{targets}");
    assert_eq!(targets[0]["labels"]["job"], "cstor-pool", "{targets}");

    // The written config, with intervals short enough for a test.
    let cfg = std::fs::read_to_string(pdir.join("prometheus.yml")).unwrap();
    assert!(
        cfg.contains("cstor-rules.yml") && cfg.contains("targets.json"),
        "{cfg}"
    );
    let fast = tmp.path().join("prometheus-fast.yml");
    std::fs::write(&fast, cfg.replace("15s", "1s")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let plog = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prom = Proc(
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

    // The seed's three rules, loaded and evaluated without errors.
    wait_until(
        "rules loaded and healthy",
        Duration::from_secs(30),
        &dir,
        || {
            let v = get(&addr, "/api/v1/rules")?;
            let rules: Vec<&serde_json::Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
            let all = [
                "CStorPoolDegraded",
                "CStorPoolCapacityHigh",
                "CStorVolumeReplicaDegraded",
            ]
            .iter()
            .all(|a| names.contains(a));
            (all && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        },
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

    // A stopped node leaves targets.json and Prometheus' active targets.
    cluster.node("stop", "node-2");
    let left = wait_until("node-2 dropped", Duration::from_secs(30), &dir, || {
        let v = get(&addr, "/api/v1/targets?state=active")?;
        let l = v["data"]["activeTargets"].as_array()?.clone();
        (l.len() == 1).then_some(l)
    });
    assert_eq!(left[0]["labels"]["node"], "node-1", "{left:?}");
}
