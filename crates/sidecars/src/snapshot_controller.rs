//! The snapshot controller: what kubernetes-csi/external-snapshotter v8's common
//! snapshot-controller decides, as a pure function of a [`World`], for the
//! VolumeSnapshots of this driver (a class of driver `cstor.csi.openebs.io`, a bound or
//! named content of it, or a claim whose PV is ours when the default class is used).
//!
//! - Dynamic provisioning: a VolumeSnapshot with `spec.source.persistentVolumeClaimName`
//!   gets the claim's finalizer [`PVC_FINALIZER`] (while a snapshot of it is not ready),
//!   then the VolumeSnapshotContent `snapcontent-<uid>` (driver, deletionPolicy and class
//!   from its VolumeSnapshotClass, `source.volumeHandle` from the bound PV,
//!   `volumeSnapshotRef` with the uid, the snapshotter secret resolved into the
//!   content's deletion-secret annotations), which the csi-snapshotter
//!   ([`crate::snapshotter`]) takes through CreateSnapshot.
//! - Pre-provisioned binding: `spec.source.volumeSnapshotContentName` names a content
//!   with `source.snapshotHandle` pointing back at the VolumeSnapshot by name; its
//!   `volumeSnapshotRef.uid` (and class) are filled in.
//! - The VolumeSnapshot's status follows its content's (boundVolumeSnapshotContentName,
//!   readyToUse, creationTime, restoreSize, error), field by field as
//!   `updateSnapshotStatus` does, with the events SnapshotCreated and SnapshotReady.
//! - Finalizers: [`AS_SOURCE_FINALIZER`] on every live VolumeSnapshot,
//!   [`BOUND_FINALIZER`] once bound to a content of policy Delete, [`CONTENT_FINALIZER`]
//!   on bound contents.
//! - Deletion: held while a Pending claim restores from the snapshot
//!   (SnapshotDeletePending); otherwise the content is annotated [`ANN_BEING_DELETED`]
//!   and, under policy Delete, deleted (the VolumeSnapshot keeps its bound finalizer
//!   until the content is gone); under Retain the content is kept and the finalizers go.
//!
//! Invariants: one step needing a prior write waits for that write to be seen in a
//! later pass (a content is created only once the claim carries [`PVC_FINALIZER`]), so
//! a failed write never lets a later one through; every metadata write carries the
//! resourceVersion it was decided on; errors are written to `status.error` (with
//! readyToUse false) and an event only when the message changes, as the real
//! controller does. Never: calls the driver (the snapshotter does).

use cstor_api::names::CSI_DRIVER_NAME;
use cstor_api::quantity::format_bytes;
use cstor_controller::action::{Action, Kind, Regarding};
use cstor_controller::world::{jstr, World};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::{json, Value};

/// Finalizer on every VolumeSnapshot not being deleted (held while a claim restores
/// from it).
pub const AS_SOURCE_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
/// Finalizer on a VolumeSnapshot bound to a content of deletion policy Delete.
pub const BOUND_FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
/// Finalizer on a claim while a snapshot of it is being created.
pub const PVC_FINALIZER: &str = "snapshot.storage.kubernetes.io/pvc-as-source-protection";
/// Finalizer on a bound VolumeSnapshotContent (the snapshotter removes it once the
/// snapshot is deleted, or at once under Retain).
pub const CONTENT_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
/// Content annotation: its VolumeSnapshot is being deleted (the snapshotter only
/// deletes a content's snapshot with it).
pub const ANN_BEING_DELETED: &str = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted";
/// Content annotation: a CreateSnapshot was sent and has not answered for good.
pub const ANN_BEING_CREATED: &str = "snapshot.storage.kubernetes.io/volumesnapshot-being-created";
/// Content annotation: name of the snapshotter secret.
pub const ANN_SECRET_NAME: &str = "snapshot.storage.kubernetes.io/deletion-secret-name";
/// Content annotation: namespace of the snapshotter secret.
pub const ANN_SECRET_NAMESPACE: &str = "snapshot.storage.kubernetes.io/deletion-secret-namespace";
/// VolumeSnapshotClass annotation making it the default of its driver.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// The class parameters naming the snapshotter secret (templates).
pub const SECRET_NAME_PARAMETER: &str = "csi.storage.k8s.io/snapshotter-secret-name";
/// See [`SECRET_NAME_PARAMETER`].
pub const SECRET_NAMESPACE_PARAMETER: &str = "csi.storage.k8s.io/snapshotter-secret-namespace";
/// The class parameters naming the ListSnapshots secret (templates).
pub const LIST_SECRET_NAME_PARAMETER: &str = "csi.storage.k8s.io/snapshotter-list-secret-name";
/// See [`LIST_SECRET_NAME_PARAMETER`].
pub const LIST_SECRET_NAMESPACE_PARAMETER: &str =
    "csi.storage.k8s.io/snapshotter-list-secret-namespace";

