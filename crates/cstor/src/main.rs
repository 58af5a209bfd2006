//! The `cstor` binary: one subcommand per daemon and tool (ARCHITECTURE.md decision 4).
//!
//! Owns: command-line parsing, logging set-up and the wiring of library crates into
//! processes. Never: storage, protocol or API logic of its own; each lives in its crate and
//! this binary only maps their typed errors to messages and exit codes (`anyhow`).

use clap::{Parser, Subcommand};

mod cmd;
mod units;

#[derive(Debug, Parser)]
#[command(
    name = "cstor",
    version,
    about = "Replicated block storage for Kubernetes",
    after_help = "Environment:\n  CSTOR_HOME        where pools are remembered (default /var/lib/cstor)\n  CSTOR_CACHE_SIZE  block cache per open pool, e.g. 256M (default 64M)\n  RUST_LOG          log filter, e.g. cstor=debug"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Each subcommand lives in its own module under src/cmd/.
    /// Pools: create, import, status, scrub, replace, add, export, destroy.
    Pool(cmd::pool::PoolArgs),
    /// Volumes of a pool: create, read, write, snapshot, clone, send, recv...
    Volume(cmd::pool::VolumeArgs),
    /// Serve iSCSI targets and manage a running target server.
    Target(cmd::target::Args),
    /// Serve a pool's volumes as replicas of replicated targets.
    Replica(cmd::replica::Args),
    /// Run the embedded Kubernetes API server.
    Apiserver(cmd::apiserver::Args),
    /// Run the cluster controller: pools from CStorPoolClusters, volumes from claims.
    Controller(cmd::controller::Args),
    /// Run the node agent: Node, BlockDevices, pools, replicas and targets of one node.
    Node(cmd::node::Args),
    /// Serve the CSI driver cstor.csi.openebs.io on a unix socket.
    Csi(cmd::csi::Args),
    /// Run the embedded CSI sidecars (provisioner) against the driver's socket.
    Sidecars(cmd::sidecars::Args),
    /// Run the whole system on this machine: API server, controller, node agents.
    Up(cmd::up::Args),
    /// Userspace iSCSI initiator: attach a LUN as a file through FUSE, detach, discover.
    Initiator(cmd::initiator::Args),
    /// Use a claim's volume on a node as a pod would: publish, stage and mount it at DIR.
    Attach(cmd::attach::AttachArgs),
    /// Undo `cstor attach`: unmount, unstage and unpublish a claim's volume on a node.
    Detach(cmd::attach::DetachArgs),
}

fn main() -> std::process::ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let result: anyhow::Result<()> = match cli.command {
        Command::Pool(args) => cmd::pool::run_pool(args),
        Command::Volume(args) => cmd::pool::run_volume(args),
        Command::Target(args) => cmd::target::run(args),
        Command::Replica(args) => cmd::replica::run(args),
        Command::Apiserver(args) => cmd::apiserver::run(args),
        Command::Controller(args) => cmd::controller::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Csi(args) => cmd::csi::run(args),
        Command::Sidecars(args) => cmd::sidecars::run(args),
        Command::Up(args) => cmd::up::run(args),
        Command::Initiator(args) => cmd::initiator::run(args),
        Command::Attach(args) => cmd::attach::run_attach(args),
        Command::Detach(args) => cmd::attach::run_detach(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line for the user; the causes chained with ": " like `anyhow`'s {:#}.
            eprintln!("cstor: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap prints them; a usage error is one line on stderr (the
/// first line of clap's message) and exit code 2, like every other cstor error.
fn usage_error(err: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        _ => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "cstor: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            std::process::ExitCode::from(2)
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings), so command output on
/// stdout stays machine-readable.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
