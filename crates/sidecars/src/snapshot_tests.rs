//! The snapshot controller's and the snapshotter's decisions on hand-built worlds.

use cstor_controller::{Action, Kind, World};
use cstor_csi::pb::Snapshot;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::snapshot_controller::{
    self as sc, ANN_BEING_CREATED, ANN_BEING_DELETED, ANN_SECRET_NAME, AS_SOURCE_FINALIZER,
    BOUND_FINALIZER, CONTENT_FINALIZER, PVC_FINALIZER,
};
use crate::snapshotter::{self, Answer, Request};

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn vsclass(policy: &str, params: Value) -> Value {
    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
           "metadata": {"name": "csnap"}, "driver": "cstor.csi.openebs.io",
           "deletionPolicy": policy, "parameters": params})
}

fn vs(finalizers: &[&str]) -> Value {
    json!({"metadata": {"name": "daily", "namespace": "db", "uid": "u9", "resourceVersion": "5",
                        "finalizers": finalizers},
           "spec": {"volumeSnapshotClassName": "csnap", "source": {"persistentVolumeClaimName": "data"}}})
}

fn claim(finalizers: &[&str]) -> Value {
    json!({"metadata": {"name": "data", "namespace": "db", "uid": "c1", "resourceVersion": "3",
                        "finalizers": finalizers},
           "spec": {"volumeName": "pvc-c1", "accessModes": ["ReadWriteOnce"]},
           "status": {"phase": "Bound"}})
}

fn volume() -> Value {
    json!({"metadata": {"name": "pvc-c1"},
           "spec": {"claimRef": {"name": "data", "namespace": "db", "uid": "c1"},
                    "csi": {"driver": "cstor.csi.openebs.io", "volumeHandle": "pvc-c1"}}})
}

fn content(policy: &str, status: Value) -> Value {
    let mut c = json!({"metadata": {"name": "snapcontent-u9", "resourceVersion": "8",
                                    "finalizers": [CONTENT_FINALIZER]},
           "spec": {"driver": "cstor.csi.openebs.io", "deletionPolicy": policy,
                    "volumeSnapshotClassName": "csnap", "source": {"volumeHandle": "pvc-c1"},
                    "volumeSnapshotRef": {"name": "daily", "namespace": "db", "uid": "u9"}}});
    if !status.is_null() {
        c["status"] = status;
    }
    c
}

fn world(vss: Vec<Value>, claims: Vec<Value>, contents: Vec<Value>, class: Value) -> World {
    World {
        vss,
        pvcs: claims.into_iter().map(from).collect(),
        pvs: vec![from(volume())],
        vscontents: contents,
        vsclasses: vec![class],
        now: Some("2026-12-03T18:00:00Z".parse().unwrap()),
        ..World::default()
    }
}

/// The snapshot and its claim both carrying the finalizers, no content yet.
fn protected(class: Value) -> World {
    world(
        vec![vs(&[AS_SOURCE_FINALIZER])],
        vec![claim(&[PVC_FINALIZER])],
        vec![],
        class,
    )
}

fn patches(actions: &[Action], kind: Kind, status: bool) -> Vec<&Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Patch {
                kind: k,
                patch,
                status: s,
                ..
            } if *k == kind && *s == status => Some(patch),
            _ => None,
        })
        .collect()
}

fn reasons(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

fn creates(actions: &[Action], kind: Kind) -> Vec<&Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Create {
                kind: k, object, ..
            } if *k == kind => Some(object),
            _ => None,
        })
        .collect()
}

