//! An in-memory [`BlockStore`] for tests of the block-tree layer (and of layers above),
//! with a power-cut model and block corruption.
//!
//! Owns: sector contents (what reads see), the durable image (what a power cut keeps),
//! the writes not yet flushed, and a simple allocator whose state is snapshotted at every
//! `sync` (the allocator state a crash falls back to).
//! Invariants: `flush` makes every earlier write durable; `sync` makes the root durable
//! only after every earlier write; a freed block is reused only after the freeing txg's
//! `sync`.
//! Never: used for production data; it has one vdev and no redundancy, so a corrupt block
//! fails `read`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::{AllocClass, BlockStore, Dva, SpaceStats, StoreError, Verify, SECTOR_SIZE};

const SECTOR: u64 = SECTOR_SIZE as u64;

#[derive(Clone, Debug, Default)]
struct Alloc {
    bump_offset: u64,
    free_by_size: HashMap<u64, Vec<u64>>,
    allocated_bytes: u64,
    allocated: BTreeMap<u64, u64>,
}

impl Alloc {
    fn alloc(&mut self, asize: u64, capacity: u64) -> Option<u64> {
        let offset = match self.free_by_size.get_mut(&asize).and_then(Vec::pop) {
            Some(o) => o,
            None => {
                if self.bump_offset + asize > capacity {
                    return None;
                }
                let o = self.bump_offset;
                self.bump_offset += asize;
                o
            }
        };
        self.allocated_bytes += asize;
        self.allocated.insert(offset, asize);
        Some(offset)
    }

    fn release(&mut self, offset: u64, asize: u64) {
        let was = self.allocated.remove(&offset);
        assert_eq!(
            was,
            Some(asize),
            "memstore: freeing a block that is not allocated"
        );
        self.allocated_bytes -= asize;
        self.free_by_size.entry(asize).or_default().push(offset);
    }

    fn claim(&mut self, offset: u64, asize: u64) -> bool {
        if let Some(&a) = self.allocated.get(&offset) {
            return a == asize;
        }
        if offset >= self.bump_offset {
            let gap = offset - self.bump_offset;
            if gap > 0 {
                self.free_by_size
                    .entry(gap)
                    .or_default()
                    .push(self.bump_offset);
            }
            self.bump_offset = offset + asize;
        } else {
            let Some(list) = self.free_by_size.get_mut(&asize) else {
                return false;
            };
            let Some(pos) = list.iter().position(|&o| o == offset) else {
                return false;
            };
            list.swap_remove(pos);
        }
        self.allocated_bytes += asize;
        self.allocated.insert(offset, asize);
        true
    }
}

#[derive(Debug, Default)]
struct Inner {
    sectors: HashMap<u64, Arc<[u8]>>,
    durable: HashMap<u64, Arc<[u8]>>,
    unflushed: Vec<(u64, Vec<Arc<[u8]>>)>,
    alloc: Alloc,
    durable_alloc: Alloc,
    pending_free: BTreeMap<u64, Vec<Dva>>,
    root: Option<(u64, Vec<u8>)>,
    ops_left: Option<u64>,
    dead: bool,
    bytes_written: u64,
    flushes: u64,
}

/// In-memory block store with a power-cut model.
#[derive(Debug)]
pub struct MemStore {
    capacity_bytes: u64,
    inner: Mutex<Inner>,
}

fn dead_err() -> StoreError {
    StoreError::Io {
        context: "memstore power cut".into(),
        source: std::io::Error::other("device gone (simulated power cut)"),
    }
}