const GROUP: &str = "snapshot.storage.k8s.io";
const API_VERSION: &str = "snapshot.storage.k8s.io/v1";

/// The content name of a dynamically provisioned VolumeSnapshot with `uid`.
pub fn content_name(uid: &str) -> String {
    format!("snapcontent-{uid}")
}

/// `metadata.name` of a JSON object.
pub(crate) fn obj_name(v: &Value) -> &str {
    jstr(v, &["metadata", "name"]).unwrap_or_default()
}

/// Whether a JSON object is being deleted.
pub(crate) fn obj_deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// The finalizers of a JSON object.
pub(crate) fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn has_finalizer(v: &Value, f: &str) -> bool {
    finalizers(v).iter().any(|x| x == f)
}

pub(crate) fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// The merge patch setting `kind`'s finalizers to `list`, guarded by the resourceVersion
/// the decision was made on.
pub(crate) fn set_finalizers(
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    rv: Option<&str>,
    list: &[String],
) -> Action {
    Action::patch(
        kind,
        namespace,
        name,
        json!({"metadata": {"finalizers": list, "resourceVersion": rv}}),
    )
}

/// The merge patch setting (Some) or removing (None) one annotation of a content.
pub(crate) fn annotate_content(content: &str, key: &str, value: Option<&str>) -> Action {
    Action::patch(
        Kind::Vsc,
        None,
        content,
        json!({"metadata": {"annotations": {key: value}}}),
    )
}

/// The pass's time as Kubernetes writes a `metav1.Time` (whole seconds).
pub(crate) fn now_text(world: &World) -> Option<String> {
    world
        .now
        .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.as_second()).ok())
        .map(|t| t.to_string())
}

/// The VolumeSnapshotClass `name`.
pub(crate) fn class<'a>(world: &'a World, name: &str) -> Option<&'a Value> {
    world.vsclasses.iter().find(|c| obj_name(c) == name)
}

/// The VolumeSnapshotContent `name`.
pub(crate) fn content<'a>(world: &'a World, name: &str) -> Option<&'a Value> {
    world.vscontents.iter().find(|c| obj_name(c) == name)
}

fn driver_is_ours(v: &Value, path: &[&str]) -> bool {
    jstr(v, path) == Some(CSI_DRIVER_NAME)
}

/// One VolumeSnapshot's coordinates.
struct Vs<'a> {
    obj: &'a Value,
    ns: &'a str,
    name: &'a str,
    uid: &'a str,
    claim: Option<&'a str>,
    named_content: Option<&'a str>,
    class: Option<&'a str>,
}

impl<'a> Vs<'a> {
    fn of(obj: &'a Value) -> Vs<'a> {
        Vs {
            obj,
            ns: jstr(obj, &["metadata", "namespace"]).unwrap_or_default(),
            name: obj_name(obj),
            uid: jstr(obj, &["metadata", "uid"]).unwrap_or_default(),
            claim: jstr(obj, &["spec", "source", "persistentVolumeClaimName"]),
            named_content: jstr(obj, &["spec", "source", "volumeSnapshotContentName"]),
            class: jstr(obj, &["spec", "volumeSnapshotClassName"]).filter(|c| !c.is_empty()),
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn regarding(&self) -> Regarding {
        Regarding {
            kind: Kind::Vs,
            namespace: Some(self.ns.to_owned()),
            name: self.name.to_owned(),
            uid: (!self.uid.is_empty()).then(|| self.uid.to_owned()),
        }
    }

    fn rv(&self) -> Option<&'a str> {
        jstr(self.obj, &["metadata", "resourceVersion"])
    }

    fn status(&self, field: &str) -> Option<&'a Value> {
        self.obj.pointer(&format!("/status/{field}"))
    }

    fn ready(&self) -> bool {
        self.status("readyToUse").and_then(Value::as_bool) == Some(true)
    }

    fn bound(&self) -> Option<&'a str> {
        self.status("boundVolumeSnapshotContentName")
            .and_then(Value::as_str)
            .filter(|b| !b.is_empty())
    }

