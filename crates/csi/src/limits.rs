//! Every bound of the driver in one place, with why it has that value.

use std::time::Duration;

/// How long CreateVolume waits for a new volume to serve I/O before answering ABORTED.
/// Below the external-provisioner's default 10 s call timeout would make every first
/// call fail; 20 s lets a small volume on idle pools finish in one call, and a retry
/// with the same name picks up where the last one stopped.
pub const CREATE_WAIT: Duration = Duration::from_secs(20);

/// How long ControllerExpandVolume waits for the target to report the new size before
/// answering ABORTED (a retry is idempotent).
pub const EXPAND_WAIT: Duration = Duration::from_secs(20);

/// Time between looks at the cluster while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// One round of API calls (a view of the cluster, a create, a delete, a patch); past it
/// the API server counts as unavailable.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// How long Probe waits for the API server to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Most entries in one ListVolumes page, even when the caller sets no limit, so one
/// answer stays far below gRPC's default 4 MiB message bound (an entry is < 1 KiB).
pub const LIST_PAGE_MAX: usize = 1000;

/// Volume sizes are multiples of this (the pool's volumes need 512-byte multiples; a
/// MiB keeps sizes readable as quantities).
pub const SIZE_STEP_BYTES: u64 = 1 << 20;

/// Size of a volume whose request names no capacity (cStor's default, 1 GiB).
pub const DEFAULT_SIZE_BYTES: u64 = 1 << 30;

/// Largest volume (the pool engine's bound, `cstor_pool::limits::MAX_VOLUME_BYTES`).
pub const MAX_SIZE_BYTES: u64 = 64 << 40;

/// Longest volume name used as is; longer (or non DNS-1123) names are hashed, because a
/// volume's name is also a label value (at most 63 characters).
pub const NAME_MAX: usize = 63;

const _: () = assert!(DEFAULT_SIZE_BYTES.is_multiple_of(SIZE_STEP_BYTES));
const _: () = assert!(MAX_SIZE_BYTES.is_multiple_of(SIZE_STEP_BYTES));
const _: () = assert!(SIZE_STEP_BYTES.is_multiple_of(512));
