//! The resizer: what kubernetes-csi/external-resizer decides, as pure functions of a
//! [`World`]. A bound claim of a PV of this driver whose request exceeds its
//! `status.capacity` gets ControllerExpandVolume (condition `Resizing` and event
//! `Resizing` first); on success the PV's capacity follows, and then either the claim's
//! `status.capacity` (event `VolumeResizeSuccessful`) or, when the driver says the node
//! must grow the filesystem, the condition `FileSystemResizePending`, which the node side
//! (the kubelet, or `cstor attach`) clears once NodeExpandVolume grew it.
//!
//! Invariants: a claim whose PV already has the size asked for is not expanded again
//! (its status is only finished, or left to the node when its condition says so); the
//! PV's capacity is written only after the driver answered.

use cstor_api::names::CSI_DRIVER_NAME;
use cstor_api::quantity::format_bytes;
use cstor_controller::action::{regarding, Action, Kind};
use cstor_controller::world::{deleting, name, storage_bytes, World};
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_csi::pb::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse, VolumeCapability,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::json;

/// The claim condition while the node has to grow the filesystem.
pub const FS_RESIZE_PENDING: &str = "FileSystemResizePending";

/// A ControllerExpandVolume for a claim.
#[derive(Clone, Debug)]
pub struct Expand {
    /// The claim.
    pub claim: PersistentVolumeClaim,
    /// Its volume.
    pub pv: PersistentVolume,
    /// The request.
    pub request: ControllerExpandVolumeRequest,
}

/// What one pass asks for.
#[derive(Debug, Default)]
pub struct Plan {
    /// ControllerExpandVolume calls, keyed by PV name.
    pub expansions: Vec<Expand>,
    /// Writes and events.
    pub actions: Vec<Action>,
}

fn has_condition(pvc: &PersistentVolumeClaim, kind: &str) -> bool {
    pvc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn requested(pvc: &PersistentVolumeClaim) -> u64 {
    storage_bytes(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

/// The capability a PV is used with (what the external-resizer passes).
pub fn capability_of(pv: &PersistentVolume) -> VolumeCapability {
    let spec = pv.spec.clone().unwrap_or_default();
    let modes = spec.access_modes.unwrap_or_default();
    let mode = if modes.iter().any(|m| m == "ReadWriteOncePod") {
        Mode::SingleNodeSingleWriter
    } else if modes.iter().any(|m| m == "ReadWriteMany") {
        Mode::MultiNodeMultiWriter
    } else if modes.iter().any(|m| m == "ReadOnlyMany") && modes.len() == 1 {
        Mode::MultiNodeReaderOnly
    } else {
        Mode::SingleNodeWriter
    };
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: spec
                .csi
                .as_ref()
                .and_then(|c| c.fs_type.clone())
                .unwrap_or_default(),
            mount_flags: spec.mount_options.unwrap_or_default(),
            ..Default::default()
        })
    };
    VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn finish(pvc: &PersistentVolumeClaim, bytes: u64) -> Action {
    Action::patch_status(
        Kind::Pvc,
        pvc.metadata.namespace.as_deref(),
        name(&pvc.metadata),
        json!({"status": {"capacity": {"storage": format_bytes(bytes)}, "conditions": null,
                          "allocatedResourceStatuses": null}}),
    )
}

/// One pass over bound claims.
pub fn plan(world: &World) -> Plan {
    let mut out = Plan::default();
    for pvc in &world.pvcs {
        if deleting(&pvc.metadata)
            || pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound")
        {
            continue;
        }
        let Some(pv) = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .and_then(|v| world.pv(v))
        else {
            continue;
        };
        let Some(handle) = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .filter(|c| c.driver == CSI_DRIVER_NAME)
            .map(|c| c.volume_handle.clone())
        else {
            continue;
        };
        let want = requested(pvc);
        let have = storage_bytes(pvc.status.as_ref().and_then(|s| s.capacity.as_ref()));
        if want <= have || have == 0 {
            continue;
        }
        let pv_cap = storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()));
        if pv_cap >= want {
            if !has_condition(pvc, FS_RESIZE_PENDING) {
                // The volume has grown (an answer whose claim write was lost).
                out.actions.push(finish(pvc, pv_cap));
            }
            continue;
        }
        let class = pvc
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .and_then(|c| world.sc(c));
        if class.is_some_and(|c| c.allow_volume_expansion != Some(true)) {
            out.actions.push(Action::event(
                regarding(Kind::Pvc, &pvc.metadata),
                true,
                "VolumeResizeFailed",
                format!(
                    "StorageClass {} does not allow volume expansion (allowVolumeExpansion is not true)",
                    class.map(|c| name(&c.metadata)).unwrap_or_default()
                ),
            ));
            continue;
        }
        out.expansions.push(Expand {
            claim: pvc.clone(),
            pv: pv.clone(),
            request: ControllerExpandVolumeRequest {
                volume_id: handle,
                capacity_range: Some(CapacityRange {
                    required_bytes: i64::try_from(want).unwrap_or(i64::MAX),
                    limit_bytes: 0,
                }),
                volume_capability: Some(capability_of(pv)),
                ..Default::default()
            },
        });
    }
    out
}

