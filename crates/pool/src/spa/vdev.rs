//! Top-level vdevs: a single disk (one disk of a stripe group), an n-way mirror, or a
//! raidz/raidz2 group; block I/O with redundancy, reconstruction, healing, scrub and
//! resilver of one block.
//!
//! Owns: the group's leaves (behind a read-mostly lock, swapped only by replace) and its
//! allocator state (own mutex: no pool-wide lock on the I/O path).
//! Invariants: a write is issued to every online column or copy at once and succeeds while
//! no more than the group's tolerance failed; a read returns only bytes `verify` accepted;
//! a copy or column found bad is rewritten from the good reconstruction and counted as a
//! checksum error; resilvering (untrusted) leaves are read only as a last resort.
//! Never: writes a block's bytes anywhere but its own columns (no read-modify-write of
//! another block's parity).

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::alloc::VdevAlloc;
use super::error::SpaError;
use super::format::VdevKindConfig;
use super::leaf::{Leaf, Pending};
use super::limits::{
    FRONT_RESERVE_BYTES, MAX_BLOCK_BYTES, RUN_BYTES_MAX, RUN_PIECES_MAX, SECTOR_BYTES,
};
use super::raidz::{generate_parity, raidz_asize, reconstruct, RaidzMap};
use crate::store::{Dva, Verify};

/// The redundancy of a top-level vdev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VdevKind {
    /// One disk, no redundancy.
    Disk,
    /// Same bytes at the same offset on every child.
    Mirror,
    /// RAID-Z with this many parity columns.
    Raidz(usize),
}

impl VdevKind {
    /// From the config kind.
    pub fn from_config(k: VdevKindConfig) -> Self {
        match k {
            VdevKindConfig::Disk => VdevKind::Disk,
            VdevKindConfig::Mirror => VdevKind::Mirror,
            VdevKindConfig::Raidz1 => VdevKind::Raidz(1),
            VdevKindConfig::Raidz2 => VdevKind::Raidz(2),
        }
    }
}

/// Health of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// All devices serve.
    Online,
    /// Some devices lost, redundancy still covers.
    Degraded,
    /// More lost than redundancy covers.
    Faulted,
}

impl Health {
    /// cStor/ZFS spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Online => "ONLINE",
            Health::Degraded => "DEGRADED",
            Health::Faulted => "FAULTED",
        }
    }
}

/// A top-level vdev.
#[derive(Debug)]
pub struct TopVdev {
    /// Index in the pool ([`Dva::vdev`]).
    pub id: u32,
    /// Redundancy.
    pub kind: VdevKind,
    /// Display group.
    pub group: u32,
    /// Write-cache group member.
    pub log: bool,
    /// Allocatable bytes (raw, parity included).
    pub asize: u64,
    /// Devices in column order.
    pub children: RwLock<Vec<Arc<Leaf>>>,
    /// Per column, the device being replaced while it still serves: read in place of the
    /// untrusted new device and written along with it until the replace finishes.
    pub replacing: RwLock<Vec<Option<Arc<Leaf>>>>,
    /// Free space.
    pub alloc: Mutex<VdevAlloc>,
    /// A write-cache group that took an allocation since import: it may hold intent-log
    /// blocks whose flush the engine waits for, so losing it fails flushes and syncs
    /// (a group faulted before any allocation holds nothing and is just left out).
    pub log_used: std::sync::atomic::AtomicBool,
}

fn dev_off(off: u64) -> u64 {
    FRONT_RESERVE_BYTES + off
}

impl TopVdev {
    /// Devices that may be lost without losing data.
    pub fn tolerance(&self) -> usize {
        match self.kind {
            VdevKind::Disk => 0,
            VdevKind::Mirror => self.children.read().len() - 1,
            VdevKind::Raidz(p) => p,
        }
    }

    /// Allocated size of a `psize` block.
    pub fn asize_of(&self, psize: u64) -> u64 {
        match self.kind {
            VdevKind::Disk | VdevKind::Mirror => psize,
            VdevKind::Raidz(p) => raidz_asize(psize, self.children.read().len(), p),
        }
    }

