//! The node agent's Prometheus exporter (`cstor node --metrics`): one cstor-metrics
//! [`Exporter`] fed with every pool the agent holds open and every target it serves, so
//! the metric names and labels are those of `cstor replica serve --metrics` and
//! `cstor target serve --metrics` (docs/metrics.md) and the seed's alerts apply.
//!
//! Owns: the mapping from the agent's pools and targets to exporter sources.
//! Invariants: after [`sync`], the exporter holds exactly the pools open and the targets
//! running at that moment (a pool or target gone is removed, so its series disappear);
//! sources are keyed by pool name and IQN, as the exporter keys them.

use std::collections::BTreeSet;
use std::sync::Arc;

use cstor_metrics::{Exporter, VolumeLabels};
use parking_lot::Mutex;

use crate::pools::Pools;
use crate::targets::Targets;

/// What the last [`sync`] exported, to remove what went away.
#[derive(Debug, Default)]
pub struct Exported {
    pools: BTreeSet<String>,
    targets: BTreeSet<String>,
}

/// The agent's exporter and what it currently exports.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// The exporter the `/metrics` endpoint renders.
    pub exporter: Exporter,
    exported: Mutex<Exported>,
}

/// Brings the exporter's sources in line with the pools and targets hosted now.
pub async fn sync(m: &AgentMetrics, pools: &Pools, targets: &Targets) {
    let open = pools.open_pools().await;
    let running = targets.running().await;
    let server = targets.server();
    let mut ex = m.exported.lock();
    let pool_names: BTreeSet<String> = open.iter().map(|p| p.name().to_owned()).collect();
    for gone in ex.pools.difference(&pool_names) {
        m.exporter.remove_pool(gone);
    }
    for p in &open {
        // Re-adding replaces the source; only new pools need it.
        if !ex.pools.contains(p.name()) {
            m.exporter.add_pool(Arc::clone(p));
        }
    }
    ex.pools = pool_names;
    let iqns: BTreeSet<String> = running.iter().map(|(_, iqn, _)| iqn.clone()).collect();
    for gone in ex.targets.difference(&iqns) {
        m.exporter.remove_target(gone);
    }
    for (name, iqn, vol) in running {
        if ex.targets.contains(&iqn) {
            continue;
        }
        // The CStorVolume is named after its PersistentVolume.
        let labels = VolumeLabels {
            volume_name: name.clone(),
            pv: Some(name),
            ..VolumeLabels::default()
        };
        m.exporter
            .add_replicated_volume(server.clone(), &iqn, labels, vol);
    }
    ex.targets = iqns;
}
