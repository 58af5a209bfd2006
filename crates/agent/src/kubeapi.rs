//! The agent's few ways of talking to the API server: a client from a kubeconfig file,
//! create-if-missing, JSON merge patches of metadata and of the status subresource, Events
//! about the cStor objects it serves, and RFC 3339 timestamps. Merge patches carry no resourceVersion: each writer owns disjoint
//! fields, so they never conflict with a user's `kubectl edit`.

use std::path::Path;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{AgentError, Result};

/// A client for the cluster `path` describes (its current context), or without a path
/// the in-cluster configuration (the pod's ServiceAccount token and
/// `KUBERNETES_SERVICE_HOST`), as a DaemonSet pod runs the agent.
pub async fn client(path: Option<&Path>) -> Result<kube::Client> {
    let Some(path) = path else {
        return kube::Client::try_default()
            .await
            .map_err(|e| AgentError::Kubeconfig {
                path: "(none: in-cluster configuration)".to_string(),
                msg: e.to_string(),
            });
    };
    let bad = |msg: String| AgentError::Kubeconfig {
        path: path.display().to_string(),
        msg,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| bad(e.to_string()))
}

/// True when `e` is the API server's 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True when `e` is the API server's 409.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates `obj` unless an object of its name exists; returns whether it created it.
pub async fn create_if_missing<K>(api: &Api<K>, obj: &K) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// JSON merge patch of the object.
pub async fn merge<K>(api: &Api<K>, name: &str, patch: serde_json::Value) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// JSON merge patch of the status subresource: `{"status": status}`.
pub async fn merge_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({ "status": status });
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// Now, as Kubernetes writes times.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

/// The cStor object (`cstor.openebs.io/v1`, namespace `openebs`) an Event is about.
#[derive(Clone, Copy, Debug)]
pub struct About<'a> {
    /// Its kind, e.g. `CStorPoolInstance`.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its uid, when known.
    pub uid: Option<&'a str>,
}

/// A core/v1 Event about `about`; failing to write one is logged, never fatal.
pub async fn event(ctx: &crate::Ctx, about: About<'_>, warning: bool, reason: &str, msg: &str) {
    use k8s_openapi::api::core::v1::Event;
    let ns = crate::NAMESPACE;
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), ns);
    let ev: Event = match serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{}.", about.name), "namespace": ns},
        "involvedObject": {
            "apiVersion": "cstor.openebs.io/v1", "kind": about.kind,
            "namespace": ns, "name": about.name, "uid": about.uid,
        },
        "reason": reason,
        "message": msg,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": "cstor-node", "host": ctx.cfg.name},
        "reportingComponent": "cstor-node",
        "reportingInstance": ctx.cfg.name,
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "count": 1,
    })) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "building an event");
            return;
        }
    };
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %e, reason, "writing an event");
    }
}