    /// Usable bytes for `raw` bytes of this vdev's address space.
    pub fn usable(&self, raw: u64) -> u64 {
        match self.kind {
            VdevKind::Disk | VdevKind::Mirror => raw,
            VdevKind::Raidz(p) => {
                let n = self.children.read().len() as u128;
                (raw as u128 * (n - p as u128) / n) as u64
            }
        }
    }

    /// Group health and the devices not serving.
    pub fn health(&self) -> (Health, Vec<String>) {
        let ch = self.children.read();
        let old = self.replacing.read();
        let old_serves = |i: usize| {
            old.get(i)
                .and_then(|o| o.as_ref())
                .is_some_and(|o| o.is_online())
        };
        let lost = ch
            .iter()
            .enumerate()
            .filter(|(i, l)| !l.is_online() && !old_serves(*i))
            .count();
        let bad: Vec<String> = ch
            .iter()
            .enumerate()
            .filter(|(i, l)| !l.is_online() || (l.is_untrusted() && !old_serves(*i)))
            .map(|(_, l)| l)
            .map(|l| {
                let what = if l.is_online() {
                    "RESILVERING"
                } else {
                    l.state().as_str()
                };
                format!("{} ({what})", l.path)
            })
            .collect();
        // Untrusted (resilvering) devices still hold most blocks and are read as a last
        // resort, so only lost devices can fault a group.
        let h = if bad.is_empty() {
            Health::Online
        } else if lost <= self.tolerance() && lost < ch.len() {
            Health::Degraded
        } else {
            Health::Faulted
        };
        (h, bad)
    }

    /// Per child: the leaf to read and whether its bytes are trusted.
    fn sources(&self, children: &[Arc<Leaf>]) -> Vec<(Arc<Leaf>, bool)> {
        let old = self.replacing.read();
        children
            .iter()
            .enumerate()
            .map(|(i, l)| match old.get(i).and_then(|o| o.as_ref()) {
                Some(o) if l.is_untrusted() && o.is_online() => (o.clone(), true),
                _ => (l.clone(), !l.is_untrusted()),
            })
            .collect()
    }

    /// Devices being replaced that still serve.
    pub fn replacing_leaves(&self) -> Vec<Arc<Leaf>> {
        self.replacing.read().iter().flatten().cloned().collect()
    }

    /// Validate an address (it may come from a corrupt block pointer) before any
    /// arithmetic or device I/O uses it.
    fn check(&self, dva: Dva, psize: u64) -> Result<(), SpaError> {
        let aligned = dva.offset.is_multiple_of(SECTOR_BYTES)
            && dva.asize.is_multiple_of(SECTOR_BYTES)
            && psize.is_multiple_of(SECTOR_BYTES);
        let ok = aligned
            && psize > 0
            && psize <= MAX_BLOCK_BYTES as u64
            && dva
                .offset
                .checked_add(dva.asize)
                .is_some_and(|e| e <= self.asize)
            && self.asize_of(psize) <= dva.asize;
        if ok {
            Ok(())
        } else {
            Err(SpaError::InvalidAddress { dva })
        }
    }

    /// Write a block with its redundancy.
    pub fn write(&self, dva: Dva, data: &[u8]) -> Result<(), SpaError> {
        self.write_submit(dva, Arc::new(data.to_vec()))?.finish()
    }

