//! cstor-csi: the CSI driver `cstor.csi.openebs.io` (CSI spec v1.12), served by
//! `cstor csi` on a unix socket: the Identity service, the Controller service over the
//! control plane's objects, and the Node service attaching volumes through the userspace
//! iSCSI initiator (FUSE and a loop device; docs/csi.md).
//!
//! Owns: the CSI wire types and gRPC traits, generated at build time from
//! `proto/csi.proto` with protox (no `protoc`); the mapping of CSI requests to
//! CStorVolumeConfigs ([`request`], [`view`]: pure, unit-tested) and the few API calls
//! that carry it out ([`cluster`]); the single mapping of errors to gRPC codes
//! ([`error`]). The CVC a CreateVolume makes is built by
//! `cstor_controller::provision::cvc_object`, the same function the PVC path uses.
//!
//! Invariants: a volume's id is its CVC's name; every RPC checks its request before
//! any API call; only CVCs are written (the controller and the node agents do the rest).
//! Never: talks to pools, replicas or targets; edits generated code or renumbers a proto
//! field (wire format). Shutdown: [`serve`] stops accepting when `stop` resolves, lets
//! calls in flight finish, and removes its socket.

pub mod pb {
    //! Generated CSI v1 messages, clients and servers.
    #![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
    tonic::include_proto!("csi.v1");
}

pub mod chap;
pub mod cluster;
pub mod controller;
pub mod endpoint;
mod error;
pub mod identity;
pub mod limits;
pub mod node;
pub mod publish;
pub mod request;
pub mod snapshot;
pub mod view;

use std::future::Future;
use std::path::PathBuf;

use tokio_stream::wrappers::UnixListenerStream;

pub use error::Error;

/// Which services a `cstor csi` process serves (Identity always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Identity and Controller (the Deployment next to the sidecars).
    Controller,
    /// Identity and Node (the DaemonSet on each node).
    Node,
    /// All three (one process per node in small clusters, and tests).
    All,
}

/// Settings of `cstor csi`.
#[derive(Clone, Debug)]
pub struct Config {
    /// `unix:///PATH` endpoint.
    pub endpoint: String,
    /// Services to serve.
    pub mode: Mode,
    /// This node's name (required in node and all modes).
    pub node_id: Option<String>,
    /// Kubeconfig; None: in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of cstor's objects.
    pub namespace: String,
    /// Where the node service keeps its per-volume records and FUSE directories.
    pub state_dir: PathBuf,
    /// The node service's attach method, REMOUNT and replacement timeout.
    pub node: node::NodeOptions,
}

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, Error> {
    match kubeconfig {
        Some(p) => cstor_controller::client(p).await.map_err(Error::Kubeconfig),
        None => kube::Client::try_default()
            .await
            .map_err(Error::InferConfig),
    }
}

/// Serves CSI on the configured socket until `stop` resolves.
pub async fn serve(config: Config, stop: impl Future<Output = ()>) -> Result<(), Error> {
    let path = endpoint::socket_path(&config.endpoint)?;
    let node_id = match (config.mode, config.node_id.as_deref()) {
        (Mode::Controller, _) => None,
        (_, Some(n)) if !n.is_empty() => Some(n.to_owned()),
        _ => {
            return Err(Error::invalid(
                "--node-id",
                "is required in node and all modes (the Kubernetes Node name)",
            ))
        }
    };
    let cluster = cluster::Cluster::new(
        client(config.kubeconfig.as_deref()).await?,
        config.namespace.clone(),
    );
    let controller = matches!(config.mode, Mode::Controller | Mode::All).then(|| {
        pb::controller_server::ControllerServer::new(controller::ControllerService::new(
            cluster.clone(),
        ))
    });
    let node = match node_id {
        Some(n) => {
            let (cluster, state_dir) = (cluster.clone(), config.state_dir.clone());
            let options = config.node.clone();
            // The start-up sweep blocks (mount table, losetup, unmounts).
            let service = tokio::task::spawn_blocking(move || {
                node::NodeService::new(n, state_dir, cluster, options)
            })
            .await
            .map_err(|e| Error::NodeState {
                volume: String::new(),
                why: format!("the start-up sweep failed: {e}"),
            })??;
            Some(pb::node_server::NodeServer::new(service))
        }
        None => None,
    };
    // Bound after the sweep: no node call is taken while leftovers are being removed.
    let listener = endpoint::bind(&path)?;
    let served = tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(
            identity::IdentityService::new(cluster),
        ))
        .add_optional_service(controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await;
    // The socket goes with the server, so the next start finds no stale file.
    let _ = std::fs::remove_file(&path);
    served.map_err(Error::Serve)
}