#[test]
fn a_volume_snapshot_gets_its_finalizers_then_a_content_then_its_status() {
    let class = vsclass("Delete", json!({"snapshot-type": "full"}));
    // First: the finalizers on the snapshot and on the claim; no content before the
    // claim's finalizer is seen.
    let w = world(vec![vs(&[])], vec![claim(&[])], vec![], class.clone());
    let a = sc::plan(&w);
    assert!(creates(&a, Kind::Vsc).is_empty(), "{a:?}");
    let vsf = patches(&a, Kind::Vs, false);
    assert_eq!(
        vsf[0]["metadata"]["finalizers"],
        json!([AS_SOURCE_FINALIZER])
    );
    assert_eq!(vsf[0]["metadata"]["resourceVersion"], "5");
    let pvcf = patches(&a, Kind::Pvc, false);
    assert_eq!(pvcf[0]["metadata"]["finalizers"], json!([PVC_FINALIZER]));

    // The claim protected: the content, as the snapshot controller writes it.
    let w = protected(class.clone());
    let a = sc::plan(&w);
    let c = creates(&a, Kind::Vsc);
    assert_eq!(c.len(), 1, "{a:?}");
    assert_eq!(c[0]["metadata"]["name"], "snapcontent-u9");
    assert_eq!(c[0]["spec"]["driver"], "cstor.csi.openebs.io");
    assert_eq!(c[0]["spec"]["deletionPolicy"], "Delete");
    assert_eq!(c[0]["spec"]["source"]["volumeHandle"], "pvc-c1");
    assert_eq!(c[0]["spec"]["volumeSnapshotClassName"], "csnap");
    assert_eq!(c[0]["spec"]["volumeSnapshotRef"]["uid"], "u9");
    assert_eq!(c[0]["spec"]["volumeSnapshotRef"]["namespace"], "db");
    assert!(c[0]["metadata"].get("annotations").is_none());
    assert!(reasons(&a).contains(&"CreatingSnapshot"));
    let st = patches(&a, Kind::Vs, true);
    assert_eq!(
        st[0]["status"]["boundVolumeSnapshotContentName"],
        "snapcontent-u9"
    );
    assert_eq!(st[0]["status"]["readyToUse"], false);
    // The claim keeps its finalizer while the snapshot is not ready.
    assert!(patches(&a, Kind::Pvc, false).is_empty());

    // The content without status: the snapshotter's CreateSnapshot.
    let mut bound = vs(&[AS_SOURCE_FINALIZER]);
    bound["status"] =
        json!({"boundVolumeSnapshotContentName": "snapcontent-u9", "readyToUse": false});
    let w = world(
        vec![bound.clone()],
        vec![claim(&[PVC_FINALIZER])],
        vec![content("Delete", Value::Null)],
        class.clone(),
    );
    let a = sc::plan(&w);
    let vsf = patches(&a, Kind::Vs, false);
    assert_eq!(
        vsf[0]["metadata"]["finalizers"],
        json!([AS_SOURCE_FINALIZER, BOUND_FINALIZER])
    );
    assert!(creates(&a, Kind::Vsc).is_empty());
    let p = snapshotter::plan(&w);
    assert_eq!(p.calls.len(), 1);
    let call = &p.calls[0];
    assert_eq!(call.key(), "snapshot/snapcontent-u9");
    let Request::Create(r) = &call.request else {
        panic!("{call:?}")
    };
    assert_eq!(r.name, "snapshot-u9");
    assert_eq!(r.source_volume_id, "pvc-c1");
    assert_eq!(
        r.parameters.get("snapshot-type").map(String::as_str),
        Some("full")
    );
    assert!(call.secret.is_none());
    assert_eq!(
        call.before,
        Some(Action::patch(
            Kind::Vsc,
            None,
            "snapcontent-u9",
            json!({"metadata": {"annotations": {ANN_BEING_CREATED: "yes"}}})
        ))
    );

    // Answered, not ready yet: the status, and the call is repeated (not settled).
    let snap = |ready| {
        let mut s = Snapshot {
            snapshot_id: "pvc-c1@snapshot-u9".into(),
            source_volume_id: "pvc-c1".into(),
            size_bytes: 1 << 30,
            ready_to_use: ready,
            creation_time: Some(Default::default()),
            ..Default::default()
        };
        if let Some(t) = s.creation_time.as_mut() {
            (t.seconds, t.nanos) = (1_780_000_000, 5);
        }
        s
    };
    let answer = Ok(Answer::Snapshot(snap(false)));
    assert!(!snapshotter::settled(&answer));
    let a = snapshotter::answered(&w, call, answer);
    let st = patches(&a, Kind::Vsc, true);
    assert_eq!(st[0]["status"]["snapshotHandle"], "pvc-c1@snapshot-u9");
    assert_eq!(st[0]["status"]["readyToUse"], false);
    assert_eq!(
        st[0]["status"]["creationTime"],
        1_780_000_000_000_000_005i64
    );
    assert_eq!(st[0]["status"]["restoreSize"], 1i64 << 30);
    let ann = patches(&a, Kind::Vsc, false);
    assert_eq!(
        ann[0]["metadata"]["annotations"][ANN_BEING_CREATED],
        Value::Null
    );

    // A content with a status that is not ready: CreateSnapshot again; ready: nothing.
    let taken = json!({"snapshotHandle": "pvc-c1@snapshot-u9", "readyToUse": false,
                       "creationTime": 1_780_000_000_000_000_005i64, "restoreSize": 1i64 << 30});
    let mut w2 = w.clone();
    w2.vscontents = vec![content("Delete", taken.clone())];
    let p = snapshotter::plan(&w2);
    assert!(matches!(p.calls[0].request, Request::Create(_)));
    let a = snapshotter::answered(&w2, &p.calls[0], Ok(Answer::Snapshot(snap(true))));
    assert_eq!(
        patches(&a, Kind::Vsc, true)[0]["status"],
        json!({"readyToUse": true})
    );
    let mut ready = taken.clone();
    ready["readyToUse"] = json!(true);
    w2.vscontents = vec![content("Delete", ready)];
    assert!(snapshotter::plan(&w2).calls.is_empty());

    // The snapshot's status follows the content's, with the events.
    let mut bound2 = vs(&[AS_SOURCE_FINALIZER, BOUND_FINALIZER]);
    bound2["status"] = bound["status"].clone();
    w2.vss = vec![bound2];
    let a = sc::plan(&w2);
    let st = patches(&a, Kind::Vs, true);
    assert_eq!(st[0]["status"]["readyToUse"], true);
    assert_eq!(st[0]["status"]["restoreSize"], "1Gi");
    assert_eq!(st[0]["status"]["creationTime"], "2026-05-28T20:26:40Z");
    assert_eq!(reasons(&a), ["SnapshotCreated", "SnapshotReady"]);

    // Once ready, the claim's finalizer goes.
    let mut done = w2.vss[0].clone();
    done["status"] = json!({"boundVolumeSnapshotContentName": "snapcontent-u9", "readyToUse": true,
                            "restoreSize": "1Gi", "creationTime": "2026-05-28T20:26:40Z"});
    w2.vss = vec![done];
    let a = sc::plan(&w2);
    let pvcf = patches(&a, Kind::Pvc, false);
    assert_eq!(pvcf[0]["metadata"]["finalizers"], json!([]));
    assert!(patches(&a, Kind::Vs, true).is_empty(), "{a:?}");
}