    /// Queue a block's writes on its devices (see [`Self::write`]) without waiting;
    /// [`VdevWrite::finish`] waits and applies the group's tolerance.
    pub fn write_submit(&self, dva: Dva, buf: Arc<Vec<u8>>) -> Result<VdevWrite, SpaError> {
        let data: &[u8] = &buf;
        self.check(dva, data.len() as u64)?;
        let children = self.children.read().clone();
        let mut jobs = Vec::new();
        match self.kind {
            VdevKind::Disk | VdevKind::Mirror => {
                for leaf in &children {
                    jobs.push((
                        leaf.clone(),
                        leaf.submit_write(buf.clone(), 0..data.len(), dev_off(dva.offset)),
                    ));
                }
            }
            VdevKind::Raidz(p) => {
                let map = RaidzMap::new(dva.offset, data.len() as u64, children.len(), p);
                let slices: Vec<&[u8]> = (p..map.cols.len())
                    .map(|c| &data[map.data_range(c)])
                    .collect();
                let mut parity = vec![vec![0u8; map.cols[0].size as usize]; p];
                generate_parity(&slices, &mut parity);
                for (c, col) in map.cols.iter().enumerate() {
                    let leaf = &children[col.child];
                    let sub = if c < p {
                        let pb = Arc::new(std::mem::take(&mut parity[c]));
                        let len = pb.len();
                        leaf.submit_write(pb, 0..len, dev_off(col.offset))
                    } else {
                        leaf.submit_write(buf.clone(), map.data_range(c), dev_off(col.offset))
                    };
                    jobs.push((leaf.clone(), sub));
                }
            }
        }
        // The device being replaced gets the block too (best effort): it stays a valid
        // source for every block until the replace finishes.
        let mut old_jobs = Vec::new();
        {
            let old = self.replacing.read();
            for (i, o) in old.iter().enumerate() {
                let Some(o) = o.as_ref().filter(|o| o.is_online()) else {
                    continue;
                };
                match self.kind {
                    VdevKind::Disk | VdevKind::Mirror => old_jobs.push((
                        o.clone(),
                        o.submit_write(buf.clone(), 0..data.len(), dev_off(dva.offset)),
                    )),
                    VdevKind::Raidz(p) => {
                        let map = RaidzMap::new(dva.offset, data.len() as u64, children.len(), p);
                        if let Some(c) = map.cols.iter().position(|col| col.child == i) {
                            let col = map.cols[c];
                            let bytes = if c < p {
                                full_columns(&map, data).swap_remove(c)
                            } else {
                                data[map.data_range(c)].to_vec()
                            };
                            let len = bytes.len();
                            old_jobs.push((
                                o.clone(),
                                o.submit_write(Arc::new(bytes), 0..len, dev_off(col.offset)),
                            ));
                        }
                    }
                }
            }
        }
        let max_errors = match self.kind {
            VdevKind::Mirror => children.len() - 1,
            _ => self.tolerance(),
        };
        Ok(VdevWrite {
            dva,
            jobs,
            old_jobs,
            max_errors,
        })
    }

