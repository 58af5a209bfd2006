//! cstor-apiserver: the embedded Kubernetes API server (ARCHITECTURE.md decisions 1-2),
//! so kubectl and kube-rs controllers run unchanged against one machine.
//!
//! Owns: the HTTPS listener, the credentials in the data directory, and (through
//! `core::Core`) every object in one redb file (docs/format/apiserver-store.md).
//! Invariants: every request without the bearer token gets 401 (except anonymous GETs
//! of /healthz, /readyz, /livez and /version, as on a real cluster); every acknowledged
//! change is durable (kill -9 loses nothing acknowledged); the global resourceVersion
//! only grows, across restarts too; a watch resumed from any resourceVersion still in the
//! bounded history receives every later change.
//! Never: runs workloads (pods and statefulsets are stored only, with a warning), talks
//! to other machines, or depends on higher layers (it serves whatever CRDs it is given).
//! Also runs kube-controller-manager's storage loops (kcm.rs) unless
//! `Config::storage_controllers` is off; namespace, owner-reference (background and
//! foreground) and CRD-instance garbage collection are built in.
//!
//! Where it knowingly differs from kube-apiserver (clients written for a real cluster
//! work; code relying on these would not be portable):
//! - one credential: the bearer token is the cluster administrator, so every
//!   SelfSubjectAccessReview is allowed and there is no RBAC;
//! - a CRD whose group and plural a built-in serves is not served (NamesAccepted and
//!   Established are False with reason PluralConflict), where a real cluster would refuse
//!   an unapproved `*.k8s.io` CRD or shadow the built-in;
//! - objects of a resource nobody serves any more (a CRD removed without its cleanup
//!   finalizer, from stores written before it existed) are deleted outright, finalizers
//!   notwithstanding: nothing could ever reach them again;
//! - protobuf (pb/) is served for the built-in kinds with a Kubernetes proto, transcoded
//!   from the JSON model; `0`/`false` fields a Go client sent are kept as sent where
//!   kube-apiserver's JSON would omit them, and CRD objects are JSON only
//!   (docs/apiserver-compat.md, "Protobuf");
//! - a list newer than the server's resourceVersion is 504 at once (no wait for the
//!   watch cache to catch up: there is no cache lag here).
//!
//! Shutdown: dropping the `Server` aborts its tasks; a write in flight either committed
//! (and is kept) or did not (and was not acknowledged).

mod builtin;
mod core;
mod discovery;
mod error;
mod fields;
mod http;
mod jsonpath;
mod kcm;
mod limits;
mod listtype;
mod patch;
mod pb;
mod podlog;
mod quantity;
mod registry;
mod schema;
mod select;
mod store;
mod table;
mod time;
mod tls;
mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use error::{ApiError, FieldCause};
pub use select::LabelSelector;
pub use store::StoreError;

/// Name of the store file inside the data directory.
pub const STORE_FILE: &str = "store.redb";
/// Name of the kubeconfig written into the data directory.
pub const KUBECONFIG_FILE: &str = "kubeconfig";

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Filesystem error on a data-directory file.
    #[error("{}: {source}", path.display())]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Could not listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The store could not be opened or an initial object not written.
    #[error("store: {0}")]
    Api(#[from] ApiError),
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; see `Server::local_addr`).
    pub listen: SocketAddr,
    /// Directory for the store, credentials and kubeconfig (created if missing).
    pub data_dir: PathBuf,
    /// CustomResourceDefinitions (apiextensions.k8s.io/v1 JSON) served from the start;
    /// created when missing and updated when their spec changed.
    pub crds: Vec<Value>,
    /// Resources served through another resource's storage, with their conversions.
    pub aliases: Vec<Alias>,
    /// Run kube-controller-manager's storage loops (PV binder, provisioner annotations,
    /// expansion bookkeeping; see kcm.rs). On for the single-machine control plane,
    /// where nothing else does it; a real cluster runs kube-controller-manager instead.
    pub storage_controllers: bool,
    /// Where `pods/log` finds container logs (`NS_POD_CONTAINER.log`, and files Pod
    /// annotations name, which must lie inside it); None: `DATA_DIR/pod-logs`.
    pub pod_log_dir: Option<PathBuf>,
}

/// Converts one whole object (JSON) between an alias and its storage representation;
/// an error is refused with 422 on write.
pub type ConvertFn = Arc<dyn Fn(&Value) -> Result<Value, String> + Send + Sync>;

/// A CRD-defined resource served through another resource's storage, for example the
/// alpha `openebs.io/v1alpha1` CStorPoolCluster stored as a `cstor.openebs.io/v1` one:
/// objects written through either are read through both. The alias CRD must itself be
/// served (given in `Config::crds` or applied later). Metadata (name, uid,
/// resourceVersion, labels...) is carried over unchanged; the converters map the rest.
#[derive(Clone)]
pub struct Alias {
    /// API group of the alias, e.g. `openebs.io`.
    pub group: String,
    /// Plural of the alias, e.g. `cstorpoolclusters`.
    pub plural: String,
    /// Group of the storing resource, e.g. `cstor.openebs.io`.
    pub storage_group: String,
    /// Plural of the storing resource.
    pub storage_plural: String,
    /// apiVersion of stored objects, e.g. `cstor.openebs.io/v1`.
    pub storage_api_version: String,
    /// Kind of stored objects.
    pub storage_kind: String,
    /// Alias object to stored object.
    pub to_storage: ConvertFn,
    /// Stored object to alias object.
    pub from_storage: ConvertFn,
}

