//! cstor-metrics: the Prometheus exporter of every process that holds a pool or serves a
//! volume (`cstor target serve`, `cstor replica serve`, the node agent). Names, labels and
//! encodings: docs/metrics.md; cStor's own names (cstor-internals.md §8) are kept as
//! gauges so existing dashboards and the seed's alerts work, and typed counters and
//! histograms are added under Prometheus names.
//!
//! Owns: the list of sources ([`Exporter::add_pool`], [`Exporter::add_target`]) and a
//! little scrape memory (the previous latency snapshots behind the "last interval"
//! gauges, the first sight of a scan or rebuild behind rates and ETAs).
//! Invariants: a scrape only reads: atomic counters, status snapshots and short
//! bookkeeping locks of the lower crates; nothing here runs on the I/O path. Each metric
//! family appears once per exposition, however many sources feed it.
//! Never: writes to a pool or a volume; holds its own locks across a call into a source
//! for longer than that call.
//! Shutdown: dropping a [`MetricsServer`] stops its listener.

#![warn(missing_docs)]

mod family;
mod http;
mod pool;
mod volume;

use std::sync::Arc;
use std::time::Instant;

use cstor_iscsi::Server;
use cstor_node::OpenPool;
use cstor_replication::ReplicatedVolume;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;

pub use http::MetricsServer;

/// Errors of the exporter.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Text encoding failed (a formatter error; not expected).
    #[error("metrics: encoding failed")]
    Encode,
}

/// Kubernetes names of a volume, where known (the agent knows them; a standalone target
/// only has the volume name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeLabels {
    /// Volume name (label `volume_name`; cStor's `volName`).
    pub volume_name: String,
    /// PersistentVolume name (label `pv`).
    pub pv: Option<String>,
    /// PVC namespace (label `namespace`).
    pub namespace: Option<String>,
    /// PVC name (label `pvc`).
    pub pvc: Option<String>,
}

impl VolumeLabels {
    /// Labels for a volume known by name only.
    pub fn named(volume_name: &str) -> VolumeLabels {
        VolumeLabels {
            volume_name: volume_name.to_owned(),
            ..VolumeLabels::default()
        }
    }
}

/// What stores the LU of a target, for the metrics that depend on it.
#[derive(Debug, Clone)]
pub enum Backing {
    /// A file or block device (used bytes from its allocated blocks).
    File(std::path::PathBuf),
    /// A volume of a pool open in this process (used bytes from the pool).
    PoolVolume {
        /// The pool.
        pool: Arc<OpenPool>,
        /// Volume name in the pool.
        volume: String,
    },
    /// A replicated volume: status, replica counts, per-replica status and rebuild
    /// progress from its membership record.
    Replicated(ReplicatedVolume),
}

/// A served target, as [`Exporter::add_target`] takes it.
#[derive(Debug, Clone)]
pub struct TargetSource {
    /// The iSCSI server holding the target (its counters are read per scrape).
    pub server: Arc<Server>,
    /// Target name.
    pub iqn: String,
    /// Volume labels.
    pub labels: VolumeLabels,
    /// What stores the LU.
    pub backing: Backing,
}

#[derive(Debug)]
struct TargetEntry {
    source: TargetSource,
    added: Instant,
}

/// The exporter: sources plus scrape memory. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Exporter {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pools: Mutex<Vec<Arc<OpenPool>>>,
    targets: Mutex<Vec<TargetEntry>>,
    memory: Mutex<family::Memory>,
}

impl Exporter {
    /// An exporter with no sources.
    pub fn new() -> Exporter {
        Exporter::default()
    }

    /// Export a pool (replacing one of the same name).
    pub fn add_pool(&self, pool: Arc<OpenPool>) {
        let mut pools = self.inner.pools.lock();
        pools.retain(|p| p.name() != pool.name());
        pools.push(pool);
    }

    /// Stop exporting pool `name`.
    pub fn remove_pool(&self, name: &str) {
        self.inner.pools.lock().retain(|p| p.name() != name);
    }

    /// Export a target (replacing one of the same IQN).
    pub fn add_target(&self, source: TargetSource) {
        let mut targets = self.inner.targets.lock();
        targets.retain(|t| t.source.iqn != source.iqn);
        targets.push(TargetEntry {
            source,
            added: Instant::now(),
        });
    }

