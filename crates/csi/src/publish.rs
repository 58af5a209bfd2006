//! ControllerPublishVolume / ControllerUnpublishVolume: which node may attach a volume.
//!
//! The record is an annotation on the volume's CStorVolumeConfig,
//! [`PUBLISHED_NODE_ANNOTATION`] = the node id (and [`PUBLISHED_READONLY_ANNOTATION`]
//! when published read-only), written by a merge patch that carries the CVC's
//! resourceVersion, so two publishes racing for two nodes cannot both win: the API
//! server answers the loser 409 and it answers ABORTED, and its retry sees the winner.
//! A volume is one iSCSI LUN with one filesystem, so every access mode is single-node:
//! a publish to a second node while the first holds it is FAILED_PRECONDITION, as the
//! spec requires.
//!
//! The answer's publish context names the target: [`CONTEXT_IQN`], [`CONTEXT_PORTAL`]
//! (HOST:PORT from the CStorVolume) and [`CONTEXT_LUN`]; the node service logs in there.
//! [`CONTEXT_PORTALS`] lists, comma-separated, the portal of every other node with an
//! InternalIP (same port): the controller moves a target off a dead node, and the node's
//! initiator finds it again by trying those in turn.
//!
//! The target's ACL follows the record (the node agent); a new node fences a lost one by
//! preempting its SCSI reservation key at NodeStage (docs/csi.md "Fencing").

use std::collections::HashMap;

use cstor_controller::world::{annotation_of, deleting, name, World};
use serde_json::{json, Value};

use crate::pb::{
    ControllerPublishVolumeRequest, ControllerPublishVolumeResponse,
    ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse,
};
use crate::request::{self, existing_id};
use crate::Error;

/// Annotation on a CVC: the node the volume is published to.
pub const PUBLISHED_NODE_ANNOTATION: &str = cstor_api::names::annotation::PUBLISHED_NODE;
/// Annotation on a CVC: `"true"` when that publish is read-only.
pub const PUBLISHED_READONLY_ANNOTATION: &str = "cstor.openebs.io/published-readonly";
/// Publish context key: the target's IQN.
pub const CONTEXT_IQN: &str = "iqn";
/// Publish context key: the target's portal, HOST:PORT.
pub const CONTEXT_PORTAL: &str = "portal";
/// Publish context key: the portals the target may move to, comma-separated HOST:PORT.
pub const CONTEXT_PORTALS: &str = "portals";
/// Publish context key: the LUN (always 0: one volume per target).
pub const CONTEXT_LUN: &str = "lun";

/// The checked parts of a publish request.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishWant<'a> {
    /// Volume id.
    pub id: &'a str,
    /// Node id.
    pub node: &'a str,
    /// Read-only publish.
    pub readonly: bool,
}

/// Checks a publish request before any API call. Ok(None): the id cannot name a volume
/// of this driver (NOT_FOUND).
pub fn check_publish(req: &ControllerPublishVolumeRequest) -> Result<PublishWant<'_>, Error> {
    let missing = || Error::VolumeNotFound {
        volume: req.volume_id.clone(),
    };
    let id = existing_id(&req.volume_id)?;
    if req.node_id.is_empty() {
        return Err(Error::invalid("node_id", "is required"));
    }
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| Error::invalid("volume_capability", "is required"))?;
    if let Some(why) = request::unsupported(cap) {
        return Err(Error::invalid("volume_capability", why));
    }
    Ok(PublishWant {
        id: id.ok_or_else(missing)?,
        node: &req.node_id,
        readonly: req.readonly,
    })
}

/// The nodes a volume is published to (zero or one).
pub fn published_nodes(world: &World, id: &str) -> Vec<String> {
    world
        .cvc(id)
        .and_then(|c| annotation_of(&c.metadata, PUBLISHED_NODE_ANNOTATION))
        .filter(|n| !n.is_empty())
        .map(|n| vec![n.to_owned()])
        .unwrap_or_default()
}

/// What a publish must do, decided from the cluster's state.
#[derive(Debug, PartialEq)]
pub enum PublishStep {
    /// Already published to this node as asked: answer with this context.
    Done(HashMap<String, String>),
    /// Record the publish with this merge patch (it carries the resourceVersion), then
    /// answer with the context.
    Record(Value, HashMap<String, String>),
}

