//! `cstor attach` / `cstor detach`: a claim used on a node as a pod would use it, through
//! the CSI driver's node service and the attacher (docs/csi.md § cstor attach).
//!
//! `attach` does what the attach-detach controller and the kubelet do for a pod: a
//! VolumeAttachment for (PV, node), which the external-attacher (`cstor sidecars`, or
//! the real sidecar) acts on with ControllerPublishVolume; once its `status.attached`
//! is true, NodeStageVolume at the kubelet's global mount path with the publish context
//! from `status.attachmentMetadata` (and the PV's nodeStageSecretRef Secret as
//! `secrets`) and NodePublishVolume at the user's directory. `detach` undoes the node's
//! part, deletes the VolumeAttachment and waits until the attacher let it go. The volume
//! is reached only through its target's portal (the node service logs in there).
//!
//! Owns: that sequence and its retries (ABORTED and UNAVAILABLE are retried until the
//! timeout; any other error stops it with the driver's message, the attacher's included,
//! read from `status.attachError`). State lives in the VolumeAttachment (annotations name
//! the staging and target paths), so `detach` needs only the claim and the node. Never:
//! CSI logic of its own, or a controller call (the attacher's).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use cstor_api::names::CSI_DRIVER_NAME;
use cstor_csi::pb::node_client::NodeClient;
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_csi::pb::*;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;

use crate::units::parse_duration;

/// Annotation on our VolumeAttachments: the directory the volume is published at.
const TARGET_PATH_ANNOTATION: &str = "cstor.openebs.io/target-path";
/// Annotation on our VolumeAttachments: the staging (global mount) path.
const STAGING_PATH_ANNOTATION: &str = "cstor.openebs.io/staging-path";

/// Where the cluster and the driver's sockets are.
#[derive(Debug, ClapArgs)]
pub struct Where {
    /// A `cstor up` directory: its kubeconfig and its node driver sockets
    /// (DIR/nodes/NODE/csi.sock) are used unless given below.
    #[arg(long, default_value = "cstor-up")]
    dir: PathBuf,
    /// Kubeconfig (default DIR/kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's CSI node service (default unix://DIR/nodes/NODE/csi.sock).
    #[arg(long)]
    node_endpoint: Option<String>,
    /// The kubelet directory whose plugins/kubernetes.io/csi holds staging paths (default
    /// DIR/nodes/NODE/kubelet with the default sockets, else /var/lib/kubelet).
    #[arg(long)]
    kubelet_dir: Option<PathBuf>,
    /// How long to wait for the attacher and to keep retrying while the driver answers
    /// ABORTED or UNAVAILABLE.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    timeout: Duration,
}

/// `cstor attach PVC ...`
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Creates the VolumeAttachment, waits for the attacher to publish the volume to NODE\n(ControllerPublishVolume), stages it on the node (iSCSI login through the target's portal, mkfs when blank,\nmount) and publishes it at DIR, as the kubelet does for a pod. Idempotent. See docs/csi.md."
)]
pub struct AttachArgs {
    /// The PersistentVolumeClaim.
    pvc: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The node to use it on.
    #[arg(long)]
    node: String,
    /// Directory to mount the filesystem at (created if missing); for a claim with
    /// volumeMode Block, the file to bind the block device to.
    #[arg(long)]
    mount: PathBuf,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    at: Where,
}

/// `cstor detach PVC ...`
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Unpublishes and unstages the volume on NODE, deletes the VolumeAttachment and waits\nuntil the attacher unpublished it and let it go. Detaching a claim that is not attached succeeds."
)]
pub struct DetachArgs {
    /// The PersistentVolumeClaim.
    pvc: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The node it is attached to.
    #[arg(long)]
    node: String,
    #[command(flatten)]
    at: Where,
}

/// The claim's volume as the driver knows it.
struct Volume {
    pv: String,
    /// The PV's capacity, bytes (what a node expansion grows the filesystem to).
    capacity: u64,
    handle: String,
    capability: VolumeCapability,
    context: HashMap<String, String>,
    block: bool,
    /// The PV's nodeStageSecretRef: (namespace, name).
    stage_secret: Option<(String, String)>,
}

