//! The Node service: NodeGetInfo, NodeGetCapabilities, and the attach path through the
//! userspace initiator: NodeStage/Unstage ([`stage`]), NodePublish/Unpublish
//! ([`publish`]), NodeGetVolumeStats and NodeExpandVolume ([`stats`]), the start-up
//! sweep of leftovers ([`sweep`]); the per-volume records in `--state-dir` ([`state`]),
//! the attach process ([`attach`]) or open-iscsi's session ([`iscsiadm`]), the REMOUNT
//! monitor ([`remount`]) and what is read from the host ([`host`]).
//!
//! Invariants: every request is checked (INVALID_ARGUMENT) before anything is done; at
//! most one call per volume runs at a time (a second answers ABORTED), and the claim is
//! held by the blocking work itself, so a call the CO gave up on still finishes before
//! the next one starts; every call is idempotent. A volume's attach runs as a process
//! of its own that outlives this one: a plugin restart keeps every staged volume
//! working. The attach method (`--attach-method`) is chosen per stage: open-iscsi where
//! it is usable, else the userspace initiator ([`iscsiadm::choose`]).

mod attach;
mod host;
pub mod iscsiadm;
mod publish;
mod remount;
mod stage;
pub mod state;
mod stats;
mod sweep;

pub use sweep::{take_down, take_down_orphaned};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::pb::node_server::Node;
use crate::pb::node_service_capability::{rpc, Rpc, Type};
use crate::pb::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, Topology,
};
use crate::view::TOPOLOGY_KEY;
use crate::Error;
use state::StateDir;

/// The RPCs advertised; each is implemented below.
const CAPABILITIES: [rpc::Type; 4] = [
    rpc::Type::StageUnstageVolume,
    rpc::Type::GetVolumeStats,
    rpc::Type::ExpandVolume,
    rpc::Type::VolumeCondition,
];

/// Attach processes this plugin started (its children until it exits); reaped so a
/// finished one does not stay a zombie that looks alive.
#[derive(Debug, Default)]
pub(crate) struct Children(Mutex<Vec<Child>>);

impl Children {
    fn add(&self, c: Child) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    /// Waits for every child that has exited.
    pub(crate) fn reap(&self) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
    }
}

/// How the node service attaches and watches volumes (`cstor csi` flags).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// REMOUNT: bring a staged filesystem the kernel made read-only back read-write
    /// once the volume is healthy again (`--remount`, default on).
    pub remount: bool,
    /// open-iscsi, the userspace initiator, or whichever works (`--attach-method`).
    pub attach_method: iscsiadm::Method,
    /// How long an attach queues I/O while its connection is down before failing it
    /// (open-iscsi's `replacement_timeout`, `--replacement-timeout`).
    pub replacement_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            remount: true,
            attach_method: iscsiadm::Method::Auto,
            replacement_timeout: Duration::from_secs(120),
        }
    }
}

pub(crate) struct Inner {
    node_id: String,
    options: NodeOptions,
    state: StateDir,
    cluster: Cluster,
    /// The binary to run `initiator attach` with (this one).
    exe: PathBuf,
    inflight: Mutex<HashSet<String>>,
    children: Children,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("node_id", &self.node_id)
            .field("state", &self.state)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Node service state.
#[derive(Debug, Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

/// A volume this process is working on; dropping it frees the volume.
pub(crate) struct Claim {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let was = set.remove(&self.id);
        debug_assert!(was, "a claim is in the set until dropped");
    }
}

impl Inner {
    /// The initiator name of this node: `iqn.2026-12.io.cstor:<node id>`, what a target
    /// ACL lists for it.
    pub(crate) fn initiator_name(&self) -> String {
        cstor_api::names::node_initiator(&self.node_id)
    }

    /// How this node logs in: its initiator name and reservation key (no CHAP: a stage
    /// adds its volume's).
    pub(crate) fn login(&self) -> attach::Login {
        attach::Login {
            initiator_name: self.initiator_name(),
            pr_key: attach::reservation_key(&self.node_id),
            chap: None,
        }
    }
}

fn claim(inner: &Arc<Inner>, id: &str) -> Result<Claim, Error> {
    let mut set = inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if !set.insert(id.to_owned()) {
        return Err(Error::Busy {
            volume: id.to_owned(),
        });
    }
    Ok(Claim {
        inner: inner.clone(),
        id: id.to_owned(),
    })
}

fn required(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Ok(())
}

/// Runs `f` on a blocking thread (mount, losetup, mkfs and the attach wait block), with
/// the claim moved in so it is held until the work ends.
async fn blocking<T: Send + 'static>(
    claim: Claim,
    f: impl FnOnce(&Arc<Inner>) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || {
        let r = f(&claim.inner);
        drop(claim);
        r
    })
    .await
    .map_err(|e| Error::NodeState {
        volume: String::new(),
        why: format!("the node worker failed: {e}"),
    })?
}

impl NodeService {
    /// The node plugin of node `node_id` (its Kubernetes Node name), keeping its records
    /// in `state_dir`. Sweeps what dead attaches left behind first (blocking), then
    /// starts the REMOUNT monitor (when `options.remount`).
    pub fn new(
        node_id: String,
        state_dir: PathBuf,
        cluster: Cluster,
        options: NodeOptions,
    ) -> Result<NodeService, Error> {
        assert!(!node_id.is_empty(), "the node id is checked at start-up");
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("finding this program's path (for initiator attach)", e))?;
        let inner = Arc::new(Inner {
            node_id,
            options,
            state: StateDir::new(state_dir),
            cluster,
            exe,
            inflight: Mutex::default(),
            children: Children::default(),
        });
        sweep::sweep(&inner)?;
        let (method, why) = iscsiadm::describe(inner.options.attach_method);
        tracing::info!(attach_method = ?inner.options.attach_method, now = method, "{why}");
        if inner.options.remount {
            remount::spawn(Arc::downgrade(&inner));
        } else {
            tracing::info!(
                "REMOUNT is off (--remount=false): a filesystem the kernel made read-only stays so"
            );
        }
        Ok(NodeService { inner })
    }
}

fn answer<T>(r: Result<T, Error>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        answer(stage::stage(&self.inner, req.into_inner()).await)
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        answer(stage::unstage(&self.inner, req.into_inner()).await)
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        answer(publish::publish(&self.inner, req.into_inner()).await)
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        answer(publish::unpublish(&self.inner, req.into_inner()).await)
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        answer(stats::stats(&self.inner, req.into_inner()).await)
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        answer(stats::expand(&self.inner, req.into_inner()).await)
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|t| NodeServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let mut segments = HashMap::new();
        segments.insert(TOPOLOGY_KEY.to_owned(), self.inner.node_id.clone());
        let (method, why) = iscsiadm::describe(self.inner.options.attach_method);
        tracing::info!(node = %self.inner.node_id, attach_method = ?self.inner.options.attach_method, now = method, remount = self.inner.options.remount, "NodeGetInfo: {why}");
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.inner.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology { segments }),
        }))
    }
}
