//! `cstor.openebs.io/v1`: cStor's own resources (`cstor-internals.md` §6).
//!
//! Owns: one module per kind. Field names are cStor's (openebs/api `pkg/apis/cstor/v1`);
//! every phase and condition type is an enum serialised as cStor spells it.
//! Never: fields cStor does not have, except where documented as a cstor extension.

// kube's `printcolumn(...)` repeats `type_ = "string"` once per column, which clippy
// reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod common;
mod csnap;
mod cspc;
mod cspi;
mod cv;
mod cvc;
mod cvp;
mod cvr;

pub use common::{
    BlockDeviceRef, Compression, ConditionStatus, PoolConfig, RaidGroup, RaidGroupType,
    VersionDetails, VersionState, VersionStatus,
};
pub use csnap::{CStorSnapshot, CStorSnapshotPhase, CStorSnapshotSpec, CStorSnapshotStatus};
pub use cspc::{
    CStorPoolCluster, CStorPoolClusterCondition, CStorPoolClusterConditionType,
    CStorPoolClusterSpec, CStorPoolClusterStatus, PoolSpec,
};
pub use cspi::{
    CStorPoolInstance, CStorPoolInstanceCapacity, CStorPoolInstanceCondition,
    CStorPoolInstanceConditionType, CStorPoolInstancePhase, CStorPoolInstanceSpec,
    CStorPoolInstanceStatus, ZfsCapacity,
};
pub use cv::{
    CStorVolume, CStorVolumeCondition, CStorVolumeConditionStatus, CStorVolumeConditionType,
    CStorVolumePhase, CStorVolumeReplicaDetails, CStorVolumeSpec, CStorVolumeStatus, ReplicaMode,
    ReplicaStatus,
};
pub use cvc::{
    CStorVolumeConfig, CStorVolumeConfigCondition, CStorVolumeConfigConditionType,
    CStorVolumeConfigPhase, CStorVolumeConfigPublish, CStorVolumeConfigSpec,
    CStorVolumeConfigStatus, VolumeProvision,
};
pub use cvp::{
    CStorVolumePolicy, CStorVolumePolicySpec, CStorVolumePolicyStatus, ProvisionPolicy,
    ReplicaPolicy, ReplicaPoolInfo, TargetPolicy,
};
pub use cvr::{
    CStorSnapshotInfo, CStorVolumeReplica, CStorVolumeReplicaCapacity, CStorVolumeReplicaPhase,
    CStorVolumeReplicaSpec, CStorVolumeReplicaStatus,
};