struct Ctx {
    client: kube::Client,
    node: NodeClient<Channel>,
    staging_root: PathBuf,
    deadline: Instant,
    /// When this command started: an attachError older than that is another run's.
    started: k8s_openapi::jiff::Timestamp,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn channel(endpoint: &str, what: &str) -> Result<Channel> {
    let path = cstor_csi::endpoint::socket_path(endpoint)?;
    if std::os::unix::net::UnixStream::connect(&path).is_err() {
        bail!("no CSI {what} service answers on {endpoint} (is it running?)");
    }
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("endpoint {endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to the CSI {what} service at {endpoint}"))
}

async fn context(at: &Where, node: &str) -> Result<Ctx> {
    let kubeconfig = at
        .kubeconfig
        .clone()
        .unwrap_or_else(|| at.dir.join("kubeconfig"));
    let client = cstor_agent::kubeapi::client(Some(&kubeconfig))
        .await
        .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
    let sock = |p: PathBuf| format!("unix://{}", p.display());
    let dir = std::path::absolute(&at.dir).context("--dir")?;
    let node_ep = at
        .node_endpoint
        .clone()
        .unwrap_or_else(|| sock(dir.join("nodes").join(node).join("csi.sock")));
    let kubelet = at.kubelet_dir.clone().unwrap_or_else(|| {
        if at.node_endpoint.is_none() {
            dir.join("nodes").join(node).join("kubelet")
        } else {
            PathBuf::from("/var/lib/kubelet")
        }
    });
    Ok(Ctx {
        client,
        node: NodeClient::new(channel(&node_ep, "node").await?),
        staging_root: kubelet
            .join("plugins/kubernetes.io/csi")
            .join(CSI_DRIVER_NAME),
        deadline: Instant::now() + at.timeout,
        started: k8s_openapi::jiff::Timestamp::now(),
    })
}

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The VolumeAttachment name the attach-detach controller gives (PV, driver, node).
fn attachment_name(handle: &str, node: &str) -> String {
    format!(
        "csi-{}",
        sha256_hex(&format!("{handle}{CSI_DRIVER_NAME}{node}"))
    )
}

/// Retries `call` while it answers ABORTED or UNAVAILABLE, until the deadline.
async fn retry<T, F, Fut>(what: &str, deadline: Instant, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut told = false;
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if matches!(s.code(), Code::Aborted | Code::Unavailable) => {
                if Instant::now() >= deadline {
                    bail!(
                        "{what}: still {:?} at the timeout: {}",
                        s.code(),
                        s.message()
                    );
                }
                if !told {
                    eprintln!("{what}: {} (retrying)", s.message());
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => bail!("{what}: {:?}: {}", s.code(), s.message()),
        }
    }
}

/// Whether an attacher's error message carries a gRPC code the attacher retries and
/// that may clear by itself (the volume not ready yet, the driver restarting).
fn transient(message: &str) -> bool {
    [
        "Aborted",
        "Unavailable",
        "DeadlineExceeded",
        "ResourceExhausted",
    ]
    .iter()
    .any(|c| message.contains(&format!("code = {c} ")))
}

