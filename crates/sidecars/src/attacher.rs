//! The attacher: what kubernetes-csi/external-attacher decides, as pure functions of the
//! listed VolumeAttachments, CSINodes and PersistentVolumes. A VolumeAttachment is ours
//! when its `spec.attacher` is `cstor.csi.openebs.io`; the attach-detach controller (or
//! `cstor attach`, playing it) creates and deletes it, we act on it:
//!
//! - attach (not being deleted, `status.attached` false): the PV exists and is not being
//!   deleted, it gets our finalizer; the node id is the CSINode's entry for the driver;
//!   the VA gets our finalizer and the node id in `csi.alpha.kubernetes.io/node-id`;
//!   then ControllerPublishVolume (capability and `readonly` from the PV, `secrets` from
//!   its `controllerPublishSecretRef`); success is `status.attached: true` with the
//!   publish context as `attachmentMetadata`, failure `status.attachError {time,
//!   message}` and a retry with backoff;
//! - detach (being deleted, our finalizer on it): ControllerUnpublishVolume (node id
//!   from the CSINode, else the VA's annotation), then `attached: false` and the
//!   finalizer off; failure is `status.detachError` and a retry;
//! - a PV being deleted loses our finalizer once no VolumeAttachment names it;
//! - reconcile (every `--reconcile-sync`, when the driver lists published nodes): a VA
//!   whose `status.attached` disagrees with the driver's ListVolumes for its node is
//!   processed once as if it were new, whatever its status says ([`out_of_sync`]): an
//!   attached one whose publish record was lost is published again, a deleted one the
//!   driver still publishes is unpublished even without our finalizer.
//!
//! Every pass lists all VolumeAttachments, so one deleted while no attacher ran (or
//! before a restart) is unpublished by the next pass, as the informer's initial list
//! does it for the real sidecar.
//!
//! Invariants: the finalizers are on before ControllerPublishVolume is sent, so a
//! published volume is never forgotten; a VA's finalizer comes off only after
//! ControllerUnpublishVolume succeeded. Never: creates or deletes VolumeAttachments
//! (theirs), or decides which node may attach (the driver does: its refusal is the
//! attachError).

use std::collections::{BTreeMap, HashMap, HashSet};

use cstor_api::names::CSI_DRIVER_NAME;
use cstor_controller::action::{Action, Kind};
use cstor_controller::world::{deleting, name, World};
use cstor_csi::pb::controller_client::ControllerClient;
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_csi::pb::{
    ControllerGetCapabilitiesRequest, ControllerPublishVolumeRequest,
    ControllerUnpublishVolumeRequest, ListVolumesRequest, VolumeCapability,
};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

use crate::leader::Part;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeSpec};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use serde_json::{json, Value};

/// The VA annotation where the node id used for the attach is kept (for a detach after
/// the node's CSINode is gone).
pub const NODE_ID_ANNOTATION: &str = "csi.alpha.kubernetes.io/node-id";
/// The filesystem of a mount capability whose PV names none (`--default-fstype`).
const DEFAULT_FSTYPE: &str = "ext4";

/// The finalizer the external-attacher puts on VolumeAttachments and PVs of `driver`:
/// `external-attacher/` and the name with every character but `[a-zA-Z0-9-]` made `-`
/// (and an `X` after a trailing `-`).
pub fn finalizer_name(driver: &str) -> String {
    format!("external-attacher/{}", crate::sanitize_name(driver))
}

/// Where a Secret is (a PV's `*SecretRef`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// An attach to carry out: the writes before the call, then the call.
#[derive(Clone, Debug)]
pub struct Attach {
    /// The VolumeAttachment.
    pub va: VolumeAttachment,
    /// Finalizers and the node id annotation, written before the call.
    pub before: Vec<Action>,
    /// The request (without `secrets`, read when the call is made).
    pub request: ControllerPublishVolumeRequest,
    /// The PV's controllerPublishSecretRef.
    pub secret: Option<SecretRef>,
    /// A refresh of an attached VA's `attachmentMetadata` ([`to_refresh`]): a failure
    /// is not an attach error, and an unchanged answer writes nothing.
    pub refresh: bool,
}

/// A detach to carry out.
#[derive(Clone, Debug)]
pub struct Detach {
    /// The VolumeAttachment.
    pub va: VolumeAttachment,
    /// The request (without `secrets`).
    pub request: ControllerUnpublishVolumeRequest,
    /// The PV's controllerPublishSecretRef.
    pub secret: Option<SecretRef>,
}

/// What one pass asks for.
#[derive(Debug, Default)]
pub struct Plan {
    /// ControllerPublishVolume calls, keyed by VA name.
    pub attaches: Vec<Attach>,
    /// ControllerUnpublishVolume calls, keyed by VA name.
    pub detaches: Vec<Detach>,
    /// VAs that cannot be attached (or detached) yet, and why: the error is recorded and
    /// retried with backoff like a failed call. (VA, detaching, message)
    pub refused: Vec<(VolumeAttachment, bool, String)>,
    /// Writes needing no call (PV finalizers off).
    pub actions: Vec<Action>,
}

