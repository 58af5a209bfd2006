//! `cstor target serve --replica ...` (a replicated volume over iSCSI) and
//! `cstor target status|resize|snapshot|snapshots|delete-snapshot|clone|add-replica|
//! remove-replica --control ...`, `cstor target force-current --state-dir ...`.
//!
//! Owns: wiring a `ReplicatedVolume` (cstor-replication) into the iSCSI server, the
//! membership file store in `--state-dir`, and the replicated target's control endpoint
//! (docs/format/replicated-control.md): a unix socket path, or ADDR:PORT over TCP where
//! every request carries an HMAC of the shared key. Never: replication logic.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use cstor_iscsi::{Server, TargetConfig};
use cstor_replication::membership::RecordReservations;
use cstor_replication::volume::Phase;
use cstor_replication::{AuthKey, FileStore, ReplicatedVolume, VolumeConfig, VolumeStatus};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Label of control-request proofs.
const CONTROL_LABEL: &[u8] = b"cstor-target-control-v1";
/// A TCP control request's timestamp may differ from ours by this much.
const CONTROL_SKEW_SECS: u64 = 60;

/// Options of `cstor target serve` for a replicated volume (with `--volume NAME`).
#[derive(Debug, Clone, ClapArgs)]
pub struct ReplArgs {
    /// Replica ADDR:PORT (repeatable): serve `--volume` replicated on these replicas.
    #[arg(long = "replica")]
    pub replica: Vec<String>,
    /// cStor's consistency factor: recorded; acts only with --strict (minCurrent = CF).
    #[arg(long)]
    pub consistency_factor: Option<u32>,
    /// Refuse to run below --consistency-factor Current replicas.
    #[arg(long)]
    pub strict: bool,
    /// Directory holding the membership record (required with --replica).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Shared cluster key file (replica handshake and TCP control).
    #[arg(long)]
    pub auth_key: Option<PathBuf>,
    /// Allow a start that may lose data: an empty record over replicas holding data, or
    /// a --size different from the record.
    #[arg(long)]
    pub accept_data_loss: bool,
    /// Catch-up rate limit (e.g. 100M per second; default unlimited).
    #[arg(long)]
    pub rebuild_rate: Option<String>,
    /// Eviction bound T_evict, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub evict_ms: u64,
    /// Eviction backlog bound: a replica with more write data unanswered than this beyond
    /// the quickest Current replica is evicted without waiting for --evict-ms (e.g.
    /// 128M, the default; 0 turns it off).
    #[arg(long, default_value = "128M")]
    pub evict_backlog: String,
    /// Speak TLS to the replicas, trusting the CA certificates in this PEM file (the
    /// replicas run with --tls-cert; `cstor replica tls-init` makes both).
    #[arg(long, value_name = "PEM")]
    pub replica_ca: Option<PathBuf>,
}

/// What `serve` needs from the common `cstor target serve` options.
#[derive(Debug)]
pub struct Common {
    /// Portal address.
    pub listen: String,
    /// Target name.
    pub iqn: String,
    /// Volume name.
    pub volume: String,
    /// Size, bytes.
    pub size: u64,
    /// Control endpoint (path or ADDR:PORT).
    pub control: Option<String>,
    /// Per-call deadline.
    pub io_timeout: Duration,
    /// Physical block exponent.
    pub phys_block_exponent: u8,
    /// Command data budget, bytes.
    pub max_buffered: u64,
    /// `--metrics ADDR:PORT` (cmd/metrics.rs).
    pub metrics: Option<String>,
}

fn load_key(p: &Option<PathBuf>) -> Result<Option<AuthKey>> {
    p.as_deref()
        .map(AuthKey::from_file)
        .transpose()
        .map_err(|e| anyhow!("--auth-key: {e}"))
}

