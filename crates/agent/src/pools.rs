//! The pools of this node's CStorPoolInstances (label `kubernetes.io/hostname=<node>`):
//! created on first sight (raid groups as the CSPI says, devices resolved through their
//! BlockDevices), imported when they already exist, served to targets on one replica
//! listener per pool at `<address>:<port>` (annotation `cstor.openebs.io/replica-endpoint`;
//! the port is kept across restarts), and described in the CSPI status: phase from the
//! pool's health, capacity, readOnly, provisioned and healthy replicas.
//!
//! Invariants: a pool is open at most once (the pool layer's device locks); its replica
//! server is stopped before the pool closes. Deleting a CSPI destroys its pool, as cStor.
//! Never: writes the CSPI spec (the controller's).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use cstor_api::v1::RaidGroupType;
use cstor_api::v1::{CStorPoolInstance, CStorPoolInstancePhase};
use cstor_api::v1::{CStorVolumeReplica, CStorVolumeReplicaPhase};
use cstor_api::v1alpha1::BlockDevice;
use cstor_node::host::CreateOptions;
use cstor_node::registry::Registry;
use cstor_node::socket::AdminServer;
use cstor_node::OpenPool;
use cstor_pool::spa::pool::{GroupKind, GroupSpec};
use cstor_pool::spa::Health;
use cstor_pool::{Compression, Pool};
use cstor_replication::store::PoolAccess;
use cstor_replication::{AuthKey, ReplicaServer};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Mutex;

use crate::error::{AgentError, Result};
use crate::kubeapi::{merge, merge_status};
use crate::{
    Ctx, AUTH_SECRET, CSPI_LABEL, ENDPOINT_ANNOTATION, HOSTNAME_LABEL, NAMESPACE, TLS_SECRET,
};

/// A pool held open by the agent, as the replication crate sees it.
#[derive(Debug)]
struct Access(Arc<OpenPool>);

impl PoolAccess for Access {
    fn pool(&self) -> &Pool {
        self.0.engine()
    }
}

/// One pool this agent hosts.
#[derive(Debug)]
pub struct Hosted {
    /// The open pool.
    pub open: Arc<OpenPool>,
    /// Where its replica server listens.
    pub endpoint: SocketAddr,
    server: Arc<ReplicaServer>,
    task: tokio::task::JoinHandle<()>,
    admin: Option<AdminServer>,
}

impl Hosted {
    /// Stops serving volume `name` (its sessions end) before the pool destroys it.
    pub fn release(&self, name: &str) {
        self.server.release(name);
    }
}

/// The pools of this node.
#[derive(Debug)]
pub struct Pools {
    ctx: Arc<Ctx>,
    hosted: Mutex<BTreeMap<String, Arc<Hosted>>>,
    /// Last error per CSPI, so each is reported once.
    failed: Mutex<BTreeMap<String, String>>,
    /// Spec edits being applied, per CSPI.
    edits: Mutex<BTreeMap<String, crate::pool_edit::EditState>>,
}

/// The replica auth key from Secret `cstor-replica-auth` (None: no Secret, loopback only).
pub async fn auth_key(client: &kube::Client) -> Result<Option<AuthKey>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(s) = api.get_opt(AUTH_SECRET).await? else {
        return Ok(None);
    };
    let raw = s.data.as_ref().and_then(|d| d.get("key")).ok_or_else(|| {
        AgentError::Invalid(format!("secret {AUTH_SECRET} has no data key 'key'"))
    })?;
    AuthKey::from_bytes(&raw.0)
        .map(Some)
        .map_err(|e| AgentError::Invalid(format!("secret {AUTH_SECRET}: {e}")))
}

/// Both ends of replica TLS from Secret `cstor-replica-tls`, when it exists: what the
/// replica servers of this node present, what its targets trust. A Secret that is there
/// but unusable is an error, never a silent fall back to plain TCP.
pub async fn replica_tls(client: &kube::Client) -> Result<Option<ReplicaTls>> {
    use cstor_replication::tls::{ReplicaTlsClient, ReplicaTlsServer};
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(s) = api.get_opt(TLS_SECRET).await? else {
        return Ok(None);
    };
    let data = s.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k).map(|v| v.0.as_slice()).ok_or_else(|| {
            AgentError::Invalid(format!("secret {TLS_SECRET} has no data key '{k}'"))
        })
    };
    let what = format!("secret {TLS_SECRET}");
    let bad = |e: cstor_replication::tls::TlsError| AgentError::Invalid(e.to_string());
    Ok(Some(ReplicaTls {
        server: ReplicaTlsServer::from_pem(get("tls.crt")?, get("tls.key")?, &what).map_err(bad)?,
        client: ReplicaTlsClient::from_pem(get("ca.crt")?, &what).map_err(bad)?,
    }))
}

