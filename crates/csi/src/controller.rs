//! The Controller service: volumes as CStorVolumeConfigs, through the control plane's
//! objects only (the controller places replicas and the target, the node agents serve
//! them). CreateVolume creates the CVC the PVC path would, waits a bounded time for the
//! target to serve I/O and otherwise answers ABORTED; a retry with the same name picks
//! up the same CVC. DeleteVolume deletes the CVC; expansion raises its capacity.
//!
//! Invariants: at most one call per volume is in flight in this process (a second one
//! answers ABORTED, as the spec allows); every request is checked before the first API
//! call. Cancellation: a dropped call frees its volume; what it wrote is found again by
//! the next call (every write is idempotent).
//! ControllerPublish/Unpublish record which node may attach ([`crate::publish`]);
//! snapshots, GetSnapshot and the content sources (a snapshot, or a volume to clone)
//! are [`crate::snapshot`]'s.
//! Not served (UNIMPLEMENTED, and not advertised): ControllerModifyVolume.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cstor_api::quantity::format_bytes;
use cstor_controller::volume::cvc_size;
use cstor_controller::world::{deleting, name, storage_bytes};
use tonic::{Request, Response, Status};

use crate::chap;
use crate::cluster::Cluster;
use crate::limits::{CREATE_WAIT, EXPAND_WAIT, LIST_PAGE_MAX, POLL_INTERVAL, SIZE_STEP_BYTES};
use crate::pb::controller_server::Controller;
use crate::pb::controller_service_capability::{rpc, Rpc, Type as CapType};
use crate::pb::volume_capability::AccessType;
use crate::pb::*;
use crate::publish::{self, PublishStep};
use crate::request::{self, existing_id};
use crate::snapshot;
use crate::view::{self, fs_type_of, Wanted};
use crate::Error;

/// Controller service state.
#[derive(Debug, Clone)]
pub struct ControllerService {
    cluster: Cluster,
    inflight: Arc<Mutex<HashSet<String>>>,
}

/// A volume this process is working on; dropping it frees the volume.
struct Claim {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        let was = set.remove(&self.id);
        debug_assert!(was, "a claim is in the set until dropped");
    }
}

/// The RPCs advertised; each is implemented below.
const CAPABILITIES: [rpc::Type; 13] = [
    rpc::Type::CreateDeleteVolume,
    rpc::Type::PublishUnpublishVolume,
    rpc::Type::PublishReadonly,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::GetSnapshot,
    rpc::Type::CloneVolume,
    rpc::Type::ListVolumes,
    rpc::Type::ListVolumesPublishedNodes,
    rpc::Type::GetCapacity,
    rpc::Type::ExpandVolume,
    rpc::Type::GetVolume,
    rpc::Type::VolumeCondition,
];

impl ControllerService {
    /// The controller of a driver talking to `cluster`.
    pub fn new(cluster: Cluster) -> ControllerService {
        ControllerService {
            cluster,
            inflight: Arc::default(),
        }
    }

    fn claim(&self, id: &str) -> Result<Claim, Error> {
        let mut set = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(id.to_owned()) {
            return Err(Error::Busy {
                volume: id.to_owned(),
            });
        }
        Ok(Claim {
            set: self.inflight.clone(),
            id: id.to_owned(),
        })
    }