    /// Queue the writes of several blocks at once, merging the pieces that lie back to
    /// back on a device into one vectored request. Why: a commit allocates its blocks
    /// next to each other, so one request per run instead of one per block cuts the
    /// syscalls and the hand-offs to device threads by the run length (64 for 16 KiB
    /// blocks in 1 MiB runs); the bytes written, their places and the redundancy are
    /// those of [`Self::write_submit`] block by block. While a device is being replaced
    /// the blocks go one by one (its copy is written as [`Self::write_submit`] does).
    pub fn write_submit_many(&self, blocks: &[(Dva, Arc<Vec<u8>>)]) -> Result<VdevWrite, SpaError> {
        let Some(first) = blocks.first().map(|b| b.0) else {
            return Err(SpaError::InvalidState("empty write batch".into()));
        };
        if blocks.len() == 1 || self.replacing.read().iter().any(Option::is_some) {
            let mut all = VdevWrite {
                dva: first,
                jobs: Vec::new(),
                old_jobs: Vec::new(),
                max_errors: usize::MAX,
            };
            for (dva, buf) in blocks {
                let w = self.write_submit(*dva, buf.clone())?;
                all.jobs.extend(w.jobs);
                all.old_jobs.extend(w.old_jobs);
                all.max_errors = all.max_errors.min(w.max_errors);
            }
            return Ok(all);
        }
        for (dva, buf) in blocks {
            self.check(*dva, buf.len() as u64)?;
        }
        let children = self.children.read().clone();
        // (child, device offset, bytes, range of them).
        let mut pieces: Vec<WritePiece> = Vec::new();
        for (dva, buf) in blocks {
            match self.kind {
                VdevKind::Disk | VdevKind::Mirror => {
                    for c in 0..children.len() {
                        pieces.push((c, dev_off(dva.offset), buf.clone(), 0..buf.len()));
                    }
                }
                VdevKind::Raidz(p) => {
                    let map = RaidzMap::new(dva.offset, buf.len() as u64, children.len(), p);
                    let slices: Vec<&[u8]> = (p..map.cols.len())
                        .map(|c| &buf[map.data_range(c)])
                        .collect();
                    let mut parity = vec![vec![0u8; map.cols[0].size as usize]; p];
                    generate_parity(&slices, &mut parity);
                    for (c, col) in map.cols.iter().enumerate() {
                        if c < p {
                            let pb = Arc::new(std::mem::take(&mut parity[c]));
                            let len = pb.len();
                            pieces.push((col.child, dev_off(col.offset), pb, 0..len));
                        } else {
                            pieces.push((
                                col.child,
                                dev_off(col.offset),
                                buf.clone(),
                                map.data_range(c),
                            ));
                        }
                    }
                }
            }
        }
        pieces.sort_by_key(|p| (p.0, p.1));
        let mut jobs = Vec::new();
        let mut i = 0;
        while i < pieces.len() {
            let (child, start) = (pieces[i].0, pieces[i].1);
            let mut end = start + pieces[i].3.len() as u64;
            let mut j = i + 1;
            while j < pieces.len()
                && pieces[j].0 == child
                && pieces[j].1 == end
                && j - i < RUN_PIECES_MAX
                && end - start + pieces[j].3.len() as u64 <= RUN_BYTES_MAX
            {
                end += pieces[j].3.len() as u64;
                j += 1;
            }
            let run: Vec<(Arc<Vec<u8>>, std::ops::Range<usize>)> = pieces[i..j]
                .iter()
                .map(|p| (p.2.clone(), p.3.clone()))
                .collect();
            let leaf = &children[child];
            jobs.push((leaf.clone(), leaf.submit_write_v(run, start)));
            i = j;
        }
        let max_errors = match self.kind {
            VdevKind::Mirror => children.len() - 1,
            _ => self.tolerance(),
        };
        Ok(VdevWrite {
            dva: first,
            jobs,
            old_jobs: Vec::new(),
            max_errors,
        })
    }

