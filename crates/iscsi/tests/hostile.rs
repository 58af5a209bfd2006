//! Bounded memory under hostile clients (issue 9 item 7): 64 discovery connections flood
//! 64 KiB NOP-Outs and never read. The target's memory grows by at most 64 MiB, each of
//! them is dropped within 30 s (write timeout), and a normal client keeps working
//! meanwhile. Also: unfinished logins per source address are capped, oldest evicted.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{self, op, Digests, OutPdu, StatSn, NO_TAG};
use initiator::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IQN: &str = "iqn.2024-01.io.cstor.test:hostile";

/// Resident set size of this process (server and clients share it), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nop_flooders_that_never_read_are_bounded_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let mut normal = login(
        &addr,
        IQN,
        "iqn.2024-01.io.cstor.test:normal",
        [0x80, 0, 0, 0, 0, 1],
        false,
    )
    .await
    .unwrap();
    let mut floods = Vec::new();
    for _ in 0..64 {
        floods.push(discovery_login(&addr, 262144).await);
    }
    // One 64 KiB NOP-Out, encoded once and sent over and over.
    let mut p = OutPdu::new(op::NOP_OUT | 0x40, 0x80, StatSn::None);
    put32(&mut p.bhs, 16, 0x1234);
    put32(&mut p.bhs, 20, NO_TAG);
    p.data = Bytes::from(vec![0xee; 64 * 1024]);
    let mut raw = Vec::new();
    pdu::write_pdu(&mut raw, &mut p, Digests::default())
        .await
        .unwrap();
    let raw = Bytes::from(raw);
    let base = rss();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut s, cmd_sn) in floods {
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = raw.to_vec();
            put32(&mut raw, 24, cmd_sn);
            // Writes until the target drops the connection; never reads.
            while s.write_all(&raw).await.is_ok() {}
            started.elapsed()
        }));
    }
    let mut peak = base;
    let mut normal_ok = 0;
    while tasks.iter().any(|t| !t.is_finished()) && started.elapsed() < Duration::from_secs(40) {
        peak = peak.max(rss());
        let r = tokio::time::timeout(Duration::from_secs(5), normal.scsi(&[0u8; 6], 0, &[]))
            .await
            .expect("the normal client is answered within 5 s");
        assert_eq!(r.status, 0);
        normal_ok += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        assert!(
            t.is_finished(),
            "a flooding connection still open after 40 s"
        );
        worst = worst.max(t.await.unwrap());
    }
    let grown = peak.saturating_sub(base);
    eprintln!(
        "RSS {} MiB -> peak {} MiB (+{} MiB); last flooder dropped after {worst:?}; {normal_ok} normal commands answered",
        base >> 20,
        peak >> 20,
        grown >> 20
    );
    assert!(grown <= 64 << 20, "RSS grew by {} MiB", grown >> 20);
    assert!(worst <= Duration::from_secs(30), "dropped after {worst:?}");
    assert!(normal_ok > 0);
    let r = normal.scsi(&cdb_rw(0x28, 0, 1), 512, &[]).await;
    assert_eq!(r.status, 0, "the normal client still works afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_logins_beyond_the_cap_close_the_oldest() {
    let server = cstor_iscsi::Server::with_limits(Duration::from_secs(30), 4);
    let addr = listen(&server).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fifth half-open login from the same address evicts the oldest.
    let _fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest is closed"
    );
    let open = tokio::time::timeout(Duration::from_millis(300), idle[1].read(&mut buf)).await;
    assert!(open.is_err(), "the others stay");
    // A real login still gets through.
    let (_s, _) = discovery_login(&addr, 8192).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_discovery_sessions_are_closed() {
    let server = cstor_iscsi::Server::with_limits(Duration::from_millis(500), 64);
    let addr = listen(&server).await;
    let (mut s, _) = discovery_login(&addr, 8192).await;
    let mut buf = [0u8; 48];
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // NOP-In pings may arrive first; the session must end regardless.
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "an idle discovery session is closed");
}
