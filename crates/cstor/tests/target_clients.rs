//! Real initiators against `cstor target serve`: qemu-io/qemu-img over iscsi:// with
//! digests and CHAP, discard punching holes in the backing file, concurrent writers on
//! two targets of one process, hostile connections (garbage and hundreds of idle
//! sockets), and the control socket adding and removing targets while serving.

mod target_common;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use target_common::*;

const T: Duration = Duration::from_secs(60);

fn qemu_io(url_or_opts: &str, image_opts: bool, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    if image_opts {
        c.args(["--image-opts", url_or_opts]);
    } else {
        c.args(["-f", "raw", url_or_opts]);
    }
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let (ok, out) = run(&mut c, T);
    // qemu-io reports pattern mismatches on stdout while still exiting 0.
    (
        ok && !out.contains("Pattern verification failed") && !out.contains("failed"),
        out,
    )
}

fn file_bytes(p: &Path, off: usize, len: usize) -> Vec<u8> {
    std::fs::read(p).unwrap()[off..off + len].to_vec()
}

#[test]
fn qemu_round_trip_with_header_digests() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let iqn = "iqn.2024-01.io.cstor.test:digest";
    let s = serve_file(iqn, &img, "64M", &[]);
    let (host, port) = s.addr.split_once(':').unwrap();
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={host}:{port},target={iqn},lun=0,header-digest=crc32c"
    );
    let (ok, out) = qemu_io(&opts, true, &["write -P 0xab 1M 2M", "read -P 0xab 1M 2M"]);
    assert!(ok, "{out}");
    assert_eq!(file_bytes(&img, 1 << 20, 4096), vec![0xab; 4096]);
    let url = format!("iscsi://{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&url, false, &["read -P 0xab 1M 2M", "read -P 0 0 1M"]);
    assert!(ok, "{out}");
}

#[test]
fn chap_right_secret_logs_in_and_wrong_secret_is_refused() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.img");
    let chap = dir.path().join("chap");
    std::fs::write(&chap, "alice:alice-secret-123\n").unwrap();
    let iqn = "iqn.2024-01.io.cstor.test:chap";
    let s = serve_file(iqn, &img, "16M", &["--chap", chap.to_str().unwrap()]);
    let good = format!("iscsi://alice%alice-secret-123@{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&good, false, &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"]);
    assert!(ok, "{out}");
    let bad = format!("iscsi://alice%wrong-secret-456@{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&bad, false, &["read 0 4k"]);
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    let none = format!("iscsi://{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&none, false, &["read 0 4k"]);
    assert!(!ok, "login without CHAP must fail: {out}");
}

#[test]
fn discard_punches_holes_in_the_file() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("u.img");
    let iqn = "iqn.2024-01.io.cstor.test:discard";
    let s = serve_file(iqn, &img, "64M", &[]);
    let url = format!("iscsi://{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&url, false, &["write -P 0x11 0 16M"]);
    assert!(ok, "{out}");
    let before = allocated_bytes(&img);
    assert!(before >= 16 << 20, "written data allocated: {before}");
    let (ok, out) = qemu_io(&url, false, &["discard 0 16M", "read -P 0 0 16M"]);
    assert!(ok, "{out}");
    let after = allocated_bytes(&img);
    assert!(
        after < before / 4,
        "discard must free space: {before} -> {after}"
    );
}

#[test]
fn four_writers_on_two_targets_of_one_process() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let (ia, ib) = ("iqn.2024-01.io.cstor.test:a", "iqn.2024-01.io.cstor.test:b");
    let s = serve(&[
        "--target",
        &format!("{ia},file={},size=32M", a.display()),
        "--target",
        &format!("{ib},file={},size=32M", b.display()),
    ]);
    let mut handles = Vec::new();
    for (i, iqn) in [ia, ia, ib, ib].into_iter().enumerate() {
        let url = format!("iscsi://{}/{iqn}/0", s.addr);
        let off = (i % 2) * (8 << 20);
        let pat = 0x21 + i as u8;
        handles.push(std::thread::spawn(move || {
            let w = format!("write -P {pat} {off} 8M");
            let r = format!("read -P {pat} {off} 8M");
            qemu_io(&url, false, &[&w, &r])
        }));
    }
    for h in handles {
        let (ok, out) = h.join().unwrap();
        assert!(ok, "{out}");
    }
    assert_eq!(file_bytes(&a, 0, 512), vec![0x21; 512]);
    assert_eq!(file_bytes(&a, 8 << 20, 512), vec![0x22; 512]);
    assert_eq!(file_bytes(&b, 0, 512), vec![0x23; 512]);
    assert_eq!(file_bytes(&b, 8 << 20, 512), vec![0x24; 512]);
}

