//! Task management across sessions (issue 9 item 2): two sessions on one LU. A LUN RESET
//! from one aborts the other's queued and in-flight commands, which get TASK ABORTED
//! (TAS=1), and is answered only after they ended; PREEMPT AND ABORT fences a registrant's
//! commands; logout does not wait for Data-Out that will never come.
#![allow(clippy::big_endian_bytes)] // SCSI fields are big-endian.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{op, OutPdu, StatSn};
use cstor_iscsi::{BackendError, BackendFuture, BackendIdentity, BlockBackend, IoCtx};
use initiator::*;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2024-01.io.cstor.test:tmf";

/// Writes at byte 0 are under way at once and take 800 ms (cancel cannot stop them);
/// writes elsewhere wait in a queue until cancelled (never started).
#[derive(Debug)]
struct TwoSpeed {
    id: BackendIdentity,
    data: Mutex<Vec<u8>>,
    ended: Mutex<Vec<Instant>>,
}

impl BlockBackend for TwoSpeed {
    fixed_lu!();
    fn read(&self, _c: &IoCtx, o: u64, len: u32) -> BackendFuture<'_, Bytes> {
        let d = self.data.lock()[o as usize..o as usize + len as usize].to_vec();
        Box::pin(async move { Ok(Bytes::from(d)) })
    }
    fn write(&self, c: &IoCtx, o: u64, d: Bytes) -> BackendFuture<'_, ()> {
        let ctx = c.clone();
        Box::pin(async move {
            if o == 0 {
                tokio::time::sleep(Duration::from_millis(800)).await;
            } else {
                ctx.cancel.raised().await;
                self.ended.lock().push(Instant::now());
                return Err(BackendError::NotStarted);
            }
            self.data.lock()[o as usize..o as usize + d.len()].copy_from_slice(&d);
            self.ended.lock().push(Instant::now());
            Ok(())
        })
    }
    instant_flush!();
    ignored_unmap!();
}

async fn setup() -> (Arc<TwoSpeed>, String) {
    let b = Arc::new(TwoSpeed {
        id: BackendIdentity {
            id: [5; 16],
            serial: "twospeed".into(),
        },
        data: Mutex::new(vec![0; 1 << 20]),
        ended: Mutex::new(Vec::new()),
    });
    let mut cfg = cstor_iscsi::TargetConfig::new(IQN, b.clone());
    // Long enough that only the abort, never the deadline, ends the queued write.
    cfg.io_timeout = Duration::from_secs(8);
    let server = cstor_iscsi::Server::new();
    server.add_target(cfg).unwrap();
    (b, listen(&server).await)
}

/// Sends a task management request; returns when its response came, with the code.
async fn tmf(ini: &mut Ini, function: u8, rtt: u32) -> u8 {
    let mut p = OutPdu::new(op::TASK_MGMT | 0x40, 0x80 | function, StatSn::None);
    put32(&mut p.bhs, 16, 0x7000);
    put32(&mut p.bhs, 20, rtt);
    put32(&mut p.bhs, 24, ini.cmd_sn);
    send(&mut ini.s, p, Default::default()).await;
    loop {
        let r = ini.read().await.expect("TMF response");
        if r.opcode() == op::TASK_MGMT_RSP {
            return r.bhs[2];
        }
    }
}

