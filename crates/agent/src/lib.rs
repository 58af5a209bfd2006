//! cstor-agent: the node agent (`cstor node`). One process per node makes the cluster's
//! objects real on that node (docs/node-agent.md):
//! - [`node`]: the Node object and its heartbeat Lease `cstor-node-<name>`;
//! - [`disks`]: block device discovery and the node's BlockDevices;
//! - [`pools`]: one pool per CStorPoolInstance on this node, its replica listener and status;
//! - [`pool_edit`]: edits of a running pool's CSPI spec (raid groups and devices added, a
//!   device replaced with a resilver) applied to its pool, with the CSPI's conditions;
//! - [`replicas`]: CStorVolumeReplica status of the replicas on those pools;
//! - [`reclaim`]: the pool volumes of deleted CStorVolumeReplicas destroyed;
//! - [`targets`]: the replicated iSCSI targets of the CStorVolumes placed on this node, one
//!   portal per node, with the membership record kept in the CStorVolume ([`store`]);
//! - [`snapshots`]: the CStorSnapshots of those targets' volumes, and the clones restores
//!   start from;
//! - [`metrics`]: the Prometheus exporter of those pools and targets.
//!
//! Owns: every pool, replica server and target it opened; nothing survives the process
//! (a restart re-imports from the objects and `$CSTOR_HOME`).
//! Invariants: the agent writes only its own objects' status (Node, BlockDevices, Leases,
//! CSPI/CVR/CV status of what it hosts) and never a spec field the controller owns; the
//! membership record changes only by compare-and-swap on resourceVersion.
//! Never: depends on the embedded API server (it speaks the Kubernetes API only, so the
//! same code runs against a real kube-apiserver); blocks the runtime on pool I/O (pool calls
//! run on blocking threads).
//! Shutdown: [`Agent::shutdown`] stops targets first (initiators logged out, volumes
//! drained and released cleanly), then replica servers, then closes pools.

pub mod disks;
pub mod error;
pub mod kubeapi;
pub mod metrics;
pub mod node;
pub mod pool_edit;
pub mod pools;
pub mod reclaim;
pub mod replicas;
pub mod snapshots;
pub mod store;
pub mod targets;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{AgentError, Result};

/// Namespace of every cStor object the agent reads or writes.
pub const NAMESPACE: &str = "openebs";
/// Label naming a node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Label placing a volume's target on a node.
pub const TARGET_NODE_LABEL: &str = "cstor.openebs.io/target-node";
/// Label naming the pool instance of a CVR.
pub const CSPI_LABEL: &str = "openebs.io/cstor-pool-instance";
/// Label naming the volume of a CVR.
pub const PV_LABEL: &str = "openebs.io/persistent-volume";
/// CSPI annotation: where its pool serves replicas.
pub const ENDPOINT_ANNOTATION: &str = "cstor.openebs.io/replica-endpoint";
/// Secret holding the replica auth key (data key `key`).
pub const AUTH_SECRET: &str = "cstor-replica-auth";
/// Secret turning on TLS between targets and replicas (data keys `ca.crt`, `tls.crt`,
/// `tls.key`: the CA targets trust, the replicas' certificate and its key). Optional.
pub const TLS_SECRET: &str = "cstor-replica-tls";

/// How the agent was started (`cstor node` flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name.
    pub name: String,
    /// Kubeconfig of the API server; None: the in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// Disks offered by this node (empty: scan loop devices and whole disks).
    pub disks: Vec<PathBuf>,
    /// The node's InternalIP: portal and replica listeners bind here.
    pub address: IpAddr,
    /// iSCSI portal port.
    pub iscsi_port: u16,
    /// Directory of the pool registry and admin sockets (`$CSTOR_HOME`).
    pub home: PathBuf,
    /// How often objects are re-read and status refreshed.
    pub resync: Duration,
    /// Heartbeat Lease renewal interval.
    pub lease_renew: Duration,
}

/// Everything the agent's parts share.
pub struct Ctx {
    /// The configuration.
    pub cfg: AgentConfig,
    /// API client.
    pub client: kube::Client,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Aborts a task when dropped (the loop that owns it was dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    ctx: Arc<Ctx>,
    pools: Arc<pools::Pools>,
    targets: Arc<targets::Targets>,
    metrics: Arc<metrics::AgentMetrics>,
    reclaim: reclaim::Reclaim,
}

impl Agent {
    /// Connects to the API server and binds the node's iSCSI portal.
    pub async fn start(cfg: AgentConfig) -> Result<Agent> {
        let client = kubeapi::client(cfg.kubeconfig.as_deref()).await?;
        let ctx = Arc::new(Ctx { cfg, client });
        let pools = Arc::new(pools::Pools::new(ctx.clone()));
        let targets = Arc::new(targets::Targets::start(ctx.clone()).await?);
        Ok(Agent {
            ctx,
            pools,
            targets,
            metrics: Arc::default(),
            reclaim: reclaim::Reclaim::default(),
        })
    }

    /// The address the iSCSI portal listens on.
    pub fn portal(&self) -> std::net::SocketAddr {
        self.targets.portal()
    }

    /// The exporter of every pool and target this agent hosts (serve it with
    /// [`cstor_metrics::Exporter::serve`]); kept current by each reconcile pass.
    pub fn exporter(&self) -> cstor_metrics::Exporter {
        self.metrics.exporter.clone()
    }

    /// Runs the reconcile loops until the future is dropped. A failed pass is logged and
    /// retried on the next tick: the API server being away must not stop the node.
    pub async fn run(&self) {
        let ctx = self.ctx.clone();
        let _heartbeat = AbortOnDrop(tokio::spawn(node::heartbeat(ctx.clone())));
        let mut tick = tokio::time::interval(ctx.cfg.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut disks = disks::Disks::default();
        loop {
            tick.tick().await;
            if let Err(e) = node::register(&ctx).await {
                tracing::warn!(error = %e, "registering the node");
                continue;
            }
            if let Err(e) = disks.sync(&ctx).await {
                tracing::warn!(error = %e, "block devices");
            }
            if let Err(e) = self.pools.sync().await {
                tracing::warn!(error = %e, "pool instances");
            }
            if let Err(e) = replicas::sync(&ctx, &self.pools).await {
                tracing::warn!(error = %e, "volume replicas");
            }
            if let Err(e) = self.reclaim.sync(&ctx, &self.pools).await {
                tracing::warn!(error = %e, "replica data of deleted replicas");
            }
            if let Err(e) = self.targets.sync().await {
                tracing::warn!(error = %e, "volume targets");
            }
            let running = self
                .targets
                .running()
                .await
                .into_iter()
                .map(|(name, _, v)| (name, v))
                .collect();
            if let Err(e) = snapshots::sync(&ctx, &running).await {
                tracing::warn!(error = %e, "volume snapshots");
            }
            metrics::sync(&self.metrics, &ctx, &self.pools, &self.targets).await;
        }
    }

    /// Stops targets (initiators logged out, volumes released cleanly), then the replica
    /// servers, then closes every pool.
    pub async fn shutdown(&self) {
        self.targets.shutdown().await;
        self.pools.shutdown().await;
    }
}
