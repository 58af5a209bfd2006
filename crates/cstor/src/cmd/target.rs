//! `cstor target`: serve iSCSI targets (`serve`) and edit a running server through its
//! control socket (`add`, `remove`, `list`).
//!
//! Owns: turning command-line target specs into `TargetConfig`s, and the control socket
//! protocol (docs/format/target-control.md). Never: protocol or SCSI logic (cstor-iscsi).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use cstor_iscsi::{
    BlockBackend, ChapConfig, FileBackend, FileReservationStore, ReservationStore, Server,
    TargetConfig,
};
use cstor_metrics::{Backing, Exporter, TargetSource, VolumeLabels};
use cstor_node::registry::Registry;
use cstor_node::socket::AdminServer;
use cstor_node::volume_backend::PoolVolumeBackend;
use cstor_node::PoolHost;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `cstor target ...`
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: TargetCommand,
}

#[derive(Debug, Subcommand)]
enum TargetCommand {
    /// Serve one or more targets until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Add a target to a running server, or many at once with --targets-file.
    Add {
        /// Control socket of the running server.
        #[arg(long)]
        control: PathBuf,
        /// Target spec: IQN,file=PATH[,size=SIZE][,chap=FILE][,allow=INITIATOR...][,portal=A:P;A:P][,redirect=A:P] or IQN,volume=POOL/VOL.
        #[arg(
            required_unless_present = "targets_file",
            conflicts_with = "targets_file"
        )]
        spec: Option<String>,
        /// A file of target specs, one per line (as for `serve --targets-file`), added in
        /// one request: thousands of targets in seconds.
        #[arg(long)]
        targets_file: Option<PathBuf>,
    },
    /// Redirect logins to a target to another portal (it moved), or stop redirecting.
    Redirect {
        /// Control socket of the running server.
        #[arg(long)]
        control: PathBuf,
        /// Target name.
        iqn: String,
        /// New portal ADDR:PORT; omitted: serve logins here again.
        to: Option<String>,
    },
    /// Remove a target from a running server (its sessions end first).
    Remove {
        /// Control socket of the running server.
        #[arg(long)]
        control: PathBuf,
        /// Target name.
        iqn: String,
    },
    /// List the targets of a running server with their counters.
    List {
        /// Control socket of the running server.
        #[arg(long)]
        control: PathBuf,
    },
    /// Status of a replicated target: phase, epoch, replicas (mode, rebuild progress).
    Status {
        /// Control endpoint of the replicated target: a socket path or ADDR:PORT.
        #[arg(long)]
        control: String,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long)]
        output: Option<String>,
        /// Shared key file (required for a TCP control endpoint).
        #[arg(long)]
        auth_key: Option<PathBuf>,
    },
    /// Snapshots, clones and membership changes of a replicated volume.
    #[command(flatten)]
    Repl(super::target_replicated::ReplCommand),
    /// Grow a replicated volume online (every Current replica, then the initiators get
    /// CAPACITY DATA HAS CHANGED). Shrinking is refused.
    Resize {
        /// Control endpoint of the replicated target: a socket path or ADDR:PORT.
        #[arg(long)]
        control: String,
        /// Shared key file (required for a TCP control endpoint).
        #[arg(long)]
        auth_key: Option<PathBuf>,
        /// New size (bytes, or with K/M/G/T suffix).
        #[arg(value_parser = crate::units::parse_size)]
        size: u64,
    },
}

