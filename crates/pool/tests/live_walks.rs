//! Walks without a forced commit (issue 8 item 2): `changed_between` and
//! `block_ios_between` over the live tree with its dirty blocks, their cost on a huge
//! sparse volume, writers during walks, and block streams (`stream_blocks`) applied onto
//! a lagging copy with `apply_block_if`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{opts, pattern, Wrapped};
use cstor_pool::memstore::{MemStore, XorShift};
use cstor_pool::{Compression, Pool, PoolOptions, VolumeHandle};

#[test]
fn walk_of_a_10_tib_volume_after_4_mib_of_writes_reads_few_metadata_blocks_and_commits_nothing() {
    let store = Arc::new(Wrapped::new(Arc::new(MemStore::new(2 << 30))));
    let pool = Pool::create(store.clone(), opts()).unwrap();
    let v = pool
        .create_volume("v", 10 << 40, None, Some(Compression::Off))
        .unwrap();
    let bs = u64::from(v.block_size());
    // Old data spread over the whole volume, committed.
    for i in 0..256u64 {
        let io = v.next_io().unwrap();
        v.write(i * (40 << 30), &pattern(io, 65536), Some(io))
            .unwrap();
    }
    pool.sync().unwrap();
    let since = v.next_io().unwrap();
    // 4 MiB of new writes at 5 TiB: half committed, half dirty.
    let base = 5u64 << 40;
    let mut pool = pool;
    let mut v = v;
    for i in 0..32u64 {
        if i == 16 {
            // Committed, then opened again: a cold block cache, so every indirect block
            // the walk needs is a store read.
            drop(v);
            pool.close().unwrap();
            pool = Pool::open(store.clone(), opts()).unwrap();
            v = pool.volume("v").unwrap();
        }
        let io = v.next_io().unwrap();
        v.write(base + i * 131072, &pattern(io, 131072), Some(io))
            .unwrap();
    }
    let dirty = pool.dirty_bytes();
    assert!(dirty > 0);
    store.reads.store(0, Ordering::SeqCst);
    let blocks = pool.block_ios_between_vec("v", since, None).unwrap();
    let reads = store.reads.load(Ordering::SeqCst);
    assert_eq!(blocks.len() as u64, (4 << 20) / bs);
    assert!(blocks
        .iter()
        .all(|b| !b.hole && b.len == bs && b.io > since));
    assert!(
        blocks
            .windows(2)
            .all(|w| w[0].offset + w[0].len == w[1].offset),
        "in offset order"
    );
    assert!(reads <= 64, "the walk read {reads} blocks");
    let ranges = pool.changed_between_vec("v", since, None).unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!((ranges[0].offset, ranges[0].len), (base, 4 << 20));
    assert_eq!(pool.dirty_bytes(), dirty, "no commit ran for the walks");
    eprintln!("10 TiB walk after 4 MiB of writes: {reads} metadata reads");
}

#[test]
fn writers_do_not_stall_behind_walks() {
    let pool = Arc::new(
        Pool::create(
            Arc::new(MemStore::new(1 << 30)),
            PoolOptions {
                background_commit: true,
                txg_interval: Duration::from_millis(50),
                ..opts()
            },
        )
        .unwrap(),
    );
    let v = pool
        .create_volume("v", 256 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    for i in 0..(64u64 << 20) / 65536 {
        let io = v.next_io().unwrap();
        v.write(i * 2 * 65536, &pattern(io, 65536), Some(io))
            .unwrap();
    }
    pool.sync().unwrap();
    let stop = AtomicBool::new(false);
    let (max_stall, writes, walks, walk_time) = std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut rng = XorShift::new(7);
            let (mut max, mut n) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let io = v.next_io().unwrap();
                let t = Instant::now();
                v.write(rng.below(65536) * 4096, &pattern(io, 4096), Some(io))
                    .unwrap();
                max = max.max(t.elapsed());
                n += 1;
            }
            (max, n)
        });
        let t = Instant::now();
        let mut walks = 0;
        while t.elapsed() < Duration::from_millis(1500) {
            let n = pool.block_ios_between_vec("v", 0, None).unwrap().len();
            assert!(n >= 16384);
            walks += 1;
        }
        let walk_time = t.elapsed() / walks;
        stop.store(true, Ordering::SeqCst);
        let (max, n) = w.join().unwrap();
        (max, n, walks, walk_time)
    });
    eprintln!("{walks} walks of {walk_time:?} each; {writes} writes, longest {max_stall:?}");
    assert!(writes > 100, "the writer made no progress during the walks");
    assert!(
        max_stall < Duration::from_millis(500),
        "a write waited {max_stall:?} during walks"
    );
}

fn vol_bytes(v: &VolumeHandle) -> Vec<u8> {
    let mut b = vec![0u8; v.size() as usize];
    v.read(0, &mut b).unwrap();
    b
}

