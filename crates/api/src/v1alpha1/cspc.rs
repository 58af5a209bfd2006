//! The alpha CStorPoolCluster (`openebs.io/v1alpha1`) of cStor's CSI preview: raid groups
//! carry their own type and role flags, and poolConfig has the pre-v1 settings. Converted
//! to and from `cstor.openebs.io/v1` by [`crate::conversion`].

use crate::v1::{Compression, RaidGroupType};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired pools, alpha layout.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openebs.io",
    version = "v1alpha1",
    kind = "CStorPoolCluster",
    plural = "cstorpoolclusters",
    singular = "cstorpoolcluster",
    namespaced,
    status = "CStorPoolClusterStatus",
    derive = "PartialEq",
    doc = "CStorPoolCluster (alpha layout) describes a set of cStor pools, one per node. Mirrored into cstor.openebs.io/v1 by the CSPC controller."
)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolClusterSpec {
    /// One entry per pool.
    pub pools: Vec<AlphaPoolSpec>,
}

/// One pool, alpha layout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlphaPoolSpec {
    /// Labels selecting exactly one node.
    pub node_selector: BTreeMap<String, String>,
    /// Raid groups of every role (data, write cache, spare, read cache).
    pub raid_groups: Vec<AlphaRaidGroup>,
    /// Settings of this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_config: Option<AlphaPoolConfig>,
}

/// A raid group with its own type and role.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlphaRaidGroup {
    /// Type of this group; absent means the pool's `defaultRaidGroupType`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<RaidGroupType>,
    /// The group is a write cache (intent log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_write_cache: Option<bool>,
    /// The group holds hot spares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_spare: Option<bool>,
    /// The group is a read cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_cache: Option<bool>,
    /// The devices of the group.
    pub block_devices: Vec<AlphaBlockDevice>,
}

/// One device of an alpha raid group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlphaBlockDevice {
    /// Name of the BlockDevice.
    pub block_device_name: String,
    /// Size, filled in by the system (a string in the alpha API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Stable device link, filled in by the system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_link: Option<String>,
}

/// Settings of one pool, alpha layout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlphaPoolConfig {
    /// Pool cache file path; cstor keeps its own and only records this for round trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_file: Option<String>,
    /// Type of raid groups that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_raid_group_type: Option<RaidGroupType>,
    /// `false` limits placement to pools with room for the full size of every volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_provisioning: Option<bool>,
    /// Compression of the pool's volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

/// Observed state, alpha layout: the v1 mirror carries the instance counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolClusterStatus {
    /// Free-form phase, as in the alpha API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}
