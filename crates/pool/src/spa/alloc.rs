//! Free-space bookkeeping of one top-level vdev: free extents, allocations and frees
//! waiting for their txg to be synced, and the committed (on-disk) allocated set that
//! space maps describe.
//!
//! Owns: the vdev's [`VdevAlloc`], under the vdev's own mutex (no pool-wide lock on the
//! allocation path).
//! Invariants: `free` and `committed` never overlap a pending allocation; a range freed in
//! txg T returns to `free` only after T is durable ([`VdevAlloc::release`] is called after
//! the uberblock of T is flushed), so a crash always falls back to an intact tree.
//! Never: does I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::limits::SECTOR_BYTES;

/// Extents the first-fit search looks at after the cursor before falling back to the
/// size index: keeps allocation O(log n) on a fragmented vdev.
const FIND_SCAN_MAX: usize = 32;

/// Non-overlapping, merged byte ranges, indexed by start and by length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    total: u64,
}

impl RangeSet {
    /// Empty set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sum of lengths.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Extents as (start, len).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e - s))
    }
    fn add_extent(&mut self, s: u64, e: u64) {
        self.map.insert(s, e);
        self.by_size.insert((e - s, s));
    }
    fn del_extent(&mut self, s: u64, e: u64) {
        self.map.remove(&s);
        self.by_size.remove(&(e - s, s));
    }
    /// True if any byte of [start, start+len) is in the set.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        if let Some((_, &e)) = self.map.range(..=start).next_back() {
            if e > start {
                return true;
            }
        }
        self.map.range(start..end).next().is_some()
    }
    /// True if all of [start, start+len) is in the set.
    pub fn contains(&self, start: u64, len: u64) -> bool {
        matches!(self.map.range(..=start).next_back(), Some((_, &e)) if e >= start + len)
    }
    /// Add a range; false (and no change) if it overlaps the set.
    pub fn insert(&mut self, start: u64, len: u64) -> bool {
        if len == 0 || self.overlaps(start, len) {
            return len == 0;
        }
        let mut s = start;
        let mut e = start + len;
        if let Some((&ps, &pe)) = self.map.range(..s).next_back() {
            if pe == s {
                s = ps;
                self.del_extent(ps, pe);
            }
        }
        if let Some(&ne) = self.map.get(&e) {
            self.del_extent(e, ne);
            e = ne;
        }
        self.add_extent(s, e);
        self.total += len;
        true
    }
    /// Remove a range; false (and no change) unless it is wholly in the set.
    pub fn remove(&mut self, start: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some((&s, &e)) = self.map.range(..=start).next_back() else {
            return false;
        };
        let end = start + len;
        if e < end {
            return false;
        }
        self.del_extent(s, e);
        if s < start {
            self.add_extent(s, start);
        }
        if end < e {
            self.add_extent(end, e);
        }
        self.total -= len;
        true
    }
    /// Where to put `len` bytes: at `cursor` if it fits, else the first extent that fits
    /// among the next few, else the smallest extent that fits anywhere (best fit).
    pub fn find(&self, len: u64, cursor: u64) -> Option<u64> {
        if let Some((_, &e)) = self.map.range(..=cursor).next_back() {
            if e > cursor && e - cursor >= len {
                return Some(cursor);
            }
        }
        let fits = |(&s, &e): (&u64, &u64)| (e - s >= len).then_some(s);
        if let Some(s) = self
            .map
            .range(cursor.saturating_add(1)..)
            .take(FIND_SCAN_MAX)
            .find_map(fits)
        {
            return Some(s);
        }
        self.by_size.range((len, 0)..).next().map(|&(_, s)| s)
    }
}

/// Changes of one txg not yet synced.
#[derive(Clone, Debug, Default)]
pub struct TxgDelta {
    /// Allocations (offset, len).
    pub allocs: Vec<(u64, u64)>,
    /// Frees (offset, len).
    pub frees: Vec<(u64, u64)>,
}

/// Allocator state of one top-level vdev.
#[derive(Debug)]
pub struct VdevAlloc {
    /// Allocatable bytes.
    pub asize: u64,
    /// Free now.
    pub free: RangeSet,
    /// Allocated as of the last synced txg (what the on-disk space maps say).
    pub committed: RangeSet,
    /// Changes per open txg.
    pub pending: BTreeMap<u64, TxgDelta>,
    /// Frees taken by a sync in progress, released when it is durable.
    pub releasing: Vec<(u64, u64)>,
    cursor: u64,
}

