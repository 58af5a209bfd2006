//! CStorPoolCluster -> CStorPoolInstances and BlockDeviceClaims (cStor's cspc-operator,
//! `cstor-internals.md` §5), as a pure function of the [`World`].
//!
//! Per CSPC: validate its devices against the BlockDevices (exist, Active, on the pool's
//! node, no filesystem, unclaimed, allowed tag; raid widths and duplicates are the API
//! server's admission checks, repeated here); create one CSPI per `spec.pools[]` entry
//! (matched to existing CSPIs by node); copy edits of an entry (added devices, raid
//! groups, a replaced device) into its CSPI's spec; claim every device with a BDC
//! (`openebs.io/bd-predecessor` on the claim of a replacement); delete the CSPI of a
//! removed entry unless volumes use it; keep the CSPC's status counts. Deletion of a CSPC
//! whose pools hold volume replicas is held by the CSPC finalizer with a Warning event
//! naming the volumes; once none remain the finalizer goes and the garbage collector
//! removes the CSPIs and BDCs (owner references).
//!
//! Invariants: a device not yet claimed by this CSPC is claimed only when the whole CSPC
//! validates (a bad edit changes nothing, it is refused with an event); a device stays
//! claimed while any CSPI of the CSPC names it or a replacement of it is in progress.

use std::collections::{BTreeMap, BTreeSet};

use cstor_api::names::{annotation, derive, finalizer, label};
use cstor_api::v1::{
    CStorPoolCluster, CStorPoolInstance, CStorPoolInstanceConditionType, CStorPoolInstancePhase,
    ConditionStatus, PoolSpec, RaidGroup,
};
use cstor_api::v1alpha1::{BlockDeviceClaimState, BlockDeviceState};
use serde_json::{json, Value};

use crate::action::{owner_ref, regarding, Action, Kind};
use crate::world::{cspi_phase, deleting, label_of, name, World};
use crate::Ids;

/// Default `roThresholdLimit` cStor's operator sets on each CSPI.
pub const DEFAULT_RO_THRESHOLD: i32 = 85;

/// Reconciles every CSPC, and BlockDevice claim states.
pub fn reconcile(world: &World, ids: &mut dyn Ids) -> Vec<Action> {
    let mut out = Vec::new();
    for cspc in &world.cspcs {
        reconcile_one(world, cspc, ids, &mut out);
    }
    release_unclaimed(world, &mut out);
    out
}

fn ns(world: &World) -> Option<&str> {
    Some(world.namespace.as_str())
}

/// The devices of one pool entry (data and write cache groups).
fn pool_devices(groups: &[RaidGroup], cache: Option<&Vec<RaidGroup>>) -> Vec<String> {
    groups
        .iter()
        .chain(cache.into_iter().flatten())
        .flat_map(|g| g.block_devices.iter().map(|d| d.block_device_name.clone()))
        .collect()
}

fn pool_node(pool: &PoolSpec) -> &str {
    pool.node_selector
        .get(label::HOSTNAME)
        .map(String::as_str)
        .unwrap_or_default()
}

/// The CSPI serving `pool`: same node selector.
fn cspi_for<'a>(world: &'a World, cspc: &'a str, pool: &PoolSpec) -> Option<&'a CStorPoolInstance> {
    world
        .cspis_of(cspc)
        .find(|c| c.spec.node_selector == pool.node_selector)
}