    /// Export a replicated volume served as target `iqn` of `server` (shorthand for
    /// [`Exporter::add_target`] with [`Backing::Replicated`]).
    pub fn add_replicated_volume(
        &self,
        server: Arc<Server>,
        iqn: &str,
        labels: VolumeLabels,
        volume: ReplicatedVolume,
    ) {
        self.add_target(TargetSource {
            server,
            iqn: iqn.to_owned(),
            labels,
            backing: Backing::Replicated(volume),
        });
    }

    /// Replace the labels of exported target `iqn` (the Kubernetes names of its volume,
    /// learnt after it started), keeping its source and uptime; false when `iqn` is not
    /// exported. Its series change identity: the old ones go stale at the next scrape.
    pub fn set_target_labels(&self, iqn: &str, labels: VolumeLabels) -> bool {
        let mut targets = self.inner.targets.lock();
        match targets.iter_mut().find(|t| t.source.iqn == iqn) {
            Some(t) => {
                t.source.labels = labels;
                true
            }
            None => false,
        }
    }

    /// Stop exporting target `iqn`.
    pub fn remove_target(&self, iqn: &str) {
        self.inner.targets.lock().retain(|t| t.source.iqn != iqn);
    }

    /// One exposition in the OpenMetrics text format (which Prometheus and promtool read).
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.inner.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .map_err(|_| MetricsError::Encode)?;
        Ok(out)
    }

    /// Serve `/metrics` on `addr` (ADDR:PORT; port 0 picks one) from the current tokio
    /// runtime until the returned server is dropped.
    pub async fn serve(&self, addr: &str) -> Result<MetricsServer, MetricsError> {
        http::serve(self.clone(), addr).await
    }
}

fn gather(inner: &Inner) -> family::Families {
    let mut f = family::Families::default();
    let now = Instant::now();
    let pools = inner.pools.lock().clone();
    let targets: Vec<(TargetSource, Instant)> = inner
        .targets
        .lock()
        .iter()
        .map(|t| (t.source.clone(), t.added))
        .collect();
    let mut memory = inner.memory.lock();
    for p in &pools {
        pool::collect(&mut f, &mut memory, p, now);
    }
    for (t, added) in &targets {
        volume::collect(&mut f, &mut memory, t, *added, now);
    }
    memory.forget_unseen();
    f
}

/// The per-scrape collector registered with prometheus-client.
#[derive(Debug)]
struct Scrape(Arc<Inner>);

impl prometheus_client::collector::Collector for Scrape {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        gather(&self.0).encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_exporter_renders_eof_only() {
        let e = Exporter::new();
        let text = e.render().unwrap();
        assert_eq!(text.trim(), "# EOF");
        assert!(gather(&e.inner).is_empty());
    }

    #[test]
    fn labels_learnt_later_replace_the_series_once() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lu.img");
        let lu = cstor_iscsi::FileBackend::open(&path, Some(1 << 20), false).unwrap();
        let server = Server::new();
        let iqn = "iqn.2016-09.com.openebs.cstor:pvc-1";
        server
            .add_target(cstor_iscsi::TargetConfig::new(iqn, Arc::new(lu)))
            .unwrap();
        let e = Exporter::new();
        e.add_target(TargetSource {
            server,
            iqn: iqn.to_owned(),
            labels: VolumeLabels {
                pv: Some("pvc-1".into()),
                ..VolumeLabels::named("pvc-1")
            },
            backing: Backing::File(path),
        });
        let status = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("openebs_volume_status{"))
                .map(str::to_owned)
                .collect()
        };
        let before = status(&e.render().unwrap());
        assert_eq!(
            before,
            [format!(
                "openebs_volume_status{{volume_name=\"pvc-1\",iqn=\"{iqn}\",pv=\"pvc-1\"}} 3.0"
            )]
        );
        let known = VolumeLabels {
            volume_name: "pvc-1".into(),
            pv: Some("pvc-1".into()),
            namespace: Some("database".into()),
            pvc: Some("postgres-data".into()),
        };
        assert!(e.set_target_labels(iqn, known.clone()));
        assert!(!e.set_target_labels("iqn.2016-09.com.openebs.cstor:other", known));
        let after = status(&e.render().unwrap());
        assert_eq!(
            after,
            [format!(
                "openebs_volume_status{{volume_name=\"pvc-1\",iqn=\"{iqn}\",pv=\"pvc-1\",namespace=\"database\",pvc=\"postgres-data\"}} 3.0"
            )]
        );
    }
}
