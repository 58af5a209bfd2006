//! Scale: 1,000 volumes and 1,000 snapshots in one pool, reopened; a 10 TiB thin volume
//! written near its end with a small cache; memory stays bounded by the cache.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use cstor_pool::memstore::MemStore;
use cstor_pool::{Pool, PoolOptions};

#[test]
fn thousand_volumes_and_thousand_snapshots() {
    let (store, pool) = new_pool(8 << 30);
    let t = Instant::now();
    for i in 0..1000 {
        let v = pool
            .create_volume(&format!("vol-{i:04}"), 1 << 30, None, None)
            .unwrap();
        v.write(
            (i as u64 % 64) * 4096,
            &pattern(i as u64, 4096),
            Some(i as u64),
        )
        .unwrap();
    }
    let created = t.elapsed();
    let t = Instant::now();
    for i in 0..1000 {
        pool.snapshot(&format!("vol-{:04}", i % 10), &format!("snap-{i:04}"))
            .unwrap();
    }
    let snapped = t.elapsed();
    eprintln!("1000 volume creates: {created:?}; 1000 snapshots: {snapped:?}");
    pool.close().unwrap();
    let t = Instant::now();
    let pool = reopen(&store);
    eprintln!("reopen: {:?}", t.elapsed());
    let vols = pool.list_volumes();
    assert_eq!(vols.len(), 1000);
    let snaps: usize = vols.iter().map(|v| v.snapshots.len()).sum();
    assert_eq!(snaps, 1000);
    let v = pool.volume("vol-0777").unwrap();
    let mut buf = vec![0u8; 4096];
    v.read((777 % 64) * 4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(777, 4096));
    let mut buf = vec![0u8; 4096];
    pool.read_snapshot("vol-0003", "snap-0993", 3 * 4096, &mut buf)
        .unwrap();
    assert_eq!(buf, pattern(3, 4096));
}

#[test]
fn ten_tib_thin_volume_written_near_its_end_with_small_memory() {
    let store = Arc::new(MemStore::new(1 << 30));
    let opts = PoolOptions {
        cache_bytes: 1 << 20,
        dirty_max_bytes: 4 << 20,
        ..opts()
    };
    let pool = Pool::create(store.clone(), opts.clone()).unwrap();
    let size = 10u64 << 40;
    let v = pool.create_volume("big", size, None, None).unwrap();
    let data = pattern(5, 1 << 20);
    for i in 0..16u64 {
        v.write(size - (i + 1) * (1 << 20), &data, Some(i)).unwrap();
    }
    v.write(0, &data[..4096], None).unwrap();
    v.write(size / 2, &data[..4096], None).unwrap();
    pool.sync().unwrap();
    assert!(
        pool.cache_bytes() <= 1 << 20,
        "cache {} bytes",
        pool.cache_bytes()
    );
    let allocated = store.space().allocated_bytes;
    assert!(
        allocated < 24 << 20,
        "thin volume allocated {allocated} bytes"
    );
    pool.close().unwrap();
    let pool = Pool::open(store.clone(), opts).unwrap();
    let v = pool.volume("big").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    v.read(size - (1 << 20), &mut buf).unwrap();
    assert!(buf == data);
    let mut hole = vec![1u8; 1 << 20];
    v.read(size - (64 << 20), &mut hole).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    assert!(pool.cache_bytes() <= 1 << 20);
    let info = pool.volume_info("big").unwrap();
    assert!(info.referenced < 24 << 20);
}

trait Space {
    fn space(&self) -> cstor_pool::store::SpaceStats;
}
impl Space for MemStore {
    fn space(&self) -> cstor_pool::store::SpaceStats {
        cstor_pool::store::BlockStore::space(self)
    }
}
