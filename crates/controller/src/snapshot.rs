//! VolumeSnapshots of a cstor class -> CStorSnapshot + VolumeSnapshotContent (the CSI
//! external-snapshotter and cstor-csi's CreateSnapshot, until the CSI driver lands), as a
//! pure function of the [`World`].
//!
//! A VolumeSnapshot is ours when its VolumeSnapshotClass's driver is
//! `cstor.csi.openebs.io`. Its snapshot is `snapshot-<VolumeSnapshot uid>`: a
//! CStorSnapshot of that name in the controller's namespace (the agent hosting the
//! volume's target takes it and writes its status), and a VolumeSnapshotContent
//! `snapcontent-<uid>` whose `snapshotHandle` is `<pv>@<snapshot>`. readyToUse,
//! creationTime and restoreSize of both follow the CStorSnapshot's status. When the
//! VolumeSnapshot is gone, its CStorSnapshot and content are deleted under the class's
//! deletionPolicy Delete and kept under Retain.

use cstor_api::names::{label, CSI_DRIVER_NAME, CSTOR_API_VERSION};
use cstor_api::quantity::quantity_bytes;
use cstor_api::v1::{CStorSnapshot, CStorSnapshotPhase};
use serde_json::{json, Value};

use crate::action::{Action, Kind, Regarding};
use crate::world::{annotation_of, jstr, name, World};

/// Annotation on a CStorSnapshot: `<namespace>/<name>` of its VolumeSnapshot (ours).
pub const VS_ANNOTATION: &str = "cstor.openebs.io/volumesnapshot";
/// Annotation on a CStorSnapshot: the deletionPolicy of its class (ours).
pub const DELETION_POLICY_ANNOTATION: &str = "cstor.openebs.io/deletion-policy";

/// The snapshot name of the VolumeSnapshot with `uid`.
pub fn snapshot_name(uid: &str) -> String {
    format!("snapshot-{uid}")
}

fn content_name(uid: &str) -> String {
    format!("snapcontent-{uid}")
}

fn vs_regarding(vs: &Value) -> Regarding {
    Regarding {
        kind: Kind::Vs,
        namespace: jstr(vs, &["metadata", "namespace"]).map(str::to_owned),
        name: jstr(vs, &["metadata", "name"])
            .unwrap_or_default()
            .to_owned(),
        uid: jstr(vs, &["metadata", "uid"]).map(str::to_owned),
    }
}

/// Reconciles VolumeSnapshots.
pub fn reconcile(world: &World) -> Vec<Action> {
    let mut out = Vec::new();
    for vs in &world.vss {
        one(world, vs, &mut out);
    }
    // Snapshots whose VolumeSnapshot is gone.
    for c in &world.csnaps {
        let Some((ns, n)) =
            annotation_of(&c.metadata, VS_ANNOTATION).and_then(|a| a.split_once('/'))
        else {
            continue;
        };
        let uid = name(&c.metadata)
            .strip_prefix("snapshot-")
            .unwrap_or_default();
        let alive = world.vss.iter().any(|v| {
            jstr(v, &["metadata", "namespace"]) == Some(ns)
                && jstr(v, &["metadata", "name"]) == Some(n)
                && jstr(v, &["metadata", "uid"]) == Some(uid)
        });
        if alive || c.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if annotation_of(&c.metadata, DELETION_POLICY_ANNOTATION) == Some("Retain") {
            continue;
        }
        out.push(Action::delete(
            Kind::Csnap,
            Some(world.namespace.as_str()),
            name(&c.metadata),
        ));
        if world
            .vscontents
            .iter()
            .any(|v| jstr(v, &["metadata", "name"]) == Some(content_name(uid).as_str()))
        {
            out.push(Action::delete(Kind::Vsc, None, &content_name(uid)));
        }
    }
    out
}

