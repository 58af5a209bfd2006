//! `cstor up`: the whole system on one machine (docs/cstor-up.md). Starts `cstor
//! apiserver` on `<base>:<api-port>`, `cstor controller` (when this build has it) and one
//! `cstor node` per node on its own loopback address `<base>+i` with its own sparse-file
//! disks, writes `DIR/kubeconfig`, the replica auth key (file and Secret
//! `cstor-replica-auth`), one Pod per component in namespace `openebs` whose Ready
//! condition follows a probe (process alive, and its port answering), restarts a crashed
//! component (Event `Restarted` on its Pod) and stops everything on SIGINT/SIGTERM: the
//! CSI node plugins and the attaches of the volumes they staged (loop devices, FUSE
//! mounts, `cstor initiator attach` processes), then the node agents (targets log
//! initiators out, volumes drain), then the controller, then the API server. `cstor up node stop|start NAME` talks to the running instance over
//! `DIR/up.sock`.
//!
//! Invariants: children are spawned from the thread that runs the supervisor loop (the
//! runtime's `block_on` thread) with PR_SET_PDEATHSIG=SIGTERM, so they die with `cstor up`
//! even when it is SIGKILLed; all state lives in DIR, so a rerun resumes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::Api;
use serde_json::json;

/// `cstor up ...`
#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<UpCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum UpCommand {
    /// Stop or start every process of one node of a running `cstor up` (simulates losing it).
    Node(NodeArgs),
}

#[derive(Debug, ClapArgs)]
struct NodeArgs {
    /// stop or start.
    action: String,
    /// Node name (node-1, node-2, ...).
    name: String,
    /// The running instance's directory.
    #[arg(long, default_value = "cstor-up")]
    dir: PathBuf,
}

#[derive(Debug, ClapArgs)]
struct RunArgs {
    /// Directory of all state: API server store, disks, pools, logs, kubeconfig.
    #[arg(long, default_value = "cstor-up")]
    dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Sparse-file disks per node.
    #[arg(long, default_value_t = 2)]
    disks_per_node: u32,
    /// Size of each disk (e.g. 1G, 512M).
    #[arg(long, default_value = "1G")]
    disk_size: String,
    /// Address of the API server; node i gets this address plus i.
    #[arg(long, default_value = "127.0.0.1")]
    base_address: Ipv4Addr,
    /// Port of the API server.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// The controller's `--target-move-grace`: how long a target's node may be silent
    /// before the target moves to another node.
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    target_move_grace: Duration,
    /// The controller's `--replica-replace-grace`: how long a replica's node may be silent
    /// before the replica is replaced on another pool instance.
    #[arg(long, default_value = "600s", value_parser = crate::units::parse_duration)]
    replica_replace_grace: Duration,
    /// The attacher's `--reconcile-sync`: how often the embedded attacher compares
    /// VolumeAttachments with the driver's publishes.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    attacher_reconcile_sync: Duration,
    /// TLS between targets and replicas: a CA and a replica certificate for every node's
    /// address (DIR/replica-tls), handed to the nodes as Secret `cstor-replica-tls`.
    /// Without it a rerun removes that Secret and replicas speak plain TCP (frames
    /// checksummed, targets authenticated by the shared key either way).
    #[arg(long)]
    replica_tls: bool,
}

/// Runs `cstor up`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(UpCommand::Node(n)) => node_command(&n),
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(supervise(args.run))
        }
    }
}

fn node_command(n: &NodeArgs) -> Result<()> {
    if n.action != "stop" && n.action != "start" {
        bail!("cstor up node {}: expected stop or start", n.action);
    }
    let sock = n.dir.join("up.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
        format!(
            "no cstor up running in {} ({})",
            n.dir.display(),
            sock.display()
        )
    })?;
    writeln!(s, "node {} {}", n.action, n.name)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    match reply.trim().strip_prefix("ok ") {
        Some(msg) => {
            println!("{msg}");
            Ok(())
        }
        None => bail!("{}", reply.trim().trim_start_matches("error ")),
    }
}

/// What makes a component Ready.
#[derive(Debug, Clone)]
enum Probe {
    /// The process runs and this port accepts connections.
    Tcp(SocketAddr),
    /// The process runs and a connection to this unix socket succeeds.
    Unix(PathBuf),
    /// The process runs.
    Alive,
}

