//! Snapshots at an io cut: the snapshot holds exactly the writes with io below the cut
//! and records the cut; once a write at or above the cut is in the volume the cut is
//! refused, also when that write races the snapshot's commit.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{opts, pattern};
use cstor_pool::memstore::{MemStore, XorShift};
use cstor_pool::{Compression, Pool, PoolError};

const BS: u64 = 4096;
const BLOCKS: u64 = 64;

#[test]
fn a_cut_snapshot_holds_the_writes_below_it_and_is_refused_after_a_later_write() {
    let pool = Pool::create(Arc::new(MemStore::new(1 << 30)), opts()).unwrap();
    let v = pool
        .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
        .unwrap();
    let a = v.next_io().unwrap();
    v.write(0, &pattern(1, 4096), Some(a)).unwrap();
    let cut = v.next_io().unwrap();
    pool.snapshot_at_io("v", "s1", cut).unwrap();
    let later = v.next_io().unwrap();
    v.write(4096, &pattern(2, 4096), Some(later)).unwrap();
    let e = pool.snapshot_at_io("v", "s2", later).unwrap_err();
    assert!(matches!(e, PoolError::Busy(_)), "{e}");
    assert!(e.to_string().contains("io cut"), "{e}");
    pool.snapshot_at_io("v", "s3", later + 1).unwrap();
    let snaps = pool.list_snapshots("v").unwrap();
    let cuts: Vec<(String, Option<u64>)> =
        snaps.iter().map(|s| (s.name.clone(), s.io_cut)).collect();
    assert_eq!(
        cuts,
        vec![("s1".into(), Some(cut)), ("s3".into(), Some(later + 1))]
    );
}

#[test]
fn a_cut_under_concurrent_writes_holds_exactly_the_writes_below_it() {
    let mut taken = 0;
    for round in 0..10u64 {
        let pool = Pool::create(Arc::new(MemStore::new(1 << 30)), opts()).unwrap();
        let v = pool
            .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
            .unwrap();
        let mut rng = XorShift::new(round + 1);
        let mut model = vec![0u8; (BLOCKS * BS) as usize];
        for _ in 0..200 {
            let b = rng.below(BLOCKS);
            let io = v.next_io().unwrap();
            let d = pattern(io, BS as usize);
            v.write(b * BS, &d, Some(io)).unwrap();
            model[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(&d);
        }
        if round % 2 == 1 {
            pool.sync().unwrap();
        }
        let cut = v.next_io().unwrap();
        let landed = AtomicBool::new(false);
        let r = std::thread::scope(|s| {
            let v2 = v.clone();
            let landed = &landed;
            let w = s.spawn(move || {
                let mut rng = XorShift::new(round + 100);
                for i in 0..300 {
                    if i == 0 && round % 3 == 0 {
                        std::thread::yield_now();
                    }
                    let b = rng.below(BLOCKS);
                    let io = v2.next_io().unwrap();
                    v2.write(b * BS, &pattern(io, BS as usize), Some(io))
                        .unwrap();
                    landed.store(true, Ordering::SeqCst);
                }
            });
            let r = pool.snapshot_at_io("v", "cut", cut);
            w.join().unwrap();
            r
        });
        match r {
            Ok(()) => {
                taken += 1;
                let mut buf = vec![0u8; (BLOCKS * BS) as usize];
                pool.read_snapshot("v", "cut", 0, &mut buf).unwrap();
                assert!(
                    buf == model,
                    "round {round}: the cut snapshot differs from io < {cut}"
                );
            }
            Err(e) => {
                assert!(matches!(e, PoolError::Busy(_)), "round {round}: {e}");
                assert!(
                    landed.load(Ordering::SeqCst),
                    "refused without a later write"
                );
            }
        }
    }
    eprintln!("{taken} of 10 cuts taken under concurrent writes");
}
