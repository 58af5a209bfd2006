//! Shared helpers of the block-tree tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cstor_pool::memstore::MemStore;
use cstor_pool::spa::SpaOptions;
use cstor_pool::store::{AllocClass, BlockStore, Dva, SpaceStats, StoreError, Verify};
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

/// Raid-group options of the tests over devices: no overwrite, a 10 s device timeout.
pub fn spa_opts() -> SpaOptions {
    SpaOptions {
        force: false,
        io_timeout: Duration::from_secs(10),
    }
}

/// A [`MemStore`] seen through the changes a test makes: `edit_root` rewrites the root
/// that `last_root` returns (a pool written by another version); without `claim` the
/// store answers `claim` with the trait's default (a store that cannot claim log blocks);
/// `write_delay` makes every block write that slow (a slow device); `reads` counts block
/// reads and `writes` block writes started.
#[derive(Debug)]
pub struct Wrapped {
    pub mem: Arc<MemStore>,
    pub edit_root: Option<fn(&mut [u8])>,
    pub claim: bool,
    pub write_delay: Option<Duration>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

impl Wrapped {
    pub fn new(mem: Arc<MemStore>) -> Wrapped {
        Wrapped {
            mem,
            edit_root: None,
            claim: true,
            write_delay: None,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }
}

impl BlockStore for Wrapped {
    fn space(&self) -> SpaceStats {
        self.mem.space()
    }
    fn asize(&self, vdev: u32, psize: u32) -> u64 {
        self.mem.asize(vdev, psize)
    }
    fn alloc(&self, psize: u32, class: AllocClass, txg: u64) -> Result<Dva, StoreError> {
        self.mem.alloc(psize, class, txg)
    }
    fn free(&self, dva: Dva, txg: u64) {
        self.mem.free(dva, txg)
    }
    fn write(&self, dva: Dva, data: &[u8]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some(delay) = self.write_delay {
            std::thread::sleep(delay);
        }
        self.mem.write(dva, data)
    }
    fn read(&self, dva: Dva, psize: u32, verify: Verify<'_>) -> Result<Vec<u8>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.mem.read(dva, psize, verify)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.mem.flush()
    }
    fn sync(&self, txg: u64, root: &[u8]) -> Result<(), StoreError> {
        self.mem.sync(txg, root)
    }
    fn last_root(&self) -> Option<(u64, Vec<u8>)> {
        let (txg, mut root) = self.mem.last_root()?;
        if let Some(edit) = self.edit_root {
            edit(&mut root);
        }
        Some((txg, root))
    }
    fn claim(&self, dva: Dva, txg: u64) -> Result<(), StoreError> {
        if self.claim {
            return self.mem.claim(dva, txg);
        }
        Err(StoreError::Io {
            context: format!("claim of vdev {} offset {}", dva.vdev, dva.offset),
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        })
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

/// Every allocated block is live and every live block allocated, after a commit: no
/// leak, no block both free and in use. The intent log's pre-allocated next block is the
/// one allowed extra.
pub fn check_no_leaks(store: &MemStore, pool: &Pool) {
    pool.sync().unwrap();
    assert_eq!(pool.dirty_bytes(), 0, "dirty accounting after a commit");
    let mut live = std::collections::BTreeMap::new();
    pool.visit_live_blocks(&mut |dva, psize, verify| {
        assert_eq!(dva.vdev, 0);
        assert!(u64::from(psize) <= dva.asize);
        assert!(
            live.insert(dva.offset, dva.asize).is_none(),
            "block visited twice: {dva:?}"
        );
        let _ = verify;
        Ok(())
    })
    .unwrap();
    let allocated: std::collections::BTreeMap<u64, u64> =
        store.allocated_blocks().into_iter().collect();
    for (o, a) in &live {
        assert_eq!(allocated.get(o), Some(a), "live block {o} not allocated");
    }
    let extra: Vec<_> = allocated.keys().filter(|o| !live.contains_key(o)).collect();
    assert!(extra.len() <= 1, "leaked blocks: {extra:?}");
    // Space accounting: every allocated byte is metadata or some volume's `used`.
    let used: u64 = pool.list_volumes().iter().map(|v| v.used).sum();
    let total: u64 = allocated.values().sum();
    assert_eq!(
        used + pool.metadata_bytes(),
        total,
        "volume used {used} + metadata != allocated"
    );
}

/// One volume operation of a crash test, replayed on a byte-array model.
#[derive(Clone, Debug)]
pub enum Io {
    Write { vol: usize, off: u64, data: Vec<u8> },
    Unmap { vol: usize, off: u64, len: u64 },
}

pub fn apply(model: &mut [Vec<u8>], io: &Io) {
    match io {
        Io::Write { vol, off, data } => {
            model[*vol][*off as usize..*off as usize + data.len()].copy_from_slice(data)
        }
        Io::Unmap { vol, off, len } => model[*vol][*off as usize..(*off + *len) as usize].fill(0),
    }
}

/// True when `got` is `model` plus part of write `next`, sector by sector: a write that no
/// flush covered may survive partially, as on a disk (no multi-sector atomicity).
pub fn torn_next(model: &[Vec<u8>], got: &[Vec<u8>], next: Option<&Io>) -> bool {
    let Some(io) = next else { return false };
    let mut after = model.to_vec();
    apply(&mut after, io);
    (0..model.len()).all(|v| {
        model[v]
            .chunks(512)
            .zip(after[v].chunks(512))
            .zip(got[v].chunks(512))
            .all(|((m, a), g)| g == m || g == a)
    })
}
