//! The provisioner: what kubernetes-csi/external-provisioner decides, as pure functions of
//! a [`World`]. A claim is ours when its StorageClass's provisioner is
//! `cstor.csi.openebs.io` and the PV controller has named us in
//! `volume.kubernetes.io/storage-provisioner` (it does so only once a
//! `WaitForFirstConsumer` claim has a selected node); it gets CreateVolume
//! `pvc-<claim uid>` and, on success, a PersistentVolume pre-bound to it, which the PV
//! controller binds. A released PV we made, reclaim policy Delete, gets DeleteVolume and
//! then goes (our finalizer off, the object deleted); Retain keeps it.
//!
//! The request is the external-provisioner's: the class's parameters without the
//! `csi.storage.k8s.io/` keys, plus the claim and PV names as it passes them with
//! `--extra-create-metadata`; the capacity range from the claim's request (and limit);
//! one capability per access mode (block for `volumeMode: Block`, else a mount of the
//! class's `csi.storage.k8s.io/fstype`, default ext4, with its mountOptions); the content
//! source from a dataSource VolumeSnapshot (its content's snapshotHandle) or claim (its
//! volume's handle); accessibility requirements from the selected node or the class's
//! allowedTopologies.
//!
//! The class's `csi.storage.k8s.io/controller-publish-secret-name`/`-namespace` and
//! `node-stage-secret-name`/`-namespace` become the PV's `controllerPublishSecretRef` and
//! `nodeStageSecretRef`, their templates resolved as the external-provisioner does
//! (`${pv.name}`, `${pvc.namespace}`, and in names also `${pvc.name}` and
//! `${pvc.annotations['KEY']}`); a malformed pair fails the provisioning before any call.
//!
//! Invariants: never two PVs for one claim (the PV's name is the volume's, and a claim
//! whose PV exists is skipped); a PV is only deleted after DeleteVolume succeeded.

use std::collections::HashMap;

use cstor_api::names::{value, CSI_DRIVER_NAME};
use cstor_api::quantity::{format_bytes, quantity_bytes};
use cstor_controller::action::{regarding, Action, Kind};
use cstor_controller::world::{annotation_of, deleting, jstr, name, storage_bytes, World};
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_csi::pb::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use cstor_csi::pb::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, Topology, TopologyRequirement, Volume,
    VolumeCapability, VolumeContentSource,
};
use cstor_csi::request::dns_label;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{json, Value};

pub use cstor_controller::provision::PROVISIONED_BY;

/// The finalizer the external-provisioner puts on PVs it made with reclaim policy Delete,
/// so the volume is deleted before the object.
pub const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// The PV controller's annotation naming the provisioner of a claim.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// Its beta spelling, still set and honoured.
pub const ANN_STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The scheduler's choice for a `WaitForFirstConsumer` claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// PV attribute with the provisioner's identity (the external-provisioner's key).
pub const IDENTITY_ATTRIBUTE: &str = "storage.kubernetes.io/csiProvisionerIdentity";
/// Prefix of the class parameters meant for the sidecars, not the driver.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";
/// The class parameter with the filesystem type.
const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";
/// Filesystem of a mount volume whose class names none (`--default-fstype`).
pub const DEFAULT_FSTYPE: &str = "ext4";

/// Name of the volume (and PV) provisioned for a claim.
pub fn pv_name(pvc: &PersistentVolumeClaim) -> String {
    cstor_controller::provision::pv_name(pvc)
}

/// A CreateVolume for a claim, with what the PV is made from once it succeeds.
#[derive(Clone, Debug)]
pub struct Provision {
    /// The claim.
    pub claim: PersistentVolumeClaim,
    /// Its class.
    pub class: StorageClass,
    /// The request.
    pub request: CreateVolumeRequest,
}

/// A DeleteVolume for a released PV.
#[derive(Clone, Debug)]
pub struct Reclaim {
    /// The PV.
    pub pv: PersistentVolume,
    /// The request.
    pub request: DeleteVolumeRequest,
}

/// What one pass asks for: calls to make and writes needing no call.
#[derive(Debug, Default)]
pub struct Plan {
    /// CreateVolume calls, keyed by claim uid.
    pub provisions: Vec<Provision>,
    /// DeleteVolume calls, keyed by PV name.
    pub reclaims: Vec<Reclaim>,
    /// Writes and events.
    pub actions: Vec<Action>,
}

fn ours<'a>(world: &'a World, pvc: &PersistentVolumeClaim) -> Option<&'a StorageClass> {
    let sc = world.sc(pvc.spec.as_ref()?.storage_class_name.as_deref()?)?;
    (sc.provisioner == CSI_DRIVER_NAME).then_some(sc)
}