/// Apply one stream item onto a copy (holes block by block).
fn apply(copy: &VolumeHandle, b: &cstor_pool::StreamBlock, x0: u64) -> u64 {
    assert!(b.verify(), "checksum of {b:?}");
    let bs = u64::from(copy.block_size());
    let mut applied = 0;
    match &b.data {
        Some(d) => applied += u64::from(copy.apply_block_if(b.offset, d, b.io, x0).unwrap()),
        None => {
            let zeros = vec![0u8; bs as usize];
            for off in (b.offset..b.offset + b.len).step_by(bs as usize) {
                applied += u64::from(copy.apply_block_if(off, &zeros, b.io, x0).unwrap());
            }
        }
    }
    applied
}

#[test]
fn stream_applied_with_apply_block_if_makes_a_lagging_copy_identical() {
    const BS: u64 = 4096;
    const BLOCKS: u64 = 1024;
    let mk = || {
        let p = Pool::create(Arc::new(MemStore::new(1 << 30)), opts()).unwrap();
        let v = p
            .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
            .unwrap();
        (p, v)
    };
    let ((src_pool, src), (dst_pool, dst)) = (mk(), mk());
    let mut rng = XorShift::new(11);
    let mut io = 0u64;
    let op = |rng: &mut XorShift, io: u64, vols: &[&VolumeHandle]| {
        let blk = rng.below(BLOCKS - 8);
        let n = 1 + rng.below(8);
        if rng.below(5) == 0 {
            for v in vols {
                v.unmap(blk * BS, n * BS, Some(io)).unwrap();
            }
        } else {
            let d = pattern(io, (n * BS) as usize);
            for v in vols {
                v.write(blk * BS, &d, Some(io)).unwrap();
            }
        }
    };
    // In sync, then the copy lags while the source goes on (some of it committed).
    for _ in 0..300 {
        io += 1;
        op(&mut rng, io, &[&src, &dst]);
    }
    dst_pool.sync().unwrap();
    let base = io;
    for i in 0..300 {
        io += 1;
        op(&mut rng, io, &[&src]);
        if i == 150 {
            src_pool.sync().unwrap();
        }
    }
    // The copy also holds writes the source never acknowledged (junk after base).
    for _ in 0..20 {
        io += 1;
        op(&mut rng, io, &[&dst]);
    }
    let x0 = io + 1;
    assert_ne!(vol_bytes(&src), vol_bytes(&dst));
    // Suspects first: the copy's blocks with io in (base, x0), taken from the source.
    let bs = BS as usize;
    for b in dst_pool
        .block_ios_between_vec("v", base, Some(x0 - 1))
        .unwrap()
    {
        for off in (b.offset..b.offset + b.len).step_by(bs) {
            let mut d = vec![0u8; bs];
            let ios = src.read_with_io(off, &mut d).unwrap();
            dst.apply_block_if(off, &d, ios[0], x0).unwrap();
        }
    }
    // Then the source's stream above base, interrupted once and resumed from its cursor.
    let mut stream = src_pool.stream_blocks("v", base, None, 0, None).unwrap();
    let mut cursor = 0;
    for b in stream.by_ref().take(40) {
        let b = b.unwrap();
        apply(&dst, &b, x0);
        cursor = b.offset + b.len;
    }
    drop(stream);
    let mut items = 40;
    for b in src_pool
        .stream_blocks("v", base, None, cursor, None)
        .unwrap()
    {
        let b = b.unwrap();
        assert!(b.offset >= cursor, "resumed stream went back");
        apply(&dst, &b, x0);
        items += 1;
    }
    assert!(items > 40);
    assert_eq!(
        vol_bytes(&src),
        vol_bytes(&dst),
        "copy differs after catch-up"
    );
    // A snapshot streams the same way.
    src_pool.snapshot("v", "s").unwrap();
    let from_snap: Vec<_> = src_pool
        .stream_blocks("v@s", base, None, 0, None)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let live: Vec<_> = src_pool
        .stream_blocks("v", base, None, 0, None)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(from_snap, live);
}

#[test]
fn stream_rate_limit_holds_within_20_percent() {
    let pool = Pool::create(Arc::new(MemStore::new(1 << 30)), opts()).unwrap();
    let v = pool
        .create_volume("v", 64 << 20, None, Some(Compression::Off))
        .unwrap();
    let total = 3u64 << 20;
    v.write(0, &pattern(1, total as usize), Some(1)).unwrap();
    pool.sync().unwrap();
    let rate = 6u64 << 20;
    let t = Instant::now();
    let bytes: u64 = pool
        .stream_blocks("v", 0, None, 0, Some(rate))
        .unwrap()
        .map(|b| b.unwrap().data.map_or(0, |d| d.len() as u64))
        .sum();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(bytes, total);
    let want = total as f64 / rate as f64;
    eprintln!("streamed {bytes} bytes in {secs:.3} s at a {rate} B/s limit (want {want:.3} s)");
    assert!(
        (secs - want).abs() <= 0.2 * want,
        "{secs:.3} s for a {want:.3} s stream"
    );
}
