//! Where a volume's replicas and target go: pure choices over the [`World`].
//!
//! Replicas: distinct pool instances of the CSPC that are ONLINE and not read-only, most
//! available space first (ties by name, so a choice is reproducible). Available space is
//! the pool's reported free space, which already counts thin volumes at what they
//! allocated; a pool whose CSPC entry says `overProvisioning: false` (alpha CSPC) counts
//! every volume at its full size instead and must fit the new one whole.
//! Target: the live node with an InternalIP among the replicas' nodes hosting the fewest
//! targets, else any live node with an InternalIP.

use std::collections::BTreeMap;

use cstor_api::names::{annotation, label};
use cstor_api::quantity::quantity_bytes;
use cstor_api::v1::{CStorPoolInstance, CStorPoolInstancePhase};

use crate::world::{bytes_of, cspi_node, cspi_phase, label_of, name, World};

/// Label on a CStorVolume naming the node whose agent hosts its target (contract5).
pub const TARGET_NODE_LABEL: &str = "cstor.openebs.io/target-node";

/// Why no placement was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoPlacement(pub String);

/// Whether a pool instance may take a new replica (healthy and writable).
pub fn usable(cspi: &CStorPoolInstance) -> bool {
    cspi_phase(cspi) == Some(CStorPoolInstancePhase::Online)
        && cspi.status.as_ref().and_then(|s| s.read_only) != Some(true)
        && cspi.metadata.deletion_timestamp.is_none()
}

/// Whether `cspi`'s CSPC entry disables over-provisioning (alpha `overProvisioning: false`,
/// kept on the v1 CSPC in the `cstor.openebs.io/v1alpha1-pool-config` annotation).
pub fn over_provisioning(world: &World, cspi: &CStorPoolInstance) -> bool {
    let Some(cspc) = label_of(&cspi.metadata, label::CSPC).and_then(|c| world.cspc(c)) else {
        return true;
    };
    let Some(index) = cspc
        .spec
        .pools
        .iter()
        .position(|p| p.node_selector == cspi.spec.node_selector)
    else {
        return true;
    };
    let extra: Vec<serde_json::Value> =
        crate::world::annotation_of(&cspc.metadata, annotation::V1ALPHA1_POOL_CONFIG)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
    extra
        .get(index)
        .and_then(|e| e.get("overProvisioning"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true)
}

/// Bytes a pool instance can still give a new volume of `size` bytes, or None when it
/// must not take it.
pub fn available(world: &World, cspi: &CStorPoolInstance, size: u64) -> Option<u64> {
    let cap = cspi.status.as_ref().and_then(|s| s.capacity.as_ref());
    let free = cap
        .and_then(|c| c.free.as_ref())
        .and_then(|q| quantity_bytes(q).ok())
        .unwrap_or(0);
    if over_provisioning(world, cspi) {
        return Some(free);
    }
    let total = cap
        .and_then(|c| c.total.as_ref())
        .and_then(|q| quantity_bytes(q).ok())
        .unwrap_or(0);
    let promised: u64 = world
        .cvrs_on(name(&cspi.metadata))
        .filter_map(|r| r.spec.capacity.as_deref())
        .map(bytes_of)
        .sum();
    let left = total.saturating_sub(promised);
    (left >= size).then_some(left)
}

/// Chooses `count` pool instances for a new volume of `size` bytes among `candidates`
/// (pool instance names), keeping `prefer` (pools already holding a replica of it).
pub fn choose_pools(
    world: &World,
    candidates: &[&CStorPoolInstance],
    count: usize,
    size: u64,
    prefer: &[String],
) -> Result<Vec<String>, NoPlacement> {
    let mut ranked: Vec<(u64, String)> = Vec::new();
    let mut unusable: Vec<String> = Vec::new();
    for c in candidates {
        let n = name(&c.metadata).to_owned();
        if !usable(c) {
            let phase = cspi_phase(c).map_or("no status".to_owned(), |p| {
                serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            });
            let ro = c.status.as_ref().and_then(|s| s.read_only) == Some(true);
            unusable.push(if ro {
                format!("{n} (read-only)")
            } else {
                format!("{n} ({phase})")
            });
            continue;
        }
        match available(world, c, size) {
            Some(a) => ranked.push((a, n)),
            None => unusable.push(format!(
                "{n} (overProvisioning is false and it lacks space)"
            )),
        }
    }
    ranked.sort_by(|a, b| {
        let pa = prefer.contains(&a.1);
        let pb = prefer.contains(&b.1);
        pb.cmp(&pa).then(b.0.cmp(&a.0)).then(a.1.cmp(&b.1))
    });
    if ranked.len() < count {
        let mut why = format!(
            "{count} replica(s) asked for but only {} healthy writable pool instance(s) are available",
            ranked.len()
        );
        if !unusable.is_empty() {
            why.push_str(&format!("; not usable: {}", unusable.join(", ")));
        }
        return Err(NoPlacement(why));
    }
    Ok(ranked.into_iter().take(count).map(|(_, n)| n).collect())
}

/// Number of targets each node hosts.
fn target_load(world: &World) -> BTreeMap<String, usize> {
    let mut load = BTreeMap::new();
    for cv in &world.cvs {
        if let Some(n) = label_of(&cv.metadata, TARGET_NODE_LABEL) {
            *load.entry(n.to_owned()).or_insert(0) += 1;
        }
    }
    load
}

/// Chooses the node to host a target whose replicas are on `pools`, avoiding `exclude`.
pub fn choose_target_node(
    world: &World,
    pools: &[String],
    exclude: Option<&str>,
) -> Result<(String, String), NoPlacement> {
    let load = target_load(world);
    let fit = |node: &str| -> Option<String> {
        if Some(node) == exclude || !world.node_alive(node) {
            return None;
        }
        world.node_ip(node)
    };
    let mut best: Option<(usize, String, String)> = None;
    let replica_nodes: Vec<String> = pools
        .iter()
        .filter_map(|p| world.cspi(p))
        .map(|c| cspi_node(c).to_owned())
        .collect();
    let all_nodes: Vec<String> = world
        .nodes
        .iter()
        .map(|n| name(&n.metadata).to_owned())
        .collect();
    for set in [&replica_nodes, &all_nodes] {
        for node in set {
            if let Some(ip) = fit(node) {
                let l = load.get(node).copied().unwrap_or(0);
                let better = best
                    .as_ref()
                    .is_none_or(|(bl, bn, _)| l < *bl || (l == *bl && node < bn));
                if better {
                    best = Some((l, node.clone(), ip));
                }
            }
        }
        if best.is_some() {
            break;
        }
    }
    best.map(|(_, n, ip)| (n, ip)).ok_or_else(|| {
        NoPlacement("no live node with an InternalIP to host the volume's target".to_owned())
    })
}
