//! The failure table's rows about the membership store (design §4): an eviction whose
//! member answers before the store comes back is cancelled; a store outage without a
//! fault changes nothing; a CAS applied but answered as a timeout is known by re-reading
//! (no double eviction, no lost readmission, also when the store then stays away); a
//! CAS conflicting with another writer's change is retried and keeps both changes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cstor_iscsi::backend::{BackendError, BlockBackend, IoCtx};
use cstor_replication::volume::Phase;
use cstor_replication::{MemberState, MembershipStore, Record, ReplicatedVolume, VolumeConfig};

fn state_in(r: &Record, id: &str) -> Option<MemberState> {
    r.member(id).map(|m| m.state)
}

/// `n` replicas behind a [`FaultyStore`] and a Healthy target over them (`tune` adjusts
/// the test configuration).
async fn healthy(
    n: usize,
    tune: impl FnOnce(&mut VolumeConfig),
) -> (Cluster, Arc<FaultyStore>, ReplicatedVolume) {
    let c = cluster(n).await;
    let store = FaultyStore::over(&c.state);
    let mut conf = cfg(SIZE, c.addrs());
    tune(&mut conf);
    let v = ReplicatedVolume::start(conf, store.clone()).await.unwrap();
    assert_eq!(v.ready().await, Phase::Healthy);
    (c, store, v)
}

async fn read_block(v: &ReplicatedVolume, b: u64) -> bytes::Bytes {
    v.read(
        &IoCtx::new(Instant::now() + Duration::from_secs(10)),
        b * BS,
        BS as u32,
    )
    .await
    .unwrap()
}

/// Store down, a Current replica stalls past T_evict (its writes time out, the eviction
/// cannot be recorded), then answers everything before the store is back: the eviction
/// is cancelled and the write completes GOOD with both replicas holding it; the record
/// never shows the member Stale. Before the cancel this write was answered BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_replica_back_before_the_store_cancels_its_eviction() {
    let (c, store, v) = healthy(2, |_| {}).await;
    v.write(&ctx(&v, false), 0, block(1)).await.unwrap();
    store.down.store(true, Ordering::SeqCst);
    c.proxies[1].set(STALL);
    let t = Instant::now();
    let w = {
        let v = v.clone();
        tokio::spawn(async move { v.write(&ctx(&v, false), BS, block(2)).await })
    };
    // Past T_evict (2 s) the eviction waits for the store; the replica answers at 3 s,
    // inside T_hold (4 s from the eviction's start).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!w.is_finished(), "the write completed without R1's ack");
    c.proxies[1].set(PASS);
    let r = w.await.unwrap();
    assert!(r.is_ok(), "write after a cancelled eviction: {r:?}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(6), "write took {took:?}");
    assert!(v.status().evictions_cancelled >= 1, "{:?}", v.status());
    // IO goes on at normal latency with the store still down.
    let t2 = Instant::now();
    for i in 0..20u64 {
        v.write(&ctx(&v, i % 5 == 0), (2 + i) * BS, block(10 + i))
            .await
            .unwrap();
    }
    assert!(t2.elapsed() < Duration::from_secs(2), "{:?}", t2.elapsed());
    store.down.store(false, Ordering::SeqCst);
    for rec in store.history.lock().iter() {
        assert_ne!(state_in(rec, "r1"), Some(MemberState::Stale), "{rec:?}");
    }
    assert_eq!(c.state_of("r1"), MemberState::Current);
    assert_eq!(v.status().phase, Phase::Healthy);
    assert_eq!(read_block(&v, 1).await, block(2));
    v.shutdown().await.unwrap();
    c.identical();
}

