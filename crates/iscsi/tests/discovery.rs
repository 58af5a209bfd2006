//! Discovery at scale (issue 9 item 6): SendTargets for 2,000 targets through a client
//! that offers MaxRecvDataSegmentLength 32768 and follows continued Text responses as
//! open-iscsi does, and advertised portals per target and per server.
#![allow(clippy::big_endian_bytes)] // iSCSI fields are big-endian.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{self, op, Digests, OutPdu, StatSn, NO_TAG};
use cstor_iscsi::{text, BackendIdentity, BlockBackend};
use initiator::*;
use std::sync::Arc;
use tokio::net::TcpStream;

/// A LUN of zeros, shared by every target of the test.
#[derive(Debug)]
struct Zeros(BackendIdentity);

impl BlockBackend for Zeros {
    fn identity(&self) -> &BackendIdentity {
        &self.0
    }
    fn size_bytes(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    zero_read!();
    ignored_write!();
    instant_flush!();
    ignored_unmap!();
}

fn zeros() -> Arc<Zeros> {
    Arc::new(Zeros(BackendIdentity {
        id: [4; 16],
        serial: "zeros".into(),
    }))
}

/// SendTargets=All, following continued responses (C bit, echoing the TTT in an empty
/// request) as open-iscsi does; returns the pairs and how many PDUs carried them.
async fn send_targets(
    s: &mut TcpStream,
    mut cmd_sn: u32,
    mrdsl: u32,
) -> (Vec<(String, String)>, usize) {
    let itt = 7;
    let mut ttt = NO_TAG;
    let mut body = text::encode(&[("SendTargets".to_string(), "All".to_string())]);
    let mut all = Vec::new();
    let mut pdus = 0;
    loop {
        let mut p = OutPdu::new(op::TEXT | 0x40, 0x80, StatSn::None);
        put32(&mut p.bhs, 16, itt);
        put32(&mut p.bhs, 20, ttt);
        put32(&mut p.bhs, 24, cmd_sn);
        p.data = Bytes::from(std::mem::take(&mut body));
        cmd_sn = cmd_sn.wrapping_add(1);
        send(s, p, Digests::default()).await;
        let r = pdu::read_pdu(s, mrdsl, Digests::default()).await.unwrap();
        assert_eq!(r.opcode(), op::TEXT_RSP);
        assert_eq!(r.itt(), itt);
        assert!(
            r.data.len() <= mrdsl as usize,
            "segment within the offered length"
        );
        pdus += 1;
        all.extend_from_slice(&r.data);
        let (f, c) = (r.bhs[1] & 0x80 != 0, r.bhs[1] & 0x40 != 0);
        if f {
            assert!(!c, "a final response does not continue");
            break;
        }
        assert!(c, "a non-final SendTargets response continues");
        ttt = r.u32_at(20);
        assert_ne!(ttt, NO_TAG, "a continued response names its transfer tag");
    }
    // Parsed here: the library's parser caps pairs at what a request may carry.
    let pairs = all
        .split(|b| *b == 0)
        .filter(|i| !i.is_empty())
        .map(|i| {
            let s = std::str::from_utf8(i).expect("UTF-8");
            let (k, v) = s.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (pairs, pdus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_targets_lists_two_thousand_targets_across_continued_responses() {
    let server = cstor_iscsi::Server::new();
    let b = zeros();
    let started = std::time::Instant::now();
    for i in 0..2000 {
        let iqn = format!("iqn.2024-01.io.cstor.test:volume-{i:05}-with-a-longer-name");
        server
            .add_target(cstor_iscsi::TargetConfig::new(&iqn, b.clone()))
            .unwrap();
    }
    eprintln!("2000 targets added in {:?}", started.elapsed());
    let addr = listen(&server).await;
    let (mut s, cmd_sn) = discovery_login(&addr, 32768).await;
    let (pairs, pdus) = send_targets(&mut s, cmd_sn, 32768).await;
    let names: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(names.len(), 2000, "every target listed");
    assert!(names.iter().all(|n| n.ends_with("-with-a-longer-name")));
    let addrs = pairs.iter().filter(|(k, _)| k == "TargetAddress").count();
    assert_eq!(addrs, 2000);
    assert!(pdus > 1, "the reply needed continuation ({pdus} PDUs)");
    // The session still works after the long exchange: a second listing is complete too.
    let (again, _) = send_targets(&mut s, cmd_sn.wrapping_add(pdus as u32), 32768).await;
    assert_eq!(again.len(), pairs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_targets_advertises_configured_portals() {
    let server = cstor_iscsi::Server::new();
    let b = zeros();
    let mut own = cstor_iscsi::TargetConfig::new("iqn.2024-01.io.cstor.test:own", b.clone());
    own.portals = vec!["10.96.0.10:3260".into(), "[fd00::10]:3260".into()];
    server.add_target(own).unwrap();
    server
        .add_target(cstor_iscsi::TargetConfig::new(
            "iqn.2024-01.io.cstor.test:default",
            b.clone(),
        ))
        .unwrap();
    let addr = listen(&server).await;
    let (mut s, cmd_sn) = discovery_login(&addr, 8192).await;
    let (pairs, _) = send_targets(&mut s, cmd_sn, 8192).await;
    let of = |name: &str| -> Vec<String> {
        let at = pairs
            .iter()
            .position(|(k, v)| k == "TargetName" && v.ends_with(name))
            .unwrap();
        pairs[at + 1..]
            .iter()
            .take_while(|(k, _)| k == "TargetAddress")
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(of(":own"), ["10.96.0.10:3260,1", "[fd00::10]:3260,1"]);
    assert_eq!(of(":default"), [format!("{addr},1")]);
    // Server-wide portals apply to targets without their own.
    server.set_portals(vec!["192.0.2.7:3260".into()]);
    let (pairs, _) = send_targets(&mut s, cmd_sn.wrapping_add(1), 8192).await;
    let at = pairs
        .iter()
        .position(|(k, v)| k == "TargetName" && v.ends_with(":default"))
        .unwrap();
    assert_eq!(pairs[at + 1].1, "192.0.2.7:3260,1");
    // A moved target is announced at its new portal only.
    server
        .set_redirect(
            "iqn.2024-01.io.cstor.test:own",
            Some("198.51.100.3:3260".into()),
        )
        .unwrap();
    let (pairs, _) = send_targets(&mut s, cmd_sn.wrapping_add(2), 8192).await;
    let at = pairs
        .iter()
        .position(|(k, v)| k == "TargetName" && v.ends_with(":own"))
        .unwrap();
    let addresses: Vec<&str> = pairs[at + 1..]
        .iter()
        .take_while(|(k, _)| k == "TargetAddress")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(addresses, ["198.51.100.3:3260,1"]);
}
