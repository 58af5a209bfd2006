//! CStorVolumeConfig -> CStorVolume + CStorVolumeReplicas (cStor's cvc-operator,
//! `cstor-internals.md` §2.7-2.8, §6), scale up and down, and expansion, as pure
//! functions of the [`World`].
//!
//! - A Pending CVC gets replicas on distinct healthy pools ([`crate::placement`]; a
//!   restore's replicas go on the pools of the source volume, as clones), a CV naming
//!   them in `spec.replicaDetails.knownReplicas`, a target node (the one the CSI
//!   accessibility requirements named in the `cstor.openebs.io/topology-node` annotation
//!   when it is alive, else [`crate::placement::choose_target_node`]), then phase Bound.
//!   Creation order is CVRs, CV, CVC status, so a pass cut short is finished by the next
//!   (existing CVRs of the volume are kept in the placement).
//! - Scale through `spec.policy.replicaPoolInfo` of a Bound CVC: a new pool gets a CVR
//!   and raises the CV's desiredReplicationFactor (its id joins spec.knownReplicas); a
//!   removed pool's id leaves spec.knownReplicas and drf drops; that CVR is deleted once
//!   the target's applied membership (`status.replicaDetails.knownReplicas`) no longer
//!   lists it. Scale through the CV itself (the alpha seed) needs nothing here but the
//!   replicationFactor follow-up below; the user deletes the CVR.
//! - replicationFactor (and CF) follow drf once the applied membership equals the
//!   desired one, with the seed's event "Successfully updated the desiredReplicationFactor to N".
//! - Expansion: a larger CVC spec.capacity raises CV and CVR spec.capacity; when the CV
//!   reports the new capacity the CVC status follows (condition VolumeResizeSuccessful).
//!
//! Invariants: one change of the replica set at a time (a scale waits for the previous
//! to be applied); never writes CV status after creation (the agent owns it).

use std::collections::{BTreeMap, BTreeSet};

use cstor_api::names::{derive, label, CSTOR_API_VERSION, IQN_PREFIX};
use cstor_api::quantity::{format_bytes, quantity_bytes};
use cstor_api::v1::{
    CStorVolume, CStorVolumeConfig, CStorVolumeConfigPhase, CStorVolumeReplica,
    CStorVolumeReplicaPhase,
};
use serde_json::{json, Value};

use crate::action::{owner_ref, regarding, Action, Kind};
use crate::placement::{choose_pools, choose_target_node, TARGET_NODE_LABEL};
use crate::world::{annotation_of, bytes_of, deleting, label_of, name, World};
use crate::Ids;

/// Annotation on a CVC: `<namespace>/<name>` of the PVC it was made for (ours).
pub const PVC_ANNOTATION: &str = cstor_api::names::annotation::PVC;

/// Reconciles every CVC.
pub fn reconcile(world: &World, ids: &mut dyn Ids) -> Vec<Action> {
    let mut out = Vec::new();
    for cvc in &world.cvcs {
        if deleting(&cvc.metadata) {
            continue;
        }
        let phase = cvc.status.as_ref().and_then(|s| s.phase);
        match (phase, world.cv(name(&cvc.metadata))) {
            (Some(CStorVolumeConfigPhase::Bound), Some(cv)) => bound(world, cvc, cv, ids, &mut out),
            (Some(CStorVolumeConfigPhase::Failed), _) => {}
            _ => provision(world, cvc, ids, &mut out),
        }
    }
    out
}

/// Requested size of a CVC in bytes.
pub fn cvc_size(cvc: &CStorVolumeConfig) -> u64 {
    crate::world::storage_bytes(cvc.spec.capacity.as_ref())
}

/// The replica ids of a CV's desired set (spec) and applied set (status).
pub fn known(cv: &CStorVolume) -> (BTreeMap<String, String>, Option<BTreeSet<String>>) {
    let spec = cv
        .spec
        .replica_details
        .as_ref()
        .and_then(|d| d.known_replicas.clone())
        .unwrap_or_default();
    let status = cv
        .status
        .as_ref()
        .and_then(|s| s.replica_details.as_ref())
        .and_then(|d| d.known_replicas.as_ref())
        .map(|m| m.keys().cloned().collect());
    (spec, status)
}

fn pvc_regarding(world: &World, cvc: &CStorVolumeConfig) -> Option<crate::action::Regarding> {
    let (ns, n) = annotation_of(&cvc.metadata, PVC_ANNOTATION)?.split_once('/')?;
    let pvc = world.pvc(ns, n)?;
    Some(regarding(Kind::Pvc, &pvc.metadata))
}