#[derive(Debug, ClapArgs)]
struct ServeArgs {
    /// Portal address.
    #[arg(long, default_value = "127.0.0.1:3260")]
    listen: String,
    /// Name of the single target (with --file or --volume).
    #[arg(long)]
    iqn: Option<String>,
    /// File (or block device) to serve as LUN 0; created sparse at --size if missing.
    #[arg(long, conflicts_with = "volume")]
    file: Option<PathBuf>,
    /// Pool volume POOL/VOL to serve as LUN 0.
    #[arg(long)]
    volume: Option<String>,
    /// Size for a new file (e.g. 1G, 512M, 4096); an existing file is never truncated.
    #[arg(long)]
    size: Option<String>,
    /// CHAP secret file for the single target: `user:secret`, optional second line for mutual CHAP.
    #[arg(long)]
    chap: Option<PathBuf>,
    /// Initiator name allowed on the single target (repeatable; default: all).
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// More targets: IQN,file=PATH[,size=SIZE][,chap=FILE][,allow=INITIATOR]...[,portal=A:P;A:P] or IQN,volume=POOL/VOL (repeatable).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// A file of target specs, one per line as for --target (blank lines and # comments
    /// skipped): thousands of targets start at once.
    #[arg(long)]
    targets_file: Option<PathBuf>,
    /// Portal ADDR:PORT that SendTargets advertises for targets without portal= (repeatable;
    /// e.g. a Service address). Default: the address the discovery connection came in on.
    #[arg(long = "portal")]
    portals: Vec<String>,
    /// Control socket for add/remove/list while running.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Deadline of each backend call, in milliseconds: past it, work the backend has not
    /// started is answered BUSY (at most 10000: every call settles within 10 s).
    #[arg(long, default_value_t = 5_000)]
    io_timeout_ms: u64,
    /// T_hold: while a backend holds commands (a replica membership change), how long a
    /// command waits before it is answered BUSY: seconds, or with a unit (`500ms`, `4s`),
    /// at most 10 s.
    #[arg(long, default_value = "4s")]
    hold_timeout: String,
    /// Budget for command data buffered across all sessions (e.g. 512M): a command beyond
    /// it gets TASK SET FULL and is retried, so many clients cannot exhaust memory.
    #[arg(long, default_value = "512M")]
    max_buffered: String,
    /// Physical block size reported to initiators (power of two, 512 to 131072 bytes).
    #[arg(long, default_value_t = 4096)]
    physical_block_size: u32,
    /// Serve Prometheus metrics of the targets (and the pools of --volume targets) on
    /// ADDR:PORT at /metrics (docs/metrics.md).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Replicated volume options (with --replica, --volume is the volume NAME).
    #[command(flatten)]
    repl: super::target_replicated::ReplArgs,
}

fn parse_size(s: &str) -> Result<u64> {
    crate::units::parse_size(s).map_err(|e| anyhow!(e))
}

/// Pools this process holds open for the volumes it serves, and their admin sockets (so
/// `cstor pool`/`cstor volume` commands reach this process while it serves them).
#[derive(Debug)]
pub struct VolumeHosting {
    registry: Registry,
    host: PoolHost,
    admin: Mutex<Vec<AdminServer>>,
}

impl VolumeHosting {
    fn new(registry: Registry) -> Arc<VolumeHosting> {
        Arc::new(VolumeHosting {
            registry,
            host: PoolHost::default(),
            admin: Mutex::new(Vec::new()),
        })
    }

    /// Stop the admin sockets, then commit and close every pool.
    fn close(&self) {
        self.admin.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for e in self.host.close_all() {
            tracing::error!(error = %e, "closing pool");
        }
    }
}

/// Opens the backend of a pool volume `POOL/VOL`, opening the pool (and its admin
/// socket) on first use.
pub fn open_volume_backend(
    hosting: &VolumeHosting,
    volume: &str,
) -> Result<Arc<PoolVolumeBackend>> {
    let (pool, vol) = volume
        .split_once('/')
        .filter(|(p, v)| !p.is_empty() && !v.is_empty() && !v.contains('@'))
        .ok_or_else(|| anyhow!("{volume:?}: expected POOL/VOLUME"))?;
    let (open, fresh) = hosting.host.get_or_open(&hosting.registry, pool)?;
    if fresh {
        let sock = hosting.registry.socket_path(pool)?;
        let server = AdminServer::start(&sock, open.clone())?;
        hosting
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(server);
    }
    Ok(Arc::new(PoolVolumeBackend::new(open, vol)?))
}

