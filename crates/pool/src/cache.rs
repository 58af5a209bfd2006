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

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Key, (Cached, u64)>,
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
        let (data, old_tick) = {
            let e = s.map.get_mut(k)?;
            let old = e.1;
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
