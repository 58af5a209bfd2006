//! Hold-then-BUSY (issue 9 item 2, replication design §2.6): while a backend holds, no
//! new command reaches it; a hold released within T_hold lets the queued commands proceed
//! in order and complete GOOD; past T_hold they get BUSY (never an abort or a medium
//! error); task management during a hold answers at once.
#![allow(clippy::big_endian_bytes)] // SCSI fields are big-endian.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{op, OutPdu, StatSn};
use cstor_iscsi::{BackendFuture, BackendIdentity, BlockBackend, Hold, IoCtx};
use initiator::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2024-01.io.cstor.test:hold";
const INI: &str = "iqn.2024-01.io.cstor.test:initiator";

/// An in-memory LUN that holds on request; records every call it receives, with the
/// io number, the first data byte and whether the hold was raised when it came.
#[derive(Debug)]
struct Holding {
    id: BackendIdentity,
    data: Mutex<Vec<u8>>,
    hold: Hold,
    next: AtomicU64,
    calls: Mutex<Vec<(Option<u64>, u8, bool)>>,
}

impl Holding {
    fn new() -> Arc<Self> {
        Arc::new(Holding {
            id: BackendIdentity {
                id: [4; 16],
                serial: "holding".into(),
            },
            data: Mutex::new(vec![0; 1 << 20]),
            hold: Hold::new(),
            next: AtomicU64::new(1),
            calls: Mutex::new(Vec::new()),
        })
    }
}

impl BlockBackend for Holding {
    fixed_lu!();
    fn next_io(&self) -> Option<u64> {
        Some(self.next.fetch_add(1, Ordering::Relaxed))
    }
    fn hold(&self) -> Option<Hold> {
        Some(self.hold.clone())
    }
    fn read(&self, _c: &IoCtx, o: u64, len: u32) -> BackendFuture<'_, Bytes> {
        self.calls.lock().push((None, 0, self.hold.is_held()));
        let d = self.data.lock()[o as usize..o as usize + len as usize].to_vec();
        Box::pin(async move { Ok(Bytes::from(d)) })
    }
    fn write(&self, c: &IoCtx, o: u64, d: Bytes) -> BackendFuture<'_, ()> {
        self.calls.lock().push((c.io, d[0], self.hold.is_held()));
        self.data.lock()[o as usize..o as usize + d.len()].copy_from_slice(&d);
        Box::pin(async { Ok(()) })
    }
    instant_flush!();
    ignored_unmap!();
}

async fn setup() -> (Arc<Holding>, Ini) {
    let b = Holding::new();
    // The default T_hold (4 s) and I/O timeout: what a replicated volume gets.
    let cfg = cstor_iscsi::TargetConfig::new(IQN, b.clone());
    let server = cstor_iscsi::Server::new();
    server.add_target(cfg).unwrap();
    let addr = listen(&server).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 1], false)
        .await
        .unwrap();
    // The power-on unit attention.
    let _ = ini.scsi(&[0u8; 6], 0, &[]).await;
    (b, ini)
}

/// Sends a task management request (immediate) without waiting.
async fn send_tmf(ini: &mut Ini, itt: u32, function: u8, rtt: u32) {
    let mut p = OutPdu::new(op::TASK_MGMT | 0x40, 0x80 | function, StatSn::None);
    put32(&mut p.bhs, 16, itt);
    put32(&mut p.bhs, 20, rtt);
    put32(&mut p.bhs, 24, ini.cmd_sn);
    send(&mut ini.s, p, Default::default()).await;
}

/// What came back for one ITT: (status or TMF response code, when it came).
type Answers = HashMap<u32, (u8, Instant)>;

