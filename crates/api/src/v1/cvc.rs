//! CStorVolumeConfig (`cvc`): the request to provision one volume (named after its PV),
//! created by the CSI controller and realised by the volume controller (target, CV, CVRs).

use super::common::ConditionStatus;
use super::cvp::CStorVolumePolicySpec;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired volume.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorVolumeConfig",
    plural = "cstorvolumeconfigs",
    singular = "cstorvolumeconfig",
    shortname = "cvc",
    namespaced,
    status = "CStorVolumeConfigStatus",
    derive = "PartialEq",
    doc = "CStorVolumeConfig is the request to provision one cStor volume; it is named after the PersistentVolume.",
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.capacity.storage",
        description = "Size of the volume"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Provisioning state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigSpec {
    /// Requested size: `storage: <quantity>`; raising it resizes the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    /// The CStorVolume made for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cstor_volume_ref: Option<ObjectReference>,
    /// For a clone: `<source pv>@<snapshot>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cstor_volume_source: Option<String>,
    /// What was provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<VolumeProvision>,
    /// The volume policy in force (a copy of the CVP's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<CStorVolumePolicySpec>,
}

/// What was provisioned; `replicaCount` never changes once set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProvision {
    /// Size provisioned: `storage: <quantity>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    /// Replicas provisioned (1..=5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub replica_count: Option<i32>,
}

/// Provisioning state of a CVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeConfigPhase {
    /// Waiting for target, CV and CVRs.
    Pending,
    /// The volume exists and can be attached.
    Bound,
    /// Provisioning failed.
    Failed,
}

/// Observed state of a CVC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigStatus {
    /// Provisioning state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorVolumeConfigPhase>,
    /// CSPIs holding the volume's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_info: Option<Vec<String>>,
    /// Size the volume has now: `storage: <quantity>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    /// Resize progress. The field is `condition` (singular), as in cStor.
    #[serde(default, rename = "condition", skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CStorVolumeConfigCondition>>,
}

/// Kinds of CVC condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeConfigConditionType {
    /// A resize is running.
    Resizing,
    /// The last resize failed.
    VolumeResizeFailed,
    /// The last resize succeeded.
    VolumeResizeSuccessful,
    /// A resize waits for the volume to be ready.
    VolumeResizePending,
}

/// One condition of a CVC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: CStorVolumeConfigConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Last time it was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Last time `status` changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// One-word reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
