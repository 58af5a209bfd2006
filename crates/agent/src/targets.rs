//! The replicated iSCSI targets of the CStorVolumes placed on this node (label
//! `cstor.openebs.io/target-node=<node>`), all in the node's one portal
//! `<address>:<iscsi_port>`. A target's replicas are the CVRs labelled with its volume,
//! found at their CSPI's `cstor.openebs.io/replica-endpoint`; its membership record is in
//! the CStorVolume ([`crate::store::KubeStore`]).
//!
//! Status it writes (merge patches, only on change): CV phase Healthy/Degraded/Offline,
//! capacity, replicaStatuses and `status.replicaDetails.knownReplicas` (the Current
//! members, derived from the record); each CVR's phase (Healthy, Degraded, Rebuilding,
//! NewReplicaDegraded, ReconstructingNewReplica, Offline) and rebuild progress in its
//! message. A larger `spec.capacity` is applied online (`ReplicatedVolume::resize`); the
//! members follow `spec.replicaDetails.knownReplicas` (scale up and down, one change per
//! pass), and a CVR scaled out shows Offline.
//!
//! Access: while the volume's CVC names a node in `cstor.openebs.io/published-node` (the
//! CSI driver's ControllerPublish), the target admits only that node's initiator
//! ([`cstor_api::names::node_initiator`]) and ends the sessions of any other; without
//! one it admits every initiator (a volume used outside CSI, e.g. through its portal).
//! While the CVC names a CHAP Secret (`cstor.openebs.io/chap-secret`, the driver's copy of
//! the credentials ControllerPublish was given), the target requires them (new secrets
//! end the sessions admitted before), and the CV's `cstor.openebs.io/chap-applied` says
//! which Secret version it requires, so ControllerPublish answers only once it does.
//!
//! Invariants: one target instance per volume in this process; a target whose CV leaves
//! this node (or is deleted) is stopped cleanly (initiators logged out, volume drained,
//! holder released) so the next node takes over without the takeover wait. A target the
//! controller moved here from a dead node (annotation `cstor.openebs.io/takeover-from`
//! naming the old holder instance) skips the takeover gate for that instance only; a
//! stopped-then-continued old instance is fenced by the epoch its successor claimed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_api::names::{annotation, label, node_initiator};
use cstor_api::v1::CStorPoolInstance;
use cstor_api::v1::CStorVolume;
use cstor_api::v1::CStorVolumeConfig;
use cstor_api::v1::CStorVolumeReplica;
use cstor_iscsi::{Server, TargetConfig};
use cstor_replication::volume::Phase;
use cstor_replication::{ReplicatedVolume, VolumeConfig, VolumeStatus};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Mutex;

use crate::error::{AgentError, Result};
use crate::kubeapi::merge_status;
use crate::store::KubeStore;
use crate::{Ctx, CSPI_LABEL, ENDPOINT_ANNOTATION, NAMESPACE, PV_LABEL, TARGET_NODE_LABEL};

/// A failed start is retried after this long.
const RETRY: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Slot {
    Starting(tokio::task::JoinHandle<Result<ReplicatedVolume>>),
    Running(ReplicatedVolume),
    Failed(Instant),
}

#[derive(Debug)]
struct Entry {
    iqn: String,
    slot: Slot,
    /// Last status written, to write only changes.
    last: Option<serde_json::Value>,
    /// The initiators the target admits (`None`: all), as last applied.
    acl: Option<Vec<String>>,
    /// `<secret>/<resourceVersion>` of the CHAP secrets it requires (`None`: none).
    chap: Option<String>,
}

/// The CHAP a target should require: `Some(None)` none, `Some(Some((secrets,
/// version)))` those; `None` unknown (the Secret unreadable: left as it is).
type WantChap = Option<Option<(cstor_iscsi::ChapConfig, String)>>;

/// The CHAP Secret `name` of the driver as the target's secrets and their version.
async fn chap_secret(
    client: &kube::Client,
    name: &str,
) -> std::result::Result<(cstor_iscsi::ChapConfig, String), String> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let s = api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "not found".to_owned())?;
    let data: BTreeMap<String, String> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    let c =
        cstor_api::chap::Credentials::from_map(&data)?.ok_or_else(|| "names no user".to_owned())?;
    let cfg = cstor_iscsi::ChapConfig {
        user: c.user,
        secret: c.secret.into_bytes(),
        mutual: c.mutual.map(|(u, p)| (u, p.into_bytes())),
    };
    let version = format!("{name}/{}", s.metadata.resource_version.unwrap_or_default());
    Ok((cfg, version))
}

