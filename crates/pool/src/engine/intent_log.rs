//! The intent log's writer side: flush (log blocks, then a device flush), the chain's
//! trim at commit, the background commit thread and the dirty-data throttle.
//!
//! Invariant: `flush` returns only after every earlier write is in a durable log block
//! or a durable root.

use super::*;

impl PoolInner {
    // ---- intent log ----

    /// The log head the root of `txg` records: the first block holding a record of a
    /// later txg, else the pre-allocated next block. Returns it with the number of blocks
    /// before it, freed in `txg`.
    pub(super) fn log_commit(&self, txg: u64) -> Result<(LogHead, usize)> {
        let mut w = self.logw.lock();
        if let Some(head) = w.pinned {
            return Ok((head, 0));
        }
        let trim = w.blocks.iter().take_while(|b| b.max_txg <= txg).count();
        // Freed in this txg, so reusable only once the root that no longer points at
        // them is durable; [`Self::log_trim`] drops them from the chain after that.
        for b in w.blocks.iter().take(trim) {
            self.store.free(b.dva, txg);
        }
        if w.next.is_none() {
            // Two sectors: room for one 4 KiB write record with its headers.
            let psize = 2 * SECTOR_SIZE;
            let dva = self.store.alloc(psize, AllocClass::Log, txg)?;
            w.next = Some((dva, psize));
            w.next_alloc_txg = txg;
            if w.blocks.is_empty() {
                w.head_seq = w.seq;
            }
        }
        let (dva, psize, seq) = match w.blocks.get(trim) {
            Some(b) => (b.dva, b.psize, w.head_seq + trim as u64),
            None => {
                let (d, p) = w.next.unwrap_or_default();
                (d, p, w.seq)
            }
        };
        Ok((
            LogHead {
                chain_id: w.chain_id,
                seq,
                dva,
                psize,
                replay_after_txg: txg,
            },
            trim,
        ))
    }

    /// Drop the `n` oldest log blocks (freed by [`Self::log_commit`]) from the chain once
    /// the root of the commit that freed them is durable: until then a replay would
    /// still walk them, so writers are held against the chain with them in it.
    pub(super) fn log_trim(&self, n: usize) {
        let mut w = self.logw.lock();
        for _ in 0..n {
            if w.blocks.pop_front().is_none() {
                break;
            }
            w.head_seq += 1;
        }
    }

    /// Log blocks a flush of `records` records holding `bytes` data bytes needs at most:
    /// blocks are packed full but for what a split at a 4 KiB boundary leaves over (up to
    /// [`LOG_SPLIT_BYTES`] and one more record header per block), plus the pre-allocated
    /// first block, which may be small. An undercount would let a chain pass the bound.
    fn log_blocks_needed(records: usize, bytes: u64) -> u64 {
        let payload = bytes + (records * zil::REC_HEADER_BYTES) as u64;
        let per_block = u64::from(MAX_LOG_BLOCK_BYTES)
            - zil::LOG_HEADER_BYTES as u64
            - LOG_SPLIT_BYTES
            - zil::REC_HEADER_BYTES as u64;
        payload.div_ceil(per_block) + 1
    }

    pub(super) fn flush(&self) -> Result<()> {
        self.log_sync(true)
    }

