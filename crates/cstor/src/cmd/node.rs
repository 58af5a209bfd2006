//! `cstor node`: the node agent (crates/agent) as a process, until SIGINT/SIGTERM, which
//! stop targets (initiators logged out), replica servers and pools cleanly.
//!
//! The clean stop is bounded ([`STOP_BOUND`]) and a second signal cuts it short: a stop
//! that waits on an API server or replica that is gone must not keep the process (and its
//! pools' locks) forever. Cutting it is safe: pools recover from their intent log at the
//! next import and a target's record not marked clean makes its next start reconcile.
//!
//! Owns: argument parsing and the process lifetime. Never: agent logic (cstor-agent).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How long the clean stop may take before the process exits without it.
pub const STOP_BOUND: Duration = Duration::from_secs(60);

/// Arguments of `cstor node`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node name (the Node object and its `kubernetes.io/hostname` label).
    #[arg(long)]
    pub name: String,
    /// Kubeconfig of the API server (default: $KUBECONFIG, else the in-cluster
    /// configuration of a pod's ServiceAccount).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// A disk this node offers (file, loop device or whole disk; repeatable). Without
    /// any, loop devices with a backing file and whole disks of the machine are scanned.
    #[arg(long = "disk")]
    pub disks: Vec<PathBuf>,
    /// The node's InternalIP: the iSCSI portal and the replica listeners bind here.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// iSCSI portal port.
    #[arg(long, default_value_t = 3260)]
    pub iscsi_port: u16,
    /// Where the node remembers its pools (default: $CSTOR_HOME, else /var/lib/cstor).
    #[arg(long, env = "CSTOR_HOME", default_value = "/var/lib/cstor")]
    pub home: PathBuf,
    /// Serve Prometheus metrics of every pool and target of this node on ADDR:PORT at
    /// /metrics (docs/metrics.md). Default: the node's --address, port 9500 (cStor's
    /// exporter port); `off` serves none.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub metrics: Option<String>,
    /// Seconds between reconcile passes.
    #[arg(long, default_value_t = 2)]
    pub resync: u64,
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(a: Args) -> Result<()> {
    if a.name.is_empty() || a.name.len() > 63 {
        bail!("--name {:?}: a node name is 1 to 63 characters", a.name);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let r = rt.block_on(async {
        std::fs::create_dir_all(&a.home)
            .with_context(|| format!("creating {}", a.home.display()))?;
        let cfg = cstor_agent::AgentConfig {
            name: a.name.clone(),
            kubeconfig: a.kubeconfig.clone(),
            disks: a.disks.clone(),
            address: a.address,
            iscsi_port: a.iscsi_port,
            home: a.home.clone(),
            resync: Duration::from_secs(a.resync.max(1)),
            lease_renew: Duration::from_secs(5),
        };
        let agent = cstor_agent::Agent::start(cfg)
            .await
            .with_context(|| format!("starting node agent {}", a.name))?;
        let metrics = match a.metrics.as_deref() {
            Some("off") => None,
            Some(addr) => Some(addr.to_string()),
            None => Some(SocketAddr::new(a.address, super::metrics::EXPORTER_PORT).to_string()),
        };
        let _metrics = super::metrics::start(metrics.as_deref(), &agent.exporter())
            .await
            .context("serving metrics (choose another endpoint with --metrics ADDR:PORT, or --metrics off)")?;
        println!("node {} up: iSCSI portal {}", a.name, agent.portal());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = agent.run() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let stopped = tokio::select! {
            r = tokio::time::timeout(STOP_BOUND, agent.shutdown()) => r.is_ok(),
            _ = tokio::signal::ctrl_c() => false,
            _ = term.recv() => false,
        };
        if !stopped {
            bail!(
                "the clean stop did not finish within {} s or was interrupted: exiting without \
                 it (pools replay their intent log at the next import)",
                STOP_BOUND.as_secs()
            );
        }
        Ok(())
    });
    // A stop cut short leaves pool calls on blocking threads; the runtime's drop would
    // wait for them without a bound.
    rt.shutdown_timeout(Duration::from_secs(5));
    r
}
