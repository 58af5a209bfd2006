//! Metric families gathered in one scrape, and the scrape memory behind interval gauges,
//! rates and ETAs.
//!
//! Invariants: a family name appears once with one type, however many sources add to it
//! (two sources of one process may both export, e.g., `openebs_total_read_bytes`).

use std::collections::HashMap;
use std::time::Instant;

use cstor_iostats::HistogramSnapshot;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// Label pairs of one sample.
pub(crate) type Labels = Vec<(String, String)>;

/// Builds a label set from `(name, value)` pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[derive(Debug)]
enum Value {
    Gauge(f64),
    Counter(u64),
    Histogram(HistogramSnapshot),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// Families of one scrape, in first-added order.
#[derive(Debug, Default)]
pub(crate) struct Families {
    list: Vec<Family>,
    index: HashMap<&'static str, usize>,
}

impl Families {
    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        l: Labels,
        v: Value,
    ) {
        let i = *self.index.entry(name).or_insert_with(|| {
            self.list.push(Family {
                name,
                help,
                kind,
                samples: Vec::new(),
            });
            self.list.len() - 1
        });
        let f = &mut self.list[i];
        // One name, one type: a second type would make the exposition invalid.
        if std::mem::discriminant(&f.kind) == std::mem::discriminant(&kind) {
            f.samples.push((l, v));
        } else {
            tracing::error!(metric = name, "metric added with two types; sample dropped");
        }
    }

    /// A gauge sample.
    pub(crate) fn gauge(&mut self, name: &'static str, help: &'static str, l: &Labels, v: f64) {
        self.push(name, help, MetricType::Gauge, l.clone(), Value::Gauge(v));
    }

    /// A counter sample; `name` without `_total` (the encoder appends it).
    pub(crate) fn counter(&mut self, name: &'static str, help: &'static str, l: &Labels, v: u64) {
        self.push(
            name,
            help,
            MetricType::Counter,
            l.clone(),
            Value::Counter(v),
        );
    }

    /// A histogram sample (seconds).
    pub(crate) fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        l: &Labels,
        h: &HistogramSnapshot,
    ) {
        self.push(
            name,
            help,
            MetricType::Histogram,
            l.clone(),
            Value::Histogram(*h),
        );
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Encodes every family through prometheus-client.
    pub(crate) fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.list {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (l, v) in &f.samples {
                let mut s = m.encode_family(l)?;
                match v {
                    Value::Gauge(g) => s.encode_gauge(g)?,
                    Value::Counter(c) => s.encode_counter::<Labels, u64, u64>(c, None)?,
                    Value::Histogram(h) => s.encode_histogram::<Labels>(
                        h.sum_seconds(),
                        h.count(),
                        &h.buckets_seconds(),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Seen<T> {
    value: T,
    touched: bool,
}

/// What a scrape remembers for the next one. Entries not touched by a scrape are dropped
/// at its end (their source went away).
#[derive(Debug, Default)]
pub(crate) struct Memory {
    latency: HashMap<String, Seen<HistogramSnapshot>>,
    progress: HashMap<String, Seen<(Instant, u64)>>,
}

impl Memory {
    /// (samples, summed ns) recorded since the previous scrape under `key`; the first
    /// scrape counts from zero.
    pub(crate) fn latency_delta(&mut self, key: String, now: &HistogramSnapshot) -> (u64, u64) {
        let prev = self.latency.insert(
            key,
            Seen {
                value: *now,
                touched: true,
            },
        );
        let prev = prev.map(|s| s.value).unwrap_or_default();
        (
            now.count().saturating_sub(prev.count()),
            now.sum_ns.saturating_sub(prev.sum_ns),
        )
    }

    /// Bytes per second of `done` since this key (a scan or a rebuild) was first seen, or
    /// None before any progress. A `done` below the first sight starts over (a new run).
    pub(crate) fn rate(&mut self, key: String, done: u64, now: Instant) -> Option<f64> {
        let e = self.progress.entry(key).or_insert(Seen {
            value: (now, done),
            touched: true,
        });
        e.touched = true;
        if done < e.value.1 {
            e.value = (now, done);
        }
        let (t0, d0) = e.value;
        let secs = now.duration_since(t0).as_secs_f64();
        (done > d0 && secs > 0.0).then(|| (done - d0) as f64 / secs)
    }

    /// Drops what this scrape did not touch; marks the rest untouched for the next.
    pub(crate) fn forget_unseen(&mut self) {
        self.latency.retain(|_, s| std::mem::take(&mut s.touched));
        self.progress.retain(|_, s| std::mem::take(&mut s.touched));
    }
}

/// Mean seconds of a `(samples, ns)` delta; 0 without samples.
pub(crate) fn mean_seconds((n, ns): (u64, u64)) -> f64 {
    if n == 0 {
        0.0
    } else {
        ns as f64 / 1e9 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_per_name_and_memory_forgets() {
        let mut f = Families::default();
        let a = labels(&[("pool_name", "a")]);
        let b = labels(&[("pool_name", "b")]);
        f.gauge("openebs_pool_size", "size", &a, 1.0);
        f.gauge("openebs_pool_size", "size", &b, 2.0);
        f.counter("openebs_pool_size", "size", &b, 2);
        assert_eq!(f.list.len(), 1);
        assert_eq!(f.list[0].samples.len(), 2, "a second type is dropped");

        let mut m = Memory::default();
        let t0 = Instant::now();
        assert_eq!(m.rate("x".into(), 100, t0), None);
        let r = m.rate("x".into(), 300, t0 + std::time::Duration::from_secs(2));
        assert_eq!(r, Some(100.0));
        m.forget_unseen();
        m.forget_unseen();
        assert!(m.progress.is_empty(), "an untouched key is dropped");
        assert_eq!(mean_seconds((0, 5)), 0.0);
        assert_eq!(mean_seconds((2, 3_000_000)), 0.0015);
    }
}
