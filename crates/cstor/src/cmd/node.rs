//! `cstor node`: the node agent (crates/agent) as a process, until SIGINT/SIGTERM, which
//! stop targets (initiators logged out), replica servers and pools cleanly.
//!
//! Owns: argument parsing and the process lifetime. Never: agent logic (cstor-agent).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Arguments of `cstor node`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node name (the Node object and its `kubernetes.io/hostname` label).
    #[arg(long)]
    pub name: String,
    /// Kubeconfig of the API server.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
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
    /// /metrics (docs/metrics.md; cStor's exporter port is 9500).
    #[arg(long, value_name = "ADDR:PORT")]
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
    rt.block_on(async {
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
        let _metrics = super::metrics::start(a.metrics.as_deref(), &agent.exporter()).await?;
        println!("node {} up: iSCSI portal {}", a.name, agent.portal());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = agent.run() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        agent.shutdown().await;
        Ok(())
    })
}