#[test]
fn garbage_and_idle_connections_do_not_harm_service() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("g.img");
    let iqn = "iqn.2024-01.io.cstor.test:garbage";
    let s = serve_file(iqn, &img, "16M", &[]);
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&s.addr).unwrap());
    }
    let mut seed = 0x1234_5678_u32;
    for _ in 0..50 {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let mut junk = vec![0u8; 4096];
        for x in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *x = seed as u8;
        }
        // A login opcode with a huge claimed data segment, then noise.
        junk[0] = 0x43;
        junk[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let _ = c.write_all(&junk);
    }
    let url = format!("iscsi://{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&url, false, &["write -P 0x77 0 1M", "read -P 0x77 0 1M"]);
    assert!(ok, "{out}");
    drop(idle);
    assert!(s_alive(&s), "server must survive hostile connections");
}

fn s_alive(s: &Served) -> bool {
    TcpStream::connect(&s.addr).is_ok()
}

#[test]
fn control_socket_adds_lists_and_removes_targets() {
    if !have("qemu-io", "qemu-utils + qemu-block-extra") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let img = dir.path().join("n.img");
    let s = serve(&["--control", sock.to_str().unwrap()]);
    assert!(
        wait_for(Duration::from_secs(10), || sock.exists()),
        "control socket never appeared"
    );
    let cstor = env!("CARGO_BIN_EXE_cstor");
    let iqn = "iqn.2024-01.io.cstor.test:added";
    let spec = format!("{iqn},file={},size=16M", img.display());
    let (ok, out) = run(
        Command::new(cstor).args(["target", "add", "--control", sock.to_str().unwrap(), &spec]),
        T,
    );
    assert!(ok, "{out}");
    let url = format!("iscsi://{}/{iqn}/0", s.addr);
    let (ok, out) = qemu_io(&url, false, &["write -P 0x42 0 64k", "read -P 0x42 0 64k"]);
    assert!(ok, "{out}");
    let (ok, out) = run(
        Command::new(cstor).args(["target", "list", "--control", sock.to_str().unwrap()]),
        T,
    );
    assert!(
        ok && out.contains(iqn) && out.contains("write_ops="),
        "{out}"
    );
    let (ok, out) = run(
        Command::new(cstor).args(["target", "add", "--control", sock.to_str().unwrap(), &spec]),
        T,
    );
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = run(
        Command::new(cstor).args(["target", "remove", "--control", sock.to_str().unwrap(), iqn]),
        T,
    );
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(&url, false, &["read 0 4k"]);
    assert!(!ok, "removed target must refuse logins: {out}");
}

#[test]
fn volume_target_of_an_unknown_pool_is_a_one_line_error() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .env("CSTOR_HOME", home.path())
        .args([
            "target",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--iqn",
            "iqn.2024-01.io.cstor.test:v",
            "--volume",
            "p/v",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool 'p' is not known") && err.lines().count() == 1,
        "{err}"
    );
}

/// `--targets-file` starts many targets at once and `--portal` / `portal=` are what
/// SendTargets advertises (seen through libiscsi's iscsi-ls).
#[test]
fn targets_file_and_advertised_portals_show_in_send_targets() {
    if !have("iscsi-ls", "libiscsi-bin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut specs = String::from("# one target per line\n\n");
    for i in 0..50 {
        let img = dir.path().join(format!("t{i}.img"));
        specs.push_str(&format!(
            "iqn.2024-01.io.cstor.test:many{i},file={},size=1M\n",
            img.display()
        ));
    }
    let own = dir.path().join("own.img");
    specs.push_str(&format!(
        "iqn.2024-01.io.cstor.test:own,file={},size=1M,portal=192.0.2.1:3260;192.0.2.2:3261\n",
        own.display()
    ));
    let file = dir.path().join("targets.txt");
    std::fs::write(&file, specs).unwrap();
    let s = serve(&[
        "--targets-file",
        file.to_str().unwrap(),
        "--portal",
        "10.96.0.10:3260",
    ]);
    let (ok, out) = run(
        Command::new("iscsi-ls").arg(format!("iscsi://{}", s.addr)),
        T,
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("Target:")).collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Portal:10.96.0.10:3260,1"))
            .count(),
        50,
        "{out}"
    );
    assert!(
        out.contains("Target:iqn.2024-01.io.cstor.test:own Portal:192.0.2.1:3260,1"),
        "{out}"
    );
    assert!(out.contains("192.0.2.2:3261,1"), "{out}");
}
