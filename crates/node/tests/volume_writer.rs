//! The pool-volume backend's writer thread (crate::volume_writer): writes reach the
//! engine in the order they were issued, a command cancelled before the writer took it
//! up never reaches the engine, and the thread ends when idle and starts again.

use bytes::Bytes;
use cstor_iscsi::backend::{BackendError, BlockBackend, IoCtx};
use cstor_node::volume_backend::PoolVolumeBackend;
use cstor_node::volume_writer::WRITER_IDLE;
use cstor_pool::memstore::MemStore;
use cstor_pool::{Compression, Pool, PoolOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn backend() -> Arc<PoolVolumeBackend> {
    let pool = Pool::create(Arc::new(MemStore::new(256 << 20)), PoolOptions::default()).unwrap();
    pool.create_volume("v", 16 << 20, None, Some(Compression::Off))
        .unwrap();
    Arc::new(PoolVolumeBackend::new(Arc::new(pool), "v").unwrap())
}

fn ctx() -> IoCtx {
    IoCtx::new(Instant::now() + Duration::from_secs(30))
}

/// Write 4 KiB of `byte` at 0 and wait for it.
async fn fill(b: &PoolVolumeBackend, byte: u8) {
    b.write(&ctx(), 0, Bytes::from(vec![byte; 4096]))
        .await
        .unwrap();
}

/// The first 4 KiB hold `byte` only.
async fn assert_holds(b: &PoolVolumeBackend, byte: u8) {
    let back = b.read(&ctx(), 0, 4096).await.unwrap();
    assert!(
        back.iter().all(|&x| x == byte),
        "block 0 holds {} instead of {byte}",
        back[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_block_land_in_the_order_they_were_issued() {
    let b = backend();
    // Issued back to back before any is awaited, as the LU issues a queue of commands:
    // each write is queued in the call, so the last issued is the one that stays.
    let byte = |i: u32| (i % 251) as u8 + 1;
    let futs: Vec<_> = (0..200u32)
        .map(|i| {
            let data = Bytes::from(vec![byte(i); 4096]);
            b.write(&ctx(), 8192, data)
        })
        .collect();
    for f in futs {
        f.await.unwrap();
    }
    let back = b.read(&ctx(), 8192, 4096).await.unwrap();
    assert!(
        back.iter().all(|&x| x == byte(199)),
        "block holds {} instead of the last write's bytes",
        back[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_or_unmap_never_reaches_the_engine() {
    let b = backend();
    fill(&b, 5).await;
    let cancelled = ctx();
    cancelled.cancel.raise();
    // Past its deadline before the writer took it up: refused the same way.
    let late = IoCtx::new(Instant::now());
    let refused = [
        b.write(&cancelled, 0, Bytes::from(vec![9u8; 4096])).await,
        b.unmap(&cancelled, 0, 4096).await,
        b.write(&late, 0, Bytes::from(vec![7u8; 4096])).await,
        b.unmap(&late, 0, 4096).await,
    ];
    for (i, r) in refused.iter().enumerate() {
        assert!(
            matches!(r, Err(BackendError::NotStarted)),
            "call {i}: {r:?}"
        );
    }
    assert_holds(&b, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_ends_when_idle_and_the_next_write_starts_it_again() {
    let b = backend();
    fill(&b, 1).await;
    tokio::time::sleep(WRITER_IDLE + Duration::from_millis(500)).await;
    assert!(
        format!("{b:?}").contains("running false"),
        "the writer thread did not end: {b:?}"
    );
    fill(&b, 2).await;
    assert_holds(&b, 2).await;
}