fn deleting(mut v: Value) -> Value {
    v["metadata"]["deletionTimestamp"] = json!("2026-12-03T18:00:00Z");
    v
}

fn bound_vs(finalizers: &[&str]) -> Value {
    let mut v = vs(finalizers);
    v["status"] = json!({"boundVolumeSnapshotContentName": "snapcontent-u9", "readyToUse": true});
    v
}

#[test]
fn deleting_a_snapshot_under_delete_deletes_its_content_and_then_the_snapshot() {
    let class = vsclass("Delete", json!({}));
    let taken = json!({"snapshotHandle": "pvc-c1@snapshot-u9", "readyToUse": true});
    let w = world(
        vec![deleting(bound_vs(&[AS_SOURCE_FINALIZER, BOUND_FINALIZER]))],
        vec![claim(&[])],
        vec![content("Delete", taken.clone())],
        class.clone(),
    );
    let a = sc::plan(&w);
    let ann = patches(&a, Kind::Vsc, false);
    assert_eq!(ann[0]["metadata"]["annotations"][ANN_BEING_DELETED], "yes");
    assert!(a.contains(&Action::delete(Kind::Vsc, None, "snapcontent-u9")));
    // The bound finalizer stays until the content is gone.
    assert_eq!(
        patches(&a, Kind::Vs, false)[0]["metadata"]["finalizers"],
        json!([BOUND_FINALIZER])
    );

    // The snapshotter: DeleteSnapshot, then the status cleared, then the finalizer.
    let mut c = deleting(content("Delete", taken));
    c["metadata"]["annotations"] = json!({ANN_BEING_DELETED: "yes"});
    let mut w2 = w.clone();
    w2.vss = vec![deleting(bound_vs(&[BOUND_FINALIZER]))];
    w2.vscontents = vec![c.clone()];
    let p = snapshotter::plan(&w2);
    let Request::Delete(r) = &p.calls[0].request else {
        panic!("{p:?}")
    };
    assert_eq!(r.snapshot_id, "pvc-c1@snapshot-u9");
    assert_eq!(p.calls[0].key(), "delete-snapshot/snapcontent-u9");
    let failed = snapshotter::answered(&w2, &p.calls[0], Err(tonic::Status::unavailable("down")));
    assert_eq!(reasons(&failed), ["SnapshotDeleteError"]);
    let a = snapshotter::answered(&w2, &p.calls[0], Ok(Answer::Deleted));
    assert_eq!(
        patches(&a, Kind::Vsc, true)[0]["status"]["snapshotHandle"],
        Value::Null
    );
    c["status"] = json!({});
    w2.vscontents = vec![c];
    let p = snapshotter::plan(&w2);
    assert!(p.calls.is_empty());
    assert_eq!(
        patches(&p.actions, Kind::Vsc, false)[0]["metadata"]["finalizers"],
        json!([])
    );

    // The content gone: the snapshot's last finalizer off.
    w2.vscontents.clear();
    let a = sc::plan(&w2);
    assert_eq!(
        patches(&a, Kind::Vs, false)[0]["metadata"]["finalizers"],
        json!([])
    );
}

