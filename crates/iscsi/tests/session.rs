//! Protocol behaviour seen by a raw initiator: digests, oversized PDUs, session
//! reinstatement, capacity change UNIT ATTENTION, busy backends, APTPL
//! persistence across a restart, and that one session's garbage never harms another.
#![allow(clippy::big_endian_bytes)] // SCSI parameter fields are big-endian.

mod initiator;
use bytes::Bytes;
use cstor_iscsi::pdu::{op, OutPdu, StatSn};
use cstor_iscsi::{BackendError, BackendFuture, BackendIdentity, BlockBackend, IoCtx};
use initiator::*;
use std::sync::Arc;
use std::time::Duration;

const IQN: &str = "iqn.2024-01.io.cstor.test:session";
const INI: &str = "iqn.2024-01.io.cstor.test:initiator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_on_write_and_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 1], true)
        .await
        .unwrap();
    assert!(ini.digests.header && ini.digests.data);
    let data: Vec<u8> = (0..128 * 1024).map(|i| (i % 251) as u8).collect();
    let r = ini.scsi(&cdb_rw(0x2a, 8, 256), 0, &data).await;
    assert_eq!(r.status, 0);
    let r = ini
        .scsi(&cdb_rw(0x28, 8, 256), data.len() as u32, &[])
        .await;
    assert_eq!(r.status, 0);
    assert_eq!(r.data, data);
    let on_disk = std::fs::read(dir.path().join("lun.img")).unwrap();
    assert_eq!(&on_disk[4096..4096 + data.len()], &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_data_segment_drops_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let mut good = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 2], false)
        .await
        .unwrap();
    let mut bad = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 3], false)
        .await
        .unwrap();
    // A SCSI command header claiming 16 MiB of immediate data, far above the 256 KiB
    // negotiated: refused from the header, the connection closes.
    let mut p = OutPdu::new(op::SCSI_CMD, 0xa0, StatSn::None);
    put32(&mut p.bhs, 20, 1 << 24);
    put32(&mut p.bhs, 24, bad.cmd_sn);
    let mut raw = Vec::new();
    cstor_iscsi::pdu::write_pdu(&mut raw, &mut p, Default::default())
        .await
        .unwrap();
    raw[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    use tokio::io::AsyncWriteExt;
    bad.s.write_all(&raw).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), bad.read())
        .await
        .unwrap();
    assert!(r.is_err(), "the connection must be closed");
    let r = good.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!(r.status, 0, "the other session keeps working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_isid_login_reinstates_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let isid = [0x80, 0, 0, 0, 0, 4];
    let mut old = login(&addr, IQN, INI, isid, false).await.unwrap();
    assert_eq!(old.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    let mut new = login(&addr, IQN, INI, isid, false).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), old.read())
        .await
        .unwrap();
    assert!(
        closed.is_err(),
        "the old session is closed by the reinstatement"
    );
    assert_eq!(new.scsi(&[0u8; 6], 0, &[]).await.status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_change_raises_unit_attention_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, backend) = start(dir.path(), IQN, |_| {}).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 5], false)
        .await
        .unwrap();
    assert_eq!(ini.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    backend.grow(32 << 20).unwrap();
    let r = ini.scsi(&[0u8; 6], 0, &[]).await;
    assert_eq!((r.status, r.sense_key()), (2, (6, 0x2a, 0x09)));
    assert_eq!(ini.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    let r = ini.scsi(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &[]).await;
    assert_eq!(get32(&r.data, 0), (32 << 20) / 512 - 1);
}

/// A backend whose writes always report busy. (Stalled backends: tests/settle.rs.)
#[derive(Debug)]
struct Faulty {
    id: BackendIdentity,
}

impl BlockBackend for Faulty {
    fixed_lu!();
    zero_read!();
    fn write(&self, _c: &IoCtx, _o: u64, _d: Bytes) -> BackendFuture<'_, ()> {
        Box::pin(async move { Err(BackendError::Busy) })
    }
    instant_flush!();
    ignored_unmap!();
}

