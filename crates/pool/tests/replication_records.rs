//! The pool primitives replication builds on (issue 8 item 2, replication-design.md §5):
//! `read_with_io`, `flush_point`, and the durable per-volume records (checkpoint, epoch,
//! catch-up cursor, clean-shutdown marker and boot id), under the MemStore's power-cut
//! model (a cut keeps each unflushed write whole, drops it, or tears it by sector).

mod common;

use std::sync::Arc;

use common::opts;
use cstor_pool::memstore::{MemStore, XorShift};
use cstor_pool::{Compression, Pool, PoolError, PoolOptions, VolumeHandle, WriteMode};

const BS: u64 = 4096;
const BLOCKS: u64 = 64;

/// A block's bytes for the write with io `io`: the io, then the block number, then noise.
fn block_data(blk: u64, io: u64) -> Vec<u8> {
    let mut d = common::pattern(io ^ (blk << 32), BS as usize);
    d[..8].copy_from_slice(&io.to_le_bytes());
    d[8..16].copy_from_slice(&blk.to_le_bytes());
    d
}

fn io_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn popts(boot: &str) -> PoolOptions {
    PoolOptions {
        boot_id: Some(boot.into()),
        ..opts()
    }
}

fn pool_with_volume(boot: &str) -> (Arc<MemStore>, Pool, VolumeHandle) {
    let store = Arc::new(MemStore::new(256 << 20));
    let pool = Pool::create(store.clone(), popts(boot)).unwrap();
    let v = pool
        .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
        .unwrap();
    (store, pool, v)
}

fn reopen(img: MemStore, boot: &str) -> (Pool, VolumeHandle) {
    let pool = Pool::open(Arc::new(img), popts(boot)).unwrap();
    let v = pool.volume("v").unwrap();
    (pool, v)
}

#[test]
fn read_with_io_returns_each_blocks_io_with_its_bytes() {
    let (_s, pool, v) = pool_with_volume("b");
    v.write(0, &block_data(0, 5), Some(5)).unwrap();
    v.write(BS, &block_data(1, 6), Some(6)).unwrap();
    pool.sync().unwrap();
    // Dirty over committed: a partial write (io 9) over block 1, an UNMAP (io 8) of 2..4.
    v.write(BS + 512, &[7u8; 512], Some(9)).unwrap();
    v.unmap(2 * BS, 2 * BS, Some(8)).unwrap();
    let mut buf = vec![0u8; (5 * BS) as usize];
    let ios = v.read_with_io(0, &mut buf).unwrap();
    assert_eq!(ios, vec![5, 9, 8, 8, 0]);
    let mut want = vec![0u8; (5 * BS) as usize];
    want[..BS as usize].copy_from_slice(&block_data(0, 5));
    want[BS as usize..2 * BS as usize].copy_from_slice(&block_data(1, 6));
    want[(BS + 512) as usize..(BS + 1024) as usize].fill(7);
    assert_eq!(buf, want, "the bytes are those of `read`");
    let mut plain = vec![0u8; buf.len()];
    v.read(0, &mut plain).unwrap();
    assert_eq!(plain, buf);
    // A range inside one block, and across two, after the commit.
    pool.sync().unwrap();
    let mut b = vec![0u8; 1024];
    assert_eq!(v.read_with_io(BS + 512, &mut b).unwrap(), vec![9]);
    assert_eq!(v.read_with_io(BS - 512, &mut b).unwrap(), vec![5, 9]);
}

#[test]
fn flush_point_follows_flushes_commits_and_write_modes() {
    let (_s, pool, v) = pool_with_volume("b");
    assert_eq!(v.flush_point(), 0);
    v.write(0, &block_data(0, 1), Some(1)).unwrap();
    v.write(BS, &block_data(1, 2), Some(2)).unwrap();
    assert_eq!(v.flush_point(), 0, "buffered writes are not stable");
    v.flush().unwrap();
    assert_eq!(v.flush_point(), 2);
    // Out of order: io 4 acked before io 3; a commit makes both stable.
    v.write(0, &block_data(0, 4), Some(4)).unwrap();
    assert_eq!(v.flush_point(), 3, "every acked write up to 3 is stable");
    v.write(BS, &block_data(1, 3), Some(3)).unwrap();
    assert_eq!(v.flush_point(), 2);
    pool.sync().unwrap();
    assert_eq!(v.flush_point(), 4);
    // Crash-safe: acknowledged after the log write, stable only after a device flush.
    v.set_write_mode(WriteMode::CrashSafe);
    v.write(0, &block_data(0, 5), Some(5)).unwrap();
    assert_eq!(v.flush_point(), 4);
    v.flush().unwrap();
    assert_eq!(v.flush_point(), 5);
    v.set_write_mode(WriteMode::WriteThrough);
    v.unmap(0, BS, Some(6)).unwrap();
    assert_eq!(
        v.flush_point(),
        6,
        "write-through: stable before it returns"
    );
    assert_eq!(pool.volume_info("v").unwrap().flush_point, 6);
}