/// Reads SCSI and TMF responses until `n` arrived or `within` passed.
async fn answers(ini: &mut Ini, n: usize, within: Duration, into: &mut Answers) {
    let until = tokio::time::Instant::now() + within;
    while into.len() < n {
        let Ok(r) = tokio::time::timeout_at(until, ini.read()).await else {
            return;
        };
        let r = r.expect("connection up");
        match r.opcode() {
            op::SCSI_RSP => {
                into.insert(r.itt(), (r.bhs[3], Instant::now()));
            }
            op::TASK_MGMT_RSP => {
                into.insert(r.itt(), (r.bhs[2], Instant::now()));
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_released_in_time_lets_queued_commands_proceed_in_order() {
    let (b, mut ini) = setup().await;
    b.hold.hold();
    let t0 = Instant::now();
    for i in 0..6u8 {
        ini.send_write(10 + u32::from(i), u32::from(i), 0x10 + i)
            .await;
        // Each reaches the LU before the next, so the queue order is the send order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands that need no backend call are answered during the hold.
    let tur = ini.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!(tur.status, 0, "TEST UNIT READY during a hold");
    let mut got = Answers::new();
    answers(&mut ini, 1, Duration::from_millis(300), &mut got).await;
    assert!(got.is_empty(), "nothing completes while held: {got:?}");
    assert!(
        b.calls.lock().is_empty(),
        "no call reached the backend while held"
    );
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed())).await;
    let released = Instant::now();
    b.hold.release();
    answers(&mut ini, 6, Duration::from_secs(3), &mut got).await;
    assert_eq!(got.len(), 6, "every queued write answered: {got:?}");
    for (itt, (status, at)) in &got {
        assert_eq!(*status, 0, "write {itt} GOOD after the release");
        assert!(
            *at >= released,
            "write {itt} answered only after the release"
        );
    }
    let calls = b.calls.lock().clone();
    let fills: Vec<u8> = calls.iter().map(|c| c.1).collect();
    assert_eq!(fills, (0x10..0x16).collect::<Vec<u8>>(), "issued in order");
    let ios: Vec<Option<u64>> = calls.iter().map(|c| c.0).collect();
    assert_eq!(
        ios,
        (1..=6).map(Some).collect::<Vec<_>>(),
        "io numbers in order"
    );
    assert!(calls.iter().all(|c| !c.2), "no call issued while held");
    // Reads after the release go straight through.
    let r = ini.scsi(&cdb_rw(0x28, 3, 1), 512, &[]).await;
    assert_eq!((r.status, r.data[0]), (0, 0x13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_t_hold_answers_busy_and_task_management_stays_prompt() {
    let (b, mut ini) = setup().await;
    // A 6 s hold: longer than T_hold (4 s).
    b.hold.hold();
    let hold = b.hold.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(6)).await;
        hold.release();
    });
    let t0 = Instant::now();
    ini.send_write(20, 0, 0xa1).await;
    ini.send_write(21, 1, 0xa2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ABORT TASK of a queued write: answered at once, the write never runs.
    let asked = Instant::now();
    send_tmf(&mut ini, 0x7001, 1, 21).await;
    let mut got = Answers::new();
    answers(&mut ini, 1, Duration::from_secs(2), &mut got).await;
    let (code, at) = got.remove(&0x7001).expect("TMF answered during the hold");
    assert_eq!(code, 0, "function complete");
    assert!(
        at - asked < Duration::from_millis(500),
        "ABORT TASK answered promptly, took {:?}",
        at - asked
    );
    assert!(got.is_empty(), "the aborted write sends nothing: {got:?}");
    answers(&mut ini, 1, Duration::from_secs(6), &mut got).await;
    let (status, at) = *got.get(&20).expect("the held write is answered");
    assert_eq!(
        status, 0x08,
        "BUSY past T_hold (not aborted, not a medium error)"
    );
    let waited = at - t0;
    assert!(
        waited >= Duration::from_millis(3800) && waited < Duration::from_millis(5500),
        "BUSY at about T_hold = 4 s, came after {waited:?}"
    );
    assert!(!got.contains_key(&21), "the aborted write never answered");
    // A LUN RESET during the hold is prompt too.
    ini.send_write(22, 2, 0xa3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    send_tmf(&mut ini, 0x7002, 5, 0).await;
    got.clear();
    answers(&mut ini, 1, Duration::from_secs(2), &mut got).await;
    let (code, at) = got
        .remove(&0x7002)
        .expect("LUN RESET answered during the hold");
    assert_eq!(code, 0);
    assert!(
        at - asked < Duration::from_millis(500),
        "LUN RESET took {:?}",
        at - asked
    );
    assert!(b.calls.lock().is_empty(), "no write reached the backend");
    assert_eq!(
        b.data.lock()[..3 * 512].iter().filter(|x| **x != 0).count(),
        0
    );
}