    /// Whether the deletion still has finalizers of ours to process.
    fn deletion_candidate(&self) -> bool {
        obj_deleting(self.obj)
            && (has_finalizer(self.obj, AS_SOURCE_FINALIZER)
                || has_finalizer(self.obj, BOUND_FINALIZER))
    }
}

/// Whether the content's `volumeSnapshotRef` names `vs` (uid included when `uid`).
fn ref_matches(content: &Value, vs: &Vs, uid: bool) -> bool {
    let r = |f: &str| jstr(content, &["spec", "volumeSnapshotRef", f]).unwrap_or_default();
    r("name") == vs.name && r("namespace") == vs.ns && (!uid || r("uid") == vs.uid)
}

/// The bound PV of claim `ns/name`, when the claim is Bound to a PV pointing back at it.
fn bound_volume<'a>(
    world: &'a World,
    pvc: &PersistentVolumeClaim,
) -> Result<&'a PersistentVolume, String> {
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Err(format!(
            "the PVC {name} is not yet bound to a PV, will not attempt to take a snapshot"
        ));
    }
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default();
    let pv = world.pv(pv_name).ok_or_else(|| {
        format!("failed to retrieve PV {pv_name} from the API server: \"not found\"")
    })?;
    let cr = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let bound = cr.is_some_and(|c| {
        c.name.as_deref() == Some(name)
            && c.namespace == pvc.metadata.namespace
            && c.uid
                .as_deref()
                .is_none_or(|u| u.is_empty() || Some(u) == pvc.metadata.uid.as_deref())
    });
    if !bound {
        return Err("claim in dataSource not bound or invalid".to_owned());
    }
    Ok(pv)
}

fn pv_driver(pv: &PersistentVolume) -> Option<&str> {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.driver.as_str())
}

/// Whether the VolumeSnapshot is this driver's to handle.
fn ours(world: &World, vs: &Vs) -> bool {
    if let Some(c) = vs.named_content.or(vs.bound()) {
        if let Some(c) = content(world, c) {
            return driver_is_ours(c, &["spec", "driver"]);
        }
    }
    if !vs.uid.is_empty() {
        if let Some(c) = content(world, &content_name(vs.uid)) {
            return driver_is_ours(c, &["spec", "driver"]);
        }
    }
    match vs.class {
        Some(c) => class(world, c).is_some_and(|c| driver_is_ours(c, &["driver"])),
        None => {
            vs.claim
                .and_then(|p| world.pvc(vs.ns, p))
                .and_then(|p| bound_volume(world, p).ok())
                .and_then(pv_driver)
                == Some(CSI_DRIVER_NAME)
        }
    }
}