impl std::fmt::Debug for Alias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Alias({}.{} -> {}.{})",
            self.plural, self.group, self.storage_plural, self.storage_group
        )
    }
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Server {
    /// Opens the store, ensures the initial namespaces and CRDs, binds, writes the
    /// kubeconfig (mode 0600) and starts serving. Must run on a multi-threaded tokio
    /// runtime: durable commits run in `block_in_place`.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        make_private_dir(&config.data_dir)?;
        make_private_file(&config.data_dir.join(STORE_FILE))?;
        let core = Arc::new(tokio::task::block_in_place(|| {
            core::Core::open(
                &config.data_dir.join(STORE_FILE),
                config.aliases.iter().cloned().map(Arc::new).collect(),
            )
        })?);
        tokio::task::block_in_place(|| bootstrap(&core, &config.crds))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServerError::Listen {
                addr: config.listen,
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| ServerError::Listen {
            addr: config.listen,
            source: e,
        })?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let creds = tls::load_or_create(&config.data_dir, std::slice::from_ref(&host))?;
        let url_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let server_url = format!("https://{url_host}:{}", addr.port());
        let kubeconfig = config.data_dir.join(KUBECONFIG_FILE);
        tls::write_private(
            &kubeconfig,
            kubeconfig_text(&server_url, &creds.ca_pem, &creds.token).as_bytes(),
            0o600,
        )?;
        let app = Arc::new(http::App {
            core: core.clone(),
            token: creds.token.clone(),
            address: format!("{url_host}:{}", addr.port()),
            watches: Arc::new(tokio::sync::Semaphore::new(limits::WATCHES_MAX)),
            pod_log_dir: config
                .pod_log_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("pod-logs")),
        });
        let router = axum::Router::new().fallback(http::handle).with_state(app);
        let acceptor = tokio_rustls::TlsAcceptor::from(creds.tls.clone());
        let serve = tokio::spawn(accept_loop(listener, acceptor, router));
        let gc = tokio::spawn(gc_loop(core.clone()));
        let sweep = tokio::spawn(event_sweep_loop(core.clone()));
        let mut tasks = vec![serve, gc, sweep];
        if config.storage_controllers {
            tasks.push(tokio::spawn(kcm::storage_loop(core)));
        }
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "cstor apiserver serving");
        Ok(Server {
            addr,
            kubeconfig,
            tasks,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Path of the kubeconfig written at start.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Serves until the process ends.
    pub async fn wait(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The data directory holds the store (Secrets included) and the credentials: only its
/// owner may enter it (0700), also when it existed with looser permissions.
fn make_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| ServerError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Creates `path` empty with mode 0600 when missing (redb then initialises it, so it is
/// never readable by others, not even briefly) and tightens an existing one to 0600.
fn make_private_file(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
}

fn bootstrap(core: &core::Core, crds: &[Value]) -> Result<(), ApiError> {
    let reg = core.registry();
    if let Some(rt) = reg.find("", "v1", "namespaces") {
        let ctx = core::WriteCtx {
            rt,
            version: "v1".into(),
            namespace: String::new(),
            manager: "cstor-apiserver".into(),
            dry_run: false,
            validation: core::FieldValidation::Ignore,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if core.get(&ctx.rt, "", ns).is_err() {
                core.create(
                    &ctx,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )?;
            }
        }
    }
    core.ensure_crds(crds)
}

fn kubeconfig_text(server: &str, ca_pem: &str, token: &str) -> String {
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cstor", "cluster": {"server": server, "certificate-authority-data": tls::base64_encode(ca_pem.as_bytes())}}],
        "users": [{"name": "cstor-admin", "user": {"token": token}}],
        "contexts": [{"name": "cstor", "context": {"cluster": "cstor", "user": "cstor-admin", "namespace": "default"}}],
        "current-context": "cstor",
        "preferences": {},
    });
    serde_json::to_string_pretty(&cfg).unwrap_or_default()
}

/// Accepts connections forever (this loop is meant to run until the server is dropped).
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(limits::CONNECTIONS_MAX));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits::CONNECTIONS_MAX, "too many connections; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(limits::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = TowerToHyperService::new(router);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits::HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(limits::H2_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(limits::H2_KEEPALIVE_TIMEOUT);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Runs garbage collection whenever a deletion may have left work (runs forever).
async fn gc_loop(core: Arc<core::Core>) {
    loop {
        core.gc_wakeup.notified().await;
        for _ in 0..1000 {
            match tokio::task::block_in_place(|| core.collect_garbage()) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection failed");
                    break;
                }
            }
        }
    }
}

/// Expires events older than the TTL (runs forever).
async fn event_sweep_loop(core: Arc<core::Core>) {
    let mut tick = tokio::time::interval(limits::EVENT_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        core.gc_wakeup.notify_one();
    }
}