/// Registers a target just added to `server` (and the pool of a pool volume) with the
/// metrics exporter; exported whether or not `--metrics` serves them (it is cheap).
fn export(common: &Common, server: &Arc<Server>, spec: &Spec) {
    let backing = match (&spec.file, &spec.volume) {
        (Some(f), _) => Backing::File(f.clone()),
        (None, Some(v)) => {
            let Some((pool, vol)) = v.split_once('/') else {
                return;
            };
            let Some(open) = common
                .hosting
                .host
                .pools()
                .into_iter()
                .find(|p| p.name() == pool)
            else {
                return;
            };
            common.exporter.add_pool(open.clone());
            Backing::PoolVolume {
                pool: open,
                volume: vol.to_owned(),
            }
        }
        (None, None) => return,
    };
    let name = match &spec.volume {
        Some(v) => v.rsplit('/').next().unwrap_or(v),
        // cStor's IQNs end in the volume (PV) name.
        None => spec.iqn.rsplit(':').next().unwrap_or(&spec.iqn),
    };
    common.exporter.add_target(TargetSource {
        server: server.clone(),
        iqn: spec.iqn.clone(),
        labels: VolumeLabels::named(name),
        backing,
    });
}

/// A parsed target spec.
#[derive(Debug, Default, PartialEq, Eq)]
struct Spec {
    iqn: String,
    file: Option<PathBuf>,
    volume: Option<String>,
    size: Option<u64>,
    chap: Option<PathBuf>,
    allow: Vec<String>,
    portals: Vec<String>,
    redirect: Option<String>,
}

/// Checks a portal `ADDR:PORT` (IPv6 in brackets, or a host name).
fn parse_portal(p: &str) -> Result<String> {
    let ok = match p.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && (host.starts_with('[') == host.ends_with(']'))
                && !host.contains([',', ' ', '\0'])
        }
        None => false,
    };
    if !ok {
        bail!("portal {p:?}: expected ADDR:PORT (IPv6 as [ADDR]:PORT)");
    }
    Ok(p.to_owned())
}

fn parse_spec(s: &str) -> Result<Spec> {
    let mut parts = s.split(',');
    let iqn = parts.next().unwrap_or_default().to_owned();
    if iqn.is_empty() || iqn.contains('=') {
        bail!("target spec {s:?} must start with the target name");
    }
    let mut spec = Spec {
        iqn,
        ..Spec::default()
    };
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("target spec item {p:?} is not key=value"))?;
        match k {
            "file" => spec.file = Some(PathBuf::from(v)),
            "volume" => spec.volume = Some(v.to_owned()),
            "size" => spec.size = Some(parse_size(v)?),
            "chap" => spec.chap = Some(PathBuf::from(v)),
            "allow" => spec.allow.push(v.to_owned()),
            "portal" => {
                for a in v.split(';').filter(|a| !a.is_empty()) {
                    spec.portals.push(parse_portal(a)?);
                }
            }
            "redirect" => spec.redirect = Some(parse_portal(v)?),
            _ => bail!(
                "unknown target spec key {k:?} (file, volume, size, chap, allow, portal, redirect)"
            ),
        }
    }
    match (&spec.file, &spec.volume) {
        (Some(_), None) | (None, Some(_)) => Ok(spec),
        _ => bail!("target {} needs exactly one of file= or volume=", spec.iqn),
    }
}

/// Per-server settings applied to every target.
#[derive(Debug, Clone)]
struct Common {
    hosting: Arc<VolumeHosting>,
    exporter: Exporter,
    io_timeout: Duration,
    hold_timeout: Duration,
    phys_block_exponent: u8,
}

