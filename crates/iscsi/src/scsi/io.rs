//! Medium access commands: READ/WRITE 6/10/12/16, WRITE ATOMIC 16, WRITE AND VERIFY,
//! VERIFY, COMPARE AND WRITE, ORWRITE, WRITE SAME, UNMAP, SYNCHRONIZE CACHE, PRE-FETCH,
//! GET LBA STATUS.
//!
//! Invariants: data-out shorter than the CDB asks for writes only the whole blocks
//! received (the iSCSI layer reports the residual); ORWRITE, WRITE ATOMIC and (unless the
//! backend makes it atomic itself) COMPARE AND WRITE hold the write gate exclusively.

use super::{check_range, Cdb, CmdResult, LogicalUnit, BLOCK_SIZE};
use crate::backend::{Cancel, CompareOutcome, Provisioning};
use crate::be;
use crate::limits;
use crate::sense::ScsiError;
use bytes::{Bytes, BytesMut};

const BS: u64 = BLOCK_SIZE as u64;

/// Decoded LBA, length and flags of a medium-access CDB.
#[derive(Debug, Clone, Copy)]
struct Rw {
    lba: u64,
    blocks: u64,
    /// RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT.
    protect: u8,
    fua: bool,
}

fn decode(c: &[u8]) -> Rw {
    let protect = c[1] >> 5;
    let fua = c[1] & 0x08 != 0;
    match c[0] {
        0x08 | 0x0a => {
            let lba = u64::from(be::u24_at(c, 1) & 0x1f_ffff);
            let blocks = if c[4] == 0 { 256 } else { u64::from(c[4]) };
            Rw {
                lba,
                blocks,
                protect: 0,
                fua: false,
            }
        }
        0x28 | 0x2a | 0x2e | 0x2f | 0x34 | 0x35 | 0x41 => Rw {
            lba: u64::from(be::u32_at(c, 2)),
            blocks: u64::from(be::u16_at(c, 7)),
            protect,
            fua,
        },
        0xa8 | 0xaa | 0xae | 0xaf => Rw {
            lba: u64::from(be::u32_at(c, 2)),
            blocks: u64::from(be::u32_at(c, 6)),
            protect,
            fua,
        },
        0x89 => Rw {
            lba: be::u64_at(c, 2),
            blocks: u64::from(c[13]),
            protect,
            fua,
        },
        0x9c => Rw {
            lba: be::u64_at(c, 2),
            blocks: u64::from(be::u16_at(c, 12)),
            protect,
            fua,
        },
        _ => Rw {
            lba: be::u64_at(c, 2),
            blocks: u64::from(be::u32_at(c, 10)),
            protect,
            fua,
        },
    }
}

impl LogicalUnit {
    fn check_transfer(&self, rw: &Rw, len_byte: u16) -> Result<(), ScsiError> {
        check_range(rw.lba, rw.blocks, self.capacity_blocks())?;
        if rw.blocks * BS > u64::from(limits::MAX_TRANSFER_BYTES) {
            return Err(ScsiError::invalid_cdb_field(len_byte));
        }
        Ok(())
    }

    pub(super) fn writable(&self) -> Result<(), ScsiError> {
        if self.backend.read_only() || self.state.lock().mode.swp {
            return Err(ScsiError::write_protected());
        }
        Ok(())
    }

    pub(super) async fn read(&self, cmd: &Cdb<'_>) -> CmdResult {
        let rw = decode(cmd.bytes);
        if rw.protect != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        self.check_transfer(&rw, 7)?;
        if rw.blocks == 0 {
            return Ok(Bytes::new());
        }
        let len = (rw.blocks * BS) as u32;
        let data = self.read_medium(&cmd.cancel, rw.lba * BS, len).await?;
        self.counters.add_read(u64::from(len));
        Ok(data)
    }

    /// Writes whole blocks of `data` at `lba`, under the shared write gate.
    pub(super) async fn write_blocks(
        &self,
        cancel: &Cancel,
        lba: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), ScsiError> {
        if data.is_empty() {
            return Ok(());
        }
        let fua = fua || !self.state.lock().mode.wce;
        let len = data.len() as u64;
        let _g = self.write_gate.read().await;
        self.modify(cancel, fua, |b, ctx| b.write(ctx, lba * BS, data))
            .await?;
        self.counters.add_write(len);
        Ok(())
    }

    /// The whole blocks of data-out actually received, at most `blocks`.
    fn received(cmd: &Cdb<'_>, blocks: u64) -> Bytes {
        let have = cmd.data_out.len() as u64 / BS;
        cmd.data_out.slice(..(have.min(blocks) * BS) as usize)
    }

