//! CStorVolumePolicy (`cvp`): tunables for the volumes of a StorageClass (target
//! resources and placement, replica placement). A CVC carries a full copy in
//! `spec.policy`.

use k8s_openapi::api::core::v1::{PodAffinity, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Policy for volumes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorVolumePolicy",
    plural = "cstorvolumepolicies",
    singular = "cstorvolumepolicy",
    shortname = "cvp",
    namespaced,
    status = "CStorVolumePolicyStatus",
    derive = "PartialEq",
    doc = "CStorVolumePolicy holds the tunables of cStor volumes: target, replica and placement settings."
)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumePolicySpec {
    /// Provisioning settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<ProvisionPolicy>,
    /// Target settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetPolicy>,
    /// Replica settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaPolicy>,
    /// Explicit replica placement: one pool (CSPI name) per replica. On a CVC's copy this
    /// is also the scale-up/scale-down knob (one change at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_pool_info: Option<Vec<ReplicaPoolInfo>>,
}

/// Provisioning settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionPolicy {
    /// Prefer the pool on the application's node for one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_affinity: Option<bool>,
    /// Block size of the volume in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// Target settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPolicy {
    /// iSCSI queue depth of the LU (a string, as in cStor; default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<String>,
    /// Worker threads of the LU (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lu_workers: Option<i64>,
    /// Run the metrics exporter beside the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<bool>,
    /// Replication factor override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i64>,
    /// Resources of the target container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Resources of the target's side containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_resources: Option<ResourceRequirements>,
    /// Tolerations of the target pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the target pod (e.g. next to its application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<PodAffinity>,
    /// Node selector of the target pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Priority class of the target pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Replica settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPolicy {
    /// Worker threads per replica (a string, as in cStor; default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zvol_workers: Option<String>,
    /// Compression of the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// One replica placement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPoolInfo {
    /// Name of the CSPI to place a replica on.
    pub pool_name: String,
}

/// Observed state of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumePolicyStatus {
    /// Free-form phase, as in cStor (unused by its controllers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}