fn reconcile_one(world: &World, cspc: &CStorPoolCluster, ids: &mut dyn Ids, out: &mut Vec<Action>) {
    let cname = name(&cspc.metadata);
    let me = regarding(Kind::Cspc, &cspc.metadata);
    let finalizers = cspc.metadata.finalizers.clone().unwrap_or_default();
    let has_finalizer = finalizers.iter().any(|f| f == finalizer::CSPC);
    let cspis: Vec<&CStorPoolInstance> = world.cspis_of(cname).collect();

    if deleting(&cspc.metadata) {
        let volumes: BTreeSet<&str> = cspis
            .iter()
            .flat_map(|c| world.cvrs_on(name(&c.metadata)))
            .filter_map(|r| label_of(&r.metadata, label::PERSISTENT_VOLUME))
            .collect();
        if !volumes.is_empty() {
            let list: Vec<&str> = volumes.into_iter().collect();
            out.push(Action::event(
                me,
                true,
                "DeletionRefused",
                format!(
                    "CStorPoolCluster {cname} is not deleted: its pools hold replicas of volume(s) {}; delete those volumes (their PVCs) first",
                    list.join(", ")
                ),
            ));
            return;
        }
        if has_finalizer {
            let rest: Vec<&String> = finalizers
                .iter()
                .filter(|f| *f != finalizer::CSPC)
                .collect();
            out.push(Action::patch(
                Kind::Cspc,
                ns(world),
                cname,
                json!({"metadata": {"finalizers": rest, "resourceVersion": cspc.metadata.resource_version}}),
            ));
        }
        return;
    }
    if !has_finalizer {
        let mut all = finalizers.clone();
        all.push(finalizer::CSPC.to_owned());
        out.push(Action::patch(
            Kind::Cspc,
            ns(world),
            cname,
            json!({"metadata": {"finalizers": all, "resourceVersion": cspc.metadata.resource_version}}),
        ));
    }

    // Devices this CSPC already holds (claims labelled with it).
    let held: BTreeSet<&str> = world
        .bdcs
        .iter()
        .filter(|c| label_of(&c.metadata, label::CSPC) == Some(cname) && !deleting(&c.metadata))
        .filter_map(|c| c.spec.block_device_name.as_deref())
        .collect();
    let mut problems = device_problems(world, cspc, &held);
    // No admission webhook runs the update rules (a real cluster may have none either):
    // judge the edit against what the pool instances run now.
    for e in cstor_api::validation::validate_cspc_update(&as_applied(world, cspc), cspc) {
        problems.push(e.message());
    }
    problems.sort();
    problems.dedup();
    if !problems.is_empty() {
        out.push(Action::event(
            me.clone(),
            true,
            "FailedValidation",
            format!(
                "CStorPoolCluster {cname} is not applied: {}",
                problems.join("; ")
            ),
        ));
    }
    let valid = problems.is_empty();

    let mut wanted_devices: BTreeSet<String> = BTreeSet::new();
    let mut kept_cspis: BTreeSet<String> = BTreeSet::new();
    for pool in &cspc.spec.pools {
        let node = pool_node(pool);
        let devices = pool_devices(
            &pool.data_raid_groups,
            pool.write_cache_raid_groups.as_ref(),
        );
        match cspi_for(world, cname, pool) {
            None => {
                if !valid {
                    continue;
                }
                let cspi_name = derive::cspi_name(cname, &ids.suffix());
                out.push(create_cspi(world, cspc, pool, &cspi_name));
                out.push(Action::event(
                    me.clone(),
                    false,
                    "Created",
                    format!("Created pool instance {cspi_name} on node {node}"),
                ));
                kept_cspis.insert(cspi_name.clone());
                wanted_devices.extend(devices.iter().cloned());
                for d in &devices {
                    claim(world, cspc, d, node, None, out);
                }
            }
            Some(cspi) => {
                let cspi_name = name(&cspi.metadata).to_owned();
                kept_cspis.insert(cspi_name.clone());
                let old = pool_devices(
                    &cspi.spec.data_raid_groups,
                    cspi.spec.write_cache_raid_groups.as_ref(),
                );
                if !valid {
                    // Keep what the CSPI has; apply nothing new.
                    wanted_devices.extend(old);
                    continue;
                }
                wanted_devices.extend(devices.iter().cloned());
                let predecessors = replacements(cspi, pool);
                let changed = cspi.spec.data_raid_groups != pool.data_raid_groups
                    || cspi.spec.write_cache_raid_groups != pool.write_cache_raid_groups
                    || cspi.spec.pool_config.data_raid_group_type
                        != pool.pool_config.data_raid_group_type
                    || cspi.spec.pool_config.compression != pool.pool_config.compression
                    || (pool.pool_config.ro_threshold_limit.is_some()
                        && cspi.spec.pool_config.ro_threshold_limit
                            != pool.pool_config.ro_threshold_limit);
                if changed {
                    let mut config = pool.pool_config.clone();
                    if config.ro_threshold_limit.is_none() {
                        config.ro_threshold_limit = cspi.spec.pool_config.ro_threshold_limit;
                    }
                    out.push(Action::patch(
                        Kind::Cspi,
                        ns(world),
                        &cspi_name,
                        json!({"spec": {
                            "dataRaidGroups": pool.data_raid_groups,
                            "writeCacheRaidGroups": pool.write_cache_raid_groups,
                            "poolConfig": config,
                        }}),
                    ));
                    let added: Vec<&String> = devices.iter().filter(|d| !old.contains(d)).collect();
                    let what = if predecessors.is_empty() {
                        format!(
                            "Updated pool instance {cspi_name}: {} device(s) added",
                            added.len()
                        )
                    } else {
                        let pairs: Vec<String> = predecessors
                            .iter()
                            .map(|(new, old)| format!("{old} -> {new}"))
                            .collect();
                        format!(
                            "Updated pool instance {cspi_name}: replacing {}",
                            pairs.join(", ")
                        )
                    };
                    out.push(Action::event(me.clone(), false, "Updated", what));
                }
                for d in &devices {
                    claim(
                        world,
                        cspc,
                        d,
                        node,
                        predecessors.get(d.as_str()).map(String::as_str),
                        out,
                    );
                }
                // A device being replaced stays claimed until the pool manager reports
                // the replacement done: condition DiskReplacement no longer True and the
                // new device's claim without `openebs.io/bd-predecessor` (the agent
                // clears it when the resilver finished; the condition alone is not True
                // yet in the passes between this spec patch and the agent's replace).
                if replacing(cspi) {
                    wanted_devices.extend(old.iter().filter(|d| !devices.contains(d)).cloned());
                }
                wanted_devices.extend(pending_predecessors(world, cname, &devices));
            }
        }
    }

    // CSPIs whose pool entry is gone.
    for cspi in &cspis {
        let cspi_name = name(&cspi.metadata);
        if kept_cspis.contains(cspi_name) || deleting(&cspi.metadata) {
            continue;
        }
        let users: BTreeSet<&str> = world
            .cvrs_on(cspi_name)
            .filter_map(|r| label_of(&r.metadata, label::PERSISTENT_VOLUME))
            .collect();
        if users.is_empty() {
            out.push(Action::delete(Kind::Cspi, ns(world), cspi_name));
            out.push(Action::event(
                me.clone(),
                false,
                "Deleted",
                format!("Deleted pool instance {cspi_name}: its pool entry was removed"),
            ));
        } else {
            let list: Vec<&str> = users.into_iter().collect();
            wanted_devices.extend(pool_devices(
                &cspi.spec.data_raid_groups,
                cspi.spec.write_cache_raid_groups.as_ref(),
            ));
            out.push(Action::event(
                me.clone(),
                true,
                "DeletionRefused",
                format!(
                    "pool instance {cspi_name} is kept: it holds replicas of volume(s) {}",
                    list.join(", ")
                ),
            ));
        }
    }

    // Claims of devices no pool uses any more.
    for bdc in &world.bdcs {
        if label_of(&bdc.metadata, label::CSPC) != Some(cname) || deleting(&bdc.metadata) {
            continue;
        }
        let device = bdc.spec.block_device_name.as_deref().unwrap_or_default();
        if !wanted_devices.contains(device) {
            out.push(Action::delete(Kind::Bdc, ns(world), name(&bdc.metadata)));
        }
    }

    // Status counts.
    let desired = cspc.spec.pools.len() as i32;
    let provisioned = cspis.len() as i32;
    let healthy = cspis
        .iter()
        .filter(|c| cspi_phase(c) == Some(CStorPoolInstancePhase::Online))
        .count() as i32;
    let status = cspc.status.clone().unwrap_or_default();
    if status.desired_instances != Some(desired)
        || status.provisioned_instances != Some(provisioned)
        || status.healthy_instances != Some(healthy)
    {
        out.push(Action::patch_status(
            Kind::Cspc,
            ns(world),
            cname,
            json!({"status": {
                "desiredInstances": desired,
                "provisionedInstances": provisioned,
                "healthyInstances": healthy,
            }}),
        ));
    }
}