/// Serves a replicated volume until SIGINT/SIGTERM or until fenced.
pub async fn serve(c: Common, a: &ReplArgs) -> Result<()> {
    let state_dir = a.state_dir.clone().ok_or_else(|| {
        anyhow!("--replica needs --state-dir (where the membership record lives)")
    })?;
    let key = load_key(&a.auth_key)?;
    let mut cfg = VolumeConfig::new(&c.volume, c.size, a.replica.clone());
    cfg.key = key.clone();
    cfg.tls = a
        .replica_ca
        .as_deref()
        .map(cstor_replication::tls::ReplicaTlsClient::load)
        .transpose()
        .context("--replica-ca")?;
    cfg.consistency_factor = a.consistency_factor.unwrap_or(1);
    cfg.strict = a.strict;
    if a.strict && a.consistency_factor.is_none() {
        bail!("--strict needs --consistency-factor");
    }
    cfg.accept_data_loss = a.accept_data_loss;
    cfg.t_evict = Duration::from_millis(a.evict_ms.max(100));
    cfg.evict_backlog =
        crate::units::parse_size(&a.evict_backlog).map_err(|e| anyhow!("--evict-backlog: {e}"))?;
    cfg.rebuild_rate = a
        .rebuild_rate
        .as_deref()
        .map(crate::units::parse_size)
        .transpose()
        .map_err(|e| anyhow!("--rebuild-rate: {e}"))?;
    let store = Arc::new(FileStore::new(&state_dir)?);
    let vol = ReplicatedVolume::start(cfg, store.clone()).await?;
    let server = Server::new();
    server.set_max_buffered(c.max_buffered);
    let mut tcfg = TargetConfig::new(&c.iqn, Arc::new(vol.clone()));
    tcfg.reservations = Some(Arc::new(RecordReservations::new(store, vol.epoch())));
    tcfg.io_timeout = c.io_timeout;
    tcfg.phys_block_exponent = c.phys_block_exponent;
    server
        .add_target(tcfg)
        .with_context(|| format!("target {}", c.iqn))?;
    let exporter = cstor_metrics::Exporter::new();
    let labels = cstor_metrics::VolumeLabels::named(&c.volume);
    exporter.add_replicated_volume(server.clone(), &c.iqn, labels, vol.clone());
    let _metrics = super::metrics::start(c.metrics.as_deref(), &exporter).await?;
    let listener = tokio::net::TcpListener::bind(&c.listen)
        .await
        .with_context(|| format!("listening on {}", c.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let control = match &c.control {
        Some(ep) => Some(start_control(ep, vol.clone(), key.clone()).await?),
        None => None,
    };
    let v2 = vol.clone();
    let refused = async move {
        loop {
            let p = v2.ready().await;
            if p == Phase::Offline {
                if let Some(r) = v2.refusal() {
                    return r;
                }
            }
            if p != Phase::Init {
                // Serving (or waiting Offline for a Current replica): never returns.
                std::future::pending::<()>().await;
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = server.clone().serve(listener) => r.context("serving"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = vol.fenced() => Err(anyhow!("fenced: a newer target instance took volume {} over", c.volume)),
        why = refused => Err(anyhow!("volume {}: {why}", c.volume)),
    };
    server.close_all().await;
    if !vol.is_fenced() {
        if let Err(e) = vol.shutdown().await {
            tracing::error!(error = %e, "clean stop of the replicated volume");
        }
    }
    if let Some(ctl) = control {
        ctl.abort();
    }
    if let Some(ep) = &c.control {
        if !is_tcp(ep) {
            let _ = std::fs::remove_file(ep);
        }
    }
    result
}

fn is_tcp(ep: &str) -> bool {
    ep.parse::<std::net::SocketAddr>().is_ok()
}

async fn start_control(
    ep: &str,
    vol: ReplicatedVolume,
    key: Option<AuthKey>,
) -> Result<tokio::task::JoinHandle<()>> {
    if is_tcp(ep) {
        let key = key.ok_or_else(|| anyhow!("--control {ep} over TCP needs --auth-key"))?;
        let l = tokio::net::TcpListener::bind(ep)
            .await
            .with_context(|| format!("--control {ep}"))?;
        Ok(tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (v, k) = (vol.clone(), key.clone());
                tokio::spawn(async move {
                    let (r, w) = s.into_split();
                    let _ = handle(BufReader::new(r), w, &v, Some(&k)).await;
                });
            }
        }))
    } else {
        let _ = std::fs::remove_file(ep);
        let l = tokio::net::UnixListener::bind(ep).with_context(|| format!("--control {ep}"))?;
        Ok(tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let v = vol.clone();
                tokio::spawn(async move {
                    let (r, w) = s.into_split();
                    let _ = handle(BufReader::new(r), w, &v, None).await;
                });
            }
        }))
    }
}

