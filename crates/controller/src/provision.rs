//! PersistentVolumeClaims of a cstor StorageClass -> CStorVolumeConfig -> PersistentVolume
//! (the CSI external-provisioner and cstor-csi's CreateVolume, until the CSI driver
//! lands), expansion of bound claims (the external-resizer's part) and reclaim of
//! released volumes, as pure functions of the [`World`].
//!
//! A claim is ours when its StorageClass's provisioner is `cstor.csi.openebs.io`. Its
//! volume is named `pvc-<claim uid>`; the CVC carries the class's parameters (cStor's:
//! `cas-type: cstor`, `cstorPoolCluster`, `replicaCount`, optional `cstorVolumePolicy`)
//! and, for a claim whose dataSource is a ready VolumeSnapshot, `cstorVolumeSource`
//! `<source pv>@<snapshot>`. Once the CVC is Bound a PV pre-bound to the claim is written
//! and the API server's binder binds them. While waiting the claim shows the seed's
//! messages ("Waiting for CVC to be bound", then, until the target reports Healthy,
//! "Volume is not ready: Replicas yet to connect to controller").
//! A PV whose claim is gone is deleted with its CVC (and so CV and CVRs) under reclaim
//! policy Delete and kept under Retain.

use cstor_api::names::{label, value, CSI_DRIVER_NAME, CSTOR_API_VERSION};
use cstor_api::quantity::{format_bytes, quantity_bytes};
use cstor_api::v1::{CStorVolumeConfigPhase, CStorVolumePhase};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;

use crate::action::{regarding, Action, Kind};
use crate::volume::PVC_ANNOTATION;
use crate::world::{annotation_of, deleting, jstr, name, World};

/// Annotation the provisioner puts on PVs it made (Kubernetes' own key).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Name of the volume provisioned for a claim.
pub fn pv_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", pvc.metadata.uid.as_deref().unwrap_or_default())
}

/// The claim's StorageClass, when it is a cstor one.
fn our_class<'a>(world: &'a World, pvc: &PersistentVolumeClaim) -> Option<&'a StorageClass> {
    let sc = world.sc(pvc.spec.as_ref()?.storage_class_name.as_deref()?)?;
    (sc.provisioner == CSI_DRIVER_NAME).then_some(sc)
}

fn requested(pvc: &PersistentVolumeClaim) -> u64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(q).ok())
        .unwrap_or(0)
}

/// What a CStorVolumeConfig is made of: the one shape that both the PVC path here and
/// the CSI driver's CreateVolume build, so the two cannot drift apart.
#[derive(Debug, Clone)]
pub struct CvcRequest<'a> {
    /// CVC (and volume) name: `pvc-<uid>` here, the CSI volume name there.
    pub name: &'a str,
    /// Namespace of the cstor objects.
    pub namespace: &'a str,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// The CStorPoolCluster to place replicas on.
    pub cspc: &'a str,
    /// Replica count (1..=5, checked by the caller).
    pub replica_count: i32,
    /// The CStorVolumePolicy's name and spec, if the class names one.
    pub policy: Option<(&'a str, serde_json::Value)>,
    /// `cstorVolumeSource`: `<source volume>@<snapshot>` for a restore or clone.
    pub source: Option<&'a str>,
    /// `namespace/name` of the claim, when one is known.
    pub claim: Option<&'a str>,
    /// The StorageClass name, when known.
    pub storage_class: Option<&'a str>,
    /// Filesystem the node service makes (`openebs.io/fstype` annotation).
    pub fs_type: Option<&'a str>,
    /// Node the target is asked to run near (CSI accessibility requirements).
    pub topology_node: Option<&'a str>,
}