async fn faulty_server() -> (Arc<cstor_iscsi::Server>, String) {
    let b = Arc::new(Faulty {
        id: BackendIdentity {
            id: [7; 16],
            serial: "faulty".into(),
        },
    });
    let mut cfg = cstor_iscsi::TargetConfig::new(IQN, b);
    cfg.io_timeout = Duration::from_millis(300);
    let server = cstor_iscsi::Server::new();
    server.add_target(cfg).unwrap();
    let addr = listen(&server).await;
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_backend_answers_busy_status() {
    let (_s, addr) = faulty_server().await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 7], false)
        .await
        .unwrap();
    let r = ini.scsi(&cdb_rw(0x2a, 0, 1), 0, &[1u8; 512]).await;
    assert_eq!(r.status, 0x08);
}

fn pr_out(sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> ([u8; 10], Vec<u8>) {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    (c, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aptpl_reservations_survive_a_restart_and_fence_others() {
    let dir = tempfile::tempdir().unwrap();
    let aptpl = dir.path().join("lun.aptpl");
    let isid = [0x80, 0, 0, 0, 0, 8];
    {
        let a = aptpl.clone();
        let (s, addr, _b) = start(dir.path(), IQN, move |c| {
            c.reservations = Some(Arc::new(cstor_iscsi::FileReservationStore::new(a)))
        })
        .await;
        let mut ini = login(&addr, IQN, INI, isid, false).await.unwrap();
        let (c, p) = pr_out(0, 0, 0, 0xabc, true);
        assert_eq!(ini.scsi(&c, 0, &p).await.status, 0);
        let (c, p) = pr_out(1, 1, 0xabc, 0, false); // RESERVE, write exclusive
        assert_eq!(ini.scsi(&c, 0, &p).await.status, 0);
        s.remove_target(IQN).await.unwrap();
    }
    assert!(aptpl.exists());
    let a = aptpl.clone();
    let (_s, addr, _b) = start(dir.path(), IQN, move |c| {
        c.reservations = Some(Arc::new(cstor_iscsi::FileReservationStore::new(a)))
    })
    .await;
    let mut other = login(&addr, IQN, "iqn.2024-01.io.cstor.test:other", isid, false)
        .await
        .unwrap();
    let keys = other
        .scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 64, 0], 64, &[])
        .await;
    assert_eq!(keys.status, 0);
    assert_eq!(get32(&keys.data, 4), 8, "one key registered");
    assert_eq!(&keys.data[8..16], &0xabcu64.to_be_bytes());
    let w = other.scsi(&cdb_rw(0x2a, 0, 1), 0, &[9u8; 512]).await;
    assert_eq!(w.status, 0x18, "writes from another initiator conflict");
    let mut holder = login(&addr, IQN, INI, isid, false).await.unwrap();
    assert_eq!(
        holder
            .scsi(&cdb_rw(0x2a, 0, 1), 0, &[9u8; 512])
            .await
            .status,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiators_outside_the_allow_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |c| {
        c.allowed_initiators = Some(vec![INI.to_owned()])
    })
    .await;
    assert!(login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 9], false)
        .await
        .is_ok());
    let refused = login(
        &addr,
        IQN,
        "iqn.2024-01.io.cstor.test:intruder",
        [0x80, 0, 0, 0, 0, 9],
        false,
    )
    .await;
    assert_eq!(refused.err(), Some((2, 2)), "authorization failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_allow_list_ends_the_sessions_it_no_longer_allows() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    const OTHER: &str = "iqn.2024-01.io.cstor.test:other-node";
    let mut old = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 11], false)
        .await
        .unwrap();
    assert_eq!(old.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    server
        .set_allowed_initiators(IQN, Some(vec![OTHER.to_owned()]))
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), old.read())
        .await
        .unwrap();
    assert!(closed.is_err(), "the session no longer allowed is ended");
    let refused = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 12], false).await;
    assert_eq!(refused.err(), Some((2, 2)), "authorization failure");
    let mut new = login(&addr, IQN, OTHER, [0x80, 0, 0, 0, 0, 13], false)
        .await
        .unwrap();
    assert_eq!(new.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    // Widened again: everyone; the allowed session was never touched.
    server.set_allowed_initiators(IQN, None).unwrap();
    assert!(login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 14], false)
        .await
        .is_ok());
    assert_eq!(new.scsi(&[0u8; 6], 0, &[]).await.status, 0);
    assert!(server
        .set_allowed_initiators("iqn.2024-01.io.cstor.test:none", None)
        .is_err());
}

