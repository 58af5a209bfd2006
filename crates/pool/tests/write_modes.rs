//! Write modes: a crash-safe write survives a process crash (page cache kept) without a
//! flush, and a later flush makes it survive a power cut too (the flush must flush the
//! device even though no record is pending); a write-through write survives a power cut
//! as soon as it returns; a buffered write needs a flush for either.

mod common;

use std::sync::Arc;

use common::{opts, pattern};
use cstor_pool::memstore::MemStore;
use cstor_pool::{Compression, Pool, WriteMode};

fn setup() -> (Arc<MemStore>, Pool) {
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts()).unwrap();
    pool.create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    (store, pool)
}

fn holds(store: MemStore, i: u64) -> bool {
    let pool = Pool::open(Arc::new(store), opts()).unwrap();
    let mut buf = vec![0u8; 4096];
    pool.volume("v").unwrap().read(i * 4096, &mut buf).unwrap();
    buf == pattern(i, 4096)
}

#[test]
fn crash_safe_writes_survive_a_process_crash_and_flush_makes_them_durable() {
    let (store, pool) = setup();
    let v = pool.volume("v").unwrap();
    v.set_write_mode(WriteMode::CrashSafe);
    for i in 0..8 {
        v.write(i * 4096, &pattern(i, 4096), Some(i + 1)).unwrap();
    }
    for i in 0..8 {
        assert!(
            holds(store.process_crash_image(), i),
            "crash-safe write {i} lost to a process crash"
        );
    }
    v.flush().unwrap();
    for seed in 0..8 {
        for i in 0..8 {
            assert!(
                holds(store.crash_image(seed), i),
                "flushed write {i} lost to a power cut"
            );
        }
    }
}

#[test]
fn write_through_writes_survive_a_power_cut_on_return() {
    let (store, pool) = setup();
    let v = pool.volume("v").unwrap();
    v.set_write_mode(WriteMode::WriteThrough);
    for i in 0..8 {
        v.write(i * 4096, &pattern(i, 4096), Some(i + 1)).unwrap();
        for seed in 0..4 {
            assert!(
                holds(store.crash_image(seed), i),
                "write-through write {i} lost"
            );
        }
    }
}

#[test]
fn buffered_writes_need_a_flush() {
    let (store, pool) = setup();
    let v = pool.volume("v").unwrap();
    assert_eq!(v.write_mode(), WriteMode::Buffered);
    v.write(0, &pattern(0, 4096), Some(1)).unwrap();
    // Nothing reached the device: even a process crash loses it (the model's contract).
    assert!(!holds(store.process_crash_image(), 0));
}