#[derive(Debug)]
struct Component {
    pod: String,
    container: String,
    labels: BTreeMap<String, String>,
    node: Option<String>,
    ip: IpAddr,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    probe: Probe,
    child: Option<Child>,
    enabled: bool,
    restarts: u32,
    next_start: Instant,
    ready: Option<bool>,
    started: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl Component {
    fn spawn(&mut self) -> Result<()> {
        if self.log.exists() {
            let _ = std::fs::rename(&self.log, self.log.with_extension("log.1"));
        }
        let log = std::fs::File::create(&self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        let mut cmd = Command::new(std::env::current_exe().context("finding the cstor binary")?);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl: then we are orphaned already.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent gone"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.pod))?;
        self.child = Some(child);
        self.started = Some(cstor_agent::kubeapi::now());
        self.ready = None;
        Ok(())
    }

    /// Exit status if the process ended.
    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => {
                self.child = None;
                Some(s.to_string())
            }
            _ => None,
        }
    }

    fn probe(&self) -> bool {
        if self.child.is_none() {
            return false;
        }
        match self.probe {
            Probe::Alive => true,
            Probe::Tcp(a) => TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok(),
            Probe::Unix(ref p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
        }
    }

    /// Whether this is a node agent (`cstor node`), not a node's CSI plugin.
    fn is_agent(&self) -> bool {
        self.node.is_some() && self.container == AGENT_CONTAINER
    }

    fn signal(&mut self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let t0 = Instant::now();
        while let Some(c) = self.child.as_mut() {
            if c.try_wait().ok().flatten().is_some() {
                self.child = None;
                break;
            }
            if t0.elapsed() > grace {
                let _ = c.kill();
                let _ = c.wait();
                self.child = None;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Container name of the node agents' Pods (cStor's pool pods' container).
const AGENT_CONTAINER: &str = "cstor-pool";
/// Container name of the CSI driver's Pods.
const CSI_CONTAINER: &str = "cstor-csi-plugin";

/// The CSI controller service's socket in a `cstor up` directory (`cstor attach` finds it
/// there).
pub fn csi_controller_socket(dir: &Path) -> PathBuf {
    dir.join("csi").join("controller.sock")
}

/// A node's CSI node service socket in a `cstor up` directory.
pub fn csi_node_socket(dir: &Path, node: &str) -> PathBuf {
    dir.join("nodes").join(node).join("csi.sock")
}

/// A node's CSI node plugin's `--state-dir` (its records and attach directories).
fn csi_node_state(dir: &Path, node: &str) -> PathBuf {
    dir.join("nodes").join(node).join("csi")
}

fn csi_component(
    dir: &Path,
    kubeconfig: &Path,
    node: Option<(&str, IpAddr)>,
    log_of: &dyn Fn(&str, &str) -> PathBuf,
    api_ip: IpAddr,
) -> Component {
    let (pod, app, socket, ip) = match node {
        Some((n, ip)) => (
            format!("openebs-cstor-csi-node-{n}"),
            "openebs-cstor-csi-node",
            csi_node_socket(dir, n),
            ip,
        ),
        None => (
            "openebs-cstor-csi-controller-0".to_owned(),
            "openebs-cstor-csi-controller",
            csi_controller_socket(dir),
            api_ip,
        ),
    };
    let mut args = vec![
        "csi".to_string(),
        "--endpoint".into(),
        format!("unix://{}", socket.display()),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ];
    match node {
        Some((n, _)) => args.extend([
            "--mode".into(),
            "node".into(),
            "--node-id".into(),
            n.to_owned(),
            "--state-dir".into(),
            csi_node_state(dir, n).display().to_string(),
            // A SIGKILLed `cstor up` cannot take the attaches down itself (its clean stop
            // does): its node plugins do, when their parent-death signal stops them.
            "--take-down-when-orphaned".into(),
        ]),
        None => args.extend(["--mode".into(), "controller".into()]),
    }
    let mut labels = BTreeMap::from([
        ("app".to_owned(), app.to_owned()),
        ("openebs.io/component-name".to_owned(), app.to_owned()),
    ]);
    if let Some((n, _)) = node {
        labels.insert("kubernetes.io/hostname".into(), n.to_owned());
    }
    Component {
        log: log_of(&pod, CSI_CONTAINER),
        pod,
        container: CSI_CONTAINER.into(),
        labels,
        node: node.map(|(n, _)| n.to_owned()),
        ip,
        args,
        envs: vec![(
            "RUST_LOG".into(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )],
        probe: Probe::Unix(socket),
        child: None,
        enabled: true,
        restarts: 0,
        next_start: Instant::now(),
        ready: None,
        started: None,
    }
}

/// Pod of the embedded CSI sidecars (`cstor sidecars`), beside the CSI controller's.
const SIDECARS_POD: &str = "openebs-cstor-csi-sidecars-0";

/// `cstor sidecars` on the CSI controller's socket: the sidecars the real containers
/// replace on a real cluster, leader-elected as they are there, with the pod's name as
/// its identity (so a restarted process takes its Leases back at once, as a restarted
/// container does).
fn sidecars_component(
    dir: &Path,
    kubeconfig: &Path,
    log_of: &dyn Fn(&str, &str) -> PathBuf,
    ip: IpAddr,
    reconcile_sync: Duration,
) -> Component {
    let app = "openebs-cstor-csi-sidecars";
    Component {
        log: log_of(SIDECARS_POD, "csi-sidecars"),
        pod: SIDECARS_POD.into(),
        container: "csi-sidecars".into(),
        labels: BTreeMap::from([
            ("app".to_owned(), app.to_owned()),
            ("openebs.io/component-name".to_owned(), app.to_owned()),
        ]),
        node: None,
        ip,
        args: vec![
            "sidecars".into(),
            "--csi-endpoint".into(),
            format!("unix://{}", csi_controller_socket(dir).display()),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--reconcile-sync".into(),
            format!("{}ms", reconcile_sync.as_millis()),
            "--leader-election".into(),
            "--leader-election-namespace".into(),
            cstor_api::names::DEFAULT_NAMESPACE.into(),
            "--leader-election-identity".into(),
            SIDECARS_POD.into(),
        ],
        envs: vec![(
            "RUST_LOG".into(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )],
        probe: Probe::Alive,
        child: None,
        enabled: true,
        restarts: 0,
        next_start: Instant::now(),
        ready: None,
        started: None,
    }
}

fn node_ip(base: Ipv4Addr, i: u32) -> Result<Ipv4Addr> {
    let v = u32::from(base)
        .checked_add(i)
        .ok_or_else(|| anyhow!("--base-address {base} + {i} overflows"))?;
    Ok(Ipv4Addr::from(v))
}

fn has_controller() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            Command::new(exe)
                .args(["controller", "--help"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()
        })
        .is_some_and(|s| s.success())
}

fn random_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn supervise(a: RunArgs) -> Result<()> {
    if a.nodes == 0 || a.nodes > 64 {
        bail!("--nodes {}: 1 to 64", a.nodes);
    }
    let disk_size =
        crate::units::parse_size(&a.disk_size).map_err(|e| anyhow!("--disk-size: {e}"))?;
    if disk_size < 64 << 20 {
        bail!("--disk-size {}: at least 64M", a.disk_size);
    }
    let dir = std::path::absolute(&a.dir).context("--dir")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let sock_path = dir.join("up.sock");
    if std::os::unix::net::UnixStream::connect(&sock_path).is_ok() {
        bail!("a cstor up is already running in {}", dir.display());
    }
    let _ = std::fs::remove_file(&sock_path);
    let ctl = tokio::net::UnixListener::bind(&sock_path)
        .with_context(|| format!("binding {}", sock_path.display()))?;
    let logs = dir.join("logs");
    let log_of = |pod: &str, c: &str| logs.join(format!("openebs_{pod}_{c}.log"));
    let api_addr = SocketAddr::new(IpAddr::V4(a.base_address), a.api_port);
    if TcpStream::connect_timeout(&api_addr, Duration::from_millis(300)).is_ok() {
        bail!("{api_addr} is in use: pick another --base-address or --api-port");
    }
    let mut comps: Vec<Component> = Vec::new();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let api_data = dir.join("apiserver");
    comps.push(Component {
        pod: "cstor-apiserver".into(),
        container: "cstor-apiserver".into(),
        labels: labels(&[
            ("app", "cstor-apiserver"),
            ("openebs.io/component-name", "cstor-apiserver"),
        ]),
        node: None,
        ip: api_addr.ip(),
        args: vec![
            "apiserver".into(),
            "--listen".into(),
            api_addr.to_string(),
            "--data-dir".into(),
            api_data.display().to_string(),
            "--pod-log-dir".into(),
            logs.display().to_string(),
        ],
        envs: vec![],
        log: log_of("cstor-apiserver", "cstor-apiserver"),
        probe: Probe::Tcp(api_addr),
        child: None,
        enabled: true,
        restarts: 0,
        next_start: Instant::now(),
        ready: None,
        started: None,
    });
    comps[0].spawn()?;
    let kc_src = api_data.join("kubeconfig");
    let t0 = Instant::now();
    while !(kc_src.exists()
        && TcpStream::connect_timeout(&api_addr, Duration::from_millis(200)).is_ok())
    {
        if let Some(s) = comps[0].exited() {
            bail!(
                "cstor apiserver exited ({s}); see {}",
                comps[0].log.display()
            );
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "cstor apiserver did not start in 60 s; see {}",
                comps[0].log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&kc_src, &kubeconfig).context("writing the kubeconfig")?;
    let client = cstor_agent::kubeapi::client(Some(&kubeconfig)).await?;
    setup_cluster(&client, &dir).await?;
    let tls_names = match a.replica_tls {
        true => Some(
            (1..=a.nodes)
                .map(|i| node_ip(a.base_address, i).map(|ip| ip.to_string()))
                .collect::<Result<Vec<_>>>()?,
        ),
        false => None,
    };
    setup_replica_tls(&client, &dir, tls_names).await?;
    if has_controller() {
        comps.push(Component {
            pod: "cstor-controller".into(),
            container: "cstor-controller".into(),
            labels: labels(&[
                ("app", "cstor-cspc-operator"),
                ("openebs.io/component-name", "cspc-operator"),
                ("name", "cstor-controller"),
            ]),
            node: None,
            ip: api_addr.ip(),
            args: vec![
                "controller".into(),
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--target-move-grace".into(),
                format!("{}ms", a.target_move_grace.as_millis()),
                "--replica-replace-grace".into(),
                format!("{}ms", a.replica_replace_grace.as_millis()),
            ],
            envs: vec![],
            log: log_of("cstor-controller", "cstor-controller"),
            probe: Probe::Alive,
            child: None,
            enabled: true,
            restarts: 0,
            next_start: Instant::now(),
            ready: None,
            started: None,
        });
    }
    for i in 1..=a.nodes {
        let name = format!("node-{i}");
        let ip = node_ip(a.base_address, i)?;
        let nd = dir.join("nodes").join(&name);
        std::fs::create_dir_all(nd.join("home"))?;
        let mut args = vec![
            "node".to_string(),
            "--name".into(),
            name.clone(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--address".into(),
            ip.to_string(),
            "--home".into(),
            nd.join("home").display().to_string(),
            "--metrics".into(),
            SocketAddr::new(IpAddr::V4(ip), super::metrics::EXPORTER_PORT).to_string(),
        ];
        for k in 1..=a.disks_per_node {
            let p = nd.join(format!("disk-{k}.img"));
            if !p.exists() {
                let f = std::fs::File::create(&p)
                    .with_context(|| format!("creating {}", p.display()))?;
                f.set_len(disk_size)?;
            }
            args.push("--disk".into());
            args.push(p.display().to_string());
        }
        let pod = format!("cstor-{name}");
        comps.push(Component {
            pod: pod.clone(),
            container: AGENT_CONTAINER.into(),
            labels: labels(&[
                ("app", "cstor-pool"),
                ("openebs.io/component-name", "cstor-node"),
                ("kubernetes.io/hostname", &name),
            ]),
            node: Some(name.clone()),
            ip: IpAddr::V4(ip),
            args,
            envs: vec![(
                "RUST_LOG".into(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )],
            log: log_of(&pod, "cstor-pool"),
            probe: Probe::Tcp(SocketAddr::new(IpAddr::V4(ip), 3260)),
            child: None,
            enabled: true,
            restarts: 0,
            next_start: Instant::now(),
            ready: None,
            started: None,
        });
    }
    comps.push(csi_component(
        &dir,
        &kubeconfig,
        None,
        &log_of,
        api_addr.ip(),
    ));
    comps.push(sidecars_component(
        &dir,
        &kubeconfig,
        &log_of,
        api_addr.ip(),
        a.attacher_reconcile_sync,
    ));
    for i in 1..=a.nodes {
        let name = format!("node-{i}");
        let ip = IpAddr::V4(node_ip(a.base_address, i)?);
        comps.push(csi_component(
            &dir,
            &kubeconfig,
            Some((&name, ip)),
            &log_of,
            api_addr.ip(),
        ));
    }
    for c in comps.iter_mut().skip(1) {
        c.spawn()?;
    }
    super::up_prometheus::write_config(&dir)?;
    if let Err(e) = super::up_prometheus::sync_rules(&client, &dir).await {
        eprintln!("cstor up: prometheus rules: {e:#}");
    }
    for c in &comps {
        publish_pod(&client, c).await?;
    }
    print_next(&dir, &kubeconfig, &comps);
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(String, tokio::sync::oneshot::Sender<String>)>(8);
    tokio::spawn(async move {
        while let Ok((s, _)) = ctl.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut line = String::new();
                let mut br = tokio::io::BufReader::new(r);
                if tokio::io::AsyncBufReadExt::read_line(&mut br, &mut line)
                    .await
                    .is_err()
                {
                    return;
                }
                let (otx, orx) = tokio::sync::oneshot::channel();
                if tx.send((line.trim().to_string(), otx)).await.is_err() {
                    return;
                }
                let reply = orx.await.unwrap_or_else(|_| "error shutting down".into());
                let _ =
                    tokio::io::AsyncWriteExt::write_all(&mut w, format!("{reply}\n").as_bytes())
                        .await;
            });
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Monitors, PrometheusRules and the Pods they select are polled (a few lists every
    // 2 s are nothing to the API server; a watch would need re-establishing across its
    // restarts). The first pass comes at once; each warning is printed once.
    let mut rules_synced = Instant::now();
    let mut sync_soon = true;
    let mut warned = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some((req, reply)) = rx.recv() => {
                let _ = reply.send(control(&mut comps, &req));
                // The Pods' status changes below; the targets follow at the next tick.
                sync_soon = true;
            }
        }
        if sync_soon || rules_synced.elapsed() >= Duration::from_secs(2) {
            rules_synced = Instant::now();
            sync_soon = false;
            match super::up_prometheus::sync_targets(&client, &dir).await {
                Ok((_, warnings)) => {
                    for w in warnings {
                        if warned.insert(w.clone()) {
                            eprintln!("cstor up: prometheus targets: {w}");
                        }
                    }
                }
                Err(e) => eprintln!("cstor up: prometheus targets: {e:#}"),
            }
            // The kubelet's plugin registration: the attacher reads node ids there.
            let nodes: Vec<String> = (1..=a.nodes).map(|i| format!("node-{i}")).collect();
            if let Err(e) = super::up_csinode::register(&client, &dir, &nodes).await {
                eprintln!("cstor up: CSINode registration: {e:#}");
            }
            match super::up_prometheus::sync_rules(&client, &dir).await {
                Ok(true) => eprintln!(
                    "cstor up: prometheus rules rewritten from the PrometheusRule objects (reload Prometheus)"
                ),
                Ok(false) => {}
                Err(e) => eprintln!("cstor up: prometheus rules: {e:#}"),
            }
        }
        for c in comps.iter_mut() {
            if let Some(status) = c.exited() {
                if c.enabled {
                    c.restarts += 1;
                    let backoff = Duration::from_secs(1 << c.restarts.min(5));
                    c.next_start = Instant::now() + backoff;
                    let msg = format!(
                        "{} exited ({status}); restarting in {backoff:?} (restart {})",
                        c.pod, c.restarts
                    );
                    eprintln!("cstor up: {msg}");
                    let _ = event(&client, c, "BackOff", &msg, "Warning").await;
                }
            }
            if c.enabled && c.child.is_none() && Instant::now() >= c.next_start {
                match c.spawn() {
                    Ok(()) if c.restarts > 0 => {
                        let msg = format!("restarted {} (restart {})", c.pod, c.restarts);
                        let _ = event(&client, c, "Restarted", &msg, "Normal").await;
                    }
                    Ok(()) => {}
                    Err(e) => eprintln!("cstor up: {e:#}"),
                }
            }
            let ready = c.probe();
            if c.ready != Some(ready) && pod_status(&client, c, ready).await.is_ok() {
                c.ready = Some(ready);
            }
        }
    }
    eprintln!("cstor up: stopping (node plugins and their attaches first, then node agents)");
    // The node plugins first, so none starts an attach while they are taken down.
    for c in comps
        .iter_mut()
        .filter(|c| c.node.is_some() && !c.is_agent())
    {
        c.signal(libc::SIGTERM);
    }
    for c in comps
        .iter_mut()
        .filter(|c| c.node.is_some() && !c.is_agent())
    {
        c.stop(Duration::from_secs(10));
        let _ = pod_status(&client, c, false).await;
    }
    // The attaches of volumes still staged run in sessions of their own, to outlive a
    // plugin restart; this is the nodes' final stop, so they go too, while the agents
    // still serve their targets (the initiators log out cleanly).
    let node_dirs: Vec<(String, PathBuf)> = comps
        .iter()
        .filter(|c| c.is_agent())
        .filter_map(|c| c.node.clone())
        .map(|n| {
            let state = csi_node_state(&dir, &n);
            (n, state)
        })
        .collect();
    for (node, state) in node_dirs {
        let said = tokio::task::spawn_blocking(move || cstor_csi::node::take_down(&state))
            .await
            .unwrap_or_else(|e| vec![format!("the teardown failed: {e}")]);
        for line in said {
            eprintln!("cstor up: {node}: attach taken down: {line}");
        }
    }
    for c in comps.iter_mut().filter(|c| c.node.is_some()) {
        c.signal(libc::SIGTERM);
    }
    for c in comps.iter_mut().filter(|c| c.node.is_some()) {
        c.stop(Duration::from_secs(40));
        let _ = pod_status(&client, c, false).await;
    }
    for c in comps.iter_mut().rev().filter(|c| c.node.is_none()) {
        if c.pod != "cstor-apiserver" {
            c.stop(Duration::from_secs(10));
        }
        let _ = pod_status(&client, c, false).await;
    }
    for c in comps.iter_mut() {
        c.stop(Duration::from_secs(10));
    }
    let _ = std::fs::remove_file(&sock_path);
    eprintln!(
        "cstor up: stopped; run it again with --dir {} to resume",
        dir.display()
    );
    Ok(())
}

fn control(comps: &mut [Component], req: &str) -> String {
    let parts: Vec<&str> = req.split_whitespace().collect();
    let (action, name) = match parts.as_slice() {
        ["node", a, n] => (*a, *n),
        _ => return format!("error unknown request {req:?}"),
    };
    let mut hit = false;
    for c in comps.iter_mut().filter(|c| c.node.as_deref() == Some(name)) {
        hit = true;
        match action {
            "stop" => {
                c.enabled = false;
                // A lost node: no clean shutdown.
                if let Some(ch) = c.child.as_mut() {
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                c.child = None;
            }
            "start" => {
                c.enabled = true;
                c.restarts = 0;
                c.next_start = Instant::now();
                if c.child.is_none() {
                    if let Err(e) = c.spawn() {
                        return format!("error {e:#}");
                    }
                }
            }
            _ => return format!("error unknown action {action}"),
        }
    }
    if !hit {
        return format!("error no node {name}");
    }
    format!(
        "ok node {name} {}",
        if action == "stop" {
            "stopped"
        } else {
            "started"
        }
    )
}

async fn setup_cluster(client: &kube::Client, dir: &Path) -> Result<()> {
    let ns: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openebs"}}),
    )?;
    cstor_agent::kubeapi::create_if_missing(&ns, &obj).await?;
    let key_file = dir.join("replica-auth.key");
    let key = match std::fs::read_to_string(&key_file) {
        Ok(k) if k.trim().len() >= 16 => k.trim().to_string(),
        _ => {
            let k = random_key();
            std::fs::write(&key_file, &k)?;
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            k
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "openebs");
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": cstor_agent::AUTH_SECRET, "namespace": "openebs"},
        "type": "Opaque",
        // `data` (base64 through ByteString), not stringData: not every API server folds it.
        "data": {"key": k8s_openapi::ByteString(key.into_bytes())},
    }))?;
    cstor_agent::kubeapi::create_if_missing(&secrets, &s).await?;
    install_monitoring(client).await
}

/// Secret `cstor-replica-tls` from DIR/replica-tls, made once for `names` (the nodes'
/// addresses) and again when they change; `None` removes the Secret. Agents read it when
/// they open a pool or start a target, so it is in place before they start.
async fn setup_replica_tls(
    client: &kube::Client,
    dir: &Path,
    names: Option<Vec<String>>,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "openebs");
    let name = cstor_agent::TLS_SECRET;
    let Some(names) = names else {
        if secrets.get_opt(name).await?.is_some() {
            secrets
                .delete(name, &Default::default())
                .await
                .with_context(|| format!("removing Secret {name} (no --replica-tls)"))?;
            eprintln!("cstor up: replica TLS off: Secret {name} removed");
        }
        return Ok(());
    };
    let tdir = dir.join("replica-tls");
    std::fs::create_dir_all(&tdir)?;
    let want = names.join(",");
    let files = ["ca.crt", "tls.crt", "tls.key"];
    let read = |f: &str| std::fs::read(tdir.join(f));
    let have = std::fs::read_to_string(tdir.join("names")).unwrap_or_default();
    if have.trim() != want || files.iter().any(|f| read(f).is_err()) {
        let g = cstor_replication::tls::generate(&names, 3650)?;
        for (f, text) in files.iter().zip([&g.ca_cert, &g.cert, &g.key]) {
            let path = tdir.join(f);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        std::fs::write(tdir.join("names"), &want)?;
    }
    let mut data = serde_json::Map::new();
    for f in files {
        let bytes = read(f).with_context(|| format!("{}", tdir.join(f).display()))?;
        data.insert(
            f.to_string(),
            serde_json::to_value(k8s_openapi::ByteString(bytes))?,
        );
    }
    let mut s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "openebs"},
        "type": "Opaque",
        "data": data,
    }))?;
    match secrets.get_opt(name).await? {
        Some(old) if old.data == s.data => {}
        Some(old) => {
            s.metadata.resource_version = old.metadata.resource_version;
            secrets.replace(name, &Default::default(), &s).await?;
        }
        None => {
            secrets.create(&Default::default(), &s).await?;
        }
    }
    Ok(())
}

/// The monitoring.coreos.com CRDs (ServiceMonitor, PodMonitor, PrometheusRule) and the
/// node agents' metrics Service, from deploy/monitoring, so the seed's ServiceMonitor and
/// PrometheusRule apply unchanged. Objects that exist are left alone (a user may have
/// installed prometheus-operator's own CRDs).
async fn install_monitoring(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    const CRDS: &str = include_str!("../../../../deploy/monitoring/crds.yaml");
    const SERVICE: &str = include_str!("../../../../deploy/monitoring/service-cstor-pool.yaml");
    let crds: Vec<CustomResourceDefinition> =
        serde_saphyr::from_multiple(CRDS).context("the built-in monitoring CRDs")?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        cstor_agent::kubeapi::create_if_missing(&api, crd)
            .await
            .with_context(|| format!("installing CRD {:?}", crd.metadata.name))?;
    }
    let svc: Service = serde_saphyr::from_str(SERVICE).context("the built-in metrics Service")?;
    let api: Api<Service> = Api::namespaced(client.clone(), "openebs");
    cstor_agent::kubeapi::create_if_missing(&api, &svc)
        .await
        .context("creating the metrics Service")?;
    Ok(())
}

async fn publish_pod(client: &kube::Client, c: &Component) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "openebs");
    // The agent's metrics port, named as the metrics Service's port (a PodMonitor names it).
    let ports = if c.is_agent() {
        json!([{"name": "exporter", "containerPort": super::metrics::EXPORTER_PORT, "protocol": "TCP"}])
    } else {
        json!([])
    };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": c.pod, "namespace": "openebs", "labels": c.labels},
        "spec": {
            "nodeName": c.node,
            "containers": [{"name": c.container, "image": "cstor", "command": ["cstor"],
                            "args": c.args, "ports": ports}],
        },
    }))?;
    if !cstor_agent::kubeapi::create_if_missing(&pods, &pod).await? {
        cstor_agent::kubeapi::merge(&pods, &c.pod, json!({"metadata": {"labels": c.labels}}))
            .await?;
    }
    Ok(())
}

