//! CStorPoolInstance (`cspi`): one pool on one node, created by the CSPC controller from
//! one entry of a CSPC and realised by that node's pool manager.

use super::common::{ConditionStatus, PoolConfig, RaidGroup};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired layout of one pool.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorPoolInstance",
    plural = "cstorpoolinstances",
    singular = "cstorpoolinstance",
    shortname = "cspi",
    namespaced,
    status = "CStorPoolInstanceStatus",
    derive = "PartialEq",
    doc = "CStorPoolInstance is one cStor pool on one node, created from an entry of a CStorPoolCluster.",
    printcolumn(
        name = "HostName",
        type_ = "string",
        json_path = ".spec.hostName",
        description = "Node the pool is on"
    ),
    printcolumn(
        name = "Allocated",
        type_ = "string",
        json_path = ".status.capacity.used",
        description = "Space used",
        priority = "1"
    ),
    printcolumn(
        name = "Free",
        type_ = "string",
        json_path = ".status.capacity.free",
        description = "Space free"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.capacity.total",
        description = "Total space"
    ),
    printcolumn(
        name = "ReadOnly",
        type_ = "boolean",
        json_path = ".status.readOnly",
        description = "Pool refuses writes (above roThresholdLimit)"
    ),
    printcolumn(
        name = "ProvisionedReplicas",
        type_ = "integer",
        json_path = ".status.provisionedReplicas",
        description = "Volume replicas on this pool"
    ),
    printcolumn(
        name = "HealthyReplicas",
        type_ = "integer",
        json_path = ".status.healthyReplicas",
        description = "Healthy volume replicas on this pool"
    ),
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.poolConfig.dataRaidGroupType",
        description = "Raid group type of the data",
        priority = "1"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pool health"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolInstanceSpec {
    /// Node the pool is on (its `kubernetes.io/hostname`).
    pub host_name: String,
    /// Labels selecting the node, copied from the CSPC entry.
    pub node_selector: BTreeMap<String, String>,
    /// Settings of the pool, copied from the CSPC entry.
    pub pool_config: PoolConfig,
    /// Data raid groups, copied from the CSPC entry with capacity and devLink filled in.
    pub data_raid_groups: Vec<RaidGroup>,
    /// Write cache raid groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_cache_raid_groups: Option<Vec<RaidGroup>>,
}

/// Health of a pool: the ZFS-style pool states plus cStor's lifecycle phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorPoolInstancePhase {
    /// Not yet looked at: the pool manager will create or import the pool.
    #[serde(rename = "")]
    Empty,
    /// All devices healthy.
    #[serde(rename = "ONLINE")]
    Online,
    /// The pool is not imported or its node is down.
    #[serde(rename = "OFFLINE")]
    Offline,
    /// Serving, with a device missing or failed but redundancy left.
    #[serde(rename = "DEGRADED")]
    Degraded,
    /// Not serving: too many devices failed.
    #[serde(rename = "FAULTED")]
    Faulted,
    /// A device was removed.
    #[serde(rename = "REMOVED")]
    Removed,
    /// Devices cannot be opened.
    #[serde(rename = "UNAVAIL")]
    Unavail,
    /// The pool manager hit an error it reports in conditions and events.
    Error,
    /// Deleting the pool failed.
    DeletionFailed,
    /// The CSPI is malformed.
    Invalid,
    /// Another CSPI claims the same pool.
    ErrorDuplicate,
    /// Waiting for the pool manager.
    Pending,
    /// The pool manager is creating the pool.
    Init,
    /// Creating the pool failed.
    PoolCreationFailed,
}

/// Space of a pool. Quantities, e.g. `499Gi`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolInstanceCapacity {
    /// Space allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Quantity>,
    /// Space left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<Quantity>,
    /// used + free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Quantity>,
    /// Dataset-level accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsCapacity>,
}

/// Dataset-level space accounting of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZfsCapacity {
    /// Space the volumes would use without compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_used: Option<Quantity>,
}

/// Observed state of a pool, written by its pool manager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolInstanceStatus {
    /// Latest observations of the pool's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CStorPoolInstanceCondition>>,
    /// Pool health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorPoolInstancePhase>,
    /// Space of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CStorPoolInstanceCapacity>,
    /// The pool is above its roThresholdLimit and refuses writes and snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Volume replicas on this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_replicas: Option<i32>,
    /// Volume replicas on this pool that are Healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_replicas: Option<i32>,
}

/// Kinds of CSPI condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorPoolInstanceConditionType {
    /// A raid group is being added to the pool.
    PoolExpansion,
    /// A device of a redundant raid group is being replaced (rebuild onto the new one).
    DiskReplacement,
    /// A device of the pool cannot be opened.
    DiskUnavailable,
    /// The pool could not be imported.
    PoolLost,
}

/// One condition of a CSPI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolInstanceCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: CStorPoolInstanceConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Last time it was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// Last time `status` changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// One-word reason, e.g. `BlockDeviceReplacementInprogress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