/// Whether the PV controller handed the claim to us (the annotation the
/// external-provisioner waits for).
fn handed_to_us(pvc: &PersistentVolumeClaim) -> bool {
    [ANN_STORAGE_PROVISIONER, ANN_STORAGE_PROVISIONER_BETA]
        .iter()
        .any(|a| annotation_of(&pvc.metadata, a) == Some(CSI_DRIVER_NAME))
}

/// Whether `pv` is a volume this provisioner made.
pub fn made_by_us(pv: &PersistentVolume) -> bool {
    annotation_of(&pv.metadata, PROVISIONED_BY) == Some(CSI_DRIVER_NAME)
        && pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .is_some_and(|c| c.driver == CSI_DRIVER_NAME)
}

/// One pass over claims and volumes.
pub fn plan(world: &World) -> Plan {
    let mut out = Plan::default();
    for pvc in &world.pvcs {
        if deleting(&pvc.metadata) || !handed_to_us(pvc) {
            continue;
        }
        let Some(sc) = ours(world, pvc) else { continue };
        let spec = pvc.spec.as_ref();
        if spec
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
        {
            continue; // bound, or asks for a static volume
        }
        if world.pv(&pv_name(pvc)).is_some() {
            continue; // written; the PV controller binds it
        }
        if let Err(why) = secret_refs(pvc, sc) {
            out.actions.push(failed(pvc, sc, &why));
            continue;
        }
        match create_request(world, pvc, sc) {
            Ok(request) => out.provisions.push(Provision {
                claim: pvc.clone(),
                class: sc.clone(),
                request,
            }),
            Err(why) => out.actions.push(failed(pvc, sc, &why)),
        }
    }
    for pv in &world.pvs {
        reclaim(world, pv, &mut out);
    }
    out
}

/// The ProvisioningFailed event, in the external-provisioner's words.
pub fn failed(pvc: &PersistentVolumeClaim, sc: &StorageClass, why: &str) -> Action {
    Action::event(
        regarding(Kind::Pvc, &pvc.metadata),
        true,
        "ProvisioningFailed",
        format!(
            "failed to provision volume with StorageClass \"{}\": {why}",
            name(&sc.metadata)
        ),
    )
}

/// The event when a CreateVolume is sent.
pub fn provisioning(pvc: &PersistentVolumeClaim) -> Action {
    Action::event(
        regarding(Kind::Pvc, &pvc.metadata),
        false,
        "Provisioning",
        format!(
            "External provisioner is provisioning volume for claim \"{}/{}\"",
            pvc.metadata.namespace.as_deref().unwrap_or_default(),
            name(&pvc.metadata)
        ),
    )
}

