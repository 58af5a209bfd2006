//! Intent-log replay at open: walk the chain from the root's head, claim its blocks,
//! re-apply the records of txgs after the root, commit.

use super::*;

impl PoolInner {
    /// Replay the chain the root points at. The walk ends at the first block that is
    /// not there (no copy verifies: never written or torn, so never acknowledged); a
    /// block that cannot be *read* is not the end, and refuses the open unless
    /// [`PoolOptions::discard_log_tail`] says to drop the chain from there. The chain's
    /// blocks stay pinned (see [`LogWriter::pinned`]) until every record is applied.
    ///
    /// `earlier_claims`: the blocks an interrupted replay of the same chain claimed
    /// (durably, by the commits it ran). Those this replay does not reach (after a tail
    /// it drops) are freed by its last commit, so a dropped tail leaks no space.
    pub(super) fn replay(self: &Arc<Self>, root: &Root, earlier_claims: Vec<Dva>) -> Result<()> {
        let head = root.log;
        let floor = head.replay_after_txg;
        let mut records = Vec::new();
        let mut found: Vec<(Dva, u32)> = Vec::new();
        if head.dva.asize != 0 {
            let (mut dva, mut psize, mut seq) = (head.dva, head.psize, head.seq);
            loop {
                if psize == 0 || psize % SECTOR_SIZE != 0 || psize > MAX_LOG_BLOCK_BYTES {
                    break;
                }
                let chain = head.chain_id;
                let s = seq;
                let verify = move |b: &[u8]| zil::block_valid(b, chain, s);
                match self.store.read(dva, psize, &verify) {
                    Ok(b) => {
                        // Writers are held at the bound, so a longer chain is corrupt.
                        if found.len() as u64 >= MAX_LOG_CHAIN_BLOCKS {
                            return Err(PoolError::Corrupt {
                                what: "intent log",
                                reason: format!(
                                    "chain {chain:#x} goes on past {MAX_LOG_CHAIN_BLOCKS} blocks"
                                ),
                            });
                        }
                        let blk = zil::decode_block(&b)?;
                        found.push((dva, psize));
                        records.extend(blk.records);
                        dva = blk.next;
                        psize = blk.next_psize;
                        seq += 1;
                    }
                    Err(StoreError::NoValidCopy { .. }) => break,
                    Err(source) => {
                        if !self.opts.discard_log_tail {
                            return Err(PoolError::LogUnreadable { seq, dva, source });
                        }
                        *self.log_tail_dropped.lock() = Some(DroppedLogTail {
                            seq,
                            dva,
                            blocks_replayed: found.len() as u64,
                            reason: source.to_string(),
                        });
                        break;
                    }
                }
            }
            // Blocks found are claimed (their allocation may belong to a txg that never
            // became durable) and freed after the replay's commit.
            let txg = *self.txg.read();
            let mut w = self.logw.lock();
            // The pre-allocated block after the last valid one is ours too, whether or not
            // its allocation was durable (its address came from a checksummed block or
            // the root): claimed and freed with the rest.
            let trailing = (dva.asize != 0).then_some((dva, psize));
            let mut claims = earlier_claims.clone();
            for (dva, _) in found.iter().copied().chain(trailing) {
                if !claims.contains(&dva) {
                    claims.push(dva);
                }
            }
            // Recorded before any commit of this replay can make the claims durable.
            *self.log_claims.lock() = claims;
            for (dva, psize) in found.iter().copied().chain(trailing) {
                match self.store.claim(dva, txg) {
                    // Ok: claimed now; another error: allocated already (durable).
                    Ok(()) => {}
                    Err(StoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::Unsupported =>
                    {
                        // The store cannot claim: never free what might be in use.
                        continue;
                    }
                    Err(_) => {}
                }
                w.blocks.push_back(LogBlockInfo {
                    dva,
                    psize,
                    max_txg: u64::MAX,
                });
            }
            w.seq = w.head_seq + w.blocks.len() as u64;
            w.pinned = Some(head);
        }
        let by_guid: BTreeMap<u64, Arc<Volume>> = self
            .vols
            .read()
            .values()
            .map(|v| (v.guid, v.clone()))
            .collect();
        for r in records.iter().filter(|r| r.txg > floor) {
            let Some(v) = by_guid.get(&r.vol_guid) else {
                continue;
            };
            let h = VolumeHandle {
                pool: self.clone(),
                vol: v.clone(),
            };
            if let Some(set) = &r.set {
                h.replay_set(set, r.data.as_deref().map(Vec::as_slice));
                continue;
            }
            let res = match &r.data {
                Some(d) => h.write_inner(r.offset, d, r.io_number, false),
                None => h.unmap_inner(r.offset, r.unmap_len, r.io_number, false),
            };
            match res {
                Ok(()) | Err(PoolError::OutOfRange { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Every record is in the open txg now: the commit that makes it durable also
        // moves the root off the replayed chain and frees it.
        let open_txg = *self.txg.read();
        {
            let mut w = self.logw.lock();
            w.pinned = None;
            for b in w.blocks.iter_mut() {
                b.max_txg = b.max_txg.min(open_txg);
            }
        }
        // Blocks an interrupted replay claimed that this one did not reach (past a
        // dropped tail): allocated durably, owned by nothing else; freed by the commit
        // that ends the replay (and stops recording the claims).
        self.log_claims.lock().clear();
        let extra: Vec<Dva> = earlier_claims
            .into_iter()
            .filter(|d| !self.logw.lock().blocks.iter().any(|b| b.dva == *d))
            .collect();
        let mut cs = self.commit.lock();
        let claim_txg = *self.txg.read();
        let extra: Vec<Dva> = extra
            .into_iter()
            .filter(|d| match self.store.claim(*d, claim_txg) {
                // Not allocated (the claim's commit never became durable): ours now.
                Ok(()) => true,
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::Unsupported =>
                {
                    false
                }
                // Allocated already: by the interrupted replay's claim.
                Err(_) => true,
            })
            .collect();
        self.commit_locked(
            &mut cs,
            Some(&mut |p: &PoolInner, txg: u64| {
                for d in &extra {
                    p.store.free(*d, txg);
                }
                Ok(())
            }),
        )?;
        Ok(())
    }
}
