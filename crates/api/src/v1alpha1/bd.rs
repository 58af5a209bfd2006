//! BlockDevice (`bd`): one disk, partition or file a node offers for pools, discovered by
//! the node agent (NDM's role) and claimed through a BlockDeviceClaim.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A block device as discovered.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openebs.io",
    version = "v1alpha1",
    kind = "BlockDevice",
    plural = "blockdevices",
    singular = "blockdevice",
    shortname = "bd",
    namespaced,
    status = "BlockDeviceStatus",
    derive = "PartialEq",
    doc = "BlockDevice is a disk, partition or file on a node that can be claimed for a cStor pool.",
    printcolumn(
        name = "NodeName",
        type_ = "string",
        json_path = ".spec.nodeAttributes.nodeName",
        description = "Node the device is on"
    ),
    printcolumn(
        name = "Path",
        type_ = "string",
        json_path = ".spec.path",
        description = "Device path",
        priority = "1"
    ),
    printcolumn(
        name = "FSType",
        type_ = "string",
        json_path = ".spec.filesystem.fsType",
        description = "Filesystem found on the device",
        priority = "1"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".spec.capacity.storage",
        description = "Size in bytes"
    ),
    printcolumn(
        name = "ClaimState",
        type_ = "string",
        json_path = ".status.claimState",
        description = "Whether a claim holds the device"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.state",
        description = "Whether the device is present"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceSpec {
    /// Where the device is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_attributes: Option<NodeAttributes>,
    /// Device path, e.g. `/dev/sdb` (or a file for file-backed pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Size and sector sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BlockDeviceCapacity>,
    /// Hardware details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<BlockDeviceDetails>,
    /// The BlockDeviceClaim holding the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<ObjectReference>,
    /// Stable links to the device (`by-id`, `by-path`).
    #[serde(default, rename = "devlinks", skip_serializing_if = "Option::is_none")]
    pub dev_links: Option<Vec<DevLink>>,
    /// Filesystem found on the device (a pool needs none).
    #[serde(
        default,
        rename = "filesystem",
        skip_serializing_if = "Option::is_none"
    )]
    pub file_system: Option<FileSystemInfo>,
    /// `Yes` if the device has partitions, else `No`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<String>,
    /// The disk a partition belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_device: Option<String>,
    /// The aggregate (e.g. md) device this one is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_device: Option<String>,
}

/// Node of a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAttributes {
    /// Kubernetes node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// Size of a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceCapacity {
    /// Size in bytes.
    #[serde(default)]
    pub storage: u64,
    /// Physical sector size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_sector_size: Option<u32>,
    /// Logical sector size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_sector_size: Option<u32>,
}

/// Hardware details of a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceDetails {
    /// disk, partition, sparse, lvm, raid, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// HDD or SSD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive_type: Option<String>,
    /// Logical block size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_block_size: Option<u32>,
    /// Physical block size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    /// Hardware sector size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_sector_size: Option<u32>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Command set (SCSI, ATA, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Firmware revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_revision: Option<String>,
}

/// A kind of stable device link and its links.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevLink {
    /// `by-id` or `by-path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<String>>,
}

/// Filesystem on a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSystemInfo {
    /// Filesystem type (`ext4`, `zfs_member`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// Where it is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
}

/// Whether a claim holds the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BlockDeviceClaimState {
    /// Free to claim.
    Unclaimed,
    /// Its claim was deleted; the device is being cleaned before it is free.
    Released,
    /// Held by a BlockDeviceClaim.
    Claimed,
}

/// Whether the device is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BlockDeviceState {
    /// Present on its node.
    Active,
    /// Gone from its node.
    Inactive,
    /// Its node agent has not reported.
    Unknown,
}

/// Observed state of a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceStatus {
    /// Whether a claim holds the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_state: Option<BlockDeviceClaimState>,
    /// Whether the device is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BlockDeviceState>,
}
