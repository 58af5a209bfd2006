//! The public [`Pool`] API: create, open, volumes, snapshots, clones, rollback, destroy,
//! properties, changed ranges, sync and flush, send/receive entry points.
//!
//! Owns: nothing of its own; every call takes the engine locks in the order given in
//! [`super`] and hands commits to `commit.rs`.

use super::*;

impl Pool {
    /// Create a new pool's block tree on an empty store and commit its first txg.
    pub fn create(store: Arc<dyn BlockStore>, opts: PoolOptions) -> Result<Pool> {
        if store.last_root().is_some() {
            return Err(PoolError::Exists {
                name: "pool root (the store already holds a pool)".into(),
            });
        }
        if opts.ro_threshold_pct == 0 || opts.ro_threshold_pct > 100 {
            return Err(PoolError::Invalid(format!(
                "read-only threshold {} must be 1..=100 %",
                opts.ro_threshold_pct
            )));
        }
        let inner = Arc::new(PoolInner::new(store, opts.clone(), random_u64(), 1));
        *inner.boot.lock() = records::Boot::new_pool(&opts);
        {
            let mut cs = inner.commit.lock();
            inner.commit_locked(&mut cs, None)?;
        }
        Ok(Pool::start(inner))
    }

    /// Open a pool's block tree from the store's newest root and replay its intent log.
    pub fn open(store: Arc<dyn BlockStore>, opts: PoolOptions) -> Result<Pool> {
        let (txg, bytes) = store.last_root().ok_or_else(|| PoolError::Corrupt {
            what: "pool root",
            reason: "the store holds no root (not a created pool)".into(),
        })?;
        let root = Root::decode(&bytes)?;
        if root.txg != txg {
            return Err(PoolError::Corrupt {
                what: "pool root",
                reason: format!("root txg {} in uberblock of txg {txg}", root.txg),
            });
        }
        let inner = Arc::new(PoolInner::new(store, opts, root.pool_guid, txg + 1));
        let dir = inner.read_directory(&root.dir)?;
        // The marker is cleared by the replay's commit below, before the open returns.
        *inner.boot.lock() = records::Boot::at_open(&inner.opts, &dir);
        inner
            .ro_threshold_pct
            .store(u64::from(dir.ro_threshold_pct), Ordering::Relaxed);
        *inner.default_compression.lock() = dir.compression;
        let earlier_claims: Vec<Dva> = dir
            .log_claims
            .iter()
            .map(|&(vdev, offset, asize)| Dva {
                vdev,
                offset,
                asize,
            })
            .collect();
        {
            let mut vols = inner.vols.write();
            for v in dir.volumes {
                vols.insert(v.name.clone(), Volume::from_rec(v));
            }
        }
        {
            let mut cs = inner.commit.lock();
            let (blocks, segments) = inner.dir_layout(&root.dir)?;
            cs.dir_blocks = blocks;
            cs.dir_segments = segments;
            cs.last_txg = txg;
        }
        inner.replay(&root, earlier_claims)?;
        inner.cleanup_receiving()?;
        Ok(Pool::start(inner))
    }

    pub(super) fn start(inner: Arc<PoolInner>) -> Pool {
        let thread = if inner.opts.background_commit {
            let p = inner.clone();
            Some(std::thread::spawn(move || p.background()))
        } else {
            None
        };
        Pool {
            inner,
            thread: Mutex::new(thread),
        }
    }

    /// Pool guid.
    pub fn guid(&self) -> u64 {
        self.inner.pool_guid
    }

    /// The intent-log tail the open dropped ([`PoolOptions::discard_log_tail`]), if any.
    pub fn log_tail_dropped(&self) -> Option<DroppedLogTail> {
        self.inner.log_tail_dropped.lock().clone()
    }