#[test]
fn epoch_and_cursor_are_durable_at_return_without_a_commit() {
    let (store, pool, v) = pool_with_volume("b");
    v.set_epoch(3).unwrap();
    v.set_cursor(Some(b"block 17")).unwrap();
    let txg_before = store.flushes();
    v.set_epoch(7).unwrap();
    assert!(store.flushes() > txg_before);
    assert_eq!(pool.dirty_bytes(), 0);
    match v.set_epoch(6) {
        Err(PoolError::EpochBelowStored {
            stored: 7,
            asked: 6,
            ..
        }) => {}
        other => panic!("lower epoch: {other:?}"),
    }
    v.set_epoch(7).unwrap();
    assert!(v.set_cursor(Some(&[0u8; 4097])).is_err());
    // A power cut with nothing committed since: the log replay brings them back.
    for seed in 0..8 {
        let (p2, v2) = reopen(store.crash_image(seed), "b");
        let r = v2.records();
        assert_eq!((r.epoch, r.cursor.as_deref()), (7, Some(&b"block 17"[..])));
        // And they stay after the replay's commit trimmed the log.
        p2.sync().unwrap();
        drop(v2);
        p2.close().unwrap();
    }
    v.set_cursor(None).unwrap();
    let (_p, v2) = reopen(store.crash_image(99), "b");
    assert_eq!(v2.records().cursor, None);
    assert_eq!(pool.list_volumes()[0].epoch, 7);
}

#[test]
fn checkpoint_is_reported_once_committed_and_survives_with_its_data() {
    let (store, pool, v) = pool_with_volume("b");
    v.write(0, &block_data(0, 1), Some(1)).unwrap();
    v.set_checkpoint(1).unwrap();
    assert_eq!(v.records().checkpoint, 0, "not durable before its commit");
    // A cut before the commit: neither the checkpoint nor (unflushed) the write.
    let (_p, v2) = reopen(store.crash_image(1), "b");
    assert_eq!(v2.records().checkpoint, 0);
    pool.sync().unwrap();
    assert_eq!(v.records().checkpoint, 1);
    assert_eq!(pool.volume_info("v").unwrap().checkpoint, 1);
    let (_p, v2) = reopen(store.crash_image(2), "b");
    assert_eq!(v2.records().checkpoint, 1);
    let mut b = vec![0u8; BS as usize];
    v2.read(0, &mut b).unwrap();
    assert_eq!(io_of(&b), 1);
    // A rollback drops the writes after the snapshot: the checkpoint goes to 0.
    pool.snapshot("v", "s").unwrap();
    v.write(0, &block_data(0, 2), Some(2)).unwrap();
    v.set_checkpoint(2).unwrap();
    pool.sync().unwrap();
    assert_eq!(v.records().checkpoint, 2);
    pool.rollback("v", "s").unwrap();
    assert_eq!(v.records().checkpoint, 0);
}

#[test]
fn a_checkpoint_in_the_log_comes_back_with_the_writes_before_it() {
    let (store, _pool, v) = pool_with_volume("b");
    v.set_write_mode(WriteMode::CrashSafe);
    for io in 1..=8u64 {
        v.write(io * BS, &block_data(io, io), Some(io)).unwrap();
        v.set_checkpoint(io).unwrap();
    }
    // Carries the checkpoint record of io 8 to the device (no flush, no commit).
    v.write(9 * BS, &block_data(9, 9), Some(9)).unwrap();
    // A process crash keeps every written log block: the replay restores the checkpoint
    // (without the log record it would be 0, the last commit's).
    let (_p, v2) = reopen(store.process_crash_image(), "b");
    assert_eq!(v2.records().checkpoint, 8);
    // Power cuts keep or drop each unflushed write: whatever checkpoint comes back, every
    // write at or below it reads back.
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let (_p, v2) = reopen(store.crash_image(seed), "b");
        let c = v2.records().checkpoint;
        seen.insert(c);
        let mut b = vec![0u8; BS as usize];
        for io in 1..=c {
            v2.read(io * BS, &mut b).unwrap();
            assert_eq!(
                io_of(&b),
                io,
                "seed {seed}: checkpoint {c} but io {io} missing"
            );
        }
    }
    assert!(
        seen.len() > 1,
        "the cuts never varied the outcome: {seen:?}"
    );
}

