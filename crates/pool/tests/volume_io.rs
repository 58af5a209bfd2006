//! Guards volume reads and writes: partial blocks, holes, commits, reopen, intent-log
//! replay, and the typed errors of bad input.

mod common;

use common::*;
use cstor_pool::{Compression, PoolError};

#[test]
fn write_read_partial_blocks_commit_and_reopen() {
    let (store, pool) = new_pool(1 << 30);
    let v = pool.create_volume("v1", 1 << 30, None, None).unwrap();
    let a = pattern(1, 70 * 512);
    v.write(3 * 512, &a, Some(5)).unwrap();
    let mut buf = vec![0u8; 80 * 512];
    v.read(0, &mut buf).unwrap();
    assert!(buf[..3 * 512].iter().all(|&b| b == 0));
    assert_eq!(&buf[3 * 512..73 * 512], &a[..]);
    pool.sync().unwrap();
    let mut buf2 = vec![0u8; 80 * 512];
    v.read(0, &mut buf2).unwrap();
    assert_eq!(buf, buf2);
    drop(v);
    pool.close().unwrap();
    let pool = reopen(&store);
    let v = pool.volume("v1").unwrap();
    let mut buf3 = vec![0u8; 80 * 512];
    v.read(0, &mut buf3).unwrap();
    assert_eq!(buf, buf3);
}

#[test]
fn flushed_writes_survive_without_commit() {
    let (store, pool) = new_pool(1 << 30);
    let v = pool
        .create_volume("v", 64 << 20, None, Some(Compression::Zstd))
        .unwrap();
    let a = pattern(2, 100_000 / 512 * 512);
    v.write(1 << 20, &a, Some(7)).unwrap();
    v.unmap(1 << 20, 4096, Some(8)).unwrap();
    v.flush().unwrap();
    let image = store.crash_image(1);
    drop(v);
    drop(pool);
    let store2 = std::sync::Arc::new(image);
    let pool = reopen(&store2);
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; a.len()];
    v.read(1 << 20, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert_eq!(&buf[4096..], &a[4096..]);
}

#[test]
fn bad_input_is_a_typed_error() {
    let (_s, pool) = new_pool(1 << 30);
    let v = pool.create_volume("v", 1 << 20, None, None).unwrap();
    assert!(matches!(
        v.write(1, &[0u8; 512], None),
        Err(PoolError::Unaligned { .. })
    ));
    assert!(matches!(
        v.write(1 << 20, &[0u8; 512], None),
        Err(PoolError::OutOfRange { .. })
    ));
    let mut b = [0u8; 512];
    assert!(matches!(
        v.read((1 << 20) - 256, &mut b),
        Err(PoolError::Unaligned { .. })
    ));
    assert!(matches!(
        pool.create_volume("v", 1 << 20, None, None),
        Err(PoolError::Exists { .. })
    ));
    assert!(matches!(
        pool.create_volume("a@b", 1 << 20, None, None),
        Err(PoolError::Invalid(_))
    ));
    assert!(matches!(
        pool.create_volume("x", 1 << 20, Some(3000), None),
        Err(PoolError::Invalid(_))
    ));
    assert!(matches!(
        pool.volume("nope"),
        Err(PoolError::UnknownVolume { .. })
    ));
    assert!(matches!(
        pool.resize("v", 1 << 19),
        Err(PoolError::Invalid(_))
    ));
}

#[test]
fn background_thread_commits_dirty_data() {
    use cstor_pool::store::BlockStore;
    let store = std::sync::Arc::new(cstor_pool::memstore::MemStore::new(1 << 30));
    let pool = cstor_pool::Pool::create(
        store.clone(),
        cstor_pool::PoolOptions {
            background_commit: true,
            txg_interval: std::time::Duration::from_millis(20),
            ..opts()
        },
    )
    .unwrap();
    let v = pool.create_volume("v", 1 << 20, None, None).unwrap();
    let txg0 = store.last_root().unwrap().0;
    v.write(0, &pattern(1, 4096), None).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.last_root().unwrap().0 == txg0 {
        assert!(std::time::Instant::now() < deadline, "no background commit");
        std::thread::yield_now();
    }
    // The committed root holds the write: a power cut now keeps it without any flush.
    let image = std::sync::Arc::new(store.crash_image(3));
    drop(v);
    drop(pool);
    let pool = reopen(&image);
    let mut buf = vec![0u8; 4096];
    pool.volume("v").unwrap().read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 4096));
}

#[test]
fn refusals_name_what_is_in_the_way() {
    let (_s, pool) = new_pool(1 << 30);
    let v = pool.create_volume("v", 1 << 20, None, None).unwrap();
    v.write(0, &pattern(1, 4096), None).unwrap();
    pool.snapshot("v", "a").unwrap();
    pool.snapshot("v", "b").unwrap();
    let e = pool.rollback("v", "a").unwrap_err().to_string();
    assert!(e.contains("newer snapshots exist: b"), "{e}");
    pool.clone_snapshot("v", "a", "c1").unwrap();
    let e = pool.destroy_snapshot("v", "a").unwrap_err().to_string();
    assert!(e.contains("has clones: c1"), "{e}");
    let e = pool.destroy_volume("v").unwrap_err().to_string();
    assert!(e.contains("clones: c1"), "{e}");
    assert!(matches!(
        pool.snapshot("v", "a"),
        Err(PoolError::Exists { .. })
    ));
    assert!(matches!(
        pool.rollback("v", "zz"),
        Err(PoolError::UnknownSnapshot { .. })
    ));
    assert_eq!(
        pool.volume_info("c1").unwrap().origin.as_deref(),
        Some("v@a")
    );
    pool.destroy_volume("c1").unwrap();
    pool.destroy_snapshot("v", "b").unwrap();
    pool.rollback("v", "a").unwrap();
    pool.destroy_volume("v").unwrap();
    assert!(pool.list_volumes().is_empty());
}

#[test]
fn properties_persist_and_drop_commits() {
    let (store, pool) = new_pool(1 << 30);
    let v = pool.create_volume("v", 1 << 20, None, None).unwrap();
    v.write(0, &pattern(4, 8192), Some(9)).unwrap();
    pool.set_property("v", "cstor.replica_id", "r-1").unwrap();
    pool.set_property("v", "cstor.checkpoint", "9").unwrap();
    assert!(pool.set_property("v", "", "x").is_err());
    drop(v);
    // Dropping the pool commits (no flush, no close was called).
    drop(pool);
    let pool = reopen(&store);
    assert_eq!(
        pool.property("v", "cstor.replica_id").unwrap().as_deref(),
        Some("r-1")
    );
    assert_eq!(
        pool.property("v", "cstor.checkpoint").unwrap().as_deref(),
        Some("9")
    );
    assert_eq!(pool.property("v", "nope").unwrap(), None);
    let mut buf = vec![0u8; 8192];
    pool.volume("v").unwrap().read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(4, 8192));
}