/// [`replica_tls`]'s two ends.
#[derive(Debug, Clone)]
pub struct ReplicaTls {
    /// For this node's replica servers.
    pub server: cstor_replication::tls::ReplicaTlsServer,
    /// For this node's targets.
    pub client: cstor_replication::tls::ReplicaTlsClient,
}

/// The engine's group kind of a raid type.
pub(crate) fn group_kind(t: RaidGroupType) -> GroupKind {
    match t {
        RaidGroupType::Stripe => GroupKind::Stripe,
        RaidGroupType::Mirror => GroupKind::Mirror,
        RaidGroupType::Raidz => GroupKind::Raidz,
        RaidGroupType::Raidz2 => GroupKind::Raidz2,
    }
}

fn phase_of(h: Health) -> CStorPoolInstancePhase {
    match h {
        Health::Online => CStorPoolInstancePhase::Online,
        Health::Degraded => CStorPoolInstancePhase::Degraded,
        Health::Faulted => CStorPoolInstancePhase::Faulted,
    }
}

impl Pools {
    /// No pools yet.
    pub fn new(ctx: Arc<Ctx>) -> Pools {
        Pools {
            ctx,
            hosted: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(BTreeMap::new()),
            edits: Mutex::new(BTreeMap::new()),
        }
    }

    /// The pool of CSPI `name`, if hosted here.
    pub async fn get(&self, name: &str) -> Option<Arc<Hosted>> {
        self.hosted.lock().await.get(name).cloned()
    }

    /// Names of the hosted CSPIs.
    pub async fn names(&self) -> Vec<String> {
        self.hosted.lock().await.keys().cloned().collect()
    }

    /// Every hosted pool (for the metrics exporter).
    pub async fn open_pools(&self) -> Vec<Arc<OpenPool>> {
        self.hosted
            .lock()
            .await
            .values()
            .map(|h| h.open.clone())
            .collect()
    }

    fn registry(&self) -> Registry {
        Registry::new(self.ctx.cfg.home.clone())
    }

    /// One pass over this node's CSPIs.
    pub async fn sync(&self) -> Result<()> {
        let api: Api<CStorPoolInstance> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let sel = format!("{HOSTNAME_LABEL}={}", self.ctx.cfg.name);
        let list = api.list(&ListParams::default().labels(&sel)).await?;
        let cvrs: Api<CStorVolumeReplica> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let all_cvrs = cvrs.list(&ListParams::default()).await?.items;
        let wanted: Vec<String> = list.items.iter().map(|c| c.name_any()).collect();
        let bd_api: Api<BlockDevice> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let bds = bd_api
            .list(&ListParams::default().labels(&sel))
            .await?
            .items;
        for cspi in &list.items {
            let name = cspi.name_any();
            if cspi.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let hosted = self.hosted.lock().await.get(&name).cloned();
            let hosted = match hosted {
                Some(h) => h,
                None => match self.open(cspi, &bds).await {
                    Ok(h) => {
                        self.failed.lock().await.remove(&name);
                        h
                    }
                    Err((phase, e)) => {
                        let msg = e.to_string();
                        let mut failed = self.failed.lock().await;
                        if failed.get(&name) != Some(&msg) {
                            tracing::error!(cspi = %name, error = %msg, "pool not opened");
                            failed.insert(name.clone(), msg);
                        }
                        drop(failed);
                        if cspi.status.as_ref().and_then(|s| s.phase) != Some(phase) {
                            merge_status(&api, &name, json!({"phase": phase})).await?;
                        }
                        continue;
                    }
                },
            };
            let endpoint = hosted.endpoint.to_string();
            if cspi.annotations().get(ENDPOINT_ANNOTATION) != Some(&endpoint) {
                merge(
                    &api,
                    &name,
                    json!({"metadata": {"annotations": {ENDPOINT_ANNOTATION: endpoint}}}),
                )
                .await?;
            }
            let mut edits = self.edits.lock().await;
            let state = edits.entry(name.clone()).or_default();
            crate::pool_edit::apply(&self.ctx, cspi, &hosted.open, &bds, state).await;
            let conditions = crate::pool_edit::merged_conditions(cspi, state);
            drop(edits);
            self.write_status(&api, cspi, &hosted, &all_cvrs, conditions)
                .await?;
        }
        // CSPIs gone (or being deleted): stop serving and destroy their pools.
        let gone: Vec<(String, Arc<Hosted>)> = {
            let mut h = self.hosted.lock().await;
            let names: Vec<String> =
                h.keys()
                    .filter(|n| {
                        !wanted.contains(n)
                            || list.items.iter().any(|c| {
                                &c.name_any() == *n && c.metadata.deletion_timestamp.is_some()
                            })
                    })
                    .cloned()
                    .collect();
            names
                .into_iter()
                .filter_map(|n| h.remove(&n).map(|p| (n, p)))
                .collect()
        };
        for (name, h) in gone {
            self.edits.lock().await.remove(&name);
            tracing::info!(cspi = %name, "pool instance deleted: destroying its pool");
            close(h, true).await;
        }
        Ok(())
    }

