//! The userspace initiator library (crates/initiator) against `cstor target serve --volume`:
//! login and discovery, concurrent I/O with transfers across the burst limits in both
//! data-out modes, UNMAP, CHAP (one-way, mutual, wrong secrets), a login redirect, and the
//! unit attention after an online resize.

mod initiator_support;

use cstor_initiator::{discover, Chap, Error, LoginSpec, Session, SessionOptions};
use initiator_support::{free_addr, pattern, Pool, INI};
use std::sync::Arc;

const IQN: &str = "iqn.2026-12.io.cstor.test:ini-lib";

fn spec(addr: &str, iqn: &str) -> LoginSpec {
    LoginSpec {
        portal: addr.to_owned(),
        target_iqn: iqn.to_owned(),
        initiator_iqn: INI.to_owned(),
        chap: None,
        lun: 0,
    }
}

/// Regions (offset in bytes, length) that are written at once: small, exactly one data
/// segment, across the 256 KiB first burst, across the 1 MiB burst, and several bursts.
const REGIONS: &[(u64, usize)] = &[
    (0, 4096),
    (1 << 20, 256 * 1024),
    (2 << 20, 256 * 1024 + 512),
    (3 << 20, 1 << 20),
    (5 << 20, (1 << 20) + 4096),
    (8 << 20, 3 << 20),
    (12 << 20, 5 << 20),
    (20 << 20, 512),
    (21 << 20, 64 * 1024),
    (22 << 20, 2 << 20),
    (26 << 20, 9 << 20), // above the 8 MiB per-command split
    (40 << 20, 128 * 1024),
];

