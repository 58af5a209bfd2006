//! Replicas that came to differ are brought back together while the target runs.
//! - Read repair (design rule 7): a Current replica whose pool cannot read a block (the
//!   bytes on its disk were damaged under a stripe pool, so no copy verifies) is not
//!   evicted: the read is served from another Current replica and the block rewritten on
//!   the damaged one. With no readable copy left the read fails with a medium error
//!   instead of BUSY. The damage is done to the pool's device file while its replica
//!   process is down, so no cache hides it.
//! - Settling (settle.rs): a write failed half-way (BUSY to the initiator, some replicas
//!   hold it) holds the checkpoint only until the Current replicas agree on its blocks.
//!
//! Real replica servers over pools on temp files.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use cstor_iscsi::backend::{BackendError, BlockBackend, IoCtx};
use cstor_replication::{MemberState, ReplicatedVolume};

/// First block of the damaged range and its length in blocks.
const AT: u64 = 100;
const N: u64 = 8;

fn rd() -> IoCtx {
    IoCtx::new(Instant::now() + Duration::from_secs(10))
}

/// Incompressible bytes (so the pool stores them as they are, and they can be found on
/// its device).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Inverts every sector-aligned copy of the 512 bytes `needle` starts with in the pool
/// device file `img` (the block's live copy and any stale intent-log copy). Returns the
/// number of places damaged.
fn damage(img: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(img).unwrap();
    let mut hits = 0;
    for off in (0..bytes.len().saturating_sub(512)).step_by(512) {
        if bytes[off..off + 512] == needle[..512] {
            for b in &mut bytes[off..off + 512] {
                *b = !*b;
            }
            hits += 1;
        }
    }
    std::fs::write(img, &bytes).unwrap();
    hits
}

