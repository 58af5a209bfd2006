//! The snapshotter: what kubernetes-csi/external-snapshotter v8's csi-snapshotter
//! sidecar decides for the VolumeSnapshotContents of this driver, as pure functions of a
//! [`World`]; [`crate::run`] makes the calls.
//!
//! - A dynamic content (`spec.source.volumeHandle`) without status gets CreateSnapshot:
//!   name `snapshot-<VolumeSnapshot uid>` (the sidecar's default `--snapshot-name-prefix`
//!   and no `--snapshot-name-uuid-length`), the source volume, the class's parameters
//!   without the `csi.storage.k8s.io/` keys it knows (an unknown one of that prefix is an
//!   error, as `RemovePrefixedParameters` has it), the secret the snapshot controller
//!   recorded in the content's deletion-secret annotations. The annotation
//!   [`ANN_BEING_CREATED`] is set before the call and removed once the driver answered
//!   for good (success, or an error other than a retriable code).
//! - Its status from the answer: snapshotHandle, readyToUse, creationTime (ns since the
//!   epoch), restoreSize, each set only while unset (readyToUse whenever it changes), as
//!   `updateSnapshotContentStatus` merges them. Until readyToUse the call is repeated
//!   (CreateSnapshot is idempotent by name) with the backoff of a failed call, as the
//!   sidecar's rate-limited requeue does.
//! - A pre-provisioned content (`spec.source.snapshotHandle`) gets its status from
//!   ListSnapshots of that id (the list secret from the class, when it names one).
//! - A content being deleted with its VolumeSnapshot (annotation [`ANN_BEING_DELETED`],
//!   or pre-provisioned and unbound; not while a CreateSnapshot is unanswered): under
//!   Delete with a snapshotHandle, DeleteSnapshot, then the status cleared; then (or at
//!   once under Retain) the finalizer [`CONTENT_FINALIZER`] off.
//! - Errors go to `status.error` (readyToUse false) with a Warning event, once per
//!   message; the call is retried with backoff.
//!
//! Invariants: never writes VolumeSnapshots (the snapshot controller's); never deletes
//! a content (its finalizer only); a snapshot is deleted only through DeleteSnapshot.

use std::collections::HashMap;

use cstor_api::names::CSI_DRIVER_NAME;
use cstor_controller::action::{Action, Kind, Regarding};
use cstor_controller::world::{jstr, World};
use cstor_csi::pb::{CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest, Snapshot};
use serde_json::{json, Value};

use crate::snapshot_controller::{
    annotate_content, annotation, class, finalizers, has_finalizer, now_text, obj_deleting,
    obj_name, secret_ref, set_finalizers, ANN_SECRET_NAME, ANN_SECRET_NAMESPACE,
    LIST_SECRET_NAMESPACE_PARAMETER, LIST_SECRET_NAME_PARAMETER,
};
pub use crate::snapshot_controller::{ANN_BEING_CREATED, ANN_BEING_DELETED, CONTENT_FINALIZER};

/// The sidecar's default `--snapshot-name-prefix`.
pub const SNAPSHOT_NAME_PREFIX: &str = "snapshot";

/// The class parameter prefix reserved for the sidecars.
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";
/// The reserved keys the sidecar knows (the secrets); any other is an error.
const KNOWN_RESERVED: [&str; 6] = [
    "csi.storage.k8s.io/snapshotter-secret-name",
    "csi.storage.k8s.io/snapshotter-secret-namespace",
    "csi.storage.k8s.io/snapshotter-list-secret-name",
    "csi.storage.k8s.io/snapshotter-list-secret-namespace",
    "csi.storage.k8s.io/group-snapshotter-secret-name",
    "csi.storage.k8s.io/group-snapshotter-secret-namespace",
];

/// The request of one call.
#[derive(Clone, Debug)]
pub enum Request {
    /// CreateSnapshot of a dynamic content (first, or repeated until ready).
    Create(CreateSnapshotRequest),
    /// ListSnapshots of a pre-provisioned content's snapshot id.
    Status(ListSnapshotsRequest),
    /// DeleteSnapshot of a content being deleted.
    Delete(DeleteSnapshotRequest),
}

/// One call for one content.
#[derive(Clone, Debug)]
pub struct Call {
    /// The content as listed.
    pub content: Value,
    /// The request (its `secrets` filled from [`Call::secret`] before it is sent).
    pub request: Request,
    /// `(namespace, name)` of the Secret whose data are the call's secrets.
    pub secret: Option<(String, String)>,
    /// A write that must succeed before the call is sent (the being-created mark).
    pub before: Option<Action>,
}

