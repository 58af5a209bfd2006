//! `cstor sidecars`: the embedded CSI sidecars (crates/sidecars) as a process beside
//! `cstor csi --mode controller`, calling it on its socket (docs/csi.md § Sidecars).
//!
//! Owns: argument parsing (the real sidecars' flags where they have one) and the process
//! lifetime (SIGINT/SIGTERM stop it). Never: sidecar logic of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `cstor sidecars`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Does what kubernetes-csi's external-provisioner, -resizer, -attacher and csi-snapshotter\nand the snapshot-controller do for driver cstor.csi.openebs.io, as a gRPC client of the\ndriver's controller socket. With --leader-election each acts only while this process holds\nits Lease (named as the real sidecar's). On a real cluster the real sidecars replace it.\nSee docs/csi.md."
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
    /// How often the attacher compares VolumeAttachments with the driver's ListVolumes
    /// and processes again those whose attached status is wrong.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub reconcile_sync: Duration,
    /// Act as each sidecar only while holding its Lease, as the real sidecars do with
    /// --leader-election, so that several processes can run.
    #[arg(long)]
    pub leader_election: bool,
    /// Namespace of the Leases (default: $POD_NAMESPACE, else the ServiceAccount's
    /// namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// This process's identity in the Leases (default: hostname and process id).
    #[arg(long)]
    pub leader_election_identity: Option<String>,
    /// How long a standby waits for a silent holder before taking its Lease over.
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the holder acts on after its last successful renewal.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// Time between renewals and between a standby's attempts.
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub leader_election_retry_period: Duration,
}

/// The namespace a pod runs in, as csi-lib-utils finds it when no flag names one.
fn in_cluster_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The `--leader-election*` settings, checked as client-go checks them.
fn leader_election(args: &Args) -> anyhow::Result<Option<cstor_sidecars::leader::Settings>> {
    if !args.leader_election {
        return Ok(None);
    }
    let (lease, renew, retry) = (
        args.leader_election_lease_duration,
        args.leader_election_renew_deadline,
        args.leader_election_retry_period,
    );
    anyhow::ensure!(
        lease > renew,
        "--leader-election-lease-duration must be greater than --leader-election-renew-deadline"
    );
    anyhow::ensure!(
        renew > retry && !retry.is_zero(),
        "--leader-election-renew-deadline must be greater than --leader-election-retry-period, which must not be 0"
    );
    anyhow::ensure!(
        lease.as_secs() >= 1,
        "--leader-election-lease-duration must be at least 1s (the Lease counts whole seconds)"
    );
    let identity = args.leader_election_identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    Ok(Some(cstor_sidecars::leader::Settings {
        namespace: args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(in_cluster_namespace),
        identity,
        lease_duration: lease,
        renew_deadline: renew,
        retry_period: retry,
    }))
}

/// Runs the sidecars until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = cstor_sidecars::Config {
        kubeconfig: args.kubeconfig.clone(),
        interval: args.interval,
        retry_start: args.retry_interval_start,
        retry_max: args.retry_interval_max,
        timeout: args.timeout,
        reconcile_sync: args.reconcile_sync,
        leader_election: leader_election(&args)?,
        ..cstor_sidecars::Config::new(args.csi_endpoint.clone())
    };
    super::run_until_signal(|stop| async move {
        match &config.leader_election {
            Some(l) => eprintln!(
                "cstor sidecars: driver at {}, leader election as {} in namespace {}",
                args.csi_endpoint, l.identity, l.namespace
            ),
            None => eprintln!("cstor sidecars: driver at {}", args.csi_endpoint),
        }
        cstor_sidecars::run(config, stop)
            .await
            .with_context(|| format!("cstor sidecars ({})", args.csi_endpoint))
    })
}