#[test]
fn deleting_a_snapshot_under_retain_keeps_its_content() {
    let class = vsclass("Retain", json!({}));
    let taken = json!({"snapshotHandle": "pvc-c1@snapshot-u9", "readyToUse": true});
    let w = world(
        vec![deleting(bound_vs(&[AS_SOURCE_FINALIZER]))],
        vec![claim(&[])],
        vec![content("Retain", taken.clone())],
        class,
    );
    let a = sc::plan(&w);
    assert!(
        !a.iter().any(|x| matches!(x, Action::Delete { .. })),
        "{a:?}"
    );
    assert_eq!(
        patches(&a, Kind::Vs, false)[0]["metadata"]["finalizers"],
        json!([])
    );
    // The kept content is not deleted by the snapshotter, even when deleted by hand
    // later: only its finalizer goes, no DeleteSnapshot.
    let mut c = deleting(content("Retain", taken));
    c["metadata"]["annotations"] = json!({ANN_BEING_DELETED: "yes"});
    let mut w2 = w.clone();
    w2.vss.clear();
    w2.vscontents = vec![c];
    let p = snapshotter::plan(&w2);
    assert!(p.calls.is_empty());
    assert_eq!(
        patches(&p.actions, Kind::Vsc, false)[0]["metadata"]["finalizers"],
        json!([])
    );
}