    /// The stored bytes of several blocks from their first trusted copy (a mirror's copy
    /// by 1 MiB region, as [`Self::read`]; a raidz block's data columns), unverified, with
    /// the pieces that lie back to back on a device read in one vectored request and all
    /// requests in flight at once. Why: a reader of many blocks (a 1 MiB volume read is 64
    /// blocks of 16 KiB) paid one device request, one hand-off and one wait per block, in
    /// a row. `None` for a block this could not read (a device not serving, an I/O error):
    /// the caller verifies every block and takes those that fail through [`Self::read`],
    /// which tries every copy and heals.
    ///
    /// With `cached_only`, nothing is queued: only what the page cache answers on this
    /// thread is read (the rest is `None`), so the call never waits for a device.
    pub fn read_unverified_many(
        &self,
        reqs: &[(Dva, u64)],
        cached_only: bool,
    ) -> Vec<Option<Vec<u8>>> {
        let n = reqs.len();
        let mut out: Vec<Option<Vec<u8>>> = vec![None; n];
        let children = self.children.read().clone();
        let usable = |l: &Arc<Leaf>| l.is_online() && !l.is_untrusted();
        let trusted: Vec<usize> = (0..children.len())
            .filter(|&c| usable(&children[c]))
            .collect();
        // (child, device offset, length, request, column of the request).
        let mut pieces: Vec<(usize, u64, usize, usize, usize)> = Vec::new();
        let mut ncols = vec![0usize; n];
        let mut failed = vec![false; n];
        for (r, (dva, psize)) in reqs.iter().enumerate() {
            if self.check(*dva, *psize).is_err() {
                failed[r] = true;
                continue;
            }
            match self.kind {
                VdevKind::Disk | VdevKind::Mirror => {
                    if trusted.is_empty() {
                        failed[r] = true;
                        continue;
                    }
                    let c = trusted[((dva.offset >> 20) % trusted.len() as u64) as usize];
                    pieces.push((c, dev_off(dva.offset), *psize as usize, r, 0));
                    ncols[r] = 1;
                }
                VdevKind::Raidz(p) => {
                    let map = RaidzMap::new(dva.offset, *psize, children.len(), p);
                    if map.cols[p..].iter().any(|c| !usable(&children[c.child])) {
                        failed[r] = true;
                        continue;
                    }
                    for (k, col) in map.cols[p..].iter().enumerate() {
                        pieces.push((col.child, dev_off(col.offset), col.size as usize, r, k));
                    }
                    ncols[r] = map.cols.len() - p;
                }
            }
        }
        pieces.sort_by_key(|p| (p.0, p.1));
        let mut subs = Vec::new();
        let mut cached = Vec::new();
        let mut i = 0;
        while i < pieces.len() {
            let (child, start) = (pieces[i].0, pieces[i].1);
            let mut end = start + pieces[i].2 as u64;
            let mut j = i + 1;
            while j < pieces.len()
                && pieces[j].0 == child
                && pieces[j].1 == end
                && j - i < RUN_PIECES_MAX
                && end - start + pieces[j].2 as u64 <= RUN_BYTES_MAX
            {
                end += pieces[j].2 as u64;
                j += 1;
            }
            let lens: Vec<usize> = pieces[i..j].iter().map(|p| p.2).collect();
            // From the page cache on this thread when it can answer (no hand-off), else
            // queued: the queued requests are all in flight before the first wait.
            match children[child].read_cached(start, &lens) {
                Some(bufs) => cached.push((i..j, bufs)),
                None if cached_only => {
                    for piece in &pieces[i..j] {
                        failed[piece.3] = true;
                    }
                }
                None => subs.push((i..j, children[child].submit_read_v(start, lens))),
            }
            i = j;
        }
        let mut cols: Vec<Vec<Option<Vec<u8>>>> = ncols.iter().map(|&k| vec![None; k]).collect();
        for (range, bufs) in cached {
            for (piece, b) in pieces[range].iter().zip(bufs) {
                cols[piece.3][piece.4] = Some(b);
            }
        }
        for (range, sub) in subs {
            let child = pieces[range.start].0;
            match sub.and_then(|p| children[child].wait(p)) {
                Ok(bufs) => {
                    for (piece, b) in pieces[range].iter().zip(bufs) {
                        cols[piece.3][piece.4] = Some(b);
                    }
                }
                Err(_) => {
                    for piece in &pieces[range] {
                        failed[piece.3] = true;
                    }
                }
            }
        }
        for (r, c) in cols.into_iter().enumerate() {
            if failed[r] || c.iter().any(Option::is_none) {
                continue;
            }
            let mut c: Vec<Vec<u8>> = c.into_iter().flatten().collect();
            out[r] = Some(if c.len() == 1 {
                c.swap_remove(0)
            } else {
                c.concat()
            });
        }
        out
    }

    /// Flush every online device; fails when more devices failed than the group tolerates.
    pub fn flush(&self) -> Result<(), SpaError> {
        let children = self.children.read().clone();
        let subs: Vec<_> = children
            .iter()
            .map(|l| (l.clone(), l.submit_flush()))
            .collect();
        let mut errors = Vec::new();
        for (leaf, sub) in subs {
            if let Err(e) = sub.and_then(|p| leaf.wait(p)) {
                errors.push(e.to_string());
            }
        }
        let ok = match self.kind {
            VdevKind::Mirror => errors.len() < children.len(),
            _ => errors.len() <= self.tolerance(),
        };
        if ok {
            Ok(())
        } else {
            Err(SpaError::PoolFaulted {
                name: format!("vdev {}", self.id),
                reason: errors.join("; "),
            })
        }
    }