    async fn create(&self, req: CreateVolumeRequest) -> Result<CreateVolumeResponse, Error> {
        let id = request::volume_id(&req.name)?;
        let cap_fs = request::capabilities(&req.volume_capabilities)?;
        let params = request::params(&req.parameters)?;
        if let (Some(a), Some(b)) = (&cap_fs, &params.fs_type) {
            if a != b {
                return Err(Error::invalid(
                    "volume_capabilities",
                    format!(
                        "filesystem {a} differs from parameter {}={b}",
                        request::FSTYPE_PARAMETER
                    ),
                ));
            }
        }
        let mut size_bytes = request::size_for(req.capacity_range.as_ref())?;
        let source = snapshot::content_source(
            &self.cluster,
            req.volume_content_source.as_ref(),
            &id,
            (req.capacity_range.as_ref(), size_bytes),
        )
        .await?;
        if let Some((_, s)) = &source {
            size_bytes = *s;
        }
        let fs_type = cap_fs
            .or_else(|| params.fs_type.clone())
            .unwrap_or_else(|| "ext4".to_owned());
        let want = Wanted {
            id,
            name: req.name.clone(),
            size_bytes,
            params,
            fs_type,
            source: source.map(|(id, _)| id),
        };
        let range = req.capacity_range.as_ref();
        let _claim = self.claim(&want.id)?;
        let world = self.cluster.view().await?;
        match world.cvc(&want.id) {
            Some(cvc) => {
                if let Some(why) = view::incompatible(cvc, &want, range) {
                    return Err(Error::Incompatible {
                        volume: want.id,
                        why,
                    });
                }
            }
            None => {
                let node =
                    view::topology_node(&world, &want.id, req.accessibility_requirements.as_ref())?;
                view::check_new(&world, &want)?;
                let object = view::new_cvc(&world, &want, node.as_deref());
                // false: another driver instance created it meanwhile; the wait below
                // checks that one fits.
                self.cluster.create_cvc(object).await?;
            }
        }
        let deadline = Instant::now() + CREATE_WAIT;
        loop {
            let world = self.cluster.view().await?;
            if let Some(why) = world
                .cvc(&want.id)
                .and_then(|c| view::incompatible(c, &want, range))
            {
                return Err(Error::Incompatible {
                    volume: want.id,
                    why,
                });
            }
            match view::ready(&world, &want.id) {
                Ok(volume) => {
                    return Ok(CreateVolumeResponse {
                        volume: Some(volume),
                    })
                }
                Err(e @ Error::Pending { .. }) if Instant::now() >= deadline => return Err(e),
                Err(Error::Pending { .. }) => tokio::time::sleep(POLL_INTERVAL).await,
                Err(e) => return Err(e),
            }
        }
    }

    async fn delete(&self, req: DeleteVolumeRequest) -> Result<DeleteVolumeResponse, Error> {
        // An id that cannot name a volume of ours names none: deleting it succeeds.
        let Some(id) = existing_id(&req.volume_id)? else {
            return Ok(DeleteVolumeResponse {});
        };
        let _claim = self.claim(id)?;
        self.cluster.delete_cvc(id).await?;
        self.cluster
            .delete_secret(&cstor_api::chap::secret_name(id))
            .await?;
        snapshot::delete_clone_snapshot(&self.cluster, id).await?;
        Ok(DeleteVolumeResponse {})
    }