/// Parses `--hold-timeout`: `4`, `4s` or `500ms`, from 1 ms to `limits::MAX_HOLD_TIMEOUT`.
fn parse_hold_timeout(s: &str) -> Result<Duration> {
    let max = cstor_iscsi::limits::MAX_HOLD_TIMEOUT;
    match crate::units::parse_duration(s) {
        Ok(d) if d <= max => Ok(d),
        _ => {
            bail!("--hold-timeout {s:?}: expected a duration from 1ms to {max:?}, e.g. 4s or 500ms")
        }
    }
}

fn phys_exponent(bytes: u32) -> Result<u8> {
    if !bytes.is_power_of_two() || !(512..=131072).contains(&bytes) {
        bail!("--physical-block-size {bytes} must be a power of two from 512 to 131072");
    }
    Ok((bytes / 512).trailing_zeros() as u8)
}

fn config_of(spec: &Spec, common: &Common) -> Result<TargetConfig> {
    // APTPL reservations: `<file>.pr` next to a file; volume properties for a pool volume
    // (they move with the pool).
    let (backend, reservations): (Arc<dyn BlockBackend>, Arc<dyn ReservationStore>) =
        match (&spec.file, &spec.volume) {
            (Some(f), _) => {
                let b = FileBackend::open(f, spec.size, false)?;
                // Earlier versions kept the state in `<file>.aptpl`: moved over once.
                let store =
                    FileReservationStore::new(pr_path(f)).migrating_from(sibling(f, ".aptpl"));
                (Arc::new(b), Arc::new(store))
            }
            (None, Some(v)) => {
                let b = open_volume_backend(&common.hosting, v)?;
                let store = Arc::new(b.reservation_store());
                (b, store)
            }
            (None, None) => bail!("target {} has no storage", spec.iqn),
        };
    let mut cfg = TargetConfig::new(&spec.iqn, backend);
    if let Some(c) = &spec.chap {
        cfg.chap = Some(ChapConfig::from_file(c)?);
    }
    if !spec.allow.is_empty() {
        cfg.allowed_initiators = Some(spec.allow.clone());
    }
    cfg.reservations = Some(reservations);
    cfg.portals = spec.portals.clone();
    cfg.redirect = spec.redirect.clone();
    cfg.io_timeout = common.io_timeout;
    cfg.hold_timeout = common.hold_timeout;
    cfg.phys_block_exponent = common.phys_block_exponent;
    Ok(cfg)
}

/// Persistent reservations of a file-backed LUN live next to the file, in `<file>.pr`.
fn pr_path(file: &Path) -> PathBuf {
    sibling(file, ".pr")
}

/// `<file><suffix>` next to `file`.
fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    file.with_file_name(name)
}

/// Reads a targets file: one spec per line, blank lines and `#` comments skipped.
fn read_specs(path: &Path) -> Result<Vec<Spec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut specs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        specs.push(parse_spec(line).with_context(|| format!("{}:{}", path.display(), n + 1))?);
    }
    Ok(specs)
}