    /// Read a block, healing bad copies or columns.
    pub fn read(&self, dva: Dva, psize: u64, verify: Verify<'_>) -> Result<Vec<u8>, SpaError> {
        self.check(dva, psize)?;
        match self.kind {
            VdevKind::Disk | VdevKind::Mirror => {
                self.mirror_read(dva, psize, verify, false).map(|(d, _)| d)
            }
            VdevKind::Raidz(p) => self
                .raidz_read(dva, psize, p, verify, false)
                .map(|(d, _)| d),
        }
    }

    /// Read and check every copy or column, repair bad ones; returns bytes repaired.
    pub fn scrub(&self, dva: Dva, psize: u64, verify: Verify<'_>) -> Result<u64, SpaError> {
        self.check(dva, psize)?;
        match self.kind {
            VdevKind::Disk | VdevKind::Mirror => {
                self.mirror_read(dva, psize, verify, true).map(|(_, r)| r)
            }
            VdevKind::Raidz(p) => self.raidz_read(dva, psize, p, verify, true).map(|(_, r)| r),
        }
    }

    /// Rewrite the untrusted (resilvering) devices' share of one live block; returns bytes
    /// written.
    pub fn resilver(&self, dva: Dva, psize: u64, verify: Verify<'_>) -> Result<u64, SpaError> {
        self.check(dva, psize)?;
        let children = self.children.read().clone();
        if !children.iter().any(|l| l.is_untrusted()) {
            return Ok(0);
        }
        let data = self.read(dva, psize, verify)?;
        let mut written = 0;
        match self.kind {
            VdevKind::Disk | VdevKind::Mirror => {
                for leaf in children.iter().filter(|l| l.is_untrusted()) {
                    leaf.write(&data, dev_off(dva.offset))?;
                    written += psize;
                }
            }
            VdevKind::Raidz(p) => {
                let map = RaidzMap::new(dva.offset, psize, children.len(), p);
                let cols = full_columns(&map, &data);
                for (c, col) in map.cols.iter().enumerate() {
                    let leaf = &children[col.child];
                    if leaf.is_untrusted() {
                        leaf.write(&cols[c], dev_off(col.offset))?;
                        written += col.size;
                    }
                }
            }
        }
        Ok(written)
    }

    fn mirror_read(
        &self,
        dva: Dva,
        psize: u64,
        verify: Verify<'_>,
        all: bool,
    ) -> Result<(Vec<u8>, u64), SpaError> {
        let mut children = self.children.read().clone();
        children.sort_by_key(|l| l.is_untrusted());
        let first_untrusted = children
            .iter()
            .position(|l| l.is_untrusted())
            .unwrap_or(children.len());
        // Spread reads over the trusted copies by 1 MiB region, so sequential reads stay
        // on one device per region and a mirror reads at the speed of all its devices.
        if first_untrusted > 1 {
            let k = ((dva.offset >> 20) % first_untrusted as u64) as usize;
            children[..first_untrusted].rotate_left(k);
        }
        let old: Vec<Arc<Leaf>> = self
            .replacing_leaves()
            .into_iter()
            .filter(|l| l.is_online())
            .collect();
        children.splice(first_untrusted..first_untrusted, old);
        let mut good: Option<Vec<u8>> = None;
        // (copy, its bytes failed verification) for the copies to heal.
        let mut bad: Vec<(Arc<Leaf>, bool)> = Vec::new();
        let mut errors = Vec::new();
        let mut read_errors = 0usize;
        let mut mismatches = 0usize;
        for leaf in &children {
            if good.is_some() && !all {
                break;
            }
            match leaf.read(dev_off(dva.offset), psize as usize) {
                Ok(d) if verify(&d) => {
                    if good.is_none() {
                        good = Some(d);
                    }
                }
                Ok(_) => {
                    mismatches += 1;
                    errors.push(format!("{}: checksum mismatch", leaf.path));
                    bad.push((leaf.clone(), !leaf.is_untrusted()));
                }
                Err(e) => {
                    errors.push(e.to_string());
                    if leaf.is_online() {
                        read_errors += 1;
                        bad.push((leaf.clone(), false));
                    }
                }
            }
        }
        let Some(data) = good else {
            // Every copy an online device holds was read and failed verification: the
            // block is not there (a device error would leave the question open).
            if read_errors == 0 && mismatches > 0 {
                return Err(SpaError::NoValidCopy { dva });
            }
            return Err(SpaError::Unrecoverable {
                dva,
                reason: errors.join("; "),
            });
        };
        // Checksum errors count only once a good copy proves the others wrong, as for
        // raidz: when no copy verifies, the block may never have been written (the
        // intent log probes its pre-allocated next block this way) and the read error
        // alone reports the loss.
        let mut repaired = 0;
        for (leaf, mismatched) in bad {
            if mismatched {
                leaf.count_checksum_error();
            }
            if leaf.write(&data, dev_off(dva.offset)).is_ok() {
                repaired += psize;
            }
        }
        Ok((data, repaired))
    }

