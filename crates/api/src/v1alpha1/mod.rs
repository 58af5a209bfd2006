//! `openebs.io/v1alpha1`: NDM's BlockDevice and BlockDeviceClaim, and the alpha
//! CStorPoolCluster of cStor's CSI preview (seeds/alpha-features-cstor-csi.md).
//!
//! The alpha CSPC is served as its own CRD, `cstorpoolclusters.openebs.io`: it is a
//! different API group from `cstor.openebs.io`, so Kubernetes cannot serve the two as
//! versions of one CRD (a CRD has one group). Objects of both groups are converted with
//! [`crate::conversion`]; the CSPC controller mirrors each alpha object into a
//! `cstor.openebs.io/v1` CSPC of the same name and works only on the v1 object. The alpha
//! CRD has no short name, so `kubectl get cspc` always means `cstor.openebs.io/v1`.

// kube's `printcolumn(...)` repeats `type_ = "string"` once per column, which clippy
// reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod bd;
mod bdc;
mod cspc;

pub use bd::{
    BlockDevice, BlockDeviceCapacity, BlockDeviceClaimState, BlockDeviceDetails, BlockDeviceSpec,
    BlockDeviceState, BlockDeviceStatus, DevLink, FileSystemInfo, NodeAttributes,
};
pub use bdc::{
    BlockDeviceClaim, BlockDeviceClaimDetails, BlockDeviceClaimPhase, BlockDeviceClaimResources,
    BlockDeviceClaimSpec, BlockDeviceClaimStatus, BlockDeviceNodeAttributes,
};
pub use cspc::{
    AlphaBlockDevice, AlphaPoolConfig, AlphaPoolSpec, AlphaRaidGroup, CStorPoolCluster,
    CStorPoolClusterSpec, CStorPoolClusterStatus,
};
