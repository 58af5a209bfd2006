//! CStorSnapshot (`csnap`, cstor's own kind): one consistent snapshot of a cstor volume,
//! asked for by the controller (from a VolumeSnapshot) and taken by the node agent that
//! hosts the volume's target, which writes `status`. Lives in the volume's namespace.
//!
//! Invariants: `spec` never changes after creation (a new snapshot is a new object);
//! `status.readyToUse` is true only once every replica holds the snapshot at `status.io`.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a CStorSnapshot: which volume, under which snapshot name.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorSnapshot",
    plural = "cstorsnapshots",
    singular = "cstorsnapshot",
    shortname = "csnap",
    namespaced,
    status = "CStorSnapshotStatus",
    derive = "PartialEq",
    doc = "CStorSnapshot is one consistent snapshot of a cstor volume, taken by the node agent hosting its target.",
    printcolumn(
        name = "Volume",
        type_ = "string",
        json_path = ".spec.volumeName",
        description = "Volume (PV name) the snapshot is of"
    ),
    printcolumn(
        name = "Snapshot",
        type_ = "string",
        json_path = ".spec.snapshotName",
        description = "Snapshot name in every replica's pool"
    ),
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse",
        description = "Every replica holds the snapshot"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Ready or Failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorSnapshotSpec {
    /// Name of the volume (its PV, CStorVolume and CVC name).
    pub volume_name: String,
    /// Name of the snapshot in the volume's replicas (`<volume>@<snapshotName>` is the
    /// CSI snapshot id and a restore's `cstorVolumeSource`).
    pub snapshot_name: String,
}

/// Phase of a CStorSnapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorSnapshotPhase {
    /// Asked for, not taken yet.
    Pending,
    /// Taken on every replica.
    Ready,
    /// Could not be taken; `message` says why.
    Failed,
}

/// Status of a CStorSnapshot, written by the node agent hosting the target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorSnapshotStatus {
    /// Pending, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorSnapshotPhase>,
    /// True once every replica holds the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The io number the snapshot was cut at (every write at or below it is in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<u64>,
    /// When the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Size a volume restored from the snapshot needs (the volume's size at the cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// Why the snapshot failed or is still pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
