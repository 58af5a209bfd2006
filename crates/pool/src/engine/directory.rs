//! The object directory as the commit writes and the open reads it, and the directory
//! operations run inside a commit (rollback, destroys, receive promotion).

use super::*;

impl PoolInner {
    /// Write the object directory: a header line, then segments of volumes (JSON lines,
    /// docs/format/block-tree.md "Directory"). Segment boundaries depend on volume guids
    /// only, so a change to one volume rewrites its segment, not the whole directory.
    pub(super) fn write_directory(&self, cs: &mut CommitState, txg: u64) -> Result<Bp> {
        self.meta_dirty.store(false, Ordering::SeqCst);
        cs.io_written.clear();
        cs.checkpoint_written.clear();
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        let header = DirRec {
            version: DIR_VERSION,
            pool_guid: self.pool_guid,
            ro_threshold_pct: self.ro_threshold_pct.load(Ordering::Relaxed) as u8,
            compression: *self.default_compression.lock(),
            volumes: Vec::new(),
            clean_shutdown: self.clean_close.load(Ordering::SeqCst),
            boot_id: self.boot.lock().this_boot.clone(),
            log_claims: self
                .log_claims
                .lock()
                .iter()
                .map(|d| (d.vdev, d.offset, d.asize))
                .collect(),
        };
        let mut segments: Vec<Vec<u8>> = Vec::new();
        let mut line = header.to_bytes();
        line.push(b'\n');
        segments.push(line);
        let mut seg: Vec<u8> = Vec::new();
        for v in &vols {
            let rec = v.meta.lock().clone();
            cs.io_written.push((v.clone(), rec.io_reserved));
            cs.checkpoint_written.push((v.clone(), rec.checkpoint));
            seg.push(if seg.is_empty() { b'[' } else { b',' });
            seg.extend_from_slice(&serde_json::to_vec(&rec).unwrap_or_default());
            if rec.guid % DIR_SEGMENT_GUID_MOD == 0 || seg.len() >= DIR_SEGMENT_BYTES {
                seg.extend_from_slice(b"]\n");
                segments.push(std::mem::take(&mut seg));
            }
        }
        if !seg.is_empty() {
            seg.extend_from_slice(b"]\n");
            segments.push(seg);
        }
        let mut old = std::mem::take(&mut cs.dir_segments);
        let mut chunks: Vec<Bp> = Vec::new();
        for seg in &segments {
            let h = xxhash_rust::xxh3::xxh3_128(seg);
            let bps = match old.remove(&h) {
                Some(bps) => bps,
                None => {
                    let mut bps = Vec::new();
                    for c in seg.chunks(DIR_CHUNK_BYTES) {
                        bps.push(self.write_block(
                            c,
                            Compression::Lz4,
                            BlockKind::DirChunk,
                            0,
                            AllocClass::Metadata,
                            txg,
                            0,
                        )?);
                    }
                    bps
                }
            };
            chunks.extend_from_slice(&bps);
            cs.dir_segments.insert(h, bps);
        }
        if chunks.len() > MAX_DIR_CHUNKS {
            return Err(PoolError::Invalid(format!(
                "object directory of {} chunks exceeds {MAX_DIR_CHUNKS}",
                chunks.len()
            )));
        }
        let mut index_bytes = vec![0u8; chunks.len() * bp::BP_BYTES];
        for (bp, slot) in chunks
            .iter()
            .zip(index_bytes.chunks_exact_mut(bp::BP_BYTES))
        {
            bp.encode(slot);
        }
        let index = self.write_block(
            &index_bytes,
            Compression::Lz4,
            BlockKind::DirIndex,
            1,
            AllocClass::Metadata,
            txg,
            0,
        )?;
        for bps in old.into_values() {
            for b in bps {
                self.free_block(&b, txg);
            }
        }
        if let Some(old_index) = cs.dir_blocks.last() {
            self.free_block(old_index, txg);
        }
        chunks.push(index);
        cs.dir_blocks = chunks;
        Ok(index)
    }

    /// Chunk pointers of a directory index, in order.
    pub(super) fn dir_chunks(&self, index: &Bp) -> Result<Vec<Bp>> {
        if index.kind != Some(BlockKind::DirIndex) {
            return Err(PoolError::Corrupt {
                what: "pool root",
                reason: "directory pointer is not a directory index".into(),
            });
        }
        let bytes = self.read_stored(index)?;
        if bytes.len() % bp::BP_BYTES != 0 || bytes.len() / bp::BP_BYTES > MAX_DIR_CHUNKS {
            return Err(PoolError::Corrupt {
                what: "object directory",
                reason: format!("index of {} bytes", bytes.len()),
            });
        }
        let bps: Vec<Bp> = bytes
            .chunks_exact(bp::BP_BYTES)
            .map(Bp::decode)
            .collect::<Result<_>>()?;
        if bps.iter().any(|b| b.kind != Some(BlockKind::DirChunk)) {
            return Err(PoolError::Corrupt {
                what: "object directory",
                reason: "chunk pointer of the wrong kind".into(),
            });
        }
        Ok(bps)
    }

    /// The directory's blocks and its segments (for reuse by the next commit).
    pub(super) fn dir_layout(&self, index: &Bp) -> Result<(Vec<Bp>, DirSegments)> {
        let chunks = self.dir_chunks(index)?;
        let mut segments = std::collections::HashMap::new();
        let mut seg_bytes = Vec::new();
        let mut seg_bps = Vec::new();
        for bp in &chunks {
            let b = self.read_stored(bp)?;
            seg_bytes.extend_from_slice(&b);
            seg_bps.push(*bp);
            if b.last() == Some(&b'\n') {
                segments.insert(
                    xxhash_rust::xxh3::xxh3_128(&seg_bytes),
                    std::mem::take(&mut seg_bps),
                );
                seg_bytes.clear();
            }
        }
        let mut blocks = chunks;
        blocks.push(*index);
        Ok((blocks, segments))
    }