/// Decides a publish (pure).
pub fn plan_publish(world: &World, want: &PublishWant<'_>) -> Result<PublishStep, Error> {
    let missing = || Error::VolumeNotFound {
        volume: want.id.to_owned(),
    };
    let cvc = world.cvc(want.id).ok_or_else(missing)?;
    if deleting(&cvc.metadata) {
        return Err(missing());
    }
    if !world.nodes.iter().any(|n| name(&n.metadata) == want.node) {
        return Err(Error::NodeNotFound {
            node: want.node.to_owned(),
        });
    }
    let pending = |what: &str| Error::Pending {
        volume: want.id.to_owned(),
        what: what.to_owned(),
    };
    let spec = &world
        .cv(want.id)
        .ok_or_else(|| pending("its CStorVolume (the target) does not exist yet"))?
        .spec;
    let (Some(iqn), Some(portal)) = (spec.iqn.as_deref(), spec.target_portal.as_deref()) else {
        return Err(pending(
            "its CStorVolume names no target IQN and portal yet",
        ));
    };
    let alternates = alternate_portals(world, portal);
    let context: HashMap<String, String> = [
        (CONTEXT_IQN, iqn),
        (CONTEXT_PORTAL, portal),
        (CONTEXT_PORTALS, alternates.as_str()),
        (CONTEXT_LUN, "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let holder = annotation_of(&cvc.metadata, PUBLISHED_NODE_ANNOTATION).filter(|n| !n.is_empty());
    let was_readonly = annotation_of(&cvc.metadata, PUBLISHED_READONLY_ANNOTATION) == Some("true");
    match holder {
        Some(n) if n == want.node => {
            if was_readonly != want.readonly {
                return Err(Error::Incompatible {
                    volume: want.id.to_owned(),
                    why: format!(
                        "it is published to node {n} with readonly={was_readonly}, not {}",
                        want.readonly
                    ),
                });
            }
            Ok(PublishStep::Done(context))
        }
        Some(n) => Err(Error::PublishedElsewhere {
            volume: want.id.to_owned(),
            node: n.to_owned(),
        }),
        None => {
            let rv = cvc.metadata.resource_version.clone().unwrap_or_default();
            let patch = json!({"metadata": {
                "resourceVersion": rv,
                "annotations": {
                    PUBLISHED_NODE_ANNOTATION: want.node,
                    PUBLISHED_READONLY_ANNOTATION: if want.readonly { Some("true") } else { None },
                },
            }});
            Ok(PublishStep::Record(patch, context))
        }
    }
}

/// The portals, comma-separated, of every node with an InternalIP but the one of
/// `portal`, at `portal`'s port, in node name order: where the target may move.
pub fn alternate_portals(world: &World, portal: &str) -> String {
    let Some((_, port)) = portal.rsplit_once(':') else {
        return String::new();
    };
    let mut out: Vec<String> = Vec::new();
    let mut nodes: Vec<&str> = world.nodes.iter().map(|n| name(&n.metadata)).collect();
    nodes.sort_unstable();
    for n in nodes {
        let Some(ip) = world.node_ip(n) else { continue };
        let p = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        if p != portal && !out.contains(&p) {
            out.push(p);
        }
    }
    out.join(",")
}

/// Decides an unpublish (pure): the merge patch that removes the record, or None when
/// there is nothing to remove (a volume or node that is gone counts as unpublished, as
/// the spec allows).
pub fn plan_unpublish(world: &World, id: &str, node: &str) -> Option<Value> {
    let cvc = world.cvc(id)?;
    let holder = annotation_of(&cvc.metadata, PUBLISHED_NODE_ANNOTATION)?;
    if !node.is_empty() && holder != node {
        return None;
    }
    Some(json!({"metadata": {
        "resourceVersion": cvc.metadata.resource_version.clone().unwrap_or_default(),
        "annotations": {PUBLISHED_NODE_ANNOTATION: null, PUBLISHED_READONLY_ANNOTATION: null},
    }}))
}

/// Answer of a publish.
pub fn publish_response(context: HashMap<String, String>) -> ControllerPublishVolumeResponse {
    ControllerPublishVolumeResponse {
        publish_context: context,
    }
}

/// Checks an unpublish request. Ok(None): the id cannot name a volume of ours, which is
/// unpublished by definition.
pub fn check_unpublish(req: &ControllerUnpublishVolumeRequest) -> Result<Option<&str>, Error> {
    existing_id(&req.volume_id)
}

/// Answer of an unpublish.
pub fn unpublish_response() -> ControllerUnpublishVolumeResponse {
    ControllerUnpublishVolumeResponse {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    fn node(name: &str, ip: Option<&str>) -> Node {
        let addresses: Vec<Value> = ip
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .into_iter()
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": name}, "status": {"addresses": addresses}}),
        )
        .unwrap()
    }

    #[test]
    fn alternates_are_every_other_nodes_portal_at_the_targets_port() {
        let world = World {
            nodes: vec![
                node("n3", Some("10.0.0.3")),
                node("n1", Some("10.0.0.1")),
                node("n2", Some("10.0.0.2")),
                node("n4", None),
                node("n6", Some("fd00::6")),
            ],
            ..World::default()
        };
        assert_eq!(
            alternate_portals(&world, "10.0.0.2:3261"),
            "10.0.0.1:3261,10.0.0.3:3261,[fd00::6]:3261"
        );
        assert_eq!(alternate_portals(&world, "no-port"), "");
    }
}
