//! `cstor pool ...` and `cstor volume ...`: the zpool/zfs of a cStor pool instance.
//!
//! Each command either reaches the process that holds the pool open (over its admin
//! socket, so status, snapshots and scrub work while volumes are served) or, when none
//! does, opens the pool itself, runs the request and closes it. Both paths execute the same
//! [`cstor_node::admin::execute`], so their behaviour and output are the same.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use cstor_node::admin::{self, Progress, Request};
use cstor_node::host::{CreateOptions, OpenPool};
use cstor_node::registry::Registry;
use cstor_node::socket;
use cstor_pool::spa::pool::{GroupKind, GroupSpec};
use cstor_pool::Compression;
use serde_json::Value;

use crate::units::{format_size, parse_size};

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// `cstor pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Create a pool: `cstor pool create tank mirror /dev/sdb /dev/sdc [log mirror D1 D2]`.
    Create {
        /// Pool name.
        pool: String,
        /// Default compression of its volumes.
        #[arg(long, default_value = "lz4", value_parser = ["off", "lz4", "zstd"])]
        compression: String,
        /// Fill percentage at which the pool turns read-only (cStor's roThresholdLimit).
        #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
        ro_threshold: u8,
        /// Overwrite devices that hold a pool, a filesystem or a partition table.
        #[arg(long)]
        force: bool,
        /// Raid groups: `stripe|mirror|raidz|raidz2 DEV...`, repeated; then optionally
        /// `log GROUP` for a write-cache (intent log) group.
        #[arg(required = true, num_args = 2.., value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Import a pool from its devices (any order, any names).
    Import {
        /// Pool name.
        pool: String,
        /// Devices.
        #[arg(required = true)]
        devices: Vec<String>,
        /// When an intent-log block cannot be read, drop the log from that block on and
        /// import anyway (as `zpool import -m`): the flushed writes it held are lost, and
        /// what was dropped is reported. Without it such an import is refused.
        #[arg(long)]
        discard_log_tail: bool,
    },
    /// Commit and release a pool's devices, and forget it here.
    Export {
        /// Pool name.
        pool: String,
    },
    /// Health, devices, errors, scan and space.
    Status {
        /// Pool name.
        pool: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every pool known in $CSTOR_HOME.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Read and verify every live block, repairing from redundancy.
    Scrub {
        /// Pool name.
        pool: String,
        /// Wait for the scrub to finish, showing progress. Without it the process
        /// holding the pool scrubs in the background (`pool status` shows progress);
        /// when no process holds it, the scrub runs in this command anyway.
        #[arg(long)]
        wait: bool,
    },
    /// Replace a device and resilver the live data onto the new one.
    Replace {
        /// Pool name.
        pool: String,
        /// Device to replace.
        old: String,
        /// New device.
        new: String,
        /// Wait for the resilver to finish, showing progress. Without it the process
        /// holding the pool resilvers in the background; when no process holds it, the
        /// resilver runs in this command anyway.
        #[arg(long)]
        wait: bool,
    },
    /// Grow a pool by a raid group (or a stripe pool by a disk).
    Add {
        /// Pool name.
        pool: String,
        /// `stripe|mirror|raidz|raidz2 DEV...` or `log GROUP`.
        #[arg(required = true, num_args = 2.., value_name = "GROUP")]
        group: Vec<String>,
    },
    /// Destroy a pool: its labels are wiped and its data is gone.
    Destroy {
        /// Pool name.
        pool: String,
    },
}

/// `cstor volume`.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a thin volume.
    Create {
        /// POOL/VOL.
        name: String,
        /// Size (K/M/G/T suffixes).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Block size, 4K to 128K, fixed at creation.
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u64>,
        /// Compression (default: the pool's).
        #[arg(long, value_parser = ["off", "lz4", "zstd"])]
        compression: Option<String>,
    },
    /// Volumes of a pool with their space and snapshots.
    List {
        /// Pool name.
        pool: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Write a file's bytes into a volume.
    Write {
        /// POOL/VOL.
        name: String,
        /// File to write (`-` for standard input).
        #[arg(long)]
        input: String,
        /// Byte offset (a multiple of 512).
        #[arg(long, default_value = "0", value_parser = parse_size)]
        offset: u64,
        /// io number kept with the written blocks (replication).
        #[arg(long)]
        io_number: Option<u64>,
    },
    /// Read a volume (or POOL/VOL@SNAP) into a file.
    Read {
        /// POOL/VOL or POOL/VOL@SNAP.
        name: String,
        /// File to write (`-` for standard output).
        #[arg(long)]
        output: String,
        /// Byte offset (a multiple of 512).
        #[arg(long, default_value = "0", value_parser = parse_size)]
        offset: u64,
        /// Bytes to read (default: to the end).
        #[arg(long, value_parser = parse_size)]
        length: Option<u64>,
    },
    /// Free a range (blocks no snapshot holds go back to the pool).
    Unmap {
        /// POOL/VOL.
        name: String,
        /// Byte offset.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Bytes.
        #[arg(long, value_parser = parse_size)]
        length: u64,
    },
    /// Ranges written with an io number above N.
    Changed {
        /// POOL/VOL or POOL/VOL@SNAP.
        name: String,
        /// io number: ranges with blocks written after it.
        #[arg(long)]
        since: u64,
        /// ... and at or before this io number.
        #[arg(long)]
        until: Option<u64>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Take a snapshot: POOL/VOL@SNAP.
    Snapshot {
        /// POOL/VOL@SNAP.
        name: String,
        /// Take it at this io cut: it holds exactly the writes with io numbers below it;
        /// refused once a write at or above it exists.
        #[arg(long)]
        io_cut: Option<u64>,
    },
    /// Make a writable clone of a snapshot.
    Clone {
        /// POOL/VOL@SNAP.
        snapshot: String,
        /// POOL/NEWVOL.
        new_volume: String,
    },
    /// Roll a volume back to a snapshot. Without --destroy-newer only the newest
    /// snapshot is allowed; with it, newer snapshots are destroyed first (atomically).
    Rollback {
        /// POOL/VOL@SNAP.
        snapshot: String,
        /// Destroy the snapshots newer than SNAP (refused if any has clones).
        #[arg(short = 'r', long)]
        destroy_newer: bool,
    },
    /// Grow a volume online.
    Resize {
        /// POOL/VOL.
        name: String,
        /// New size.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Destroy a volume (with its snapshots) or one snapshot.
    Destroy {
        /// POOL/VOL or POOL/VOL@SNAP.
        name: String,
    },
    /// Write a snapshot as a stream to standard output.
    Send {
        /// POOL/VOL@SNAP.
        snapshot: String,
        /// Incremental from this earlier snapshot (name only, or VOL@SNAP).
        #[arg(long)]
        from: Option<String>,
    },
    /// Receive a stream from standard input into a volume.
    Recv {
        /// POOL/VOL.
        name: String,
    },
}

/// `POOL/VOL[@SNAP]` split.
struct VolName {
    pool: String,
    volume: String,
    snapshot: Option<String>,
}

fn split_name(text: &str, snapshot: SnapPart) -> Result<VolName> {
    let Some((pool, rest)) = text.split_once('/') else {
        bail!("{text:?}: expected POOL/VOLUME");
    };
    let (volume, snap) = match rest.split_once('@') {
        Some((v, s)) => (v, Some(s.to_owned())),
        None => (rest, None),
    };
    if pool.is_empty() || volume.is_empty() || snap.as_deref() == Some("") {
        bail!("{text:?}: expected POOL/VOLUME[@SNAPSHOT]");
    }
    match (snapshot, &snap) {
        (SnapPart::Forbidden, Some(_)) => bail!("{text:?}: a volume is expected, not a snapshot"),
        (SnapPart::Required, None) => bail!("{text:?}: expected POOL/VOLUME@SNAPSHOT"),
        _ => {}
    }
    Ok(VolName {
        pool: pool.to_owned(),
        volume: volume.to_owned(),
        snapshot: snap,
    })
}

#[derive(Clone, Copy)]
enum SnapPart {
    Forbidden,
    Optional,
    Required,
}

/// Parse `stripe A B mirror C D log mirror E F` into raid groups.
fn parse_groups(words: &[String]) -> Result<Vec<GroupSpec<String>>> {
    let mut groups: Vec<GroupSpec<String>> = Vec::new();
    let mut log_next = false;
    for w in words {
        if w == "log" {
            if log_next {
                bail!("'log' must be followed by a raid group, e.g. `log mirror D1 D2`");
            }
            log_next = true;
            continue;
        }
        if let Some(kind) = GroupKind::parse(w) {
            groups.push(GroupSpec {
                kind,
                devices: Vec::new(),
                log: log_next,
            });
            log_next = false;
            continue;
        }
        match groups.last_mut() {
            Some(g) if !log_next => g.devices.push(absolute(w)?),
            _ => bail!(
                "{w:?}: a device must follow a raid group kind (stripe, mirror, raidz, raidz2)"
            ),
        }
    }
    if log_next {
        bail!("'log' must be followed by a raid group, e.g. `log mirror D1 D2`");
    }
    if let Some(g) = groups.iter().find(|g| g.devices.is_empty()) {
        bail!("raid group '{}' has no devices", g.kind.as_str());
    }
    if groups.iter().filter(|g| g.log).count() > 1 {
        bail!("at most one log group");
    }
    Ok(groups)
}

/// Device paths are stored absolute so commands work from any directory.
fn absolute(path: &str) -> Result<String> {
    let p = std::path::absolute(path).with_context(|| format!("resolving {path}"))?;
    Ok(p.to_string_lossy().into_owned())
}

/// Run `req` on `pool`: through the process holding it, or by opening it here.
fn run_request(
    registry: &Registry,
    pool: &str,
    req: Request,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<Value> {
    run_request_with(registry, pool, |_| req, input, output).map(|(v, _)| v)
}

/// As [`run_request`], with the request built once it is known whether a process holds
/// the pool (`true`) or this command opened it; returns the reply and that flag.
fn run_request_with(
    registry: &Registry,
    pool: &str,
    req: impl FnOnce(bool) -> Request,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<(Value, bool)> {
    let mut progress = print_progress();
    let sock = registry.socket_path(pool)?;
    if let Some(stream) = socket::connect(&sock)? {
        let v = socket::call(stream, req(true), input, output, &mut progress)?;
        return Ok((v, true));
    }
    let open = Arc::new(OpenPool::open(registry, pool)?);
    let result = admin::execute(&open, req(false), input, output, &mut progress);
    let closed = close(open);
    let value = result?;
    closed?;
    Ok((value, false))
}

/// Close a pool opened by this command (no other handle outlives the request).
fn close(open: Arc<OpenPool>) -> Result<()> {
    let open = Arc::try_unwrap(open)
        .map_err(|_| anyhow::anyhow!("internal: the pool is still in use in this command"))?;
    Ok(open.close()?)
}

/// Scrub or resilver: in the background of the process holding the pool unless `wait`;
/// in this command (with progress) when `wait` or when no process holds the pool.
fn scan_request(
    registry: &Registry,
    pool: &str,
    kind: &str,
    wait: bool,
    req: impl Fn(bool) -> Request,
) -> Result<()> {
    let (v, served) = run_request_with(
        registry,
        pool,
        |served| {
            if !wait && !served {
                eprintln!("no process holds pool '{pool}' open: the {kind} runs in this command");
            }
            req(!wait && served)
        },
        &mut io::empty(),
        &mut io::sink(),
    )?;
    let background = !wait && served;
    if background {
        println!(
            "{kind} started in the process holding pool '{pool}'; follow it with `cstor pool status {pool}`"
        );
    } else {
        print_scan(&v);
    }
    Ok(())
}

fn print_progress() -> impl FnMut(&Progress) {
    let tty = io::stderr().is_terminal();
    move |p: &Progress| {
        let line = format!(
            "{}: {:5.1}% ({} of {})",
            p.kind,
            p.percent,
            format_size(p.examined_bytes),
            format_size(p.total_bytes)
        );
        if tty {
            eprint!("\r{line}   ");
            if p.percent >= 100.0 {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Refuse an operation that needs the pool closed while a process serves it.
fn refuse_if_served(registry: &Registry, pool: &str, what: &str) -> Result<()> {
    if socket::connect(&registry.socket_path(pool)?)?.is_some() {
        bail!("cannot {what} pool '{pool}': a running process (e.g. `cstor target serve`) holds it open; stop it first");
    }
    Ok(())
}

/// `$CSTOR_HOME`'s registry, with the per-pool block cache from `$CSTOR_CACHE_SIZE`
/// (default 64M).
pub fn registry_from_env() -> Result<Registry> {
    let registry = Registry::from_env();
    match std::env::var("CSTOR_CACHE_SIZE") {
        Ok(v) => {
            let bytes = parse_size(&v).map_err(|e| anyhow::anyhow!("CSTOR_CACHE_SIZE={v}: {e}"))?;
            Ok(registry.with_cache_bytes(bytes))
        }
        Err(_) => Ok(registry),
    }
}

/// `cstor pool ...`.
pub fn run_pool(args: PoolArgs) -> Result<()> {
    let registry = registry_from_env()?;
    match args.command {
        PoolCommand::Create {
            pool,
            compression,
            ro_threshold,
            force,
            groups,
        } => {
            let groups = parse_groups(&groups)?;
            if groups.iter().all(|g| g.log) {
                bail!("a pool needs at least one data raid group");
            }
            let compression: Compression = compression.parse()?;
            let open = OpenPool::create(
                &registry,
                &pool,
                &groups,
                &CreateOptions {
                    compression,
                    ro_threshold_pct: ro_threshold,
                    force,
                },
            )?;
            let status = admin::pool_status(&open);
            open.close()?;
            println!(
                "pool '{pool}' created: {} usable",
                format_size(status["size"].as_u64().unwrap_or(0))
            );
        }
        PoolCommand::Import {
            pool,
            devices,
            discard_log_tail,
        } => {
            let devices: Vec<String> =
                devices.iter().map(|d| absolute(d)).collect::<Result<_>>()?;
            refuse_if_served(&registry, &pool, "import")?;
            let open = Arc::new(OpenPool::import_with(
                &registry,
                &pool,
                &devices,
                discard_log_tail,
            )?);
            if let Some(dropped) = open.engine().log_tail_dropped() {
                eprintln!("pool '{pool}': {dropped}; flushed writes in it are lost");
            }
            // A device back after missing writes is rebuilt before the command returns.
            if open.spa().is_resilvering() {
                eprintln!("a device of pool '{pool}' missed writes: resilvering it");
                let req = Request::PoolScrub { background: false };
                let mut progress = print_progress();
                let v =
                    admin::execute(&open, req, &mut io::empty(), &mut io::sink(), &mut progress);
                print_scan(&v?);
            }
            let status = admin::pool_status(&open);
            close(open)?;
            println!(
                "pool '{pool}' imported: {}",
                status["health"].as_str().unwrap_or("?")
            );
        }
        PoolCommand::Export { pool } => {
            refuse_if_served(&registry, &pool, "export")?;
            let open = OpenPool::open(&registry, &pool)?;
            open.close()?;
            registry.remove(&pool)?;
            println!("pool '{pool}' exported");
        }
        PoolCommand::Status { pool, output } => {
            let v = run_request(
                &registry,
                &pool,
                Request::PoolStatus,
                &mut io::empty(),
                &mut io::sink(),
            )?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Table => print_status(&v),
            }
        }
        PoolCommand::List { output } => {
            let mut rows = Vec::new();
            for name in registry.list()? {
                let row = match run_request(
                    &registry,
                    &name,
                    Request::PoolStatus,
                    &mut io::empty(),
                    &mut io::sink(),
                ) {
                    Ok(v) => v,
                    Err(e) => {
                        serde_json::json!({"name": name, "health": "UNAVAIL", "message": format!("{e:#}")})
                    }
                };
                rows.push(row);
            }
            match output {
                Output::Json => print_json(&Value::Array(rows))?,
                Output::Table => {
                    println!(
                        "{:<20} {:>8} {:>8} {:>8} {:>4} {:<9} READONLY",
                        "NAME", "SIZE", "ALLOC", "FREE", "CAP", "HEALTH"
                    );
                    for r in rows {
                        let size = r["size"].as_u64().unwrap_or(0);
                        let alloc = r["allocated"].as_u64().unwrap_or(0);
                        let cap = (alloc * 100).checked_div(size).unwrap_or(0);
                        println!(
                            "{:<20} {:>8} {:>8} {:>8} {:>3}% {:<9} {}",
                            r["name"].as_str().unwrap_or("?"),
                            format_size(size),
                            format_size(alloc),
                            format_size(r["free"].as_u64().unwrap_or(0)),
                            cap,
                            r["health"].as_str().unwrap_or("?"),
                            r["read_only"].as_bool().unwrap_or(false),
                        );
                    }
                }
            }
        }
        PoolCommand::Scrub { pool, wait } => {
            let req = |background| Request::PoolScrub { background };
            scan_request(&registry, &pool, "scrub", wait, req)?;
        }
        PoolCommand::Replace {
            pool,
            old,
            new,
            wait,
        } => {
            let new = absolute(&new)?;
            let req = |background| Request::PoolReplace {
                old: old.clone(),
                new: new.clone(),
                background,
            };
            scan_request(&registry, &pool, "resilver", wait, req)?;
        }
        PoolCommand::Add { pool, group } => {
            let mut groups = parse_groups(&group)?;
            if groups.len() != 1 {
                bail!("add one raid group at a time");
            }
            let g = groups.remove(0);
            let v = run_request(
                &registry,
                &pool,
                Request::PoolAdd {
                    kind: g.kind.as_str().into(),
                    devices: g.devices,
                    log: g.log,
                },
                &mut io::empty(),
                &mut io::sink(),
            )?;
            println!(
                "pool '{pool}' grown: {} usable",
                format_size(v["size"].as_u64().unwrap_or(0))
            );
        }
        PoolCommand::Destroy { pool } => {
            refuse_if_served(&registry, &pool, "destroy")?;
            let open = OpenPool::open(&registry, &pool)?;
            open.destroy()?;
            println!("pool '{pool}' destroyed");
        }
    }
    Ok(())
}

fn print_scan(v: &Value) {
    println!(
        "{} {}: repaired {}, {} unrecoverable blocks{}",
        v["kind"].as_str().unwrap_or("scan"),
        v["state"].as_str().unwrap_or("?"),
        format_size(v["repaired_bytes"].as_u64().unwrap_or(0)),
        v["unrecoverable_blocks"].as_u64().unwrap_or(0),
        v["error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
    );
}

fn print_status(v: &Value) {
    println!("  pool: {}", v["name"].as_str().unwrap_or("?"));
    println!(" state: {}", v["health"].as_str().unwrap_or("?"));
    if let Some(m) = v["message"].as_str() {
        println!("status: {m}");
    }
    match v.get("scan").filter(|s| !s.is_null()) {
        Some(s) => println!(
            "  scan: {} {} {:.1}%, repaired {}, {} unrecoverable",
            s["kind"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["progress_percent"].as_f64().unwrap_or(0.0),
            format_size(s["repaired_bytes"].as_u64().unwrap_or(0)),
            s["unrecoverable_blocks"].as_u64().unwrap_or(0),
        ),
        None => println!("  scan: none requested"),
    }
    println!(
        " space: {} size, {} allocated, {} free{}",
        format_size(v["size"].as_u64().unwrap_or(0)),
        format_size(v["allocated"].as_u64().unwrap_or(0)),
        format_size(v["free"].as_u64().unwrap_or(0)),
        if v["read_only"].as_bool().unwrap_or(false) {
            ", READ-ONLY"
        } else {
            ""
        }
    );
    println!("config:\n");
    println!(
        "\t{:<40} {:<9} {:>5} {:>5} {:>5}",
        "NAME", "STATE", "READ", "WRITE", "CKSUM"
    );
    let devices = v["devices"].as_array().cloned().unwrap_or_default();
    for (i, g) in v["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let kind = g["kind"].as_str().unwrap_or("?");
        let label = if g["log"].as_bool().unwrap_or(false) {
            format!("log {kind}-{i}")
        } else {
            format!("{kind}-{i}")
        };
        println!(
            "\t  {:<38} {:<9}",
            label,
            g["health"].as_str().unwrap_or("?")
        );
        for d in devices
            .iter()
            .filter(|d| d["group"].as_u64() == Some(i as u64))
        {
            println!(
                "\t    {:<36} {:<9} {:>5} {:>5} {:>5}{}",
                d["path"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?"),
                d["read_errors"].as_u64().unwrap_or(0),
                d["write_errors"].as_u64().unwrap_or(0),
                d["checksum_errors"].as_u64().unwrap_or(0),
                d["reason"]
                    .as_str()
                    .map(|r| format!("  ({r})"))
                    .unwrap_or_default(),
            );
        }
    }
}

fn open_input(path: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    if path == "-" {
        return Ok((Box::new(io::stdin().lock()), None));
    }
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((Box::new(io::BufReader::with_capacity(1 << 20, f)), len))
}

fn open_output(path: &str) -> Result<Box<dyn Write>> {
    if path == "-" {
        return Ok(Box::new(BufWriter::new(io::stdout().lock())));
    }
    let f = File::create(path).with_context(|| format!("creating {path}"))?;
    Ok(Box::new(BufWriter::with_capacity(1 << 20, f)))
}

/// `cstor volume ...`.
pub fn run_volume(args: VolumeArgs) -> Result<()> {
    let registry = registry_from_env()?;
    let none = |registry: &Registry, pool: &str, req: Request| {
        run_request(registry, pool, req, &mut io::empty(), &mut io::sink())
    };
    match args.command {
        VolumeCommand::Create {
            name,
            size,
            block_size,
            compression,
        } => {
            let n = split_name(&name, SnapPart::Forbidden)?;
            let block_size = block_size
                .map(|b| {
                    u32::try_from(b).map_err(|_| anyhow::anyhow!("block size {b} is too large"))
                })
                .transpose()?;
            let v = none(
                &registry,
                &n.pool,
                Request::VolumeCreate {
                    volume: n.volume,
                    size,
                    block_size,
                    compression,
                },
            )?;
            println!(
                "volume '{name}' created: {} thin, block size {}",
                format_size(v["size"].as_u64().unwrap_or(0)),
                format_size(v["block_size"].as_u64().unwrap_or(0))
            );
        }
        VolumeCommand::List { pool, output } => {
            let v = none(&registry, &pool, Request::VolumeList)?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Table => {
                    println!(
                        "{:<32} {:>8} {:>8} {:>8} {:>6} {:>6} SNAPSHOTS",
                        "NAME", "SIZE", "USED", "REFER", "RATIO", "BLOCK"
                    );
                    for vol in v.as_array().cloned().unwrap_or_default() {
                        println!(
                            "{:<32} {:>8} {:>8} {:>8} {:>5.2}x {:>6} {}",
                            format!("{pool}/{}", vol["name"].as_str().unwrap_or("?")),
                            format_size(vol["size"].as_u64().unwrap_or(0)),
                            format_size(vol["used"].as_u64().unwrap_or(0)),
                            format_size(vol["referenced"].as_u64().unwrap_or(0)),
                            vol["compression_ratio"].as_f64().unwrap_or(1.0),
                            format_size(vol["block_size"].as_u64().unwrap_or(0)),
                            vol["snapshots"].as_array().map_or(0, |s| s.len()),
                        );
                    }
                }
            }
        }
        VolumeCommand::Write {
            name,
            input,
            offset,
            io_number,
        } => {
            let n = split_name(&name, SnapPart::Forbidden)?;
            let (mut reader, length) = open_input(&input)?;
            let v = run_request(
                &registry,
                &n.pool,
                Request::VolumeWrite {
                    volume: n.volume,
                    offset,
                    length,
                    io_number,
                },
                &mut reader,
                &mut io::sink(),
            )?;
            eprintln!("wrote {} bytes", v["written_bytes"].as_u64().unwrap_or(0));
        }
        VolumeCommand::Read {
            name,
            output,
            offset,
            length,
        } => {
            let n = split_name(&name, SnapPart::Optional)?;
            let target = match &n.snapshot {
                Some(s) => format!("{}@{s}", n.volume),
                None => n.volume.clone(),
            };
            let mut writer = open_output(&output)?;
            run_request(
                &registry,
                &n.pool,
                Request::VolumeRead {
                    volume: target,
                    offset,
                    length,
                },
                &mut io::empty(),
                &mut writer,
            )?;
            writer.flush().context("writing the output")?;
        }
        VolumeCommand::Unmap {
            name,
            offset,
            length,
        } => {
            let n = split_name(&name, SnapPart::Forbidden)?;
            none(
                &registry,
                &n.pool,
                Request::VolumeUnmap {
                    volume: n.volume,
                    offset,
                    length,
                },
            )?;
        }
        VolumeCommand::Changed {
            name,
            since,
            until,
            output,
        } => {
            let n = split_name(&name, SnapPart::Optional)?;
            let target = match &n.snapshot {
                Some(s) => format!("{}@{s}", n.volume),
                None => n.volume.clone(),
            };
            let v = none(
                &registry,
                &n.pool,
                Request::VolumeChanged {
                    target,
                    since,
                    until,
                },
            )?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Table => {
                    println!("{:>16} {:>12} {:>12}", "OFFSET", "LENGTH", "IO_NUMBER");
                    for r in v.as_array().cloned().unwrap_or_default() {
                        println!(
                            "{:>16} {:>12} {:>12}",
                            r["offset"], r["length"], r["io_number_max"]
                        );
                    }
                }
            }
        }
        VolumeCommand::Snapshot { name, io_cut } => {
            let n = split_name(&name, SnapPart::Required)?;
            let snapshot = n.snapshot.unwrap_or_default();
            none(
                &registry,
                &n.pool,
                Request::VolumeSnapshot {
                    volume: n.volume,
                    snapshot,
                    io_cut,
                },
            )?;
            println!("snapshot '{name}' taken");
        }
        VolumeCommand::Clone {
            snapshot,
            new_volume,
        } => {
            let s = split_name(&snapshot, SnapPart::Required)?;
            let nv = split_name(&new_volume, SnapPart::Forbidden)?;
            if nv.pool != s.pool {
                bail!(
                    "a clone lives in its origin's pool '{}', not '{}'",
                    s.pool,
                    nv.pool
                );
            }
            none(
                &registry,
                &s.pool,
                Request::VolumeClone {
                    volume: s.volume,
                    snapshot: s.snapshot.unwrap_or_default(),
                    new_volume: nv.volume,
                },
            )?;
            println!("clone '{new_volume}' created from '{snapshot}'");
        }
        VolumeCommand::Rollback {
            snapshot,
            destroy_newer,
        } => {
            let s = split_name(&snapshot, SnapPart::Required)?;
            let v = none(
                &registry,
                &s.pool,
                Request::VolumeRollback {
                    volume: s.volume,
                    snapshot: s.snapshot.unwrap_or_default(),
                    destroy_newer,
                },
            )?;
            if let Some(d) = v["destroyed_snapshots"]
                .as_array()
                .filter(|d| !d.is_empty())
            {
                let names: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
                println!("destroyed newer snapshots: {}", names.join(", "));
            }
            println!("rolled back to '{snapshot}'");
        }
        VolumeCommand::Resize { name, size } => {
            let n = split_name(&name, SnapPart::Forbidden)?;
            none(
                &registry,
                &n.pool,
                Request::VolumeResize {
                    volume: n.volume,
                    size,
                },
            )?;
            println!("volume '{name}' is now {}", format_size(size));
        }
        VolumeCommand::Destroy { name } => {
            let n = split_name(&name, SnapPart::Optional)?;
            none(
                &registry,
                &n.pool,
                Request::VolumeDestroy {
                    volume: n.volume,
                    snapshot: n.snapshot,
                },
            )?;
            println!("'{name}' destroyed");
        }
        VolumeCommand::Send { snapshot, from } => {
            let s = split_name(&snapshot, SnapPart::Required)?;
            let from = from.map(|f| {
                f.rsplit_once('@')
                    .map_or(f.clone(), |(_, snap)| snap.to_owned())
            });
            if io::stdout().is_terminal() {
                bail!("refusing to write a binary stream to a terminal: redirect standard output");
            }
            let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            let v = run_request(
                &registry,
                &s.pool,
                Request::VolumeSend {
                    volume: s.volume,
                    snapshot: s.snapshot.unwrap_or_default(),
                    from,
                },
                &mut io::empty(),
                &mut out,
            )?;
            out.flush().context("writing the stream")?;
            eprintln!(
                "sent {} records, {} of data",
                v["records"],
                format_size(v["data_bytes"].as_u64().unwrap_or(0))
            );
        }
        VolumeCommand::Recv { name } => {
            let n = split_name(&name, SnapPart::Forbidden)?;
            let mut input = io::BufReader::with_capacity(1 << 20, io::stdin().lock());
            let v = run_request(
                &registry,
                &n.pool,
                Request::VolumeRecv { volume: n.volume },
                &mut input,
                &mut io::sink(),
            )?;
            eprintln!(
                "received {} records, {} of data",
                v["records"],
                format_size(v["data_bytes"].as_u64().unwrap_or(0))
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn groups_parse_with_log() {
        let g = parse_groups(&words("mirror /a /b raidz /c /d /e log mirror /f /g")).unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].kind, GroupKind::Mirror);
        assert_eq!(g[1].devices.len(), 3);
        assert!(g[2].log && !g[1].log);
    }

    #[test]
    fn bad_groups_are_refused() {
        for bad in [
            "/a mirror /b",
            "mirror",
            "mirror /a log",
            "log log mirror /a",
            "stripe /a log stripe /b log stripe /c",
        ] {
            assert!(parse_groups(&words(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_split() {
        let n = split_name("tank/vol@s1", SnapPart::Optional).unwrap();
        assert_eq!(
            (n.pool.as_str(), n.volume.as_str(), n.snapshot.as_deref()),
            ("tank", "vol", Some("s1"))
        );
        assert!(split_name("tank", SnapPart::Optional).is_err());
        assert!(split_name("tank/vol@s", SnapPart::Forbidden).is_err());
        assert!(split_name("tank/vol", SnapPart::Required).is_err());
    }
}
