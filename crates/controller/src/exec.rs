//! The controller's I/O: listing the [`World`] and carrying out [`Action`]s through the
//! Kubernetes API (kube-rs, the same calls against kube-apiserver or the embedded server).
//!
//! Invariants: a create that finds the object already there, and a patch or delete that
//! finds it gone, are not errors (another pass or the user got there first); an event
//! repeated within [`EVENT_REPEAT`] is dropped, later repeats raise the count of the one
//! Event object, as kubectl's `(x4 over 22m)` shows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::action::{Action, Kind, Regarding};
use crate::error::Error;
use crate::world::World;
use cstor_api::v1::CStorVolumePolicy;

/// Repeats of one event sooner than this are not written again.
pub const EVENT_REPEAT: Duration = Duration::from_secs(30);

fn resource(kind: Kind) -> ApiResource {
    let (group, version, k, plural, _) = kind.coordinates();
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, k), plural)
}

/// The dynamic API of `kind` (in `namespace` when it is namespaced).
pub fn api(client: &Client, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = resource(kind);
    match (kind.coordinates().4, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

async fn list_json(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
) -> Result<Vec<Value>, Error> {
    let list = api(client, kind, namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::api(format!("list {}", kind.coordinates().3), e))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

async fn list_typed<T: DeserializeOwned>(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    for v in list_json(client, kind, namespace).await? {
        match serde_json::from_value::<T>(v.clone()) {
            Ok(t) => out.push(t),
            Err(e) => tracing::warn!(
                "skipping a {} that does not decode ({e}): {}",
                kind.kind(),
                v.pointer("/metadata/name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?")
            ),
        }
    }
    Ok(out)
}

async fn list_core<K>(api: Api<K>, what: &str) -> Result<Vec<K>, Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::api(format!("list {what}"), e))?
        .items)
}

async fn list_cvps(client: &Client, namespace: &str) -> Result<Vec<CStorVolumePolicy>, Error> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cstor.openebs.io", "v1", "CStorVolumePolicy"),
        "cstorvolumepolicies",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect()
        })
        .map_err(|e| Error::api("list cstorvolumepolicies", e))
}

/// Lists what volume decisions need (pools, volumes, policies, nodes and their
/// heartbeats): the part of [`load`] the CSI controller reads on every call.
pub async fn load_volumes(client: &Client, namespace: &str) -> Result<World, Error> {
    let ns = Some(namespace);
    Ok(World {
        namespace: namespace.to_owned(),
        cspcs: list_typed(client, Kind::Cspc, ns).await?,
        cspis: list_typed(client, Kind::Cspi, ns).await?,
        cvcs: list_typed(client, Kind::Cvc, ns).await?,
        cvs: list_typed(client, Kind::Cv, ns).await?,
        cvrs: list_typed(client, Kind::Cvr, ns).await?,
        cvps: list_cvps(client, namespace).await?,
        nodes: list_core(Api::<Node>::all(client.clone()), "nodes").await?,
        leases: list_core(
            Api::<Lease>::namespaced(client.clone(), namespace),
            "leases",
        )
        .await?,
        now: Some(Timestamp::now()),
        ..World::default()
    })
}

/// Lists everything a pass needs.
pub async fn load(client: &Client, namespace: &str) -> Result<World, Error> {
    let ns = Some(namespace);
    let vsclass_api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass"),
            "volumesnapshotclasses",
        ),
    );
    // The snapshot kinds may not be served (a cluster without the snapshot CRDs): then
    // there are no snapshots to reconcile.
    let vsclasses = vsclass_api
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect()
        })
        .unwrap_or_default();
    let vss = list_json(client, Kind::Vs, None).await.unwrap_or_default();
    let vscontents = list_json(client, Kind::Vsc, None).await.unwrap_or_default();
    let base = load_volumes(client, namespace).await?;
    Ok(World {
        bds: list_typed(client, Kind::Bd, ns).await?,
        bdcs: list_typed(client, Kind::Bdc, ns).await?,
        csnaps: list_typed(client, Kind::Csnap, ns)
            .await
            .unwrap_or_default(),
        scs: list_core(Api::<StorageClass>::all(client.clone()), "storageclasses").await?,
        pvcs: list_core(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            "persistentvolumeclaims",
        )
        .await?,
        pvs: list_core(
            Api::<PersistentVolume>::all(client.clone()),
            "persistentvolumes",
        )
        .await?,
        vss,
        vsclasses,
        vscontents,
        ..base
    })
}

