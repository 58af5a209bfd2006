//! `cstor replica serve` and `cstor target serve --replica` as processes: two replicas
//! over pools on temp files, a replicated target with a shared key and a TCP control
//! endpoint, qemu-io over iscsi://, `cstor target status -o json`, a replica killed
//! (RF=2 keeps writing), a target restart (epoch + 1, data intact), and the refusals
//! (non-loopback without a key, wrong key on the control port).

mod target_common;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use target_common::*;

const T: Duration = Duration::from_secs(60);
const IQN: &str = "iqn.2024-01.io.cstor.test:repl";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cstor(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cstor"));
    c.env("CSTOR_HOME", home).env_remove("RUST_LOG");
    c
}

/// Spawns and returns the process with the address from its first stdout line.
fn spawn(mut c: Command, prefix_before_addr: &str) -> (Proc, String) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn cstor");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("first line");
    let addr = line
        .trim()
        .rsplit_once(prefix_before_addr)
        .map(|(_, a)| a.to_string())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (Proc(child), addr)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn target(home: &Path, reps: &[String], state: &Path, key: &Path, control: &str) -> (Proc, String) {
    let mut c = cstor(home);
    c.args(["target", "serve", "--listen", "127.0.0.1:0", "--iqn", IQN])
        .args(["--volume", "vol1", "--size", "64M", "--state-dir"])
        .arg(state)
        .arg("--auth-key")
        .arg(key)
        .args(["--control", control]);
    for r in reps {
        c.args(["--replica", r]);
    }
    spawn(c, "listening on ")
}

