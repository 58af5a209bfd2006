//! Types shared by the pool kinds (CSPC and CSPI): raid groups, block device references,
//! pool configuration, and the condition status every cStor condition uses.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How the block devices of one raid group are combined (a ZFS top-level vdev type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RaidGroupType {
    /// Devices concatenated: capacity of all, no redundancy. A pool has one stripe group,
    /// to which devices may be appended.
    Stripe,
    /// Every device holds a full copy: survives the loss of all but one device.
    Mirror,
    /// Single parity over 2^n+1 devices: survives the loss of one device.
    Raidz,
    /// Double parity over 2^n+2 devices (n ≥ 2): survives the loss of two devices.
    Raidz2,
}

impl RaidGroupType {
    /// The spelling cStor uses in YAML and on the zpool command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RaidGroupType::Stripe => "stripe",
            RaidGroupType::Mirror => "mirror",
            RaidGroupType::Raidz => "raidz",
            RaidGroupType::Raidz2 => "raidz2",
        }
    }

    /// Parses cStor's spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<RaidGroupType> {
        match s {
            "stripe" => Some(RaidGroupType::Stripe),
            "mirror" => Some(RaidGroupType::Mirror),
            "raidz" => Some(RaidGroupType::Raidz),
            "raidz2" => Some(RaidGroupType::Raidz2),
            _ => None,
        }
    }
}

impl fmt::Display for RaidGroupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compression of the volumes in a pool. cStor passed any ZFS name through to
/// `zfs create`; cstor's pool engine implements lz4 and zstd, so only those (and the
/// generic on/off) are accepted, and a YAML asking for gzip gets a clear 422 instead of a
/// pool that silently compresses differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Compression {
    /// Not set: the pool default, lz4 (as cStor).
    #[serde(rename = "")]
    Default,
    /// Compression on with the default algorithm (lz4).
    #[serde(rename = "on")]
    On,
    /// No compression.
    #[serde(rename = "off")]
    Off,
    /// LZ4: fast, cStor's default.
    #[serde(rename = "lz4")]
    Lz4,
    /// Zstandard: better ratio, more CPU (a cstor extension; ZFS 2.0 has it too).
    #[serde(rename = "zstd")]
    Zstd,
}

impl Compression {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Default => "",
            Compression::On => "on",
            Compression::Off => "off",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses the YAML spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "" => Some(Compression::Default),
            "on" => Some(Compression::On),
            "off" => Some(Compression::Off),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Status of a condition, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known (yet).
    Unknown,
}

/// One block device of a raid group, named by its BlockDevice object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceRef {
    /// Name of the BlockDevice (`openebs.io/v1alpha1`) in the CSPC's namespace.
    pub block_device_name: String,
    /// Size in bytes; filled in by the system from the BlockDevice, never by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Stable device link (`/dev/disk/by-id/...`) the pool opens; filled in by the system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_link: Option<String>,
}

/// A raid group: block devices combined by the pool's raid group type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaidGroup {
    /// The devices of this group, in order.
    pub block_devices: Vec<BlockDeviceRef>,
}

/// Settings of one pool (shared by the CSPC's pool spec and its CSPI).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolConfig {
    /// Type of every data raid group of this pool.
    pub data_raid_group_type: RaidGroupType,
    /// Type of every write cache (intent log) raid group of this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_cache_group_type: Option<RaidGroupType>,
    /// Reserve a volume's full size at creation instead of allocating on write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thick_provision: Option<bool>,
    /// Compression of the volumes in this pool (default lz4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Resources of the pool manager container (overrides the CSPC default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Resources of the pool's side containers (overrides the CSPC default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_resources: Option<ResourceRequirements>,
    /// Tolerations of the pool pod (overrides the CSPC default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Priority class of the pool pod (overrides the CSPC default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Used-space percentage (0..=100) at which the pool turns read-only; 100 disables it.
    /// The CSPC controller sets 85 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub ro_threshold_limit: Option<i32>,
}

/// cStor's upgrade bookkeeping, a top-level field of CSPC, CSPI, CVC, CV and CVR objects.
/// cstor accepts and stores it so objects written by cStor's operators validate, but its
/// own controllers neither read nor write it (the derived Rust types have no field for
/// it; patch it with a merge patch if needed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionDetails {
    /// Upgrade automatically to `desired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_upgrade: Option<bool>,
    /// Version wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// Upgrade progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VersionStatus>,
}

/// Upgrade progress of one object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// Objects this one owns are upgraded too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependents_upgraded: Option<bool>,
    /// Version in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Reconciliation state of the upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VersionState>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One-word reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last time the status was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

/// Reconciliation state of an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VersionState {
    /// Current equals desired.
    Reconciled,
    /// The upgrade is running.
    ReconcileInProgress,
    /// The upgrade waits.
    ReconcilePending,
}