/// Waits for the attacher to attach VolumeAttachment `name` (as the kubelet does before
/// it stages) and returns its `attachmentMetadata`, the publish context. A refusal of
/// the driver (an `attachError` of this run with a final gRPC code) stops it at once;
/// other errors are shown and waited on until the deadline.
async fn wait_attached(
    vas: &Api<VolumeAttachment>,
    name: &str,
    deadline: Instant,
    started: k8s_openapi::jiff::Timestamp,
) -> Result<HashMap<String, String>> {
    let mut last: Option<String> = None;
    let finalizer = cstor_sidecars::attacher::finalizer_name(CSI_DRIVER_NAME);
    loop {
        let va = vas
            .get_opt(name)
            .await
            .with_context(|| format!("reading VolumeAttachment {name}"))?
            .ok_or_else(|| anyhow!("VolumeAttachment {name} was deleted while waiting for it"))?;
        let status = va.status.clone().unwrap_or_default();
        if status.attached {
            return Ok(status
                .attachment_metadata
                .unwrap_or_default()
                .into_iter()
                .collect());
        }
        let error = status
            .attach_error
            .filter(|e| {
                e.time
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= started.as_second())
            })
            .and_then(|e| e.message);
        if let Some(m) = error {
            if m.contains("rpc error: code = ") && !transient(&m) {
                bail!("the attacher could not attach the volume: {m}");
            }
            if last.as_deref() != Some(m.as_str()) {
                eprintln!("waiting for the attacher: {m}");
                last = Some(m);
            }
        }
        if Instant::now() >= deadline {
            let seen = va
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| *f == finalizer);
            let why = match (last, seen) {
                (Some(m), _) => format!("its last attach error: {m}"),
                (None, true) => "the attacher took it but ControllerPublishVolume has not answered".to_owned(),
                (None, false) => format!(
                    "no attacher has taken it (no finalizer {finalizer}): is the external-attacher (`cstor sidecars`) running?"
                ),
            };
            bail!("VolumeAttachment {name} is not attached at the timeout; {why}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until VolumeAttachment `name` is gone (the attacher unpublished the volume and
/// took its finalizer off).
async fn wait_gone(vas: &Api<VolumeAttachment>, name: &str, deadline: Instant) -> Result<()> {
    let mut last: Option<String> = None;
    loop {
        let Some(va) = vas
            .get_opt(name)
            .await
            .with_context(|| format!("reading VolumeAttachment {name}"))?
        else {
            return Ok(());
        };
        let error = va
            .status
            .and_then(|s| s.detach_error)
            .and_then(|e| e.message);
        if let Some(m) = error {
            if last.as_deref() != Some(m.as_str()) {
                eprintln!("waiting for the attacher: {m}");
                last = Some(m);
            }
        }
        if Instant::now() >= deadline {
            let finalizers = va.metadata.finalizers.unwrap_or_default();
            bail!(
                "VolumeAttachment {name} is still there at the timeout (finalizers {finalizers:?}){}",
                last.map(|m| format!("; its last detach error: {m}"))
                    .unwrap_or_else(|| ": is the external-attacher (`cstor sidecars`) running?".to_owned())
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A Secret's data as CSI `secrets`, read as the kubelet reads a PV's nodeStageSecretRef.
async fn secret_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<HashMap<String, String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get(name)
        .await
        .with_context(|| format!("reading the node-stage Secret {ns}/{name} of the volume"))?;
    Ok(s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

async fn bound_volume(ctx: &Ctx, ns: &str, pvc: &str) -> Result<Volume> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let pv_name = loop {
        let claim = pvcs
            .get_opt(pvc)
            .await
            .with_context(|| format!("reading PersistentVolumeClaim {ns}/{pvc}"))?
            .ok_or_else(|| anyhow!("PersistentVolumeClaim {ns}/{pvc} does not exist"))?;
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
        match claim.spec.as_ref().and_then(|s| s.volume_name.clone()) {
            Some(v) if phase.as_deref() == Some("Bound") => break v,
            _ if Instant::now() >= ctx.deadline => {
                bail!("PersistentVolumeClaim {ns}/{pvc} is not Bound ({phase:?}) at the timeout")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get(&pv_name)
        .await
        .with_context(|| format!("reading PersistentVolume {pv_name}"))?;
    let spec = pv.spec.unwrap_or_default();
    let csi = spec
        .csi
        .ok_or_else(|| anyhow!("PersistentVolume {pv_name} is not a CSI volume"))?;
    if csi.driver != CSI_DRIVER_NAME {
        bail!(
            "PersistentVolume {pv_name} belongs to CSI driver {}, not {CSI_DRIVER_NAME}",
            csi.driver
        );
    }
    let block = spec.volume_mode.as_deref() == Some("Block");
    let capacity = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .and_then(|q| cstor_api::quantity::quantity_bytes(q).ok())
        .unwrap_or(0);
    let modes = spec.access_modes.unwrap_or_default();
    let mode = if modes.iter().any(|m| m == "ReadWriteOncePod") {
        Mode::SingleNodeSingleWriter
    } else if modes.iter().any(|m| m == "ReadWriteOnce") || modes.is_empty() {
        Mode::SingleNodeWriter
    } else {
        bail!("PersistentVolume {pv_name} has access modes {modes:?}; cstor volumes are ReadWriteOnce")
    };
    let access_type = if block {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: csi.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.unwrap_or_default(),
            ..Default::default()
        })
    };
    Ok(Volume {
        pv: pv_name,
        capacity,
        handle: csi.volume_handle,
        capability: VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        },
        context: csi
            .volume_attributes
            .unwrap_or_default()
            .into_iter()
            .collect(),
        block,
        stage_secret: csi
            .node_stage_secret_ref
            .and_then(|r| Some((r.namespace.unwrap_or_default(), r.name?))),
    })
}

/// Runs `cstor attach`.
pub fn run_attach(a: AttachArgs) -> Result<()> {
    runtime()?.block_on(attach(a))
}

async fn attach(a: AttachArgs) -> Result<()> {
    let mut ctx = context(&a.at, &a.node).await?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    if nodes.get_opt(&a.node).await?.is_none() {
        bail!("node {} does not exist", a.node);
    }
    let vol = bound_volume(&ctx, &a.namespace, &a.pvc).await?;
    let target = std::path::absolute(&a.mount).context("--mount")?;
    let staging = ctx
        .staging_root
        .join(sha256_hex(&vol.handle))
        .join("globalmount");
    let vas: Api<VolumeAttachment> = Api::all(ctx.client.clone());
    let va_name = attachment_name(&vol.handle, &a.node);
    let va = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {
            "name": va_name,
            "annotations": {
                TARGET_PATH_ANNOTATION: target.display().to_string(),
                STAGING_PATH_ANNOTATION: staging.display().to_string(),
            },
        },
        "spec": {
            "attacher": CSI_DRIVER_NAME,
            "nodeName": a.node,
            "source": {"persistentVolumeName": vol.pv},
        },
    });
    let va: VolumeAttachment = serde_json::from_value(va)?;
    match vas.create(&PostParams::default(), &va).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = vas.get(&va_name).await?;
            if existing.metadata.deletion_timestamp.is_some() {
                bail!(
                    "VolumeAttachment {va_name} is being deleted (a detach is in progress); attach again once it is gone"
                );
            }
            let same = |k: &str, v: &Path| {
                existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .is_some_and(|p| Path::new(p) == v)
            };
            if !same(TARGET_PATH_ANNOTATION, &target) {
                bail!(
                    "{}/{} is already attached to {} at another directory ({:?}); detach it first",
                    a.namespace,
                    a.pvc,
                    a.node,
                    existing
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|m| m.get(TARGET_PATH_ANNOTATION))
                );
            }
        }
        Err(e) => return Err(e).context("creating the VolumeAttachment"),
    }
    let publish_context = wait_attached(&vas, &va_name, ctx.deadline, ctx.started).await?;
    let secrets = match &vol.stage_secret {
        Some((ns, name)) => secret_data(&ctx.client, ns, name).await?,
        None => HashMap::new(),
    };
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let node = &mut ctx.node;
    retry("NodeStageVolume", ctx.deadline, || {
        let mut n = node.clone();
        let req = NodeStageVolumeRequest {
            volume_id: vol.handle.clone(),
            publish_context: publish_context.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(vol.capability.clone()),
            volume_context: vol.context.clone(),
            secrets: secrets.clone(),
        };
        async move { n.node_stage_volume(req).await }
    })
    .await?;
    retry("NodePublishVolume", ctx.deadline, || {
        let mut n = node.clone();
        let req = NodePublishVolumeRequest {
            volume_id: vol.handle.clone(),
            publish_context: publish_context.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(vol.capability.clone()),
            readonly: a.read_only,
            volume_context: vol.context.clone(),
            ..Default::default()
        };
        async move { n.node_publish_volume(req).await }
    })
    .await?;
    // As the kubelet does when a claim grew: the node grows the filesystem to the PV's
    // size (a no-op when it has it already).
    if !vol.block && node_can_expand(node).await? {
        let grown = retry("NodeExpandVolume", ctx.deadline, || {
            let mut n = node.clone();
            let req = NodeExpandVolumeRequest {
                volume_id: vol.handle.clone(),
                volume_path: target.display().to_string(),
                capacity_range: Some(CapacityRange {
                    required_bytes: i64::try_from(vol.capacity).unwrap_or(i64::MAX),
                    limit_bytes: 0,
                }),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(vol.capability.clone()),
                ..Default::default()
            };
            async move { n.node_expand_volume(req).await }
        })
        .await?;
        if grown.capacity_bytes > 0 {
            eprintln!("filesystem size: {} bytes", grown.capacity_bytes);
        }
        finish_node_resize(&ctx.client, &a.namespace, &a.pvc, vol.capacity).await?;
    }
    println!(
        "attached {}/{} ({}) on {} at {}{}",
        a.namespace,
        a.pvc,
        vol.pv,
        a.node,
        target.display(),
        if vol.block { " (block device)" } else { "" }
    );
    Ok(())
}

/// As the kubelet does after a node expansion: a claim waiting on it
/// (`FileSystemResizePending`, set by the resizer) gets the PV's size as its
/// `status.capacity` and loses the condition.
async fn finish_node_resize(client: &kube::Client, ns: &str, pvc: &str, bytes: u64) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = pvcs
        .get(pvc)
        .await
        .with_context(|| format!("reading PersistentVolumeClaim {ns}/{pvc}"))?;
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "FileSystemResizePending"));
    if !pending || bytes == 0 {
        return Ok(());
    }
    let patch = json!({"status": {
        "capacity": {"storage": cstor_api::quantity::format_bytes(bytes)},
        "conditions": null, "allocatedResourceStatuses": null}});
    pvcs.patch_status(pvc, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("finishing the resize of {ns}/{pvc}"))?;
    Ok(())
}

