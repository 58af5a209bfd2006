//! Test devices for this and other crates' tests: an in-memory device, a power-cut device
//! that yields the image a power cut would leave, and a faulty wrapper (errors, corruption,
//! hangs).
//!
//! Owns: their byte images, behind a mutex each (tests only, so simplicity over speed).
//! Invariants: a [`PowerCutDevice`]'s durable image changes only on `flush`; `crash`
//! never invents bytes that were not written (dropped, torn or whole writes only).
//! Never: used by a production pool (nothing in the spa opens them by path).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::device::Device;
use super::limits::SECTOR_BYTES;

/// A tiny seeded generator (splitmix64) so crash images replay from a seed.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A device held in memory.
#[derive(Debug)]
pub struct MemDevice {
    name: String,
    data: Mutex<Vec<u8>>,
}

impl MemDevice {
    /// A zeroed device of `size_bytes` (rounded down to sectors).
    pub fn new(name: &str, size_bytes: u64) -> Arc<Self> {
        let size = (size_bytes / SECTOR_BYTES * SECTOR_BYTES) as usize;
        Arc::new(MemDevice {
            name: name.to_owned(),
            data: Mutex::new(vec![0; size]),
        })
    }
    /// A device holding `image`.
    pub fn from_image(name: &str, image: Vec<u8>) -> Arc<Self> {
        Arc::new(MemDevice {
            name: name.to_owned(),
            data: Mutex::new(image),
        })
    }
    /// A copy of the whole image.
    pub fn image(&self) -> Vec<u8> {
        self.data.lock().clone()
    }
    /// Overwrite bytes directly (tests corrupting a device behind the pool's back).
    pub fn poke(&self, offset: u64, bytes: &[u8]) {
        let mut d = self.data.lock();
        let o = offset as usize;
        d[o..o + bytes.len()].copy_from_slice(bytes);
    }
}

fn range_check(len: usize, offset: u64, size: usize) -> io::Result<usize> {
    let o = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    if o.checked_add(len).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "I/O beyond device end",
        ));
    }
    Ok(o)
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock();
        let o = range_check(buf.len(), offset, d.len())?;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock();
        let o = range_check(buf.len(), offset, d.len())?;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.data.lock().len() as u64
    }
    fn path(&self) -> &str {
        &self.name
    }
}

/// A power switch shared by several [`PowerCutDevice`]s: after a set number of device
/// operations (writes and flushes, over all devices) the power is off and every further
/// operation is silently lost, as if the machine died at that instant.
#[derive(Debug)]
pub struct PowerSwitch {
    remaining: std::sync::atomic::AtomicI64,
}

impl PowerSwitch {
    /// A switch that never cuts.
    pub fn never() -> Arc<Self> {
        Arc::new(PowerSwitch {
            remaining: std::sync::atomic::AtomicI64::new(i64::MAX),
        })
    }
    /// Cut the power after `ops` more operations.
    pub fn cut_after(&self, ops: u64) {
        self.remaining
            .store(ops.min(i64::MAX as u64) as i64, Ordering::SeqCst);
    }
    /// True once the power is off.
    pub fn is_off(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) <= 0
    }
    fn tick(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::SeqCst) > 0
    }
}