async fn handle<R, W>(
    mut r: BufReader<R>,
    mut w: W,
    vol: &ReplicatedVolume,
    key: Option<&AuthKey>,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut lim = (&mut r).take(8192);
        lim.read_line(&mut line).await
    })
    .await
    .map_err(|_| anyhow!("control request timed out"))??;
    let mut req = line.trim().to_string();
    if let Some(k) = key {
        // `auth <unix-seconds> <hex hmac(label, ts, request)> <request>`
        let mut it = req.splitn(4, ' ');
        let ok = match (it.next(), it.next(), it.next(), it.next()) {
            (Some("auth"), Some(ts), Some(mac), Some(rest)) => {
                let now = cstor_replication::membership::unix_now();
                let fresh = ts
                    .parse::<u64>()
                    .is_ok_and(|t| t.abs_diff(now) <= CONTROL_SKEW_SECS);
                let good = cstor_replication::wire::unhex(mac)
                    .is_some_and(|m| k.check(CONTROL_LABEL, ts.as_bytes(), rest.as_bytes(), &m));
                let rest = rest.to_string();
                if fresh && good {
                    req = rest;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        if !ok {
            w.write_all(b"error authentication failed\n").await?;
            return Ok(());
        }
    }
    let reply = match req.as_str() {
        "status" => match serde_json::to_string(&vol.status()) {
            Ok(j) => format!("ok\n{j}\n"),
            Err(e) => format!("error {e}\n"),
        },
        r if r
            .split_once(' ')
            .is_some_and(|(op, _)| MEMBER_OPS.contains(&op))
            || MEMBER_OPS.contains(&r) =>
        {
            match member_op(vol, r).await {
                Ok(body) => format!("ok\n{body}\n"),
                Err(e) => format!("error {e}\n"),
            }
        }
        r if r.starts_with("resize ") => match r["resize ".len()..].trim().parse::<u64>() {
            Ok(size) => match vol.resize(size).await {
                Ok(()) => format!("ok\nresized to {size} bytes\n"),
                Err(e) => format!("error {e}\n"),
            },
            Err(e) => format!("error bad size: {e}\n"),
        },
        _ => "error unknown request\n".to_string(),
    };
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await?;
    Ok(())
}

/// Control requests of snapshots and membership changes.
const MEMBER_OPS: &[&str] = &[
    "snapshot",
    "snapshots",
    "delete-snapshot",
    "clone",
    "add-replica",
    "remove-replica",
    "force-current",
];

/// Runs one snapshot or membership request; the reply body (one line, JSON or text).
async fn member_op(vol: &ReplicatedVolume, req: &str) -> Result<String> {
    let (op, rest) = req.split_once(' ').unwrap_or((req, ""));
    let rest = rest.trim();
    let one = |what: &str| -> Result<String> {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            bail!("{op} needs one {what}");
        }
        Ok(rest.to_string())
    };
    Ok(match op {
        "snapshot" => {
            let s = vol.snapshot(&one("snapshot name")?).await?;
            serde_json::to_string(&s)?
        }
        "snapshots" => serde_json::to_string(&vol.snapshots().await?)?,
        "delete-snapshot" => {
            let n = one("snapshot name")?;
            vol.delete_snapshot(&n).await?;
            format!("deleted snapshot {n}")
        }
        "clone" => {
            // `clone SNAP VOLUME STATE_DIR` (the directory may hold spaces).
            let mut it = rest.splitn(3, ' ');
            let (Some(snap), Some(new), Some(dir)) = (it.next(), it.next(), it.next()) else {
                bail!("clone needs SNAPSHOT VOLUME STATE_DIR");
            };
            let store = Arc::new(FileStore::new(dir.trim())?);
            let rec = vol.clone_snapshot(snap, new, store).await?;
            serde_json::to_string(&rec)?
        }
        "add-replica" => serde_json::to_string(&vol.add_replica(&one("ADDR:PORT")?).await?)?,
        "remove-replica" => {
            let id = one("replica id")?;
            vol.remove_replica(&id).await?;
            format!("removed replica {id}")
        }
        "force-current" => {
            // `force-current ID accept-data-loss|no BY` (BY may hold spaces).
            let mut it = rest.splitn(3, ' ');
            let (Some(id), Some(accept), Some(by)) = (it.next(), it.next(), it.next()) else {
                bail!("force-current needs ID accept-data-loss|no BY");
            };
            let r = vol
                .force_current(id, by.trim(), accept == "accept-data-loss")
                .await?;
            format!(
                "{id} forced Current by {} on the running target (epoch {}); it serves once it answers",
                by.trim(),
                r.epoch
            )
        }
        _ => bail!("unknown request {op}"),
    })
}

/// Where a replicated target's control endpoint is.
#[derive(Debug, Clone, ClapArgs)]
pub struct Endpoint {
    /// Control endpoint of the replicated target: a socket path or ADDR:PORT.
    #[arg(long)]
    pub control: String,
    /// Shared key file (required for a TCP control endpoint).
    #[arg(long)]
    pub auth_key: Option<PathBuf>,
}

/// `cstor target snapshot|snapshots|delete-snapshot|clone|add-replica|remove-replica|
/// force-current`.
#[derive(Debug, clap::Subcommand)]
pub enum ReplCommand {
    /// Take a snapshot of a replicated volume at one io cut on every Current replica
    /// (replicas away now get it at their catch-up).
    Snapshot {
        #[command(flatten)]
        ep: Endpoint,
        /// Snapshot name (A-Z a-z 0-9 - _ . :).
        name: String,
    },
    /// List a replicated volume's snapshots and the replicas holding each.
    Snapshots {
        #[command(flatten)]
        ep: Endpoint,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Delete a snapshot on every replica (refused while it has clones).
    DeleteSnapshot {
        #[command(flatten)]
        ep: Endpoint,
        /// Snapshot name.
        name: String,
    },
    /// Clone a snapshot into a new replicated volume: pool clones on the same replicas
    /// and its membership record in --state-dir. Serve it with `cstor target serve
    /// --volume VOLUME --size <the snapshot's size> --state-dir DIR --replica ...`.
    Clone {
        #[command(flatten)]
        ep: Endpoint,
        /// Snapshot name.
        snapshot: String,
        /// Name of the new volume.
        volume: String,
        /// Directory for the new volume's membership record (written by the target).
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Add a replica to a running replicated volume: recorded New, fully copied, then
    /// Current (watch `cstor target status`). Restart the target with it in --replica.
    AddReplica {
        #[command(flatten)]
        ep: Endpoint,
        /// Replica server ADDR:PORT.
        address: String,
    },
    /// Remove a member (refused for the only Current replica or below the minimum).
    RemoveReplica {
        #[command(flatten)]
        ep: Endpoint,
        /// Replica id (as `cstor target status` shows it).
        id: String,
    },
    /// Mark a member Current and record who did it; may lose acknowledged writes.
    /// With --control: on the running target, only while it serves nothing (gathering
    /// at start, or every Current replica away); the other Current members become Stale
    /// and are rebuilt from it. With --state-dir: offline, only while no target holds the
    /// volume (stopped, or dead and not renewing for --takeover-secs); bumps the epoch.
    ForceCurrent {
        /// The target's --state-dir (offline).
        #[arg(long, conflicts_with = "control", required_unless_present = "control")]
        state_dir: Option<PathBuf>,
        /// Control endpoint of the running target (online).
        #[arg(long)]
        control: Option<String>,
        /// Shared key file (required for a TCP control endpoint).
        #[arg(long)]
        auth_key: Option<PathBuf>,
        /// Member id to mark Current.
        #[arg(long)]
        member: String,
        /// Required: other replicas may hold acknowledged writes this one lacks.
        #[arg(long)]
        accept_data_loss: bool,
        /// Who forces (recorded; default $USER@host).
        #[arg(long)]
        by: Option<String>,
        /// A holder that has not renewed for this long counts as gone.
        #[arg(long, default_value_t = 60)]
        takeover_secs: u64,
    },
}

/// Runs a [`ReplCommand`].
pub async fn run(c: ReplCommand) -> Result<()> {
    let call = |ep: Endpoint, req: String| async move {
        let key = load_key(&ep.auth_key)?;
        request(&ep.control, &req, key.as_ref()).await
    };
    match c {
        ReplCommand::Snapshot { ep, name } => {
            let body = call(ep, format!("snapshot {name}")).await?;
            let s: cstor_replication::membership::SnapshotRec =
                serde_json::from_str(body.trim()).context("decoding the reply")?;
            println!("snapshot {} taken at io cut {}", s.name, s.io);
        }
        ReplCommand::Snapshots { ep, output } => {
            let body = call(ep, "snapshots".into()).await?;
            match output.as_deref() {
                Some("json") => print!("{body}"),
                None | Some("table") => {
                    let l: Vec<cstor_replication::snapshot::SnapshotStatus> =
                        serde_json::from_str(body.trim()).context("decoding the reply")?;
                    println!(
                        "{:<24} {:>14} {:>14} {:>12}  REPLICAS",
                        "NAME", "IO CUT", "SIZE", "CREATED"
                    );
                    for s in l {
                        println!(
                            "{:<24} {:>14} {:>14} {:>12}  {}",
                            s.name,
                            s.io,
                            s.size,
                            s.at,
                            s.replicas.join(",")
                        );
                    }
                }
                Some(o) => bail!("-o {o}: expected json or table"),
            }
        }
        ReplCommand::DeleteSnapshot { ep, name } => {
            print!("{}", call(ep, format!("delete-snapshot {name}")).await?);
        }
        ReplCommand::Clone {
            ep,
            snapshot,
            volume,
            state_dir,
        } => {
            let dir = std::path::absolute(&state_dir)
                .with_context(|| format!("--state-dir {}", state_dir.display()))?;
            let dir = dir
                .to_str()
                .ok_or_else(|| anyhow!("--state-dir must be UTF-8"))?
                .to_string();
            let body = call(ep, format!("clone {snapshot} {volume} {dir}")).await?;
            let r: cstor_replication::Record =
                serde_json::from_str(body.trim()).context("decoding the reply")?;
            println!(
                "cloned {snapshot} as {volume} ({} bytes) on {}; record in {dir}",
                r.size,
                r.members
                    .iter()
                    .map(|m| format!("{}={}", m.id, m.address))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        ReplCommand::AddReplica { ep, address } => {
            let body = call(ep, format!("add-replica {address}")).await?;
            let m: cstor_replication::membership::Member =
                serde_json::from_str(body.trim()).context("decoding the reply")?;
            println!(
                "added replica {} at {} (New: full copy follows)",
                m.id, m.address
            );
        }
        ReplCommand::RemoveReplica { ep, id } => {
            print!("{}", call(ep, format!("remove-replica {id}")).await?);
        }
        ReplCommand::ForceCurrent {
            state_dir,
            control,
            auth_key,
            member,
            accept_data_loss,
            by,
            takeover_secs,
        } => {
            let by = by.unwrap_or_else(|| {
                let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default();
                format!("{user}@{host}")
            });
            if let Some(control) = control {
                if !accept_data_loss {
                    bail!("forcing {member} Current may lose acknowledged writes held only by other replicas (give --accept-data-loss)");
                }
                let ep = Endpoint { control, auth_key };
                println!(
                    "{}",
                    call(ep, format!("force-current {member} accept-data-loss {by}"))
                        .await?
                        .trim_end()
                );
                return Ok(());
            }
            let Some(state_dir) = state_dir else {
                bail!("force-current needs --control (running target) or --state-dir (offline)");
            };
            let store = Arc::new(FileStore::new(&state_dir)?);
            let r = cstor_replication::members::force_current(
                store,
                &member,
                &by,
                accept_data_loss,
                Duration::from_secs(takeover_secs),
            )
            .await?;
            println!(
                "{member} forced Current by {by}; epoch now {} (start the target to serve from it)",
                r.epoch
            );
        }
    }
    Ok(())
}

/// Sends one control request and returns the reply's result lines.
async fn request(ep: &str, req: &str, key: Option<&AuthKey>) -> Result<String> {
    let mut out = String::new();
    if is_tcp(ep) {
        let k = key.ok_or_else(|| anyhow!("--control {ep} over TCP needs --auth-key"))?;
        let ts = cstor_replication::membership::unix_now().to_string();
        let mac =
            cstor_replication::wire::hex(&k.prove(CONTROL_LABEL, ts.as_bytes(), req.as_bytes()));
        let mut s = tokio::net::TcpStream::connect(ep)
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        s.write_all(format!("auth {ts} {mac} {req}\n").as_bytes())
            .await?;
        s.read_to_string(&mut out).await?;
    } else {
        let mut s = tokio::net::UnixStream::connect(ep)
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        s.write_all(format!("{req}\n").as_bytes()).await?;
        s.read_to_string(&mut out).await?;
    }
    match out.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some((err, _)) => bail!("{}", err.trim_start_matches("error ")),
        None => bail!("no reply from {ep}"),
    }
}

/// `cstor target resize --control EP SIZE`.
pub async fn resize(control: &str, size: u64, auth_key: &Option<PathBuf>) -> Result<()> {
    let key = load_key(auth_key)?;
    let body = request(control, &format!("resize {size}"), key.as_ref()).await?;
    print!("{body}");
    Ok(())
}

/// `cstor target status --control EP [-o json]`.
pub async fn status(control: &str, output: Option<&str>, auth_key: &Option<PathBuf>) -> Result<()> {
    let key = load_key(auth_key)?;
    let body = request(control, "status", key.as_ref()).await?;
    match output {
        Some("json") => print!("{body}"),
        None | Some("table") => {
            let s: VolumeStatus =
                serde_json::from_str(body.trim()).context("decoding the status")?;
            println!(
                "volume {}  phase {:?}  epoch {}  io checkpoint {}",
                s.volume, s.phase, s.epoch, s.io_checkpoint
            );
            println!(
                "{:<20} {:<22} {:<11} {:>8} {:>14}",
                "ID", "ADDRESS", "MODE", "REBUILD", "BYTES DONE"
            );
            for r in s.replicas {
                println!(
                    "{:<20} {:<22} {:<11} {:>7}% {:>14}",
                    r.id, r.address, r.mode, r.rebuild_percent, r.rebuild_bytes_done
                );
            }
        }
        Some(o) => bail!("-o {o}: expected json or table"),
    }
    Ok(())
}
