//! `cstor csi`: the CSI driver cstor.csi.openebs.io (crates/csi) as a process on a unix
//! socket, in controller, node or all mode (docs/csi.md).
//!
//! Owns: argument parsing and the process lifetime (SIGINT/SIGTERM stop it and remove
//! the socket). Never: CSI logic of its own.

use std::path::PathBuf;

use anyhow::Context;

/// Which CSI services to serve.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Mode {
    /// Identity + Controller (next to the provisioner, resizer and attacher sidecars).
    Controller,
    /// Identity + Node (one per node, next to the node-driver-registrar).
    Node,
    /// Identity + Controller + Node.
    All,
}

/// Arguments of `cstor csi`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Serves CSI v1.12 on a unix socket. Identity: GetPluginInfo, GetPluginCapabilities, Probe\n(ready once the API server answers). Controller: CreateVolume, DeleteVolume,\nControllerExpandVolume, ValidateVolumeCapabilities, ListVolumes, GetCapacity,\nControllerGetVolume, ControllerGetCapabilities, all through CStorVolumeConfigs.\nNode: NodeStage/Unstage (userspace iSCSI attach in a process of its own, FUSE, a loop\ndevice, ext4/xfs), NodePublish/Unpublish, NodeGetVolumeStats, NodeExpandVolume,\nNodeGetInfo, NodeGetCapabilities. See docs/csi.md."
)]
pub struct Args {
    /// Socket to serve on: unix:///PATH (a stale socket file there is replaced).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: String,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// This node's Kubernetes Node name (required in node and all modes).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Kubeconfig of the API server (default: the in-cluster configuration).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of cstor's objects (pools, volumes).
    #[arg(long, default_value = cstor_api::names::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Node mode: where the per-volume records and the attach processes' FUSE
    /// directories live (kept across restarts of the plugin).
    #[arg(long, default_value = "/var/lib/cstor/csi")]
    pub state_dir: PathBuf,
}

/// Runs the driver until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mode = match args.mode {
        Mode::Controller => cstor_csi::Mode::Controller,
        Mode::Node => cstor_csi::Mode::Node,
        Mode::All => cstor_csi::Mode::All,
    };
    let config = cstor_csi::Config {
        endpoint: args.endpoint.clone(),
        mode,
        node_id: args.node_id.clone(),
        kubeconfig: args.kubeconfig.clone(),
        namespace: args.namespace.clone(),
        state_dir: args.state_dir.clone(),
    };
    super::run_until_signal(|stop| async move {
        eprintln!(
            "cstor csi: {} on {} ({:?} mode)",
            cstor_api::names::CSI_DRIVER_NAME,
            args.endpoint,
            args.mode
        );
        cstor_csi::serve(config, stop)
            .await
            .with_context(|| format!("cstor csi on {}", args.endpoint))
    })
}
