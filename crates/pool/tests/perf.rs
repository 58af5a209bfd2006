//! Throughput of the block-tree layer on the in-memory store (no device cost): prints
//! MiB/s for sequential 1 MiB and random 4 KiB writes and reads, and 4 KiB write+flush
//! latency. Ignored in the suite; run with
//! `cargo test -p cstor-pool --release --test perf -- --ignored --nocapture`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use cstor_pool::memstore::{MemStore, XorShift};
use cstor_pool::{Compression, Pool, PoolOptions};

#[test]
#[ignore]
fn throughput_on_memstore() {
    for comp in [Compression::Off, Compression::Lz4] {
        let store = Arc::new(MemStore::new(16 << 30));
        let pool = Pool::create(
            store.clone(),
            PoolOptions {
                dirty_max_bytes: 256 << 20,
                cache_bytes: 256 << 20,
                ..opts()
            },
        )
        .unwrap();
        let size = 1u64 << 30;
        let v = pool.create_volume("p", size, None, Some(comp)).unwrap();
        // Half-compressible data, as typical.
        let mut data = pattern(1, 1 << 20);
        for c in data.chunks_mut(4096) {
            c[2048..].fill(0x11);
        }
        let t = Instant::now();
        for i in 0..(size >> 20) {
            v.write(i << 20, &data, Some(i)).unwrap();
        }
        pool.sync().unwrap();
        let seq_w = 1024.0 / t.elapsed().as_secs_f64();
        let mut buf = vec![0u8; 1 << 20];
        let t = Instant::now();
        for i in 0..(size >> 20) {
            v.read(i << 20, &mut buf).unwrap();
        }
        let seq_r = 1024.0 / t.elapsed().as_secs_f64();
        let mut rng = XorShift::new(7);
        let n = 50_000u64;
        let t = Instant::now();
        for i in 0..n {
            let off = rng.below(size / 4096) * 4096;
            v.write(off, &data[..4096], Some(i)).unwrap();
        }
        pool.sync().unwrap();
        let rnd_w = (n * 4096) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
        let mut b4 = vec![0u8; 4096];
        let t = Instant::now();
        for _ in 0..n {
            let off = rng.below(size / 4096) * 4096;
            v.read(off, &mut b4).unwrap();
        }
        let rnd_r = (n * 4096) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
        let m = 5_000u64;
        let t = Instant::now();
        for i in 0..m {
            let off = rng.below(size / 4096) * 4096;
            v.write(off, &data[..4096], Some(i)).unwrap();
            v.flush().unwrap();
        }
        let lat_us = t.elapsed().as_secs_f64() * 1e6 / m as f64;
        eprintln!(
            "memstore {comp}: seq 1MiB write {seq_w:.0} MiB/s, read {seq_r:.0} MiB/s; random 4KiB write {rnd_w:.0} MiB/s, read {rnd_r:.0} MiB/s; 4KiB write+flush {lat_us:.1} us; compression ratio {:.2}",
            pool.volume_info("p").unwrap().compression_ratio
        );
    }
}
