//! Bounds on what a cstor resource may hold. Each limit says why it has its value; the
//! validation functions ([`crate::validation`]) enforce them so a controller never has to
//! handle an unbounded object.

/// Pools (CSPIs) one CStorPoolCluster may ask for: one per node, and a cluster of more than
/// 1,024 storage nodes would be split into several CSPCs anyway (keeps a CSPC far below the
/// API server's object size limit).
pub const CSPC_POOLS_MAX: usize = 1024;

/// Raid groups of one kind (data or write cache) in one pool. ZFS itself has no small
/// limit; 64 groups of even 1 TiB disks is more than any node holds.
pub const RAID_GROUPS_PER_POOL_MAX: usize = 64;

/// Block devices in one raid group: the widest raidz2 group the 2^n+2 rule allows below
/// 300 disks is 258; 256 is a round bound above every real enclosure's group width.
pub const BLOCK_DEVICES_PER_RAID_GROUP_MAX: usize = 256;

/// Replicas of one volume: cStor's target accepts at most 5 (`cstor-internals.md` §2.1),
/// and the quorum rules are defined only up to 5.
pub const REPLICAS_PER_VOLUME_MAX: u32 = 5;

/// Longest name of a Kubernetes object that is a DNS subdomain (RFC 1123).
pub const DNS_SUBDOMAIN_LEN_MAX: usize = 253;

/// Longest replica id: the target's wire format keeps it in a 32-byte field
/// (`cstor-internals.md` §1.3, `mgmt_ack.replica_id[32]`, NUL excluded).
pub const REPLICA_ID_LEN_MAX: usize = 32;

/// Field errors reported for one object: enough to show every mistake in a real CSPC while
/// keeping a 422 reply small when an object is garbage.
pub const FIELD_ERRORS_MAX: usize = 100;

/// Nesting depth the schema validator follows; the deepest cstor schema (CVC policy
/// affinity terms) is about 12 levels, so deeper input is refused rather than recursed.
pub const SCHEMA_DEPTH_MAX: usize = 48;

/// Longest quantity string accepted (`500Gi`): 64 characters hold any 64-bit byte count in
/// any notation, and bound the parser's work on hostile input.
pub const QUANTITY_LEN_MAX: usize = 64;

/// Default `poolConfig.roThresholdLimit` the CSPC controller sets: cStor's 85 % leaves
/// room for copy-on-write metadata so a full pool can still free space.
pub const RO_THRESHOLD_LIMIT_DEFAULT: i32 = 85;