fn has_finalizer(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    let f = finalizer_name(CSI_DRIVER_NAME);
    meta.finalizers.iter().flatten().any(|x| *x == f)
}

fn with_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<String> {
    let mut f: Vec<String> = meta.finalizers.clone().unwrap_or_default();
    f.push(finalizer_name(CSI_DRIVER_NAME));
    f
}

fn without_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<String> {
    let ours = finalizer_name(CSI_DRIVER_NAME);
    meta.finalizers
        .iter()
        .flatten()
        .filter(|f| **f != ours)
        .cloned()
        .collect()
}

/// The node id of `node` for this driver: its CSINode's entry; for a detach (`va`
/// given) the id recorded on the VolumeAttachment when the CSINode or its entry is gone.
pub fn node_id(
    csinodes: &[CSINode],
    node: &str,
    va: Option<&VolumeAttachment>,
) -> Result<String, String> {
    let err = match csinodes.iter().find(|c| name(&c.metadata) == node) {
        Some(c) => match c.spec.drivers.iter().find(|d| d.name == CSI_DRIVER_NAME) {
            Some(d) => return Ok(d.node_id.clone()),
            None => format!("CSINode {node} does not contain driver {CSI_DRIVER_NAME}"),
        },
        None => format!("csinode.storage.k8s.io \"{node}\" not found"),
    };
    va.and_then(|v| v.metadata.annotations.as_ref()?.get(NODE_ID_ANNOTATION))
        .cloned()
        .ok_or(err)
}