impl Call {
    /// The key the call is retried under (one call per content at a time).
    pub fn key(&self) -> String {
        let kind = match self.request {
            Request::Delete(_) => "delete-snapshot",
            _ => "snapshot",
        };
        format!("{kind}/{}", obj_name(&self.content))
    }

    /// Fills in the secrets of the request.
    pub fn with_secrets(mut self, secrets: HashMap<String, String>) -> Call {
        match &mut self.request {
            Request::Create(r) => r.secrets = secrets,
            Request::Status(r) => r.secrets = secrets,
            Request::Delete(r) => r.secrets = secrets,
        }
        self
    }
}

/// The answer of a call.
#[derive(Clone, Debug)]
pub enum Answer {
    /// CreateSnapshot's snapshot, or ListSnapshots' first entry.
    Snapshot(Snapshot),
    /// DeleteSnapshot succeeded.
    Deleted,
}

/// What one pass asks for.
#[derive(Debug, Default)]
pub struct Plan {
    /// Calls to make.
    pub calls: Vec<Call>,
    /// Writes needing no call.
    pub actions: Vec<Action>,
}

fn content_regarding(c: &Value) -> Regarding {
    Regarding {
        kind: Kind::Vsc,
        namespace: None,
        name: obj_name(c).to_owned(),
        uid: jstr(c, &["metadata", "uid"]).map(str::to_owned),
    }
}

fn status_field<'a>(c: &'a Value, f: &str) -> Option<&'a Value> {
    c.pointer(&format!("/status/{f}")).filter(|v| !v.is_null())
}

fn handle(c: &Value) -> Option<&str> {
    status_field(c, "snapshotHandle").and_then(Value::as_str)
}

fn is_ready(c: &Value) -> bool {
    status_field(c, "readyToUse").and_then(Value::as_bool) == Some(true)
}

/// `shouldDelete`: the content is being deleted and its snapshot may go with it.
fn should_delete(c: &Value) -> bool {
    if !obj_deleting(c) {
        return false;
    }
    let unbound = jstr(c, &["spec", "volumeSnapshotRef", "uid"])
        .unwrap_or_default()
        .is_empty();
    if jstr(c, &["spec", "source", "snapshotHandle"]).is_some() && unbound {
        return true;
    }
    annotation(c, ANN_BEING_CREATED).is_none() && annotation(c, ANN_BEING_DELETED).is_some()
}

/// The class parameters passed to CreateSnapshot (`RemovePrefixedParameters`).
pub fn parameters(
    params: &serde_json::Map<String, Value>,
) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in params {
        if k.starts_with(RESERVED_PREFIX) {
            if !KNOWN_RESERVED.contains(&k.as_str()) {
                return Err(format!(
                    "found unknown parameter key \"{k}\" with reserved namespace {RESERVED_PREFIX}"
                ));
            }
        } else {
            out.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(out)
}

/// The secret recorded on a content by the snapshot controller.
fn annotated_secret(c: &Value) -> Result<Option<(String, String)>, String> {
    match (
        annotation(c, ANN_SECRET_NAMESPACE),
        annotation(c, ANN_SECRET_NAME),
    ) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => {
            Ok(Some((ns.to_owned(), n.to_owned())))
        }
        (Some(_), Some(_)) => Err(format!(
            "cannot retrieve secrets for snapshot content {:?}, err: secret name or namespace not specified",
            obj_name(c)
        )),
        _ => Ok(None),
    }
}

/// One pass over this driver's contents.
pub fn plan(world: &World) -> Plan {
    let mut out = Plan::default();
    for c in &world.vscontents {
        if jstr(c, &["spec", "driver"]) == Some(CSI_DRIVER_NAME) {
            one(world, c, &mut out);
        }
    }
    out
}

