//! The sidecars' decisions on hand-built worlds.

use std::time::{Duration, Instant};

use cstor_controller::{Action, Kind, World};
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::AccessType;
use cstor_csi::pb::volume_content_source::Type as SourceType;
use cstor_csi::pb::Volume;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::provisioner::{self, FINALIZER, PROVISIONED_BY};
use crate::Calls;

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn class(policy: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "cstor-csi"},
           "provisioner": "cstor.csi.openebs.io", "reclaimPolicy": policy, "mountOptions": ["noatime"],
           "parameters": {"cas-type": "cstor", "cstorPoolCluster": "c", "replicaCount": "3",
                          "csi.storage.k8s.io/fstype": "xfs",
                          "csi.storage.k8s.io/provisioner-secret-name": "s"}})
}

fn claim(annotated: bool) -> Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "data", "namespace": "db", "uid": "u1", "resourceVersion": "7"},
           "spec": {"storageClassName": "cstor-csi", "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "2Gi"}}},
           "status": {"phase": "Pending"}});
    if annotated {
        c["metadata"]["annotations"] =
            json!({"volume.kubernetes.io/storage-provisioner": "cstor.csi.openebs.io"});
    }
    c
}

fn world(policy: &str, claims: Vec<Value>) -> World {
    World {
        scs: vec![from(class(policy))],
        pvcs: claims.into_iter().map(from).collect(),
        ..World::default()
    }
}

