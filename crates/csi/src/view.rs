//! The driver's answers read off a [`World`]: what a CreateVolume wants and whether an
//! existing volume fits it, whether a new one can be placed, the CSI view of a volume and
//! its condition, and the capacity of a topology segment. Pure functions (unit-tested on
//! hand-built worlds); the services do the I/O.

use std::collections::HashMap;

use cstor_api::names::{label, value, CSTOR_API_VERSION};
use cstor_api::v1::{CStorVolumeConfig, CStorVolumeConfigPhase, CStorVolumePhase};
use cstor_controller::placement;
use cstor_controller::provision::{cvc_object, CvcRequest, FSTYPE_ANNOTATION};
use cstor_controller::volume::{cvc_size, replica_phase};
use cstor_controller::world::{annotation_of, cspi_node, deleting, label_of, name, World};
use serde_json::json;

use crate::pb::{TopologyRequirement, Volume, VolumeCondition};
use crate::request::Params;
use crate::Error;

/// CVC annotation with the name the CO gave CreateVolume (the id may be its hash).
pub const CSI_NAME_ANNOTATION: &str = "cstor.csi.openebs.io/name";
/// CVC annotation and volume_context key with a volume's REMOUNT (`"true"`/`"false"`,
/// from the StorageClass parameter `remount`); NodeStageVolume reads it from the
/// volume_context (the PV's volumeAttributes). Absent: the node plugin's `--remount`.
pub const REMOUNT_KEY: &str = "cstor.openebs.io/remount";
/// Key of the topology segment the driver publishes and reads: the node's name.
pub const TOPOLOGY_KEY: &str = value::TOPOLOGY_NODE_KEY;

/// A checked CreateVolume request.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// Volume id (CVC name).
    pub id: String,
    /// The name the CO gave.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// StorageClass parameters.
    pub params: Params,
    /// Filesystem for the node service (capabilities first, then the parameter, ext4).
    pub fs_type: String,
    /// `<volume>@<snapshot>` of a restore (the content source), when one is asked for.
    pub source: Option<String>,
}

