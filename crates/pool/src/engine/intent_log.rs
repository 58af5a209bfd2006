//! The intent log's writer side: flush (log blocks, then a device flush), the chain's
//! trim at commit, the background commit thread and the dirty-data throttle.
//!
//! Invariant: `flush` returns only after every earlier write is in a durable log block
//! or a durable root.

use super::*;

impl PoolInner {
    // ---- intent log ----

    pub(super) fn log_commit(&self, txg: u64) -> Result<LogHead> {
        let mut w = self.logw.lock();
        while let Some(front) = w.blocks.front() {
            if front.max_txg > txg {
                break;
            }
            let dva = front.dva;
            w.blocks.pop_front();
            w.head_seq += 1;
            self.store.free(dva, txg);
        }
        if w.next.is_none() {
            // Two sectors: room for one 4 KiB write record with its headers.
            let psize = 2 * SECTOR_SIZE;
            let dva = self.store.alloc(psize, AllocClass::Log, txg)?;
            w.next = Some((dva, psize));
            w.next_alloc_txg = txg;
            w.head_seq = w.seq;
        }
        let (dva, psize) = match w.blocks.front() {
            Some(b) => (b.dva, b.psize),
            None => w.next.unwrap_or_default(),
        };
        Ok(LogHead {
            chain_id: w.chain_id,
            seq: w.head_seq,
            dva,
            psize,
        })
    }

    pub(super) fn flush(&self) -> Result<()> {
        self.check_usable()?;
        let r = self.flush_inner();
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    pub(super) fn flush_inner(&self) -> Result<()> {
        let mut w = self.logw.lock();
        let (records, bytes) = {
            let mut l = self.log.lock();
            let b = l.bytes;
            l.bytes = 0;
            (std::mem::take(&mut l.records), b)
        };
        if records.is_empty() {
            // Every earlier write is covered: by a durable root, or by a log block whose
            // flush completed before it released `logw`.
            return Ok(());
        }
        self.write_log(&mut w, records)?;
        self.store.flush()?;
        self.undirty(bytes);
        if w.blocks.len() as u64 >= MAX_LOG_CHAIN_BLOCKS {
            self.kick();
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
                if let (Some(d), true) = (&r.data, room >= zil::REC_HEADER_BYTES + 512) {
                    let take = (room - zil::REC_HEADER_BYTES) / 512 * 512;
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
                || self.logw.lock().blocks.len() as u64 >= MAX_LOG_CHAIN_BLOCKS;
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
