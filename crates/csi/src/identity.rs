//! The Identity service: the plugin's name and version, its capabilities (the same in
//! every mode, as the spec requires of all instances of one version), and a Probe that
//! is ready only while the API server answers (every Controller call and the node's
//! stage path go through it).

use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::pb::identity_server::Identity;
use crate::pb::plugin_capability::{self, service, volume_expansion};
use crate::pb::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};

/// The driver's version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Identity service state.
#[derive(Debug, Clone)]
pub struct IdentityService {
    cluster: Cluster,
}

impl IdentityService {
    /// Identity of a driver talking to `cluster`.
    pub fn new(cluster: Cluster) -> IdentityService {
        IdentityService { cluster }
    }
}

fn service(t: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: cstor_api::names::CSI_DRIVER_NAME.to_owned(),
            vendor_version: VERSION.to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(service::Type::ControllerService),
                service(service::Type::VolumeAccessibilityConstraints),
                PluginCapability {
                    r#type: Some(plugin_capability::Type::VolumeExpansion(
                        plugin_capability::VolumeExpansion {
                            r#type: volume_expansion::Type::Online as i32,
                        },
                    )),
                },
            ],
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        // Not reachable is "still initialising" (ready false), not unhealthy: restarting
        // the plugin would not bring the API server back.
        Ok(Response::new(ProbeResponse {
            ready: Some(self.cluster.reachable().await),
        }))
    }
}
