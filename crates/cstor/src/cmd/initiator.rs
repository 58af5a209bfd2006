//! `cstor initiator`: the userspace iSCSI initiator (docs/initiator.md). `attach` logs in
//! and serves the LUN as the file `lun` of a FUSE mount until SIGTERM/SIGINT or `detach`;
//! `detach` unmounts what is stacked on that file and then the mount; `discover` lists
//! what a portal offers.
//!
//! Owns: command-line parsing and process lifetime. Never: protocol logic
//! (cstor-initiator).

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use cstor_initiator::{blockdev, Chap, FuseExport, LoginSpec, Session, SessionOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::units::parse_duration;

/// How long a clean exit waits to unregister its reservation key.
const UNFENCE_WAIT: Duration = Duration::from_secs(5);

/// `cstor initiator ...`
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: InitiatorCommand,
}

#[derive(Debug, Subcommand)]
enum InitiatorCommand {
    /// Serve a target's LUN as the file DIR/lun through FUSE (foreground).
    ///
    /// Logs in and serves the LUN until SIGTERM/SIGINT or `cstor initiator detach`. Reads, writes and
    /// fsync of the file become READ(16), WRITE(16) and SYNCHRONIZE CACHE(16); the
    /// session reconnects after a connection loss and queues I/O up to the replacement
    /// timeout. Put a loop device on the file (`--loop`, or `losetup`) to use it as a disk.
    Attach(Box<AttachArgs>),
    /// Undo an attach: unmount what is stacked on DIR/lun, then DIR.
    ///
    /// Unmounts filesystems on loop devices over DIR/lun, detaches those loop devices and
    /// unmounts DIR; the attach process then logs out and exits.
    Detach {
        /// The directory given to attach as --file-dir.
        #[arg(long)]
        file_dir: PathBuf,
        /// How long to wait for the mount to go away.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List the targets a portal offers (SendTargets discovery).
    Discover {
        /// Portal HOST:PORT.
        #[arg(long)]
        portal: String,
        /// Our initiator name (default: iqn.2026-12.io.cstor:<hostname>).
        #[arg(long)]
        initiator_name: Option<String>,
    },
}

#[derive(Debug, ClapArgs)]
struct AttachArgs {
    /// Portal HOST:PORT of the target. Repeat it to name portals the target may move to
    /// (every node's, for a volume whose target can move): the first login tries them in
    /// order, and after a connection loss the session tries the last one reached, then
    /// each in turn (a portal that does not serve the target refuses the login).
    #[arg(long, required = true)]
    portal: Vec<String>,
    /// Target name (IQN).
    #[arg(long)]
    target: String,
    /// Logical unit number.
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// Our initiator name, as the target's ACL lists it (default:
    /// iqn.2026-12.io.cstor:<hostname>).
    #[arg(long)]
    initiator_name: Option<String>,
    /// CHAP user name (with --chap-secret-file).
    #[arg(long, requires = "chap_secret_file")]
    chap_user: Option<String>,
    /// File whose first line is the CHAP secret (12 to 255 bytes).
    #[arg(long, requires = "chap_user")]
    chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the name the target must answer with (with --chap-target-secret-file).
    #[arg(long, requires_all = ["chap_target_secret_file", "chap_user"])]
    chap_target_user: Option<String>,
    /// Mutual CHAP: file whose first line is the target's secret.
    #[arg(long, requires = "chap_target_user")]
    chap_target_secret_file: Option<PathBuf>,
    /// Directory to mount the LUN file system at (must exist; holds the file `lun`).
    #[arg(long)]
    file_dir: PathBuf,
    /// How long I/O is queued while the connection is down before it fails (`120s`,
    /// `500ms`).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    replacement_timeout: Duration,
    /// Fence other initiators with this SCSI-3 persistent reservation key (hex, e.g.
    /// 0x1234abcd, not 0): register it and hold a Write Exclusive – Registrants Only
    /// reservation, preempting (PREEMPT AND ABORT) the holder's key and every other key
    /// registered, so their writes get RESERVATION CONFLICT. Given up (unregistered) on a
    /// clean exit. The CSI node service passes its node's key (docs/csi.md).
    #[arg(long, value_parser = parse_pr_key)]
    pr_key: Option<u64>,
    /// Also set up a loop device on the file (printed as `loop /dev/loopN`) and detach
    /// it on exit.
    #[arg(long = "loop")]
    with_loop: bool,
}

fn parse_pr_key(s: &str) -> Result<u64, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    match u64::from_str_radix(hex, 16) {
        Ok(0) => Err("a reservation key must not be 0".into()),
        Ok(k) => Ok(k),
        Err(e) => Err(format!("{s:?} is not a hexadecimal 64-bit key: {e}")),
    }
}

fn default_initiator_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    format!("iqn.2026-12.io.cstor:{host}")
}

fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading CHAP secret file {}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if !(12..=255).contains(&secret.len()) {
        bail!(
            "{}: the CHAP secret must be 12 to 255 bytes on the first line",
            path.display()
        );
    }
    Ok(secret.as_bytes().to_vec())
}