/// One pass over VolumeSnapshots and VolumeSnapshotContents of this driver.
pub fn plan(world: &World) -> Vec<Action> {
    let mut out = Vec::new();
    for obj in &world.vss {
        let vs = Vs::of(obj);
        if ours(world, &vs) {
            sync_snapshot(world, &vs, &mut out);
        }
    }
    for c in &world.vscontents {
        if driver_is_ours(c, &["spec", "driver"]) {
            sync_content(world, c, &mut out);
        }
    }
    // Two paths may ask for the same annotation; write it once.
    let mut unique: Vec<Action> = Vec::with_capacity(out.len());
    for a in out {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    unique
}

/// The error status and Warning event, only when the message is new (as
/// `updateSnapshotErrorStatusWithEvent`); `not_ready` also sets readyToUse false.
fn error(world: &World, vs: &Vs, not_ready: bool, reason: &str, message: String) -> Vec<Action> {
    if vs
        .status("error")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        == Some(message.as_str())
    {
        return Vec::new();
    }
    let mut status = json!({"error": {"message": message, "time": now_text(world)}});
    if not_ready {
        status["readyToUse"] = json!(false);
    }
    vec![
        Action::patch_status(Kind::Vs, Some(vs.ns), vs.name, json!({"status": status})),
        Action::event(vs.regarding(), true, reason, message),
    ]
}

fn sync_snapshot(world: &World, vs: &Vs, out: &mut Vec<Action>) {
    release_claim(world, vs, false, out);
    if obj_deleting(vs.obj) {
        deletion(world, vs, out);
        return;
    }
    if vs.claim.is_some() == vs.named_content.is_some() {
        out.extend(error(
            world,
            vs,
            true,
            "SnapshotValidationError",
            "Exactly one of PersistentVolumeClaimName and VolumeSnapshotContentName should be specified".to_owned(),
        ));
        return;
    }
    if vs.named_content.is_none() && vs.class.is_none() {
        default_class(world, vs, out);
        return;
    }
    let found = match vs.named_content {
        Some(c) => preprovisioned_content(world, vs, c),
        None => dynamic_content(world, vs),
    };
    let content = match found {
        Ok(c) => c,
        Err((reason, message)) => {
            out.extend(error(world, vs, true, reason, message));
            return;
        }
    };
    let mut fins = finalizers(vs.obj);
    let before = fins.len();
    if !fins.iter().any(|f| f == AS_SOURCE_FINALIZER) {
        fins.push(AS_SOURCE_FINALIZER.to_owned());
    }
    let delete_policy =
        content.is_some_and(|c| jstr(c, &["spec", "deletionPolicy"]) == Some("Delete"));
    if vs.bound().is_some() && delete_policy && !fins.iter().any(|f| f == BOUND_FINALIZER) {
        fins.push(BOUND_FINALIZER.to_owned());
    }
    if fins.len() != before {
        out.push(set_finalizers(
            Kind::Vs,
            Some(vs.ns),
            vs.name,
            vs.rv(),
            &fins,
        ));
    }
    if vs.ready() && vs.bound().is_some() {
        ready(world, vs, out);
        return;
    }
    match (content, vs.named_content) {
        (Some(c), Some(_)) => {
            // Pre-provisioned: fill in the uid (and class) of the reference.
            let has_uid = !jstr(c, &["spec", "volumeSnapshotRef", "uid"])
                .unwrap_or_default()
                .is_empty();
            let has_class = jstr(c, &["spec", "volumeSnapshotClassName"]).is_some();
            if !has_uid || !has_class {
                let mut spec = json!({"volumeSnapshotRef": {"uid": vs.uid}});
                if let Some(class) = vs.class {
                    spec["volumeSnapshotClassName"] = json!(class);
                }
                out.push(Action::patch(
                    Kind::Vsc,
                    None,
                    obj_name(c),
                    json!({"spec": spec, "metadata": {"resourceVersion": jstr(c, &["metadata", "resourceVersion"])}}),
                ));
            }
            out.extend(status_from(vs, c));
        }
        (Some(c), None) => out.extend(status_from(vs, c)),
        (None, Some(_)) => out.extend(error(
            world,
            vs,
            true,
            "SnapshotContentMissing",
            "VolumeSnapshotContent is missing".to_owned(),
        )),
        (None, None) => create_content(world, vs, out),
    }
}

/// The named pre-provisioned content: Ok(None) when it does not exist yet.
fn preprovisioned_content<'a>(
    world: &'a World,
    vs: &Vs,
    name: &str,
) -> Result<Option<&'a Value>, (&'static str, String)> {
    let Some(c) = content(world, name) else {
        return Ok(None);
    };
    if jstr(c, &["spec", "source", "snapshotHandle"]).is_none() {
        return Err((
            "SnapshotContentMismatch",
            "VolumeSnapshotContent is dynamically provisioned while expecting a pre-provisioned one".to_owned(),
        ));
    }
    let uid = jstr(c, &["spec", "volumeSnapshotRef", "uid"]).unwrap_or_default();
    if !ref_matches(c, vs, false) || (!uid.is_empty() && uid != vs.uid) {
        return Err((
            "SnapshotContentMisbound",
            format!("VolumeSnapshotContent [{name}] is bound to a different snapshot"),
        ));
    }
    Ok(Some(c))
}