/// Runs `cstor target`.
pub fn run(args: Args) -> Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().max_blocking_threads(64);
    // One core is left to the file writer threads and the kernel's network and page-cache
    // work that every command causes: on 2 cores, one async worker gave 4 KiB random
    // writes at queue depth 16 about 1.4x the IOPS of two (bench/iscsi.sh). tokio's own
    // TOKIO_WORKER_THREADS still overrides it.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    let rt = builder.build().context("starting the runtime")?;
    rt.block_on(async move {
        match args.command {
            TargetCommand::Serve(a) => serve(*a).await,
            TargetCommand::Add {
                control,
                spec,
                targets_file,
            } => {
                let req = match (spec, targets_file) {
                    (Some(spec), _) => format!("add {spec}"),
                    (None, Some(f)) => {
                        let f = std::path::absolute(&f)
                            .with_context(|| format!("resolving {}", f.display()))?;
                        let f = f.to_str().ok_or_else(|| {
                            anyhow!("{}: the targets file path must be UTF-8", f.display())
                        })?;
                        format!("add-file {f}")
                    }
                    (None, None) => bail!("give a target spec or --targets-file"),
                };
                let reply = control::request(&control, &req).await?;
                print!("{reply}");
                Ok(())
            }
            TargetCommand::Redirect { control, iqn, to } => {
                let to = to.as_deref().map(parse_portal).transpose()?;
                let req = format!("redirect {iqn} {}", to.as_deref().unwrap_or("-"));
                let reply = control::request(&control, &req).await?;
                print!("{reply}");
                Ok(())
            }
            TargetCommand::Remove { control, iqn } => {
                let reply = control::request(&control, &format!("remove {iqn}")).await?;
                println!("{reply}");
                Ok(())
            }
            TargetCommand::List { control } => {
                let reply = control::request(&control, "list").await?;
                print!("{reply}");
                Ok(())
            }
            TargetCommand::Status {
                control,
                output,
                auth_key,
            } => super::target_replicated::status(&control, output.as_deref(), &auth_key).await,
            TargetCommand::Resize {
                control,
                auth_key,
                size,
            } => super::target_replicated::resize(&control, size, &auth_key).await,
            TargetCommand::Repl(c) => super::target_replicated::run(c).await,
        }
    })
}

async fn serve(a: ServeArgs) -> Result<()> {
    if !a.repl.replica.is_empty() {
        return serve_replicated(a).await;
    }
    let hosting = VolumeHosting::new(super::pool::registry_from_env()?);
    let result = serve_with(a, hosting.clone()).await;
    // Pools commit and release their devices even when serving failed.
    tokio::task::block_in_place(|| hosting.close());
    result
}

/// `--replica` given: `--volume NAME` served replicated (cmd/target_replicated.rs).
async fn serve_replicated(a: ServeArgs) -> Result<()> {
    let c = super::target_replicated::Common {
        listen: a.listen.clone(),
        iqn: a
            .iqn
            .clone()
            .ok_or_else(|| anyhow!("--replica needs --iqn"))?,
        volume: a
            .volume
            .clone()
            .ok_or_else(|| anyhow!("--replica needs --volume NAME"))?,
        size: parse_size(
            a.size
                .as_deref()
                .ok_or_else(|| anyhow!("--replica needs --size"))?,
        )?,
        control: a.control.as_ref().map(|p| p.to_string_lossy().into_owned()),
        io_timeout: Duration::from_millis(a.io_timeout_ms.clamp(1, 10_000)),
        phys_block_exponent: phys_exponent(a.physical_block_size)?,
        max_buffered: parse_size(&a.max_buffered).context("--max-buffered")?,
        metrics: a.metrics.clone(),
    };
    super::target_replicated::serve(c, &a.repl).await
}