    /// Create a thin volume. `block_size` defaults to [`DEFAULT_BLOCK_BYTES`],
    /// `compression` to the pool's.
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: Option<u32>,
        compression: Option<Compression>,
    ) -> Result<VolumeHandle> {
        check_name(name, "volume")?;
        check_size(size_bytes)?;
        let bs = block_size.unwrap_or(DEFAULT_BLOCK_BYTES);
        check_block_size(bs)?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        {
            let vols = p.vols.read();
            if vols.contains_key(name) {
                return Err(PoolError::Exists { name: name.into() });
            }
            if vols.len() >= MAX_VOLUMES {
                return Err(PoolError::Invalid(format!(
                    "pool holds the maximum of {MAX_VOLUMES} volumes"
                )));
            }
        }
        let comp = compression.unwrap_or(*p.default_compression.lock());
        let rec = VolRec::empty(
            name.into(),
            random_u64(),
            size_bytes,
            bs,
            levels_for(bs),
            comp,
        );
        self.add_volume(&mut cs, rec)
    }

    pub(super) fn add_volume(&self, cs: &mut CommitState, mut rec: VolRec) -> Result<VolumeHandle> {
        let p = &self.inner;
        rec.created_txg = *p.txg.read();
        let vol = Volume::from_rec(rec);
        p.vols.write().insert(vol.name.clone(), vol.clone());
        p.commit_locked(cs, None)?;
        Ok(VolumeHandle {
            pool: p.clone(),
            vol,
        })
    }

    /// A handle to a volume.
    pub fn volume(&self, name: &str) -> Result<VolumeHandle> {
        let vol = self.inner.vol(name)?;
        Ok(VolumeHandle {
            pool: self.inner.clone(),
            vol,
        })
    }

    /// Every volume (receives in progress excluded), by name.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let vols: Vec<Arc<Volume>> = self.inner.vols.read().values().cloned().collect();
        // Receives in progress are not volumes yet: a bad stream must leave no trace.
        vols.iter()
            .filter(|v| !v.name.contains('%') && !v.meta.lock().receiving)
            .map(|v| self.inner.volume_info(v))
            .collect()
    }

    /// One volume's info.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let v = self.inner.vol(name)?;
        Ok(self.inner.volume_info(&v))
    }

    /// A volume's snapshots, oldest first, with the space each alone holds.
    pub fn list_snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> {
        let p = &self.inner;
        let _cs = p.commit.lock();
        let v = p.vol(volume)?;
        let meta = v.meta.lock().clone();
        let head = *v.tree.read();
        let mut out = Vec::with_capacity(meta.snapshots.len());
        for (i, s) in meta.snapshots.iter().enumerate() {
            let prev_txg = if i == 0 {
                meta.origin_txg
            } else {
                meta.snapshots[i - 1].txg
            };
            let next_root = meta.snapshots.get(i + 1).map_or(head, |n| n.root);
            let used = p.diff_free(&v, s.root, next_root, v.levels, prev_txg, None)?;
            let mut written = 0;
            p.walk(
                &s.root,
                v.levels,
                0,
                &mut |bp| bp.birth > prev_txg,
                &mut |_, bp| {
                    written += u64::from(bp.psize);
                    Ok(())
                },
            )?;
            out.push(SnapshotInfo {
                name: s.name.clone(),
                guid: s.guid,
                txg: s.txg,
                size: s.size,
                referenced: s.referenced,
                used,
                written,
                clones: p.clones_of(s.guid),
                io_cut: s.io_cut,
            });
        }
        Ok(out)
    }

    /// Read from a snapshot (offset and length multiples of 512, within its size).
    pub fn read_snapshot(
        &self,
        volume: &str,
        snap: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let p = &self.inner;
        p.check_usable()?;
        let _hold = p.hold_roots();
        let v = p.vol(volume)?;
        let s = p.find_snap(&v, snap)?;
        let len = buf.len() as u64;
        if !offset.is_multiple_of(IO_ALIGN_BYTES) || !len.is_multiple_of(IO_ALIGN_BYTES) {
            return Err(PoolError::Unaligned {
                offset,
                len,
                align: IO_ALIGN_BYTES,
            });
        }
        if offset.checked_add(len).is_none_or(|e| e > s.size) {
            return Err(PoolError::OutOfRange {
                volume: format!("{volume}@{snap}"),
                offset,
                len,
                size: s.size,
            });
        }
        let bs = u64::from(v.block_size);
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let (blk, in_blk) = (abs / bs, abs % bs);
            let n = (bs - in_blk).min(len - pos);
            let dst = &mut buf[pos as usize..(pos + n) as usize];
            // The hold keeps the snapshot's blocks from reuse even if it is destroyed
            // meanwhile.
            let bp = p.lookup(&s.root, v.levels, blk)?;
            if bp.is_hole() {
                dst.fill(0);
            } else {
                let d = p.read_data(&bp)?;
                dst.copy_from_slice(&d[in_blk as usize..(in_blk + n) as usize]);
            }
            pos += n;
        }
        Ok(())
    }

    /// Take a snapshot of a volume (instant: one txg commit).
    pub fn snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        self.snapshot_inner(volume, snap, None)
    }

    /// Take a snapshot at io cut `io_cut`: it holds exactly the volume's writes with io
    /// below the cut, and records the cut. Refused once a write or UNMAP with io at or
    /// above the cut reached the volume (checked with writers excluded, when the commit
    /// closes the open txg). The caller (the target's dispatch order) makes sure every
    /// write below the cut was applied first; a cut is normally drawn with
    /// [`VolumeHandle::next_io`].
    pub fn snapshot_at_io(&self, volume: &str, snap: &str, io_cut: u64) -> Result<()> {
        self.snapshot_inner(volume, snap, Some(io_cut))
    }

    fn snapshot_inner(&self, volume: &str, snap: &str, io_cut: Option<u64>) -> Result<()> {
        check_name(snap, "snapshot")?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        {
            let meta = v.meta.lock();
            if meta.snapshots.iter().any(|s| s.name == snap) {
                return Err(PoolError::Exists {
                    name: format!("{volume}@{snap}"),
                });
            }
        }
        if p.snapshot_count() >= MAX_SNAPSHOTS {
            return Err(PoolError::Invalid(format!(
                "pool holds the maximum of {MAX_SNAPSHOTS} snapshots"
            )));
        }
        let snap = snap.to_string();
        if let Some(n) = io_cut {
            if v.io.lock().seen_max >= n {
                return Err(cut_refused(volume, &snap, n));
            }
            *p.cut.lock() = Some((v.guid, n, None));
        }
        let r = p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                let allowed = match io_cut {
                    None => true,
                    Some(_) => p.cut.lock().is_some_and(|c| c.2 == Some(true)),
                };
                if allowed {
                    let mut meta = v.meta.lock();
                    let mut rec = meta.snapshot_now(snap.clone(), random_u64(), txg);
                    rec.io_cut = io_cut;
                    meta.snapshots.push(rec);
                }
                Ok(())
            }),
        );
        let checked = p.cut.lock().take();
        r?;
        match (io_cut, checked) {
            (Some(n), Some((_, _, ok))) if ok != Some(true) => Err(cut_refused(volume, &snap, n)),
            _ => Ok(()),
        }
    }

    /// Create a writable clone `new_volume` of `volume@snap`.
    pub fn clone_snapshot(
        &self,
        volume: &str,
        snap: &str,
        new_volume: &str,
    ) -> Result<VolumeHandle> {
        check_name(new_volume, "volume")?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        if p.vols.read().contains_key(new_volume) {
            return Err(PoolError::Exists {
                name: new_volume.into(),
            });
        }
        let s = p.find_snap(&v, snap)?;
        let meta = v.meta.lock().clone();
        let rec = VolRec::clone_of(new_volume.into(), random_u64(), s.size, &meta, &s);
        self.add_volume(&mut cs, rec)
    }

    /// Roll a volume back to its newest snapshot (newer snapshots must be destroyed first,
    /// or use [`Pool::rollback_destroying_newer`]).
    pub fn rollback(&self, volume: &str, snap: &str) -> Result<()> {
        self.rollback_inner(volume, snap, false).map(|_| ())
    }

    /// Roll a volume back to any of its snapshots, destroying the newer ones in the same
    /// txg (so a crash leaves either all of them and the old head, or none and the
    /// rolled-back head). Refused when a newer snapshot has clones. Returns the names of
    /// the destroyed snapshots, newest first.
    pub fn rollback_destroying_newer(&self, volume: &str, snap: &str) -> Result<Vec<String>> {
        self.rollback_inner(volume, snap, true)
    }

    pub(super) fn rollback_inner(
        &self,
        volume: &str,
        snap: &str,
        destroy_newer: bool,
    ) -> Result<Vec<String>> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        let s = p.find_snap(&v, snap)?;
        let mut newer: Vec<SnapRec> = v
            .meta
            .lock()
            .snapshots
            .iter()
            .filter(|x| x.txg > s.txg)
            .cloned()
            .collect();
        newer.sort_by_key(|x| std::cmp::Reverse(x.txg));
        let names: Vec<String> = newer.iter().map(|x| x.name.clone()).collect();
        if !newer.is_empty() && !destroy_newer {
            return Err(PoolError::Busy(format!(
                "cannot roll back {volume} to @{snap}: newer snapshots exist: {} (destroy them first, or roll back with --destroy-newer)",
                names.join(", ")
            )));
        }
        for x in &newer {
            let clones = p.clones_of(x.guid);
            if !clones.is_empty() {
                return Err(PoolError::Busy(format!(
                    "cannot roll back {volume} to @{snap}: newer snapshot @{} has clones: {} (destroy them first)",
                    x.name,
                    clones.join(", ")
                )));
            }
        }
        p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                // Newest first: each destroy then sees the head as its successor.
                for x in &newer {
                    p.destroy_snapshot_op(&v, x.guid, txg)?;
                }
                p.rollback_op(&v, &s, txg)
            }),
        )?;
        Ok(names)
    }

    /// Destroy a volume and its snapshots (refused when a snapshot has clones).
    pub fn destroy_volume(&self, name: &str) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(name)?;
        self.destroy_volume_locked(&mut cs, &v)
    }

    pub(super) fn destroy_volume_locked(
        &self,
        cs: &mut CommitState,
        v: &Arc<Volume>,
    ) -> Result<()> {
        let p = &self.inner;
        let snaps = v.meta.lock().snapshots.clone();
        for s in &snaps {
            let clones = p.clones_of(s.guid);
            if !clones.is_empty() {
                return Err(PoolError::Busy(format!(
                    "cannot destroy {}: snapshot @{} has clones: {} (destroy them first)",
                    v.name,
                    s.name,
                    clones.join(", ")
                )));
            }
        }
        p.commit_locked(
            cs,
            Some(&mut |p: &PoolInner, txg: u64| p.destroy_volume_op(v, txg)),
        )?;
        Ok(())
    }

    /// Destroy one snapshot, freeing the space only it held (refused when it has clones).
    pub fn destroy_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        let s = p.find_snap(&v, snap)?;
        let clones = p.clones_of(s.guid);
        if !clones.is_empty() {
            return Err(PoolError::Busy(format!(
                "cannot destroy {volume}@{snap}: it has clones: {} (destroy them first)",
                clones.join(", ")
            )));
        }
        p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| p.destroy_snapshot_op(&v, s.guid, txg)),
        )?;
        Ok(())
    }

    /// Grow a volume online (shrinking is refused).
    pub fn resize(&self, volume: &str, new_size: u64) -> Result<()> {
        check_size(new_size)?;
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let v = p.vol(volume)?;
        let size = v.state.lock().size;
        if new_size < size {
            return Err(PoolError::Invalid(format!(
                "cannot shrink {volume} from {size} to {new_size} bytes (shrinking loses data)"
            )));
        }
        v.state.lock().size = new_size;
        v.meta.lock().size = new_size;
        p.commit_locked(&mut cs, None)?;
        Ok(())
    }

    /// Set a small property stored with a volume (replica id, volume guid, checkpoint io
    /// number...). Durable with the next txg commit (background, or [`Pool::sync`]); a
    /// commit holds it together with all data written before the call.
    pub fn set_property(&self, volume: &str, key: &str, value: &str) -> Result<()> {
        if key.is_empty() || key.len() > MAX_PROPERTY_BYTES || value.len() > MAX_PROPERTY_BYTES {
            return Err(PoolError::Invalid(format!(
                "property key must be 1..={MAX_PROPERTY_BYTES} bytes, value at most {MAX_PROPERTY_BYTES}"
            )));
        }
        let v = self.inner.vol(volume)?;
        let _txg = self.inner.txg.read();
        let count = {
            let meta = v.meta.lock();
            meta.properties.len() + usize::from(!meta.properties.contains_key(key))
        };
        if count > MAX_PROPERTIES {
            return Err(PoolError::Invalid(format!(
                "volume holds the maximum of {MAX_PROPERTIES} properties"
            )));
        }
        v.state.lock().open_props.push((key.into(), value.into()));
        self.inner.meta_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// A property of a volume.
    pub fn property(&self, volume: &str, key: &str) -> Result<Option<String>> {
        let v = self.inner.vol(volume)?;
        {
            let st = v.state.lock();
            let pending = st
                .open_props
                .iter()
                .rev()
                .chain(st.syncing_props.iter().rev());
            if let Some((_, val)) = pending.into_iter().find(|(k, _)| k == key) {
                return Ok(Some(val.clone()));
            }
        }
        let meta = v.meta.lock();
        Ok(meta.properties.get(key).cloned())
    }

    /// Ranges of `target` (`vol` or `vol@snap`) whose io number is above `since`, in
    /// offset order, merged; subtrees whose max io number is not above are skipped.
    pub fn changed_since(
        &self,
        target: &str,
        since: u64,
        f: &mut dyn FnMut(ChangedRange) -> Result<()>,
    ) -> Result<()> {
        self.changed_between(target, since, None, f)
    }

    /// [`Pool::changed_between`] collected.
    pub fn changed_between_vec(
        &self,
        target: &str,
        since: u64,
        until: Option<u64>,
    ) -> Result<Vec<ChangedRange>> {
        let mut out = Vec::new();
        self.changed_between(target, since, until, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Pool::changed_since`] collected.
    pub fn changed_since_vec(&self, target: &str, since: u64) -> Result<Vec<ChangedRange>> {
        let mut out = Vec::new();
        self.changed_since(target, since, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// Commit a txg now; returns its number.
    pub fn sync(&self) -> Result<u64> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        p.commit_locked(&mut cs, None)
    }

    /// Make every earlier write of every volume durable (intent log, no txg commit).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Pool space and read-only state.
    pub fn space(&self) -> PoolSpace {
        let s = self.inner.store.space();
        PoolSpace {
            size: s.size_bytes,
            allocated: s.allocated_bytes,
            free: s.free_bytes,
            read_only: self.inner.over_threshold(),
            ro_threshold_pct: self.inner.ro_threshold_pct.load(Ordering::Relaxed) as u8,
        }
    }

    /// Change the read-only threshold (committed with the next txg).
    pub fn set_ro_threshold(&self, pct: u8) -> Result<()> {
        if pct == 0 || pct > 100 {
            return Err(PoolError::Invalid(format!(
                "read-only threshold {pct} must be 1..=100 %"
            )));
        }
        self.inner
            .ro_threshold_pct
            .store(u64::from(pct), Ordering::Relaxed);
        self.inner.meta_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Allocated bytes outside volume trees: the object directory and the intent log
    /// (with its pre-allocated next block). With the volumes' `used`, this adds up to the
    /// pool's allocated bytes after a commit; tests check that.
    pub fn metadata_bytes(&self) -> u64 {
        let cs = self.inner.commit.lock();
        let dir: u64 = cs.dir_blocks.iter().map(|b| b.dva.asize).sum();
        let w = self.inner.logw.lock();
        let log: u64 = w.blocks.iter().map(|b| b.dva.asize).sum();
        dir + log + w.next.map_or(0, |n| n.0.asize)
    }

    /// Dirty (not yet committed) bytes now: data blocks, log copies, free ranges.
    pub fn dirty_bytes(&self) -> u64 {
        self.inner.dirty_bytes.load(Ordering::SeqCst)
    }

    /// Bytes held by the block cache now.
    pub fn cache_bytes(&self) -> u64 {
        self.inner.cache.bytes()
    }

    /// Visit every live block pointer (directory, every volume head and snapshot, intent
    /// log) once, with a check of the block's bytes, for scrub and resilver.
    pub fn visit_live_blocks(&self, f: BlockVisitor<'_>) -> Result<TraverseStats> {
        self.inner.visit_live_blocks(f)
    }

    /// Commit, stop the background thread and close the pool.
    pub fn close(self) -> Result<()> {
        self.stop_thread();
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        // This last commit records the clean shutdown (a lost tail is then impossible).
        p.clean_close.store(true, Ordering::SeqCst);
        let r = p.commit_locked(&mut cs, None);
        if r.is_err() {
            p.clean_close.store(false, Ordering::SeqCst);
        }
        r?;
        p.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub(super) fn stop_thread(&self) {
        {
            let mut bg = self.inner.bg.lock();
            bg.stop = true;
        }
        self.inner.bg_cv.notify_all();
        if let Some(t) = self.thread.lock().take() {
            // A panicked commit thread already latched nothing more we could do here.
            let _ = t.join();
        }
    }

    /// Send a snapshot (full, or incremental from `from`) as a stream.
    pub fn send(
        &self,
        volume: &str,
        snap: &str,
        from: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::send::StreamStats> {
        crate::send::send(&self.inner, volume, snap, from, out)
    }

    /// Receive a stream into `volume` (new for a full stream; existing, at the `from`
    /// snapshot and unchanged since, for an incremental one). A bad stream changes nothing.
    pub fn recv(
        &self,
        volume: &str,
        input: &mut dyn std::io::Read,
    ) -> Result<crate::send::StreamStats> {
        crate::send::recv(self, volume, input)
    }

    pub(crate) fn inner(&self) -> &Arc<PoolInner> {
        &self.inner
    }

    /// True when the volume's head differs from its newest snapshot (commits first).
    pub(crate) fn volume_changed_since_snapshot(&self, h: &VolumeHandle) -> Result<bool> {
        if self.inner.has_dirty(&h.vol) {
            self.sync()?;
        }
        let meta = h.vol.meta.lock();
        Ok(meta.snapshots.last().is_none_or(|s| s.root != meta.root))
    }

    /// Create a receive temporary (hidden name) or a received volume.
    pub(crate) fn create_recv_volume(&self, rec: VolRec) -> Result<VolumeHandle> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        if p.vols.read().contains_key(&rec.name) {
            return Err(PoolError::Exists { name: rec.name });
        }
        self.add_volume(&mut cs, rec)
    }

    /// Finish a full receive: snapshot it and clear the receiving flag.
    pub(crate) fn finish_recv(
        &self,
        tmp: &VolumeHandle,
        target: Option<&VolumeHandle>,
        snap_name: &str,
        snap_guid: u64,
    ) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        let tv = tmp.vol.clone();
        let target = target.map(|t| t.vol.clone());
        let snap_name = snap_name.to_string();
        p.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                let dst = match &target {
                    Some(t) => {
                        p.promote_recv(&tv, t)?;
                        t.clone()
                    }
                    None => tv.clone(),
                };
                let mut meta = dst.meta.lock();
                meta.receiving = false;
                let rec = meta.snapshot_now(snap_name.clone(), snap_guid, txg);
                meta.snapshots.push(rec);
                Ok(())
            }),
        )?;
        Ok(())
    }

    /// Drop a failed receive's temporary volume.
    pub(crate) fn abort_recv(&self, tmp: &VolumeHandle) -> Result<()> {
        let p = &self.inner;
        let mut cs = p.commit.lock();
        p.check_usable()?;
        self.destroy_volume_locked(&mut cs, &tmp.vol)
    }
}

impl Drop for Pool {
    /// Stops the commit thread and commits what is dirty (best effort: a pool whose
    /// device is gone just stops; flushed writes are in the log either way).
    fn drop(&mut self) {
        self.stop_thread();
        let p = &self.inner;
        if p.check_usable().is_ok() {
            let mut cs = p.commit.lock();
            let _ = p.commit_locked(&mut cs, None);
            p.closed.store(true, Ordering::SeqCst);
        }
    }
}

fn cut_refused(volume: &str, snap: &str, n: u64) -> PoolError {
    PoolError::Busy(format!(
        "cannot take {volume}@{snap} at io cut {n}: a write with io {n} or above is in the volume already"
    ))
}
