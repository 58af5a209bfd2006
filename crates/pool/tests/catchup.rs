//! Conditional per-block apply (catch-up): under concurrent live writes, an incoming
//! block is applied only when the block's io is below the session start or below the
//! incoming io, atomically per block. Property, per block: the last live write wins
//! over every apply (before or after it); a block no live write touched holds the last
//! apply (pre-session content yields to the source, even an older copy).

mod common;

use std::sync::Arc;

use common::{opts, pattern};
use cstor_pool::memstore::{MemStore, XorShift};
use cstor_pool::{Compression, Pool};

const BS: u64 = 4096;
const BLOCKS: u64 = 96;
const WRITERS: u64 = 3;

#[test]
fn conditional_apply_under_concurrent_writes_keeps_live_writes_and_newest_data() {
    for seed in 1..=4u64 {
        let store = Arc::new(MemStore::new(1 << 30));
        let pool = Pool::create(store, opts()).unwrap();
        let v = pool
            .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
            .unwrap();
        // Pre-session content (junk the source may overwrite even with older data).
        for b in 0..BLOCKS {
            let io = v.next_io().unwrap();
            v.write(b * BS, &pattern(1_000_000 + b, BS as usize), Some(io))
                .unwrap();
        }
        pool.sync().unwrap();
        let x0 = v.next_io().unwrap();
        // Live writers: writer w owns blocks b with b % WRITERS == w; each records the
        // last content it wrote per block.
        let mut last_live: Vec<Option<u64>> = vec![None; BLOCKS as usize];
        let mut last_apply: Vec<Option<u64>> = vec![None; BLOCKS as usize];
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for w in 0..WRITERS {
                let v = v.clone();
                handles.push(s.spawn(move || {
                    let mut rng = XorShift::new(seed * 100 + w);
                    let mut last = vec![None; BLOCKS as usize];
                    for _ in 0..150 {
                        let b = rng.below(BLOCKS / WRITERS) * WRITERS + w;
                        let io = v.next_io().unwrap();
                        let tag = 2_000_000 + io;
                        v.write(b * BS, &pattern(tag, BS as usize), Some(io))
                            .unwrap();
                        last[b as usize] = Some(tag);
                    }
                    last
                }));
            }
            let v2 = v.clone();
            let applier = s.spawn(move || {
                let mut rng = XorShift::new(seed);
                let mut last = vec![None; BLOCKS as usize];
                for i in 0..600u64 {
                    let b = rng.below(BLOCKS);
                    // Source copies are older than the session start.
                    let io = 1 + rng.below(x0 - 1);
                    let tag = 3_000_000 + i;
                    let data = if i % 7 == 0 {
                        vec![0u8; BS as usize]
                    } else {
                        pattern(tag, BS as usize)
                    };
                    if v2.apply_block_if(b * BS, &data, io, x0).unwrap() {
                        last[b as usize] = Some(if i % 7 == 0 { 0 } else { tag });
                    }
                    if i % 100 == 99 {
                        std::thread::yield_now();
                    }
                }
                last
            });
            for h in handles {
                for (b, t) in h.join().unwrap().into_iter().enumerate() {
                    if t.is_some() {
                        last_live[b] = t;
                    }
                }
            }
            last_apply = applier.join().unwrap();
        });
        if seed % 2 == 0 {
            pool.sync().unwrap();
        }
        let mut buf = vec![0u8; BS as usize];
        for b in 0..BLOCKS {
            v.read(b * BS, &mut buf).unwrap();
            let want = match (last_live[b as usize], last_apply[b as usize]) {
                (Some(t), _) => pattern(t, BS as usize),
                (None, Some(0)) => vec![0u8; BS as usize],
                (None, Some(t)) => pattern(t, BS as usize),
                (None, None) => pattern(1_000_000 + b, BS as usize),
            };
            assert!(
                buf == want,
                "seed {seed}: block {b} holds the wrong version"
            );
        }
        // A block a live write touched is never taken by a later apply.
        for b in 0..BLOCKS {
            if last_live[b as usize].is_some() {
                assert!(!v
                    .apply_block_if(b * BS, &[9u8; BS as usize], x0 - 1, x0)
                    .unwrap());
                assert!(v
                    .apply_block_if(b * BS, &[9u8; BS as usize], u64::MAX / 2, x0)
                    .unwrap());
            }
        }
    }
}
