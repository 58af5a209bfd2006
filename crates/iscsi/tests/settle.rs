//! Settlement (issue 9 item 1): a command answered with an error or "aborted" never
//! changes the medium afterwards. A slow write is never reported failed while it can still
//! land; a deadline answers BUSY only for calls the backend confirms it never started; a
//! call unsettled past the settle bound makes the LU answer NOT READY until it settles;
//! modifying calls carry the backend's io numbers in dispatch order.
#![allow(clippy::big_endian_bytes)] // SCSI fields are big-endian.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{op, OutPdu, StatSn};
use cstor_iscsi::{BackendError, BackendFuture, BackendIdentity, BlockBackend, IoCtx};
use initiator::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const IQN: &str = "iqn.2024-01.io.cstor.test:settle";
const INI: &str = "iqn.2024-01.io.cstor.test:initiator";

/// How the test backend treats a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Starts at once, takes `delay`, then lands (ignores cancel: it is under way).
    Slow(Duration),
    /// Waits in a queue until `release` or the cancel signal; cancelled first means it
    /// never started (`NotStarted`), released first means it lands.
    Queued,
}

/// An in-memory LUN whose writes are slow or queued, recording the io numbers it saw.
#[derive(Debug)]
struct Lagging {
    id: BackendIdentity,
    data: Mutex<Vec<u8>>,
    mode: Mutex<Mode>,
    release: Notify,
    next: AtomicU64,
    ios: Mutex<Vec<Option<u64>>>,
}

impl Lagging {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Lagging {
            id: BackendIdentity {
                id: [9; 16],
                serial: "lagging".into(),
            },
            data: Mutex::new(vec![0; 1 << 20]),
            mode: Mutex::new(mode),
            release: Notify::new(),
            next: AtomicU64::new(1),
            ios: Mutex::new(Vec::new()),
        })
    }
    fn byte(&self, at: usize) -> u8 {
        self.data.lock()[at]
    }
}

impl BlockBackend for Lagging {
    fixed_lu!();
    fn next_io(&self) -> Option<u64> {
        Some(self.next.fetch_add(1, Ordering::Relaxed))
    }
    fn read(&self, _c: &IoCtx, o: u64, len: u32) -> BackendFuture<'_, Bytes> {
        let d = self.data.lock()[o as usize..o as usize + len as usize].to_vec();
        Box::pin(async move { Ok(Bytes::from(d)) })
    }
    fn write(&self, c: &IoCtx, o: u64, d: Bytes) -> BackendFuture<'_, ()> {
        self.ios.lock().push(c.io);
        let mode = *self.mode.lock();
        let ctx = c.clone();
        Box::pin(async move {
            match mode {
                Mode::Slow(delay) => tokio::time::sleep(delay).await,
                Mode::Queued => {
                    tokio::select! {
                        biased;
                        _ = self.release.notified() => {}
                        _ = ctx.cancel.raised() => return Err(BackendError::NotStarted),
                    }
                }
            }
            self.data.lock()[o as usize..o as usize + d.len()].copy_from_slice(&d);
            Ok(())
        })
    }
    instant_flush!();
    fn unmap(&self, _c: &IoCtx, o: u64, l: u64) -> BackendFuture<'_, ()> {
        self.data.lock()[o as usize..(o + l) as usize].fill(0);
        Box::pin(async { Ok(()) })
    }
}

async fn server(b: Arc<Lagging>, io_timeout: Duration, settle: Duration) -> String {
    let mut cfg = cstor_iscsi::TargetConfig::new(IQN, b);
    cfg.io_timeout = io_timeout;
    cfg.settle_bound = settle;
    let server = cstor_iscsi::Server::new();
    server.add_target(cfg).unwrap();
    // The server lives as long as its serving task (the runtime of the test).
    listen(&server).await
}

/// Sends a one-block WRITE(10) of `fill` at LBA 0 with immediate data, without waiting.
async fn send_write(ini: &mut Ini, itt: u32, fill: u8) {
    let mut p = OutPdu::new(op::SCSI_CMD, 0xa0, StatSn::None);
    put32(&mut p.bhs, 16, itt);
    put32(&mut p.bhs, 20, 512);
    put32(&mut p.bhs, 24, ini.cmd_sn);
    p.bhs[32..42].copy_from_slice(&cdb_rw(0x2a, 0, 1));
    p.data = Bytes::from(vec![fill; 512]);
    ini.cmd_sn = ini.cmd_sn.wrapping_add(1);
    send(&mut ini.s, p, Default::default()).await;
}

