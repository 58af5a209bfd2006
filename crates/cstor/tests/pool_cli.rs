//! The `cstor pool` / `cstor volume` command contract, end to end through the real binary:
//! every invocation of issue 2's contract on sparse files, bad input refused with one line
//! and a non-zero exit, corruption repaired by scrub, import from renamed devices with an
//! empty $CSTOR_HOME, send/recv round trips, device locking across $CSTOR_HOMEs, and the
//! commands served by `cstor target serve --volume` while it holds the pool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
    fn disks(&self, prefix: &str, n: usize, size: u64) -> Vec<String> {
        (0..n)
            .map(|i| {
                let p = self.path(&format!("{prefix}{i}.img"));
                std::fs::File::create(&p).unwrap().set_len(size).unwrap();
                p
            })
            .collect()
    }
    fn cmd(&self, home: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cstor"));
        c.args(args).env("CSTOR_HOME", home).env_remove("RUST_LOG");
        c
    }
    fn run_in(&self, home: &Path, args: &[&str]) -> Output {
        self.cmd(home, args).output().unwrap()
    }
    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run_in(&self.home(), args);
        assert!(
            out.status.success(),
            "cstor {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    /// Run and require a one-line error; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run_in(&self.home(), args);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!out.status.success(), "cstor {args:?} should fail");
        assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
        err
    }
    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn write_file(path: &str, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

#[test]
fn pool_and_volume_contract_on_raidz() {
    let e = Env::new();
    let d = e.disks("d", 3, 256 * MIB);
    let mut create = vec!["pool", "create", "tank", "--compression", "lz4", "raidz"];
    create.extend(d.iter().map(String::as_str));
    e.ok(&create);

    let st = e.json(&["pool", "status", "tank", "-o", "json"]);
    assert_eq!(st["name"], "tank");
    assert_eq!(st["health"], "ONLINE");
    assert_eq!(st["devices"].as_array().unwrap().len(), 3);
    assert!(st["scan"].is_null());
    assert_eq!(st["read_only"], false);
    let size = st["size"].as_u64().unwrap();
    // raidz of 3: about 2/3 of the raw 768 MiB is usable.
    assert!(size > 400 * MIB && size <= 512 * MIB, "usable {size}");
    let list = e.json(&["pool", "list", "-o", "json"]);
    assert_eq!(list[0]["name"], "tank");

    // Bad input: one line, non-zero exit, nothing changed.
    e.fails(&["pool", "create", "bad", "raidz", &d[0], &d[1]]);
    e.fails(&["pool", "create", "tank2", "mirror", &d[0], &d[1]]); // holds a pool
    e.fails(&["pool", "status", "nosuch"]);
    e.fails(&["volume", "create", "tank/v", "--size", "1X"]);
    e.ok(&["volume", "create", "tank/vol", "--size", "64M"]);
    e.fails(&["volume", "create", "tank/vol", "--size", "64M"]);
    e.fails(&["volume", "create", "nosuch/vol", "--size", "64M"]);
    let data = pattern(3 * MIB, 7);
    let input = e.path("in.bin");
    write_file(&input, &data);
    e.fails(&[
        "volume", "write", "tank/vol", "--input", &input, "--offset", "100",
    ]);
    e.fails(&[
        "volume", "write", "tank/vol", "--input", &input, "--offset", "63M",
    ]);
    e.fails(&["volume", "write", "tank/nosuch", "--input", &input]);
    let vols = e.json(&["volume", "list", "tank", "-o", "json"]);
    assert_eq!(
        vols[0]["referenced"], 0,
        "a refused write changed nothing: {vols}"
    );

    // Write, read back, io numbers.
    e.ok(&[
        "volume",
        "write",
        "tank/vol",
        "--input",
        &input,
        "--offset",
        "1M",
        "--io-number",
        "42",
    ]);
    let out = e.path("out.bin");
    e.ok(&[
        "volume", "read", "tank/vol", "--output", &out, "--offset", "1M", "--length", "3M",
    ]);
    assert!(std::fs::read(&out).unwrap() == data, "read back differs");
    let changed = e.json(&[
        "volume", "changed", "tank/vol", "--since", "41", "-o", "json",
    ]);
    let covered: u64 = changed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["length"].as_u64().unwrap())
        .sum();
    assert!(
        covered >= 3 * MIB,
        "changed ranges cover the write: {changed}"
    );
    let none = e.json(&[
        "volume", "changed", "tank/vol", "--since", "42", "-o", "json",
    ]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    // io ranges (a, b]: the write of io 42 is in (41, 42], not in (0, 41].
    let below = e.json(&[
        "volume", "changed", "tank/vol", "--since", "0", "--until", "41", "-o", "json",
    ]);
    assert_eq!(below.as_array().unwrap().len(), 0, "{below}");
    let exact = e.json(&[
        "volume", "changed", "tank/vol", "--since", "41", "--until", "42", "-o", "json",
    ]);
    assert_eq!(exact, changed);
    // An io cut at or below a write's io is refused; above it, taken and listed.
    let refused = e.fails(&["volume", "snapshot", "tank/vol@cut42", "--io-cut", "42"]);
    assert!(refused.contains("io cut 42"), "{refused}");
    e.ok(&["volume", "snapshot", "tank/vol@cut43", "--io-cut", "43"]);
    let vols = e.json(&["volume", "list", "tank", "-o", "json"]);
    let cut = vols[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cut43")
        .cloned()
        .unwrap();
    assert_eq!(cut["io_cut"], 43, "{vols}");
    // Replication records: nothing set yet; every write (io 42) is stable after the
    // commands' commits.
    assert_eq!(vols[0]["checkpoint"], 0, "{vols}");
    assert_eq!(vols[0]["epoch"], 0, "{vols}");
    assert_eq!(vols[0]["flush_point"], 42, "{vols}");
    e.ok(&["volume", "destroy", "tank/vol@cut43"]);

    // Snapshot, overwrite, clone, rollback.
    e.ok(&["volume", "snapshot", "tank/vol@s1"]);
    let other = pattern(3 * MIB, 99);
    let input2 = e.path("in2.bin");
    write_file(&input2, &other);
    e.ok(&[
        "volume", "write", "tank/vol", "--input", &input2, "--offset", "1M",
    ]);
    e.ok(&["volume", "clone", "tank/vol@s1", "tank/clone"]);
    e.ok(&[
        "volume",
        "read",
        "tank/clone",
        "--output",
        &out,
        "--offset",
        "1M",
        "--length",
        "3M",
    ]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "clone holds the snapshot"
    );
    let err = e.fails(&["volume", "destroy", "tank/vol@s1"]);
    assert!(err.contains("clone"), "{err}");
    e.ok(&["volume", "destroy", "tank/clone"]);
    // An older snapshot: refused while newer ones exist, unless --destroy-newer.
    e.ok(&["volume", "snapshot", "tank/vol@s1b"]);
    // A snapshot reads directly, without a clone.
    e.ok(&[
        "volume",
        "read",
        "tank/vol@s1",
        "--output",
        &out,
        "--offset",
        "1M",
        "--length",
        "3M",
    ]);
    assert!(std::fs::read(&out).unwrap() == data, "snapshot read");
    let err = e.fails(&["volume", "rollback", "tank/vol@s1"]);
    assert!(err.contains("newer snapshots exist: s1b"), "{err}");
    let said = e.ok(&["volume", "rollback", "tank/vol@s1", "--destroy-newer"]);
    assert!(said.contains("destroyed newer snapshots: s1b"), "{said}");
    e.ok(&[
        "volume", "read", "tank/vol", "--output", &out, "--offset", "1M", "--length", "3M",
    ]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "rollback restores the snapshot"
    );

    // Send / recv: full, then incremental.
    e.ok(&[
        "volume", "write", "tank/vol", "--input", &input2, "--offset", "8M",
    ]);
    e.ok(&["volume", "snapshot", "tank/vol@s2"]);
    let full = e.path("full.stream");
    let incr = e.path("incr.stream");
    let bin = env!("CARGO_BIN_EXE_cstor");
    let sh = |cmd: String| {
        Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("CSTOR_HOME", e.home())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(sh(format!("{bin} volume send tank/vol@s1 > {full}")));
    assert!(sh(format!(
        "{bin} volume send tank/vol@s2 --from s1 > {incr}"
    )));
    assert!(sh(format!("{bin} volume recv tank/copy < {full}")));
    assert!(sh(format!("{bin} volume recv tank/copy < {incr}")));
    e.ok(&[
        "volume",
        "read",
        "tank/copy",
        "--output",
        &out,
        "--offset",
        "8M",
        "--length",
        "3M",
    ]);
    assert!(
        std::fs::read(&out).unwrap() == other,
        "incremental stream applied"
    );
    // A damaged stream is refused and changes nothing.
    let mut bad = std::fs::read(&full).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let badp = e.path("bad.stream");
    std::fs::write(&badp, &bad).unwrap();
    assert!(
        !sh(format!("{bin} volume recv tank/broken < {badp}")),
        "a corrupt stream must be refused"
    );
    let names: Vec<String> = e
        .json(&["volume", "list", "tank", "-o", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"broken".to_owned()), "{names:?}");

    // Resize, unmap.
    e.ok(&["volume", "resize", "tank/vol", "--size", "128M"]);
    e.fails(&["volume", "resize", "tank/vol", "--size", "32M"]);
    e.ok(&[
        "volume", "unmap", "tank/vol", "--offset", "8M", "--length", "3M",
    ]);
    e.ok(&[
        "volume", "read", "tank/vol", "--output", &out, "--offset", "8M", "--length", "3M",
    ]);
    assert!(
        std::fs::read(&out).unwrap().iter().all(|&b| b == 0),
        "unmapped range reads zeros"
    );

    // Corrupt one device of the raidz (away from its labels), then scrub repairs it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&d[1]).unwrap();
        let junk = pattern(64 * MIB, 3);
        f.write_at(&junk, 4 * MIB).unwrap();
        f.sync_all().unwrap();
    }
    e.ok(&[
        "volume", "read", "tank/vol", "--output", &out, "--offset", "1M", "--length", "3M",
    ]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "reads stay correct over a corrupt device"
    );
    e.ok(&["pool", "scrub", "tank", "--wait"]);
    let st = e.json(&["pool", "status", "tank", "-o", "json"]);
    assert_eq!(st["scan"]["kind"], "scrub");
    assert_eq!(st["scan"]["state"], "finished");
    assert!(st["scan"]["repaired_bytes"].as_u64().unwrap() > 0, "{st}");
    // No process holds the pool: without --wait the scrub runs in the command.
    let here = e.run_in(&e.home(), &["pool", "scrub", "tank"]);
    assert!(here.status.success(), "{here:?}");
    assert!(String::from_utf8_lossy(&here.stderr).contains("runs in this command"));
    let st = e.json(&["pool", "status", "tank", "-o", "json"]);
    assert_eq!(
        st["scan"]["repaired_bytes"], 0,
        "the first scrub repaired everything: {st}"
    );

    // Import from renamed devices in another order with an empty $CSTOR_HOME.
    e.ok(&["pool", "export", "tank"]);
    let renamed: Vec<String> = d
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = e.path(&format!("moved{}.img", 2 - i));
            std::fs::rename(p, &n).unwrap();
            n
        })
        .collect();
    let home2 = e.dir.path().join("home2");
    let out2 = e.run_in(
        &home2,
        &[
            "pool",
            "import",
            "--discard-log-tail",
            "tank",
            &renamed[2],
            &renamed[0],
            &renamed[1],
        ],
    );
    assert!(
        out2.status.success(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    // A readable log: nothing is dropped, and nothing said about it.
    assert!(!String::from_utf8_lossy(&out2.stderr).contains("dropped"));
    let out3 = e.run_in(
        &home2,
        &[
            "volume", "read", "tank/vol", "--output", &out, "--offset", "1M", "--length", "3M",
        ],
    );
    assert!(
        out3.status.success(),
        "{}",
        String::from_utf8_lossy(&out3.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == data, "data after import");
    let out4 = e.run_in(&home2, &["pool", "destroy", "tank"]);
    assert!(
        out4.status.success(),
        "{}",
        String::from_utf8_lossy(&out4.stderr)
    );
}

#[test]
fn mirror_survives_a_lost_device_and_replace_resilvers() {
    let e = Env::new();
    let d = e.disks("m", 3, 128 * MIB);
    e.ok(&["pool", "create", "mp", "mirror", &d[0], &d[1]]);
    e.ok(&["volume", "create", "mp/v", "--size", "32M"]);
    let data = pattern(8 * MIB, 5);
    let input = e.path("in.bin");
    write_file(&input, &data);
    e.ok(&["volume", "write", "mp/v", "--input", &input]);
    // One side of the mirror is lost: the pool imports DEGRADED and serves.
    std::fs::remove_file(&d[1]).unwrap();
    let st = e.json(&["pool", "status", "mp", "-o", "json"]);
    assert_eq!(st["health"], "DEGRADED", "{st}");
    let out = e.path("out.bin");
    e.ok(&["volume", "read", "mp/v", "--output", &out, "--length", "8M"]);
    assert!(std::fs::read(&out).unwrap() == data);
    // Replace it with a new device: resilver copies the live data.
    e.ok(&["pool", "replace", "mp", &d[1], &d[2], "--wait"]);
    let st = e.json(&["pool", "status", "mp", "-o", "json"]);
    assert_eq!(st["health"], "ONLINE", "{st}");
    assert_eq!(st["scan"]["kind"], "resilver");
    // The old side is now lost too; the new one alone must hold the data.
    std::fs::remove_file(&d[0]).unwrap();
    let st = e.json(&["pool", "status", "mp", "-o", "json"]);
    assert_eq!(st["health"], "DEGRADED", "{st}");
    e.ok(&["volume", "read", "mp/v", "--output", &out, "--length", "8M"]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "resilvered copy holds the data"
    );
}

/// Polls `pool status` until its scan is no longer running; returns the status.
fn wait_scan_finished(e: &Env, pool: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = e.json(&["pool", "status", pool, "-o", "json"]);
        if st["scan"]["state"] == "finished" {
            return st;
        }
        assert!(st["scan"]["state"] != "failed", "{st}");
        assert!(Instant::now() < deadline, "scan did not finish: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A mirror side that was away while data changed comes back marked resilvering and is
/// rebuilt without a replace: by `pool import` in the command, and in the background by
/// a process that starts serving the pool. Then it alone holds the newest data.
#[test]
fn returning_device_is_resilvered_on_import_and_when_served() {
    let e = Env::new();
    let d = e.disks("r", 2, 128 * MIB);
    e.ok(&["pool", "create", "rp", "mirror", &d[0], &d[1]]);
    e.ok(&["volume", "create", "rp/v", "--size", "32M"]);
    let input = e.path("in.bin");
    let away = |i: usize| format!("{}.away", d[i]);
    let m = MIB as usize;
    let mut expect = vec![0u8; 12 * m];
    for (round, gone) in [1usize, 0].into_iter().enumerate() {
        std::fs::rename(&d[gone], away(gone)).unwrap();
        let data = pattern(4 * MIB, 40 + round as u8);
        write_file(&input, &data);
        let off = round * 4 * m;
        e.ok(&[
            "volume",
            "write",
            "rp/v",
            "--input",
            &input,
            "--offset",
            &off.to_string(),
        ]);
        expect[off..off + 4 * m].copy_from_slice(&data);
        std::fs::rename(away(gone), &d[gone]).unwrap();
        if round == 0 {
            e.ok(&["pool", "export", "rp"]);
            let out = e.run_in(&e.home(), &["pool", "import", "rp", &d[1], &d[0]]);
            assert!(out.status.success(), "{out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("missed writes"), "{err}");
            let st = e.json(&["pool", "status", "rp", "-o", "json"]);
            assert_eq!(st["health"], "ONLINE", "{st}");
            assert_eq!(st["scan"]["kind"], "resilver", "{st}");
        } else {
            let guard = serve_volume(&e, free_port(), "iqn.2026-11.io.cstor.test:rp", "rp/v");
            let st = wait_scan_finished(&e, "rp");
            assert_eq!(st["scan"]["kind"], "resilver", "{st}");
            assert_eq!(st["health"], "ONLINE", "{st}");
            drop(guard);
        }
    }
    // Each side alone holds everything.
    let out = e.path("out.bin");
    for gone in [0usize, 1] {
        std::fs::rename(&d[gone], away(gone)).unwrap();
        e.ok(&[
            "volume", "read", "rp/v", "--output", &out, "--length", "12M",
        ]);
        assert!(
            std::fs::read(&out).unwrap() == expect,
            "device {} alone lacks data",
            1 - gone
        );
        std::fs::rename(away(gone), &d[gone]).unwrap();
    }
}

/// Starts `cstor target serve --volume VOLUME` on `port` and waits until it listens.
fn serve_volume(e: &Env, port: u16, iqn: &str, volume: &str) -> Killed {
    let listen = format!("127.0.0.1:{port}");
    let child = e
        .cmd(
            &e.home(),
            &[
                "target", "serve", "--listen", &listen, "--iqn", iqn, "--volume", volume,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "target did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn served_pool_answers_commands_and_stays_locked() {
    let e = Env::new();
    let d = e.disks("s", 2, 128 * MIB);
    e.ok(&["pool", "create", "sp", "stripe", &d[0], &d[1]]);
    e.ok(&["volume", "create", "sp/v", "--size", "64M"]);
    let port = free_port();
    let iqn = "iqn.2026-11.io.cstor.test:sp-v";
    let _guard = serve_volume(&e, port, iqn, "sp/v");
    // Commands reach the serving process over its admin socket.
    let st = e.json(&["pool", "status", "sp", "-o", "json"]);
    assert_eq!(st["health"], "ONLINE");
    let data = pattern(MIB, 1);
    let input = e.path("in.bin");
    write_file(&input, &data);
    e.ok(&[
        "volume", "write", "sp/v", "--input", &input, "--offset", "4M",
    ]);
    e.ok(&["volume", "snapshot", "sp/v@live"]);
    // Without --wait the serving process scrubs in the background.
    let said = e.ok(&["pool", "scrub", "sp"]);
    assert!(said.contains("started"), "{said}");
    let st = wait_scan_finished(&e, "sp");
    assert_eq!(st["scan"]["kind"], "scrub", "{st}");
    e.ok(&["pool", "scrub", "sp", "--wait"]);
    let err = e.fails(&["pool", "export", "sp"]);
    assert!(err.contains("holds it open"), "{err}");
    // Another $CSTOR_HOME cannot open the devices the target holds.
    let other = e.dir.path().join("other");
    let out = e.run_in(&other, &["pool", "import", "sp", &d[0], &d[1]]);
    assert!(!out.status.success(), "second opener must be refused");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("in use"), "{msg}");
    // Through iSCSI, where qemu-io is installed: the initiator sees what the CLI wrote.
    if Command::new("qemu-io").arg("--version").output().is_ok() {
        let url = format!("iscsi://127.0.0.1:{port}/{iqn}/0");
        let out = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "read -P 0 0 1M",
                "-c",
                "write -P 0x5a 8M 1M",
                &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains("fail"), "{text}");
        let back = e.path("back.bin");
        e.ok(&[
            "volume", "read", "sp/v", "--output", &back, "--offset", "8M", "--length", "1M",
        ]);
        assert!(std::fs::read(&back).unwrap().iter().all(|&b| b == 0x5a));
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and qemu-io is not installed (qemu-utils, qemu-block-extra)"
        );
        eprintln!("SKIP iSCSI part: qemu-io not installed (qemu-utils, qemu-block-extra)");
    }
}
