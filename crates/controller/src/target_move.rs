//! Target move: when the node hosting a volume's target stops heartbeating for longer
//! than the grace ([`crate::Settings::target_move_grace`]), the target goes to another
//! live node, as a pure function of the [`World`].
//!
//! A move patches what names the target: the CV's `cstor.openebs.io/target-node` label,
//! `spec.targetIP` and `spec.targetPortal`, and every CVR's `spec.targetIP`. The new
//! node's agent starts the target; its claim bumps the epoch in the membership record,
//! which fences the old instance should it come back (the replicas refuse a lower epoch).
//! The move also names the old holder instance in [`TAKEOVER_ANNOTATION`]: the controller
//! has seen its node dead for the grace, so the new target need not wait out the
//! takeover gate (T_takeover, 60 s) for that instance's renewals to age; the fence and the
//! lease wait after it (what makes a takeover safe) are unchanged.
//!
//! Invariants: a target moves only to a live node with an InternalIP (one holding a
//! replica first, [`choose_target_node`]); a volume none of whose replicas is on a live
//! node stays where it is (a target there could serve nothing), with a warning event that
//! says why; a node without a heartbeat Lease is never judged dead (a real cluster's nodes
//! need not run our agent's heartbeat).

use std::time::Duration;

use cstor_api::names::label;
use cstor_api::v1::CStorVolume;
use serde_json::json;

use crate::action::{regarding, Action, Kind};
use crate::placement::{choose_target_node, TARGET_NODE_LABEL};
use crate::world::{cspi_node, deleting, label_of, name, World};

/// Annotation on a CStorVolume: the target instance (membership record holder) whose node
/// the controller found dead when it moved the target away from it.
pub const TAKEOVER_ANNOTATION: &str = cstor_api::names::annotation::TAKEOVER_FROM;

/// Moves the targets of every CV whose target node is silent for longer than `grace`.
pub fn reconcile(world: &World, grace: Duration) -> Vec<Action> {
    let mut out = Vec::new();
    for cv in world.cvs.iter().filter(|c| !deleting(&c.metadata)) {
        let Some(from) = label_of(&cv.metadata, TARGET_NODE_LABEL).filter(|n| !n.is_empty()) else {
            continue;
        };
        let silent = world.node_silent_for(from);
        if silent.is_none_or(|s| s <= grace.as_secs() as i64) {
            continue;
        }
        move_target(world, cv, from, silent.unwrap_or_default(), &mut out);
    }
    out
}

/// The holder instance in a CV's membership record, if any.
fn holder_instance(cv: &CStorVolume) -> Option<&str> {
    cv.status
        .as_ref()?
        .replication
        .as_ref()?
        .pointer("/record/holder/instance")?
        .as_str()
}

fn move_target(world: &World, cv: &CStorVolume, from: &str, silent: i64, out: &mut Vec<Action>) {
    let pv = name(&cv.metadata);
    let me = regarding(Kind::Cv, &cv.metadata);
    let not_moved = |why: String| {
        Action::event(
            me.clone(),
            true,
            "TargetNotMoved",
            format!("target of volume {pv} stays on node {from} (silent for {silent}s): {why}"),
        )
    };
    let pools: Vec<String> = world
        .cvrs_of(pv)
        .filter(|r| !deleting(&r.metadata))
        .filter_map(|r| label_of(&r.metadata, label::CSPI).map(str::to_owned))
        .collect();
    let live_replicas = pools
        .iter()
        .filter_map(|p| world.cspi(p))
        .filter(|c| world.node_alive(cspi_node(c)))
        .count();
    if live_replicas == 0 {
        out.push(not_moved(format!(
            "none of its {} replica(s) is on a live node, so no other node could serve it",
            pools.len()
        )));
        return;
    }
    let (to, ip) = match choose_target_node(world, &pools, Some(from)) {
        Ok(x) => x,
        Err(why) => {
            out.push(not_moved(why.0));
            return;
        }
    };
    let port = cv
        .spec
        .target_port
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "3260".to_owned());
    let portal = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let old_portal = cv.spec.target_portal.clone().unwrap_or_default();
    let ns = Some(world.namespace.as_str());
    out.push(Action::patch(
        Kind::Cv,
        ns,
        pv,
        json!({
            "metadata": {
                "labels": {TARGET_NODE_LABEL: to},
                "annotations": {TAKEOVER_ANNOTATION: holder_instance(cv)},
            },
            "spec": {"targetIP": ip, "targetPortal": portal},
        }),
    ));
    for r in world.cvrs_of(pv).filter(|r| !deleting(&r.metadata)) {
        if r.spec.target_ip.as_deref() != Some(ip.as_str()) {
            out.push(Action::patch(
                Kind::Cvr,
                ns,
                name(&r.metadata),
                json!({"spec": {"targetIP": ip}}),
            ));
        }
    }
    out.push(Action::event(
        me,
        false,
        "TargetMoved",
        format!(
            "moved target from {from} to {to} ({old_portal} -> {portal}): node {from} silent for {silent}s"
        ),
    ));
}
