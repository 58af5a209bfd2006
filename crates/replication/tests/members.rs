//! Membership changes of design §2.10 and the §4 row "Stale R3 returns; target
//! restarted; only R3 reachable": add a replica under load (New -> full copy -> Current,
//! rf + 1), remove replicas down to the last Current one, the offline force-current and
//! the online one (on a running target whose Current replicas are all away); and the LU
//! hold raised while an eviction is being recorded (design §2.6).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cstor_iscsi::backend::{BackendError, BlockBackend, IoCtx};
use cstor_replication::members::force_current;
use cstor_replication::membership::MembershipStore;
use cstor_replication::volume::Phase;
use cstor_replication::{MemberState, ReplicatedVolume};

const SIZE: u64 = 16 << 20;
const BLOCKS: u64 = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_replica_under_load_then_remove_down_to_the_last_current() {
    let c = Cluster::start(3).await;
    let addrs = c.addrs();
    let v = ReplicatedVolume::start(cfg(SIZE, addrs[..2].to_vec()), c.store.clone())
        .await
        .unwrap();
    assert_eq!(v.ready().await, Phase::Healthy);
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        v.add_replica(&addrs[1]).await.is_err(),
        "added a member twice"
    );
    let m = v.add_replica(&addrs[2]).await.unwrap();
    assert_eq!((m.id.as_str(), m.state), ("r2", MemberState::New));
    assert_eq!(c.store.read().unwrap().0.rf, 3);
    wait_for(30, "the added replica Current", || {
        c.member_state("r2") == Some(MemberState::Current)
    })
    .await;
    // The status follows the recorded readmission once the target applied it.
    wait_for(5, "the volume Healthy", || {
        v.status().phase == Phase::Healthy
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(truth.failed.load(Ordering::SeqCst), 0, "a write failed");
    verify(&v, &truth, BLOCKS).await;
    v.flush(&IoCtx::new(Instant::now() + Duration::from_secs(10)))
        .await
        .unwrap();
    let img = c.reps[0].image(SIZE);
    assert!(img == c.reps[2].image(SIZE), "the added replica differs");

    // Scale down: two removals, then the last Current replica is refused.
    v.remove_replica("r0").await.unwrap();
    assert!(v.remove_replica("r0").await.is_err(), "removed twice");
    v.remove_replica("r1").await.unwrap();
    let (rec, _) = c.store.read().unwrap();
    assert_eq!(rec.rf, 1);
    assert_eq!(rec.current_ids(), vec!["r2".to_string()]);
    let e = v.remove_replica("r2").await.unwrap_err();
    assert!(e.to_string().contains("only Current"), "{e}");
    // Still serving, from r2 alone (write-through).
    v.write(&ctx(&v, false), 0, block(0xabc)).await.unwrap();
    let rd = IoCtx::new(Instant::now() + Duration::from_secs(10));
    assert!(v.read(&rd, 0, BS as u32).await.unwrap() == block(0xabc));
    assert_eq!(v.status().phase, Phase::Healthy);
    v.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_stale_replica_reachable_stays_offline_until_forced() {
    let c = Cluster::start(3).await;
    let v = ReplicatedVolume::start(cfg(SIZE, c.addrs()), c.store.clone())
        .await
        .unwrap();
    assert_eq!(v.ready().await, Phase::Healthy);
    for b in 0..32 {
        v.write(&ctx(&v, false), b * BS, block(0x100 + b))
            .await
            .unwrap();
    }
    c.proxies[2].set(CUT);
    v.write(&ctx(&v, false), 40 * BS, block(1)).await.unwrap();
    wait_for(10, "R2 Stale", || {
        c.member_state("r2") == Some(MemberState::Stale)
    })
    .await;
    // Acknowledged while R2 is away: only R0 and R1 hold it.
    v.write(&ctx(&v, true), 0, block(0x999)).await.unwrap();
    v.shutdown().await.unwrap();
    // Only R2 reachable: not served.
    c.proxies[0].set(CUT);
    c.proxies[1].set(CUT);
    c.proxies[2].set(PASS);
    let v2 = ReplicatedVolume::start(cfg(SIZE, c.addrs()), c.store.clone())
        .await
        .unwrap();
    assert_eq!(v2.ready().await, Phase::Offline);
    // Refused without --accept-data-loss, and while the holder (v2, alive) is live.
    let e = force_current(c.store.clone(), "r2", "t@h", false, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("accept-data-loss"), "{e}");
    let e = force_current(c.store.clone(), "r2", "t@h", true, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("stop it first"), "{e}");
    // The holder dies and stops renewing: once T_takeover passed (0 here: its process is
    // this test's, so the dead-pid rule cannot show it) the force is allowed.
    v2.crash();
    drop(v2);
    let before = c.store.read().unwrap().0;
    let rec = force_current(c.store.clone(), "r2", "t@h", true, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rec.epoch, before.epoch + 1);
    assert_eq!(rec.forced.as_ref().unwrap().member, "r2");
    assert_eq!(rec.forced.as_ref().unwrap().by, "t@h");
    assert_eq!(c.member_state("r2"), Some(MemberState::Current));
    // Served from R2 now (the write it missed is lost, as accepted).
    let v3 = ReplicatedVolume::start(cfg(SIZE, c.addrs()), c.store.clone())
        .await
        .unwrap();
    assert_eq!(v3.ready().await, Phase::Degraded);
    let rd = IoCtx::new(Instant::now() + Duration::from_secs(10));
    assert!(v3.read(&rd, BS, BS as u32).await.unwrap() == block(0x101));
    assert!(v3.read(&rd, 0, BS as u32).await.unwrap() == block(0x100));
    v3.write(&ctx(&v3, false), 0, block(0x777)).await.unwrap();
    assert!(v3.read(&rd, 0, BS as u32).await.unwrap() == block(0x777));
    let (r, _) = c.store.read().unwrap();
    assert_eq!(r.member("r0").unwrap().state, MemberState::Stale);
    v3.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_forced_current_on_the_running_target_serves_and_rebuilds_the_rest() {
    let c = Cluster::start(3).await;
    let v = c.target().await;
    for b in 0..32 {
        v.write(&ctx(&v, false), b * BS, block(0x100 + b))
            .await
            .unwrap();
    }
    c.proxies[2].set(CUT);
    v.write(&ctx(&v, false), 40 * BS, block(1)).await.unwrap();
    wait_for(10, "R2 Stale", || {
        c.member_state("r2") == Some(MemberState::Stale)
    })
    .await;
    // While R0 and R1 serve, forcing R2 (which missed writes) is refused.
    let e = v.force_current("r2", "t@h", true).await.unwrap_err();
    assert!(e.to_string().contains("serve the volume"), "{e}");
    // Acknowledged on R0 and R1 only; then both are cut off: every IO answers BUSY.
    v.write(&ctx(&v, true), 0, block(0x999)).await.unwrap();
    c.proxies[0].set(CUT);
    c.proxies[1].set(CUT);
    let r = v.write(&ctx(&v, false), 41 * BS, block(2)).await;
    assert!(
        r.is_err(),
        "a write completed with every Current replica away"
    );
    c.proxies[2].set(PASS);
    let e = v.force_current("r2", "t@h", false).await.unwrap_err();
    assert!(e.to_string().contains("accept-data-loss"), "{e}");
    let epoch = v.epoch();
    let rec = v.force_current("r2", "t@h", true).await.unwrap();
    assert_eq!(rec.forced.as_ref().unwrap().member, "r2");
    assert_eq!(rec.member("r0").unwrap().state, MemberState::Stale);
    assert_eq!(rec.member("r1").unwrap().state, MemberState::Stale);
    assert_eq!(c.member_state("r2"), Some(MemberState::Current));
    // The same instance serves from R2 (epoch unchanged); the write R2 missed is lost,
    // as accepted.
    let t = Instant::now();
    let rd = || IoCtx::new(Instant::now() + Duration::from_secs(10));
    loop {
        if v.write(&ctx(&v, false), 42 * BS, block(3)).await.is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not served from R2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "served from the forced replica {:?} after the force",
        t.elapsed()
    );
    assert_eq!(v.epoch(), epoch);
    assert!(v.read(&rd(), 0, BS as u32).await.unwrap() == block(0x100));
    assert!(v.read(&rd(), BS, BS as u32).await.unwrap() == block(0x101));
    assert!(v.read(&rd(), 42 * BS, BS as u32).await.unwrap() == block(3));
    // R0 and R1 come back Stale and are rebuilt from R2: identical, 0x999 gone everywhere.
    c.proxies[0].set(PASS);
    c.proxies[1].set(PASS);
    wait_for(30, "R0 and R1 caught up from R2", || {
        c.member_state("r0") == Some(MemberState::Current)
            && c.member_state("r1") == Some(MemberState::Current)
    })
    .await;
    v.shutdown().await.unwrap();
    c.identical();
    assert!(c.reps[0].image(SIZE)[..BS as usize] == block(0x100)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lu_hold_is_raised_while_an_eviction_waits_for_the_store() {
    let c = Cluster::start(2).await;
    let store = FaultyStore::over(&c.state);
    let v = ReplicatedVolume::start(cfg(SIZE, c.addrs()), store.clone())
        .await
        .unwrap();
    let hold = v.hold().expect("a replicated volume offers the LU a hold");
    assert_eq!(v.ready().await, Phase::Healthy);
    wait_for(5, "the start-up hold released", || !hold.is_held()).await;
    store.down.store(true, Ordering::SeqCst);
    c.proxies[1].set(CUT);
    let w = {
        let v = v.clone();
        tokio::spawn(async move { v.write(&ctx(&v, false), 0, block(3)).await })
    };
    // The write waits in the eviction (store down): the LU must hold new commands.
    wait_for(5, "the hold raised during the eviction", || hold.is_held()).await;
    let r = w.await.unwrap();
    assert!(matches!(r, Err(BackendError::Busy)), "{r:?}");
    // Pings retry the eviction while the store is down; once it is back the eviction is
    // recorded and the hold ends.
    store.down.store(false, Ordering::SeqCst);
    wait_for(10, "the hold released after the eviction", || {
        !hold.is_held()
    })
    .await;
    v.write(&ctx(&v, false), 0, block(4)).await.unwrap();
    assert!(!hold.is_held());
    assert_eq!(c.member_state("r1"), Some(MemberState::Stale));
}