impl VdevAlloc {
    /// A vdev with everything free.
    pub fn new(asize: u64) -> Self {
        let mut free = RangeSet::new();
        free.insert(0, asize);
        VdevAlloc {
            asize,
            free,
            committed: RangeSet::new(),
            pending: BTreeMap::new(),
            releasing: Vec::new(),
            cursor: 0,
        }
    }

    /// A vdev whose committed allocations are `committed`.
    pub fn from_committed(asize: u64, committed: RangeSet) -> Self {
        let mut free = RangeSet::new();
        let mut pos = 0;
        for (s, l) in committed.iter() {
            free.insert(pos, s - pos);
            pos = s + l;
        }
        free.insert(pos, asize - pos);
        VdevAlloc {
            asize,
            free,
            committed,
            pending: BTreeMap::new(),
            releasing: Vec::new(),
            cursor: 0,
        }
    }

    /// Bytes allocated (pending frees still count as allocated).
    pub fn allocated(&self) -> u64 {
        self.asize - self.free.total()
    }

    /// Take `len` bytes for txg `txg`, keeping `reserve` bytes free.
    pub fn alloc(&mut self, len: u64, txg: u64, reserve: u64) -> Option<u64> {
        let off = self.alloc_untracked(len, reserve)?;
        self.pending.entry(txg).or_default().allocs.push((off, len));
        Some(off)
    }

    /// Take `len` bytes without recording them in a txg (the sync records its own space
    /// map blocks itself).
    pub fn alloc_untracked(&mut self, len: u64, reserve: u64) -> Option<u64> {
        if self.free.total() < len + reserve {
            return None;
        }
        let off = self.free.find(len, self.cursor)?;
        let removed = self.free.remove(off, len);
        assert!(removed, "found extent must be free");
        self.cursor = off + len;
        if self.cursor >= self.asize {
            self.cursor = 0;
        }
        Some(off)
    }

    /// Claim a specific range (log replay after import) in txg `txg`; false if not free.
    pub fn claim(&mut self, off: u64, len: u64, txg: u64) -> bool {
        let aligned = off.is_multiple_of(SECTOR_BYTES) && len.is_multiple_of(SECTOR_BYTES);
        if !aligned || !self.free.remove(off, len) {
            return false;
        }
        self.pending.entry(txg).or_default().allocs.push((off, len));
        true
    }

    /// Record a free in txg `txg`; false if the range is free already (a double free).
    pub fn free(&mut self, off: u64, len: u64, txg: u64) -> bool {
        let aligned = off.is_multiple_of(SECTOR_BYTES) && len.is_multiple_of(SECTOR_BYTES);
        if !aligned
            || len == 0
            || off.checked_add(len).is_none_or(|e| e > self.asize)
            || self.free.overlaps(off, len)
        {
            return false;
        }
        self.pending.entry(txg).or_default().frees.push((off, len));
        true
    }

    /// Take every change of txgs `<= txg` for a sync; frees are held until
    /// [`VdevAlloc::release`].
    pub fn take_through(&mut self, txg: u64) -> (TxgDelta, u64) {
        let later = self.pending.split_off(&(txg + 1));
        let taken = std::mem::replace(&mut self.pending, later);
        let mut d = TxgDelta::default();
        let mut frees = Vec::new();
        for (_, t) in taken {
            d.allocs.extend(t.allocs);
            frees.extend(t.frees);
        }
        // A free must cover space that is allocated (committed, or allocated in this
        // delta) and must not repeat another free: drop the rest here, before anything
        // reaches disk, so a caller's double free can never make the space map unreplayable.
        let mut allocated_now = RangeSet::new();
        for &(o, l) in &d.allocs {
            allocated_now.insert(o, l);
        }
        let mut accepted = RangeSet::new();
        let mut dropped = 0;
        for (o, l) in frees {
            let owned = self.committed.contains(o, l) || allocated_now.contains(o, l);
            if owned && accepted.insert(o, l) {
                d.frees.push((o, l));
            } else {
                dropped += 1;
            }
        }
        (d, dropped)
    }