/// Runs `cstor initiator ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        InitiatorCommand::Attach(a) => attach(*a),
        InitiatorCommand::Detach { file_dir, timeout } => detach(&file_dir, timeout),
        InitiatorCommand::Discover {
            portal,
            initiator_name,
        } => {
            let rt = runtime()?;
            let name = initiator_name.unwrap_or_else(default_initiator_name);
            let found = rt.block_on(cstor_initiator::discover(&portal, &name, None))?;
            for t in found {
                println!("{} {}", t.iqn, t.addresses.join(" "));
            }
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn attach(a: AttachArgs) -> Result<()> {
    let chap = match (&a.chap_user, &a.chap_secret_file) {
        (Some(user), Some(file)) => Some(Chap {
            user: user.clone(),
            secret: read_secret(file)?,
            mutual: match (&a.chap_target_user, &a.chap_target_secret_file) {
                (Some(u), Some(f)) => Some((u.clone(), read_secret(f)?)),
                _ => None,
            },
        }),
        _ => None,
    };
    let (first, alternates) = a.portal.split_first().context("--portal is required")?;
    let spec = LoginSpec {
        portal: first.clone(),
        target_iqn: a.target.clone(),
        initiator_iqn: a
            .initiator_name
            .clone()
            .unwrap_or_else(default_initiator_name),
        chap,
        lun: a.lun,
    };
    let opts = SessionOptions {
        replacement_timeout: a.replacement_timeout,
        ..SessionOptions::default()
    };
    let rt = runtime()?;
    let session = rt
        .block_on(Session::login_any(&spec, opts, alternates))
        .with_context(|| format!("logging in to {} at {}", a.target, a.portal.join(", ")))?;
    if let Some(key) = a.pr_key {
        let f = rt.block_on(session.fence_others(key)).with_context(|| {
            format!(
                "taking the persistent reservation of {} with key {key:#018x}",
                a.target
            )
        })?;
        if !f.preempted.is_empty() {
            tracing::warn!(key = %format_args!("{key:#018x}"), preempted = ?f.preempted.iter().map(|k| format!("{k:#018x}")).collect::<Vec<_>>(), "preempted the reservation keys of other initiators (their writes are refused now)");
        }
    }
    let mut export = FuseExport::mount(session.clone(), rt.handle().clone(), &a.file_dir)?;
    let lo = if a.with_loop {
        Some(blockdev::LoopDevice::attach(&export.file())?)
    } else {
        None
    };
    let cap = session.capacity();
    {
        let mut out = std::io::stdout().lock();
        // The first line is the contract tests and scripts wait for.
        writeln!(
            out,
            "attached {} lun {} at {} ({} bytes, {}-byte blocks)",
            a.target,
            a.lun,
            export.file().display(),
            cap.bytes(),
            cap.block_size
        )?;
        if let Some(l) = &lo {
            writeln!(out, "loop {}", l.path().display())?;
        }
        out.flush()?;
    }
    let why = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>("SIGTERM"),
                _ = tokio::signal::ctrl_c() => return Ok("SIGINT"),
                _ = tick.tick() => {
                    if !export.is_mounted() {
                        return Ok("unmounted");
                    }
                }
            }
        }
    })?;
    tracing::info!(reason = why, "detaching");
    let mut result = Ok(());
    if why != "unmounted" {
        // Our --loop device and any other stacked on the file (SIGTERM must leave
        // nothing behind that would keep the mount busy).
        if let Some(l) = lo {
            let _ = l.keep();
        }
        if let Err(e) = teardown_stack(&export.file()) {
            result = Err(e);
        }
    } else if let Some(l) = lo {
        let _ = l.keep();
    }
    if export.is_mounted() {
        let end = Instant::now() + Duration::from_secs(10);
        // A just-detached loop device may hold the file for a moment.
        while let Err(e) = export.unmount() {
            if Instant::now() > end {
                result = Err(anyhow::Error::from(e).context("the LUN file is still in use"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if a.pr_key.is_some() {
        // A fenced-off session has nothing to give up (and must not touch the new holder's).
        // Bounded: a target that is down must not hold the exit for the replacement
        // timeout (the next stage preempts the key left behind anyway).
        match rt.block_on(tokio::time::timeout(UNFENCE_WAIT, session.unfence())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "unregistering the reservation key failed"),
            Err(_) => {
                tracing::warn!("unregistering the reservation key timed out; left registered")
            }
        }
    }
    rt.block_on(session.logout())?;
    drop(export);
    result
}

/// Unmounts every filesystem mounted from `dev`.
fn unmount_stacked(dev: &Path) -> Result<()> {
    for m in blockdev::mounts_of(dev)? {
        blockdev::unmount(&m)
            .with_context(|| format!("unmounting {} (on {})", m.display(), dev.display()))?;
    }
    Ok(())
}

/// Unmounts filesystems on loop devices over `file` and detaches those devices.
fn teardown_stack(file: &Path) -> Result<()> {
    for dev in blockdev::loops_of(file)? {
        unmount_stacked(&dev)?;
        blockdev::detach_loop(&dev)?;
    }
    Ok(())
}

fn detach(dir: &Path, timeout: Duration) -> Result<()> {
    if !blockdev::is_lun_mount(dir) {
        println!("{} is not attached", dir.display());
        return Ok(());
    }
    teardown_stack(&dir.join(cstor_initiator::LUN_FILE))?;
    let end = Instant::now() + timeout;
    loop {
        match blockdev::unmount(dir) {
            Ok(()) => break,
            // A loop device lets go of the file asynchronously after its detach.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if !blockdev::is_lun_mount(dir) => {
                tracing::debug!(error = %e, "already unmounted");
                break;
            }
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", dir.display())),
        }
    }
    while blockdev::is_lun_mount(dir) {
        if Instant::now() > end {
            bail!("{} is still mounted after {timeout:?}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("detached {}", dir.display());
    Ok(())
}
