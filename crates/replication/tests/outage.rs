//! Every Current replica away at once (design §2.6 "if the member answers everything
//! first, cancel the eviction"; docs/replication.md "Whole-set outage"): no eviction can
//! be recorded, so IO is held then BUSY, nothing is acknowledged without every Current
//! replica, and when the members answer again the target re-opens them on its own (same
//! epoch, fresh sessions), re-validates them against the record, reconciles what the
//! failed writes left apart, and serves again; a member that returns with a stale epoch
//! is demoted and caught up before it counts. Real replica servers over pools on temp
//! files, a proxy per replica, and the verifying writer of `common`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cstor_replication::{MemberState, ReplicatedVolume};

/// Writes answered GOOD while every Current replica is away: none may be.
async fn assert_no_ack_while_away(truth: &Truth, what: &str) {
    wait_for(20, "a write failing in the outage", || {
        truth.failed.load(Ordering::SeqCst) > 0
    })
    .await;
    // Writes acknowledged by all replicas just before the outage may still complete.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = truth.acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        truth.acked.load(Ordering::SeqCst),
        acked,
        "a write was acknowledged while {what}"
    );
}

/// Waits until writes are acknowledged again; how long that took from `from`.
async fn resumed(truth: &Truth, from: Instant, secs: u64) -> Duration {
    let n = truth.acked.load(Ordering::SeqCst);
    wait_for(secs, "writes acknowledged again", || {
        truth.acked.load(Ordering::SeqCst) > n + 20
    })
    .await;
    from.elapsed()
}

/// Writers stopped after a last stretch; same instance, every member Current, every
/// acknowledged write read back, a clean stop, identical replicas.
async fn finish(
    c: &Cluster,
    v: &ReplicatedVolume,
    truth: &Truth,
    epoch: u64,
    (stop, hs): (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>),
) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(v.epoch(), epoch, "the target restarted");
    all_current(c);
    verify(v, truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    c.identical();
}

fn all_current(c: &Cluster) {
    for i in 0..c.reps.len() {
        assert_eq!(c.state_of(&format!("r{i}")), MemberState::Current, "r{i}");
    }
}

/// Bound from "the replicas answer again" to "writes complete": reconnect backoff (cap
/// 5 s) + one OPEN round + reconcile, generous for a loaded 2-core machine.
const RESUME_SECS: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_every_replica_process_killed_then_restarted_target_reconnects() {
    let mut c = cluster(3).await;
    let v = c.target().await;
    let epoch = v.epoch();
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in c.reps.iter_mut() {
        r.kill();
    }
    assert_no_ack_while_away(&truth, "every replica process was dead").await;
    // No eviction can be recorded without a Current survivor.
    all_current(&c);
    let back = Instant::now();
    for r in c.reps.iter_mut() {
        r.restart().await;
    }
    let took = resumed(&truth, back, RESUME_SECS).await;
    eprintln!("writes resumed {took:?} after the replicas came back");
    finish(&c, &v, &truth, epoch, (stop, hs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_every_replica_link_cut_then_stalled_target_reconnects_each_time() {
    let c = cluster(3).await;
    let v = c.target().await;
    let epoch = v.epoch();
    let truth = Arc::new(Truth::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // First every link drops (connections closed, new ones refused); then every replica
    // stops answering (as SIGSTOP: connections kept, nothing forwarded; what was in
    // flight is delivered after the heal, when it must no longer apply).
    for (mode, what) in [
        (CUT, "every link was cut"),
        (STALL, "every replica was stalled"),
    ] {
        truth.failed.store(0, Ordering::SeqCst);
        for p in &c.proxies {
            p.set(mode);
        }
        assert_no_ack_while_away(&truth, what).await;
        all_current(&c);
        let back = Instant::now();
        for p in &c.proxies {
            p.set(PASS);
        }
        let took = resumed(&truth, back, RESUME_SECS).await;
        eprintln!("writes resumed {took:?} after the end of: {what}");
    }
    finish(&c, &v, &truth, epoch, (stop, hs)).await;
}

/// r2's pool is put back to a copy taken under the previous target instance (its
/// stored epoch is older, its data lacks this instance's writes) while every replica is
/// away. When the replicas return, r0 and r1 are re-admitted at once; r2 must be
/// recorded Stale and caught up before it is Current again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_back_with_a_stale_epoch_is_caught_up_before_it_counts() {
    let mut c = cluster(3).await;
    let v1 = c.target().await;
    let truth = Arc::new(Truth::default());
    run_writers(&v1, &truth, 0.5).await;
    v1.shutdown().await.unwrap();
    let img = c.dir.path().join("p2.img");
    let old = c.dir.path().join("p2.old");
    let dir = c.dir.path().to_path_buf();
    {
        let (img, old, dir) = (img.clone(), old.clone(), dir.clone());
        c.reps[2]
            .restart_on(move || {
                copy_sparse(&img, &old);
                import_pool_host(&dir, "p2")
            })
            .await;
    }
    let v = c.target().await;
    let epoch = v.epoch();
    assert!(epoch > v1.epoch());
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(&v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Watch r2's recorded state from here on.
    let seen_stale = Arc::new(AtomicBool::new(false));
    let reason = Arc::new(parking_lot::Mutex::new(String::new()));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, seen, ws) = (c.store.clone(), seen_stale.clone(), watch_stop.clone());
        let why = reason.clone();
        tokio::spawn(async move {
            use cstor_replication::membership::MembershipStore;
            while !ws.load(Ordering::SeqCst) {
                if let Ok((r, _)) = store.read() {
                    if let Some(m) = r.member("r2").filter(|m| m.state != MemberState::Current) {
                        seen.store(true, Ordering::SeqCst);
                        *why.lock() = m.reason.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    c.reps[0].kill();
    c.reps[1].kill();
    c.reps[2]
        .restart_on(move || {
            copy_sparse(&old, &img);
            import_pool_host(&dir, "p2")
        })
        .await;
    c.reps[2].kill();
    assert_no_ack_while_away(&truth, "every replica process was dead").await;
    all_current(&c);
    let back = Instant::now();
    for r in c.reps.iter_mut() {
        r.restart().await;
    }
    let took = resumed(&truth, back, RESUME_SECS).await;
    eprintln!("writes resumed {took:?} after the replicas came back");
    wait_for(30, "r2 readmitted after its catch-up", || {
        seen_stale.load(Ordering::SeqCst) && c.state_of("r2") == MemberState::Current
    })
    .await;
    watch_stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let why = reason.lock().clone();
    assert!(
        why.contains("epoch"),
        "r2 demoted for another reason: {why:?}"
    );
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(v.epoch(), epoch, "the target restarted");
    verify(&v, &truth, BLOCKS).await;
    v.shutdown().await.unwrap();
    c.identical();
}

/// Copies a sparse pool image (cp keeps the holes).
fn copy_sparse(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs")
        .success();
    assert!(ok, "cp {from:?} {to:?}");
}
