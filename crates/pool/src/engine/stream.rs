//! Block streams for catch-up (replication-design.md §2.7): every block whose io lies in
//! `(since, until]`, from a live volume or a snapshot, in offset order, each with the
//! xxh3-64 of its data, resumable from a byte offset, with an optional rate limit.
//!
//! Invariants: the stream lists and reads in batches, each under its own root hold (a
//! batch reads no block a commit may have handed back); a live block is read with its io
//! from one view (a block rewritten after the listing is sent as it is now, with its new
//! io: the apply rule lets only newer data win, so that is safe); items are in offset
//! order and never overlap, so `offset + len` of the last item received is a resume
//! cursor.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

/// One item of a [`BlockStream`]: a data block (`data` of the block size) or a run of
/// blocks that read as zeros (`data` None), all with io `io`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamBlock {
    /// Byte offset (a multiple of the block size).
    pub offset: u64,
    /// Bytes covered: the block size for data; a hole run may span many blocks.
    pub len: u64,
    /// io number of the newest write or UNMAP of the block(s).
    pub io: u64,
    /// The block's bytes; None: zeros (a hole).
    pub data: Option<Bytes>,
    /// xxh3-64 of `data` (of no bytes for a hole).
    pub checksum: u64,
}

impl StreamBlock {
    fn new(offset: u64, len: u64, io: u64, data: Option<Bytes>) -> StreamBlock {
        let checksum = xxhash_rust::xxh3::xxh3_64(data.as_deref().unwrap_or_default());
        StreamBlock {
            offset,
            len,
            io,
            data,
            checksum,
        }
    }

    /// The checksum matches the data (check after the item crossed a wire).
    pub fn verify(&self) -> bool {
        xxhash_rust::xxh3::xxh3_64(self.data.as_deref().unwrap_or_default()) == self.checksum
    }
}

/// A token bucket over bytes: at most one block ahead of `rate` bytes per second.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn charge(&mut self, n: u64) {
        let now = Instant::now();
        let cap = f64::from(MAX_BLOCK_BYTES);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / self.rate));
        }
    }
}

/// The iterator [`Pool::stream_blocks`] returns. An error ends it.
#[derive(Debug)]
pub struct BlockStream {
    pool: Arc<PoolInner>,
    target: String,
    since: u64,
    until: u64,
    cursor: u64,
    buf: VecDeque<StreamBlock>,
    done: bool,
    bucket: Option<Bucket>,
}

impl BlockStream {
    /// Byte offset the stream goes on from: `offset + len` of the last item listed.
    pub fn cursor(&self) -> u64 {
        self.buf.front().map_or(self.cursor, |b| b.offset)
    }

    fn fill(&mut self) -> Result<()> {
        let p = self.pool.clone();
        p.check_usable()?;
        let _hold = p.hold_roots();
        let view = p.view(&self.target)?;
        let bs = u64::from(view.vol.block_size);
        let mut items = Vec::new();
        let mut bytes = 0u64;
        p.list_io(&view, self.since, self.until, self.cursor / bs, &mut |i| {
            items.push(i);
            bytes += if i.hole { 0 } else { bs };
            Ok(items.len() < STREAM_BATCH_BLOCKS && bytes < STREAM_BATCH_BYTES)
        })?;
        if items.is_empty() {
            self.done = true;
            return Ok(());
        }
        for i in items {
            let offset = i.first * bs;
            // A hole run starting before a resume cursor inside it starts at the cursor.
            let start = offset.max(self.cursor.min(i.end * bs));
            let hole = |io| {
                let start = start / IO_ALIGN_BYTES * IO_ALIGN_BYTES;
                let len = (i.end * bs).min(view.size).saturating_sub(start);
                StreamBlock::new(start, len, io, None)
            };
            let item = if i.hole {
                hole(i.io)
            } else {
                let (data, io) = match i.bp {
                    Some(bp) => (Some(p.read_data(&bp)?), i.io),
                    None => p.block_contents_io(&view.vol, i.first)?,
                };
                match data {
                    Some(d) => StreamBlock::new(offset, bs, io, Some(Bytes::from(d.to_vec()))),
                    None => hole(io),
                }
            };
            if item.len == 0 {
                continue;
            }
            self.cursor = item.offset + item.len;
            self.buf.push_back(item);
        }
        Ok(())
    }
}

impl Iterator for BlockStream {
    type Item = Result<StreamBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buf.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        let b = self.buf.pop_front()?;
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.charge(
                b.data
                    .as_ref()
                    .map_or(STREAM_HOLE_CHARGE_BYTES, |d| d.len() as u64),
            );
        }
        Some(Ok(b))
    }
}

impl Pool {
    /// Stream every block of `target` (`vol` or `vol@snap`) whose io lies in `(since,
    /// until]` (`until` None: no bound), in offset order, starting at byte `resume_from`
    /// (the `offset + len` of the last item a previous stream delivered), at most
    /// `rate_bytes_per_sec` data bytes per second when given. No commit is forced; a
    /// snapshot destroyed mid-stream ends it with an error.
    pub fn stream_blocks(
        &self,
        target: &str,
        since: u64,
        until: Option<u64>,
        resume_from: u64,
        rate_bytes_per_sec: Option<u64>,
    ) -> Result<BlockStream> {
        let p = &self.inner;
        p.check_usable()?;
        {
            let _hold = p.hold_roots();
            p.view(target)?;
        }
        if rate_bytes_per_sec == Some(0) {
            return Err(PoolError::Invalid("a stream rate must be above 0".into()));
        }
        Ok(BlockStream {
            pool: p.clone(),
            target: target.to_string(),
            since,
            until: until.unwrap_or(u64::MAX),
            cursor: resume_from,
            buf: VecDeque::new(),
            done: false,
            bucket: rate_bytes_per_sec.map(|r| Bucket {
                rate: r as f64,
                tokens: 0.0,
                last: Instant::now(),
            }),
        })
    }
}