/// Small deterministic generator for crash images (tests need seeds, not quality).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is mapped to a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl MemStore {
    /// A new empty store of `capacity_bytes` usable bytes.
    pub fn new(capacity_bytes: u64) -> Self {
        MemStore {
            capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// After `n` more mutating operations (write, flush, sync step) the device dies: that
    /// and every later call fails, as if power was cut there.
    pub fn fail_after(&self, n: u64) {
        self.inner.lock().ops_left = Some(n);
    }

    /// Kill the device now.
    pub fn cut_power(&self) {
        self.inner.lock().dead = true;
    }

    /// The image a power cut leaves: durable sectors plus, for each write not yet
    /// flushed, at random: all of it, none of it, or a random subset of its sectors
    /// (torn). Allocator state and root are those of the last completed `sync`.
    pub fn crash_image(&self, seed: u64) -> MemStore {
        let inner = self.inner.lock();
        let mut rng = XorShift::new(seed);
        let mut sectors = inner.durable.clone();
        for (offset, data) in &inner.unflushed {
            let mode = rng.below(3);
            for (i, s) in data.iter().enumerate() {
                let keep = match mode {
                    0 => true,
                    1 => false,
                    _ => rng.below(2) == 0,
                };
                if keep {
                    sectors.insert(offset + i as u64 * SECTOR, s.clone());
                }
            }
        }
        MemStore {
            capacity_bytes: self.capacity_bytes,
            inner: Mutex::new(Inner {
                durable: sectors.clone(),
                sectors,
                alloc: inner.durable_alloc.clone(),
                durable_alloc: inner.durable_alloc.clone(),
                root: inner.root.clone(),
                ..Inner::default()
            }),
        }
    }

    /// The image a process crash leaves (the page cache survives): every completed write,
    /// flushed or not. Allocator state and root are those of the last completed `sync`.
    pub fn process_crash_image(&self) -> MemStore {
        let inner = self.inner.lock();
        MemStore {
            capacity_bytes: self.capacity_bytes,
            inner: Mutex::new(Inner {
                durable: inner.sectors.clone(),
                sectors: inner.sectors.clone(),
                alloc: inner.durable_alloc.clone(),
                durable_alloc: inner.durable_alloc.clone(),
                root: inner.root.clone(),
                ..Inner::default()
            }),
        }
    }

    /// Flip bytes of the block at `dva` (current and durable copies): bit rot.
    pub fn corrupt(&self, dva: Dva) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let key = dva.offset;
        for map in [&mut inner.sectors, &mut inner.durable] {
            let mut s = map
                .get(&key)
                .map_or_else(|| vec![0u8; SECTOR as usize], |s| s.to_vec());
            for b in s.iter_mut().step_by(97) {
                *b ^= 0x5a;
            }
            map.insert(key, s.into());
        }
    }

    /// Bytes written so far (for write-amplification measurements).
    pub fn bytes_written(&self) -> u64 {
        self.inner.lock().bytes_written
    }

    /// Number of `flush`/`sync` calls so far.
    pub fn flushes(&self) -> u64 {
        self.inner.lock().flushes
    }

    /// Allocated blocks: (offset, asize). For leak checks in tests.
    pub fn allocated_blocks(&self) -> Vec<(u64, u64)> {
        self.inner
            .lock()
            .alloc
            .allocated
            .iter()
            .map(|(&o, &a)| (o, a))
            .collect()
    }

    /// Blocks freed but waiting for their txg to be durable.
    pub fn pending_free_bytes(&self) -> u64 {
        self.inner
            .lock()
            .pending_free
            .values()
            .flatten()
            .map(|d| d.asize)
            .sum()
    }

    fn step(inner: &mut Inner) -> Result<(), StoreError> {
        if inner.dead {
            return Err(dead_err());
        }
        if let Some(n) = inner.ops_left.as_mut() {
            if *n == 0 {
                inner.dead = true;
                return Err(dead_err());
            }
            *n -= 1;
        }
        Ok(())
    }

    fn make_durable(inner: &mut Inner) {
        let unflushed = std::mem::take(&mut inner.unflushed);
        for (offset, data) in unflushed {
            for (i, s) in data.into_iter().enumerate() {
                inner.durable.insert(offset + i as u64 * SECTOR, s);
            }
        }
    }
}

impl BlockStore for MemStore {
    fn space(&self) -> SpaceStats {
        let inner = self.inner.lock();
        let allocated = inner.alloc.allocated_bytes;
        SpaceStats {
            size_bytes: self.capacity_bytes,
            allocated_bytes: allocated,
            free_bytes: self.capacity_bytes.saturating_sub(allocated),
        }
    }

    fn asize(&self, _vdev: u32, psize_bytes: u32) -> u64 {
        u64::from(psize_bytes)
    }