#[test]
fn clean_shutdown_and_boot_id_make_lost_tail() {
    let (store, pool, v) = pool_with_volume("boot-1");
    let r = v.records();
    assert!(
        r.last_shutdown_clean && !r.boot_id_changed && !r.lost_tail,
        "{r:?}"
    );
    drop(v);
    pool.close().unwrap();
    // Clean close, same boot; clean close, other boot: no tail lost either way.
    let (p, v) = reopen(store.process_crash_image(), "boot-1");
    let r = v.records();
    assert!(
        r.last_shutdown_clean && !r.boot_id_changed && !r.lost_tail,
        "{r:?}"
    );
    drop((v, p));
    let s2 = Arc::new(store.process_crash_image());
    let p = Pool::open(s2.clone(), popts("boot-2")).unwrap();
    let r = p.volume("v").unwrap().records();
    assert!(
        r.last_shutdown_clean && r.boot_id_changed && !r.lost_tail,
        "{r:?}"
    );
    // The open cleared the marker. A process crash (same boot) loses nothing...
    let (_p, v) = reopen(s2.process_crash_image(), "boot-2");
    let r = v.records();
    assert!(
        !r.last_shutdown_clean && !r.boot_id_changed && !r.lost_tail,
        "{r:?}"
    );
    // ...a power cut and a new boot may have.
    let (_p, v) = reopen(s2.crash_image(5), "boot-3");
    let r = v.records();
    assert!(
        !r.last_shutdown_clean && r.boot_id_changed && r.lost_tail,
        "{r:?}"
    );
    drop(p);
}

/// Random io-numbered writes, flushes, checkpoints, epochs and commits until the device
/// dies at a random step; then a power cut. After it: the epoch is at least the last one
/// acknowledged; every write with io up to the recovered checkpoint, and up to the last
/// flush point read before the cut, reads back (or a newer write of its block).
#[test]
fn records_and_flush_point_hold_across_power_cuts() {
    for seed in 0..150u64 {
        let (store, pool, v) = pool_with_volume("b");
        let mut rng = XorShift::new(seed);
        // Per block, the ios written, in order.
        let mut written: Vec<Vec<u64>> = vec![Vec::new(); BLOCKS as usize];
        let (mut io, mut epoch_acked, mut fp_seen) = (0u64, 0u64, 0u64);
        let mut ckpt_set: Vec<u64> = Vec::new();
        store.fail_after(5 + rng.below(60));
        for _ in 0..400 {
            let r = match rng.below(10) {
                0..=5 => {
                    io += 1;
                    let blk = rng.below(BLOCKS);
                    written[blk as usize].push(io);
                    v.write(blk * BS, &block_data(blk, io), Some(io))
                }
                6 => v.flush(),
                7 => {
                    ckpt_set.push(io);
                    v.set_checkpoint(io)
                }
                8 => {
                    let e = epoch_acked + 1 + rng.below(3);
                    v.set_epoch(e).map(|()| epoch_acked = e)
                }
                _ => pool.sync().map(|_| ()),
            };
            if r.is_err() {
                break;
            }
            fp_seen = fp_seen.max(v.flush_point());
        }
        let ctx = format!("seed {seed}");
        let img = store.crash_image(seed);
        drop(v);
        drop(pool);
        let (_p, v) = reopen(img, "b");
        let rec = v.records();
        assert!(
            rec.epoch >= epoch_acked,
            "{ctx}: epoch {} < acked {epoch_acked}",
            rec.epoch
        );
        assert!(
            rec.checkpoint == 0 || ckpt_set.contains(&rec.checkpoint),
            "{ctx}: checkpoint {} never set",
            rec.checkpoint
        );
        let floor = rec.checkpoint.max(fp_seen);
        let mut buf = vec![0u8; (BLOCKS * BS) as usize];
        let ios = v.read_with_io(0, &mut buf).unwrap();
        for blk in 0..BLOCKS as usize {
            let b = &buf[blk * BS as usize..(blk + 1) * BS as usize];
            let got = if b.iter().all(|&x| x == 0) {
                0
            } else {
                io_of(b)
            };
            if got != 0 {
                assert_eq!(
                    b,
                    &block_data(blk as u64, got)[..],
                    "{ctx}: block {blk} torn"
                );
            }
            assert_eq!(
                ios[blk], got,
                "{ctx}: block {blk}: io does not match its bytes"
            );
            let need = written[blk].iter().copied().filter(|&i| i <= floor).max();
            if let Some(need) = need {
                assert!(
                    got >= need,
                    "{ctx}: block {blk} holds io {got}, but io {need} <= checkpoint {} / \
                     flush point {fp_seen} was written",
                    rec.checkpoint
                );
            }
        }
    }
}

