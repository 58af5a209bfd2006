//! Shared helpers of the block-tree tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cstor_pool::memstore::MemStore;
use cstor_pool::{Pool, PoolOptions};

pub fn opts() -> PoolOptions {
    PoolOptions {
        background_commit: false,
        cache_bytes: 8 << 20,
        dirty_max_bytes: 16 << 20,
        txg_interval: Duration::from_secs(3600),
        ..PoolOptions::default()
    }
}

pub fn new_pool(capacity: u64) -> (Arc<MemStore>, Pool) {
    let store = Arc::new(MemStore::new(capacity));
    let pool = Pool::create(store.clone(), opts()).unwrap();
    (store, pool)
}

pub fn reopen(store: &Arc<MemStore>) -> Pool {
    Pool::open(store.clone(), opts()).unwrap()
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
