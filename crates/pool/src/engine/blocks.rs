//! Block I/O of the engine: reading and writing stored blocks with their checksums,
//! tree lookups and walks, the merged view of a block over its dirty layers, and the
//! small shared helpers of [`PoolInner`] (usability latch, dirty accounting, fill
//! threshold).
//!
//! Invariant: bytes are decoded only after the pointer's checksum matched.

use super::*;

/// A block's current bytes (None: zeros).
pub(super) type BlockBytes = Option<Arc<Vec<u8>>>;

/// The pointers of a level-1 indirect, or the hole above it standing for its blocks.
type Parent = std::result::Result<Arc<Vec<Bp>>, Bp>;

impl PoolInner {
    pub(super) fn new(
        store: Arc<dyn BlockStore>,
        opts: PoolOptions,
        pool_guid: u64,
        txg: u64,
    ) -> Self {
        PoolInner {
            store,
            cache: BlockCache::new(opts.cache_bytes),
            pool_guid,
            ro_threshold_pct: AtomicU64::new(u64::from(opts.ro_threshold_pct)),
            default_compression: Mutex::new(opts.compression),
            opts,
            commit: Mutex::new(CommitState::default()),
            txg: RwLock::new(txg),
            vols: RwLock::new(BTreeMap::new()),
            dirty_bytes: AtomicU64::new(0),
            log: Mutex::new(LogPending::default()),
            logw: Mutex::new(LogWriter {
                chain_id: random_u64(),
                ..LogWriter::default()
            }),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            meta_dirty: AtomicBool::new(false),
            bg: Mutex::new(Background::default()),
            bg_cv: Condvar::new(),
            inflight: Mutex::new(Inflight::default()),
            log_tail_dropped: Mutex::new(None),
            holds: Mutex::new(Holds::default()),
            last_committed: AtomicU64::new(txg.saturating_sub(1)),
            cut: Mutex::new(None),
            durable_seq: AtomicU64::new(0),
            boot: Mutex::new(records::Boot::default()),
            clean_close: AtomicBool::new(false),
            log_claims: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn check_usable(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PoolError::Closed("pool was closed".into()));
        }
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(PoolError::Closed(format!(
                "a previous commit failed ({f}); reopen the pool"
            )));
        }
        Ok(())
    }

    /// Release dirty-data charge. Saturating: an accounting bug must not wrap the counter
    /// and leave the pool throttled or read-only forever (tests assert it returns to 0).
    pub(super) fn undirty(&self, n: u64) {
        let prev = self
            .dirty_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| {
                Some(x.saturating_sub(n))
            })
            .unwrap_or(0);
        debug_assert!(prev >= n, "dirty accounting underflow: {prev} - {n}");
    }

    pub(super) fn fail(&self, e: &PoolError) {
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }

    pub(crate) fn vol(&self, name: &str) -> Result<Arc<Volume>> {
        self.vols
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| PoolError::UnknownVolume { name: name.into() })
    }

    pub(super) fn find_snap(&self, v: &Volume, snap: &str) -> Result<SnapRec> {
        v.meta
            .lock()
            .snapshots
            .iter()
            .find(|s| s.name == snap)
            .cloned()
            .ok_or_else(|| PoolError::UnknownSnapshot {
                volume: v.name.clone(),
                snapshot: snap.into(),
            })
    }

    pub(crate) fn volume_exists(&self, name: &str) -> bool {
        self.vols.read().contains_key(name)
    }

    pub(super) fn clones_of(&self, snap_guid: u64) -> Vec<String> {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        vols.iter()
            .filter(|v| v.meta.lock().origin_snap == Some(snap_guid))
            .map(|v| v.name.clone())
            .collect()
    }

    pub(super) fn snapshot_count(&self) -> usize {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        vols.iter().map(|v| v.meta.lock().snapshots.len()).sum()
    }

    pub(super) fn has_dirty(&self, v: &Volume) -> bool {
        let st = v.state.lock();
        // UNMAPped ranges are changes too (an UNMAP-only txg dirties no block).
        !st.open.is_empty()
            || !st.syncing.is_empty()
            || !st.open_frees.is_empty()
            || !st.syncing_frees.is_empty()
    }

    pub(super) fn volume_info(&self, v: &Volume) -> VolumeInfo {
        let meta = v.meta.lock().clone();
        let origin = meta.origin_snap.and_then(|g| {
            let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
            vols.iter().find_map(|o| {
                let m = o.meta.lock();
                m.snapshots
                    .iter()
                    .find(|s| s.guid == g)
                    .map(|s| format!("{}@{}", m.name, s.name))
            })
        });
        let io_number_max = v.tree.read().io_max;
        let (checkpoint, epoch) = {
            let r = v.records.lock();
            (r.checkpoint, r.epoch)
        };
        VolumeInfo {
            name: meta.name.clone(),
            guid: meta.guid,
            size: v.state.lock().size,
            block_size: meta.block_size,
            compression: meta.compression,
            used: meta.unique + meta.snap_held,
            referenced: meta.referenced,
            compression_ratio: ratio(meta.ref_lsize, meta.ref_psize_data),
            snapshots: meta.snapshots.iter().map(|s| s.name.clone()).collect(),
            origin,
            io_number_max,
            checkpoint,
            epoch,
            flush_point: self.flush_point_of(v),
        }
    }

    /// Writes are refused: the threshold counts dirty data twice (data plus worst-case
    /// indirect blocks), so acknowledged writes always fit in their commit.
    pub(super) fn over_threshold(&self) -> bool {
        self.over_threshold_with(self.dirty_bytes.load(Ordering::SeqCst).saturating_mul(2))
    }

    /// True when `pending_bytes` more allocation would cross the fill threshold or eat
    /// into the reserve kept for destroy and UNMAP.
    pub(super) fn over_threshold_with(&self, pending_bytes: u64) -> bool {
        let s = self.store.space();
        if s.size_bytes == 0 {
            return true;
        }
        let pct = self.ro_threshold_pct.load(Ordering::Relaxed);
        let reserve = s.size_bytes / 1000 * RESERVED_PER_MILLE;
        let allocated = s.allocated_bytes.saturating_add(pending_bytes);
        u128::from(allocated) * 100 >= u128::from(s.size_bytes) * u128::from(pct)
            || s.free_bytes.saturating_sub(pending_bytes) <= reserve
    }

    /// Refuse a write on a full pool; near the line a commit settles the real figure
    /// (dirty data turns into allocated bytes) first.
    pub(super) fn admit_write(&self) -> Result<()> {
        if self.over_threshold() {
            let mut cs = self.commit.lock();
            self.check_usable()?;
            self.commit_locked(&mut cs, None)?;
            drop(cs);
            if self.over_threshold() {
                return Err(PoolError::ReadOnly {
                    reason: format!(
                        "pool is at its {} % fill threshold; destroy snapshots or volumes, or UNMAP",
                        self.ro_threshold_pct.load(Ordering::Relaxed)
                    ),
                });
            }
        }
        Ok(())
    }

    // ---- block I/O ----

    pub(super) fn verify_fn(bp: &Bp) -> impl Fn(&[u8]) -> bool + Sync + '_ {
        move |b: &[u8]| checksum(b) == bp.cksum
    }

    /// A block's logical bytes: first the store's cheap unverified read, checked here
    /// once; a block that fails the check (or the cheap read) goes through
    /// [`Self::read_stored`], which tries every copy and heals. Why: the store's `read`
    /// verified with the pointer's checksum and then this layer checked again, two
    /// checksums per block, and the decode copied uncompressed blocks once more.
    pub(super) fn read_verified(&self, bp: &Bp) -> Result<Vec<u8>> {
        let fast = self
            .store
            .read_unverified(&[(bp.dva, bp.psize)])
            .pop()
            .flatten();
        self.verified_or_slow(bp, fast)
    }

    /// `fast` (unverified stored bytes of `bp`, if read) decoded when its checksum
    /// matches, else the block read through [`Self::read_stored`].
    pub(super) fn verified_or_slow(&self, bp: &Bp, fast: Option<Vec<u8>>) -> Result<Vec<u8>> {
        match fast {
            Some(stored) if stored.len() == bp.psize as usize && checksum(&stored) == bp.cksum => {
                decode_payload_owned(bp, stored)
            }
            _ => self.read_stored(bp),
        }
    }

    pub(super) fn read_stored(&self, bp: &Bp) -> Result<Vec<u8>> {
        let verify = Self::verify_fn(bp);
        let stored = self.store.read(bp.dva, bp.psize, &verify)?;
        // Paired with the store's check: never decode bytes the pointer does not vouch for.
        if checksum(&stored) != bp.cksum {
            return Err(PoolError::Corrupt {
                what: "block",
                reason: format!(
                    "store returned bytes failing the checksum at vdev {} offset {}",
                    bp.dva.vdev, bp.dva.offset
                ),
            });
        }
        decode_payload(bp, &stored)
    }

    pub(crate) fn read_data(&self, bp: &Bp) -> Result<Arc<Vec<u8>>> {
        debug_assert!(!bp.is_hole());
        let key = Key::of(bp);
        if let Some(Cached::Bytes(b)) = self.cache.get(&key) {
            return Ok(b);
        }
        let data = Arc::new(self.read_verified(bp)?);
        self.cache.insert(key, Cached::Bytes(data.clone()));
        Ok(data)
    }

    pub(crate) fn read_indirect(&self, bp: &Bp) -> Result<Arc<Vec<Bp>>> {
        debug_assert!(!bp.is_hole());
        let key = Key::of(bp);
        if let Some(Cached::Bps(b)) = self.cache.get(&key) {
            return Ok(b);
        }
        if bp.kind != Some(BlockKind::Indirect) && bp.kind != Some(BlockKind::DirIndex) {
            return Err(PoolError::Corrupt {
                what: "block pointer",
                reason: format!("expected an indirect block, found {:?}", bp.kind),
            });
        }
        let bps = Arc::new(decode_indirect(&self.read_verified(bp)?)?);
        self.cache.insert(key, Cached::Bps(bps.clone()));
        Ok(bps)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_block(
        &self,
        logical: &[u8],
        comp: Compression,
        kind: BlockKind,
        level: u8,
        class: AllocClass,
        txg: u64,
        io_max: u64,
    ) -> Result<Bp> {
        let enc = encode_payload(logical, comp);
        let stored = Arc::new(enc.bytes);
        let lsize = logical.len() as u32;
        let bp = Bp {
            lsize,
            comp: Some(enc.comp),
            kind: Some(kind),
            level,
            birth: txg,
            io_max,
            cksum: enc.cksum,
            ..Bp::default()
        };
        self.write_stored(stored, bp, class)
    }

    /// A data block: stored as is when not compressed (block sizes are whole sectors),
    /// sharing the dirty block's bytes with the device write instead of copying them.
    pub(super) fn write_data_block(
        &self,
        logical: &Arc<Vec<u8>>,
        comp: Compression,
        txg: u64,
        io: u64,
    ) -> Result<Bp> {
        if comp != Compression::Off || !logical.len().is_multiple_of(SECTOR_SIZE as usize) {
            return self.write_block(logical, comp, BlockKind::Data, 0, AllocClass::Data, txg, io);
        }
        let bp = Bp {
            lsize: logical.len() as u32,
            comp: Some(Compression::Off),
            kind: Some(BlockKind::Data),
            level: 0,
            birth: txg,
            io_max: io,
            cksum: checksum(logical),
            ..Bp::default()
        };
        self.write_stored(logical.clone(), bp, AllocClass::Data)
    }

    /// Allocate and start writing `stored` for pointer `bp` (all but its address and
    /// psize filled in): gathered into the commit's current run (see [`Inflight`]), which
    /// is started once it is full or the next block lies on another group; at most
    /// [`COMMIT_WRITES_IN_FLIGHT`] runs stay in flight.
    pub(super) fn write_stored(
        &self,
        stored: Arc<Vec<u8>>,
        mut bp: Bp,
        class: AllocClass,
    ) -> Result<Bp> {
        bp.psize = stored.len() as u32;
        bp.dva = self.store.alloc(bp.psize, class, bp.birth)?;
        let full = {
            let mut q = self.inflight.lock();
            let joins = q.run.last().is_some_and(|(d, _)| d.vdev == bp.dva.vdev)
                && q.run_bytes + u64::from(bp.psize) <= COMMIT_RUN_BYTES;
            let full = if joins || q.run.is_empty() {
                None
            } else {
                q.run_bytes = 0;
                Some(std::mem::take(&mut q.run))
            };
            q.run.push((bp.dva, stored));
            q.run_bytes += u64::from(bp.psize);
            full
        };
        if let Some(run) = full {
            let wait = self.store.write_start_many(run)?;
            let oldest = {
                let mut q = self.inflight.lock();
                q.started.push_back(wait);
                if q.started.len() > COMMIT_WRITES_IN_FLIGHT {
                    q.started.pop_front()
                } else {
                    None
                }
            };
            if let Some(w) = oldest {
                w()?;
            }
        }
        Ok(bp)
    }

    /// Free a block killed in commit `txg`: handed to the store by
    /// [`Self::release_frees`] once no [`RootHold`] may still reach it.
    pub(super) fn free_block(&self, bp: &Bp, txg: u64) {
        if bp.is_hole() {
            return;
        }
        self.cache.remove(&Key::of(bp));
        self.holds.lock().deferred.push((txg, bp.dva));
    }

    /// Take a [`RootHold`] (before reading the root to walk).
    pub(crate) fn hold_roots(&self) -> RootHold<'_> {
        let mut h = self.holds.lock();
        // Under the holds lock: a commit deciding its frees sees this hold, or has
        // published every root it changed before this reader reads one.
        let after_txg = self.last_committed.load(Ordering::SeqCst) + 1;
        *h.active.entry(after_txg).or_insert(0) += 1;
        RootHold {
            pool: self,
            after_txg,
        }
    }

    /// Hand to the store, in commit `txg` (before its uberblock), every deferred free
    /// that no active hold may reach: those of txgs before the oldest hold's first txg.
    pub(super) fn release_frees(&self, txg: u64) {
        let ready: Vec<Dva> = {
            let mut h = self.holds.lock();
            let oldest = h.active.keys().next().copied().unwrap_or(u64::MAX);
            let (ready, kept): (Vec<_>, Vec<_>) =
                h.deferred.drain(..).partition(|(t, _)| *t < oldest);
            h.deferred = kept;
            ready.into_iter().map(|(_, d)| d).collect()
        };
        for dva in ready {
            self.store.free(dva, txg);
        }
    }

    /// The data pointer of block `blk` in a tree (a hole if never written).
    pub(super) fn lookup(&self, root: &Bp, levels: u8, blk: u64) -> Result<Bp> {
        let mut bp = *root;
        let mut level = levels;
        while level > 0 {
            if bp.is_hole() {
                // A collapsed hole keeps the io of the UNMAP that made it.
                return Ok(Bp::hole(bp.birth, bp.io_max, 0));
            }
            let bps = self.read_indirect(&bp)?;
            let idx = ((blk / span_blocks(level - 1)) % BPS_PER_INDIRECT as u64) as usize;
            bp = bps[idx];
            level -= 1;
        }
        Ok(bp)
    }

    /// The level-1 indirect's pointers above data block `blk` (`Err(hole)`: a hole above
    /// it, standing for the block): neighbouring blocks share it, so a read of many
    /// blocks walks the tree once per 256 of them. With `nowait`, `None` when an indirect
    /// block is neither in the block cache nor in the page cache.
    fn lookup_parent(
        &self,
        root: &Bp,
        levels: u8,
        blk: u64,
        nowait: bool,
    ) -> Result<Option<Parent>> {
        let mut bp = *root;
        let mut level = levels;
        loop {
            if bp.is_hole() {
                return Ok(Some(Err(Bp::hole(bp.birth, bp.io_max, 0))));
            }
            let bps = if nowait {
                match self.read_indirect_nowait(&bp)? {
                    Some(b) => b,
                    None => return Ok(None),
                }
            } else {
                self.read_indirect(&bp)?
            };
            if level <= 1 {
                return Ok(Some(Ok(bps)));
            }
            let idx = ((blk / span_blocks(level - 1)) % BPS_PER_INDIRECT as u64) as usize;
            bp = bps[idx];
            level -= 1;
        }
    }

    /// [`Self::read_indirect`] from the block cache or the page cache only.
    fn read_indirect_nowait(&self, bp: &Bp) -> Result<Option<Arc<Vec<Bp>>>> {
        if let Some(Cached::Bps(b)) = self.cache.get(&Key::of(bp)) {
            return Ok(Some(b));
        }
        if bp.kind != Some(BlockKind::Indirect) && bp.kind != Some(BlockKind::DirIndex) {
            return Ok(None);
        }
        let Some(stored) = self
            .store
            .read_cached(&[(bp.dva, bp.psize)])
            .pop()
            .flatten()
        else {
            return Ok(None);
        };
        if stored.len() != bp.psize as usize || checksum(&stored) != bp.cksum {
            return Ok(None);
        }
        let bps = Arc::new(decode_indirect(&decode_payload_owned(bp, stored)?)?);
        self.cache.insert(Key::of(bp), Cached::Bps(bps.clone()));
        Ok(Some(bps))
    }

    /// Current contents of blocks `first..first + n` of a volume (None: zeros), as
    /// [`Self::block_contents`] gives them one by one. Why: a read of many blocks paid a
    /// tree walk, a device request and a wait per block, in a row. Here blocks with no
    /// dirty layer are looked up under one hold of the tree lock, the cache misses are
    /// read in one batch ([`BlockStore::read_unverified`]: neighbours merged, all in
    /// flight at once) and verified once each; blocks under a dirty layer or an UNMAP of
    /// an open txg go through [`Self::block_contents`].
    ///
    /// A read of [`STREAM_READ_BLOCKS`] blocks or more leaves the data blocks it read out of
    /// the block cache. Why: such reads stream (128 KiB and 1 MiB sequential reads), a
    /// working set larger than the cache only evicted and reinserted entries on every
    /// call (allocator and hash-map work was about a tenth of a 128 KiB read's CPU, perf,
    /// session 9), and the devices' page cache already holds those bytes.
    ///
    /// With `nowait`, `None` as soon as a block would need device I/O (it is in neither
    /// the block cache, nor the page cache, nor a dirty layer that covers it whole):
    /// never waits for a device, so an async thread may call it.
    pub(super) fn blocks_contents(
        &self,
        v: &Volume,
        first: u64,
        n: usize,
        nowait: bool,
    ) -> Result<Option<Vec<BlockBytes>>> {
        let layered: Vec<bool> = {
            let st = v.state.lock();
            let mut layered = Vec::with_capacity(n);
            for b in first..first + n as u64 {
                let (o, s) = (st.open.get(&b), st.syncing.get(&b));
                let (fo, fs) = (
                    range_covers(&st.open_frees, b).is_some(),
                    range_covers(&st.syncing_frees, b).is_some(),
                );
                let l = o.is_some() || s.is_some() || fo || fs;
                // Without a device read only if a layer ends the lookup above the tree.
                let whole =
                    |d: Option<&Dirty>| matches!(d, Some(Dirty::Data { .. } | Dirty::Hole { .. }));
                if nowait && l && !(whole(o) || fo || whole(s) || fs) {
                    return Ok(None);
                }
                layered.push(l);
            }
            layered
        };
        let mut out: Vec<Option<Arc<Vec<u8>>>> = vec![None; n];
        {
            // Held over the reads, as for one block: a commit cannot publish a root
            // (and so free these blocks) under this reader.
            let tree = v.tree.read();
            let mut misses: Vec<(usize, Bp)> = Vec::new();
            let mut parent: Option<(u64, Parent)> = None;
            for i in 0..n {
                if layered[i] {
                    continue;
                }
                let blk = first + i as u64;
                let group = blk / BPS_PER_INDIRECT as u64;
                if parent.as_ref().is_none_or(|(g, _)| *g != group) {
                    match self.lookup_parent(&tree, v.levels, blk, nowait)? {
                        Some(p) => parent = Some((group, p)),
                        None => return Ok(None),
                    }
                }
                let bp = match parent.as_ref().map(|(_, p)| p) {
                    Some(Ok(bps)) => bps[(blk % BPS_PER_INDIRECT as u64) as usize],
                    Some(Err(hole)) => *hole,
                    None => continue,
                };
                if bp.is_hole() {
                    continue;
                }
                match self.cache.get(&Key::of(&bp)) {
                    Some(Cached::Bytes(d)) => out[i] = Some(d),
                    _ => misses.push((i, bp)),
                }
            }
            if !misses.is_empty() {
                let reqs: Vec<(Dva, u32)> =
                    misses.iter().map(|(_, bp)| (bp.dva, bp.psize)).collect();
                let fast = if nowait {
                    self.store.read_cached(&reqs)
                } else {
                    self.store.read_unverified(&reqs)
                };
                for ((i, bp), f) in misses.iter().zip(fast) {
                    let ok = f
                        .as_ref()
                        .is_some_and(|s| s.len() == bp.psize as usize && checksum(s) == bp.cksum);
                    let d = match f {
                        Some(stored) if ok => decode_payload_owned(bp, stored)?,
                        // Not in the page cache, or bad there: only a device read (with
                        // every copy and healing) can answer.
                        _ if nowait => return Ok(None),
                        _ => self.read_stored(bp)?,
                    };
                    let d = Arc::new(d);
                    if n < STREAM_READ_BLOCKS {
                        self.cache.insert(Key::of(bp), Cached::Bytes(d.clone()));
                    }
                    out[*i] = Some(d);
                }
            }
        }
        for i in (0..n).filter(|&i| layered[i]) {
            out[i] = self.block_contents(v, first + i as u64)?;
        }
        Ok(Some(out))
    }

    /// Current contents of block `blk` of a volume (None: zeros): the open txg's dirty
    /// block, over the syncing txg's, over the committed tree.
    pub(super) fn block_contents(&self, v: &Volume, blk: u64) -> Result<Option<Arc<Vec<u8>>>> {
        self.block_contents_io(v, blk).map(|(d, _)| d)
    }

    /// [`Self::block_contents`] with the block's io: that of the newest layer the bytes
    /// came from (the same view as the bytes).
    pub(super) fn block_contents_io(
        &self,
        v: &Volume,
        blk: u64,
    ) -> Result<(Option<Arc<Vec<u8>>>, u64)> {
        let mut overlays: Vec<(Arc<Vec<u8>>, [u64; MAX_SECTORS / 64])> = Vec::new();
        // The io of the newest overlay found (the block's io whatever lies under it).
        let mut top_io: Option<u64> = None;
        {
            let st = v.state.lock();
            let zeros = |overlays: &[(Arc<Vec<u8>>, [u64; MAX_SECTORS / 64])]| {
                if overlays.is_empty() {
                    None
                } else {
                    Some(Self::merge(None, overlays))
                }
            };
            let layers = [
                (st.open.get(&blk), &st.open_frees[..]),
                (st.syncing.get(&blk), &st.syncing_frees[..]),
            ];
            for (d, frees) in layers {
                match d {
                    Some(Dirty::Data { data, io }) => {
                        let io = top_io.unwrap_or(*io);
                        return Ok((Some(Self::merge(Some(data.clone()), &overlays)), io));
                    }
                    Some(Dirty::Hole { io }) => {
                        return Ok((zeros(&overlays), top_io.unwrap_or(*io)))
                    }
                    Some(Dirty::Partial { data, valid, io }) => {
                        top_io.get_or_insert(*io);
                        overlays.push((data.clone(), *valid))
                    }
                    None => {}
                }
                // A range freed in this txg lies under this txg's dirty blocks.
                if let Some(io) = range_covers(frees, blk) {
                    return Ok((zeros(&overlays), top_io.unwrap_or(io)));
                }
            }
        }
        // The syncing overlay may be committed meanwhile; laying it over the new tree
        // gives the same bytes.
        let (base, tree_io) = {
            let tree = v.tree.read();
            let bp = self.lookup(&tree, v.levels, blk)?;
            if bp.is_hole() {
                (None, bp.io_max)
            } else {
                (Some(self.read_data(&bp)?), bp.io_max)
            }
        };
        let io = top_io.unwrap_or(tree_io);
        if overlays.is_empty() {
            return Ok((base, io));
        }
        let bs = v.block_size as usize;
        let base = base.unwrap_or_else(|| Arc::new(vec![0u8; bs]));
        Ok((Some(Self::merge(Some(base), &overlays)), io))
    }

    /// `base` (None: zeros of the overlays' size) with overlays laid on, the last in the
    /// list first (it is the oldest).
    pub(super) fn merge(
        base: Option<Arc<Vec<u8>>>,
        overlays: &[(Arc<Vec<u8>>, [u64; MAX_SECTORS / 64])],
    ) -> Arc<Vec<u8>> {
        if overlays.is_empty() {
            return base.unwrap_or_default();
        }
        let len = overlays[0].0.len();
        let mut out = base.map_or_else(|| vec![0u8; len], |b| b.to_vec());
        for (data, valid) in overlays.iter().rev() {
            overlay(&mut out, data, valid);
        }
        Arc::new(out)
    }

    // ---- walks ----

    /// Depth-first walk: `descend(bp)` decides whether a pointer is visited; `visit(blk,
    /// bp)` gets every visited data pointer and every visited hole (at any level).
    pub(crate) fn walk(
        &self,
        bp: &Bp,
        level: u8,
        first_blk: u64,
        descend: &mut dyn FnMut(&Bp) -> bool,
        visit: &mut dyn FnMut(u64, &Bp) -> Result<()>,
    ) -> Result<()> {
        if !descend(bp) {
            return Ok(());
        }
        if level == 0 || bp.is_hole() {
            let mut b = *bp;
            b.level = level;
            return visit(first_blk, &b);
        }
        let bps = self.read_indirect(bp)?;
        let span = span_blocks(level - 1);
        for (i, child) in bps.iter().enumerate() {
            self.walk(
                child,
                level - 1,
                first_blk + i as u64 * span,
                descend,
                visit,
            )?;
        }
        Ok(())
    }

    /// Walk every stored block (data and indirect) of a tree born after `after_txg`.
    pub(super) fn walk_blocks(
        &self,
        bp: &Bp,
        level: u8,
        after_txg: u64,
        f: &mut dyn FnMut(&Bp) -> Result<()>,
    ) -> Result<()> {
        if bp.is_hole() || bp.birth <= after_txg {
            return Ok(());
        }
        if level > 0 {
            let bps = self.read_indirect(bp)?;
            for child in bps.iter() {
                self.walk_blocks(child, level - 1, after_txg, f)?;
            }
        }
        f(bp)
    }

    /// Blocks of tree `a` born after `after_txg` that tree `b` does not share at the same
    /// position: freed in `free_txg` when given, else only counted. Returns their bytes.
    pub(super) fn diff_free(
        &self,
        v: &Volume,
        a: Bp,
        b: Bp,
        level: u8,
        after_txg: u64,
        free_txg: Option<u64>,
    ) -> Result<u64> {
        let _ = v;
        if a.is_hole() || a.birth <= after_txg || (a.dva == b.dva && a.cksum == b.cksum) {
            return Ok(0);
        }
        let mut bytes = u64::from(a.psize);
        if level > 0 {
            let ac = self.read_indirect(&a)?;
            let bc = if b.is_hole() {
                None
            } else {
                Some(self.read_indirect(&b)?)
            };
            for (i, child) in ac.iter().enumerate() {
                let other = bc.as_ref().map_or(Bp::default(), |c| c[i]);
                bytes += self.diff_free(v, *child, other, level - 1, after_txg, free_txg)?;
            }
        }
        if let Some(txg) = free_txg {
            self.free_block(&a, txg);
        }
        Ok(bytes)
    }
}
