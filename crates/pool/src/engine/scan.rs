//! Time-sliced traversal of every live block (scrub, resilver).

use super::*;

impl PoolInner {
    /// Time-sliced traversal: the commit lock is held for at most [`SCAN_SLICE`] at a
    /// time, so commits (and the writers they unblock) go on during a long scrub. A
    /// cursor (volume name, tree txg, block id) resumes on the current trees: snapshots
    /// are immutable, and a head's blocks before the cursor that changed meanwhile are new
    /// writes, which need no scrub.
    pub(super) fn visit_live_blocks(&self, f: BlockVisitor<'_>) -> Result<TraverseStats> {
        let mut stats = TraverseStats {
            allocated_bytes: self.store.space().allocated_bytes,
            ..TraverseStats::default()
        };
        {
            let cs = self.commit.lock();
            for bp in &cs.dir_blocks {
                stats.blocks += 1;
                stats.bytes_visited += bp.dva.asize;
                f(bp.dva, bp.psize, &Self::verify_fn(bp))?;
            }
            let w = self.logw.lock();
            for (i, b) in w.blocks.iter().enumerate() {
                let (chain, seq) = (w.chain_id, w.head_seq + i as u64);
                stats.blocks += 1;
                stats.bytes_visited += b.dva.asize;
                f(b.dva, b.psize, &move |x: &[u8]| {
                    zil::block_valid(x, chain, seq)
                })?;
            }
        }
        let mut visit = |bp: &Bp, stats: &mut TraverseStats| -> Result<()> {
            let verify = Self::verify_fn(bp);
            stats.blocks += 1;
            stats.bytes_visited += bp.dva.asize;
            f(bp.dva, bp.psize, &verify)
        };
        // Cursor: volume name, txg of the tree (u64::MAX for the head), first block id.
        let mut cursor: (String, u64, u64) = (String::new(), 0, 0);
        loop {
            let mut cs = self.commit.lock();
            let slice_end = std::time::Instant::now() + SCAN_SLICE;
            let vols: Vec<Arc<Volume>> = self
                .vols
                .read()
                .range(cursor.0.clone()..)
                .map(|(_, v)| v.clone())
                .collect();
            let mut paused = false;
            'vols: for v in &vols {
                if v.name != cursor.0 {
                    cursor = (v.name.clone(), 0, 0);
                }
                let meta = v.meta.lock().clone();
                let mut trees: Vec<(Bp, u64)> =
                    meta.snapshots.iter().map(|s| (s.root, s.txg)).collect();
                trees.push((*v.tree.read(), u64::MAX));
                let mut after = meta.origin_txg;
                for (root, t) in trees {
                    if t < cursor.1 {
                        after = t;
                        continue;
                    }
                    if t > cursor.1 {
                        cursor.1 = t;
                        cursor.2 = 0;
                    }
                    let mut pause_at = None;
                    self.scan_tree(
                        &root,
                        v.levels,
                        0,
                        after,
                        cursor.2,
                        &mut |blk| {
                            if std::time::Instant::now() >= slice_end {
                                pause_at = Some(blk);
                                true
                            } else {
                                false
                            }
                        },
                        &mut |bp| visit(bp, &mut stats),
                    )?;
                    if let Some(blk) = pause_at {
                        cursor.2 = blk;
                        paused = true;
                        break 'vols;
                    }
                    after = t;
                }
                // Next volume: past every tree of this one.
                cursor.1 = u64::MAX;
                cursor.2 = u64::MAX;
            }
            if !paused {
                return Ok(stats);
            }
            // Hand the lock to a waiting commit before the next slice.
            parking_lot::MutexGuard::unlock_fair(cs);
            cs = self.commit.lock();
            drop(cs);
        }
    }

    /// Post-order walk of the blocks of a tree born after `after_txg` whose position is at
    /// or after `start_blk`. `pause(blk)` is asked before each data block; when it says
    /// yes the walk stops there (that block and its ancestors not visited yet).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_tree(
        &self,
        bp: &Bp,
        level: u8,
        first_blk: u64,
        after_txg: u64,
        start_blk: u64,
        pause: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(&Bp) -> Result<()>,
    ) -> Result<bool> {
        let end = first_blk.saturating_add(span_blocks(level));
        if bp.is_hole() || bp.birth <= after_txg || end <= start_blk {
            return Ok(false);
        }
        if level == 0 {
            if pause(first_blk) {
                return Ok(true);
            }
        } else {
            let bps = self.read_indirect(bp)?;
            let span = span_blocks(level - 1);
            for (i, child) in bps.iter().enumerate() {
                let first = first_blk + i as u64 * span;
                if self.scan_tree(child, level - 1, first, after_txg, start_blk, pause, f)? {
                    return Ok(true);
                }
            }
        }
        f(bp)?;
        Ok(false)
    }
}