fn storage(
    list: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> Result<Option<u64>, String> {
    match list.and_then(|l| l.get("storage")) {
        None => Ok(None),
        Some(q) => quantity_bytes(q)
            .map(Some)
            .map_err(|e| format!("storage {:?}: {e}", q.0)),
    }
}

fn i64_of(b: u64) -> i64 {
    i64::try_from(b).unwrap_or(i64::MAX)
}

/// The access mode a claim's mode maps to (the external-provisioner's table for a
/// driver without SINGLE_NODE_MULTI_WRITER).
fn access_mode(mode: &str) -> Result<Mode, String> {
    Ok(match mode {
        "ReadWriteOnce" => Mode::SingleNodeWriter,
        "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        other => return Err(format!("unknown access mode {other:?}")),
    })
}

/// The CreateVolume request for a claim of class `sc`, or why none can be made yet.
pub fn create_request(
    world: &World,
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
) -> Result<CreateVolumeRequest, String> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let volume = pv_name(pvc);
    let params = sc.parameters.clone().unwrap_or_default();
    let mut parameters: HashMap<String, String> = params
        .iter()
        .filter(|(k, _)| !k.starts_with(SIDECAR_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    parameters.insert(
        "csi.storage.k8s.io/pvc/name".into(),
        name(&pvc.metadata).to_owned(),
    );
    parameters.insert(
        "csi.storage.k8s.io/pvc/namespace".into(),
        pvc.metadata.namespace.clone().unwrap_or_default(),
    );
    parameters.insert("csi.storage.k8s.io/pv/name".into(), volume.clone());
    let resources = spec.resources.as_ref();
    let required = storage(resources.and_then(|r| r.requests.as_ref()))?
        .ok_or_else(|| "the claim requests no storage".to_owned())?;
    let limit = storage(resources.and_then(|r| r.limits.as_ref()))?.unwrap_or(0);
    let block = spec.volume_mode.as_deref() == Some("Block");
    let access_type = if block {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: params
                .get(FSTYPE_PARAMETER)
                .cloned()
                .unwrap_or_else(|| DEFAULT_FSTYPE.to_owned()),
            mount_flags: sc.mount_options.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.is_empty() {
        return Err("the claim names no access mode".to_owned());
    }
    let volume_capabilities = modes
        .iter()
        .map(|m| {
            access_mode(m).map(|mode| VolumeCapability {
                access_type: Some(access_type.clone()),
                access_mode: Some(AccessMode { mode: mode as i32 }),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let volume_content_source = content_source(world, pvc, required)?;
    Ok(CreateVolumeRequest {
        name: volume,
        capacity_range: Some(CapacityRange {
            required_bytes: i64_of(required),
            limit_bytes: i64_of(limit),
        }),
        volume_capabilities,
        parameters,
        volume_content_source,
        accessibility_requirements: topology(pvc, sc),
        ..Default::default()
    })
}

fn segment(key: &str, value: &str) -> Topology {
    Topology {
        segments: HashMap::from([(key.to_owned(), value.to_owned())]),
    }
}

/// The accessibility requirements: the selected node (requisite and preferred), else the
/// class's allowedTopologies as requisites; None without either.
fn topology(pvc: &PersistentVolumeClaim, sc: &StorageClass) -> Option<TopologyRequirement> {
    let key = value::TOPOLOGY_NODE_KEY;
    if let Some(node) = annotation_of(&pvc.metadata, ANN_SELECTED_NODE) {
        let t = segment(key, node);
        return Some(TopologyRequirement {
            requisite: vec![t.clone()],
            preferred: vec![t],
        });
    }
    let requisite: Vec<Topology> = sc
        .allowed_topologies
        .iter()
        .flatten()
        .flat_map(|term| term.match_label_expressions.iter().flatten())
        .flat_map(|e| e.values.iter().map(|v| segment(&e.key, v)))
        .collect();
    (!requisite.is_empty()).then(|| TopologyRequirement {
        requisite,
        preferred: Vec::new(),
    })
}

/// The content source of a claim's dataSource (or dataSourceRef): a VolumeSnapshot's
/// content snapshotHandle, or a claim's volume handle; Err while it cannot be used.
fn content_source(
    world: &World,
    pvc: &PersistentVolumeClaim,
    required: u64,
) -> Result<Option<VolumeContentSource>, String> {
    let spec = pvc.spec.as_ref();
    let (kind, group, src) = match (
        spec.and_then(|s| s.data_source.as_ref()),
        spec.and_then(|s| s.data_source_ref.as_ref()),
    ) {
        (Some(d), _) => (d.kind.as_str(), d.api_group.as_deref(), d.name.as_str()),
        (None, Some(r)) => (r.kind.as_str(), r.api_group.as_deref(), r.name.as_str()),
        (None, None) => return Ok(None),
    };
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    match (kind, group.unwrap_or_default()) {
        ("VolumeSnapshot", "snapshot.storage.k8s.io") => {
            let vs = world
                .vss
                .iter()
                .find(|v| {
                    jstr(v, &["metadata", "namespace"]) == Some(ns)
                        && jstr(v, &["metadata", "name"]) == Some(src)
                })
                .ok_or_else(|| format!("error getting snapshot {src} from api server: volumesnapshots.snapshot.storage.k8s.io \"{src}\" not found"))?;
            if vs.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(format!("snapshot {ns}/{src} is being deleted"));
            }
            if vs.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(true) {
                return Err(format!("snapshot {src} is not Ready"));
            }
            let content_name = jstr(vs, &["status", "boundVolumeSnapshotContentName"])
                .ok_or_else(|| format!("snapshot {src} not bound"))?;
            let content = world
                .vscontents
                .iter()
                .find(|c| jstr(c, &["metadata", "name"]) == Some(content_name))
                .ok_or_else(|| format!("error getting snapshotcontent {content_name} for snapshot {ns}/{src} from api server"))?;
            if jstr(content, &["spec", "driver"]) != Some(CSI_DRIVER_NAME) {
                return Err(format!(
                    "VolumeSnapshotContent {content_name} belongs to another driver"
                ));
            }
            let handle = jstr(content, &["status", "snapshotHandle"])
                .ok_or_else(|| format!("snapshot handle {content_name} is not available"))?;
            let restore = content
                .pointer("/status/restoreSize")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if required < restore {
                return Err(format!("requested volume size {required} is less than the size {restore} for the source snapshot {src}"));
            }
            Ok(Some(VolumeContentSource {
                r#type: Some(SourceType::Snapshot(SnapshotSource {
                    snapshot_id: handle.to_owned(),
                })),
            }))
        }
        ("PersistentVolumeClaim", "") => {
            let source = world
                .pvc(ns, src)
                .ok_or_else(|| format!("error getting PVC {ns}/{src} from api server"))?;
            let claim_class = |p: &PersistentVolumeClaim| {
                p.spec.as_ref().and_then(|s| s.storage_class_name.clone())
            };
            if claim_class(source) != claim_class(pvc) {
                return Err(format!(
                    "the source PVC and destination PVCs must be in the same storage class for cloning.  Source is in {:?}, but new PVC is in {:?}",
                    claim_class(source),
                    claim_class(pvc)
                ));
            }
            let bound = source
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty())
                .and_then(|v| world.pv(v))
                .filter(|_| {
                    source.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                })
                .ok_or_else(|| format!("the PVC {src} not bound"))?;
            let have = storage_bytes(source.status.as_ref().and_then(|s| s.capacity.as_ref()));
            if required < have {
                return Err(format!("error, new PVC request must be greater than or equal in size to the specified PVC data source, requested {required} but source is {have}"));
            }
            let handle = bound
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .filter(|c| c.driver == CSI_DRIVER_NAME)
                .map(|c| c.volume_handle.clone())
                .ok_or_else(|| format!("the source PVC {src} is not a volume of this driver"))?;
            Ok(Some(VolumeContentSource {
                r#type: Some(SourceType::Volume(VolumeSource { volume_id: handle })),
            }))
        }
        (k, g) => Err(format!(
            "dataSource {g}/{k} is not supported: only a VolumeSnapshot or a PersistentVolumeClaim"
        )),
    }
}

/// The per-volume Secret parameters of a class, and the PV field each fills.
const SECRET_PARAMS: [(&str, &str); 2] = [
    ("controller-publish", "controllerPublishSecretRef"),
    ("node-stage", "nodeStageSecretRef"),
];

/// Resolves a secret parameter's template for `pvc`: `${pv.name}` and `${pvc.namespace}`
/// anywhere, `${pvc.name}` and `${pvc.annotations['KEY']}` in names only.
fn resolve(template: &str, pvc: &PersistentVolumeClaim, is_name: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            return Err(format!("{template:?}: unclosed ${{"));
        };
        let token = &rest[at + 2..at + end];
        let value = match token {
            "pv.name" => pv_name(pvc),
            "pvc.namespace" => pvc.metadata.namespace.clone().unwrap_or_default(),
            "pvc.name" if is_name => name(&pvc.metadata).to_owned(),
            t if is_name && t.starts_with("pvc.annotations['") && t.ends_with("']") => {
                let key = &t["pvc.annotations['".len()..t.len() - 2];
                annotation_of(&pvc.metadata, key)
                    .unwrap_or_default()
                    .to_owned()
            }
            other => return Err(format!("{template:?}: invalid token ${{{other}}}")),
        };
        out.push_str(&value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The PV secret references a class asks for (field name, reference), resolved for
/// `pvc`; Err when a name comes without its namespace (or the reverse), or a resolved
/// value is no valid name, as the external-provisioner refuses them.
pub fn secret_refs(
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
) -> Result<Vec<(&'static str, crate::attacher::SecretRef)>, String> {
    let params = sc.parameters.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (kind, field) in SECRET_PARAMS {
        let n = params.get(&format!("{SIDECAR_PREFIX}{kind}-secret-name"));
        let ns = params.get(&format!("{SIDECAR_PREFIX}{kind}-secret-namespace"));
        let (n, ns) = match (n, ns) {
            (None, None) => continue,
            (Some(n), Some(ns)) => (n, ns),
            _ => {
                return Err(format!(
                    "{kind} secret: either name or namespace is specified; both must be"
                ))
            }
        };
        let name = resolve(n, pvc, true)?;
        let namespace = resolve(ns, pvc, false)?;
        if name.len() > 253 || !name.split('.').all(dns_label) {
            return Err(format!(
                "{kind} secret name {name:?} is not a valid Secret name"
            ));
        }
        if !dns_label(&namespace) {
            return Err(format!(
                "{kind} secret namespace {namespace:?} is not a valid namespace"
            ));
        }
        out.push((field, crate::attacher::SecretRef { namespace, name }));
    }
    Ok(out)
}

/// The PV for a volume CreateVolume returned for `claim`; `identity` is the
/// provisioner's (recorded in the volume attributes, as the external-provisioner does).
pub fn pv_object(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    volume: &Volume,
    identity: &str,
    requested: u64,
) -> Value {
    let spec = claim.spec.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let policy = class
        .reclaim_policy
        .clone()
        .unwrap_or_else(|| "Delete".to_owned());
    let capacity = u64::try_from(volume.capacity_bytes)
        .ok()
        .filter(|b| *b > 0)
        .unwrap_or(requested);
    let mut attributes: serde_json::Map<String, Value> = volume
        .volume_context
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    attributes.insert(IDENTITY_ATTRIBUTE.to_owned(), json!(identity));
    let mut csi = json!({
        "driver": CSI_DRIVER_NAME,
        "volumeHandle": volume.volume_id,
        "volumeAttributes": attributes,
    });
    for (field, r) in secret_refs(claim, class).unwrap_or_default() {
        csi[field] = json!({"name": r.name, "namespace": r.namespace});
    }
    if !block {
        csi["fsType"] = json!(class
            .parameters
            .as_ref()
            .and_then(|p| p.get(FSTYPE_PARAMETER))
            .map_or(DEFAULT_FSTYPE, String::as_str));
    }
    let mut pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(claim),
            "annotations": {PROVISIONED_BY: CSI_DRIVER_NAME},
        },
        "spec": {
            "capacity": {"storage": format_bytes(capacity)},
            "accessModes": spec.access_modes.unwrap_or_default(),
            "persistentVolumeReclaimPolicy": policy,
            "storageClassName": name(&class.metadata),
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".to_owned()),
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.metadata.namespace,
                "name": claim.metadata.name,
                "uid": claim.metadata.uid,
                "resourceVersion": claim.metadata.resource_version,
            },
            "csi": csi,
        },
    });
    if policy == "Delete" {
        pv["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    if let Some(m) = class.mount_options.as_ref().filter(|m| !m.is_empty()) {
        pv["spec"]["mountOptions"] = json!(m);
    }
    let terms: Vec<Value> = volume
        .accessible_topology
        .iter()
        .map(|t| {
            let mut segs: Vec<(&String, &String)> = t.segments.iter().collect();
            segs.sort();
            json!({"matchExpressions": segs
                .into_iter()
                .map(|(k, v)| json!({"key": k, "operator": "In", "values": [v]}))
                .collect::<Vec<_>>()})
        })
        .collect();
    if !terms.is_empty() {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": terms}});
    }
    pv
}