/// Devices that live claims of `cspc` on `devices` name as their predecessor: replacements
/// the pool manager has not finished.
fn pending_predecessors(world: &World, cspc: &str, devices: &[String]) -> Vec<String> {
    world
        .bdcs
        .iter()
        .filter(|c| label_of(&c.metadata, label::CSPC) == Some(cspc) && !deleting(&c.metadata))
        .filter(|c| {
            c.spec
                .block_device_name
                .as_ref()
                .is_some_and(|d| devices.contains(d))
        })
        .filter_map(|c| {
            c.metadata
                .annotations
                .as_ref()?
                .get(annotation::BD_PREDECESSOR)
                .cloned()
        })
        .collect()
}

/// `cspc` with each pool entry that has a CSPI replaced by what that CSPI's spec holds
/// (its raid groups and raid type), the "old" object of an update check.
fn as_applied(world: &World, cspc: &CStorPoolCluster) -> CStorPoolCluster {
    let mut old = cspc.clone();
    let cname = name(&cspc.metadata);
    for pool in &mut old.spec.pools {
        if let Some(cspi) = cspi_for(world, cname, pool) {
            pool.data_raid_groups = cspi.spec.data_raid_groups.clone();
            pool.write_cache_raid_groups = cspi.spec.write_cache_raid_groups.clone();
            pool.pool_config.data_raid_group_type = cspi.spec.pool_config.data_raid_group_type;
            pool.pool_config.write_cache_group_type = cspi.spec.pool_config.write_cache_group_type;
        }
    }
    old
}