/// Why an existing CVC does not fit `want` (None: it does, the call is a repeat).
pub fn incompatible(
    cvc: &CStorVolumeConfig,
    want: &Wanted,
    range: Option<&crate::pb::CapacityRange>,
) -> Option<String> {
    let size = cvc_size(cvc);
    if !crate::request::fits(size, range) {
        return Some(format!(
            "its size is {size} bytes, outside the capacity range"
        ));
    }
    if let Some(n) = annotation_of(&cvc.metadata, CSI_NAME_ANNOTATION) {
        if n != want.name {
            return Some(format!("it was created for the name {n:?}"));
        }
    }
    let cspc = label_of(&cvc.metadata, label::CSPC).unwrap_or_default();
    if cspc != want.params.cspc {
        return Some(format!("its cstorPoolCluster is {cspc:?}"));
    }
    let rc = cvc
        .spec
        .provision
        .as_ref()
        .and_then(|p| p.replica_count)
        .unwrap_or(1);
    if rc != want.params.replica_count {
        return Some(format!("its replicaCount is {rc}"));
    }
    let policy = label_of(&cvc.metadata, label::VOLUME_POLICY);
    if policy != want.params.policy.as_deref() {
        return Some(format!("its cstorVolumePolicy is {policy:?}"));
    }
    // A CVC of the PVC path records no filesystem; it cannot conflict.
    if let Some(fs) = annotation_of(&cvc.metadata, FSTYPE_ANNOTATION) {
        if fs != want.fs_type {
            return Some(format!("its filesystem is {fs}"));
        }
    }
    let remount = annotation_of(&cvc.metadata, REMOUNT_KEY);
    let wanted = want.params.remount.map(bool_str);
    if remount != wanted {
        return Some(match remount {
            Some(r) => format!("its remount is {r:?}"),
            None => "it has no remount parameter".to_owned(),
        });
    }
    let source = cvc
        .spec
        .cstor_volume_source
        .as_deref()
        .filter(|s| !s.is_empty());
    if source != want.source.as_deref() {
        return Some(match source {
            Some(s) => format!("it was restored from snapshot {s}"),
            None => "it was not made from a snapshot".to_owned(),
        });
    }
    None
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// The node the accessibility requirements ask the target to run on: the first preferred
/// topology naming a live node (and requisite, when requisites are given), else the first
/// requisite one. Topologies without our key are not ours to satisfy and are skipped.
pub fn topology_node(
    world: &World,
    id: &str,
    req: Option<&TopologyRequirement>,
) -> Result<Option<String>, Error> {
    let Some(req) = req else { return Ok(None) };
    let node_of = |t: &crate::pb::Topology| t.segments.get(TOPOLOGY_KEY).cloned();
    let requisite: Vec<String> = req.requisite.iter().filter_map(node_of).collect();
    for n in req.preferred.iter().filter_map(node_of) {
        if world.node_alive(&n) && (requisite.is_empty() || requisite.contains(&n)) {
            return Ok(Some(n));
        }
    }
    if let Some(n) = requisite.iter().find(|n| world.node_alive(n)) {
        return Ok(Some(n.clone()));
    }
    if requisite.is_empty() {
        return Ok(None);
    }
    Err(Error::NoPlacement {
        volume: id.to_owned(),
        why: format!(
            "no requisite node ({}) is a live node of the cluster",
            requisite.join(", ")
        ),
    })
}

/// Checks that a new volume can be made: its CSPC and policy exist and enough healthy
/// writable pools have room (the controller's own placement, so the answer here is the
/// one the controller will reach).
pub fn check_new(world: &World, want: &Wanted) -> Result<(), Error> {
    let p = &want.params;
    if world.cspc(&p.cspc).is_none() {
        return Err(Error::invalid(
            "parameters.cstorPoolCluster",
            format!(
                "CStorPoolCluster {} does not exist in namespace {}",
                p.cspc, world.namespace
            ),
        ));
    }
    let mut explicit = false;
    if let Some(pol) = &p.policy {
        let Some(cvp) = world.cvps.iter().find(|c| name(&c.metadata) == pol) else {
            return Err(Error::invalid(
                "parameters.cstorVolumePolicy",
                format!(
                    "CStorVolumePolicy {pol} does not exist in namespace {}",
                    world.namespace
                ),
            ));
        };
        explicit = cvp
            .spec
            .replica_pool_info
            .as_ref()
            .is_some_and(|v| !v.is_empty());
    }
    if explicit {
        // The policy names the pools; the controller reports on the CVC if they fail.
        return Ok(());
    }
    let candidates: Vec<_> = world.cspis_of(&p.cspc).collect();
    let count = usize::try_from(p.replica_count).unwrap_or(1);
    placement::choose_pools(world, &candidates, count, want.size_bytes, &[])
        .map(|_| ())
        .map_err(|why| Error::NoPlacement {
            volume: want.id.clone(),
            why: why.0,
        })
}

/// The CVC object for a new volume: the PVC path's own construction, plus the CSI name.
pub fn new_cvc(world: &World, want: &Wanted, topology: Option<&str>) -> serde_json::Value {
    let policy_spec = want.params.policy.as_deref().and_then(|p| {
        world
            .cvps
            .iter()
            .find(|c| name(&c.metadata) == p)
            .and_then(|c| serde_json::to_value(&c.spec).ok())
    });
    let mut object = cvc_object(&CvcRequest {
        name: &want.id,
        namespace: &world.namespace,
        size_bytes: want.size_bytes,
        cspc: &want.params.cspc,
        replica_count: want.params.replica_count,
        policy: want.params.policy.as_deref().zip(policy_spec),
        source: want.source.as_deref(),
        claim: None,
        storage_class: None,
        fs_type: Some(&want.fs_type),
        topology_node: topology,
    });
    object["metadata"]["annotations"][CSI_NAME_ANNOTATION] = json!(want.name);
    if let Some(r) = want.params.remount {
        object["metadata"]["annotations"][REMOUNT_KEY] = json!(bool_str(r));
    }
    debug_assert_eq!(object["apiVersion"], CSTOR_API_VERSION);
    object
}

/// The CSI view of a volume. `accessible_topology` stays empty: the volume is one
/// iSCSI portal every node can reach, and a PV pinned to nodes would only narrow where
/// its pods may run.
pub fn volume(cvc: &CStorVolumeConfig) -> Volume {
    let mut context = HashMap::new();
    context.insert(
        "openebs.io/cas-type".to_owned(),
        value::CAS_TYPE_CSTOR.to_owned(),
    );
    // The class's REMOUNT travels to NodeStageVolume in the PV's volumeAttributes.
    if let Some(r) =
        annotation_of(&cvc.metadata, REMOUNT_KEY).filter(|r| matches!(*r, "true" | "false"))
    {
        context.insert(REMOUNT_KEY.to_owned(), r.to_owned());
    }
    Volume {
        capacity_bytes: i64::try_from(cvc_size(cvc)).unwrap_or(i64::MAX),
        volume_id: name(&cvc.metadata).to_owned(),
        volume_context: context,
        content_source: crate::snapshot::source_of(cvc),
        accessible_topology: Vec::new(),
    }
}

/// Whether the volume serves I/O: Ok(volume) once its CVC is Bound and its target reports
/// Healthy or Degraded (a majority of replicas in quorum); otherwise what it waits for.
pub fn ready(world: &World, id: &str) -> Result<Volume, Error> {
    let pending = |what: String| Error::Pending {
        volume: id.to_owned(),
        what,
    };
    let Some(cvc) = world.cvc(id) else {
        return Err(pending(
            "its CStorVolumeConfig is gone (deleted meanwhile)".to_owned(),
        ));
    };
    if deleting(&cvc.metadata) {
        return Err(pending("it is being deleted".to_owned()));
    }
    match cvc.status.as_ref().and_then(|s| s.phase) {
        Some(CStorVolumeConfigPhase::Bound) => {}
        Some(CStorVolumeConfigPhase::Failed) => {
            return Err(Error::NoPlacement {
                volume: id.to_owned(),
                why: "its CStorVolumeConfig is Failed (see its events)".to_owned(),
            })
        }
        _ => {
            // cstor-csi's words, which the provisioner's events carry to the claim.
            return Err(pending(
                "Waiting for CVC to be bound (replicas placed)".to_owned(),
            ));
        }
    }
    match world
        .cv(id)
        .and_then(|cv| cv.status.as_ref())
        .and_then(|s| s.phase)
    {
        Some(CStorVolumePhase::Healthy | CStorVolumePhase::Degraded) => Ok(volume(cvc)),
        phase => Err(pending(format!(
            "Volume is not ready: Replicas yet to connect to controller (the target reports {})",
            phase.map_or("nothing".to_owned(), |p| format!("{p:?}"))
        ))),
    }
}

/// The volume's condition from its target's phase and its replicas' phases.
pub fn condition(world: &World, id: &str) -> VolumeCondition {
    let abnormal = |message: String| VolumeCondition {
        abnormal: true,
        message,
    };
    let Some(cv) = world.cv(id) else {
        return abnormal(format!(
            "volume {id} is being provisioned: no CStorVolume yet"
        ));
    };
    let phase = cv.status.as_ref().and_then(|s| s.phase);
    let replicas: Vec<(String, String)> = world
        .cvrs_of(id)
        .filter(|r| !deleting(&r.metadata))
        .map(|r| {
            let pool = label_of(&r.metadata, label::CSPI).unwrap_or("?").to_owned();
            let p = replica_phase(r).map_or("no status".to_owned(), |p| format!("{p:?}"));
            (pool, p)
        })
        .collect();
    let healthy = replicas.iter().filter(|(_, p)| p == "Healthy").count();
    let list = replicas
        .iter()
        .map(|(pool, p)| format!("{pool} {p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = format!(
        "target {}; {healthy} of {} replica(s) Healthy ({list})",
        phase.map_or("not reporting".to_owned(), |p| format!("{p:?}")),
        replicas.len()
    );
    if phase == Some(CStorVolumePhase::Healthy) && healthy == replicas.len() && healthy > 0 {
        VolumeCondition {
            abnormal: false,
            message: summary,
        }
    } else {
        abnormal(summary)
    }
}

/// Capacity for GetCapacity: (available, maximum volume size). `available` is the space
/// the usable pools of the CSPC (all CSPCs without parameters) on the segment's node can
/// still give (every pool when no segment is named); the maximum is the largest volume
/// that fits now, which needs `replicaCount` distinct pools anywhere in the cluster.
pub fn capacity(world: &World, params: Option<&Params>, node: Option<&str>) -> (u64, u64) {
    let pools: Vec<_> = world
        .cspis
        .iter()
        .filter(|c| {
            params.is_none_or(|p| label_of(&c.metadata, label::CSPC) == Some(p.cspc.as_str()))
        })
        .filter(|c| placement::usable(c))
        .collect();
    let room =
        |c: &&cstor_api::v1::CStorPoolInstance| placement::available(world, c, 0).unwrap_or(0);
    let available = pools
        .iter()
        .filter(|c| node.is_none_or(|n| cspi_node(c) == n))
        .map(room)
        .sum();
    let mut each: Vec<u64> = pools.iter().map(room).collect();
    each.sort_unstable_by(|a, b| b.cmp(a));
    let rc = params.map_or(1, |p| usize::try_from(p.replica_count).unwrap_or(1));
    let maximum = each.get(rc.saturating_sub(1)).copied().unwrap_or(0);
    (available, maximum)
}

/// The filesystem a CVC records (None for a CVC of the PVC path).
pub fn fs_type_of(cvc: &CStorVolumeConfig) -> Option<&str> {
    annotation_of(&cvc.metadata, FSTYPE_ANNOTATION)
}

/// The name the CO gave CreateVolume for a CVC the driver made.
pub fn csi_name(cvc: &CStorVolumeConfig) -> Option<&str> {
    annotation_of(&cvc.metadata, CSI_NAME_ANNOTATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{CapacityRange, Topology};

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn world() -> World {
        let node = |n: &str, ip: &str| {
            from(
                json!({"metadata": {"name": n}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
            )
        };
        let cspi = |n: &str, host: &str, free: &str| {
            from(
                json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolInstance",
                "metadata": {"name": n, "namespace": "openebs", "labels": {"openebs.io/cstor-pool-cluster": "c"}},
                "spec": {"hostName": host, "nodeSelector": {"kubernetes.io/hostname": host}, "poolConfig": {"dataRaidGroupType": "stripe"}, "dataRaidGroups": []},
                "status": {"phase": "ONLINE", "readOnly": false, "capacity": {"free": free, "total": "10Gi", "used": "0"}}}),
            )
        };
        World {
            namespace: "openebs".into(),
            nodes: vec![node("n1", "127.0.0.2"), node("n2", "127.0.0.3")],
            cspcs: vec![from(
                json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolCluster",
                "metadata": {"name": "c", "namespace": "openebs"}, "spec": {"pools": []}}),
            )],
            cspis: vec![cspi("c-a", "n1", "3Gi"), cspi("c-b", "n2", "5Gi")],
            ..World::default()
        }
    }

    fn want(size_bytes: u64, replica_count: i32) -> Wanted {
        Wanted {
            id: "vol-1".into(),
            name: "vol-1".into(),
            size_bytes,
            params: Params {
                cspc: "c".into(),
                replica_count,
                policy: None,
                fs_type: None,
                remount: None,
            },
            fs_type: "ext4".into(),
            source: None,
        }
    }

    #[test]
    fn a_repeat_fits_and_a_different_request_does_not() {
        let w = world();
        let cvc: CStorVolumeConfig = from(new_cvc(&w, &want(1 << 30, 2), Some("n1")));
        assert_eq!(
            cvc.metadata.annotations.as_ref().unwrap()[TOPOLOGY_ANNOTATION_KEY],
            "n1"
        );
        assert_eq!(incompatible(&cvc, &want(1 << 30, 2), None), None);
        let range = |r: i64, l: i64| CapacityRange {
            required_bytes: r,
            limit_bytes: l,
        };
        assert_eq!(
            incompatible(&cvc, &want(1 << 30, 2), Some(&range(1, 0))),
            None
        );
        assert!(incompatible(&cvc, &want(1 << 30, 2), Some(&range(2 << 30, 0))).is_some());
        assert!(incompatible(&cvc, &want(1 << 30, 3), None)
            .unwrap()
            .contains("replicaCount"));
        let mut xfs = want(1 << 30, 2);
        xfs.fs_type = "xfs".into();
        assert!(incompatible(&cvc, &xfs, None)
            .unwrap()
            .contains("filesystem"));
        let mut other = want(1 << 30, 2);
        other.name = "Other Name".into();
        assert!(incompatible(&cvc, &other, None).is_some());
        let mut off = want(1 << 30, 2);
        off.params.remount = Some(false);
        assert!(incompatible(&cvc, &off, None).unwrap().contains("remount"));
    }

    #[test]
    fn the_remount_parameter_is_kept_on_the_cvc_and_given_in_the_volume_context() {
        let w = world();
        let plain: CStorVolumeConfig = from(new_cvc(&w, &want(1 << 30, 1), None));
        assert!(!volume(&plain).volume_context.contains_key(REMOUNT_KEY));
        for r in [false, true] {
            let mut wa = want(1 << 30, 1);
            wa.params.remount = Some(r);
            let cvc: CStorVolumeConfig = from(new_cvc(&w, &wa, None));
            let v = volume(&cvc);
            assert_eq!(
                v.volume_context.get(REMOUNT_KEY).map(String::as_str),
                Some(bool_str(r))
            );
            assert_eq!(v.volume_context["openebs.io/cas-type"], "cstor");
            assert_eq!(incompatible(&cvc, &wa, None), None, "a repeat fits");
            wa.params.remount = Some(!r);
            assert!(incompatible(&cvc, &wa, None).is_some());
            wa.params.remount = None;
            assert!(incompatible(&cvc, &wa, None).is_some());
        }
    }

    #[test]
    fn new_volumes_need_their_cspc_and_enough_pools() {
        let w = world();
        assert!(check_new(&w, &want(1 << 30, 2)).is_ok());
        assert_eq!(
            check_new(&w, &want(1 << 30, 3)).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let mut bad = want(1 << 30, 1);
        bad.params.cspc = "missing".into();
        assert_eq!(
            check_new(&w, &bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    fn topo(n: &str) -> Topology {
        Topology {
            segments: [(TOPOLOGY_KEY.to_owned(), n.to_owned())].into(),
        }
    }

    #[test]
    fn topology_prefers_preferred_then_requisite_and_refuses_unknown_requisites() {
        let w = world();
        let req = |requisite: Vec<Topology>, preferred: Vec<Topology>| TopologyRequirement {
            requisite,
            preferred,
        };
        assert_eq!(topology_node(&w, "v", None).unwrap(), None);
        assert_eq!(
            topology_node(
                &w,
                "v",
                Some(&req(vec![topo("n1"), topo("n2")], vec![topo("n2")]))
            )
            .unwrap()
            .as_deref(),
            Some("n2")
        );
        assert_eq!(
            topology_node(
                &w,
                "v",
                Some(&req(vec![topo("n9"), topo("n1")], vec![topo("n9")]))
            )
            .unwrap()
            .as_deref(),
            Some("n1")
        );
        assert_eq!(
            topology_node(&w, "v", Some(&req(vec![], vec![topo("n9")]))).unwrap(),
            None
        );
        assert_eq!(
            topology_node(&w, "v", Some(&req(vec![topo("n9")], vec![])))
                .unwrap_err()
                .code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn capacity_per_node_and_the_largest_volume_for_the_replica_count() {
        let w = world();
        let p1 = want(0, 1).params;
        let p2 = want(0, 2).params;
        assert_eq!(capacity(&w, None, None), (8 << 30, 5 << 30));
        assert_eq!(capacity(&w, Some(&p1), Some("n1")), (3 << 30, 5 << 30));
        assert_eq!(capacity(&w, Some(&p2), Some("n2")), (5 << 30, 3 << 30));
        assert_eq!(capacity(&w, Some(&p2), Some("n9")).0, 0);
    }

    #[test]
    fn condition_and_readiness_follow_the_target_and_replicas() {
        let mut w = world();
        w.cvcs = vec![from(new_cvc(&w, &want(1 << 30, 1), None))];
        assert!(condition(&w, "vol-1").abnormal);
        assert_eq!(ready(&w, "vol-1").unwrap_err().code(), tonic::Code::Aborted);
        w.cvcs[0].status = Some(from(json!({"phase": "Bound"})));
        w.cvs = vec![from(
            json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolume",
            "metadata": {"name": "vol-1", "namespace": "openebs"}, "spec": {}, "status": {"phase": "Healthy"}}),
        )];
        w.cvrs = vec![from(
            json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolumeReplica",
            "metadata": {"name": "vol-1-c-a", "namespace": "openebs",
                         "labels": {"openebs.io/persistent-volume": "vol-1", "cstorvolume.openebs.io/name": "vol-1", "openebs.io/cstor-pool-instance": "c-a"}},
            "spec": {}, "status": {"phase": "Healthy"}}),
        )];
        let c = condition(&w, "vol-1");
        assert!(!c.abnormal, "{}", c.message);
        assert_eq!(ready(&w, "vol-1").unwrap().capacity_bytes, 1 << 30);
        w.cvrs[0].status = Some(from(json!({"phase": "Offline"})));
        let c = condition(&w, "vol-1");
        assert!(
            c.abnormal && c.message.contains("c-a Offline"),
            "{}",
            c.message
        );
    }

    const TOPOLOGY_ANNOTATION_KEY: &str = cstor_controller::provision::TOPOLOGY_ANNOTATION;
}