/// The writes after CreateVolume answered for `p`: the PV and ProvisioningSucceeded, or
/// ProvisioningFailed with the driver's status.
pub fn provisioned(
    p: &Provision,
    answer: Result<Volume, tonic::Status>,
    identity: &str,
) -> Vec<Action> {
    match answer {
        Ok(volume) => {
            let requested = p
                .request
                .capacity_range
                .as_ref()
                .and_then(|r| u64::try_from(r.required_bytes).ok())
                .unwrap_or(0);
            vec![
                Action::Create {
                    kind: Kind::Pv,
                    object: pv_object(&p.claim, &p.class, &volume, identity, requested),
                    status: None,
                },
                Action::event(
                    regarding(Kind::Pvc, &p.claim.metadata),
                    false,
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {}", pv_name(&p.claim)),
                ),
            ]
        }
        Err(s) => vec![failed(&p.claim, &p.class, &crate::rpc_error(&s))],
    }
}

/// Whether `pv`'s claim is gone (none of that name and uid any more).
fn claim_gone(world: &World, pv: &PersistentVolume) -> bool {
    let Some(cr) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let (Some(ns), Some(n)) = (cr.namespace.as_deref(), cr.name.as_deref()) else {
        return false;
    };
    !world
        .pvc(ns, n)
        .is_some_and(|c| cr.uid.is_none() || c.metadata.uid == cr.uid)
}