/// The CVC object for `r`, status not included (the caller creates it Pending).
pub fn cvc_object(r: &CvcRequest<'_>) -> serde_json::Value {
    let capacity = format_bytes(r.size_bytes);
    let mut labels = serde_json::Map::new();
    labels.insert(label::CSPC.to_owned(), json!(r.cspc));
    if let Some((p, _)) = &r.policy {
        labels.insert(label::VOLUME_POLICY.to_owned(), json!(p));
    }
    let mut spec = json!({
        "capacity": {"storage": capacity},
        "provision": {"capacity": {"storage": capacity}, "replicaCount": r.replica_count},
    });
    if let Some((_, p)) = &r.policy {
        spec["policy"] = p.clone();
    }
    if let Some(src) = r.source {
        spec["cstorVolumeSource"] = json!(src);
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("openebs.io/volumeID".to_owned(), json!(r.name));
    if let Some(c) = r.claim {
        annotations.insert(PVC_ANNOTATION.to_owned(), json!(c));
    }
    if let Some(sc) = r.storage_class {
        annotations.insert("cstor.openebs.io/storage-class".to_owned(), json!(sc));
    }
    if let Some(fs) = r.fs_type {
        annotations.insert(FSTYPE_ANNOTATION.to_owned(), json!(fs));
    }
    if let Some(n) = r.topology_node {
        annotations.insert(TOPOLOGY_ANNOTATION.to_owned(), json!(n));
    }
    json!({
        "apiVersion": CSTOR_API_VERSION,
        "kind": "CStorVolumeConfig",
        "metadata": {
            "name": r.name,
            "namespace": r.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// CVC annotation with the filesystem the node service makes (CSI fstype).
pub const FSTYPE_ANNOTATION: &str = "openebs.io/fstype";
/// CVC annotation with the node the CSI accessibility requirements asked for.
pub const TOPOLOGY_ANNOTATION: &str = "cstor.openebs.io/topology-node";
/// CVC annotation (`"true"`) once its PV was written: from then on the PV's reclaim
/// policy decides the volume's fate, so a CVC without claim and PV is an orphan only
/// without it (under Retain the administrator may delete the PV and keep the volume).
pub const PV_WRITTEN_ANNOTATION: &str = "cstor.openebs.io/pv-written";

/// Reconciles claims and volumes.
pub fn reconcile(world: &World) -> Vec<Action> {
    let mut out = Vec::new();
    for pvc in &world.pvcs {
        if deleting(&pvc.metadata) {
            continue;
        }
        let Some(sc) = our_class(world, pvc) else {
            continue;
        };
        let bound_to = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .filter(|v| !v.is_empty());
        match bound_to {
            Some(pv) => bound_claim(world, pvc, sc, pv, &mut out),
            None => pending_claim(world, pvc, sc, &mut out),
        }
    }
    for pv in &world.pvs {
        reclaim(world, pv, &mut out);
    }
    orphan_cvcs(world, &mut out);
    out
}

/// The class parameters as (cspc, replica count, policy), or why they do not work.
fn parameters<'a>(
    world: &World,
    sc: &'a StorageClass,
) -> Result<(&'a str, i32, Option<&'a str>), String> {
    let p = sc.parameters.as_ref();
    let get = |k: &str| p.and_then(|m| m.get(k)).map(String::as_str);
    let scn = name(&sc.metadata);
    match get(value::SC_PARAM_CAS_TYPE) {
        Some(value::CAS_TYPE_CSTOR) => {}
        other => {
            return Err(format!(
                "StorageClass {scn}: parameter cas-type must be \"cstor\", not {other:?}"
            ))
        }
    }
    let cspc = get(value::SC_PARAM_CSPC)
        .ok_or_else(|| format!("StorageClass {scn}: parameter cstorPoolCluster is missing"))?;
    if world.cspc(cspc).is_none() {
        return Err(format!(
            "StorageClass {scn}: CStorPoolCluster {cspc} does not exist in namespace {}",
            world.namespace
        ));
    }
    let rc = get(value::SC_PARAM_REPLICA_COUNT).unwrap_or("1");
    let rc: i32 = rc
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=5).contains(n))
        .ok_or_else(|| {
            format!("StorageClass {scn}: replicaCount {rc:?} must be a number from 1 to 5")
        })?;
    let policy = get(value::SC_PARAM_VOLUME_POLICY).filter(|s| !s.is_empty());
    if let Some(pol) = policy {
        if !world.cvps.iter().any(|c| name(&c.metadata) == pol) {
            return Err(format!(
                "StorageClass {scn}: CStorVolumePolicy {pol} does not exist in namespace {}",
                world.namespace
            ));
        }
    }
    Ok((cspc, rc, policy))
}

/// The snapshot source of a claim restoring a VolumeSnapshot: Ok(None) without one,
/// Err(message) while it cannot be used yet.
fn snapshot_source(
    world: &World,
    pvc: &PersistentVolumeClaim,
) -> Result<Option<(String, u64)>, String> {
    let Some(ds) = pvc.spec.as_ref().and_then(|s| s.data_source.as_ref()) else {
        return Ok(None);
    };
    if ds.kind != "VolumeSnapshot" {
        return Err(format!(
            "dataSource of kind {} is not supported; only VolumeSnapshot",
            ds.kind
        ));
    }
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let Some(vs) = world.vss.iter().find(|v| {
        jstr(v, &["metadata", "namespace"]) == Some(ns)
            && jstr(v, &["metadata", "name"]) == Some(ds.name.as_str())
    }) else {
        return Err(format!(
            "Waiting for VolumeSnapshot {ns}/{} to exist",
            ds.name
        ));
    };
    let ready = vs
        .pointer("/status/readyToUse")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    let uid = jstr(vs, &["metadata", "uid"]).unwrap_or_default();
    let snap = crate::snapshot::snapshot_name(uid);
    let csnap = world.csnaps.iter().find(|c| name(&c.metadata) == snap);
    match (ready, csnap) {
        (true, Some(c)) => {
            let size = c
                .status
                .as_ref()
                .and_then(|s| s.restore_size.as_ref())
                .and_then(|q| quantity_bytes(q).ok())
                .unwrap_or(0);
            Ok(Some((
                format!("{}@{}", c.spec.volume_name, c.spec.snapshot_name),
                size,
            )))
        }
        _ => Err(format!(
            "Waiting for VolumeSnapshot {ns}/{} to be ready to use",
            ds.name
        )),
    }
}

fn pending_claim(
    world: &World,
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
    out: &mut Vec<Action>,
) {
    let me = regarding(Kind::Pvc, &pvc.metadata);
    let pv = pv_name(pvc);
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let claim = format!("{ns}/{}", name(&pvc.metadata));
    if world.pv(&pv).is_some() {
        return; // written; the binder binds it
    }
    let cvc = world.cvc(&pv);
    match cvc.and_then(|c| c.status.as_ref()).and_then(|s| s.phase) {
        Some(CStorVolumeConfigPhase::Bound) => {
            if let Some(cvc) = cvc {
                out.push(create_pv(world, pvc, sc, &pv, cvc));
                out.push(Action::patch(
                    Kind::Cvc,
                    Some(world.namespace.as_str()),
                    &pv,
                    json!({"metadata": {"annotations": {PV_WRITTEN_ANNOTATION: "true"}}}),
                ));
                out.push(Action::event(
                    me,
                    false,
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {pv}"),
                ));
            }
            return;
        }
        Some(_) if cvc.is_some() => {
            out.push(Action::event(
                me,
                false,
                "Provisioning",
                "Waiting for CVC to be bound".to_owned(),
            ));
            return;
        }
        _ => {}
    }
    if cvc.is_some() {
        out.push(Action::event(
            me,
            false,
            "Provisioning",
            "Waiting for CVC to be bound".to_owned(),
        ));
        return;
    }
    let (cspc, rc, policy) = match parameters(world, sc) {
        Ok(p) => p,
        Err(why) => {
            out.push(Action::event(
                me,
                true,
                "ProvisioningFailed",
                format!(
                    "failed to provision volume with StorageClass \"{}\": {why}",
                    name(&sc.metadata)
                ),
            ));
            return;
        }
    };
    let source = match snapshot_source(world, pvc) {
        Ok(s) => s,
        Err(why) => {
            out.push(Action::event(me, false, "Provisioning", why));
            return;
        }
    };
    let mut size = requested(pvc);
    if let Some((_, restore)) = &source {
        size = size.max(*restore);
    }
    let policy_spec = policy
        .and_then(|p| world.cvps.iter().find(|c| name(&c.metadata) == p))
        .map(|c| serde_json::to_value(&c.spec).unwrap_or_default());
    let object = cvc_object(&CvcRequest {
        name: &pv,
        namespace: &world.namespace,
        size_bytes: size,
        cspc,
        replica_count: rc,
        policy: policy.zip(policy_spec),
        source: source.as_ref().map(|(s, _)| s.as_str()),
        claim: Some(&claim),
        storage_class: Some(name(&sc.metadata)),
        fs_type: None,
        topology_node: None,
    });
    out.push(Action::Create {
        kind: Kind::Cvc,
        object,
        status: Some(json!({"status": {"phase": "Pending"}})),
    });
    out.push(Action::event(
        me,
        false,
        "Provisioning",
        format!("External provisioner is provisioning volume for claim \"{claim}\""),
    ));
}

fn create_pv(
    world: &World,
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
    pv: &str,
    cvc: &cstor_api::v1::CStorVolumeConfig,
) -> Action {
    let size = crate::volume::cvc_size(cvc);
    let spec = pvc.spec.clone().unwrap_or_default();
    let fs = sc
        .parameters
        .as_ref()
        .and_then(|p| p.get("csi.storage.k8s.io/fstype"))
        .cloned()
        .unwrap_or_else(|| "ext4".to_owned());
    let _ = world;
    Action::Create {
        kind: Kind::Pv,
        object: json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv,
                "annotations": {PROVISIONED_BY: CSI_DRIVER_NAME},
                "labels": {label::CAS_TYPE: value::CAS_TYPE_CSTOR},
            },
            "spec": {
                "capacity": {"storage": format_bytes(size)},
                "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".to_owned()]),
                "persistentVolumeReclaimPolicy": sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".to_owned()),
                "storageClassName": name(&sc.metadata),
                "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".to_owned()),
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": pvc.metadata.namespace,
                    "name": pvc.metadata.name,
                    "uid": pvc.metadata.uid,
                },
                "csi": {
                    "driver": CSI_DRIVER_NAME,
                    "volumeHandle": pv,
                    "fsType": fs,
                    "volumeAttributes": {"openebs.io/cas-type": value::CAS_TYPE_CSTOR},
                },
            },
        }),
        status: None,
    }
}