/// Store unreachable with no fault, for `CSTOR_STORE_OUTAGE_SECS` (default 8; the
/// table's row says 10 minutes: `CSTOR_STORE_OUTAGE_SECS=600`): writes and reads go on
/// at normal latency, renewals fail silently (renewTime does not move), the phase and
/// epoch stay, nothing is evicted, and a second instance cannot take over meanwhile.
/// The store back, renewals resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_without_a_fault_changes_nothing() {
    let secs: u64 = std::env::var("CSTOR_STORE_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let (c, store, v) = healthy(3, |_| {}).await;
    let epoch = v.epoch();
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.5).await;
    let renew_before = c.store.read().unwrap().0.renew_time;
    store.down.store(true, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let truth2 = Arc::new(Truth::default());
    *truth2.last.lock() = truth.last.lock().clone();
    let hs = spawn_writers(&v, BLOCKS, 4, truth2.clone(), stop.clone());
    // A second instance meanwhile: it cannot read the record, so it cannot claim.
    let mut c2 = cfg(SIZE, c.addrs());
    c2.t_gather = Duration::from_secs(1);
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        ReplicatedVolume::start(c2, store.clone()),
    )
    .await;
    if let Ok(Ok(t2)) = second {
        let p = t2.ready().await;
        assert!(
            t2.refusal().is_some() || p == Phase::Offline,
            "a second instance took over during a store outage: {p:?}"
        );
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(v.status().phase, Phase::Healthy);
        assert_eq!(v.epoch(), epoch);
        assert!(!v.is_fenced());
    }
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(truth2.failed.load(Ordering::SeqCst), 0, "writes failed");
    assert!(truth2.acked.load(Ordering::SeqCst) > 100);
    let stalls = truth2.stalls(Duration::from_millis(500));
    assert!(stalls.is_empty(), "writes stalled: {stalls:?}");
    assert_eq!(c.store.read().unwrap().0.renew_time, renew_before);
    verify(&v, &truth2, BLOCKS).await;
    store.down.store(false, Ordering::SeqCst);
    // Renewal every 10 pings (300 ms in these tests).
    wait_for(10, "a renewal after the store is back", || {
        c.store.read().unwrap().0.renew_time > renew_before
    })
    .await;
    let rec = c.store.read().unwrap().0;
    assert_eq!(rec.epoch, epoch);
    assert!(rec.members.iter().all(|m| m.state == MemberState::Current));
    v.shutdown().await.unwrap();
    c.identical();
}

/// An eviction CAS applied by the store but answered as a timeout: the target re-reads,
/// sees it applied and goes on at once (no wait for T_hold, no second eviction record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_applied_but_answered_as_a_timeout_is_known_by_re_reading() {
    let (c, store, v) = healthy(2, |_| {}).await;
    *store.lose_reply_when.lock() = Some(Box::new(|r: &Record| {
        state_in(r, "r1") == Some(MemberState::Stale)
    }));
    c.proxies[1].set(CUT);
    let t = Instant::now();
    v.write(&ctx(&v, false), 0, block(1)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(store.lost_replies.load(Ordering::SeqCst), 1);
    assert_eq!(c.state_of("r1"), MemberState::Stale);
    let transitions = store
        .history
        .lock()
        .windows(2)
        .filter(|w| {
            state_in(&w[0], "r1") == Some(MemberState::Current)
                && state_in(&w[1], "r1") == Some(MemberState::Stale)
        })
        .count();
    let first_stale = store
        .history
        .lock()
        .iter()
        .find(|r| state_in(r, "r1") == Some(MemberState::Stale))
        .and_then(|r| r.member("r1").map(|m| m.stale_since_io));
    for rec in store.history.lock().iter() {
        if let Some(m) = rec.member("r1").filter(|m| m.state == MemberState::Stale) {
            assert_eq!(Some(m.stale_since_io), first_stale, "evicted twice");
        }
    }
    assert!(transitions <= 1, "{transitions} evictions recorded");
    v.write(&ctx(&v, false), BS, block(2)).await.unwrap();
    v.shutdown().await.unwrap();
}