/// Under concurrent writers and background commits, every block `read_with_io` returns
/// carries the io its bytes were written with (whole-block writes whose bytes name their
/// io, or two halves: the first names the io, partial overlays resolved at commit).
#[test]
fn read_with_io_is_consistent_under_concurrent_writes_and_commits() {
    let store = Arc::new(MemStore::new(256 << 20));
    let pool = Pool::create(
        store,
        PoolOptions {
            background_commit: true,
            txg_interval: std::time::Duration::from_millis(5),
            ..popts("b")
        },
    )
    .unwrap();
    let v = pool
        .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (v, stop) = (&v, &stop);
            s.spawn(move || {
                let mut rng = XorShift::new(t + 1);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let io = v.next_io().unwrap();
                    // Each thread its own blocks: a block's writes come one after the
                    // other, so its io is that of the write its first bytes name.
                    let blk = rng.below(BLOCKS / 2) * 2 + t;
                    let d = block_data(blk, io);
                    if rng.below(3) == 0 {
                        // Two halves with the same io: a partial overlay, then the rest.
                        v.write(blk * BS, &d[..2048], Some(io)).unwrap();
                        v.write(blk * BS + 2048, &d[2048..], Some(io)).unwrap();
                    } else {
                        v.write(blk * BS, &d, Some(io)).unwrap();
                    }
                }
            });
        }
        // Stops the writers however this thread leaves (a failed check too).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _stop = Stop(&stop);
        let t0 = std::time::Instant::now();
        let mut checked = 0u64;
        let mut buf = vec![0u8; (BLOCKS * BS) as usize];
        while t0.elapsed() < std::time::Duration::from_millis(700) {
            let ios = v.read_with_io(0, &mut buf).unwrap();
            for blk in 0..BLOCKS as usize {
                let b = &buf[blk * BS as usize..(blk + 1) * BS as usize];
                if b[2048..].iter().all(|&x| x == 0) && ios[blk] != 0 {
                    // A half written so far: its first half names the io.
                    assert_eq!(io_of(b), ios[blk], "block {blk}: half-written");
                    continue;
                }
                let got = if b.iter().all(|&x| x == 0) {
                    0
                } else {
                    io_of(b)
                };
                assert_eq!(got, ios[blk], "block {blk}: io and bytes differ");
                checked += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(checked > 1000);
    });
}

/// Writes an earlier open acknowledged and flushed to the log (no commit) are replayed at
/// open: the flush point covers them at once (issue 8: it covered only writes since open).
#[test]
fn the_flush_point_covers_writes_replayed_at_open() {
    for seed in 0..20u64 {
        let (store, pool, v) = pool_with_volume("b");
        pool.sync().unwrap();
        for io in 1..=5u64 {
            v.write(io * BS, &block_data(io, io), Some(io)).unwrap();
        }
        v.flush().unwrap();
        assert_eq!(v.flush_point(), 5);
        // Buffered, never flushed: a cut may keep or drop it, the flush point never
        // counts it.
        v.write(6 * BS, &block_data(6, 6), Some(6)).unwrap();
        let img = store.crash_image(seed);
        drop(v);
        drop(pool);
        let (_p, v) = reopen(img, "b");
        let fp = v.flush_point();
        assert!(
            fp >= 5,
            "seed {seed}: flush point {fp} after replaying ios 1..=5"
        );
        let mut buf = vec![0u8; BS as usize];
        let ios = v.read_with_io(5 * BS, &mut buf).unwrap();
        assert_eq!(ios, vec![5], "seed {seed}");
    }
}
