//! Failure scenarios of design §4 against real replica servers (pools on temp files,
//! TCP on 127.0.0.1, a proxy per replica for stalls and cuts) under a verifying writer
//! that knows the last acknowledged value of every block.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use cstor_iscsi::backend::{BackendError, BlockBackend, IoCtx};
use cstor_replication::membership::MembershipStore;
use cstor_replication::volume::Phase;
use cstor_replication::{FileStore, MemberState, ReplicatedVolume};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_stalled_replica_is_evicted_once_then_caught_up_and_readmitted() {
    let c = cluster(3).await;
    let v = c.target().await;
    assert_eq!(v.status().phase, Phase::Healthy);
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // R2 stops answering (as SIGSTOP or a cut would do): one stall, then normal writes.
    c.proxies[2].set(STALL);
    let stalled_at = Instant::now();
    wait_for(10, "R2 recorded Stale", || {
        c.state_of("r2") == MemberState::Stale
    })
    .await;
    let evicted_after = stalled_at.elapsed();
    // The writes held by the eviction complete just after its CAS, which this poll may
    // see first: they are the one stall, not writes after it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = truth.acked.load(Ordering::SeqCst);
    truth.max_latency_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        truth.acked.load(Ordering::SeqCst) > before + 20,
        "writes did not resume"
    );
    let after_ms = truth.max_latency_ms.load(Ordering::SeqCst);
    assert!(
        evicted_after < Duration::from_secs(5),
        "eviction took {evicted_after:?}"
    );
    assert!(
        after_ms < 1000,
        "writes stayed slow after the eviction: {after_ms} ms"
    );
    assert_eq!(v.status().phase, Phase::Degraded);
    // Heal: R2 catches up (incrementally) and is readmitted by a recorded change.
    c.proxies[2].set(CUT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.proxies[2].set(PASS);
    wait_for(30, "R2 readmitted Current", || {
        c.state_of("r2") == MemberState::Current
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
    let st = v.status();
    assert!(st.replicas.iter().all(|r| r.rebuild_percent == 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf2_one_replica_lost_keeps_writing_through_and_survives_restart() {
    let c = cluster(2).await;
    let v = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.5).await;
    c.proxies[1].set(CUT);
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    wait_for(10, "R1 recorded Stale", || {
        c.state_of("r1") == MemberState::Stale
    })
    .await;
    let n = truth.acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert!(
        truth.acked.load(Ordering::SeqCst) > n,
        "RF=2 stopped writing after one loss"
    );
    assert_eq!(truth.failed.load(Ordering::SeqCst), 0);
    verify(&v, &truth, BLOCKS).await;
    let (rec, _) = c.store.read().unwrap();
    assert_eq!(rec.member("r0").unwrap().state, MemberState::Current);
    let epoch = v.epoch();
    // Target restart (unclean: dropped without a clean stop): epoch + 1, served from R0.
    drop(v);
    let v2 = ReplicatedVolume::start(cfg(SIZE, c.addrs()), c.store.clone())
        .await
        .unwrap();
    assert!(matches!(v2.ready().await, Phase::Degraded | Phase::Healthy));
    assert_eq!(v2.epoch(), epoch + 1);
    verify(&v2, &truth, BLOCKS).await;
    // R1 comes back: Stale -> catch-up -> Current; replicas identical.
    c.proxies[1].set(PASS);
    wait_for(30, "R1 readmitted", || {
        c.state_of("r1") == MemberState::Current
    })
    .await;
    verify(&v2, &truth, BLOCKS).await;
    v2.shutdown().await.unwrap();
    c.identical();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_target_is_fenced_and_no_write_of_it_applies() {
    let c = cluster(2).await;
    let t1 = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&t1, &truth, 0.3).await;
    // T2 takes over (epoch + 1, fences both replicas).
    let t2 = c.target().await;
    assert!(t2.epoch() > t1.epoch());
    // The zombie never completes another write; its data never lands.
    let r = t1.write(&ctx(&t1, false), 0, block(0xdead)).await;
    assert!(r.is_err(), "a fenced target completed a write");
    tokio::time::timeout(Duration::from_secs(5), t1.fenced())
        .await
        .expect("the zombie did not notice it was fenced");
    let r = t1
        .read(
            &IoCtx::new(Instant::now() + Duration::from_secs(5)),
            0,
            BS as u32,
        )
        .await;
    assert!(r.is_err(), "a fenced target served a read");
    let got = t2
        .read(
            &IoCtx::new(Instant::now() + Duration::from_secs(5)),
            0,
            BS as u32,
        )
        .await
        .unwrap();
    assert!(got != block(0xdead), "the zombie's write was applied");
    verify(&t2, &truth, BLOCKS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_refusals_new_replica_full_copy_and_last_replica_refusal() {
    let c = cluster(3).await;
    // A volume on R0 and R1 first.
    let two: Vec<String> = c.addrs()[..2].to_vec();
    let v = ReplicatedVolume::start(cfg(SIZE, two.clone()), c.store.clone())
        .await
        .unwrap();
    v.ready().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.4).await;
    v.shutdown().await.unwrap();
    // A different size is refused.
    let e = ReplicatedVolume::start(cfg(SIZE * 2, two.clone()), c.store.clone())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("differs from the recorded size"),
        "{e}"
    );
    // An empty record over replicas holding data is refused.
    let other_state = Arc::new(FileStore::new(c.state.join("empty")).unwrap());
    let w = ReplicatedVolume::start(cfg(SIZE, two.clone()), other_state)
        .await
        .unwrap();
    assert_eq!(w.ready().await, Phase::Offline);
    // Scale up: R2 joins as New, gets a full copy, becomes Current.
    let v = c.target().await;
    wait_for(30, "R2 readmitted", || {
        c.store.read().unwrap().0.member("r2").map(|m| m.state) == Some(MemberState::Current)
    })
    .await;
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    c.identical();
    // Down to one Current: the last one is never evicted; IO answers BUSY instead.
    let v = ReplicatedVolume::start(cfg(SIZE, c.addrs()[..1].to_vec()), c.store.clone())
        .await
        .unwrap();
    v.ready().await;
    c.proxies[0].set(CUT);
    let r = v.write(&ctx(&v, false), 0, block(1)).await;
    assert!(matches!(r, Err(BackendError::Busy)), "{r:?}");
    let (rec, _) = c.store.read().unwrap();
    assert_eq!(rec.member("r0").unwrap().state, MemberState::Current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_during_eviction_holds_then_busy_and_resumes_when_back() {
    let c = cluster(2).await;
    let store = FaultyStore::over(&c.state);
    let v = ReplicatedVolume::start(cfg(SIZE, c.addrs()), store.clone())
        .await
        .unwrap();
    assert_eq!(v.ready().await, Phase::Healthy);
    v.write(&ctx(&v, false), 0, block(1)).await.unwrap();
    // No fault: a store outage changes nothing (L6).
    store.down.store(true, Ordering::SeqCst);
    v.write(&ctx(&v, false), BS, block(2)).await.unwrap();
    // A replica fails while the store is down: the write cannot complete without a
    // recorded eviction, so it is answered BUSY (never GOOD without R1's ack).
    c.proxies[1].set(CUT);
    let t = Instant::now();
    let r = v.write(&ctx(&v, false), 2 * BS, block(3)).await;
    assert!(matches!(r, Err(BackendError::Busy)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "held {:?}",
        t.elapsed()
    );
    assert_eq!(c.state_of("r1"), MemberState::Current);
    // Store back: the eviction is recorded and IO resumes; nothing acknowledged is lost.
    store.down.store(false, Ordering::SeqCst);
    v.write(&ctx(&v, false), 2 * BS, block(4)).await.unwrap();
    assert_eq!(c.state_of("r1"), MemberState::Stale);
    let rd = |o: u64| {
        let v = v.clone();
        async move {
            v.read(
                &IoCtx::new(Instant::now() + Duration::from_secs(5)),
                o,
                BS as u32,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(rd(0).await, block(1));
    assert_eq!(rd(BS).await, block(2));
    assert_eq!(rd(2 * BS).await, block(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_crash_with_replicas_apart_is_reconciled_before_serving() {
    let c = cluster(2).await;
    let v = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.3).await;
    // R1's traffic is held (acks delayed, under T_evict) while writes keep going: R0 and
    // R1 now differ by the in-flight window; then the target dies.
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.proxies[1].set(STALL);
    // Writes sent now reach R0 but are held (then dropped) on the way to R1.
    let burst: Vec<_> = (0..16u64)
        .map(|i| {
            let v = v.clone();
            tokio::spawn(async move {
                v.write(&ctx(&v, false), (600 + i) * BS, block(0xb00 + i))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    v.crash();
    for b in burst {
        // Never acknowledged: either outcome is allowed, identical replicas are not optional.
        let _ = b.await;
    }
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    // The writes R1 never received are lost with the cut connection.
    c.proxies[1].set(CUT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.proxies[1].set(PASS);
    // Restart: epoch + 1; both replicas intact and Current; reconcile before any IO.
    let v2 = c.target().await;
    assert_eq!(v2.epoch(), v.epoch() + 1);
    assert_eq!(c.state_of("r0"), MemberState::Current);
    assert_eq!(c.state_of("r1"), MemberState::Current);
    verify(&v2, &truth, BLOCKS).await;
    v2.shutdown().await.unwrap();
    c.identical();
}

/// Catch-up under sub-block writes: 512 B / 1 KiB writes at random sector offsets land in
/// blocks the (rate-limited) walk has not reached yet; at the end both replicas must be
/// byte-identical (the catch-up copy must not be skipped for a block a live write only
/// partly covered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_under_sub_block_writes_leaves_replicas_identical() {
    let c = cluster(2).await;
    let mut conf = cfg(SIZE, c.addrs());
    conf.rebuild_rate = Some(1 << 20);
    let v = ReplicatedVolume::start(conf, c.store.clone())
        .await
        .unwrap();
    assert!(matches!(v.ready().await, Phase::Healthy));
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.3).await;
    // R1 away while every block changes: its copy of each is stale.
    c.proxies[1].set(CUT);
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    wait_for(10, "R1 recorded Stale", || {
        c.state_of("r1") == MemberState::Stale
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    for b in 0..BLOCKS {
        let cx = ctx(&v, false);
        v.write(&cx, b * BS, block(0xabc0_0000 + b)).await.unwrap();
    }
    // Small writers during the catch-up.
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..4u64)
        .map(|w| {
            let v = v.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ (w + 1);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    n += 1;
                    let len = if x & 1 == 0 { 512 } else { 1024 };
                    let sector = (x >> 8) % (BLOCKS * BS / 512 - 2);
                    let data = Bytes::from(vec![(w * 64 + n % 64) as u8 | 1; len]);
                    let cx = ctx(&v, false);
                    v.write(&cx, sector * 512, data).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    c.proxies[1].set(PASS);
    wait_for(40, "R1 readmitted", || {
        c.state_of("r1") == MemberState::Current
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    v.shutdown().await.unwrap();
    c.identical();
}

/// Online grow: every Current replica grows, the record holds the new size, the LU gets
/// CapacityChanged, data written past the old end is replicated, and a replica that was
/// away while the volume grew is grown at its next OPEN and caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_grow_resizes_every_replica_and_signals_capacity_change() {
    let c = cluster(3).await;
    let v = c.target().await;
    let mut ev = v.events().unwrap();
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.3).await;
    c.proxies[2].set(CUT);
    wait_for(10, "R2 recorded Stale", || {
        c.state_of("r2") == MemberState::Stale
    })
    .await;
    assert!(v.resize(SIZE / 2).await.is_err(), "a shrink was accepted");
    v.resize(2 * SIZE).await.unwrap();
    assert_eq!(v.size_bytes(), 2 * SIZE);
    assert_eq!(c.store.read().unwrap().0.size, 2 * SIZE);
    let e = tokio::time::timeout(Duration::from_secs(2), ev.recv())
        .await
        .expect("no event")
        .unwrap();
    assert!(matches!(
        e,
        cstor_iscsi::backend::BackendEvent::CapacityChanged
    ));
    let tail = block(0x7777);
    let at = 2 * SIZE - BS;
    v.write(&ctx(&v, true), at, tail.clone()).await.unwrap();
    let cx = IoCtx::new(Instant::now() + Duration::from_secs(10));
    assert_eq!(v.read(&cx, at, BS as u32).await.unwrap(), tail);
    c.proxies[2].set(PASS);
    wait_for(30, "R2 readmitted", || {
        c.state_of("r2") == MemberState::Current
    })
    .await;
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    let imgs: Vec<Vec<u8>> = c.reps.iter().map(|r| r.image(2 * SIZE)).collect();
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(img.len() as u64, 2 * SIZE);
        assert_eq!(
            &img[at as usize..],
            &tail[..],
            "replica {i} lacks the tail write"
        );
        assert!(img == &imgs[0], "replica {i} differs");
    }
}

/// The largest command the iSCSI target accepts (qemu and Linux split a big write at the
/// Block Limits VPD's maximum transfer length) must reach every replica as one write:
/// a body above the wire's limit made every replica drop its connection at once, leaving
/// no Current replica to evict to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_iscsi_transfer_replicates_and_reads_back_whole() {
    let max = cstor_iscsi::limits::MAX_TRANSFER_BYTES as usize;
    let c = cluster_sized(2, 2 * max as u64).await;
    let v = c.target().await;
    let data: Vec<u8> = (0..max).map(|i| (i * 7 + i / 4096) as u8).collect();
    let data = Bytes::from(data);
    v.write(&ctx(&v, true), BS, data.clone()).await.unwrap();
    let cx = IoCtx::new(Instant::now() + Duration::from_secs(20));
    let got = v.read(&cx, BS, max as u32).await.unwrap();
    assert!(got == data, "the read-back differs from the write");
    for id in ["r0", "r1"] {
        assert_eq!(c.state_of(id), MemberState::Current, "{id} left Current");
    }
    v.shutdown().await.unwrap();
    c.identical();
}

/// Design §2.6's backlog trigger: a Current replica that stops answering while its
/// backlog grows past the bound is evicted at once, long before T_evict or the lease
/// would notice; the reason says why. The write that found it over the bound was never
/// sent to it, and its catch-up makes it identical again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_backlog_passes_the_bound_is_evicted_before_t_evict() {
    let c = cluster(2).await;
    let mut conf = cfg(c.size, c.addrs());
    // Neither time trigger fires within the test's bound: only the backlog one can.
    conf.t_evict = Duration::from_secs(20);
    conf.t_lease = Duration::from_secs(40);
    // 16 writers of one block each, no FUA (a writer waiting in a flush has no write
    // out): a stalled replica holds up to 16 writes unanswered, the other a few at most.
    conf.evict_backlog = 6 * BS;
    let v = c.target_with(conf).await;
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers_fua(&v, BLOCKS, 16, truth.clone(), stop.clone(), 0);
    wait_for(10, "writes flowing", || {
        truth.acked.load(Ordering::SeqCst) > 200
    })
    .await;
    c.proxies[1].set(STALL);
    let stalled_at = Instant::now();
    wait_for(10, "r1 recorded Stale", || {
        c.state_of("r1") == MemberState::Stale
    })
    .await;
    let evicted_after = stalled_at.elapsed();
    assert!(
        evicted_after < Duration::from_secs(3),
        "evicted after {evicted_after:?}: the backlog bound did not act"
    );
    let (rec, _) = c.store.read().unwrap();
    let reason = rec.member("r1").unwrap().reason.clone();
    assert!(reason.contains("unanswered"), "reason: {reason}");
    assert_eq!(c.state_of("r0"), MemberState::Current);
    let before = truth.acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        truth.acked.load(Ordering::SeqCst) > before + 20,
        "writes did not resume after the eviction"
    );
    // The writers stop first: with a bound this small, live writes beside the catch-up
    // would end it again and again (as designed for a slow member).
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(truth.failed.load(Ordering::SeqCst), 0, "a write failed");
    c.proxies[1].set(CUT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.proxies[1].set(PASS);
    wait_for(30, "r1 readmitted Current", || {
        c.state_of("r1") == MemberState::Current
    })
    .await;
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    c.identical();
}