/// Writes the noise range through a target, stops it cleanly, commits every pool, then
/// damages block `AT + 3` on the replicas `bad` (each replica process down meanwhile).
async fn cluster_with_damage(n: usize, bad: &[usize]) -> (Cluster, Vec<u8>) {
    let mut c = cluster(n).await;
    let data = noise(7, (N * BS) as usize);
    let v = c.target().await;
    v.write(&ctx(&v, true), AT * BS, Bytes::from(data.clone()))
        .await
        .unwrap();
    v.shutdown().await.unwrap();
    let needle = data[(3 * BS) as usize..(4 * BS) as usize].to_vec();
    let dir = c.dir.path().to_path_buf();
    for (i, r) in c.reps.iter_mut().enumerate() {
        r.pool().sync().unwrap();
        if !bad.contains(&i) {
            continue;
        }
        let (d, needle) = (dir.clone(), needle.clone());
        r.restart_on(move || {
            let hits = damage(&d.join(format!("p{i}.img")), &needle);
            assert!(hits >= 1, "the block's bytes were not found on p{i}");
            import_pool_host(&d, &format!("p{i}"))
        })
        .await;
        let direct = r.pool().volume(VOL).unwrap();
        let mut buf = vec![0u8; BS as usize];
        assert!(
            direct.read((AT + 3) * BS, &mut buf).is_err(),
            "replica {i}: the damaged block still reads"
        );
    }
    (c, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_blocks_are_read_elsewhere_and_repaired_without_eviction() {
    // Two of three replicas damaged: whichever order the reads take, each damaged one
    // that is asked answers MEDIUM and the intact one supplies the bytes.
    let (c, data) = cluster_with_damage(3, &[0, 1]).await;
    let v = c.target().await;
    let epoch = v.epoch();
    // Concurrent reads spread over the replicas (least loaded first), so every replica
    // is asked for the damaged range at least once.
    let reads = (0..6).map(|_| {
        let v = v.clone();
        async move { v.read(&rd(), AT * BS, (N * BS) as u32).await }
    });
    for r in futures::future::join_all(reads).await {
        let got = r.expect("read of a range one replica can still read");
        assert!(got[..] == data[..], "read returned wrong bytes");
    }
    let st = v.status();
    assert!(
        st.repaired_blocks >= 1,
        "no block was repaired: {:?}",
        st.repaired_blocks
    );
    for id in ["r0", "r1", "r2"] {
        assert_eq!(c.state_of(id), MemberState::Current, "{id} was evicted");
    }
    assert_eq!(v.epoch(), epoch);
    // Every replica reads the range again from its own pool, and they are identical.
    v.shutdown().await.unwrap();
    for (i, r) in c.reps.iter().enumerate() {
        let mut buf = vec![0u8; (N * BS) as usize];
        r.pool()
            .volume(VOL)
            .unwrap()
            .read(AT * BS, &mut buf)
            .unwrap_or_else(|e| panic!("replica {i} still cannot read the range: {e}"));
        assert!(
            buf == data,
            "replica {i} holds other bytes after the repair"
        );
    }
    c.identical();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_no_replica_can_read_is_a_medium_error_not_busy() {
    let (c, data) = cluster_with_damage(1, &[0]).await;
    let v = c.target().await;
    let t = Instant::now();
    let r = v.read(&rd(), (AT + 3) * BS, BS as u32).await;
    assert!(
        matches!(r, Err(BackendError::Medium { .. })),
        "read of a block no replica can read: {r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(c.state_of("r0"), MemberState::Current);
    // The rest of the volume still reads, and a write over the damaged block heals it.
    let got = v.read(&rd(), AT * BS, BS as u32).await.unwrap();
    assert!(got[..] == data[..BS as usize]);
    v.write(&ctx(&v, true), (AT + 3) * BS, block(42))
        .await
        .unwrap();
    let got = v.read(&rd(), (AT + 3) * BS, BS as u32).await.unwrap();
    assert_eq!(got, block(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failed_half_way_holds_the_checkpoint_only_until_settled() {
    let c = cluster(2).await;
    let store = FaultyStore::over(&c.state);
    let v = ReplicatedVolume::start(cfg(SIZE, c.addrs()), store.clone())
        .await
        .unwrap();
    v.ready().await;
    v.write(&ctx(&v, false), 0, block(1)).await.unwrap();
    // R1 stalls while the store is down: its eviction cannot be recorded, so the write
    // is answered BUSY after reaching R0 only.
    store.down.store(true, Ordering::SeqCst);
    c.proxies[1].set(STALL);
    let failed = ctx(&v, false);
    let io = failed.io.unwrap();
    let r = v.write(&failed, 2 * BS, block(3)).await;
    assert!(matches!(r, Err(BackendError::Busy)), "{r:?}");
    assert!(
        v.status().checkpoint < io,
        "the checkpoint covers a write that failed half-way"
    );
    // R1 answers again (the held write reaches it, or it is evicted and caught up), the
    // store is back, writes go on.
    c.proxies[1].set(PASS);
    store.down.store(false, Ordering::SeqCst);
    let later = ctx(&v, false);
    let later_io = later.io.unwrap();
    v.write(&later, 3 * BS, block(4)).await.unwrap();
    let t = Instant::now();
    wait_for(30, "the checkpoint to pass the failed write", || {
        v.status().checkpoint >= later_io
    })
    .await;
    eprintln!(
        "checkpoint advanced {:?} after the store came back",
        t.elapsed()
    );
    wait_for(30, "R1 Current", || {
        c.state_of("r1") == MemberState::Current
    })
    .await;
    let got = v
        .read(&rd(), 2 * BS, BS as u32)
        .await
        .expect("read of the failed write's block");
    assert!(
        got == block(3) || got[..] == [0u8; BS as usize][..],
        "the failed write's block holds neither its old nor its new bytes"
    );
    // Settled: the stop is clean and the next start needs no reconcile.
    v.shutdown().await.unwrap();
    c.identical();
    let v2 = ReplicatedVolume::start(cfg(SIZE, c.addrs()), store.clone())
        .await
        .unwrap();
    v2.ready().await;
    assert_eq!(
        v2.start_info().reconciled_bytes,
        None,
        "the stop after a settled failed write was not recorded clean"
    );
    assert_eq!(v2.read(&rd(), 0, BS as u32).await.unwrap(), block(1));
    assert_eq!(v2.read(&rd(), 3 * BS, BS as u32).await.unwrap(), block(4));
    v2.shutdown().await.unwrap();
}