    fn raidz_read(
        &self,
        dva: Dva,
        psize: u64,
        p: usize,
        verify: Verify<'_>,
        all: bool,
    ) -> Result<(Vec<u8>, u64), SpaError> {
        let children = self.children.read().clone();
        let src = self.sources(&children);
        let map = RaidzMap::new(dva.offset, psize, children.len(), p);
        let ncols = map.cols.len();
        let mut cols: Vec<Option<Vec<u8>>> = vec![None; ncols];
        let mut errors = Vec::new();
        let read_cols = |cols: &mut Vec<Option<Vec<u8>>>,
                         which: &dyn Fn(usize) -> bool,
                         errors: &mut Vec<String>| {
            let subs: Vec<_> = (0..ncols)
                .filter(|&c| cols[c].is_none() && which(c))
                .map(|c| {
                    let col = map.cols[c];
                    (
                        c,
                        src[col.child]
                            .0
                            .submit_read(dev_off(col.offset), col.size as usize),
                    )
                })
                .collect();
            for (c, sub) in subs {
                match sub.and_then(|pd| src[map.cols[c].child].0.wait(pd)) {
                    Ok(d) => cols[c] = Some(d),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        };
        let trusted = |c: usize| src[map.cols[c].child].1;
        // Fast path: data columns only, from trusted devices.
        read_cols(&mut cols, &|c| (c >= p || all) && trusted(c), &mut errors);
        if !all && (p..ncols).all(|c| cols[c].is_some()) {
            let data = assemble(&map, &cols);
            if verify(&data) {
                return Ok((data, 0));
            }
        }
        read_cols(&mut cols, &|_| true, &mut errors);
        let untrusted: Vec<usize> = (0..ncols).filter(|&c| !trusted(c)).collect();
        let absent: Vec<usize> = (0..ncols).filter(|&c| cols[c].is_none()).collect();
        // Attempts in order: untrusted and absent columns missing; then absent only; then
        // additionally each combination of present columns as silently bad.
        let mut attempts: Vec<Vec<usize>> = Vec::new();
        let mut first: Vec<usize> = absent.clone();
        first.extend(untrusted.iter().filter(|c| !absent.contains(c)));
        first.sort_unstable();
        attempts.push(first);
        if !untrusted.is_empty() {
            attempts.push(absent.clone());
        }
        if absent.len() < p {
            let present: Vec<usize> = (0..ncols).filter(|c| !absent.contains(c)).collect();
            for k in 1..=(p - absent.len()) {
                for combo in combinations(&present, k) {
                    let mut m = absent.clone();
                    m.extend(combo);
                    m.sort_unstable();
                    attempts.push(m);
                }
            }
        }
        let sizes: Vec<u64> = map.cols.iter().map(|c| c.size).collect();
        for missing in attempts {
            if missing.len() > p {
                continue;
            }
            let mut work: Vec<Vec<u8>> =
                cols.iter().map(|c| c.clone().unwrap_or_default()).collect();
            if !reconstruct(&mut work, &sizes, p, &missing) {
                continue;
            }
            let data = assemble_full(&map, &work);
            if !verify(&data) {
                continue;
            }
            // Columns to heal: the missing ones, plus (scrub) any whose bytes differ from
            // the reconstruction, e.g. stale parity.
            let mut heal: Vec<usize> = missing.clone();
            if all {
                let full = full_columns(&map, &data);
                for c in 0..ncols {
                    if !heal.contains(&c)
                        && cols[c].as_deref().is_some_and(|b| b != full[c].as_slice())
                    {
                        heal.push(c);
                    }
                }
                work = full;
            }
            let mut repaired = 0;
            for c in heal {
                let leaf = &children[map.cols[c].child];
                let (read_from, was_trusted) = &src[map.cols[c].child];
                if cols[c].is_some() && *was_trusted {
                    read_from.count_checksum_error();
                }
                if leaf.is_online() && leaf.write(&work[c], dev_off(map.cols[c].offset)).is_ok() {
                    repaired += map.cols[c].size;
                }
            }
            return Ok((data, repaired));
        }
        // With at most `p` columns unreadable every reconstruction was tried, and none
        // verified: the block is not there, whatever the unreadable columns hold.
        let unreadable = (0..ncols).filter(|&c| cols[c].is_none()).count();
        if unreadable <= p {
            return Err(SpaError::NoValidCopy { dva });
        }
        Err(SpaError::Unrecoverable {
            dva,
            reason: if errors.is_empty() {
                "every reconstruction failed verification".into()
            } else {
                errors.join("; ")
            },
        })
    }
}

fn assemble(map: &RaidzMap, cols: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(map.cols[map.parity..].iter().map(|c| c.size as usize).sum());
    for c in cols.iter().skip(map.parity) {
        out.extend_from_slice(c.as_deref().unwrap_or_default());
    }
    out
}

fn assemble_full(map: &RaidzMap, cols: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &cols[map.parity..] {
        out.extend_from_slice(c);
    }
    out
}

fn full_columns(map: &RaidzMap, data: &[u8]) -> Vec<Vec<u8>> {
    let p = map.parity;
    let slices: Vec<&[u8]> = (p..map.cols.len())
        .map(|c| &data[map.data_range(c)])
        .collect();
    let mut parity = vec![vec![0u8; map.cols[0].size as usize]; p];
    generate_parity(&slices, &mut parity);
    let mut out = parity;
    out.extend(slices.iter().map(|s| s.to_vec()));
    out
}

fn combinations(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (i, &x) in items.iter().enumerate() {
        for mut rest in combinations(&items[i + 1..], k - 1) {
            rest.insert(0, x);
            out.push(rest);
        }
    }
    out
}

type LeafJob = (Arc<Leaf>, Result<Pending<()>, SpaError>);

/// A piece of a batched write: child, device offset, the bytes and the range of them.
type WritePiece = (usize, u64, Arc<Vec<u8>>, std::ops::Range<usize>);

/// A block write queued on a group's devices by [`TopVdev::write_submit`].
pub struct VdevWrite {
    dva: Dva,
    jobs: Vec<LeafJob>,
    /// Copies for a device being replaced: best effort, never an error.
    old_jobs: Vec<LeafJob>,
    /// Failed devices the group tolerates for this block.
    max_errors: usize,
}

impl VdevWrite {
    /// Wait for every device; Ok if no more than the group tolerates failed.
    pub fn finish(self) -> Result<(), SpaError> {
        let mut errors = Vec::new();
        // Failed devices, each once: a batch ([`TopVdev::write_submit_many`]) may have
        // several requests on one device, and a block loses at most that device.
        let mut failed: Vec<*const Leaf> = Vec::new();
        for (leaf, sub) in self.jobs {
            if let Err(e) = sub.and_then(|p| leaf.wait(p)) {
                errors.push(e.to_string());
                if !failed.contains(&Arc::as_ptr(&leaf)) {
                    failed.push(Arc::as_ptr(&leaf));
                }
            }
        }
        for (leaf, sub) in self.old_jobs {
            let _ = sub.and_then(|p| leaf.wait(p));
        }
        if failed.len() <= self.max_errors {
            Ok(())
        } else {
            Err(SpaError::WriteFailed {
                dva: self.dva,
                reason: errors.join("; "),
            })
        }
    }
}
