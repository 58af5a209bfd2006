//! The Node service, for now only its identity: NodeGetInfo (the node id and the
//! topology segment `topology.cstor.openebs.io/nodeName`) and NodeGetCapabilities.
//! Staging, publishing, stats and expansion need the attach path (the userspace iSCSI
//! initiator with FUSE and a loop device) that is not built yet: they answer
//! UNIMPLEMENTED, and NodeGetCapabilities advertises none of them, so a CO that reads
//! the capabilities does not plan on them.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use crate::pb::node_server::Node;
use crate::pb::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeStageVolumeRequest, NodeStageVolumeResponse,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse, Topology,
};
use crate::view::TOPOLOGY_KEY;
use crate::Error;

const NO_ATTACH: &str = "the node attach path (iSCSI login, userspace initiator with FUSE and a loop device, mkfs and mount) is not built yet; this node plugin serves NodeGetInfo and NodeGetCapabilities only";

/// Node service state.
#[derive(Debug, Clone)]
pub struct NodeService {
    node_id: String,
}

impl NodeService {
    /// The node plugin of node `node_id` (its Kubernetes Node name).
    pub fn new(node_id: String) -> NodeService {
        assert!(!node_id.is_empty(), "the node id is checked at start-up");
        NodeService { node_id }
    }
}

fn unimplemented<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    Err(Error::Unimplemented {
        rpc,
        why: NO_ATTACH,
    }
    .into())
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        unimplemented("NodeStageVolume")
    }

    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        unimplemented("NodeUnstageVolume")
    }

    async fn node_publish_volume(
        &self,
        _: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        unimplemented("NodePublishVolume")
    }

    async fn node_unpublish_volume(
        &self,
        _: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        unimplemented("NodeUnpublishVolume")
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        unimplemented("NodeGetVolumeStats")
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        unimplemented("NodeExpandVolume")
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let mut segments = HashMap::new();
        segments.insert(TOPOLOGY_KEY.to_owned(), self.node_id.clone());
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology { segments }),
        }))
    }
}