/// Whether the pool manager reports a disk replacement in progress on `cspi`.
fn replacing(cspi: &CStorPoolInstance) -> bool {
    cspi.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == CStorPoolInstanceConditionType::DiskReplacement
                    && c.status == ConditionStatus::True
            })
        })
}

/// Devices of `pool` that replace one of `cspi`'s: same raid group position, different
/// name, in a group of the same width. Map new -> old.
fn replacements(cspi: &CStorPoolInstance, pool: &PoolSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let pairs = [
        (
            Some(&cspi.spec.data_raid_groups),
            Some(&pool.data_raid_groups),
        ),
        (
            cspi.spec.write_cache_raid_groups.as_ref(),
            pool.write_cache_raid_groups.as_ref(),
        ),
    ];
    for (old, new) in pairs {
        let (Some(old), Some(new)) = (old, new) else {
            continue;
        };
        for (og, ng) in old.iter().zip(new.iter()) {
            if og.block_devices.len() != ng.block_devices.len() {
                continue;
            }
            for (od, nd) in og.block_devices.iter().zip(ng.block_devices.iter()) {
                if od.block_device_name != nd.block_device_name {
                    out.insert(nd.block_device_name.clone(), od.block_device_name.clone());
                }
            }
        }
    }
    out
}

/// Problems with the devices of `cspc` that it does not hold yet, as messages.
fn device_problems(world: &World, cspc: &CStorPoolCluster, held: &BTreeSet<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut names_by_path: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, pool) in cspc.spec.pools.iter().enumerate() {
        let groups = [
            ("dataRaidGroups", Some(&pool.data_raid_groups)),
            (
                "writeCacheRaidGroups",
                pool.write_cache_raid_groups.as_ref(),
            ),
        ];
        for (role, groups) in groups {
            for (j, g) in groups.into_iter().flatten().enumerate() {
                for (k, d) in g.block_devices.iter().enumerate() {
                    names_by_path.insert(
                        format!("spec.pools[{i}].{role}[{j}].blockDevices[{k}].blockDeviceName"),
                        d.block_device_name.clone(),
                    );
                    if !seen.insert(d.block_device_name.as_str()) {
                        out.push(format!(
                            "block device {} is named more than once",
                            d.block_device_name
                        ));
                    }
                }
            }
        }
    }
    for e in cstor_api::validation::validate_cspc(cspc) {
        out.push(e.message());
    }
    for e in cstor_api::validation::validate_cspc_devices(cspc, &world.bds, &world.bdcs) {
        let device = names_by_path.get(e.field.as_str()).map(String::as_str);
        if device.is_some_and(|d| held.contains(d)) {
            // Already in a pool: its later state (a failed disk) is the pool's business.
            continue;
        }
        out.push(e.message());
    }
    // Devices claimed by a claim of another owner that validation did not see yet
    // (claimed in this same pass by another CSPC is impossible: passes are serial).
    out.sort();
    out.dedup();
    out
}

fn create_cspi(world: &World, cspc: &CStorPoolCluster, pool: &PoolSpec, cspi_name: &str) -> Action {
    let cname = name(&cspc.metadata);
    let node = pool_node(pool);
    let mut config = pool.pool_config.clone();
    if config.ro_threshold_limit.is_none() {
        config.ro_threshold_limit = Some(DEFAULT_RO_THRESHOLD);
    }
    let object = json!({
        "apiVersion": cstor_api::names::CSTOR_API_VERSION,
        "kind": "CStorPoolInstance",
        "metadata": {
            "name": cspi_name,
            "namespace": world.namespace,
            "labels": {
                label::CSPC: cname,
                label::CSPC_LEGACY: cname,
                label::HOSTNAME: node,
                label::VERSION: crate::VERSION,
            },
            "ownerReferences": [owner_ref(Kind::Cspc, &cspc.metadata)],
        },
        "spec": {
            "hostName": node,
            "nodeSelector": pool.node_selector,
            "poolConfig": config,
            "dataRaidGroups": pool.data_raid_groups,
            "writeCacheRaidGroups": pool.write_cache_raid_groups,
        },
    });
    Action::Create {
        kind: Kind::Cspi,
        object,
        status: Some(
            json!({"status": {"phase": "Pending", "readOnly": false, "provisionedReplicas": 0, "healthyReplicas": 0}}),
        ),
    }
}

