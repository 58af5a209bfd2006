//! Per-target I/O counters for metrics: plain atomics, updated on completion, read
//! without locks by whoever exports metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cstor_iostats::{HistogramSnapshot, LatencyHistogram};

/// Counters of one target; monotonic since the target was added.
#[derive(Debug, Default)]
pub struct Counters {
    read_ops: AtomicU64,
    write_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    unmap_ops: AtomicU64,
    flush_ops: AtomicU64,
    busy_ns: AtomicU64,
    read_latency: LatencyHistogram,
    write_latency: LatencyHistogram,
}

/// A snapshot of `Counters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Read commands completed.
    pub read_ops: u64,
    /// Write commands completed.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// UNMAP / WRITE SAME with UNMAP completed.
    pub unmap_ops: u64,
    /// Cache flushes completed.
    pub flush_ops: u64,
    /// Time spent in backend calls, summed over concurrent calls, nanoseconds.
    pub busy_ns: u64,
    /// Latency of successful medium reads, from admission (a hold included) to
    /// settlement; its sum is cStor's read time.
    pub read_latency: HistogramSnapshot,
    /// Latency of successful modifying backend calls (writes, WRITE SAME, UNMAP,
    /// COMPARE AND WRITE), measured the same way.
    pub write_latency: HistogramSnapshot,
}

impl Counters {
    pub(crate) fn add_read(&self, bytes: u64) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn add_write(&self, bytes: u64) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn add_unmap(&self) {
        self.unmap_ops.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_flush(&self) {
        self.flush_ops.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_busy(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
    pub(crate) fn read_latency(&self, d: Duration) {
        self.read_latency.record(d);
    }
    pub(crate) fn write_latency(&self, d: Duration) {
        self.write_latency.record(d);
    }
    /// Reads all counters.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            read_ops: self.read_ops.load(Ordering::Relaxed),
            write_ops: self.write_ops.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            unmap_ops: self.unmap_ops.load(Ordering::Relaxed),
            flush_ops: self.flush_ops.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            read_latency: self.read_latency.snapshot(),
            write_latency: self.write_latency.snapshot(),
        }
    }
}