/// The capability a PV is attached with, as the external-attacher builds it for a
/// driver without SINGLE_NODE_MULTI_WRITER: block for `volumeMode: Block`, else a mount
/// of the PV's fsType (ext4 when none) with its mountOptions; the access mode from the
/// PV's access modes.
pub fn capability(spec: &PersistentVolumeSpec) -> Result<VolumeCapability, String> {
    let modes = spec.access_modes.clone().unwrap_or_default();
    let has = |m: &str| modes.iter().any(|x| x == m);
    let distinct = {
        let mut d = modes.clone();
        d.sort();
        d.dedup();
        d.len()
    };
    let mode = if has("ReadWriteOncePod") {
        if distinct > 1 {
            return Err("Kubernetes does not support use of ReadWriteOncePod with other access modes on the same PersistentVolume".into());
        }
        Mode::SingleNodeWriter
    } else if has("ReadWriteMany") {
        Mode::MultiNodeMultiWriter
    } else if has("ReadOnlyMany") && has("ReadWriteOnce") {
        return Err(
            "CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume"
                .into(),
        );
    } else if has("ReadOnlyMany") {
        Mode::MultiNodeReaderOnly
    } else if has("ReadWriteOnce") {
        Mode::SingleNodeWriter
    } else {
        return Err(format!("unsupported AccessMode combination: {modes:?}"));
    };
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        let fs = spec.csi.as_ref().and_then(|c| c.fs_type.clone());
        AccessType::Mount(MountVolume {
            fs_type: fs
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| DEFAULT_FSTYPE.to_owned()),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    Ok(VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

/// The PV a VA names, or why it cannot be used.
fn pv_of<'a>(world: &'a World, va: &VolumeAttachment) -> Result<&'a PersistentVolume, String> {
    match &va.spec.source.persistent_volume_name {
        Some(pv) => world
            .pv(pv)
            .ok_or_else(|| format!("persistentvolume \"{pv}\" not found")),
        None => {
            Err("inline volumes are not supported: no PersistentVolumeName in VA source".into())
        }
    }
}

fn secret_ref(r: Option<&k8s_openapi::api::core::v1::SecretReference>) -> Option<SecretRef> {
    let r = r?;
    Some(SecretRef {
        namespace: r.namespace.clone().unwrap_or_default(),
        name: r.name.clone()?,
    })
}

/// The reconcile: the VAs (by name) whose `status.attached` is not what the driver's
/// `published` (volume id -> node ids, from ListVolumes) says for their node. A VA whose
/// node id or volume cannot be found is left to the normal pass, as the
/// external-attacher leaves it.
pub fn out_of_sync(
    vas: &[VolumeAttachment],
    csinodes: &[CSINode],
    world: &World,
    published: &HashMap<String, Vec<String>>,
) -> HashSet<String> {
    vas.iter()
        .filter(|v| v.spec.attacher == CSI_DRIVER_NAME)
        .filter_map(|va| {
            let node = node_id(csinodes, &va.spec.node_name, Some(va)).ok()?;
            let pv = pv_of(world, va).ok()?;
            let handle = &pv.spec.as_ref()?.csi.as_ref()?.volume_handle;
            let found = published.get(handle).is_some_and(|n| n.contains(&node));
            let attached = va.status.as_ref().is_some_and(|s| s.attached);
            (attached != found).then(|| name(&va.metadata).to_owned())
        })
        .collect()
}

/// The VAs (by name) whose publish context is asked for again at a reconcile: the
/// attached ones of this driver not being deleted and not in `force` (out of sync). The
/// driver's answer for a volume published already can change while it stays attached (a
/// target moved to another node's portal, docs/controller.md "Target move"), and a node
/// stages with the VA's `attachmentMetadata`, so it must follow. The external-attacher
/// writes it only at attach; a re-publish of an attached volume is idempotent (CSI spec).
pub fn to_refresh(vas: &[VolumeAttachment], force: &HashSet<String>) -> HashSet<String> {
    vas.iter()
        .filter(|v| v.spec.attacher == CSI_DRIVER_NAME && !deleting(&v.metadata))
        .filter(|v| v.status.as_ref().is_some_and(|s| s.attached))
        .map(|v| name(&v.metadata).to_owned())
        .filter(|n| !force.contains(n))
        .collect()
}

/// One pass over the VolumeAttachments, CSINodes and PVs; `force` names the VAs the
/// reconcile found out of sync (or whose publish context is refreshed).
pub fn plan(
    vas: &[VolumeAttachment],
    csinodes: &[CSINode],
    world: &World,
    force: &HashSet<String>,
) -> Plan {
    let mut out = Plan::default();
    for va in vas.iter().filter(|v| v.spec.attacher == CSI_DRIVER_NAME) {
        let forced = force.contains(name(&va.metadata));
        if deleting(&va.metadata) {
            if !has_finalizer(&va.metadata) && !forced {
                continue; // detached already (or never attached by us)
            }
            match detach_request(world, csinodes, va) {
                Ok(d) => out.detaches.push(d),
                Err(why) => out.refused.push((va.clone(), true, why)),
            }
            continue;
        }
        if va.status.as_ref().is_some_and(|s| s.attached) && !forced {
            continue;
        }
        match attach_request(world, csinodes, va) {
            Ok(a) => out.attaches.push(a),
            Err(why) => out.refused.push((va.clone(), false, why)),
        }
    }
    for pv in &world.pvs {
        if deleting(&pv.metadata)
            && has_finalizer(&pv.metadata)
            && !vas.iter().any(|v| {
                v.spec.source.persistent_volume_name.as_deref() == Some(name(&pv.metadata))
            })
        {
            out.actions.push(Action::patch(
                Kind::Pv,
                None,
                name(&pv.metadata),
                json!({"metadata": {"finalizers": without_finalizer(&pv.metadata),
                                    "resourceVersion": pv.metadata.resource_version}}),
            ));
        }
    }
    out
}

fn attach_request(
    world: &World,
    csinodes: &[CSINode],
    va: &VolumeAttachment,
) -> Result<Attach, String> {
    let pv = pv_of(world, va)?;
    if deleting(&pv.metadata) {
        return Err(format!(
            "PersistentVolume \"{}\" is marked for deletion",
            name(&pv.metadata)
        ));
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let csi = spec
        .csi
        .as_ref()
        .ok_or("pv spec contained non-csi source that was not migrated")?;
    let cap = capability(&spec)?;
    let node = node_id(csinodes, &va.spec.node_name, None)?;
    let mut before = Vec::new();
    if !has_finalizer(&pv.metadata) {
        before.push(Action::patch(
            Kind::Pv,
            None,
            name(&pv.metadata),
            json!({"metadata": {"finalizers": with_finalizer(&pv.metadata),
                                "resourceVersion": pv.metadata.resource_version}}),
        ));
    }
    let recorded = va
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ID_ANNOTATION));
    if !has_finalizer(&va.metadata) || recorded != Some(&node) {
        let mut meta = json!({"annotations": {NODE_ID_ANNOTATION: node},
                              "resourceVersion": va.metadata.resource_version});
        if !has_finalizer(&va.metadata) {
            meta["finalizers"] = json!(with_finalizer(&va.metadata));
        }
        before.push(Action::patch(
            Kind::Va,
            None,
            name(&va.metadata),
            json!({ "metadata": meta }),
        ));
    }
    Ok(Attach {
        va: va.clone(),
        before,
        request: ControllerPublishVolumeRequest {
            volume_id: csi.volume_handle.clone(),
            node_id: node,
            volume_capability: Some(cap),
            // The driver has PUBLISH_READONLY: the PV's own flag.
            readonly: csi.read_only.unwrap_or(false),
            volume_context: csi
                .volume_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..Default::default()
        },
        secret: secret_ref(csi.controller_publish_secret_ref.as_ref()),
        refresh: false,
    })
}