#[derive(Debug)]
struct PowerCutState {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

/// A device that tracks written versus durable data; [`PowerCutDevice::crash`] yields the
/// image a power cut would leave: every write since the last flush dropped, applied, or
/// torn at a sector boundary, in random order.
#[derive(Debug)]
pub struct PowerCutDevice {
    name: String,
    state: Mutex<PowerCutState>,
    switch: Arc<PowerSwitch>,
}

impl PowerCutDevice {
    /// A zeroed device.
    pub fn new(name: &str, size_bytes: u64) -> Arc<Self> {
        Self::from_image(
            name,
            vec![0; (size_bytes / SECTOR_BYTES * SECTOR_BYTES) as usize],
        )
    }
    /// A device whose durable content is `image`.
    pub fn from_image(name: &str, image: Vec<u8>) -> Arc<Self> {
        Self::with_switch(name, image, PowerSwitch::never())
    }
    /// A device on a shared power switch.
    pub fn with_switch(name: &str, image: Vec<u8>, switch: Arc<PowerSwitch>) -> Arc<Self> {
        Arc::new(PowerCutDevice {
            name: name.to_owned(),
            state: Mutex::new(PowerCutState {
                live: image.clone(),
                durable: image,
                pending: Vec::new(),
            }),
            switch,
        })
    }
    /// Writes not yet flushed.
    pub fn pending_writes(&self) -> usize {
        self.state.lock().pending.len()
    }
    /// The durable image plus a random subset of unflushed writes, each whole or torn, in
    /// random order, chosen by `seed`.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        let st = self.state.lock();
        let mut rng = SeededRng::new(seed);
        let mut image = st.durable.clone();
        let mut order: Vec<usize> = (0..st.pending.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for i in order {
            let (off, data) = &st.pending[i];
            let sectors = data.len() / SECTOR_BYTES as usize;
            let o = *off as usize;
            match rng.below(3) {
                0 => {}
                1 => image[o..o + data.len()].copy_from_slice(data),
                _ => {
                    // Torn: each sector independently reached the media or not.
                    for s in 0..sectors {
                        if rng.below(2) == 0 {
                            let a = s * SECTOR_BYTES as usize;
                            let b = a + SECTOR_BYTES as usize;
                            image[o + a..o + b].copy_from_slice(&data[a..b]);
                        }
                    }
                }
            }
        }
        image
    }
    /// A fresh device holding [`PowerCutDevice::crash_image`] as its durable content.
    pub fn crash(&self, seed: u64) -> Arc<PowerCutDevice> {
        PowerCutDevice::from_image(&self.name, self.crash_image(seed))
    }
}

impl Device for PowerCutDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.state.lock();
        let o = range_check(buf.len(), offset, st.live.len())?;
        buf.copy_from_slice(&st.live[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let o = range_check(buf.len(), offset, st.live.len())?;
        if !self.switch.tick() {
            return Ok(());
        }
        st.live[o..o + buf.len()].copy_from_slice(buf);
        st.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        if !self.switch.tick() {
            return Ok(());
        }
        let pending = std::mem::take(&mut st.pending);
        for (off, data) in pending {
            let o = off as usize;
            st.durable[o..o + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
    fn size(&self) -> u64 {
        self.state.lock().live.len() as u64
    }
    fn path(&self) -> &str {
        &self.name
    }
}

/// A wrapper that injects faults: failing reads/writes/flushes, corrupted reads, and
/// hangs (calls block until [`FaultyDevice::release_hang`] or the hang's duration ends).
#[derive(Debug)]
pub struct FaultyDevice {
    inner: Arc<dyn Device>,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    fail_flush: AtomicBool,
    corrupt_reads: AtomicBool,
    hang_ms: AtomicU64,
    hang_lock: Mutex<bool>,
    hang_cv: Condvar,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl FaultyDevice {
    /// Wrap `inner`, healthy at first.
    pub fn new(inner: Arc<dyn Device>) -> Arc<Self> {
        Arc::new(FaultyDevice {
            inner,
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
            corrupt_reads: AtomicBool::new(false),
            hang_ms: AtomicU64::new(0),
            hang_lock: Mutex::new(false),
            hang_cv: Condvar::new(),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }
    /// Make every read fail (or succeed again).
    pub fn set_fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::SeqCst);
    }
    /// Make every write fail.
    pub fn set_fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }
    /// Make every flush fail.
    pub fn set_fail_flush(&self, on: bool) {
        self.fail_flush.store(on, Ordering::SeqCst);
    }
    /// Flip bytes in everything read.
    pub fn set_corrupt_reads(&self, on: bool) {
        self.corrupt_reads.store(on, Ordering::SeqCst);
    }
    /// Make every call block for `duration` (or until released); zero stops hanging.
    pub fn set_hang(&self, duration: Duration) {
        *self.hang_lock.lock() = !duration.is_zero();
        self.hang_ms
            .store(duration.as_millis() as u64, Ordering::SeqCst);
    }
    /// Wake every hung call and stop hanging.
    pub fn release_hang(&self) {
        *self.hang_lock.lock() = false;
        self.hang_ms.store(0, Ordering::SeqCst);
        self.hang_cv.notify_all();
    }
    /// Reads that reached this device.
    pub fn read_count(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
    /// Writes that reached this device.
    pub fn write_count(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
    fn maybe_hang(&self) {
        let ms = self.hang_ms.load(Ordering::SeqCst);
        if ms == 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut hung = self.hang_lock.lock();
        while *hung {
            if self.hang_cv.wait_until(&mut hung, deadline).timed_out() {
                break;
            }
        }
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} fault"))
}

impl Device for FaultyDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.maybe_hang();
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected("read"));
        }
        self.inner.read_at(buf, offset)?;
        if self.corrupt_reads.load(Ordering::SeqCst) {
            for b in buf.iter_mut().step_by(97) {
                *b ^= 0x5A;
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.maybe_hang();
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("write"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.maybe_hang();
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(injected("flush"));
        }
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn path(&self) -> &str {
        self.inner.path()
    }
}