/// One login request/response in the security stage; returns the response keys.
async fn login_step(
    s: &mut tokio::net::TcpStream,
    flags: u8,
    keys: &[(&str, String)],
) -> (u8, u8, u8, Vec<(String, String)>) {
    let mut p = OutPdu::new(op::LOGIN | 0x40, flags, StatSn::None);
    p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 10]);
    put32(&mut p.bhs, 16, 1);
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    p.data = Bytes::from(cstor_iscsi::text::encode(&pairs));
    send(s, p, Default::default()).await;
    let r = cstor_iscsi::pdu::read_pdu(s, 1 << 20, Default::default())
        .await
        .unwrap();
    (
        r.bhs[1],
        r.bhs[36],
        r.bhs[37],
        cstor_iscsi::text::parse(&r.data).unwrap(),
    )
}

fn md5(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_chap_authenticates_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let chap_file = dir.path().join("chap");
    std::fs::write(
        &chap_file,
        "alice:alice-secret-123\ntarget:target-secret-456\n",
    )
    .unwrap();
    let chap = cstor_iscsi::ChapConfig::from_file(&chap_file).unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, move |c| c.chap = Some(chap)).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let sec = 0x80 | 1; // T=1, CSG=0, NSG=1
    let (flags, class, _, keys) = login_step(
        &mut s,
        sec,
        &[
            ("InitiatorName", INI.into()),
            ("TargetName", IQN.into()),
            ("SessionType", "Normal".into()),
            ("AuthMethod", "CHAP,None".into()),
        ],
    )
    .await;
    assert_eq!(
        (class, flags & 0x80),
        (0, 0),
        "target stays in the security stage"
    );
    assert!(keys.contains(&("AuthMethod".into(), "CHAP".into())));
    let (_, class, _, keys) = login_step(&mut s, 1, &[("CHAP_A", "5".into())]).await;
    assert_eq!(class, 0);
    let get = |k: &str| {
        keys.iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let id: u8 = get("CHAP_I").parse().unwrap();
    let c = get("CHAP_C");
    let challenge: Vec<u8> = (2..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap())
        .collect();
    let my_challenge = [0x42u8; 16];
    let (flags, class, _, keys) = login_step(
        &mut s,
        sec,
        &[
            ("CHAP_N", "alice".into()),
            ("CHAP_R", hex(&md5(id, b"alice-secret-123", &challenge))),
            ("CHAP_I", "77".into()),
            ("CHAP_C", hex(&my_challenge)),
        ],
    )
    .await;
    assert_eq!(
        (class, flags & 0x80),
        (0, 0x80),
        "authenticated, transit granted"
    );
    assert!(keys.contains(&("CHAP_N".into(), "target".into())));
    let expected = hex(&md5(77, b"target-secret-456", &my_challenge));
    assert!(
        keys.contains(&("CHAP_R".into(), expected)),
        "target proves its secret: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nop_in_keepalive_drops_a_dead_initiator_and_keeps_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(
        cstor_iscsi::FileBackend::open(&dir.path().join("k.img"), Some(1 << 20), false).unwrap(),
    );
    let server =
        cstor_iscsi::Server::with_keepalive(Duration::from_millis(200), Duration::from_millis(400));
    server
        .add_target(cstor_iscsi::TargetConfig::new(IQN, backend))
        .unwrap();
    let addr = listen(&server).await;
    let mut dead = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 11], false)
        .await
        .unwrap();
    let mut live = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 12], false)
        .await
        .unwrap();
    // The live initiator answers pings; the dead one reads them but never answers.
    let answer = tokio::spawn(async move {
        for _ in 0..6 {
            let p = live.read().await.unwrap();
            assert_eq!(p.opcode(), op::NOP_IN);
            let mut r = OutPdu::new(op::NOP_OUT | 0x40, 0x80, StatSn::None);
            put32(&mut r.bhs, 16, 0xffff_ffff);
            put32(&mut r.bhs, 20, p.u32_at(20));
            put32(&mut r.bhs, 24, live.cmd_sn);
            send(&mut live.s, r, Default::default()).await;
        }
        live
    });
    let first = dead.read().await.unwrap();
    assert_eq!(first.opcode(), op::NOP_IN, "idle connection gets a ping");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if dead.read().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "unanswered pings drop the connection");
    let mut live = answer.await.unwrap();
    assert_eq!(
        live.scsi(&[0u8; 6], 0, &[]).await.status,
        0,
        "answered pings keep the session"
    );
}