async fn serve_with(a: ServeArgs, hosting: Arc<VolumeHosting>) -> Result<()> {
    if a.io_timeout_ms == 0 || a.io_timeout_ms > 10_000 {
        bail!(
            "--io-timeout-ms {} must be from 1 to 10000",
            a.io_timeout_ms
        );
    }
    let common = Common {
        hosting,
        exporter: Exporter::new(),
        io_timeout: Duration::from_millis(a.io_timeout_ms),
        hold_timeout: parse_hold_timeout(&a.hold_timeout)?,
        phys_block_exponent: phys_exponent(a.physical_block_size)?,
    };
    let mut specs = Vec::new();
    match (&a.iqn, &a.file, &a.volume) {
        (Some(iqn), file, volume) if file.is_some() || volume.is_some() => specs.push(Spec {
            iqn: iqn.clone(),
            file: file.clone(),
            volume: volume.clone(),
            size: a.size.as_deref().map(parse_size).transpose()?,
            chap: a.chap.clone(),
            allow: a.allow.clone(),
            portals: Vec::new(),
            redirect: None,
        }),
        (Some(_), None, None) => bail!("--iqn needs --file or --volume"),
        (None, Some(_), _) | (None, _, Some(_)) => bail!("--file/--volume need --iqn"),
        _ => {}
    }
    for t in &a.targets {
        specs.push(parse_spec(t)?);
    }
    if let Some(path) = &a.targets_file {
        specs.extend(read_specs(path)?);
    }
    if specs.is_empty() && a.control.is_none() {
        bail!("nothing to serve: give --iqn with --file/--volume, --target, --targets-file or --control");
    }
    let server = Server::new();
    let portals = a
        .portals
        .iter()
        .map(|p| parse_portal(p))
        .collect::<Result<Vec<_>>>()?;
    server.set_portals(portals);
    server.set_max_buffered(parse_size(&a.max_buffered).context("--max-buffered")?);
    for s in &specs {
        server
            .add_target(
                tokio::task::block_in_place(|| config_of(s, &common))
                    .with_context(|| format!("target {}", s.iqn))?,
            )
            .with_context(|| format!("target {}", s.iqn))?;
        export(&common, &server, s);
    }
    let metrics = super::metrics::start(a.metrics.as_deref(), &common.exporter).await?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    // The bound address on stdout lets scripts and tests use port 0.
    println!("listening on {}", listener.local_addr()?);
    let control_task = a
        .control
        .as_ref()
        .map(|path| tokio::spawn(control::serve(path.clone(), server.clone(), common.clone())));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = server.clone().serve(listener) => r.context("serving"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    drop(metrics);
    server.close_all().await;
    if let Some(t) = control_task {
        t.abort();
    }
    if let Some(p) = &a.control {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// The control socket: one request line, one reply, then the connection closes
/// (docs/format/target-control.md).
mod control {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    /// Longest request line accepted.
    const MAX_REQUEST_BYTES: u64 = 8192;
    /// Longest reply read by the client.
    const MAX_REPLY_BYTES: u64 = 4 << 20;
    /// A control client must send its request within this time.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    pub(super) async fn serve(path: PathBuf, server: Arc<Server>, common: Common) -> Result<()> {
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        loop {
            let (stream, _) = listener.accept().await?;
            let server = server.clone();
            let common = common.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &server, &common).await {
                    tracing::warn!(error = %e, "control request failed");
                }
            });
        }
    }

    async fn handle(stream: UnixStream, server: &Arc<Server>, common: &Common) -> Result<()> {
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        let mut rd = BufReader::new(rd.take(MAX_REQUEST_BYTES));
        tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line))
            .await
            .context("request timed out")??;
        let reply = match execute(line.trim(), server, common).await {
            Ok(text) => format!("ok\n{text}"),
            Err(e) => format!("error {e:#}\n"),
        };
        wr.write_all(reply.as_bytes()).await?;
        wr.shutdown().await?;
        Ok(())
    }

    async fn execute(req: &str, server: &Arc<Server>, common: &Common) -> Result<String> {
        let (verb, rest) = req.split_once(' ').unwrap_or((req, ""));
        match verb {
            "add" => {
                let spec = parse_spec(rest)?;
                let cfg = tokio::task::block_in_place(|| config_of(&spec, common))?;
                server.add_target(cfg)?;
                export(common, server, &spec);
                Ok(format!("added {}\n", spec.iqn))
            }
            "add-file" => {
                // Every spec is checked before any target is added; then they are added
                // in order, stopping at the first failure (the reply says how far).
                let specs = read_specs(Path::new(rest))?;
                let mut added = 0usize;
                for s in &specs {
                    let r = tokio::task::block_in_place(|| config_of(s, common))
                        .and_then(|cfg| Ok(server.add_target(cfg)?));
                    if let Err(e) = r {
                        bail!("target {}: {e:#} ({added} of {} added)", s.iqn, specs.len());
                    }
                    export(common, server, s);
                    added += 1;
                }
                Ok(format!("added {added} targets\n"))
            }
            "redirect" => {
                let (iqn, to) = rest.split_once(' ').unwrap_or((rest, "-"));
                let to = match to.trim() {
                    "-" | "" => None,
                    a => Some(parse_portal(a)?),
                };
                let said = match &to {
                    Some(a) => format!("redirecting {iqn} to {a}\n"),
                    None => format!("serving {iqn} here\n"),
                };
                server.set_redirect(iqn, to)?;
                Ok(said)
            }
            "remove" => {
                server.remove_target(rest).await?;
                common.exporter.remove_target(rest);
                Ok(format!("removed {rest}\n"))
            }
            "list" => {
                let mut out = String::new();
                for t in server.targets() {
                    let c = t.counters;
                    out.push_str(&format!(
                        "{} size_bytes={} sessions={} chap={} read_ops={} write_ops={} read_bytes={} write_bytes={} busy_ns={}\n",
                        t.iqn, t.size_bytes, t.sessions, t.chap, c.read_ops, c.write_ops, c.read_bytes, c.write_bytes, c.busy_ns
                    ));
                }
                Ok(out)
            }
            _ => bail!("unknown request {verb:?} (add, add-file, redirect, remove, list)"),
        }
    }

    pub(super) async fn request(path: &Path, req: &str) -> Result<String> {
        let mut s = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        s.write_all(format!("{req}\n").as_bytes()).await?;
        let mut reply = String::new();
        s.take(MAX_REPLY_BYTES).read_to_string(&mut reply).await?;
        match reply.strip_prefix("ok\n") {
            Some(rest) => Ok(rest.trim_end().to_owned() + if rest.is_empty() { "" } else { "\n" }),
            None => bail!(
                "{}",
                reply.trim().strip_prefix("error ").unwrap_or(reply.trim())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_specs() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("x").is_err());
        let s = parse_spec("iqn.2024-01.x:a,file=/tmp/a.img,size=1G,allow=iqn.i1,allow=iqn.i2")
            .unwrap();
        assert_eq!(s.iqn, "iqn.2024-01.x:a");
        assert_eq!(s.size, Some(1 << 30));
        assert_eq!(s.allow.len(), 2);
        assert!(parse_spec("iqn.x:a,volume=p/v").unwrap().volume.is_some());
        assert!(parse_spec("iqn.x:a").is_err());
        assert!(parse_spec("iqn.x:a,file=/a,volume=p/v").is_err());
        let s = parse_spec("iqn.x:a,file=/a,portal=10.0.0.1:3260;[fd00::1]:3261").unwrap();
        assert_eq!(s.portals, ["10.0.0.1:3260", "[fd00::1]:3261"]);
        assert!(parse_spec("iqn.x:a,file=/a,portal=10.0.0.1").is_err());
        assert!(parse_portal("svc.ns:3260").is_ok());
        let s = parse_spec("iqn.x:a,file=/a,redirect=10.0.0.2:3260").unwrap();
        assert_eq!(s.redirect.as_deref(), Some("10.0.0.2:3260"));
        assert!(parse_spec("iqn.x:a,file=/a,redirect=nowhere").is_err());
        assert_eq!(parse_hold_timeout("4s").unwrap(), Duration::from_secs(4));
        assert_eq!(
            parse_hold_timeout("2.5").unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            parse_hold_timeout("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_hold_timeout("0").is_err());
        assert!(parse_hold_timeout("11s").is_err());
        assert!(parse_hold_timeout("x").is_err());
        let home = tempfile::tempdir().unwrap();
        let hosting = VolumeHosting::new(Registry::new(home.path()));
        let err = open_volume_backend(&hosting, "p").unwrap_err().to_string();
        assert!(err.contains("POOL/VOLUME"), "{err}");
        let err = open_volume_backend(&hosting, "p/v")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not known"), "{err}");
    }
}