fn one(world: &World, c: &Value, out: &mut Plan) {
    let name = obj_name(c);
    if should_delete(c) {
        let policy = jstr(c, &["spec", "deletionPolicy"]).unwrap_or("Delete");
        match (policy, handle(c)) {
            ("Delete", Some(h)) => match annotated_secret(c) {
                Ok(secret) => out.calls.push(Call {
                    content: c.clone(),
                    request: Request::Delete(DeleteSnapshotRequest {
                        snapshot_id: h.to_owned(),
                        ..Default::default()
                    }),
                    secret,
                    before: None,
                }),
                Err(_) => out.actions.push(Action::event(
                    content_regarding(c),
                    true,
                    "SnapshotDeleteError",
                    "Failed to get snapshot credentials".to_owned(),
                )),
            },
            _ if has_finalizer(c, CONTENT_FINALIZER) => {
                let rest: Vec<String> = finalizers(c)
                    .into_iter()
                    .filter(|f| f != CONTENT_FINALIZER)
                    .collect();
                out.actions.push(set_finalizers(
                    Kind::Vsc,
                    None,
                    name,
                    jstr(c, &["metadata", "resourceVersion"]),
                    &rest,
                ));
            }
            _ => {}
        }
        return;
    }
    let dynamic = jstr(c, &["spec", "source", "volumeHandle"]).is_some();
    let has_status = c.get("status").is_some_and(|s| !s.is_null());
    if is_ready(c) {
        if annotation(c, ANN_BEING_CREATED).is_some() {
            out.actions
                .push(annotate_content(name, ANN_BEING_CREATED, None));
        }
        return;
    }
    if let Some(id) = jstr(c, &["spec", "source", "snapshotHandle"]) {
        let secret = jstr(c, &["spec", "volumeSnapshotClassName"])
            .map(|n| {
                let class = class(world, n).ok_or_else(|| {
                    format!("failed to get snapshot class {n} for snapshot content {name}: volumesnapshotclass.snapshot.storage.k8s.io \"{n}\" not found")
                })?;
                let params = class
                    .get("parameters")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                secret_ref(
                    &params,
                    (LIST_SECRET_NAME_PARAMETER, LIST_SECRET_NAMESPACE_PARAMETER),
                    name,
                    None,
                )
                .map_err(|e| format!("failed to get secret reference for snapshot content {name}: {e}"))
            })
            .transpose()
            .map(Option::flatten);
        match secret {
            Ok(secret) => out.calls.push(Call {
                content: c.clone(),
                request: Request::Status(ListSnapshotsRequest {
                    snapshot_id: id.to_owned(),
                    ..Default::default()
                }),
                secret,
                before: None,
            }),
            Err(why) => out.actions.extend(error_status(
                world,
                c,
                "SnapshotContentCheckandUpdateFailed",
                format!("Failed to check and update snapshot content: {why}"),
            )),
        }
        return;
    }
    if !dynamic {
        return;
    }
    let (reason, prefix) = if has_status {
        (
            "SnapshotContentCheckandUpdateFailed",
            "Failed to check and update snapshot content",
        )
    } else {
        ("SnapshotCreationFailed", "Failed to create snapshot")
    };
    match create_request(world, c) {
        Ok((request, secret)) => out.calls.push(Call {
            content: c.clone(),
            request: Request::Create(request),
            secret,
            before: annotation(c, ANN_BEING_CREATED)
                .is_none()
                .then(|| annotate_content(name, ANN_BEING_CREATED, Some("yes"))),
        }),
        Err(why) => out.actions.extend(error_status(
            world,
            c,
            reason,
            format!("{prefix}: failed to get input parameters to create snapshot for content {name}: {why:?}"),
        )),
    }
}

/// CreateSnapshot for a dynamic content and the secret it needs.
fn create_request(
    world: &World,
    c: &Value,
) -> Result<(CreateSnapshotRequest, Option<(String, String)>), String> {
    let name = obj_name(c);
    let class_name = jstr(c, &["spec", "volumeSnapshotClassName"])
        .ok_or_else(|| format!("failed to take snapshot {name} without a snapshot class"))?;
    let class = class(world, class_name).ok_or_else(|| {
        format!("volumesnapshotclass.snapshot.storage.k8s.io \"{class_name}\" not found")
    })?;
    let secret = annotated_secret(c)?;
    let params = class
        .get("parameters")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let parameters = parameters(&params)
        .map_err(|e| format!("failed to remove CSI Parameters of prefixed keys: {e}"))?;
    let uid = jstr(c, &["spec", "volumeSnapshotRef", "uid"]).unwrap_or_default();
    if uid.is_empty() {
        return Err(format!(
            "cannot create snapshot. Snapshot content {name} not bound to a snapshot"
        ));
    }
    Ok((
        CreateSnapshotRequest {
            source_volume_id: jstr(c, &["spec", "source", "volumeHandle"])
                .unwrap_or_default()
                .to_owned(),
            name: format!("{SNAPSHOT_NAME_PREFIX}-{uid}"),
            parameters,
            ..Default::default()
        },
        secret,
    ))
}

