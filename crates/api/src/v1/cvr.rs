//! CStorVolumeReplica (`cvr`): one replica of a volume on one pool, named
//! `<pv>-<cspi>`, realised by that pool's manager.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired replica.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorVolumeReplica",
    plural = "cstorvolumereplicas",
    singular = "cstorvolumereplica",
    shortname = "cvr",
    namespaced,
    status = "CStorVolumeReplicaStatus",
    derive = "PartialEq",
    doc = "CStorVolumeReplica is one replica of a cStor volume, held by one pool.",
    printcolumn(
        name = "Allocated",
        type_ = "string",
        json_path = ".status.capacity.total",
        description = "Space the replica allocates in its pool"
    ),
    printcolumn(
        name = "Used",
        type_ = "string",
        json_path = ".status.capacity.used",
        description = "Logical data the replica holds"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Replica state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeReplicaSpec {
    /// Address of the volume's target, which the replica dials.
    #[serde(default, rename = "targetIP", skip_serializing_if = "Option::is_none")]
    pub target_ip: Option<String>,
    /// Size of the volume (e.g. `5G`), as cStor writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Worker threads of the replica (a string, as in cStor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zvol_workers: Option<String>,
    /// Replica id: identifies the slot across re-creation (≤ 32 characters).
    #[serde(default, rename = "replicaid", skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Compression of the replica's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Block size in bytes the target addresses the replica with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// State of a replica, from its pool manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeReplicaPhase {
    /// Not looked at yet: the pool manager will create the replica.
    #[serde(rename = "")]
    Empty,
    /// Being created.
    Init,
    /// Created, not connected to its target.
    Offline,
    /// Connected, in quorum, not rebuilt yet.
    Degraded,
    /// Connected, new (not in quorum), not rebuilt yet.
    NewReplicaDegraded,
    /// In quorum and being rebuilt.
    Rebuilding,
    /// New (not in quorum) and being rebuilt.
    ReconstructingNewReplica,
    /// In quorum and caught up.
    Healthy,
    /// The pool manager hit an error.
    Error,
    /// Deleting the replica failed.
    DeletionFailed,
    /// The CVR is malformed.
    Invalid,
    /// Its pool was recreated or it is a scale-up: create it empty, out of quorum.
    Recreate,
}

/// Space of a replica, as strings (cStor's format, e.g. `2.57M`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeReplicaCapacity {
    /// Space allocated in the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
    /// Logical data referenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
}

/// One snapshot held by a replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorSnapshotInfo {
    /// Logical bytes the snapshot references.
    #[serde(default)]
    pub logical_referenced: u64,
}

/// Observed state of a replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeReplicaStatus {
    /// Replica state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorVolumeReplicaPhase>,
    /// Space of the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CStorVolumeReplicaCapacity>,
    /// Last time `phase` changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Last time the status was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Snapshots the replica holds, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<BTreeMap<String, CStorSnapshotInfo>>,
    /// Snapshots healthy peers hold that this replica will get by rebuild.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_snapshots: Option<BTreeMap<String, CStorSnapshotInfo>>,
}