/// Status, or None while the control endpoint is not answering yet.
fn try_status(home: &Path, control: &str, key: &Path) -> Option<serde_json::Value> {
    let out = cstor(home)
        .args(["target", "status", "--control", control, "-o", "json"])
        .arg("--auth-key")
        .arg(key)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn status(home: &Path, control: &str, key: &Path) -> serde_json::Value {
    let out = cstor(home)
        .args([
            "target",
            "status",
            "--control",
            control,
            "-o",
            "json",
            "--auth-key",
        ])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `cstor pool create NAME stripe DIR/NAME.img` (512 MiB sparse) for each name.
fn make_pools(home: &Path, dir: &Path, names: &[&str]) {
    for p in names {
        let img = dir.join(format!("{p}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let out = cstor(home)
            .args(["pool", "create", p, "stripe"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A temp dir with `home`, a shared key file and the pools `names`.
fn setup(names: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let key: PathBuf = d.path().join("key");
    std::fs::write(&key, "a-shared-cluster-key-for-tests\n").unwrap();
    make_pools(&home, d.path(), names);
    (d, home, key)
}

/// `cstor replica serve --pool POOL --listen LISTEN --auth-key KEY` and its address.
fn replica(home: &Path, pool: &str, listen: &str, key: &Path) -> (Proc, String) {
    let mut c = cstor(home);
    c.args(["replica", "serve", "--pool", pool, "--listen", listen])
        .arg("--auth-key")
        .arg(key);
    spawn(c, "listening on ")
}

fn qemu(addr: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", &format!("iscsi://{addr}/{IQN}/0")]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let (ok, out) = run(&mut c, T);
    assert!(ok && !out.contains("failed"), "{out}");
    out
}

#[test]
fn replicated_target_processes_with_status_replica_loss_and_restart() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let (d, home, key) = setup(&["pa", "pb"]);
    // No key: loopback only.
    let out = cstor(&home)
        .args(["replica", "serve", "--pool", "pa", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"));
    let mut reps = Vec::new();
    let mut addrs = Vec::new();
    for p in ["pa", "pb"] {
        let (proc_, addr) = replica(&home, p, "127.0.0.1:0", &key);
        reps.push(proc_);
        addrs.push(addr);
    }
    let state = d.path().join("state");
    let control = format!("127.0.0.1:{}", free_port());
    let (t, taddr) = target(&home, &addrs, &state, &key, &control);
    assert!(wait_for(Duration::from_secs(20), || {
        try_status(&home, &control, &key).is_some_and(|s| s["phase"] == "Healthy")
    }));
    qemu(&taddr, &["write -P 0x5a 0 1M", "read -P 0x5a 0 1M"]);
    let s = status(&home, &control, &key);
    assert_eq!(s["epoch"], 1);
    let r = s["replicas"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    for x in r {
        for k in [
            "id",
            "address",
            "mode",
            "rebuild_percent",
            "rebuild_bytes_done",
        ] {
            assert!(x.get(k).is_some(), "status replica lacks {k}: {s}");
        }
        assert_eq!(x["mode"], "Healthy");
    }
    // A wrong key is refused on the TCP control port.
    let bad = d.path().join("bad");
    std::fs::write(&bad, "not-the-shared-cluster-key").unwrap();
    let out = cstor(&home)
        .args(["target", "status", "--control", &control, "--auth-key"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    // Replica B dies: RF=2 keeps writing after a recorded eviction.
    drop(reps.pop());
    qemu(&taddr, &["write -P 0x6b 1M 1M", "read -P 0x6b 1M 1M"]);
    let s = status(&home, &control, &key);
    assert_eq!(s["phase"], "Degraded", "{s}");
    // Target restart: epoch + 1, both writes readable from the surviving replica.
    drop(t);
    let (_t2, taddr) = target(&home, &addrs, &state, &key, &control);
    assert!(wait_for(Duration::from_secs(40), || {
        try_status(&home, &control, &key)
            .is_some_and(|s| s["phase"] == "Degraded" && s["epoch"] == 2)
    }));
    qemu(&taddr, &["read -P 0x5a 0 1M", "read -P 0x6b 1M 1M"]);
    // Online grow: a shrink is refused; 64M -> 128M, then a write past the old end.
    let resize = |size: &str| {
        cstor(&home)
            .args(["target", "resize", "--control", &control, "--auth-key"])
            .arg(&key)
            .arg(size)
            .output()
            .unwrap()
    };
    assert!(!resize("32M").status.success(), "a shrink was accepted");
    let out = resize("128M");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    qemu(&taddr, &["write -P 0x7c 100M 1M", "read -P 0x7c 100M 1M"]);
    // Replica B returns on its address and is opened at epoch 2; killed at once (before
    // any txg commits what that OPEN stored) and back again, the target must take it
    // back, not be fenced by it, and catch it up.
    let replica_b = || replica(&home, "pb", &addrs[1], &key).0;
    let b = replica_b();
    assert!(wait_for(Duration::from_secs(30), || {
        try_status(&home, &control, &key).is_some_and(|s| {
            s["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().all(|x| x["mode"] != "Offline"))
        })
    }));
    drop(b);
    let _b = replica_b();
    assert!(
        wait_for(Duration::from_secs(60), || {
            try_status(&home, &control, &key).is_some_and(|s| s["phase"] == "Healthy")
        }),
        "replica B was not readmitted after a restart: {:?}",
        try_status(&home, &control, &key)
    );
    qemu(
        &taddr,
        &[
            "read -P 0x5a 0 1M",
            "read -P 0x6b 1M 1M",
            "read -P 0x7c 100M 1M",
        ],
    );
}

/// The mode of replica `i` in `cstor target status -o json`.
fn mode_of(s: &serde_json::Value, i: usize) -> String {
    s["replicas"][i]["mode"].as_str().unwrap_or("").to_string()
}

/// Design §4: a replica process stopped (SIGSTOP; 30 s in the table, 6 s here: the bound
/// is T_evict) delays writes once, by at most T_evict + the eviction's flush and CAS;
/// writes then run at their usual latency; after SIGCONT the replica rejoins Stale ->
/// Current and both copies hold every write.
#[test]
fn stopped_replica_process_is_evicted_once_then_rejoins() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let (d, home, key) = setup(&["pa", "pb"]);
    let (_a, addr_a) = replica(&home, "pa", "127.0.0.1:0", &key);
    let (b, addr_b) = replica(&home, "pb", "127.0.0.1:0", &key);
    let state = d.path().join("state");
    let control = format!("127.0.0.1:{}", free_port());
    let (_t, taddr) = target(&home, &[addr_a, addr_b], &state, &key, &control);
    assert!(wait_for(Duration::from_secs(20), || {
        try_status(&home, &control, &key).is_some_and(|s| s["phase"] == "Healthy")
    }));
    let timed = |cmds: &[&str]| {
        let t = std::time::Instant::now();
        qemu(&taddr, cmds);
        t.elapsed()
    };
    let usual = timed(&["write -P 0x21 0 1M"]);
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &b.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} failed");
    };
    signal("-STOP");
    let stopped = std::time::Instant::now();
    let first = timed(&["write -P 0x22 1M 1M"]);
    let s = status(&home, &control, &key);
    assert_eq!(s["phase"], "Degraded", "{s}");
    assert_eq!(s["replicas"][1]["state"], "Stale", "{s}");
    let after = timed(&["write -P 0x23 2M 1M", "read -P 0x22 1M 1M"]);
    eprintln!("qemu-io: usual {usual:?}, first write with B stopped {first:?}, then {after:?}");
    // T_evict (2 s) + flush + CAS, on top of qemu-io's own run time.
    assert!(
        first < usual + Duration::from_secs(5),
        "the stall cost {first:?} (usual {usual:?})"
    );
    assert!(
        after < usual * 3 + Duration::from_secs(1),
        "writes stayed slow after the eviction: {after:?} (usual {usual:?})"
    );
    std::thread::sleep(Duration::from_secs(6).saturating_sub(stopped.elapsed()));
    signal("-CONT");
    assert!(
        wait_for(Duration::from_secs(60), || {
            try_status(&home, &control, &key).is_some_and(|s| {
                s["phase"] == "Healthy" && (0..2).all(|i| mode_of(&s, i) == "Healthy")
            })
        }),
        "B was not readmitted: {:?}",
        try_status(&home, &control, &key)
    );
    qemu(
        &taddr,
        &[
            "read -P 0x21 0 1M",
            "read -P 0x22 1M 1M",
            "read -P 0x23 2M 1M",
        ],
    );
}

/// Every replica process stopped at once (SIGSTOP of both, RF=2): no eviction can be
/// recorded, so a write issued meanwhile is held (T_hold) and answered BUSY, which
/// qemu retries; after SIGCONT the target re-opens both replicas on its own (same
/// epoch, no restart), the held write completes, both stay Current and every write
/// reads back.
#[test]
fn every_replica_process_stopped_then_continued_target_reconnects() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let (d, home, key) = setup(&["pa", "pb"]);
    let (a, addr_a) = replica(&home, "pa", "127.0.0.1:0", &key);
    let (b, addr_b) = replica(&home, "pb", "127.0.0.1:0", &key);
    let state = d.path().join("state");
    let control = format!("127.0.0.1:{}", free_port());
    let (_t, taddr) = target(&home, &[addr_a, addr_b], &state, &key, &control);
    assert!(wait_for(Duration::from_secs(20), || {
        try_status(&home, &control, &key).is_some_and(|s| s["phase"] == "Healthy")
    }));
    let epoch = status(&home, &control, &key)["epoch"].clone();
    qemu(&taddr, &["write -P 0x31 0 1M"]);
    let signal = |sig: &str| {
        for p in [&a, &b] {
            let ok = Command::new("kill")
                .args([sig, &p.0.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} failed");
        }
    };
    signal("-STOP");
    let stopped = std::time::Instant::now();
    let writer = {
        let taddr = taddr.clone();
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            qemu(&taddr, &["write -P 0x32 1M 1M"]);
            t.elapsed()
        })
    };
    // The write times out on both (T_evict) and the eviction is refused: Offline.
    assert!(
        wait_for(Duration::from_secs(20), || {
            try_status(&home, &control, &key).is_some_and(|s| s["phase"] == "Offline")
        }),
        "not Offline with both replicas stopped: {:?}",
        try_status(&home, &control, &key)
    );
    let s = status(&home, &control, &key);
    assert!(
        (0..2).all(|i| s["replicas"][i]["state"] == "Current"),
        "{s}"
    );
    signal("-CONT");
    let took = writer.join().expect("the held write's qemu-io");
    eprintln!(
        "write issued with both replicas stopped completed after {took:?} (stopped {:?})",
        stopped.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(30), || {
            try_status(&home, &control, &key).is_some_and(|s| {
                s["phase"] == "Healthy" && (0..2).all(|i| mode_of(&s, i) == "Healthy")
            })
        }),
        "not Healthy again: {:?}",
        try_status(&home, &control, &key)
    );
    let s = status(&home, &control, &key);
    assert_eq!(s["epoch"], epoch, "the target restarted: {s}");
    qemu(
        &taddr,
        &[
            "write -P 0x33 2M 1M",
            "read -P 0x31 0 1M",
            "read -P 0x32 1M 1M",
        ],
    );
    qemu(&taddr, &["read -P 0x33 2M 1M"]);
}

/// `cstor target snapshot|snapshots|delete-snapshot|clone|add-replica|remove-replica|
/// force-current` as processes (unix-socket control, replicas without a key).
#[test]
fn replicated_snapshot_clone_membership_and_force_commands() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let mut reps = Vec::new();
    let mut addrs = Vec::new();
    for p in ["pa", "pb"] {
        let img = d.path().join(format!("{p}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let (ok, out) = run(
            cstor(&home).args(["pool", "create", p, "stripe"]).arg(&img),
            T,
        );
        assert!(ok, "{out}");
        let mut c = cstor(&home);
        c.args(["replica", "serve", "--pool", p, "--listen", "127.0.0.1:0"]);
        let (proc_, addr) = spawn(c, "listening on ");
        reps.push(proc_);
        addrs.push(addr);
    }
    let serve = |vol: &str, size: &str, state: &Path, control: &Path| {
        let mut c = cstor(&home);
        c.args(["target", "serve", "--listen", "127.0.0.1:0", "--iqn", IQN])
            .args(["--volume", vol, "--size", size, "--state-dir"])
            .arg(state)
            .arg("--control")
            .arg(control);
        for r in &addrs {
            c.args(["--replica", r]);
        }
        spawn(c, "listening on ").0
    };
    let ctl = |control: &Path, args: &[&str]| {
        let mut c = cstor(&home);
        c.arg("target").arg(args[0]).arg("--control").arg(control);
        c.args(&args[1..]);
        run(&mut c, T)
    };
    let healthy = |control: &Path| {
        wait_for(Duration::from_secs(40), || {
            let (ok, out) = ctl(control, &["status", "-o", "json"]);
            ok && serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|s| s["phase"] == "Healthy")
        })
    };
    let (s1, c1) = (d.path().join("s1"), d.path().join("c1.sock"));
    let _t1 = serve("vol1", "64M", &s1, &c1);
    assert!(healthy(&c1));
    let (ok, out) = ctl(&c1, &["snapshot", "snap1"]);
    assert!(
        ok && out.contains("snapshot snap1 taken at io cut"),
        "{out}"
    );
    let (ok, out) = ctl(&c1, &["snapshot", "bad/name"]);
    assert!(!ok && out.contains("bad snapshot name"), "{out}");
    let (ok, out) = ctl(&c1, &["snapshots", "-o", "json"]);
    assert!(ok, "{out}");
    let l: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(l[0]["name"], "snap1");
    assert_eq!(l[0]["replicas"].as_array().unwrap().len(), 2, "{l}");
    let s2 = d.path().join("s2");
    let (ok, out) = ctl(
        &c1,
        &[
            "clone",
            "snap1",
            "vol2",
            "--state-dir",
            s2.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("cloned snap1 as vol2"), "{out}");
    let (ok, out) = ctl(&c1, &["delete-snapshot", "snap1"]);
    assert!(!ok && out.contains("has clones"), "{out}");
    // The clone serves as its own replicated volume.
    let c2 = d.path().join("c2.sock");
    let t2 = serve("vol2", "64M", &s2, &c2);
    assert!(healthy(&c2));
    let (ok, out) = ctl(&c2, &["status", "-o", "json"]);
    assert!(ok, "{out}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<String> = st["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    // Scale down then up again.
    let (ok, out) = ctl(&c2, &["remove-replica", &ids[1]]);
    assert!(ok, "{out}");
    let (ok, out) = ctl(&c2, &["remove-replica", &ids[0]]);
    assert!(!ok && out.contains("only Current"), "{out}");
    let (ok, out) = ctl(&c2, &["add-replica", &addrs[1]]);
    assert!(ok && out.contains("New"), "{out}");
    assert!(healthy(&c2), "the added replica did not become Current");
    // Offline force-current: refused without --accept-data-loss, done after the target
    // died (its pid no longer runs on this node).
    drop(t2);
    let force = |extra: &[&str]| {
        let mut c = cstor(&home);
        c.args(["target", "force-current", "--state-dir"])
            .arg(&s2)
            .args(["--member", &ids[0], "--by", "tester@test"])
            .args(extra);
        run(&mut c, T)
    };
    let (ok, out) = force(&[]);
    assert!(!ok && out.contains("--accept-data-loss"), "{out}");
    let (ok, out) = force(&["--accept-data-loss"]);
    assert!(ok && out.contains("forced Current by tester@test"), "{out}");
    let rec = std::fs::read_to_string(s2.join("membership.json")).unwrap();
    assert!(rec.contains("\"by\": \"tester@test\""), "{rec}");
}