async fn pod_status(client: &kube::Client, c: &Component, ready: bool) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "openebs");
    let t = cstor_agent::kubeapi::now();
    let r = if ready { "True" } else { "False" };
    let state = if c.child.is_some() {
        json!({"running": {"startedAt": c.started}})
    } else {
        json!({"terminated": {"exitCode": 1, "reason": if c.enabled { "Error" } else { "Stopped" }, "finishedAt": t}})
    };
    cstor_agent::kubeapi::merge_status(
        &pods,
        &c.pod,
        json!({
            "phase": if c.child.is_some() { "Running" } else { "Failed" },
            "podIP": c.ip.to_string(),
            "hostIP": c.ip.to_string(),
            "startTime": c.started,
            "conditions": [
                {"type": "Ready", "status": r, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": r, "lastTransitionTime": t},
            ],
            "containerStatuses": [{
                "name": c.container, "image": "cstor", "imageID": "", "ready": ready,
                "started": c.child.is_some(), "restartCount": c.restarts, "state": state,
            }],
        }),
    )
    .await?;
    Ok(())
}

async fn event(
    client: &kube::Client,
    c: &Component,
    reason: &str,
    msg: &str,
    type_: &str,
) -> Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), "openebs");
    let t = cstor_agent::kubeapi::now();
    let e: Event = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{}", c.pod, uuid::Uuid::new_v4().simple()), "namespace": "openebs"},
        "involvedObject": {"kind": "Pod", "name": c.pod, "namespace": "openebs", "apiVersion": "v1"},
        "reason": reason, "message": msg, "type": type_, "count": 1,
        "firstTimestamp": t, "lastTimestamp": t,
        "source": {"component": "cstor-up"},
    }))?;
    cstor_agent::kubeapi::create_if_missing(&events, &e).await?;
    Ok(())
}