    pub(super) async fn write(&self, cmd: &Cdb<'_>, wanted: &mut Option<u32>) -> CmdResult {
        let c = cmd.bytes;
        let rw = decode(c);
        *wanted = Some((rw.blocks * BS).min(u64::from(u32::MAX)) as u32);
        if rw.protect != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        self.check_transfer(&rw, 7)?;
        if rw.blocks == 0 {
            return Ok(Bytes::new());
        }
        self.writable()?;
        if c[0] == 0x9c {
            return self.write_atomic(cmd, rw).await;
        }
        // WRITE AND VERIFY: the data is verified by making it stable before returning.
        let verify = matches!(c[0], 0x2e | 0xae | 0x8e);
        self.write_blocks(
            &cmd.cancel,
            rw.lba,
            Self::received(cmd, rw.blocks),
            rw.fua || verify,
        )
        .await?;
        Ok(Bytes::new())
    }

    /// WRITE ATOMIC(16): one backend write under the exclusive gate, so no other write
    /// of this LU interleaves with it.
    async fn write_atomic(&self, cmd: &Cdb<'_>, rw: Rw) -> CmdResult {
        if rw.blocks > u64::from(limits::MAX_ATOMIC_BLOCKS) {
            return Err(ScsiError::invalid_cdb_field(12));
        }
        let data = Self::received(cmd, rw.blocks);
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        let len = data.len() as u64;
        let fua = rw.fua || !self.state.lock().mode.wce;
        let _g = self.write_gate.write().await;
        self.modify(&cmd.cancel, fua, |b, ctx| b.write(ctx, rw.lba * BS, data))
            .await?;
        self.counters.add_write(len);
        Ok(Bytes::new())
    }

    pub(super) async fn verify(&self, cmd: &Cdb<'_>, wanted: &mut Option<u32>) -> CmdResult {
        let c = cmd.bytes;
        let rw = decode(c);
        let bytchk = (c[1] >> 1) & 0x03;
        *wanted = match bytchk {
            0 => None,
            3 => Some(BLOCK_SIZE),
            _ => Some((rw.blocks * BS).min(u64::from(u32::MAX)) as u32),
        };
        if rw.protect != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        if bytchk == 2 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        self.check_transfer(&rw, 7)?;
        if rw.blocks == 0 {
            return Ok(Bytes::new());
        }
        let len = (rw.blocks * BS) as u32;
        let medium = self.read_medium(&cmd.cancel, rw.lba * BS, len).await?;
        match bytchk {
            0 => Ok(Bytes::new()),
            1 => {
                let expect = &cmd.data_out[..cmd.data_out.len().min(medium.len())];
                compare(&medium[..expect.len()], expect)?;
                Ok(Bytes::new())
            }
            _ => {
                let one = &cmd.data_out[..cmd.data_out.len().min(BLOCK_SIZE as usize)];
                for (i, block) in medium.chunks(BLOCK_SIZE as usize).enumerate() {
                    compare(&block[..one.len()], one).map_err(|_| {
                        let first = block.iter().zip(one).position(|(a, b)| a != b).unwrap_or(0);
                        ScsiError::miscompare((i * BLOCK_SIZE as usize + first) as u32)
                    })?;
                }
                Ok(Bytes::new())
            }
        }
    }

    pub(super) async fn compare_and_write(
        &self,
        cmd: &Cdb<'_>,
        wanted: &mut Option<u32>,
    ) -> CmdResult {
        let rw = decode(cmd.bytes);
        let len = (rw.blocks * BS) as usize;
        *wanted = Some(2 * len as u32);
        if rw.protect != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        if rw.blocks > u64::from(limits::MAX_COMPARE_AND_WRITE_BLOCKS) {
            return Err(ScsiError::invalid_cdb_field(13));
        }
        check_range(rw.lba, rw.blocks, self.capacity_blocks())?;
        // A data-out of another size means the CDB's block count is not what the
        // initiator meant (e.g. 256 blocks wrapped to 0 in the one-byte field).
        if cmd.data_out.len() != 2 * len {
            return Err(ScsiError::invalid_cdb_field(13));
        }
        if rw.blocks == 0 {
            return Ok(Bytes::new());
        }
        self.writable()?;
        // A backend that makes it atomic itself (across replicas and failover) needs no
        // gate; for the others the exclusive gate orders it against this LU's writes.
        let _g = match self.backend.atomic_compare_and_write() {
            true => None,
            false => Some(self.write_gate.write().await),
        };
        let fua = rw.fua || !self.state.lock().mode.wce;
        let (verify, data) = (cmd.data_out.slice(..len), cmd.data_out.slice(len..));
        let outcome = self
            .modify(&cmd.cancel, fua, |b, ctx| {
                b.compare_and_write(ctx, rw.lba * BS, verify, data)
            })
            .await?;
        match outcome {
            CompareOutcome::Written => {
                self.counters.add_write(len as u64);
                Ok(Bytes::new())
            }
            CompareOutcome::Miscompare(at) => Err(ScsiError::miscompare(at)),
        }
    }

