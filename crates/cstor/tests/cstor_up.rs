//! `cstor up` as a user runs it: two nodes on their own loopback addresses, Pods in
//! `openebs` whose Ready follows the processes (`kubectl wait` works), BlockDevices of
//! each node's own disks, `cstor up node stop|start`, a crashed agent restarted with an
//! Event, `kubectl logs`, and SIGTERM stopping every child.

mod apiserver_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::up::{kubectl, wait_for};
use apiserver_support::{free_port, have_kubectl, required};

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Direct children of `pid`.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for p in c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push((p, cmd));
        }
    }
    out
}

#[test]
fn up_runs_supervises_and_stops() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("up");
    std::fs::create_dir_all(&dir).unwrap();
    let n = std::process::id() ^ (free_port() as u32);
    let base = format!("127.{}.{}.1", 10 + n % 200, 1 + (n / 200) % 250);
    let port = free_port();
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let up = Up(Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args([
            "up",
            "--nodes",
            "2",
            "--disks-per-node",
            "1",
            "--disk-size",
            "128M",
        ])
        .args([
            "--base-address",
            &base,
            "--api-port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    let t0 = Instant::now();
    while !dir.join("kubeconfig").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no kubeconfig: {}",
            std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Pods exist once cstor up has started every component; only then wait for Ready.
    wait_for(
        &dir,
        "pods created",
        &[
            "-n",
            "openebs",
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        |v| v.contains("cstor-node-2"),
        Duration::from_secs(60),
    );
    let (ok, out) = kubectl(
        &dir,
        &[
            "-n",
            "openebs",
            "wait",
            "--for=condition=Ready",
            "pods",
            "--all",
            "--timeout=90s",
        ],
    );
    assert!(ok, "pods not Ready: {out}");
    let pods = wait_for(
        &dir,
        "pool pods",
        &[
            "-n",
            "openebs",
            "get",
            "pods",
            "-l",
            "app=cstor-pool",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        |v| v == "cstor-node-1 cstor-node-2",
        Duration::from_secs(30),
    );
    assert_eq!(pods, "cstor-node-1 cstor-node-2");
    for node in ["node-1", "node-2"] {
        wait_for(
            &dir,
            "one bd per node",
            &[
                "-n",
                "openebs",
                "get",
                "bd",
                "-l",
                &format!("kubernetes.io/hostname={node}"),
                "-o",
                "jsonpath={.items[*].spec.capacity.storage}",
            ],
            |v| v == "134217728",
            Duration::from_secs(60),
        );
    }
    let secret = wait_for(
        &dir,
        "auth secret",
        &[
            "-n",
            "openebs",
            "get",
            "secret",
            "cstor-replica-auth",
            "-o",
            "jsonpath={.data.key}",
        ],
        |v| v.len() > 20,
        Duration::from_secs(30),
    );
    assert!(secret.len() > 20, "{secret}");
    let (ok, logs) = kubectl(&dir, &["-n", "openebs", "logs", "cstor-node-1"]);
    assert!(ok && logs.contains("node node-1 up"), "{logs}");

    // node stop: the Pod turns not Ready within 5 s; start: Ready again.
    let ctl = |action: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["up", "node", action, "node-2", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ready2 = [
        "-n",
        "openebs",
        "get",
        "pod",
        "cstor-node-2",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ];
    ctl("stop");
    wait_for(
        &dir,
        "stopped node not Ready",
        &ready2,
        |v| v == "False",
        Duration::from_secs(5),
    );
    ctl("start");
    wait_for(
        &dir,
        "started node Ready",
        &ready2,
        |v| v == "True",
        Duration::from_secs(60),
    );

    // A crash: the agent is restarted and an Event says so.
    let (pid, _) = children(up.0.id())
        .into_iter()
        .find(|(_, c)| c.contains(" node ") && c.contains("node-1"))
        .expect("node-1 agent is a child of cstor up");
    // SAFETY: killing the agent cstor up started for this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for(
        &dir,
        "restart event",
        &[
            "-n",
            "openebs",
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=cstor-node-1",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        |v| v.contains("Restarted"),
        Duration::from_secs(30),
    );
    let ready1 = [
        "-n",
        "openebs",
        "get",
        "pod",
        "cstor-node-1",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ];
    wait_for(
        &dir,
        "restarted node Ready",
        &ready1,
        |v| v == "True",
        Duration::from_secs(60),
    );

    // SIGTERM: cstor up stops every child and exits 0.
    let kids: Vec<u32> = children(up.0.id()).into_iter().map(|(p, _)| p).collect();
    assert!(kids.len() >= 3, "{kids:?}");
    let mut up = up;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.0.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = up.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "cstor up did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
    );
    for k in kids {
        assert!(
            !Path::new(&format!("/proc/{k}")).exists()
                || std::fs::read_to_string(format!("/proc/{k}/stat"))
                    .unwrap_or_default()
                    .contains(" Z "),
            "child {k} survived"
        );
    }
}
