//! Replacement replicas: when the node of a pool instance holding a replica of a bound
//! volume stays silent (no heartbeat renewal) for longer than the grace
//! ([`crate::Settings::replica_replace_grace`], default 10 min), the replica is replaced
//! by a new one on another healthy pool instance of the volume's CSPC, as a pure function
//! of the [`World`].
//!
//! A replacement is one change of the desired set in `spec.replicaDetails.knownReplicas`:
//! the lost replica's id out, a new CVR's id in (desiredReplicationFactor unchanged). The
//! target applies it as a scale (crates/agent/src/targets.rs `apply_scale`: it removes the
//! lost member from the membership record, then adds the new replica, which the
//! replication catch-up rebuilds in full). The lost CVR is annotated
//! [`REPLACED_BY_ANNOTATION`] and deleted once the target no longer reports it in
//! `status.replicaStatuses`; an explicit `spec.policy.replicaPoolInfo` of the CVC swaps
//! the pool too, so the scale logic of [`crate::volume`] does not undo the change.
//!
//! Invariants: one replacement per volume at a time, and only while every other replica
//! of the desired set is Healthy (a second loss waits until the first replacement is
//! rebuilt, so the volume never drops its last good copies to rebuild from); a pool on a
//! silent node, read-only, not ONLINE or already holding a replica of the volume is never
//! chosen; a node without a heartbeat Lease is never judged silent.

use std::collections::BTreeSet;
use std::time::Duration;

use cstor_api::names::label;
use cstor_api::v1::{CStorVolume, CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase};
use serde_json::{json, Value};

use crate::action::{regarding, Action, Kind};
use crate::placement::choose_pools;
use crate::volume::{create_cvr, cvc_size, known, replica_phase};
use crate::world::{cspi_node, deleting, label_of, name, World};
use crate::Ids;

/// Annotation on a lost CVR: the name of the CVR that replaces it.
pub const REPLACED_BY_ANNOTATION: &str = "cstor.openebs.io/replaced-by";

/// Replaces the lost replicas of every bound volume.
pub fn reconcile(world: &World, ids: &mut dyn Ids, grace: Duration) -> Vec<Action> {
    let mut out = Vec::new();
    for cvc in world.cvcs.iter().filter(|c| !deleting(&c.metadata)) {
        let bound = cvc.status.as_ref().and_then(|s| s.phase)
            == Some(cstor_api::v1::CStorVolumeConfigPhase::Bound);
        let Some(cv) = world.cv(name(&cvc.metadata)).filter(|_| bound) else {
            continue;
        };
        if deleting(&cv.metadata) {
            continue;
        }
        remove_replaced(world, cv, &mut out);
        replace_lost(world, cvc, cv, ids, grace, &mut out);
    }
    out
}

/// Whether the node of `r`'s pool instance is silent for longer than `grace`.
fn lost(world: &World, r: &CStorVolumeReplica, grace: Duration) -> bool {
    let Some(cspi) = label_of(&r.metadata, label::CSPI).and_then(|p| world.cspi(p)) else {
        return false;
    };
    world
        .node_silent_for(cspi_node(cspi))
        .is_some_and(|s| s > grace.as_secs() as i64)
}

/// Deletes replaced CVRs the target no longer reports.
fn remove_replaced(world: &World, cv: &CStorVolume, out: &mut Vec<Action>) {
    let pv = name(&cv.metadata);
    let (spec_known, _) = known(cv);
    let reported: BTreeSet<&str> = cv
        .status
        .as_ref()
        .and_then(|s| s.replica_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| r.replica_id.as_deref())
        .collect();
    for r in world.cvrs_of(pv).filter(|r| !deleting(&r.metadata)) {
        let replaced = crate::world::annotation_of(&r.metadata, REPLACED_BY_ANNOTATION).is_some();
        let id = r.spec.replica_id.as_deref().unwrap_or_default();
        if replaced && !spec_known.contains_key(id) && !reported.contains(id) {
            out.push(Action::delete(
                Kind::Cvr,
                Some(world.namespace.as_str()),
                name(&r.metadata),
            ));
        }
    }
}