fn print_next(dir: &Path, kubeconfig: &Path, comps: &[Component]) {
    let nodes: Vec<String> = comps
        .iter()
        .filter(|c| c.is_agent())
        .filter_map(|c| c.node.clone())
        .collect();
    println!(
        "cstor up: running in {} ({} nodes: {})",
        dir.display(),
        nodes.len(),
        nodes.join(", ")
    );
    println!();
    println!("Next:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl -n openebs wait --for=condition=Ready pods --all --timeout=60s");
    println!("  kubectl get nodes");
    println!("  kubectl get bd -n openebs");
    println!("  kubectl apply -f cspc.yaml        # docs/seeds/how-to-build-cstor-pools.md");
    println!("  kubectl get cspi -n openebs");
    for c in comps.iter().filter(|c| c.is_agent()) {
        println!(
            "  curl http://{}/metrics   # {} metrics",
            SocketAddr::new(c.ip, super::metrics::EXPORTER_PORT),
            c.node.as_deref().unwrap_or("")
        );
    }
    println!(
        "  prometheus --config.file={} --storage.tsdb.path=/tmp/prom   # scrapes what the ServiceMonitors select",
        dir.join("prometheus").join("prometheus.yml").display()
    );
    println!(
        "  cstor attach PVC -n NAMESPACE --node {} --mount DIR --dir {}   # use a claim as a pod would",
        nodes.first().map(String::as_str).unwrap_or("node-1"),
        dir.display()
    );
    println!(
        "  cstor up node stop {} --dir {}   # lose a node; start brings it back",
        nodes.last().map(String::as_str).unwrap_or("node-1"),
        dir.display()
    );
    println!("Stop with Ctrl-C (or SIGTERM); run the same command again to resume.");
}
