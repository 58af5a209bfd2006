//! Guards corruption detection, space accounting (UNMAP and snapshot destroy return
//! space), the read-only threshold, io numbers (`changed_since`), send/recv round trips and
//! refusal of bad streams, and concurrent use from many threads.

mod common;

use std::sync::Arc;

use common::*;
use cstor_pool::memstore::MemStore;
use cstor_pool::{Compression, Pool, PoolError};

#[test]
fn corrupt_block_fails_the_read_never_returns_wrong_data() {
    let (store, pool) = new_pool(1 << 30);
    let v = pool
        .create_volume("v", 4 << 20, Some(16384), Some(Compression::Off))
        .unwrap();
    let data = pattern(3, 1 << 20);
    v.write(0, &data, None).unwrap();
    pool.sync().unwrap();
    let mut data_blocks = Vec::new();
    pool.visit_live_blocks(&mut |dva, psize, verify| {
        // Data blocks of this volume are the 16 KiB uncompressed ones.
        if psize == 16384 {
            data_blocks.push(dva);
        }
        let _ = verify;
        Ok(())
    })
    .unwrap();
    assert_eq!(data_blocks.len(), 64);
    pool.close().unwrap();
    store.corrupt(data_blocks[10]);
    let pool = reopen(&store);
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let err = v.read(0, &mut buf).unwrap_err();
    assert!(matches!(err, PoolError::Io(_)), "{err}");
    // Other blocks still read correctly.
    let mut one = vec![0u8; 16384];
    v.read(0, &mut one).unwrap();
    assert_eq!(one, data[..16384]);
    // Scrub-style traversal reports the bad block through its verify.
    let mut bad = 0;
    pool.visit_live_blocks(&mut |dva, psize, verify| {
        let b = store_read_raw(&store, dva, psize);
        if !verify(&b) {
            bad += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(bad, 1);
}

fn store_read_raw(store: &MemStore, dva: cstor_pool::store::Dva, psize: u32) -> Vec<u8> {
    use cstor_pool::store::BlockStore;
    let out = std::sync::Mutex::new(Vec::new());
    let _ = store.read(dva, psize, &|b: &[u8]| {
        *out.lock().unwrap() = b.to_vec();
        true
    });
    out.into_inner().unwrap()
}

#[test]
fn unmap_and_snapshot_destroy_return_space() {
    let (store, pool) = new_pool(1 << 30);
    let v = pool
        .create_volume("v", 64 << 20, None, Some(Compression::Off))
        .unwrap();
    pool.sync().unwrap();
    let base = store.allocated_blocks().iter().map(|b| b.1).sum::<u64>();
    v.write(0, &pattern(1, 8 << 20), Some(1)).unwrap();
    pool.sync().unwrap();
    let info = pool.volume_info("v").unwrap();
    assert!(info.referenced >= 8 << 20 && info.referenced < (8 << 20) + (1 << 20));
    assert_eq!(info.used, info.referenced);
    assert!((info.compression_ratio - 1.0).abs() < 1e-9);
    pool.snapshot("v", "s1").unwrap();
    v.write(0, &pattern(2, 4 << 20), Some(2)).unwrap();
    pool.sync().unwrap();
    let info = pool.volume_info("v").unwrap();
    assert!(
        info.used >= 12 << 20,
        "used {} after overwrite with a snapshot",
        info.used
    );
    let snaps = pool.list_snapshots("v").unwrap();
    assert!(
        snaps[0].used >= 4 << 20 && snaps[0].used < 5 << 20,
        "{:?}",
        snaps[0]
    );
    assert!(snaps[0].written >= 8 << 20);
    // UNMAP of blocks a snapshot holds frees nothing; destroy the snapshot, then it does.
    v.unmap(0, 8 << 20, Some(3)).unwrap();
    pool.sync().unwrap();
    let held = store.allocated_blocks().iter().map(|b| b.1).sum::<u64>();
    assert!(held >= base + (8 << 20));
    pool.destroy_snapshot("v", "s1").unwrap();
    pool.sync().unwrap();
    let after = store.allocated_blocks().iter().map(|b| b.1).sum::<u64>();
    assert!(
        after <= base + 64 * 1024,
        "allocated {after} vs base {base}"
    );
    let info = pool.volume_info("v").unwrap();
    assert!(info.used < 64 * 1024, "{info:?}");
    check_no_leaks(&store, &pool);
}

#[test]
fn compression_ratio_is_reported() {
    let (_s, pool) = new_pool(1 << 30);
    let v = pool
        .create_volume("z", 16 << 20, Some(131072), Some(Compression::Lz4))
        .unwrap();
    let text: Vec<u8> = b"cstor block storage; "
        .iter()
        .cycle()
        .take(4 << 20)
        .copied()
        .collect();
    v.write(0, &text, None).unwrap();
    pool.sync().unwrap();
    let info = pool.volume_info("z").unwrap();
    assert!(info.compression_ratio > 4.0, "{info:?}");
    assert!(info.referenced < 1 << 20);
}

#[test]
fn read_only_above_the_fill_threshold_but_destroy_and_unmap_work() {
    let store = Arc::new(MemStore::new(64 << 20));
    let pool = Pool::create(
        store.clone(),
        cstor_pool::PoolOptions {
            ro_threshold_pct: 50,
            ..opts()
        },
    )
    .unwrap();
    let v = pool
        .create_volume("v", 128 << 20, None, Some(Compression::Off))
        .unwrap();
    let chunk = pattern(9, 1 << 20);
    let mut off = 0;
    let err = loop {
        match v.write(off, &chunk, None) {
            Ok(()) => {
                off += 1 << 20;
                pool.sync().unwrap();
            }
            Err(e) => break e,
        }
        assert!(off < 60 << 20, "never turned read-only");
    };
    assert!(matches!(err, PoolError::ReadOnly { .. }), "{err}");
    assert!(pool.space().read_only);
    pool.snapshot("v", "s").unwrap();
    v.unmap(0, off, None).unwrap();
    pool.sync().unwrap();
    assert!(pool.space().read_only, "the snapshot still holds the data");
    pool.destroy_snapshot("v", "s").unwrap();
    pool.sync().unwrap();
    assert!(!pool.space().read_only);
    v.write(0, &chunk, None).unwrap();
}

#[test]
fn changed_since_lists_only_newer_io_numbers() {
    let (_s, pool) = new_pool(1 << 30);
    let v = pool.create_volume("v", 1 << 40, None, None).unwrap();
    let bs = u64::from(v.block_size());
    v.write(0, &pattern(1, bs as usize * 4), Some(10)).unwrap();
    v.write(100 * bs, &pattern(2, bs as usize), Some(20))
        .unwrap();
    v.write((1 << 39) + 5 * bs, &pattern(3, bs as usize * 2), Some(30))
        .unwrap();
    v.unmap(bs, bs, Some(25)).unwrap();
    let all = pool.changed_since_vec("v", 0).unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!((all[0].offset, all[0].len), (0, 4 * bs));
    let newer = pool.changed_since_vec("v", 20).unwrap();
    let got: Vec<(u64, u64, u64)> = newer
        .iter()
        .map(|r| (r.offset, r.len, r.io_number_max))
        .collect();
    assert_eq!(got, vec![(bs, bs, 25), ((1 << 39) + 5 * bs, 2 * bs, 30)]);
    pool.snapshot("v", "s").unwrap();
    v.write(0, &pattern(4, 512), Some(40)).unwrap();
    assert_eq!(pool.changed_since_vec("v@s", 30).unwrap(), vec![]);
    assert_eq!(pool.changed_since_vec("v", 30).unwrap().len(), 1);
    // The walk listed the dirty write without committing it; the committed tree's max
    // follows with the commit.
    assert_eq!(pool.volume_info("v").unwrap().io_number_max, 30);
    pool.sync().unwrap();
    assert_eq!(pool.volume_info("v").unwrap().io_number_max, 40);
}

fn read_all(pool: &Pool, name: &str) -> Vec<u8> {
    let v = pool.volume(name).unwrap();
    let mut buf = vec![0u8; v.size() as usize];
    v.read(0, &mut buf).unwrap();
    buf
}

#[test]
fn send_recv_full_and_incremental_round_trip() {
    let (_s1, src) = new_pool(1 << 30);
    let (s2, dst) = new_pool(1 << 30);
    let v = src
        .create_volume("v", 8 << 20, Some(16384), Some(Compression::Zstd))
        .unwrap();
    v.write(0, &pattern(1, 3 << 20), Some(1)).unwrap();
    v.write(6 << 20, &pattern(2, 512 * 7), Some(2)).unwrap();
    src.snapshot("v", "a").unwrap();
    v.write(1 << 20, &pattern(3, 1 << 20), Some(3)).unwrap();
    v.unmap(0, 512 * 1024, Some(4)).unwrap();
    src.snapshot("v", "b").unwrap();

    let mut full = Vec::new();
    src.send("v", "a", None, &mut full).unwrap();
    let mut inc = Vec::new();
    let st = src.send("v", "b", Some("a"), &mut inc).unwrap();
    assert!(
        st.data_bytes <= (1 << 20) + 65536,
        "incremental sent {st:?}"
    );

    dst.recv("r", &mut full.as_slice()).unwrap();
    let mut a = vec![0u8; 8 << 20];
    src.read_snapshot("v", "a", 0, &mut a).unwrap();
    assert_eq!(read_all(&dst, "r"), a);
    assert_eq!(
        dst.volume_info("r").unwrap().snapshots,
        vec!["a".to_string()]
    );

    // A truncated or corrupt incremental stream changes nothing.
    let before = read_all(&dst, "r");
    let cut = &inc[..inc.len() - 100];
    assert!(dst.recv("r", &mut &cut[..]).is_err());
    let mut bad = inc.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(matches!(
        dst.recv("r", &mut bad.as_slice()),
        Err(PoolError::Corrupt { .. })
    ));
    assert_eq!(read_all(&dst, "r"), before);
    assert_eq!(dst.list_volumes().len(), 1);

    dst.recv("r", &mut inc.as_slice()).unwrap();
    let mut b = vec![0u8; 8 << 20];
    src.read_snapshot("v", "b", 0, &mut b).unwrap();
    assert_eq!(read_all(&dst, "r"), b);
    assert_eq!(
        dst.volume_info("r").unwrap().snapshots,
        vec!["a".to_string(), "b".to_string()]
    );
    // io numbers travel with the blocks.
    assert_eq!(dst.changed_since_vec("r", 3).unwrap().len(), 1);
    // The same incremental again is refused (its source is no longer the newest).
    assert!(dst.recv("r", &mut inc.as_slice()).is_err());
    // A full stream into an existing name is refused; garbage is refused.
    assert!(matches!(
        dst.recv("r", &mut full.as_slice()),
        Err(PoolError::Exists { .. })
    ));
    assert!(dst.recv("g", &mut &b"not a stream at all, just bytes......................................................................."[..]).is_err());
    assert!(dst.volume("g").is_err());
    check_no_leaks(&s2, &dst);
}

#[test]
fn many_threads_on_many_volumes() {
    let (store, pool) = new_pool(4 << 30);
    let pool = Arc::new(pool);
    for i in 0..4 {
        pool.create_volume(&format!("v{i}"), 16 << 20, None, None)
            .unwrap();
    }
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let v = pool.volume(&format!("v{}", t % 4)).unwrap();
                // Each thread owns a disjoint 2 MiB region, with partial-block writes
                // that share blocks with nobody else's region.
                let base = (t / 4) * (8 << 20);
                let mut model = vec![0u8; 2 << 20];
                for i in 0..200u64 {
                    let off = (i * 7919 * 512) % ((2 << 20) - 8192);
                    let data = pattern(t * 1000 + i, 512 * (1 + (i % 16) as usize));
                    v.write(base + off, &data, Some(i)).unwrap();
                    model[off as usize..off as usize + data.len()].copy_from_slice(&data);
                    if i % 50 == 0 {
                        pool.sync().unwrap();
                    }
                    if i % 30 == 0 {
                        v.flush().unwrap();
                    }
                }
                let mut buf = vec![0u8; 2 << 20];
                v.read(base, &mut buf).unwrap();
                assert!(buf == model);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    check_no_leaks(&store, &pool);
}

#[test]
fn partial_writes_to_one_block_from_many_threads_are_not_lost() {
    let (_s, pool) = new_pool(1 << 30);
    let pool = Arc::new(pool);
    let v = pool.create_volume("v", 1 << 20, Some(65536), None).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let v = v.clone();
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..16u64 {
                    let sector = t * 16 + i;
                    v.write(sector * 512, &[t as u8 + 1; 512], None).unwrap();
                    if i == 8 {
                        pool.sync().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut buf = vec![0u8; 65536];
    v.read(0, &mut buf).unwrap();
    for (s, chunk) in buf.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&b| b == (s / 16) as u8 + 1), "sector {s}");
    }
}

#[test]
fn scan_is_time_sliced_and_complete() {
    let (store, pool) = new_pool(1 << 30);
    let pool = Arc::new(pool);
    for i in 0..3 {
        let v = pool
            .create_volume(&format!("v{i}"), 64 << 20, None, Some(Compression::Off))
            .unwrap();
        v.write(0, &pattern(i, 2 << 20), None).unwrap();
        pool.snapshot(&format!("v{i}"), "s").unwrap();
        v.write(1 << 20, &pattern(i + 9, 1 << 20), None).unwrap();
    }
    pool.sync().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    // Each block "takes" 1 ms, as a device read would: the scan outlasts several slices.
    let stats = pool
        .visit_live_blocks(&mut |dva, _psize, _verify| {
            assert!(seen.insert(dva.offset), "visited twice: {dva:?}");
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(())
        })
        .unwrap();
    assert!(stats.blocks >= 3 * 192, "{stats:?}");
    assert_eq!(
        stats.bytes_visited,
        stats.allocated_bytes - 8192,
        "all but the log's spare"
    );
    let allocated: std::collections::BTreeSet<u64> =
        store.allocated_blocks().into_iter().map(|b| b.0).collect();
    assert_eq!(allocated.difference(&seen).count(), 1);

    // A commit is not held up for the whole scan.
    let p2 = pool.clone();
    let scanner = std::thread::spawn(move || {
        p2.visit_live_blocks(&mut |_, _, _| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(())
        })
        .unwrap()
    });
    while !scanner.is_finished() {
        let t = std::time::Instant::now();
        pool.volume("v0")
            .unwrap()
            .write(0, &pattern(77, 4096), None)
            .unwrap();
        pool.sync().unwrap();
        if !scanner.is_finished() {
            assert!(
                t.elapsed() < std::time::Duration::from_millis(800),
                "commit waited {:?}",
                t.elapsed()
            );
        }
    }
    scanner.join().unwrap();
}

#[test]
fn filling_a_small_pool_never_fails_a_commit() {
    // 100 % threshold: only the reserve and the dirty-data estimate stand between
    // acknowledged writes and a commit with no space.
    let store = Arc::new(MemStore::new(48 << 20));
    let pool = Pool::create(
        store.clone(),
        cstor_pool::PoolOptions {
            ro_threshold_pct: 100,
            dirty_max_bytes: 16 << 20,
            ..opts()
        },
    )
    .unwrap();
    let v = pool
        .create_volume("v", 1 << 30, Some(4096), Some(Compression::Off))
        .unwrap();
    let mut off = 0u64;
    let mut refused = false;
    while off < (1 << 30) {
        // Scattered writes: worst case for indirect blocks.
        let pos = (off * 97) % (1 << 30) / 4096 * 4096;
        match v.write(pos, &pattern(off, 4096), None) {
            Ok(()) => off += 4096,
            Err(PoolError::ReadOnly { .. }) => {
                refused = true;
                break;
            }
            Err(e) => panic!("write failed with {e}"),
        }
    }
    assert!(refused);
    pool.sync().unwrap();
    v.unmap(0, 1 << 30, None).unwrap();
    pool.sync().unwrap();
    pool.destroy_volume("v").unwrap();
    check_no_leaks(&store, &pool);
}

#[test]
fn huge_unmap_is_cheap_and_stays_visible_to_replication() {
    let (store, pool) = new_pool(1 << 30);
    let size = 10u64 << 40;
    let v = pool.create_volume("v", size, None, None).unwrap();
    v.write(size - (1 << 20), &pattern(1, 1 << 20), Some(1))
        .unwrap();
    v.write(5 << 30, &pattern(2, 1 << 20), Some(2)).unwrap();
    pool.sync().unwrap();
    pool.snapshot("v", "a").unwrap();
    let t = std::time::Instant::now();
    // mkfs-style discard of the whole device, not block aligned at the end.
    v.unmap(0, size - 512, Some(3)).unwrap();
    // A commit in between: the tree collapses to holes, then a write expands one path.
    pool.sync().unwrap();
    v.write(512, &pattern(3, 512), Some(4)).unwrap();
    pool.sync().unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    let mut buf = vec![0u8; 1 << 20];
    v.read(size - (1 << 20), &mut buf).unwrap();
    assert!(buf[..buf.len() - 512].iter().all(|&b| b == 0));
    assert_eq!(
        &buf[buf.len() - 512..],
        &pattern(1, 1 << 20)[(1 << 20) - 512..]
    );
    let mut s = vec![0u8; 1024];
    v.read(0, &mut s).unwrap();
    assert!(s[..512].iter().all(|&b| b == 0));
    assert_eq!(&s[512..], &pattern(3, 512)[..]);
    // The whole discarded range is reported changed (io 3), not only the written block.
    let changed = pool.changed_since_vec("v", 2).unwrap();
    let covered: u64 = changed.iter().map(|r| r.len).sum();
    assert!(covered >= size - (1 << 20), "{changed:?}");
    // An incremental stream carries the FREE: a receiver ends up equal.
    pool.snapshot("v", "b").unwrap();
    let (_s2, dst) = new_pool(1 << 30);
    let mut full = Vec::new();
    pool.send("v", "a", None, &mut full).unwrap();
    dst.recv("r", &mut full.as_slice()).unwrap();
    let mut inc = Vec::new();
    pool.send("v", "b", Some("a"), &mut inc).unwrap();
    dst.recv("r", &mut inc.as_slice()).unwrap();
    let r = dst.volume("r").unwrap();
    for off in [0, 5 << 30, size - (1 << 20)] {
        let mut a = vec![0u8; 1 << 20];
        let mut b = vec![0u8; 1 << 20];
        v.read(off, &mut a).unwrap();
        r.read(off, &mut b).unwrap();
        assert!(a == b, "offset {off}");
    }
    // The snapshot still holds the discarded data; destroying it frees it.
    let mut old = vec![0u8; 1 << 20];
    pool.read_snapshot("v", "a", 5 << 30, &mut old).unwrap();
    assert_eq!(old, pattern(2, 1 << 20));
    pool.destroy_snapshot("v", "a").unwrap();
    check_no_leaks(&store, &pool);
}
