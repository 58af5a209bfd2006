//! `cstor up`'s part of the kubelet's plugin registration: once a node's CSI plugin
//! answers on its socket, NodeGetInfo is asked and the node's CSINode object written
//! with the driver's entry (name, node id, topology keys, volume limit), owned by the
//! Node, as the kubelet does when node-driver-registrar registers the plugin. The
//! attacher reads the node id from there (docs/csi.md § Sidecars).
//!
//! Invariants: a CSINode that already lists the driver is left alone; a node whose
//! plugin does not answer (stopped) is skipped and tried again on the next pass.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cstor_api::names::CSI_DRIVER_NAME;
use cstor_csi::pb::node_client::NodeClient;
use cstor_csi::pb::NodeGetInfoRequest;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// How long a node plugin gets to answer NodeGetInfo.
const INFO_TIMEOUT: Duration = Duration::from_secs(3);

/// Registers the driver in the CSINode of each of `nodes` whose plugin answers on its
/// socket under `dir` and whose CSINode does not list it yet.
pub async fn register(client: &kube::Client, dir: &Path, nodes: &[String]) -> Result<()> {
    let csinodes: Api<CSINode> = Api::all(client.clone());
    let have = csinodes
        .list(&ListParams::default())
        .await
        .context("listing CSINodes")?
        .items;
    for node in nodes {
        let existing = have
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(node.as_str()));
        if existing.is_some_and(|c| c.spec.drivers.iter().any(|d| d.name == CSI_DRIVER_NAME)) {
            continue;
        }
        let socket = super::up::csi_node_socket(dir, node);
        if std::os::unix::net::UnixStream::connect(&socket).is_err() {
            continue;
        }
        let endpoint = format!("unix://{}", socket.display());
        let info = tokio::time::timeout(INFO_TIMEOUT, async {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
                .connect()
                .await?;
            let r = NodeClient::new(channel)
                .node_get_info(NodeGetInfoRequest {})
                .await?;
            Ok::<_, anyhow::Error>(r.into_inner())
        })
        .await;
        let info = match info {
            Ok(Ok(i)) => i,
            _ => continue, // not serving yet: the next pass
        };
        let mut keys: Vec<String> = info
            .accessible_topology
            .map(|t| t.segments.into_keys().collect())
            .unwrap_or_default();
        keys.sort();
        let mut entry = json!({"name": CSI_DRIVER_NAME, "nodeID": info.node_id,
                               "topologyKeys": keys});
        if info.max_volumes_per_node > 0 {
            entry["allocatable"] = json!({"count": info.max_volumes_per_node});
        }
        match existing {
            Some(c) => {
                let mut drivers: Vec<serde_json::Value> = c
                    .spec
                    .drivers
                    .iter()
                    .filter_map(|d| serde_json::to_value(d).ok())
                    .collect();
                drivers.push(entry);
                csinodes
                    .patch(
                        node,
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"metadata": {"resourceVersion": c.metadata.resource_version},
                                             "spec": {"drivers": drivers}}),
                        ),
                    )
                    .await
                    .with_context(|| format!("registering {CSI_DRIVER_NAME} in CSINode {node}"))?;
            }
            None => {
                let Some(n) = Api::<Node>::all(client.clone()).get_opt(node).await? else {
                    continue; // the agent has not registered the Node yet
                };
                let object: CSINode = serde_json::from_value(json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
                    "metadata": {"name": node, "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": node,
                        "uid": n.metadata.uid.unwrap_or_default()}]},
                    "spec": {"drivers": [entry]},
                }))?;
                match csinodes.create(&PostParams::default(), &object).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {} // the next pass patches it
                    Err(e) => {
                        return Err(e).with_context(|| format!("creating CSINode {node}"));
                    }
                }
            }
        }
        eprintln!("cstor up: {CSI_DRIVER_NAME} registered in CSINode {node}");
    }
    Ok(())
}
