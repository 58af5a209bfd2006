//! `cstor csi`: the CSI driver cstor.csi.openebs.io (crates/csi) as a process on a unix
//! socket, in controller, node or all mode (docs/csi.md).
//!
//! Owns: argument parsing and the process lifetime (SIGINT/SIGTERM stop it and remove
//! the socket). Never: CSI logic of its own.

use std::path::PathBuf;
use std::time::Duration;

use crate::units::parse_duration;

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

/// How the node service attaches a volume.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AttachMethod {
    /// open-iscsi where it is usable (iscsiadm, iscsid, iscsi_tcp), else userspace.
    Auto,
    /// open-iscsi only; a stage fails, saying what is missing, where it is not usable.
    Iscsiadm,
    /// The userspace initiator (FUSE file and loop device) only.
    Userspace,
}

/// Arguments of `cstor csi`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Serves CSI v1.12 on a unix socket. Identity: GetPluginInfo, GetPluginCapabilities, Probe\n(ready once the API server answers). Controller: CreateVolume, DeleteVolume,\nControllerExpandVolume, ValidateVolumeCapabilities, ListVolumes, GetCapacity,\nControllerGetVolume, ControllerGetCapabilities, all through CStorVolumeConfigs.\nNode: NodeStage/Unstage (open-iscsi where it works, else a userspace iSCSI attach in a\nprocess of its own, FUSE, a loop device; ext4/xfs), NodePublish/Unpublish,\nNodeGetVolumeStats, NodeExpandVolume, NodeGetInfo, NodeGetCapabilities; REMOUNT of a\nfilesystem the kernel made read-only. See docs/csi.md."
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
    /// Node mode: attach volumes with open-iscsi (iscsiadm), the userspace initiator, or
    /// whichever works on this node (auto: open-iscsi when iscsiadm, iscsid and the
    /// iscsi_tcp module are there).
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_method: AttachMethod,
    /// Node mode: REMOUNT, bring a staged filesystem the kernel made read-only (after a
    /// path outage) back read-write once the volume is healthy again.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub remount: bool,
    /// Node mode: how long an attach queues I/O while its connection to the target is
    /// down before failing it (open-iscsi's replacement_timeout).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub replacement_timeout: Duration,
    /// Node mode: when the process that started this plugin dies while it runs (it is
    /// then stopped by its parent-death signal and finds another parent), take every
    /// attach of `--state-dir` down for good before exiting, as a final stop of the node
    /// does (docs/csi.md). `cstor up` passes it, so a SIGKILLed `cstor up` leaves no
    /// attach behind. Without it (a DaemonSet) attaches outlive the plugin.
    #[arg(long)]
    pub take_down_when_orphaned: bool,
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
        node: cstor_csi::node::NodeOptions {
            remount: args.remount,
            attach_method: match args.attach_method {
                AttachMethod::Auto => cstor_csi::node::iscsiadm::Method::Auto,
                AttachMethod::Iscsiadm => cstor_csi::node::iscsiadm::Method::Iscsiadm,
                AttachMethod::Userspace => cstor_csi::node::iscsiadm::Method::Userspace,
            },
            replacement_timeout: args.replacement_timeout,
        },
    };
    let parent = std::os::unix::process::parent_id();
    let state_dir = args.state_dir.clone();
    let node_mode = !matches!(args.mode, Mode::Controller);
    let take_down = args.take_down_when_orphaned;
    let r = super::run_until_signal(|stop| async move {
        eprintln!(
            "cstor csi: {} on {} ({:?} mode)",
            cstor_api::names::CSI_DRIVER_NAME,
            args.endpoint,
            args.mode
        );
        cstor_csi::serve(config, stop)
            .await
            .with_context(|| format!("cstor csi on {}", args.endpoint))
    });
    // After the server stopped: the teardown must not race a stage on the same records.
    if take_down && node_mode && std::os::unix::process::parent_id() != parent {
        eprintln!(
            "cstor csi: the process that started this plugin is gone: taking its attaches down"
        );
        for line in cstor_csi::node::take_down_orphaned(&state_dir) {
            eprintln!("cstor csi: attach taken down: {line}");
        }
    }
    r
}