fn bound_claim(
    world: &World,
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
    pv_name: &str,
    out: &mut Vec<Action>,
) {
    let Some(pv) = world.pv(pv_name) else { return };
    if annotation_of(&pv.metadata, PROVISIONED_BY) != Some(CSI_DRIVER_NAME) {
        return;
    }
    let me = regarding(Kind::Pvc, &pvc.metadata);
    let nsn = Some(world.namespace.as_str());
    if let Some(cv) = world.cv(pv_name) {
        if cv.status.as_ref().and_then(|s| s.phase) != Some(CStorVolumePhase::Healthy) {
            out.push(Action::event(
                me.clone(),
                false,
                "VolumeNotReady",
                "Volume is not ready: Replicas yet to connect to controller".to_owned(),
            ));
        }
    }
    let want = requested(pvc);
    let pv_cap = crate::world::storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()));
    if want <= pv_cap {
        return;
    }
    if sc.allow_volume_expansion != Some(true) {
        out.push(Action::event(me, true, "VolumeResizeFailed", format!("StorageClass {} does not allow volume expansion (allowVolumeExpansion is not true)", name(&sc.metadata))));
        return;
    }
    let Some(cvc) = world.cvc(pv_name) else {
        return;
    };
    let q = format_bytes(want);
    if crate::volume::cvc_size(cvc) < want {
        out.push(Action::patch(
            Kind::Cvc,
            nsn,
            pv_name,
            json!({"spec": {"capacity": {"storage": q}}}),
        ));
        out.push(Action::event(
            me.clone(),
            false,
            "Resizing",
            format!("External resizer is resizing volume {pv_name}"),
        ));
        out.push(Action::patch_status(
            Kind::Pvc,
            pvc.metadata.namespace.as_deref(),
            name(&pvc.metadata),
            json!({"status": {"conditions": [{"type": "Resizing", "status": "True"}]}}),
        ));
        return;
    }
    let done = crate::world::storage_bytes(cvc.status.as_ref().and_then(|s| s.capacity.as_ref()));
    if done >= want {
        out.push(Action::patch(
            Kind::Pv,
            None,
            pv_name,
            json!({"spec": {"capacity": {"storage": q}}}),
        ));
        out.push(Action::patch_status(
            Kind::Pvc,
            pvc.metadata.namespace.as_deref(),
            name(&pvc.metadata),
            json!({"status": {"capacity": {"storage": q}, "conditions": null}}),
        ));
        out.push(Action::event(
            me,
            false,
            "VolumeResizeSuccessful",
            format!("Resize volume {pv_name} to {q} succeeded"),
        ));
    }
}