fn detach_request(
    world: &World,
    csinodes: &[CSINode],
    va: &VolumeAttachment,
) -> Result<Detach, String> {
    let pv = pv_of(world, va)?;
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .ok_or("pv spec contained non-csi source that was not migrated")?;
    let node = node_id(csinodes, &va.spec.node_name, Some(va))?;
    Ok(Detach {
        va: va.clone(),
        request: ControllerUnpublishVolumeRequest {
            volume_id: csi.volume_handle.clone(),
            node_id: node,
            ..Default::default()
        },
        secret: secret_ref(csi.controller_publish_secret_ref.as_ref()),
    })
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The status write of a failed attach (`detach: false`) or detach.
pub fn failed(va: &VolumeAttachment, detach: bool, message: &str) -> Action {
    let field = if detach { "detachError" } else { "attachError" };
    Action::patch_status(
        Kind::Va,
        None,
        name(&va.metadata),
        json!({"status": {field: {"time": now(), "message": message}}}),
    )
}

/// The writes after ControllerPublishVolume answered.
pub fn attached(a: &Attach, answer: Result<HashMap<String, String>, tonic::Status>) -> Vec<Action> {
    let context = match answer {
        Ok(c) => c,
        Err(s) if a.refresh => {
            // Still attached as before; the next reconcile asks again.
            tracing::warn!(
                "VolumeAttachment {}: refreshing its publish context: {}",
                name(&a.va.metadata),
                crate::rpc_error(&s)
            );
            return Vec::new();
        }
        Err(s) => return vec![failed(&a.va, false, &crate::rpc_error(&s))],
    };
    let st = a.va.status.as_ref();
    let same = st.is_some_and(|s| {
        s.attached
            && s.attach_error.is_none()
            && s.attachment_metadata.clone().unwrap_or_default()
                == context
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<String, String>>()
    });
    if a.refresh && same {
        return Vec::new();
    }
    if a.refresh {
        tracing::info!(
            "VolumeAttachment {}: publish context changed: {context:?}",
            name(&a.va.metadata)
        );
    }
    // A merge patch keeps keys it does not name: stale ones are named with null.
    let mut metadata: BTreeMap<String, Value> =
        context.into_iter().map(|(k, v)| (k, json!(v))).collect();
    for k in
        a.va.status
            .as_ref()
            .and_then(|s| s.attachment_metadata.as_ref())
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
    {
        metadata.entry(k.clone()).or_insert(Value::Null);
    }
    vec![Action::patch_status(
        Kind::Va,
        None,
        name(&a.va.metadata),
        json!({"status": {"attached": true, "attachmentMetadata": metadata, "attachError": null}}),
    )]
}

/// The writes after ControllerUnpublishVolume answered: `attached: false`, then the
/// finalizer off (after the status, so the object is not gone before it is written).
pub fn detached(d: &Detach, answer: Result<(), tonic::Status>) -> Vec<Action> {
    if let Err(s) = answer {
        return vec![failed(&d.va, true, &crate::rpc_error(&s))];
    }
    let va = name(&d.va.metadata);
    vec![
        Action::patch_status(
            Kind::Va,
            None,
            va,
            json!({"status": {"attached": false, "detachError": null, "attachmentMetadata": null}}),
        ),
        Action::patch(
            Kind::Va,
            None,
            va,
            json!({"metadata": {"finalizers": without_finalizer(&d.va.metadata)}}),
        ),
    ]
}

/// The Secret's data as CSI `secrets` (values as UTF-8 text, as the sidecars pass them).
async fn secrets(
    client: &kube::Client,
    r: Option<&SecretRef>,
) -> Result<HashMap<String, String>, String> {
    let Some(r) = r else {
        return Ok(HashMap::new());
    };
    crate::secret_data(client, &r.namespace, &r.name)
        .await
        .map_err(|e| format!("failed to load secret \"{}/{}\": {e}", r.namespace, r.name))
}

impl crate::Runner {
    /// The attacher's part of a pass: lists VolumeAttachments and CSINodes, starts the
    /// calls that are due.
    pub(crate) async fn attach_pass(
        &mut self,
        world: &World,
        wanted: &mut std::collections::HashSet<String>,
    ) -> Result<(), crate::Error> {
        let vas = crate::list::<VolumeAttachment>(&self.client, "volumeattachments").await?;
        let csinodes = crate::list::<CSINode>(&self.client, "csinodes").await?;
        let (force, refresh) = match self.published.take() {
            Some(published) => {
                let force = out_of_sync(&vas, &csinodes, world, &published);
                let refresh = to_refresh(&vas, &force);
                (force, refresh)
            }
            None => (HashSet::new(), HashSet::new()),
        };
        for va in &force {
            tracing::warn!("VolumeAttachment {va}: attached status and the driver's ListVolumes disagree; processing it again");
        }
        self.reconcile();
        let again: HashSet<String> = force.union(&refresh).cloned().collect();
        let mut p = plan(&vas, &csinodes, world, &again);
        for a in &mut p.attaches {
            a.refresh = refresh.contains(name(&a.va.metadata));
        }
        self.exec.run(&self.client, p.actions).await;
        for (va, detach, why) in p.refused {
            let key = format!(
                "{}/{}",
                if detach { "detach" } else { "attach" },
                name(&va.metadata)
            );
            self.spawn(key, wanted, Part::Attacher, async move {
                tracing::warn!("VolumeAttachment {}: {why}", name(&va.metadata));
                (false, vec![failed(&va, detach, &why)])
            });
        }
        for a in p.attaches {
            let key = format!("attach/{}", name(&a.va.metadata));
            let (mut csi, timeout, client) =
                (self.csi.clone(), self.config.timeout, self.client.clone());
            self.spawn(key, wanted, Part::Attacher, async move {
                if cstor_controller::exec::Executor::default()
                    .run(&client, a.before.clone())
                    .await
                    > 0
                {
                    let why = "could not save VolumeAttachment (finalizer, node id)";
                    return (false, vec![failed(&a.va, false, why)]);
                }
                let mut req = a.request.clone();
                req.secrets = match secrets(&client, a.secret.as_ref()).await {
                    Ok(s) => s,
                    Err(why) => return (false, vec![failed(&a.va, false, &why)]),
                };
                let answer = crate::bounded(timeout, csi.controller_publish_volume(req))
                    .await
                    .map(|r| r.publish_context);
                (answer.is_ok(), attached(&a, answer))
            });
        }
        for d in p.detaches {
            let key = format!("detach/{}", name(&d.va.metadata));
            let (mut csi, timeout, client) =
                (self.csi.clone(), self.config.timeout, self.client.clone());
            self.spawn(key, wanted, Part::Attacher, async move {
                let mut req = d.request.clone();
                req.secrets = match secrets(&client, d.secret.as_ref()).await {
                    Ok(s) => s,
                    Err(why) => return (false, vec![failed(&d.va, true, &why)]),
                };
                let answer = crate::bounded(timeout, csi.controller_unpublish_volume(req))
                    .await
                    .map(|_| ());
                (answer.is_ok(), detached(&d, answer))
            });
        }
        Ok(())
    }

    /// Starts the reconcile's ListVolumes when `--reconcile-sync` has passed since the
    /// last; its answer comes back as a [`crate::Done`] the next pass uses.
    fn reconcile(&mut self) {
        let key = "reconcile".to_owned();
        if self
            .reconciled
            .is_some_and(|at| at.elapsed() < self.config.reconcile_sync)
            || !self.calls.due(&key, Instant::now())
        {
            return;
        }
        self.reconciled = Some(Instant::now());
        self.calls.start(&key);
        let (mut csi, timeout, tx) = (self.csi.clone(), self.config.timeout, self.tx.clone());
        tokio::spawn(async move {
            let answer = published(&mut csi, timeout).await;
            if let Err(s) = &answer {
                tracing::warn!("reconcile: ListVolumes: {}", crate::rpc_error(s));
            }
            let _ = tx.send(crate::Done {
                key,
                part: Part::Attacher,
                ok: answer.is_ok(),
                actions: Vec::new(),
                published: answer.ok().flatten(),
            });
        });
    }
}

/// Every volume's published nodes from ListVolumes (all pages); None when the driver
/// does not report them (no LIST_VOLUMES_PUBLISHED_NODES: no reconcile, as upstream).
async fn published(
    csi: &mut ControllerClient<Channel>,
    timeout: Duration,
) -> Result<Option<HashMap<String, Vec<String>>>, tonic::Status> {
    use cstor_csi::pb::controller_service_capability::{rpc, Type};
    let caps = crate::bounded(
        timeout,
        csi.controller_get_capabilities(ControllerGetCapabilitiesRequest {}),
    )
    .await?;
    let has = |want: rpc::Type| {
        caps.capabilities
            .iter()
            .any(|c| matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == want as i32))
    };
    if !has(rpc::Type::ListVolumes) || !has(rpc::Type::ListVolumesPublishedNodes) {
        return Ok(None);
    }
    let mut out = HashMap::new();
    let mut token = String::new();
    loop {
        let page = crate::bounded(
            timeout,
            csi.list_volumes(ListVolumesRequest {
                max_entries: 0,
                starting_token: token,
            }),
        )
        .await?;
        for e in page.entries {
            if let (Some(v), Some(st)) = (e.volume, e.status) {
                out.insert(v.volume_id, st.published_node_ids);
            }
        }
        if page.next_token.is_empty() {
            return Ok(Some(out));
        }
        token = page.next_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn from<T: DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    const FIN: &str = "external-attacher/cstor-csi-openebs-io";

    fn va(attacher: &str) -> Value {
        json!({"metadata": {"name": "csi-1", "resourceVersion": "3"},
               "spec": {"attacher": attacher, "nodeName": "node-1",
                        "source": {"persistentVolumeName": "pvc-u1"}}})
    }

    fn pv() -> Value {
        json!({"metadata": {"name": "pvc-u1", "resourceVersion": "5",
                            "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"]},
               "spec": {"accessModes": ["ReadWriteOnce"], "mountOptions": ["noatime"],
                        "csi": {"driver": CSI_DRIVER_NAME, "volumeHandle": "pvc-u1", "readOnly": true,
                                "fsType": "xfs", "volumeAttributes": {"a": "b"},
                                "controllerPublishSecretRef": {"name": "chap", "namespace": "db"}}}})
    }

    fn csinode(driver: &str) -> CSINode {
        from(json!({"metadata": {"name": "node-1"},
                    "spec": {"drivers": [{"name": driver, "nodeID": "id-of-node-1"}]}}))
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    fn world(pv: Value) -> World {
        World {
            pvs: vec![from(pv)],
            ..World::default()
        }
    }

    fn status_patch(a: &Action) -> &Value {
        match a {
            Action::Patch {
                kind: Kind::Va,
                status: true,
                patch,
                ..
            } => patch,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_finalizer_is_the_sanitized_driver_name() {
        assert_eq!(finalizer_name(CSI_DRIVER_NAME), FIN);
        assert_eq!(finalizer_name("a.b/"), "external-attacher/a-b-X");
    }

    #[test]
    fn an_attach_takes_the_finalizers_and_the_csinode_id_then_publishes_as_the_pv_says() {
        let w = world(pv());
        // Another driver's VolumeAttachment is not ours.
        let p = plan(
            &[from(va("other.csi"))],
            &[csinode(CSI_DRIVER_NAME)],
            &w,
            &none(),
        );
        assert!(p.attaches.is_empty() && p.refused.is_empty());
        let p = plan(
            &[from(va(CSI_DRIVER_NAME))],
            &[csinode(CSI_DRIVER_NAME)],
            &w,
            &none(),
        );
        assert_eq!(p.attaches.len(), 1, "{p:?}");
        let a = &p.attaches[0];
        let r = &a.request;
        assert_eq!(
            (r.volume_id.as_str(), r.node_id.as_str()),
            ("pvc-u1", "id-of-node-1")
        );
        assert!(r.readonly, "readonly comes from the PV");
        assert_eq!(r.volume_context["a"], "b");
        let cap = r.volume_capability.as_ref().unwrap();
        assert_eq!(
            cap.access_mode.as_ref().unwrap().mode,
            Mode::SingleNodeWriter as i32
        );
        assert!(matches!(&cap.access_type, Some(AccessType::Mount(m))
            if m.fs_type == "xfs" && m.mount_flags == ["noatime"]));
        assert_eq!(
            a.secret,
            Some(SecretRef {
                namespace: "db".into(),
                name: "chap".into()
            })
        );
        // Before the call: the PV's finalizer (its own kept), then the VA's and the id.
        match &a.before[..] {
            [Action::Patch {
                kind: Kind::Pv,
                patch: pv,
                ..
            }, Action::Patch {
                kind: Kind::Va,
                patch: v,
                status: false,
                ..
            }] => {
                assert_eq!(
                    pv["metadata"]["finalizers"],
                    json!(["external-provisioner.volume.kubernetes.io/finalizer", FIN])
                );
                assert_eq!(pv["metadata"]["resourceVersion"], "5");
                assert_eq!(v["metadata"]["finalizers"], json!([FIN]));
                assert_eq!(
                    v["metadata"]["annotations"][NODE_ID_ANNOTATION],
                    "id-of-node-1"
                );
            }
            other => panic!("{other:?}"),
        }
        // Success: attached with the publish context; a stale key is removed.
        let mut done = a.clone();
        done.va.status = Some(from(json!({"attached": false,
                                           "attachmentMetadata": {"old": "x"}})));
        let ctx: HashMap<String, String> = [("iqn".to_owned(), "iqn.x".to_owned())].into();
        let w = attached(&done, Ok(ctx));
        let s = &status_patch(&w[0])["status"];
        assert_eq!(s["attached"], true);
        assert_eq!(
            s["attachmentMetadata"],
            json!({"iqn": "iqn.x", "old": null})
        );
        assert!(s["attachError"].is_null());
        // A refusal is the attachError, in the sidecar's words.
        let w = attached(
            a,
            Err(tonic::Status::failed_precondition(
                "volume pvc-u1 is published to node node-2",
            )),
        );
        let e = &status_patch(&w[0])["status"]["attachError"];
        assert_eq!(
            e["message"],
            "rpc error: code = FailedPrecondition desc = volume pvc-u1 is published to node node-2"
        );
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn no_node_id_no_pv_or_a_deleted_pv_is_an_attach_error_and_attached_vas_are_left_alone() {
        let w = world(pv());
        let v: VolumeAttachment = from(va(CSI_DRIVER_NAME));
        let p = plan(std::slice::from_ref(&v), &[], &w, &none());
        assert!(p.attaches.is_empty());
        assert_eq!(
            p.refused[0].2,
            "csinode.storage.k8s.io \"node-1\" not found"
        );
        let p = plan(
            std::slice::from_ref(&v),
            &[csinode("other.csi")],
            &w,
            &none(),
        );
        assert!(p.refused[0]
            .2
            .contains("does not contain driver cstor.csi.openebs.io"));
        let p = plan(
            std::slice::from_ref(&v),
            &[csinode(CSI_DRIVER_NAME)],
            &World::default(),
            &none(),
        );
        assert!(p.refused[0].2.contains("not found"), "{p:?}");
        let mut gone = pv();
        gone["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
        let p = plan(
            std::slice::from_ref(&v),
            &[csinode(CSI_DRIVER_NAME)],
            &world(gone),
            &none(),
        );
        assert!(p.refused[0].2.contains("marked for deletion"));
        assert!(!p.refused[0].1, "an attach error, not a detach error");
        let mut done = va(CSI_DRIVER_NAME);
        done["status"] = json!({"attached": true});
        let p = plan(&[from(done)], &[csinode(CSI_DRIVER_NAME)], &w, &none());
        assert!(p.attaches.is_empty() && p.refused.is_empty() && p.actions.is_empty());
    }

    #[test]
    fn a_deleted_va_is_unpublished_then_its_finalizer_goes_and_the_pv_follows() {
        let mut v = va(CSI_DRIVER_NAME);
        v["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
        v["metadata"]["finalizers"] = json!([FIN, "other/keep"]);
        v["metadata"]["annotations"] = json!({NODE_ID_ANNOTATION: "recorded-id"});
        v["status"] = json!({"attached": true});
        let mut pv = pv();
        pv["metadata"]["finalizers"] = json!([FIN]);
        pv["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
        let w = world(pv);
        // The CSINode is gone (node down): the id recorded at the attach.
        let vas = [from::<VolumeAttachment>(v.clone())];
        let p = plan(&vas, &[], &w, &none());
        assert_eq!(p.detaches.len(), 1);
        let d = &p.detaches[0];
        assert_eq!(d.request.node_id, "recorded-id");
        assert_eq!(d.request.volume_id, "pvc-u1");
        assert!(d.secret.is_some());
        // The PV keeps its finalizer while a VA names it.
        assert!(p.actions.is_empty());
        let w2 = detached(d, Ok(()));
        assert_eq!(status_patch(&w2[0])["status"]["attached"], false);
        assert!(
            matches!(&w2[1], Action::Patch { kind: Kind::Va, status: false, patch, .. }
            if patch["metadata"]["finalizers"] == json!(["other/keep"]))
        );
        let w3 = detached(d, Err(tonic::Status::unavailable("down")));
        assert!(status_patch(&w3[0])["status"]["detachError"]["message"]
            .as_str()
            .unwrap()
            .contains("code = Unavailable"));
        // Gone: the PV's finalizer comes off.
        let p = plan(&[], &[], &w, &none());
        assert!(
            matches!(&p.actions[..], [Action::Patch { kind: Kind::Pv, patch, .. }]
            if patch["metadata"]["finalizers"] == json!([]))
        );
        // Deleted without our finalizer: detached already, nothing to do.
        v["metadata"]["finalizers"] = json!(["other/keep"]);
        let p = plan(&[from(v)], &[], &w, &none());
        assert!(p.detaches.is_empty() && p.refused.is_empty());
    }

    #[test]
    fn the_reconcile_processes_again_a_va_whose_status_disagrees_with_list_volumes() {
        let w = world(pv());
        let nodes = [csinode(CSI_DRIVER_NAME)];
        let mut attached = va(CSI_DRIVER_NAME);
        attached["metadata"]["finalizers"] = json!([FIN]);
        attached["metadata"]["annotations"] = json!({NODE_ID_ANNOTATION: "id-of-node-1"});
        attached["status"] = json!({"attached": true});
        let vas = [from::<VolumeAttachment>(attached.clone())];
        let published = |on: &[&str]| {
            HashMap::from([(
                "pvc-u1".to_owned(),
                on.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )])
        };
        assert!(out_of_sync(&vas, &nodes, &w, &published(&["id-of-node-1"])).is_empty());
        // Its publish record lost, or naming another node: published again.
        let force = out_of_sync(&vas, &nodes, &w, &published(&[]));
        assert_eq!(force, HashSet::from(["csi-1".to_owned()]));
        assert_eq!(out_of_sync(&vas, &nodes, &w, &published(&["other"])), force);
        assert!(plan(&vas, &nodes, &w, &none()).attaches.is_empty());
        let p = plan(&vas, &nodes, &w, &force);
        assert_eq!(p.attaches.len(), 1, "{p:?}");
        assert_eq!(p.attaches[0].request.node_id, "id-of-node-1");
        assert!(
            !p.attaches[0]
                .before
                .iter()
                .any(|a| matches!(a, Action::Patch { kind: Kind::Va, .. })),
            "its finalizer and node id are there already"
        );
        // Deleted, detached by its status and without our finalizer, yet still
        // published (its CSINode gone: the recorded id): unpublished.
        let mut gone = attached;
        gone["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
        gone["metadata"]["finalizers"] = json!(["other/keep"]);
        gone["status"] = json!({"attached": false});
        let gone = [from::<VolumeAttachment>(gone)];
        let force = out_of_sync(&gone, &[], &w, &published(&["id-of-node-1"]));
        assert_eq!(force.len(), 1);
        assert!(plan(&gone, &[], &w, &none()).detaches.is_empty());
        let p = plan(&gone, &[], &w, &force);
        assert_eq!(p.detaches[0].request.node_id, "id-of-node-1");
        // Another driver's VA, or one whose PV is gone, is not the reconcile's.
        let other = [from::<VolumeAttachment>(va("other.csi"))];
        assert!(out_of_sync(&other, &nodes, &w, &published(&["id-of-node-1"])).is_empty());
        assert!(out_of_sync(&vas, &nodes, &World::default(), &HashMap::new()).is_empty());
    }

    #[test]
    fn capabilities_follow_the_attachers_table_for_a_driver_without_single_node_multi_writer() {
        let spec = |modes: Value, block: bool| -> PersistentVolumeSpec {
            let mut s = json!({"accessModes": modes, "csi": {"driver": "d", "volumeHandle": "v"}});
            if block {
                s["volumeMode"] = json!("Block");
            }
            from(s)
        };
        let mode = |c: &VolumeCapability| c.access_mode.as_ref().unwrap().mode;
        let c = capability(&spec(json!(["ReadWriteOncePod"]), false)).unwrap();
        assert_eq!(mode(&c), Mode::SingleNodeWriter as i32);
        assert!(matches!(&c.access_type, Some(AccessType::Mount(m)) if m.fs_type == "ext4"));
        let c = capability(&spec(json!(["ReadOnlyMany"]), true)).unwrap();
        assert_eq!(mode(&c), Mode::MultiNodeReaderOnly as i32);
        assert!(matches!(c.access_type, Some(AccessType::Block(_))));
        let c = capability(&spec(json!(["ReadWriteMany", "ReadWriteOnce"]), false)).unwrap();
        assert_eq!(mode(&c), Mode::MultiNodeMultiWriter as i32);
        assert!(capability(&spec(json!(["ReadOnlyMany", "ReadWriteOnce"]), false)).is_err());
        assert!(capability(&spec(json!(["ReadWriteOncePod", "ReadWriteOnce"]), false)).is_err());
        assert!(capability(&spec(json!([]), false)).is_err());
    }

    #[test]
    fn a_reconcile_refreshes_the_publish_context_of_an_attached_va_when_it_changed() {
        let w = world(pv());
        let nodes = [csinode(CSI_DRIVER_NAME)];
        let mut v = va(CSI_DRIVER_NAME);
        v["metadata"]["finalizers"] = json!([FIN]);
        v["metadata"]["annotations"] = json!({NODE_ID_ANNOTATION: "id-of-node-1"});
        v["status"] = json!({"attached": true,
                             "attachmentMetadata": {"portal": "127.0.0.2:3260", "iqn": "q"}});
        let vas = [from::<VolumeAttachment>(v.clone())];
        // Out of sync ones are processed as new, not refreshed; deleted ones never.
        let out = HashSet::from(["csi-1".to_owned()]);
        assert!(to_refresh(&vas, &out).is_empty());
        let refresh = to_refresh(&vas, &none());
        assert_eq!(refresh, out);
        let mut deleted = v.clone();
        deleted["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
        assert!(to_refresh(&[from(deleted)], &none()).is_empty());
        let mut p = plan(&vas, &nodes, &w, &refresh);
        assert_eq!(p.attaches.len(), 1);
        p.attaches[0].refresh = true;
        let a = &p.attaches[0];
        let ctx = |portal: &str| {
            HashMap::from([
                ("portal".to_owned(), portal.to_owned()),
                ("iqn".to_owned(), "q".to_owned()),
            ])
        };
        // The target moved: the new portal is written.
        let w1 = attached(a, Ok(ctx("127.0.0.3:3260")));
        assert_eq!(
            status_patch(&w1[0])["status"]["attachmentMetadata"]["portal"],
            "127.0.0.3:3260"
        );
        // Unchanged: nothing written; a failed refresh is no attach error.
        assert!(attached(a, Ok(ctx("127.0.0.2:3260"))).is_empty());
        assert!(attached(a, Err(tonic::Status::unavailable("down"))).is_empty());
    }
}