fn has_finalizer(pv: &PersistentVolume) -> bool {
    pv.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// The patch taking our finalizer off `pv` (with its resourceVersion: a PV changed
/// meanwhile is decided again on the next pass).
pub fn drop_finalizer(pv: &PersistentVolume) -> Action {
    let rest: Vec<&String> = pv
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .collect();
    Action::patch(
        Kind::Pv,
        None,
        name(&pv.metadata),
        json!({"metadata": {"finalizers": rest, "resourceVersion": pv.metadata.resource_version}}),
    )
}

fn reclaim(world: &World, pv: &PersistentVolume, out: &mut Plan) {
    if !made_by_us(pv) {
        return;
    }
    let spec = pv.spec.as_ref();
    let policy = spec
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Delete");
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        || claim_gone(world, pv);
    if policy != "Delete" {
        // Retain: the administrator's; a PV deleted by hand goes without our finalizer.
        if deleting(&pv.metadata) && has_finalizer(pv) {
            out.actions.push(drop_finalizer(pv));
        }
        return;
    }
    if !released {
        return;
    }
    if deleting(&pv.metadata) && !has_finalizer(pv) {
        return; // gone already as far as we are concerned
    }
    let handle = spec
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .unwrap_or_default();
    out.reclaims.push(Reclaim {
        pv: pv.clone(),
        request: DeleteVolumeRequest {
            volume_id: handle,
            ..Default::default()
        },
    });
}

/// The volumes whose CreateVolume was sent for a claim that is gone now (deleted before
/// the volume was ready) and that have no PV: they are deleted, as the
/// external-provisioner does for a claim it stopped provisioning. `started` maps a
/// volume name to the uid of the claim it was asked for.
pub fn abandoned<'a>(
    world: &World,
    started: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<DeleteVolumeRequest> {
    started
        .into_iter()
        .filter(|(volume, uid)| {
            world.pv(volume).is_none()
                && !world.pvcs.iter().any(|c| {
                    c.metadata.uid.as_deref() == Some(uid.as_str()) && !deleting(&c.metadata)
                })
        })
        .map(|(volume, _)| DeleteVolumeRequest {
            volume_id: volume.clone(),
            ..Default::default()
        })
        .collect()
}

/// The writes after DeleteVolume answered for `r`: the finalizer off and the PV deleted,
/// or VolumeFailedDelete.
pub fn reclaimed(r: &Reclaim, answer: Result<(), tonic::Status>) -> Vec<Action> {
    let me = regarding(Kind::Pv, &r.pv.metadata);
    match answer {
        Ok(()) => {
            let mut out = Vec::new();
            if has_finalizer(&r.pv) {
                out.push(drop_finalizer(&r.pv));
            }
            out.push(Action::delete(Kind::Pv, None, name(&r.pv.metadata)));
            out
        }
        Err(s) => vec![Action::event(
            me,
            true,
            "VolumeFailedDelete",
            crate::rpc_error(&s),
        )],
    }
}