/// A file-like backend whose writes take a while and which records when each write
/// finished and each read started, to check ordering across sessions.
#[derive(Debug)]
struct Slow {
    id: BackendIdentity,
    log: parking_lot::Mutex<Vec<(&'static str, std::time::Instant)>>,
}

impl BlockBackend for Slow {
    fixed_lu!();
    fn read(&self, _c: &IoCtx, _o: u64, len: u32) -> BackendFuture<'_, Bytes> {
        self.log.lock().push(("read", std::time::Instant::now()));
        Box::pin(async move { Ok(Bytes::from(vec![0u8; len as usize])) })
    }
    fn write(&self, _c: &IoCtx, _o: u64, _d: Bytes) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.log
                .lock()
                .push(("write done", std::time::Instant::now()));
            Ok(())
        })
    }
    instant_flush!();
    ignored_unmap!();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinstated_session_runs_only_after_the_old_sessions_writes_ended() {
    let slow = Arc::new(Slow {
        id: BackendIdentity {
            id: [3; 16],
            serial: "slow".into(),
        },
        log: Default::default(),
    });
    let server = cstor_iscsi::Server::new();
    server
        .add_target(cstor_iscsi::TargetConfig::new(IQN, slow.clone()))
        .unwrap();
    let addr = listen(&server).await;
    let isid = [0x80, 0, 0, 0, 0, 13];
    let mut old = login(&addr, IQN, INI, isid, false).await.unwrap();
    // Start a write on the old session and do not wait for its response.
    let mut p = OutPdu::new(op::SCSI_CMD, 0xa0, StatSn::None);
    put32(&mut p.bhs, 16, 1);
    put32(&mut p.bhs, 20, 512);
    put32(&mut p.bhs, 24, old.cmd_sn);
    p.bhs[32..42].copy_from_slice(&cdb_rw(0x2a, 0, 1));
    p.data = Bytes::from(vec![5u8; 512]);
    send(&mut old.s, p, Default::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut new = login(&addr, IQN, INI, isid, false).await.unwrap();
    let r = new.scsi(&cdb_rw(0x28, 0, 1), 512, &[]).await;
    assert_eq!(r.status, 0);
    let log = slow.log.lock().clone();
    let write_done = log
        .iter()
        .find(|e| e.0 == "write done")
        .map(|e| e.1)
        .expect("old write finished");
    let read = log
        .iter()
        .find(|e| e.0 == "read")
        .map(|e| e.1)
        .expect("new read ran");
    assert!(
        write_done <= read,
        "the new session's command ran before the old session's write ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_move_hands_the_reservation_to_another_initiator() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let other_name = "iqn.2024-01.io.cstor.test:other";
    let mut a = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 14], false)
        .await
        .unwrap();
    let mut b = login(&addr, IQN, other_name, [0x80, 0, 0, 0, 0, 15], false)
        .await
        .unwrap();
    let (c, p) = pr_out(0, 0, 0, 0x1111, false);
    assert_eq!(a.scsi(&c, 0, &p).await.status, 0);
    let (c, p) = pr_out(1, 1, 0x1111, 0, false);
    assert_eq!(a.scsi(&c, 0, &p).await.status, 0);
    assert_eq!(
        b.scsi(&cdb_rw(0x2a, 0, 1), 0, &[1u8; 512]).await.status,
        0x18
    );
    // REGISTER AND MOVE to b's nexus with key 0x2222, unregistering a.
    let mut name = format!("{other_name},i,0x80000000000f").into_bytes();
    name.push(0);
    while name.len() % 4 != 0 {
        name.push(0);
    }
    let mut tid = vec![0x45, 0, 0, 0];
    tid[2..4].copy_from_slice(&(name.len() as u16).to_be_bytes());
    tid.extend_from_slice(&name);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&0x1111u64.to_be_bytes());
    p[8..16].copy_from_slice(&0x2222u64.to_be_bytes());
    p[17] = 0x02; // UNREG
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = 7;
    c[2] = 1;
    c[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    assert_eq!(a.scsi(&c, 0, &p).await.status, 0);
    assert_eq!(
        b.scsi(&cdb_rw(0x2a, 0, 1), 0, &[1u8; 512]).await.status,
        0,
        "b holds it now"
    );
    assert_eq!(
        a.scsi(&cdb_rw(0x2a, 0, 1), 0, &[1u8; 512]).await.status,
        0x18,
        "a is fenced"
    );
    let keys = b.scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 64, 0], 64, &[]).await;
    assert_eq!(get32(&keys.data, 4), 8);
    assert_eq!(&keys.data[8..16], &0x2222u64.to_be_bytes());
}

