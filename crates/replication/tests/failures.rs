//! Failure-table rows of design §4 not in `scenarios.rs`: clean restart (no reconcile, no
//! lease wait), a flapping replica (readmission backoff, one stall per eviction), a
//! source dying mid catch-up followed by a target restart (resume from the cursor), a
//! double target under a partition (the lease), and the chaos run. Real replica servers
//! over pools on temp files, a proxy per path for stalls and cuts, and the verifying
//! writer of `common`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use cstor_iscsi::backend::{BlockBackend, IoCtx};
use cstor_replication::volume::Phase;
use cstor_replication::{MemberState, MembershipStore, ReplicatedVolume};

fn rd_ctx() -> IoCtx {
    IoCtx::new(Instant::now() + Duration::from_secs(10))
}

/// `n` blocks from `first`, block i tagged `tag + i`.
fn blocks(tag: u64, n: u64) -> Bytes {
    let mut v = Vec::with_capacity((n * BS) as usize);
    for i in 0..n {
        v.extend_from_slice(&block(tag + i));
    }
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_then_start_skips_reconcile_and_lease_wait() {
    let c = cluster(2).await;
    let v = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.3).await;
    v.shutdown().await.unwrap();
    let lease = cfg(SIZE, c.addrs()).t_lease;
    // Clean stop: the next start neither waits for the old lease nor reconciles.
    let t = Instant::now();
    let v2 = c.target().await;
    let took = t.elapsed();
    let si = v2.start_info();
    assert_eq!(si.reconciled_bytes, None, "reconciled after a clean stop");
    assert_eq!(
        si.lease_wait,
        Duration::ZERO,
        "lease wait after a clean stop"
    );
    assert!(
        took < lease,
        "clean start took {took:?} (T_lease {lease:?})"
    );
    eprintln!("start after a clean stop: {took:?}");
    verify(&v2, &truth, BLOCKS).await;
    run_writers(&v2, &truth, 0.3).await;
    // The contrast: after a crash the next start waits out the lease and reconciles.
    v2.crash();
    let t = Instant::now();
    let v3 = c.target().await;
    let took = t.elapsed();
    let si = v3.start_info();
    assert!(si.reconciled_bytes.is_some(), "no reconcile after a crash");
    assert!(
        si.lease_wait > Duration::ZERO && took >= lease,
        "{si:?} {took:?}"
    );
    eprintln!("start after a crash: {took:?}");
    verify(&v3, &truth, BLOCKS).await;
    v3.shutdown().await.unwrap();
    c.identical();
}

/// A move off a node the controller saw dead (`takeover_from` names the crashed holder)
/// loses that node's replica too: the new target waits for it no longer than the lease
/// wait it sits out anyway, demotes it, and serves every acknowledged write. A name that
/// is not the record's holder (an annotation left from an earlier move) keeps the full
/// gather bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_off_a_dead_node_gathers_no_longer_than_the_lease_wait() {
    let c = cluster(3).await;
    let v = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v, &truth, 0.3).await;
    let holder = |c: &Cluster| {
        let (r, _) = c.store.read().unwrap();
        r.holder.map(|h| h.instance).unwrap()
    };
    let dead = holder(&c);
    v.crash();
    c.proxies[2].set(CUT);
    let mut moved = cfg(SIZE, c.addrs());
    moved.t_gather = Duration::from_secs(9);
    let lease_wait = moved.t_lease + moved.t_lease / 10 + Duration::from_secs(1);
    moved.takeover_from = Some(dead);
    let t = Instant::now();
    let v2 = c.target_with(moved.clone()).await;
    let took = t.elapsed();
    eprintln!("start after a move off a dead node: {took:?}");
    assert!(
        took >= lease_wait && took < moved.t_gather,
        "took {took:?}: lease wait {lease_wait:?}, T_gather {:?}",
        moved.t_gather
    );
    assert_eq!(c.state_of("r2"), MemberState::Stale);
    verify(&v2, &truth, BLOCKS).await;
    run_writers(&v2, &truth, 0.3).await;

    // The same start naming an instance that is not the holder waits out T_gather.
    let stale_name = holder(&c);
    v2.crash();
    moved.takeover_from = Some(format!("not-{stale_name}"));
    moved.t_takeover = Duration::ZERO;
    c.proxies[1].set(CUT);
    let t = Instant::now();
    let v3 = c.target_with(moved.clone()).await;
    let took = t.elapsed();
    assert!(took >= moved.t_gather, "took {took:?} with a stale name");
    assert_eq!(c.state_of("r1"), MemberState::Stale);
    verify(&v3, &truth, BLOCKS).await;
    v3.shutdown().await.unwrap();
}