/// Statuses of the SCSI responses for `n` commands, by ITT.
async fn statuses(ini: &mut Ini, n: usize) -> Vec<(u32, u8)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(10), ini.read())
            .await
            .expect("responses within 10 s")
            .expect("connection up");
        if r.opcode() == op::SCSI_RSP {
            out.push((r.itt(), r.bhs[3]));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lun_reset_from_one_session_aborts_the_others_tasks_and_answers_after_they_ended() {
    let (b, addr) = setup().await;
    let ini_a = "iqn.2024-01.io.cstor.test:a";
    let ini_b = "iqn.2024-01.io.cstor.test:b";
    let mut a = login(&addr, IQN, ini_a, [0x80, 0, 0, 0, 0, 1], false)
        .await
        .unwrap();
    let mut other = login(&addr, IQN, ini_b, [0x80, 0, 0, 0, 0, 2], false)
        .await
        .unwrap();
    // In flight (under way in the backend) and queued (waiting in the backend).
    other.send_write(1, 0, 0x11).await;
    other.send_write(2, 8, 0x22).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    assert_eq!(tmf(&mut a, 5, 0).await, 0, "LUN RESET function complete");
    let answered = Instant::now();
    let ended = b.ended.lock().clone();
    assert_eq!(
        ended.len(),
        2,
        "both of the other session's calls ended before the answer"
    );
    assert!(ended.iter().all(|e| *e <= answered));
    assert!(
        answered - t0 >= Duration::from_millis(500),
        "waited for the in-flight write"
    );
    // TAS=1: the other initiator learns its commands were aborted.
    assert_eq!(statuses(&mut other, 2).await, vec![(1, 0x40), (2, 0x40)]);
    assert_eq!(b.data.lock()[8 * 512], 0, "the queued write never lands");
    // The other nexus then sees the reset unit attention, and both work again.
    let r = other.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!((r.status, r.sense_key()), (2, (6, 0x29, 0x03)));
    assert_eq!(other.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    assert_eq!(a.scsi(&[0u8; 6], 0, &[]).await.status, 0);
}

fn pr_out(sa: u8, kind: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    let mut d = vec![0u8; 24];
    d[..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (c, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempt_and_abort_fences_the_preempted_registrants_commands() {
    let (b, addr) = setup().await;
    let mut a = login(
        &addr,
        IQN,
        "iqn.2024-01.io.cstor.test:a",
        [0x80, 0, 0, 0, 0, 3],
        false,
    )
    .await
    .unwrap();
    let mut victim = login(
        &addr,
        IQN,
        "iqn.2024-01.io.cstor.test:b",
        [0x80, 0, 0, 0, 0, 4],
        false,
    )
    .await
    .unwrap();
    let (c, d) = pr_out(0, 0, 0, 0xa);
    assert_eq!(a.scsi(&c, 0, &d).await.status, 0);
    let (c, d) = pr_out(0, 0, 0, 0xb);
    assert_eq!(victim.scsi(&c, 0, &d).await.status, 0);
    // The victim holds a Write Exclusive - Registrants Only reservation.
    let (c, d) = pr_out(1, 5, 0xb, 0);
    assert_eq!(victim.scsi(&c, 0, &d).await.status, 0);
    // A write of the victim waits in the backend.
    victim.send_write(9, 8, 0x99).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // PREEMPT AND ABORT of key 0xb, taking a Write Exclusive reservation.
    let (c, d) = pr_out(5, 1, 0xa, 0xb);
    let r = a.scsi(&c, 0, &d).await;
    assert_eq!(r.status, 0, "sense {:?}", r.sense_key());
    assert_eq!(
        b.ended.lock().len(),
        1,
        "the fenced write ended before the PREEMPT answer"
    );
    assert_eq!(statuses(&mut victim, 1).await, vec![(9, 0x40)]);
    assert_eq!(b.data.lock()[8 * 512], 0, "the fenced write never lands");
    // The victim lost its registration: REGISTRATIONS PREEMPTED, then its writes conflict.
    let r = victim.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!((r.status, r.sense_key()), (2, (6, 0x2a, 0x05)));
    let r = victim.scsi(&cdb_rw(0x2a, 16, 1), 0, &[1u8; 512]).await;
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_does_not_wait_for_data_out_that_never_comes() {
    let (_b, addr) = setup().await;
    let mut ini = login(
        &addr,
        IQN,
        "iqn.2024-01.io.cstor.test:c",
        [0x80, 0, 0, 0, 0, 5],
        false,
    )
    .await
    .unwrap();
    // A write announcing 64 KiB, sending none of it: the target sends R2T and waits.
    let mut p = OutPdu::new(op::SCSI_CMD, 0xa0, StatSn::None);
    put32(&mut p.bhs, 16, 1);
    put32(&mut p.bhs, 20, 65536);
    put32(&mut p.bhs, 24, ini.cmd_sn);
    p.bhs[32..42].copy_from_slice(&cdb_rw(0x2a, 64, 128));
    ini.cmd_sn += 1;
    send(&mut ini.s, p, Default::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut lo = OutPdu::new(op::LOGOUT | 0x40, 0x80, StatSn::None);
    put32(&mut lo.bhs, 16, 2);
    put32(&mut lo.bhs, 24, ini.cmd_sn);
    let t0 = Instant::now();
    send(&mut ini.s, lo, Default::default()).await;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), ini.read())
            .await
            .expect("logout answered within 5 s")
            .expect("connection up");
        if r.opcode() == op::LOGOUT_RSP {
            break;
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "logout took {:?}",
        t0.elapsed()
    );
}
