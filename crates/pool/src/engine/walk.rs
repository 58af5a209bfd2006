//! Walks of the blocks whose io lies in `(since, until]` without a commit: over a
//! snapshot, or over a volume's live state (the committed tree with the dirty blocks and
//! UNMAP ranges of the open and syncing txgs laid over it), under a [`RootHold`] so no
//! block the walk can reach is reused under it.
//!
//! Invariants: the dirty layers are copied under the volume's state lock and the root read
//! under it too (a commit publishes a new root before it drops its syncing layer, and the
//! layer laid over the tree that already holds it gives the same ios); the tree walk
//! descends only into subtrees whose io maximum is above `since`, so it costs what changed
//! in the committed tree, and never reads a data block. A writer waits for the walk only
//! while the layers are copied.

use super::*;

/// One entry of [`Pool::block_ios_between`]: a data block (`len` = the block size, less
/// at the volume's end), or a run of blocks that read as zeros (`hole`: UNMAPped or never
/// stored) all carrying `io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIo {
    /// Byte offset (a multiple of the block size).
    pub offset: u64,
    /// Bytes covered.
    pub len: u64,
    /// io number of the newest write or UNMAP of these blocks.
    pub io: u64,
    /// The blocks read as zeros. A block made of zeros by a partial write is reported as
    /// data until its commit stores it as a hole.
    pub hole: bool,
}

/// Blocks `first..end` with one io, from the tree (`bp` of a data block) or a dirty layer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Item {
    pub(super) first: u64,
    pub(super) end: u64,
    pub(super) io: u64,
    pub(super) hole: bool,
    /// The stored data block (tree items only).
    pub(super) bp: Option<Bp>,
}

/// What a walk sees of a target.
pub(super) struct View {
    pub(super) vol: Arc<Volume>,
    pub(super) root: Bp,
    pub(super) size: u64,
    /// Dirty blocks: io, and whether a hole (they win over `ranges` and the tree).
    points: BTreeMap<u64, (u64, bool)>,
    /// Disjoint UNMAP ranges: first block -> (end, io) (they win over the tree).
    ranges: BTreeMap<u64, (u64, u64)>,
}

fn dirty_io(d: &Dirty) -> (u64, bool) {
    match d {
        Dirty::Data { io, .. } | Dirty::Partial { io, .. } => (*io, false),
        Dirty::Hole { io } => (*io, true),
    }
}

/// Disjoint ranges from `frees`, the later winning where they overlap.
fn disjoint(frees: impl DoubleEndedIterator<Item = FreeRange>) -> BTreeMap<u64, (u64, u64)> {
    let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for f in frees.rev() {
        let mut cur = f.first;
        while cur < f.end {
            if let Some((_, &(e, _))) = out.range(..=cur).next_back().filter(|(_, (e, _))| *e > cur)
            {
                cur = e;
                continue;
            }
            let next = out
                .range(cur..)
                .next()
                .map_or(f.end, |(s, _)| *s)
                .min(f.end);
            out.insert(cur, (next, f.io));
            cur = next;
        }
    }
    out
}