/// The `snapcontent-<uid>` content: Ok(None) when it does not exist yet.
fn dynamic_content<'a>(
    world: &'a World,
    vs: &Vs,
) -> Result<Option<&'a Value>, (&'static str, String)> {
    let name = content_name(vs.uid);
    let Some(c) = content(world, &name) else {
        return Ok(None);
    };
    if jstr(c, &["spec", "source", "volumeHandle"]).is_none() {
        return Err((
            "SnapshotContentMismatch",
            format!("VolumeSnapshotContent {name} is pre-provisioned while expecting a dynamically provisioned one"),
        ));
    }
    if !ref_matches(c, vs, true) {
        return Err((
            "SnapshotContentMisbound",
            format!("VolumeSnapshotContent [{name}] is bound to a different snapshot"),
        ));
    }
    Ok(Some(c))
}

/// A VolumeSnapshot without a class: the default class of its volume's driver.
fn default_class(world: &World, vs: &Vs, out: &mut Vec<Action>) {
    let defaults: Vec<&str> = world
        .vsclasses
        .iter()
        .filter(|c| {
            annotation(c, DEFAULT_CLASS_ANNOTATION) == Some("true")
                && driver_is_ours(c, &["driver"])
        })
        .map(obj_name)
        .collect();
    let why = match defaults.as_slice() {
        [one] => {
            out.push(Action::patch(
                Kind::Vs,
                Some(vs.ns),
                vs.name,
                json!({"spec": {"volumeSnapshotClassName": one}, "metadata": {"resourceVersion": vs.rv()}}),
            ));
            return;
        }
        [] => "cannot find default snapshot class".to_owned(),
        many => format!("{} default snapshot classes were found", many.len()),
    };
    out.extend(error(
        world,
        vs,
        true,
        "SetDefaultSnapshotClassFailed",
        format!("Failed to set default snapshot class with error {why}"),
    ));
}

/// A bound, ready VolumeSnapshot: only the binding is checked.
fn ready(world: &World, vs: &Vs, out: &mut Vec<Action>) {
    let Some(name) = vs.bound() else { return };
    match content(world, name) {
        None => out.extend(error(
            world,
            vs,
            true,
            "SnapshotContentMissing",
            "VolumeSnapshotContent is missing".to_owned(),
        )),
        Some(c) if !ref_matches(c, vs, true) => out.extend(error(
            world,
            vs,
            true,
            "SnapshotMisbound",
            "VolumeSnapshotContent is not bound to the VolumeSnapshot correctly".to_owned(),
        )),
        Some(_) => {}
    }
}

/// The secret reference of the class parameters `name_key`/`namespace_key` (templates
/// of `${volumesnapshotcontent.name}`, `${volumesnapshot.namespace}` and, in the name,
/// `${volumesnapshot.name}`); None when the class names none.
pub(crate) fn secret_ref(
    params: &serde_json::Map<String, Value>,
    (name_key, namespace_key): (&str, &str),
    content: &str,
    vs: Option<(&str, &str)>,
) -> Result<Option<(String, String)>, String> {
    let get = |k: &str| params.get(k).and_then(Value::as_str);
    let (name_t, ns_t) =
        match (get(name_key), get(namespace_key)) {
            (None, None) => return Ok(None),
            (Some(n), Some(s)) if !n.is_empty() && !s.is_empty() => (n, s),
            (Some(_), Some(_)) => return Err(
                "secrets specified in parameters but value of either namespace or name is empty"
                    .to_owned(),
            ),
            _ => {
                return Err(
                    "either name and namespace for secrets specified, Both must be specified"
                        .to_owned(),
                )
            }
        };
    let resolve = |t: &str, with_name: bool| -> Result<String, String> {
        let mut s = t.replace("${volumesnapshotcontent.name}", content);
        if let Some((ns, name)) = vs {
            s = s.replace("${volumesnapshot.namespace}", ns);
            if with_name {
                s = s.replace("${volumesnapshot.name}", name);
            }
        }
        if s.contains("${") {
            return Err(format!("error resolving value {t:?}: invalid tokens"));
        }
        Ok(s)
    };
    let ns = resolve(ns_t, false)?;
    let name = resolve(name_t, true)?;
    let dns = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    if !dns(&ns, 63) || ns.contains('.') {
        return Err(format!("{ns_t:?} is not a valid namespace name"));
    }
    if !dns(&name, 253) {
        return Err(format!("{name_t:?} is not a valid secret name"));
    }
    Ok(Some((ns, name)))
}

