//! Volume I/O: [`VolumeHandle`] reads, writes and UNMAPs into the open txg's dirty state
//! and the intent log's pending records.
//!
//! Invariant: a write is in the dirty map of its volume before it returns; writes never
//! read the device.

use super::*;

impl VolumeHandle {
    /// Volume name.
    pub fn name(&self) -> &str {
        &self.vol.name
    }

    /// Volume guid.
    pub fn guid(&self) -> u64 {
        self.vol.guid
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.vol.block_size
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.vol.state.lock().size
    }

    /// The next io number of this volume, for a modifying command (WRITE, WRITE SAME,
    /// UNMAP) or a snapshot cut: strictly above every number this volume handed out
    /// before, even across power loss. Numbers are reserved durably in chunks of
    /// [`IO_RESERVE_CHUNK`] in the volume's directory record; the next chunk is requested
    /// (committed with the next txg) when half of the current one is used, and only a
    /// caller that exhausts a chunk before that commit waits for one. Call it in the
    /// order the commands are to be applied (the LU's dispatch order) and pass the number
    /// to [`VolumeHandle::write`] / [`VolumeHandle::unmap`].
    pub fn next_io(&self) -> Result<u64> {
        for _ in 0..IO_RESERVE_ROUNDS {
            self.pool.check_usable()?;
            let want = match self.reserved_io() {
                Ok(n) => return Ok(n),
                Err(want) => want,
            };
            self.request_io_reservation(want);
            let mut cs = self.pool.commit.lock();
            self.pool.check_usable()?;
            if self.vol.io.lock().durable < want {
                self.pool.commit_locked(&mut cs, None)?;
            }
        }
        Err(PoolError::Busy(format!(
            "volume {}: no io number reservation became durable after {IO_RESERVE_ROUNDS} commits",
            self.vol.name
        )))
    }

    /// [`VolumeHandle::next_io`] without waiting: `None` when the durable reservation
    /// is used up (a commit then extends it in the background). For callers that must
    /// not block, such as an iSCSI LU's dispatch on an async thread; they draw the number
    /// with `next_io` on a blocking thread instead.
    pub fn try_next_io(&self) -> Option<u64> {
        if self.pool.check_usable().is_err() {
            return None;
        }
        match self.reserved_io() {
            Ok(n) => Some(n),
            Err(want) => {
                self.request_io_reservation(want);
                self.pool.kick();
                None
            }
        }
    }

    /// The next number inside the durable reservation (asking for the next chunk at half
    /// use), or `Err(want)`: the reservation the caller must make durable first.
    fn reserved_io(&self) -> std::result::Result<u64, u64> {
        let mut s = self.vol.io.lock();
        if s.next <= s.durable {
            let n = s.next;
            s.next += 1;
            let ahead =
                (s.durable - n < IO_RESERVE_CHUNK / 2 && s.requested <= s.durable).then(|| {
                    s.requested = s.durable + IO_RESERVE_CHUNK;
                    s.requested
                });
            drop(s);
            if let Some(r) = ahead {
                self.request_io_reservation(r);
                self.pool.kick();
            }
            return Ok(n);
        }
        s.requested = s.requested.max(s.next + IO_RESERVE_CHUNK - 1);
        Err(s.requested)
    }

    /// Put a reservation up to `io` in the volume's record (committed with the next txg).
    fn request_io_reservation(&self, io: u64) {
        let mut m = self.vol.meta.lock();
        if m.io_reserved < io {
            m.io_reserved = io;
            self.pool.meta_dirty.store(true, Ordering::SeqCst);
        }
    }

    /// A write or UNMAP carrying `io` (a caller's own numbering, a replica applying the
    /// target's, or a replayed record) keeps later [`VolumeHandle::next_io`] numbers above
    /// it.
    fn saw_io(&self, io: Option<u64>) {
        if let Some(io) = io {
            let mut s = self.vol.io.lock();
            s.next = s.next.max(io.saturating_add(1));
            s.seen_max = s.seen_max.max(io);
        }
    }