/// The readmission CAS applied but answered as a timeout, and the member fails again at
/// once. With `store_away` the store is also unreachable for 2 s after it, so re-reading
/// cannot tell: the member counts as Current (unconfirmed) until a stored change. Either
/// way its failure is recorded by CAS before a write completes without it, so the record
/// never claims a Current replica that missed an acknowledged write (before re-reading,
/// the target took the readmission as failed and completed writes without it).
async fn readmission_reply_lost(store_away: bool) {
    // Renewals (every 10 pings) 10 s apart: only re-reading can show the readmission
    // within the 2 s waited for below.
    let (c, store, v) = healthy(2, |conf| conf.ping = Duration::from_secs(1)).await;
    c.proxies[1].set(CUT);
    v.write(&ctx(&v, false), 0, block(1)).await.unwrap();
    assert_eq!(c.state_of("r1"), MemberState::Stale);
    if store_away {
        *store.down_after_loss.lock() = Some(Duration::from_secs(2));
    }
    *store.lose_reply_when.lock() = Some(Box::new(|r: &Record| {
        state_in(r, "r1") == Some(MemberState::Current)
    }));
    c.proxies[1].set(PASS);
    wait_for(30, "the readmission CAS", || {
        store.lost_replies.load(Ordering::SeqCst) == 1
    })
    .await;
    if !store_away {
        // Re-reading showed the CAS applied: the readmission counts at once.
        wait_for(2, "r1 Current in the target's record", || {
            v.record().member("r1").map(|m| m.state) == Some(MemberState::Current)
        })
        .await;
    }
    // r1 fails again (at once with `store_away`): the stored record says Current, so
    // no write may complete without r1 before its eviction is recorded.
    c.proxies[1].set(CUT);
    let r = v.write(&ctx(&v, false), BS, block(2)).await;
    assert!(r.is_ok() || matches!(r, Err(BackendError::Busy)), "{r:?}");
    let r = match r {
        Ok(()) => Ok(()),
        // Held past T_hold while the store was away: once more with the store back.
        Err(_) => {
            wait_for(10, "the store back", || !store.down.load(Ordering::SeqCst)).await;
            v.write(&ctx(&v, false), BS, block(2)).await
        }
    };
    r.unwrap();
    assert_eq!(
        c.state_of("r1"),
        MemberState::Stale,
        "a write completed without r1 while the record says it is Current"
    );
    // Healed again: caught up, readmitted, and the data is everywhere.
    c.proxies[1].set(PASS);
    wait_for(30, "Healthy again", || {
        v.status().phase == Phase::Healthy && c.state_of("r1") == MemberState::Current
    })
    .await;
    assert_eq!(read_block(&v, 1).await, block(2));
    v.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readmission_applied_but_answered_as_a_timeout_is_not_lost() {
    readmission_reply_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readmission_with_an_unknown_outcome_counts_until_confirmed() {
    readmission_reply_lost(true).await;
}

/// Another writer changes the record between our read and our CAS (on the CStorVolume
/// store that is a controller's spec edit, which moves the resourceVersion): the CAS
/// conflicts, is retried on the new version, and both changes are in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_conflict_with_a_concurrent_change_is_retried_and_keeps_both() {
    let (c, store, v) = healthy(2, |_| {}).await;
    let drf0 = c.store.read().unwrap().0.drf;
    *store.interleave.lock() = Some(Box::new(move |r: &mut Record| r.drf = drf0 + 1));
    c.proxies[1].set(CUT);
    v.write(&ctx(&v, false), 0, block(1)).await.unwrap();
    assert!(
        store.interleave.lock().is_none(),
        "the other writer never ran"
    );
    let rec = c.store.read().unwrap().0;
    assert_eq!(rec.drf, drf0 + 1, "the other writer's change was lost");
    assert_eq!(state_in(&rec, "r1"), Some(MemberState::Stale));
    v.write(&ctx(&v, false), BS, block(2)).await.unwrap();
    v.shutdown().await.unwrap();
}