/// A dynamic VolumeSnapshot without content: the claim's finalizer first, then the
/// content (and the VolumeSnapshot's binding).
fn create_content(world: &World, vs: &Vs, out: &mut Vec<Action>) {
    let fail = |why: String| {
        error(
            world,
            vs,
            true,
            "SnapshotContentCreationFailed",
            format!("Failed to create snapshot content with error {why}"),
        )
    };
    let Some(claim_name) = vs.claim else { return };
    let Some(pvc) = world.pvc(vs.ns, claim_name) else {
        out.extend(fail(format!(
            "snapshot controller failed to update {} on API server: cannot get claim from snapshot",
            vs.name
        )));
        return;
    };
    let pvc_fins = pvc.metadata.finalizers.clone().unwrap_or_default();
    if !pvc_fins.iter().any(|f| f == PVC_FINALIZER) {
        if pvc.metadata.deletion_timestamp.is_some() {
            out.extend(fail(format!("snapshot controller failed to update {claim_name} on API server: cannot add finalizer on claim because it is being deleted")));
            return;
        }
        let mut fins = pvc_fins;
        fins.push(PVC_FINALIZER.to_owned());
        out.push(set_finalizers(
            Kind::Pvc,
            Some(vs.ns),
            claim_name,
            pvc.metadata.resource_version.as_deref(),
            &fins,
        ));
        return; // the content once the finalizer is seen
    }
    let input = || -> Result<_, String> {
        let class_name = vs.class.ok_or_else(|| {
            format!(
                "failed to take snapshot {} without a snapshot class",
                vs.name
            )
        })?;
        let class = class(world, class_name).ok_or_else(|| {
            format!("volumesnapshotclass.snapshot.storage.k8s.io \"{class_name}\" not found")
        })?;
        let pv = bound_volume(world, pvc)?;
        let csi = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .ok_or_else(|| {
                format!(
                    "cannot find CSI PersistentVolumeSource for volume {}",
                    pv.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
        let name = content_name(vs.uid);
        let params = class
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let secret = secret_ref(
            &params,
            (SECRET_NAME_PARAMETER, SECRET_NAMESPACE_PARAMETER),
            &name,
            Some((vs.ns, vs.name)),
        )?;
        Ok((class_name, class, csi.volume_handle.clone(), name, secret))
    };
    let (class_name, class, handle, name, secret) = match input() {
        Ok(i) => i,
        Err(why) => {
            out.extend(fail(format!(
                "failed to get input parameters to create snapshot {}: {why:?}",
                vs.name
            )));
            return;
        }
    };
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name},
        "spec": {
            "volumeSnapshotRef": {
                "apiVersion": API_VERSION,
                "kind": "VolumeSnapshot",
                "namespace": vs.ns,
                "name": vs.name,
                "uid": vs.uid,
                "resourceVersion": vs.rv(),
            },
            "source": {"volumeHandle": handle},
            "volumeSnapshotClassName": class_name,
            "deletionPolicy": jstr(class, &["deletionPolicy"]).unwrap_or("Delete"),
            "driver": jstr(class, &["driver"]).unwrap_or(CSI_DRIVER_NAME),
        },
    });
    if let Some((ns, n)) = secret {
        object["metadata"]["annotations"] = json!({ANN_SECRET_NAME: n, ANN_SECRET_NAMESPACE: ns});
    }
    out.push(Action::Create {
        kind: Kind::Vsc,
        object,
        status: None,
    });
    out.push(Action::event(
        vs.regarding(),
        false,
        "CreatingSnapshot",
        format!(
            "Waiting for a snapshot {} to be created by the CSI driver.",
            vs.key()
        ),
    ));
    out.extend(status_from(vs, &json!({"metadata": {"name": name}})));
}