fn benign(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

/// Carries out actions; keeps the event bookkeeping between passes.
#[derive(Debug, Default)]
pub struct Executor {
    events: HashMap<EventKey, Written>,
}

/// (namespace, object, reason, message) of an event.
type EventKey = (String, String, String, String);
/// (Event object name, count, last written).
type Written = (String, i32, Instant);

impl Executor {
    /// Runs `actions` in order; returns how many failed (logged, retried by the next pass).
    pub async fn run(&mut self, client: &Client, actions: Vec<Action>) -> usize {
        let mut failed = 0;
        for a in actions {
            if let Err(e) = self.one(client, a).await {
                tracing::warn!("{e}");
                failed += 1;
            }
        }
        failed
    }

    async fn one(&mut self, client: &Client, action: Action) -> Result<(), Error> {
        match action {
            Action::Create {
                kind,
                object,
                status,
            } => {
                let ns = object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let n = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let obj: DynamicObject =
                    serde_json::from_value(object).map_err(|e| Error::Decode {
                        what: format!("{} {n}", kind.kind()),
                        why: e.to_string(),
                    })?;
                let a = api(client, kind, ns.as_deref());
                match a.create(&PostParams::default(), &obj).await {
                    Ok(_) => {
                        tracing::info!("created {} {n}", kind.kind());
                        if let Some(s) = status {
                            a.patch_status(&n, &PatchParams::default(), &Patch::Merge(&s))
                                .await
                                .map_err(|e| {
                                    Error::api(format!("status of new {} {n}", kind.kind()), e)
                                })?;
                        }
                        Ok(())
                    }
                    Err(e) if benign(&e) => Ok(()),
                    Err(e) => Err(Error::api(format!("create {} {n}", kind.kind()), e)),
                }
            }
            Action::Patch {
                kind,
                namespace,
                name,
                patch,
                status,
            } => {
                let a = api(client, kind, namespace.as_deref());
                let r = if status {
                    a.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                } else {
                    a.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                };
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if benign(&e) => Ok(()),
                    Err(e) => Err(Error::api(format!("patch {} {name}", kind.kind()), e)),
                }
            }
            Action::Delete {
                kind,
                namespace,
                name,
            } => {
                match api(client, kind, namespace.as_deref())
                    .delete(&name, &DeleteParams::background())
                    .await
                {
                    Ok(_) => {
                        tracing::info!("deleted {} {name}", kind.kind());
                        Ok(())
                    }
                    Err(e) if benign(&e) => Ok(()),
                    Err(e) => Err(Error::api(format!("delete {} {name}", kind.kind()), e)),
                }
            }
            Action::Event {
                regarding,
                warning,
                reason,
                message,
            } => {
                self.event(client, regarding, warning, reason, message)
                    .await
            }
        }
    }

    async fn event(
        &mut self,
        client: &Client,
        r: Regarding,
        warning: bool,
        reason: String,
        message: String,
    ) -> Result<(), Error> {
        let ns = r.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let key = (ns.clone(), r.name.clone(), reason.clone(), message.clone());
        let now = Timestamp::now().to_string();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        if let Some((ev_name, count, at)) = self.events.get_mut(&key) {
            if at.elapsed() < EVENT_REPEAT {
                return Ok(());
            }
            *count += 1;
            *at = Instant::now();
            let patch = json!({"count": *count, "lastTimestamp": now});
            return match api
                .patch(ev_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if benign(&e) => {
                    self.events.remove(&key);
                    Ok(())
                }
                Err(e) => Err(Error::api("patch event", e)),
            };
        }
        let ev_name = format!("{}.{:x}", r.name, Timestamp::now().as_nanosecond());
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": {
                "apiVersion": r.kind.api_version(),
                "kind": r.kind.kind(),
                "name": r.name,
                "namespace": r.namespace,
                "uid": r.uid,
            },
            "reason": reason,
            "message": message,
            "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": "cstor-controller"},
            "reportingComponent": "cstor-controller",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let ev: Event = serde_json::from_value(ev).map_err(|e| Error::Decode {
            what: "event".into(),
            why: e.to_string(),
        })?;
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                tracing::info!(reason = %reason, "{}/{}: {message}", r.kind.kind(), r.name);
                self.events.insert(key, (ev_name, 1, Instant::now()));
                Ok(())
            }
            Err(e) => Err(Error::api("create event", e)),
        }
    }
}