fn provision(world: &World, cvc: &CStorVolumeConfig, ids: &mut dyn Ids, out: &mut Vec<Action>) {
    let pv = name(&cvc.metadata);
    let me = regarding(Kind::Cvc, &cvc.metadata);
    let size = cvc_size(cvc);
    let count = cvc
        .spec
        .provision
        .as_ref()
        .and_then(|p| p.replica_count)
        .unwrap_or(1)
        .max(1) as usize;
    let Some(cspc) = label_of(&cvc.metadata, label::CSPC) else {
        out.push(Action::event(
            me,
            true,
            "ProvisioningFailed",
            format!(
                "CStorVolumeConfig {pv} names no CStorPoolCluster (label {})",
                label::CSPC
            ),
        ));
        return;
    };
    let existing: Vec<&CStorVolumeReplica> = world
        .cvrs_of(pv)
        .filter(|r| !deleting(&r.metadata))
        .collect();
    let prefer: Vec<String> = existing
        .iter()
        .filter_map(|r| label_of(&r.metadata, label::CSPI).map(str::to_owned))
        .collect();
    let source = cvc
        .spec
        .cstor_volume_source
        .as_deref()
        .filter(|s| !s.is_empty());
    let explicit: Option<Vec<String>> = cvc
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.replica_pool_info.as_ref())
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(|p| p.pool_name.clone()).collect());
    let candidates: Vec<_> = match (source, &explicit) {
        (Some(src), _) => {
            let src_pv = src.split('@').next().unwrap_or_default();
            let pools: BTreeSet<&str> = world
                .cvrs_of(src_pv)
                .filter_map(|r| label_of(&r.metadata, label::CSPI))
                .collect();
            world
                .cspis
                .iter()
                .filter(|c| pools.contains(name(&c.metadata)))
                .collect()
        }
        (None, Some(list)) => world
            .cspis
            .iter()
            .filter(|c| list.iter().any(|l| l == name(&c.metadata)))
            .collect(),
        (None, None) => world.cspis_of(cspc).collect(),
    };
    let count = explicit.as_ref().map_or(count, Vec::len);
    let pools = match choose_pools(world, &candidates, count, size, &prefer) {
        Ok(p) => p,
        Err(why) => {
            let what = if source.is_some() {
                " holding the snapshot's source volume"
            } else {
                ""
            };
            let msg = format!(
                "volume {pv} cannot be placed in CStorPoolCluster {cspc}{what}: {}",
                why.0
            );
            if let Some(p) = pvc_regarding(world, cvc) {
                out.push(Action::event(p, true, "ProvisioningFailed", msg.clone()));
            }
            out.push(Action::event(me, true, "ProvisioningFailed", msg));
            return;
        }
    };
    let (node, ip) = match world.cv(pv) {
        Some(cv) => (
            label_of(&cv.metadata, TARGET_NODE_LABEL)
                .unwrap_or_default()
                .to_owned(),
            cv.spec.target_ip.clone().unwrap_or_default(),
        ),
        None => match annotation_of(&cvc.metadata, crate::provision::TOPOLOGY_ANNOTATION)
            .filter(|n| world.node_alive(n))
            .and_then(|n| world.node_ip(n).map(|ip| (n.to_owned(), ip)))
        {
            // The CSI accessibility requirements asked for this node (the consumer's,
            // under WaitForFirstConsumer): its target serves I/O without a network hop.
            Some(x) => x,
            None => match choose_target_node(world, &pools, None) {
                Ok(x) => x,
                Err(why) => {
                    out.push(Action::event(
                        me,
                        true,
                        "ProvisioningFailed",
                        format!("volume {pv}: {}", why.0),
                    ));
                    return;
                }
            },
        },
    };
    let capacity = format_bytes(size);
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    for pool in &pools {
        if let Some(r) = existing
            .iter()
            .find(|r| label_of(&r.metadata, label::CSPI) == Some(pool.as_str()))
        {
            if let Some(id) = r.spec.replica_id.clone() {
                known.insert(id, "0".to_owned());
            }
            continue;
        }
        let id = ids.replica_id();
        known.insert(id.clone(), "0".to_owned());
        out.push(create_cvr(
            world, pv, pool, &id, &ip, &capacity, source, None,
        ));
    }
    if world.cv(pv).is_none() {
        let rf = pools.len() as i32;
        let cv = json!({
            "apiVersion": CSTOR_API_VERSION,
            "kind": "CStorVolume",
            "metadata": {
                "name": pv,
                "namespace": world.namespace,
                "labels": {
                    label::PERSISTENT_VOLUME: pv,
                    label::CSPC: cspc,
                    label::VERSION: crate::VERSION,
                    TARGET_NODE_LABEL: node,
                },
                "ownerReferences": [owner_ref(Kind::Cvc, &cvc.metadata)],
            },
            "spec": {
                "capacity": capacity,
                "targetIP": ip,
                "targetPort": "3260",
                "targetPortal": format!("{ip}:3260"),
                "iqn": derive::iqn(pv),
                "nodeBase": IQN_PREFIX,
                "replicationFactor": rf,
                "consistencyFactor": derive::consistency_factor(rf as u32),
                "desiredReplicationFactor": rf,
                "replicaDetails": {"knownReplicas": known},
            },
        });
        out.push(Action::Create {
            kind: Kind::Cv,
            object: cv,
            status: Some(json!({"status": {"phase": "Init", "capacity": capacity}})),
        });
    }
    out.push(Action::patch(
        Kind::Cvc,
        Some(world.namespace.as_str()),
        pv,
        json!({"spec": {"cstorVolumeRef": {
            "apiVersion": CSTOR_API_VERSION, "kind": "CStorVolume", "name": pv, "namespace": world.namespace,
        }}}),
    ));
    out.push(Action::patch_status(
        Kind::Cvc,
        Some(world.namespace.as_str()),
        pv,
        json!({"status": {"phase": "Bound", "poolInfo": pools, "capacity": {"storage": capacity}}}),
    ));
    out.push(Action::event(
        me,
        false,
        "Bound",
        format!(
            "volume {pv} bound: {} replica(s) on {}, target on node {node} ({ip}:3260)",
            pools.len(),
            pools.join(", ")
        ),
    ));
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn create_cvr(
    world: &World,
    pv: &str,
    pool: &str,
    id: &str,
    target_ip: &str,
    capacity: &str,
    source: Option<&str>,
    owner: Option<&CStorVolume>,
) -> Action {
    let cspi_uid = world
        .cspi(pool)
        .and_then(|c| c.metadata.uid.clone())
        .unwrap_or_default();
    let mut labels = serde_json::Map::new();
    for (k, v) in [
        (label::PERSISTENT_VOLUME, pv),
        (label::CSPI, pool),
        (label::CSPI_NAME, pool),
        (label::CSPI_UID, cspi_uid.as_str()),
        (label::CSTOR_VOLUME, pv),
        (label::VERSION, crate::VERSION),
    ] {
        labels.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    if let Some((src, snap)) = source.and_then(|s| s.split_once('@')) {
        labels.insert(label::CLONED.to_owned(), json!("true"));
        labels.insert(label::SOURCE_VOLUME.to_owned(), json!(src));
        labels.insert(label::SNAPSHOT.to_owned(), json!(snap));
    }
    let mut metadata = json!({
        "name": derive::cvr_name(pv, pool),
        "namespace": world.namespace,
        "labels": labels,
    });
    if let Some(cv) = owner {
        metadata["ownerReferences"] = json!([owner_ref(Kind::Cv, &cv.metadata)]);
    }
    Action::Create {
        kind: Kind::Cvr,
        object: json!({
            "apiVersion": CSTOR_API_VERSION,
            "kind": "CStorVolumeReplica",
            "metadata": metadata,
            "spec": {"targetIP": target_ip, "capacity": capacity, "replicaid": id},
        }),
        status: Some(json!({"status": {"phase": "Init"}})),
    }
}

fn bound(
    world: &World,
    cvc: &CStorVolumeConfig,
    cv: &CStorVolume,
    ids: &mut dyn Ids,
    out: &mut Vec<Action>,
) {
    let pv = name(&cvc.metadata);
    let nsn = Some(world.namespace.as_str());
    let me_cv = regarding(Kind::Cv, &cv.metadata);
    let cvrs: Vec<&CStorVolumeReplica> = world
        .cvrs_of(pv)
        .filter(|r| !deleting(&r.metadata))
        .collect();
    let (spec_known, status_known) = known(cv);
    let drf = cv
        .spec
        .desired_replication_factor
        .unwrap_or(spec_known.len() as i32);
    let rf = cv.spec.replication_factor.unwrap_or(drf);

    // CVRs made before the CV existed get it as owner (garbage collection with the CVC).
    for r in &cvrs {
        if r.metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty())
        {
            out.push(Action::patch(
                Kind::Cvr,
                nsn,
                name(&r.metadata),
                json!({"metadata": {"ownerReferences": [owner_ref(Kind::Cv, &cv.metadata)]}}),
            ));
        }
    }

    // replicationFactor follows drf once the target applied the membership change.
    let applied = status_known
        .as_ref()
        .is_some_and(|s| s.iter().eq(spec_known.keys()));
    if rf != drf && applied {
        out.push(Action::patch(
            Kind::Cv,
            nsn,
            pv,
            json!({"spec": {"replicationFactor": drf, "consistencyFactor": derive::consistency_factor(drf.max(1) as u32)}}),
        ));
        out.push(Action::event(
            me_cv.clone(),
            false,
            "Updated",
            format!("Successfully updated the desiredReplicationFactor to {drf}"),
        ));
    }

    // Scale through replicaPoolInfo.
    let by_pool: BTreeMap<String, &CStorVolumeReplica> = cvrs
        .iter()
        .filter_map(|r| label_of(&r.metadata, label::CSPI).map(|p| (p.to_owned(), *r)))
        .collect();
    let desired_pools: Option<Vec<String>> = cvc
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.replica_pool_info.as_ref())
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(|p| p.pool_name.clone()).collect());
    let settled = rf == drf && applied_or_unknown(&status_known, &spec_known);
    let dropped: Vec<&String> = desired_pools
        .iter()
        .flatten()
        .filter(|p| {
            by_pool
                .get(*p)
                .and_then(|r| r.spec.replica_id.as_deref())
                .is_some_and(|id| !spec_known.contains_key(id))
        })
        .collect();
    if let (Some(desired), false) = (&desired_pools, dropped.is_empty()) {
        // The CV was edited directly (alpha seed): the CVC's explicit list follows it, so
        // deleting the removed CVR does not bring it back.
        let keep: Vec<Value> = desired
            .iter()
            .filter(|p| !dropped.contains(p))
            .map(|p| json!({"poolName": p}))
            .collect();
        out.push(Action::patch(
            Kind::Cvc,
            nsn,
            pv,
            json!({"spec": {"policy": {"replicaPoolInfo": keep}}}),
        ));
    } else if let Some(desired) = &desired_pools {
        let add: Vec<&String> = desired
            .iter()
            .filter(|p| !by_pool.contains_key(*p))
            .collect();
        let remove: Vec<(&String, &&CStorVolumeReplica)> = by_pool
            .iter()
            .filter(|(p, r)| {
                !desired.contains(p)
                    && r.spec
                        .replica_id
                        .as_deref()
                        .is_some_and(|id| spec_known.contains_key(id))
            })
            .collect();
        if (!add.is_empty() || !remove.is_empty()) && !settled {
            out.push(Action::event(
                regarding(Kind::Cvc, &cvc.metadata),
                true,
                "ScalePending",
                format!("replica change of volume {pv} waits: the previous change is not applied yet (replicationFactor {rf}, desiredReplicationFactor {drf})"),
            ));
        } else if let Some(pool) = add.first() {
            match world.cspi(pool) {
                Some(c) if crate::placement::usable(c) => {
                    let id = ids.replica_id();
                    let cap = cv.spec.capacity.as_ref().map(|q| q.0.clone()).unwrap_or_default();
                    let ip = cv.spec.target_ip.clone().unwrap_or_default();
                    out.push(create_cvr(world, pv, pool, &id, &ip, &cap, None, Some(cv)));
                    let mut k = spec_known.clone();
                    k.insert(id, "0".to_owned());
                    let n = k.len() as i32;
                    out.push(Action::patch(Kind::Cv, nsn, pv, json!({"spec": {"desiredReplicationFactor": n, "replicaDetails": {"knownReplicas": k}}})));
                    out.push(Action::event(regarding(Kind::Cvc, &cvc.metadata), false, "ScalingUp", format!("adding a replica of volume {pv} on pool instance {pool}; desiredReplicationFactor {n}")));
                }
                _ => out.push(Action::event(
                    regarding(Kind::Cvc, &cvc.metadata),
                    true,
                    "ScaleUpFailed",
                    format!("pool instance {pool} in spec.policy.replicaPoolInfo does not exist or is not ONLINE and writable"),
                )),
            }
        } else if let Some((pool, r)) = remove.first() {
            let healthy_others = by_pool
                .iter()
                .filter(|(p, _)| p != pool)
                .all(|(_, o)| replica_phase(o) == Some(CStorVolumeReplicaPhase::Healthy));
            if !healthy_others {
                out.push(Action::event(
                    regarding(Kind::Cvc, &cvc.metadata),
                    true,
                    "ScaleDownPending",
                    format!("removing the replica of volume {pv} on {pool} waits until every other replica is Healthy"),
                ));
            } else if let Some(id) = r.spec.replica_id.as_deref() {
                let mut k: serde_json::Map<String, Value> = spec_known
                    .iter()
                    .map(|(a, b)| (a.clone(), json!(b)))
                    .collect();
                k.insert(id.to_owned(), Value::Null);
                let n = spec_known.len() as i32 - 1;
                out.push(Action::patch(Kind::Cv, nsn, pv, json!({"spec": {"desiredReplicationFactor": n, "replicaDetails": {"knownReplicas": k}}})));
                out.push(Action::event(regarding(Kind::Cvc, &cvc.metadata), false, "ScalingDown", format!("removing the replica of volume {pv} on pool instance {pool}; desiredReplicationFactor {n}")));
            }
        }
        // A replica removed from both the desired pools and the desired set is deleted
        // once the target no longer counts it.
        for (pool, r) in &by_pool {
            let id = r.spec.replica_id.as_deref().unwrap_or_default();
            let gone_from_target = status_known.as_ref().is_some_and(|s| !s.contains(id));
            // A replaced replica goes when the target no longer reports it at all
            // ([`crate::replace`]): a Stale member is not in status.knownReplicas.
            let replaced =
                annotation_of(&r.metadata, crate::replace::REPLACED_BY_ANNOTATION).is_some();
            if !desired.contains(pool)
                && !spec_known.contains_key(id)
                && gone_from_target
                && !replaced
            {
                out.push(Action::delete(Kind::Cvr, nsn, name(&r.metadata)));
            }
        }
    }

    // Expansion.
    let want = cvc_size(cvc);
    let cv_spec = cv
        .spec
        .capacity
        .as_ref()
        .and_then(|q| quantity_bytes(q).ok())
        .unwrap_or(0);
    let cv_now = cv
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|q| quantity_bytes(q).ok())
        .unwrap_or(0);
    let status_cap =
        crate::world::storage_bytes(cvc.status.as_ref().and_then(|s| s.capacity.as_ref()));
    if want > cv_spec {
        let q = format_bytes(want);
        out.push(Action::patch(
            Kind::Cv,
            nsn,
            pv,
            json!({"spec": {"capacity": q}}),
        ));
        for r in &cvrs {
            out.push(Action::patch(
                Kind::Cvr,
                nsn,
                name(&r.metadata),
                json!({"spec": {"capacity": q}}),
            ));
        }
        out.push(Action::patch_status(
            Kind::Cvc,
            nsn,
            pv,
            json!({"status": {"conditions": [{"type": "Resizing", "status": "True", "reason": "Resizing", "message": format!("resizing volume {pv} to {q}")}]}}),
        ));
        out.push(Action::event(
            me_cv.clone(),
            false,
            "Resizing",
            format!("resizing volume {pv} to {q}"),
        ));
    } else {
        for r in &cvrs {
            let rc = r.spec.capacity.as_deref().map(bytes_of).unwrap_or(0);
            if rc < cv_spec {
                out.push(Action::patch(
                    Kind::Cvr,
                    nsn,
                    name(&r.metadata),
                    json!({"spec": {"capacity": format_bytes(cv_spec)}}),
                ));
            }
        }
    }
    if cv_now >= want && want > status_cap && cv_now > 0 {
        let q = format_bytes(want);
        out.push(Action::patch_status(
            Kind::Cvc,
            nsn,
            pv,
            json!({"status": {"capacity": {"storage": q}, "conditions": [{"type": "VolumeResizeSuccessful", "status": "True", "reason": "Resized", "message": format!("volume {pv} resized to {q}")}]}}),
        ));
        out.push(Action::event(
            regarding(Kind::Cvc, &cvc.metadata),
            false,
            "VolumeResizeSuccessful",
            format!("volume {pv} resized to {q}"),
        ));
    }

    // poolInfo: the pools holding replicas.
    let pools: Vec<String> = by_pool.keys().cloned().collect();
    let have: Vec<String> = cvc
        .status
        .as_ref()
        .and_then(|s| s.pool_info.clone())
        .unwrap_or_default();
    let mut have_sorted = have.clone();
    have_sorted.sort();
    if have_sorted != pools {
        out.push(Action::patch_status(
            Kind::Cvc,
            nsn,
            pv,
            json!({"status": {"poolInfo": pools}}),
        ));
    }
}

fn applied_or_unknown(status: &Option<BTreeSet<String>>, spec: &BTreeMap<String, String>) -> bool {
    status.as_ref().is_none_or(|s| s.iter().eq(spec.keys()))
}

/// A CVR's phase.
pub fn replica_phase(r: &CStorVolumeReplica) -> Option<CStorVolumeReplicaPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}