fn events<'a>(actions: &'a [Action], reason: &str) -> Vec<&'a str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                reason: r, message, ..
            } if r == reason => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_claim_handed_to_us_gets_create_volume_as_the_external_provisioner_sends_it() {
    // Not yet annotated by the PV controller: left alone, as the real sidecar does.
    assert!(provisioner::plan(&world("Delete", vec![claim(false)]))
        .provisions
        .is_empty());
    let w = world("Delete", vec![claim(true)]);
    let plan = provisioner::plan(&w);
    assert_eq!(plan.provisions.len(), 1);
    let r = &plan.provisions[0].request;
    assert_eq!(r.name, "pvc-u1");
    let range = r.capacity_range.as_ref().unwrap();
    assert_eq!((range.required_bytes, range.limit_bytes), (2 << 30, 0));
    // The sidecar keys are stripped; the claim's names are added.
    assert_eq!(
        r.parameters.get("cstorPoolCluster").map(String::as_str),
        Some("c")
    );
    assert!(!r.parameters.contains_key("csi.storage.k8s.io/fstype"));
    assert!(!r
        .parameters
        .contains_key("csi.storage.k8s.io/provisioner-secret-name"));
    assert_eq!(r.parameters["csi.storage.k8s.io/pvc/namespace"], "db");
    assert_eq!(r.parameters["csi.storage.k8s.io/pv/name"], "pvc-u1");
    assert_eq!(r.volume_capabilities.len(), 1);
    let cap = &r.volume_capabilities[0];
    assert_eq!(
        cap.access_mode.as_ref().unwrap().mode,
        Mode::SingleNodeWriter as i32
    );
    match &cap.access_type {
        Some(AccessType::Mount(m)) => {
            assert_eq!(m.fs_type, "xfs");
            assert_eq!(m.mount_flags, ["noatime"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(r.volume_content_source.is_none() && r.accessibility_requirements.is_none());

    // Its PV once CreateVolume answered.
    let volume = Volume {
        capacity_bytes: 2 << 30,
        volume_id: "pvc-u1".into(),
        volume_context: [("openebs.io/cas-type".to_owned(), "cstor".to_owned())].into(),
        ..Default::default()
    };
    let a = provisioner::provisioned(&plan.provisions[0], Ok(volume), "id-1");
    let Action::Create {
        kind: Kind::Pv,
        object: pv,
        ..
    } = &a[0]
    else {
        panic!("{a:?}")
    };
    assert_eq!(pv["metadata"]["name"], "pvc-u1");
    assert_eq!(
        pv["metadata"]["annotations"][PROVISIONED_BY],
        "cstor.csi.openebs.io"
    );
    assert_eq!(pv["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
    assert_eq!(pv["spec"]["claimRef"]["uid"], "u1");
    assert_eq!(pv["spec"]["claimRef"]["namespace"], "db");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(pv["spec"]["mountOptions"], json!(["noatime"]));
    assert_eq!(pv["spec"]["csi"]["fsType"], "xfs");
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], "pvc-u1");
    assert_eq!(
        pv["spec"]["csi"]["volumeAttributes"]["storage.kubernetes.io/csiProvisionerIdentity"],
        "id-1"
    );
    assert!(pv["spec"].get("nodeAffinity").is_none());
    assert_eq!(
        events(&a, "ProvisioningSucceeded"),
        ["Successfully provisioned volume pvc-u1"]
    );

    // The PV exists: nothing more for the claim.
    let mut w2 = w.clone();
    w2.pvs = vec![from(pv.clone())];
    assert!(provisioner::plan(&w2).provisions.is_empty());

    // A refusal is the claim's ProvisioningFailed, with the driver's words.
    let a = provisioner::provisioned(
        &plan.provisions[0],
        Err(tonic::Status::aborted(
            "volume pvc-u1: Waiting for CVC to be bound",
        )),
        "id-1",
    );
    assert_eq!(
        events(&a, "ProvisioningFailed"),
        ["failed to provision volume with StorageClass \"cstor-csi\": rpc error: code = Aborted desc = volume pvc-u1: Waiting for CVC to be bound"]
    );
}

#[test]
fn block_claims_selected_nodes_and_snapshot_sources_shape_the_request() {
    let mut c = claim(true);
    c["spec"]["volumeMode"] = json!("Block");
    c["spec"]["accessModes"] = json!(["ReadWriteOncePod"]);
    c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!("node-2");
    c["spec"]["dataSource"] =
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"});
    let mut w = world("Retain", vec![c]);
    // The snapshot is not ready yet: the claim says so and no call is made.
    w.vss = vec![
        json!({"metadata": {"name": "snap", "namespace": "db", "uid": "s1"},
                        "status": {"readyToUse": false}}),
    ];
    let plan = provisioner::plan(&w);
    assert!(plan.provisions.is_empty());
    assert!(events(&plan.actions, "ProvisioningFailed")[0].contains("snapshot snap is not Ready"));
    w.vss[0]["status"] =
        json!({"readyToUse": true, "boundVolumeSnapshotContentName": "snapcontent-s1"});
    w.vscontents = vec![json!({"metadata": {"name": "snapcontent-s1"},
        "spec": {"driver": "cstor.csi.openebs.io"},
        "status": {"snapshotHandle": "pvc-src@snapshot-s1", "restoreSize": 1073741824u64, "readyToUse": true}})];
    let plan = provisioner::plan(&w);
    let r = &plan.provisions[0].request;
    match &r.volume_content_source.as_ref().unwrap().r#type {
        Some(SourceType::Snapshot(s)) => assert_eq!(s.snapshot_id, "pvc-src@snapshot-s1"),
        other => panic!("{other:?}"),
    }
    let cap = &r.volume_capabilities[0];
    assert!(matches!(cap.access_type, Some(AccessType::Block(_))));
    assert_eq!(
        cap.access_mode.as_ref().unwrap().mode,
        Mode::SingleNodeSingleWriter as i32
    );
    let t = r.accessibility_requirements.as_ref().unwrap();
    assert_eq!(
        t.preferred[0].segments["topology.cstor.openebs.io/nodeName"],
        "node-2"
    );
    assert_eq!(t.requisite, t.preferred);
    // A restore smaller than the snapshot is refused, as the real sidecar does.
    w.vscontents[0]["status"]["restoreSize"] = json!(4u64 << 30);
    let plan = provisioner::plan(&w);
    assert!(plan.provisions.is_empty());
    assert!(events(&plan.actions, "ProvisioningFailed")[0].contains("is less than the size"));
    // Retain: no finalizer on the PV, and no block fsType.
    w.vscontents[0]["status"]["restoreSize"] = json!(1u64 << 30);
    let p = &provisioner::plan(&w).provisions[0];
    let pv = provisioner::pv_object(&p.claim, &p.class, &Volume::default(), "i", 2 << 30);
    assert!(pv["metadata"].get("finalizers").is_none());
    assert!(pv["spec"]["csi"].get("fsType").is_none());
    assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
}

fn made_pv(policy: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume",
           "metadata": {"name": "pvc-u1", "resourceVersion": "9",
                        "annotations": {PROVISIONED_BY: "cstor.csi.openebs.io"},
                        "finalizers": [FINALIZER, "kubernetes.io/pv-protection"]},
           "spec": {"persistentVolumeReclaimPolicy": policy,
                    "claimRef": {"namespace": "db", "name": "data", "uid": "u1"},
                    "csi": {"driver": "cstor.csi.openebs.io", "volumeHandle": "pvc-u1"}},
           "status": {"phase": phase}})
}

#[test]
fn a_released_volume_is_deleted_through_the_driver_under_delete_only() {
    // Bound, its claim alive: kept.
    let mut w = world("Delete", vec![claim(true)]);
    w.pvs = vec![from(made_pv("Delete", "Bound"))];
    assert!(provisioner::plan(&w).reclaims.is_empty());
    // The claim is gone: DeleteVolume, then the finalizer off and the PV deleted.
    w.pvcs.clear();
    let plan = provisioner::plan(&w);
    assert_eq!(plan.reclaims.len(), 1);
    assert_eq!(plan.reclaims[0].request.volume_id, "pvc-u1");
    let a = provisioner::reclaimed(&plan.reclaims[0], Ok(()));
    assert!(matches!(&a[0], Action::Patch { kind: Kind::Pv, patch, .. }
        if patch["metadata"]["finalizers"] == json!(["kubernetes.io/pv-protection"])
            && patch["metadata"]["resourceVersion"] == "9"));
    assert!(matches!(&a[1], Action::Delete { kind: Kind::Pv, name, .. } if name == "pvc-u1"));
    // The driver refuses: the PV stays, with the reason.
    let a = provisioner::reclaimed(
        &plan.reclaims[0],
        Err(tonic::Status::unavailable("connection refused")),
    );
    assert_eq!(a.len(), 1);
    assert!(events(&a, "VolumeFailedDelete")[0].contains("Unavailable"));
    // Retain: nothing, even Released.
    w.pvs = vec![from(made_pv("Retain", "Released"))];
    assert!(provisioner::plan(&w).reclaims.is_empty());
    // A PV someone else made is never ours to delete.
    let mut other = made_pv("Delete", "Released");
    other["metadata"]["annotations"] = json!({});
    w.pvs = vec![from(other)];
    assert!(provisioner::plan(&w).reclaims.is_empty());
}

#[test]
fn failed_calls_back_off_exponentially_and_one_runs_per_object() {
    let (start, max) = (Duration::from_secs(1), Duration::from_secs(5));
    let t0 = Instant::now();
    let mut c = Calls::default();
    assert!(c.due("k", t0));
    c.start("k");
    assert!(!c.due("k", t0), "one call in flight per key");
    c.finish("k", false, t0, start, max);
    assert!(!c.due("k", t0 + Duration::from_millis(900)));
    assert!(c.due("k", t0 + start));
    for _ in 0..5 {
        c.start("k");
        c.finish("k", false, t0, start, max);
    }
    assert!(!c.due("k", t0 + Duration::from_secs(4)));
    assert!(c.due("k", t0 + max), "capped at the maximum");
    c.start("k");
    c.finish("k", true, t0, start, max);
    assert!(c.due("k", t0), "success forgets the failures");
}

#[test]
fn a_volume_whose_claim_went_before_it_was_ready_is_deleted() {
    let started: std::collections::HashMap<String, String> =
        [("pvc-u1".to_owned(), "u1".to_owned())].into();
    // The claim is still there: its CreateVolume goes on.
    let w = world("Delete", vec![claim(true)]);
    assert!(provisioner::abandoned(&w, &started).is_empty());
    // Gone before its PV was written: DeleteVolume.
    let gone = world("Delete", vec![]);
    let d = provisioner::abandoned(&gone, &started);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].volume_id, "pvc-u1");
    // Its PV exists: the reclaim of the PV deletes it, not this.
    let mut with_pv = gone.clone();
    with_pv.pvs = vec![from(made_pv("Delete", "Released"))];
    assert!(provisioner::abandoned(&with_pv, &started).is_empty());
}