/// The VolumeSnapshot's status from its content's, field by field as the real
/// `updateSnapshotStatus` merges them; with SnapshotCreated/SnapshotReady on the
/// transitions. Nothing when it says so already.
fn status_from(vs: &Vs, content: &Value) -> Vec<Action> {
    let cs = |f: &str| {
        content
            .pointer(&format!("/status/{f}"))
            .filter(|v| !v.is_null())
    };
    let created = cs("creationTime")
        .and_then(Value::as_i64)
        .and_then(|ns| k8s_openapi::jiff::Timestamp::from_second(ns.div_euclid(1_000_000_000)).ok())
        .map(|t| t.to_string());
    let size = cs("restoreSize").and_then(Value::as_u64);
    let ready = cs("readyToUse").and_then(Value::as_bool).unwrap_or(false);
    let err = cs("error").cloned();
    let mut patch = serde_json::Map::new();
    let have = |f: &str| vs.status(f).filter(|v| !v.is_null());
    if vs.bound().is_none() {
        patch.insert(
            "boundVolumeSnapshotContentName".into(),
            json!(obj_name(content)),
        );
    }
    if have("creationTime").is_none() {
        if let Some(t) = &created {
            patch.insert("creationTime".into(), json!(t));
        }
    }
    if have("readyToUse").and_then(Value::as_bool) != Some(ready) {
        patch.insert("readyToUse".into(), json!(ready));
    }
    let size_now = have("restoreSize")
        .and_then(Value::as_str)
        .map(|q| cstor_api::quantity::parse_bytes(q).unwrap_or(0));
    if let Some(s) = size {
        if size_now.is_none() || (size_now == Some(0) && s > 0) {
            patch.insert("restoreSize".into(), json!(format_bytes(s)));
        }
    }
    match (&err, have("error")) {
        (Some(e), now) if now != Some(e) => {
            patch.insert("error".into(), e.clone());
        }
        (None, Some(_)) => {
            patch.insert("error".into(), Value::Null);
        }
        _ => {}
    }
    if patch.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if have("creationTime").is_none() && patch.contains_key("creationTime") {
        out.push(Action::event(
            vs.regarding(),
            false,
            "SnapshotCreated",
            format!(
                "Snapshot {} was successfully created by the CSI driver.",
                vs.key()
            ),
        ));
    }
    if ready && !vs.ready() {
        out.push(Action::event(
            vs.regarding(),
            false,
            "SnapshotReady",
            format!("Snapshot {} is ready to use.", vs.key()),
        ));
    }
    out.insert(
        0,
        Action::patch_status(
            Kind::Vs,
            Some(vs.ns),
            vs.name,
            json!({"status": Value::Object(patch)}),
        ),
    );
    out
}

/// Whether a claim of `vs`'s namespace is being restored from it (Pending, dataSource
/// this VolumeSnapshot).
fn restoring_from(world: &World, vs: &Vs) -> bool {
    world.pvcs.iter().any(|p| {
        p.metadata.namespace.as_deref() == Some(vs.ns)
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
            && p.spec
                .as_ref()
                .and_then(|s| s.data_source.as_ref())
                .is_some_and(|d| {
                    d.name == vs.name
                        && d.kind == "VolumeSnapshot"
                        && d.api_group.as_deref() == Some(GROUP)
                })
    })
}

/// The claim's [`PVC_FINALIZER`] off once no snapshot of it (in its namespace, other
/// than `vs` when `skip_self`) is still not ready.
fn release_claim(world: &World, vs: &Vs, skip_self: bool, out: &mut Vec<Action>) {
    let Some(claim) = vs.claim else { return };
    let Some(pvc) = world.pvc(vs.ns, claim) else {
        return;
    };
    let fins = pvc.metadata.finalizers.clone().unwrap_or_default();
    if !fins.iter().any(|f| f == PVC_FINALIZER) {
        return;
    }
    let in_use = world.vss.iter().map(Vs::of).any(|s| {
        s.ns == vs.ns && !(skip_self && s.name == vs.name) && s.claim == Some(claim) && !s.ready()
    });
    if in_use {
        return;
    }
    let rest: Vec<String> = fins.into_iter().filter(|f| f != PVC_FINALIZER).collect();
    out.push(set_finalizers(
        Kind::Pvc,
        Some(vs.ns),
        claim,
        pvc.metadata.resource_version.as_deref(),
        &rest,
    ));
}

