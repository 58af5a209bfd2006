//! cstor-iostats: lock-free I/O latency statistics, recorded on the I/O path of the pool's
//! devices and the iSCSI target's LUs, read by the metrics exporter (crates/metrics).
//!
//! Owns: [`LatencyHistogram`], fixed buckets of relaxed atomic counters.
//! Invariants: recording is a few relaxed atomic adds (no lock, no allocation); every
//! counter only grows, so a reader's snapshot is monotonic per field, though two fields
//! read in one snapshot may be one sample apart (exporters tolerate that).
//! Never: depends on any other cstor crate (it is the bottom of the stack).

#![warn(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram buckets, nanoseconds: 50 us to 10 s, the span between a
/// cached read and the longest bounded device or backend call (10 s). The last, implicit
/// bucket is +Inf.
pub const BUCKET_BOUNDS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// A latency histogram with fixed buckets ([`BUCKET_BOUNDS_NS`]) and a sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per-bucket (not cumulative) sample counts; the last is +Inf.
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// A read of a [`LatencyHistogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per-bucket (not cumulative) counts; index `i < 16` counts samples at or below
    /// `BUCKET_BOUNDS_NS[i]` and above the previous bound; the last is +Inf.
    pub buckets: [u64; BUCKETS],
    /// Sum of all samples, nanoseconds.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Reads every bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0u64; BUCKETS];
        for (out, b) in buckets.iter_mut().zip(&self.buckets) {
            *out = b.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            buckets,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Sum of the samples, seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// Per-bucket (not cumulative) counts with their upper bounds in seconds, the last
    /// bound `f64::INFINITY`: what prometheus-client's histogram encoder takes (it
    /// accumulates them into `le` buckets).
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        BUCKET_BOUNDS_NS
            .iter()
            .map(|&b| b as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets)
            .collect()
    }

    /// Mean latency in seconds of the samples recorded since `earlier` (0 if none): the
    /// "latency over the last interval" gauges of cStor's exporters.
    pub fn mean_seconds_since(&self, earlier: &HistogramSnapshot) -> f64 {
        let n = self.count().saturating_sub(earlier.count());
        if n == 0 {
            return 0.0;
        }
        self.sum_ns.saturating_sub(earlier.sum_ns) as f64 / 1e9 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sum_and_interval_mean() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(50));
        h.record(Duration::from_millis(3));
        let first = h.snapshot();
        assert_eq!(first.count(), 3);
        assert_eq!(first.buckets[0], 2, "50 us is at or below the first bound");
        assert_eq!(first.buckets[6], 1, "3 ms falls in (2.5 ms, 5 ms]");
        let b = first.buckets_seconds();
        assert_eq!(b.len(), BUCKETS);
        assert_eq!(b[0], (0.00005, 2));
        assert_eq!(b[6], (0.005, 1));
        assert_eq!(b[BUCKETS - 1], (f64::INFINITY, 0));
        h.record(Duration::from_secs(20));
        h.record(Duration::from_secs(10));
        let second = h.snapshot();
        assert_eq!(second.buckets[BUCKETS - 1], 1, "20 s is in +Inf");
        assert_eq!(
            second.buckets[BUCKETS - 2],
            1,
            "10 s is in the last finite bucket"
        );
        assert!((second.mean_seconds_since(&first) - 15.0).abs() < 1e-9);
        assert_eq!(second.mean_seconds_since(&second), 0.0);
        assert!((first.sum_seconds() - 0.00306).abs() < 1e-12);
    }
}