/// Claims `device` for `cspc` unless a claim of this CSPC already holds it: a BDC
/// `bdc-cstor-<bd uid>` (Bound), and the BD's claimRef and claimState Claimed.
fn claim(
    world: &World,
    cspc: &CStorPoolCluster,
    device: &str,
    node: &str,
    predecessor: Option<&str>,
    out: &mut Vec<Action>,
) {
    let cname = name(&cspc.metadata);
    let Some(bd) = world.bds.iter().find(|b| name(&b.metadata) == device) else {
        return;
    };
    let uid = bd.metadata.uid.clone().unwrap_or_else(|| device.to_owned());
    let bdc_name = derive::bdc_name(&uid);
    let existing = world.bdcs.iter().find(|c| name(&c.metadata) == bdc_name);
    if existing.is_none() {
        let mut annotations = serde_json::Map::new();
        if let Some(p) = predecessor {
            annotations.insert(
                annotation::BD_PREDECESSOR.to_owned(),
                Value::String(p.to_owned()),
            );
        }
        out.push(Action::Create {
            kind: Kind::Bdc,
            object: json!({
                "apiVersion": cstor_api::names::OPENEBS_API_VERSION,
                "kind": "BlockDeviceClaim",
                "metadata": {
                    "name": bdc_name,
                    "namespace": world.namespace,
                    "labels": {label::CSPC: cname},
                    "annotations": annotations,
                    "ownerReferences": [owner_ref(Kind::Cspc, &cspc.metadata)],
                },
                "spec": {
                    "blockDeviceName": device,
                    "hostName": node,
                    "blockDeviceNodeAttributes": {"nodeName": node, "hostName": node},
                    "deviceClaimDetails": {"blockVolumeMode": "Block"},
                },
            }),
            status: Some(json!({"status": {"phase": "Bound"}})),
        });
    }
    let claimed = bd.status.as_ref().and_then(|s| s.claim_state)
        == Some(BlockDeviceClaimState::Claimed)
        && bd.spec.claim_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(bdc_name.as_str());
    if !claimed {
        out.push(Action::patch(
            Kind::Bd,
            Some(world.namespace.as_str()),
            device,
            json!({"spec": {"claimRef": {
                "apiVersion": cstor_api::names::OPENEBS_API_VERSION,
                "kind": "BlockDeviceClaim",
                "name": bdc_name,
                "namespace": world.namespace,
            }}}),
        ));
        out.push(Action::patch_status(
            Kind::Bd,
            Some(world.namespace.as_str()),
            device,
            json!({"status": {"claimState": "Claimed"}}),
        ));
    }
}

/// A BlockDevice marked Claimed whose claim is gone goes back to Unclaimed.
fn release_unclaimed(world: &World, out: &mut Vec<Action>) {
    for bd in &world.bds {
        let status = bd.status.as_ref();
        if status.and_then(|s| s.claim_state) != Some(BlockDeviceClaimState::Claimed) {
            continue;
        }
        let Some(claim) = bd.spec.claim_ref.as_ref().and_then(|r| r.name.as_deref()) else {
            continue;
        };
        let live = world
            .bdcs
            .iter()
            .any(|c| name(&c.metadata) == claim && !deleting(&c.metadata));
        if !live {
            let bdn = name(&bd.metadata);
            out.push(Action::patch(
                Kind::Bd,
                Some(world.namespace.as_str()),
                bdn,
                json!({"spec": {"claimRef": null}}),
            ));
            let state = if status.and_then(|s| s.state) == Some(BlockDeviceState::Active) {
                "Unclaimed"
            } else {
                "Released"
            };
            out.push(Action::patch_status(
                Kind::Bd,
                Some(world.namespace.as_str()),
                bdn,
                json!({"status": {"claimState": state}}),
            ));
        }
    }
}