/// `updateContentErrorStatusWithEvent`: the error and readyToUse false, with a Warning
/// event; nothing when that message is there already.
fn error_status(world: &World, c: &Value, reason: &str, message: String) -> Vec<Action> {
    if status_field(c, "error")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        == Some(message.as_str())
    {
        return Vec::new();
    }
    vec![
        Action::patch_status(
            Kind::Vsc,
            None,
            obj_name(c),
            json!({"status": {"readyToUse": false, "error": {"message": message, "time": now_text(world)}}}),
        ),
        Action::event(content_regarding(c), true, reason, message),
    ]
}

/// Whether a failed CreateSnapshot may still be in progress in the driver (the codes
/// `isCSIFinalError` does not count as final).
pub fn retriable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled | DeadlineExceeded | Unavailable | ResourceExhausted | Aborted
    )
}

/// The content's status from a snapshot the driver reported, merged as
/// `updateSnapshotContentStatus` does; None when nothing changes.
fn status_update(c: &Value, s: &Snapshot, now_ns: i64) -> Option<Action> {
    let created = s
        .creation_time
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos))
        .filter(|ns| *ns != 0)
        .unwrap_or(now_ns);
    let mut patch = serde_json::Map::new();
    if handle(c).is_none() {
        patch.insert("snapshotHandle".into(), json!(s.snapshot_id));
    }
    if status_field(c, "readyToUse").and_then(Value::as_bool) != Some(s.ready_to_use) {
        patch.insert("readyToUse".into(), json!(s.ready_to_use));
        if s.ready_to_use && status_field(c, "error").is_some() {
            patch.insert("error".into(), Value::Null);
        }
    }
    if status_field(c, "creationTime").is_none() {
        patch.insert("creationTime".into(), json!(created));
    }
    if status_field(c, "restoreSize").is_none() && s.size_bytes > 0 {
        patch.insert("restoreSize".into(), json!(s.size_bytes));
    }
    (!patch.is_empty()).then(|| {
        Action::patch_status(
            Kind::Vsc,
            None,
            obj_name(c),
            json!({"status": Value::Object(patch)}),
        )
    })
}

/// Whether the answer ends the call's retries (ready, or deleted): anything else is
/// retried with backoff.
pub fn settled(answer: &Result<Answer, tonic::Status>) -> bool {
    match answer {
        Ok(Answer::Snapshot(s)) => s.ready_to_use,
        Ok(Answer::Deleted) => true,
        Err(_) => false,
    }
}

/// The writes after `call` answered; `now` is the pass's world (for times).
pub fn answered(world: &World, call: &Call, answer: Result<Answer, tonic::Status>) -> Vec<Action> {
    let c = &call.content;
    let name = obj_name(c);
    let now_ns = world
        .now
        .map_or(0, |t| i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX));
    let marked = annotation(c, ANN_BEING_CREATED).is_some() || call.before.is_some();
    match (&call.request, answer) {
        (Request::Create(_), Ok(Answer::Snapshot(s))) => {
            let mut out: Vec<Action> = status_update(c, &s, now_ns).into_iter().collect();
            if marked {
                out.push(annotate_content(name, ANN_BEING_CREATED, None));
            }
            out
        }
        (Request::Create(r), Err(status)) => {
            let mut out = Vec::new();
            if marked && !retriable(status.code()) {
                out.push(annotate_content(name, ANN_BEING_CREATED, None));
            }
            let first = c.get("status").is_none_or(Value::is_null);
            let (reason, prefix) = if first {
                ("SnapshotCreationFailed", "Failed to create snapshot")
            } else {
                (
                    "SnapshotContentCheckandUpdateFailed",
                    "Failed to check and update snapshot content",
                )
            };
            out.extend(error_status(
                world,
                c,
                reason,
                format!(
                    "{prefix}: failed to take snapshot of the volume {}: {:?}",
                    r.source_volume_id,
                    crate::rpc_error(&status)
                ),
            ));
            out
        }
        (Request::Status(_), Ok(Answer::Snapshot(s))) => {
            status_update(c, &s, now_ns).into_iter().collect()
        }
        (Request::Status(_), Err(status)) => error_status(
            world,
            c,
            "SnapshotContentCheckandUpdateFailed",
            format!(
                "Failed to check and update snapshot content: {}",
                crate::rpc_error(&status)
            ),
        ),
        (Request::Delete(_), Ok(_)) => vec![Action::patch_status(
            Kind::Vsc,
            None,
            name,
            json!({"status": {"snapshotHandle": null, "readyToUse": null, "creationTime": null, "restoreSize": null}}),
        )],
        (Request::Delete(_), Err(_)) => vec![Action::event(
            content_regarding(c),
            true,
            "SnapshotDeleteError",
            "Failed to delete snapshot".to_owned(),
        )],
        (_, Ok(_)) => Vec::new(),
    }
}
