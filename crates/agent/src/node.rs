//! The Node object (label `kubernetes.io/hostname`, InternalIP, Ready) and the heartbeat
//! Lease `cstor-node-<name>` in namespace `openebs`, renewed every `lease_renew`. Readers
//! judge a node by its Lease (renewTime + leaseDurationSeconds), never by the last status
//! a crashed agent wrote. A Node whose status a kubelet posts (`status.nodeInfo.
//! kubeletVersion` set, as on a real cluster) is the kubelet's: the agent writes nothing
//! to it, since a merge patch of `addresses`/`conditions` would replace the kubelet's lists.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::json;

use crate::error::Result;
use crate::kubeapi::{create_if_missing, merge, merge_status, now};
use crate::{Ctx, HOSTNAME_LABEL, NAMESPACE};

/// Name of a node's heartbeat Lease.
pub fn lease_name(node: &str) -> String {
    format!("cstor-node-{node}")
}

/// Creates or refreshes the Node: labels, InternalIP, Ready.
pub async fn register(ctx: &Ctx) -> Result<()> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let name = &ctx.cfg.name;
    if api.get_opt(name).await?.is_some_and(|n| kubelet_owned(&n)) {
        return Ok(());
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {HOSTNAME_LABEL: name}},
    }))
    .map_err(|e| crate::AgentError::Invalid(e.to_string()))?;
    if !create_if_missing(&api, &node).await? {
        merge(
            &api,
            name,
            json!({"metadata": {"labels": {HOSTNAME_LABEL: name}}}),
        )
        .await?;
    }
    let t = now();
    merge_status(
        &api,
        name,
        json!({
            "addresses": [
                {"type": "InternalIP", "address": ctx.cfg.address.to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "cstor node agent is posting ready status",
                "lastHeartbeatTime": t, "lastTransitionTime": t,
            }],
        }),
    )
    .await?;
    Ok(())
}

/// True when a kubelet posts this Node's status.
fn kubelet_owned(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .is_some_and(|i| !i.kubelet_version.is_empty())
}

/// Renews the node's Lease forever (creating it first); errors are logged and retried.
pub async fn heartbeat(ctx: Arc<Ctx>) {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let name = lease_name(&ctx.cfg.name);
    let duration = (ctx.cfg.lease_renew.as_secs() * 3).max(3);
    let mut tick = tokio::time::interval(ctx.cfg.lease_renew);
    loop {
        tick.tick().await;
        if let Err(e) = renew(&api, &name, &ctx.cfg.name, duration).await {
            tracing::warn!(error = %e, lease = %name, "renewing the heartbeat lease");
        }
    }
}

async fn renew(api: &Api<Lease>, name: &str, holder: &str, duration: u64) -> Result<()> {
    let spec = json!({
        "holderIdentity": holder,
        "leaseDurationSeconds": duration,
        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now()),
    });
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }))
    .map_err(|e| crate::AgentError::Invalid(e.to_string()))?;
    if !create_if_missing(api, &lease).await? {
        merge(api, name, json!({ "spec": spec })).await?;
    }
    Ok(())
}

/// Whether the heartbeat Lease of `node` is fresh (renewed within its duration).
pub async fn alive(client: &kube::Client, node: &str) -> Result<bool> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(lease) = api.get_opt(&lease_name(node)).await? else {
        return Ok(false);
    };
    let Some(spec) = lease.spec else {
        return Ok(false);
    };
    let (Some(renew), Some(dur)) = (spec.renew_time, spec.lease_duration_seconds) else {
        return Ok(false);
    };
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renew.0);
    Ok(age.as_secs() <= i64::from(dur))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};

    use super::*;

    #[test]
    fn a_node_with_a_kubelet_version_is_the_kubelets() {
        let mut n = Node::default();
        assert!(!kubelet_owned(&n), "no status: ours to write");
        n.status = Some(NodeStatus {
            node_info: Some(NodeSystemInfo::default()),
            ..NodeStatus::default()
        });
        assert!(!kubelet_owned(&n), "an empty nodeInfo is not a kubelet's");
        n.status = Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                kubelet_version: "v1.33.1".into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        });
        assert!(kubelet_owned(&n));
    }
}