    async fn write_status(
        &self,
        api: &Api<CStorPoolInstance>,
        cspi: &CStorPoolInstance,
        h: &Hosted,
        cvrs: &[CStorVolumeReplica],
        conditions: Option<serde_json::Value>,
    ) -> Result<()> {
        let name = cspi.name_any();
        let open = h.open.clone();
        let (health, space) = tokio::task::spawn_blocking(move || {
            (open.spa().status().health, open.engine().space())
        })
        .await
        .map_err(|e| AgentError::Invalid(format!("pool status task: {e}")))?;
        let mine: Vec<&CStorVolumeReplica> = cvrs
            .iter()
            .filter(|c| c.labels().get(CSPI_LABEL) == Some(&name))
            .collect();
        let healthy = mine
            .iter()
            .filter(|c| {
                c.status.as_ref().and_then(|s| s.phase) == Some(CStorVolumeReplicaPhase::Healthy)
            })
            .count();
        let fmt = cstor_api::quantity::format_bytes_short;
        let mut status = json!({
            "phase": phase_of(health),
            "capacity": {
                "used": fmt(space.allocated),
                "free": fmt(space.free),
                "total": fmt(space.allocated + space.free),
            },
            "readOnly": space.read_only,
            "provisionedReplicas": mine.len(),
            "healthyReplicas": healthy,
        });
        let current = cspi
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(json!({}));
        let mut changed = status
            .as_object()
            .is_some_and(|o| o.iter().any(|(k, v)| current.get(k) != Some(v)));
        if let Some(c) = conditions {
            status["conditions"] = c;
            changed = true;
        }
        if changed {
            merge_status(api, &name, status).await?;
        }
        Ok(())
    }

