//! Txg commit: closing the open txg, writing dirty data bottom-up (copy-on-write), then
//! the directory, the intent-log head and the root.
//!
//! Invariant: nothing is reachable from a durable root before it is written; a failed
//! commit latches the pool failed.

use super::*;

impl PoolInner {
    // ---- commit ----

    pub(super) fn commit_locked(&self, cs: &mut CommitState, op: Option<DirOp<'_>>) -> Result<u64> {
        let r = self.commit_inner(cs, op);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    /// Wait until every block write started by this commit is done; the first error.
    pub(super) fn drain_writes(&self) -> Result<()> {
        let (run, waits) = {
            let mut q = self.inflight.lock();
            q.run_bytes = 0;
            (std::mem::take(&mut q.run), std::mem::take(&mut q.started))
        };
        let mut first = Ok(());
        let mut waits: Vec<WriteWait> = waits.into();
        if !run.is_empty() {
            match self.store.write_start_many(run) {
                Ok(w) => waits.push(w),
                Err(e) => first = Err(e.into()),
            }
        }
        for w in waits {
            if let (Err(e), Ok(())) = (w(), &first) {
                first = Err(e.into());
            }
        }
        first
    }

    pub(super) fn commit_inner(&self, cs: &mut CommitState, op: Option<DirOp<'_>>) -> Result<u64> {
        self.check_usable()?;
        let r = self.commit_body(cs, op);
        // On error too: no write of this commit outlives it.
        let drained = self.drain_writes();
        let txg = r?;
        drained?;
        Ok(txg)
    }

    pub(super) fn commit_body(&self, cs: &mut CommitState, op: Option<DirOp<'_>>) -> Result<u64> {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        let mut synced_bytes = 0u64;
        let txg = {
            let mut t = self.txg.write();
            let txg = *t;
            *t += 1;
            // With every writer excluded: does the open txg hold a write at or above a
            // requested io cut?
            if let Some((guid, n, ok)) = self.cut.lock().as_mut() {
                *ok = vols
                    .iter()
                    .find(|v| v.guid == *guid)
                    .map(|v| v.io.lock().seen_max < *n);
            }
            for v in &vols {
                let mut st = v.state.lock();
                let open = std::mem::take(&mut st.open);
                synced_bytes += open.len() as u64 * u64::from(v.block_size);
                st.syncing = Arc::new(open);
                let props = std::mem::take(&mut st.open_props);
                st.syncing_props.extend(props);
                let frees = std::mem::take(&mut st.open_frees);
                synced_bytes += frees.len() as u64 * FREE_RANGE_CHARGE_BYTES;
                st.syncing_frees = Arc::new(frees);
                if let Some(c) = st.open_checkpoint.take() {
                    st.syncing_checkpoint = Some(c);
                }
            }
            txg
        };
        assert!(txg > cs.last_txg, "txg {txg} not after {}", cs.last_txg);
        for v in &vols {
            self.sync_volume(v, txg)?;
        }
        if let Some(op) = op {
            op(self, txg)?;
            self.drain_writes()?;
        }
        let dir = self.write_directory(cs, txg)?;
        self.drain_writes()?;
        let (log, trim) = self.log_commit(txg)?;
        let root = Root {
            pool_guid: self.pool_guid,
            txg,
            dir,
            log,
        };
        self.release_frees(txg);
        self.store.sync(txg, &root.encode())?;
        cs.last_txg = txg;
        self.last_committed.store(txg, Ordering::SeqCst);
        for (v, reserved) in cs.io_written.drain(..) {
            let mut io = v.io.lock();
            io.durable = io.durable.max(reserved);
        }
        for (v, c) in cs.checkpoint_written.drain(..) {
            v.records.lock().checkpoint = c;
        }
        self.log_trim(trim);
        self.undirty(synced_bytes);
        let mut log = self.log.lock();
        let mut dropped = 0u64;
        log.records.retain(|r| {
            if r.txg <= txg {
                dropped += r.mem_bytes();
                false
            } else {
                true
            }
        });
        log.bytes -= dropped;
        self.undirty(dropped);
        Ok(txg)
    }

    pub(super) fn sync_volume(&self, v: &Volume, txg: u64) -> Result<()> {
        {
            // Meta before state (lock order), so a reader never sees neither copy.
            let mut meta = v.meta.lock();
            let (props, checkpoint) = {
                let mut st = v.state.lock();
                (
                    std::mem::take(&mut st.syncing_props),
                    st.syncing_checkpoint.take(),
                )
            };
            for (k, val) in props {
                meta.properties.insert(k, val);
            }
            if let Some(c) = checkpoint {
                meta.checkpoint = c;
            }
        }
        let (syncing, frees) = {
            let st = v.state.lock();
            (st.syncing.clone(), st.syncing_frees.clone())
        };
        if syncing.is_empty() && frees.is_empty() {
            return Ok(());
        }
        let mut meta = v.meta.lock();
        let old_root = *v.tree.read();
        let dirty: Vec<(u64, &Dirty)> = syncing.iter().map(|(k, d)| (*k, d)).collect();
        let mut pre = self.prefetch_partials(v, &old_root, &dirty, &frees);
        let new_root = self.apply(
            v, &mut meta, old_root, v.levels, 0, &dirty, &frees, &mut pre, txg,
        )?;
        // Readers follow the new root as soon as it is set: its blocks must be written.
        self.drain_writes()?;
        meta.root = new_root;
        *v.tree.write() = new_root;
        drop(meta);
        let mut st = v.state.lock();
        st.syncing = Arc::new(BTreeMap::new());
        st.syncing_frees = Arc::new(Vec::new());
        Ok(())
    }

    /// Read the old blocks under partial writes (sector overlays) before the commit walks
    /// the tree one block at a time. Bounded by the dirty data (each overlay is charged a
    /// whole block). A block whose read or check fails is left out: the walk reads it
    /// again through [`Self::read_data`] (every copy, healing) and reports the error.
    ///
    /// Why batches through [`BlockStore::read_unverified`] and no reader threads: four
    /// reader threads each read one block at a time through the device threads, so every
    /// old block cost a hand-off to a device thread and back plus a spin; on 4 KiB random
    /// writes to raidz the readers, the device threads and their wake-ups took over half
    /// the target's CPU (perf, session 9) and the commit, which writers wait on, ran at
    /// that pace. A batch reads what the page cache holds on this thread, merges
    /// neighbours into one request and queues the rest all at once.
    pub(super) fn prefetch_partials(
        &self,
        v: &Volume,
        root: &Bp,
        dirty: &[(u64, &Dirty)],
        frees: &[FreeRange],
    ) -> Prefetched {
        let mut out = Prefetched::new();
        let mut wanted: Vec<(u64, Bp)> = Vec::new();
        for (b, d) in dirty {
            if !matches!(d, Dirty::Partial { .. }) || range_covers(frees, *b).is_some() {
                continue;
            }
            let Ok(bp) = self.lookup(root, v.levels, *b) else {
                continue;
            };
            if bp.is_hole() {
                continue;
            }
            match self.cache.get(&Key::of(&bp)) {
                Some(Cached::Bytes(c)) => {
                    out.insert(*b, (bp, c.to_vec()));
                }
                _ => wanted.push((*b, bp)),
            }
        }
        for batch in wanted.chunks(COMMIT_PREFETCH_BATCH) {
            let reqs: Vec<(Dva, u32)> = batch.iter().map(|(_, bp)| (bp.dva, bp.psize)).collect();
            for ((b, bp), stored) in batch.iter().zip(self.store.read_unverified(&reqs)) {
                let Some(stored) = stored else { continue };
                if stored.len() != bp.psize as usize || checksum(&stored) != bp.cksum {
                    continue;
                }
                if let Ok(d) = decode_payload_owned(bp, stored) {
                    out.insert(*b, (*bp, d));
                }
            }
        }
        out
    }

    pub(super) fn born(meta: &mut VolRec, bp: &Bp) {
        if bp.is_hole() {
            return;
        }
        meta.referenced += u64::from(bp.psize);
        meta.unique += u64::from(bp.psize);
        if bp.level == 0 {
            meta.ref_lsize += u64::from(bp.lsize);
            meta.ref_psize_data += u64::from(bp.psize);
        }
    }

    pub(super) fn kill(&self, meta: &mut VolRec, bp: &Bp, txg: u64) {
        if bp.is_hole() {
            return;
        }
        let psize = u64::from(bp.psize);
        meta.referenced -= psize;
        if bp.level == 0 {
            meta.ref_lsize -= u64::from(bp.lsize);
            meta.ref_psize_data -= psize;
        }
        if bp.birth > meta.origin_txg {
            meta.unique -= psize;
        }
        if bp.birth > prev_snap_txg(meta) {
            self.free_block(bp, txg);
        } else if bp.birth > meta.origin_txg {
            meta.snap_held += psize;
        }
    }

    /// Copy-on-write the dirty blocks `dirty` (sorted, all under `bp`) into a new subtree.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &self,
        v: &Volume,
        meta: &mut VolRec,
        bp: Bp,
        level: u8,
        first_blk: u64,
        dirty: &[(u64, &Dirty)],
        frees: &[FreeRange],
        pre: &mut Prefetched,
        txg: u64,
    ) -> Result<Bp> {
        assert!(level > 0, "apply is called on indirect levels");
        let mut children: Vec<Bp> = if bp.is_hole() {
            // Children inherit a hole's birth and io number: an UNMAP recorded in a
            // collapsed hole must stay visible to incremental sends and `changed_since`.
            vec![Bp::hole(bp.birth, bp.io_max, level - 1); BPS_PER_INDIRECT]
        } else {
            self.read_indirect(&bp)?.to_vec()
        };
        let span = span_blocks(level - 1);
        let node_end = first_blk.saturating_add(span * BPS_PER_INDIRECT as u64);
        // Children touched by a dirty block or a free range, in order.
        let mut touched = std::collections::BTreeSet::new();
        for (blk, _) in dirty {
            let idx = ((blk - first_blk) / span) as usize;
            assert!(idx < BPS_PER_INDIRECT, "dirty block outside its subtree");
            touched.insert(idx);
        }
        let frees: Vec<FreeRange> = frees
            .iter()
            .filter(|f| f.first < node_end && f.end > first_blk)
            .copied()
            .collect();
        for f in &frees {
            let a = (f.first.max(first_blk) - first_blk) / span;
            let b = (f.end.min(node_end) - 1 - first_blk) / span;
            touched.extend(a as usize..=b as usize);
        }
        for idx in touched {
            let c0 = first_blk + idx as u64 * span;
            let c1 = c0 + span;
            let lo = dirty.partition_point(|(b, _)| *b < c0);
            let hi = dirty.partition_point(|(b, _)| *b < c1);
            let child_dirty = &dirty[lo..hi];
            let old = children[idx];
            children[idx] = if level == 1 {
                let freed = range_covers(&frees, c0);
                match child_dirty.first() {
                    Some((b, d)) => {
                        // Only if the block is still the one prefetched (it always is: the
                        // commit lock keeps the tree still). Taken, not copied: each
                        // prefetched block serves one dirty block, and the overlay is
                        // made on these bytes (a copy of the old block per partial write
                        // was a 16 KiB memcpy per 4 KiB random write).
                        let old_bytes = pre.remove(b).filter(|(p, _)| *p == old).map(|(_, d)| d);
                        self.apply_data(v, meta, old, d, old_bytes, freed.is_some(), txg)?
                    }
                    None => {
                        let io = freed.unwrap_or(0);
                        self.kill(meta, &old, txg);
                        Bp::hole(txg, io, 0)
                    }
                }
            } else {
                // The newest free range covering the whole child, unless a newer one
                // covers part of it: its blocks carry the newer io, so the child is
                // walked block by block instead of collapsing under the older io.
                let whole = frees
                    .iter()
                    .rposition(|f| f.first <= c0 && c1 <= f.end)
                    .filter(|&i| !frees[i + 1..].iter().any(|f| f.first < c1 && f.end > c0))
                    .map(|i| frees[i]);
                match (child_dirty.is_empty(), whole) {
                    (true, Some(f)) => {
                        self.kill_subtree(meta, &old, level - 1, txg)?;
                        Bp::hole(txg, f.io, level - 1)
                    }
                    _ => self.apply(v, meta, old, level - 1, c0, child_dirty, &frees, pre, txg)?,
                }
            };
        }
        self.kill(meta, &bp, txg);
        let io_max = children.iter().map(|c| c.io_max).max().unwrap_or(0);
        // An all-hole node collapses into one hole only when every child carries the same
        // io: a collapsed hole stands for each block under it with its io, so mixing a
        // never-written block (io 0) with an UNMAP's hole would make io-range walks list
        // blocks no write touched, and hide an older UNMAP from a walk bounded below a
        // newer one.
        if children.iter().all(Bp::is_hole) && children.iter().all(|c| c.io_max == io_max) {
            let birth = children.iter().map(|c| c.birth).max().unwrap_or(0);
            return Ok(Bp::hole(birth, io_max, level));
        }
        let new = self.write_block(
            &encode_indirect(&children),
            Compression::Lz4,
            BlockKind::Indirect,
            level,
            AllocClass::Metadata,
            txg,
            io_max,
        )?;
        self.cache
            .insert(Key::of(&new), Cached::Bps(Arc::new(children)));
        Self::born(meta, &new);
        Ok(new)
    }