    pub(super) fn check_range(&self, st: &VolState, offset: u64, len: u64) -> Result<()> {
        if st.destroyed {
            return Err(PoolError::UnknownVolume {
                name: self.vol.name.clone(),
            });
        }
        if !offset.is_multiple_of(IO_ALIGN_BYTES) || !len.is_multiple_of(IO_ALIGN_BYTES) {
            return Err(PoolError::Unaligned {
                offset,
                len,
                align: IO_ALIGN_BYTES,
            });
        }
        if len > MAX_IO_BYTES {
            return Err(PoolError::Invalid(format!(
                "I/O of {len} bytes exceeds the {MAX_IO_BYTES}-byte limit"
            )));
        }
        if offset.checked_add(len).is_none_or(|end| end > st.size) {
            return Err(PoolError::OutOfRange {
                volume: self.vol.name.clone(),
                offset,
                len,
                size: st.size,
            });
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset` (both multiples of 512). Never-written ranges
    /// read as zeros; a block failing its checksum on every copy fails the read.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = self.range_contents(offset, buf.len() as u64)?;
        Self::copy_out(offset, u64::from(self.vol.block_size), buf, blocks);
        Ok(())
    }

    /// [`VolumeHandle::read`] of `len` bytes into a new buffer, built from the blocks'
    /// bytes without zeroing it first. Why: an iSCSI read zeroed its 128 KiB buffer and
    /// then overwrote every byte of it (the zeroing was 4 % of a 128 KiB read's CPU).
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let blocks = self.range_contents(offset, len as u64)?;
        let bs = u64::from(self.vol.block_size);
        let mut out = Vec::with_capacity(len);
        let mut pos = 0u64;
        for data in blocks {
            let in_blk = (offset + pos) % bs;
            let n = (bs - in_blk).min(len as u64 - pos);
            match data {
                Some(d) => out.extend_from_slice(&d[in_blk as usize..(in_blk + n) as usize]),
                None => out.resize(out.len() + n as usize, 0),
            }
            pos += n;
        }
        Ok(out)
    }

    /// The current contents of the blocks `len` bytes at `offset` cover, after the checks
    /// every read makes.
    fn range_contents(&self, offset: u64, len: u64) -> Result<Vec<blocks::BlockBytes>> {
        let p = &self.pool;
        p.check_usable()?;
        let bs = u64::from(self.vol.block_size);
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, len)?;
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = offset / bs;
        let end = (offset + len).div_ceil(bs);
        Ok(
            p.blocks_contents(&self.vol, first, (end - first) as usize, false)?
                .unwrap_or_default(),
        )
    }

    /// [`VolumeHandle::read`] if it needs no device I/O: every block is in a dirty layer,
    /// the block cache or the page cache. Returns false (with `buf` unspecified) when a
    /// device would have to be read; then call [`VolumeHandle::read`] on a thread that
    /// may block. Never waits for a device, so an async task may call it: an iSCSI LU
    /// serves cached reads without a hop to a blocking thread.
    pub fn read_nowait(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let p = &self.pool;
        p.check_usable()?;
        let len = buf.len() as u64;
        let bs = u64::from(self.vol.block_size);
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, len)?;
        }
        if len == 0 {
            return Ok(true);
        }
        let first = offset / bs;
        let end = (offset + len).div_ceil(bs);
        match p.blocks_contents(&self.vol, first, (end - first) as usize, true)? {
            Some(blocks) => {
                Self::copy_out(offset, bs, buf, blocks);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Copy the range of `buf` out of the contents of the blocks it covers.
    fn copy_out(offset: u64, bs: u64, buf: &mut [u8], blocks: Vec<blocks::BlockBytes>) {
        let len = buf.len() as u64;
        let mut pos = 0u64;
        for data in blocks {
            let abs = offset + pos;
            let in_blk = abs % bs;
            let n = (bs - in_blk).min(len - pos);
            let dst = &mut buf[pos as usize..(pos + n) as usize];
            match data {
                Some(d) => dst.copy_from_slice(&d[in_blk as usize..(in_blk + n) as usize]),
                None => dst.fill(0),
            }
            pos += n;
        }
    }

    /// [`VolumeHandle::read`] that also returns the io number of every volume block the
    /// range covers, in order (0: never written), each from the same view as the bytes
    /// read from that block.
    pub fn read_with_io(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<u64>> {
        let p = &self.pool;
        p.check_usable()?;
        let len = buf.len() as u64;
        let bs = u64::from(self.vol.block_size);
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, len)?;
        }
        let mut ios = Vec::with_capacity((len / bs + 2) as usize);
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let (blk, in_blk) = (abs / bs, abs % bs);
            let n = (bs - in_blk).min(len - pos);
            let dst = &mut buf[pos as usize..(pos + n) as usize];
            let (data, io) = p.block_contents_io(&self.vol, blk)?;
            match data {
                Some(d) => dst.copy_from_slice(&d[in_blk as usize..(in_blk + n) as usize]),
                None => dst.fill(0),
            }
            ios.push(io);
            pos += n;
        }
        Ok(ios)
    }

    /// Write `data` at `offset` (both multiples of 512), tagging its blocks with
    /// `io_number`. Durable after the next [`VolumeHandle::flush`] or txg commit.
    pub fn write(&self, offset: u64, data: &[u8], io_number: Option<u64>) -> Result<()> {
        self.pool.check_usable()?;
        self.pool.admit_write()?;
        self.write_inner(offset, data, io_number, true)?;
        self.settle()
    }

    /// [`VolumeHandle::write`] without waiting for its log record: a batch of writes and
    /// UNMAPs waits once, in [`VolumeHandle::settle_writes`], which must return before
    /// any of them is acknowledged (group commit: one log write, and in write-through
    /// one device flush, for the whole batch). Readers see the data at once.
    pub fn write_unsettled(&self, offset: u64, data: &[u8], io_number: Option<u64>) -> Result<()> {
        self.pool.check_usable()?;
        self.pool.admit_write()?;
        self.write_inner(offset, data, io_number, true)
    }

    /// [`VolumeHandle::unmap`] without waiting for its log record (see
    /// [`VolumeHandle::write_unsettled`]).
    pub fn unmap_unsettled(&self, offset: u64, len: u64, io_number: Option<u64>) -> Result<()> {
        self.pool.check_usable()?;
        self.unmap_inner(offset, len, io_number, true)
    }

    /// Waits as the write mode asks for every earlier write, UNMAP and apply of the pool
    /// (the `_unsettled` calls included): crash-safe, or stable in write-through mode.
    pub fn settle_writes(&self) -> Result<()> {
        self.settle()
    }

    /// Catch-up apply of one whole block (`data` of the block size; all zeros applies a
    /// hole) carrying `incoming_io`, atomic against every other write to the block: it is
    /// applied when the block's io is below `session_start_io` (content from before the
    /// catch-up session yields to the source, even to an older copy: that removes junk)
    /// or below `incoming_io` (live content yields only to newer data). Returns whether it
    /// was applied. Logged and settled like a write (see [`WriteMode`]).
    pub fn apply_block_if(
        &self,
        offset: u64,
        data: &[u8],
        incoming_io: u64,
        session_start_io: u64,
    ) -> Result<bool> {
        let applied = self.apply_block_if_unsettled(offset, data, incoming_io, session_start_io)?;
        self.settle()?;
        Ok(applied)
    }

    /// [`VolumeHandle::apply_block_if`] without waiting for its log record: a batch of
    /// applies waits once, in [`VolumeHandle::settle_applies`], which must return before
    /// any of them is acknowledged (one log write per batch instead of one per block).
    pub fn apply_block_if_unsettled(
        &self,
        offset: u64,
        data: &[u8],
        incoming_io: u64,
        session_start_io: u64,
    ) -> Result<bool> {
        let p = &self.pool;
        p.check_usable()?;
        p.admit_write()?;
        let bs = u64::from(self.vol.block_size);
        if !offset.is_multiple_of(bs) || data.len() as u64 != bs {
            return Err(PoolError::Invalid(format!(
                "a block apply needs one whole block of {bs} bytes at a multiple of it (got {} at {offset})",
                data.len()
            )));
        }
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, bs)?;
        }
        self.saw_io(Some(incoming_io));
        p.throttle(2 * bs)?;
        let txg_guard = p.txg.read();
        let txg = *txg_guard;
        let mut st = self.vol.state.lock();
        self.check_range(&st, offset, bs)?;
        // Under the state lock from the io check to the dirtying: no write of the block
        // can land in between (writers dirty under the same lock).
        let local = self.block_io(&st, offset / bs)?;
        if !(local < session_start_io || incoming_io > local) {
            return Ok(false);
        }
        let (added, shared) = self.dirty_range_shared(&mut st, offset, Some(data), incoming_io);
        p.dirty_bytes.fetch_add(added, Ordering::SeqCst);
        let rec_data = shared.unwrap_or_else(|| Arc::new(data.to_vec()));
        {
            let mut l = p.log.lock();
            l.records.push(LogRecord {
                vol_guid: self.vol.guid,
                txg,
                offset,
                data: Some(rec_data),
                unmap_len: 0,
                io_number: Some(incoming_io),
                set: None,
            });
            l.bytes += bs;
            l.pushed += 1;
            self.vol.note_unstable(p, Some(incoming_io), l.pushed, txg);
        }
        p.dirty_bytes.fetch_add(bs, Ordering::SeqCst);
        Ok(true)
    }

    /// Waits as the write mode asks for the applies made by
    /// [`VolumeHandle::apply_block_if_unsettled`] (and every earlier write).
    pub fn settle_applies(&self) -> Result<()> {
        self.settle()
    }

    /// The io of block `blk` now: that of its dirty entry or the UNMAP covering it in the
    /// open txg, then in the syncing one, else the committed tree's (0: never written).
    fn block_io(&self, st: &VolState, blk: u64) -> Result<u64> {
        let layers = [
            (st.open.get(&blk), &st.open_frees[..]),
            (st.syncing.get(&blk), &st.syncing_frees[..]),
        ];
        for (d, frees) in layers {
            if let Some(d) = d {
                return Ok(match d {
                    Dirty::Data { io, .. } | Dirty::Hole { io } | Dirty::Partial { io, .. } => *io,
                });
            }
            if let Some(io) = range_covers(frees, blk) {
                return Ok(io);
            }
        }
        let tree = self.vol.tree.read();
        Ok(self.pool.lookup(&tree, self.vol.levels, blk)?.io_max)
    }

    /// Set when this volume's writes and UNMAPs return ([`WriteMode`]).
    pub fn set_write_mode(&self, mode: WriteMode) {
        let m = match mode {
            WriteMode::Buffered => 0,
            WriteMode::CrashSafe => 1,
            WriteMode::WriteThrough => 2,
        };
        self.vol.write_mode.store(m, Ordering::SeqCst);
    }

    /// This volume's [`WriteMode`].
    pub fn write_mode(&self) -> WriteMode {
        match self.vol.write_mode.load(Ordering::SeqCst) {
            1 => WriteMode::CrashSafe,
            2 => WriteMode::WriteThrough,
            _ => WriteMode::Buffered,
        }
    }

    /// Wait as the write mode asks after a write or UNMAP put its log records.
    fn settle(&self) -> Result<()> {
        match self.write_mode() {
            WriteMode::Buffered => Ok(()),
            WriteMode::CrashSafe => self.pool.log_sync(false),
            WriteMode::WriteThrough => self.pool.log_sync(true),
        }
    }

    /// Dirty the part of one block at volume offset `abs` with `src` (within the block).
    /// Returns the dirty bytes added (a block newly dirty in the open txg). Never reads
    /// the device: a partial write to a block not yet dirty becomes a sector overlay.
    pub(super) fn dirty_range(
        &self,
        st: &mut VolState,
        abs: u64,
        src: Option<&[u8]>,
        io: u64,
    ) -> u64 {
        self.dirty_range_shared(st, abs, src, io).0
    }

    /// [`Self::dirty_range`], also returning the new block's bytes when `src` replaced a
    /// whole block with data: the intent log shares them instead of copying (a later
    /// partial write copies on write, so the log keeps what this write wrote).
    pub(super) fn dirty_range_shared(
        &self,
        st: &mut VolState,
        abs: u64,
        src: Option<&[u8]>,
        io: u64,
    ) -> (u64, Option<Arc<Vec<u8>>>) {
        let bs = self.vol.block_size as usize;
        let blk = abs / bs as u64;
        let in_blk = (abs % bs as u64) as usize;
        let src = src.unwrap_or_default();
        let n = src.len();
        let zero = src.iter().all(|&b| b == 0);
        let sec = IO_ALIGN_BYTES as usize;
        if n == bs {
            let (entry, shared) = if zero {
                (Dirty::Hole { io }, None)
            } else {
                let data = Arc::new(src.to_vec());
                (
                    Dirty::Data {
                        data: data.clone(),
                        io,
                    },
                    Some(data),
                )
            };
            let added = if st.open.insert(blk, entry).is_none() {
                bs as u64
            } else {
                0
            };
            return (added, shared);
        }
        let (entry, added) = match st.open.remove(&blk) {
            Some(Dirty::Data { mut data, .. }) => {
                Arc::make_mut(&mut data)[in_blk..in_blk + n].copy_from_slice(src);
                (Dirty::Data { data, io }, 0)
            }
            Some(Dirty::Hole { .. }) => {
                if zero {
                    (Dirty::Hole { io }, 0)
                } else {
                    let mut data = vec![0u8; bs];
                    data[in_blk..in_blk + n].copy_from_slice(src);
                    (
                        Dirty::Data {
                            data: Arc::new(data),
                            io,
                        },
                        0,
                    )
                }
            }
            Some(Dirty::Partial {
                mut data,
                mut valid,
                ..
            }) => {
                Arc::make_mut(&mut data)[in_blk..in_blk + n].copy_from_slice(src);
                sectors_set(&mut valid, in_blk / sec, n / sec);
                if all_sectors(&valid, bs / sec) {
                    (Dirty::Data { data, io }, 0)
                } else {
                    (Dirty::Partial { data, valid, io }, 0)
                }
            }
            None => {
                let mut data = vec![0u8; bs];
                data[in_blk..in_blk + n].copy_from_slice(src);
                let mut valid = [0u64; MAX_SECTORS / 64];
                sectors_set(&mut valid, in_blk / sec, n / sec);
                (
                    Dirty::Partial {
                        data: Arc::new(data),
                        valid,
                        io,
                    },
                    bs as u64,
                )
            }
        };
        st.open.insert(blk, entry);
        (added, None)
    }

    pub(super) fn write_inner(
        &self,
        offset: u64,
        data: &[u8],
        io: Option<u64>,
        log: bool,
    ) -> Result<()> {
        self.write_inner_opts(offset, data, io, log, true)
            .map(|_| ())
    }

    /// [`VolumeHandle::write`] if it can complete without waiting: a buffered-mode
    /// volume, a pool under its fill threshold and its dirty-data bound (so neither the
    /// throttle nor the fill check has to run a commit). Returns false, with nothing
    /// written, when it would have to wait; then call [`VolumeHandle::write`] on a
    /// thread that may block. Why: the iSCSI LU calls it on its async task, in dispatch
    /// order, saving the hop to a blocking thread and back that cost more than the
    /// write's copy into the open txg (issue 9 item 10).
    pub fn write_nowait(&self, offset: u64, data: &[u8], io_number: Option<u64>) -> Result<bool> {
        let p = &self.pool;
        p.check_usable()?;
        if self.write_mode() != WriteMode::Buffered || p.over_threshold() {
            return Ok(false);
        }
        self.write_inner_opts(offset, data, io_number, true, false)
    }

    /// The write path; without `may_wait`, returns false (nothing done) where the dirty
    /// throttle would wait.
    fn write_inner_opts(
        &self,
        offset: u64,
        data: &[u8],
        io: Option<u64>,
        log: bool,
        may_wait: bool,
    ) -> Result<bool> {
        let p = &self.pool;
        let len = data.len() as u64;
        {
            let st = self.vol.state.lock();
            self.check_range(&st, offset, len)?;
        }
        let bs = u64::from(self.vol.block_size);
        if may_wait {
            p.throttle_vol(&self.vol, len + bs)?;
        } else if !p.under_dirty_bound(len + bs) && !p.within_share(&self.vol) {
            return Ok(false);
        }
        self.saw_io(io);
        let txg_guard = p.txg.read();
        let txg = *txg_guard;
        let mut st = self.vol.state.lock();
        self.check_range(&st, offset, len)?;
        let mut added = 0u64;
        let mut pos = 0u64;
        // Log records: whole blocks share the dirty block's bytes; the other pieces are
        // copied, runs of them merged. Replaying them in order writes the same bytes.
        let mut records: Vec<LogRecord> = Vec::new();
        let mut copied: Option<(u64, u64)> = None;
        let record = |off: u64, d: Arc<Vec<u8>>| LogRecord {
            vol_guid: self.vol.guid,
            txg,
            offset: off,
            data: Some(d),
            unmap_len: 0,
            io_number: io,
            set: None,
        };
        while pos < len {
            let abs = offset + pos;
            let n = (bs - abs % bs).min(len - pos);
            let src = &data[pos as usize..(pos + n) as usize];
            let (a, shared) = self.dirty_range_shared(&mut st, abs, Some(src), io.unwrap_or(0));
            added += a;
            match shared.filter(|_| log) {
                Some(d) => {
                    if let Some((s, e)) = copied.take() {
                        records.push(record(
                            offset + s,
                            Arc::new(data[s as usize..e as usize].to_vec()),
                        ));
                    }
                    records.push(record(abs, d));
                }
                None => copied = Some((copied.map_or(pos, |c| c.0), pos + n)),
            }
            pos += n;
        }
        p.dirty_bytes.fetch_add(added, Ordering::SeqCst);
        if log {
            if let Some((s, e)) = copied {
                records.push(record(
                    offset + s,
                    Arc::new(data[s as usize..e as usize].to_vec()),
                ));
            }
            let mut l = p.log.lock();
            l.records.extend(records);
            // Counted in full even when shared: a later overwrite of the block un-shares it.
            l.bytes += len;
            l.pushed += 1;
            self.vol.note_unstable(p, io, l.pushed, txg);
            p.dirty_bytes.fetch_add(len, Ordering::SeqCst);
        } else {
            // Not logged (replay, receive): stable with its txg's commit.
            self.vol.note_unstable(p, io, u64::MAX, txg);
        }
        drop(st);
        drop(txg_guard);
        Ok(true)
    }

    /// Free a range (multiples of 512): whole blocks become holes (their space is freed
    /// unless a snapshot holds them), partial blocks are zeroed.
    pub fn unmap(&self, offset: u64, len: u64, io_number: Option<u64>) -> Result<()> {
        self.pool.check_usable()?;
        self.unmap_inner(offset, len, io_number, true)?;
        self.settle()
    }

    pub(super) fn unmap_inner(
        &self,
        offset: u64,
        len: u64,
        io: Option<u64>,
        log: bool,
    ) -> Result<()> {
        self.saw_io(io);
        let p = &self.pool;
        let bs = u64::from(self.vol.block_size);
        {
            let st = self.vol.state.lock();
            if !offset.is_multiple_of(IO_ALIGN_BYTES) || !len.is_multiple_of(IO_ALIGN_BYTES) {
                return Err(PoolError::Unaligned {
                    offset,
                    len,
                    align: IO_ALIGN_BYTES,
                });
            }
            if offset.checked_add(len).is_none_or(|e| e > st.size) || st.destroyed {
                return Err(PoolError::OutOfRange {
                    volume: self.vol.name.clone(),
                    offset,
                    len,
                    size: st.size,
                });
            }
        }
        // Whole blocks become one free range per chunk; chunks keep each log record and
        // free range bounded.
        let chunk = MAX_UNMAP_CHUNK_BYTES / bs * bs;
        let mut done = 0u64;
        while done < len {
            let n = chunk.min(len - done);
            p.throttle(bs * 2)?;
            let txg_guard = p.txg.read();
            let txg = *txg_guard;
            let mut st = self.vol.state.lock();
            let start = offset + done;
            let io_n = io.unwrap_or(0);
            let first = start.div_ceil(bs);
            let end = (start + n) / bs;
            let mut added = 0u64;
            if end > first {
                // Partial blocks at either end are zeroed like a write of zeros.
                if start < first * bs {
                    let zeros = vec![0u8; (first * bs - start) as usize];
                    added += self.dirty_range(&mut st, start, Some(&zeros), io_n);
                }
                if end * bs < start + n {
                    let zeros = vec![0u8; (start + n - end * bs) as usize];
                    added += self.dirty_range(&mut st, end * bs, Some(&zeros), io_n);
                }
                let dropped: Vec<u64> = st.open.range(first..end).map(|(k, _)| *k).collect();
                for k in &dropped {
                    st.open.remove(k);
                }
                p.undirty(dropped.len() as u64 * bs);
                st.open_frees.push(FreeRange {
                    first,
                    end,
                    io: io_n,
                });
                added += FREE_RANGE_CHARGE_BYTES;
            } else {
                // Within one block (or across one boundary without a whole block).
                let mut pos = 0u64;
                while pos < n {
                    let abs = start + pos;
                    let m = (bs - abs % bs).min(n - pos);
                    let zeros = vec![0u8; m as usize];
                    added += self.dirty_range(&mut st, abs, Some(&zeros), io_n);
                    pos += m;
                }
            }
            p.dirty_bytes.fetch_add(added, Ordering::SeqCst);
            if log {
                let mut l = p.log.lock();
                l.records.push(LogRecord {
                    vol_guid: self.vol.guid,
                    txg,
                    offset: start,
                    data: None,
                    unmap_len: n,
                    io_number: io,
                    set: None,
                });
                l.pushed += 1;
                self.vol.note_unstable(p, io, l.pushed, txg);
            } else {
                self.vol.note_unstable(p, io, u64::MAX, txg);
            }
            drop(st);
            drop(txg_guard);
            done += n;
        }
        Ok(())
    }

    /// Make every earlier write durable (the whole pool's log is flushed).
    pub fn flush(&self) -> Result<()> {
        self.pool.flush()
    }

    pub(crate) fn write_recv(&self, offset: u64, data: &[u8], io: u64) -> Result<()> {
        self.write_inner(offset, data, Some(io), false)
    }

    pub(crate) fn unmap_recv(&self, offset: u64, len: u64, io: u64) -> Result<()> {
        self.unmap_inner(offset, len, Some(io), false)
    }

    pub(crate) fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }
}
