//! CStorVolume (`cv`): a volume target's configuration and state. Its
//! `replicaDetails.knownReplicas` is the durable record of which replicas may vote
//! (ARCHITECTURE.md decision 6), so it is written only by compare-and-swap on
//! resourceVersion.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired configuration of a volume target.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorVolume",
    plural = "cstorvolumes",
    singular = "cstorvolume",
    shortname = "cv",
    namespaced,
    status = "CStorVolumeStatus",
    derive = "PartialEq",
    doc = "CStorVolume is the configuration and state of one volume's iSCSI target and its replica membership.",
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.capacity",
        description = "Size of the volume"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Volume health"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeSpec {
    /// Size of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// Address initiators and replicas reach the target at (the target Service's IP).
    #[serde(default, rename = "targetIP", skip_serializing_if = "Option::is_none")]
    pub target_ip: Option<String>,
    /// iSCSI port of the target, as a string (`"3260"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<String>,
    /// iSCSI qualified name of the target: `iqn.2016-09.com.openebs.cstor:<pv>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    /// `targetIP:targetPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_portal: Option<String>,
    /// RF: replicas that take part in quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// CF: acknowledgements a write needs, RF/2+1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_factor: Option<i32>,
    /// DRF: replicas wanted; above RF during a scale-up, below it during a scale-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replication_factor: Option<i32>,
    /// Replicas trusted to vote, as the operator wants them (a scale-down removes one
    /// here first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_details: Option<CStorVolumeReplicaDetails>,
    /// Legacy (cStor 1.x CStorVolume): IQN prefix. Accepted so objects and edits from that
    /// era validate; the target derives the IQN from `iqn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_base: Option<String>,
    /// Legacy (cStor 1.x CStorVolume): a copy of the phase in the spec. Accepted and
    /// ignored; `status.phase` is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Replica membership: replica id → volume guid of the replica instance trusted to vote.
/// The guid travels as a decimal string (a u64 would not survive JSON numbers in
/// JavaScript-based clients).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeReplicaDetails {
    /// Trusted replicas: id → guid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_replicas: Option<BTreeMap<String, String>>,
}

/// Health of a volume as its target reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumePhase {
    /// Target configured; replicas not reported yet.
    Init,
    /// At least CF replicas healthy.
    Healthy,
    /// Serving, with fewer than CF healthy replicas.
    Degraded,
    /// Not serving: quorum missing, or the target is down.
    Offline,
    /// The target reported an error.
    Error,
    /// The CStorVolume is malformed.
    Invalid,
}

/// Mode of one replica as its target sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ReplicaMode {
    /// In quorum and caught up.
    Healthy,
    /// Connected, not (yet) caught up.
    Degraded,
}

/// One replica's state as its target reports it. Counters travel as strings, as in cStor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replica id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Healthy or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ReplicaMode>,
    /// Highest io number the replica has checkpointed.
    #[serde(
        default,
        rename = "checkpointedIOSeq",
        skip_serializing_if = "Option::is_none"
    )]
    pub checkpointed_io_seq: Option<String>,
    /// Reads in flight to this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_read: Option<String>,
    /// Writes in flight to this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_write: Option<String>,
    /// Syncs in flight to this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_sync: Option<String>,
    /// Seconds since the replica connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_time: Option<i64>,
    /// `"1"` if the replica counts towards quorum, `"0"` if it is new and unrebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<String>,
}

/// Observed state of a volume target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeStatus {
    /// Volume health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorVolumePhase>,
    /// Per-replica state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_statuses: Option<Vec<ReplicaStatus>>,
    /// Size the target serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// Last time `phase` changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Last time the status was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Latest observations (resize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CStorVolumeCondition>>,
    /// Replicas the target actually trusts now (spec's list once applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_details: Option<CStorVolumeReplicaDetails>,
    // Opaque here: cstor-replication's `Record` with magic and format
    // (docs/node-agent.md, reference/replication-design.md §2.2).
    /// Membership record of the replicated target, kept by the node agent by compare-and-swap on resourceVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub replication: Option<serde_json::Value>,
}

/// An object schema whose fields the API server keeps as they are.
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Kinds of CV condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeConditionType {
    /// The volume is being resized.
    Resizing,
}

/// Status of a CV condition: cStor uses its own values here, not True/False.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeConditionStatus {
    /// The operation is running.
    InProgress,
    /// The operation finished.
    Success,
}

/// One condition of a CV.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: CStorVolumeConditionType,
    /// Progress of the operation.
    pub status: CStorVolumeConditionStatus,
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