/// The writes before the call: condition `Resizing` and the event.
pub fn resizing(e: &Expand) -> Vec<Action> {
    vec![
        Action::patch_status(
            Kind::Pvc,
            e.claim.metadata.namespace.as_deref(),
            name(&e.claim.metadata),
            json!({"status": {"conditions": [{"type": "Resizing", "status": "True",
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}}),
        ),
        Action::event(
            regarding(Kind::Pvc, &e.claim.metadata),
            false,
            "Resizing",
            format!(
                "External resizer is resizing volume {}",
                name(&e.pv.metadata)
            ),
        ),
    ]
}

/// The writes after the driver answered.
pub fn expanded(
    e: &Expand,
    answer: Result<ControllerExpandVolumeResponse, tonic::Status>,
) -> Vec<Action> {
    let me = regarding(Kind::Pvc, &e.claim.metadata);
    let pv = name(&e.pv.metadata);
    let r = match answer {
        Ok(r) => r,
        Err(s) => {
            return vec![Action::event(
                me,
                true,
                "VolumeResizeFailed",
                format!(
                    "resize volume \"{pv}\" by resizer \"{CSI_DRIVER_NAME}\" failed: {}",
                    crate::rpc_error(&s)
                ),
            )]
        }
    };
    let asked = e
        .request
        .capacity_range
        .as_ref()
        .and_then(|c| u64::try_from(c.required_bytes).ok())
        .unwrap_or(0);
    let bytes = u64::try_from(r.capacity_bytes)
        .ok()
        .filter(|b| *b > 0)
        .unwrap_or(asked);
    let mut out = vec![Action::patch(
        Kind::Pv,
        None,
        pv,
        json!({"spec": {"capacity": {"storage": format_bytes(bytes)}}}),
    )];
    if r.node_expansion_required {
        out.push(Action::patch_status(
            Kind::Pvc,
            e.claim.metadata.namespace.as_deref(),
            name(&e.claim.metadata),
            json!({"status": {"conditions": [{"type": FS_RESIZE_PENDING, "status": "True",
                "message": "Waiting for user to (re-)start a pod to finish file system resize of volume on node.",
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}],
                "allocatedResourceStatuses": {"storage": "NodeResizePending"}}}),
        ));
        out.push(Action::event(
            me,
            false,
            "FileSystemResizeRequired",
            "Require file system resize of volume on node".to_owned(),
        ));
    } else {
        out.push(finish(&e.claim, bytes));
        out.push(Action::event(
            me,
            false,
            "VolumeResizeSuccessful",
            "Resize volume succeeded".to_owned(),
        ));
    }
    out
}