#[test]
fn a_grown_request_is_expanded_through_the_driver_then_the_claim_follows() {
    let mut c = claim(true);
    c["spec"]["volumeName"] = json!("pvc-u1");
    c["spec"]["resources"]["requests"]["storage"] = json!("3Gi");
    c["status"] = json!({"phase": "Bound", "capacity": {"storage": "2Gi"}});
    let mut sc = class("Delete");
    sc["allowVolumeExpansion"] = json!(true);
    let mut pv = made_pv("Delete", "Bound");
    pv["spec"]["capacity"] = json!({"storage": "2Gi"});
    pv["spec"]["accessModes"] = json!(["ReadWriteOnce"]);
    pv["spec"]["csi"]["fsType"] = json!("xfs");
    let mut w = World {
        scs: vec![from(sc)],
        pvcs: vec![from(c.clone())],
        pvs: vec![from(pv.clone())],
        ..World::default()
    };
    let plan = crate::resizer::plan(&w);
    assert_eq!(plan.expansions.len(), 1);
    let e = &plan.expansions[0];
    assert_eq!(e.request.volume_id, "pvc-u1");
    assert_eq!(
        e.request.capacity_range.as_ref().unwrap().required_bytes,
        3 << 30
    );
    assert!(matches!(
        &e.request.volume_capability.as_ref().unwrap().access_type,
        Some(AccessType::Mount(m)) if m.fs_type == "xfs"
    ));
    assert_eq!(events(&crate::resizer::resizing(e), "Resizing").len(), 1);
    // No node expansion: the PV and the claim's capacity at once.
    let done = cstor_csi::pb::ControllerExpandVolumeResponse {
        capacity_bytes: 3 << 30,
        node_expansion_required: false,
    };
    let a = crate::resizer::expanded(e, Ok(done));
    assert!(
        matches!(&a[0], Action::Patch { kind: Kind::Pv, status: false, patch, .. }
        if patch["spec"]["capacity"]["storage"] == "3Gi")
    );
    assert!(
        matches!(&a[1], Action::Patch { kind: Kind::Pvc, status: true, patch, .. }
        if patch["status"]["capacity"]["storage"] == "3Gi")
    );
    assert_eq!(events(&a, "VolumeResizeSuccessful").len(), 1);
    // Node expansion needed: the claim waits with FileSystemResizePending.
    let a = crate::resizer::expanded(
        e,
        Ok(cstor_csi::pb::ControllerExpandVolumeResponse {
            capacity_bytes: 3 << 30,
            node_expansion_required: true,
        }),
    );
    assert!(
        matches!(&a[1], Action::Patch { kind: Kind::Pvc, status: true, patch, .. }
        if patch["status"]["conditions"][0]["type"] == "FileSystemResizePending"
            && patch["status"].get("capacity").is_none())
    );
    // ... and is not expanded again once the PV has the size.
    w.pvs[0].spec.as_mut().unwrap().capacity = Some(
        [(
            "storage".to_owned(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("3Gi".into()),
        )]
        .into(),
    );
    c["status"]["conditions"] = json!([{"type": "FileSystemResizePending", "status": "True"}]);
    w.pvcs = vec![from(c.clone())];
    let plan = crate::resizer::plan(&w);
    assert!(plan.expansions.is_empty() && plan.actions.is_empty());
    // A failure is the claim's VolumeResizeFailed.
    let a = crate::resizer::expanded(e, Err(tonic::Status::aborted("resizing")));
    assert!(events(&a, "VolumeResizeFailed")[0].contains("code = Aborted"));
    // A class that does not allow expansion: no call, the reason.
    w.scs[0].allow_volume_expansion = Some(false);
    w.pvs = vec![from(pv)];
    let plan = crate::resizer::plan(&w);
    assert!(plan.expansions.is_empty());
    assert_eq!(events(&plan.actions, "VolumeResizeFailed").len(), 1);
}

#[test]
fn secret_parameters_become_the_pvs_secret_references_with_templates_resolved() {
    let mut sc = class("Delete");
    let p = &mut sc["parameters"];
    p["csi.storage.k8s.io/controller-publish-secret-name"] = json!("chap-${pvc.name}");
    p["csi.storage.k8s.io/controller-publish-secret-namespace"] = json!("${pvc.namespace}");
    p["csi.storage.k8s.io/node-stage-secret-name"] = json!("${pvc.annotations['team/secret']}");
    p["csi.storage.k8s.io/node-stage-secret-namespace"] = json!("shared");
    let mut c = claim(true);
    c["metadata"]["annotations"]["team/secret"] = json!("stage-creds");
    let w = World {
        scs: vec![from(sc.clone())],
        pvcs: vec![from(c.clone())],
        ..World::default()
    };
    let plan = provisioner::plan(&w);
    let prov = &plan.provisions[0];
    // Not passed to CreateVolume: they are the sidecars'.
    assert!(!prov.request.parameters.keys().any(|k| k.contains("secret")));
    let pv = provisioner::pv_object(&prov.claim, &prov.class, &Volume::default(), "i", 1);
    assert_eq!(
        pv["spec"]["csi"]["controllerPublishSecretRef"],
        json!({"name": "chap-data", "namespace": "db"})
    );
    assert_eq!(
        pv["spec"]["csi"]["nodeStageSecretRef"],
        json!({"name": "stage-creds", "namespace": "shared"})
    );
    // A name without its namespace, or a token the namespace may not use: refused
    // before any call.
    for (k, v) in [
        (
            "csi.storage.k8s.io/node-stage-secret-namespace",
            Value::Null,
        ),
        (
            "csi.storage.k8s.io/node-stage-secret-namespace",
            json!("${pvc.name}"),
        ),
        (
            "csi.storage.k8s.io/node-stage-secret-name",
            json!("Not_A_Name"),
        ),
    ] {
        let mut bad = sc.clone();
        if v.is_null() {
            bad["parameters"].as_object_mut().unwrap().remove(k);
        } else {
            bad["parameters"][k] = v;
        }
        let w = World {
            scs: vec![from(bad)],
            pvcs: vec![from(c.clone())],
            ..World::default()
        };
        let plan = provisioner::plan(&w);
        assert!(plan.provisions.is_empty(), "{k}");
        assert_eq!(events(&plan.actions, "ProvisioningFailed").len(), 1, "{k}");
    }
}