async fn write_and_verify(s: &Session, seed: u64) {
    let bs = u64::from(s.capacity().block_size);
    let mut tasks = Vec::new();
    for (i, &(off, len)) in REGIONS.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(len, seed + i as u64);
            s.write(off / bs, &data).await.expect("write");
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    s.flush().await.expect("flush");
    let mut tasks = Vec::new();
    for (i, &(off, len)) in REGIONS.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; len];
            s.read(off / bs, &mut buf).await.expect("read");
            assert!(
                buf == pattern(len, seed + i as u64),
                "region {i} ({off}+{len}) read back different data"
            );
        }));
    }
    for t in tasks {
        t.await.expect("reader task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_io_across_burst_limits_discovery_and_unmap() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "64M"]);
    let addr = free_addr();
    let _target = pool.serve(&addr, &["--iqn", IQN, "--volume", "ip/v"]);

    let found = discover(&addr, INI, None).await.expect("discovery");
    assert!(
        found
            .iter()
            .any(|t| t.iqn == IQN && !t.addresses.is_empty()),
        "{found:?}"
    );

    let s = Session::login(&spec(&addr, IQN)).await.expect("login");
    let cap = s.capacity();
    assert_eq!(cap.bytes(), 64 << 20, "{cap:?}");
    // ImmediateData=Yes, InitialR2T=No: immediate data, unsolicited Data-Out, then R2Ts.
    write_and_verify(&s, 1).await;

    // ImmediateData=No with InitialR2T=No: unsolicited Data-Out PDUs up to the first
    // burst, then R2Ts; and InitialR2T=Yes with ImmediateData=No: every byte solicited.
    for (seed, initial_r2t) in [(100, false), (200, true)] {
        let opts = SessionOptions {
            initial_r2t,
            immediate_data: false,
            ..SessionOptions::default()
        };
        let other = Session::login_with(&spec(&addr, IQN), opts)
            .await
            .expect("second login");
        write_and_verify(&other, seed).await;
        other.logout().await.expect("logout");
    }

    // Out of range and unaligned requests are refused before reaching the target.
    let mut one = vec![0u8; 512];
    let err = s.read(cap.blocks, &mut one).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = s.write(0, &[0u8; 100]).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");

    // UNMAP where the LUN is thin: the range reads back as zeros.
    let bs = u64::from(cap.block_size);
    match s.unmap((3 << 20) / bs, (1 << 20) / bs).await {
        Ok(()) => {
            assert!(cap.thin, "UNMAP accepted on a LUN that is not thin");
            let mut buf = vec![1u8; 1 << 20];
            s.read((3 << 20) / bs, &mut buf).await.expect("read");
            assert!(buf.iter().all(|b| *b == 0), "unmapped range not zero");
        }
        Err(e) => {
            assert!(!cap.thin, "UNMAP on a thin LUN failed: {e}");
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
        }
    }
    let st = s.stats();
    assert_eq!(st.reconnects, 0, "{st:?}");
    s.logout().await.expect("logout");
    let err = s.flush().await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_one_way_mutual_and_wrong_secrets() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "16M"]);
    let mutual_file = pool.path("chap-mutual");
    std::fs::write(
        &mutual_file,
        "alice:alice-secret-1\ntarget:target-secret-1\n",
    )
    .unwrap();
    let oneway_file = pool.path("chap-oneway");
    std::fs::write(&oneway_file, "bob:bob-secret-0001\n").unwrap();
    let img = pool.path("oneway.img");
    let one_iqn = format!("{IQN}-oneway");
    let target_spec = format!(
        "{one_iqn},file={},size=8M,chap={}",
        img.display(),
        oneway_file.display()
    );
    let addr = free_addr();
    let _target = pool.serve(
        &addr,
        &[
            "--iqn",
            IQN,
            "--volume",
            "ip/v",
            "--chap",
            mutual_file.to_str().unwrap(),
            "--target",
            &target_spec,
        ],
    );
    let with = |iqn: &str, chap: Option<Chap>| LoginSpec {
        chap,
        ..spec(&addr, iqn)
    };
    let chap = |user: &str, secret: &str, mutual: Option<(&str, &str)>| {
        Some(Chap {
            user: user.into(),
            secret: secret.as_bytes().to_vec(),
            mutual: mutual.map(|(u, s)| (u.to_owned(), s.as_bytes().to_vec())),
        })
    };

    // Mutual CHAP: both sides prove the secret; I/O works.
    let s = Session::login(&with(
        IQN,
        chap(
            "alice",
            "alice-secret-1",
            Some(("target", "target-secret-1")),
        ),
    ))
    .await
    .expect("mutual CHAP login");
    let data = pattern(8192, 7);
    s.write(8, &data).await.expect("write");
    let mut back = vec![0u8; 8192];
    s.read(8, &mut back).await.expect("read");
    assert_eq!(back, data);
    s.logout().await.expect("logout");

    // One-way CHAP on the second target.
    let s = Session::login(&with(&one_iqn, chap("bob", "bob-secret-0001", None)))
        .await
        .expect("one-way CHAP login");
    assert_eq!(s.capacity().bytes(), 8 << 20);
    s.logout().await.expect("logout");

    // Wrong secret, no credentials, and a target that cannot prove the mutual secret.
    let err = Session::login(&with(IQN, chap("alice", "wrong-secret-xx", None)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LoginRefused {
                class: 2,
                detail: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = Session::login(&with(IQN, None)).await.unwrap_err();
    assert!(matches!(err, Error::LoginRefused { class: 2, .. }), "{err}");
    let err = Session::login(&with(
        IQN,
        chap(
            "alice",
            "alice-secret-1",
            Some(("target", "not-the-secret")),
        ),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TargetAuthFailed), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_unit_attention_rereads_capacity_and_redirect_is_followed() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "16M"]);
    let addr = free_addr();
    let _target = pool.serve(&addr, &["--iqn", IQN, "--volume", "ip/v"]);
    // A second portal that only redirects to the first.
    let old_addr = free_addr();
    let stub = pool.path("stub.img");
    let redirecting = format!("{IQN},file={},size=1M,redirect={addr}", stub.display());
    let _old = pool.serve(&old_addr, &["--target", &redirecting]);

    let s = Arc::new(
        Session::login(&spec(&old_addr, IQN))
            .await
            .expect("login through the redirect"),
    );
    assert_eq!(s.capacity().bytes(), 16 << 20, "not the redirected-to LUN");
    let bs = u64::from(s.capacity().block_size);
    let first = pattern(4096, 3);
    s.write(0, &first).await.expect("write");

    let p = pool.home();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["volume", "resize", "ip/v", "--size", "32M"])
            .env("CSTOR_HOME", p)
            .output()
            .expect("cstor volume resize");
        assert!(out.status.success(), "{out:?}");
    })
    .await
    .unwrap();

    // The next command meets CAPACITY DATA HAS CHANGED; it is retried and succeeds, and
    // the capacity is read again.
    let second = pattern(4096, 4);
    s.write(8, &second).await.expect("write after the resize");
    assert_eq!(s.capacity().bytes(), 32 << 20, "capacity not re-read");
    let st = s.stats();
    assert!(
        st.unit_attentions >= 1 && st.capacity_changes == 1,
        "{st:?}"
    );
    // The new space is usable.
    let tail = pattern(65536, 5);
    let lba = (32 << 20) / bs - 128;
    s.write(lba, &tail).await.expect("write in the grown part");
    let mut back = vec![0u8; 65536];
    s.read(lba, &mut back).await.expect("read");
    assert_eq!(back, tail);
    let mut back = vec![0u8; 4096];
    s.read(0, &mut back).await.expect("read");
    assert_eq!(back, first);
    s.logout().await.expect("logout");
}
