//! CStorPoolCluster (`cspc`): the user's request for a set of pools, one per node.
//! The CSPC controller turns each entry of `spec.pools` into a CStorPoolInstance.

use super::common::{ConditionStatus, PoolConfig, RaidGroup};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired pools of a CStorPoolCluster.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorPoolCluster",
    plural = "cstorpoolclusters",
    singular = "cstorpoolcluster",
    shortname = "cspc",
    namespaced,
    status = "CStorPoolClusterStatus",
    derive = "PartialEq",
    doc = "CStorPoolCluster describes a set of cStor pools, one per node, each built from block devices in raid groups.",
    printcolumn(
        name = "HealthyInstances",
        type_ = "integer",
        json_path = ".status.healthyInstances",
        description = "Pool instances that are ONLINE"
    ),
    printcolumn(
        name = "ProvisionedInstances",
        type_ = "integer",
        json_path = ".status.provisionedInstances",
        description = "Pool instances created"
    ),
    printcolumn(
        name = "DesiredInstances",
        type_ = "integer",
        json_path = ".status.desiredInstances",
        description = "Pool instances asked for"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolClusterSpec {
    /// One entry per pool (CSPI) to create.
    pub pools: Vec<PoolSpec>,
    /// Default resources of every pool manager container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Default resources of every pool's side containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_resources: Option<ResourceRequirements>,
    /// Default tolerations of every pool pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Default priority class of every pool pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// One pool of a CSPC: where it goes and which devices it is built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Labels selecting exactly one node (normally `kubernetes.io/hostname`).
    pub node_selector: BTreeMap<String, String>,
    /// Raid groups holding data; the pool is created from the first and extended by
    /// the others.
    pub data_raid_groups: Vec<RaidGroup>,
    /// Raid groups used as the pool's write cache (intent log devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_cache_raid_groups: Option<Vec<RaidGroup>>,
    /// Settings of this pool.
    pub pool_config: PoolConfig,
}

/// Observed state of a CSPC, written by the CSPC controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolClusterStatus {
    /// CSPIs that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_instances: Option<i32>,
    /// CSPIs asked for (entries in `spec.pools`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_instances: Option<i32>,
    /// CSPIs whose pool is ONLINE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_instances: Option<i32>,
    /// Latest observations of the CSPC's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CStorPoolClusterCondition>>,
}

/// Kinds of CSPC condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorPoolClusterConditionType {
    /// Whether the pool manager deployments of this CSPC are available.
    PoolManagerAvailable,
}

/// One condition of a CSPC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolClusterCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: CStorPoolClusterConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Last time it was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// Last time `status` changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// One-word reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
