//! Committing txgs and finding the newest one: the space map chain (append, condense,
//! replay), the uberblock ring, and marking devices lost while running.
//!
//! Invariants: see the parent module: data, then space maps, then uberblock, each flushed
//! before the next; frees released only after the uberblock is durable.
//! Never: writes anything in place that an older uberblock still points to.

use super::*;

impl Spa {
    /// Read every uberblock ring; try the newest uberblocks in turn until one whose space
    /// map chain loads.
    pub(super) fn load_newest_state(&self) -> Result<(), SpaError> {
        let mut ubs: BTreeMap<u64, Uberblock> = BTreeMap::new();
        for leaf in self.all_leaves().iter().filter(|l| l.is_online()) {
            for lo in format::label_offsets(leaf.size()) {
                let ring_off = lo + UBERBLOCK_RING_OFFSET;
                let Ok(ring) =
                    leaf.read(ring_off, (UBERBLOCK_SLOTS * UBERBLOCK_SLOT_BYTES) as usize)
                else {
                    continue;
                };
                for (i, slot) in ring.chunks(UBERBLOCK_SLOT_BYTES as usize).enumerate() {
                    if let Ok(Some(ub)) = format::decode_uberblock(
                        slot,
                        &leaf.path,
                        ring_off + i as u64 * UBERBLOCK_SLOT_BYTES,
                    ) {
                        if ub.pool_guid == self.guid {
                            ubs.entry(ub.txg).or_insert(ub);
                        }
                    }
                }
            }
        }
        let mut last_err = None;
        for (txg, ub) in ubs.into_iter().rev() {
            match self.load_space_maps(&ub) {
                Ok((allocs, chain)) => {
                    for (v, committed) in self.vdevs.read().iter().zip(allocs) {
                        *v.alloc.lock() = VdevAlloc::from_committed(v.asize, committed);
                    }
                    let mut st = self.sync.lock();
                    st.last_txg = Some(txg);
                    st.chain = chain;
                    *self.last_root.lock() = Some((txg, ub.root.clone()));
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn read_sm(&self, ptr: &SmPtr) -> Result<SmBlock, SpaError> {
        let v = self
            .vdev(ptr.dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva: ptr.dva })?;
        let want = ptr.checksum;
        let data = v.read(ptr.dva, ptr.psize as u64, &|b: &[u8]| xxh3_64(b) == want)?;
        format::decode_sm_block(&data, ptr.dva.offset)
    }

    fn load_space_maps(&self, ub: &Uberblock) -> Result<(Vec<RangeSet>, Vec<SmPtr>), SpaError> {
        let nvdevs = self.vdevs.read().len();
        let mut sets = vec![RangeSet::new(); nvdevs];
        let mut blocks = Vec::new();
        let mut ptr = ub.space_map;
        let max = (SPACE_MAP_CHAIN_MAX + SPACE_MAP_BASE_BLOCKS_MAX + 2) as usize;
        while !ptr.is_null() {
            if blocks.len() >= max {
                return Err(SpaError::Corrupt {
                    path: "pool".into(),
                    what: "space map",
                    offset: ptr.dva.offset,
                    reason: format!("chain longer than {max}"),
                });
            }
            let blk = self.read_sm(&ptr)?;
            let base = blk.flags & format::SM_FLAG_BASE_START != 0;
            let prev = blk.prev;
            blocks.push((ptr, blk));
            if base {
                break;
            }
            ptr = prev;
        }
        let asizes: Vec<u64> = self.vdevs.read().iter().map(|v| v.asize).collect();
        let mut chain = Vec::new();
        for (ptr, blk) in blocks.into_iter().rev() {
            chain.push(ptr);
            for r in &blk.records {
                let bad = || SpaError::Corrupt {
                    path: "pool".into(),
                    what: "space map",
                    offset: ptr.dva.offset,
                    reason: format!("record {r:?} does not apply"),
                };
                let set = sets.get_mut(r.vdev as usize).ok_or_else(bad)?;
                let aligned =
                    r.offset.is_multiple_of(SECTOR_BYTES) && r.len.is_multiple_of(SECTOR_BYTES);
                if !aligned
                    || r.offset
                        .checked_add(r.len)
                        .is_none_or(|e| e > asizes[r.vdev as usize])
                {
                    return Err(bad());
                }
                let ok = if r.alloc {
                    set.insert(r.offset, r.len)
                } else {
                    set.remove(r.offset, r.len)
                };
                if !ok {
                    return Err(bad());
                }
            }
        }
        Ok((sets, chain))
    }

    pub(super) fn sync_inner(
        &self,
        st: &mut SyncState,
        txg: u64,
        root: &[u8],
    ) -> Result<(), SpaError> {
        self.flush_all()?;
        // A device lost while this txg's blocks were written misses them: mark it for
        // resilver before the uberblock makes the txg durable, or a power cut between
        // the two brings it back trusted with stale blocks.
        self.mark_lost_devices()?;
        let vdevs = self.vdevs.read().clone();
        let condense = !st.chain.is_empty() && st.chain.len() as u32 + 1 > SPACE_MAP_CHAIN_MAX;
        if condense {
            for p in &st.chain {
                let ok = self
                    .vdev(p.dva.vdev)
                    .is_some_and(|v| v.alloc.lock().free(p.dva.offset, p.dva.asize, txg));
                assert!(ok, "space map block {p:?} must be allocated");
            }
        }
        let mut deltas = Vec::with_capacity(vdevs.len());
        let mut est: usize = 0;
        for v in &vdevs {
            let mut a = v.alloc.lock();
            let (d, dropped) = a.take_through(txg);
            self.bad_frees.fetch_add(dropped, Ordering::Relaxed);
            est += d.allocs.len() + d.frees.len();
            if condense {
                // Frees may split extents, so the base has at most this many records.
                est += a.committed.len();
            }
            deltas.push(d);
        }
        if est == 0 && !condense {
            // Nothing changed: the uberblock keeps pointing at the same chain.
            return self.commit_txg(st, txg, root, &vdevs, &deltas, Vec::new(), false);
        }
        // Each space map block adds its own allocation record.
        let mut nblocks = 1;
        let mut psize;
        loop {
            let want = est + nblocks;
            psize = ((format::SM_HEADER_BYTES + want * format::SM_RECORD_BYTES)
                .div_ceil(SECTOR_SIZE as usize)
                * SECTOR_SIZE as usize)
                .min(SPACE_MAP_BLOCK_BYTES as usize) as u32;
            let need = want.div_ceil(format::sm_capacity(psize));
            if need <= nblocks {
                break;
            }
            nblocks = need;
        }
        let cap = format::sm_capacity(psize);
        if nblocks > SPACE_MAP_BASE_BLOCKS_MAX as usize {
            return Err(SpaError::InvalidState(format!("allocator state of {est} records exceeds {SPACE_MAP_BASE_BLOCKS_MAX} space map blocks")));
        }
        let mut dvas = Vec::new();
        for _ in 0..nblocks {
            let dva = self.alloc_inner(psize, AllocClass::Metadata, txg, false, false)?;
            let i = vdevs
                .iter()
                .position(|v| v.id == dva.vdev)
                .ok_or(SpaError::InvalidAddress { dva })?;
            deltas[i].allocs.push((dva.offset, dva.asize));
            dvas.push(dva);
        }
        let mut records = Vec::new();
        if condense {
            for (v, d) in vdevs.iter().zip(&deltas) {
                let mut c = v.alloc.lock().committed.clone();
                let ok = d.allocs.iter().all(|&(o, l)| c.insert(o, l))
                    && d.frees.iter().all(|&(o, l)| c.remove(o, l));
                assert!(
                    ok,
                    "allocator delta of vdev {} does not apply to its committed state",
                    v.id
                );
                records.extend(c.iter().map(|(o, l)| SmRecord {
                    vdev: v.id,
                    alloc: true,
                    offset: o,
                    len: l,
                }));
            }
        } else {
            for (v, d) in vdevs.iter().zip(&deltas) {
                records.extend(d.allocs.iter().map(|&(o, l)| SmRecord {
                    vdev: v.id,
                    alloc: true,
                    offset: o,
                    len: l,
                }));
                records.extend(d.frees.iter().map(|&(o, l)| SmRecord {
                    vdev: v.id,
                    alloc: false,
                    offset: o,
                    len: l,
                }));
            }
        }
        assert!(
            records.len() <= nblocks * cap,
            "space map estimate too small"
        );
        let mut prev = if condense {
            SmPtr::default()
        } else {
            st.chain.last().copied().unwrap_or_default()
        };
        let mut new_chain = Vec::new();
        let mut chunks = records.chunks(cap);
        for (i, dva) in dvas.iter().enumerate() {
            let recs = chunks.next().map(|c| c.to_vec()).unwrap_or_default();
            let flags = if condense && i == 0 {
                format::SM_FLAG_BASE_START
            } else {
                0
            };
            let bytes = format::encode_sm_block(
                &SmBlock {
                    flags,
                    txg,
                    prev,
                    records: recs,
                },
                psize,
            );
            let v = self
                .vdev(dva.vdev)
                .ok_or(SpaError::InvalidAddress { dva: *dva })?;
            v.write(*dva, &bytes)?;
            prev = SmPtr {
                dva: *dva,
                psize,
                checksum: xxh3_64(&bytes),
            };
            new_chain.push(prev);
        }
        self.flush_all()?;
        self.commit_txg(st, txg, root, &vdevs, &deltas, new_chain, condense)
    }

    /// Write the uberblock of `txg` pointing at the chain (extended by `new_chain`, or
    /// replaced by it when `condense`), then apply the deltas in memory and release frees.
    #[allow(clippy::too_many_arguments)]
    fn commit_txg(
        &self,
        st: &mut SyncState,
        txg: u64,
        root: &[u8],
        vdevs: &[Arc<TopVdev>],
        deltas: &[TxgDelta],
        new_chain: Vec<SmPtr>,
        condense: bool,
    ) -> Result<(), SpaError> {
        let chain_len = if condense {
            new_chain.len()
        } else {
            st.chain.len() + new_chain.len()
        };
        let head = new_chain
            .last()
            .or(st.chain.last())
            .copied()
            .unwrap_or_default();
        let ub = Uberblock {
            txg,
            pool_guid: self.guid,
            timestamp: now_secs(),
            config_generation: self.config.lock().generation,
            space_map: head,
            chain_len: chain_len as u32,
            root: root.to_vec(),
        };
        self.write_uberblock(&ub)?;
        for (v, d) in vdevs.iter().zip(deltas) {
            let mut a = v.alloc.lock();
            let ok = a.commit(d);
            assert!(ok, "allocator delta of vdev {} does not apply", v.id);
            a.release();
        }
        if condense {
            st.chain = new_chain;
        } else {
            st.chain.extend(new_chain);
        }
        st.last_txg = Some(txg);
        *self.last_root.lock() = Some((txg, root.to_vec()));
        // A device lost during the uberblock write itself holds the whole txg but not
        // its uberblock; marking it is best effort (the txg is durable either way, and a
        // device that cannot take the mark is faulted and reported by status).
        let _ = self.mark_lost_devices();
        Ok(())
    }

    fn write_uberblock(&self, ub: &Uberblock) -> Result<(), SpaError> {
        let bytes = Arc::new(format::encode_uberblock(ub));
        let mut subs = Vec::new();
        for leaf in self.all_leaves().into_iter().filter(|l| l.is_online()) {
            for lo in format::label_offsets(leaf.size()) {
                let s = leaf.submit_write(
                    bytes.clone(),
                    0..bytes.len(),
                    format::uberblock_offset(lo, ub.txg),
                );
                subs.push((leaf.clone(), s));
            }
        }
        let mut written = 0;
        for (leaf, s) in subs {
            if s.and_then(|p| leaf.wait(p)).is_ok() {
                written += 1;
            }
        }
        if written == 0 {
            return Err(SpaError::PoolFaulted {
                name: self.name.clone(),
                reason: "no device took the uberblock".into(),
            });
        }
        self.flush_all()
    }

    /// Persist that devices lost while the pool runs missed writes: they come back
    /// untrusted (resilvering) at the next import, so their stale blocks are never read
    /// in place of good ones while redundancy can serve.
    fn mark_lost_devices(&self) -> Result<(), SpaError> {
        let mut config = self.config.lock().clone();
        let mut changed = false;
        for v in self.vdevs.read().iter() {
            for (ci, leaf) in v.children.read().iter().enumerate() {
                let child = &mut config.vdevs[v.id as usize].children[ci];
                if !leaf.is_online() && leaf.state() != LeafState::Removed && !child.resilvering {
                    child.resilvering = true;
                    leaf.set_untrusted(true);
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(());
        }
        config.generation += 1;
        *self.config.lock() = config;
        self.write_labels()
    }

    /// The space map blocks of the last sync (the upper layer's scrub covers them too).
    pub fn space_map_blocks(&self) -> Vec<(Dva, u32, u64)> {
        self.sync
            .lock()
            .chain
            .iter()
            .map(|p| (p.dva, p.psize, p.checksum))
            .collect()
    }
}
