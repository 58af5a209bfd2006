//! Power loss under replicated volumes (design §4): a replica's pool sits in a
//! cstor-powercut mount (unsynced writes live only in memory; a cut drops them), the
//! other replica on a plain temp file. The replica is "power-cycled": the cut, its server
//! stopped, the power back, the pool imported again under a new boot id (so the replica
//! reports `lostTail`), a new server on the same port.
//!
//! Needs FUSE; without it the tests skip, unless `CI` is set (then they fail).
//!
//! Also the replica's group commit in write-through mode: pipelined WRITEs settled as one
//! batch are each acknowledged only once the batch is stable.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use cstor_powercut::{seed_base, PowerCut};
use cstor_replication::client::ReplicaConn;
use cstor_replication::wire::{self, Op, OpenReq, Role};
use cstor_replication::{FileStore, MemberState};

/// r0 on the power-cut mount, r1 on a temp file.
async fn pair(pc: &PowerCut) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let r0 = Rep::start(
        pool_on_file_booted(pc.path(), "p0", Some("boot-1")),
        "r0",
        None,
    )
    .await;
    let r1 = Rep::start(pool_on_file(dir.path(), "p1"), "r1", None).await;
    let proxies = vec![Proxy::start(r0.addr()).await, Proxy::start(r1.addr()).await];
    let state = dir.path().join("state");
    let store = Arc::new(FileStore::new(&state).unwrap());
    Cluster {
        dir,
        reps: vec![r0, r1],
        proxies,
        store,
        state,
        size: SIZE,
    }
}

/// Power off under r0 (every unsynced sector lost), its process gone, the power back,
/// its pool imported under a new boot id, a new process on it.
async fn power_cycle_r0(c: &mut Cluster, pc: &PowerCut, seed: u64, cut: bool) {
    if cut {
        let rep = pc.control().cut_with(seed, 0);
        eprintln!("power cut (seed {seed}): {rep:?}");
    }
    c.reps[0].kill();
    pc.power_on();
    let mnt = pc.path().to_path_buf();
    c.reps[0]
        .restart_on(move || import_pool(&mnt, "p0", "boot-2"))
        .await;
}

/// R1 is cut off and evicted, so R0 is the single Current replica and writes through;
/// then R0 loses power. Every write acknowledged before the cut is there after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_current_replica_power_cut_keeps_every_acknowledged_write() {
    let Some(pc) = PowerCut::for_test("single_current_replica_power_cut") else {
        return;
    };
    let seed = seed_base(0x51c0);
    let mut c = pair(&pc).await;
    let v = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.3).await;
    c.proxies[1].set(CUT);
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    wait_for(10, "R1 recorded Stale", || {
        c.state_of("r1") == MemberState::Stale
    })
    .await;
    // Writes acknowledged from here on are the ones write-through must keep.
    let acked_single = truth.acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_at_cut = truth.acked.load(Ordering::SeqCst);
    power_cycle_r0(&mut c, &pc, seed, true).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    v.crash();
    eprintln!(
        "{} writes acknowledged by R0 alone",
        acked_at_cut - acked_single
    );
    assert!(
        acked_at_cut > acked_single + 20,
        "too few single-copy writes"
    );
    // R0 alone (R1 still away): whole-volume power loss, served from R0's flush point.
    let v2 = c.target().await;
    verify(&v2, &truth, BLOCKS).await;
    c.proxies[1].set(PASS);
    wait_for(30, "R1 readmitted", || {
        c.state_of("r1") == MemberState::Current
    })
    .await;
    verify(&v2, &truth, BLOCKS).await;
    v2.shutdown().await.unwrap();
    c.identical();
}

/// R0 loses power under load while R1 stays Current: R0 is evicted, comes back with
/// `lostTail`, rejoins Stale from its flush point and is caught up; nothing is lost and
/// the replicas end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_power_loss_rejoins_stale_from_flush_point() {
    let Some(pc) = PowerCut::for_test("replica_power_loss_rejoins_stale") else {
        return;
    };
    let seed = seed_base(0x10a7);
    let mut c = pair(&pc).await;
    let v = c.target().await;
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The cut: R0's I/O fails from now on, so it is evicted; R1 carries on alone.
    let rep = pc.control().cut_with(seed, 0);
    eprintln!("power cut (seed {seed}): {rep:?}");
    wait_for(15, "R0 recorded Stale", || {
        c.state_of("r0") == MemberState::Stale
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    power_cycle_r0(&mut c, &pc, seed, false).await;
    wait_for(40, "R0 readmitted", || {
        c.state_of("r0") == MemberState::Current
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(truth.failed.load(Ordering::SeqCst), 0, "a write failed");
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    c.identical();
}

/// A replica in write-through mode gets rounds of 64 pipelined WRITEs (sent before any
/// reply is awaited, so its lane applies them in batches with one log write and flush
/// each); then the power is cut with every unsynced sector dropped. Every acknowledged
/// write must be there after the import: an ack sent before its batch's flush completed
/// loses that write at this cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_batches_are_stable_before_their_acks() {
    let Some(pc) = PowerCut::for_test("write_through_batches") else {
        return;
    };
    let seed = seed_base(0x9c0b);
    let mut rep = Rep::start(
        pool_on_file_booted(pc.path(), "p0", Some("boot-1")),
        "r0",
        None,
    )
    .await;
    let t = Duration::from_secs(10);
    let c = ReplicaConn::connect(&rep.addr(), None, t).await.unwrap();
    let open = OpenReq {
        volume: VOL.into(),
        size: SIZE,
        epoch: 1,
        instance: "t1".into(),
        role: Role::Current,
        x0: 1,
    };
    c.open(&open, t).await.unwrap();
    c.call(Op::SetMode, wire::enc_u64s(&[1]), t).await.unwrap();
    // Block -> last acknowledged tag (overlapping rewrites included: the later io wins).
    let mut acked = std::collections::HashMap::new();
    let mut io = 1u64;
    for round in 0..6u64 {
        let mut started = Vec::new();
        for i in 0..64u64 {
            let blk = (i * 7 + round * 13) % BLOCKS;
            let tag = round << 32 | i | 1 << 48;
            let body = wire::enc_write(blk * BS, io, &block(tag));
            io += 1;
            started.push((blk, tag, c.start(Op::Write, body).unwrap()));
        }
        for (blk, tag, s) in started {
            c.finish(s, t).await.unwrap();
            acked.insert(blk, tag);
        }
    }
    let rep_cut = pc.control().cut_with(seed, 0);
    eprintln!("power cut (seed {seed}): {rep_cut:?}");
    c.close("power cut");
    rep.kill();
    pc.power_on();
    let mnt = pc.path().to_path_buf();
    rep.restart_on(move || import_pool(&mnt, "p0", "boot-2"))
        .await;
    let v = rep.pool().volume(VOL).unwrap();
    let mut lost = Vec::new();
    for (blk, tag) in &acked {
        let mut buf = vec![0u8; BS as usize];
        v.read(blk * BS, &mut buf).unwrap();
        if buf[..] != block(*tag)[..] {
            lost.push(*blk);
        }
    }
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged write-through writes lost at the cut, blocks {lost:?}"
    );
}
