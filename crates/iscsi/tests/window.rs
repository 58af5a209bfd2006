//! A full queue closes the CmdSN window before TASK SET FULL (issue 9 item 2): once the
//! buffer budget runs low, completed commands stop advancing MaxCmdSN, so an initiator
//! that keeps to the window holds its commands instead of collecting TASK SET FULL; the
//! withheld slots come back (announced) once the budget is free again.
#![allow(clippy::big_endian_bytes)] // iSCSI and SCSI fields are big-endian.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{op, OutPdu, StatSn, NO_TAG};
use cstor_iscsi::{BackendFuture, BackendIdentity, BlockBackend, IoCtx};
use initiator::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const IQN: &str = "iqn.2024-01.io.cstor.test:window";
const INI: &str = "iqn.2024-01.io.cstor.test:initiator";
const MIB: u32 = 1 << 20;

/// A LUN of zeros whose reads wait until `open` is set.
#[derive(Debug)]
struct Gate {
    id: BackendIdentity,
    open: watch::Sender<bool>,
}

impl BlockBackend for Gate {
    fn identity(&self) -> &BackendIdentity {
        &self.id
    }
    fn size_bytes(&self) -> u64 {
        1 << 30
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, _c: &IoCtx, _o: u64, len: u32) -> BackendFuture<'_, Bytes> {
        let mut open = self.open.subscribe();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            Ok(Bytes::from(vec![0u8; len as usize]))
        })
    }
    ignored_write!();
    instant_flush!();
    ignored_unmap!();
}

/// Sends an 8 MiB READ(10) with `itt`, without waiting.
async fn send_read(ini: &mut Ini, itt: u32) {
    let mut p = OutPdu::new(op::SCSI_CMD, 0xc0, StatSn::None);
    put32(&mut p.bhs, 16, itt);
    put32(&mut p.bhs, 20, 8 * MIB);
    put32(&mut p.bhs, 24, ini.cmd_sn);
    p.bhs[32..42].copy_from_slice(&cdb_rw(0x28, itt * 16384, 16384));
    ini.cmd_sn = ini.cmd_sn.wrapping_add(1);
    send(&mut ini.s, p, Default::default()).await;
}

/// Sends a NOP-Out ping with `itt` (immediate: no CmdSN, or a command taking one).
async fn send_ping(ini: &mut Ini, itt: u32, immediate: bool) {
    let opcode = if immediate {
        op::NOP_OUT | 0x40
    } else {
        op::NOP_OUT
    };
    let mut p = OutPdu::new(opcode, 0x80, StatSn::None);
    put32(&mut p.bhs, 16, itt);
    put32(&mut p.bhs, 20, NO_TAG);
    put32(&mut p.bhs, 24, ini.cmd_sn);
    if !immediate {
        ini.cmd_sn = ini.cmd_sn.wrapping_add(1);
    }
    send(&mut ini.s, p, Default::default()).await;
}

/// Reads until the NOP-In echo of `itt`; returns its MaxCmdSN.
async fn pong(ini: &mut Ini, itt: u32) -> u32 {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), ini.read())
            .await
            .expect("NOP-In within 5 s")
            .expect("connection up");
        if r.opcode() == op::NOP_IN && r.itt() == itt {
            return r.u32_at(32);
        }
        assert_ne!(
            r.opcode(),
            op::SCSI_RSP,
            "no command may end while reads are held"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_closes_the_window_before_task_set_full() {
    let b = Arc::new(Gate {
        id: BackendIdentity {
            id: [6; 16],
            serial: "gate".into(),
        },
        open: watch::channel(false).0,
    });
    let server = cstor_iscsi::Server::new();
    // The smallest process budget: eight 8 MiB reads fill it.
    server.set_max_buffered(64 << 20);
    server
        .add_target(cstor_iscsi::TargetConfig::new(IQN, b.clone()))
        .unwrap();
    let addr = listen(&server).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 1], false)
        .await
        .unwrap();
    // The power-on unit attention.
    let _ = ini.scsi(&[0u8; 6], 0, &[]).await;
    send_ping(&mut ini, 1, true).await;
    let m0 = pong(&mut ini, 1).await;
    for i in 0..8 {
        send_read(&mut ini, 10 + i).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The budget is used up: completions must not reopen the window.
    for i in 0..3 {
        send_ping(&mut ini, 2 + i, false).await;
        let max = pong(&mut ini, 2 + i).await;
        assert_eq!(
            max, m0,
            "MaxCmdSN stays put while the budget is full (ping {i})"
        );
    }
    // A command sent into the slots granted earlier finds no budget: TASK SET FULL, and
    // by then the window had stopped advancing.
    send_read(&mut ini, 30).await;
    let tsf = loop {
        let r = tokio::time::timeout(Duration::from_secs(5), ini.read())
            .await
            .expect("a response")
            .expect("connection up");
        if r.opcode() == op::SCSI_RSP {
            break r;
        }
    };
    assert_eq!((tsf.itt(), tsf.bhs[3]), (30, 0x28), "TASK SET FULL");
    assert_eq!(tsf.u32_at(32), m0, "the window closed before TASK SET FULL");
    // Reads run: all twelve slots come back once their data is written.
    b.open.send_replace(true);
    let want = m0.wrapping_add(12);
    let mut ended = 0;
    let mut max = m0;
    while max != want || ended < 8 {
        let r = tokio::time::timeout(Duration::from_secs(5), ini.read())
            .await
            .unwrap_or_else(|_| panic!("MaxCmdSN {max} never reached {want}; {ended} reads ended"))
            .expect("connection up");
        max = r.u32_at(32);
        if r.opcode() == op::DATA_IN && r.bhs[1] & 0x01 != 0 {
            assert_eq!(r.bhs[3], 0, "read GOOD");
            ended += 1;
        }
        assert_ne!(r.opcode(), op::SCSI_RSP, "no other TASK SET FULL");
    }
    // And the session works normally again.
    let r = ini.scsi(&cdb_rw(0x28, 0, 8), 4096, &[]).await;
    assert_eq!(r.status, 0);
}