    /// Write every pending record to the log chain through completed write calls; with
    /// `durable`, also flush the device. Group commit: one caller writes the records of
    /// every writer before it, the others find them written when they get `logw`.
    pub(super) fn log_sync(&self, durable: bool) -> Result<()> {
        self.check_usable()?;
        let r = self.log_sync_inner(durable);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    /// Write the pending records to the log chain (and flush the device when `durable`).
    /// Held while the chain is full: replay reads at most [`MAX_LOG_CHAIN_BLOCKS`] blocks,
    /// so a block past that bound would be a flushed write a power cut loses. A held call
    /// runs (or waits for) a commit, which makes every pending record durable in the tree
    /// and trims the chain.
    fn log_sync_inner(&self, durable: bool) -> Result<()> {
        // Ends: each round writes the records and returns, finds none, or commits; a
        // commit covers every record pending when it closed the open txg, and the rounds
        // after it only see records written since.
        loop {
            let mut w = self.logw.lock();
            // Another flush may have failed while this one waited for `logw`.
            self.check_usable()?;
            let (count, bytes) = {
                let l = self.log.lock();
                (l.records.len(), l.bytes)
            };
            if count == 0 {
                // Every earlier write is covered: by a durable root, or by a log block
                // whose flush completed before it released `logw`, or (crash-safe
                // writes) by a written block the device must still flush.
                if durable && w.unflushed {
                    if let Err(e) = self.store.flush() {
                        let e = PoolError::from(e);
                        self.fail(&e);
                        return Err(e);
                    }
                    w.unflushed = false;
                }
                if durable {
                    self.durable_seq.fetch_max(w.written_seq, Ordering::SeqCst);
                }
                return Ok(());
            }
            let need = Self::log_blocks_needed(count, bytes);
            if !w.blocks.is_empty() && w.blocks.len() as u64 + need > MAX_LOG_CHAIN_BLOCKS {
                drop(w);
                self.commit_for_log(need)?;
                continue;
            }
            let (records, bytes, taken) = {
                let mut l = self.log.lock();
                let b = l.bytes;
                l.bytes = 0;
                (std::mem::take(&mut l.records), b, l.pushed)
            };
            // A failure latches the pool before `logw` is released: a flush waiting for
            // it must not find the records gone and report them durable.
            if let Err(e) = self.write_log(&mut w, records) {
                self.fail(&e);
                return Err(e);
            }
            w.written_seq = taken;
            if durable {
                if let Err(e) = self.store.flush() {
                    let e = PoolError::from(e);
                    self.fail(&e);
                    return Err(e);
                }
                w.unflushed = false;
                self.durable_seq.fetch_max(taken, Ordering::SeqCst);
            } else {
                w.unflushed = true;
            }
            self.undirty(bytes);
            if w.blocks.len() as u64 >= MAX_LOG_CHAIN_BLOCKS / 2 {
                // Trim early, so writers are rarely held at the bound.
                self.kick();
            }
            return Ok(());
        }
    }

    /// Commit so the log chain has room for `need` more blocks (unless a commit that ran
    /// while this one waited for the lock made room already).
    fn commit_for_log(&self, need: u64) -> Result<()> {
        let mut cs = self.commit.lock();
        self.check_usable()?;
        let len = self.logw.lock().blocks.len() as u64;
        if len > 0 && len + need > MAX_LOG_CHAIN_BLOCKS {
            self.commit_locked(&mut cs, None)?;
        }
        Ok(())
    }

    pub(super) fn write_log(&self, w: &mut LogWriter, records: Vec<LogRecord>) -> Result<()> {
        let open_txg = *self.txg.read();
        let mut queue: VecDeque<LogRecord> = records.into();
        while !queue.is_empty() {
            let (dva, psize) = match w.next {
                Some(n) => n,
                None => {
                    return Err(PoolError::Corrupt {
                        what: "intent log",
                        reason: "no pre-allocated log block (pool not committed)".into(),
                    })
                }
            };
            let cap = psize as usize - zil::LOG_HEADER_BYTES;
            let mut used = 0usize;
            let mut batch = Vec::new();
            while let Some(r) = queue.pop_front() {
                let need = r.encoded_len();
                if used + need <= cap {
                    used += need;
                    batch.push(r);
                    continue;
                }
                let room = cap - used;
                // Split only at a 4 KiB boundary of the volume: a record whose second
                // half is in a block a power cut lost would leave a torn 4 KiB unit.
                let take = if room >= zil::REC_HEADER_BYTES + 512 {
                    let max_take = ((room - zil::REC_HEADER_BYTES) / 512 * 512) as u64;
                    ((r.offset + max_take) / LOG_SPLIT_BYTES * LOG_SPLIT_BYTES)
                        .saturating_sub(r.offset) as usize
                } else {
                    0
                };
                if let (Some(d), true) = (
                    &r.data,
                    take > 0 && take < r.len() as usize && r.set.is_none(),
                ) {
                    let head = LogRecord {
                        data: Some(Arc::new(d[..take].to_vec())),
                        ..r.clone()
                    };
                    let tail = LogRecord {
                        offset: r.offset + take as u64,
                        data: Some(Arc::new(d[take..].to_vec())),
                        ..r
                    };
                    used += head.encoded_len();
                    batch.push(head);
                    queue.push_front(tail);
                } else {
                    queue.push_front(r);
                }
                break;
            }
            assert!(!batch.is_empty() || used == 0, "log packing");
            let remaining: usize = queue.iter().map(LogRecord::encoded_len).sum();
            let want = if remaining > 0 { remaining } else { used } + zil::LOG_HEADER_BYTES;
            let next_psize = (want.div_ceil(SECTOR_SIZE as usize) * SECTOR_SIZE as usize)
                .clamp(SECTOR_SIZE as usize, MAX_LOG_BLOCK_BYTES as usize)
                as u32;
            let next = self.store.alloc(next_psize, AllocClass::Log, open_txg)?;
            // Freed by the commit of the newest txg among its records and its allocation.
            let max_txg = batch
                .iter()
                .map(|r| r.txg)
                .max()
                .unwrap_or(0)
                .max(w.next_alloc_txg);
            let block = zil::encode_block(w.chain_id, w.seq, next, next_psize, &batch, psize);
            self.store.write(dva, &block)?;
            w.blocks.push_back(LogBlockInfo {
                dva,
                psize,
                max_txg,
            });
            w.seq += 1;
            w.next = Some((next, next_psize));
            w.next_alloc_txg = open_txg;
        }
        Ok(())
    }

    pub(super) fn kick(&self) {
        self.bg.lock().kick = true;
        self.bg_cv.notify_all();
    }

    pub(super) fn background(self: Arc<Self>) {
        // Runs until `stop`; each round waits at most one txg interval.
        loop {
            {
                let mut bg = self.bg.lock();
                if !bg.stop && !bg.kick {
                    self.bg_cv.wait_for(&mut bg, self.opts.txg_interval);
                }
                if bg.stop {
                    return;
                }
                bg.kick = false;
            }
            let dirty = self.dirty_bytes.load(Ordering::SeqCst) > 0
                || self.meta_dirty.load(Ordering::SeqCst)
                || self.logw.lock().blocks.len() as u64 >= MAX_LOG_CHAIN_BLOCKS / 2;
            if !dirty {
                continue;
            }
            let mut cs = self.commit.lock();
            if self.check_usable().is_err() {
                return;
            }
            if self.commit_locked(&mut cs, None).is_err() {
                return;
            }
        }
    }

    /// True when `incoming` more dirty bytes pass [`Self::throttle`] without waiting
    /// (kicking a background commit past half the bound, as it does).
    pub(super) fn under_dirty_bound(&self, incoming: u64) -> bool {
        let max = self.opts.dirty_max_bytes;
        let dirty = self.dirty_bytes.load(Ordering::SeqCst);
        if dirty > max / 2 {
            self.kick();
        }
        dirty + incoming <= max || dirty == 0
    }

    /// [`Self::throttle`] for a write to volume `v`, letting through a volume that holds
    /// no more than its share of the dirty bound (the bound over the volumes with dirty
    /// data, its own counted even while clean) while the pool is under twice the bound. Why: the bound is pool-wide, so one
    /// volume writing fast filled it and every other volume's writers then waited for
    /// the commit of that volume's data (seconds on a slow device); now only writers of
    /// volumes over their share wait. Memory stays bounded: the count holds a buffered
    /// write twice (its block and its log record, which mostly shares the block's bytes),
    /// a volume over its share adds at most one write past the bound and those within
    /// their shares together at most twice the bound, so the count stays under
    /// [`DIRTY_HARD_FACTOR`] times the bound, where every writer waits.
    pub(super) fn throttle_vol(&self, v: &Volume, incoming: u64) -> Result<()> {
        if self.under_dirty_bound(incoming) || self.within_share(v) {
            return Ok(());
        }
        self.throttle(incoming)
    }

    /// True when volume `v` holds at most its share of the dirty bound and the pool is
    /// under [`DIRTY_HARD_FACTOR`] times the bound (see [`Self::throttle_vol`]).
    pub(super) fn within_share(&self, v: &Volume) -> bool {
        let max = self.opts.dirty_max_bytes;
        if self.dirty_bytes.load(Ordering::SeqCst) >= max.saturating_mul(DIRTY_HARD_FACTOR) {
            return false;
        }
        // What the volume added since the running commit closed its txg: its data in
        // that commit is on its way to disk, and counting it would make any volume look
        // over its share whenever commits are slow.
        let mine = v.state.lock().open.len() as u64 * u64::from(v.block_size);
        let vols: Vec<Arc<Volume>> = self.vols.read().values().cloned().collect();
        // The writer's own volume counts whether it is dirty or not: it is about to be.
        // Counted only when dirty, a clean volume next to one other with data in a
        // running commit looked alone and its writer waited for that commit (the
        // light writers' ~380 ms stalls of volume_isolation on a quiet machine).
        let others = vols
            .iter()
            .filter(|o| !std::ptr::eq(Arc::as_ptr(o), v) && self.has_dirty(o))
            .count() as u64;
        // A volume alone keeps the plain bound (no larger txgs than before).
        others >= 1 && mine.saturating_mul(others + 1) <= max
    }

    /// Wait (by committing) while dirty data is over the limit.
    pub(super) fn throttle(&self, incoming: u64) -> Result<()> {
        let max = self.opts.dirty_max_bytes;
        if self.dirty_bytes.load(Ordering::SeqCst) > max / 2 {
            self.kick();
        }
        for _ in 0..8 {
            let dirty = self.dirty_bytes.load(Ordering::SeqCst);
            if dirty + incoming <= max || dirty == 0 {
                return Ok(());
            }
            let mut cs = self.commit.lock();
            self.check_usable()?;
            if self.dirty_bytes.load(Ordering::SeqCst) + incoming > max {
                self.commit_locked(&mut cs, None)?;
            }
        }
        Ok(())
    }
}