/// Reads PDUs until the SCSI Response for `itt`; returns (saw a Reject first, status,
/// sense key/asc/ascq).
async fn refused(ini: &mut Ini, itt: u32) -> (bool, u8, (u8, u8, u8)) {
    let mut rejected = false;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), ini.read())
            .await
            .expect("an answer within 10 s")
            .expect("connection stays up");
        match r.opcode() {
            op::REJECT => rejected = true,
            op::SCSI_RSP if r.itt() == itt => {
                let s = &r.data;
                assert!(s.len() >= 16, "CHECK CONDITION carries sense");
                return (rejected, r.bhs[3], (s[4] & 0x0f, s[14], s[15]));
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_commands_get_a_scsi_response_with_sense() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 21], false)
        .await
        .unwrap();
    let cmd = |itt: u32, sn: u32, flags: u8, edtl: u32, cdb: &[u8]| {
        let mut p = OutPdu::new(op::SCSI_CMD, flags, StatSn::None);
        put32(&mut p.bhs, 16, itt);
        put32(&mut p.bhs, 20, edtl);
        put32(&mut p.bhs, 24, sn);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        p
    };
    // READ(16) of 1 GiB: EDTL above the 32 MiB limit.
    let mut read16 = [0u8; 16];
    read16[0] = 0x88;
    read16[10..14].copy_from_slice(&(2u32 << 20).to_be_bytes());
    let p = cmd(1, ini.cmd_sn, 0xc0, 1 << 30, &read16);
    ini.cmd_sn += 1;
    send(&mut ini.s, p, Default::default()).await;
    assert_eq!(refused(&mut ini, 1).await, (true, 2, (5, 0x24, 0)));
    // Immediate data on a READ.
    let mut p = cmd(2, ini.cmd_sn, 0xc0, 512, &cdb_rw(0x28, 0, 1));
    p.data = Bytes::from(vec![1u8; 512]);
    ini.cmd_sn += 1;
    send(&mut ini.s, p, Default::default()).await;
    assert_eq!(refused(&mut ini, 2).await, (true, 2, (0x0b, 0x0e, 0x01)));
    // A duplicate task tag: the first write waits for its Data-Out (R2T), the second with
    // the same tag is refused.
    let p = cmd(3, ini.cmd_sn, 0xa0, 4096, &cdb_rw(0x2a, 0, 8));
    ini.cmd_sn += 1;
    send(&mut ini.s, p, Default::default()).await;
    let p = cmd(3, ini.cmd_sn, 0xa0, 4096, &cdb_rw(0x2a, 8, 8));
    ini.cmd_sn += 1;
    send(&mut ini.s, p, Default::default()).await;
    assert_eq!(refused(&mut ini, 3).await, (true, 2, (0x0b, 0x4e, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_target_asks_initiators_to_log_out_first() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, 31], false)
        .await
        .unwrap();
    let remove = tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        server.remove_target(IQN).await.unwrap();
        t0.elapsed()
    });
    let a = tokio::time::timeout(Duration::from_secs(5), ini.read())
        .await
        .expect("async event within 5 s")
        .unwrap();
    assert_eq!(
        (a.opcode(), a.bhs[36]),
        (op::ASYNC, 1),
        "request logout event"
    );
    let mut lo = OutPdu::new(op::LOGOUT | 0x40, 0x80, StatSn::None);
    put32(&mut lo.bhs, 16, 9);
    put32(&mut lo.bhs, 24, ini.cmd_sn);
    send(&mut ini.s, lo, Default::default()).await;
    loop {
        let r = ini.read().await.unwrap();
        if r.opcode() == op::LOGOUT_RSP {
            break;
        }
    }
    let took = remove.await.unwrap();
    assert!(
        took < Duration::from_secs(2),
        "removal waited {took:?} after a clean logout"
    );
}
