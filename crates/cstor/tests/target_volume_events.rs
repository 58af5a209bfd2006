//! Backend events for pool volumes (issue 9 item 5), end to end through the real binary:
//! `cstor volume resize` of a volume that `cstor target serve --volume` serves reaches the
//! serving process over its admin socket, and every logged-in session then gets CAPACITY
//! DATA HAS CHANGED (2Ah/09h) and sees the new capacity.
#![allow(clippy::big_endian_bytes)] // SCSI fields are big-endian.

#[path = "../../iscsi/tests/initiator/mod.rs"]
mod initiator;
mod target_common;

use std::path::Path;
use std::process::{Command, Stdio};
use target_common::serve_in_home;

const IQN: &str = "iqn.2026-12.io.cstor.test:events";
const INI: &str = "iqn.2026-12.io.cstor.test:initiator";

fn cstor(home: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(args)
        .env("CSTOR_HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run cstor");
    assert!(
        out.status.success(),
        "cstor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// READ CAPACITY(16): the number of logical blocks.
async fn blocks(ini: &mut initiator::Ini) -> u64 {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let r = ini.scsi(&cdb, 32, &[]).await;
    assert_eq!(r.status, 0, "READ CAPACITY(16): {:?}", r.sense_key());
    u64::from_be_bytes(r.data[..8].try_into().expect("8 bytes")) + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_resize_raises_capacity_data_has_changed_on_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let disk = dir.path().join("d0.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let disk = disk.to_str().unwrap();
    cstor(&home, &["pool", "create", "ep", "stripe", disk]);
    cstor(&home, &["volume", "create", "ep/v", "--size", "16M"]);
    let served = serve_in_home(&home, &["--iqn", IQN, "--volume", "ep/v"]);
    let mut sessions = Vec::new();
    for i in 1..=2u8 {
        let mut ini = initiator::login(&served.addr, IQN, INI, [0x80, 0, 0, 0, 0, i], false)
            .await
            .unwrap();
        let _ = ini.scsi(&[0u8; 6], 0, &[]).await; // the power-on unit attention
        assert_eq!(blocks(&mut ini).await, (16 << 20) / 512);
        sessions.push(ini);
    }
    let h = home.clone();
    tokio::task::spawn_blocking(move || cstor(&h, &["volume", "resize", "ep/v", "--size", "32M"]))
        .await
        .unwrap();
    for (i, ini) in sessions.iter_mut().enumerate() {
        let r = ini.scsi(&[0u8; 6], 0, &[]).await;
        assert_eq!(
            (r.status, r.sense_key()),
            (2, (6, 0x2a, 0x09)),
            "session {i}: CAPACITY DATA HAS CHANGED"
        );
        assert_eq!(
            blocks(ini).await,
            (32 << 20) / 512,
            "session {i}: new capacity"
        );
    }
    drop(served);
}