/// Whether `pv`'s claim still exists (same uid).
fn claim_alive(world: &World, pv: &PersistentVolume) -> bool {
    let Some(cr) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let (Some(ns), Some(n)) = (cr.namespace.as_deref(), cr.name.as_deref()) else {
        return false;
    };
    world
        .pvc(ns, n)
        .is_some_and(|c| cr.uid.is_none() || c.metadata.uid == cr.uid)
}

fn reclaim(world: &World, pv: &PersistentVolume, out: &mut Vec<Action>) {
    if annotation_of(&pv.metadata, PROVISIONED_BY) != Some(CSI_DRIVER_NAME)
        || deleting(&pv.metadata)
    {
        return;
    }
    if claim_alive(world, pv) {
        return;
    }
    let n = name(&pv.metadata);
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Delete");
    if policy != "Delete" {
        return;
    }
    if world.cvc(n).is_some() {
        out.push(Action::delete(Kind::Cvc, Some(world.namespace.as_str()), n));
    }
    out.push(Action::delete(Kind::Pv, None, n));
    out.push(Action::event(
        regarding(Kind::Pv, &pv.metadata),
        false,
        "VolumeDeleted",
        format!("volume {n} deleted: its claim is gone and the reclaim policy is Delete"),
    ));
}

/// A CVC whose claim went away before its PV was written is deleted (as the
/// external-provisioner deletes a volume it made for a claim that is gone). One whose PV
/// was written is the reclaim policy's: never deleted here, so a Retain PV deleted by
/// hand leaves the volume.
fn orphan_cvcs(world: &World, out: &mut Vec<Action>) {
    for cvc in &world.cvcs {
        let n = name(&cvc.metadata);
        if deleting(&cvc.metadata)
            || world.pv(n).is_some()
            || annotation_of(&cvc.metadata, PV_WRITTEN_ANNOTATION).is_some()
        {
            continue;
        }
        let Some((ns, claim)) =
            annotation_of(&cvc.metadata, PVC_ANNOTATION).and_then(|a| a.split_once('/'))
        else {
            continue;
        };
        let alive = world.pvc(ns, claim).is_some_and(|p| pv_name(p) == n);
        if !alive {
            out.push(Action::delete(Kind::Cvc, Some(world.namespace.as_str()), n));
        }
    }
}