impl PoolInner {
    /// The view of `target` (`vol` or `vol@snap`); take a [`RootHold`] first.
    pub(super) fn view(&self, target: &str) -> Result<View> {
        if let Some((vol, snap)) = target.split_once('@') {
            let v = self.vol(vol)?;
            let s = self.find_snap(&v, snap)?;
            return Ok(View {
                vol: v,
                root: s.root,
                size: s.size,
                points: BTreeMap::new(),
                ranges: BTreeMap::new(),
            });
        }
        let v = self.vol(target)?;
        let st = v.state.lock();
        if st.destroyed {
            return Err(PoolError::UnknownVolume {
                name: target.into(),
            });
        }
        // Newest first: open dirty, open frees, syncing dirty, syncing frees, tree.
        let mut points: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        for (blk, d) in st.syncing.iter() {
            let e = match range_covers(&st.open_frees, *blk) {
                Some(io) => (io, true),
                None => dirty_io(d),
            };
            points.insert(*blk, e);
        }
        for (blk, d) in &st.open {
            points.insert(*blk, dirty_io(d));
        }
        let ranges = disjoint(
            st.syncing_frees
                .iter()
                .chain(st.open_frees.iter())
                .copied()
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let root = *v.tree.read();
        let size = st.size;
        drop(st);
        Ok(View {
            vol: v,
            root,
            size,
            points,
            ranges,
        })
    }

    /// The parts of blocks `a..b` no dirty layer covers.
    fn uncovered(view: &View, a: u64, b: u64, out: &mut Vec<(u64, u64)>) {
        out.clear();
        let mut cover: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &(e, _))) = view.ranges.range(..=a).next_back() {
            if e > a {
                cover.push((s, e));
            }
        }
        for (&s, &(e, _)) in view.ranges.range(a.saturating_add(1)..b) {
            cover.push((s, e));
        }
        cover.extend(view.points.range(a..b).map(|(&p, _)| (p, p + 1)));
        cover.sort_unstable();
        let mut cur = a;
        for (s, e) in cover {
            if s > cur {
                out.push((cur, s.min(b)));
            }
            cur = cur.max(e);
            if cur >= b {
                break;
            }
        }
        if cur < b {
            out.push((cur, b));
        }
    }

    /// Every block of `view` from block `start` on whose io lies in `(since, until]`, in
    /// block order: runs from the dirty layers and pieces of the tree's leaves. `f`
    /// returns false to stop.
    pub(super) fn list_io(
        &self,
        view: &View,
        since: u64,
        until: u64,
        start: u64,
        f: &mut dyn FnMut(Item) -> Result<bool>,
    ) -> Result<()> {
        let bs = u64::from(view.vol.block_size);
        let end_blk = view.size.div_ceil(bs);
        let wanted = |io: u64| io > since && io <= until;
        // The dirty layers' own entries: ranges less the points, and the points.
        let mut over: Vec<Item> = Vec::new();
        for (&s, &(e, io)) in &view.ranges {
            let mut cur = s;
            for (&p, _) in view.points.range(s..e) {
                if p > cur {
                    over.push(Item {
                        first: cur,
                        end: p,
                        io,
                        hole: true,
                        bp: None,
                    });
                }
                cur = p + 1;
            }
            if cur < e {
                over.push(Item {
                    first: cur,
                    end: e,
                    io,
                    hole: true,
                    bp: None,
                });
            }
        }
        over.extend(view.points.iter().map(|(&p, &(io, hole))| Item {
            first: p,
            end: p + 1,
            io,
            hole,
            bp: None,
        }));
        over.retain(|i| wanted(i.io) && i.end > start && i.first < end_blk);
        for i in &mut over {
            i.first = i.first.max(start);
            i.end = i.end.min(end_blk);
        }
        over.sort_unstable_by_key(|i| i.first);
        let mut over = over.into_iter().peekable();
        let mut pieces = Vec::new();
        let mut emit = |item: Item, over: &mut std::iter::Peekable<std::vec::IntoIter<Item>>| {
            while let Some(o) = over.next_if(|o| o.first < item.first) {
                if !f(o)? {
                    return Ok(false);
                }
            }
            f(item)
        };
        let done = self.walk_io(
            &view.root,
            view.vol.levels,
            0,
            since,
            (start, end_blk),
            &mut |first, end, bp| {
                if !wanted(bp.io_max) {
                    return Ok(true);
                }
                Self::uncovered(view, first, end, &mut pieces);
                for &(a, b) in pieces.iter() {
                    let item = Item {
                        first: a,
                        end: b,
                        io: bp.io_max,
                        hole: bp.is_hole(),
                        bp: (!bp.is_hole()).then_some(*bp),
                    };
                    if !emit(item, &mut over)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        if done {
            for o in over {
                if !f(o)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Depth-first walk of the leaves (data blocks, holes at any level) under `bp` whose
    /// io maximum is above `since`, clipped to blocks `lim.0..lim.1`. Returns false when
    /// `visit` stopped it.
    fn walk_io(
        &self,
        bp: &Bp,
        level: u8,
        first: u64,
        since: u64,
        lim: (u64, u64),
        visit: &mut dyn FnMut(u64, u64, &Bp) -> Result<bool>,
    ) -> Result<bool> {
        let end = first.saturating_add(span_blocks(level));
        if bp.io_max <= since || end <= lim.0 || first >= lim.1 {
            return Ok(true);
        }
        if level == 0 || bp.is_hole() {
            return visit(first.max(lim.0), end.min(lim.1), bp);
        }
        let bps = self.read_indirect(bp)?;
        let span = span_blocks(level - 1);
        for (i, child) in bps.iter().enumerate() {
            if !self.walk_io(child, level - 1, first + i as u64 * span, since, lim, visit)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Pool {
    /// Ranges of `target` whose blocks' io lies in `(since, until]` (`until` None: no
    /// upper bound), in offset order, merged. No commit: a live volume is walked with its
    /// dirty blocks, under a hold that keeps the tree's blocks from reuse. Subtrees whose
    /// max io is not above `since` are skipped (the walk costs what changed after
    /// `since`); blocks above `until` are left out one by one.
    pub fn changed_between(
        &self,
        target: &str,
        since: u64,
        until: Option<u64>,
        f: &mut dyn FnMut(ChangedRange) -> Result<()>,
    ) -> Result<()> {
        let mut cur: Option<ChangedRange> = None;
        self.block_ios_between(target, since, until, &mut |b| {
            match cur.as_mut() {
                Some(c) if c.offset + c.len == b.offset => {
                    c.len += b.len;
                    c.io_number_max = c.io_number_max.max(b.io);
                }
                _ => {
                    if let Some(c) = cur.take() {
                        f(c)?;
                    }
                    cur = Some(ChangedRange {
                        offset: b.offset,
                        len: b.len,
                        io_number_max: b.io,
                    });
                }
            }
            Ok(())
        })?;
        if let Some(c) = cur {
            f(c)?;
        }
        Ok(())
    }

    /// Every block of `target` (`vol` or `vol@snap`) whose io lies in `(since, until]`,
    /// in offset order, from metadata only (no data block is read), without a commit:
    /// see [`Pool::changed_between`] and [`BlockIo`].
    pub fn block_ios_between(
        &self,
        target: &str,
        since: u64,
        until: Option<u64>,
        f: &mut dyn FnMut(BlockIo) -> Result<()>,
    ) -> Result<()> {
        let p = &self.inner;
        p.check_usable()?;
        let _hold = p.hold_roots();
        let view = p.view(target)?;
        let bs = u64::from(view.vol.block_size);
        p.list_io(&view, since, until.unwrap_or(u64::MAX), 0, &mut |i| {
            let offset = i.first * bs;
            f(BlockIo {
                offset,
                len: (i.end * bs).min(view.size) - offset,
                io: i.io,
                hole: i.hole,
            })?;
            Ok(true)
        })
    }

    /// [`Pool::block_ios_between`] collected.
    pub fn block_ios_between_vec(
        &self,
        target: &str,
        since: u64,
        until: Option<u64>,
    ) -> Result<Vec<BlockIo>> {
        let mut out = Vec::new();
        self.block_ios_between(target, since, until, &mut |b| {
            out.push(b);
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_free_ranges_win_where_they_overlap() {
        let r = |first, end, io| FreeRange { first, end, io };
        let d = disjoint(vec![r(0, 10, 1), r(5, 15, 2), r(7, 8, 3)].into_iter());
        let got: Vec<(u64, u64, u64)> = d.iter().map(|(&s, &(e, io))| (s, e, io)).collect();
        assert_eq!(got, vec![(0, 5, 1), (5, 7, 2), (7, 8, 3), (8, 15, 2)]);
    }
}