/// The targets of this node.
#[derive(Debug)]
pub struct Targets {
    ctx: Arc<Ctx>,
    server: Arc<Server>,
    portal: SocketAddr,
    serve: tokio::task::JoinHandle<()>,
    vols: Mutex<BTreeMap<String, Entry>>,
}

/// The IQN of volume `pv`.
pub fn iqn_of(pv: &str) -> String {
    format!("iqn.2016-09.com.openebs.cstor:{pv}")
}

impl Targets {
    /// Binds the node's portal.
    pub async fn start(ctx: Arc<Ctx>) -> Result<Targets> {
        let addr = SocketAddr::new(ctx.cfg.address, ctx.cfg.iscsi_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AgentError::io(format!("iSCSI portal {addr}"), e))?;
        let portal = listener
            .local_addr()
            .map_err(|e| AgentError::io("iSCSI portal", e))?;
        let server = Server::new();
        server.set_portals(vec![portal.to_string()]);
        let s2 = server.clone();
        let serve = tokio::spawn(async move {
            if let Err(e) = s2.serve(listener).await {
                tracing::error!(error = %e, "iSCSI portal stopped");
            }
        });
        tracing::info!(%portal, "iSCSI portal listening");
        Ok(Targets {
            ctx,
            server,
            portal,
            serve,
            vols: Mutex::new(BTreeMap::new()),
        })
    }

    /// The portal address.
    pub fn portal(&self) -> SocketAddr {
        self.portal
    }

    /// The iSCSI server holding every target of this node.
    pub fn server(&self) -> Arc<Server> {
        self.server.clone()
    }