    fn alloc(&self, psize_bytes: u32, _class: AllocClass, _txg: u64) -> Result<Dva, StoreError> {
        assert!(
            psize_bytes > 0 && psize_bytes.is_multiple_of(SECTOR_SIZE),
            "alloc size"
        );
        let mut inner = self.inner.lock();
        if inner.dead {
            return Err(dead_err());
        }
        let asize = u64::from(psize_bytes);
        let offset = inner
            .alloc
            .alloc(asize, self.capacity_bytes)
            .ok_or(StoreError::NoSpace {
                wanted_bytes: asize,
            })?;
        Ok(Dva {
            vdev: 0,
            offset,
            asize,
        })
    }

    fn free(&self, dva: Dva, txg: u64) {
        let mut inner = self.inner.lock();
        assert!(
            inner.alloc.allocated.get(&dva.offset) == Some(&dva.asize),
            "memstore: free of unallocated block {dva:?} in txg {txg}"
        );
        inner.pending_free.entry(txg).or_default().push(dva);
    }

    fn write(&self, dva: Dva, data: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        Self::step(&mut inner)?;
        if dva.vdev != 0 || dva.offset + data.len() as u64 > self.capacity_bytes {
            return Err(StoreError::InvalidAddress { dva });
        }
        assert_eq!(data.len() as u64 % SECTOR, 0, "write of partial sectors");
        let chunks: Vec<Arc<[u8]>> = data.chunks(SECTOR as usize).map(Arc::from).collect();
        for (i, s) in chunks.iter().enumerate() {
            inner
                .sectors
                .insert(dva.offset + i as u64 * SECTOR, s.clone());
        }
        inner.bytes_written += data.len() as u64;
        inner.unflushed.push((dva.offset, chunks));
        Ok(())
    }

    fn read(&self, dva: Dva, psize_bytes: u32, verify: Verify<'_>) -> Result<Vec<u8>, StoreError> {
        let data = {
            let inner = self.inner.lock();
            if inner.dead {
                return Err(dead_err());
            }
            if dva.vdev != 0 || dva.offset + u64::from(psize_bytes) > self.capacity_bytes {
                return Err(StoreError::InvalidAddress { dva });
            }
            let mut data = Vec::with_capacity(psize_bytes as usize);
            let mut o = dva.offset;
            while o < dva.offset + u64::from(psize_bytes) {
                match inner.sectors.get(&o) {
                    Some(s) => data.extend_from_slice(s),
                    None => data.resize(data.len() + SECTOR as usize, 0),
                }
                o += SECTOR;
            }
            data
        };
        if !verify(&data) {
            return Err(StoreError::NoValidCopy { dva });
        }
        Ok(data)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        Self::step(&mut inner)?;
        inner.flushes += 1;
        Self::make_durable(&mut inner);
        Ok(())
    }

    fn sync(&self, txg: u64, root: &[u8]) -> Result<(), StoreError> {
        assert!(root.len() <= crate::store::MAX_ROOT_BYTES, "root too large");
        let mut inner = self.inner.lock();
        // Two steps, so a power cut can fall between the data flush and the root.
        Self::step(&mut inner)?;
        inner.flushes += 1;
        Self::make_durable(&mut inner);
        Self::step(&mut inner)?;
        if let Some((last, _)) = &inner.root {
            assert!(txg > *last, "memstore: txg {txg} not after {last}");
        }
        inner.root = Some((txg, root.to_vec()));
        let ready: Vec<u64> = inner.pending_free.range(..=txg).map(|(&t, _)| t).collect();
        for t in ready {
            for dva in inner.pending_free.remove(&t).unwrap_or_default() {
                inner.alloc.release(dva.offset, dva.asize);
            }
        }
        inner.durable_alloc = inner.alloc.clone();
        Ok(())
    }

    fn last_root(&self) -> Option<(u64, Vec<u8>)> {
        self.inner.lock().root.clone()
    }

    fn claim(&self, dva: Dva, _txg: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if inner.alloc.claim(dva.offset, dva.asize) {
            Ok(())
        } else {
            Err(StoreError::InvalidAddress { dva })
        }
    }
}