async fn node_can_expand(node: &mut NodeClient<Channel>) -> Result<bool> {
    use cstor_csi::pb::node_service_capability::{rpc, Type};
    let caps = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .map_err(|s| anyhow!("NodeGetCapabilities: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(caps.capabilities.iter().any(
        |c| matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == rpc::Type::ExpandVolume as i32),
    ))
}

/// Runs `cstor detach`.
pub fn run_detach(a: DetachArgs) -> Result<()> {
    runtime()?.block_on(detach(a))
}

async fn detach(a: DetachArgs) -> Result<()> {
    let ctx = context(&a.at, &a.node).await?;
    let vol = bound_volume(&ctx, &a.namespace, &a.pvc).await?;
    let vas: Api<VolumeAttachment> = Api::all(ctx.client.clone());
    let va_name = attachment_name(&vol.handle, &a.node);
    let Some(va) = vas.get_opt(&va_name).await? else {
        println!("{}/{} is not attached to {}", a.namespace, a.pvc, a.node);
        return Ok(());
    };
    let note = |k: &str| {
        va.metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(k))
            .cloned()
    };
    let staging = note(STAGING_PATH_ANNOTATION).unwrap_or_else(|| {
        ctx.staging_root
            .join(sha256_hex(&vol.handle))
            .join("globalmount")
            .display()
            .to_string()
    });
    if let Some(target) = note(TARGET_PATH_ANNOTATION) {
        retry("NodeUnpublishVolume", ctx.deadline, || {
            let mut n = ctx.node.clone();
            let req = NodeUnpublishVolumeRequest {
                volume_id: vol.handle.clone(),
                target_path: target.clone(),
            };
            async move { n.node_unpublish_volume(req).await }
        })
        .await?;
    }
    retry("NodeUnstageVolume", ctx.deadline, || {
        let mut n = ctx.node.clone();
        let req = NodeUnstageVolumeRequest {
            volume_id: vol.handle.clone(),
            staging_target_path: staging.clone(),
        };
        async move { n.node_unstage_volume(req).await }
    })
    .await?;
    match vas.delete(&va_name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("deleting the VolumeAttachment"),
    }
    wait_gone(&vas, &va_name, ctx.deadline).await?;
    println!(
        "detached {}/{} ({}) from {}",
        a.namespace, a.pvc, vol.pv, a.node
    );
    Ok(())
}