/// R2 stops for 1.5 s every 4.5 s (the SIGSTOP/SIGCONT flap of §4, in-process): each
/// eviction costs the writers at most one stall, a stall of R2 while it is Stale or
/// catching up costs none, and the delay before each readmission doubles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_replica_backoff_grows_and_one_stall_per_eviction() {
    let c = cluster(3).await;
    let mut conf = cfg(SIZE, c.addrs());
    conf.t_evict = Duration::from_millis(1000);
    conf.readmit_delay = Duration::from_millis(500);
    let v = c.target_with(conf).await;
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    // 64 blocks: a catch-up takes well under the 3 s R2 runs between stops.
    let hs = spawn_writers(&v, 64, 4, truth.clone(), stop.clone());
    // Watch R2's recorded state.
    let log: Arc<parking_lot::Mutex<Vec<(Instant, MemberState)>>> = Arc::default();
    let watch = {
        let store = c.store.clone();
        let log = log.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = MemberState::Current;
            while !stop.load(Ordering::SeqCst) {
                use cstor_replication::MembershipStore;
                if let Ok((r, _)) = store.read() {
                    let s = r.member("r2").map_or(last, |m| m.state);
                    if s != last {
                        log.lock().push((Instant::now(), s));
                        last = s;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for _ in 0..4 {
        c.proxies[2].set(STALL);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // A SIGCONT after a long stop: the connections the target gave up are gone.
        c.proxies[2].set(CUT);
        c.proxies[2].set(PASS);
        tokio::time::sleep(Duration::from_millis(3000)).await;
    }
    wait_for(30, "R2 readmitted at the end", || {
        c.state_of("r2") == MemberState::Current
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    watch.await.unwrap();
    let log = log.lock().clone();
    let evictions: Vec<Instant> = log
        .iter()
        .filter(|(_, s)| *s == MemberState::Stale)
        .map(|x| x.0)
        .collect();
    let gaps: Vec<Duration> = log
        .windows(2)
        .filter(|w| w[0].1 == MemberState::Stale && w[1].1 == MemberState::Current)
        .map(|w| w[1].0 - w[0].0)
        .collect();
    // A stall is a write held about T_evict (the eviction's); shorter waits are noise.
    let stalls: Vec<(Instant, u64)> = truth
        .stalls(Duration::from_millis(1200))
        .into_iter()
        .filter(|s| s.1 >= 700)
        .collect();
    eprintln!(
        "evictions {}, readmission delays {gaps:?}, stalls {:?}",
        evictions.len(),
        stalls.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    assert!(
        evictions.len() >= 3,
        "R2 was evicted {} times",
        evictions.len()
    );
    // The k-th readmission waits at least readmit_delay * 2^(k-1) after its eviction.
    for (k, g) in gaps.iter().enumerate() {
        let floor = Duration::from_millis(500) * (1 << k);
        assert!(
            *g >= floor,
            "readmission {k} after {g:?}, backoff floor {floor:?} ({gaps:?})"
        );
    }
    assert!(
        stalls.len() <= evictions.len(),
        "{} write stalls for {} evictions: {stalls:?}",
        stalls.len(),
        evictions.len()
    );
    for (_, ms) in &stalls {
        assert!(*ms < 5000, "a stall of {ms} ms");
    }
    assert_eq!(truth.failed.load(Ordering::SeqCst), 0, "a write failed");
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    c.identical();
}

/// The proxy index (0 or 1) carrying the catch-up reads now.
async fn busiest(c: &Cluster) -> usize {
    let a = [
        c.proxies[0].down.load(Ordering::SeqCst),
        c.proxies[1].down.load(Ordering::SeqCst),
    ];
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d0 = c.proxies[0].down.load(Ordering::SeqCst) - a[0];
    let d1 = c.proxies[1].down.load(Ordering::SeqCst) - a[1];
    usize::from(d1 > d0)
}

fn rebuild_done(v: &ReplicatedVolume, id: &str) -> u64 {
    v.status()
        .replicas
        .iter()
        .find(|r| r.id == id)
        .map_or(0, |r| r.rebuild_bytes_done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_dies_mid_catch_up_then_target_restart_resumes_from_cursor() {
    const MIB: u64 = 1 << 20;
    const WRITTEN: u64 = 40 * MIB;
    let c = cluster_sized(3, 64 * MIB).await;
    let mut conf = cfg(c.size, c.addrs());
    conf.rebuild_rate = Some(8 * MIB);
    let v = c.target_with(conf.clone()).await;
    // R2 away while 40 MiB are written.
    c.proxies[2].set(CUT);
    let per = MIB / BS;
    for i in 0..WRITTEN / MIB {
        v.write(&ctx(&v, false), i * MIB, blocks(0x1000 + i * per, per))
            .await
            .unwrap();
    }
    assert_eq!(c.state_of("r2"), MemberState::Stale);
    c.proxies[2].set(PASS);
    wait_for(30, "catch-up under way", || {
        rebuild_done(&v, "r2") >= 8 * MIB
    })
    .await;
    // The source dies: another Current replica takes over.
    let src = busiest(&c).await;
    c.proxies[src].set(CUT);
    let done_at_cut = rebuild_done(&v, "r2");
    wait_for(30, "catch-up continues from the other source", || {
        rebuild_done(&v, "r2") >= 20 * MIB
    })
    .await;
    assert!(rebuild_done(&v, "r2") > done_at_cut);
    assert_eq!(c.state_of(&format!("r{src}")), MemberState::Stale);
    assert_ne!(c.state_of("r2"), MemberState::Current);
    // Then the target dies mid catch-up; the next one resumes from R2's cursor.
    let done = rebuild_done(&v, "r2");
    v.crash();
    let sent_before = c.proxies[2].up.load(Ordering::SeqCst);
    let v2 = c.target_with(conf).await;
    wait_for(60, "R2 readmitted", || {
        c.state_of("r2") == MemberState::Current
    })
    .await;
    let resent = c.proxies[2].up.load(Ordering::SeqCst) - sent_before;
    // The cursor is stored every 8 MiB copied.
    let remainder = WRITTEN - done / (8 * MIB) * (8 * MIB);
    eprintln!(
        "copied {done} before the restart, {resent} bytes sent after (remainder {remainder})"
    );
    assert!(
        resent <= remainder + remainder / 4 + 2 * MIB,
        "sent {resent} bytes after the restart for a remainder of {remainder}"
    );
    // Both copies back; everything written is there.
    c.proxies[src].set(PASS);
    wait_for(60, "the dead source readmitted", || {
        c.state_of(&format!("r{src}")) == MemberState::Current
    })
    .await;
    for i in 0..WRITTEN / MIB {
        let got = v2.read(&rd_ctx(), i * MIB, MIB as u32).await.unwrap();
        assert!(got == blocks(0x1000 + i * per, per), "MiB {i} lost");
    }
    v2.shutdown().await.unwrap();
    c.identical();
}

/// {T1, R0, R1} cut from {T2, R2, store}: T2 fences R2, waits out T_lease, serves alone;
/// T1 (still reaching R0 and R1) never acknowledges a write after the cut and stops
/// reading within T_lease, before T2 serves; healed, T1 is fenced without bumping the
/// epoch and R0, R1 catch up to T2's history. Both targets use the same replica
/// addresses; each proxy tells their connections apart by group (T1: 0, T2: 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_target_partition_old_target_stops_within_lease() {
    use cstor_replication::MembershipStore;
    let c = cluster(3).await;
    let store1 = FaultyStore::over(&c.state);
    let t1 = ReplicatedVolume::start(cfg(SIZE, c.addrs()), store1.clone())
        .await
        .unwrap();
    assert_eq!(t1.ready().await, Phase::Healthy);
    for p in &c.proxies {
        p.set_group(1);
    }
    t1.write(&ctx(&t1, true), 0, block(0xa1)).await.unwrap();
    // T1's reader and writer record their last success.
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    let last_read = Arc::new(AtomicU64::new(0));
    let last_write = Arc::new(AtomicU64::new(0));
    // When the last acknowledged write was sent: one in flight across the cut may still
    // complete (R2 answered before the cut), one sent after it never may.
    let last_write_sent = Arc::new(AtomicU64::new(0));
    let stale_seen = Arc::new(AtomicBool::new(false));
    let bg = {
        let (t1, stop, lr, lw, lws, stale) = (
            t1.clone(),
            stop.clone(),
            last_read.clone(),
            last_write.clone(),
            last_write_sent.clone(),
            stale_seen.clone(),
        );
        let (t1b, stopb) = (t1.clone(), stop.clone());
        let reader = tokio::spawn(async move {
            while !stopb.load(Ordering::SeqCst) {
                if let Ok(b) = t1b.read(&rd_ctx(), 0, BS as u32).await {
                    lr.store(base.elapsed().as_millis() as u64, Ordering::SeqCst);
                    if b != block(0xa1) {
                        stale.store(true, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let writer = tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let sent = base.elapsed().as_millis() as u64;
                if t1
                    .write(&ctx(&t1, false), (8 + n % 8) * BS, block(n))
                    .await
                    .is_ok()
                {
                    lw.store(base.elapsed().as_millis() as u64, Ordering::SeqCst);
                    lws.store(sent, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        [reader, writer]
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The partition.
    let cut_start_ms = base.elapsed().as_millis() as u64;
    c.proxies[2].cut_group(0, true);
    store1.down.store(true, Ordering::SeqCst);
    c.proxies[0].cut_group(1, true);
    c.proxies[1].cut_group(1, true);
    let cut_ms = base.elapsed().as_millis() as u64;
    let t2 = ReplicatedVolume::start(cfg(SIZE, c.addrs()), c.store.clone())
        .await
        .unwrap();
    assert!(matches!(t2.ready().await, Phase::Degraded));
    let t2_ms = base.elapsed().as_millis() as u64;
    assert_eq!(c.state_of("r2"), MemberState::Current);
    assert_eq!(c.state_of("r0"), MemberState::Stale);
    t2.write(&ctx(&t2, true), 0, block(0xb2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (lr, lw) = (
        last_read.load(Ordering::SeqCst),
        last_write.load(Ordering::SeqCst),
    );
    let lease = cfg(SIZE, vec![]).t_lease.as_millis() as u64;
    eprintln!(
        "cut at {cut_ms} ms, T2 serving at {t2_ms} ms, T1's last read {lr} ms, last write {lw} ms"
    );
    let lws = last_write_sent.load(Ordering::SeqCst);
    assert!(
        lws < cut_start_ms,
        "T1 acknowledged a write sent after the cut (sent at {lws} ms)"
    );
    assert!(
        lw < t2_ms,
        "T1 acknowledged a write after T2 started serving"
    );
    assert!(lr < t2_ms, "T1 served a read after T2 started serving");
    assert!(lr <= cut_ms + lease, "T1 read past its lease");
    assert!(
        !stale_seen.load(Ordering::SeqCst),
        "T1 read something other than the last write it acknowledged"
    );
    // Heal: T1 learns of the newer epoch and stops; R0 and R1 catch up under T2.
    store1.down.store(false, Ordering::SeqCst);
    for p in &c.proxies {
        p.cut_group(0, false);
        p.cut_group(1, false);
    }
    tokio::time::timeout(Duration::from_secs(10), t1.fenced())
        .await
        .expect("T1 did not notice it was fenced");
    stop.store(true, Ordering::SeqCst);
    for h in bg {
        h.await.unwrap();
    }
    assert_eq!(
        c.store.read().unwrap().0.epoch,
        t2.epoch(),
        "the epoch moved after T2"
    );
    wait_for(30, "R0 and R1 readmitted", || {
        c.state_of("r0") == MemberState::Current && c.state_of("r1") == MemberState::Current
    })
    .await;
    assert_eq!(t2.read(&rd_ctx(), 0, BS as u32).await.unwrap(), block(0xb2));
    t2.shutdown().await.unwrap();
    c.identical();
}

/// Random replica kills, stalls (SIGSTOP-like) and cuts, target crashes and clean
/// restarts under 8 verifying writers (FUA every 50th write); every block read back
/// after each fault; at the end the replicas are byte-identical. CSTOR_CHAOS_SECS sets
/// the length (default 25 s) and CSTOR_CHAOS_SEED the fault sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_stalls_cuts_and_target_restarts_lose_nothing() {
    let secs: u64 = std::env::var("CSTOR_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("CSTOR_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut c = cluster(3).await;
    let mut v = c.target().await;
    let truth = Arc::new(Truth::default());
    let t0 = Instant::now();
    let mut faults = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        let stop = Arc::new(AtomicBool::new(false));
        let hs = spawn_writers(&v, BLOCKS, 8, truth.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(200 + rnd(400))).await;
        let r = rnd(3) as usize;
        let hold = Duration::from_millis(300 + rnd(2500));
        let kind = rnd(6);
        faults.push(format!("{kind}@r{r}/{hold:?}"));
        match kind {
            0 => {
                c.reps[r].kill();
                tokio::time::sleep(hold).await;
                c.reps[r].restart().await;
            }
            1 => {
                c.proxies[r].set(STALL);
                tokio::time::sleep(hold).await;
                c.proxies[r].set(CUT);
                c.proxies[r].set(PASS);
            }
            2 => {
                c.proxies[r].set(CUT);
                tokio::time::sleep(hold).await;
                c.proxies[r].set(PASS);
            }
            _ => tokio::time::sleep(hold).await,
        }
        stop.store(true, Ordering::SeqCst);
        for h in hs {
            h.await.unwrap();
        }
        match kind {
            3 => {
                v.crash();
                v = c.target().await;
            }
            4 => {
                v.shutdown().await.unwrap();
                v = c.target().await;
            }
            _ => {}
        }
        verify(&v, &truth, BLOCKS).await;
    }
    eprintln!(
        "chaos seed {seed}: {} faults {faults:?}, {} writes acknowledged, {} failed",
        faults.len(),
        truth.acked.load(Ordering::SeqCst),
        truth.failed.load(Ordering::SeqCst)
    );
    wait_for(90, "every replica Current", || {
        (0..3).all(|i| c.state_of(&format!("r{i}")) == MemberState::Current)
    })
    .await;
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    let _ = &mut c;
    c.identical();
}
