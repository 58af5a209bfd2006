//! Cache of decompressed, verified blocks (indirect and data), bounded in bytes.
//!
//! Owns: copies of block contents keyed by address and checksum. Because blocks are
//! copy-on-write and the key includes the checksum, an entry can never be stale: a reused
//! address has a different checksum.
//! Invariants: total bytes held <= the configured capacity (plus one block per shard).
//! Never: hold a block that did not pass verification.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::bp::Bp;

const SHARDS: usize = 16;

/// A cached block: data bytes, or an indirect block's decoded pointers.
#[derive(Clone, Debug)]
pub(crate) enum Cached {
    Bytes(Arc<Vec<u8>>),
    Bps(Arc<Vec<Bp>>),
}

impl Cached {
    fn bytes(&self) -> u64 {
        match self {
            Cached::Bytes(b) => b.len() as u64,
            Cached::Bps(b) => (b.len() * std::mem::size_of::<Bp>()) as u64,
        }
    }
}

/// Cache key: address plus checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    vdev: u32,
    offset: u64,
    cksum: [u8; 16],
}

impl Key {
    pub(crate) fn of(bp: &Bp) -> Key {
        Key {
            vdev: bp.dva.vdev,
            offset: bp.dva.offset,
            cksum: bp.cksum,
        }
    }
}

/// Hash of a [`Key`]: its checksum (xxh3 of the block, so already well spread) mixed with
/// the address and a per-process seed, one multiply. Why: SipHash of the 28-byte key was a
/// visible share of a cached 4 KiB read; the seed keeps the bucket of a key unknown to
/// whoever writes the data.
#[derive(Clone, Debug)]
struct KeyHasher {
    seed: u64,
}

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = KeyHash;
    fn build_hasher(&self) -> KeyHash {
        KeyHash(self.seed)
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState draws its keys from the OS once per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        KeyHasher { seed: h.finish() }
    }
}

/// The hasher [`KeyHasher`] builds: folds every word written into one state.
#[derive(Debug)]
struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn finish(&self) -> u64 {
        let x = self.0 ^ (self.0 >> 29);
        x.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Key, (Cached, u64), KeyHasher>,
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: u64,
}

/// LRU block cache.
#[derive(Debug)]
pub(crate) struct BlockCache {
    shard_capacity_bytes: u64,
    shards: Vec<Mutex<Shard>>,
}

impl BlockCache {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        BlockCache {
            shard_capacity_bytes: (capacity_bytes / SHARDS as u64).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, k: &Key) -> &Mutex<Shard> {
        let h = (k.offset >> 12) ^ u64::from(k.vdev) ^ u64::from(k.cksum[0]);
        &self.shards[(h as usize) % SHARDS]
    }

    pub(crate) fn get(&self, k: &Key) -> Option<Cached> {
        let mut s = self.shard(k).lock();
        s.tick += 1;
        let tick = s.tick;
        // Entries in the newer half of the order stay where they are: a hot block (an
        // indirect read by every lookup under it) would otherwise move on every hit, two
        // tree updates per read, and it is nowhere near eviction anyway.
        let half = s.order.len() as u64 / 2;
        let (data, old_tick) = {
            let e = s.map.get_mut(k)?;
            let old = e.1;
            if tick - old <= half {
                return Some(e.0.clone());
            }
            e.1 = tick;
            (e.0.clone(), old)
        };
        s.order.remove(&old_tick);
        s.order.insert(tick, *k);
        Some(data)
    }

    pub(crate) fn insert(&self, k: Key, data: Cached) {
        let mut s = self.shard(&k).lock();
        s.tick += 1;
        let tick = s.tick;
        let len = data.bytes();
        if let Some((old, old_tick)) = s.map.insert(k, (data, tick)) {
            s.bytes -= old.bytes();
            s.order.remove(&old_tick);
        }
        s.order.insert(tick, k);
        s.bytes += len;
        while s.bytes > self.shard_capacity_bytes && s.order.len() > 1 {
            let Some((&t, &victim)) = s.order.iter().next() else {
                break;
            };
            s.order.remove(&t);
            if let Some((d, _)) = s.map.remove(&victim) {
                s.bytes -= d.bytes();
            }
        }
    }

    pub(crate) fn remove(&self, k: &Key) {
        let mut s = self.shard(k).lock();
        if let Some((d, t)) = s.map.remove(k) {
            s.bytes -= d.bytes();
            s.order.remove(&t);
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        let mut cksum = [0u8; 16];
        cksum[..8].copy_from_slice(&i.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        Key {
            vdev: 0,
            offset: i << 12,
            cksum,
        }
    }

    /// A block read again and again survives a stream of blocks read once, although
    /// hits in the newer half of the order do not move it; the cache stays in bounds.
    #[test]
    fn a_hot_block_outlives_a_stream_of_cold_ones() {
        let cache = BlockCache::new(SHARDS as u64 * 8 * 4096);
        let hot = key(0);
        cache.insert(hot, Cached::Bytes(Arc::new(vec![7u8; 4096])));
        for i in 1..20_000u64 {
            cache.insert(key(i), Cached::Bytes(Arc::new(vec![0u8; 4096])));
            match cache.get(&hot) {
                Some(Cached::Bytes(b)) => assert_eq!(b[0], 7),
                _ => panic!("the hot block was evicted after {i} cold ones"),
            }
            assert!(cache.bytes() <= (SHARDS as u64 * 9) * 4096);
        }
        assert!(cache.get(&key(1)).is_none(), "a cold block stayed");
    }
}
