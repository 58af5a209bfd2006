//! `cstor sidecars`: the embedded CSI sidecars (crates/sidecars) as a process beside
//! `cstor csi --mode controller`, calling it on its socket (docs/csi.md § Sidecars).
//!
//! Owns: argument parsing and the process lifetime (SIGINT/SIGTERM stop it). Never:
//! sidecar logic of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `cstor sidecars`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Does what kubernetes-csi's external-provisioner does for claims of driver\ncstor.csi.openebs.io, as a gRPC client of the driver's controller socket: CreateVolume\nand the PersistentVolume for each claim, DeleteVolume for a released volume with\nreclaim policy Delete. On a real cluster the real sidecar replaces it. See docs/csi.md."
)]
pub struct Args {
    /// The CSI driver's controller socket: unix:///PATH.
    #[arg(long, env = "CSI_ENDPOINT")]
    pub csi_endpoint: String,
    /// Kubeconfig of the API server (default: the in-cluster configuration).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Time between passes over the objects (`1s`, `250ms`).
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
    pub interval: Duration,
    /// First delay after a failed call; it doubles with each failure.
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
    pub retry_interval_start: Duration,
    /// Longest delay between two attempts of a failing call.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub retry_interval_max: Duration,
    /// How long one CSI call may take before it counts as failed (DEADLINE_EXCEEDED).
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
}

/// Runs the sidecars until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = cstor_sidecars::Config {
        kubeconfig: args.kubeconfig.clone(),
        interval: args.interval,
        retry_start: args.retry_interval_start,
        retry_max: args.retry_interval_max,
        timeout: args.timeout,
        ..cstor_sidecars::Config::new(args.csi_endpoint.clone())
    };
    super::run_until_signal(|stop| async move {
        eprintln!("cstor sidecars: driver at {}", args.csi_endpoint);
        cstor_sidecars::run(config, stop)
            .await
            .with_context(|| format!("cstor sidecars ({})", args.csi_endpoint))
    })
}
