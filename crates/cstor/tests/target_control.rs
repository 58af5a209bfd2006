//! The control socket at scale and for moves (issue 9 item 6), through the real binary:
//! `cstor target add --targets-file` adds 2,000 targets to a running server in one
//! request (timed), `cstor target redirect` and `redirect=` in a `--target` spec make
//! logins to a moved target answer "moved temporarily", and clearing it serves it again.

#[path = "../../iscsi/tests/initiator/mod.rs"]
mod initiator;
mod target_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use target_common::serve;

const TARGETS: usize = 2000;
const INI: &str = "iqn.2026-12.io.cstor.test:initiator";

fn cstor(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run cstor");
    assert!(
        out.status.success(),
        "cstor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_add_over_the_control_socket_and_login_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    // The new home of the moved target.
    let moved = "iqn.2026-12.io.cstor.test:moved";
    let there = serve(&[
        "--target",
        &format!("{moved},file={},size=1M", p("moved.img")),
    ]);
    let sock = p("control.sock");
    let here = serve(&[
        "--control",
        &sock,
        "--target",
        &format!(
            "{moved},file={},size=1M,redirect={}",
            p("old.img"),
            there.addr
        ),
    ]);
    // redirect= in the spec: the login is answered "moved temporarily".
    let r = initiator::login(&here.addr, moved, INI, [0x80, 0, 0, 0, 0, 1], false).await;
    assert_eq!(r.err(), Some((0x01, 0x01)), "redirected by the spec");
    let mut ini = initiator::login(&there.addr, moved, INI, [0x80, 0, 0, 0, 0, 1], false)
        .await
        .expect("login at the new portal");
    let _ = ini.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!(ini.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    // Cleared and set again through the control socket.
    let said = cstor(&["target", "redirect", "--control", &sock, moved]);
    assert!(said.contains("serving"), "{said}");
    assert!(
        initiator::login(&here.addr, moved, INI, [0x80, 0, 0, 0, 0, 2], false)
            .await
            .is_ok()
    );
    cstor(&["target", "redirect", "--control", &sock, moved, &there.addr]);
    let r = initiator::login(&here.addr, moved, INI, [0x80, 0, 0, 0, 0, 3], false).await;
    assert_eq!(
        r.err(),
        Some((0x01, 0x01)),
        "redirected by the control socket"
    );

    // 2,000 targets in one request.
    let mut specs = String::from("# bulk\n");
    for i in 0..TARGETS {
        specs.push_str(&format!(
            "iqn.2026-12.io.cstor.test:bulk{i},file={},size=1M\n",
            p(&format!("b{i}.img"))
        ));
    }
    let file = p("targets.txt");
    std::fs::write(&file, specs).unwrap();
    let t0 = Instant::now();
    let said = tokio::task::spawn_blocking({
        let sock = sock.clone();
        move || cstor(&["target", "add", "--control", &sock, "--targets-file", &file])
    })
    .await
    .unwrap();
    let took = t0.elapsed();
    eprintln!("added {TARGETS} targets over the control socket in {took:?}");
    assert!(said.contains(&format!("added {TARGETS} targets")), "{said}");
    assert!(took < Duration::from_secs(60), "bulk add took {took:?}");
    let listed = cstor(&["target", "list", "--control", &sock]);
    assert_eq!(listed.lines().count(), TARGETS + 1);
    // The last one added serves.
    let last = format!("iqn.2026-12.io.cstor.test:bulk{}", TARGETS - 1);
    let mut ini = initiator::login(&here.addr, &last, INI, [0x80, 0, 0, 0, 0, 4], false)
        .await
        .expect("login to a bulk-added target");
    let _ = ini.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!(ini.scsi(&[0u8; 6], 0, &[]).await.status, 0);
}