fn replace_lost(
    world: &World,
    cvc: &CStorVolumeConfig,
    cv: &CStorVolume,
    ids: &mut dyn Ids,
    grace: Duration,
    out: &mut Vec<Action>,
) {
    let pv = name(&cv.metadata);
    let (spec_known, _) = known(cv);
    let cvrs: Vec<&CStorVolumeReplica> = world
        .cvrs_of(pv)
        .filter(|r| !deleting(&r.metadata))
        .collect();
    let in_set = |r: &&&CStorVolumeReplica| {
        r.spec
            .replica_id
            .as_deref()
            .is_some_and(|id| spec_known.contains_key(id))
    };
    let Some(gone) = cvrs.iter().filter(in_set).find(|r| lost(world, r, grace)) else {
        return;
    };
    let me = regarding(Kind::Cv, &cv.metadata);
    let gone_pool = label_of(&gone.metadata, label::CSPI).unwrap_or_default();
    let not_yet = |why: String| {
        Action::event(
            me.clone(),
            true,
            "ReplicaNotReplaced",
            format!("the replica of volume {pv} on pool instance {gone_pool} (node silent) is not replaced yet: {why}"),
        )
    };
    let others_healthy = cvrs
        .iter()
        .filter(in_set)
        .filter(|r| r.metadata.name != gone.metadata.name)
        .all(|r| replica_phase(r) == Some(CStorVolumeReplicaPhase::Healthy));
    if !others_healthy {
        out.push(not_yet(
            "another replica of it is not Healthy (one replacement at a time)".to_owned(),
        ));
        return;
    }
    let Some(cspc) =
        label_of(&cv.metadata, label::CSPC).or_else(|| label_of(&cvc.metadata, label::CSPC))
    else {
        out.push(not_yet("it names no CStorPoolCluster".to_owned()));
        return;
    };
    let held: BTreeSet<&str> = world
        .cvrs_of(pv)
        .filter_map(|r| label_of(&r.metadata, label::CSPI))
        .collect();
    let candidates: Vec<_> = world
        .cspis_of(cspc)
        .filter(|c| !held.contains(name(&c.metadata)))
        .filter(|c| world.node_alive(cspi_node(c)))
        .collect();
    let pool = match choose_pools(world, &candidates, 1, cvc_size(cvc), &[]) {
        Ok(p) => p.into_iter().next().unwrap_or_default(),
        Err(why) => {
            out.push(not_yet(format!(
                "no pool instance of {cspc} without a replica of it on a live node can take one: {}",
                why.0
            )));
            return;
        }
    };
    let ns = Some(world.namespace.as_str());
    let id = ids.replica_id();
    let gone_id = gone.spec.replica_id.clone().unwrap_or_default();
    let cap = cv
        .spec
        .capacity
        .as_ref()
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let ip = cv.spec.target_ip.clone().unwrap_or_default();
    let new_cvr = create_cvr(world, pv, &pool, &id, &ip, &cap, None, Some(cv));
    let new_name = match &new_cvr {
        Action::Create { object, .. } => crate::world::jstr(object, &["metadata", "name"])
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    out.push(new_cvr);
    out.push(Action::patch(
        Kind::Cv,
        ns,
        pv,
        json!({"spec": {"replicaDetails": {"knownReplicas": {gone_id.as_str(): Value::Null, id.as_str(): "0"}}}}),
    ));
    out.push(Action::patch(
        Kind::Cvr,
        ns,
        name(&gone.metadata),
        json!({"metadata": {"annotations": {REPLACED_BY_ANNOTATION: new_name}}}),
    ));
    let explicit = cvc
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.replica_pool_info.as_ref())
        .filter(|v| !v.is_empty());
    if let Some(list) = explicit {
        let swapped: Vec<Value> = list
            .iter()
            .map(|p| {
                let n = if p.pool_name == gone_pool {
                    pool.as_str()
                } else {
                    p.pool_name.as_str()
                };
                json!({"poolName": n})
            })
            .collect();
        out.push(Action::patch(
            Kind::Cvc,
            ns,
            pv,
            json!({"spec": {"policy": {"replicaPoolInfo": swapped}}}),
        ));
    }
    out.push(Action::event(
        me,
        false,
        "ReplicaReplaced",
        format!(
            "replacing the replica of volume {pv} on pool instance {gone_pool} (its node silent for over {}s) with a new one on {pool}",
            grace.as_secs()
        ),
    ));
}