/// A VolumeSnapshot being deleted (`processSnapshotWithDeletionTimestamp`).
fn deletion(world: &World, vs: &Vs, out: &mut Vec<Action>) {
    let name = vs.bound().map(str::to_owned).or_else(|| {
        vs.claim
            .filter(|_| !vs.uid.is_empty())
            .map(|_| content_name(vs.uid))
    });
    let content = name
        .as_deref()
        .and_then(|n| content(world, n))
        .filter(|c| ref_matches(c, vs, true));
    let delete_content =
        content.is_some_and(|c| jstr(c, &["spec", "deletionPolicy"]) == Some("Delete"));
    if !vs.deletion_candidate() {
        return;
    }
    if let Some(c) = content {
        if restoring_from(world, vs) {
            out.push(Action::event(
                vs.regarding(),
                true,
                "SnapshotDeletePending",
                "Snapshot is being used to restore a PVC".to_owned(),
            ));
            return;
        }
        if annotation(c, ANN_BEING_DELETED).is_none() {
            out.push(annotate_content(
                obj_name(c),
                ANN_BEING_DELETED,
                Some("yes"),
            ));
        }
        if delete_content && !obj_deleting(c) {
            out.push(Action::delete(Kind::Vsc, None, obj_name(c)));
        }
    }
    release_claim(world, vs, true, out);
    let keep_bound = content.is_some() && delete_content;
    let rest: Vec<String> = finalizers(vs.obj)
        .into_iter()
        .filter(|f| f != AS_SOURCE_FINALIZER && (keep_bound || f != BOUND_FINALIZER))
        .collect();
    if rest.len() != finalizers(vs.obj).len() {
        out.push(set_finalizers(
            Kind::Vs,
            Some(vs.ns),
            vs.name,
            vs.rv(),
            &rest,
        ));
    }
}

/// A content of this driver (`syncContent` of the common controller): validated, its
/// finalizer once bound, and the being-deleted annotation when its VolumeSnapshot goes.
fn sync_content(world: &World, c: &Value, out: &mut Vec<Action>) {
    let name = obj_name(c);
    let vh = jstr(c, &["spec", "source", "volumeHandle"]).is_some();
    let sh = jstr(c, &["spec", "source", "snapshotHandle"]).is_some();
    if vh == sh {
        out.push(Action::event(
            Regarding {
                kind: Kind::Vsc,
                namespace: None,
                name: name.to_owned(),
                uid: jstr(c, &["metadata", "uid"]).map(str::to_owned),
            },
            true,
            "ContentValidationError",
            "Exactly one of VolumeHandle and SnapshotHandle should be specified".to_owned(),
        ));
        return;
    }
    let r = |f: &str| jstr(c, &["spec", "volumeSnapshotRef", f]).unwrap_or_default();
    if r("uid").is_empty() {
        return; // pre-bound, not bound yet
    }
    if !obj_deleting(c) && !has_finalizer(c, CONTENT_FINALIZER) {
        let mut fins = finalizers(c);
        fins.push(CONTENT_FINALIZER.to_owned());
        out.push(set_finalizers(
            Kind::Vsc,
            None,
            name,
            jstr(c, &["metadata", "resourceVersion"]),
            &fins,
        ));
        return;
    }
    let vs = world
        .vss
        .iter()
        .map(Vs::of)
        .find(|v| v.ns == r("namespace") && v.name == r("name") && v.uid == r("uid"));
    if vs.is_some_and(|v| v.deletion_candidate()) && annotation(c, ANN_BEING_DELETED).is_none() {
        out.push(annotate_content(name, ANN_BEING_DELETED, Some("yes")));
    }
}
