//! The node agent's Prometheus exporter (`cstor node --metrics`): one cstor-metrics
//! [`Exporter`] fed with every pool the agent holds open and every target it serves, so
//! the metric names and labels are those of `cstor replica serve --metrics` and
//! `cstor target serve --metrics` (docs/metrics.md) and the seed's alerts apply.
//!
//! Owns: the mapping from the agent's pools and targets to exporter sources, and the
//! Kubernetes names of each served volume (labels `pv`, `namespace`, `pvc`).
//! Invariants: after [`sync`], the exporter holds exactly the pools open and the targets
//! running at that moment (a pool or target gone is removed, so its series disappear; a
//! target restarted in between is re-added, so the exporter reads the new instance);
//! sources are keyed by pool name and IQN, as the exporter keys them. A volume's claim is
//! looked up (its CVC's `cstor.openebs.io/pvc` annotation, else its PV's claimRef) each
//! pass until found, then kept: a bound claim does not change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cstor_api::names::annotation;
use cstor_api::v1::CStorVolumeConfig;
use cstor_metrics::{Exporter, VolumeLabels};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::Api;
use kube::ResourceExt;
use parking_lot::Mutex;

use crate::pools::Pools;
use crate::targets::Targets;
use crate::{Ctx, NAMESPACE};

/// One exported target: its labels and the epoch of the instance the exporter reads.
#[derive(Debug)]
struct ExportedTarget {
    labels: VolumeLabels,
    epoch: u64,
}

/// What the last [`sync`] exported, to remove what went away.
#[derive(Debug, Default)]
pub struct Exported {
    pools: BTreeSet<String>,
    targets: BTreeMap<String, ExportedTarget>,
}

/// The agent's exporter and what it currently exports.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// The exporter the `/metrics` endpoint renders.
    pub exporter: Exporter,
    exported: Mutex<Exported>,
}

/// Brings the exporter's sources in line with the pools and targets hosted now.
pub async fn sync(m: &AgentMetrics, ctx: &Ctx, pools: &Pools, targets: &Targets) {
    let open = pools.open_pools().await;
    let running = targets.running().await;
    let server = targets.server();
    // Claims are looked up without the lock (it is not held across an await).
    let unknown: Vec<String> = {
        let ex = m.exported.lock();
        running
            .iter()
            .filter(|(_, iqn, _)| ex.targets.get(iqn).is_none_or(|t| t.labels.pvc.is_none()))
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    let mut claims = BTreeMap::new();
    for name in unknown {
        if let Some(c) = claim_of(&ctx.client, &name).await {
            claims.insert(name, c);
        }
    }
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
    ex.targets.retain(|iqn, _| {
        let keep = iqns.contains(iqn);
        if !keep {
            m.exporter.remove_target(iqn);
        }
        keep
    });
    for (name, iqn, vol) in running {
        // The CStorVolume is named after its PersistentVolume.
        let mut labels = VolumeLabels {
            volume_name: name.clone(),
            pv: Some(name.clone()),
            ..VolumeLabels::default()
        };
        if let Some(old) = ex.targets.get(&iqn) {
            labels = old.labels.clone();
        }
        if let Some((ns, pvc)) = claims.remove(&name) {
            labels.namespace = Some(ns);
            labels.pvc = Some(pvc);
        }
        let epoch = vol.epoch();
        match ex.targets.get_mut(&iqn) {
            Some(t) if t.epoch == epoch => {
                if t.labels != labels {
                    m.exporter.set_target_labels(&iqn, labels.clone());
                    t.labels = labels;
                }
            }
            _ => {
                m.exporter
                    .add_replicated_volume(server.clone(), &iqn, labels.clone(), vol);
                ex.targets.insert(iqn, ExportedTarget { labels, epoch });
            }
        }
    }
}

/// The claim `(namespace, name)` of volume `pv`: its CVC's annotation (set by the
/// provisioner), else its PV's claimRef (set on binding; the CSI path's CVC has no
/// annotation). None while neither names one; a failed read is retried next pass.
async fn claim_of(client: &kube::Client, pv: &str) -> Option<(String, String)> {
    let cvcs: Api<CStorVolumeConfig> = Api::namespaced(client.clone(), NAMESPACE);
    match cvcs.get_opt(pv).await {
        Ok(cvc) => {
            let named = cvc
                .as_ref()
                .and_then(|c| c.annotations().get(annotation::PVC))
                .and_then(|v| v.split_once('/'))
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty());
            if let Some((ns, n)) = named {
                return Some((ns.to_owned(), n.to_owned()));
            }
        }
        Err(e) => tracing::debug!(volume = %pv, error = %e, "reading the volume's CVC"),
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    match pvs.get_opt(pv).await {
        Ok(p) => {
            let r = p?.spec?.claim_ref?;
            Some((r.namespace?, r.name?))
        }
        Err(e) => {
            tracing::debug!(volume = %pv, error = %e, "reading the volume's PV");
            None
        }
    }
}