    pub(super) async fn or_write(&self, cmd: &Cdb<'_>, wanted: &mut Option<u32>) -> CmdResult {
        let rw = decode(cmd.bytes);
        *wanted = Some((rw.blocks * BS).min(u64::from(u32::MAX)) as u32);
        if rw.protect != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        self.check_transfer(&rw, 10)?;
        if rw.blocks == 0 {
            return Ok(Bytes::new());
        }
        self.writable()?;
        let data = Self::received(cmd, rw.blocks);
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        let _g = self.write_gate.write().await;
        let medium = self
            .read_medium(&cmd.cancel, rw.lba * BS, data.len() as u32)
            .await?;
        let mut out = BytesMut::from(&medium[..]);
        for (o, d) in out.iter_mut().zip(data.iter()) {
            *o |= *d;
        }
        let fua = rw.fua || !self.state.lock().mode.wce;
        let len = out.len() as u64;
        let out = out.freeze();
        self.modify(&cmd.cancel, fua, |b, ctx| b.write(ctx, rw.lba * BS, out))
            .await?;
        self.counters.add_write(len);
        Ok(Bytes::new())
    }

    pub(super) async fn write_same(&self, cmd: &Cdb<'_>, wanted: &mut Option<u32>) -> CmdResult {
        let c = cmd.bytes;
        let rw = decode(c);
        let unmap = c[1] & 0x08 != 0;
        let anchor = c[1] & 0x10 != 0;
        let ndob = c[0] == 0x93 && c[1] & 0x01 != 0;
        *wanted = if ndob { None } else { Some(BLOCK_SIZE) };
        if rw.protect != 0 {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        if anchor {
            return Err(ScsiError::invalid_cdb_field(1));
        }
        let cap = self.capacity_blocks();
        check_range(rw.lba, rw.blocks, cap)?;
        // WSNZ is clear in VPD 0xB0: zero blocks means up to the end of the medium.
        let blocks = if rw.blocks == 0 {
            cap - rw.lba
        } else {
            rw.blocks
        };
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        let rw = Rw { blocks, ..rw };
        let block = if ndob {
            Bytes::from(vec![0u8; BLOCK_SIZE as usize])
        } else {
            // Exactly one block of data-out; anything else is a malformed request.
            if cmd.data_out.len() != BLOCK_SIZE as usize {
                return Err(ScsiError::invalid_cdb_field(1));
            }
            cmd.data_out.slice(..BLOCK_SIZE as usize)
        };
        self.writable()?;
        // With UNMAP the blocks are deallocated whatever the data (LBPRZ: they read as
        // zeros); without it a zero block is written cheaply as a zero range.
        if unmap || block.iter().all(|b| *b == 0) {
            let _g = self.write_gate.read().await;
            // One backend call per bounded piece: each has its own deadline, so a WRITE
            // SAME over the whole medium is many short calls, not one that outlives it.
            let (start, end) = (rw.lba * BS, (rw.lba + rw.blocks) * BS);
            let mut off = start;
            while off < end {
                let len = (end - off).min(limits::ZERO_RANGE_CHUNK_BYTES);
                if unmap {
                    self.modify(&cmd.cancel, false, |b, ctx| b.unmap(ctx, off, len))
                        .await?;
                } else {
                    self.modify(&cmd.cancel, false, |b, ctx| b.write_zeros(ctx, off, len))
                        .await?;
                }
                off += len;
            }
            if unmap {
                self.counters.add_unmap();
            } else {
                self.counters.add_write(end - start);
            }
            return Ok(Bytes::new());
        }
        // Written in bounded chunks so a long WRITE SAME never holds a huge buffer.
        let chunk_blocks = u64::from(limits::MAX_BURST_BYTES / BLOCK_SIZE);
        let mut buf = BytesMut::with_capacity((chunk_blocks.min(rw.blocks) * BS) as usize);
        for _ in 0..chunk_blocks.min(rw.blocks) {
            buf.extend_from_slice(&block);
        }
        let buf = buf.freeze();
        let mut done = 0u64;
        while done < rw.blocks {
            let n = (rw.blocks - done).min(chunk_blocks);
            self.write_blocks(
                &cmd.cancel,
                rw.lba + done,
                buf.slice(..(n * BS) as usize),
                rw.fua,
            )
            .await?;
            done += n;
        }
        Ok(Bytes::new())
    }

    pub(super) async fn unmap(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        if c[1] & 0x01 != 0 {
            return Err(ScsiError::invalid_cdb_field(1)); // ANCHOR
        }
        let len = usize::from(be::u16_at(c, 7));
        if len == 0 {
            return Ok(Bytes::new());
        }
        let data = &cmd.data_out[..len.min(cmd.data_out.len())];
        if data.len() < 8 {
            return Err(ScsiError::param_list_length());
        }
        let desc_len = usize::from(be::u16_at(data, 2));
        if desc_len % 16 != 0 || 8 + desc_len > data.len() {
            return Err(ScsiError::param_list_length());
        }
        let count = desc_len / 16;
        if count > limits::MAX_UNMAP_DESCRIPTORS as usize {
            return Err(ScsiError::invalid_param_field(2));
        }
        let cap = self.capacity_blocks();
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let d = &data[8 + 16 * i..8 + 16 * (i + 1)];
            let lba = be::u64_at(d, 0);
            let blocks = u64::from(be::u32_at(d, 8));
            check_range(lba, blocks, cap)?;
            if blocks > u64::from(limits::MAX_UNMAP_BLOCKS) {
                return Err(ScsiError::invalid_param_field((8 + 16 * i + 8) as u16));
            }
            ranges.push((lba, blocks));
        }
        self.writable()?;
        let _g = self.write_gate.read().await;
        for (lba, blocks) in ranges {
            if blocks > 0 {
                self.modify(&cmd.cancel, false, |b, ctx| {
                    b.unmap(ctx, lba * BS, blocks * BS)
                })
                .await?;
            }
        }
        self.counters.add_unmap();
        Ok(Bytes::new())
    }

