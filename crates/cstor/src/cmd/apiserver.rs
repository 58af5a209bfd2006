//! `cstor apiserver`: the embedded Kubernetes API server (crates/apiserver) as a process.
//!
//! Owns: argument parsing and the process lifetime. Never: API logic of its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `cstor apiserver`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve HTTPS on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Directory for the store (store.redb), the CA, the token and the kubeconfig.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Run kube-controller-manager's storage loops (PV/PVC binding, the
    /// storage-provisioner annotations, reclaim hand-off, expansion bookkeeping). Needed
    /// on the single-machine control plane; on a real cluster kube-controller-manager
    /// does this and the embedded server is not used.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub storage_controllers: bool,
    /// Directory of the container logs `kubectl logs` serves:
    /// `DIR/<namespace>_<pod>_<container>.log` (`.log.1` for --previous), or the file a
    /// Pod's `cstor.openebs.io/log-path[.<container>]` annotation names inside DIR
    /// (docs/apiserver-pod-logs.md). Default: DATA_DIR/pod-logs.
    #[arg(long)]
    pub pod_log_dir: Option<PathBuf>,
}

/// The CustomResourceDefinitions served from the start, as apiextensions.k8s.io/v1 JSON.
/// The cStor kinds (`cstor_api::crds()`) are wired in here.
pub fn initial_crds() -> Vec<serde_json::Value> {
    cstor_api::crds()
        .into_iter()
        .filter_map(|crd| serde_json::to_value(crd).ok())
        .collect()
}

/// Resources served through another's storage with their conversions (the alpha
/// `openebs.io/v1alpha1` CStorPoolCluster converted to and from `cstor.openebs.io/v1`
/// comes from crates/api and is wired in here).
pub fn aliases() -> Vec<cstor_apiserver::Alias> {
    use cstor_api::{conversion, v1, v1alpha1};
    use std::sync::Arc;
    let to_storage: cstor_apiserver::ConvertFn = Arc::new(|object: &serde_json::Value| {
        let alpha: v1alpha1::CStorPoolCluster =
            serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
        let v1 = conversion::alpha_to_v1(&alpha).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        serde_json::to_value(v1).map_err(|e| e.to_string())
    });
    let from_storage: cstor_apiserver::ConvertFn = Arc::new(|object: &serde_json::Value| {
        let v1: v1::CStorPoolCluster =
            serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(conversion::v1_to_alpha(&v1)).map_err(|e| e.to_string())
    });
    vec![cstor_apiserver::Alias {
        group: "openebs.io".into(),
        plural: "cstorpoolclusters".into(),
        storage_group: "cstor.openebs.io".into(),
        storage_plural: "cstorpoolclusters".into(),
        storage_api_version: "cstor.openebs.io/v1".into(),
        storage_kind: "CStorPoolCluster".into(),
        to_storage,
        from_storage,
    }]
}

/// Runs the server until the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = cstor_apiserver::Server::start(cstor_apiserver::Config {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            crds: initial_crds(),
            aliases: aliases(),
            storage_controllers: args.storage_controllers,
            pod_log_dir: args.pod_log_dir.clone(),
        })
        .await
        .with_context(|| format!("starting the API server in {}", args.data_dir.display()))?;
        eprintln!(
            "cstor apiserver: serving https://{} (kubeconfig {})",
            server.local_addr(),
            server.kubeconfig_path().display()
        );
        server.wait().await;
        Ok(())
    })
}