fn one(world: &World, vs: &Value, out: &mut Vec<Action>) {
    let class_name = jstr(vs, &["spec", "volumeSnapshotClassName"]);
    let Some(class) = world
        .vsclasses
        .iter()
        .find(|c| jstr(c, &["metadata", "name"]) == class_name)
    else {
        return;
    };
    if jstr(class, &["driver"]) != Some(CSI_DRIVER_NAME) {
        return;
    }
    if vs.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let me = vs_regarding(vs);
    let ns = me.namespace.clone().unwrap_or_default();
    let Some(uid) = me.uid.clone() else { return };
    let snap = snapshot_name(&uid);
    let policy = jstr(class, &["deletionPolicy"]).unwrap_or("Delete");
    let Some(claim) = jstr(vs, &["spec", "source", "persistentVolumeClaimName"]) else {
        if vs
            .pointer("/spec/source/volumeSnapshotContentName")
            .is_none()
        {
            out.push(Action::event(me, true, "SnapshotFailed", "spec.source names neither a persistentVolumeClaimName nor a volumeSnapshotContentName".to_owned()));
        }
        return;
    };
    let csnap = world.csnaps.iter().find(|c| name(&c.metadata) == snap);
    let pv = match csnap {
        Some(c) => c.spec.volume_name.clone(),
        None => {
            let bound = world
                .pvc(&ns, claim)
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.volume_name.clone())
                .filter(|v| world.cv(v).is_some());
            let Some(pv) = bound else {
                out.push(Action::event(
                    me,
                    false,
                    "SnapshotPending",
                    format!("Waiting for claim {ns}/{claim} to be bound to a cstor volume"),
                ));
                return;
            };
            out.push(Action::Create {
                kind: Kind::Csnap,
                object: json!({
                    "apiVersion": CSTOR_API_VERSION,
                    "kind": "CStorSnapshot",
                    "metadata": {
                        "name": snap,
                        "namespace": world.namespace,
                        "labels": {label::PERSISTENT_VOLUME: pv},
                        "annotations": {VS_ANNOTATION: format!("{ns}/{}", me.name), DELETION_POLICY_ANNOTATION: policy},
                    },
                    "spec": {"volumeName": pv, "snapshotName": snap},
                }),
                status: Some(json!({"status": {"phase": "Pending", "readyToUse": false}})),
            });
            out.push(Action::event(
                me.clone(),
                false,
                "CreatingSnapshot",
                format!(
                    "Waiting for a snapshot {ns}/{} to be created by the CSI driver.",
                    me.name
                ),
            ));
            pv
        }
    };
    let content = content_name(&uid);
    if !world
        .vscontents
        .iter()
        .any(|v| jstr(v, &["metadata", "name"]) == Some(content.as_str()))
    {
        out.push(Action::Create {
            kind: Kind::Vsc,
            object: json!({
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": content},
                "spec": {
                    "driver": CSI_DRIVER_NAME,
                    "deletionPolicy": policy,
                    "source": {"volumeHandle": pv},
                    "volumeSnapshotClassName": class_name,
                    "volumeSnapshotRef": {
                        "apiVersion": "snapshot.storage.k8s.io/v1",
                        "kind": "VolumeSnapshot",
                        "namespace": ns,
                        "name": me.name,
                        "uid": uid,
                    },
                },
            }),
            status: None,
        });
    }
    let (ready, failed, created, size, message) = state(csnap);
    let handle = format!("{pv}@{snap}");
    let mut content_status = json!({"snapshotHandle": handle, "readyToUse": ready});
    let mut vs_status = json!({"boundVolumeSnapshotContentName": content, "readyToUse": ready});
    if let Some(t) = &created {
        vs_status["creationTime"] = json!(t);
        if let Ok(ts) = t.parse::<k8s_openapi::jiff::Timestamp>() {
            content_status["creationTime"] = json!(ts.as_nanosecond() as i64);
        }
    }
    if let Some(s) = size {
        vs_status["restoreSize"] = json!(cstor_api::quantity::format_bytes(s));
        content_status["restoreSize"] = json!(s);
    }
    if failed {
        let err =
            json!({"message": message.clone().unwrap_or_else(|| "snapshot failed".to_owned())});
        vs_status["error"] = err.clone();
        content_status["error"] = err;
    }
    let vs_now = vs.get("status").cloned().unwrap_or(Value::Null);
    if !covers(&vs_now, &vs_status) {
        out.push(Action::patch_status(
            Kind::Vs,
            Some(&ns),
            &me.name,
            json!({"status": vs_status}),
        ));
        if ready {
            out.push(Action::event(
                me.clone(),
                false,
                "SnapshotCreated",
                format!(
                    "Snapshot {ns}/{} was successfully created by the CSI driver.",
                    me.name
                ),
            ));
            out.push(Action::event(
                me.clone(),
                false,
                "SnapshotReady",
                format!("Snapshot {ns}/{} is ready to use.", me.name),
            ));
        }
        if failed {
            out.push(Action::event(
                me.clone(),
                true,
                "SnapshotFailed",
                message.unwrap_or_else(|| "snapshot failed".to_owned()),
            ));
        }
    }
    let content_now = world
        .vscontents
        .iter()
        .find(|v| jstr(v, &["metadata", "name"]) == Some(content.as_str()))
        .and_then(|v| v.get("status").cloned())
        .unwrap_or(Value::Null);
    if !covers(&content_now, &content_status) {
        out.push(Action::patch_status(
            Kind::Vsc,
            None,
            &content,
            json!({"status": content_status}),
        ));
    }
}

/// (ready, failed, creationTime, restore size bytes, message) of a CStorSnapshot.
fn state(c: Option<&CStorSnapshot>) -> (bool, bool, Option<String>, Option<u64>, Option<String>) {
    let Some(s) = c.and_then(|c| c.status.as_ref()) else {
        return (false, false, None, None, None);
    };
    let ready = s.ready_to_use == Some(true) && s.phase != Some(CStorSnapshotPhase::Failed);
    let failed = s.phase == Some(CStorSnapshotPhase::Failed);
    let created = s.creation_time.as_ref().map(|t| t.0.to_string());
    let size = s.restore_size.as_ref().and_then(|q| quantity_bytes(q).ok());
    (ready, failed, created, size, s.message.clone())
}

/// Whether every field of `want` is already in `have`.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| covers(hv, v))),
        _ => have == want,
    }
}
