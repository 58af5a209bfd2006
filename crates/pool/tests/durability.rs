//! Durability regressions of the engine, each written to fail on the bug it names:
//! - writers are held when the intent-log chain reaches its block limit, so replay (which
//!   reads at most that many blocks) never loses the tail;
//! - a commit run during replay keeps the old chain until every record is applied;
//! - an unreadable log block refuses the import (naming the block) unless the tail is
//!   discarded on purpose, which reports what was dropped;
//! - a failed flush of a log device fails the flush and latches the pool;
//! - readers walking a root (changed ranges, send) hold it against frees;
//! - a device lost during a txg is marked for resilver before that txg's uberblock.
//!
//! All in memory (MemStore, MemDevice, PowerCutDevice, FaultyDevice): power cuts keep only
//! flushed bytes, unlike SIGKILL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pattern;
use cstor_pool::limits::MAX_LOG_CHAIN_BLOCKS;
use cstor_pool::memstore::MemStore;
use cstor_pool::spa::testdev::{FaultyDevice, MemDevice, PowerCutDevice, PowerSwitch};
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::store::{AllocClass, BlockStore, Dva, SpaceStats, StoreError, Verify, WriteWait};
use cstor_pool::{Compression, Pool, PoolError, PoolOptions};
use parking_lot::Mutex;

fn opts(dirty_max_bytes: u64) -> PoolOptions {
    PoolOptions {
        background_commit: false,
        cache_bytes: 8 << 20,
        dirty_max_bytes,
        txg_interval: Duration::from_secs(3600),
        ..PoolOptions::default()
    }
}

fn sopts() -> SpaOptions {
    SpaOptions {
        force: false,
        io_timeout: Duration::from_secs(10),
    }
}

#[test]
fn flushes_past_the_log_chain_limit_survive_a_power_cut() {
    // No background commit and a dirty limit far above the workload: nothing but the
    // chain limit can force a commit, as with many sessions flushing during a long commit.
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts(200 << 20)).unwrap();
    let n = MAX_LOG_CHAIN_BLOCKS + 300;
    let v = pool
        .create_volume("v", n * 4096, Some(4096), Some(Compression::Off))
        .unwrap();
    for i in 0..n {
        v.write(i * 4096, &pattern(i, 4096), Some(i + 1)).unwrap();
        v.flush().unwrap();
    }
    store.cut_power();
    drop(v);
    drop(pool);
    let image = Arc::new(store.crash_image(1));
    let pool = Pool::open(image, opts(200 << 20)).unwrap();
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        v.read(i * 4096, &mut buf).unwrap();
        assert!(buf == pattern(i, 4096), "flushed write {i} of {n} lost");
    }
}

#[test]
fn a_commit_during_replay_keeps_the_records_not_yet_applied() {
    // 400 flushed 16 KiB writes live only in the log; the replay runs with a dirty limit
    // of 1 MiB, so it commits several times before its last record. Power is cut at
    // every few device operations of that replay; the next open must still find them.
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts(200 << 20)).unwrap();
    let n = 400u64;
    let v = pool
        .create_volume("v", n * 16384, Some(16384), Some(Compression::Off))
        .unwrap();
    for i in 0..n {
        v.write(i * 16384, &pattern(i, 16384), Some(i + 1)).unwrap();
    }
    v.flush().unwrap();
    store.cut_power();
    drop(v);
    drop(pool);
    let base = store.crash_image(0);
    let mut cut_inside = 0;
    for ops in (0..400).step_by(11) {
        let img = Arc::new(base.crash_image(0));
        img.fail_after(ops);
        if Pool::open(img.clone(), opts(1 << 20)).is_err() {
            cut_inside += 1;
        }
        let after = Arc::new(img.crash_image(ops));
        let pool = Pool::open(after, opts(200 << 20))
            .unwrap_or_else(|e| panic!("cut after {ops} ops: reopen failed: {e}"));
        let v = pool.volume("v").unwrap();
        let mut buf = vec![0u8; 16384];
        for i in 0..n {
            v.read(i * 16384, &mut buf).unwrap();
            assert!(
                buf == pattern(i, 16384),
                "cut after {ops} ops of a replay: flushed write {i} lost"
            );
        }
    }
    assert!(cut_inside > 5, "the cuts must fall inside the replay");
}

/// A MemStore that remembers the blocks written with `write` (the intent log's blocks)
/// and can fail reads of one of them with a device error.
#[derive(Debug)]
struct LogFaults {
    inner: Arc<MemStore>,
    log_blocks: Mutex<Vec<Dva>>,
    fail_read: Mutex<Option<Dva>>,
}

