//! BlockDeviceClaim (`bdc`): a claim on one BlockDevice; the CSPC controller makes one
//! per device of a pool so no two pools use a device.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A claim on a block device.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openebs.io",
    version = "v1alpha1",
    kind = "BlockDeviceClaim",
    plural = "blockdeviceclaims",
    singular = "blockdeviceclaim",
    shortname = "bdc",
    namespaced,
    status = "BlockDeviceClaimStatus",
    derive = "PartialEq",
    doc = "BlockDeviceClaim claims one BlockDevice for exclusive use.",
    printcolumn(
        name = "BlockDeviceName",
        type_ = "string",
        json_path = ".spec.blockDeviceName",
        description = "The claimed device"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Claim state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceClaimSpec {
    /// Labels the device must have (when no name is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Size wanted (when no name is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BlockDeviceClaimResources>,
    /// Device type wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Deprecated node name; use `blockDeviceNodeAttributes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// How the device will be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_claim_details: Option<BlockDeviceClaimDetails>,
    /// The device claimed (set by the claimant or on binding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_device_name: Option<String>,
    /// Node the device must be on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_device_node_attributes: Option<BlockDeviceNodeAttributes>,
}

/// Resources of a claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceClaimResources {
    /// `storage: <quantity>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, Quantity>>,
}

/// How a claimed device will be used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceClaimDetails {
    /// `Block` or `FileSystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_volume_mode: Option<String>,
    /// Filesystem to format with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_type: Option<String>,
    /// Whether a partitioned device may be claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_partition: Option<bool>,
}

/// Node a claimed device must be on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceNodeAttributes {
    /// Kubernetes node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Host name of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
}

/// State of a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BlockDeviceClaimPhase {
    /// Not looked at yet.
    #[serde(rename = "")]
    Empty,
    /// Waiting for a matching device.
    Pending,
    /// The requested size cannot be parsed or met.
    #[serde(rename = "Invalid Capacity Request")]
    InvalidCapacityRequest,
    /// Bound to a device.
    Bound,
}

/// Observed state of a claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceClaimStatus {
    /// Claim state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BlockDeviceClaimPhase>,
}