    /// New pointer for one dirty data block; `freed`: an UNMAP of this txg covered it
    /// before the dirty write, so an overlay lies over zeros, not the old block.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_data(
        &self,
        v: &Volume,
        meta: &mut VolRec,
        old: Bp,
        d: &Dirty,
        old_bytes: Option<Vec<u8>>,
        freed: bool,
        txg: u64,
    ) -> Result<Bp> {
        let (data, io) = match d {
            Dirty::Hole { io } => (None, *io),
            Dirty::Data { data, io } => (Some(data.clone()), *io),
            Dirty::Partial { data, valid, io } => {
                // The old block is read here, in the commit, not in the write.
                let mut base = if old.is_hole() || freed {
                    vec![0u8; v.block_size as usize]
                } else if let Some(b) = old_bytes {
                    b
                } else {
                    self.read_data(&old)?.to_vec()
                };
                overlay(&mut base, data, valid);
                (Some(Arc::new(base)), *io)
            }
        };
        self.kill(meta, &old, txg);
        let new = match data {
            // A block of zeros is stored as a hole: thin, and UNMAP-equivalent.
            Some(d) if d.iter().any(|&b| b != 0) => {
                self.write_data_block(&d, v.compression, txg, io)?
            }
            _ => Bp::hole(txg, io, 0),
        };
        Self::born(meta, &new);
        Ok(new)
    }

    /// Kill every block of a subtree (freeing those no snapshot holds).
    pub(super) fn kill_subtree(
        &self,
        meta: &mut VolRec,
        bp: &Bp,
        level: u8,
        txg: u64,
    ) -> Result<()> {
        if bp.is_hole() {
            return Ok(());
        }
        if level > 0 {
            let bps = self.read_indirect(bp)?;
            for c in bps.iter() {
                self.kill_subtree(meta, c, level - 1, txg)?;
            }
        }
        self.kill(meta, bp, txg);
        Ok(())
    }
}