/// Reads PDUs until the SCSI Response; returns (status, sense key/asc/ascq).
async fn response(ini: &mut Ini) -> (u8, (u8, u8, u8)) {
    loop {
        let r = ini.read().await.expect("response");
        if r.opcode() == op::SCSI_RSP {
            let s = &r.data;
            let sense = if s.len() >= 16 {
                (s[4] & 0x0f, s[14], s[15])
            } else {
                (0, 0, 0)
            };
            return (r.bhs[3], sense);
        }
    }
}

const TUR: [u8; 6] = [0u8; 6];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_write_past_its_deadline_is_reported_good_and_lands() {
    let b = Lagging::new(Mode::Slow(Duration::from_millis(800)));
    let addr = server(
        b.clone(),
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 1], false)
        .await
        .unwrap();
    let r = ini.scsi(&cdb_rw(0x2a, 0, 1), 0, &[0x5a; 512]).await;
    // The deadline passed while the write was under way: it is answered with its real
    // outcome, never with an error while it could still land.
    assert_eq!(r.status, 0, "sense {:?}", r.sense_key());
    assert_eq!(b.byte(0), 0x5a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_unsettled_past_the_bound_makes_the_lu_not_ready_until_it_lands() {
    let b = Lagging::new(Mode::Slow(Duration::from_millis(1500)));
    let addr = server(
        b.clone(),
        Duration::from_millis(100),
        Duration::from_millis(400),
    )
    .await;
    let mut writer = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 2], false)
        .await
        .unwrap();
    let mut other = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 3], false)
        .await
        .unwrap();
    // Clears the power-on unit attention of the second session.
    let _ = other.scsi(&TUR, 0, &[]).await;
    send_write(&mut writer, 1, 0x77).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = other.scsi(&TUR, 0, &[]).await;
    assert_eq!(
        (r.status, r.sense_key()),
        (2, (2, 0x04, 0x01)),
        "NOT READY while a call is unsettled past the bound"
    );
    assert_eq!(b.byte(0), 0, "the write has not landed yet");
    let (status, sense) = tokio::time::timeout(Duration::from_secs(5), response(&mut writer))
        .await
        .unwrap();
    assert_eq!(
        (status, sense),
        (0, (0, 0, 0)),
        "the write is reported GOOD"
    );
    assert_eq!(b.byte(0), 0x77);
    assert_eq!(other.scsi(&TUR, 0, &[]).await.status, 0, "ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_answers_busy_only_when_the_backend_never_started_the_call() {
    let b = Lagging::new(Mode::Queued);
    let addr = server(
        b.clone(),
        Duration::from_millis(200),
        Duration::from_secs(10),
    )
    .await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 4], false)
        .await
        .unwrap();
    let r = ini.scsi(&cdb_rw(0x2a, 0, 1), 0, &[0x11; 512]).await;
    assert_eq!(
        r.status, 0x08,
        "never started: BUSY, so the initiator retries"
    );
    // Releasing the queue later changes nothing: the refused write is gone for good.
    b.release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.byte(0), 0);
    // A queued write released before its deadline lands and is GOOD.
    send_write(&mut ini, 50, 0x22).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.release.notify_waiters();
    assert_eq!(response(&mut ini).await, (0, (0, 0, 0)));
    assert_eq!(b.byte(0), 0x22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modifying_calls_carry_the_backends_io_numbers_in_dispatch_order() {
    let b = Lagging::new(Mode::Slow(Duration::ZERO));
    let addr = server(b.clone(), Duration::from_secs(5), Duration::from_secs(10)).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 5], false)
        .await
        .unwrap();
    for i in 0..4u8 {
        let r = ini.scsi(&cdb_rw(0x2a, u32::from(i), 1), 0, &[i; 512]).await;
        assert_eq!(r.status, 0);
    }
    assert_eq!(*b.ios.lock(), vec![Some(1), Some(2), Some(3), Some(4)]);
}