    pub(super) async fn synchronize_cache(&self, cmd: &Cdb<'_>) -> CmdResult {
        let rw = decode(cmd.bytes);
        check_range(rw.lba, rw.blocks, self.capacity_blocks())?;
        self.flush_medium(&cmd.cancel).await?;
        self.counters.add_flush();
        Ok(Bytes::new())
    }

    pub(super) fn prefetch(&self, c: &[u8]) -> CmdResult {
        let rw = decode(c);
        check_range(rw.lba, rw.blocks, self.capacity_blocks())?;
        Ok(Bytes::new())
    }

    pub(super) async fn get_lba_status(&self, cmd: &Cdb<'_>) -> CmdResult {
        let c = cmd.bytes;
        let lba = be::u64_at(c, 2);
        let alloc = be::u32_at(c, 10) as usize;
        let cap = self.capacity_blocks();
        if lba >= cap {
            return Err(ScsiError::lba_out_of_range());
        }
        if alloc < 24 {
            // Too short for the header and one descriptor: nothing useful fits.
            return Ok(Bytes::new());
        }
        let max = ((alloc - 8) / 16).clamp(1, limits::MAX_LBA_STATUS_DESCRIPTORS);
        let span = (cap - lba) * BS;
        let turn = self.holds.admit(&cmd.cancel).await?;
        let ctx = self.ctx(&cmd.cancel, false);
        let f = self.backend.lba_status(&ctx, lba * BS, span);
        drop(turn);
        let extents = self.settle(&ctx, f, false).await?;
        let mut v = vec![0u8; 8];
        let mut push = |start: u64, blocks: u64, state: u8| {
            let mut d = [0u8; 16];
            be::put_u64(&mut d, 0, start);
            be::put_u32(&mut d, 8, u32::try_from(blocks).unwrap_or(u32::MAX));
            d[12] = state;
            v.extend_from_slice(&d);
        };
        match extents {
            None => push(lba, cap - lba, 0),
            Some(ext) if ext.is_empty() => push(lba, cap - lba, 0),
            Some(ext) => {
                for e in ext.iter().take(max) {
                    let state = match e.state {
                        Provisioning::Mapped => 0,
                        Provisioning::Deallocated => 1,
                    };
                    push(e.offset / BS, e.len / BS, state);
                }
            }
        }
        let len = (v.len() - 4) as u32;
        be::put_u32(&mut v, 0, len);
        v.truncate(alloc);
        Ok(Bytes::from(v))
    }
}

/// MISCOMPARE at the first differing byte.
fn compare(medium: &[u8], expect: &[u8]) -> Result<(), ScsiError> {
    match medium.iter().zip(expect).position(|(a, b)| a != b) {
        Some(at) => Err(ScsiError::miscompare(at as u32)),
        None => Ok(()),
    }
}
