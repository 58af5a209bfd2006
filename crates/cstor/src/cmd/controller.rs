//! `cstor controller`: the cluster controller (crates/controller) as a process:
//! CStorPoolClusters to pool instances, provisioning, scale, expansion and snapshots,
//! leader-elected on the Lease `cstor-controller` so two can run (docs/controller.md).
//!
//! Owns: argument parsing and the process lifetime (SIGINT/SIGTERM stop it). Never:
//! reconcile logic of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `cstor controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kubeconfig of the API server (e.g. the one `cstor apiserver` writes in its data
    /// dir). Default: the in-cluster configuration of a pod's ServiceAccount.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of cstor's objects (CSPCs, pool instances, volumes) and of the Lease.
    #[arg(long, default_value = cstor_api::names::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Leader election identity (default: hostname and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// Lease duration in seconds: a standby takes over this long after the leader stops
    /// renewing.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Milliseconds between reconcile passes.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// How long the node hosting a volume's target may go without renewing its heartbeat
    /// Lease before the target moves to another live node (`15s`, `500ms`).
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    pub target_move_grace: Duration,
    /// How long the node of a pool instance holding a replica may go without renewing its
    /// heartbeat Lease before the replica is replaced by a new one on another healthy pool
    /// instance (`600s`, `90s`, `500ms`).
    #[arg(long, default_value = "600s", value_parser = crate::units::parse_duration)]
    pub replica_replace_grace: Duration,
    /// Provision claims (CVC and PV), expand them, reclaim released PVs and bind
    /// VolumeSnapshots (CStorSnapshot and VolumeSnapshotContent) in the controller
    /// itself, without the CSI driver: only for running the controller alone (tests).
    /// Never together with the CSI sidecars and snapshot controller (`cstor sidecars`,
    /// or the real ones): they would be two writers of the same PV or content.
    #[arg(long)]
    pub provision_without_csi: bool,
}

/// Runs the controller until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.lease_duration >= 2,
        "--lease-duration must be at least 2 seconds"
    );
    anyhow::ensure!(args.interval_ms >= 10, "--interval-ms must be at least 10");
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let config = cstor_controller::Config {
        kubeconfig: args.kubeconfig.clone(),
        namespace: args.namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration),
        interval: Duration::from_millis(args.interval_ms),
        settings: cstor_controller::Settings {
            target_move_grace: args.target_move_grace,
            replica_replace_grace: args.replica_replace_grace,
            provision_without_csi: args.provision_without_csi,
        },
    };
    super::run_until_signal(|stop| async move {
        eprintln!(
            "cstor controller: {} in namespace {}",
            config.identity, config.namespace
        );
        cstor_controller::run(config, stop)
            .await
            .with_context(|| match &args.kubeconfig {
                Some(k) => format!("cstor controller (kubeconfig {})", k.display()),
                None => "cstor controller (in-cluster configuration)".to_owned(),
            })
    })
}