    /// Apply a synced delta to `committed`; false if it is inconsistent.
    pub fn commit(&mut self, d: &TxgDelta) -> bool {
        let mut ok = true;
        for &(o, l) in &d.allocs {
            ok &= self.committed.insert(o, l);
        }
        for &(o, l) in &d.frees {
            ok &= self.committed.remove(o, l);
        }
        self.releasing.extend(d.frees.iter().copied());
        ok
    }

    /// The sync that took the frees is durable: make them allocatable.
    pub fn release(&mut self) {
        for (o, l) in std::mem::take(&mut self.releasing) {
            let inserted = self.free.insert(o, l);
            debug_assert!(inserted, "released range was free already");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rangeset_merges_and_splits() {
        let mut r = RangeSet::new();
        assert!(r.insert(0, 10));
        assert!(r.insert(20, 10));
        assert!(r.insert(10, 10));
        assert_eq!(r.len(), 1);
        assert!(!r.insert(5, 1));
        assert!(r.remove(5, 5));
        assert_eq!(r.len(), 2);
        assert_eq!(r.total(), 25);
        assert!(!r.remove(4, 2));
        assert!(r.contains(10, 20));
        assert!(!r.contains(4, 2));
    }

    #[test]
    fn find_wraps_and_respects_size() {
        let mut r = RangeSet::new();
        r.insert(0, 100);
        r.insert(200, 50);
        assert_eq!(r.find(60, 150), Some(0));
        assert_eq!(r.find(40, 150), Some(200));
        assert_eq!(r.find(20, 50), Some(50));
        assert_eq!(r.find(200, 0), None);
    }

    #[test]
    fn size_index_finds_a_fit_beyond_the_scan_window() {
        let mut r = RangeSet::new();
        for i in 0..1000u64 {
            r.insert(i * 10, 5);
        }
        r.insert(20_000, 100);
        assert_eq!(r.find(50, 0), Some(20_000));
        assert!(r.remove(20_000, 60));
        assert_eq!(r.find(50, 0), None);
        assert_eq!(r.find(40, 0), Some(20_060));
    }

    #[test]
    fn frees_wait_for_release() {
        let mut a = VdevAlloc::new(1000 * 4096);
        let o = a.alloc(100 * 4096, 1, 0).unwrap();
        let (d, _) = a.take_through(1);
        assert!(a.commit(&d));
        a.release();
        assert!(a.free(o, 100 * 4096, 2));
        assert!(
            a.free(o, 100 * 4096, 2),
            "a repeated free in the open txg is taken ..."
        );
        assert_eq!(a.allocated(), 100 * 4096);
        let (d, dropped) = a.take_through(2);
        assert_eq!(dropped, 1, "... and dropped at sync");
        assert!(a.commit(&d));
        assert_eq!(
            a.allocated(),
            100 * 4096,
            "not free before the sync is durable"
        );
        a.release();
        assert_eq!(a.allocated(), 0);
        assert!(!a.free(o, 100 * 4096, 3), "double free refused");
    }

    proptest::proptest! {
        #[test]
        fn rangeset_matches_a_bitmap_model(ops in proptest::collection::vec((0u8..3, 0u64..200, 1u64..40), 1..200)) {
            let mut r = RangeSet::new();
            let mut model = vec![false; 240];
            for (op, start, len) in ops {
                let span = start as usize..(start + len) as usize;
                match op {
                    0 => {
                        let free = model[span.clone()].iter().all(|b| !b);
                        proptest::prop_assert_eq!(r.insert(start, len), free);
                        if free { model[span].iter_mut().for_each(|b| *b = true); }
                    }
                    1 => {
                        let all = model[span.clone()].iter().all(|b| *b);
                        proptest::prop_assert_eq!(r.remove(start, len), all);
                        if all { model[span].iter_mut().for_each(|b| *b = false); }
                    }
                    _ => {
                        if let Some(s) = r.find(len, start) {
                            let s = s as usize;
                            proptest::prop_assert!(model[s..s + len as usize].iter().all(|b| *b));
                        } else {
                            let run = model.iter().fold((0usize, 0usize), |(best, cur), &b| if b { (best.max(cur + 1), cur + 1) } else { (best, 0) }).0;
                            proptest::prop_assert!((run as u64) < len);
                        }
                    }
                }
                proptest::prop_assert_eq!(r.total(), model.iter().filter(|b| **b).count() as u64);
            }
        }
    }
}
