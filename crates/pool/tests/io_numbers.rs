//! io numbers: [`VolumeHandle::next_io`] hands out strictly increasing numbers that are
//! never handed out again, even after a power cut at any point of a chunk (reservations
//! are durable before use); numbers a write or a replayed record carries keep the sequence
//! above them; a block's io is that of the newest write touching it, and an UNMAP leaves
//! its io on the hole.

mod common;

use std::sync::Arc;

use common::{opts, pattern};
use cstor_pool::limits::IO_RESERVE_CHUNK;
use cstor_pool::memstore::{MemStore, XorShift};
use cstor_pool::{Compression, Pool};

#[test]
fn next_io_never_repeats_across_power_cuts() {
    let mut store = Arc::new(MemStore::new(1 << 30));
    Pool::create(store.clone(), opts())
        .unwrap()
        .create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    let mut rng = XorShift::new(7);
    let mut highest = 0u64;
    for round in 0..4 {
        let pool = Pool::open(store.clone(), opts()).unwrap();
        let v = pool.volume("v").unwrap();
        // Some rounds stop before the half-chunk request, some between it and the chunk's
        // end (requested, never committed), some past the end (a commit inside).
        let n = [1000, IO_RESERVE_CHUNK / 2 + 10, IO_RESERVE_CHUNK + 17, 3][round];
        let mut prev = 0;
        for i in 0..n {
            let io = v.next_io().unwrap();
            assert!(io > highest, "round {round}: io {io} not above {highest}");
            assert!(io > prev);
            prev = io;
            if i % 50_000 == 0 {
                v.write(rng.below(256) * 4096, &pattern(io, 4096), Some(io))
                    .unwrap();
            }
        }
        highest = prev;
        if round % 2 == 0 {
            v.flush().unwrap();
        }
        store.cut_power();
        drop(v);
        drop(pool);
        store = Arc::new(store.crash_image(round as u64));
    }
}

#[test]
fn explicit_and_replayed_io_numbers_keep_the_sequence_above_them() {
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts()).unwrap();
    let v = pool
        .create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    let first = v.next_io().unwrap();
    let big = first + 5 * IO_RESERVE_CHUNK;
    v.write(0, &pattern(1, 4096), Some(big)).unwrap();
    assert!(v.next_io().unwrap() > big);
    v.unmap(8192, 4096, Some(big + 10)).unwrap();
    v.flush().unwrap();
    store.cut_power();
    drop(v);
    drop(pool);
    // Only the log holds those numbers; the replay must raise the sequence past them.
    let pool = Pool::open(Arc::new(store.crash_image(3)), opts()).unwrap();
    let v = pool.volume("v").unwrap();
    assert!(v.next_io().unwrap() > big + 10);
}

#[test]
fn a_block_carries_the_io_of_its_newest_write_and_unmap_leaves_its_io() {
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store, opts()).unwrap();
    let v = pool
        .create_volume("v", 1 << 20, Some(16384), Some(Compression::Off))
        .unwrap();
    let (a, b, c) = (
        v.next_io().unwrap(),
        v.next_io().unwrap(),
        v.next_io().unwrap(),
    );
    v.write(0, &pattern(1, 16384), Some(a)).unwrap();
    // A partial write of the same block, committed over the old one.
    pool.sync().unwrap();
    v.write(4096, &pattern(2, 512), Some(b)).unwrap();
    v.unmap(65536, 16384, Some(c)).unwrap();
    let got: Vec<(u64, u64)> = pool
        .changed_since_vec("v", 0)
        .unwrap()
        .iter()
        .map(|r| (r.offset, r.io_number_max))
        .collect();
    assert_eq!(got, vec![(0, b), (65536, c)]);
    assert!(pool.changed_since_vec("v", c).unwrap().is_empty());
}

/// `try_next_io` (an iSCSI LU's dispatch, which must not wait for a commit) hands out the
/// same sequence as `next_io` while the durable reservation lasts, refuses past it instead
/// of waiting, and a commit makes it answer again; the two interleaved never repeat.
#[test]
fn try_next_io_never_waits_and_shares_the_sequence() {
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts()).unwrap();
    let v = pool
        .create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    let mut prev = v.next_io().unwrap();
    let mut refused = 0;
    for i in 0..(2 * IO_RESERVE_CHUNK + 5) {
        let io = if i % 3 == 0 {
            v.next_io().unwrap()
        } else {
            match v.try_next_io() {
                Some(io) => io,
                None => {
                    // Past the durable reservation: the caller draws on a blocking thread.
                    refused += 1;
                    v.next_io().unwrap()
                }
            }
        };
        assert!(io > prev, "io {io} after {prev}");
        prev = io;
    }
    // The half-chunk request is committed by the next_io that exhausts a chunk (no
    // background commit in these options), so try_next_io was refused at most per chunk.
    assert!(refused <= 3, "refused {refused} times");
    pool.sync().unwrap();
    assert!(v.try_next_io().is_some_and(|io| io > prev));
}
