//! `cstor replica serve`: serves the volumes of one pool to targets over the replica
//! protocol (cstor-replication). Without `--auth-key` it binds to loopback only.
//!
//! Owns: opening the pool (with its admin socket, so `cstor volume` reaches it while
//! served) and the process lifetime. Never: protocol logic (cstor-replication).

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use cstor_node::socket::AdminServer;
use cstor_node::{OpenPool, PoolHost};
use cstor_pool::Pool;
use cstor_replication::store::PoolAccess;
use cstor_replication::{AuthKey, ReplicaServer};

/// `cstor replica ...`
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: ReplicaCommand,
}

#[derive(Debug, Subcommand)]
enum ReplicaCommand {
    /// Serve a pool's volumes to replicated targets until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Make a CA and a replica certificate for TLS on the replica port: writes ca.crt
    /// (for targets: --replica-ca), replica.crt and replica.key (for `replica serve
    /// --tls-cert/--tls-key`) into --out.
    TlsInit(TlsInitArgs),
}

#[derive(Debug, ClapArgs)]
struct TlsInitArgs {
    /// Directory to write ca.crt, replica.crt and replica.key into (created).
    #[arg(long)]
    out: PathBuf,
    /// IP address or DNS name targets dial the replica at (repeatable).
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// Validity, days.
    #[arg(long, default_value_t = 825)]
    days: u32,
}

#[derive(Debug, ClapArgs)]
struct ServeArgs {
    /// Pool whose volumes are served (POOL/VOLUME is the replica of volume VOLUME).
    #[arg(long)]
    pool: String,
    /// Address to listen on, ADDR:PORT (loopback only without --auth-key).
    #[arg(long, default_value = "127.0.0.1:3232")]
    listen: String,
    /// Shared cluster key file: targets must prove they hold it (HMAC-SHA256).
    #[arg(long)]
    auth_key: Option<PathBuf>,
    /// Replica id (the slot) reported to targets; default: the pool guid.
    #[arg(long)]
    replica_id: Option<String>,
    /// Serve Prometheus metrics of the pool and its volumes on ADDR:PORT at /metrics
    /// (docs/metrics.md).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Require TLS on the replica port with this certificate chain (PEM; with
    /// --tls-key). Plain targets are refused with the reason.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// A pool held open by this process, as the replication crate sees it.
#[derive(Debug)]
struct Hosted(Arc<OpenPool>);

impl PoolAccess for Hosted {
    fn pool(&self) -> &Pool {
        self.0.engine()
    }
}

/// Runs `cstor replica`.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match args.command {
        ReplicaCommand::Serve(a) => rt.block_on(serve(a)),
        ReplicaCommand::TlsInit(a) => tls_init(&a),
    }
}

fn tls_init(a: &TlsInitArgs) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let g = cstor_replication::tls::generate(&a.names, a.days)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for (name, body, mode) in [
        ("ca.crt", &g.ca_cert, 0o644),
        ("replica.crt", &g.cert, 0o644),
        ("replica.key", &g.key, 0o600),
    ] {
        let p = a.out.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .with_context(|| format!("writing {} (it must not exist yet)", p.display()))?;
        std::io::Write::write_all(&mut f, body.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!(
        "wrote {dir}/ca.crt, {dir}/replica.crt, {dir}/replica.key for {}",
        a.names.join(", "),
        dir = a.out.display()
    );
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<()> {
    let key = a
        .auth_key
        .as_deref()
        .map(AuthKey::from_file)
        .transpose()
        .map_err(|e| anyhow!("--auth-key: {e}"))?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(k)) => Some(
            cstor_replication::tls::ReplicaTlsServer::load(cert, k)
                .context("--tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let addrs: Vec<_> = a
        .listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {}", a.listen))?
        .collect();
    if key.is_none() && addrs.iter().any(|s| !s.ip().is_loopback()) {
        bail!(
            "--listen {}: without --auth-key the replica port binds to loopback only",
            a.listen
        );
    }
    let registry = super::pool::registry_from_env()?;
    let host = PoolHost::default();
    let (open, _) = tokio::task::block_in_place(|| host.get_or_open(&registry, &a.pool))
        .with_context(|| format!("opening pool {}", a.pool))?;
    let admin = AdminServer::start(&registry.socket_path(&a.pool)?, open.clone())?;
    let exporter = cstor_metrics::Exporter::new();
    exporter.add_pool(open.clone());
    let metrics = super::metrics::start(a.metrics.as_deref(), &exporter).await?;
    let id = a
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("{:016x}", open.engine().guid()));
    let server = ReplicaServer::new(Arc::new(Hosted(open)), id.clone(), key);
    if let Some(t) = tls {
        server.require_tls(t);
    }
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    // The bound address on stdout lets scripts and tests use port 0.
    println!("replica {id} listening on {}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = server.serve(listener) => r.context("serving"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    server.stop();
    drop(metrics);
    drop(exporter);
    tokio::task::block_in_place(|| {
        server.mark_clean();
        drop(admin);
        for e in host.close_all() {
            tracing::error!(error = %e, "closing pool");
        }
    });
    result
}