impl BlockStore for LogFaults {
    fn space(&self) -> SpaceStats {
        self.inner.space()
    }
    fn asize(&self, vdev: u32, psize: u32) -> u64 {
        self.inner.asize(vdev, psize)
    }
    fn alloc(&self, psize: u32, class: AllocClass, txg: u64) -> Result<Dva, StoreError> {
        self.inner.alloc(psize, class, txg)
    }
    fn free(&self, dva: Dva, txg: u64) {
        self.inner.free(dva, txg)
    }
    fn write(&self, dva: Dva, data: &[u8]) -> Result<(), StoreError> {
        self.log_blocks.lock().push(dva);
        self.inner.write(dva, data)
    }
    fn write_start(&self, dva: Dva, data: Arc<Vec<u8>>) -> Result<WriteWait, StoreError> {
        self.inner.write_start(dva, data)
    }
    fn read(&self, dva: Dva, psize: u32, verify: Verify<'_>) -> Result<Vec<u8>, StoreError> {
        if *self.fail_read.lock() == Some(dva) {
            return Err(StoreError::Io {
                context: format!("test device: read at offset {}", dva.offset),
                source: std::io::Error::other("injected read error"),
            });
        }
        self.inner.read(dva, psize, verify)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn sync(&self, txg: u64, root: &[u8]) -> Result<(), StoreError> {
        self.inner.sync(txg, root)
    }
    fn last_root(&self) -> Option<(u64, Vec<u8>)> {
        self.inner.last_root()
    }
    fn claim(&self, dva: Dva, txg: u64) -> Result<(), StoreError> {
        self.inner.claim(dva, txg)
    }
}

#[test]
fn an_unreadable_log_block_refuses_import_unless_the_tail_is_discarded() {
    let mem = Arc::new(MemStore::new(1 << 30));
    let store = Arc::new(LogFaults {
        inner: mem.clone(),
        log_blocks: Mutex::new(Vec::new()),
        fail_read: Mutex::new(None),
    });
    let pool = Pool::create(store.clone(), opts(64 << 20)).unwrap();
    let v = pool
        .create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    for i in 0..10u64 {
        v.write(i * 4096, &pattern(i, 4096), Some(i + 1)).unwrap();
        v.flush().unwrap();
    }
    let logged = store.log_blocks.lock().clone();
    assert!(logged.len() >= 10, "one log block per flush");
    mem.cut_power();
    drop(v);
    drop(pool);
    let image = Arc::new(mem.crash_image(0));
    // The fourth log block of the chain cannot be read: a device error, not the chain's end.
    let bad = logged[logged.len() - 7];
    let store = Arc::new(LogFaults {
        inner: image.clone(),
        log_blocks: Mutex::new(Vec::new()),
        fail_read: Mutex::new(Some(bad)),
    });
    match Pool::open(store.clone(), opts(64 << 20)) {
        Err(e @ PoolError::LogUnreadable { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("offset {}", bad.offset)) && msg.contains("vdev 0"),
                "the error names the block: {msg}"
            );
            assert!(msg.contains("--discard-log-tail"), "and the way out: {msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("import went on past an unreadable log block"),
    }
    let discard = PoolOptions {
        discard_log_tail: true,
        ..opts(64 << 20)
    };
    let pool = Pool::open(store, discard).unwrap();
    let dropped = pool
        .log_tail_dropped()
        .expect("the dropped tail is reported");
    assert_eq!(dropped.dva, bad);
    assert!(dropped.to_string().contains("dropped"), "{dropped}");
    // Blocks before the bad one were replayed; the volume is usable.
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 4096];
    v.read(0, &mut buf).unwrap();
    assert!(buf == pattern(0, 4096));
    v.write(0, &[1u8; 4096], None).unwrap();
    pool.sync().unwrap();
}

#[test]
fn a_failed_flush_of_the_log_device_fails_the_flush_and_latches() {
    let data = MemDevice::new("data", 64 << 20);
    let log = FaultyDevice::new(MemDevice::new("log", 32 << 20));
    let spa = Arc::new(
        Spa::create_on(
            "t",
            vec![
                GroupSpec {
                    kind: GroupKind::Stripe,
                    devices: vec![data.clone() as Arc<dyn Device>],
                    log: false,
                },
                GroupSpec {
                    kind: GroupKind::Stripe,
                    devices: vec![log.clone() as Arc<dyn Device>],
                    log: true,
                },
            ],
            sopts(),
        )
        .unwrap(),
    );
    let pool = Pool::create(spa, opts(64 << 20)).unwrap();
    let v = pool
        .create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    v.write(0, &[1u8; 4096], None).unwrap();
    v.flush().unwrap();
    let before = log.write_count();
    log.set_fail_flush(true);
    v.write(4096, &[2u8; 4096], None).unwrap();
    assert!(
        log.write_count() == before,
        "nothing written before the flush"
    );
    let r = v.flush();
    assert!(
        log.write_count() > before,
        "the log block went to the log device"
    );
    assert!(
        r.is_err(),
        "a flush whose fdatasync failed was acknowledged"
    );
    assert!(
        v.write(8192, &[3u8; 4096], None).is_err(),
        "the failure latches: later writes fail until re-import"
    );
}

#[test]
fn a_snapshot_walk_holds_its_root_against_frees() {
    // Walk the changed ranges of a snapshot; in the middle of the walk the snapshot is
    // destroyed and its space reused by new writes and commits. The walk must finish with
    // the snapshot's ranges, never reading a reused block.
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts(64 << 20)).unwrap();
    let mib = 1u64 << 20;
    let v = pool
        .create_volume("v", 64 * mib, Some(4096), Some(Compression::Off))
        .unwrap();
    for i in 0..64 {
        v.write(i * mib, &pattern(i, 4096), Some(10)).unwrap();
    }
    pool.snapshot("v", "s").unwrap();
    for i in 0..64 {
        v.write(i * mib, &pattern(100 + i, 4096), Some(20)).unwrap();
    }
    pool.sync().unwrap();
    let want = pool.changed_since_vec("v@s", 0).unwrap();
    assert_eq!(want.len(), 64);
    let mut got = Vec::new();
    let mut churned = false;
    pool.changed_since("v@s", 0, &mut |r| {
        got.push(r);
        if !churned {
            churned = true;
            pool.destroy_snapshot("v", "s").unwrap();
            for round in 0..3u64 {
                for i in 0..64 {
                    v.write(i * mib + 8192, &pattern(round * 1000 + i, 4096), None)
                        .unwrap();
                }
                pool.sync().unwrap();
            }
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(got, want);
    common::check_no_leaks(&store, &pool);
}

#[test]
fn a_send_holds_its_snapshot_against_frees() {
    let store = Arc::new(MemStore::new(1 << 30));
    let pool = Pool::create(store.clone(), opts(64 << 20)).unwrap();
    let mib = 1u64 << 20;
    let v = pool
        .create_volume("v", 64 * mib, Some(4096), Some(Compression::Off))
        .unwrap();
    for i in 0..64 {
        v.write(i * mib, &pattern(i, 4096), Some(10)).unwrap();
    }
    pool.snapshot("v", "s").unwrap();
    for i in 0..64 {
        v.write(i * mib, &pattern(100 + i, 4096), Some(20)).unwrap();
    }
    pool.sync().unwrap();
    let mut want = Vec::new();
    pool.send("v", "s", None, &mut want).unwrap();

    struct Churn<'a> {
        pool: &'a Pool,
        v: cstor_pool::VolumeHandle,
        out: Vec<u8>,
        churned: bool,
    }
    impl std::io::Write for Churn<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.out.extend_from_slice(b);
            // After the header and a few records: destroy the snapshot being sent.
            if !self.churned && self.out.len() > 20_000 {
                self.churned = true;
                self.pool.destroy_snapshot("v", "s").unwrap();
                for round in 0..3u64 {
                    for i in 0..64 {
                        self.v
                            .write((i << 20) + 8192, &pattern(round * 1000 + i, 4096), None)
                            .unwrap();
                    }
                    self.pool.sync().unwrap();
                }
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Churn {
        pool: &pool,
        v: v.clone(),
        out: Vec::new(),
        churned: false,
    };
    pool.send("v", "s", None, &mut c).unwrap();
    assert!(c.churned);
    assert!(c.out == want, "the stream changed under the churn");
    common::check_no_leaks(&store, &pool);
}

#[test]
fn a_device_lost_during_a_txg_is_marked_before_that_txg_is_durable() {
    // raidz of 3; device 2 fails its writes during txg B, which still commits on the other
    // two. Power is cut at each device operation of B's commit in turn: whenever B's
    // uberblock survived, device 2 must come back marked for resilver (it misses B).
    const DEV: u64 = 16 << 20;
    let base: Vec<Vec<u8>> = {
        let mems: Vec<Arc<MemDevice>> = (0..3)
            .map(|i| MemDevice::new(&format!("pc{i}"), DEV))
            .collect();
        let devs: Vec<Arc<dyn Device>> =
            mems.iter().map(|m| m.clone() as Arc<dyn Device>).collect();
        let spa = Arc::new(
            Spa::create_on(
                "t",
                vec![GroupSpec {
                    kind: GroupKind::Raidz,
                    devices: devs,
                    log: false,
                }],
                sopts(),
            )
            .unwrap(),
        );
        let pool = Pool::create(spa.clone(), opts(64 << 20)).unwrap();
        let v = pool
            .create_volume("v", 1 << 20, Some(16384), Some(Compression::Off))
            .unwrap();
        v.write(0, &pattern(1, 65536), None).unwrap();
        drop(v);
        pool.close().unwrap();
        mems.iter().map(|m| m.image()).collect()
    };
    let mut saw_b = false;
    // Every third operation by default (the window between the uberblock and the label
    // write spans about a dozen); every one with CSTOR_DURABILITY_FULL set.
    let step = if std::env::var_os("CSTOR_DURABILITY_FULL").is_some() {
        1
    } else {
        3
    };
    for cut in (0..120u64).step_by(step) {
        let switch = PowerSwitch::never();
        let pcs: Vec<Arc<PowerCutDevice>> = base
            .iter()
            .enumerate()
            .map(|(i, img)| {
                PowerCutDevice::with_switch(&format!("pc{i}"), img.clone(), switch.clone())
            })
            .collect();
        let bad = FaultyDevice::new(pcs[2].clone());
        let devs: Vec<Arc<dyn Device>> = vec![pcs[0].clone(), pcs[1].clone(), bad.clone()];
        let spa = Arc::new(Spa::import_devices("t", devs, sopts()).unwrap());
        let pool = Pool::open(spa.clone(), opts(64 << 20)).unwrap();
        let a = spa.last_root().unwrap().0;
        let v = pool.volume("v").unwrap();
        bad.set_fail_writes(true);
        v.write(65536, &pattern(2, 65536), None).unwrap();
        switch.cut_after(cut);
        let b = pool.sync();
        let done = !switch.is_off();
        let images: Vec<Arc<dyn Device>> = pcs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                MemDevice::from_image(&format!("pc{i}"), d.crash_image(cut)) as Arc<dyn Device>
            })
            .collect();
        // The image is taken: what the drop's commit writes no longer matters.
        switch.cut_after(0);
        drop(v);
        drop(pool);
        drop(spa);
        let spa2 = Spa::import_devices("t", images, sopts()).unwrap();
        let (txg, _) = spa2.last_root().unwrap();
        assert!(txg >= a, "cut {cut}: txg {a} was durable");
        if let Ok(b) = b {
            if txg >= b {
                saw_b = true;
                let st = spa2.status();
                let d2 = &st.groups[0].devices[2];
                assert!(
                    d2.resilvering || d2.state != "ONLINE",
                    "cut {cut}: txg {b} is durable but device 2, which missed it, is trusted: {d2:?}"
                );
            }
        }
        if done {
            break;
        }
    }
    assert!(saw_b, "some cut must leave the txg durable");
}

/// `--discard-log-tail` after a replay that a power cut interrupted: that replay's
/// commits made its claims of the whole chain durable, so the blocks past the dropped
/// one stayed allocated with nothing pointing at them (a leak). The claims are recorded
/// in the directory of those commits, and the next replay frees the ones it does not
/// reach: after the import every allocated block is live.
#[test]
fn a_dropped_log_tail_leaks_no_space_after_an_interrupted_replay() {
    let mem = Arc::new(MemStore::new(1 << 30));
    let store = Arc::new(LogFaults {
        inner: mem.clone(),
        log_blocks: Mutex::new(Vec::new()),
        fail_read: Mutex::new(None),
    });
    let pool = Pool::create(store.clone(), opts(200 << 20)).unwrap();
    let v = pool
        .create_volume("v", 1 << 20, Some(4096), Some(Compression::Off))
        .unwrap();
    for i in 0..40u64 {
        v.write(i * 4096, &pattern(i, 4096), Some(i + 1)).unwrap();
        v.flush().unwrap();
    }
    let logged = store.log_blocks.lock().clone();
    assert!(logged.len() >= 40);
    mem.cut_power();
    drop(v);
    drop(pool);
    let base = mem.crash_image(0);
    let mut interrupted = 0;
    for ops in [6u64, 12, 20, 30, 45] {
        // A replay with a small dirty limit commits (pinned) every few records; the
        // power goes after `ops` device operations of it.
        let img = Arc::new(base.crash_image(0));
        img.fail_after(ops);
        interrupted += u64::from(Pool::open(img.clone(), opts(16 << 10)).is_err());
        let after = Arc::new(img.crash_image(ops));
        let before = after.allocated_blocks().len();
        let store = Arc::new(LogFaults {
            inner: after.clone(),
            log_blocks: Mutex::new(Vec::new()),
            fail_read: Mutex::new(Some(logged[20])),
        });
        let discard = PoolOptions {
            discard_log_tail: true,
            ..opts(200 << 20)
        };
        let pool = Pool::open(store, discard)
            .unwrap_or_else(|e| panic!("cut after {ops} ops: import failed: {e}"));
        assert!(pool.log_tail_dropped().is_some(), "cut after {ops} ops");
        eprintln!(
            "cut after {ops} ops: {before} blocks allocated before the import, {} after",
            after.allocated_blocks().len()
        );
        common::check_no_leaks(&after, &pool);
    }
    assert!(interrupted >= 3, "the cuts must interrupt the replay");
}