    /// Opens (creates or imports) the pool of `cspi` and starts serving it.
    async fn open(
        &self,
        cspi: &CStorPoolInstance,
        bds: &[BlockDevice],
    ) -> Result<Arc<Hosted>, (CStorPoolInstancePhase, AgentError)> {
        let name = cspi.name_any();
        let bad = |e: AgentError| (CStorPoolInstancePhase::Error, e);
        let groups: Vec<GroupSpec<String>> = crate::pool_edit::spec_groups(cspi, bds)
            .map_err(|e| bad(AgentError::Invalid(e)))?
            .into_iter()
            .map(|g| GroupSpec {
                kind: g.kind,
                devices: g.devices.into_iter().map(|(_, p)| p).collect(),
                log: g.log,
            })
            .collect();
        if groups.is_empty() {
            return Err((
                CStorPoolInstancePhase::Invalid,
                AgentError::Invalid(format!("cspi {name} has no data raid groups")),
            ));
        }
        let compression = match cspi.spec.pool_config.compression {
            Some(cstor_api::v1::Compression::Off) => Compression::Off,
            Some(cstor_api::v1::Compression::Zstd) => Compression::Zstd,
            _ => Compression::Lz4,
        };
        let ro = cspi
            .spec
            .pool_config
            .ro_threshold_limit
            .map(|p| p.clamp(1, 100) as u8)
            .unwrap_or(85);
        let registry = self.registry();
        let pool_name = name.clone();
        let open = tokio::task::spawn_blocking(
            move || -> Result<OpenPool, (CStorPoolInstancePhase, AgentError)> {
                let create_failed = |e: cstor_node::NodeError| {
                    (
                        CStorPoolInstancePhase::PoolCreationFailed,
                        AgentError::Node(e),
                    )
                };
                if registry
                    .load(&pool_name)
                    .map_err(|e| (CStorPoolInstancePhase::Error, e.into()))?
                    .is_some()
                {
                    return OpenPool::open(&registry, &pool_name)
                        .map_err(|e| (CStorPoolInstancePhase::Offline, e.into()));
                }
                let opts = CreateOptions {
                    compression,
                    ro_threshold_pct: ro,
                    force: false,
                };
                match OpenPool::create(&registry, &pool_name, &groups, &opts) {
                    Ok(p) => Ok(p),
                    Err(e) => {
                        // The devices may hold this pool already ($CSTOR_HOME lost): import.
                        let paths: Vec<String> = groups
                            .iter()
                            .flat_map(|g| g.devices.iter().cloned())
                            .collect();
                        OpenPool::import(&registry, &pool_name, &paths)
                            .map_err(|_| create_failed(e))
                    }
                }
            },
        )
        .await
        .map_err(|e| bad(AgentError::Invalid(format!("pool open task: {e}"))))??;
        let open = Arc::new(open);
        if let Err(e) = cstor_node::admin::resilver_if_needed(&open) {
            tracing::warn!(cspi = %name, error = %e, "starting a resilver");
        }
        tracing::info!(cspi = %name, guid = open.engine().guid(), "pool open");
        let admin = match self.registry().socket_path(&name) {
            Ok(p) => AdminServer::start(&p, open.clone()).ok(),
            Err(_) => None,
        };
        let key = auth_key(&self.ctx.client).await.map_err(bad)?;
        let tls = match replica_tls(&self.ctx.client).await {
            Ok(t) => t,
            Err(e) => {
                let _ = close_open(open, admin, false).await;
                return Err(bad(e));
            }
        };
        let addr = self.ctx.cfg.address;
        if key.is_none() && !addr.is_loopback() {
            let _ = close_open(open, admin, false).await;
            return Err(bad(AgentError::Invalid(format!(
                "secret {AUTH_SECRET} missing: replicas on {addr} need the cluster key"
            ))));
        }
        // Keep the port of the last run, so targets holding the old endpoint reconnect.
        let previous = cspi
            .annotations()
            .get(ENDPOINT_ANNOTATION)
            .and_then(|e| e.parse::<SocketAddr>().ok())
            .filter(|e| e.ip() == addr);
        let listener = match previous {
            Some(p) => match tokio::net::TcpListener::bind(p).await {
                Ok(l) => Ok(l),
                Err(_) => tokio::net::TcpListener::bind((addr, 0)).await,
            },
            None => tokio::net::TcpListener::bind((addr, 0)).await,
        }
        .map_err(|e| bad(AgentError::io(format!("replica listener on {addr}"), e)))?;
        let endpoint = listener
            .local_addr()
            .map_err(|e| bad(AgentError::io("replica listener", e)))?;
        let id = format!("{:016x}", open.engine().guid());
        let server = Arc::new(ReplicaServer::new(Arc::new(Access(open.clone())), id, key));
        if let Some(t) = tls {
            server.require_tls(t.server);
        }
        let s2 = server.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = s2.serve(listener).await {
                tracing::error!(error = %e, "replica server stopped");
            }
        });
        tracing::info!(cspi = %name, %endpoint, "serving replicas");
        let h = Arc::new(Hosted {
            open,
            endpoint,
            server,
            task,
            admin,
        });
        self.hosted.lock().await.insert(name, h.clone());
        Ok(h)
    }

    /// Stops every replica server and closes every pool (clean shutdown marked).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Hosted>> = std::mem::take(&mut *self.hosted.lock().await)
            .into_values()
            .collect();
        for h in all {
            close(h, false).await;
        }
    }
}

async fn close_open(open: Arc<OpenPool>, admin: Option<AdminServer>, destroy: bool) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        drop(admin);
        open.stop_scan();
        match Arc::try_unwrap(open) {
            Ok(p) if destroy => Ok(p.destroy()?),
            Ok(p) => Ok(p.close()?),
            Err(p) => Ok(p.engine().sync().map(|_| ())?),
        }
    })
    .await
    .map_err(|e| AgentError::Invalid(format!("pool close task: {e}")))?
}

async fn close(h: Arc<Hosted>, destroy: bool) {
    h.server.stop();
    h.task.abort();
    let h = match Arc::try_unwrap(h) {
        Ok(h) => h,
        Err(h) => {
            // Still referenced (a status pass): commit what it has; the process ends soon.
            let open = h.open.clone();
            let _ = tokio::task::spawn_blocking(move || open.engine().sync()).await;
            return;
        }
    };
    let Hosted {
        open,
        server,
        admin,
        ..
    } = h;
    let srv = server.clone();
    let _ = tokio::task::spawn_blocking(move || srv.mark_clean()).await;
    drop(server);
    // The server task holds the last server Arc until it finishes unwinding.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    if let Err(e) = close_open(open, admin, destroy).await {
        tracing::error!(error = %e, "closing the pool");
    }
}