    /// The targets serving now: (volume name, IQN, volume), for the metrics exporter.
    pub async fn running(&self) -> Vec<(String, String, ReplicatedVolume)> {
        self.vols
            .lock()
            .await
            .iter()
            .filter_map(|(name, e)| match &e.slot {
                Slot::Running(v) => Some((name.clone(), e.iqn.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// One pass over the CVs placed on this node.
    pub async fn sync(&self) -> Result<()> {
        let cvs: Api<CStorVolume> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let sel = format!("{TARGET_NODE_LABEL}={}", self.ctx.cfg.name);
        let mine = cvs.list(&ListParams::default().labels(&sel)).await?.items;
        let names: Vec<String> = mine
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| c.name_any())
            .collect();
        // Targets that left this node: stop them first, so their volume is free.
        let leaving: Vec<(String, Entry)> = {
            let mut v = self.vols.lock().await;
            let gone: Vec<String> = v.keys().filter(|n| !names.contains(n)).cloned().collect();
            gone.into_iter()
                .filter_map(|n| v.remove(&n).map(|e| (n, e)))
                .collect()
        };
        for (name, e) in leaving {
            tracing::info!(volume = %name, "target no longer placed here: stopping it");
            self.stop(e).await;
        }
        if mine.is_empty() {
            return Ok(());
        }
        let cvrs: Api<CStorVolumeReplica> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let all_cvrs = cvrs.list(&ListParams::default()).await?.items;
        let cspis: Api<CStorPoolInstance> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let all_cspis = cspis.list(&ListParams::default()).await?.items;
        let cvcs: Api<CStorVolumeConfig> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let all_cvcs = cvcs.list(&ListParams::default()).await?.items;
        let published: BTreeMap<String, String> = all_cvcs
            .iter()
            .filter_map(|c| {
                let node = c.annotations().get(annotation::PUBLISHED_NODE)?;
                (!node.is_empty()).then(|| (c.name_any(), node.clone()))
            })
            .collect();
        let endpoint_of = |cspi: &str| {
            all_cspis
                .iter()
                .find(|c| c.name_any() == cspi)
                .and_then(|c| c.annotations().get(ENDPOINT_ANNOTATION).cloned())
        };
        for cv in mine
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
        {
            let name = cv.name_any();
            let replicas: Vec<(&CStorVolumeReplica, Option<String>)> = all_cvrs
                .iter()
                .filter(|r| r.labels().get(PV_LABEL) == Some(&name))
                .map(|r| (r, r.labels().get(CSPI_LABEL).and_then(|c| endpoint_of(c))))
                .collect();
            let acl = published.get(&name).map(|n| vec![node_initiator(n)]);
            let secret = all_cvcs
                .iter()
                .find(|c| c.name_any() == name)
                .and_then(|c| c.annotations().get(annotation::CHAP_SECRET))
                .filter(|s| !s.is_empty());
            let chap = match secret {
                None => Some(None),
                Some(s) => match chap_secret(&self.ctx.client, s).await {
                    Ok(c) => Some(Some(c)),
                    Err(e) => {
                        tracing::warn!(volume = %name, secret = %s, "CHAP secret: {e}");
                        None
                    }
                },
            };
            self.reconcile(&cvs, &cvrs, cv, &replicas, acl, chap)
                .await?;
        }
        Ok(())
    }

    async fn reconcile(
        &self,
        cvs: &Api<CStorVolume>,
        cvrs: &Api<CStorVolumeReplica>,
        cv: &CStorVolume,
        replicas: &[(&CStorVolumeReplica, Option<String>)],
        acl: Option<Vec<String>>,
        chap: WantChap,
    ) -> Result<()> {
        let name = cv.name_any();
        let mut vols = self.vols.lock().await;
        // Advance a start that finished.
        if let Some(e) = vols.get_mut(&name) {
            if let Slot::Starting(h) = &e.slot {
                if h.is_finished() {
                    let Slot::Starting(h) =
                        std::mem::replace(&mut e.slot, Slot::Failed(Instant::now()))
                    else {
                        unreachable!("matched above")
                    };
                    match h.await {
                        Ok(Ok(vol)) => {
                            let mut tcfg = TargetConfig::new(&e.iqn, Arc::new(vol.clone()));
                            tcfg.portals = vec![self.portal.to_string()];
                            tcfg.allowed_initiators = acl.clone();
                            e.acl = acl.clone();
                            if let Some(Some((c, version))) = &chap {
                                tcfg.chap = Some(c.clone());
                                e.chap = Some(version.clone());
                            }
                            match self.server.add_target(tcfg) {
                                Ok(()) => {
                                    tracing::info!(volume = %name, iqn = %e.iqn, portal = %self.portal, "target serving");
                                    e.slot = Slot::Running(vol);
                                }
                                Err(err) => {
                                    tracing::error!(volume = %name, error = %err, "adding the target");
                                    let _ = vol.shutdown().await;
                                }
                            }
                        }
                        Ok(Err(err)) => {
                            tracing::error!(volume = %name, error = %err, "target start failed");
                            let msg = format!("target start failed: {err}");
                            merge_status(cvs, &name, json!({"phase": "Offline", "message": msg}))
                                .await?;
                        }
                        Err(err) => {
                            tracing::error!(volume = %name, error = %err, "target start task")
                        }
                    }
                }
            }
        }
        let retry = match vols.get(&name).map(|e| &e.slot) {
            None => true,
            Some(Slot::Failed(at)) => at.elapsed() >= RETRY,
            _ => false,
        };
        if retry {
            let Some(cfg) = self.volume_config(cv, replicas).await? else {
                return Ok(());
            };
            let store = Arc::new(KubeStore::new(
                self.ctx.client.clone(),
                &name,
                tokio::runtime::Handle::current(),
            ));
            tracing::info!(volume = %name, replicas = ?cfg.replicas, "starting target");
            let h = tokio::spawn(async move { Ok(ReplicatedVolume::start(cfg, store).await?) });
            let iqn = cv.spec.iqn.clone().unwrap_or_else(|| iqn_of(&name));
            vols.insert(
                name.clone(),
                Entry {
                    iqn,
                    slot: Slot::Starting(h),
                    last: None,
                    acl: None,
                    chap: None,
                },
            );
            return Ok(());
        }
        let Some(e) = vols.get_mut(&name) else {
            return Ok(());
        };
        let Slot::Running(vol) = &e.slot else {
            return Ok(());
        };
        let vol = vol.clone();
        if e.acl != acl {
            match self.server.set_allowed_initiators(&e.iqn, acl.clone()) {
                Ok(()) => {
                    tracing::info!(volume = %name, allowed = ?acl, "target access changed");
                    e.acl = acl;
                }
                Err(err) => tracing::error!(volume = %name, error = %err, "target access"),
            }
        }
        if let Some(want) = chap {
            let version = want.as_ref().map(|(_, v)| v.clone());
            if e.chap != version {
                match self.server.set_chap(&e.iqn, want.map(|(c, _)| c)) {
                    Ok(()) => {
                        tracing::info!(volume = %name, chap = ?version, "target CHAP changed");
                        e.chap = version.clone();
                    }
                    Err(err) => tracing::error!(volume = %name, error = %err, "target CHAP"),
                }
            }
            if e.chap == version
                && cv.annotations().get(annotation::CHAP_APPLIED) != version.as_ref()
            {
                let patch =
                    json!({"metadata": {"annotations": {annotation::CHAP_APPLIED: version}}});
                cvs.patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await?;
            }
        }
        if vol.is_fenced() {
            tracing::warn!(volume = %name, "fenced by a newer target instance: stopping");
            let _ = self.server.remove_target(&e.iqn).await;
            e.slot = Slot::Failed(Instant::now());
            return Ok(());
        }
        // Online expansion: spec.capacity above what the target serves.
        if let Some(want) = spec_size(cv)? {
            let want = want.div_ceil(4096) * 4096;
            if want > vol.size() {
                tracing::info!(volume = %name, from = vol.size(), to = want, "expanding");
                if let Err(err) = vol.resize(want).await {
                    tracing::error!(volume = %name, error = %err, "expansion failed");
                }
            }
        }
        apply_scale(&name, &vol, cv, replicas).await;
        let st = vol.status();
        // The controller names replicas by CVR spec.replicaid; members carry the pool's id.
        let ids: BTreeMap<String, String> = replicas
            .iter()
            .filter_map(|(cvr, ep)| Some((ep.clone()?, cvr.spec.replica_id.clone()?)))
            .collect();
        let mut status = cv_status(&st, &vol, vol.size(), &ids);
        // A merge patch keeps map keys it does not name: a replica no longer known is
        // removed by naming it with null.
        let stale = cv
            .status
            .as_ref()
            .and_then(|s| s.replica_details.as_ref())
            .and_then(|d| d.known_replicas.as_ref());
        if let (Some(stale), Some(known)) = (
            stale,
            status["replicaDetails"]["knownReplicas"].as_object_mut(),
        ) {
            for id in stale.keys() {
                if !known.contains_key(id) {
                    known.insert(id.clone(), serde_json::Value::Null);
                }
            }
        }
        if e.last.as_ref() != Some(&status) {
            merge_status(cvs, &name, status.clone()).await?;
            e.last = Some(status);
        }
        drop(vols);
        for (cvr, endpoint) in replicas {
            let Some(ep) = endpoint else { continue };
            let Some(r) = st.replicas.iter().find(|r| &r.address == ep) else {
                // Scaled down (its id left spec.knownReplicas): Offline until the user or
                // the controller deletes it, as cStor shows it.
                let dropped = cvr
                    .spec
                    .replica_id
                    .as_ref()
                    .is_some_and(|id| wanted_ids(cv).is_some_and(|w| !w.contains_key(id)));
                let offline = cvr.status.as_ref().and_then(|s| s.phase).map(|p| json!(p))
                    == Some(json!("Offline"));
                if dropped && !offline {
                    merge_status(
                        cvrs,
                        &cvr.name_any(),
                        json!({"phase": "Offline",
                               "message": "removed from the volume (scaled down)",
                               "lastTransitionTime": crate::kubeapi::now(),
                               "lastUpdateTime": crate::kubeapi::now()}),
                    )
                    .await?;
                }
                continue;
            };
            let (phase, message) = cvr_phase(r);
            let cur = cvr.status.as_ref();
            let cur_phase = cur.and_then(|s| s.phase).map(|p| json!(p));
            let cur_msg = cur.and_then(|s| s.message.clone());
            if cur_phase.as_ref() != Some(&json!(phase)) || cur_msg.as_deref() != Some(&message) {
                merge_status(
                    cvrs,
                    &cvr.name_any(),
                    json!({"phase": phase, "message": message,
                           "lastTransitionTime": crate::kubeapi::now(),
                           "lastUpdateTime": crate::kubeapi::now()}),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn volume_config(
        &self,
        cv: &CStorVolume,
        replicas: &[(&CStorVolumeReplica, Option<String>)],
    ) -> Result<Option<VolumeConfig>> {
        let name = cv.name_any();
        let Some(size) = spec_size(cv)? else {
            return Err(AgentError::Invalid(format!(
                "cstorvolume {name}: no spec.capacity"
            )));
        };
        let rf = cv
            .spec
            .replication_factor
            .unwrap_or(replicas.len() as i32)
            .max(1) as usize;
        // A CVR scaled out of the volume but not deleted yet is no member to start with.
        let wanted = wanted_ids(cv);
        let endpoints: Vec<String> = replicas
            .iter()
            .filter(|(cvr, _)| {
                wanted.is_none_or(|w| {
                    cvr.spec
                        .replica_id
                        .as_ref()
                        .is_some_and(|id| w.contains_key(id))
                })
            })
            .filter_map(|(_, e)| e.clone())
            .collect();
        // All RF replicas before the first start: a target started on fewer would record
        // only those as members.
        if endpoints.len() < rf {
            tracing::debug!(volume = %name, found = endpoints.len(), rf, "waiting for replica endpoints");
            return Ok(None);
        }
        // A restore starts from the clone the source's target makes
        // ([`crate::snapshots`]): started before, it would open empty replicas.
        let cloned = replicas
            .iter()
            .any(|(cvr, _)| cvr.labels().get(label::CLONED).map(String::as_str) == Some("true"));
        let rec = crate::store::decode(cv)
            .map_err(|e| AgentError::Invalid(format!("cstorvolume {name}: {e}")))?;
        if cloned && rec.as_ref().is_none_or(|r| r.members.is_empty()) {
            tracing::debug!(volume = %name, "waiting for the restore's clone");
            return Ok(None);
        }
        // The target starts at the recorded size (a restore's is its snapshot's; a start
        // at another size is refused) and grows online to spec.capacity afterwards.
        let size = match rec.as_ref().map(|r| r.size) {
            Some(s) if s != 0 => s,
            _ => size.div_ceil(4096) * 4096,
        };
        let mut cfg = VolumeConfig::new(&name, size, endpoints);
        cfg.key = crate::pools::auth_key(&self.ctx.client).await?;
        cfg.tls = crate::pools::replica_tls(&self.ctx.client)
            .await?
            .map(|t| t.client);
        cfg.consistency_factor = cv.spec.consistency_factor.unwrap_or(1).max(1) as u32;
        // The controller moved this target here from a node it saw dead: its holder
        // instance need not age out of the takeover gate (the fence still runs).
        cfg.takeover_from = cv
            .annotations()
            .get(cstor_api::names::annotation::TAKEOVER_FROM)
            .filter(|i| !i.is_empty())
            .cloned();
        Ok(Some(cfg))
    }

    async fn stop(&self, e: Entry) {
        match e.slot {
            Slot::Running(vol) => {
                let _ = self.server.remove_target(&e.iqn).await;
                if !vol.is_fenced() {
                    if let Err(err) = vol.shutdown().await {
                        tracing::error!(error = %err, "clean stop of a target");
                    }
                }
            }
            Slot::Starting(h) => h.abort(),
            Slot::Failed(_) => {}
        }
    }

    /// Stops every target cleanly, then the portal.
    pub async fn shutdown(&self) {
        let all: Vec<Entry> = std::mem::take(&mut *self.vols.lock().await)
            .into_values()
            .collect();
        for e in all {
            self.stop(e).await;
        }
        self.server.close_all().await;
        self.serve.abort();
    }
}

/// The replica set the CV asks for: `spec.replicaDetails.knownReplicas` (CVR replicaid ->
/// guid), written by the controller (scale through the CVC) or the user (the alpha seed's
/// `kubectl edit cstorvolume`). None when absent or empty: nothing to apply.
fn wanted_ids(cv: &CStorVolume) -> Option<&BTreeMap<String, String>> {
    cv.spec
        .replica_details
        .as_ref()
        .and_then(|d| d.known_replicas.as_ref())
        .filter(|k| !k.is_empty())
}

/// Scale of a running target: its members follow [`wanted_ids`], one change per pass (a
/// removal first), so two passes never apply halves of different changes. A member is
/// matched to its CVR by endpoint; a member with no CVR left is kept (removing one is the
/// user's `cstor volume` call, not a guess). Refusals (the last Current replica, below
/// minCurrent) are logged and retried each pass; the replicationFactor follows in the
/// controller once the applied set equals the wanted one.
async fn apply_scale(
    name: &str,
    vol: &ReplicatedVolume,
    cv: &CStorVolume,
    replicas: &[(&CStorVolumeReplica, Option<String>)],
) {
    let Some(want) = wanted_ids(cv) else {
        return;
    };
    let by_endpoint: BTreeMap<&str, &str> = replicas
        .iter()
        .filter_map(|(cvr, ep)| Some((ep.as_deref()?, cvr.spec.replica_id.as_deref()?)))
        .collect();
    let rec = vol.record();
    for m in &rec.members {
        if let Some(id) = by_endpoint.get(m.address.as_str()) {
            if !want.contains_key(*id) {
                tracing::info!(volume = %name, replica = %id, address = %m.address, "scaling down: removing the replica");
                if let Err(err) = vol.remove_replica(&m.id).await {
                    tracing::warn!(volume = %name, replica = %id, error = %err, "scale down refused");
                }
                return;
            }
        }
    }
    for (ep, id) in &by_endpoint {
        if want.contains_key(*id) && !rec.members.iter().any(|m| m.address == *ep) {
            tracing::info!(volume = %name, replica = %id, address = %ep, "scaling up: adding the replica");
            if let Err(err) = vol.add_replica(ep).await {
                tracing::warn!(volume = %name, replica = %id, error = %err, "scale up failed");
            }
            return;
        }
    }
}

fn spec_size(cv: &CStorVolume) -> Result<Option<u64>> {
    cv.spec
        .capacity
        .as_ref()
        .map(|q| {
            cstor_api::quantity::quantity_bytes(q)
                .map_err(|e| AgentError::Invalid(format!("spec.capacity: {e}")))
        })
        .transpose()
}

/// The CV status the target's state implies (without `replication`, the store's).
/// `ids` maps a replica endpoint to its CVR's `spec.replicaid`, the id the CV's
/// `knownReplicas` use (falls back to the member's own id).
fn cv_status(
    st: &VolumeStatus,
    vol: &ReplicatedVolume,
    size: u64,
    ids: &BTreeMap<String, String>,
) -> serde_json::Value {
    let id_of =
        |address: &str, id: &str| ids.get(address).cloned().unwrap_or_else(|| id.to_string());
    let phase = match st.phase {
        Phase::Healthy => "Healthy",
        Phase::Degraded => "Degraded",
        Phase::Offline => "Offline",
        Phase::Init => "Init",
    };
    let rec = vol.record();
    let known: BTreeMap<String, String> = rec
        .members
        .iter()
        .filter(|m| m.state == cstor_replication::MemberState::Current)
        .map(|m| (id_of(&m.address, &m.id), m.guid.clone()))
        .collect();
    let replica_statuses: Vec<serde_json::Value> = st
        .replicas
        .iter()
        .map(|r| {
            json!({
                "replicaId": id_of(&r.address, &r.id),
                "mode": if r.state == "Current" && r.mode == "Healthy" { "Healthy" } else { "Degraded" },
                "checkpointedIOSeq": st.io_checkpoint.to_string(),
                "quorum": if r.state == "Current" { "1" } else { "0" },
            })
        })
        .collect();
    json!({
        "phase": phase,
        "capacity": cstor_api::quantity::format_bytes(size),
        "replicaStatuses": replica_statuses,
        "replicaDetails": {"knownReplicas": known},
        "message": serde_json::Value::Null,
    })
}

/// The CVR phase and message for one replica of the target's status.
fn cvr_phase(r: &cstor_replication::volume::ReplicaStatus) -> (&'static str, String) {
    let rebuilding = r.mode == "Rebuilding";
    let phase = match (r.state.as_str(), r.mode.as_str()) {
        (_, "Offline") => "Offline",
        ("Current", _) => "Healthy",
        ("New", _) if rebuilding => "ReconstructingNewReplica",
        ("New", _) => "NewReplicaDegraded",
        (_, _) if rebuilding => "Rebuilding",
        _ => "Degraded",
    };
    let message = if rebuilding || r.rebuild_bytes_total > 0 && r.state != "Current" {
        format!(
            "rebuild {}% ({} of {} bytes)",
            r.rebuild_percent, r.rebuild_bytes_done, r.rebuild_bytes_total
        )
    } else {
        format!("{} replica {} at {}", r.state, r.id, r.address)
    };
    (phase, message)
}