    async fn validate(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse, Error> {
        let missing = || Error::VolumeNotFound {
            volume: req.volume_id.clone(),
        };
        let id = existing_id(&req.volume_id)?.ok_or_else(missing)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::invalid("volume_capabilities", "is required"));
        }
        let world = self.cluster.view().await?;
        let cvc = world.cvc(id).ok_or_else(missing)?;
        let refuse = |message: String| ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        };
        if let Some(why) = req
            .volume_capabilities
            .iter()
            .find_map(request::unsupported)
        {
            return Ok(refuse(why));
        }
        let fs = fs_type_of(cvc);
        for cap in &req.volume_capabilities {
            if let (Some(AccessType::Mount(m)), Some(fs)) = (&cap.access_type, fs) {
                if !m.fs_type.is_empty() && m.fs_type != fs {
                    return Ok(refuse(format!(
                        "the volume's filesystem is {fs}, not {}",
                        m.fs_type
                    )));
                }
            }
        }
        if !req.parameters.is_empty() {
            let p = match request::params(&req.parameters) {
                Ok(p) => p,
                Err(e) => return Ok(refuse(e.to_string())),
            };
            let want = Wanted {
                id: id.to_owned(),
                name: view::csi_name(cvc).unwrap_or(id).to_owned(),
                size_bytes: cvc_size(cvc),
                fs_type: fs.unwrap_or("ext4").to_owned(),
                params: p,
                source: cvc
                    .spec
                    .cstor_volume_source
                    .clone()
                    .filter(|s| !s.is_empty()),
            };
            if let Some(why) = view::incompatible(cvc, &want, None) {
                return Ok(refuse(format!(
                    "the parameters do not fit the volume: {why}"
                )));
            }
        }
        let ours = view::volume(cvc).volume_context;
        if !req.volume_context.is_empty() && req.volume_context != ours {
            return Ok(refuse(
                "volume_context is not the one this volume reports".to_owned(),
            ));
        }
        Ok(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        })
    }

    async fn list(&self, req: ListVolumesRequest) -> Result<ListVolumesResponse, Error> {
        if req.max_entries < 0 {
            return Err(Error::invalid("max_entries", "must not be negative"));
        }
        let world = self.cluster.view().await?;
        let mut cvcs: Vec<_> = world
            .cvcs
            .iter()
            .filter(|c| !deleting(&c.metadata))
            .collect();
        cvcs.sort_by(|a, b| name(&a.metadata).cmp(name(&b.metadata)));
        let start = request::start_index(&req.starting_token, cvcs.len())?;
        let page = match usize::try_from(req.max_entries).unwrap_or(0) {
            0 => LIST_PAGE_MAX,
            n => n.min(LIST_PAGE_MAX),
        };
        let end = (start + page).min(cvcs.len());
        let entries = cvcs[start..end]
            .iter()
            .map(|cvc| list_volumes_response::Entry {
                volume: Some(view::volume(cvc)),
                status: Some(list_volumes_response::VolumeStatus {
                    published_node_ids: publish::published_nodes(&world, name(&cvc.metadata)),
                    volume_condition: Some(view::condition(&world, name(&cvc.metadata))),
                }),
            })
            .collect();
        Ok(ListVolumesResponse {
            entries,
            next_token: if end < cvcs.len() {
                end.to_string()
            } else {
                String::new()
            },
        })
    }

    async fn capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse, Error> {
        let params = if req.parameters.is_empty() {
            None
        } else {
            Some(request::params(&req.parameters)?)
        };
        let node = match &req.accessible_topology {
            None => None,
            Some(t) => match t.segments.get(view::TOPOLOGY_KEY) {
                Some(n) => Some(n.as_str()),
                // A segment without our key holds none of our pools.
                None => return Ok(capacity_response(0, 0)),
            },
        };
        if req
            .volume_capabilities
            .iter()
            .any(|c| request::unsupported(c).is_some())
        {
            return Ok(capacity_response(0, 0));
        }
        let world = self.cluster.view().await?;
        let (available, maximum) = view::capacity(&world, params.as_ref(), node);
        Ok(capacity_response(available, maximum))
    }

    async fn expand(
        &self,
        req: ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse, Error> {
        let missing = || Error::VolumeNotFound {
            volume: req.volume_id.clone(),
        };
        let id = existing_id(&req.volume_id)?.ok_or_else(missing)?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Error::invalid("capacity_range", "is required"))?;
        if range.required_bytes <= 0 {
            return Err(Error::invalid(
                "capacity_range.required_bytes",
                "is required (the size to grow to)",
            ));
        }
        let block = match &req.volume_capability {
            Some(cap) => {
                if let Some(why) = request::unsupported(cap) {
                    return Err(Error::invalid("volume_capability", why));
                }
                matches!(cap.access_type, Some(AccessType::Block(_)))
            }
            None => false,
        };
        let want = request::size_for(Some(range))?;
        let _claim = self.claim(id)?;
        let world = self.cluster.view().await?;
        let cvc = world.cvc(id).ok_or_else(missing)?;
        if deleting(&cvc.metadata) {
            return Err(missing());
        }
        let current = cvc_size(cvc);
        // Asking for less than the volume has is answered with what it has (the spec's
        // idempotency rule); a volume never shrinks.
        let target = current.max(want);
        if current < want {
            self.cluster.resize_cvc(id, &format_bytes(want)).await?;
        }
        let deadline = Instant::now() + EXPAND_WAIT;
        loop {
            let world = self.cluster.view().await?;
            let cvc = world.cvc(id).ok_or_else(missing)?;
            let done = storage_bytes(cvc.status.as_ref().and_then(|s| s.capacity.as_ref()));
            if done >= target {
                // A filesystem staged nowhere grows when it is next staged (NodeStage
                // grows it to the LUN), so only a published one needs NodeExpandVolume.
                let published = !publish::published_nodes(&world, id).is_empty();
                return Ok(ControllerExpandVolumeResponse {
                    capacity_bytes: i64::try_from(done).unwrap_or(i64::MAX),
                    node_expansion_required: !block && published,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Pending {
                    volume: id.to_owned(),
                    what: format!(
                        "resizing to {target} bytes: the target reports {done} bytes so far"
                    ),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn publish(
        &self,
        req: ControllerPublishVolumeRequest,
    ) -> Result<ControllerPublishVolumeResponse, Error> {
        let want = publish::check_publish(&req)?;
        let creds = chap::credentials(&req.secrets)?;
        let _claim = self.claim(want.id)?;
        let world = self.cluster.view().await?;
        let context = match publish::plan_publish(&world, &want)? {
            PublishStep::Done(context) => context,
            PublishStep::Record(patch, context) => {
                self.cluster.patch_cvc_metadata(want.id, patch).await?;
                context
            }
        };
        // Only the holder's publish gets here (another node's is refused above), so it
        // never changes the credentials of a volume someone else holds.
        chap::apply(&self.cluster, world, want.id, creds).await?;
        Ok(publish::publish_response(context))
    }

    async fn unpublish(
        &self,
        req: ControllerUnpublishVolumeRequest,
    ) -> Result<ControllerUnpublishVolumeResponse, Error> {
        let Some(id) = publish::check_unpublish(&req)? else {
            return Ok(publish::unpublish_response());
        };
        let _claim = self.claim(id)?;
        let world = self.cluster.view().await?;
        if let Some(patch) = publish::plan_unpublish(&world, id, &req.node_id) {
            match self.cluster.patch_cvc_metadata(id, patch).await {
                Ok(()) | Err(Error::VolumeNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            if chap::named(&world, id) {
                chap::remove(&self.cluster, id).await?;
            }
        }
        Ok(publish::unpublish_response())
    }

    async fn get(
        &self,
        req: ControllerGetVolumeRequest,
    ) -> Result<ControllerGetVolumeResponse, Error> {
        let missing = || Error::VolumeNotFound {
            volume: req.volume_id.clone(),
        };
        let id = existing_id(&req.volume_id)?.ok_or_else(missing)?;
        let world = self.cluster.view().await?;
        let cvc = world
            .cvc(id)
            .filter(|c| !deleting(&c.metadata))
            .ok_or_else(missing)?;
        Ok(ControllerGetVolumeResponse {
            volume: Some(view::volume(cvc)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: publish::published_nodes(&world, id),
                volume_condition: Some(view::condition(&world, id)),
            }),
        })
    }
}

fn capacity_response(available: u64, maximum: u64) -> GetCapacityResponse {
    GetCapacityResponse {
        available_capacity: i64::try_from(available).unwrap_or(i64::MAX),
        maximum_volume_size: Some(i64::try_from(maximum).unwrap_or(i64::MAX)),
        minimum_volume_size: Some(SIZE_STEP_BYTES as i64),
    }
}

fn answer<T>(r: Result<T, Error>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

fn unimplemented<T>(rpc: &'static str, why: &'static str) -> Result<Response<T>, Status> {
    Err(Error::Unimplemented { rpc, why }.into())
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        answer(self.create(request.into_inner()).await)
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        answer(self.delete(request.into_inner()).await)
    }

    async fn controller_publish_volume(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        answer(self.publish(request.into_inner()).await)
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        answer(self.unpublish(request.into_inner()).await)
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        answer(self.validate(request.into_inner()).await)
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        answer(self.list(request.into_inner()).await)
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        answer(self.capacity(request.into_inner()).await)
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| ControllerServiceCapability {
                r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        answer(snapshot::create(&self.cluster, request.into_inner()).await)
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        answer(snapshot::delete(&self.cluster, request.into_inner()).await)
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        answer(snapshot::list_snapshots(&self.cluster, request.into_inner()).await)
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        answer(self.expand(request.into_inner()).await)
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        answer(self.get(request.into_inner()).await)
    }

    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unimplemented(
            "ControllerModifyVolume",
            "no mutable parameters are defined (MODIFY_VOLUME is not advertised)",
        )
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        answer(snapshot::get(&self.cluster, request.into_inner()).await)
    }
}