#[test]
fn a_snapshot_restoring_a_claim_is_not_deleted_yet() {
    let mut restore = claim(&[]);
    restore["metadata"]["name"] = json!("restored");
    restore["status"]["phase"] = json!("Pending");
    restore["spec"]["dataSource"] =
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "daily"});
    let w = world(
        vec![deleting(bound_vs(&[AS_SOURCE_FINALIZER, BOUND_FINALIZER]))],
        vec![claim(&[]), restore],
        vec![content(
            "Delete",
            json!({"snapshotHandle": "h@s", "readyToUse": true}),
        )],
        vsclass("Delete", json!({})),
    );
    let a = sc::plan(&w);
    assert_eq!(reasons(&a), ["SnapshotDeletePending"]);
    // Neither the content deleted nor a finalizer removed (the content's own sync marks
    // it being-deleted, which the snapshotter ignores while it is not deleted).
    assert!(
        !a.iter().any(|x| matches!(x, Action::Delete { .. })),
        "{a:?}"
    );
    assert!(patches(&a, Kind::Vs, false).is_empty(), "{a:?}");
    assert!(snapshotter::plan(&w).calls.is_empty());
}

#[test]
fn the_default_class_secrets_and_bad_parameters() {
    // No class named: the default class of the volume's driver is set.
    let mut v = vs(&[]);
    v["spec"]
        .as_object_mut()
        .unwrap()
        .remove("volumeSnapshotClassName");
    let mut class = vsclass("Delete", json!({}));
    let w = world(vec![v.clone()], vec![claim(&[])], vec![], class.clone());
    let a = sc::plan(&w);
    assert_eq!(reasons(&a), ["SetDefaultSnapshotClassFailed"]);
    assert_eq!(
        patches(&a, Kind::Vs, true)[0]["status"]["error"]["message"],
        "Failed to set default snapshot class with error cannot find default snapshot class"
    );
    class["metadata"]["annotations"] =
        json!({"snapshot.storage.kubernetes.io/is-default-class": "true"});
    let w = world(vec![v], vec![claim(&[])], vec![], class);
    let a = sc::plan(&w);
    assert_eq!(
        patches(&a, Kind::Vs, false)[0]["spec"]["volumeSnapshotClassName"],
        "csnap"
    );

    // Secrets: resolved into the content's annotations, read by the snapshotter.
    let class = vsclass(
        "Delete",
        json!({"csi.storage.k8s.io/snapshotter-secret-name": "${volumesnapshot.name}-key",
               "csi.storage.k8s.io/snapshotter-secret-namespace": "${volumesnapshot.namespace}"}),
    );
    let w = protected(class.clone());
    let a = sc::plan(&w);
    let c = creates(&a, Kind::Vsc)[0].clone();
    assert_eq!(c["metadata"]["annotations"][ANN_SECRET_NAME], "daily-key");
    let mut w2 = w.clone();
    w2.vscontents = vec![c];
    let p = snapshotter::plan(&w2);
    assert_eq!(
        p.calls[0].secret,
        Some(("db".to_owned(), "daily-key".to_owned()))
    );
    let Request::Create(r) = &p.calls[0].request else {
        panic!()
    };
    assert!(r.parameters.is_empty(), "the secret keys are not passed");

    // An unknown reserved key: an error on the content, no call.
    w2.vsclasses = vec![vsclass(
        "Delete",
        json!({"csi.storage.k8s.io/snapshotter-secret-nam": "x"}),
    )];
    let p = snapshotter::plan(&w2);
    assert!(p.calls.is_empty());
    assert_eq!(reasons(&p.actions), ["SnapshotCreationFailed"]);
    let st = patches(&p.actions, Kind::Vsc, true);
    assert!(st[0]["status"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("found unknown parameter key"));
    assert_eq!(st[0]["status"]["readyToUse"], false);

    // Both sources: a validation error.
    let mut both = vs(&[]);
    both["spec"]["source"]["volumeSnapshotContentName"] = json!("x");
    let w = world(
        vec![both],
        vec![claim(&[])],
        vec![],
        vsclass("Delete", json!({})),
    );
    assert_eq!(reasons(&sc::plan(&w)), ["SnapshotValidationError"]);
}

#[test]
fn create_errors_keep_the_mark_only_while_the_driver_may_still_be_at_it() {
    let mut c = content("Delete", Value::Null);
    c["metadata"]["annotations"] = json!({ANN_BEING_CREATED: "yes"});
    let w = world(
        vec![bound_vs(&[AS_SOURCE_FINALIZER, BOUND_FINALIZER])],
        vec![claim(&[])],
        vec![c],
        vsclass("Delete", json!({})),
    );
    let p = snapshotter::plan(&w);
    let call = &p.calls[0];
    assert!(call.before.is_none(), "marked already");
    let a = snapshotter::answered(&w, call, Err(tonic::Status::not_found("volume pvc-c1")));
    assert_eq!(
        patches(&a, Kind::Vsc, false)[0]["metadata"]["annotations"][ANN_BEING_CREATED],
        Value::Null
    );
    let st = patches(&a, Kind::Vsc, true);
    assert_eq!(
        st[0]["status"]["error"]["message"],
        "Failed to create snapshot: failed to take snapshot of the volume pvc-c1: \"rpc error: code = NotFound desc = volume pvc-c1\""
    );
    assert_eq!(reasons(&a), ["SnapshotCreationFailed"]);
    let a = snapshotter::answered(&w, call, Err(tonic::Status::aborted("busy")));
    assert!(patches(&a, Kind::Vsc, false).is_empty(), "{a:?}");
    // A content being deleted while a CreateSnapshot is unanswered is not deleted yet.
    let mut c = deleting(content("Delete", Value::Null));
    c["metadata"]["annotations"] = json!({ANN_BEING_CREATED: "yes", ANN_BEING_DELETED: "yes"});
    let mut w2 = w.clone();
    w2.vscontents = vec![c];
    let p = snapshotter::plan(&w2);
    assert!(p.actions.is_empty());
    assert!(matches!(p.calls[0].request, Request::Create(_)));
}

#[test]
fn a_pre_provisioned_content_is_bound_and_checked_with_list_snapshots() {
    let pre = json!({"metadata": {"name": "pre", "resourceVersion": "2"},
        "spec": {"driver": "cstor.csi.openebs.io", "deletionPolicy": "Retain",
                 "source": {"snapshotHandle": "pvc-c1@old"},
                 "volumeSnapshotRef": {"name": "imported", "namespace": "db"}}});
    let v = json!({"metadata": {"name": "imported", "namespace": "db", "uid": "u2",
                                "resourceVersion": "4", "finalizers": [AS_SOURCE_FINALIZER]},
                   "spec": {"volumeSnapshotClassName": "csnap",
                            "source": {"volumeSnapshotContentName": "pre"}}});
    let w = world(
        vec![v],
        vec![],
        vec![pre.clone()],
        vsclass("Retain", json!({})),
    );
    let a = sc::plan(&w);
    let bind = patches(&a, Kind::Vsc, false);
    assert_eq!(bind[0]["spec"]["volumeSnapshotRef"]["uid"], "u2");
    assert_eq!(bind[0]["spec"]["volumeSnapshotClassName"], "csnap");
    assert_eq!(
        patches(&a, Kind::Vs, true)[0]["status"]["boundVolumeSnapshotContentName"],
        "pre"
    );
    let p = snapshotter::plan(&w);
    let Request::Status(r) = &p.calls[0].request else {
        panic!("{p:?}")
    };
    assert_eq!(r.snapshot_id, "pvc-c1@old");
    // Unbound and deleted: only its finalizer goes.
    let mut gone = deleting(pre);
    gone["metadata"]["finalizers"] = json!([CONTENT_FINALIZER]);
    let mut w2 = w.clone();
    w2.vscontents = vec![gone];
    let p = snapshotter::plan(&w2);
    assert!(p.calls.is_empty());
    assert_eq!(
        patches(&p.actions, Kind::Vsc, false)[0]["metadata"]["finalizers"],
        json!([])
    );
}