    pub(super) fn read_directory(&self, index: &Bp) -> Result<DirRec> {
        let corrupt = |reason: String| PoolError::Corrupt {
            what: "object directory",
            reason,
        };
        let mut bytes = Vec::new();
        for bp in self.dir_chunks(index)? {
            bytes.extend_from_slice(&self.read_stored(&bp)?);
        }
        let mut lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let header = lines.next().ok_or_else(|| corrupt("empty".into()))?;
        let mut dir = DirRec::from_bytes(header)?;
        for line in lines {
            let vols: Vec<VolRec> =
                serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
            dir.volumes.extend(vols);
        }
        if dir.volumes.len() > MAX_VOLUMES {
            return Err(corrupt(format!("{} volumes", dir.volumes.len())));
        }
        for v in &dir.volumes {
            check_block_size(v.block_size)
                .map_err(|e| corrupt(format!("volume {}: {e}", v.name)))?;
            if v.levels != levels_for(v.block_size) || v.size > MAX_VOLUME_BYTES {
                return Err(corrupt(format!("volume {}: bad geometry", v.name)));
            }
        }
        Ok(dir)
    }

    // ---- directory operations (run inside a commit, after the data phase) ----

    pub(super) fn rollback_op(&self, v: &Volume, s: &SnapRec, txg: u64) -> Result<()> {
        let mut meta = v.meta.lock();
        let head = meta.root;
        let mut freed = Vec::new();
        self.walk_blocks(&head, v.levels, s.txg, &mut |bp| {
            freed.push(*bp);
            Ok(())
        })?;
        for bp in &freed {
            self.free_block(bp, txg);
        }
        let back = self.diff_free(v, s.root, head, v.levels, meta.origin_txg, None)?;
        meta.snap_held = meta.snap_held.saturating_sub(back);
        meta.root = s.root;
        // The writes after the snapshot are gone: a checkpoint must not claim them.
        meta.checkpoint = 0;
        meta.referenced = s.referenced;
        meta.unique = s.unique_at;
        meta.ref_lsize = s.ref_lsize;
        meta.ref_psize_data = s.ref_psize_data;
        *v.tree.write() = s.root;
        Ok(())
    }

    pub(super) fn destroy_snapshot_op(&self, v: &Volume, guid: u64, txg: u64) -> Result<()> {
        let mut meta = v.meta.lock();
        let Some(i) = meta.snapshots.iter().position(|s| s.guid == guid) else {
            return Ok(());
        };
        let s = meta.snapshots[i].clone();
        let prev_txg = if i == 0 {
            meta.origin_txg
        } else {
            meta.snapshots[i - 1].txg
        };
        let next_root = meta.snapshots.get(i + 1).map_or(meta.root, |n| n.root);
        let freed = self.diff_free(v, s.root, next_root, v.levels, prev_txg, Some(txg))?;
        meta.snap_held = meta.snap_held.saturating_sub(freed);
        meta.snapshots.remove(i);
        Ok(())
    }

    pub(super) fn destroy_volume_op(&self, v: &Volume, txg: u64) -> Result<()> {
        {
            let mut st = v.state.lock();
            st.destroyed = true;
            let dropped = st.open.len() as u64 * u64::from(v.block_size)
                + st.open_frees.len() as u64 * FREE_RANGE_CHARGE_BYTES;
            st.open.clear();
            st.open_frees.clear();
            st.open_props.clear();
            self.undirty(dropped);
        }
        let meta = v.meta.lock().clone();
        let mut after = meta.origin_txg;
        let mut roots: Vec<Bp> = meta.snapshots.iter().map(|s| s.root).collect();
        roots.push(meta.root);
        let mut txgs: Vec<u64> = meta.snapshots.iter().map(|s| s.txg).collect();
        txgs.push(u64::MAX);
        for (root, t) in roots.iter().zip(txgs) {
            let mut freed = Vec::new();
            self.walk_blocks(root, v.levels, after, &mut |bp| {
                freed.push(*bp);
                Ok(())
            })?;
            for bp in &freed {
                self.free_block(bp, txg);
            }
            after = t;
        }
        self.vols.write().remove(&v.name);
        Ok(())
    }

    /// Move a receive temporary's tree (a clone of the target's newest snapshot) to the
    /// target's head, without freeing: the blocks change owner.
    pub(super) fn promote_recv(&self, tmp: &Volume, target: &Volume) -> Result<()> {
        let t = tmp.meta.lock().clone();
        {
            let mut m = target.meta.lock();
            m.root = t.root;
            m.size = t.size;
            m.referenced = t.referenced;
            m.unique += t.unique;
            m.ref_lsize = t.ref_lsize;
            m.ref_psize_data = t.ref_psize_data;
            *target.tree.write() = t.root;
            target.state.lock().size = t.size;
        }
        tmp.state.lock().destroyed = true;
        self.vols.write().remove(&tmp.name);
        Ok(())
    }

    pub(super) fn cleanup_receiving(self: &Arc<Self>) -> Result<()> {
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        let leftovers: Vec<Arc<Volume>> = vols
            .into_iter()
            .filter(|v| v.meta.lock().receiving)
            .collect();
        if leftovers.is_empty() {
            return Ok(());
        }
        let mut cs = self.commit.lock();
        self.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                for v in &leftovers {
                    p.destroy_volume_op(v, txg)?;
                }
                Ok(())
            }),
        )?;
        Ok(())
    }
}
